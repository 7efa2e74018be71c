package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// marker is the skip marker an operator's drop of event dropped leaves in
// sequence seq of key: as internal/ops writes it, no payload.
func marker(key string, seq int64, dropped uuid.UUID) testEvent {
	e := event(key, seq)
	e.typ, e.payload = wire.SkippedType, []byte{}
	e.extraHdr = []inbox.Header{{Name: wire.SkippedHeader, Value: []byte(dropped.String())}}
	return e
}

// A skip marker moves its key's lane without calling a handler: events 1
// and 3 are applied around the dropped 2, the marker is recorded as
// processed, a redelivery of it is a duplicate, and it is never parked as
// "no handler for outboxkit.skipped" (no handler is registered for it).
func TestSkipMarkerAdvancesLane(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	var markerCalls int
	b.fail.set(func(ev *inbox.Event) error {
		if ev.Type == wire.SkippedType {
			markerCalls++
		}
		return nil
	})
	m := marker("k", 2, uuid.Must(uuid.NewV7()))
	b.expect(event("k", 1).delivery(), inbox.Applied)
	b.expect(m.delivery(), inbox.Skipped)
	b.expect(event("k", 3).delivery(), inbox.Applied)
	b.expect(m.delivery(), inbox.Duplicate)
	if got := fmt.Sprint(b.effectOrder("k")); got != "[1 3]" {
		t.Fatalf("applied %s, want [1 3]", got)
	}
	if markerCalls != 0 || b.calls.Load() != 2 {
		t.Fatalf("handler called %d times (%d for the marker), want 2 and 0", b.calls.Load(), markerCalls)
	}
	if n := b.count(`SELECT count(*) FROM inbox.processed WHERE event_id = $1 AND sequence = 2`, m.id); n != 1 {
		t.Fatalf("marker recorded %d times, want 1", n)
	}
	if n := b.count(`SELECT count(*) FROM inbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters, want none", n)
	}
	if st := b.in.Stats(); st.Skipped != 1 || st.Applied != 2 || st.Duplicate != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A handler registered for outboxkit.skipped is not called for a marker
// either: the marker is the inbox's business.
func TestSkipMarkerIgnoresRegisteredHandler(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	b.in.Register(wire.SkippedType, 1, func(context.Context, pgx.Tx, *inbox.Event) error {
		return errors.New("called for a skip marker")
	})
	b.expect(event("k", 1).delivery(), inbox.Applied)
	b.expect(marker("k", 2, uuid.Must(uuid.NewV7())).delivery(), inbox.Skipped)
	b.expect(event("k", 3).delivery(), inbox.Applied)
}

// An event a producer typed outboxkit.skipped, without the operator's
// header, is an ordinary event: with no handler it parks, it never moves
// the lane silently.
func TestSkippedTypeWithoutMarkerHeaderIsNotSkipped(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	b.expect(event("k", 1).delivery(), inbox.Applied)
	e := event("k", 2)
	e.typ = wire.SkippedType
	b.expect(e.delivery(), inbox.Parked)
	if dl := b.deadLetter(e.id); dl.Class != "no_handler" {
		t.Fatalf("class %s, want no_handler", dl.Class)
	}
	b.expect(event("k", 3).delivery(), inbox.Blocked)
}

// HandleBatch applies a run with a marker in one transaction (both the
// one-statement claim and the pipelined one), skipping the handler.
func TestSkipMarkerInBatch(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	ctx := context.Background()
	m := marker("k", 2, uuid.Must(uuid.NewV7()))
	outs, err := b.in.HandleBatch(ctx, []inbox.Delivery{event("k", 1).delivery(), m.delivery(), event("k", 3).delivery()})
	if err != nil || fmt.Sprint(outs) != "[applied skipped applied]" {
		t.Fatalf("HandleBatch: %v %v", outs, err)
	}
	// Pipelined claims: a duplicate in front, then another key's marker.
	m2 := marker("j", 2, uuid.Must(uuid.NewV7()))
	outs, err = b.in.HandleBatch(ctx, []inbox.Delivery{m.delivery(), event("j", 1).delivery(), m2.delivery(),
		event("j", 3).delivery(), m2.delivery()})
	if err != nil || fmt.Sprint(outs) != "[duplicate applied skipped applied duplicate]" {
		t.Fatalf("HandleBatch: %v %v", outs, err)
	}
	if a, b2 := fmt.Sprint(b.effectOrder("k")), fmt.Sprint(b.effectOrder("j")); a != "[1 3]" || b2 != "[1 3]" {
		t.Fatalf("applied k %s j %s", a, b2)
	}
	if b.calls.Load() != 4 {
		t.Fatalf("handler called %d times, want 4", b.calls.Load())
	}
}

// A marker that arrives ahead of a missing event waits in the dead letters
// like any event; when the gap is filled the release moves the lane past
// it (no handler, outcome skipped in the audit) and the events behind it
// follow.
func TestSkipMarkerWaitingIsReleased(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	m := marker("k", 2, uuid.Must(uuid.NewV7()))
	b.expect(m.delivery(), inbox.Parked)              // waits for 1
	b.expect(event("k", 3).delivery(), inbox.Blocked) // behind it
	b.expect(event("k", 1).delivery(), inbox.Applied) // fills the gap: 2 (marker) and 3 follow
	if got := fmt.Sprint(b.effectOrder("k")); got != "[1 3]" {
		t.Fatalf("applied %s, want [1 3]", got)
	}
	if dl := b.deadLetter(m.id); dl.Status != "resolved" {
		t.Fatalf("marker dead letter %s, want resolved", dl.Status)
	}
	var outcome string
	for _, a := range b.audits(m.id.String()) {
		if a.Action == "release" {
			outcome, _ = a.Details["outcome"].(string)
		}
	}
	if outcome != "skipped" {
		t.Fatalf("release audit outcome %q, want skipped", outcome)
	}
	b.expect(m.delivery(), inbox.Duplicate)
	b.expect(event("k", 4).delivery(), inbox.Applied)
}

// A marker behind its lane (the lane moved past it another way) is
// recorded and skipped, not parked as out of order: it has nothing to
// apply.
func TestSkipMarkerBehindLaneIsSkipped(t *testing.T) {
	t.Parallel()
	cfg := fastConfig("billing")
	cfg.OnPark = inbox.OnParkSkip
	b := newBundle(t, cfg)
	b.expect(event("k", 1).delivery(), inbox.Applied)
	b.expect(event("k", 3).delivery(), inbox.Applied) // gap accepted (OnParkSkip)
	m := marker("k", 2, uuid.Must(uuid.NewV7()))
	b.expect(m.delivery(), inbox.Skipped)
	b.expect(m.delivery(), inbox.Duplicate)
	if n := b.count(`SELECT count(*) FROM inbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters, want none", n)
	}
}

// An operator's redrive of a marker that waits for a missing event (the
// gap accepted) moves the lane past it without a handler, and the events
// blocked behind it follow.
func TestSkipMarkerRedriven(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	m := marker("k", 2, uuid.Must(uuid.NewV7()))
	b.expect(m.delivery(), inbox.Parked) // waits for 1, which never comes
	b.expect(event("k", 3).delivery(), inbox.Blocked)
	if err := b.in.Redrive(context.Background(), b.deadLetter(m.id).ID, "alice", "event 1 was never sent"); err != nil {
		t.Fatalf("Redrive: %v", err)
	}
	if got := fmt.Sprint(b.effectOrder("k")); got != "[3]" {
		t.Fatalf("applied %s, want [3]", got)
	}
	if b.calls.Load() != 1 {
		t.Fatalf("handler called %d times, want 1", b.calls.Load())
	}
	var outcome string
	for _, a := range b.audits(m.id.String()) {
		if a.Action == "redrive" {
			outcome, _ = a.Details["outcome"].(string)
		}
	}
	if outcome != "skipped" {
		t.Fatalf("redrive audit outcome %q, want skipped", outcome)
	}
	b.expect(m.delivery(), inbox.Duplicate)
	b.expect(event("k", 4).delivery(), inbox.Applied)
}
