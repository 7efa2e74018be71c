package inbox_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// smallPool is a pool of n connections on b's database, closed at cleanup.
func (b *bundle) smallPool(n int32) *pgxpool.Pool {
	b.t.Helper()
	cfg, err := pgxpool.ParseConfig(b.db.URL)
	if err != nil {
		b.t.Fatal(err)
	}
	cfg.MaxConns = n
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(pool.Close)
	return pool
}

// newOneConnBundle is a bundle whose inbox has a pool of one connection, so
// that a connection left broken or inside a transaction shows.
func newOneConnBundle(t *testing.T) (*bundle, *pgxpool.Pool) {
	b := newBundle(t, nil)
	pool := b.smallPool(1)
	b.in = b.newInbox(pool, b.cfg)
	return b, pool
}

// expectIdleConn: the pool's connection (its only one) is usable and not
// left inside a transaction.
func expectIdleConn(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if s := c.Conn().PgConn().TxStatus(); s != 'I' {
		t.Fatalf("connection back in the pool with transaction status %q", s)
	}
	var one int
	if err := c.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
		t.Fatalf("connection back in the pool unusable: %v", err)
	}
}

// A batch that would pass the one-statement claim's order check but holds
// events recorded before fails that statement (a plain INSERT); the batch is
// then settled delivery by delivery, with the same outcomes as Handle: the
// same id with another payload parks as a conflict and is not applied, an
// event already parked stays parked, redelivered events and markers are
// duplicates, new ones are applied once. The inbox's only connection comes
// back usable after each failed claim.
func TestRedeliveredMixedBatchSettlesEachDeliveryOnce(t *testing.T) {
	t.Parallel()
	b, pool := newOneConnBundle(t)
	ctx := context.Background()

	k1, k2, k3, kl := event("k", 1), event("k", 2), event("k", 3), event("", 0)
	m := marker("j", 1, uuid.Must(uuid.NewV7()))
	p := event("p", 1)
	b.fail.set(func(ev *inbox.Event) error {
		if ev.ID == p.id {
			return inbox.Permanent(errors.New("refused"))
		}
		return nil
	})
	outs, err := b.in.HandleBatch(ctx, []inbox.Delivery{k1.delivery(), k2.delivery(), k3.delivery(), kl.delivery(), m.delivery()})
	if err != nil || fmt.Sprint(outs) != "[applied applied applied applied skipped]" {
		t.Fatalf("first batch: %v %v", outs, err)
	}
	b.expect(p.delivery(), inbox.Parked)
	expectIdleConn(t, pool)

	// Everything redelivered: duplicates (and the parked one), nothing run.
	calls := b.calls.Load()
	outs, err = b.in.HandleBatch(ctx, []inbox.Delivery{k1.delivery(), k2.delivery(), k3.delivery(), kl.delivery(),
		m.delivery(), p.delivery()})
	if err != nil || fmt.Sprint(outs) != "[duplicate duplicate duplicate duplicate duplicate already_parked]" {
		t.Fatalf("redelivered batch: %v %v", outs, err)
	}
	if b.calls.Load() != calls {
		t.Fatalf("handler called %d times for a redelivered batch", b.calls.Load()-calls)
	}
	expectIdleConn(t, pool)

	// Redelivered, forged, parked and new events in one batch.
	forged := k1
	forged.payload = []byte(`{"amount":1000000}`)
	k4, kl2 := event("k", 4), event("", 0)
	outs, err = b.in.HandleBatch(ctx, []inbox.Delivery{forged.delivery(), k2.delivery(), k3.delivery(), kl.delivery(),
		m.delivery(), p.delivery(), k4.delivery(), kl2.delivery()})
	if err != nil || fmt.Sprint(outs) != "[parked duplicate duplicate duplicate duplicate already_parked applied applied]" {
		t.Fatalf("mixed batch: %v %v", outs, err)
	}
	if dl := b.deadLetter(k1.id); dl.Class != "conflict" || dl.Status != "parked" || string(dl.Payload) != string(forged.payload) {
		t.Fatalf("forged event's dead letter %+v", dl)
	}
	if n := b.count(`SELECT count(*) FROM effects WHERE event_id = $1 AND payload = $2`, k1.id, k1.payload); n != 1 {
		t.Fatalf("the original applied %d times", n)
	}
	if n := b.count(`SELECT count(*) FROM effects WHERE payload = $1`, forged.payload); n != 0 {
		t.Fatal("the forged payload was applied")
	}
	if got := fmt.Sprint(b.effectOrder("k")); got != "[1 2 3 4]" {
		t.Fatalf("k applied %s", got)
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != 6 { // k 1-4, two keyless
		t.Fatalf("%d effects, want 6", n)
	}
	if n := b.count(`SELECT count(*) FROM inbox.processed`); n != 7 { // and the marker
		t.Fatalf("%d processed records, want 7", n)
	}
	expectIdleConn(t, pool)
}

// Two instances of one consumer (a Kafka rebalance overlap) handle the
// same stream at once, in batches of different sizes: each event is
// applied exactly once, by one of them, in its key's order; the other
// settles it as a duplicate.
func TestConcurrentInstancesHandleOverlappingBatches(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	ctx := context.Background()
	const keys, perKey, keyless = 8, 25, 40
	var evs []testEvent
	for i := range perKey {
		for k := range keys {
			evs = append(evs, event(fmt.Sprintf("acct-%d", k), int64(i+1)))
		}
		if i < keyless {
			evs = append(evs, event("", 0))
		}
	}
	ds := make([]inbox.Delivery, len(evs))
	for i, e := range evs {
		ds[i] = e.delivery()
	}
	instances := []*inbox.Inbox{b.in, b.newInbox(b.smallPool(4), b.cfg)}
	sizes := []int{10, 7}
	outs := make([][]inbox.Outcome, len(instances))
	errs := make([]error, len(instances))
	var wg sync.WaitGroup
	for n, in := range instances {
		wg.Go(func() {
			for start := 0; start < len(ds); start += sizes[n] {
				o, err := in.HandleBatch(ctx, ds[start:min(start+sizes[n], len(ds))])
				if err != nil {
					errs[n] = err
					return
				}
				outs[n] = append(outs[n], o...)
			}
		})
	}
	wg.Wait()
	for n, err := range errs {
		if err != nil || len(outs[n]) != len(ds) {
			t.Fatalf("instance %d: %d outcomes, %v", n, len(outs[n]), err)
		}
	}
	for i := range ds {
		a, c := outs[0][i], outs[1][i]
		if !(a == inbox.Applied && c == inbox.Duplicate) && !(a == inbox.Duplicate && c == inbox.Applied) {
			t.Fatalf("event %d settled %s and %s", i, a, c)
		}
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != len(evs) {
		t.Fatalf("%d effects, want %d", n, len(evs))
	}
	if n := b.count(`SELECT count(DISTINCT event_id) FROM effects`); n != len(evs) {
		t.Fatalf("%d events applied, want %d", n, len(evs))
	}
	b.requireKeysInOrderNoDeadLetters(keys)
}

// A batch whose claim waits for another instance's uncommitted record of
// one of its events, cancelled meanwhile: nothing settled, nothing applied,
// the inbox's connection back usable. When the other instance commits the
// record, the event is a duplicate; the others are applied once.
func TestHandleBatchCancelledWhileClaimWaits(t *testing.T) {
	t.Parallel()
	b, pool := newOneConnBundle(t)
	ctx := context.Background()
	e1, e2, e3 := event("k", 1), event("k", 2), event("", 0)
	ds := []inbox.Delivery{e1.delivery(), e2.delivery(), e3.delivery()}

	other, err := b.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(ctx) //nolint:errcheck
	sha := sha256.Sum256(e3.payload)
	if _, err := other.Exec(ctx, `INSERT INTO inbox.processed (consumer, event_id, topic, key, sequence, payload_sha256)
		VALUES ('billing', $1, 'payments', '', NULL, $2)`, e3.id, sha[:]); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	outs, err := b.in.HandleBatch(cctx, ds)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || len(outs) != 0 {
		t.Fatalf("cancelled batch: %v %v", outs, err)
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != 0 || b.calls.Load() != 0 {
		t.Fatalf("%d effects, %d handler calls after a cancelled batch", n, b.calls.Load())
	}
	expectIdleConn(t, pool)
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	outs, err = b.in.HandleBatch(ctx, ds)
	if err != nil || fmt.Sprint(outs) != "[applied applied duplicate]" {
		t.Fatalf("batch after the other instance committed: %v %v", outs, err)
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != 2 {
		t.Fatalf("%d effects, want 2", n)
	}
	expectIdleConn(t, pool)
}

// HandleBatch with dead letters of several consumers: an event parked or
// dropped for this consumer is left alone (already_parked, its handler never
// run), while one parked only for another consumer (keyed or not), or whose
// dead letter of this consumer is closed, is applied once, in its key's
// order. Open dead letters of this consumer for other events (one without an
// event id, as a malformed delivery leaves) hold nothing back.
func TestHandleBatchSeesOnlyThisConsumersOpenDeadLetters(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	ctx := context.Background()
	dl := func(consumer string, id *uuid.UUID, status string) {
		t.Helper()
		testenv.InsertInboxDeadLetter(t, b.db.Pool, consumer, id, "payments", status, nil)
	}
	a1, mine, theirs, a2, dropped, closed, kl := event("acct", 1), event("", 0), event("", 0), event("acct", 2),
		event("", 0), event("", 0), event("", 0)
	a3, theirs2, a4 := event("acct", 3), event("", 0), event("acct", 4)
	dl("billing", &mine.id, "parked")
	dl("billing", &dropped.id, "dropped")
	dl("billing", nil, "parked")
	dl("reporting", &theirs.id, "parked")
	dl("reporting", &theirs.id, "dropped")
	dl("reporting", &a2.id, "parked")
	dl("reporting", &theirs2.id, "parked")
	dl("reporting", &closed.id, "parked")
	dl("billing", &closed.id, "resolved") // not open: the claims read the status only

	outs, err := b.in.HandleBatch(ctx, []inbox.Delivery{a1.delivery(), mine.delivery(), theirs.delivery(), a2.delivery(),
		dropped.delivery(), closed.delivery(), kl.delivery()})
	if err != nil || fmt.Sprint(outs) != "[applied already_parked applied applied already_parked applied applied]" {
		t.Fatalf("batch with a parked event: %v %v", outs, err)
	}
	// Nothing of this batch is open for billing, though billing has open dead
	// letters (TestClaimsParkedAnswer checks the batch claim says so itself).
	outs, err = b.in.HandleBatch(ctx, []inbox.Delivery{a3.delivery(), theirs2.delivery(), a4.delivery()})
	if err != nil || fmt.Sprint(outs) != "[applied applied applied]" {
		t.Fatalf("batch parked only for another consumer: %v %v", outs, err)
	}
	for _, e := range []testEvent{a1, theirs, a2, closed, kl, a3, theirs2, a4} {
		if n := b.count(`SELECT count(*) FROM effects WHERE event_id = $1`, e.id); n != 1 {
			t.Fatalf("event %s applied %d times", e.id, n)
		}
	}
	if n := b.count(`SELECT count(*) FROM effects WHERE event_id IN ($1, $2)`, mine.id, dropped.id); n != 0 || b.calls.Load() != 8 {
		t.Fatalf("parked events applied %d times; %d handler calls, want 8", n, b.calls.Load())
	}
	if got := fmt.Sprint(b.effectOrder("acct")); got != "[1 2 3 4]" {
		t.Fatalf("acct applied %s", got)
	}
	if n := b.count(`SELECT count(*) FROM inbox.dead_letters`); n != 9 {
		t.Fatalf("%d dead letters, want the 9 of the setup", n)
	}
}
