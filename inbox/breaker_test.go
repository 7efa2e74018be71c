package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// outage simulates a dependency of the handler: while down, every call
// fails with err(); it tracks how many handler calls run at once.
type outage struct {
	down     atomic.Bool
	inflight atomic.Int64
	maxSeen  atomic.Int64
}

func (o *outage) call(err func() error) error {
	n := o.inflight.Add(1)
	defer o.inflight.Add(-1)
	for {
		m := o.maxSeen.Load()
		if n <= m || o.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if o.down.Load() {
		time.Sleep(2 * time.Millisecond) // a call that takes a moment to fail
		return err()
	}
	return nil
}

// handleAll handles evs concurrently (one goroutine per key, as adapters
// do) and returns a wait function that reports their outcomes.
func handleAll(b *bundle, evs []testEvent) func() []inbox.Outcome {
	var wg sync.WaitGroup
	outs := make([]inbox.Outcome, len(evs))
	errs := make([]error, len(evs))
	for i, e := range evs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			outs[i], errs[i] = b.in.Handle(ctx, e.delivery())
		})
	}
	return func() []inbox.Outcome {
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.t.Fatalf("Handle: %v", err)
			}
		}
		return outs
	}
}

func manyKeys(n int) []testEvent {
	evs := make([]testEvent, n)
	for i := range evs {
		evs[i] = event(fmt.Sprintf("acct-%d", i), 1)
	}
	return evs
}

// A handler reports its dependency down (Unavailable): the breaker opens at
// once, deliveries wait with one probe at a time, no attempt is counted and
// nothing is parked; when the dependency is back, everything is applied.
func TestBreakerOpensOnUnavailableWithoutParking(t *testing.T) {
	t.Parallel()
	cfg := fastConfig("billing")
	cfg.MaxAttempts = 2
	b := newBundle(t, cfg)
	var dep outage
	dep.down.Store(true)
	b.fail.set(func(*inbox.Event) error {
		return dep.call(func() error { return inbox.Unavailable(errors.New("payments partner answers 503")) })
	})
	evs := manyKeys(10)
	wait := handleAll(b, evs)
	testenv.Eventually(t, 10*time.Second, "breaker open", b.in.BreakerOpen)
	testenv.Eventually(t, 10*time.Second, "probes recorded", func() bool {
		return b.count(`SELECT count(*) FROM inbox.attempts WHERE outcome = 'not_counted'`) >= 20
	})
	dep.maxSeen.Store(0)
	before := b.calls.Load()
	time.Sleep(300 * time.Millisecond) // observe the open breaker for a while (nothing to await: it must stay quiet)
	if m := dep.maxSeen.Load(); m > 1 {
		t.Fatalf("%d handler calls at once while the breaker was open, want one probe at a time", m)
	}
	if calls := b.calls.Load() - before; calls > 30 {
		t.Fatalf("%d handler calls in 300ms while open: the breaker does not hold deliveries back", calls)
	}
	if n := b.count(`SELECT count(*) FROM inbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters during an outage", n)
	}
	dep.down.Store(false)
	for i, out := range wait() {
		if out != inbox.Applied {
			t.Fatalf("event %d: %s", i, out)
		}
	}
	if b.in.BreakerOpen() {
		t.Fatal("breaker still open")
	}
	if n := b.count(`SELECT count(*) FROM inbox.attempts WHERE outcome <> 'not_counted'`); n != 0 {
		t.Fatalf("%d attempts counted during an outage", n)
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != len(evs) {
		t.Fatalf("%d effects", n)
	}
}

// Ordinary (transient) errors from many distinct events in a row open the
// breaker too; attempts made while it is open are not counted, so the
// events are not burnt through their attempts into the dead letters.
func TestBreakerOpensOnFailuresAcrossKeys(t *testing.T) {
	t.Parallel()
	cfg := fastConfig("billing")
	cfg.MaxAttempts = 3
	cfg.BackoffBase, cfg.BackoffMax = 50*time.Millisecond, 100*time.Millisecond
	cfg.Breaker.Threshold = 3
	b := newBundle(t, cfg)
	var dep outage
	dep.down.Store(true)
	evs := manyKeys(8)
	// The events' first attempts fail together, as when a dependency goes
	// down under load (without this, on a slow machine one event could use
	// up its attempts before the others made their first).
	var mu sync.Mutex
	first := map[string]bool{}
	together := make(chan struct{})
	b.fail.set(func(ev *inbox.Event) error {
		mu.Lock()
		if !first[ev.Key] {
			first[ev.Key] = true
			if len(first) == len(evs) {
				close(together)
			}
		}
		mu.Unlock()
		<-together
		return dep.call(func() error { return errors.New("ledger service timeout") })
	})
	wait := handleAll(b, evs)
	testenv.Eventually(t, 10*time.Second, "breaker open", b.in.BreakerOpen)
	testenv.Eventually(t, 10*time.Second, "attempts not counted", func() bool {
		return b.count(`SELECT count(*) FROM inbox.attempts WHERE outcome = 'not_counted'`) >= 20
	})
	dep.down.Store(false)
	for i, out := range wait() {
		if out != inbox.Applied {
			t.Fatalf("event %d: %s", i, out)
		}
	}
	if n := b.count(`SELECT count(*) FROM inbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
	if n := b.count(`SELECT max(attempt) FROM inbox.attempts`); n >= cfg.MaxAttempts {
		t.Fatalf("an event reached attempt %d of %d", n, cfg.MaxAttempts)
	}
}

// One event failing again and again does not open the breaker: it is that
// event's problem, and it is parked after its attempts.
func TestBreakerIgnoresOneFailingEvent(t *testing.T) {
	t.Parallel()
	cfg := fastConfig("billing")
	cfg.MaxAttempts = 8
	cfg.Breaker.Threshold = 2
	b := newBundle(t, cfg)
	e := event("k", 1)
	b.fail.set(func(*inbox.Event) error { return errors.New("bad row") })
	b.expect(e.delivery(), inbox.Parked)
	if b.in.BreakerOpen() {
		t.Fatal("breaker opened for a single event")
	}
	if dl := b.deadLetter(e.id); dl.Attempts != 8 {
		t.Fatalf("attempts %d", dl.Attempts)
	}
}

// The inbox's own database goes away: every delivery waits (breaker open,
// nothing can be parked anyway, nothing is lost), and all are applied once
// the database is back.
func TestDatabaseOutageWaits(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	u, err := url.Parse(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	px := testenv.Proxy(t, "postgres", u.Host)
	u.Host = px.Listen
	pcfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Fatal(err)
	}
	pcfg.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	b.in = b.newInbox(pool, b.cfg)
	b.expect(event("warm", 1).delivery(), inbox.Applied)

	px.Stop()
	evs := manyKeys(6)
	wait := handleAll(b, evs)
	testenv.Eventually(t, 10*time.Second, "breaker open", b.in.BreakerOpen)
	if err := px.Start(); err != nil {
		t.Fatal(err)
	}
	for i, out := range wait() {
		if out != inbox.Applied {
			t.Fatalf("event %d: %s", i, out)
		}
	}
	if n := b.count(`SELECT count(*) FROM inbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != len(evs)+1 {
		t.Fatalf("%d effects", n)
	}
}
