package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// ReplayTimeoutDefault bounds one republish (connect, publish, confirm).
const ReplayTimeoutDefault = 30 * time.Second

// Republisher is the operator tools' ops.Republisher: it sends ingested
// dead letters back to the broker they came from. RabbitMQ to
// the original exchange and routing key from x-death, with publisher
// confirms and mandatory routing; Kafka to the original topic and, while it
// exists, partition, acknowledged by all in-sync replicas. The original
// bytes, properties and headers go back, without the broker's dead-letter
// headers. A nil connection means that broker is not configured.
type Republisher struct {
	RabbitMQ *RabbitMQConn
	Kafka    *KafkaConn
	// Timeout bounds one republish (default ReplayTimeoutDefault).
	Timeout time.Duration
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
		return lt.rabbitTarget()
	case FromKafka:
		return lt.kafkaTarget()
	}
	return ops.Destination{Broker: l.From}, fmt.Errorf("%s: unknown broker %q", l.Ref, l.From)
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
	switch {
	case !r.Connected(l.From):
		return ops.Destination{Broker: l.From}, fmt.Errorf("%s: no connection to %s is configured", l.Ref, l.From)
	case l.From == FromRabbitMQ:
		return lt.republishRabbitMQ(ctx, r.RabbitMQ)
	default:
		return lt.republishKafka(ctx, r.Kafka)
	}
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

func (r *letter) rabbitTarget() (ops.Destination, error) {
	d := ops.Destination{Broker: FromRabbitMQ}
	exchange, ok := bytesOf(r.source["original_exchange"])
	key, okKey := bytesOf(r.source["original_routing_key"])
	if !ok || !okKey {
		return d, fmt.Errorf("%w: the message had no x-death header naming its original exchange and routing key", ErrNoTarget)
	}
	d.Exchange, d.RoutingKey = string(exchange), string(key)
	return d, nil
}

func (r *letter) republishRabbitMQ(ctx context.Context, c *RabbitMQConn) (ops.Destination, error) {
	d, err := r.rabbitTarget()
	if err != nil {
		return d, err
	}
	exchange, key := d.Exchange, d.RoutingKey
	var hs []struct {
		Name any    `json:"name"`
		AMQP *typed `json:"amqp"`
	}
	if err := json.Unmarshal(r.Headers, &hs); err != nil {
		return d, fmt.Errorf("stored headers: %w", err)
	}
	table := amqp.Table{}
	for _, h := range hs {
		name, err := decodeName(h.Name)
		if err != nil {
			return d, err
		}
		if amqpDeathHeaders[name] || h.AMQP == nil {
			continue
		}
		v, err := decodeValue(*h.AMQP)
		if err != nil {
			return d, fmt.Errorf("header %q: %w", name, err)
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
	if r.CopyID != "" {
		// The corrected copy is a new message: its own id, and the
		// original's as its cause.
		msg.MessageId = r.CopyID
		if _, ok := table[wire.AMQPPrefix+wire.AttrID]; ok {
			table[wire.AMQPPrefix+wire.AttrID] = r.CopyID
			table[wire.AMQPPrefix+wire.AttrCausationID] = r.EventID
		}
		table[wire.EditOfHeader] = r.EventID
	}
	conn, err := c.dial(ctx, "outboxkit dlq replay")
	if err != nil {
		return d, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return d, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return d, fmt.Errorf("publisher confirms: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, msg)
	if err != nil {
		return d, fmt.Errorf("publish to exchange %q: %w", exchange, err)
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		return d, fmt.Errorf("no publisher confirm: %w", err)
	}
	if !acked {
		return d, fmt.Errorf("RabbitMQ refused the message (nack) on exchange %q", exchange)
	}
	// A mandatory message that no queue took is returned before its ack.
	select {
	case ret := <-returns:
		return d, fmt.Errorf("unroutable: exchange %q has no queue bound for routing key %q (%d %s); bind one, then replay again",
			exchange, key, ret.ReplyCode, ret.ReplyText)
	default:
	}
	return d, nil
}

func (r *letter) kafkaTarget() (ops.Destination, error) {
	d := ops.Destination{Broker: FromKafka}
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

func (r *letter) republishKafka(ctx context.Context, c *KafkaConn) (ops.Destination, error) {
	d, err := r.kafkaTarget()
	if err != nil {
		return d, err
	}
	var hs []struct {
		Name  any `json:"name"`
		Value any `json:"value"`
	}
	if err := json.Unmarshal(r.Headers, &hs); err != nil {
		return d, fmt.Errorf("stored headers: %w", err)
	}
	msg := kafkago.Message{Topic: d.Topic, Value: r.Payload}
	idHeader, causeHeader := wire.KafkaPrefix+wire.AttrID, wire.KafkaPrefix+wire.AttrCausationID
	cloudEvent, caused := false, false
	for _, h := range hs {
		name, ok1 := bytesOf(h.Name)
		value, ok2 := bytesOf(h.Value)
		if !ok1 || !ok2 {
			return d, fmt.Errorf("stored header %v is malformed", h.Name)
		}
		if isDLTHeader(string(name)) {
			continue
		}
		if r.CopyID != "" {
			// The corrected copy is a new event: its own id, and the
			// original's as its cause.
			switch string(name) {
			case idHeader:
				value, cloudEvent = []byte(r.CopyID), true
			case causeHeader:
				value, caused = []byte(r.EventID), true
			case wire.EditOfHeader:
				continue
			}
		}
		msg.Headers = append(msg.Headers, kafkago.Header{Key: string(name), Value: value})
	}
	if r.CopyID != "" {
		if cloudEvent && !caused {
			msg.Headers = append(msg.Headers, kafkago.Header{Key: causeHeader, Value: []byte(r.EventID)})
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
	w := &kafkago.Writer{Addr: kafkago.TCP(c.Brokers...), Transport: c.roundTripper(), RequiredAcks: kafkago.RequireAll,
		MaxAttempts: 3, WriteTimeout: 10 * time.Second,
		// The original partition when known and still there, else by key
		// as the relay does.
		Balancer: kafkago.BalancerFunc(func(m kafkago.Message, partitions ...int) int {
			for _, p := range partitions {
				if p == partition {
					return p
				}
			}
			return (&kafkago.Hash{}).Balance(m, partitions...)
		})}
	defer w.Close()
	if err := w.WriteMessages(ctx, msg); err != nil {
		return d, fmt.Errorf("write to Kafka topic %q: %w", d.Topic, err)
	}
	return d, nil
}
