package dashboard_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/ingest"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// A broker dead letter (dlq ingest) in the dashboard. Started without a
// broker, serve shows replay and edit disabled with the flag it needs, and
// a replay posted anyway is refused in the same words and sends nothing.
// Started with --rabbitmq-url, replay sends the original message back to
// the queue that dead-lettered it, edit sends a corrected copy there as a new message and
// keeps the original row, drop and restore work; every action is audited
// with the signed-in user.
func TestIngestedDeadLetterActions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, nil)
	r := testenv.NewRabbitDLQ(t, "dash-ingest")
	ids := map[string]string{}
	var msgs []amqp.Publishing
	for _, body := range []string{"replay me", "edit me", "drop me"} {
		ids[body] = uuid.NewString()
		msgs = append(msgs, amqp.Publishing{MessageId: ids[body], Body: []byte(body), Headers: amqp.Table{"tenant": "t1"}})
	}
	r.DeadLetter(t, msgs...)
	ingester, err := ingest.NewStore(e.db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := ingester.IngestRabbitMQ(ctx, ingest.RabbitMQConfig{RabbitMQConn: ingest.RabbitMQConn{URL: testenv.RabbitURL()},
		Queue: r.DLQ, Once: true}); err != nil || res.Ingested != 3 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	ref := func(body string) string {
		var id string
		if err := e.db.Pool.QueryRow(ctx, `SELECT 'i:' || id FROM inbox.dead_letters WHERE event_id = $1`, ids[body]).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	statusOf := func(body string) string {
		var s string
		e.db.Pool.QueryRow(ctx, `SELECT status FROM inbox.dead_letters WHERE event_id = $1`, ids[body]).Scan(&s)
		return s
	}
	// act posts verb on the dead letter of body and returns the page the
	// browser is sent to, with its flash message.
	act := func(c *client, body, verb string, form url.Values) string {
		t.Helper()
		if form == nil {
			form = url.Values{}
		}
		form.Set("reason", "INC-9 "+verb)
		resp, _ := c.post("/events/"+ref(body)+"/"+verb, form)
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("%s %s: %d", verb, body, resp.StatusCode)
		}
		_, page := c.get(resp.Header.Get("Location"))
		return page
	}
	needsFlag := "Start serve with --rabbitmq-url (or set RABBITMQ_URL) to replay this message"

	// serve without broker flags.
	e.serve(e.store.WithRepublisher(&ingest.Republisher{}), nil)
	alice := e.client().signIn("alice", aliceToken)
	_, page := alice.get("/events/" + ref("replay me"))
	dest := `RabbitMQ queue &#34;` + r.Work + `&#34; (through the default exchange: no other queue gets it)`
	for _, want := range []string{`id="destination">` + dest, `id="replay" type="submit" class="primary" disabled`, `id="replay-disabled">` + needsFlag,
		`id="edit-disabled">` + needsFlag, `id="edit-submit" type="submit" class="primary" disabled`, "Broker dead letter from <b>rabbitmq</b>",
		`id="drop" type="submit"`} {
		if !strings.Contains(page, want) {
			t.Errorf("event page without a broker lacks %q", want)
		}
	}
	if page := act(alice, "replay me", "replay", nil); !strings.Contains(page, needsFlag) || statusOf("replay me") != "parked" ||
		r.Count(t, r.Work) != 0 {
		t.Errorf("a replay without a broker: %s, %d in %s\n%s", statusOf("replay me"), r.Count(t, r.Work), r.Work, page)
	}

	// serve --rabbitmq-url.
	e.serve(e.store.WithRepublisher(&ingest.Republisher{RabbitMQ: &ingest.RabbitMQConn{URL: testenv.RabbitURL()}}), nil)
	alice = e.client().signIn("alice", aliceToken)
	_, page = alice.get("/events/" + ref("replay me"))
	if strings.Contains(page, "disabled") || !strings.Contains(page, `id="destination">`+dest) ||
		!strings.Contains(page, "Sends the original message back to "+dest) {
		t.Errorf("event page with a broker:\n%s", page)
	}
	if page := act(alice, "replay me", "replay", nil); !strings.Contains(page, ref("replay me")+" replayed: republished to "+dest) {
		t.Errorf("replay:\n%s", page)
	}
	if d := r.Take(t); string(d.Body) != "replay me" || d.MessageId != ids["replay me"] || statusOf("replay me") != "replayed" {
		t.Errorf("replayed: %q %s, row %s", d.Body, d.MessageId, statusOf("replay me"))
	}

	if page := act(alice, "edit me", "edit", url.Values{"payload": {"edited"}, "encoding": {"text"}}); !strings.Contains(page, ref("edit me")+" edited: a corrected copy, event ") {
		t.Errorf("edit:\n%s", page)
	}
	d := r.Take(t)
	if string(d.Body) != "edited" || d.MessageId == ids["edit me"] || d.Headers["outboxkit-edit-of"] != ids["edit me"] || d.Headers["tenant"] != "t1" {
		t.Errorf("the corrected copy: %+v", d)
	}
	var status, payload, edited string
	e.db.Pool.QueryRow(ctx, `SELECT status, convert_from(payload, 'UTF8'), convert_from(edited_payload, 'UTF8') FROM inbox.dead_letters
	    WHERE event_id = $1`, ids["edit me"]).Scan(&status, &payload, &edited)
	if status != "edited" || payload != "edit me" || edited != "edited" {
		t.Errorf("the edited row: %s %q %q", status, payload, edited)
	}
	_, page = alice.get("/events/" + ref("edit me"))
	if strings.Contains(page, `id="replay"`) || !strings.Contains(page, `id="status">edited`) {
		t.Errorf("an edited dead letter still offers actions:\n%s", page)
	}

	if page := act(alice, "drop me", "drop", nil); !strings.Contains(page, ref("drop me")+" dropped.") || statusOf("drop me") != "dropped" {
		t.Errorf("drop: %s\n%s", statusOf("drop me"), page)
	}
	if page := act(alice, "drop me", "restore", nil); !strings.Contains(page, ref("drop me")+" restored.") || statusOf("drop me") != "parked" {
		t.Errorf("restore: %s\n%s", statusOf("drop me"), page)
	}
	var got []string
	for _, a := range auditRows(t, e.db.Pool) {
		if a.Action != "ingest" {
			got = append(got, a.Action+":"+a.Actor+":"+a.Reason)
		}
	}
	if strings.Join(got, ",") != "replay:alice:INC-9 replay,edit:alice:INC-9 edit,drop:alice:INC-9 drop,restore:alice:INC-9 restore" {
		t.Errorf("audit log: %v", got)
	}
}

// The bulk redrive page covers inbox dead letters too: filtered by the
// consumer (here the broker's dead-letter queue that dlq ingest read), the
// preview lists them and changes nothing; the redrive sends each back to
// the queue that dead-lettered it, marks it replayed and audits it with the
// signed-in user.
func TestDashboardRedrivesBrokerDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, nil)
	r := testenv.NewRabbitDLQ(t, "dash-redrive")
	var msgs []amqp.Publishing
	for _, body := range []string{"first", "second"} {
		msgs = append(msgs, amqp.Publishing{MessageId: uuid.NewString(), Body: []byte(body)})
	}
	r.DeadLetter(t, msgs...)
	ingester, err := ingest.NewStore(e.db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := ingester.IngestRabbitMQ(ctx, ingest.RabbitMQConfig{RabbitMQConn: ingest.RabbitMQConn{URL: testenv.RabbitURL()},
		Queue: r.DLQ, Once: true}); err != nil || res.Ingested != 2 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	consumer := "rabbitmq:" + r.DLQ
	replayed := func() int {
		var n int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM inbox.dead_letters WHERE consumer = $1 AND status = 'replayed'`,
			consumer).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	e.serve(e.store.WithRepublisher(&ingest.Republisher{RabbitMQ: &ingest.RabbitMQConn{URL: testenv.RabbitURL()}}), nil)
	alice := e.client().signIn("alice", aliceToken)
	audits := len(auditRows(t, e.db.Pool))

	_, page := alice.get("/redrive?preview=1&kind=inbox&consumer=" + url.QueryEscape(consumer))
	if !strings.Contains(page, "Would replay 2 events") || !strings.Contains(page, `name="consumer" value="`+consumer+`"`) ||
		!strings.Contains(page, `name="kind" value="inbox"`) {
		t.Errorf("preview of the dead letters:\n%s", page)
	}
	if replayed() != 0 || r.Count(t, r.Work) != 0 || len(auditRows(t, e.db.Pool)) != audits {
		t.Fatalf("the preview changed something: %d replayed, %d sent, %d audit rows", replayed(), r.Count(t, r.Work),
			len(auditRows(t, e.db.Pool))-audits)
	}
	// A consumer named means inbox, whatever kind says.
	_, page = alice.get("/redrive?preview=1&kind=outbox&consumer=" + url.QueryEscape(consumer))
	if !strings.Contains(page, "Would replay 2 events") {
		t.Errorf("a consumer with kind=outbox:\n%s", page)
	}

	resp, body := alice.post("/redrive", url.Values{"kind": {"inbox"}, "consumer": {consumer}, "reason": {"INC-11 partner fixed"},
		"expected": {"2"}, "rate": {"500"}})
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "2 replayed") {
		t.Fatalf("redrive: %d\n%s", resp.StatusCode, body)
	}
	got := map[string]bool{}
	for range 2 {
		got[string(r.Take(t).Body)] = true
	}
	if !got["first"] || !got["second"] || replayed() != 2 {
		t.Errorf("after the redrive: sent %v, %d rows replayed", got, replayed())
	}
	rows := auditRows(t, e.db.Pool)[audits:]
	if len(rows) != 2 {
		t.Fatalf("%d audit rows, want 2: %+v", len(rows), rows)
	}
	for _, a := range rows {
		if a.Actor != "alice" || a.Action != "replay" || a.Reason != "INC-11 partner fixed" {
			t.Errorf("audit row %+v", a)
		}
	}
}
