package rabbitmq_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// BenchmarkConsume measures events/s through the RabbitMQ adapter and the
// inbox, with a one-INSERT handler: messages in the relay's wire format
// (1,000 keys) are published to a queue first, then the consumer drains it;
// the clock runs from the first applied event to the last. Each round uses
// a new queue and consumer name; the median is reported.
//
//	go test -run '^$' -bench Consume -benchtime 1x ./inbox/rabbitmq/
//
// OUTBOXKIT_BENCH_EVENTS (default 20000), OUTBOXKIT_BENCH_ROUNDS (default 3).
func BenchmarkConsume(b *testing.B) {
	events := envInt("OUTBOXKIT_BENCH_EVENTS", 20000)
	rounds := envInt("OUTBOXKIT_BENCH_ROUNDS", 3)
	db := testenv.NewDB(b)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, ledgerTable); err != nil {
		b.Fatal(err)
	}
	conn := testenv.Rabbit(b)
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	var rates []float64
	for i := 0; i < b.N; i++ {
		for r := range rounds {
			queue := testenv.UniqueName("okt_inbox_bench")
			if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
				b.Fatal(err)
			}
			seq := map[string]int64{}
			for j := range events {
				key := fmt.Sprintf("payout-%d", j%1000)
				seq[key]++
				err := ch.PublishWithContext(ctx, "", queue, false, false, amqp.Publishing{
					ContentType: "application/json", MessageId: uuid.Must(uuid.NewV7()).String(), Type: "payout.created",
					Body: []byte(`{"amount_cents":12500,"currency":"EUR"}`),
					Headers: amqp.Table{"cloudEvents:specversion": "1.0", "cloudEvents:id": uuid.Must(uuid.NewV7()).String(),
						"cloudEvents:source": "/bench", "cloudEvents:type": "payout.created",
						"cloudEvents:partitionkey": key, "cloudEvents:sequence": strconv.FormatInt(seq[key], 10)},
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			testenv.Eventually(b, 60*time.Second, "queue filled", func() bool {
				q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
				return err == nil && q.Messages == events
			})
			before := count(b, db.Pool, `SELECT count(*) FROM ledger`)
			in := newInbox(b, db.Pool)
			_ = r
			c, err := rabbitmq.New(in, rabbitmq.Config{URL: testenv.RabbitURL(), Queue: queue, Logger: logger()})
			if err != nil {
				b.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- c.Run(rctx) }()
			// Progress is the inbox's own count of committed events: a
			// count(*) of the ledger every few milliseconds would scan a
			// growing table on the same cores as the consumer it measures.
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
			if n := count(b, db.Pool, `SELECT count(*) FROM ledger`) - before; n != events {
				b.Fatalf("%d ledger rows for %d events", n, events)
			}
			ch.QueueDelete(queue, false, false, false) //nolint:errcheck
		}
	}
	slices.Sort(rates)
	b.ReportMetric(rates[len(rates)/2], "events/s")
	b.Logf("%d events per round, 1000 keys, default Prefetch/Workers/BatchSize; rounds (events/s): %.0f", events, rates)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
