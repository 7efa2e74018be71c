package ingest

// Where a broker dead letter goes back to, and what a failure after the
// broker confirmed a send leaves behind: regression tests of the review of
// 14fedbf (copies reaching queues that applied the original, a second copy
// with another event id after a database failure, the id header's case,
// destinations forged in x-death).

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// fanoutTopology: a fanout exchange with two subscriber queues, as a
// payments exchange read by a ledger and by an accounting service. Only the
// ledger queue dead-letters.
//
//	pay (fanout) --> ledger (x-dead-letter-exchange dlx)
//	             --> accounting
//	dlx (fanout) --> dlq
type fanoutTopology struct {
	ch                                *amqp.Channel
	pay, dlx, ledger, accounting, dlq string
}

func newFanoutTopology(t *testing.T) *fanoutTopology {
	t.Helper()
	ch, err := testenv.Rabbit(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	n := testenv.UniqueName("fanout")
	f := &fanoutTopology{ch: ch, pay: n + "-pay", dlx: n + "-dlx", ledger: n + "-ledger", accounting: n + "-accounting", dlq: n + "-dlq"}
	t.Cleanup(func() {
		for _, q := range []string{f.ledger, f.accounting, f.dlq} {
			ch.QueueDelete(q, false, false, false) //nolint:errcheck
		}
		ch.ExchangeDelete(f.pay, false, false) //nolint:errcheck
		ch.ExchangeDelete(f.dlx, false, false) //nolint:errcheck
	})
	for _, err := range []error{
		ch.ExchangeDeclare(f.pay, "fanout", true, false, false, false, nil),
		ch.ExchangeDeclare(f.dlx, "fanout", true, false, false, false, nil),
		func() error {
			_, err := ch.QueueDeclare(f.ledger, true, false, false, false, amqp.Table{"x-dead-letter-exchange": f.dlx})
			return err
		}(),
		func() error { _, err := ch.QueueDeclare(f.accounting, true, false, false, false, nil); return err }(),
		func() error { _, err := ch.QueueDeclare(f.dlq, true, false, false, false, nil); return err }(),
		ch.QueueBind(f.ledger, "", f.pay, false, nil),
		ch.QueueBind(f.accounting, "", f.pay, false, nil),
		ch.QueueBind(f.dlq, "", f.dlx, false, nil),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fanoutTopology) count(t *testing.T, q string) int {
	t.Helper()
	st, err := f.ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st.Messages
}

// get takes one message of q, waiting for it.
func (f *fanoutTopology) get(t *testing.T, q string) amqp.Delivery {
	t.Helper()
	var d amqp.Delivery
	testenv.Eventually(t, 10*time.Second, "a message in "+q, func() bool {
		m, ok, err := f.ch.Get(q, false)
		if err != nil {
			t.Fatal(err)
		}
		d = m
		return ok
	})
	return d
}

// deadLetterOne publishes p to the payments exchange; accounting processes
// it (ack), the ledger rejects it, RabbitMQ dead-letters it, and dlq ingest
// copies it. It returns the operator store and the dead letter's ref.
func deadLetterOne(t *testing.T, f *fanoutTopology, db *testenv.DB, p amqp.Publishing, rep ops.Republisher) (*ops.Store, ops.Ref) {
	t.Helper()
	ctx := context.Background()
	if err := f.ch.PublishWithContext(ctx, f.pay, "", false, false, p); err != nil {
		t.Fatal(err)
	}
	if err := f.get(t, f.accounting).Ack(false); err != nil { // accounting booked it
		t.Fatal(err)
	}
	if err := f.get(t, f.ledger).Reject(false); err != nil { // the ledger could not
		t.Fatal(err)
	}
	return ingestOne(t, f, db, rep)
}

// ingestOne waits for one message in the DLQ, ingests it, and returns the
// operator store sending through rep and the dead letter's ref.
func ingestOne(t *testing.T, f *fanoutTopology, db *testenv.DB, rep ops.Republisher) (*ops.Store, ops.Ref) {
	t.Helper()
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "the dead letter", func() bool { return f.count(t, f.dlq) == 1 })
	s, err := NewStore(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := s.IngestRabbitMQ(ctx, RabbitMQConfig{RabbitMQConn: RabbitMQConn{URL: testenv.RabbitURL()}, Queue: f.dlq, Once: true}); err != nil || res.Ingested != 1 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	var id int64
	if err := db.Pool.QueryRow(ctx, `SELECT max(id) FROM inbox.dead_letters`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	store, err := ops.New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	return store.WithRepublisher(rep), ops.Ref{Kind: ops.KindInbox, ID: id}
}

func paymentEvent(id string) amqp.Publishing {
	return amqp.Publishing{MessageId: id, ContentType: "application/json", Body: []byte(`{"payment":"p-1","amount":"x"}`),
		Headers: amqp.Table{"cloudEvents:specversion": "1.0", "cloudEvents:id": id, "cloudEvents:type": "payment.created",
			"cloudEvents:source": "/payments"}}
}

// The corrected copy of an edit, and a replay, go to the queue that
// dead-lettered the message only (through the default exchange), never
// back through the original exchange to queues whose consumers applied the
// original: there a corrected copy is a new event, applied twice.
func TestEditAndReplayReachOnlyTheQueueThatDeadLettered(t *testing.T) {
	t.Parallel()
	f := newFanoutTopology(t)
	db := testenv.NewDB(t)
	store, ref := deadLetterOne(t, f, db, paymentEvent(uuid.NewString()),
		&Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}})
	a := ops.Action{Actor: "oncall-ann", Reason: "amount fixed"}
	out, err := store.Edit(context.Background(), a, ref, []byte(`{"payment":"p-1","amount":"10.00"}`), "")
	if err != nil {
		t.Fatalf("edit: %v", err)
	}
	d := f.get(t, f.ledger)
	if d.MessageId != out.NewEventID || string(d.Body) != `{"payment":"p-1","amount":"10.00"}` {
		t.Errorf("the ledger got message %s %q, want the corrected copy %s", d.MessageId, d.Body, out.NewEventID)
	}
	if n := f.count(t, f.accounting); n != 0 {
		t.Errorf("accounting, which applied the original, got %d copies", n)
	}

	// A replay of another dead letter goes the same way.
	_, ref2 := deadLetterOne(t, f, db, paymentEvent(uuid.NewString()), nil)
	if _, err := store.Replay(context.Background(), a, ref2); err != nil {
		t.Fatalf("replay: %v", err)
	}
	f.get(t, f.ledger)
	if n := f.count(t, f.accounting); n != 0 {
		t.Errorf("accounting got %d replayed messages", n)
	}
}

// terminateOperatorTx ends the operator's transaction (idle in transaction
// during the send), as a failover or idle_in_transaction_session_timeout
// does.
func terminateOperatorTx(t *testing.T, pool *pgxpool.Pool) {
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))
	   FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction' AND pid <> pg_backend_pid()`).
		Scan(&n); err != nil || n != 1 {
		t.Errorf("terminate the operator's transaction: %d %v", n, err)
	}
}

// afterSend is the real Republisher, then, once, after the broker confirmed
// a send: then runs.
type afterSend struct {
	*Republisher
	then func()
	err  error // returned instead of success, once
	once sync.Once
}

func (k *afterSend) Republish(ctx context.Context, l *ops.BrokerLetter) (ops.Destination, error) {
	d, err := k.Republisher.Republish(ctx, l)
	if err != nil {
		return d, err
	}
	k.once.Do(func() {
		if k.then != nil {
			k.then()
		}
		err = k.err
	})
	return d, err
}

func countAudits(t *testing.T, db *testenv.DB, action string) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox.audit_log WHERE action = $1`, action).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func deadLetterStatus(t *testing.T, db *testenv.DB, ref ops.Ref) string {
	t.Helper()
	var s string
	if err := db.Pool.QueryRow(context.Background(), `SELECT status FROM inbox.dead_letters WHERE id = $1`, ref.ID).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// The operator's transaction dies right after the broker confirmed the
// corrected copy: the edit is recorded in a fresh transaction (status
// edited, audit entry naming the first error), and a second edit is
// refused instead of sending a second copy.
func TestEditRecordedAfterTheOperatorsTransactionIsLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFanoutTopology(t)
	db := testenv.NewDB(t)
	rep := &afterSend{Republisher: &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}}}
	rep.then = func() { terminateOperatorTx(t, db.Pool) }
	store, ref := deadLetterOne(t, f, db, paymentEvent(uuid.NewString()), rep)
	a := ops.Action{Actor: "oncall-ann", Reason: "amount fixed"}
	fixed := []byte(`{"payment":"p-1","amount":"10.00"}`)
	out, err := store.Edit(ctx, a, ref, fixed, "")
	if err != nil {
		t.Fatalf("edit: %v", err)
	}
	if !strings.Contains(out.Note, "second transaction") {
		t.Errorf("the note does not say how it was recorded: %s", out.Note)
	}
	if s := deadLetterStatus(t, db, ref); s != "edited" {
		t.Errorf("status %s, want edited", s)
	}
	var late string
	if err := db.Pool.QueryRow(ctx, `SELECT details->>'recorded_after_error' FROM outbox.audit_log WHERE action = 'edit'`).Scan(&late); err != nil || late == "" {
		t.Errorf("the edit's audit entry does not name the lost transaction: %q %v", late, err)
	}
	if _, err := store.Edit(ctx, a, ref, fixed, ""); !errors.Is(err, ops.ErrWrongStatus) {
		t.Errorf("second edit: %v, want it refused", err)
	}
	if n := f.count(t, f.ledger); n != 1 {
		t.Errorf("%d copies in the ledger queue, want 1", n)
	}
}

// The broker's confirmation is lost: the edit says the outcome is unknown
// (never "nothing was sent"), records nothing, and its retry sends the same
// event id again, which consumers deduplicate; a different correction
// gets its own id.
func TestEditRetryAfterAnUnknownOutcomeSendsTheSameEventID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFanoutTopology(t)
	db := testenv.NewDB(t)
	rep := &afterSend{Republisher: &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}},
		err: errors.Join(ops.ErrOutcomeUnknown, context.DeadlineExceeded)}
	store, ref := deadLetterOne(t, f, db, paymentEvent(uuid.NewString()), rep)
	a := ops.Action{Actor: "oncall-ann", Reason: "amount fixed"}
	fixed := []byte(`{"payment":"p-1","amount":"10.00"}`)
	_, err := store.Edit(ctx, a, ref, fixed, "")
	if !errors.Is(err, ops.ErrOutcomeUnknown) || strings.Contains(err.Error(), "nothing was sent") {
		t.Fatalf("edit with a lost confirmation: %v", err)
	}
	if s := deadLetterStatus(t, db, ref); s != "parked" || countAudits(t, db, "edit") != 0 {
		t.Fatalf("after an unknown outcome: status %s, %d edit audits", s, countAudits(t, db, "edit"))
	}
	out, err := store.Edit(ctx, a, ref, fixed, "")
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	first, second := f.get(t, f.ledger), f.get(t, f.ledger)
	if first.MessageId != out.NewEventID || second.MessageId != out.NewEventID ||
		first.Headers["cloudEvents:id"] != out.NewEventID || second.Headers["cloudEvents:id"] != out.NewEventID {
		t.Errorf("the two copies carry ids %s/%v and %s/%v, want both %s", first.MessageId, first.Headers["cloudEvents:id"],
			second.MessageId, second.Headers["cloudEvents:id"], out.NewEventID)
	}
	if other := copyIDOf(t, store, db, f, []byte(`{"payment":"p-1","amount":"11.00"}`)); other == out.NewEventID {
		t.Errorf("another correction got the same event id %s", other)
	}
}

// copyIDOf edits a fresh dead letter with payload and returns the event id
// of its copy.
func copyIDOf(t *testing.T, store *ops.Store, db *testenv.DB, f *fanoutTopology, payload []byte) string {
	t.Helper()
	_, ref := deadLetterOne(t, f, db, paymentEvent(uuid.NewString()), nil)
	out, err := store.Edit(context.Background(), ops.Action{Actor: "oncall-ann", Reason: "amount fixed"}, ref, payload, "")
	if err != nil {
		t.Fatal(err)
	}
	f.get(t, f.ledger)
	return out.NewEventID
}

// The database stays down after the broker confirmed the copy: neither the
// operator's transaction nor a fresh one can record it, and the error is
// ErrSentNotRecorded, which says not to retry.
func TestEditSentNotRecordedWhenTheDatabaseStaysDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFanoutTopology(t)
	db := testenv.NewDB(t)
	rep := &afterSend{Republisher: &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}}}
	rep.then = func() {
		terminateOperatorTx(t, db.Pool)
		// Every later statement on the table fails, as while the
		// database is unreachable.
		if _, err := db.Pool.Exec(ctx, `ALTER TABLE inbox.dead_letters RENAME TO dead_letters_away`); err != nil {
			t.Error(err)
		}
	}
	store, ref := deadLetterOne(t, f, db, paymentEvent(uuid.NewString()), rep)
	_, err := store.Edit(ctx, ops.Action{Actor: "oncall-ann", Reason: "amount fixed"}, ref, []byte(`{"amount":"10.00"}`), "")
	if !errors.Is(err, ops.ErrSentNotRecorded) || !strings.Contains(err.Error(), "do not retry") {
		t.Fatalf("edit: %v, want ErrSentNotRecorded", err)
	}
	if _, err := db.Pool.Exec(ctx, `ALTER TABLE inbox.dead_letters_away RENAME TO dead_letters`); err != nil {
		t.Fatal(err)
	}
	if s := deadLetterStatus(t, db, ref); s != "parked" {
		t.Errorf("status %s", s)
	}
	if n := f.count(t, f.ledger); n != 1 {
		t.Errorf("%d copies in the ledger queue, want 1", n)
	}
}

// Ingest and the inbox read CloudEvents attributes whatever their case; the
// edit rewrites the id header whatever its case too, and writes the
// canonical spelling only, so the copy never travels with the original's
// id.
func TestEditRewritesIDHeaderWhateverItsCase(t *testing.T) {
	t.Parallel()
	f := newFanoutTopology(t)
	db := testenv.NewDB(t)
	id := uuid.NewString()
	p := paymentEvent(id)
	p.Headers = amqp.Table{"cloudevents:specversion": "1.0", "cloudevents:id": id, "CloudEvents:CausationID": "x",
		"cloudevents:type": "payment.created", "cloudevents:source": "/payments", "OutboxKit-Edit-Of": "y"}
	p.MessageId = ""
	store, ref := deadLetterOne(t, f, db, p, &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}})
	var stored uuid.UUID
	if err := db.Pool.QueryRow(context.Background(), `SELECT event_id FROM inbox.dead_letters WHERE id = $1`, ref.ID).Scan(&stored); err != nil || stored.String() != id {
		t.Fatalf("ingest read event id %s (%v), want %s from cloudevents:id", stored, err, id)
	}
	out, err := store.Edit(context.Background(), ops.Action{Actor: "oncall-ann", Reason: "amount fixed"}, ref,
		[]byte(`{"payment":"p-1","amount":"10.00"}`), "")
	if err != nil {
		t.Fatal(err)
	}
	d := f.get(t, f.ledger)
	want := map[string]string{"cloudEvents:id": out.NewEventID, "cloudEvents:causationid": id, "outboxkit-edit-of": id}
	for k, v := range d.Headers {
		for name, w := range want {
			if strings.EqualFold(k, name) && (k != name || v != w) {
				t.Errorf("the corrected copy carries %s = %v, want only %s = %s", k, v, name, w)
			}
		}
	}
	for name, w := range want {
		if d.Headers[name] != w {
			t.Errorf("header %s = %v, want %s", name, d.Headers[name], w)
		}
	}
}

// The destination of a replay comes from the message's own x-death, which
// whoever can publish into the DLQ writes. With an allowlist, a destination
// not on it is refused, in the dry run and the replay alike, and nothing is
// sent.
func TestReplayRefusesDestinationsNotOnTheAllowlist(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFanoutTopology(t)
	settleQ := f.pay + "-settlement-q"
	t.Cleanup(func() {
		f.ch.QueueDelete(settleQ, false, false, false) //nolint:errcheck
	})
	if _, err := f.ch.QueueDeclare(settleQ, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// Published straight into the DLQ, naming the settlement queue, not by
	// the broker's dead-lettering.
	forged := amqp.Publishing{MessageId: uuid.NewString(), Body: []byte(`{"pay":"attacker","amount":"1000000"}`), Headers: amqp.Table{
		"x-death": []any{amqp.Table{"count": int64(1), "reason": "rejected", "queue": settleQ, "exchange": "",
			"routing-keys": []any{settleQ}, "time": time.Now()}},
		"x-first-death-exchange": "", "x-first-death-queue": settleQ, "x-first-death-reason": "rejected"}}
	if err := f.ch.PublishWithContext(ctx, "", f.dlq, false, false, forged); err != nil {
		t.Fatal(err)
	}
	db := testenv.NewDB(t)
	store, ref := ingestOne(t, f, db, &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}, Allow: []string{f.ledger}})
	if _, err := store.BrokerTarget(ctx, ref, false); !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), settleQ) {
		t.Errorf("dry run of the forged destination: %v", err)
	}
	if _, err := store.Replay(ctx, ops.Action{Actor: "oncall-ann", Reason: "consumer fixed"}, ref); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("replay to a destination not on the allowlist: %v", err)
	}
	if n := f.count(t, settleQ); n != 0 {
		t.Errorf("%d messages reached %s", n, settleQ)
	}
	if s := deadLetterStatus(t, db, ref); s != "parked" {
		t.Errorf("status %s after a refused replay", s)
	}
}

// A message that reached the payments exchange through a delay queue (a
// queue with a TTL and no consumer, dead-lettering into the exchange: the
// usual delayed or retry-with-backoff topology) is rejected by the ledger.
// Its first death is the delay queue's expiry, its last the ledger's
// rejection. The replay must go to the ledger, the queue that
// dead-lettered it into the DLQ: the delay queue would dead-letter it into
// the fanout exchange again, to accounting too.
//
//	delay (ttl, x-dead-letter-exchange pay) --> pay (fanout) --> ledger --> dlx --> dlq
//	                                                         --> accounting
func TestReplayAfterADelayQueueReachesOnlyTheLedger(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFanoutTopology(t)
	delay := f.pay + "-delay"
	t.Cleanup(func() {
		f.ch.QueueDelete(delay, false, false, false) //nolint:errcheck
	})
	if _, err := f.ch.QueueDeclare(delay, true, false, false, false,
		amqp.Table{"x-message-ttl": int32(50), "x-dead-letter-exchange": f.pay}); err != nil {
		t.Fatal(err)
	}
	if err := f.ch.PublishWithContext(ctx, "", delay, false, false, paymentEvent(uuid.NewString())); err != nil {
		t.Fatal(err)
	}
	if err := f.get(t, f.accounting).Ack(false); err != nil {
		t.Fatal(err)
	}
	if err := f.get(t, f.ledger).Reject(false); err != nil {
		t.Fatal(err)
	}
	db := testenv.NewDB(t)
	store, ref := ingestOne(t, f, db, &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}})
	dest, err := store.BrokerTarget(ctx, ref, false)
	if err != nil {
		t.Fatal(err)
	}
	if dest.Queue != f.ledger {
		t.Errorf("the replay goes to queue %q, want %q, the queue that dead-lettered it", dest.Queue, f.ledger)
	}
	// The dry run and the dashboard show the chain the choice came from.
	if chain := fmt.Sprintf("%q (expired) -> %q (rejected)", delay, f.ledger); dest.Chain != chain || !strings.Contains(dest.String(), chain) {
		t.Errorf("chain %q in %q, want %q", dest.Chain, dest, chain)
	}
	if _, err := store.Replay(ctx, ops.Action{Actor: "oncall-ann", Reason: "ledger fixed"}, ref); err != nil {
		t.Fatal(err)
	}
	f.get(t, f.ledger)
	if n := f.count(t, f.accounting); n != 0 {
		t.Errorf("accounting, which applied the original, got the replay again (%d)", n)
	}
}

// Operator A's transaction is lost while the broker confirms A's
// corrected copy; meanwhile operator B edits the same dead letter with
// another correction (the row is no longer locked) and records it. A's
// fallback must not take status "edited" for its own lost commit: two
// copies with two different event ids are on the broker, so A's gets an
// audit entry too, and A is told the dead letter was sent twice.
func TestEveryConfirmedSendHasAnAuditEntry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFanoutTopology(t)
	db := testenv.NewDB(t)
	plain := &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}}
	rep := &afterSend{Republisher: plain}
	var ref ops.Ref
	var bOut ops.Outcome
	rep.then = func() {
		terminateOperatorTx(t, db.Pool)
		storeB, err := ops.New(db.Pool, "outbox", "inbox")
		if err != nil {
			t.Error(err)
			return
		}
		bOut, err = storeB.WithRepublisher(plain).Edit(ctx, ops.Action{Actor: "oncall-bob", Reason: "amount fixed"},
			ref, []byte(`{"amount":"10.01"}`), "")
		if err != nil {
			t.Errorf("B's edit: %v", err)
		}
	}
	var store *ops.Store
	store, ref = deadLetterOne(t, f, db, paymentEvent(uuid.NewString()), rep)
	aOut, err := store.Edit(ctx, ops.Action{Actor: "oncall-ann", Reason: "amount fixed"}, ref, []byte(`{"amount":"10.00"}`), "")
	if !errors.Is(err, ops.ErrSentTwice) {
		t.Errorf("A's edit returned %v, want ErrSentTwice: B edited it while A's transaction was lost", err)
	}
	ids := map[string]bool{f.get(t, f.ledger).MessageId: true, f.get(t, f.ledger).MessageId: true}
	var audited int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.audit_log WHERE action = 'edit' AND details->>'new_event_id' = $1
   AND actor = 'oncall-ann' AND details->'second_send_after' = '{"status": "edited", "by": "oncall-bob"}'`,
		aOut.NewEventID).Scan(&audited); err != nil {
		t.Fatal(err)
	}
	if audited != 1 {
		t.Errorf("A's edit returned %v, %q; its copy %s is on the broker (copies there: %v, B's %s) but in %d audit entries",
			err, aOut.Note, aOut.NewEventID, ids, bOut.NewEventID, audited)
	}
}

// An approved edit whose destination the approver's --replay-allow refuses
// would fail at its send: the approval stays pending, with the reason,
// instead of being spent on a run where every item fails.
func TestApproveLeavesTheApprovalPendingWhenATargetIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFanoutTopology(t)
	db := testenv.NewDB(t)
	conn := &RabbitMQConn{URL: testenv.RabbitURL()}
	store, ref := deadLetterOne(t, f, db, paymentEvent(uuid.NewString()), &Republisher{RabbitMQ: conn})
	on := true
	if _, err := store.SetSettings(ctx, ops.Action{Actor: "dba", Reason: "SOX"}, ops.SettingsChange{TwoPersonRule: &on}); err != nil {
		t.Fatal(err)
	}
	ap, err := store.RequestApproval(ctx, ops.Action{Actor: "oncall-ann", Reason: "amount fixed"},
		ops.ApprovalSpec{Verb: "edit", Refs: []ops.Ref{ref}, Payload: []byte(`{"amount":"10.00"}`)})
	if err != nil {
		t.Fatal(err)
	}
	bob := ops.Action{Actor: "oncall-bob", Reason: "checked"}
	refusing := store.WithRepublisher(&Republisher{RabbitMQ: conn, Allow: []string{"settlement"}})
	_, err = refusing.Approve(ctx, bob, ap.ID, ops.RedriveOptions{})
	if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "stays pending") || !strings.Contains(err.Error(), ref.String()) {
		t.Errorf("approval with the ledger not on --replay-allow: %v", err)
	}
	pending, err := store.Approvals(ctx, false, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 1 || pending[0].ID != ap.ID || pending[0].Status != "pending" {
		t.Fatalf("approvals after the refused approval: %+v", pending)
	}
	if s := deadLetterStatus(t, db, ref); s != "parked" || f.count(t, f.ledger) != 0 {
		t.Errorf("after the refused approval: status %s, %d in the ledger", s, f.count(t, f.ledger))
	}
	outs, err := store.Approve(ctx, bob, ap.ID, ops.RedriveOptions{})
	if err != nil || len(outs) != 1 || outs[0].Result != "edited" {
		t.Fatalf("approval with the flags fixed: %+v %v", outs, err)
	}
	if d := f.get(t, f.ledger); string(d.Body) != `{"amount":"10.00"}` {
		t.Errorf("in the ledger: %q", d.Body)
	}
}

// A replayed message that dies again comes back with the queue's name as
// routing key: its topic is in outboxkit-topic, which ingest keeps as the
// row's topic and the next replay sends again.
func TestReplayedTwiceKeepsItsTopic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFanoutTopology(t)
	db := testenv.NewDB(t)
	rep := &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}}
	if err := f.ch.PublishWithContext(ctx, f.pay, "payments.created", false, false, paymentEvent(uuid.NewString())); err != nil {
		t.Fatal(err)
	}
	if err := f.get(t, f.accounting).Ack(false); err != nil {
		t.Fatal(err)
	}
	if err := f.get(t, f.ledger).Reject(false); err != nil {
		t.Fatal(err)
	}
	a := ops.Action{Actor: "oncall-ann", Reason: "ledger fixed"}
	for round := 1; round <= 2; round++ {
		store, ref := ingestOne(t, f, db, rep)
		var topic string
		if err := db.Pool.QueryRow(ctx, `SELECT topic FROM inbox.dead_letters WHERE id = $1`, ref.ID).Scan(&topic); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Replay(ctx, a, ref); err != nil {
			t.Fatal(err)
		}
		d := f.get(t, f.ledger)
		if got := d.Headers[wire.TopicHeader]; topic != "payments.created" || got != "payments.created" || d.Exchange != "" {
			t.Errorf("round %d: row topic %q, replay through exchange %q with %s %v", round, topic, d.Exchange, wire.TopicHeader, got)
		}
		if err := d.Reject(false); err != nil { // the ledger still cannot
			t.Fatal(err)
		}
	}
}

// A message that reached the ledger through the default exchange with
// spellings of outboxkit-topic that disagree names no topic: ingest takes
// the routing key (the queue's name) as the row's topic, as the inbox's
// consumer does, instead of a pick by map order. Spellings that agree name
// their topic. Either way the replay carries the canonical spelling only.
func TestTopicHeaderSpellingsThatDisagreeFallBackToTheRoutingKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		refunds string // the second spelling's value
		want    func(f *fanoutTopology) string
	}{
		{"disagree", "refunds.created", func(f *fanoutTopology) string { return f.ledger }},
		{"agree", "payments.created", func(*fanoutTopology) string { return "payments.created" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newFanoutTopology(t)
			db := testenv.NewDB(t)
			p := paymentEvent(uuid.NewString())
			p.Headers[wire.TopicHeader], p.Headers["Outboxkit-Topic"] = "payments.created", tc.refunds
			if err := f.ch.PublishWithContext(ctx, "", f.ledger, false, false, p); err != nil {
				t.Fatal(err)
			}
			if err := f.get(t, f.ledger).Reject(false); err != nil {
				t.Fatal(err)
			}
			store, ref := ingestOne(t, f, db, &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}})
			var topic string
			if err := db.Pool.QueryRow(ctx, `SELECT topic FROM inbox.dead_letters WHERE id = $1`, ref.ID).Scan(&topic); err != nil {
				t.Fatal(err)
			}
			if want := tc.want(f); topic != want {
				t.Errorf("row topic %q, want %q", topic, want)
			}
			if _, err := store.Replay(ctx, ops.Action{Actor: "oncall-ann", Reason: "ledger fixed"}, ref); err != nil {
				t.Fatal(err)
			}
			d := f.get(t, f.ledger)
			var spellings []string
			for k := range d.Headers {
				if strings.EqualFold(k, wire.TopicHeader) {
					spellings = append(spellings, k)
				}
			}
			if want := tc.want(f); len(spellings) != 1 || spellings[0] != wire.TopicHeader || d.Headers[wire.TopicHeader] != want {
				t.Errorf("the replay carries %v, %s = %v; want only %s = %q", spellings, wire.TopicHeader, d.Headers[wire.TopicHeader],
					wire.TopicHeader, want)
			}
		})
	}
}
