// Package consumebench is the harness of the consumer benchmarks
// (inbox/kafka and inbox/rabbitmq BenchmarkConsume): the same adapter run
// with the inbox and without it, in alternating rounds of one run, and the
// overhead of the inbox between the two.
package consumebench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
)

// The arms of a consumer benchmark.
const (
	// ArmInbox is the adapter feeding the inbox (HandleBatch).
	ArmInbox = "inbox"
	// ArmHandlerOnly is the same adapter with each batch applied by
	// HandlerOnly: no inbox record, no order guard.
	ArmHandlerOnly = "handler-only"
)

// HandleBatch is what an adapter settles a batch with: the inbox's
// HandleBatch, or HandlerOnly.
type HandleBatch = func(context.Context, []inbox.Delivery) ([]inbox.Outcome, error)

// Consume runs one arm over n new events, as consumer (and group or queue)
// name, and returns its events/s.
type Consume func(arm, name string, n int) float64

// Run warms both arms up (up to 4,000 events each, not reported), then runs
// rounds of both with events each, alternating which arm goes first (ABBA)
// so that drift of the machine weighs on both, and reports the medians and
// the overhead, 100*(handler-only/inbox - 1): how much more time an event
// takes through the inbox. setup names the benchmark's shape in the log.
func Run(b *testing.B, events, rounds int, setup string, consume Consume) {
	rates := map[string][]float64{}
	for i := 0; i < b.N; i++ {
		warm := min(events, 4000)
		consume(ArmInbox, "bench-warm-"+ArmInbox, warm)
		consume(ArmHandlerOnly, "bench-warm-"+ArmHandlerOnly, warm)
		for r := range rounds {
			arms := []string{ArmInbox, ArmHandlerOnly}
			if r%2 == 1 {
				slices.Reverse(arms)
			}
			got := map[string]float64{}
			for _, arm := range arms {
				got[arm] = consume(arm, fmt.Sprintf("bench-%s-%d", arm, r), events)
				rates[arm] = append(rates[arm], got[arm])
			}
			b.Logf("round %d (%s first): inbox %.0f events/s, handler-only %.0f events/s, overhead %+.1f%%",
				r+1, arms[0], got[ArmInbox], got[ArmHandlerOnly], 100*(got[ArmHandlerOnly]/got[ArmInbox]-1))
		}
	}
	inboxMed, plainMed := median(rates[ArmInbox]), median(rates[ArmHandlerOnly])
	b.ReportMetric(inboxMed, "inbox-events/s")
	b.ReportMetric(plainMed, "handler-only-events/s")
	b.ReportMetric(100*(plainMed/inboxMed-1), "overhead-%")
	b.Logf("%d events per round and arm, %s, %d rounds; events/s from the first applied event to the last, in run order: inbox %.0f, handler-only %.0f",
		events, setup, rounds, rates[ArmInbox], rates[ArmHandlerOnly])
}

// HandlerOnly settles a batch as a consumer without the inbox would: handler
// once per delivery, in order, in one plain transaction, with nothing read
// of a delivery but the id, key and sequence (attributes named with prefix:
// "ce_" on Kafka, "cloudEvents:" on AMQP). applied counts the events of
// committed transactions; an error other than the consumer's stop fails the
// benchmark.
func HandlerOnly(b *testing.B, pool *pgxpool.Pool, prefix string, handler inbox.Handler, applied *atomic.Int64) HandleBatch {
	return func(ctx context.Context, ds []inbox.Delivery) ([]inbox.Outcome, error) {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, d := range ds {
				ev, err := plainEvent(d, prefix)
				if err != nil {
					return err
				}
				if err := handler(ctx, tx, ev); err != nil {
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

// plainEvent is the least a consumer without the inbox reads of a delivery:
// the id, key and sequence a ledger row holds.
func plainEvent(d inbox.Delivery, prefix string) (*inbox.Event, error) {
	ev := &inbox.Event{Payload: d.Payload}
	for _, h := range d.Headers {
		switch h.Name {
		case prefix + "id":
			id, err := uuid.ParseBytes(h.Value)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", h.Name, err)
			}
			ev.ID = id
		case prefix + "partitionkey":
			ev.Key = string(h.Value)
		case prefix + "sequence":
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

// Measure runs one arm of a consumer over n events and returns its events/s:
// run is the adapter's Run (with the inbox in), setHandleBatch its seam for
// the handler-only arm, ledgerRows counts the handler's rows. The clock
// runs from the first applied event (joining a group or starting to
// consume is not throughput) to the n-th; afterwards exactly n events must
// be applied and n ledger rows written.
func Measure(b *testing.B, arm string, n int, in *inbox.Inbox, pool *pgxpool.Pool, prefix string, handler inbox.Handler,
	setHandleBatch func(HandleBatch), run func(context.Context) error,
	ledgerRows func() int) float64 {
	before := ledgerRows()
	// Progress is counted in process: a count(*) of the ledger every few
	// milliseconds would scan a growing table on the same cores as the
	// consumer it measures.
	applied := func() int64 { return in.Stats().Applied }
	if arm == ArmHandlerOnly {
		var committed atomic.Int64
		applied = committed.Load
		setHandleBatch(HandlerOnly(b, pool, prefix, handler, &committed))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
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
	if rows := ledgerRows() - before; rows != n {
		b.Fatalf("%s: %d ledger rows for %d events", arm, rows, n)
	}
	return rate
}
