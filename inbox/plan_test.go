package inbox

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// TestClaimRunPlanLooksLanesUpByKey reproduces the statistics of a consumer
// that had no lanes when they were taken (a new consumer) and now has
// 2,000. The batch claim must match its runs' lanes on the whole primary
// key, not read every lane of the consumer and compare each with every run
// (40-90 ms per batch of 100 at 1,000 lanes: the Kafka consumer at 8,000
// instead of 43,000 events/s).
func TestClaimRunPlanLooksLanesUpByKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	for _, q := range []string{
		`ALTER TABLE inbox.lanes SET (autovacuum_enabled = false)`,
		`INSERT INTO inbox.lanes (consumer, topic, key, last_sequence)
		 SELECT 'other', 'payouts', 'k' || i, 1 FROM generate_series(1, 20) i`,
		`ANALYZE inbox.lanes`,
		`INSERT INTO inbox.lanes (consumer, topic, key, last_sequence)
		 SELECT 'billing', 'payouts', 'k' || i, 1 FROM generate_series(1, 2000) i`,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	stmts := renderStatements(`"inbox"`, `"outbox"`)
	const n = 100
	ids := make([]uuid.UUID, n)
	topics, keys := make([]string, n), make([]string, n)
	seqs := make([]int64, n)
	shas := make([][]byte, n)
	for i := range n {
		ids[i], topics[i], keys[i], seqs[i], shas[i] = uuid.New(), "payouts", "k"+string(rune('a'+i%26))+strings.Repeat("x", i/26), 2, make([]byte, 32)
	}
	rows, err := db.Pool.Query(ctx, "EXPLAIN "+stmts.claimRun, "billing", ids, topics, keys, seqs, shas, false)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	upd := plan[strings.Index(plan, "Update on lanes"):]
	upd = upd[:strings.Index(upd, "Insert on lanes")]
	// A hash join over the lanes is linear and chosen only while the table
	// is small; what must not happen is a scan of the consumer's lanes
	// compared in a loop with every run.
	if strings.Contains(upd, "Bitmap Heap Scan on lanes") || strings.Contains(upd, "Index Cond: (consumer = ") {
		t.Errorf("the lane update reads every lane of the consumer:\n%s", plan)
	}
	// The same for the lanes a batch starts: each run's lane is looked up
	// by its whole key. With "l.consumer = $1" the planner read all of the
	// consumer's lanes once per run (50 ms per batch of 100 new keys at
	// 1,000 lanes).
	ins := plan[strings.Index(plan, "Insert on lanes"):]
	ins = ins[:strings.Index(ins, "InitPlan")]
	if strings.Contains(ins, "Bitmap Heap Scan on lanes") || strings.Contains(ins, "Index Cond: (consumer = ") {
		t.Errorf("the lane insert reads every lane of the consumer:\n%s", plan)
	}
}
