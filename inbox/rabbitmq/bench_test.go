package rabbitmq_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// The arms of BenchmarkConsume.
const (
	armInbox       = "inbox"
	armHandlerOnly = "handler-only"
)

// BenchmarkConsume measures events/s through the RabbitMQ adapter with a
// one-INSERT handler, and what the inbox costs, in two arms run alternately
// in the same run. "inbox" is the adapter feeding the inbox (HandleBatch).
// "handler-only" is the same adapter, prefetch, workers, batching and acks
// on the same kind of messages, each batch applied by the same handler in
// one plain transaction: no inbox record, no order guard.
//
// For each arm and round, messages in the relay's wire format (1,000 keys)
// are published to a new queue first, then a consumer with a new name
// drains it; the clock runs from the first applied event to the last. A
// warm-up of both arms (up to 4,000 events each) is not reported. Rounds
// alternate which arm goes first (ABBA), so that drift of the machine
// weighs on both. The medians of both arms are reported, and the overhead,
// 100*(handler-only/inbox - 1): how much more time an event takes through
// the inbox.
//
//	go test -run '^$' -bench Consume -benchtime 1x ./inbox/rabbitmq/
//
// OUTBOXKIT_BENCH_EVENTS (default 20000) events per round and arm,
// OUTBOXKIT_BENCH_ROUNDS (default 5).
func BenchmarkConsume(b *testing.B) {
	events := envInt("OUTBOXKIT_BENCH_EVENTS", 20000)
	rounds := envInt("OUTBOXKIT_BENCH_ROUNDS", 5)
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

	// consume publishes n messages to a new queue and returns the events/s
	// of arm draining it as inbox consumer name.
	consume := func(arm, name string, n int) float64 {
		queue := testenv.UniqueName("okt_inbox_bench")
		if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
		defer ch.QueueDelete(queue, false, false, false) //nolint:errcheck
		seq := map[string]int64{}
		for j := range n {
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
			return err == nil && q.Messages == n
		})
		before := count(b, db.Pool, `SELECT count(*) FROM ledger`)
		in, err := inbox.New(db.Pool, &inbox.Config{Consumer: name, ConsumerVersion: "bench", Logger: logger()})
		if err != nil {
			b.Fatal(err)
		}
		in.Register("payout.created", 1, ledgerHandler)
		c, err := rabbitmq.New(in, rabbitmq.Config{URL: testenv.RabbitURL(), Queue: queue, Logger: logger()})
		if err != nil {
			b.Fatal(err)
		}
		// Progress is counted in process: a count(*) of the ledger every
		// few milliseconds would scan a growing table on the same cores as
		// the consumer it measures.
		applied := func() int64 { return in.Stats().Applied }
		if arm == armHandlerOnly {
			var committed atomic.Int64
			applied = committed.Load
			rabbitmq.SetHandleBatch(c, handlerOnly(b, db.Pool, &committed))
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(rctx) }()
		var start time.Time
		first := int64(0)
		deadline := time.Now().Add(3 * time.Minute)
		for {
			a := applied()
			if a > 0 && start.IsZero() {
				start, first = time.Now(), a
			}
			if a >= int64(n) || b.Failed() || time.Now().After(deadline) {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		rate := float64(int64(n)-first) / time.Since(start).Seconds()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if b.Failed() {
			b.FailNow()
		}
		if a := applied(); a != int64(n) {
			b.Fatalf("%s: %d events applied of %d", arm, a, n)
		}
		if rows := count(b, db.Pool, `SELECT count(*) FROM ledger`) - before; rows != n {
			b.Fatalf("%s: %d ledger rows for %d events", arm, rows, n)
		}
		return rate
	}

	rates := map[string][]float64{}
	for i := 0; i < b.N; i++ {
		warm := min(events, 4000)
		consume(armInbox, "bench-warm-"+armInbox, warm)
		consume(armHandlerOnly, "bench-warm-"+armHandlerOnly, warm)
		for r := range rounds {
			arms := []string{armInbox, armHandlerOnly}
			if r%2 == 1 {
				slices.Reverse(arms)
			}
			got := map[string]float64{}
			for _, arm := range arms {
				got[arm] = consume(arm, fmt.Sprintf("bench-%s-%d", arm, r), events)
				rates[arm] = append(rates[arm], got[arm])
			}
			b.Logf("round %d (%s first): inbox %.0f events/s, handler-only %.0f events/s, overhead %+.1f%%",
				r+1, arms[0], got[armInbox], got[armHandlerOnly], 100*(got[armHandlerOnly]/got[armInbox]-1))
		}
	}
	inboxMed, plainMed := median(rates[armInbox]), median(rates[armHandlerOnly])
	b.ReportMetric(inboxMed, "inbox-events/s")
	b.ReportMetric(plainMed, "handler-only-events/s")
	b.ReportMetric(100*(plainMed/inboxMed-1), "overhead-%")
	b.Logf("%d events per round and arm, 1000 keys, default Prefetch/Workers/BatchSize, %d rounds; events/s from the first applied event to the last, in run order: inbox %.0f, handler-only %.0f",
		events, rounds, rates[armInbox], rates[armHandlerOnly])
}

// handlerOnly settles a batch as a consumer without the inbox would: the
// ledger handler once per delivery, in order, in one plain transaction,
// with nothing read of a delivery but what the handler writes. applied
// counts the events of committed transactions; an error other than the
// consumer's stop fails the benchmark.
func handlerOnly(b *testing.B, pool *pgxpool.Pool, applied *atomic.Int64) func(context.Context, []inbox.Delivery) ([]inbox.Outcome, error) {
	return func(ctx context.Context, ds []inbox.Delivery) ([]inbox.Outcome, error) {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, d := range ds {
				ev, err := plainEvent(d)
				if err != nil {
					return err
				}
				if err := ledgerHandler(ctx, tx, ev); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			if ctx.Err() == nil {
				b.Errorf("handler-only: %v", err)
			}
			return nil, err
		}
		applied.Add(int64(len(ds)))
		outs := make([]inbox.Outcome, len(ds))
		for i := range outs {
			outs[i] = inbox.Applied
		}
		return outs, nil
	}
}

// plainEvent is the least a consumer without the inbox reads of a
// delivery: the id, key and sequence the ledger row holds.
func plainEvent(d inbox.Delivery) (*inbox.Event, error) {
	ev := &inbox.Event{Payload: d.Payload}
	for _, h := range d.Headers {
		switch h.Name {
		case "cloudEvents:id":
			id, err := uuid.ParseBytes(h.Value)
			if err != nil {
				return nil, fmt.Errorf("cloudEvents:id: %w", err)
			}
			ev.ID = id
		case "cloudEvents:partitionkey":
			ev.Key = string(h.Value)
		case "cloudEvents:sequence":
			ev.Sequence, _ = strconv.ParseInt(string(h.Value), 10, 64)
		}
	}
	return ev, nil
}

func median(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[len(xs)/2]
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
