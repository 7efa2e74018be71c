package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
)

// ReplayTimeoutDefault bounds one republish (connect, publish, confirm).
const ReplayTimeoutDefault = 30 * time.Second

// Action is who acts and why; both are required and audited.
type Action struct {
	Actor  string
	Reason string
}

// Brokers are the connections a replay may need; only the broker the row
// came from has to be set.
type Brokers struct {
	RabbitMQ *RabbitMQConn
	Kafka    *KafkaConn
	// Timeout bounds the republish (default ReplayTimeoutDefault).
	Timeout time.Duration
}

// row is an ingested dead letter locked for an action.
type row struct {
	from    string
	status  string
	eventID uuid.UUID
	payload []byte
	headers json.RawMessage
	source  map[string]any
	before  json.RawMessage
}

// act runs fn on ingested row id, locked, in one transaction with its
// audit entry.
func (s *Store) act(ctx context.Context, a Action, id int64, fn func(tx pgx.Tx, r *row) (action string, after json.RawMessage, details map[string]any, err error)) error {
	if a.Actor == "" || a.Reason == "" {
		return errors.New("an actor and a reason are required")
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r := &row{}
		var from *string
		var src json.RawMessage
		err := tx.QueryRow(ctx, s.sql.lock, id).Scan(&from, &r.status, &r.eventID, &r.payload, &r.headers, &src, &r.before)
		var pgErr *pgconn.PgError
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("i:%d: %w", id, ErrNotFound)
		case errors.As(err, &pgErr) && pgErr.Code == "55P03":
			return fmt.Errorf("i:%d: %w", id, ErrBusy)
		case err != nil:
			return err
		case from == nil:
			return fmt.Errorf("i:%d: %w", id, ErrNotIngested)
		}
		r.from = *from
		if err := json.Unmarshal(src, &r.source); err != nil {
			return fmt.Errorf("i:%d: source: %w", id, err)
		}
		action, after, details, err := fn(tx, r)
		if err != nil {
			return err
		}
		details["ref"] = fmt.Sprintf("i:%d", id)
		details["ingested_from"] = r.from
		det, err := json.Marshal(details)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, s.sql.audit, a.Actor, action, []string{fmt.Sprint(id), r.eventID.String()}, a.Reason,
			r.before, after, det)
		return err
	})
}

func (s *Store) move(ctx context.Context, tx pgx.Tx, id int64, from, to string) (json.RawMessage, error) {
	var after json.RawMessage
	if err := tx.QueryRow(ctx, s.sql.setStatus, id, from, to).Scan(&after); err != nil {
		return nil, err
	}
	return after, nil
}

// Drop soft-deletes a parked ingested dead letter; Restore undoes it.
func (s *Store) Drop(ctx context.Context, a Action, id int64) error {
	return s.act(ctx, a, id, func(tx pgx.Tx, r *row) (string, json.RawMessage, map[string]any, error) {
		if r.status != "parked" {
			return "", nil, nil, fmt.Errorf("i:%d is %s, only parked dead letters are dropped: %w", id, r.status, ErrWrongStatus)
		}
		after, err := s.move(ctx, tx, id, "parked", "dropped")
		return "drop", after, map[string]any{}, err
	})
}

// Restore puts a dropped ingested dead letter back to parked.
func (s *Store) Restore(ctx context.Context, a Action, id int64) error {
	return s.act(ctx, a, id, func(tx pgx.Tx, r *row) (string, json.RawMessage, map[string]any, error) {
		if r.status != "dropped" {
			return "", nil, nil, fmt.Errorf("i:%d is %s, only dropped dead letters are restored: %w", id, r.status, ErrWrongStatus)
		}
		after, err := s.move(ctx, tx, id, "dropped", "parked")
		return "restore", after, map[string]any{}, err
	})
}

// Replay republishes a parked ingested dead letter to where it came from
// and marks it replayed. The row stays locked during the republish (one
// row, bounded by Brokers.Timeout), so two operators never send it twice;
// the publish is confirmed by the broker before the row changes. If the
// database fails after the broker confirmed, the row stays parked and a
// second replay sends the message again: consumers deduplicate by event id.
// It returns where the message went.
func (s *Store) Replay(ctx context.Context, a Action, id int64, b Brokers) (string, error) {
	timeout := b.Timeout
	if timeout <= 0 {
		timeout = ReplayTimeoutDefault
	}
	var note string
	err := s.act(ctx, a, id, func(tx pgx.Tx, r *row) (string, json.RawMessage, map[string]any, error) {
		if r.status != "parked" {
			return "", nil, nil, fmt.Errorf("i:%d is %s, only parked dead letters are replayed: %w", id, r.status, ErrWrongStatus)
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var target map[string]any
		var err error
		switch r.from {
		case FromRabbitMQ:
			if b.RabbitMQ == nil || b.RabbitMQ.URL == "" {
				return "", nil, nil, fmt.Errorf("i:%d came from RabbitMQ: pass --rabbitmq-url (or set RABBITMQ_URL) to replay it", id)
			}
			target, err = republishRabbitMQ(pctx, b.RabbitMQ, r)
		case FromKafka:
			if b.Kafka == nil || len(b.Kafka.Brokers) == 0 {
				return "", nil, nil, fmt.Errorf("i:%d came from Kafka: pass --kafka-brokers (or set KAFKA_BROKERS) to replay it", id)
			}
			target, err = republishKafka(pctx, b.Kafka, r)
		default:
			err = fmt.Errorf("i:%d: unknown broker %q", id, r.from)
		}
		if err != nil {
			return "", nil, nil, fmt.Errorf("i:%d not replayed, still parked: %w", id, err)
		}
		note = fmt.Sprint(target["description"])
		after, err := s.move(ctx, tx, id, "parked", "replayed")
		if err != nil {
			return "", nil, nil, fmt.Errorf("i:%d was republished (%s) but could not be marked replayed: %w; a second replay sends it again (consumers deduplicate by event id)", id, note, err)
		}
		return "replay", after, map[string]any{"republished_to": target}, nil
	})
	return note, err
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

func republishRabbitMQ(ctx context.Context, c *RabbitMQConn, r *row) (map[string]any, error) {
	exchangeB, ok := bytesOf(r.source["original_exchange"])
	keyB, okKey := bytesOf(r.source["original_routing_key"])
	if !ok || !okKey {
		return nil, fmt.Errorf("%w: the message had no x-death header naming its original exchange and routing key", ErrNoTarget)
	}
	exchange, key := string(exchangeB), string(keyB)
	var hs []struct {
		Name any    `json:"name"`
		AMQP *typed `json:"amqp"`
	}
	if err := json.Unmarshal(r.headers, &hs); err != nil {
		return nil, fmt.Errorf("stored headers: %w", err)
	}
	table := amqp.Table{}
	for _, h := range hs {
		name, err := decodeName(h.Name)
		if err != nil {
			return nil, err
		}
		if amqpDeathHeaders[name] || h.AMQP == nil {
			continue
		}
		v, err := decodeValue(*h.AMQP)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", name, err)
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
		ReplyTo: prop("reply_to"), MessageId: prop("message_id"), Type: prop("type"), AppId: prop("app_id"), Body: r.payload}
	// Not restored: expiration (the TTL that may have expired it would
	// expire it again) and user_id (the broker refuses a user id other
	// than the replaying connection's own).
	if ts := num("timestamp"); ts != 0 {
		msg.Timestamp = time.Unix(ts, 0)
	}
	if msg.DeliveryMode == 0 {
		msg.DeliveryMode = amqp.Persistent
	}
	conn, err := c.dial(ctx, "outboxkit dlq replay")
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("publisher confirms: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, msg)
	if err != nil {
		return nil, fmt.Errorf("publish to exchange %q: %w", exchange, err)
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("no publisher confirm: %w", err)
	}
	if !acked {
		return nil, fmt.Errorf("RabbitMQ refused the message (nack) on exchange %q", exchange)
	}
	// A mandatory message that no queue took is returned before its ack.
	select {
	case ret := <-returns:
		return nil, fmt.Errorf("unroutable: exchange %q has no queue bound for routing key %q (%d %s); bind one, then replay again",
			exchange, key, ret.ReplyCode, ret.ReplyText)
	default:
	}
	return map[string]any{"broker": "rabbitmq", "exchange": exchange, "routing_key": key,
		"description": fmt.Sprintf("republished to RabbitMQ exchange %q with routing key %q (confirmed)", exchange, key)}, nil
}

func republishKafka(ctx context.Context, c *KafkaConn, r *row) (map[string]any, error) {
	topicB, ok := bytesOf(r.source["original_topic"])
	if !ok || len(topicB) == 0 {
		return nil, fmt.Errorf("%w: the record carried no original-topic header (outboxkit-dlt-original-topic, kafka_dlt-original-topic or __connect.errors.topic)", ErrNoTarget)
	}
	topic := string(topicB)
	var hs []struct {
		Name  any `json:"name"`
		Value any `json:"value"`
	}
	if err := json.Unmarshal(r.headers, &hs); err != nil {
		return nil, fmt.Errorf("stored headers: %w", err)
	}
	msg := kafkago.Message{Topic: topic, Value: r.payload}
	for _, h := range hs {
		name, ok1 := bytesOf(h.Name)
		value, ok2 := bytesOf(h.Value)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("stored header %v is malformed", h.Name)
		}
		if isDLTHeader(string(name)) {
			continue
		}
		msg.Headers = append(msg.Headers, kafkago.Header{Key: string(name), Value: value})
	}
	if k, ok := bytesOf(r.source["key"]); ok {
		msg.Key = k
	}
	partition := -1
	if p, ok := r.source["original_partition"].(float64); ok {
		partition = int(p)
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
		return nil, fmt.Errorf("write to Kafka topic %q: %w", topic, err)
	}
	return map[string]any{"broker": "kafka", "topic": topic, "partition": partition,
		"description": fmt.Sprintf("republished to Kafka topic %q (acknowledged by all in-sync replicas)", topic)}, nil
}
