package inbox

import (
	"context"
	"regexp"
	"strconv"
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
	ids, topics, keys, seqs, shas := planBatch(2)
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

// planBatch is a batch claim's arguments for 100 events of 100 keys on
// topic payouts, each at sequence seq.
func planBatch(seq int64) (ids []uuid.UUID, topics, keys []string, seqs []int64, shas [][]byte) {
	const n = 100
	ids = make([]uuid.UUID, n)
	topics, keys = make([]string, n), make([]string, n)
	seqs = make([]int64, n)
	shas = make([][]byte, n)
	for i := range n {
		ids[i], topics[i], keys[i], seqs[i], shas[i] = uuid.New(), "payouts", "k"+string(rune('a'+i%26))+strings.Repeat("x", i/26), seq, make([]byte, 32)
	}
	return ids, topics, keys, seqs, shas
}

// planRows finds the rows an EXPLAIN ANALYZE node produced or filtered out.
var planRows = regexp.MustCompile(`(?:actual time=\S+ rows=|Rows Removed by (?:Filter|Join Filter): )(\d+)`)

// TestClaimPlansLookDeadLettersUpByEvent reproduces the statistics of a
// consumer that had no dead letters when they were taken and now has
// 20,000 (an incident parked them). The claims' check for events parked
// already must look each event up by its id, not read every dead letter of
// the consumer (2 ms per event and 9 ms per batch of 100 here, growing
// with the dead letters), with custom and with generic plans. Nor may the
// batch claim's "any open dead letter?" probe read the 20,000 closed dead
// letters of a consumer whose incident is over.
func TestClaimPlansLookDeadLettersUpByEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	for _, q := range []string{
		`ALTER TABLE inbox.dead_letters SET (autovacuum_enabled = false)`,
		`INSERT INTO inbox.dead_letters (consumer, consumer_version, event_id, topic, payload, error, error_class, attempts, status, first_failed_at, last_failed_at)
		 SELECT 'other', 'v1', gen_random_uuid(), 'payouts', '\x00', 'boom', 'transient', 1, 'parked', now(), now() FROM generate_series(1, 20) i`,
		`ANALYZE inbox.dead_letters`,
		`INSERT INTO inbox.dead_letters (consumer, consumer_version, event_id, topic, payload, error, error_class, attempts, status, first_failed_at, last_failed_at)
		 SELECT 'billing', 'v1', gen_random_uuid(), 'payouts', '\x00', 'boom', 'transient', 1, 'parked', now(), now() FROM generate_series(1, 20000) i`,
		// ledger's incident is over: its dead letters are closed.
		`INSERT INTO inbox.dead_letters (consumer, consumer_version, event_id, topic, payload, error, error_class, attempts, status, first_failed_at, last_failed_at)
		 SELECT 'ledger', 'v1', gen_random_uuid(), 'payouts', '\x00', 'boom', 'transient', 1, 'resolved', now(), now() FROM generate_series(1, 20000) i`,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	stmts := renderStatements(`"inbox"`, `"outbox"`)
	const n = 100
	ids, topics, keys, seqs, shas := planBatch(1)
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
			t.Fatal(err)
		}
		for _, q := range []struct {
			name, sql string
			args      []any
		}{
			{"claimRun", stmts.claimRun, []any{"billing", ids, topics, keys, seqs, shas, false}},
			{"claimKeyed", stmts.claimKeyed, []any{"billing", ids[0], "payouts", "k", int64(1), shas[0], false}},
			{"claim", stmts.claim, []any{"billing", ids[0], "payouts", shas[0]}},
			{"openDeadLetter", stmts.openDeadLetter, []any{"billing", ids[0]}},
			{"claimRun, closed dead letters only", stmts.claimRun, []any{"ledger", ids, topics, keys, seqs, shas, false}},
		} {
			tx, err := conn.Begin(ctx) // EXPLAIN ANALYZE runs the claim: roll it back
			if err != nil {
				t.Fatal(err)
			}
			rows, err := tx.Query(ctx, "EXPLAIN ANALYZE "+q.sql, q.args...)
			if err != nil {
				t.Fatal(err)
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			plan := strings.Join(lines, "\n")
			// No node may read or discard more rows than the batch has: the
			// consumer's 20,000 dead letters must not be read.
			for _, m := range planRows.FindAllStringSubmatch(plan, -1) {
				if rows, _ := strconv.Atoi(m[1]); rows > n {
					t.Errorf("%s (%s) reads %s rows; want the dead letters looked up by event id:\n%s", q.name, mode, m[1], plan)
					break
				}
			}
			if !strings.Contains(plan, "dead_letters_event_idx") && !strings.Contains(q.name, "closed") {
				t.Errorf("%s (%s) does not look dead letters up by event id:\n%s", q.name, mode, plan)
			}
		}
	}
}
