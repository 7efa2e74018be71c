package ops_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// Audit snapshots of operator actions hold the payload's size and the
// header names, never payload bytes or header values: the audit log is
// append-only and would keep them after the row is redacted.
func TestAuditHoldsNoPayloadOrHeaderValues(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	s := store(t, db)
	ctx := context.Background()
	ids := seed(t, db.Pool, "payouts", "p-9", 2)
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.messages SET headers = '{"customer-email": "jane@example.com"}' WHERE key = 'p-9'`); err != nil {
		t.Fatal(err)
	}
	ref := ops.Ref{Kind: ops.KindOutbox, ID: ids[0]}
	if _, err := s.Drop(ctx, who, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Restore(ctx, who, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Edit(ctx, who, ref, []byte(`{"n":0,"iban":"DE89370400440532013000"}`), ""); err != nil {
		t.Fatal(err)
	}
	var entries int
	var text string
	if err := db.Pool.QueryRow(ctx, `SELECT count(*), string_agg(concat_ws(' ', reason, before::text, after::text, details::text), E'\n')
		FROM outbox.audit_log WHERE actor = 'alice'`).Scan(&entries, &text); err != nil {
		t.Fatal(err)
	}
	if entries < 3 {
		t.Fatalf("%d audit entries, want drop, restore and edit", entries)
	}
	for _, secret := range []string{"jane@example.com", "DE89370400440532013000", "<script>", "payload\":"} {
		if strings.Contains(text, secret) {
			t.Errorf("the audit log holds %q:\n%s", secret, text)
		}
	}
	for _, want := range []string{`"header_names": ["customer-email"]`, `"payload_bytes":`} {
		if !strings.Contains(text, want) {
			t.Errorf("the audit log lacks %s:\n%s", want, text)
		}
	}
}

// A range replay leaves redacted events out (their payload is gone) and
// says how many.
func TestReplayRangeLeavesRedactedEventsOut(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	s := store(t, db)
	ctx := context.Background()
	seed(t, db.Pool, "payouts", "p-1", 3)
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.messages SET status = 'published', published_at = now(), parked_at = NULL
		WHERE key = 'p-1'`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.messages SET payload = '', redacted_at = now() WHERE key = 'p-1' AND sequence = 1`); err != nil {
		t.Fatal(err)
	}
	q := ops.RangeReplay{Topic: "payouts", From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour)}
	res, err := s.ReplayRange(ctx, who, q)
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 2 || res.Redacted != 1 {
		t.Fatalf("replay range: %+v; want 2 events sent again, 1 redacted left out", res)
	}
	var status string
	if err := db.Pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE key = 'p-1' AND sequence = 1`).Scan(&status); err != nil || status != "published" {
		t.Errorf("the redacted event is %s (%v), want published", status, err)
	}
}
