package relay

// Concurrency of the mark and the claim (commit 95db541): the mark is fenced
// by the lease and re-checks the status; the claim plan settings stay local.

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// markFixture: partition 0 leased by relay-1 under token 7, one pending
// event in it. It returns the event's id.
func markFixture(t *testing.T, db *testenv.DB) int64 {
	t.Helper()
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.partitions SET owner = 'relay-1', lease_token = 7, lease_until = now() + interval '1 hour'
	   WHERE partition = 0`); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := db.Pool.QueryRow(ctx, `INSERT INTO outbox.messages (event_id, topic, partition, type, payload, content_type)
	   VALUES (gen_random_uuid(), 'payments', 0, 'payment.created', '\x7b7d', 'application/json') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// markBlockedBy runs the mark of id while tx holds a conflicting change,
// waits until the mark waits on a lock, commits tx, and returns how many
// rows the mark marked.
func markBlockedBy(t *testing.T, db *testenv.DB, id int64, change string) int64 {
	t.Helper()
	ctx := context.Background()
	stmts := renderStatements(`"outbox"`)
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, change); err != nil {
		t.Fatal(err)
	}
	type res struct {
		n   int64
		err error
	}
	done := make(chan res, 1)
	go func() {
		var n int64
		var head bool
		err := db.Pool.QueryRow(ctx, stmts.markPublished, "relay-1", []int32{0}, []int64{7}, []int64{id}, []string{"ack"}, 1).Scan(&n, &head)
		done <- res{n, err}
	}()
	testenv.Eventually(t, 10*time.Second, "the mark waiting on a lock", func() bool {
		var waiting bool
		db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
		   AND wait_event_type = 'Lock' AND query LIKE '%marked AS%')`).Scan(&waiting)
		return waiting
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.n
}

// An operator parks the event while the relay's mark runs: the mark waits
// for the operator's row lock, re-checks lower(status) = 'pending' on the
// new row version and marks nothing.
func TestMarkRechecksStatusAfterConcurrentPark(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	id := markFixture(t, db)
	if n := markBlockedBy(t, db, id, `UPDATE outbox.messages SET status = 'parked', parked_at = now() WHERE id = `+itoa64(id)); n != 0 {
		t.Errorf("the mark marked %d rows parked meanwhile by an operator", n)
	}
	var st string
	db.Pool.QueryRow(context.Background(), `SELECT status FROM outbox.messages WHERE id = $1`, id).Scan(&st)
	if st != "parked" {
		t.Errorf("status %s, want parked", st)
	}
}

// A takeover in flight when the mark starts: the fence (FOR SHARE through
// the ARRAY initplan) waits for it, finds the new token, marks nothing.
func TestMarkFencedByConcurrentTakeover(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	id := markFixture(t, db)
	if n := markBlockedBy(t, db, id, `UPDATE outbox.partitions SET owner = 'thief', lease_token = lease_token + 1 WHERE partition = 0`); n != 0 {
		t.Errorf("a relay that lost its lease marked %d rows", n)
	}
}

// A takeover that starts after the mark: it waits for the mark's
// transaction (the fence's FOR SHARE lock is held to commit).
func TestMarkHoldsFenceUntilCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	id := markFixture(t, db)
	stmts := renderStatements(`"outbox"`)
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	var n int64
	var head bool
	if err := tx.QueryRow(ctx, stmts.markPublished, "relay-1", []int32{0}, []int64{7}, []int64{id}, []string{"ack"}, 1).Scan(&n, &head); err != nil || n != 1 {
		t.Fatalf("mark: %d %v", n, err)
	}
	var locked bool
	if err := db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM outbox.partitions WHERE partition = 0 FOR UPDATE NOWAIT)`).Scan(&locked); err == nil {
		t.Errorf("a takeover could lock partition 0 while the mark's transaction is open: the fence holds no lock")
	}
}

// The claim's set_config stays in its implicit transaction, in every
// query exec mode (simple protocol is what PgBouncer before 1.21 needs).
func TestClaimPlanSettingsStayLocal(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		cfg, err := pgxpool.ParseConfig(db.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = 1
		cfg.ConnConfig.DefaultQueryExecMode = mode
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		w := &worker{r: &Relay{pool: pool, sql: renderStatements(`"outbox"`)}}
		for range 7 { // past the plan cache's five custom plans
			if _, err := w.claim(context.Background(), []int32{0, 1}, 50); err != nil {
				t.Fatalf("%v: claim: %v", mode, err)
			}
		}
		// In the pipeline, after claimPlan, the settings are off.
		b := &pgx.Batch{}
		b.Queue(w.r.sql.claimPlan)
		b.Queue(`SELECT current_setting('enable_bitmapscan') || current_setting('enable_seqscan')`)
		br := pool.SendBatch(context.Background(), b)
		var inside string
		if _, err := br.Exec(); err != nil {
			t.Fatal(err)
		}
		if err := br.QueryRow().Scan(&inside); err != nil || inside != "offoff" {
			t.Errorf("%v: in the claim's pipeline the settings are %q (%v), want offoff", mode, inside, err)
		}
		br.Close()
		var bitmap, seq string
		if err := pool.QueryRow(context.Background(), `SELECT current_setting('enable_bitmapscan'), current_setting('enable_seqscan')`).Scan(&bitmap, &seq); err != nil {
			t.Fatal(err)
		}
		if bitmap != "on" || seq != "on" {
			t.Errorf("%v: after a claim the pooled connection has enable_bitmapscan=%s enable_seqscan=%s", mode, bitmap, seq)
		}
		pool.Close()
	}
}

func itoa64(n int64) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}
