package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// TestGettingStartedGuide keeps docs/getting-started.md true: the main.go
// it prints compiles against this checkout, its own CREATE TABLE statements
// create the example's tables, and its producer ("pay") commits a payout and
// its event with the key's sequence. (The consumer's side of the guide needs
// the fixed RabbitMQ names it prints; TestQuickstart runs that flow on
// Kafka.)
func TestGettingStartedGuide(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "getting-started.md"))
	if err != nil {
		t.Fatal(err)
	}
	code := guideBlock(t, string(doc), "```go\n// Command payouts")
	tables := regexp.MustCompile(`-c '(CREATE TABLE [^']+)'`).FindAllStringSubmatch(string(doc), -1)
	if len(tables) != 2 {
		t.Fatalf("found %d CREATE TABLE statements in the guide, want 2 (payouts, accounting_entries)", len(tables))
	}

	// Build the guide's program as a package of this module that exists
	// only in an overlay, so that nothing is written into the checkout.
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the guide's code: %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(code), 0o600); err != nil {
		t.Fatal(err)
	}
	virtual := filepath.Join(root, "examples", "quickstart", "guidecode", "main.go")
	overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {virtual: src}})
	overlayFile := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayFile, overlay, 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "payouts")
	build := exec.Command(goCmd, "build", "-overlay", overlayFile, "-o", bin, "./examples/quickstart/guidecode")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the guide's main.go does not build: %v\n%s", err, out)
	}

	db := testenv.NewDB(t)
	ctx := context.Background()
	for _, m := range tables {
		if _, err := db.Pool.Exec(ctx, m[1]); err != nil {
			t.Fatalf("the guide's %q: %v", m[1], err)
		}
	}
	pay := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"pay"}, args...)...)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+db.URL)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pay %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := pay("acme", "12500")
	if !regexp.MustCompile(`^committed payout 1 for acme with event [0-9a-f-]{36}\n$`).MatchString(out) {
		t.Fatalf("pay printed %q, not what the guide shows", out)
	}
	pay("acme", "4000")
	pay("globex", "99")

	type event struct {
		key      string
		sequence int64
		typ      string
		payload  string
	}
	rows, err := db.Pool.Query(ctx, `SELECT key, sequence, type, convert_from(payload, 'UTF8') FROM outbox.messages ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []event
	for rows.Next() {
		var e event
		if err := rows.Scan(&e.key, &e.sequence, &e.typ, &e.payload); err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []event{
		{"acme", 1, "payout.created", `{"payout_id":1,"merchant":"acme","amount_cents":12500}`},
		{"acme", 2, "payout.created", `{"payout_id":2,"merchant":"acme","amount_cents":4000}`},
		{"globex", 1, "payout.created", `{"payout_id":3,"merchant":"globex","amount_cents":99}`},
	}
	if len(got) != len(want) {
		t.Fatalf("outbox holds %d events, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i+1, got[i], want[i])
		}
	}
	var payouts int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM payouts`).Scan(&payouts); err != nil || payouts != 3 {
		t.Fatalf("payouts: %d rows (err %v), want 3, one per event", payouts, err)
	}

	// The usage line names every command the guide uses.
	usage := exec.Command(bin)
	usage.Env = append(os.Environ(), "DATABASE_URL="+db.URL)
	var stderr bytes.Buffer
	usage.Stderr = &stderr
	if err := usage.Run(); err == nil {
		t.Fatal("payouts without a command succeeded")
	}
	for _, c := range []string{"pay MERCHANT CENTS", "consume", "fix DEAD_LETTER_ID PAYLOAD REASON", "relay"} {
		if !strings.Contains(stderr.String(), c) {
			t.Errorf("usage %q does not name %q", stderr.String(), c)
		}
	}
}

// guideBlock returns the fenced code block of doc that starts with start.
func guideBlock(t *testing.T, doc, start string) string {
	t.Helper()
	i := strings.Index(doc, start)
	if i < 0 {
		t.Fatalf("no block starting %q in the guide", start)
	}
	body := doc[i+len("```go\n"):]
	j := strings.Index(body, "\n```")
	if j < 0 {
		t.Fatal("unterminated code block in the guide")
	}
	return body[:j+1]
}
