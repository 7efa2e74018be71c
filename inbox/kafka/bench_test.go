package kafka_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/kafka"
	"github.com/outboxkit/outboxkit/internal/consumebench"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// BenchmarkConsume measures events/s through the Kafka adapter with a
// one-INSERT handler, and what the inbox costs, in two arms run alternately
// in the same run. "inbox" is the adapter feeding the inbox (HandleBatch).
// "handler-only" is the same adapter, reader, batching and offset commits
// on the same kind of records, each batch applied by the same handler in
// one plain transaction: no inbox record, no order guard.
//
// For each arm and round, records in the relay's wire format (8
// partitions, 1,000 keys) are produced to a new topic first, then a new
// consumer group reads them all; the clock runs from the first applied
// event to the last. A warm-up of both arms (up to 4,000 events each) is
// not reported. Rounds alternate which arm goes first (ABBA), so that drift
// of the machine weighs on both. The medians of both arms are reported,
// and the overhead, 100*(handler-only/inbox - 1): how much more time an
// event takes through the inbox.
//
//	go test -run '^$' -bench Consume -benchtime 1x ./inbox/kafka/
//
// OUTBOXKIT_BENCH_EVENTS (default 20000) events per round and arm,
// OUTBOXKIT_BENCH_ROUNDS (default 5).
func BenchmarkConsume(b *testing.B) {
	events := envInt("OUTBOXKIT_BENCH_EVENTS", 20000)
	rounds := envInt("OUTBOXKIT_BENCH_ROUNDS", 5)
	db := testenv.NewDB(b)
	k := testenv.NewKafka(b)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, ledgerTable); err != nil {
		b.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()

	// consume produces n records to a new topic and returns the events/s
	// of arm consuming them as consumer group and inbox consumer name.
	consume := func(arm, name string, n int) float64 {
		topic := testenv.UniqueName("bench")
		k.CreateTopic(b, topic, 8)
		seq := map[string]int64{}
		recs := make([]*kgo.Record, n)
		for j := range recs {
			key := fmt.Sprintf("payout-%d", j%1000)
			seq[key]++
			recs[j] = &kgo.Record{Topic: topic, Key: []byte(key), Value: []byte(`{"amount_cents":12500,"currency":"EUR"}`),
				Headers: []kgo.RecordHeader{
					{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte(uuid.Must(uuid.NewV7()).String())},
					{Key: "ce_source", Value: []byte("/bench")}, {Key: "ce_type", Value: []byte("payout.created")},
					{Key: "ce_time", Value: []byte("2026-11-23T10:00:00Z")}, {Key: "content-type", Value: []byte("application/json")},
					{Key: "ce_partitionkey", Value: []byte(key)}, {Key: "ce_sequence", Value: []byte(strconv.FormatInt(seq[key], 10))},
				}}
		}
		if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			b.Fatal(err)
		}
		in, err := inbox.New(db.Pool, &inbox.Config{Consumer: name, ConsumerVersion: "bench", Logger: logger()})
		if err != nil {
			b.Fatal(err)
		}
		in.Register("payout.created", 1, ledgerHandler)
		c, err := kafka.New(in, consumerConfig(k.Brokers, topic, time.Second))
		if err != nil {
			b.Fatal(err)
		}
		return consumebench.Measure(b, arm, n, in, db.Pool, "ce_", ledgerHandler,
			func(f consumebench.HandleBatch) { kafka.SetHandleBatch(c, f) }, c.Run,
			func() int { return countLedger(b, db) })
	}

	consumebench.Run(b, events, rounds, "8 partitions, 1000 keys", consume)
}

func countLedger(b *testing.B, db *testenv.DB) int {
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
