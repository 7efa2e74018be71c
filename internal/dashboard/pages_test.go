package dashboard_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/outboxkit/outboxkit/internal/dashboard"
	"github.com/outboxkit/outboxkit/outbox"
)

// A payload, key, header or error holding HTML is shown as text: the page
// has the escaped form and never the markup itself.
func TestPayloadWithScriptIsEscaped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := context.Background()
	tx, _ := e.db.Pool.Begin(ctx)
	if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: "payouts", Key: `k<img src=x>`, Type: "payout.created",
		Payload:       []byte(`{"note":"<script>alert('pwned')</script>","bidi":"a` + "\u202e" + `b"}`),
		Headers:       map[string]string{"x-note": `"><script>alert(2)</script>`},
		CorrelationID: `c"><script>alert(3)</script>`}); err != nil {
		t.Fatal(err)
	}
	tx.Commit(ctx)
	var id int64
	e.db.Pool.QueryRow(ctx, `UPDATE outbox.messages SET status = 'parked', parked_at = now(), last_error_class = 'poison_format',
	    last_error = '<script>alert(4)</script>' RETURNING id`).Scan(&id)
	c := e.client().signIn("alice", aliceToken)
	for _, p := range []string{"/events/o:" + itoa(id), "/events?kind=outbox", "/trace?correlation=" + url.QueryEscape(`c"><script>alert(3)</script>`)} {
		resp, body := c.get(p)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d\n%s", p, resp.StatusCode, body)
		}
		for _, bad := range []string{"<script>alert", "<img src=x>", "\u202e"} {
			if strings.Contains(body, bad) {
				t.Errorf("%s contains %q unescaped", p, bad)
			}
		}
	}
	_, body := c.get("/events/o:" + itoa(id))
	for what, want := range map[string]string{
		"pretty-printed JSON": `&#34;note&#34;: &#34;&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;&#34;`,
		"bidi override":       `\u202e`,
		"header":              `&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;`,
		"error":               `&lt;script&gt;alert(4)&lt;/script&gt;`,
		"key":                 `k&lt;img src=x&gt;`,
		"payload kind":        "bytes · json",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("event page: %s lacks %s", what, want)
		}
	}
}

// A binary payload is shown as a hex dump with a printable column; no raw
// control byte reaches the page.
func TestBinaryPayloadAsHex(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	payload := []byte{0x1b, '[', '2', 'J', 0x00, 0xff, 0xfe, 'o', 'k', 0x07, 0x1b, ']', '0', ';', 'x', 0x07, 0x80, 0x81}
	ids := seedParked(t, e.db.Pool, "blobs", "bin-1", payload)
	c := e.client().signIn("alice", aliceToken)
	resp, body := c.get("/events/o:" + itoa(ids[0]))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%d\n%s", resp.StatusCode, body)
	}
	for _, want := range []string{"18 bytes · binary", "00000000  1b 5b 32 4a 00 ff fe 6f  6b 07 1b 5d 30 3b 78 07", "|.[2J...ok..]0;x.|",
		"00000010  80 81"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, b := range []byte{0x1b, 0x00, 0x07} {
		if strings.IndexByte(body, b) >= 0 {
			t.Errorf("raw byte %#x in the page", b)
		}
	}
	// The edit form offers the exact bytes as base64.
	if !strings.Contains(body, base64.StdEncoding.EncodeToString(payload)) || !strings.Contains(body, `value="base64" selected`) {
		t.Error("edit form does not offer the binary payload as base64")
	}
}

// Every action writes its audit entry with the signed-in user as the actor
// and the reason typed in the form; without a reason nothing happens.
func TestActionsAuditedWithSignedInActor(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := context.Background()
	replayIDs := seedParked(t, e.db.Pool, "payouts", "replay-1", []byte(`{"n":1}`), []byte(`{"n":2}`))
	dropIDs := seedParked(t, e.db.Pool, "payouts", "drop-1", []byte(`{"n":1}`))
	editIDs := seedParked(t, e.db.Pool, "payouts", "edit-1", []byte(`{"amount":"12,50"}`))
	binIDs := seedParked(t, e.db.Pool, "payouts", "edit-2", []byte{0xff, 0x00})
	retryIDs := seedParked(t, e.db.Pool, "ledger", "retry-1", []byte(`{}`), []byte(`{}`))
	skipIDs := seedParked(t, e.db.Pool, "ledger", "skip-1", []byte(`{}`), []byte(`{}`))
	relIDs := seedParked(t, e.db.Pool, "ledger", "release-1", []byte(`{}`), []byte(`{}`))
	bulk := [][]int64{seedParked(t, e.db.Pool, "refunds", "r-1", []byte(`{}`)), seedParked(t, e.db.Pool, "refunds", "r-2", []byte(`{}`))}

	c := e.client().signIn("alice", aliceToken)
	bob := e.client().signIn("bob", bobToken)

	// No reason: refused with a message, nothing changed, nothing audited.
	resp, _ := c.post("/events/o:"+itoa(replayIDs[0])+"/replay", url.Values{"reason": {"   "}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("replay without reason: %d", resp.StatusCode)
	}
	if _, body := c.get(resp.Header.Get("Location")); !strings.Contains(body, "A reason is required") {
		t.Errorf("no message for a missing reason:\n%s", body)
	}
	if status(t, e.db.Pool, replayIDs[0]) != "parked" || len(auditRows(t, e.db.Pool)) != 0 {
		t.Fatal("an action without a reason changed something")
	}

	act := func(cl *client, path string, form url.Values) string {
		t.Helper()
		resp, body := cl.post(path, form)
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("POST %s: %d\n%s", path, resp.StatusCode, body)
		}
		_, page := cl.get(resp.Header.Get("Location"))
		return page
	}
	page := act(c, "/events/o:"+itoa(replayIDs[0])+"/replay", url.Values{"reason": {"INC-1 replay"}})
	if !strings.Contains(page, "o:"+itoa(replayIDs[0])+" replayed.") {
		t.Errorf("no confirmation after replay:\n%s", page)
	}
	act(bob, "/events/o:"+itoa(dropIDs[0])+"/drop", url.Values{"reason": {"INC-2 drop"}})
	act(c, "/events/o:"+itoa(dropIDs[0])+"/restore", url.Values{"reason": {"INC-2 restore"}})
	page = act(c, "/events/o:"+itoa(editIDs[0])+"/edit", url.Values{"reason": {"INC-3 edit"}, "encoding": {"text"},
		"payload": {"{\r\n  \"amount\": \"12.50\"\r\n}"}, "content_type": {"application/json"}})
	if !strings.Contains(page, "the corrected copy is o:") {
		t.Errorf("no confirmation after edit:\n%s", page)
	}
	act(c, "/events/o:"+itoa(binIDs[0])+"/edit", url.Values{"reason": {"INC-3 edit binary"}, "encoding": {"base64"},
		"payload": {base64.StdEncoding.EncodeToString([]byte{0xfe, 0x01})}})
	act(c, "/lanes", url.Values{"reason": {"INC-4 retry"}, "topic": {"ledger"}, "key": {"retry-1"}, "verb": {"retry-head"}})
	act(c, "/lanes", url.Values{"reason": {"INC-4 skip"}, "topic": {"ledger"}, "key": {"skip-1"}, "verb": {"skip-head"}})
	act(c, "/lanes", url.Values{"reason": {"INC-4 release"}, "topic": {"ledger"}, "key": {"release-1"}, "verb": {"release"}})

	// Bulk redrive: the preview changes nothing, then the real one.
	_, prev := c.get("/redrive?preview=1&topic=refunds")
	if !strings.Contains(prev, "Would replay 2 events") {
		t.Fatalf("preview:\n%s", prev)
	}
	n := len(auditRows(t, e.db.Pool))
	if status(t, e.db.Pool, bulk[0][0]) != "parked" {
		t.Fatal("the preview replayed")
	}
	resp, body := c.post("/redrive", url.Values{"topic": {"refunds"}, "reason": {"INC-5 redrive"}, "expected": {"2"}, "rate": {"500"}})
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "2 replayed") {
		t.Fatalf("redrive: %d\n%s", resp.StatusCode, body)
	}
	if len(auditRows(t, e.db.Pool)) != n+2 {
		t.Errorf("redrive wrote %d audit entries, want 2", len(auditRows(t, e.db.Pool))-n)
	}

	// The effects.
	for id, want := range map[int64]string{replayIDs[0]: "pending", dropIDs[0]: "parked", editIDs[0]: "dropped",
		retryIDs[0]: "pending", skipIDs[0]: "dropped", skipIDs[1]: "blocked", relIDs[0]: "parked", relIDs[1]: "pending",
		bulk[0][0]: "pending", bulk[1][0]: "pending"} {
		if got := status(t, e.db.Pool, id); got != want {
			t.Errorf("o:%d is %s, want %s", id, got, want)
		}
	}
	var copyPayload, copyType string
	e.db.Pool.QueryRow(ctx, `SELECT convert_from(payload, 'UTF8'), content_type FROM outbox.messages WHERE causation_id =
	    (SELECT event_id::text FROM outbox.messages WHERE id = $1)`, editIDs[0]).Scan(&copyPayload, &copyType)
	if copyPayload != "{\n  \"amount\": \"12.50\"\n}" || copyType != "application/json" {
		t.Errorf("edited copy %q %q", copyPayload, copyType)
	}
	var binCopy []byte
	e.db.Pool.QueryRow(ctx, `SELECT payload FROM outbox.messages WHERE causation_id =
	    (SELECT event_id::text FROM outbox.messages WHERE id = $1)`, binIDs[0]).Scan(&binCopy)
	if string(binCopy) != "\xfe\x01" {
		t.Errorf("binary edit stored %x", binCopy)
	}

	// The audit log: one entry per action, the signed-in actor, the reason.
	want := []auditRow{
		{"alice", "replay", "INC-1 replay", nil}, {"bob", "drop", "INC-2 drop", nil}, {"alice", "restore", "INC-2 restore", nil},
		{"alice", "edit", "INC-3 edit", nil}, {"alice", "edit", "INC-3 edit binary", nil}, {"alice", "replay", "INC-4 retry", nil},
		{"alice", "drop", "INC-4 skip", nil}, {"alice", "lane_release", "INC-4 release", nil},
		{"alice", "replay", "INC-5 redrive", nil}, {"alice", "replay", "INC-5 redrive", nil},
	}
	got := auditRows(t, e.db.Pool)
	if len(got) != len(want) {
		t.Fatalf("%d audit entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].Actor != want[i].Actor || got[i].Action != want[i].Action || got[i].Reason != want[i].Reason || len(got[i].Targets) == 0 {
			t.Errorf("audit entry %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// And the audit page shows them.
	_, body = c.get("/audit?actor=bob")
	if !strings.Contains(body, "INC-2 drop") || strings.Contains(body, "INC-1 replay") {
		t.Errorf("audit page filtered by actor:\n%s", body)
	}
	// A second replay of the same event is refused with a clear message.
	page = act(c, "/events/o:"+itoa(replayIDs[0])+"/replay", url.Values{"reason": {"again"}})
	if !strings.Contains(page, "only parked events are replayed") {
		t.Errorf("second replay:\n%s", page)
	}
	if !strings.Contains(e.logs.String(), "user=alice action=replay") {
		t.Errorf("actions are not logged with the user:\n%s", e.logs.String())
	}
}

// The pages render what ops reads, and the filters narrow the list.
func TestPagesRender(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	sampler := e.sampler
	ctx := context.Background()
	seedParked(t, e.db.Pool, "payouts", "payout-42", []byte(`{"n":1}`), []byte(`{"n":2}`), []byte(`{"n":3}`))
	seedParked(t, e.db.Pool, "ledger", "acct-7", []byte(`{}`))
	e.db.Pool.Exec(ctx, `UPDATE outbox.messages SET last_error_class = 'unroutable', last_error = 'kafka topic "ledger" does not exist'
	    WHERE topic = 'ledger' AND status = 'parked'`)
	if _, err := e.db.Pool.Exec(ctx, `INSERT INTO inbox.dead_letters (consumer, consumer_version, topic, key, payload, headers, error_class, error, attempts, status, first_failed_at, last_failed_at)
	    VALUES ('billing', 'v3', 'payouts', 'payout-1', '\x7b7d', '[]', 'no_handler', 'no handler for payout.created v9', 5, 'parked', now(), now())`); err != nil {
		t.Fatal(err)
	}
	c := e.client().signIn("alice", aliceToken)

	_, body := c.get("/")
	for _, want := range []string{"Collecting samples", `id="card-parked"`, `<span class="value bad">2</span>`, "billing"} {
		if !strings.Contains(body, want) {
			t.Errorf("overview lacks %q", want)
		}
	}
	for i := 0; i < 4; i++ {
		if err := sampler.SampleNow(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s := sampler.Samples(); len(s) != 3 || s[2].Parked != 2 || s[2].Pending != 2 {
		t.Errorf("samples %+v", s)
	}
	_, body = c.get("/")
	for _, want := range []string{`<svg class="chart-svg"`, `<polyline class="line s-pending"`, "parked: <b>2</b>"} {
		if !strings.Contains(body, want) {
			t.Errorf("overview with samples lacks %q", want)
		}
	}

	_, body = c.get("/events?class=unroutable")
	if !strings.Contains(body, "acct-7") || strings.Contains(body, "payout-42") {
		t.Errorf("class filter:\n%s", body)
	}
	_, body = c.get("/events?error=" + url.QueryEscape("SCHEMA mismatch"))
	if !strings.Contains(body, "payout-42") || strings.Contains(body, "acct-7") {
		t.Errorf("error text filter")
	}
	_, body = c.get("/events?kind=inbox&consumer=billing")
	if !strings.Contains(body, "no handler for payout.created v9") || strings.Contains(body, "acct-7") {
		t.Errorf("dead letters by consumer:\n%s", body)
	}
	if resp, body := c.get("/events?from=yesterday"); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "use RFC 3339") {
		t.Errorf("bad from: %d", resp.StatusCode)
	}
	_, body = c.get("/events?kind=inbox")
	ref := strings.Split(strings.Split(body, `href="/events/i:`)[1], `"`)[0]
	_, body = c.get("/events/i:" + ref)
	if !strings.Contains(body, `id="replay"`) || !strings.Contains(body, "Asks consumer billing to apply it again") {
		t.Errorf("dead letter page:\n%s", body)
	}
	resp, _ := c.post("/events/i:"+ref+"/replay", url.Values{"reason": {"INC-9 handler v9 deployed"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("dead letter replay request: %d", resp.StatusCode)
	}
	if _, body = c.get(resp.Header.Get("Location")); !strings.Contains(body, "replay requested (#") || !strings.Contains(body, `id="requests"`) ||
		!strings.Contains(body, "INC-9 handler v9 deployed") {
		t.Errorf("dead letter replay request:\n%s", body)
	}
	_, body = c.get("/lanes")
	if !strings.Contains(body, "payout-42") || !strings.Contains(body, `value="retry-head"`) {
		t.Errorf("lanes:\n%s", body)
	}
	_, body = c.get("/system")
	if !strings.Contains(body, `id="partitions"`) || !strings.Contains(body, "No relay has registered") {
		t.Errorf("system:\n%s", body)
	}
	_, body = c.get("/trace?key=payout-42")
	if !strings.Contains(body, "enqueued o:") {
		t.Errorf("trace:\n%s", body)
	}
	if resp, _ := c.get("/events/o:999999"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown event: %d", resp.StatusCode)
	}
	if resp, _ := c.get("/events/nonsense"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("bad ref: %d", resp.StatusCode)
	}
	if resp, _ := c.get("/static/app.js"); resp.StatusCode != http.StatusOK {
		t.Errorf("app.js: %d", resp.StatusCode)
	}
}

// The sampler keeps a bounded history and stops with its context.
func TestSamplerRunStops(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	s, err := dashboard.NewSampler(e.store, dashboard.SamplerConfig{Every: 100 * time.Millisecond, Keep: 5})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for len(s.Samples()) < 5 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sampler did not stop")
	}
	got := s.Samples()
	if len(got) != 5 {
		t.Fatalf("%d samples, want 5 (bounded)", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i].At.Before(got[i-1].At) {
			t.Errorf("samples out of order: %v", got)
		}
	}
	if _, err := dashboard.NewSampler(e.store, dashboard.SamplerConfig{Every: time.Millisecond}); err == nil {
		t.Error("a 1ms interval was accepted")
	}
}

// With the two-person rule on, a drop in the dashboard only records an
// approval for a second operator; nothing is dropped.
func TestTwoPersonRuleHoldsDashboardDrop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := context.Background()
	ids := seedParked(t, e.db.Pool, "payouts", "tp-1", []byte(`{"n":1}`))
	if _, err := e.db.Pool.Exec(ctx, `UPDATE outbox.settings SET two_person_rule = true, updated_by = 'dba'`); err != nil {
		t.Fatal(err)
	}
	c := e.client().signIn("alice", aliceToken)
	resp, _ := c.post("/events/o:"+itoa(ids[0])+"/drop", url.Values{"reason": {"duplicate"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("drop: %d", resp.StatusCode)
	}
	if _, body := c.get(resp.Header.Get("Location")); !strings.Contains(body, "The two-person rule is on: nothing ran. Approval #1 (drop o:") {
		t.Errorf("no approval message:\n%s", body)
	}
	var requester, refs string
	e.db.Pool.QueryRow(ctx, `SELECT requested_by, array_to_string(refs, ',') FROM outbox.approvals WHERE status = 'pending'`).Scan(&requester, &refs)
	if requester != "alice" || refs != "o:"+itoa(ids[0]) || status(t, e.db.Pool, ids[0]) != "parked" {
		t.Errorf("approval by %q of %q; event %s", requester, refs, status(t, e.db.Pool, ids[0]))
	}

	// The approvals page: alice cannot approve her own; bob can, once.
	if _, body := c.get("/approvals"); !strings.Contains(body, `id="approve-1"`) || !strings.Contains(body, "duplicate") {
		t.Errorf("approvals page:\n%s", body)
	}
	resp, _ = c.post("/approvals/1/approve", url.Values{"reason": {"fine"}})
	if _, body := c.get(resp.Header.Get("Location")); !strings.Contains(body, "you asked for this") || status(t, e.db.Pool, ids[0]) != "parked" {
		t.Errorf("own approval:\n%s", body)
	}
	bob := e.client().signIn("bob", bobToken)
	resp, _ = bob.post("/approvals/1/approve", url.Values{"reason": {"checked"}})
	if _, body := bob.get(resp.Header.Get("Location")); !strings.Contains(body, "Approval #1 approved and run: 1 dropped;") || status(t, e.db.Pool, ids[0]) != "dropped" {
		t.Errorf("approval by bob:\n%s", body)
	}
	resp, _ = bob.post("/approvals/1/approve", url.Values{"reason": {"again"}})
	if _, body := bob.get(resp.Header.Get("Location")); !strings.Contains(body, "decided already") {
		t.Errorf("second approval:\n%s", body)
	}
	var audit string
	e.db.Pool.QueryRow(ctx, `SELECT string_agg(action || ':' || actor, ',' ORDER BY id) FROM outbox.audit_log`).Scan(&audit)
	if audit != "request_approval:alice,approve:bob,drop:alice" {
		t.Errorf("audit: %s", audit)
	}
}
