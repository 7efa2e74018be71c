package sweeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/outbox"
)

// enqueueOne commits one event with headers and returns its event id.
func enqueueOne(t *testing.T, pool *pgxpool.Pool, topic, key string, headers map[string]string) uuid.UUID {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	id, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: key, Type: "test.event",
		Payload: []byte(`{"iban":"DE89370400440532013000"}`), Headers: headers, CorrelationID: "flow-" + key})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return id
}

// messageRow is what redaction may change, and what it must keep.
type messageRow struct {
	payload     []byte
	headers     map[string]string
	redacted    bool
	status      string
	topic, key  string
	typ, corrID string
	publishedAt *time.Time
	brokerAck   *string
}

func readMessage(t *testing.T, pool *pgxpool.Pool, id uuid.UUID) messageRow {
	t.Helper()
	var r messageRow
	var h []byte
	err := pool.QueryRow(context.Background(), `SELECT payload, headers, redacted_at IS NOT NULL, status, topic, key, type,
		coalesce(correlation_id, ''), published_at, broker_ack FROM outbox.messages WHERE event_id = $1`, id).
		Scan(&r.payload, &h, &r.redacted, &r.status, &r.topic, &r.key, &r.typ, &r.corrID, &r.publishedAt, &r.brokerAck)
	if err != nil {
		t.Fatalf("read %s: %v", id, err)
	}
	if err := json.Unmarshal(h, &r.headers); err != nil {
		t.Fatal(err)
	}
	return r
}

// publishedAgo marks events published d ago (created a day earlier).
func publishedAgo(t *testing.T, pool *pgxpool.Pool, d time.Duration, ids ...uuid.UUID) {
	t.Helper()
	execSQL(t, pool, `UPDATE outbox.messages SET status = 'published', broker_ack = 'memory',
		published_at = now() - $2::interval, created_at = now() - $2::interval - interval '1 day' WHERE event_id = ANY($1)`, ids, d)
}

// insertDeadLetter adds a dead letter of consumer billing with a tenant and
// an e-mail header, closed (resolved_at) d ago when status is closed.
func insertDeadLetter(t *testing.T, pool *pgxpool.Pool, status, key, tenant string, d time.Duration) int64 {
	t.Helper()
	var id int64
	err := pool.QueryRow(context.Background(), `INSERT INTO inbox.dead_letters (consumer, consumer_version, topic, key, payload, headers,
		error, error_class, attempts, status, blocked_by, first_failed_at, last_failed_at, resolved_at)
		VALUES ('billing', 'v1', 'payments', $2, '\x7b7d', jsonb_build_array(jsonb_build_object('name', 'ce_id', 'value', 'x'),
		        jsonb_build_object('name', 'tenant', 'value', $3::text), jsonb_build_object('name', 'customer-email', 'value', 'a@b.c')),
		        'bad', 'permanent', 3, $1, NULL, now() - $4::interval - interval '1 day', now() - $4::interval,
		        CASE WHEN $1 IN ('resolved', 'replayed', 'dropped', 'edited') THEN now() - $4::interval END)
		RETURNING id`, status, key, tenant, d).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func placeHold(t *testing.T, pool *pgxpool.Pool, topic, key, tenant string) int64 {
	t.Helper()
	var id int64
	var th *string
	if tenant != "" {
		h := "tenant"
		th = &h
	}
	if err := pool.QueryRow(context.Background(), `INSERT INTO outbox.legal_holds (topic, key, tenant_header, tenant, reason, actor)
		VALUES (NULLIF($1, ''), NULLIF($2, ''), $3, NULLIF($4, ''), 'case 2026-17', 'legal') RETURNING id`, topic, key, th, tenant).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func releaseHold(t *testing.T, pool *pgxpool.Pool, id int64) {
	t.Helper()
	execSQL(t, pool, `UPDATE outbox.legal_holds SET released_at = now(), released_by = 'legal', release_reason = 'case closed' WHERE id = $1`, id)
}

// Redaction empties the payload and removes the chosen headers of published
// events and closed dead letters past the window, keeps every other column
// and the audit log, never touches pending, blocked, parked or dropped
// events, open dead letters, young rows or rows under a legal hold, and
// takes held rows once their hold is released.
func TestRedactOnlyClosedUnheldRowsPastTheWindow(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	pool := db.Pool
	hdr := func(tenant string) map[string]string {
		return map[string]string{"tenant": tenant, "Customer-Email": "jane@example.com", "channel": "web"}
	}
	var old []uuid.UUID
	for i := range 12 {
		old = append(old, enqueueOne(t, pool, "payments", fmt.Sprintf("acct-%d", i), hdr("t1")))
	}
	keyHeld := enqueueOne(t, pool, "payments", "acct-held", hdr("t1"))
	otherTopic := enqueueOne(t, pool, "refunds", "acct-held", hdr("t1")) // the key hold is for payments only
	tenantHeld := enqueueOne(t, pool, "payments", "acct-x", hdr("t-held"))
	young := enqueueOne(t, pool, "payments", "acct-y", hdr("t1"))
	pending := enqueueOne(t, pool, "payments", "acct-p", hdr("t1"))
	parked := enqueueOne(t, pool, "payments", "acct-k", hdr("t1"))
	dropped := enqueueOne(t, pool, "payments", "acct-d", hdr("t1"))
	publishedAgo(t, pool, 40*24*time.Hour, append(old, keyHeld, otherTopic, tenantHeld)...)
	publishedAgo(t, pool, 20*24*time.Hour, young)
	execSQL(t, pool, `UPDATE outbox.messages SET created_at = now() - interval '60 days' WHERE event_id = ANY($1)`, []uuid.UUID{pending, parked, dropped})
	execSQL(t, pool, `UPDATE outbox.messages SET status = 'parked', parked_at = now() - interval '50 days' WHERE event_id = $1`, parked)
	execSQL(t, pool, `UPDATE outbox.messages SET status = 'dropped' WHERE event_id = $1`, dropped)

	dlOld := insertDeadLetter(t, pool, "resolved", "acct-1", "t1", 40*24*time.Hour)
	dlDropped := insertDeadLetter(t, pool, "dropped", "acct-2", "t1", 40*24*time.Hour)
	dlEdited := insertDeadLetter(t, pool, "edited", "acct-6", "t1", 40*24*time.Hour) // a broker dead letter sent back corrected
	dlParked := insertDeadLetter(t, pool, "parked", "acct-3", "t1", 40*24*time.Hour)
	dlYoung := insertDeadLetter(t, pool, "resolved", "acct-4", "t1", 10*24*time.Hour)
	dlKeyHeld := insertDeadLetter(t, pool, "resolved", "acct-held", "t1", 40*24*time.Hour)
	dlTenantHeld := insertDeadLetter(t, pool, "resolved", "acct-5", "t-held", 40*24*time.Hour)
	execSQL(t, pool, `UPDATE inbox.dead_letters SET edited_payload = '\x01' WHERE id = ANY($1)`, []int64{dlOld, dlEdited})

	keyHold := placeHold(t, pool, "payments", "acct-held", "")
	tenantHold := placeHold(t, pool, "", "", "t-held")
	execSQL(t, pool, `INSERT INTO outbox.audit_log (actor, action, target_kind, reason) VALUES ('op', 'drop', 'outbox_message', 'before')`)
	audits := queryInt(t, pool, `SELECT count(*) FROM outbox.audit_log`)
	before := map[uuid.UUID]messageRow{}
	for _, id := range append(old, keyHeld, otherTopic, tenantHeld, young, pending, parked, dropped) {
		before[id] = readMessage(t, pool, id)
	}

	s := newSweeper(t, pool, Config{RedactAfter: 30 * 24 * time.Hour, RedactHeaders: []string{"customer-email"}, DeleteBatchSize: 5}, nil)
	res := runJob(t, s, JobRedact)
	rep := res.Redact
	if rep.RedactedMessages != 13 || rep.RedactedDeadLetters != 3 || rep.HeldMessages != 2 || rep.HeldDeadLetters != 2 ||
		rep.HeadersRemoved != 16 || res.Rows != 16 {
		t.Fatalf("redact report %+v, rows %d; want 13 events (12 + the other topic), 3 dead letters, 2+2 held, 16 headers", rep, res.Rows)
	}
	if rep.Statements < 4 {
		t.Errorf("%d statements: not in batches of 5", rep.Statements)
	}

	for _, id := range append(old, otherTopic) {
		b, a := before[id], readMessage(t, pool, id)
		if len(a.payload) != 0 || !a.redacted {
			t.Errorf("%s: payload %q, redacted %v; want empty and marked", id, a.payload, a.redacted)
		}
		if _, ok := a.headers["Customer-Email"]; ok || a.headers["tenant"] != "t1" || a.headers["channel"] != "web" {
			t.Errorf("%s: headers %v; want Customer-Email removed (case-insensitive), the others kept", id, a.headers)
		}
		if a.status != b.status || a.topic != b.topic || a.key != b.key || a.typ != b.typ || a.corrID != b.corrID ||
			!a.publishedAt.Equal(*b.publishedAt) || *a.brokerAck != *b.brokerAck {
			t.Errorf("%s: metadata changed: %+v -> %+v", id, b, a)
		}
	}
	for _, id := range []uuid.UUID{keyHeld, tenantHeld, young, pending, parked, dropped} {
		b, a := before[id], readMessage(t, pool, id)
		if string(a.payload) != string(b.payload) || a.redacted || len(a.headers) != 3 || a.status != b.status {
			t.Errorf("%s (%s) was touched: %+v", id, b.status, a)
		}
	}
	dl := func(id int64) (payload, edited []byte, names []string, redacted bool) {
		var h []map[string]any
		var raw []byte
		if err := pool.QueryRow(ctx, `SELECT payload, edited_payload, headers, redacted_at IS NOT NULL FROM inbox.dead_letters WHERE id = $1`, id).
			Scan(&payload, &edited, &raw, &redacted); err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(raw, &h) //nolint:errcheck
		for _, e := range h {
			names = append(names, fmt.Sprint(e["name"]))
		}
		return
	}
	for _, id := range []int64{dlOld, dlDropped, dlEdited} {
		p, e, names, red := dl(id)
		if len(p) != 0 || !red || fmt.Sprint(names) != "[ce_id tenant]" {
			t.Errorf("dead letter %d: payload %q, headers %v, redacted %v", id, p, names, red)
		}
		if id != dlDropped && (e == nil || len(e) != 0) {
			t.Errorf("dead letter %d: edited payload %q, want empty", id, e)
		}
	}
	for _, id := range []int64{dlParked, dlYoung, dlKeyHeld, dlTenantHeld} {
		if p, _, names, red := dl(id); string(p) != "{}" || red || len(names) != 3 {
			t.Errorf("dead letter %d was touched: %q %v %v", id, p, names, red)
		}
	}

	// One audit entry for the run, by the system actor, with counts; the
	// rest of the audit log is as it was.
	var reason string
	var details map[string]any
	if err := pool.QueryRow(ctx, `SELECT reason, details FROM outbox.audit_log WHERE action = 'redact' AND actor = 'system:sweeper'`).
		Scan(&reason, &details); err != nil {
		t.Fatalf("the redaction audit entry: %v", err)
	}
	if details["messages"] != 13.0 || details["dead_letters"] != 3.0 || details["messages_held"] != 2.0 {
		t.Errorf("audit details %v", details)
	}
	if n := queryInt(t, pool, `SELECT count(*) FROM outbox.audit_log`); n != audits+1 {
		t.Errorf("%d audit entries, want %d", n, audits+1)
	}
	if n := metric(t, s.Metrics(), "outboxkit_sweeper_redacted_rows_total", map[string]string{"table": "messages"}); n != 13 {
		t.Errorf("redacted_rows_total{messages} = %v", n)
	}
	if n := metric(t, s.Metrics(), "outboxkit_sweeper_held_rows", map[string]string{"job": "redact"}); n != 4 {
		t.Errorf("held_rows{redact} = %v", n)
	}

	// A redacted event cannot go back to pending (a replay would publish
	// the empty payload), nor a redacted dead letter back to parked.
	if _, err := pool.Exec(ctx, `UPDATE outbox.messages SET status = 'pending', published_at = NULL WHERE event_id = $1`, old[0]); err == nil {
		t.Error("a redacted event went back to pending")
	}
	if _, err := pool.Exec(ctx, `UPDATE inbox.dead_letters SET status = 'parked' WHERE id = $1`, dlDropped); err == nil {
		t.Error("a redacted dead letter went back to parked")
	}

	// Nothing new: no rows, no audit entry.
	if res := runJob(t, s, JobRedact); res.Rows != 0 {
		t.Errorf("second run redacted %d rows", res.Rows)
	}
	if n := queryInt(t, pool, `SELECT count(*) FROM outbox.audit_log`); n != audits+1 {
		t.Errorf("a run that redacted nothing wrote an audit entry")
	}

	// Releasing the holds lets the next run take the rows.
	releaseHold(t, pool, keyHold)
	releaseHold(t, pool, tenantHold)
	res = runJob(t, s, JobRedact)
	if res.Redact.RedactedMessages != 2 || res.Redact.RedactedDeadLetters != 2 || res.Redact.HeldMessages != 0 {
		t.Errorf("after release: %+v", res.Redact)
	}
	if a := readMessage(t, pool, keyHeld); !a.redacted || len(a.payload) != 0 {
		t.Errorf("held event not redacted after release: %+v", a)
	}
}

// Redaction is off unless RedactAfter is set, and RedactAfter is checked.
func TestRedactIsOptIn(t *testing.T) {
	db := testDB(t)
	s := newSweeper(t, db.Pool, Config{}, nil)
	if _, err := s.RunJob(context.Background(), JobRedact); !errors.Is(err, ErrRedactionOff) {
		t.Fatalf("redact without RedactAfter: %v, want ErrRedactionOff", err)
	}
	for _, c := range []Config{{RedactAfter: 10 * time.Minute}, {RedactAfter: -time.Hour}, {RedactAfter: 48 * time.Hour, RedactHeaders: []string{" "}}} {
		if _, err := New(db.Pool, &c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("RedactAfter %s, headers %q: %v, want ErrInvalidConfig", c.RedactAfter, c.RedactHeaders, err)
		}
	}
}

// Retention keeps published events and inbox records of held keys and
// tenants, deletes everything else past its window, and deletes the held
// rows at its first run after the hold is released.
func TestRetentionHonoursLegalHolds(t *testing.T) {
	db := testDB(t)
	pool := db.Pool
	free := enqueueOne(t, pool, "payments", "acct-1", map[string]string{"tenant": "t1"})
	byKey := enqueueOne(t, pool, "payments", "acct-held", map[string]string{"tenant": "t1"})
	byTenant := enqueueOne(t, pool, "payments", "acct-2", map[string]string{"tenant": "t-held"})
	publishedAgo(t, pool, 8*24*time.Hour, free, byKey, byTenant)
	execSQL(t, pool, `INSERT INTO outbox.attempts (message_id, event_id, attempt, started_at, duration_ms, relay_id, error_class, error, outcome)
		SELECT id, event_id, 1, created_at, 1, 'r', 'transient', 'x', 'retry' FROM outbox.messages`)
	execSQL(t, pool, `INSERT INTO inbox.processed (consumer, event_id, topic, key, payload_sha256, processed_at)
		SELECT 'billing', event_id, topic, key, '\x00', now() - interval '20 days' FROM outbox.messages`)
	execSQL(t, pool, `INSERT INTO inbox.processed (consumer, event_id, topic, key, payload_sha256, processed_at)
		VALUES ('billing', gen_random_uuid(), 'payments', 'acct-held', '\x00', now() - interval '20 days'),
		       ('billing', gen_random_uuid(), 'payments', 'acct-9', '\x00', now() - interval '20 days')`)
	keyHold := placeHold(t, pool, "", "acct-held", "")
	tenantHold := placeHold(t, pool, "payments", "", "t-held")
	placeHold(t, pool, "refunds", "acct-1", "") // another topic: does not hold payments/acct-1

	s := newSweeper(t, pool, Config{}, nil)
	rep := runJob(t, s, JobRetention).Retention
	if rep.DeletedMessages != 1 || rep.DeletedAttempts != 1 || rep.HeldMessages != 2 || rep.DeletedProcessed != 2 {
		t.Fatalf("retention with holds: %+v; want 1 event, 1 attempt, 2 records deleted, 2 events held", rep)
	}
	for id, want := range map[uuid.UUID]int64{free: 0, byKey: 1, byTenant: 1} {
		if n := queryInt(t, pool, `SELECT count(*) FROM outbox.messages WHERE event_id = $1`, id); n != want {
			t.Errorf("event %s: %d rows, want %d", id, n, want)
		}
		if n := queryInt(t, pool, `SELECT count(*) FROM inbox.processed WHERE event_id = $1`, id); n != want {
			t.Errorf("inbox record of %s: %d rows, want %d", id, n, want)
		}
	}
	if n := queryInt(t, pool, `SELECT count(*) FROM inbox.processed WHERE key = 'acct-held'`); n != 2 {
		t.Errorf("%d inbox records of the held key, want 2", n)
	}
	if n := metric(t, s.Metrics(), "outboxkit_sweeper_held_rows", map[string]string{"job": "retention"}); n != 2 {
		t.Errorf("held_rows{retention} = %v", n)
	}

	releaseHold(t, pool, keyHold)
	releaseHold(t, pool, tenantHold)
	rep = runJob(t, s, JobRetention).Retention
	if rep.DeletedMessages != 2 || rep.DeletedAttempts != 2 || rep.HeldMessages != 0 || rep.DeletedProcessed != 3 {
		t.Fatalf("retention after release: %+v", rep)
	}
}

// The copies of a corrected payload go with the redaction too: the finished
// edit requests of a redacted dead letter, and the approvals of edits
// decided before the cutoff. A pending request or approval, and the
// requests of a dead letter that is not redacted, keep theirs.
func TestRedactClearsCopiesOfCorrectedPayloads(t *testing.T) {
	db := testDB(t)
	pool := db.Pool
	dlOld := insertDeadLetter(t, pool, "resolved", "acct-1", "t1", 40*24*time.Hour)
	dlYoung := insertDeadLetter(t, pool, "resolved", "acct-2", "t1", 10*24*time.Hour)
	request := func(dl int64, status string) int64 {
		var id int64
		if err := pool.QueryRow(context.Background(), `INSERT INTO inbox.dead_letter_requests
			(consumer, dead_letter_id, action, payload, requested_by, reason, status, done_at)
			VALUES ('billing', $1, 'edit', '\x7b22666978223a317d', 'jane', 'fix', $2, CASE WHEN $2 <> 'pending' THEN now() END)
			RETURNING id`, dl, status).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	doneOld, doneYoung := request(dlOld, "applied"), request(dlYoung, "applied")
	approval := func(status string, decidedAgo time.Duration) int64 {
		var id int64
		if err := pool.QueryRow(context.Background(), `INSERT INTO outbox.approvals
			(action, refs, payload, payload_sha256, requested_by, reason, expires_at, status, decided_by, decided_at, done_at)
			VALUES ('edit', ARRAY['o:1'], '\x7b7d', 'sha', 'jane', 'fix', now() + interval '1 hour', $1,
			        CASE WHEN $1 <> 'pending' THEN 'joe' END,
			        CASE WHEN $1 <> 'pending' THEN now() - $2::interval END,
			        CASE WHEN $1 = 'done' THEN now() - $2::interval END)
			RETURNING id`, status, decidedAgo).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	apOld, apYoung, apPending := approval("done", 40*24*time.Hour), approval("rejected", 10*24*time.Hour), approval("pending", 0)

	s := newSweeper(t, pool, Config{RedactAfter: 30 * 24 * time.Hour}, nil)
	res := runJob(t, s, JobRedact)
	if res.Redact.RedactedDeadLetters != 1 || res.Redact.RedactedApprovals != 1 {
		t.Fatalf("redacted %d dead letters and %d approvals, want 1 and 1", res.Redact.RedactedDeadLetters, res.Redact.RedactedApprovals)
	}
	for _, c := range []struct {
		what  string
		query string
		id    int64
		empty bool
	}{
		{"edit request of the redacted dead letter", `SELECT length(payload) FROM inbox.dead_letter_requests WHERE id = $1`, doneOld, true},
		{"edit request of a young dead letter", `SELECT length(payload) FROM inbox.dead_letter_requests WHERE id = $1`, doneYoung, false},
		{"approval decided 40 days ago", `SELECT length(payload) FROM outbox.approvals WHERE id = $1`, apOld, true},
		{"approval decided 10 days ago", `SELECT length(payload) FROM outbox.approvals WHERE id = $1`, apYoung, false},
		{"pending approval", `SELECT length(payload) FROM outbox.approvals WHERE id = $1`, apPending, false},
	} {
		n := queryInt(t, pool, c.query, c.id)
		if (n == 0) != c.empty {
			t.Errorf("%s: payload length %d, want empty=%v", c.what, n, c.empty)
		}
	}
}
