// Package localkafka gives the examples a Kafka to talk to: the brokers named
// by the caller (KAFKA_BROKERS), or else a Kafka-protocol broker embedded in
// the process (franz-go's kfake, over TCP on loopback), so that an example
// runs with nothing but PostgreSQL installed.
package localkafka

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Kafka is the broker an example uses.
type Kafka struct {
	Brokers  []string
	Embedded bool
	fake     *kfake.Cluster
	topics   []string
	groups   []string
}

// Start starts an embedded broker when brokers is empty, else uses brokers.
func Start(brokers []string) (*Kafka, error) {
	if len(brokers) > 0 {
		return &Kafka{Brokers: brokers}, nil
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(4))
	if err != nil {
		return nil, fmt.Errorf("start the embedded Kafka broker: %w", err)
	}
	return &Kafka{Brokers: c.ListenAddrs(), Embedded: true, fake: c}, nil
}

// Describe says which broker this is, for the story.
func (k *Kafka) Describe() string {
	if k.Embedded {
		return "embedded Kafka-protocol broker (kfake) at " + strings.Join(k.Brokers, ",")
	}
	return "Kafka at " + strings.Join(k.Brokers, ",")
}

func (k *Kafka) admin() (*kgo.Client, *kadm.Client, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...))
	if err != nil {
		return nil, nil, err
	}
	return cl, kadm.NewClient(cl), nil
}

// CreateTopic creates topic (deleted again by Close).
func (k *Kafka) CreateTopic(ctx context.Context, topic string, partitions int32) error {
	cl, adm, err := k.admin()
	if err != nil {
		return err
	}
	defer cl.Close()
	resp, err := adm.CreateTopic(ctx, partitions, -1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("create Kafka topic %s: %w", topic, err)
	}
	k.topics = append(k.topics, topic)
	return nil
}

// ForgetGroupOnClose deletes the consumer group when Close runs (a real
// Kafka keeps groups otherwise).
func (k *Kafka) ForgetGroupOnClose(group string) { k.groups = append(k.groups, group) }

// Close deletes what the example created on a real Kafka, or stops the
// embedded broker.
func (k *Kafka) Close(ctx context.Context) error {
	if k.fake != nil {
		k.fake.Close()
		return nil
	}
	if len(k.topics) == 0 && len(k.groups) == 0 {
		return nil
	}
	cl, adm, err := k.admin()
	if err != nil {
		return err
	}
	defer cl.Close()
	var errs []error
	if len(k.groups) > 0 {
		if _, err := adm.DeleteGroups(ctx, k.groups...); err != nil {
			errs = append(errs, fmt.Errorf("delete consumer groups: %w", err))
		}
	}
	if len(k.topics) > 0 {
		if _, err := adm.DeleteTopics(ctx, k.topics...); err != nil {
			errs = append(errs, fmt.Errorf("delete topics: %w", err))
		}
	}
	return errors.Join(errs...)
}
