package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// explainResult is EXPLAIN (ANALYZE, BUFFERS) of one statement.
type explainResult struct {
	what string
	plan string
	exec string // "Execution Time: ..." line
}

// explainRelay runs EXPLAIN ANALYZE of the relay's claim and mark
// statements, exactly as captured from the relay's connection (text and
// arguments), and of the bare SQL statements, on a fresh copy of the
// outbox template: first on the full backlog, then with the first half of
// it published (committed, as in the middle of a drain).
func (e *env) explainRelay(ctx context.Context, t *sqlTracer) ([]explainResult, error) {
	if t == nil || t.claimSQL == "" || t.markSQL == "" {
		return nil, fmt.Errorf("explain: no relay statements captured")
	}
	name, dbURL, err := e.newDB(ctx, e.tplOutbox, "explain")
	if err != nil {
		return nil, err
	}
	defer e.dropDB(ctx, name)
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)

	// Give the captured relay id the leases (with the captured tokens) so
	// that the mark's fence passes.
	owner, parts, tokens := t.markArgs[0], t.markArgs[1], t.markArgs[2]
	if _, err := conn.Exec(ctx, `UPDATE outbox.partitions p SET owner = $1, lease_token = f.token, lease_until = now() + interval '1 hour'
  FROM unnest($2::int[], $3::bigint[]) AS f(partition, token) WHERE p.partition = f.partition`, owner, parts, tokens); err != nil {
		return nil, err
	}
	parts32 := make([]int32, e.opts.partitions)
	for i := range parts32 {
		parts32[i] = int32(i)
	}

	var out []explainResult
	explainWith := func(what, settings, q string, args ...any) error {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx) //nolint:errcheck // EXPLAIN ANALYZE of an UPDATE changes rows: never keep them
		for k, v := range pgParams(settings) {
			if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", k, v); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) "+q, args...)
		if err != nil {
			return fmt.Errorf("explain %s: %w", what, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("explain %s: %w", what, err)
		}
		r := explainResult{what: what, plan: strings.Join(lines, "\n")}
		for _, l := range lines {
			if strings.HasPrefix(l, "Execution Time") {
				r.exec = strings.TrimPrefix(l, "Execution Time: ")
			}
		}
		out = append(out, r)
		return nil
	}
	explain := func(what, q string, args ...any) error { return explainWith(what, "", q, args...) }
	const rpc = "random_page_cost=1.1"
	// The proposed mark: the fence as an array parameter, so that the
	// planner joins the acknowledged ids through the primary key instead of
	// reading every pending row of the fenced partitions.
	proposedMark := strings.Replace(t.markSQL, "m.partition IN (SELECT partition FROM fence)",
		"m.partition = ANY (ARRAY(SELECT partition FROM fence))", 1)
	bareIDs := func() ([]int64, error) {
		rows, err := conn.Query(ctx, `SELECT id FROM outbox.messages WHERE partition = ANY($1) AND status = 'pending' ORDER BY id LIMIT 1000`, parts32)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[int64])
	}

	ids, err := bareIDs()
	if err != nil {
		return nil, err
	}
	steps := []struct {
		what string
		q    string
		args []any
	}{
		{fmt.Sprintf("relay claim (%v rows/partition, %d partitions), full backlog", t.claimArgs[1], lenOf(t.claimArgs[0])), t.claimSQL, t.claimArgs},
		{fmt.Sprintf("relay mark published (%d ids, fenced), full backlog", t.markRows), t.markSQL, t.markArgs},
		{"bare claim (1000 rows), full backlog", bareClaimSQL, []any{parts32}},
		{fmt.Sprintf("bare mark (%d ids), full backlog", len(ids)), bareMarkSQL, []any{ids}},
	}
	for _, s := range steps {
		if err := explain(s.what, s.q, s.args...); err != nil {
			return out, err
		}
	}
	if err := explainWith("relay claim with random_page_cost 1.1, full backlog", rpc, t.claimSQL, t.claimArgs...); err != nil {
		return out, err
	}
	if proposedMark != t.markSQL {
		if err := explainWith("proposed mark (fence as ANY(ARRAY(...))), full backlog", "", proposedMark, t.markArgs...); err != nil {
			return out, err
		}
		if err := explainWith("proposed mark with random_page_cost 1.1, full backlog", rpc, proposedMark, t.markArgs...); err != nil {
			return out, err
		}
	}
	// Half drained, committed; one claim first so that index entries of the
	// published rows get their killed-tuple hints, as a running relay's own
	// claims would have set them.
	if _, err := conn.Exec(ctx, `UPDATE outbox.messages SET status = 'published', published_at = now()
 WHERE id <= (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY id) FROM outbox.messages)`); err != nil {
		return out, err
	}
	if _, err := conn.Exec(ctx, t.claimSQL, t.claimArgs...); err != nil {
		return out, err
	}
	if _, err := conn.Exec(ctx, bareClaimSQL, parts32); err != nil {
		return out, err
	}
	if err := explain("relay claim, half drained", t.claimSQL, t.claimArgs...); err != nil {
		return out, err
	}
	if err := explainWith("relay claim with random_page_cost 1.1, half drained", rpc, t.claimSQL, t.claimArgs...); err != nil {
		return out, err
	}
	if err := explain("bare claim, half drained", bareClaimSQL, parts32); err != nil {
		return out, err
	}
	return out, nil
}

func lenOf(v any) int {
	switch s := v.(type) {
	case []int32:
		return len(s)
	case []int64:
		return len(s)
	}
	return 0
}

// topNodes returns the first lines of a plan (the outer nodes), enough to
// see the access path.
func topNodes(plan string, n int) string {
	var keep []string
	for _, l := range strings.Split(plan, "\n") {
		if strings.Contains(l, "->") || len(keep) == 0 {
			keep = append(keep, l)
		}
		if len(keep) == n {
			break
		}
	}
	return strings.Join(keep, "\n")
}
