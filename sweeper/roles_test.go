package sweeper

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/migrations"
)

// Every job, and the leader election, work for a login role that has only
// the sweeper role's privileges (migrations.ApplyRoles), with something to
// do for each job.
func TestWorksWithTheSweeperRole(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	prefix := strings.ToLower(fmt.Sprintf("okts%d_%s", os.Getpid(), strings.ReplaceAll(testenv.UniqueName("r")[len("r-"):], "-", "_")))
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	t.Cleanup(func() { testenv.DropRoles(db, prefix) }) //nolint:errcheck // tidying up
	if err := migrations.ApplyRoles(ctx, db.URL, nil, prefix); err != nil {
		t.Fatal(err)
	}
	login := prefix + "_sweeper_login"
	for _, q := range []string{
		"CREATE ROLE " + pgx.Identifier{login}.Sanitize() + " LOGIN",
		"GRANT " + pgx.Identifier{prefix + "_sweeper"}.Sanitize() + " TO " + pgx.Identifier{login}.Sanitize(),
	} {
		execSQL(t, db.Pool, q)
	}
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(login)
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	// Something for every job to do.
	execSQL(t, db.Pool, `INSERT INTO outbox.topic_policies (topic, auto_retry, updated_by) VALUES ('payments', true, 'test')`)
	ids := enqueue(t, db.Pool, "payments", "k1", 4)
	missed := enqueue(t, db.Pool, "payments", "k2", 1)
	part := queryInt(t, db.Pool, `SELECT partition FROM outbox.messages WHERE event_id = $1`, ids[0])
	execSQL(t, db.Pool, `UPDATE outbox.partitions SET owner = 'dead', lease_until = now() - interval '1 hour' WHERE partition = $1`, part)
	execSQL(t, db.Pool, `INSERT INTO outbox.relays (relay_id, hostname, pid, version, alive_until) VALUES ('dead', 'h', 1, 'dev', now() - interval '1 day')`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', created_at = now() - interval '9 days', published_at = now() - interval '8 days' WHERE event_id = $1`, ids[0])
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', created_at = now() - interval '40 minutes', published_at = now() - interval '30 minutes' WHERE event_id = $1`, ids[1])
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'parked', parked_at = now() - interval '1 hour', last_error_class = 'transient' WHERE event_id = $1`, ids[2])
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'blocked' WHERE event_id = $1`, ids[3])
	execSQL(t, db.Pool, `UPDATE outbox.lanes SET hold_until = 'infinity', blocked_by = (SELECT id FROM outbox.messages WHERE event_id = $1) WHERE key = 'k1'`, ids[1])
	execSQL(t, db.Pool, `UPDATE outbox.messages SET available_at = now() - interval '1 hour' WHERE event_id = $1`, missed[0])
	execSQL(t, db.Pool, `INSERT INTO outbox.attempts (message_id, event_id, attempt, started_at, duration_ms, relay_id, error_class, error, outcome)
		SELECT id, event_id, 1, now(), 1, 'r', 'transient', 'x', 'parked' FROM outbox.messages`)
	execSQL(t, db.Pool, `INSERT INTO inbox.processed (consumer, event_id, topic, payload_sha256, processed_at) VALUES
		('billing', $1, 'payments', '\x00', now() - interval '20 days'), ('billing', $2, 'payments', '\x00', now() - interval '20 minutes')`, ids[0], ids[1])
	execSQL(t, db.Pool, `INSERT INTO inbox.dead_letters (consumer, consumer_version, topic, payload, error, error_class, attempts, status, first_failed_at, last_failed_at)
		VALUES ('billing', 'v1', 'payments', '\x00', 'bad', 'permanent', 3, 'parked', now(), now())`)
	// Redaction reads the legal holds and redacts a closed dead letter.
	execSQL(t, db.Pool, `INSERT INTO inbox.dead_letters (consumer, consumer_version, topic, payload, error, error_class, attempts, status,
		first_failed_at, last_failed_at, resolved_at)
		VALUES ('billing', 'v1', 'payments', '\x00', 'bad', 'permanent', 3, 'resolved', now() - interval '3 days', now() - interval '3 days', now() - interval '2 days')`)
	execSQL(t, db.Pool, `INSERT INTO outbox.legal_holds (key, reason, actor) VALUES ('k9', 'case', 'legal')`)

	s := newSweeper(t, pool, Config{Consumers: map[string][]string{"billing": {"payments"}}, RedactAfter: 24 * time.Hour}, nil)
	want := map[Job]int64{JobReclaim: 4, JobRescue: 1, JobRetry: 1, JobRetention: 3, JobReconcile: 1, JobAlarms: 3, JobRedact: 1}
	for _, j := range Jobs() {
		res, err := s.RunJob(ctx, j)
		if err != nil {
			t.Errorf("%s as the sweeper role: %v", j, err)
			continue
		}
		if res.Rows != want[j] {
			t.Errorf("%s: %d rows, want %d", j, res.Rows, want[j])
		}
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.audit_log WHERE actor = 'system:sweeper'`); n != 4 {
		t.Errorf("%d audit entries, want 4 (reclaim, lane release, retry, redact)", n)
	}
	// It reads the holds but cannot place, release or delete one, and may
	// change only the redacted columns of a dead letter.
	for _, q := range []string{
		`INSERT INTO outbox.legal_holds (key, reason, actor) VALUES ('k', 'r', 'a')`,
		`UPDATE outbox.legal_holds SET released_at = now(), released_by = 'x', release_reason = 'y'`,
		`DELETE FROM outbox.legal_holds`,
		`UPDATE inbox.dead_letters SET status = 'dropped'`,
		`DELETE FROM inbox.dead_letters`,
	} {
		if _, err := pool.Exec(ctx, q); pgutil.SQLState(err) != pgutil.InsufficientPrivilege {
			t.Errorf("the sweeper role may run %q: %v", q, err)
		}
	}
	start(t, s)
	testenv.Eventually(t, 10*time.Second, "leadership as the sweeper role", s.IsLeader)
}
