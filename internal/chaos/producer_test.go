package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/outbox"
)

// kind is what an event is meant to exercise.
type kind uint8

const (
	kindNormal     kind = iota // applied by its topic's consumer
	kindNoHandler              // published; its consumer has no handler: parked as no_handler
	kindUnroutable             // no queue bound to its routing key: parked by the relay as unroutable
)

func (k kind) String() string {
	return [...]string{"normal", "no_handler", "unroutable"}[k]
}

// state is what the producer knows of an event's transaction.
type state uint8

const (
	stInFlight   state = iota
	stCommitted        // Commit returned nil
	stRolledBack       // rolled back, or failed before Commit
	stUncertain        // Commit returned an error: the checker asks the database
)

// event is the producer's record of one event, kept independently of the
// outbox: the checker compares it with the database and the brokers.
type event struct {
	id        uuid.UUID
	topic     string
	key       string
	amount    int64
	kind      kind
	state     state
	commitAt  time.Time
	appliedAt time.Time // when the feeder first saw it in chaos.applied
}

// ledger is every event the producers wrote, committed or not.
type ledger struct {
	mu        sync.Mutex
	events    map[uuid.UUID]*event
	unapplied map[uuid.UUID]*event // normal, committed or uncertain, not yet seen applied

	txCommitted, txRolledBack, txFailed, txUncertain, txHeld int
	single, batches                                          int
}

func newLedger() *ledger {
	return &ledger{events: map[uuid.UUID]*event{}, unapplied: map[uuid.UUID]*event{}}
}

func (l *ledger) add(evs []*event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range evs {
		l.events[ev.id] = ev
	}
}

func (l *ledger) settle(evs []*event, st state) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range evs {
		ev.state = st
		if st == stCommitted {
			ev.commitAt = now
		}
		if ev.kind == kindNormal && (st == stCommitted || st == stUncertain) {
			l.unapplied[ev.id] = ev
		}
	}
}

// unappliedIDs returns the events the feeder should look for.
func (l *ledger) unappliedIDs() []uuid.UUID {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]uuid.UUID, 0, len(l.unapplied))
	for id := range l.unapplied {
		ids = append(ids, id)
	}
	return ids
}

func (l *ledger) markApplied(ids []uuid.UUID, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		if ev, ok := l.unapplied[id]; ok {
			ev.appliedAt = at
			delete(l.unapplied, id)
		}
	}
}

// pendingBefore returns the committed normal events, committed at or before
// t, that were not seen applied yet.
func (l *ledger) pendingBefore(t time.Time) []*event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*event
	for _, ev := range l.unapplied {
		if ev.state == stCommitted && !ev.commitAt.After(t) {
			out = append(out, ev)
		}
	}
	return out
}

func (l *ledger) appliedAtOf(evs []*event) (all bool, last time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range evs {
		if ev.appliedAt.IsZero() {
			return false, time.Time{}
		}
		if ev.appliedAt.After(last) {
			last = ev.appliedAt
		}
	}
	return true, last
}

// appliedBetween counts events seen applied in [from, to).
func (l *ledger) appliedBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.events {
		if !ev.appliedAt.IsZero() && !ev.appliedAt.Before(from) && ev.appliedAt.Before(to) {
			n++
		}
	}
	return n
}

func (l *ledger) snapshot() []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]event, 0, len(l.events))
	for _, ev := range l.events {
		out = append(out, *ev)
	}
	return out
}

// producers commit and roll back events on many keys: single Enqueue and
// EnqueueBatch, about 30% rolled back, 2% of the transactions held open for
// seconds while they hold their lanes' locks.
type producers struct {
	pool      *pgxpool.Pool
	ledger    *ledger
	writer    *outbox.Writer
	quiet     *outbox.Writer // DisableNotify: the relays find its events by polling
	notifyOff atomic.Bool
	seed      uint64
	rate      int // events per second, all producers together
	n         int // goroutines
}

const (
	numKeys      = 200
	rollbackRate = 0.30
	holdRate     = 0.02
)

func newProducers(pool *pgxpool.Pool, l *ledger, seed uint64, rate int) (*producers, error) {
	w, err := outbox.NewWriter(nil)
	if err != nil {
		return nil, err
	}
	q, err := outbox.NewWriter(&outbox.Config{DisableNotify: true})
	if err != nil {
		return nil, err
	}
	return &producers{pool: pool, ledger: l, writer: w, quiet: q, seed: seed, rate: max(rate, 1), n: 4}, nil
}

// run produces until ctx ends; it returns when every goroutine has.
func (p *producers) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range p.n {
		wg.Go(func() { p.loop(ctx, i) })
	}
	wg.Wait()
}

func (p *producers) loop(ctx context.Context, i int) {
	rng := rand.New(rand.NewPCG(p.seed, uint64(i)+1))
	// A transaction carries 2.5 events on average.
	interval := time.Duration(float64(time.Second) * 2.5 * float64(p.n) / float64(p.rate))
	next := time.Now()
	for ctx.Err() == nil {
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		} else if d < -5*time.Second {
			next = time.Now() // far behind (the database was away): do not burst
		}
		p.transaction(rng)
	}
}

func (p *producers) newEvent(rng *rand.Rand) *event {
	ev := &event{id: uuid.Must(uuid.NewV7()), amount: 1 + rng.Int64N(1000)}
	switch r := rng.Float64(); {
	case r < 0.01:
		ev.kind = kindNoHandler
		ev.topic = topicKafka
		if rng.IntN(2) == 0 {
			ev.topic = topicRabbit
		}
		ev.key = "poison-" + ev.id.String()[24:]
	case r < 0.015:
		ev.kind = kindUnroutable
		ev.topic = topicUnrouted
		ev.key = "unrouted-" + ev.id.String()[24:]
	default:
		ev.topic = topicKafka
		if rng.Float64() < 0.4 {
			ev.topic = topicRabbit
		}
		if rng.Float64() >= 0.1 {
			ev.key = fmt.Sprintf("acct-%03d", rng.IntN(numKeys))
		}
	}
	return ev
}

func (ev *event) message() outbox.Message {
	typ := eventTypeTransfer
	if ev.kind == kindNoHandler {
		typ = eventTypeUnknown
	}
	return outbox.Message{ID: ev.id, Topic: ev.topic, Key: ev.key, Type: typ, Version: 1,
		Payload:       fmt.Appendf(nil, `{"amount":%d,"event":"%s"}`, ev.amount, ev.id),
		CorrelationID: "chaos-" + ev.id.String()[:8]}
}

// transaction writes one business transaction: a transfers row per event
// and the events, then commits or rolls back. Its outcome goes to the
// ledger. The transaction runs to its end even when the run stops.
func (p *producers) transaction(rng *rand.Rand) {
	ctx := context.Background()
	batch := rng.IntN(2) == 0
	n := 1
	if batch {
		n = 2 + rng.IntN(5)
	}
	evs := make([]*event, n)
	for i := range evs {
		evs[i] = p.newEvent(rng)
	}
	hold := rng.Float64() < holdRate
	rollback := rng.Float64() < rollbackRate
	p.ledger.add(evs)

	fail := func() {
		p.ledger.settle(evs, stRolledBack)
		p.ledger.mu.Lock()
		p.ledger.txFailed++
		p.ledger.mu.Unlock()
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tx, err := p.pool.Begin(tctx)
	if err != nil {
		fail()
		return
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	ids := make([]uuid.UUID, n)
	topics, keys, kinds := make([]string, n), make([]string, n), make([]string, n)
	amounts := make([]int64, n)
	msgs := make([]outbox.Message, n)
	for i, ev := range evs {
		ids[i], topics[i], keys[i], amounts[i], kinds[i] = ev.id, ev.topic, ev.key, ev.amount, ev.kind.String()
		msgs[i] = ev.message()
	}
	if _, err := tx.Exec(tctx, `INSERT INTO chaos.transfers (event_id, topic, key, amount, kind)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[])`,
		ids, topics, keys, amounts, kinds); err != nil {
		fail()
		return
	}
	w := p.writer
	if p.notifyOff.Load() {
		w = p.quiet
	}
	if batch {
		_, err = w.EnqueueBatch(tctx, tx, msgs)
	} else {
		_, err = w.Enqueue(tctx, tx, msgs[0])
	}
	if err != nil {
		fail()
		return
	}
	if hold {
		// Hold the transaction, and its lanes' row locks, open for 1-3s.
		time.Sleep(time.Second + time.Duration(rng.Int64N(int64(2*time.Second))))
	}
	p.ledger.mu.Lock()
	if batch {
		p.ledger.batches++
	} else {
		p.ledger.single++
	}
	if hold {
		p.ledger.txHeld++
	}
	p.ledger.mu.Unlock()
	if rollback {
		tx.Rollback(ctx) //nolint:errcheck // whatever it returns, nothing was committed
		p.ledger.settle(evs, stRolledBack)
		p.ledger.mu.Lock()
		p.ledger.txRolledBack++
		p.ledger.mu.Unlock()
		return
	}
	err = tx.Commit(tctx)
	st := stCommitted
	switch {
	case err == nil:
	case errors.Is(err, pgx.ErrTxCommitRollback):
		st = stRolledBack
	default:
		st = stUncertain
	}
	p.ledger.settle(evs, st)
	p.ledger.mu.Lock()
	switch st {
	case stCommitted:
		p.ledger.txCommitted++
	case stRolledBack:
		p.ledger.txFailed++
	default:
		p.ledger.txUncertain++
	}
	p.ledger.mu.Unlock()
}

// feed polls chaos.applied for the events not yet seen applied, every
// 200ms, until ctx ends: the time each event was first seen applied is what
// recovery times are measured with.
func feed(ctx context.Context, pool *pgxpool.Pool, l *ledger) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids := l.unappliedIDs()
		for len(ids) > 0 {
			chunk := ids[:min(len(ids), 5000)]
			ids = ids[len(chunk):]
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			rows, err := pool.Query(qctx, `SELECT DISTINCT event_id FROM chaos.applied WHERE event_id = ANY($1)`, chunk)
			var found []uuid.UUID
			if err == nil {
				found, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
			}
			cancel()
			if err != nil {
				break // the database may be away (a fault): next tick
			}
			l.markApplied(found, time.Now())
		}
	}
}
