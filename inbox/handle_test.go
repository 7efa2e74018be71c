package inbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	if _, err := inbox.New(db.Pool, nil); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Fatalf("nil config: %v", err)
	}
	for _, cfg := range []inbox.Config{
		{},
		{Consumer: "billing"},
		{ConsumerVersion: "v1"},
		{Consumer: "billing", ConsumerVersion: "v1", Schema: "Bad-Schema"},
		{Consumer: "billing", ConsumerVersion: "v1", OnPark: "drop"},
		{Consumer: "billing", ConsumerVersion: "v1", MaxAttempts: -1},
		{Consumer: "billing", ConsumerVersion: "v1", BackoffBase: time.Minute, BackoffMax: time.Second},
		{Consumer: "bill\x00ing", ConsumerVersion: "v1"},
		{Consumer: strings.Repeat("c", 201), ConsumerVersion: "v1"},
		{Consumer: "billing", ConsumerVersion: "v1", Breaker: inbox.BreakerConfig{Threshold: -2}},
	} {
		if _, err := inbox.New(db.Pool, &cfg); !errors.Is(err, inbox.ErrInvalidConfig) {
			t.Errorf("%+v: want ErrInvalidConfig, got %v", cfg, err)
		}
	}
	if _, err := inbox.New(db.Pool, &inbox.Config{Consumer: "billing", ConsumerVersion: "v1"}); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
}

// A replayed event is applied once: the second and third deliveries find
// the processed record.
func TestReplayAppliesOnce(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	for _, e := range []testEvent{event("acct-1", 1), {id: uuid.New(), typ: "test.event", payload: []byte("keyless"), topic: "payments"}} {
		d := e.delivery()
		b.expect(d, inbox.Applied)
		b.expect(d, inbox.Duplicate)
		b.expect(e.delivery(), inbox.Duplicate) // another copy, other broker coordinates
		if n := b.count(`SELECT count(*) FROM effects WHERE event_id = $1`, e.id); n != 1 {
			t.Fatalf("event %s applied %d times", e.id, n)
		}
	}
	var sha []byte
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT payload_sha256 FROM inbox.processed WHERE event_id IS NOT NULL LIMIT 1`).Scan(&sha); err != nil || len(sha) != 32 {
		t.Fatalf("payload fingerprint: %x %v", sha, err)
	}
}

// 1,000 events on 50 keys, each delivered three times, concurrently across
// keys: exactly 1,000 effects, each key's in sequence order.
func TestThousandEventsThreeTimes(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	const keys, perKey = 50, 20
	var wg sync.WaitGroup
	errs := make(chan error, keys)
	for k := range keys {
		key := fmt.Sprintf("acct-%d", k)
		evs := make([]testEvent, perKey)
		for i := range evs {
			evs[i] = event(key, int64(i+1))
		}
		wg.Go(func() {
			// Each copy of the stream is a broker redelivery from the start.
			for range 3 {
				for _, e := range evs {
					out, err := b.in.Handle(context.Background(), e.delivery())
					if err != nil || (out != inbox.Applied && out != inbox.Duplicate) {
						errs <- fmt.Errorf("key %s seq %d: %s %v", key, e.seq, out, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != keys*perKey {
		t.Fatalf("%d effects, want %d", n, keys*perKey)
	}
	b.requireKeysInOrderNoDeadLetters(keys)
}

// The same event id with another payload is not skipped: it is parked as a
// conflict, once, and the lane goes on.
func TestSameIDOtherPayloadParksAsConflict(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	e := event("acct-1", 1)
	b.expect(e.delivery(), inbox.Applied)
	forged := e
	forged.payload = []byte(`{"amount":1000000}`)
	b.expect(forged.delivery(), inbox.Parked)
	b.expect(forged.delivery(), inbox.AlreadyParked)
	dl := b.deadLetter(e.id)
	if dl.Class != "conflict" || dl.Status != "parked" || !bytes.Equal(dl.Payload, forged.payload) ||
		!strings.Contains(dl.Error, "sha256") {
		t.Fatalf("dead letter %+v", dl)
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != 1 {
		t.Fatalf("%d effects", n)
	}
	b.expect(event("acct-1", 2).delivery(), inbox.Applied) // the conflict blocks nothing
}

// Malformed deliveries are parked raw, never crash, never block; the
// stream goes on.
func TestMalformedDeliveriesAreParked(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	garbage := []byte{0xff, 0x00, 0xfe, 'n', 'o', 't', 0x00, 0xc3, 0x28}
	withHeader := func(name string, value []byte) inbox.Delivery {
		d := event("acct-1", 1).delivery()
		for i := range d.Headers {
			if d.Headers[i].Name == name {
				d.Headers[i].Value = value
				return d
			}
		}
		d.Headers = append(d.Headers, inbox.Header{Name: name, Value: value})
		return d
	}
	without := func(name string) inbox.Delivery {
		d := event("acct-1", 1).delivery()
		for i := range d.Headers {
			if d.Headers[i].Name == name {
				d.Headers = append(d.Headers[:i], d.Headers[i+1:]...)
				break
			}
		}
		return d
	}
	cases := []struct {
		name string
		d    inbox.Delivery
		want string // in the error
	}{
		{"garbage bytes and no headers", inbox.Delivery{Binding: inbox.BindingKafka, Topic: "payments", Payload: garbage,
			Source: map[string]any{"partition": 3, "offset": 1_000_017}}, "no headers"},
		{"invalid UTF-8 in ce_type", withHeader("ce_type", []byte{'p', 0xc3, 0x28}), "ce_type"},
		{"NUL in ce_partitionkey", withHeader("ce_partitionkey", []byte("acct\x001")), "ce_partitionkey"},
		{"missing ce_id", without("ce_id"), "ce_id"},
		{"ce_id not a UUID", withHeader("ce_id", []byte("42")), "not a UUID"},
		{"wrong specversion", withHeader("ce_specversion", []byte("0.3")), "specversion"},
		{"invalid UTF-8 in a header name", withHeader("ce_\xff", []byte("x")), "header name"},
		{"sequence without key", without("ce_partitionkey"), "together"},
		{"version beyond integer", withHeader("ce_eventversion", []byte("3000000000")), "out of range"},
		{"oversized key", withHeader("ce_partitionkey", bytes.Repeat([]byte("k"), 1025)), "at most 1024"},
		{"binary topic", func() inbox.Delivery { d := event("acct-1", 1).delivery(); d.Topic = "pay\xffments"; return d }(), "topic"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := b.in.Handle(context.Background(), c.d)
			if err != nil || out != inbox.Parked {
				t.Fatalf("Handle: %s %v, want parked", out, err)
			}
			// The same delivery again (same broker coordinates): one dead letter.
			if out, err := b.in.Handle(context.Background(), c.d); err != nil || out != inbox.AlreadyParked {
				t.Fatalf("redelivery: %s %v, want already_parked", out, err)
			}
			dls := b.deadLetters("error_class = 'poison_format' AND source->>'offset' = $1", fmt.Sprint(c.d.Source["offset"]))
			if len(dls) != 1 {
				t.Fatalf("%d dead letters", len(dls))
			}
			dl := dls[0]
			if dl.EventID != nil || dl.Status != "parked" || dl.Attempts != 1 || !strings.Contains(dl.Error, c.want) ||
				dl.Consumer != "billing" || dl.ConsumerVersion != "v1.2.3" {
				t.Fatalf("dead letter %+v", dl)
			}
			if !bytes.Equal(dl.Payload, c.d.Payload) {
				t.Fatalf("payload %x, want %x", dl.Payload, c.d.Payload)
			}
			got := storedHeaders(t, dl.Headers)
			if len(got) != len(c.d.Headers) {
				t.Fatalf("headers %q, want %q", got, c.d.Headers)
			}
			for i := range got {
				if got[i].Name != c.d.Headers[i].Name || !bytes.Equal(got[i].Value, c.d.Headers[i].Value) {
					t.Fatalf("header %d: %q, want %q", i, got[i], c.d.Headers[i])
				}
			}
		})
	}
	// Nothing was applied, and the stream flows.
	if n := b.count(`SELECT count(*) FROM effects`); n != 0 {
		t.Fatalf("%d effects", n)
	}
	b.expect(event("acct-1", 1).delivery(), inbox.Applied)

	// A parked garbage message is readable (bytes and headers above) and
	// can be redriven: it goes through the consumer again and is parked
	// again with one more attempt.
	dl := b.deadLetters("error_class = 'poison_format' AND headers = '[]'")[0]
	err := b.in.Redrive(context.Background(), dl.ID, "alice", "try again after the decoder fix")
	var re *inbox.RedriveError
	if !errors.As(err, &re) || re.Class != inbox.ClassPoisonFormat {
		t.Fatalf("redrive garbage: %v", err)
	}
	again := b.deadLetters("id = $1", dl.ID)[0]
	if again.Status != "parked" || again.Attempts != 2 || !bytes.Equal(again.Payload, garbage) {
		t.Fatalf("after redrive: %+v", again)
	}
}

// An event's own headers may carry bytes: they are passed to the handler.
func TestBinaryOwnHeaderIsPassedOn(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	var got string
	b.in.Register("test.binary", 1, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		got = ev.Headers["trace-bin"]
		return nil
	})
	e := event("acct-1", 1)
	e.typ = "test.binary"
	e.extraHdr = []inbox.Header{{Name: "trace-bin", Value: []byte{0, 0xff, 1}}}
	b.expect(e.delivery(), inbox.Applied)
	if got != "\x00\xff\x01" {
		t.Fatalf("header %q", got)
	}
}

// A failing event is retried MaxAttempts times, then parked with every
// field filled and the full attempt history; the rest of the stream flows.
func TestRetriesThenParksWithHistory(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	poison := event("acct-1", 1)
	b.fail.set(func(ev *inbox.Event) error {
		if ev.ID == poison.id {
			return errors.New("ledger row locked by a batch job")
		}
		return nil
	})
	b.expect(poison.delivery(), inbox.Parked)
	if c := b.calls.Load(); c != 3 {
		t.Fatalf("handler called %d times, want 3", c)
	}
	dl := b.deadLetter(poison.id)
	if dl.Consumer != "billing" || dl.ConsumerVersion != "v1.2.3" || dl.Topic != "payments" || dl.Key != "acct-1" ||
		dl.Sequence == nil || *dl.Sequence != 1 || dl.Type == nil || *dl.Type != "test.event" || dl.Version == nil ||
		*dl.Version != 1 || !bytes.Equal(dl.Payload, poison.payload) || dl.ContentType == nil ||
		*dl.ContentType != "application/json" || dl.CorrelationID == nil || *dl.CorrelationID != "flow-acct-1" ||
		dl.Error != "ledger row locked by a batch job" || dl.Class != "transient" || dl.Attempts != 3 ||
		dl.Status != "parked" || dl.BlockedBy != nil || dl.WaitingFor != nil || !dl.FirstFailedAt.Before(dl.LastFailedAt) ||
		!strings.Contains(string(dl.Source), `"offset"`) || !strings.Contains(string(dl.Source), `"binding": "kafka"`) {
		t.Fatalf("dead letter %+v source %s", dl, dl.Source)
	}
	if hs := storedHeaders(t, dl.Headers); len(hs) != len(poison.delivery().Headers) {
		t.Fatalf("headers %s", dl.Headers)
	}
	atts := b.attempts(poison.id)
	if len(atts) != 3 {
		t.Fatalf("attempts %+v", atts)
	}
	for i, a := range atts {
		want := "retry"
		if i == 2 {
			want = "parked"
		}
		if a.Attempt != i+1 || a.Outcome != want || a.Class != "transient" || a.DeadLetterID == nil || *a.DeadLetterID != dl.ID {
			t.Fatalf("attempt %d: %+v", i, a)
		}
	}
	if a := b.audits(fmt.Sprint(dl.ID)); len(a) != 1 || a[0].Action != "park" || a[0].Actor != "inbox:billing" ||
		a[0].Targets[1] != poison.id.String() {
		t.Fatalf("audit %+v", a)
	}
	// Other keys flow.
	b.expect(event("acct-2", 1).delivery(), inbox.Applied)
}

// The attempt count survives a restart: a redelivery to a new process
// continues from the recorded attempts.
func TestAttemptsCountAcrossRedeliveries(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	e := event("acct-1", 1)
	calls := 0
	ctx, cancel := context.WithCancel(context.Background())
	b.fail.set(func(ev *inbox.Event) error {
		calls++
		if calls == 2 {
			cancel() // the consumer stops during the second attempt
		}
		return errors.New("flaky")
	})
	if _, err := b.in.Handle(ctx, e.delivery()); !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped Handle: %v", err)
	}
	b.expect(e.delivery(), inbox.Parked) // MaxAttempts 3: one more attempt counted from the database
	if dl := b.deadLetter(e.id); dl.Attempts != 3 {
		t.Fatalf("attempts %d, want 3 (handler called %d times)", dl.Attempts, calls)
	}
}

func TestPermanentParksAtOnce(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	e := event("acct-1", 1)
	b.fail.set(func(*inbox.Event) error { return inbox.Permanent(errors.New("account closed")) })
	b.expect(e.delivery(), inbox.Parked)
	if c := b.calls.Load(); c != 1 {
		t.Fatalf("handler called %d times", c)
	}
	dl := b.deadLetter(e.id)
	if dl.Class != "permanent" || dl.Attempts != 1 || dl.Error != "account closed" {
		t.Fatalf("dead letter %+v", dl)
	}
	if a := b.attempts(e.id); len(a) != 1 || a[0].Outcome != "parked" {
		t.Fatalf("attempts %+v", a)
	}
}

// A unique violation in the handler's own writes is permanent (a business
// refusal), not a "conflict" of event ids.
func TestHandlerUniqueViolationIsPermanent(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	if _, err := b.db.Pool.Exec(context.Background(), `CREATE UNIQUE INDEX ON effects (key)`); err != nil {
		t.Fatal(err)
	}
	b.expect(event("acct-1", 1).delivery(), inbox.Applied)
	e := event("acct-1", 2)
	b.expect(e.delivery(), inbox.Parked)
	if dl := b.deadLetter(e.id); dl.Class != "permanent" || !strings.Contains(dl.Error, "23505") {
		t.Fatalf("dead letter %+v", dl)
	}
}

func TestPanicIsRecoveredAndRetried(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	e := event("acct-1", 1)
	b.fail.set(func(*inbox.Event) error {
		if b.calls.Load() == 1 {
			var m map[string]int
			m["boom"]++ // nil map write
		}
		return nil
	})
	b.expect(e.delivery(), inbox.Applied)
	a := b.attempts(e.id)
	if len(a) != 1 || a[0].Class != "transient" || !strings.Contains(a[0].Error, "panicked") || !strings.Contains(a[0].Error, "goroutine") {
		t.Fatalf("attempts %+v", a)
	}
}

// A parked event blocks its key only: later events of the key are parked as
// blocked behind it, other keys flow. Redriving it applies it and releases
// the blocked ones in order, and the lane flows again.
func TestParkedEventBlocksItsKeyOnly(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	head := event("acct-1", 1)
	b.fail.set(func(ev *inbox.Event) error {
		if ev.ID == head.id {
			return inbox.Permanent(errors.New("limit exceeded"))
		}
		return nil
	})
	b.expect(head.delivery(), inbox.Parked)
	b.expect(event("acct-2", 1).delivery(), inbox.Applied)
	e2, e3 := event("acct-1", 2), event("acct-1", 3)
	b.expect(e2.delivery(), inbox.Blocked)
	b.expect(event("acct-2", 2).delivery(), inbox.Applied)
	b.expect(e3.delivery(), inbox.Blocked)
	b.expect(e3.delivery(), inbox.AlreadyParked)
	headDL := b.deadLetter(head.id)
	for _, e := range []testEvent{e2, e3} {
		dl := b.deadLetter(e.id)
		if dl.Status != "blocked" || dl.BlockedBy == nil || *dl.BlockedBy != headDL.ID || dl.Attempts != 0 || dl.Class != "permanent" {
			t.Fatalf("blocked dead letter %+v", dl)
		}
	}
	if got := b.effectOrder("acct-1"); len(got) != 0 {
		t.Fatalf("acct-1 applied %v while blocked", got)
	}

	// The operator fixes the cause and redrives the head.
	b.fail.set(nil)
	if err := b.in.Redrive(context.Background(), headDL.ID, "alice", "limit raised"); err != nil {
		t.Fatal(err)
	}
	if got := b.effectOrder("acct-1"); fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("acct-1 applied %v, want [1 2 3]", got)
	}
	for _, e := range []testEvent{head, e2, e3} {
		if dl := b.deadLetter(e.id); dl.Status != "resolved" || dl.ResolvedAt == nil || dl.BlockedBy != nil {
			t.Fatalf("after redrive: %+v", dl)
		}
	}
	if a := b.audits(fmt.Sprint(headDL.ID)); len(a) != 2 || a[1].Action != "redrive" || a[1].Actor != "alice" || a[1].Reason != "limit raised" {
		t.Fatalf("audit of head %+v", a)
	}
	if a := b.audits(e3.id.String()); len(a) != 2 || a[1].Action != "release" || a[1].Actor != "alice" {
		t.Fatalf("audit of follower %+v", a)
	}
	// The lane flows again, on the hot path.
	b.expect(event("acct-1", 4).delivery(), inbox.Applied)
	if n := b.count(`SELECT count(*) FROM inbox.lanes WHERE blocked_by IS NOT NULL`); n != 0 {
		t.Fatalf("%d lanes still blocked", n)
	}
	// Redelivering the resolved events is a no-op.
	b.expect(head.delivery(), inbox.Duplicate)
	b.expect(e3.delivery(), inbox.Duplicate)
}

// A release stops at the first follower that fails: it becomes the parked
// head of the lane and the others stay blocked behind it.
func TestReleaseStopsAtFailingFollower(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	evs := []testEvent{event("k", 1), event("k", 2), event("k", 3), event("k", 4)}
	bad := map[uuid.UUID]bool{evs[0].id: true, evs[2].id: true}
	var mu sync.Mutex
	b.fail.set(func(ev *inbox.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if bad[ev.ID] {
			return inbox.Permanent(errors.New("refused"))
		}
		return nil
	})
	b.expect(evs[0].delivery(), inbox.Parked)
	for _, e := range evs[1:] {
		b.expect(e.delivery(), inbox.Blocked)
	}
	mu.Lock()
	delete(bad, evs[0].id)
	mu.Unlock()
	if err := b.in.Redrive(context.Background(), b.deadLetter(evs[0].id).ID, "alice", "fixed"); err != nil {
		t.Fatal(err)
	}
	if got := b.effectOrder("k"); fmt.Sprint(got) != "[1 2]" {
		t.Fatalf("applied %v", got)
	}
	third, fourth := b.deadLetter(evs[2].id), b.deadLetter(evs[3].id)
	if third.Status != "parked" || third.Attempts != 1 || fourth.Status != "blocked" || *fourth.BlockedBy != third.ID {
		t.Fatalf("third %+v fourth %+v", third, fourth)
	}
	b.expect(event("k", 5).delivery(), inbox.Blocked)
	// Redriving a blocked one is refused; the head is the one to redrive.
	if err := b.in.Redrive(context.Background(), fourth.ID, "alice", "x"); !errors.Is(err, inbox.ErrNotRedrivable) {
		t.Fatalf("redrive blocked: %v", err)
	}
	mu.Lock()
	delete(bad, evs[2].id)
	mu.Unlock()
	if err := b.in.Redrive(context.Background(), third.ID, "alice", "fixed too"); err != nil {
		t.Fatal(err)
	}
	if got := b.effectOrder("k"); fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("applied %v", got)
	}
}

// An event that arrives ahead of missing ones waits (parked, waiting_for);
// the events behind it are blocked; when the missing one arrives all are
// applied in order, automatically.
func TestOutOfOrderArrivalWaitsForTheGap(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	e1, e2, e3, e4 := event("k", 1), event("k", 2), event("k", 3), event("k", 4)
	b.expect(e3.delivery(), inbox.Parked)
	dl3 := b.deadLetter(e3.id)
	if dl3.WaitingFor == nil || *dl3.WaitingFor != 1 || dl3.Class != "transient" || !strings.Contains(dl3.Error, "waiting for sequence 1") {
		t.Fatalf("waiting dead letter %+v", dl3)
	}
	b.expect(e4.delivery(), inbox.Blocked)
	b.expect(e1.delivery(), inbox.Applied) // fills the gap before 2: 3 and 4 still wait, for 2 now
	if got := b.effectOrder("k"); fmt.Sprint(got) != "[1]" {
		t.Fatalf("applied %v", got)
	}
	if dl := b.deadLetter(e3.id); dl.Status != "parked" || *dl.WaitingFor != 2 {
		t.Fatalf("after 1: %+v", dl)
	}
	b.expect(e2.delivery(), inbox.Applied)
	if got := b.effectOrder("k"); fmt.Sprint(got) != "[1 2 3 4]" {
		t.Fatalf("applied %v", got)
	}
	for _, e := range []testEvent{e3, e4} {
		if dl := b.deadLetter(e.id); dl.Status != "resolved" {
			t.Fatalf("%+v", dl)
		}
	}
	if a := b.audits(e4.id.String()); len(a) != 2 || a[1].Action != "release" || a[1].Actor != "inbox:billing" {
		t.Fatalf("audit %+v", a)
	}
	b.expect(event("k", 5).delivery(), inbox.Applied)
}

// Redriving an event that waits for a gap accepts the gap; the missing event
// arriving later is parked as out of order, never applied silently.
func TestRedriveAcceptsAGap(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	e1, e2 := event("k", 1), event("k", 2)
	b.expect(e2.delivery(), inbox.Parked)
	if err := b.in.Redrive(context.Background(), b.deadLetter(e2.id).ID, "alice", "sequence 1 was dropped at the producer"); err != nil {
		t.Fatal(err)
	}
	if a := b.audits(e2.id.String()); len(a) != 2 || a[1].Details["gap_accepted"] == nil {
		t.Fatalf("audit %+v", a)
	}
	b.expect(e1.delivery(), inbox.Parked)
	if dl := b.deadLetter(e1.id); dl.Class != "permanent" || !strings.Contains(dl.Error, "out of order") {
		t.Fatalf("late event %+v", dl)
	}
	b.expect(event("k", 3).delivery(), inbox.Applied)
	if got := b.effectOrder("k"); fmt.Sprint(got) != "[2 3]" {
		t.Fatalf("applied %v", got)
	}
}

// With StartLanesAtFirstSeen the first event seen of a key starts its lane.
func TestStartLanesAtFirstSeen(t *testing.T) {
	t.Parallel()
	cfg := fastConfig("late-joiner")
	cfg.StartLanesAtFirstSeen = true
	b := newBundle(t, cfg)
	b.expect(event("k", 41).delivery(), inbox.Applied)
	b.expect(event("k", 42).delivery(), inbox.Applied)
	b.expect(event("k", 44).delivery(), inbox.Parked) // a gap after the start still waits
}

func TestOnParkSkip(t *testing.T) {
	t.Parallel()
	cfg := fastConfig("notifications")
	cfg.OnPark = inbox.OnParkSkip
	b := newBundle(t, cfg)
	e1 := event("k", 1)
	b.fail.set(func(ev *inbox.Event) error {
		if ev.ID == e1.id {
			return inbox.Permanent(errors.New("template missing"))
		}
		return nil
	})
	b.expect(e1.delivery(), inbox.Parked)
	b.expect(event("k", 2).delivery(), inbox.Applied)
	b.expect(event("k", 4).delivery(), inbox.Applied) // skip accepts gaps too
	b.fail.set(nil)
	if err := b.in.Redrive(context.Background(), b.deadLetter(e1.id).ID, "bob", "template deployed"); err != nil {
		t.Fatal(err)
	}
	if got := b.effectOrder("k"); fmt.Sprint(got) != "[2 4 1]" {
		t.Fatalf("applied %v", got)
	}
	if a := b.audits(e1.id.String()); a[len(a)-1].Details["out_of_order"] == nil {
		t.Fatalf("audit %+v", a)
	}
}

// Unknown versions park with a clear reason, never a panic.
func TestUnknownVersionParksWithReason(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	b.in.Register("payout.created", 1, func(context.Context, pgx.Tx, *inbox.Event) error { return nil })
	b.in.Register("payout.created", 2, func(context.Context, pgx.Tx, *inbox.Event) error { return nil })
	e := event("payout-42", 1)
	e.typ, e.version = "payout.created", 3
	b.expect(e.delivery(), inbox.Parked)
	dl := b.deadLetter(e.id)
	if dl.Class != "no_handler" || dl.Error != "no handler for payout.created v3" || dl.Attempts != 1 || *dl.Version != 3 {
		t.Fatalf("dead letter %+v", dl)
	}
	unknown := event("payout-43", 1)
	unknown.typ = "payout.cancelled"
	b.expect(unknown.delivery(), inbox.Parked)
	if dl := b.deadLetter(unknown.id); dl.Error != "no handler for payout.cancelled v1" {
		t.Fatalf("dead letter %+v", dl)
	}
	// Deploying the handler, then redriving, applies it.
	var got int
	b.in.Register("payout.created", 3, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error { got = ev.Version; return nil })
	if err := b.in.Redrive(context.Background(), dl.ID, "carol", "v3 handler deployed"); err != nil || got != 3 {
		t.Fatalf("redrive: %v (handler saw v%d)", err, got)
	}
}

// Old versions reach the current handler through upcasters.
func TestUpcasterChain(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	var seen []*inbox.Event
	b.in.Register("payout.created", 3, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		seen = append(seen, ev)
		return nil
	})
	b.in.RegisterUpcaster("payout.created", 1, func(p []byte) ([]byte, error) {
		return bytes.Replace(p, []byte(`"amount"`), []byte(`"amount_cents"`), 1), nil
	})
	b.in.RegisterUpcaster("payout.created", 2, func(p []byte) ([]byte, error) {
		if bytes.Contains(p, []byte("broken")) {
			return nil, errors.New("cannot map field broken")
		}
		return append(bytes.TrimSuffix(p, []byte("}")), []byte(`,"currency":"EUR"}`)...), nil
	})
	v1 := event("payout-1", 1)
	v1.typ, v1.version, v1.payload = "payout.created", 1, []byte(`{"amount":100}`)
	b.expect(v1.delivery(), inbox.Applied)
	if len(seen) != 1 || seen[0].Version != 3 || seen[0].OriginalVersion != 1 ||
		string(seen[0].Payload) != `{"amount_cents":100,"currency":"EUR"}` {
		t.Fatalf("handler saw %+v", seen)
	}
	v2 := event("payout-2", 1)
	v2.typ, v2.version, v2.payload = "payout.created", 2, []byte(`{"amount_cents":5}`)
	b.expect(v2.delivery(), inbox.Applied)
	if string(seen[1].Payload) != `{"amount_cents":5,"currency":"EUR"}` {
		t.Fatalf("handler saw %s", seen[1].Payload)
	}
	// The processed record fingerprints the payload as received.
	b.expect(v1.delivery(), inbox.Duplicate)

	broken := event("payout-3", 1)
	broken.typ, broken.version, broken.payload = "payout.created", 2, []byte(`{"broken":true}`)
	b.expect(broken.delivery(), inbox.Parked)
	if dl := b.deadLetter(broken.id); dl.Class != "poison_format" || !strings.Contains(dl.Error, "upcaster payout.created v2 to v3") ||
		!bytes.Equal(dl.Payload, broken.payload) {
		t.Fatalf("dead letter %+v", dl)
	}
	// Below the chain: no upcaster from v0... versions start at 1; a v4 has none.
	v4 := event("payout-4", 1)
	v4.typ, v4.version = "payout.created", 4
	b.expect(v4.delivery(), inbox.Parked)
	if dl := b.deadLetter(v4.id); dl.Error != "no handler for payout.created v4" {
		t.Fatalf("dead letter %+v", dl)
	}
}

func TestRedriveRefusals(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	e := event("k", 1)
	b.fail.set(func(*inbox.Event) error { return inbox.Permanent(errors.New("no")) })
	b.expect(e.delivery(), inbox.Parked)
	id := b.deadLetter(e.id).ID
	other := b.newInbox(b.db.Pool, fastConfig("reporting"))
	ctx := context.Background()
	for name, err := range map[string]error{
		"missing":        b.in.Redrive(ctx, 999999, "alice", "x"),
		"other consumer": other.Redrive(ctx, id, "alice", "x"),
		"no actor":       b.in.Redrive(ctx, id, "", "x"),
		"no reason":      b.in.Redrive(ctx, id, "alice", " "),
	} {
		if !errors.Is(err, inbox.ErrNotRedrivable) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Failing again: a RedriveError, one more attempt, still parked.
	err := b.in.Redrive(ctx, id, "alice", "try")
	var re *inbox.RedriveError
	if !errors.As(err, &re) || re.Class != inbox.ClassPermanent || re.DeadLetterID != id {
		t.Fatalf("redrive failing: %v", err)
	}
	if dl := b.deadLetter(e.id); dl.Status != "parked" || dl.Attempts != 2 {
		t.Fatalf("%+v", dl)
	}
	if a := b.attempts(e.id); len(a) != 2 || a[1].Attempt != 2 || *a[1].DeadLetterID != id {
		t.Fatalf("attempts %+v", a)
	}
	b.fail.set(nil)
	if err := b.in.Redrive(ctx, id, "alice", "ok now"); err != nil {
		t.Fatal(err)
	}
	if err := b.in.Redrive(ctx, id, "alice", "again"); !errors.Is(err, inbox.ErrNotRedrivable) {
		t.Fatalf("redrive resolved: %v", err)
	}
}

// RedriveEdited applies a corrected payload and keeps the original.
func TestRedriveEdited(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	e := event("k", 1)
	e.payload = []byte(`{"amount":"12,50"}`)
	b.fail.set(func(ev *inbox.Event) error {
		if bytes.Contains(ev.Payload, []byte(",")) {
			return inbox.Permanent(errors.New("amount is not a number"))
		}
		return nil
	})
	b.expect(e.delivery(), inbox.Parked)
	dl := b.deadLetter(e.id)
	fixed := []byte(`{"amount":"12.50"}`)
	if err := b.in.RedriveEdited(context.Background(), dl.ID, fixed, "alice", "decimal comma"); err != nil {
		t.Fatal(err)
	}
	var applied []byte
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT payload FROM effects WHERE event_id = $1`, e.id).Scan(&applied); err != nil || !bytes.Equal(applied, fixed) {
		t.Fatalf("applied %s %v", applied, err)
	}
	if after := b.deadLetter(e.id); !bytes.Equal(after.Payload, e.payload) || after.Status != "resolved" {
		t.Fatalf("dead letter %+v", after)
	}
	// The audit log has the fingerprints, never the bytes; the corrected
	// payload is on the dead letter.
	if a := b.audits(e.id.String()); a[len(a)-1].Details["edited_payload_sha256"] == nil || a[len(a)-1].Details["edited_payload_base64"] != nil ||
		a[len(a)-1].Details["edited_payload_bytes"] != float64(len(fixed)) {
		t.Fatalf("audit %+v", a)
	}
	var edited []byte
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT edited_payload FROM inbox.dead_letters WHERE id = $1`, dl.ID).Scan(&edited); err != nil ||
		!bytes.Equal(edited, fixed) {
		t.Fatalf("edited payload on the dead letter: %q %v", edited, err)
	}
	// The original, redelivered, is a duplicate (not a conflict).
	b.expect(e.delivery(), inbox.Duplicate)
}

// Two consumers of one topic each apply each event once, independently; a
// dead letter of one does not disturb the other.
func TestConsumersAreIndependent(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	reporting := b.newInbox(b.db.Pool, fastConfig("reporting"))
	e := event("k", 1)
	b.fail.set(func(*inbox.Event) error { return nil })
	b.expect(e.delivery(), inbox.Applied)
	if out, err := reporting.Handle(context.Background(), e.delivery()); err != nil || out != inbox.Applied {
		t.Fatalf("reporting: %s %v", out, err)
	}
	if n := b.count(`SELECT count(*) FROM effects WHERE event_id = $1`, e.id); n != 2 {
		t.Fatalf("%d effects, want one per consumer", n)
	}
}

// Handle returns an error only when its context ends, and the delivery is
// then not settled: a redelivery applies it.
func TestHandleStopsWithContext(t *testing.T) {
	t.Parallel()
	cfg := fastConfig("billing")
	cfg.MaxAttempts = 1000
	b := newBundle(t, cfg)
	e := event("k", 1)
	started := make(chan struct{})
	b.fail.set(func(ev *inbox.Event) error {
		select {
		case started <- struct{}{}:
		default:
		}
		return errors.New("slow dependency")
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := b.in.Handle(ctx, e.delivery()); done <- err }()
	<-started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Handle: %v", err)
	}
	b.fail.set(nil)
	b.expect(e.delivery(), inbox.Applied)
}

// An event replayed for one consumer (outboxkit replay --consumer) is
// ignored by the others and applied once by that one.
func TestReplayAddressedToOneConsumer(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	reporting := b.newInbox(b.db.Pool, fastConfig("reporting"))
	e := event("k", 1)
	e.extraHdr = []inbox.Header{{Name: inbox.ReplayToHeader, Value: []byte("billing")}}
	if out, err := reporting.Handle(context.Background(), e.delivery()); err != nil || out != inbox.Ignored {
		t.Fatalf("reporting: %s %v", out, err)
	}
	b.expect(e.delivery(), inbox.Applied)
	b.expect(e.delivery(), inbox.Duplicate)
	if n := b.count(`SELECT count(*) FROM inbox.processed WHERE consumer = 'reporting'`); n != 0 {
		t.Fatalf("reporting recorded %d events", n)
	}
}

// HandleBatch applies a run of in-order events in one transaction, and
// falls back to Handle, one by one, for anything else: same effects.
func TestHandleBatch(t *testing.T) {
	t.Parallel()
	b := newBundle(t, nil)
	ctx := context.Background()
	var ds []inbox.Delivery
	var evs []testEvent
	for i := range 10 {
		e := event(fmt.Sprintf("k%d", i%3), int64(i/3+1))
		evs = append(evs, e)
		ds = append(ds, e.delivery())
	}
	outs, err := b.in.HandleBatch(ctx, ds)
	if err != nil || len(outs) != 10 {
		t.Fatalf("batch: %v %v", outs, err)
	}
	for i, o := range outs {
		if o != inbox.Applied {
			t.Fatalf("delivery %d: %s", i, o)
		}
	}
	// Redelivered, plus new ones: duplicates and applied, still one transaction.
	more := append(ds[7:], event("k0", 5).delivery(), event("k9", 1).delivery())
	if outs, err := b.in.HandleBatch(ctx, more); err != nil || fmt.Sprint(outs) != "[duplicate duplicate duplicate applied applied]" {
		t.Fatalf("batch with duplicates: %v %v", outs, err)
	}
	// A failing event, a gap and garbage: the batch goes one by one.
	bad := event("k1", 5)
	b.fail.set(func(ev *inbox.Event) error {
		if ev.ID == bad.id {
			return inbox.Permanent(errors.New("refused"))
		}
		return nil
	})
	mixed := []inbox.Delivery{event("k2", 4).delivery(), bad.delivery(), event("k1", 6).delivery(),
		event("gap", 3).delivery(), {Binding: inbox.BindingKafka, Topic: "payments", Payload: []byte("?")},
		event("k2", 5).delivery()}
	outs, err = b.in.HandleBatch(ctx, mixed)
	if err != nil || fmt.Sprint(outs) != "[applied parked blocked parked parked applied]" {
		t.Fatalf("mixed batch: %v %v", outs, err)
	}
	if got := b.effectOrder("k2"); fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("k2 applied %v", got)
	}
	if n := b.count(`SELECT count(*) FROM effects`); n != 14 {
		t.Fatalf("%d effects", n)
	}
}

// A handler that runs past HandlerTimeout is cut off and retried
// (transient), and the breaker does not count it as an outage.
func TestHandlerTimeoutIsTransient(t *testing.T) {
	t.Parallel()
	cfg := fastConfig("billing")
	cfg.HandlerTimeout = 300 * time.Millisecond
	b := newBundle(t, cfg)
	b.in.Register("test.slow", 1, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		if b.calls.Add(1) == 1 {
			_, err := tx.Exec(ctx, `SELECT pg_sleep(5)`)
			return err
		}
		return nil
	})
	e := event("k", 1)
	e.typ = "test.slow"
	b.expect(e.delivery(), inbox.Applied)
	if a := b.attempts(e.id); len(a) != 1 || a[0].Class != "transient" || a[0].Outcome != "retry" {
		t.Fatalf("attempts %+v", a)
	}
}
