package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// rabbitTopology is a work exchange whose queues dead-letter into a DLQ,
// all with unique names, deleted when the test ends:
//
//	exchange ex --"payments"--> work (x-dead-letter-exchange dlx)
//	            --"slow"------> slow (x-message-ttl 1ms, dead-letters to dlx)
//	dlx (fanout) --> dlq
type rabbitTopology struct {
	ch                       *amqp.Channel
	ex, dlx, work, slow, dlq string
	conn                     *amqp.Connection
}

func newRabbitTopology(t *testing.T) *rabbitTopology {
	t.Helper()
	conn := testenv.Rabbit(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	name := testenv.UniqueName("ingest")
	r := &rabbitTopology{ch: ch, conn: conn, ex: name + "-ex", dlx: name + "-dlx", work: name + "-work", slow: name + "-slow", dlq: name + "-dlq"}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(ch.ExchangeDeclare(r.ex, "topic", true, false, false, false, nil))
	must(ch.ExchangeDeclare(r.dlx, "fanout", true, false, false, false, nil))
	_, err = ch.QueueDeclare(r.work, true, false, false, false, amqp.Table{"x-dead-letter-exchange": r.dlx})
	must(err)
	_, err = ch.QueueDeclare(r.slow, true, false, false, false, amqp.Table{"x-dead-letter-exchange": r.dlx, "x-message-ttl": int32(1)})
	must(err)
	_, err = ch.QueueDeclare(r.dlq, true, false, false, false, nil)
	must(err)
	must(ch.QueueBind(r.work, "payments", r.ex, false, nil))
	must(ch.QueueBind(r.slow, "slow", r.ex, false, nil))
	must(ch.QueueBind(r.dlq, "", r.dlx, false, nil))
	t.Cleanup(func() {
		c, err := amqp.Dial(testenv.RabbitURL())
		if err != nil {
			return
		}
		defer c.Close()
		ch, err := c.Channel()
		if err != nil {
			return
		}
		for _, q := range []string{r.work, r.slow, r.dlq} {
			ch.QueueDelete(q, false, false, false)
		}
		ch.ExchangeDelete(r.ex, false, false)
		ch.ExchangeDelete(r.dlx, false, false)
	})
	return r
}

func (r *rabbitTopology) publish(t *testing.T, key string, p amqp.Publishing) {
	t.Helper()
	if err := r.ch.PublishWithContext(context.Background(), r.ex, key, false, false, p); err != nil {
		t.Fatal(err)
	}
}

// rejectAll takes n messages from the work queue and rejects them without
// requeue: RabbitMQ dead-letters each with x-death reason "rejected".
func (r *rabbitTopology) rejectAll(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; {
		d, ok, err := r.ch.Get(r.work, false)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err := d.Reject(false); err != nil {
			t.Fatal(err)
		}
		i++
	}
}

func (r *rabbitTopology) count(t *testing.T, q string) int {
	t.Helper()
	st, err := r.ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st.Messages
}

func (r *rabbitTopology) waitFor(t *testing.T, q string, n int) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "messages in "+q, func() bool { return r.count(t, q) == n })
}

// A message whose headers hold every awkward shape: a nested table, bytes
// that are not text, a string that is not UTF-8, a NUL, an array, numbers
// of several widths, a timestamp, a decimal.
func awkwardMessage(id string, body []byte) amqp.Publishing {
	return amqp.Publishing{
		MessageId: id, ContentType: "application/octet-stream", Type: "payout.created", CorrelationId: "flow-7",
		DeliveryMode: amqp.Persistent, Priority: 3, AppId: "payments", Timestamp: time.Unix(1767225600, 0),
		Headers: amqp.Table{
			"tenant":                   "t1",
			"binary":                   []byte{0xff, 0x00, 0xfe},
			"latin1":                   "caf\xe9",
			"with-nul":                 "a\x00b",
			"nested":                   amqp.Table{"depth": amqp.Table{"x": int32(7), "blob": []byte{1, 2, 3}}, "list": []any{"a", int64(1 << 40), false}},
			"i16":                      int16(-3),
			"f64":                      float64(2.5),
			"when":                     time.Unix(1767225601, 0),
			"amount":                   amqp.Decimal{Scale: 2, Value: 12345},
			"\xffbad-name":             "v",
			"cloudEvents:partitionkey": "payout-9",
			"cloudEvents:sequence":     "4",
		},
		Body: body,
	}
}

type bundle struct {
	db    *testenv.DB
	store *Store
	topo  *rabbitTopology
}

func newBundle(t *testing.T) *bundle {
	t.Helper()
	db := testenv.NewDB(t)
	s, err := NewStore(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{db: db, store: s, topo: newRabbitTopology(t)}
}

// operator is the operator tools' store on the bundle's database, sending
// broker dead letters back through rep.
func (b *bundle) operator(t *testing.T, rep *Republisher) *ops.Store {
	t.Helper()
	s, err := ops.New(b.db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	return s.WithRepublisher(rep)
}

func (b *bundle) rabbitCfg() RabbitMQConfig {
	return RabbitMQConfig{RabbitMQConn: RabbitMQConn{URL: testenv.RabbitURL()}, Queue: b.topo.dlq, Once: true}
}

func (b *bundle) rows(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM inbox.dead_letters`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

type storedRow struct {
	ID         int64
	EventID    uuid.UUID
	Consumer   string
	Topic, Key string
	Sequence   *int64
	Type       *string
	Payload    []byte
	Headers    []map[string]any
	Error      string
	Class      string
	Attempts   int
	Status     string
	From       string
	Source     map[string]any
}

func (b *bundle) row(t *testing.T, where string, args ...any) storedRow {
	t.Helper()
	var r storedRow
	err := b.db.Pool.QueryRow(context.Background(), `SELECT id, event_id, consumer, topic, key, sequence, type, payload, headers,
	       error, error_class, attempts, status, ingested_from, source FROM inbox.dead_letters WHERE `+where, args...).
		Scan(&r.ID, &r.EventID, &r.Consumer, &r.Topic, &r.Key, &r.Sequence, &r.Type, &r.Payload, &r.Headers, &r.Error,
			&r.Class, &r.Attempts, &r.Status, &r.From, &r.Source)
	if err != nil {
		t.Fatalf("row %s %v: %v", where, args, err)
	}
	return r
}

func header(r storedRow, name string) map[string]any {
	for _, h := range r.Headers {
		if h["name"] == name {
			return h
		}
	}
	return nil
}

// Real x-death headers (a consumer's reject, a TTL expiry), awkward headers
// and payloads: each dead letter becomes one faithful row with its audit
// entry, and a second run inserts nothing.
func TestRabbitMQIngest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t)
	ids := []string{uuid.NewString(), uuid.NewString(), "not-a-uuid-7"}
	bodies := [][]byte{{0xde, 0xad, 0x00, 0xbe, 0xef}, []byte(`{"amount":1}`), {}}
	for i := range ids {
		b.topo.publish(t, "payments", awkwardMessage(ids[i], bodies[i]))
	}
	b.topo.rejectAll(t, 3)
	b.topo.publish(t, "slow", amqp.Publishing{MessageId: "slow-1", Body: []byte("late"), Expiration: "60000"})
	// Published straight into the dead-letter queue: no x-death at all.
	if err := b.topo.ch.PublishWithContext(ctx, "", b.topo.dlq, false, false, amqp.Publishing{Body: []byte("orphan\xff")}); err != nil {
		t.Fatal(err)
	}
	b.topo.waitFor(t, b.topo.dlq, 5)

	res, err := b.store.IngestRabbitMQ(ctx, b.rabbitCfg())
	if err != nil || res.Ingested != 5 || res.Duplicates != 0 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	if n := b.topo.count(t, b.topo.dlq); n != 0 {
		t.Fatalf("%d messages left in the dead-letter queue", n)
	}

	r := b.row(t, "event_id = $1", uuid.MustParse(ids[0]))
	if r.Consumer != "rabbitmq:"+b.topo.dlq || r.From != "rabbitmq" || r.Status != "parked" || r.Class != "permanent" ||
		r.Topic != "payments" || r.Key != "payout-9" || r.Sequence == nil || *r.Sequence != 4 || *r.Type != "payout.created" {
		t.Errorf("row: %+v", r)
	}
	if !bytes.Equal(r.Payload, bodies[0]) {
		t.Errorf("payload %x, want %x", r.Payload, bodies[0])
	}
	if !strings.Contains(r.Error, "rejected") || !strings.Contains(r.Error, b.topo.work) || !strings.Contains(r.Error, b.topo.ex) {
		t.Errorf("error: %s", r.Error)
	}
	xd := header(r, "x-death")
	if xd == nil || !strings.Contains(xd["value"].(string), `"reason":"rejected"`) || !strings.Contains(xd["value"].(string), `"routing-keys":["payments"]`) {
		t.Errorf("x-death header: %v", xd)
	}
	if h := header(r, "binary"); h == nil || !reflect.DeepEqual(h["value"], map[string]any{"base64": "/wD+"}) {
		t.Errorf("binary header: %v", h)
	}
	if h := header(r, "with-nul"); h == nil || !reflect.DeepEqual(h["value"], map[string]any{"base64": "YQBi"}) {
		t.Errorf("NUL header: %v", h)
	}
	if r.Source["original_exchange"] != b.topo.ex || r.Source["original_routing_key"] != "payments" || r.Source["x_death"] == nil {
		t.Errorf("source: %v", r.Source)
	}
	// A message id that is not a UUID gets a stable derived event id.
	r3 := b.row(t, "event_id = $1", eventID("not-a-uuid-7", ""))
	if len(r3.Payload) != 0 {
		t.Errorf("empty payload stored as %x", r3.Payload)
	}
	slow := b.row(t, "event_id = $1", eventID("slow-1", ""))
	if slow.Class != "transient" || !strings.Contains(slow.Error, "expired") || slow.Topic != "slow" {
		t.Errorf("expired row: %+v", slow)
	}
	orphan := b.row(t, "payload = $1", []byte("orphan\xff"))
	if orphan.Class != "permanent" || !strings.Contains(orphan.Error, "without an x-death") || orphan.Topic != b.topo.dlq {
		t.Errorf("orphan row: %+v", orphan)
	}
	var audits int
	b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.audit_log WHERE action = 'ingest' AND actor = $1 AND target_kind = 'dead_letter'`,
		"ingest:rabbitmq:"+b.topo.dlq).Scan(&audits)
	if audits != 5 {
		t.Errorf("%d ingest audit entries, want 5", audits)
	}

	res, err = b.store.IngestRabbitMQ(ctx, b.rabbitCfg())
	if err != nil || res != (Result{}) || b.rows(t) != 5 {
		t.Fatalf("second run: %+v %v, %d rows", res, err, b.rows(t))
	}
}

// A crash after the row is committed and before the broker's ack: the
// broker delivers the message again and that delivery inserts nothing.
func TestRabbitMQReingestIsNoOp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t)
	b.topo.publish(t, "payments", awkwardMessage(uuid.NewString(), []byte("x")))
	b.topo.rejectAll(t, 1)
	b.topo.waitFor(t, b.topo.dlq, 1)

	ch, err := b.topo.conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	d, ok, err := ch.Get(b.topo.dlq, false)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, inserted, err := b.store.Ingest(ctx, rabbitLetter("rabbitmq:"+b.topo.dlq, b.topo.dlq, &d, time.Now())); err != nil || !inserted {
		t.Fatal(inserted, err)
	}
	ch.Close() // the "crash": never acknowledged, back in the queue
	b.topo.waitFor(t, b.topo.dlq, 1)

	res, err := b.store.IngestRabbitMQ(ctx, b.rabbitCfg())
	if err != nil || res.Ingested != 0 || res.Duplicates != 1 {
		t.Fatalf("re-ingest: %+v %v", res, err)
	}
	if b.rows(t) != 1 || b.topo.count(t, b.topo.dlq) != 0 {
		t.Fatalf("%d rows, %d in queue", b.rows(t), b.topo.count(t, b.topo.dlq))
	}
}

// The database goes away while the ingester runs: what it could not commit
// it does not acknowledge, so once the database is back every dead letter
// is stored exactly once and the queue is empty.
func TestRabbitMQAckAfterCommit(t *testing.T) {
	t.Parallel()
	b := newBundle(t)
	u, err := url.Parse(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	upstream := u.Host
	if u.Port() == "" {
		upstream = net.JoinHostPort(u.Hostname(), "5432")
	}
	px := testenv.Proxy(t, "postgres", upstream)
	u.Host = px.Listen
	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := NewStore(pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var res Result
	var runErr error
	wg.Go(func() {
		c := b.rabbitCfg()
		c.Once, c.ReconnectMax = false, 200*time.Millisecond
		res, runErr = store.IngestRabbitMQ(ctx, c)
	})
	defer func() { cancel(); wg.Wait() }()

	const first, second = 3, 4
	for i := 0; i < first; i++ {
		b.topo.publish(t, "payments", amqp.Publishing{MessageId: uuid.NewString(), Body: []byte{byte(i)}})
	}
	b.topo.rejectAll(t, first)
	testenv.Eventually(t, 10*time.Second, "first rows", func() bool { return b.rows(t) == first })

	px.Stop() // the database is unreachable for the ingester
	for i := 0; i < second; i++ {
		b.topo.publish(t, "payments", amqp.Publishing{MessageId: uuid.NewString(), Body: []byte{0xff, byte(i)}})
	}
	b.topo.rejectAll(t, second)
	// Nothing is acknowledged while nothing can be committed.
	time.Sleep(time.Second)
	if n := b.topo.count(t, b.topo.dlq); n != second || b.rows(t) != first {
		t.Fatalf("during the outage: %d in the queue (want %d), %d rows", n, second, b.rows(t))
	}
	if err := px.Start(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "all rows", func() bool { return b.rows(t) == first+second })
	cancel()
	wg.Wait()
	if runErr != nil {
		t.Fatal(runErr)
	}
	var distinct int
	b.db.Pool.QueryRow(context.Background(), `SELECT count(DISTINCT event_id) FROM inbox.dead_letters`).Scan(&distinct)
	if distinct != first+second || b.topo.count(t, b.topo.dlq) != 0 || res.Ingested != first+second {
		t.Fatalf("%d distinct rows, %d left in the queue, result %+v", distinct, b.topo.count(t, b.topo.dlq), res)
	}
}

// A replay by the operator tools, through the Republisher, sends the
// original bytes, properties and headers (without the broker's x-death)
// back to the queue that dead-lettered them (the work queue), through the
// default exchange; the row is marked replayed with its audit entry. Drop
// and restore are audited too; an unroutable or destination-less message is
// not replayed and stays parked.
func TestRabbitMQReplayDropRestore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t)
	id := uuid.NewString()
	sent := awkwardMessage(id, []byte{0x00, 0xff, 'p'})
	b.topo.publish(t, "payments", sent)
	b.topo.publish(t, "payments", amqp.Publishing{MessageId: uuid.NewString(), Body: []byte("two")})
	b.topo.rejectAll(t, 2)
	if err := b.topo.ch.PublishWithContext(ctx, "", b.topo.dlq, false, false, amqp.Publishing{Body: []byte("orphan")}); err != nil {
		t.Fatal(err)
	}
	b.topo.waitFor(t, b.topo.dlq, 3)
	if res, err := b.store.IngestRabbitMQ(ctx, b.rabbitCfg()); err != nil || res.Ingested != 3 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	row := b.row(t, "event_id = $1", uuid.MustParse(id))
	store := b.operator(t, &Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}})
	a := ops.Action{Actor: "oncall-ann", Reason: "consumer fixed in 1.4.2"}
	ref := func(id int64) ops.Ref { return ops.Ref{Kind: ops.KindInbox, ID: id} }

	out, err := store.Replay(ctx, a, ref(row.ID))
	if err != nil || !strings.Contains(out.Note, fmt.Sprintf("queue %q", b.topo.work)) {
		t.Fatalf("replay: %+v %v", out, err)
	}
	var got amqp.Delivery
	testenv.Eventually(t, 10*time.Second, "the replayed message in the work queue", func() bool {
		d, ok, err := b.topo.ch.Get(b.topo.work, true)
		if err != nil {
			t.Fatal(err)
		}
		got = d
		return ok
	})
	if !bytes.Equal(got.Body, sent.Body) || got.MessageId != id || got.Type != sent.Type || got.CorrelationId != sent.CorrelationId ||
		got.Priority != sent.Priority || !got.Timestamp.Equal(sent.Timestamp) || got.Exchange != "" || got.RoutingKey != b.topo.work {
		t.Errorf("replayed delivery: %+v", got)
	}
	if _, ok := got.Headers["x-death"]; ok {
		t.Errorf("replayed message still carries x-death: %v", got.Headers["x-death"])
	}
	for k, want := range sent.Headers {
		if !reflect.DeepEqual(got.Headers[k], want) {
			t.Errorf("header %q: got %#v, want %#v", k, got.Headers[k], want)
		}
	}
	if r := b.row(t, "id = $1", row.ID); r.Status != "replayed" {
		t.Errorf("status after replay: %s", r.Status)
	}
	var actor, reason string
	var details map[string]any
	if err := b.db.Pool.QueryRow(ctx, `SELECT actor, reason, details FROM outbox.audit_log WHERE action = 'replay' AND $1 = ANY(target_ids)`,
		id).Scan(&actor, &reason, &details); err != nil || actor != a.Actor || reason != a.Reason {
		t.Errorf("replay audit: %q %q %v %v", actor, reason, details, err)
	}
	if _, err := store.Replay(ctx, a, ref(row.ID)); !errors.Is(err, ops.ErrWrongStatus) {
		t.Errorf("second replay: %v", err)
	}

	// Drop, then restore, then unroutable: the queue that dead-lettered it
	// is gone.
	two := b.row(t, "payload = $1", []byte("two"))
	if _, err := store.Drop(ctx, a, ref(two.ID)); err != nil || b.row(t, "id = $1", two.ID).Status != "dropped" {
		t.Fatalf("drop: %v", err)
	}
	if _, err := store.Restore(ctx, a, ref(two.ID)); err != nil || b.row(t, "id = $1", two.ID).Status != "parked" {
		t.Fatalf("restore: %v", err)
	}
	var actions []string
	rows, _ := b.db.Pool.Query(ctx, `SELECT action FROM outbox.audit_log WHERE $1 = ANY(target_ids) ORDER BY id`, two.EventID.String())
	for rows.Next() {
		var s string
		rows.Scan(&s)
		actions = append(actions, s)
	}
	if !reflect.DeepEqual(actions, []string{"ingest", "drop", "restore"}) {
		t.Errorf("audit of the dropped and restored row: %v", actions)
	}
	if _, err := b.topo.ch.QueueDelete(b.topo.work, false, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Replay(ctx, a, ref(two.ID)); err == nil || !strings.Contains(err.Error(), "unroutable") {
		t.Errorf("replay to a queue that is gone: %v", err)
	}
	if r := b.row(t, "id = $1", two.ID); r.Status != "parked" {
		t.Errorf("an unroutable replay changed the row to %s", r.Status)
	}
	orphan := b.row(t, "payload = $1", []byte("orphan"))
	if _, err := store.Replay(ctx, a, ref(orphan.ID)); !errors.Is(err, ErrNoTarget) {
		t.Errorf("replay without x-death: %v", err)
	}
	// An ingest source may not be named like an inbox consumer.
	if _, err := b.db.Pool.Exec(ctx, `INSERT INTO inbox.dead_letters (consumer, consumer_version, topic, payload, error, error_class,
	    attempts, status, first_failed_at, last_failed_at) VALUES ('billing', '1', 't', '', 'e', 'permanent', 1, 'parked', now(), now())`); err != nil {
		t.Fatal(err)
	}
	if err := b.store.CheckSource(ctx, "billing"); !errors.Is(err, ErrSourceInUse) {
		t.Errorf("source named like a consumer: %v", err)
	}
}
