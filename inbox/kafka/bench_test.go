package kafka_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/kafka"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// BenchmarkConsume measures events/s through the Kafka adapter and the
// inbox, with a one-INSERT handler: records in the relay's wire format are
// produced first (8 partitions, 1,000 keys), then a consumer group reads
// them all; the clock runs from its start until the last event is applied.
// Each round uses a new topic and group; the median is reported.
//
//	go test -run '^$' -bench Consume -benchtime 1x ./inbox/kafka/
//
// OUTBOXKIT_BENCH_EVENTS (default 20000), OUTBOXKIT_BENCH_ROUNDS (default 3).
func BenchmarkConsume(b *testing.B) {
	events := envInt("OUTBOXKIT_BENCH_EVENTS", 20000)
	rounds := envInt("OUTBOXKIT_BENCH_ROUNDS", 3)
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
	var rates []float64
	for i := 0; i < b.N; i++ {
		for r := range rounds {
			topic := testenv.UniqueName("bench")
			k.CreateTopic(b, topic, 8)
			seq := map[string]int64{}
			recs := make([]*kgo.Record, events)
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
			before := countLedger(b, db)
			in, err := inbox.New(db.Pool, &inbox.Config{Consumer: "bench-" + strconv.Itoa(r), ConsumerVersion: "bench", Logger: logger()})
			if err != nil {
				b.Fatal(err)
			}
			in.Register("payout.created", 1, ledgerHandler)
			cfg := consumerConfig(k.Brokers, topic, time.Second)
			c, err := kafka.New(in, cfg)
			if err != nil {
				b.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- c.Run(rctx) }()
			// The clock starts at the first applied event: joining the
			// group is not part of the throughput. Progress is the inbox's
			// own count of committed events: counting the ledger in SQL
			// every few milliseconds would scan a growing table on the
			// same two cores and slow the consumer it measures.
			var start time.Time
			first := 0
			for {
				n := int(in.Stats().Applied)
				if n > 0 && start.IsZero() {
					start, first = time.Now(), n
				}
				if n >= events {
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			rates = append(rates, float64(events-first)/time.Since(start).Seconds())
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			if s := in.Stats(); s.Applied != int64(events) {
				b.Fatalf("stats %+v", s)
			}
			if n := countLedger(b, db) - before; n != events {
				b.Fatalf("%d ledger rows for %d events", n, events)
			}
		}
	}
	slices.Sort(rates)
	b.ReportMetric(rates[len(rates)/2], "events/s")
	b.Logf("%d events per round, 8 partitions, 1000 keys; rounds (events/s, from the first applied event to the last): %.0f", events, rates)
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
