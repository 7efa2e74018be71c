package relay

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// TestClaimPlanReadsPendingRowsOnly reproduces the statistics that once made
// the claim walk the whole published history: ANALYZE ran while most rows
// were pending (a backlog), then the backlog drained. The claim must still
// read messages_pending_idx, never messages_pkey with a filter, and never
// a sequential scan.
func TestClaimPlanReadsPendingRowsOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	for _, q := range []string{
		`ALTER TABLE outbox.messages SET (autovacuum_enabled = false)`,
		`INSERT INTO outbox.messages (event_id, topic, partition, type, payload, content_type)
		 SELECT gen_random_uuid(), 'payments', i % 32, 'payment.created', '\x7b7d', 'application/json'
		   FROM generate_series(1, 50000) i`,
		`ANALYZE outbox.messages`,
		`UPDATE outbox.messages SET status = 'published', published_at = now() WHERE id <= 45000`,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	plan := explainClaim(t, db.Pool)
	if !strings.Contains(plan, "messages_pending_idx") {
		t.Errorf("the claim does not read messages_pending_idx:\n%s", plan)
	}
	for _, bad := range []string{"messages_pkey", "Seq Scan on messages"} {
		if strings.Contains(plan, bad) {
			t.Errorf("the claim plan uses %s, which walks published rows:\n%s", bad, plan)
		}
	}
}

// TestClaimPlanUnderBacklog reproduces the statistics of a quiet outbox
// (200,000 rows, one in 2,000 pending, vacuumed and analysed) followed by a
// backlog of 100,000 events, as after a broker outage. Left to itself the planner then reads each partition's pending
// rows with a bitmap scan and sorts them all to keep the first few hundred:
// every claim reads the whole backlog. The claim must walk
// messages_pending_idx in order and stop at its limit.
func TestClaimPlanUnderBacklog(t *testing.T) {
	t.Parallel()
	db := quietOutboxThenBacklog(t)
	plan := explainClaim(t, db.Pool)
	if !strings.Contains(plan, "Index Scan using messages_pending_idx") {
		t.Errorf("the claim does not walk messages_pending_idx in order:\n%s", plan)
	}
	for _, bad := range []string{"Bitmap Heap Scan", "Sort Key: m.partition", "Seq Scan on messages"} {
		if strings.Contains(plan, bad) {
			t.Errorf("the claim plan has %q: it reads every pending row of a partition:\n%s", bad, plan)
		}
	}
}

// TestMarkPlanUnderBacklog: with the same statistics, the mark once joined
// the fenced partitions to messages_pending_idx and compared every pending
// row of them with the batch's ids: 1.5 s per mark of 500 events over a
// backlog of 100,000. It must look each event up by id.
func TestMarkPlanUnderBacklog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := quietOutboxThenBacklog(t)
	stmts := renderStatements(`"outbox"`)
	ids := make([]int64, 500)
	acks := make([]string, len(ids))
	for i := range ids {
		ids[i] = int64(200001 + i*32)
	}
	rows, err := db.Pool.Query(ctx, "EXPLAIN "+stmts.markPublished, "relay-1", []int32{1}, []int64{1}, ids, acks, 1)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if !strings.Contains(plan, "Index Scan using messages_pkey on messages m") {
		t.Errorf("the mark does not look events up by id:\n%s", plan)
	}
	if strings.Contains(plan, "messages_pending_idx") {
		t.Errorf("the mark reads messages_pending_idx, every pending row of the partitions:\n%s", plan)
	}
}

// quietOutboxThenBacklog gives statistics of a quiet outbox (200,000 rows,
// one in 2,000 pending, vacuumed and analysed), then adds a backlog of
// 100,000 pending events that autovacuum does not get to analyse, as after a
// broker outage.
func quietOutboxThenBacklog(t *testing.T) *testenv.DB {
	t.Helper()
	ctx := context.Background()
	db := testenv.NewDB(t)
	for _, q := range []string{
		`ALTER TABLE outbox.messages SET (autovacuum_enabled = false)`,
		`INSERT INTO outbox.messages (event_id, topic, partition, type, payload, content_type, status, published_at)
		 SELECT gen_random_uuid(), 'payments', i % 32, 'payment.created', '\x7b7d', 'application/json',
		        CASE WHEN i % 2000 = 0 THEN 'pending' ELSE 'published' END, CASE WHEN i % 2000 = 0 THEN NULL ELSE now() END
		   FROM generate_series(1, 200000) i`,
		`VACUUM ANALYZE outbox.messages`,
		`INSERT INTO outbox.messages (event_id, topic, partition, type, payload, content_type)
		 SELECT gen_random_uuid(), 'payments', i % 32, 'payment.created', '\x7b7d', 'application/json'
		   FROM generate_series(1, 100000) i`,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return db
}

// explainClaim returns the plan of the claim as the worker runs it: in one
// pipeline after claimPlanSQL.
func explainClaim(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	stmts := renderStatements(`"outbox"`)
	b := &pgx.Batch{}
	b.Queue(stmts.claimPlan)
	b.Queue("EXPLAIN "+stmts.claim, []int32{0, 1, 2, 3, 4, 5, 6, 7}, 500)
	br := pool.SendBatch(context.Background(), b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		t.Fatal(err)
	}
	rows, err := br.Query()
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}
