package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/holds"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/migrations"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

// loginAs creates a login role that is a member of the component role and
// returns a pool connected as it. Roles are cluster-wide: the prefix is
// unique to the test and everything is dropped at the end.
func loginAs(t *testing.T, db *testenv.DB, prefix, component string) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	login := prefix + "_" + component + "_login"
	group := pgx.Identifier{prefix + "_" + component}.Sanitize()
	for _, q := range []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN", pgx.Identifier{login}.Sanitize()),
		fmt.Sprintf("GRANT %s TO %s", group, pgx.Identifier{login}.Sanitize()),
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	u, _ := url.Parse(db.URL)
	u.User = url.User(login)
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func mustDeny(t *testing.T, pool *pgxpool.Pool, who, sql string, args ...any) {
	t.Helper()
	_, err := pool.Exec(context.Background(), sql, args...)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("%s may run %q (err %v); want insufficient_privilege", who, sql, err)
	}
}

// Each component runs under its role; each forbidden statement fails.
func TestRolesLeastPrivilege(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	prefix := strings.ReplaceAll(testenv.UniqueName("okr"), "-", "_")
	t.Cleanup(func() { testenv.DropRoles(db, prefix) }) //nolint:errcheck // tidying up
	ctx := context.Background()
	if err := migrations.ApplyRoles(ctx, db.URL, nil, prefix); err != nil {
		t.Fatal(err)
	}
	if err := migrations.ApplyRoles(ctx, db.URL, nil, prefix); err != nil {
		t.Fatalf("second run must be a no-op: %v", err)
	}

	// Producer: Enqueue, EnqueueBatch and a delayed event work.
	producer := loginAs(t, db, prefix, "producer")
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("roles")
	k.CreateTopic(t, topic, 1)
	tx, err := producer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: "k1", Type: "t", Payload: []byte("{}")}); err != nil {
		t.Fatalf("producer Enqueue: %v", err)
	}
	if _, err := outbox.EnqueueBatch(ctx, tx, []outbox.Message{{Topic: topic, Key: "k1", Type: "t", Payload: []byte("{}")},
		{Topic: topic, Type: "t", Payload: []byte("{}")}}); err != nil {
		t.Fatalf("producer EnqueueBatch: %v", err)
	}
	if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: "nowhere-" + topic, Key: "k2", Type: "t", Payload: []byte("{}"),
		DeliverAfter: time.Millisecond}); err != nil {
		t.Fatalf("producer delayed Enqueue: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	mustDeny(t, producer, "producer", `SELECT payload FROM outbox.messages`)
	mustDeny(t, producer, "producer", `UPDATE outbox.messages SET status = 'published'`)
	mustDeny(t, producer, "producer", `DELETE FROM outbox.messages`)
	mustDeny(t, producer, "producer", `INSERT INTO outbox.audit_log (actor, action, target_kind, reason) VALUES ('x', 'y', 'z', 'w')`)

	// Relay: publishes, promotes the delayed event, parks the unroutable
	// one (with its audit entry).
	relayPool := loginAs(t, db, prefix, "relay")
	pub, err := kafka.New(kafka.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	r, err := relay.New(relayPool, &relay.Config{Publisher: pub, PollInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	testenv.Eventually(t, 30*time.Second, "relay publishing and parking under its role", func() bool {
		var published, parked int
		db.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'published'), count(*) FILTER (WHERE status = 'parked') FROM outbox.messages`).Scan(&published, &parked)
		return published == 3 && parked == 1
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mustDeny(t, relayPool, "relay", `DELETE FROM outbox.messages`)
	mustDeny(t, relayPool, "relay", `SELECT * FROM outbox.audit_log`)
	mustDeny(t, relayPool, "relay", `TRUNCATE outbox.messages`)

	// Operator: replays the parked event (audited), cannot delete.
	operator := loginAs(t, db, prefix, "operator")
	store, err := ops.New(operator, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	items, err := store.List(ctx, ops.Filter{Kind: ops.KindOutbox})
	if err != nil || len(items) != 1 {
		t.Fatalf("operator list: %v %v", items, err)
	}
	if _, err := store.Replay(ctx, ops.Action{Actor: "op", Reason: "test"}, items[0].Ref); err != nil {
		t.Fatalf("operator replay: %v", err)
	}
	mustDeny(t, operator, "operator", `DELETE FROM outbox.messages`)
	mustDeny(t, operator, "operator", `DELETE FROM outbox.audit_log`)

	// Operator: places and releases legal holds (audited), never deletes
	// or rewrites one.
	holdStore, err := holds.New(operator, "outbox")
	if err != nil {
		t.Fatal(err)
	}
	h, err := holdStore.Add(ctx, holds.Hold{Key: "k1", Reason: "case 1", Actor: "legal"})
	if err != nil {
		t.Fatalf("operator hold add: %v", err)
	}
	if _, err := holdStore.Release(ctx, h.ID, "legal", "case closed"); err != nil {
		t.Fatalf("operator hold release: %v", err)
	}
	mustDeny(t, operator, "operator", `DELETE FROM outbox.legal_holds`)
	mustDeny(t, operator, "operator", `UPDATE outbox.legal_holds SET key = 'other'`)

	// Operator on inbox dead letters: records a replay request for the
	// consumer, and drops a dead letter (which cancels that request).
	var dl int64
	if err := db.Pool.QueryRow(ctx, `INSERT INTO inbox.dead_letters (consumer, consumer_version, topic, payload, error, error_class,
		attempts, status, first_failed_at, last_failed_at) VALUES ('billing', 'v1', 't', '\x00', 'boom', 'permanent', 1, 'parked', now(), now())
		RETURNING id`).Scan(&dl); err != nil {
		t.Fatal(err)
	}
	inboxRef := ops.Ref{Kind: ops.KindInbox, ID: dl}
	if out, err := store.Replay(ctx, ops.Action{Actor: "op", Reason: "test"}, inboxRef); err != nil || out.Request == 0 {
		t.Fatalf("operator inbox replay request: %v %v", out, err)
	}
	if _, err := store.Drop(ctx, ops.Action{Actor: "op", Reason: "test"}, inboxRef); err != nil {
		t.Fatalf("operator inbox drop: %v", err)
	}
	mustDeny(t, operator, "operator", `DELETE FROM inbox.dead_letter_requests`)
	mustDeny(t, operator, "operator", `UPDATE inbox.dead_letter_requests SET payload = '\x00'`)

	// The two-person rule: only the owner switches it; operators ask for
	// and decide approvals, and cannot change what an approval runs.
	on := true
	if _, err := store.SetSettings(ctx, ops.Action{Actor: "op", Reason: "test"}, ops.SettingsChange{TwoPersonRule: &on}); !errors.Is(err, ops.ErrSettingsOwner) {
		t.Errorf("operator changes the settings: %v", err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.settings SET two_person_rule = true, updated_by = 'dba'`); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Restore(ctx, ops.Action{Actor: "op", Reason: "test"}, inboxRef); err != nil {
		t.Fatalf("operator inbox restore: %v", err)
	}
	ap, err := store.RequestApproval(ctx, ops.Action{Actor: "op", Reason: "test"}, ops.ApprovalSpec{Verb: "drop", Refs: []ops.Ref{inboxRef}})
	if err != nil {
		t.Fatalf("operator asks for an approval: %v", err)
	}
	if outs, err := store.Approve(ctx, ops.Action{Actor: "op2", Reason: "test"}, ap.ID, ops.RedriveOptions{}); err != nil || len(outs) != 1 || outs[0].Result != "dropped" {
		t.Fatalf("operator approves: %v %v", outs, err)
	}
	mustDeny(t, operator, "operator", `UPDATE outbox.approvals SET refs = '{o:1}'`)
	mustDeny(t, operator, "operator", `UPDATE outbox.settings SET two_person_rule = false`)
	mustDeny(t, operator, "operator", `DELETE FROM outbox.approvals`)

	// Auditor: reads everything, writes nothing.
	auditor := loginAs(t, db, prefix, "auditor")
	var n int
	if err := auditor.QueryRow(ctx, `SELECT count(*) FROM outbox.audit_log`).Scan(&n); err != nil || n != 10 {
		t.Errorf("auditor reads the audit log: %d entries, %v (want park, replay, hold, release, inbox replay request, drop, restore, approval request, approval, drop)", n, err)
	}
	if err := auditor.QueryRow(ctx, `SELECT count(*) FROM outbox.legal_holds`).Scan(&n); err != nil || n != 1 {
		t.Errorf("auditor reads the legal holds: %d, %v", n, err)
	}
	mustDeny(t, auditor, "auditor", `INSERT INTO outbox.legal_holds (key, reason, actor) VALUES ('k', 'r', 'a')`)
	mustDeny(t, auditor, "auditor", `UPDATE outbox.messages SET status = 'dropped'`)
	mustDeny(t, auditor, "auditor", `INSERT INTO outbox.audit_log (actor, action, target_kind, reason) VALUES ('x', 'y', 'z', 'w')`)

	// The audit log is append-only even for the owner's application role.
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.audit_log SET reason = 'rewritten'`); err == nil {
		t.Error("audit log rows could be updated")
	}
}
