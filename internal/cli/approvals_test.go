package cli

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outboxkit/outboxkit/internal/ops"
)

// The two-person rule: with it on, drop, edit and bulk redrive only record
// an approval; the requester cannot approve it; another operator runs it
// exactly once, before it expires; every step is audited.
func TestDLQTwoPersonRule(t *testing.T) {
	t.Parallel()
	_, env := parkedDB(t)
	ctx := context.Background()
	pool := testenvDBFromEnv(t, env)
	as := func(actor string) map[string]string {
		e := map[string]string{}
		for k, v := range env {
			e[k] = v
		}
		e["OUTBOXKIT_ACTOR"] = actor
		return e
	}
	alice, bob, carol := as("alice"), as("bob"), as("carol")
	var head, bin int64
	pool.QueryRow(ctx, `SELECT id FROM outbox.messages WHERE status = 'parked'`).Scan(&head)
	pool.QueryRow(ctx, `SELECT id FROM outbox.messages WHERE key = 'bin-1'`).Scan(&bin)
	ref := fmt.Sprintf("o:%d", head)
	statusOf := func(id int64) string {
		var s string
		pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE id = $1`, id).Scan(&s)
		return s
	}

	out, _, code := run(t, alice, "dlq", "settings")
	if code != 0 || !strings.Contains(out, "two-person rule   off") {
		t.Fatalf("settings: %d %s", code, out)
	}
	out, errOut, code := run(t, alice, "dlq", "settings", "--two-person-rule", "on", "--approval-ttl", "2h", "--reason", "SOX control 7")
	if code != 0 || !strings.Contains(out, "two-person rule   on") || !strings.Contains(out, "approval ttl      2h0m0s") {
		t.Fatalf("settings on: %d %s %s", code, out, errOut)
	}

	// drop: an approval, nothing dropped.
	out, errOut, code = run(t, alice, "dlq", "drop", ref, "--reason", "duplicate payout")
	if code != 0 || !strings.Contains(out, "approval #1 pending (two-person rule): drop "+ref) || statusOf(head) != "parked" {
		t.Fatalf("drop with the rule on: %d %s %s (status %s)", code, out, errOut, statusOf(head))
	}
	out, _, _ = run(t, bob, "dlq", "approvals")
	if !strings.Contains(out, "pending") || !strings.Contains(out, "drop "+ref) || !strings.Contains(out, "duplicate payout") {
		t.Errorf("approvals:\n%s", out)
	}
	_, errOut, code = run(t, alice, "dlq", "approve", "1", "--reason", "looks fine to me")
	if code != 1 || !strings.Contains(errOut, "you asked for this") || statusOf(head) != "parked" {
		t.Fatalf("own approval: %d %s", code, errOut)
	}
	out, errOut, code = run(t, bob, "dlq", "approve", "1", "--reason", "checked the ledger")
	if code != 0 || !strings.Contains(out, "approved by bob and run") || !strings.Contains(out, ref+" dropped") || statusOf(head) != "dropped" {
		t.Fatalf("approve: %d %s %s", code, out, errOut)
	}
	_, errOut, code = run(t, carol, "dlq", "approve", "1", "--reason", "me too")
	if code != 1 || !strings.Contains(errOut, "decided already") {
		t.Errorf("second approval: %d %s", code, errOut)
	}
	var drops int
	var details string
	pool.QueryRow(ctx, `SELECT count(*), min(actor || ' ' || (details->>'approval_id') || ' ' || (details->>'approved_by'))
		FROM outbox.audit_log WHERE action = 'drop'`).Scan(&drops, &details)
	if drops != 1 || details != "alice 1 bob" {
		t.Errorf("drop audited %d times, %q (want once, by alice, approval 1 by bob)", drops, details)
	}

	// edit: expired approvals are refused.
	if _, _, code := run(t, alice, "dlq", "restore", ref, "--reason", "not a duplicate"); code != 0 {
		t.Fatal("restore")
	}
	file := filepath.Join(t.TempDir(), "fixed.json")
	os.WriteFile(file, []byte(`{"amount":1}`), 0o600)
	out, _, code = run(t, alice, "dlq", "edit", ref, "--payload-file", file, "--reason", "schema fix")
	if code != 0 || !strings.Contains(out, "approval #2 pending") ||
		!strings.Contains(out, fmt.Sprintf("with a payload of 12 bytes, sha256 %x", sha256.Sum256([]byte(`{"amount":1}`)))) {
		t.Fatalf("edit with the rule on: %d %s", code, out)
	}
	pool.Exec(ctx, `UPDATE outbox.approvals SET expires_at = now() - interval '1 second' WHERE id = 2`)
	_, errOut, code = run(t, bob, "dlq", "approve", "2", "--reason", "ok")
	if code != 1 || !strings.Contains(errOut, "expired") || statusOf(head) != "parked" {
		t.Errorf("expired approval: %d %s (status %s)", code, errOut, statusOf(head))
	}

	// redrive: the approval runs on what matched when it was asked.
	pool.Exec(ctx, `UPDATE outbox.messages SET status = 'pending' WHERE id = $1`, bin)
	out, _, code = run(t, alice, "dlq", "redrive", "--topic", "payouts", "--reason", "topic fixed", "--rate", "100")
	if code != 0 || !strings.Contains(out, "approval #3 pending (two-person rule): redrive "+ref+" (filter") {
		t.Fatalf("redrive with the rule on: %d %s", code, out)
	}
	pool.Exec(ctx, `UPDATE outbox.messages SET status = 'parked', parked_at = now() WHERE id = $1`, bin)
	out, errOut, code = run(t, bob, "dlq", "approve", "3", "--reason", "ok")
	if code != 0 || !strings.Contains(out, ref+" replayed") || statusOf(head) != "pending" || statusOf(bin) != "parked" {
		t.Fatalf("approved redrive: %d %s %s (head %s, bin %s)", code, out, errOut, statusOf(head), statusOf(bin))
	}

	// The requester withdraws their own; a rejected approval never runs.
	out, _, _ = run(t, alice, "dlq", "drop", fmt.Sprintf("o:%d", bin), "--reason", "junk")
	if !strings.Contains(out, "approval #4 pending") {
		t.Fatalf("drop: %s", out)
	}
	if _, errOut, code := run(t, alice, "dlq", "reject", "4", "--reason", "wrong event"); code != 0 {
		t.Fatalf("withdraw: %s", errOut)
	}
	if _, errOut, code := run(t, bob, "dlq", "approve", "4", "--reason", "ok"); code != 1 || !strings.Contains(errOut, "rejected") || statusOf(bin) != "parked" {
		t.Errorf("approve after reject: %d %s", code, errOut)
	}

	// The dashboard's path (the store itself) is held by the rule too.
	store, err := ops.New(pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Drop(ctx, ops.Action{Actor: "mallory", Reason: "no one is watching"}, ops.Ref{Kind: ops.KindOutbox, ID: bin}); !errors.Is(err, ops.ErrApprovalRequired) {
		t.Errorf("store drop with the rule on: %v", err)
	}

	var audit string
	pool.QueryRow(ctx, `SELECT string_agg(action || ':' || actor, ',' ORDER BY id) FROM outbox.audit_log`).Scan(&audit)
	want := "settings:alice,request_approval:alice,approve:bob,drop:alice,restore:alice,request_approval:alice," +
		"request_approval:alice,approve:bob,replay:alice,request_approval:alice,reject:alice"
	if audit != want {
		t.Errorf("audit log:\n%s\nwant\n%s", audit, want)
	}
	out, _, _ = run(t, bob, "dlq", "approvals", "--all", "--json")
	for _, want := range []string{`"status": "done"`, `"status": "rejected"`, `"decided_by": "bob"`, `"result": [`} {
		if !strings.Contains(out, want) {
			t.Errorf("approvals --all lacks %s:\n%s", want, out)
		}
	}
}
