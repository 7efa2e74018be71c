package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// ReplayTimeoutDefault bounds one republish (connect, publish, confirm).
// The operator store also ends the send early enough to record it before
// the caller's deadline.
const ReplayTimeoutDefault = 20 * time.Second

// Errors of a republish, besides ErrNoTarget and ops.ErrOutcomeUnknown.
var (
	// ErrNotAllowed: the destination is not on Republisher.Allow.
	ErrNotAllowed = errors.New("destination not on the replay allowlist")
	// ErrKafkaEditNeedsTopic: an edit of a Kafka dead letter names no retry
	// topic (Republisher.KafkaRetryTopic).
	ErrKafkaEditNeedsTopic = errors.New("the corrected copy of a Kafka dead letter needs a retry topic: " +
		"the original topic is read by every consumer group, including those that applied the original, and one group cannot be targeted; " +
		"pass --kafka-retry-topic T, a topic only the consumer that failed reads")
)

// Republisher is the operator tools' ops.Republisher: it sends ingested
// dead letters back to the broker they came from. RabbitMQ to the queue
// that dead-lettered the message (x-death), through the default exchange
// so that no other queue bound to the original exchange gets it again, with
// publisher confirms and mandatory routing; Kafka to the original topic
// and, while it exists, partition, acknowledged by all in-sync replicas
// (every consumer group of the topic reads it again: a replay keeps the
// event id, which consumers deduplicate by; an edit goes to
// KafkaRetryTopic). The original bytes, properties and headers go back,
// without the broker's dead-letter headers. A nil connection means that
// broker is not configured.
type Republisher struct {
	RabbitMQ *RabbitMQConn
	Kafka    *KafkaConn
	// Timeout bounds one republish (default ReplayTimeoutDefault).
	Timeout time.Duration
	// Allow lists the destinations a dead letter may be sent to: RabbitMQ
	// queue names and Kafka topic names. The destination is read from the
	// message's own headers (x-death, the DLT headers), which whoever can
	// publish into a dead-letter queue can forge; with Allow set, any other
	// destination is refused (ErrNotAllowed). Empty: any destination.
	Allow []string
	// KafkaRetryTopic is where the corrected copy of an edited Kafka dead
	// letter goes; empty: such edits are refused (ErrKafkaEditNeedsTopic).
	KafkaRetryTopic string
}

var _ ops.Republisher = (*Republisher)(nil)

// Connected reports whether broker (ops.BrokerRabbitMQ or ops.BrokerKafka)
// is configured.
func (r *Republisher) Connected(broker string) bool {
	switch broker {
	case FromRabbitMQ:
		return r.RabbitMQ != nil && r.RabbitMQ.URL != ""
	case FromKafka:
		return r.Kafka != nil && len(r.Kafka.Brokers) > 0
	}
	return false
}

// letter is a dead letter read for a republish.
type letter struct {
	*ops.BrokerLetter
	source map[string]any
}

func read(l *ops.BrokerLetter) (*letter, error) {
	r := &letter{BrokerLetter: l}
	if err := json.Unmarshal(l.Source, &r.source); err != nil {
		return nil, fmt.Errorf("%s: stored source: %w", l.Ref, err)
	}
	return r, nil
}

// Target says where l goes back to, or ErrNoTarget when the message did
// not say where it came from.
func (r *Republisher) Target(l *ops.BrokerLetter) (ops.Destination, error) {
	lt, err := read(l)
	if err != nil {
		return ops.Destination{Broker: l.From}, err
	}
	switch l.From {
	case FromRabbitMQ:
		return r.allowed(lt.rabbitTarget())
	case FromKafka:
		return r.allowed(lt.kafkaTarget(r.KafkaRetryTopic))
	}
	return ops.Destination{Broker: l.From}, fmt.Errorf("%s: unknown broker %q", l.Ref, l.From)
}

// allowed refuses a destination that is not on r.Allow.
func (r *Republisher) allowed(d ops.Destination, err error) (ops.Destination, error) {
	if err != nil || len(r.Allow) == 0 {
		return d, err
	}
	name, kind := d.Queue, "queue"
	if d.Broker == FromKafka {
		name, kind = d.Topic, "topic"
	}
	if !slices.Contains(r.Allow, name) {
		return d, fmt.Errorf("%w: the message's headers name %s %q, which --replay-allow does not list; "+
			"if it is right, add it (the headers come from whoever published into the dead-letter queue), else drop the message",
			ErrNotAllowed, kind, name)
	}
	return d, nil
}

// Republish sends l back to its Target and returns once the broker has
// confirmed it. The copy of an edit (l.CopyID set) gets the new event id
// and names the original in wire.EditOfHeader.
func (r *Republisher) Republish(ctx context.Context, l *ops.BrokerLetter) (ops.Destination, error) {
	lt, err := read(l)
	if err != nil {
		return ops.Destination{Broker: l.From}, err
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = ReplayTimeoutDefault
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !r.Connected(l.From) {
		return ops.Destination{Broker: l.From}, fmt.Errorf("%s: no connection to %s is configured", l.Ref, l.From)
	}
	d, err := r.Target(l)
	if err != nil {
		return d, err
	}
	if l.From == FromRabbitMQ {
		return d, lt.republishRabbitMQ(ctx, r.RabbitMQ, d)
	}
	return d, lt.republishKafka(ctx, r.Kafka, d)
}

// setHeader removes every spelling of name from headers (ingest and the
// inbox read CloudEvents attributes whatever their case) and, with set,
// sets the canonical spelling to value. It reports whether name was there.
func setHeader(headers amqp.Table, name string, value any, set bool) bool {
	found := false
	for k := range headers {
		if strings.EqualFold(k, name) {
			delete(headers, k)
			found = true
		}
	}
	if set {
		headers[name] = value
	}
	return found
}

// bytesOf reads a value stored by textOrBase64.
func bytesOf(v any) ([]byte, bool) {
	switch x := v.(type) {
	case string:
		return []byte(x), true
	case map[string]any:
		if s, ok := x["base64"].(string); ok {
			b, err := base64.StdEncoding.DecodeString(s)
			return b, err == nil
		}
	}
	return nil, false
}

// rabbitTarget is the queue that dead-lettered the message (the most recent
// death that rejected it, else the most recent death: see target), reached through
// the default exchange: the original exchange would route it to every
// queue bound there, also to those whose consumers applied the original.
func (r *letter) rabbitTarget() (ops.Destination, error) {
	d := ops.Destination{Broker: FromRabbitMQ}
	d.Chain, _ = r.source["death_chain"].(string)
	queue, ok := bytesOf(r.source["original_queue"])
	if !ok || len(queue) == 0 {
		return d, fmt.Errorf("%w: the message had no x-death header naming the queue that dead-lettered it; "+
			"move it to the right queue by hand (a shovel or the management UI), then drop it here", ErrNoTarget)
	}
	d.Queue, d.RoutingKey = string(queue), string(queue)
	return d, nil
}

func (r *letter) republishRabbitMQ(ctx context.Context, c *RabbitMQConn, d ops.Destination) error {
	exchange, key := d.Exchange, d.RoutingKey
	var hs []struct {
		Name any    `json:"name"`
		AMQP *typed `json:"amqp"`
	}
	if err := json.Unmarshal(r.Headers, &hs); err != nil {
		return fmt.Errorf("stored headers: %w", err)
	}
	table := amqp.Table{}
	for _, h := range hs {
		name, err := decodeName(h.Name)
		if err != nil {
			return err
		}
		if amqpDeathHeaders[name] || h.AMQP == nil {
			continue
		}
		v, err := decodeValue(*h.AMQP)
		if err != nil {
			return fmt.Errorf("header %q: %w", name, err)
		}
		table[name] = v
	}
	props, _ := r.source["properties"].(map[string]any)
	prop := func(k string) string {
		b, _ := bytesOf(props[k])
		return string(b)
	}
	num := func(k string) int64 {
		f, _ := props[k].(float64)
		return int64(f)
	}
	msg := amqp.Publishing{Headers: table, ContentType: prop("content_type"), ContentEncoding: prop("content_encoding"),
		DeliveryMode: uint8(num("delivery_mode")), Priority: uint8(num("priority")), CorrelationId: prop("correlation_id"),
		ReplyTo: prop("reply_to"), MessageId: prop("message_id"), Type: prop("type"), AppId: prop("app_id"), Body: r.Payload}
	// Not restored: expiration (the TTL that may have expired it would
	// expire it again) and user_id (the broker refuses a user id other
	// than the replaying connection's own).
	if ts := num("timestamp"); ts != 0 {
		msg.Timestamp = time.Unix(ts, 0)
	}
	if msg.DeliveryMode == 0 {
		msg.DeliveryMode = amqp.Persistent
	}
	if exchange == "" {
		r.keepTopic(table)
	}
	if r.CopyID != "" {
		// The corrected copy is a new message: its own id, and the
		// original's as its cause.
		msg.MessageId = r.CopyID
		if setHeader(table, wire.AMQPPrefix+wire.AttrID, nil, false) {
			setHeader(table, wire.AMQPPrefix+wire.AttrID, r.CopyID, true)
			setHeader(table, wire.AMQPPrefix+wire.AttrCausationID, r.EventID, true)
		}
		setHeader(table, wire.EditOfHeader, r.EventID, true)
	}
	conn, err := c.dial(ctx, "outboxkit dlq replay")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("publisher confirms: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, msg)
	if err != nil {
		return fmt.Errorf("publish to queue %q: %w: %w", d.Queue, ops.ErrOutcomeUnknown, err)
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("no publisher confirm from RabbitMQ: %w: %w", ops.ErrOutcomeUnknown, err)
	}
	if !acked {
		return fmt.Errorf("RabbitMQ refused the message (nack) for queue %q", d.Queue)
	}
	// A mandatory message that no queue took is returned before its ack.
	select {
	case ret := <-returns:
		return fmt.Errorf("unroutable: queue %q does not exist (%d %s); declare it, then replay again",
			d.Queue, ret.ReplyCode, ret.ReplyText)
	default:
	}
	return nil
}

// keepTopic sets wire.TopicHeader to the routing key the message had in
// the queue that dead-lettered it: through the default exchange the routing
// key is the queue's name, and the inbox's RabbitMQ consumer, which takes
// the topic from the routing key, would put the event in another lane. A
// message that reached that queue through the default exchange already
// (an earlier replay) keeps the topic its header named, unless spellings
// of it disagreed (the routing key then, as ingest and the inbox read it).
// Either way the message leaves with the canonical spelling only, so that
// no reader has a choice to make.
func (r *letter) keepTopic(table amqp.Table) {
	if ex, ok := bytesOf(r.source["original_exchange"]); ok && len(ex) == 0 {
		if s, ok := wire.TopicOf(table); ok {
			setHeader(table, wire.TopicHeader, s, true)
			return
		}
	}
	key, ok := bytesOf(r.source["original_routing_key"])
	setHeader(table, wire.TopicHeader, string(key), ok && len(key) > 0)
}

// kafkaTarget is the original topic and partition, or for the corrected
// copy of an edit the retry topic.
func (r *letter) kafkaTarget(retryTopic string) (ops.Destination, error) {
	d := ops.Destination{Broker: FromKafka}
	if r.CopyID != "" {
		if retryTopic == "" {
			return d, ErrKafkaEditNeedsTopic
		}
		d.Topic = retryTopic
		return d, nil
	}
	topic, ok := bytesOf(r.source["original_topic"])
	if !ok || len(topic) == 0 {
		return d, fmt.Errorf("%w: the record carried no original-topic header (outboxkit-dlt-original-topic, kafka_dlt-original-topic or __connect.errors.topic)", ErrNoTarget)
	}
	d.Topic = string(topic)
	if p, ok := r.source["original_partition"].(float64); ok {
		n := int(p)
		d.Partition = &n
	}
	return d, nil
}

func (r *letter) republishKafka(ctx context.Context, c *KafkaConn, d ops.Destination) error {
	var hs []struct {
		Name  any `json:"name"`
		Value any `json:"value"`
	}
	if err := json.Unmarshal(r.Headers, &hs); err != nil {
		return fmt.Errorf("stored headers: %w", err)
	}
	msg := kafkago.Message{Topic: d.Topic, Value: r.Payload}
	idHeader, causeHeader := wire.KafkaPrefix+wire.AttrID, wire.KafkaPrefix+wire.AttrCausationID
	cloudEvent := false
	for _, h := range hs {
		name, ok1 := bytesOf(h.Name)
		value, ok2 := bytesOf(h.Value)
		if !ok1 || !ok2 {
			return fmt.Errorf("stored header %v is malformed", h.Name)
		}
		if isDLTHeader(string(name)) {
			continue
		}
		if r.CopyID != "" {
			// The corrected copy is a new event: its own id, and the
			// original's as its cause.
			// Every spelling, as ingest and the inbox read them whatever
			// their case; the canonical ones are written below.
			switch n := string(name); {
			case strings.EqualFold(n, idHeader):
				cloudEvent = true
				continue
			case strings.EqualFold(n, causeHeader), strings.EqualFold(n, wire.EditOfHeader):
				continue
			}
		}
		msg.Headers = append(msg.Headers, kafkago.Header{Key: string(name), Value: value})
	}
	if r.CopyID != "" {
		if cloudEvent {
			msg.Headers = append(msg.Headers, kafkago.Header{Key: idHeader, Value: []byte(r.CopyID)},
				kafkago.Header{Key: causeHeader, Value: []byte(r.EventID)})
		}
		msg.Headers = append(msg.Headers, kafkago.Header{Key: wire.EditOfHeader, Value: []byte(r.EventID)})
	}
	if k, ok := bytesOf(r.source["key"]); ok {
		msg.Key = k
	}
	partition := -1
	if d.Partition != nil {
		partition = *d.Partition
	}
	// kafka-go's produce does not follow ctx: WriteMessages returns when
	// ctx ends, but the batch goes on in the writer, bounded by
	// WriteTimeout, and Close waits for it. The attempts share what is
	// left of the send budget, so that the writer is done about when the
	// budget is.
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(ReplayTimeoutDefault)
	}
	if time.Until(deadline) <= 0 {
		return fmt.Errorf("no time left to write to Kafka topic %q: nothing was sent", d.Topic)
	}
	// Our own retries, not kafka-go's: its writer retries temporary errors
	// and returns the last attempt's only, so a first attempt that timed
	// out after the leader appended the record, then a refusal, would read
	// as "refused, nothing was written". Here each error describes one
	// attempt, a retry follows a refusal only, and "refused" therefore
	// means every attempt was refused; after an attempt whose outcome is
	// unknown the send stops and says so (the operator's retry sends the
	// same event id).
	const attempts = 3
	backoff := 100 * time.Millisecond
	for i := 0; ; i++ {
		err := writeKafkaOnce(ctx, c, msg, partition, deadline, time.Until(deadline)/time.Duration(attempts-i))
		switch {
		case err == nil:
			return nil
		case !refusedByKafka(err):
			return fmt.Errorf("write to Kafka topic %q: %w: %w", d.Topic, ops.ErrOutcomeUnknown, err)
		case i+1 == attempts || !temporaryKafka(err) || time.Until(deadline) <= backoff:
			// The brokers answered every attempt with an error code
			// that says the record was not appended.
			return fmt.Errorf("write to Kafka topic %q: Kafka refused it, nothing was written: %w", d.Topic, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("write to Kafka topic %q: Kafka refused it, nothing was written: %w", d.Topic, err)
		case <-t.C:
		}
		backoff *= 2
	}
}

// writeKafkaOnce writes msg in one attempt (the original partition when
// known and still there, else by key as the relay does), bounded by share,
// and closes the writer by deadline at most.
func writeKafkaOnce(ctx context.Context, c *KafkaConn, msg kafkago.Message, partition int, deadline time.Time, share time.Duration) error {
	w := &kafkago.Writer{Addr: kafkago.TCP(c.Brokers...), Transport: c.roundTripper(), RequiredAcks: kafkago.RequireAll,
		MaxAttempts: 1, WriteTimeout: max(share, time.Millisecond),
		Balancer: kafkago.BalancerFunc(func(m kafkago.Message, partitions ...int) int {
			for _, p := range partitions {
				if p == partition {
					return p
				}
			}
			return (&kafkago.Hash{}).Balance(m, partitions...)
		})}
	err := w.WriteMessages(ctx, msg)
	closeWriter(w, deadline)
	return err
}

// closeWriter closes w, waiting until deadline at most: Close waits for a
// batch still being written, which a send whose budget is spent must not.
// The goroutine ends with Close, once the writer's last attempt has (its
// WriteTimeout is a share of the same budget).
func closeWriter(w *kafkago.Writer, deadline time.Time) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Close() //nolint:errcheck // the write's own error says what happened to the record
	}()
	t := time.NewTimer(max(time.Until(deadline), 0))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// refusedByKafka reports whether err, from a write of one record in one
// attempt, is the brokers' refusal: an error code, as kafkago.Error, for
// every record. Not a refusal: a timeout or a lost connection, and the two
// codes that a leader returns after it appended the record (the in-sync
// replicas did not confirm it in time, or fell short after the append): the
// record may be there.
func refusedByKafka(err error) bool {
	codes, ok := kafkaCodes(err)
	for _, code := range codes {
		if code == kafkago.RequestTimedOut || code == kafkago.NotEnoughReplicasAfterAppend {
			return false
		}
	}
	return ok
}

// temporaryKafka reports whether every error code in err is one a later
// attempt may not get (a leader change, too few replicas for now).
func temporaryKafka(err error) bool {
	codes, ok := kafkaCodes(err)
	for _, code := range codes {
		if !code.Temporary() {
			return false
		}
	}
	return ok
}

// kafkaCodes returns the brokers' error code of each failed record in err;
// ok is false when a failure has none, or there is none.
// kafkago.WriteErrors has no Unwrap, so errors.As cannot see inside it.
func kafkaCodes(err error) (codes []kafkago.Error, ok bool) {
	errs := []error{err}
	var werrs kafkago.WriteErrors
	if errors.As(err, &werrs) {
		errs = werrs
	}
	for _, e := range errs {
		if e == nil {
			continue
		}
		var code kafkago.Error
		if !errors.As(e, &code) {
			return nil, false
		}
		codes = append(codes, code)
	}
	return codes, len(codes) > 0
}
