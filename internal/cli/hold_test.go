package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// hold add, list and release work, print JSON, write audit entries with the
// actor, and refuse bad input with errors that say what to do.
func TestHoldAddListRelease(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	env := map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_ACTOR": "legal-ann"}
	ctx := context.Background()

	out, errOut, code := run(t, env, "hold", "add", "--key", "acct-42", "--topic", "payments", "--reason", "case 2026-17")
	if code != 0 || !strings.Contains(out, "hold 1 placed on key acct-42 in topic payments") {
		t.Fatalf("add key: %d %q %q", code, out, errOut)
	}
	out, errOut, code = run(t, env, "hold", "add", "--tenant", "bank-7", "--reason", "regulator request R-9", "--actor", "dpo-max", "--json")
	var added map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &added) != nil || added["id"] != 2.0 || added["tenant"] != "bank-7" ||
		added["tenant_header"] != "tenant" || added["actor"] != "dpo-max" {
		t.Fatalf("add tenant --json: %d %q %q", code, out, errOut)
	}

	out, _, code = run(t, env, "hold", "list")
	if code != 0 || !strings.Contains(out, "key acct-42 in topic payments") || !strings.Contains(out, "tenant bank-7 (header tenant) in every topic") ||
		!strings.Contains(out, "legal-ann") || !strings.Contains(out, "case 2026-17") {
		t.Fatalf("list: %d\n%s", code, out)
	}

	out, errOut, code = run(t, env, "hold", "release", "1", "--reason", "case closed")
	if code != 0 || !strings.Contains(out, "hold 1 on key acct-42 in topic payments released") {
		t.Fatalf("release: %d %q %q", code, out, errOut)
	}
	out, _, code = run(t, env, "hold", "list", "--json")
	var active []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &active) != nil || len(active) != 1 || active[0]["id"] != 2.0 {
		t.Fatalf("list --json after release: %d %s", code, out)
	}
	out, _, code = run(t, env, "hold", "list", "--all", "--json")
	var all []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &all) != nil || len(all) != 2 || all[0]["released_by"] != "legal-ann" ||
		all[0]["release_reason"] != "case closed" {
		t.Fatalf("list --all --json: %d %s", code, out)
	}

	// Every action is in the audit log with its actor and reason.
	rows, err := db.Pool.Query(ctx, `SELECT actor, action, target_ids[1], reason FROM outbox.audit_log WHERE target_kind = 'legal_hold' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var a, act, id, r string
		if err := rows.Scan(&a, &act, &id, &r); err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.Join([]string{a, act, id, r}, "|"))
	}
	want := "legal-ann|legal_hold|1|case 2026-17 dpo-max|legal_hold|2|regulator request R-9 legal-ann|legal_hold_release|1|case closed"
	if strings.Join(got, " ") != want {
		t.Fatalf("audit entries:\n%s\nwant\n%s", strings.Join(got, " "), want)
	}

	// Bad input: said plainly, exit status 2, nothing written.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"hold", "add", "--key", "k"}, "a reason is required"},
		{[]string{"hold", "add", "--key", "k", "--reason", " "}, "a reason is required"},
		{[]string{"hold", "add", "--key", "k", "--tenant", "t", "--reason", "r"}, "give --key or --tenant (one of them"},
		{[]string{"hold", "add", "--reason", "r"}, "give --key or --tenant"},
		{[]string{"hold", "release", "1"}, "a reason is required"},
		{[]string{"hold", "release", "99", "--reason", "r"}, "no hold has id 99"},
		{[]string{"hold", "release", "1", "--reason", "again"}, "hold 1 was released at"},
		{[]string{"hold", "release", "one", "--reason", "r"}, `hold ID "one"`},
		{[]string{"hold", "release", "--reason", "r"}, "release takes one hold ID"},
		{[]string{"hold", "drop", "1"}, `unknown verb "drop"`},
		{[]string{"hold"}, "expected a verb"},
	} {
		_, errOut, code := run(t, env, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: code %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox.legal_holds) + (SELECT count(*) FROM outbox.audit_log)`).Scan(&n); err != nil || n != 5 {
		t.Errorf("refused commands wrote something: %d rows, %v", n, err)
	}
}
