package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
)

// countingPublisher is a watermill Publisher that counts what the wrapped
// publisher acknowledged (watermill-kafka's Publish returns after Kafka's
// ack) and closes done when target messages are in.
type countingPublisher struct {
	message.Publisher
	n      atomic.Int64
	target int64
	done   chan struct{}
	once   sync.Once
}

func (c *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := c.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	if c.n.Add(int64(len(msgs))) >= c.target {
		c.once.Do(func() { close(c.done) })
	}
	return nil
}

// runForwarder drains the watermill template with watermill's forwarder
// (components/forwarder): a watermill-sql subscriber on PostgreSQL reading
// the enveloped events batch rows at a time, and a watermill-kafka publisher
// (Sarama SyncProducer, all in-sync replicas' acks as for outboxkit, the
// event key as Kafka key). The time runs from the forwarder's start until
// Kafka acknowledged every event.
func (e *env) runForwarder(ctx context.Context, batch int) (measurement, error) {
	n := e.opts.events
	name, dbURL, err := e.newDB(ctx, e.tplWatermill, fmt.Sprintf("fwd%d", batch))
	if err != nil {
		return measurement{}, err
	}
	defer e.dropDB(ctx, name)
	topic := benchTopic
	if err := e.createTopic(ctx, topic); err != nil {
		return measurement{}, err
	}
	defer e.deleteTopic(ctx, topic)

	db, err := openSQL(dbURL)
	if err != nil {
		return measurement{}, err
	}
	defer db.Close()
	sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
		SchemaAdapter:  watermillSchema(batch),
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
	}, watermill.NopLogger{})
	if err != nil {
		return measurement{}, err
	}
	scfg := wkafka.DefaultSaramaSyncPublisherConfig()
	scfg.Producer.RequiredAcks = sarama.WaitForAll
	kpub, err := wkafka.NewPublisher(wkafka.PublisherConfig{
		Brokers: e.brokers,
		Marshaler: wkafka.NewWithPartitioningMarshaler(func(_ string, m *message.Message) (string, error) {
			return m.Metadata.Get("key"), nil
		}),
		OverwriteSaramaConfig: scfg,
	}, watermill.NopLogger{})
	if err != nil {
		return measurement{}, fmt.Errorf("watermill-kafka publisher: %w", err)
	}
	counter := &countingPublisher{Publisher: kpub, target: int64(n), done: make(chan struct{})}
	fwd, err := forwarder.NewForwarder(sub, counter, watermill.NopLogger{}, forwarder.Config{
		ForwarderTopic: forwarderTopic,
		CloseTimeout:   10 * time.Second,
	})
	if err != nil {
		return measurement{}, err
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	cpu := startCPU()
	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- fwd.Run(runCtx) }()
	var elapsed time.Duration
	select {
	case <-counter.done:
		elapsed = time.Since(start)
	case err := <-runErr:
		return measurement{}, fmt.Errorf("forwarder stopped: %v", err)
	case <-time.After(e.opts.timeout):
		return measurement{}, fmt.Errorf("forwarder: only %d of %d events acknowledged after %s", counter.n.Load(), n, e.opts.timeout)
	}
	m := measurement{events: n, elapsed: elapsed, cpu: cpu.stop()}
	m.pgCPU = e.backendCPU(ctx, name)
	fwd.Close()
	cancel()
	<-runErr
	kpub.Close()
	got, err := e.topicRecords(ctx, topic)
	if err != nil {
		return m, err
	}
	if got < int64(n) {
		return m, fmt.Errorf("forwarder: Kafka holds %d records, want %d", got, n)
	}
	m.note = fmt.Sprintf("%d records in Kafka", got)
	return m, nil
}
