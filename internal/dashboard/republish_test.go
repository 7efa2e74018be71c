package dashboard_test

// What the dashboard tells the operator when the database fails after the
// broker confirmed a corrected copy (regression tests of the review of
// 1bff1ac): never "changed nothing".

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/ingest"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// dbFailsAfterSend is the real Republisher; right after the broker
// confirmed the first send, fail runs (the operator's database connection
// dies, or the database stays unusable).
type dbFailsAfterSend struct {
	*ingest.Republisher
	fail func()
	once sync.Once
}

func (k *dbFailsAfterSend) Republish(ctx context.Context, l *ops.BrokerLetter) (ops.Destination, error) {
	d, err := k.Republisher.Republish(ctx, l)
	if err == nil {
		k.once.Do(k.fail)
	}
	return d, err
}

// editAfterDatabaseFailure edits a broker dead letter through the dashboard
// while fail breaks the database after the send, and returns the page the
// operator sees.
func editAfterDatabaseFailure(t *testing.T, fail func(e *env)) string {
	t.Helper()
	ctx := context.Background()
	e := newEnv(t, nil)
	r := testenv.NewRabbitDLQ(t, "dash-edit")
	r.DeadLetter(t, amqp.Publishing{MessageId: uuid.NewString(), Body: []byte(`{"amount":"x"}`)})
	ingester, err := ingest.NewStore(e.db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := ingester.IngestRabbitMQ(ctx, ingest.RabbitMQConfig{RabbitMQConn: ingest.RabbitMQConn{URL: testenv.RabbitURL()},
		Queue: r.DLQ, Once: true}); err != nil || res.Ingested != 1 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	var ref string
	if err := e.db.Pool.QueryRow(ctx, `SELECT 'i:' || id FROM inbox.dead_letters`).Scan(&ref); err != nil {
		t.Fatal(err)
	}
	e.serve(e.store.WithRepublisher(&dbFailsAfterSend{Republisher: &ingest.Republisher{RabbitMQ: &ingest.RabbitMQConn{URL: testenv.RabbitURL()}},
		fail: func() { fail(e) }}), nil)
	alice := e.client().signIn("alice", aliceToken)
	resp, _ := alice.post("/events/"+ref+"/edit", url.Values{"reason": {"INC-9"}, "payload": {`{"amount":"10.00"}`}, "encoding": {"text"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("edit: %d", resp.StatusCode)
	}
	_, page := alice.get(resp.Header.Get("Location"))
	if n := r.Count(t, r.Work); n != 1 {
		t.Fatalf("%d corrected copies in %s, want 1", n, r.Work)
	}
	if i := strings.Index(page, "changed nothing"); i >= 0 {
		t.Errorf("the corrected copy is in the broker, and the page says: ...%s...", page[max(0, i-60):min(len(page), i+300)])
	}
	return page
}

func terminateIdleInTransaction(t *testing.T, e *env) {
	if _, err := e.db.Pool.Exec(context.Background(), `SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
	  WHERE datname = current_database() AND state = 'idle in transaction' AND pid <> pg_backend_pid()`); err != nil {
		t.Error(err)
	}
}

// The operator's transaction dies after the send: the edit is recorded in a
// fresh one and the page says it was edited.
func TestDashboardEditRecordedAfterTheTransactionIsLost(t *testing.T) {
	t.Parallel()
	page := editAfterDatabaseFailure(t, func(e *env) { terminateIdleInTransaction(t, e) })
	if !strings.Contains(page, "edited: a corrected copy") || !strings.Contains(page, "second transaction") {
		t.Errorf("the page does not say the edit was done and how it was recorded:\n%s", page)
	}
}

// The database stays unusable after the send: the page says not to retry,
// because the message was sent.
func TestDashboardEditSentNotRecordedSaysDoNotRetry(t *testing.T) {
	t.Parallel()
	page := editAfterDatabaseFailure(t, func(e *env) {
		terminateIdleInTransaction(t, e)
		if _, err := e.db.Pool.Exec(context.Background(), `ALTER TABLE inbox.dead_letters RENAME TO dead_letters_away`); err != nil {
			t.Error(err)
		}
		t.Cleanup(func() {
			e.db.Pool.Exec(context.Background(), `ALTER TABLE inbox.dead_letters_away RENAME TO dead_letters`) //nolint:errcheck
		})
	})
	if !strings.Contains(page, "Do not retry: the message may have been sent.") {
		t.Errorf("the page does not say not to retry:\n%s", page)
	}
}
