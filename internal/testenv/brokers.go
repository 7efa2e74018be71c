package testenv

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Kafka is a Kafka-protocol broker for one test: an in-process kfake cluster
// listening on loopback TCP, or the real cluster named by KAFKA_BROKERS.
type Kafka struct {
	Brokers []string
	// Fake is the in-process cluster, nil when KAFKA_BROKERS is set. Tests
	// that inject broker faults through it skip themselves on a real Kafka.
	Fake *kfake.Cluster
}

// NewKafka starts a one-broker kfake cluster (or uses KAFKA_BROKERS) and stops
// it when the test ends. Extra kfake options apply only to the fake.
func NewKafka(t testing.TB, opts ...kfake.Opt) *Kafka {
	t.Helper()
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		return &Kafka{Brokers: strings.Split(env, ",")}
	}
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.DefaultNumPartitions(4)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("testenv: start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return &Kafka{Brokers: c.ListenAddrs(), Fake: c}
}

// CreateTopic creates a topic with the given partition count, through the
// Kafka admin API (so it works on kfake and on a real cluster alike).
func (k *Kafka) CreateTopic(t testing.TB, topic string, partitions int32) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...))
	if err != nil {
		t.Fatalf("testenv: kafka admin client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).CreateTopic(ctx, partitions, 1, nil, topic)
	if err != nil {
		t.Fatalf("testenv: create topic %s: %v", topic, err)
	}
	if resp.Err != nil {
		t.Fatalf("testenv: create topic %s: %v", topic, resp.Err)
	}
}

// Records reads every record of topic from the beginning until count records
// arrived or timeout passed, and returns them in partition order.
func (k *Kafka) Records(t testing.TB, topic string, count int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatalf("testenv: kafka consumer: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []*kgo.Record
	for len(out) < count {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			break
		}
		fetches.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

// RabbitURL is the AMQP URL of the test RabbitMQ.
func RabbitURL() string {
	if u := os.Getenv("RABBITMQ_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// Rabbit returns a connection to the test RabbitMQ, closed when the test ends.
func Rabbit(t testing.TB) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(RabbitURL())
	if err != nil {
		t.Fatalf("testenv: connect to RabbitMQ at %s: %v (is it running? .ci/run starts it)", RabbitURL(), err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
