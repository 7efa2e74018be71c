package ops

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// The send ends recordReserve before the caller's deadline, so that the
// recording of a confirmed send fits in it; with too little time left
// nothing is sent.
func TestSendContextKeepsTimeToRecord(t *testing.T) {
	t.Parallel()
	ref := Ref{Kind: KindInbox, ID: 7}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sctx, scancel, err := sendContext(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer scancel()
	caller, _ := ctx.Deadline()
	send, ok := sctx.Deadline()
	if !ok || caller.Sub(send) < recordReserve-time.Second { // less the time the call took
		t.Errorf("the send ends %s before the caller's deadline, want at least %s", caller.Sub(send), recordReserve)
	}

	short, cancel2 := context.WithTimeout(context.Background(), recordReserve+minSendBudget/2)
	defer cancel2()
	if _, _, err := sendContext(short, ref); err == nil || !strings.Contains(err.Error(), "nothing was sent") {
		t.Errorf("with too little time left: %v", err)
	}

	if sctx, scancel, err := sendContext(context.Background(), ref); err != nil {
		t.Error(err)
	} else if _, ok := sctx.Deadline(); ok {
		t.Error("a caller without a deadline got one")
	} else {
		scancel()
	}
}

// The event id of a corrected copy is the same for the same dead letter
// and bytes, and differs for other bytes or another dead letter.
func TestCopyIDIsStablePerDeadLetterAndPayload(t *testing.T) {
	t.Parallel()
	ev := uuid.NewString()
	a := copyID(Ref{Kind: KindInbox, ID: 1}, ev, []byte(`{"amount":"10.00"}`))
	id, err := uuid.Parse(a)
	if err != nil || id.Version() != 8 || id.Variant() != uuid.RFC4122 {
		t.Fatalf("copy id %s: version %d variant %v %v", a, id.Version(), id.Variant(), err)
	}
	for name, other := range map[string]string{
		"same":          copyID(Ref{Kind: KindInbox, ID: 1}, ev, []byte(`{"amount":"10.00"}`)),
		"other payload": copyID(Ref{Kind: KindInbox, ID: 1}, ev, []byte(`{"amount":"10.01"}`)),
		"other row":     copyID(Ref{Kind: KindInbox, ID: 2}, ev, []byte(`{"amount":"10.00"}`)),
	} {
		if (other == a) != (name == "same") {
			t.Errorf("%s: %s vs %s", name, other, a)
		}
	}
}

// connectedOnly says a RabbitMQ is configured and sends nothing: the tests
// below drive the recording of a send, not the send.
type connectedOnly struct{}

func (connectedOnly) Connected(broker string) bool { return broker == BrokerRabbitMQ }
func (connectedOnly) Target(*BrokerLetter) (Destination, error) {
	return Destination{}, errors.New("connectedOnly sends nothing")
}
func (connectedOnly) Republish(context.Context, *BrokerLetter) (Destination, error) {
	return Destination{}, errors.New("connectedOnly sends nothing")
}

// The operator's transaction committed but its caller saw an error (the
// answer to COMMIT was lost): the recovery finds that transaction's audit
// entry by its send id and writes nothing; the outcome says the send was
// recorded. A transaction that did not commit is recorded by the recovery.
// Neither asks for the transaction's id, which a standby promoted after an
// asynchronous failover may have given to another transaction.
func TestLostSendFoundByItsSendID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	s, err := New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	s = s.WithRepublisher(connectedOnly{})
	a := Action{Actor: "oncall-ann", Reason: "amount fixed"}
	audits := func(ref Ref) (n int) {
		t.Helper()
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.audit_log
  WHERE action = 'edit' AND target_kind = 'inbox_dead_letter' AND target_ids[1] = $1`,
			strconv.FormatInt(ref.ID, 10)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// lockAndRecord locks a fresh parked broker dead letter, records an edit of it
	// in the locking transaction, and commits it or not.
	lockAndRecord := func(commit bool) (Ref, *send) {
		t.Helper()
		var id int64
		if err := db.Pool.QueryRow(ctx, `INSERT INTO inbox.dead_letters (consumer, consumer_version, event_id, topic, payload,
    error, error_class, attempts, status, first_failed_at, last_failed_at, ingested_from, ingest_key)
  VALUES ('dlq-ledger', '1', gen_random_uuid(), 'payments', '{"amount":"x"}', 'e', 'permanent', 1, 'parked', now(), now(),
    'rabbitmq', gen_random_uuid()::text) RETURNING id`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ref := Ref{Kind: KindInbox, ID: id}
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck // after a commit there is nothing to roll back
		p, err := s.lockForSend(ctx, tx, ref, true, []byte(`{"amount":"10.00"}`))
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, s.in.auditMark).Scan(&p.mark); err != nil {
			t.Fatal(err)
		}
		if err := s.recordSend(ctx, tx, a, ref, p); err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return ref, p
	}
	recoverSend := func(ref Ref, p *send) (Outcome, error) {
		t.Helper()
		var lost lostSend
		if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) (err error) {
			lost, err = s.recordLostSend(ctx, tx, a, ref, p)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return lost.report(Outcome{Ref: ref, Result: p.status}, Destination{})
	}

	ref, p := lockAndRecord(true)
	out, err := recoverSend(ref, p)
	if err != nil || !strings.Contains(out.Note, "the commit went through") {
		t.Errorf("recovery of a committed send: %q %v, want it reported recorded", out.Note, err)
	}
	if n := audits(ref); n != 1 {
		t.Errorf("%d audit entries for one send, want 1", n)
	}

	ref, p = lockAndRecord(false)
	out, err = recoverSend(ref, p)
	if err != nil || !strings.Contains(out.Note, "second transaction") {
		t.Errorf("recovery of a rolled-back send: %q %v, want it recorded now", out.Note, err)
	}
	var status, sendID string
	if err := db.Pool.QueryRow(ctx, `SELECT d.status, a.details->>'send_id' FROM inbox.dead_letters d
  JOIN outbox.audit_log a ON a.target_ids[1] = d.id::text AND a.action = 'edit' WHERE d.id = $1`, ref.ID).Scan(&status, &sendID); err != nil {
		t.Fatal(err)
	}
	if status != "edited" || sendID != p.sendID || audits(ref) != 1 {
		t.Errorf("after the recovery: status %s, send id %q (want %s), %d audit entries", status, sendID, p.sendID, audits(ref))
	}
}
