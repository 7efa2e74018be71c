package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
)

// parkedDB has one key whose head is parked (as the relay parks it) with
// two events waiting, and a binary payload parked on another key.
func parkedDB(t *testing.T) (*testenv.DB, map[string]string) {
	t.Helper()
	db := testenv.NewDB(t)
	ctx := context.Background()
	tx, _ := db.Pool.Begin(ctx)
	for i, p := range [][]byte{[]byte(`{"amount":1,"note":"<script>x</script>"}`), []byte(`{"amount":2}`), []byte(`{"amount":3}`)} {
		outbox.Enqueue(ctx, tx, outbox.Message{Topic: "payouts", Key: "payout-9", Type: "payout.created", Version: 2,
			Payload: p, CorrelationID: fmt.Sprintf("flow-%d", i)})
	}
	outbox.Enqueue(ctx, tx, outbox.Message{Topic: "payouts", Key: "bin-1", Type: "blob", Payload: []byte{0x1b, '[', '2', 'J', 0, 0xff, 'o', 'k'}})
	tx.Commit(ctx)
	for _, q := range []string{
		`UPDATE outbox.messages SET status = 'parked', attempts = 10, parked_at = now(), last_error_class = 'unroutable',
		    last_error = 'rabbitmq: no queue bound' WHERE sequence = 1`,
		`UPDATE outbox.lanes SET hold_until = 'infinity', blocked_by = m.id, blocked_since = now()
		   FROM outbox.messages m WHERE m.key = lanes.key AND m.sequence = 1`,
		`UPDATE outbox.messages SET status = 'blocked' WHERE key = 'payout-9' AND sequence > 1`,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return db, map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_ACTOR": "oncall-bob"}
}

func TestDLQListShowJSON(t *testing.T) {
	t.Parallel()
	_, env := parkedDB(t)
	out, errOut, code := run(t, env, "dlq", "list")
	if code != 0 || !strings.Contains(out, "payout-9") || !strings.Contains(out, "unroutable") {
		t.Fatalf("list: %d %s %s", code, out, errOut)
	}
	out, _, code = run(t, env, "dlq", "list", "--json", "--class", "unroutable", "--key", "payout-9")
	var items []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &items) != nil || len(items) != 1 || items[0]["waiting"].(float64) != 2 {
		t.Fatalf("list --json: %d %s", code, out)
	}
	ref := items[0]["ref"].(string)
	out, _, code = run(t, env, "dlq", "show", ref)
	for _, want := range []string{"payout.created v2", "unroutable", "correlation id   flow-0", `"note": "<script>x</script>"`, "payload ("} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	// The binary payload: a hex dump, never raw escape sequences.
	var binID int64
	db := testenvDBFromEnv(t, env)
	db.QueryRow(context.Background(), `SELECT id FROM outbox.messages WHERE key = 'bin-1'`).Scan(&binID)
	out, _, code = run(t, env, "dlq", "show", fmt.Sprintf("o:%d", binID))
	if code != 0 || strings.ContainsRune(out, 0x1b) || !strings.Contains(out, "1b 5b 32 4a 00 ff") || !strings.Contains(out, "|.[2J..ok|") {
		t.Errorf("binary payload view:\n%q", out)
	}
}

func TestDLQActionsAudited(t *testing.T) {
	t.Parallel()
	db, env := parkedDB(t)
	ctx := context.Background()
	var head int64
	db.Pool.QueryRow(ctx, `SELECT id FROM outbox.messages WHERE status = 'parked'`).Scan(&head)
	ref := fmt.Sprintf("o:%d", head)

	_, errOut, code := run(t, env, "dlq", "drop", ref)
	if code != 2 || !strings.Contains(errOut, "--reason") {
		t.Fatalf("drop without reason: %d %s", code, errOut)
	}
	out, _, code := run(t, env, "dlq", "redrive", "--dry-run", "--topic", "payouts")
	if code != 0 || !strings.Contains(out, "would replay") || !strings.Contains(out, "2 later events of the key follow it") {
		t.Fatalf("dry run: %d %s", code, out)
	}
	for _, args := range [][]string{
		{"lanes"},
		{"dlq", "drop", ref, "--reason", "duplicate payout"},
		{"dlq", "restore", ref, "--reason", "dropped by mistake"},
		{"dlq", "replay", ref, "--reason", "queue bound now"},
		{"trace", "--key", "payout-9"},
		{"audit", "--actor", "oncall-bob"},
		{"stats"},
	} {
		out, errOut, code := run(t, env, args...)
		if code != 0 {
			t.Fatalf("%v: %d\n%s\n%s", args, code, out, errOut)
		}
		if args[0] == "lanes" && !strings.Contains(out, "payouts/payout-9 blocked since") {
			t.Errorf("lanes: %s", out)
		}
		if args[0] == "trace" && (!strings.Contains(out, "replay by oncall-bob: queue bound now") || !strings.Contains(out, "drop by oncall-bob")) {
			t.Errorf("trace:\n%s", out)
		}
		if args[0] == "stats" && !strings.Contains(out, "payouts") {
			t.Errorf("stats:\n%s", out)
		}
	}
	var actions string
	db.Pool.QueryRow(ctx, `SELECT string_agg(action || ':' || actor, ',' ORDER BY id) FROM outbox.audit_log`).Scan(&actions)
	if actions != "drop:oncall-bob,restore:oncall-bob,replay:oncall-bob" {
		t.Errorf("audit log: %s", actions)
	}
	var status string
	db.Pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE id = $1`, head).Scan(&status)
	if status != "pending" {
		t.Errorf("replayed head is %s", status)
	}

	// edit: a corrected copy from a file.
	db.Pool.Exec(ctx, `UPDATE outbox.messages SET status = 'parked', parked_at = now() WHERE id = $1`, head)
	file := filepath.Join(t.TempDir(), "fixed.json")
	os.WriteFile(file, []byte(`{"amount":1,"fixed":true}`), 0o600)
	out, errOut, code = run(t, env, "dlq", "edit", ref, "--payload-file", file, "--reason", "schema fix", "--json")
	if code != 0 || !strings.Contains(out, `"new_ref"`) {
		t.Fatalf("edit: %d %s %s", code, out, errOut)
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	if got, _ := parseWhen("2h", now); !got.Equal(now.Add(-2 * time.Hour)) {
		t.Errorf("2h: %v", got)
	}
	if got, _ := parseWhen("2026-11-23T10:00:00Z", now); !got.Equal(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("rfc3339: %v", got)
	}
	for _, bad := range []string{"yesterday", "-2h", "2026-13-01", "2026-11-23T10:00:00+24:00", "2026-11-23T10:00:00+05:60"} {
		if _, err := parseWhen(bad, now); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRenderPayload(t *testing.T) {
	cases := map[string]string{
		`{"a":1}`:               "{\n  \"a\": 1\n}",
		"plain text":            "plain text",
		"bell\a and \u202e rtl": `bell\a and \u202e rtl`,
	}
	for in, want := range cases {
		if got := renderPayload([]byte(in)); got != want {
			t.Errorf("renderPayload(%q) = %q, want %q", in, got, want)
		}
	}
	if got := renderPayload([]byte{0, 1, 2, 0xff}); !strings.HasPrefix(got, "(binary payload, 4 bytes)\n00000000  00 01 02 ff") {
		t.Errorf("binary: %q", got)
	}
}

func testenvDBFromEnv(t *testing.T, env map[string]string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), env["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func TestReplayRange(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx := context.Background()
	tx, _ := db.Pool.Begin(ctx)
	for i := 0; i < 5; i++ {
		outbox.Enqueue(ctx, tx, outbox.Message{Topic: "ledger", Key: "a", Type: "t", Payload: []byte("{}")})
	}
	outbox.Enqueue(ctx, tx, outbox.Message{Topic: "other", Key: "a", Type: "t", Payload: []byte("{}")})
	tx.Commit(ctx)
	db.Pool.Exec(ctx, `UPDATE outbox.messages SET status = 'published', published_at = now(), broker_ack = 'kafka ledger/0@1'`)
	env := map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_ACTOR": "carol"}
	out, errOut, code := run(t, env, "replay", "--topic", "ledger", "--from", "1h", "--dry-run")
	if code != 0 || !strings.Contains(out, "5 published events of ledger would be sent again to every consumer") {
		t.Fatalf("dry run: %d %s %s", code, out, errOut)
	}
	out, errOut, code = run(t, env, "replay", "--topic", "ledger", "--from", "1h", "--consumer", "billing", "--reason", "billing lost its projection")
	if code != 0 || !strings.Contains(out, "5 published events of ledger sent again to consumer billing") {
		t.Fatalf("replay: %d %s %s", code, out, errOut)
	}
	var pending, marked int
	db.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'pending'),
		count(*) FILTER (WHERE headers->>'outboxkit-replay-to' = 'billing') FROM outbox.messages WHERE topic = 'ledger'`).Scan(&pending, &marked)
	if pending != 5 || marked != 5 {
		t.Errorf("pending %d, marked for billing %d", pending, marked)
	}
	var audit string
	db.Pool.QueryRow(ctx, `SELECT actor || ':' || (details->>'events') FROM outbox.audit_log WHERE action = 'replay_range'`).Scan(&audit)
	if audit != "carol:5" {
		t.Errorf("audit %q", audit)
	}
}
