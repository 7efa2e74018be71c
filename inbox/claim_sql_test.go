package inbox

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// TestClaimsParkedAnswer checks the "parked already" answer of the four
// statements that give it, with custom and generic plans: true exactly when
// the consumer has a parked, blocked or dropped dead letter of the event (of
// one of the batch's events for the batch claim). Other consumers' dead
// letters, closed ones, and dead letters without an event id (malformed
// deliveries) do not count; several dead letters of one event may exist.
func TestClaimsParkedAnswer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	ev := map[string]uuid.UUID{}
	for _, n := range []string{"parked", "blocked", "dropped", "theirs", "closed", "fresh"} {
		ev[n] = uuid.New()
	}
	var head int64
	for _, r := range []struct {
		consumer string
		event    *uuid.UUID
		status   string
	}{
		{"billing", new(ev["parked"]), "parked"},
		{"billing", new(ev["blocked"]), "blocked"},
		{"billing", new(ev["dropped"]), "dropped"},
		{"billing", nil, "parked"}, // a malformed delivery
		{"reporting", new(ev["theirs"]), "parked"},
		{"reporting", new(ev["theirs"]), "dropped"},
		{"reporting", new(ev["closed"]), "blocked"},
		{"billing", new(ev["closed"]), "resolved"},
		{"billing", new(ev["closed"]), "replayed"},
		{"billing", new(ev["closed"]), "edited"},
	} {
		var blockedBy *int64
		if r.status == "blocked" {
			blockedBy = &head
		}
		head = testenv.InsertInboxDeadLetter(t, db.Pool, r.consumer, r.event, "payouts", r.status, blockedBy)
	}
	open := map[string]map[string]bool{
		"billing":   {"parked": true, "blocked": true, "dropped": true},
		"reporting": {"theirs": true, "closed": true},
		"ledger":    {}, // no dead letters at all
	}
	stmts := renderStatements(`"inbox"`, `"outbox"`)
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	sha := make([]byte, 32)
	// parked runs one claim in a transaction rolled back after it.
	parked := func(sql string, args ...any) bool {
		t.Helper()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		vals, err := pgx.CollectExactlyOneRow(rows, func(r pgx.CollectableRow) ([]any, error) { return r.Values() })
		if err != nil {
			t.Fatal(err)
		}
		return vals[len(vals)-1].(bool)
	}
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
			t.Fatal(err)
		}
		for consumer, want := range open {
			for name, id := range ev {
				got := map[string]bool{
					"claimKeyed": parked(stmts.claimKeyed, consumer, id, "payouts", "k", int64(1), sha, false),
					"claim":      parked(stmts.claim, consumer, id, "payouts", sha),
					// openDeadLetter: a row or none.
					"openDeadLetter": parked(`SELECT count(*) > 0 FROM (`+stmts.openDeadLetter+`) o`, consumer, id),
					// The batch claim: the event among two without dead letters.
					"claimRun": parked(stmts.claimRun, consumer, []uuid.UUID{uuid.New(), id, uuid.New()},
						[]string{"payouts", "payouts", "payouts"}, []string{"", "k", ""}, []*int64{nil, new(int64(1)), nil},
						[][]byte{sha, sha, sha}, false),
				}
				for stmt, g := range got {
					if g != want[name] {
						t.Errorf("%s (%s): consumer %s, event %s: parked %v, want %v", stmt, mode, consumer, name, g, want[name])
					}
				}
			}
		}
	}
}
