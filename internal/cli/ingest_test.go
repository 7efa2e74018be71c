package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// without returns a copy of env without keys.
func without(env map[string]string, keys ...string) map[string]string {
	c := maps.Clone(env)
	for _, k := range keys {
		delete(c, k)
	}
	return c
}

// The whole operator story on the command line: a consumer rejects a
// message, RabbitMQ dead-letters it, dlq ingest copies it, dlq list and
// show explain it (source, x-death), dlq replay sends it back to the
// original exchange where the consumer's queue receives it; drop, restore
// and edit work on another one (the edit sends a corrected copy as a new
// message and keeps the original row); every action is audited.
func TestDLQIngestRabbitMQ(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	r := testenv.NewRabbitDLQ(t, "cli-ingest")
	var msgs []amqp.Publishing
	for i, body := range []string{`{"invoice":1}`, "\x00\xffbinary"} {
		msgs = append(msgs, amqp.Publishing{MessageId: fmt.Sprintf("inv-%d", i), Body: []byte(body), Headers: amqp.Table{"attempt": int32(i)}})
	}
	r.DeadLetter(t, msgs...)
	env := map[string]string{"DATABASE_URL": db.URL, "RABBITMQ_URL": testenv.RabbitURL(), "OUTBOXKIT_ACTOR": "oncall-carl"}

	out, errOut, code := run(t, env, "dlq", "ingest", "--rabbitmq-queue", r.DLQ, "--once", "--json")
	if code != 0 || !strings.Contains(out, `"ingested": 2`) {
		t.Fatalf("ingest: %d %s %s", code, out, errOut)
	}
	source := "rabbitmq:" + r.DLQ
	out, _, code = run(t, env, "dlq", "list", "--consumer", source, "--json")
	var items []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &items) != nil || len(items) != 2 {
		t.Fatalf("list: %d %s", code, out)
	}
	var jsonRef, binRef, binEvent string
	for _, it := range items {
		if it["ingested_from"] != "rabbitmq" {
			t.Errorf("list item without its broker: %v", it)
		}
		if it["payload_bytes"].(float64) == float64(len(`{"invoice":1}`)) {
			jsonRef = it["ref"].(string)
		} else {
			binRef, binEvent = it["ref"].(string), it["event_id"].(string)
		}
	}
	out, _, code = run(t, env, "dlq", "show", jsonRef)
	for _, want := range []string{"ingested from    rabbitmq", "original exchange: " + r.Exchange, "original routing key: invoices",
		`"reason":"rejected"`, "consumer         " + source, `"invoice": 1`} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}

	out, errOut, code = run(t, env, "dlq", "replay", jsonRef, "--reason", "invoice service fixed")
	if code != 0 || !strings.Contains(out, jsonRef+` replayed: republished to RabbitMQ queue "`+r.Work+`" (through the default exchange`) {
		t.Fatalf("replay: %d %s %s", code, out, errOut)
	}
	if d := r.Take(t); string(d.Body) != `{"invoice":1}` || d.MessageId != "inv-0" || d.Headers["x-death"] != nil {
		t.Fatalf("the replayed message in %s: %+v", r.Work, d)
	}
	out, _, code = run(t, env, "dlq", "replay", jsonRef, "--reason", "again")
	if code != 1 || !strings.Contains(out, "failed") {
		t.Errorf("second replay: %d %s", code, out)
	}
	if out, errOut, code = run(t, env, "dlq", "drop", binRef, "--reason", "test data"); code != 0 || !strings.Contains(out, "dropped") {
		t.Fatalf("drop: %d %s %s", code, out, errOut)
	}
	if out, errOut, code = run(t, env, "dlq", "restore", binRef, "--reason", "not test data"); code != 0 || !strings.Contains(out, "restored") {
		t.Fatalf("restore: %d %s %s", code, out, errOut)
	}

	// Edit: without a broker it says which flag it needs and sends nothing;
	// with one, a corrected copy goes to the original exchange as a new
	// message that names the original, and the row keeps the original.
	fixed := []byte(`{"invoice":2,"note":"corrected"}`)
	file := filepath.Join(t.TempDir(), "fixed.json")
	if err := os.WriteFile(file, fixed, 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, code = run(t, without(env, "RABBITMQ_URL"), "dlq", "edit", binRef, "--reason", "amount corrected", "--payload-file", file)
	if code != 1 || !strings.Contains(out, "pass --rabbitmq-url") || r.Count(t, r.Work) != 0 {
		t.Errorf("edit without RabbitMQ: %d %s", code, out)
	}
	out, errOut, code = run(t, env, "dlq", "edit", binRef, "--reason", "amount corrected", "--payload-file", file, "--json")
	var outs []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &outs) != nil || len(outs) != 1 || outs[0]["result"] != "edited" {
		t.Fatalf("edit: %d %s %s", code, out, errOut)
	}
	copyID, _ := outs[0]["new_event_id"].(string)
	d := r.Take(t)
	if string(d.Body) != string(fixed) || copyID == "" || d.MessageId != copyID || d.Headers["outboxkit-edit-of"] != binEvent ||
		d.Headers["attempt"] != int32(1) || d.Headers["x-death"] != nil {
		t.Errorf("the corrected copy in %s: %+v (copy %s of %s)", r.Work, d, copyID, binEvent)
	}
	var status string
	var payload, edited []byte
	db.Pool.QueryRow(ctx, `SELECT status, payload, edited_payload FROM inbox.dead_letters WHERE event_id = $1`, binEvent).
		Scan(&status, &payload, &edited)
	if status != "edited" || string(payload) != "\x00\xffbinary" || string(edited) != string(fixed) {
		t.Errorf("the edited row: %s %q %q", status, payload, edited)
	}
	sum := sha256.Sum256(fixed)
	var before, after, details map[string]any
	db.Pool.QueryRow(ctx, `SELECT before, after, details FROM outbox.audit_log WHERE action = 'edit'`).Scan(&before, &after, &details)
	if before["status"] != "parked" || after["status"] != "edited" || details["edited_payload_sha256"] != hex.EncodeToString(sum[:]) ||
		details["new_event_id"] != copyID || details["edit_of"] != binEvent || details["republished_to"] == nil {
		t.Errorf("edit audit: before %v after %v details %v", before, after, details)
	}
	for _, snapshot := range []map[string]any{before, after} {
		for _, k := range []string{"payload", "edited_payload", "headers"} {
			if _, ok := snapshot[k]; ok {
				t.Errorf("the audit snapshot holds %s: %v", k, snapshot)
			}
		}
	}
	out, _, code = run(t, env, "dlq", "edit", binRef, "--reason", "again", "--payload-file", file)
	if code != 1 || !strings.Contains(out, "is edited, only parked") {
		t.Errorf("second edit: %d %s", code, out)
	}

	var actions []string
	rows, _ := db.Pool.Query(ctx, `SELECT action || ':' || actor FROM outbox.audit_log ORDER BY id`)
	for rows.Next() {
		var s string
		rows.Scan(&s)
		actions = append(actions, s)
	}
	want := "ingest:ingest:" + source + ",ingest:ingest:" + source + ",replay:oncall-carl,drop:oncall-carl,restore:oncall-carl,edit:oncall-carl"
	if strings.Join(actions, ",") != want {
		t.Errorf("audit log: %v", actions)
	}

	_, errOut, code = run(t, env, "dlq", "ingest", "--once")
	if code != 2 || !strings.Contains(errOut, "--rabbitmq-queue or --kafka-topic") {
		t.Errorf("ingest without a source: %d %s", code, errOut)
	}
}

// Bulk redrive of broker dead letters from RabbitMQ and Kafka: the dry run
// says where each would go and changes nothing; without the broker flags
// the real run refuses before sending anything and names the flag; with
// them it sends each back to its origin in key order, rate-limited with
// progress, resolves the rows and audits every replay. With the two-person
// rule on, the redrive waits for a second operator, who needs the broker
// flags too.
func TestDLQRedriveIngested(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	r := testenv.NewRabbitDLQ(t, "cli-ingest")
	k := testenv.NewKafka(t)
	orig, dlt := testenv.UniqueName("ledger"), testenv.UniqueName("ledger-dlt")
	k.CreateTopic(t, orig, 1)
	k.CreateTopic(t, dlt, 1)

	// Keys k-2 then k-1 from RabbitMQ (so ids and key order differ), k-3
	// from Kafka.
	invoice := func(key, body string) amqp.Publishing {
		return amqp.Publishing{Body: []byte(body), Headers: amqp.Table{"cloudEvents:partitionkey": key, "cloudEvents:sequence": "1"}}
	}
	r.DeadLetter(t, invoice("k-2", `{"n":2}`), invoice("k-1", `{"n":1}`))
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: dlt, Key: []byte("k-3"), Value: []byte(`{"n":3}`), Headers: []kgo.RecordHeader{
		{Key: "outboxkit-dlt-original-topic", Value: []byte(orig)}, {Key: "outboxkit-dlt-error", Value: []byte("ledger closed")}}}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	kafkaFlag := []string{"--kafka-brokers", strings.Join(k.Brokers, ",")}
	env := map[string]string{"DATABASE_URL": db.URL, "RABBITMQ_URL": testenv.RabbitURL(), "OUTBOXKIT_ACTOR": "oncall-dan"}
	noBrokers := without(env, "RABBITMQ_URL")
	if out, errOut, code := run(t, env, "dlq", "ingest", "--rabbitmq-queue", r.DLQ, "--once"); code != 0 {
		t.Fatalf("ingest from RabbitMQ: %s %s", out, errOut)
	}
	if out, errOut, code := run(t, env, append([]string{"dlq", "ingest", "--kafka-topic", dlt, "--once"}, kafkaFlag...)...); code != 0 {
		t.Fatalf("ingest from Kafka: %s %s", out, errOut)
	}
	idOf := func(key string) string {
		var id int64
		if err := db.Pool.QueryRow(ctx, `SELECT id FROM inbox.dead_letters WHERE key = $1`, key).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("i:%d", id)
	}
	statuses := func() string {
		var s string
		db.Pool.QueryRow(ctx, `SELECT string_agg(key || '=' || status, ',' ORDER BY key) FROM inbox.dead_letters`).Scan(&s)
		return s
	}
	audits := func(action string) int {
		var n int
		db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.audit_log WHERE action = $1`, action).Scan(&n)
		return n
	}
	kafkaEnd := func() int64 {
		offs, err := kadm.NewClient(cl).ListEndOffsets(ctx, orig)
		if err != nil {
			t.Fatal(err)
		}
		o, _ := offs.Lookup(orig, 0)
		return o.Offset
	}
	unchanged := func(what string) {
		t.Helper()
		if s := statuses(); s != "k-1=parked,k-2=parked,k-3=parked" || audits("replay") != 0 || r.Count(t, r.Work) != 0 || kafkaEnd() != 0 {
			t.Fatalf("%s changed something: %s, %d replays audited, %d in %s, Kafka end offset %d", what, s, audits("replay"),
				r.Count(t, r.Work), r.Work, kafkaEnd())
		}
	}

	out, errOut, code := run(t, noBrokers, "dlq", "redrive", "--kind", "inbox", "--dry-run")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	wantDry := []string{
		idOf("k-3") + ` would replay: sent back to Kafka topic "` + orig + `" (key "k-3", kafka:` + dlt,
		idOf("k-1") + ` would replay: sent back to RabbitMQ queue "` + r.Work + `" (through the default exchange: no other queue gets it) (key "k-1", rabbitmq:` + r.DLQ + `, permanent: `,
		idOf("k-2") + ` would replay: sent back to RabbitMQ queue "` + r.Work + `" (through the default exchange: no other queue gets it) (key "k-2", `,
	}
	if code != 0 || len(lines) != 3 {
		t.Fatalf("dry run: %d %s %s", code, out, errOut)
	}
	for i, want := range wantDry {
		if !strings.HasPrefix(lines[i], want) {
			t.Errorf("dry run line %d:\n%s\nwant it to start with\n%s", i, lines[i], want)
		}
	}
	if !strings.HasSuffix(lines[0], "the real run needs --kafka-brokers") || !strings.HasSuffix(lines[1], "the real run needs --rabbitmq-url") {
		t.Errorf("the dry run does not say which flags the real run needs:\n%s", out)
	}
	if !strings.Contains(lines[0], "every consumer group of the topic reads it again") || strings.Contains(lines[1], "consumer group") {
		t.Errorf("the dry run does not say that a Kafka replay reaches every consumer group:\n%s", out)
	}
	unchanged("the dry run")

	_, errOut, code = run(t, noBrokers, "dlq", "redrive", "--kind", "inbox", "--reason", "ledger reopened")
	if code != 2 || !strings.Contains(errOut, idOf("k-3")+" came from Kafka: pass --kafka-brokers") || !strings.Contains(errOut, "nothing ran") {
		t.Errorf("redrive without brokers: %d %s", code, errOut)
	}
	unchanged("a redrive without brokers")

	out, errOut, code = run(t, env, append([]string{"dlq", "redrive", "--kind", "inbox", "--reason", "ledger reopened", "--rate", "200"}, kafkaFlag...)...)
	if code != 0 {
		t.Fatalf("redrive: %d %s %s", code, out, errOut)
	}
	lines = strings.Split(strings.TrimSpace(out), "\n")
	for i, key := range []string{"k-3", "k-1", "k-2"} {
		if len(lines) != 3 || !strings.HasPrefix(lines[i], idOf(key)+" replayed: republished to ") {
			t.Fatalf("redrive output, line %d should be %s replayed:\n%s", i, idOf(key), out)
		}
	}
	if !strings.Contains(errOut, "redrive: 3/3") {
		t.Errorf("no progress: %q", errOut)
	}
	// Back at the origin, in key order.
	if a, b := r.Take(t), r.Take(t); string(a.Body) != `{"n":1}` || string(b.Body) != `{"n":2}` || a.Headers["x-death"] != nil {
		t.Errorf("in %s: %q then %q", r.Work, a.Body, b.Body)
	}
	if recs := k.Records(t, orig, 1, 10*time.Second); len(recs) != 1 || string(recs[0].Key) != "k-3" || string(recs[0].Value) != `{"n":3}` {
		t.Errorf("in %s: %v", orig, recs)
	}
	if s := statuses(); s != "k-1=replayed,k-2=replayed,k-3=replayed" {
		t.Errorf("rows after the redrive: %s", s)
	}
	var n int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.audit_log WHERE action = 'replay' AND actor = 'oncall-dan'
	    AND reason = 'ledger reopened' AND details->'republished_to'->>'broker' = details->>'ingested_from'`).Scan(&n)
	if n != 3 {
		t.Errorf("%d replays audited with where they went, want 3", n)
	}

	// The two-person rule: the redrive is an approval; the approver needs
	// the broker flags, and runs it once.
	r.DeadLetter(t, invoice("k-4", `{"n":4}`))
	if out, errOut, code := run(t, env, "dlq", "ingest", "--rabbitmq-queue", r.DLQ, "--once"); code != 0 {
		t.Fatalf("ingest: %s %s", out, errOut)
	}
	if _, errOut, code := run(t, env, "dlq", "settings", "--two-person-rule", "on", "--reason", "SOX"); code != 0 {
		t.Fatalf("settings: %s", errOut)
	}
	alice, bob := maps.Clone(env), maps.Clone(env)
	alice["OUTBOXKIT_ACTOR"], bob["OUTBOXKIT_ACTOR"] = "alice", "bob"
	out, _, code = run(t, alice, "dlq", "redrive", "--consumer", "rabbitmq:"+r.DLQ, "--reason", "k-4 fixed")
	if code != 0 || !strings.Contains(out, "approval #1 pending (two-person rule): redrive "+idOf("k-4")) || r.Count(t, r.Work) != 0 {
		t.Fatalf("redrive with the rule on: %d %s", code, out)
	}
	_, errOut, code = run(t, without(bob, "RABBITMQ_URL"), "dlq", "approve", "1", "--reason", "checked")
	if code != 2 || !strings.Contains(errOut, "approval 1 stays pending: "+idOf("k-4")+" came from RabbitMQ: pass --rabbitmq-url") {
		t.Errorf("approval without RabbitMQ: %d %s", code, errOut)
	}
	out, errOut, code = run(t, bob, "dlq", "approve", "1", "--reason", "checked")
	if code != 0 || !strings.Contains(out, idOf("k-4")+" replayed: republished to RabbitMQ") {
		t.Fatalf("approve: %d %s %s", code, out, errOut)
	}
	if d := r.Take(t); string(d.Body) != `{"n":4}` {
		t.Errorf("in %s: %q", r.Work, d.Body)
	}
	var who string
	db.Pool.QueryRow(ctx, `SELECT actor || ' ' || (details->>'approval_id') || ' ' || (details->>'approved_by') FROM outbox.audit_log
	    WHERE action = 'replay' AND $1 = target_ids[1]`, strings.TrimPrefix(idOf("k-4"), "i:")).Scan(&who)
	if who != "alice 1 bob" {
		t.Errorf("the approved replay is audited as %q, want alice's, approval 1 by bob", who)
	}

	// A replay of several refs is a bulk action, as a redrive is: under
	// the rule an approval, and without it rate-limited, with every broker
	// checked before anything runs.
	r.DeadLetter(t, invoice("k-5", `{"n":5}`), invoice("k-6", `{"n":6}`))
	if out, errOut, code := run(t, env, "dlq", "ingest", "--rabbitmq-queue", r.DLQ, "--once"); code != 0 {
		t.Fatalf("ingest: %s %s", out, errOut)
	}
	out, _, code = run(t, alice, "dlq", "replay", idOf("k-5"), idOf("k-6"), "--reason", "k-5, k-6 fixed")
	if code != 0 || !strings.Contains(out, "approval #2 pending (two-person rule): redrive "+idOf("k-5")+" "+idOf("k-6")) || r.Count(t, r.Work) != 0 {
		t.Fatalf("replay of two refs with the rule on: %d %s (%d in %s)", code, out, r.Count(t, r.Work), r.Work)
	}
	out, errOut, code = run(t, bob, "dlq", "approve", "2", "--reason", "checked")
	if code != 0 || strings.Count(out, " replayed: republished to RabbitMQ") != 2 {
		t.Fatalf("approve the replay of two refs: %d %s %s", code, out, errOut)
	}
	r.Take(t)
	r.Take(t)
	if _, errOut, code := run(t, env, "dlq", "settings", "--two-person-rule", "off", "--reason", "SOX audit over"); code != 0 {
		t.Fatalf("settings: %s", errOut)
	}
	r.DeadLetter(t, invoice("k-7", `{"n":7}`), invoice("k-8", `{"n":8}`))
	if out, errOut, code := run(t, env, "dlq", "ingest", "--rabbitmq-queue", r.DLQ, "--once"); code != 0 {
		t.Fatalf("ingest: %s %s", out, errOut)
	}
	_, errOut, code = run(t, noBrokers, "dlq", "replay", idOf("k-7"), idOf("k-8"), "--reason", "k-7, k-8 fixed")
	if code != 2 || !strings.Contains(errOut, "came from RabbitMQ: pass --rabbitmq-url") || !strings.Contains(errOut, "nothing ran") ||
		r.Count(t, r.Work) != 0 || !strings.Contains(statuses(), "k-7=parked,k-8=parked") {
		t.Errorf("replay of two refs without RabbitMQ: %d %s (%s)", code, errOut, statuses())
	}
	out, errOut, code = run(t, env, "dlq", "replay", idOf("k-7"), idOf("k-8"), "--reason", "k-7, k-8 fixed", "--rate", "100")
	if code != 0 || strings.Count(out, " replayed: republished to RabbitMQ") != 2 || !strings.Contains(statuses(), "k-7=replayed,k-8=replayed") {
		t.Errorf("replay of two refs: %d %s %s (%s)", code, out, errOut, statuses())
	}
}

// An allowlist that names nothing (a stray comma, blanks) would allow every
// destination, the opposite of what it was set for: refused, nothing runs.
func TestReplayAllowNamingNothingIsRefused(t *testing.T) {
	t.Parallel()
	db, env := parkedDB(t)
	var ref string
	if err := db.Pool.QueryRow(context.Background(), `SELECT 'o:' || id FROM outbox.messages WHERE status = 'parked'`).Scan(&ref); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"flag with a comma", env, []string{"dlq", "replay", ref, "--reason", "fixed", "--replay-allow", ","}},
		{"flag with blanks", env, []string{"dlq", "redrive", "--class", "unroutable", "--reason", "fixed", "--replay-allow", " "}},
		{"environment", func() map[string]string {
			e := maps.Clone(env)
			e["OUTBOXKIT_REPLAY_ALLOW"] = " , "
			return e
		}(), []string{"dlq", "replay", ref, "--reason", "fixed"}},
	} {
		_, errOut, code := run(t, tc.env, tc.args...)
		if code != 2 || !strings.Contains(errOut, "names no queue or topic") {
			t.Errorf("%s: %d %s", tc.name, code, errOut)
		}
	}
	var status string
	if err := db.Pool.QueryRow(context.Background(), `SELECT status FROM outbox.messages WHERE 'o:' || id = $1`, ref).Scan(&status); err != nil || status != "parked" {
		t.Errorf("after the refusals: %s %v", status, err)
	}
}
