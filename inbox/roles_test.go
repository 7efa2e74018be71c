package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/migrations"
)

// Every path of the inbox (apply, duplicate, conflict, park, block, gap,
// malformed, retries, redrive and release) works for a login role that has
// only the consumer role's privileges (migrations.ApplyRoles) plus its own
// business table.
func TestWorksWithTheConsumerRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t, nil)
	prefix := fmt.Sprintf("okti%d_%s", os.Getpid(), strings.ReplaceAll(testenv.UniqueName("r")[len("r-"):], "-", "_"))
	prefix = strings.ToLower(prefix)
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	t.Cleanup(func() { testenv.DropRoles(b.db, prefix) }) //nolint:errcheck // tidying up
	if err := migrations.ApplyRoles(ctx, b.db.URL, nil, prefix); err != nil {
		t.Fatal(err)
	}
	login := prefix + "_consumer_login"
	for _, q := range []string{
		"CREATE ROLE " + pgx.Identifier{login}.Sanitize() + " LOGIN",
		"GRANT " + pgx.Identifier{prefix + "_consumer"}.Sanitize() + " TO " + pgx.Identifier{login}.Sanitize(),
		"GRANT SELECT, INSERT ON effects TO " + pgx.Identifier{login}.Sanitize(),
	} {
		if _, err := b.db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(login)
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	b.in = b.newInbox(pool, b.cfg)

	e1, e2, e3 := event("k", 1), event("k", 2), event("k", 3)
	b.expect(e1.delivery(), inbox.Applied)
	b.expect(e1.delivery(), inbox.Duplicate)
	forged := e1
	forged.payload = []byte("other")
	b.expect(forged.delivery(), inbox.Parked)
	b.expect(event("gap", 2).delivery(), inbox.Parked)
	b.expect(event("gap", 1).delivery(), inbox.Applied) // releases gap 2
	b.expect(inbox.Delivery{Binding: inbox.BindingKafka, Topic: "payments", Payload: []byte{0xff}}, inbox.Parked)

	fail := true
	b.fail.set(func(ev *inbox.Event) error {
		if fail && ev.ID == e2.id {
			return errors.New("transient")
		}
		return nil
	})
	b.expect(e2.delivery(), inbox.Parked) // after MaxAttempts
	b.expect(e3.delivery(), inbox.Blocked)
	fail = false
	if err := b.in.Redrive(ctx, b.deadLetter(e2.id).ID, "alice", "fixed"); err != nil {
		t.Fatal(err)
	}
	if got := b.effectOrder("k"); fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("applied %v", got)
	}
	if got := b.effectOrder("gap"); fmt.Sprint(got) != "[1 2]" {
		t.Fatalf("gap lane applied %v", got)
	}

	// An operator's request (recorded by the operator role) is run and
	// settled under the consumer role; the consumer cannot make requests.
	fail = true
	e4 := event("k", 4)
	b.fail.set(func(ev *inbox.Event) error {
		if fail && ev.ID == e4.id {
			return inbox.Permanent(errors.New("refused"))
		}
		return nil
	})
	b.expect(e4.delivery(), inbox.Parked)
	fail = false
	if _, err := b.db.Pool.Exec(ctx, `INSERT INTO inbox.dead_letter_requests (consumer, dead_letter_id, action, requested_by, reason)
		VALUES ('billing', $1, 'replay', 'alice', 'fixed')`, b.deadLetter(e4.id).ID); err != nil {
		t.Fatal(err)
	}
	if n, err := b.in.ProcessRequests(ctx); err != nil || n != 1 {
		t.Fatalf("ProcessRequests under the consumer role: %d %v", n, err)
	}
	var status string
	b.db.Pool.QueryRow(ctx, `SELECT status FROM inbox.dead_letter_requests`).Scan(&status)
	if got := b.effectOrder("k"); fmt.Sprint(got) != "[1 2 3 4]" || status != "applied" {
		t.Fatalf("applied %v, request %s", got, status)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO inbox.dead_letter_requests (consumer, dead_letter_id, action, requested_by, reason)
		VALUES ('billing', 1, 'replay', 'mallory', 'self-service')`); err == nil || !strings.Contains(err.Error(), "42501") {
		t.Errorf("the consumer role may record requests: %v", err)
	}
}
