package relay

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

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
	stmts := renderStatements(`"outbox"`)
	rows, err := db.Pool.Query(ctx, "EXPLAIN "+stmts.claim, []int32{0, 1, 2, 3, 4, 5, 6, 7}, 500)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if !strings.Contains(plan, "messages_pending_idx") {
		t.Errorf("the claim does not read messages_pending_idx:\n%s", plan)
	}
	for _, bad := range []string{"messages_pkey", "Seq Scan on messages"} {
		if strings.Contains(plan, bad) {
			t.Errorf("the claim plan uses %s, which walks published rows:\n%s", bad, plan)
		}
	}
}
