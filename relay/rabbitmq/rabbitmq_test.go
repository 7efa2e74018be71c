package rabbitmq_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/internal/wire"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/rabbitmq"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// toxiproxy leaves the pipes of a link whose peer went away blocked
		// after Stop: they are the test proxy's, not the Publisher's.
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).read"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).write"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).RemoveToxic.func1"),
	)
}

// bundle is one test's exchange and queue on the real RabbitMQ, deleted when
// the test ends.
type bundle struct {
	exchange, queue string
	conn            *amqp.Connection
}

func uniqueName(t *testing.T) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-")
	return "okt." + strings.ToLower(name) + "." + hex.EncodeToString(b)
}

// setup declares the exchange the way the Publisher does, and a queue bound
// to it with each of bindKeys.
func setup(t *testing.T, bindKeys ...string) *bundle {
	t.Helper()
	b := &bundle{exchange: uniqueName(t), conn: testenv.Rabbit(t)}
	b.queue = b.exchange + ".q"
	ch := b.channel(t)
	if err := ch.ExchangeDeclare(b.exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		t.Fatalf("declare exchange: %v", err)
	}
	if _, err := ch.QueueDeclare(b.queue, false, false, false, false, nil); err != nil {
		t.Fatalf("declare queue: %v", err)
	}
	for _, k := range bindKeys {
		b.bind(t, k)
	}
	t.Cleanup(func() {
		ch, err := b.conn.Channel()
		if err != nil {
			return
		}
		defer ch.Close()
		_, _ = ch.QueueDelete(b.queue, false, false, false)
		_ = ch.ExchangeDelete(b.exchange, false, false)
	})
	return b
}

func (b *bundle) channel(t *testing.T) *amqp.Channel {
	t.Helper()
	ch, err := b.conn.Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

func (b *bundle) bind(t *testing.T, key string) {
	t.Helper()
	if err := b.channel(t).QueueBind(b.queue, key, b.exchange, false, nil); err != nil {
		t.Fatalf("bind %s to %s: %v", b.queue, key, err)
	}
}

// count is the number of messages ready in the queue. A confirmed message
// routed to this (non-durable, classic) queue is already counted.
func (b *bundle) count(t *testing.T) int {
	t.Helper()
	q, err := b.channel(t).QueueDeclarePassive(b.queue, false, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect queue: %v", err)
	}
	return q.Messages
}

// drain consumes every message of the queue, in queue order, until n
// arrived or 30s passed.
func (b *bundle) drain(t *testing.T, n int) []amqp.Delivery {
	t.Helper()
	ch := b.channel(t)
	if err := ch.Qos(500, 0, false); err != nil {
		t.Fatalf("qos: %v", err)
	}
	deliveries, err := ch.Consume(b.queue, "", false, true, false, false, nil)
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	var out []amqp.Delivery
	timeout := time.After(30 * time.Second)
	for len(out) < n {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatalf("consumer closed after %d of %d deliveries", len(out), n)
			}
			if err := d.Ack(false); err != nil {
				t.Fatalf("ack: %v", err)
			}
			out = append(out, d)
		case <-timeout:
			t.Fatalf("got %d of %d deliveries within 30s", len(out), n)
		}
	}
	return out
}

func newPublisher(t *testing.T, cfg rabbitmq.Config) *rabbitmq.Publisher {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = testenv.RabbitURL()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := rabbitmq.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func publish(t *testing.T, p *rabbitmq.Publisher, msgs []relay.Message) []relay.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := p.Publish(ctx, msgs)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if len(res) != len(msgs) {
		t.Fatalf("Publish returned %d results for %d messages", len(res), len(msgs))
	}
	return res
}

// payload is binary on purpose: NUL bytes and invalid UTF-8 must travel
// untouched.
func payload(i, size int) []byte {
	p := []byte{0x00, 0xff, 0xfe, 0xc3, 0x28, 0x00, byte(i), byte(i >> 8)}
	p = append(p, "\x00payload "+strconv.Itoa(i)+"\xed\xa0\x80"...)
	for len(p) < size {
		p = append(p, byte(len(p)*7+i))
	}
	return p
}

var created = time.Date(2026, 11, 23, 12, 0, 0, 123456789, time.UTC)

// messages builds n messages over the given number of keys, with
// per-key sequences; every tenth one has no key (unordered).
func messages(topic, keyPrefix string, n, keys, size int) []relay.Message {
	seq := map[string]int64{}
	out := make([]relay.Message, n)
	for i := range out {
		m := relay.Message{
			ID:            int64(i + 1),
			EventID:       uuid.Must(uuid.NewV7()),
			Topic:         topic,
			Type:          "payout.created",
			Version:       2,
			Payload:       payload(i, size),
			ContentType:   "application/octet-stream",
			Headers:       map[string]string{"tenant": "t1", "idx": strconv.Itoa(i)},
			CorrelationID: "flow-" + strconv.Itoa(i%13),
			CreatedAt:     created.Add(time.Duration(i) * 1500 * time.Millisecond),
			Attempt:       1,
		}
		if i%10 != 9 {
			m.Key = fmt.Sprintf("%s-%d", keyPrefix, i%keys)
			seq[m.Key]++
			m.Sequence = seq[m.Key]
		}
		if i%3 == 0 {
			m.Source = "/payments-service"
		}
		if i%5 == 0 {
			m.CausationID = "cause-" + strconv.Itoa(i)
			m.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
			m.TraceState = "congo=t61rcWkgMzE"
		}
		if i%7 == 0 {
			m.ContentType = "application/json"
			m.Version = 0
		}
		out[i] = m
	}
	return out
}

// wantHeaders is the AMQP binding of the wire format, written out by hand
// rather than computed with package wire.
func wantHeaders(m relay.Message, defaultSource string) amqp.Table {
	src := m.Source
	if src == "" {
		src = defaultSource
	}
	h := amqp.Table{
		"cloudEvents:specversion": "1.0",
		"cloudEvents:id":          m.EventID.String(),
		"cloudEvents:source":      src,
		"cloudEvents:type":        m.Type,
		"cloudEvents:time":        m.CreatedAt.UTC().Format(time.RFC3339Nano),
	}
	set := func(name, v string) {
		if v != "" {
			h["cloudEvents:"+name] = v
		}
	}
	if m.Key != "" {
		set("partitionkey", m.Key)
		set("sequence", strconv.FormatInt(m.Sequence, 10))
	}
	set("correlationid", m.CorrelationID)
	set("causationid", m.CausationID)
	set("traceparent", m.TraceParent)
	set("tracestate", m.TraceState)
	if m.Version > 0 {
		set("eventversion", strconv.Itoa(m.Version))
	}
	for k, v := range m.Headers {
		h[k] = v
	}
	return h
}

func checkDelivery(t *testing.T, d amqp.Delivery, m relay.Message, exchange, defaultSource string) {
	t.Helper()
	src := m.Source
	if src == "" {
		src = defaultSource
	}
	id := m.EventID.String()
	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("event %s: %s = %#v, want %#v", id, what, got, want)
		}
	}
	check("exchange", d.Exchange, exchange)
	check("routing key", d.RoutingKey, m.Topic)
	check("message_id", d.MessageId, id)
	check("type", d.Type, m.Type)
	check("content_type", d.ContentType, m.ContentType)
	check("correlation_id", d.CorrelationId, m.CorrelationID)
	check("app_id", d.AppId, src)
	check("delivery_mode", d.DeliveryMode, amqp.Persistent)
	if !d.Timestamp.Equal(m.CreatedAt.Truncate(time.Second)) {
		t.Errorf("event %s: timestamp = %v, want %v", id, d.Timestamp, m.CreatedAt.Truncate(time.Second))
	}
	if !bytes.Equal(d.Body, m.Payload) {
		t.Errorf("event %s: body differs: %d bytes, want %d", id, len(d.Body), len(m.Payload))
	}
	check("headers", d.Headers, wantHeaders(m, defaultSource))

	// The inbox reads it back without loss.
	var hs []wire.Header
	for k, v := range d.Headers {
		s, ok := v.(string)
		if !ok {
			t.Fatalf("event %s: header %s is %T, want string", id, k, v)
		}
		hs = append(hs, wire.Header{Name: k, Value: s})
	}
	e, err := wire.Decode(wire.AMQPPrefix, hs, d.ContentType, d.Body)
	if err != nil {
		t.Fatalf("event %s: decode: %v", id, err)
	}
	wantVersion := m.Version
	if wantVersion == 0 {
		wantVersion = 1
	}
	check("decoded id", e.ID, m.EventID)
	check("decoded source", e.Source, src)
	check("decoded key", e.Key, m.Key)
	check("decoded sequence", e.Sequence, m.Sequence)
	check("decoded version", e.Version, wantVersion)
	check("decoded causation id", e.CausationID, m.CausationID)
	check("decoded traceparent", e.TraceParent, m.TraceParent)
	check("decoded tracestate", e.TraceState, m.TraceState)
	check("decoded headers", e.Headers, m.Headers)
	if !e.Time.Equal(m.CreatedAt) {
		t.Errorf("event %s: decoded time = %v, want %v", id, e.Time, m.CreatedAt)
	}
}

// checkKeyOrder asserts that the deliveries of each key carry the sequences
// 1, 2, 3... in arrival order.
func checkKeyOrder(t *testing.T, ds []amqp.Delivery) {
	t.Helper()
	last := map[string]int64{}
	for _, d := range ds {
		key, _ := d.Headers["cloudEvents:partitionkey"].(string)
		if key == "" {
			continue
		}
		seq, err := strconv.ParseInt(d.Headers["cloudEvents:sequence"].(string), 10, 64)
		if err != nil {
			t.Fatalf("sequence of %s: %v", d.MessageId, err)
		}
		if seq != last[key]+1 {
			t.Errorf("key %s: sequence %d arrived after %d", key, seq, last[key])
		}
		last[key] = seq
	}
}

func TestPublishRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	p := newPublisher(t, rabbitmq.Config{Exchange: b.exchange})

	msgs := messages("payments", "payout", 1000, 50, 64)
	msgs[1].Payload = nil                     // empty body
	msgs[500].Payload = payload(500, 300<<10) // larger than one frame
	res := publish(t, p, msgs)

	ackRE := regexp.MustCompile(`^amqp ` + regexp.QuoteMeta(b.exchange) + `/payments#(\d+)$`)
	var lastTag uint64
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("message %d: %v", i, r.Err)
		}
		m := ackRE.FindStringSubmatch(r.Ack)
		if m == nil {
			t.Fatalf("message %d: Ack %q does not match %s", i, r.Ack, ackRE)
		}
		// One channel per batch, in input order: the tags increase.
		tag, _ := strconv.ParseUint(m[1], 10, 64)
		if tag <= lastTag {
			t.Fatalf("message %d: delivery tag %d after %d", i, tag, lastTag)
		}
		lastTag = tag
	}

	ds := b.drain(t, len(msgs))
	byID := map[string]relay.Message{}
	for _, m := range msgs {
		byID[m.EventID.String()] = m
	}
	seen := map[string]bool{}
	for _, d := range ds {
		m, ok := byID[d.MessageId]
		if !ok || seen[d.MessageId] {
			t.Fatalf("unexpected or duplicate delivery %q", d.MessageId)
		}
		seen[d.MessageId] = true
		checkDelivery(t, d, m, b.exchange, wire.DefaultSource)
	}
	// One channel and one queue: the queue order is the input order.
	for i, d := range ds {
		if d.MessageId != msgs[i].EventID.String() {
			t.Fatalf("delivery %d is %s, want %s", i, d.MessageId, msgs[i].EventID)
		}
	}
	checkKeyOrder(t, ds)

	// The channel went back to the pool and is used again.
	res = publish(t, p, messages("payments", "payout-2", 10, 3, 16))
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("second batch, message %d: %v", i, r.Err)
		}
	}
}

func TestPublishConfigSource(t *testing.T) {
	t.Parallel()
	b := setup(t, "#")
	p := newPublisher(t, rabbitmq.Config{Exchange: b.exchange, Source: "/relay-eu-1"})
	msgs := messages("notifications.email", "user", 6, 2, 10)
	for i, r := range publish(t, p, msgs) {
		if r.Err != nil {
			t.Fatalf("message %d: %v", i, r.Err)
		}
	}
	for i, d := range b.drain(t, len(msgs)) {
		checkDelivery(t, d, msgs[i], b.exchange, "/relay-eu-1")
	}
}

func TestPublishUnroutable(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	p := newPublisher(t, rabbitmq.Config{Exchange: b.exchange})

	nowhere := "nowhere." + uniqueName(t)
	msgs := messages("payments", "k", 40, 8, 32)
	for i := range msgs {
		if i%2 == 1 {
			msgs[i].Topic = nowhere
		}
	}
	res := publish(t, p, msgs)
	var routed []string
	for i, r := range res {
		if i%2 == 0 {
			if r.Err != nil {
				t.Fatalf("routable message %d: %v", i, r.Err)
			}
			routed = append(routed, msgs[i].EventID.String())
			continue
		}
		if r.Err == nil {
			t.Fatalf("unroutable message %d succeeded with Ack %q", i, r.Ack)
		}
		if c := relay.ClassOf(r.Err); c != relay.ClassUnroutable {
			t.Fatalf("unroutable message %d: class %s, want unroutable: %v", i, c, r.Err)
		}
		for _, want := range []string{strconv.Quote(b.exchange), strconv.Quote(nowhere), "bind a queue"} {
			if !strings.Contains(r.Err.Error(), want) {
				t.Errorf("message %d: error %q does not name %s", i, r.Err, want)
			}
		}
		if r.Ack != "" {
			t.Errorf("unroutable message %d has Ack %q", i, r.Ack)
		}
	}
	if n := b.count(t); n != len(routed) {
		t.Fatalf("queue holds %d messages, want %d", n, len(routed))
	}
	for i, d := range b.drain(t, len(routed)) {
		if d.MessageId != routed[i] {
			t.Fatalf("delivery %d is %s, want %s", i, d.MessageId, routed[i])
		}
	}

	// The returns of one batch do not leak into the next on the same
	// channel.
	for i, r := range publish(t, p, messages("payments", "k2", 20, 4, 8)) {
		if r.Err != nil {
			t.Fatalf("next batch, message %d: %v", i, r.Err)
		}
	}
}

// More returns than one round of confirms: every one of them is matched,
// none is dropped (which would be a false success).
func TestPublishManyUnroutable(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	p := newPublisher(t, rabbitmq.Config{Exchange: b.exchange})

	n := 2*rabbitmq.MaxInFlight + 300
	msgs := messages("payments", "k", n, 50, 16)
	routable := 0
	for i := range msgs {
		if i%10 != 0 {
			msgs[i].Topic = "nowhere"
		} else {
			routable++
		}
	}
	res := publish(t, p, msgs)
	for i, r := range res {
		if msgs[i].Topic == "payments" {
			if r.Err != nil {
				t.Fatalf("routable message %d: %v", i, r.Err)
			}
		} else if relay.ClassOf(r.Err) != relay.ClassUnroutable {
			t.Fatalf("message %d: got %v (Ack %q), want unroutable", i, r.Err, r.Ack)
		}
	}
	if got := b.count(t); got != routable {
		t.Fatalf("queue holds %d messages, want %d", got, routable)
	}
}

func TestPublishInvalidMessage(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	p := newPublisher(t, rabbitmq.Config{Exchange: b.exchange})

	msgs := messages("payments", "k", 12, 3, 8) // keys k-0, k-1, k-2; index 9 keyless
	msgs[1].Type = strings.Repeat("t", 300)     // k-1, first of its key
	res := publish(t, p, msgs)
	for i, r := range res {
		switch {
		case i == 1:
			if c := relay.ClassOf(r.Err); c != relay.ClassPoisonFormat || !strings.Contains(r.Err.Error(), "type is 300 bytes") {
				t.Fatalf("overlong type: class %s: %v", c, r.Err)
			}
		case msgs[i].Key == "k-1":
			// Sending it would put it ahead of the failed one.
			if c := relay.ClassOf(r.Err); c != relay.ClassTransient || !strings.Contains(r.Err.Error(), "not sent") {
				t.Fatalf("message %d after the failed one of its key: class %s: %v", i, c, r.Err)
			}
		default:
			if r.Err != nil {
				t.Fatalf("message %d: %v", i, r.Err)
			}
		}
	}
	// The connection survived the bad message.
	for i, r := range publish(t, p, messages("payments", "k", 3, 3, 8)) {
		if r.Err != nil {
			t.Fatalf("next batch, message %d: %v", i, r.Err)
		}
	}
}

// With SkipDeclare, a missing exchange makes the broker close the channel
// with 404: the messages are unroutable.
func TestPublishMissingExchange(t *testing.T) {
	t.Parallel()
	exchange := uniqueName(t)
	p := newPublisher(t, rabbitmq.Config{Exchange: exchange, SkipDeclare: true})
	res := publish(t, p, messages("payments", "k", 5, 2, 8))
	for i, r := range res {
		if c := relay.ClassOf(r.Err); c != relay.ClassUnroutable {
			t.Fatalf("message %d: class %s, want unroutable: %v", i, c, r.Err)
		}
		if !strings.Contains(r.Err.Error(), strconv.Quote(exchange)) || !strings.Contains(r.Err.Error(), "404") {
			t.Errorf("message %d: error %q should name the exchange and the 404", i, r.Err)
		}
	}
}

// An exchange of another kind under the configured name is a configuration
// problem for every message: a batch error, so that nothing burns attempts.
func TestPublishExchangeOfAnotherKind(t *testing.T) {
	t.Parallel()
	name := uniqueName(t)
	ch := setup(t).channel(t)
	if err := ch.ExchangeDeclare(name, amqp.ExchangeDirect, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.ExchangeDelete(name, false, false) })
	p := newPublisher(t, rabbitmq.Config{Exchange: name})
	_, err := p.Publish(context.Background(), messages("payments", "k", 3, 1, 8))
	if c := relay.ClassOf(err); c != relay.ClassDependencyOutage || !strings.Contains(err.Error(), "durable topic exchange") {
		t.Fatalf("class %s: %v", c, err)
	}
	if !strings.Contains(err.Error(), "406") {
		t.Errorf("error %q should carry the broker's 406", err)
	}
}

// An exchange deleted while the relay runs: the batch caught by it is
// retried, and the next channel declares the exchange again.
func TestPublishExchangeDeleted(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	p := newPublisher(t, rabbitmq.Config{Exchange: b.exchange})
	for i, r := range publish(t, p, messages("payments", "k", 3, 3, 8)) {
		if r.Err != nil {
			t.Fatalf("message %d: %v", i, r.Err)
		}
	}
	if err := b.channel(t).ExchangeDelete(b.exchange, false, false); err != nil {
		t.Fatal(err)
	}
	for i, r := range publish(t, p, messages("payments", "k", 3, 3, 8)) {
		if c := relay.ClassOf(r.Err); c != relay.ClassTransient {
			t.Fatalf("message %d after the delete: class %s, want transient: %v", i, c, r.Err)
		}
	}
	// Declared again, but the binding went with the old exchange.
	for i, r := range publish(t, p, messages("payments", "k", 3, 3, 8)) {
		if c := relay.ClassOf(r.Err); c != relay.ClassUnroutable {
			t.Fatalf("message %d on the new exchange: class %s, want unroutable: %v", i, c, r.Err)
		}
	}
	b.bind(t, "payments")
	for i, r := range publish(t, p, messages("payments", "k", 3, 3, 8)) {
		if r.Err != nil {
			t.Fatalf("message %d after the new binding: %v", i, r.Err)
		}
	}
}

// proxy is an in-process toxiproxy in front of the real RabbitMQ.
func proxy(t *testing.T) (*toxiproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(testenv.RabbitURL())
	if err != nil {
		t.Fatal(err)
	}
	upstream := u.Host
	if u.Port() == "" {
		upstream = net.JoinHostPort(u.Hostname(), "5672")
	}
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	px := toxiproxy.NewProxy(srv, "rabbitmq", "127.0.0.1:0", upstream)
	if err := px.Start(); err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(px.Stop)
	u.Host = px.Listen
	return px, u.String()
}

// The connection is cut in the middle of a batch: no unconfirmed message is
// reported published, the next Publish reconnects, and after publishing the
// failed ones again every event is in the queue.
func TestPublishConnectionCut(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	px, proxyURL := proxy(t)
	p := newPublisher(t, rabbitmq.Config{URL: proxyURL, Exchange: b.exchange, ConfirmTimeout: 5 * time.Second})

	warm := messages("payments", "warm", 1, 1, 8)
	for _, r := range publish(t, p, warm) {
		if r.Err != nil {
			t.Fatalf("warm-up: %v", r.Err)
		}
	}

	// Let 64 KiB more through towards the broker, then cut: the batch
	// below is about 2.5 MiB.
	if _, err := px.Toxics.AddToxicJson(strings.NewReader(
		`{"name":"cut","type":"limit_data","stream":"upstream","attributes":{"bytes":65536}}`)); err != nil {
		t.Fatalf("add toxic: %v", err)
	}
	msgs := messages("payments", "payout", 3000, 50, 800)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := p.Publish(ctx, msgs)
	var acked []relay.Message
	var failed []relay.Message
	switch {
	case err != nil:
		if c := relay.ClassOf(err); c != relay.ClassDependencyOutage {
			t.Fatalf("batch error class %s, want dependency_outage: %v", c, err)
		}
		failed = msgs
	default:
		for i, r := range res {
			if r.Err == nil {
				acked = append(acked, msgs[i])
				continue
			}
			if c := relay.ClassOf(r.Err); c != relay.ClassTransient && c != relay.ClassDependencyOutage {
				t.Fatalf("message %d: class %s, want transient or dependency_outage: %v", i, c, r.Err)
			}
			failed = append(failed, msgs[i])
		}
	}
	if len(failed) == 0 {
		t.Fatal("the cut failed no message")
	}
	t.Logf("cut: %d acked, %d failed (batch error: %v)", len(acked), len(failed), err)

	if err := px.Toxics.RemoveToxic(context.Background(), "cut"); err != nil {
		t.Fatalf("remove toxic: %v", err)
	}
	// The relay publishes the failed ones again (a fresh batch keeps their
	// order).
	for attempt := 1; len(failed) > 0; attempt++ {
		if attempt > 3 {
			t.Fatalf("%d messages still failing after reconnecting", len(failed))
		}
		res, err := p.Publish(ctx, failed)
		if err != nil {
			t.Logf("attempt %d: %v", attempt, err)
			continue
		}
		var again []relay.Message
		for i, r := range res {
			if r.Err != nil {
				again = append(again, failed[i])
			}
		}
		failed = again
	}

	// At least once: every event is in the queue; those the cut hit after
	// they reached the broker are there twice.
	total := b.count(t)
	want := len(msgs) + len(warm)
	if total < want {
		t.Fatalf("queue holds %d messages, want at least %d", total, want)
	}
	seen := map[string]int{}
	for _, d := range b.drain(t, total) {
		seen[d.MessageId]++
	}
	for _, m := range append(warm, msgs...) {
		if seen[m.EventID.String()] == 0 {
			t.Fatalf("event %s is not in the queue", m.EventID)
		}
	}
}

// The broker goes away between batches and comes back: Publish fails fast
// with dependency_outage while it is away, and works again without a new
// Publisher.
func TestPublishBrokerRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	px, proxyURL := proxy(t)
	p := newPublisher(t, rabbitmq.Config{URL: proxyURL, Exchange: b.exchange})

	for _, r := range publish(t, p, messages("payments", "a", 5, 2, 8)) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	px.Stop() // closes the connections and stops listening
	for range 2 {
		start := time.Now()
		res, err := p.Publish(context.Background(), messages("payments", "b", 5, 2, 8))
		if err == nil {
			t.Fatalf("Publish with the broker away succeeded: %+v", res)
		}
		if c := relay.ClassOf(err); c != relay.ClassDependencyOutage {
			t.Fatalf("class %s, want dependency_outage: %v", c, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("Publish took %s to fail", d)
		}
	}
	if err := px.Start(); err != nil {
		t.Fatalf("restart proxy: %v", err)
	}
	for i, r := range publish(t, p, messages("payments", "c", 5, 2, 8)) {
		if r.Err != nil {
			t.Fatalf("message %d after the broker came back: %v", i, r.Err)
		}
	}
	if n := b.count(t); n != 10 {
		t.Fatalf("queue holds %d messages, want 10", n)
	}
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestPublishBrokerUnreachable(t *testing.T) {
	t.Parallel()
	const secret = "Sup3rS3cret-pw"
	good, _ := url.Parse(testenv.RabbitURL())
	tests := []struct {
		name, url string
		tls       *tls.Config
		hint      string
		// RabbitMQ answers a failed login after about 3s.
		within time.Duration
	}{
		{"nothing listening", "amqp://guest:" + secret + "@" + freePort(t) + "/", nil, "reachable", 3 * time.Second},
		{"wrong password", "amqp://guest:" + secret + "@" + good.Host + "/", nil, "password", 15 * time.Second},
		{"TLS to a plain port", "amqps://guest:" + secret + "@" + good.Host + "/", &tls.Config{MinVersion: tls.VersionTLS12}, "reachable", 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs syncBuffer
			start := time.Now()
			p, err := rabbitmq.New(context.Background(), rabbitmq.Config{
				URL: tt.url, TLS: tt.tls, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			})
			if err != nil {
				t.Fatalf("New must not fail on a broker that is down: %v", err)
			}
			defer p.Close()
			for range 2 {
				res, err := p.Publish(context.Background(), messages("payments", "k", 3, 1, 8))
				if err == nil {
					t.Fatalf("Publish succeeded: %+v", res)
				}
				if c := relay.ClassOf(err); c != relay.ClassDependencyOutage {
					t.Fatalf("class %s, want dependency_outage: %v", c, err)
				}
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("the error shows the password: %v", err)
				}
				if !strings.Contains(err.Error(), "guest:xxxxx@") || !strings.Contains(err.Error(), tt.hint) {
					t.Errorf("error %q should name the redacted URL and say what to check (%s)", err, tt.hint)
				}
			}
			if d := time.Since(start); d > tt.within {
				t.Errorf("New and two Publish calls took %s", d)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(logs.String(), secret) {
				t.Fatalf("the log shows the password:\n%s", logs.String())
			}
			if !strings.Contains(logs.String(), "not connected at start") {
				t.Errorf("New did not log the failed first connection:\n%s", logs.String())
			}
		})
	}
}

func TestNewInvalidConfig(t *testing.T) {
	t.Parallel()
	const secret = "Sup3rS3cret-pw"
	base := testenv.RabbitURL()
	tests := []struct {
		name string
		cfg  rabbitmq.Config
	}{
		{"no URL", rabbitmq.Config{}},
		{"not amqp", rabbitmq.Config{URL: "http://guest:" + secret + "@127.0.0.1/"}},
		{"bad port", rabbitmq.Config{URL: "amqp://guest:" + secret + "@127.0.0.1:notaport/"}},
		{"space in password", rabbitmq.Config{URL: "amqp://guest:" + secret + " x@127.0.0.1/"}},
		{"TLS on amqp://", rabbitmq.Config{URL: "amqp://guest:" + secret + "@127.0.0.1/", TLS: &tls.Config{MinVersion: tls.VersionTLS12}}},
		{"bad exchange", rabbitmq.Config{URL: base, Exchange: "pay ments"}},
		{"long exchange", rabbitmq.Config{URL: base, Exchange: strings.Repeat("x", 256)}},
		{"reserved exchange", rabbitmq.Config{URL: base, Exchange: "amq.topic"}},
		{"long source", rabbitmq.Config{URL: base, Source: strings.Repeat("s", 256)}},
		{"negative confirm timeout", rabbitmq.Config{URL: base, ConfirmTimeout: -time.Second}},
		{"negative dial timeout", rabbitmq.Config{URL: base, DialTimeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := rabbitmq.New(context.Background(), tt.cfg)
			if err == nil {
				p.Close()
				t.Fatal("New accepted the configuration")
			}
			if !errors.Is(err, relay.ErrInvalidConfig) {
				t.Fatalf("error does not match relay.ErrInvalidConfig: %v", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}

	// A built-in exchange is fine when the publisher does not declare it.
	p := newPublisher(t, rabbitmq.Config{Exchange: "amq.topic", SkipDeclare: true})
	for _, r := range publish(t, p, messages(uniqueName(t), "k", 1, 1, 8)) {
		if relay.ClassOf(r.Err) != relay.ClassUnroutable {
			t.Fatalf("got %v, want unroutable (nothing is bound for this topic)", r.Err)
		}
	}
}

func TestPublishConcurrent(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	p := newPublisher(t, rabbitmq.Config{Exchange: b.exchange})

	const workers, batches, size = 4, 5, 200
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	var mu sync.Mutex
	var all []relay.Message
	for w := range workers {
		// Each worker owns its keys, as relay workers own partitions.
		msgs := messages("payments", fmt.Sprintf("w%d", w), batches*size, 10, 32)
		mu.Lock()
		all = append(all, msgs...)
		mu.Unlock()
		wg.Go(func() {
			for i := 0; i < len(msgs); i += size {
				res, err := p.Publish(context.Background(), msgs[i:i+size])
				if err != nil {
					errs <- err
					return
				}
				for j, r := range res {
					if r.Err != nil {
						errs <- fmt.Errorf("worker %d, message %d: %w", w, i+j, r.Err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ds := b.drain(t, len(all))
	seen := map[string]int{}
	for _, d := range ds {
		seen[d.MessageId]++
	}
	for _, m := range all {
		if seen[m.EventID.String()] != 1 {
			t.Fatalf("event %s delivered %d times", m.EventID, seen[m.EventID.String()])
		}
	}
	checkKeyOrder(t, ds)
}

func TestClose(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	p, err := rabbitmq.New(context.Background(), rabbitmq.Config{URL: testenv.RabbitURL(), Exchange: b.exchange})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, p, messages("payments", "k", 2, 1, 8))
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = p.Publish(context.Background(), messages("payments", "k", 1, 1, 8))
	if !errors.Is(err, rabbitmq.ErrClosed) || relay.ClassOf(err) != relay.ClassDependencyOutage {
		t.Fatalf("Publish after Close: %v, want ErrClosed classified dependency_outage", err)
	}
	if res, err := p.Publish(context.Background(), nil); err != nil || len(res) != 0 {
		t.Fatalf("empty Publish after Close: %v, %v", res, err)
	}
}

// The broker stops answering without closing the connection: Publish gives
// up after ConfirmTimeout, a channel cannot be opened on the stalled
// connection either (bounded by DialTimeout, not by the 30s of heartbeats),
// and once the network is back everything goes through.
func TestPublishNoConfirm(t *testing.T) {
	t.Parallel()
	b := setup(t, "payments")
	px, proxyURL := proxy(t)
	p := newPublisher(t, rabbitmq.Config{URL: proxyURL, Exchange: b.exchange,
		ConfirmTimeout: time.Second, DialTimeout: 2 * time.Second})

	warm := messages("payments", "warm", 1, 1, 8)
	for _, r := range publish(t, p, warm) {
		if r.Err != nil {
			t.Fatalf("warm-up: %v", r.Err)
		}
	}
	// Drop everything the broker sends: confirms never arrive.
	if _, err := px.Toxics.AddToxicJson(strings.NewReader(
		`{"name":"stall","type":"timeout","stream":"downstream","attributes":{"timeout":0}}`)); err != nil {
		t.Fatalf("add toxic: %v", err)
	}
	first := messages("payments", "a", 50, 5, 16)
	start := time.Now()
	_, err := p.Publish(context.Background(), first)
	if c := relay.ClassOf(err); c != relay.ClassDependencyOutage || !strings.Contains(err.Error(), "no publisher confirm") {
		t.Fatalf("stalled batch: class %s: %v", c, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stalled batch took %s, ConfirmTimeout is 1s", d)
	}

	second := messages("payments", "b", 50, 5, 16)
	start = time.Now()
	_, err = p.Publish(context.Background(), second)
	if c := relay.ClassOf(err); c != relay.ClassDependencyOutage {
		t.Fatalf("batch on the stalled connection: class %s: %v", c, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("batch on the stalled connection took %s, DialTimeout is 2s", d)
	}

	if err := px.Toxics.RemoveToxic(context.Background(), "stall"); err != nil {
		t.Fatalf("remove toxic: %v", err)
	}
	all := append(first, second...)
	for i, r := range publish(t, p, all) {
		if r.Err != nil {
			t.Fatalf("message %d after the network came back: %v", i, r.Err)
		}
	}
	// The stalled batch may have reached the queue too: at least once.
	seen := map[string]bool{}
	for _, d := range b.drain(t, b.count(t)) {
		seen[d.MessageId] = true
	}
	for _, m := range append(warm, all...) {
		if !seen[m.EventID.String()] {
			t.Fatalf("event %s is not in the queue", m.EventID)
		}
	}
}
