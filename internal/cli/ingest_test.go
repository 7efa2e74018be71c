package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// The whole operator story on the command line: a consumer rejects a
// message, RabbitMQ dead-letters it, dlq ingest copies it, dlq list and
// show explain it (source, x-death), dlq replay sends it back to the
// original exchange where the consumer's queue receives it, and drop and
// restore work on another one; every action is audited.
func TestDLQIngestRabbitMQ(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	conn := testenv.Rabbit(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	name := testenv.UniqueName("cli-ingest")
	ex, dlx, work, dlq := name+"-ex", name+"-dlx", name+"-work", name+"-dlq"
	t.Cleanup(func() {
		ch.QueueDelete(work, false, false, false)
		ch.QueueDelete(dlq, false, false, false)
		ch.ExchangeDelete(ex, false, false)
		ch.ExchangeDelete(dlx, false, false)
	})
	for _, err := range []error{
		ch.ExchangeDeclare(ex, "direct", true, false, false, false, nil),
		ch.ExchangeDeclare(dlx, "fanout", true, false, false, false, nil),
		func() error {
			_, err := ch.QueueDeclare(work, true, false, false, false, amqp.Table{"x-dead-letter-exchange": dlx})
			return err
		}(),
		func() error { _, err := ch.QueueDeclare(dlq, true, false, false, false, nil); return err }(),
		ch.QueueBind(work, "invoices", ex, false, nil),
		ch.QueueBind(dlq, "", dlx, false, nil),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, body := range []string{`{"invoice":1}`, "\x00\xffbinary"} {
		if err := ch.PublishWithContext(ctx, ex, "invoices", false, false, amqp.Publishing{
			MessageId: fmt.Sprintf("inv-%d", i), Body: []byte(body), Headers: amqp.Table{"attempt": int32(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; {
		d, ok, err := ch.Get(work, false)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			d.Reject(false)
			i++
		}
	}
	testenv.Eventually(t, 10*time.Second, "dead letters", func() bool {
		st, err := ch.QueueDeclarePassive(dlq, true, false, false, false, nil)
		return err == nil && st.Messages == 2
	})
	env := map[string]string{"DATABASE_URL": db.URL, "RABBITMQ_URL": testenv.RabbitURL(), "OUTBOXKIT_ACTOR": "oncall-carl"}

	out, errOut, code := run(t, env, "dlq", "ingest", "--rabbitmq-queue", dlq, "--once", "--json")
	if code != 0 || !strings.Contains(out, `"ingested": 2`) {
		t.Fatalf("ingest: %d %s %s", code, out, errOut)
	}
	source := "rabbitmq:" + dlq
	out, _, code = run(t, env, "dlq", "list", "--consumer", source, "--json")
	var items []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &items) != nil || len(items) != 2 {
		t.Fatalf("list: %d %s", code, out)
	}
	var jsonRef, binRef string
	for _, it := range items {
		if it["payload_bytes"].(float64) == float64(len(`{"invoice":1}`)) {
			jsonRef = it["ref"].(string)
		} else {
			binRef = it["ref"].(string)
		}
	}
	out, _, code = run(t, env, "dlq", "show", jsonRef)
	for _, want := range []string{"ingested from    rabbitmq", "original exchange: " + ex, "original routing key: invoices",
		`"reason":"rejected"`, "consumer         " + source, `"invoice": 1`} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}

	out, errOut, code = run(t, env, "dlq", "replay", jsonRef, "--reason", "invoice service fixed")
	if code != 0 || !strings.Contains(out, jsonRef+" replayed: republished to RabbitMQ exchange") {
		t.Fatalf("replay: %d %s %s", code, out, errOut)
	}
	d, ok, err := ch.Get(work, true)
	if err != nil || !ok || string(d.Body) != `{"invoice":1}` || d.MessageId != "inv-0" || d.Headers["x-death"] != nil {
		t.Fatalf("the replayed message in %s: %v %v %+v", work, ok, err, d)
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
	out, _, code = run(t, env, "dlq", "edit", binRef, "--reason", "x", "--payload-file", "/dev/null")
	if code != 1 || !strings.Contains(out, "edit is not supported") {
		t.Errorf("edit of an ingested row: %d %s", code, out)
	}
	var actions []string
	rows, _ := db.Pool.Query(ctx, `SELECT action || ':' || actor FROM outbox.audit_log ORDER BY id`)
	for rows.Next() {
		var s string
		rows.Scan(&s)
		actions = append(actions, s)
	}
	want := "ingest:ingest:" + source + ",ingest:ingest:" + source + ",replay:oncall-carl,drop:oncall-carl,restore:oncall-carl"
	if strings.Join(actions, ",") != want {
		t.Errorf("audit log: %v", actions)
	}

	_, errOut, code = run(t, env, "dlq", "ingest", "--once")
	if code != 2 || !strings.Contains(errOut, "--rabbitmq-queue or --kafka-topic") {
		t.Errorf("ingest without a source: %d %s", code, errOut)
	}
}
