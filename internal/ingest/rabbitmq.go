package ingest

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// Defaults of RabbitMQConfig.
const (
	PrefetchDefault     = 50
	ReconnectMaxDefault = 30 * time.Second
	DialTimeoutDefault  = 10 * time.Second
)

// RabbitMQConn is how to reach RabbitMQ.
type RabbitMQConn struct {
	URL         string      // amqp:// or amqps://
	TLS         *tls.Config // for amqps:// (nil: the system roots)
	DialTimeout time.Duration
}

// RabbitMQConfig configures an ingest from a RabbitMQ queue.
type RabbitMQConfig struct {
	RabbitMQConn
	// Queue is the queue bound to a dead-letter exchange. It is read, never
	// declared: a missing queue is an error.
	Queue string
	// Source is stored as the consumer of every row (default
	// "rabbitmq:<queue>").
	Source string
	// Once drains what the queue holds and returns; otherwise Ingest runs
	// until ctx ends, reconnecting after broker or database failures.
	Once bool
	// Prefetch is the most unacknowledged messages in flight (default 50).
	Prefetch int
	// ReconnectMax caps the backoff between attempts (default 30s).
	ReconnectMax time.Duration
	Logger       *slog.Logger
}

// The broker's own dead-lettering headers. They describe the failure the
// row records, so a replay leaves them out: the replayed message is the
// message as it was first published.
var amqpDeathHeaders = map[string]bool{
	"x-death": true, "x-first-death-queue": true, "x-first-death-reason": true, "x-first-death-exchange": true,
	"x-last-death-queue": true, "x-last-death-reason": true, "x-last-death-exchange": true,
}

// death is one x-death entry, read tolerantly (a wrong type is ignored).
type death struct {
	Queue              string    `json:"queue,omitempty"`
	Reason             string    `json:"reason,omitempty"`
	Count              int64     `json:"count,omitempty"`
	Exchange           string    `json:"exchange"`
	RoutingKeys        []string  `json:"routing_keys,omitempty"`
	Time               time.Time `json:"time,omitzero"`
	OriginalExpiration string    `json:"original_expiration,omitempty"`
}

func str(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case []byte:
		return string(x), true
	}
	return "", false
}

func integer(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case int32:
		return int64(x), true
	case int16:
		return int64(x), true
	case int8:
		return int64(x), true
	case int:
		return int64(x), true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		return n, err == nil
	}
	return 0, false
}

func deaths(h amqp.Table) []death {
	list, _ := h["x-death"].([]any)
	var out []death
	for _, e := range list {
		t, ok := e.(amqp.Table)
		if !ok {
			continue
		}
		var d death
		d.Queue, _ = str(t["queue"])
		d.Reason, _ = str(t["reason"])
		d.Count, _ = integer(t["count"])
		d.Exchange, _ = str(t["exchange"])
		d.OriginalExpiration, _ = str(t["original-expiration"])
		if ts, ok := t["time"].(time.Time); ok {
			d.Time = ts.UTC()
		}
		keys, _ := t["routing-keys"].([]any)
		for _, k := range keys {
			if s, ok := str(k); ok {
				d.RoutingKeys = append(d.RoutingKeys, s)
			}
		}
		out = append(out, d)
	}
	return out
}

// target is the death that put the message into the dead-letter queue,
// whose queue a replay goes back to: the most recent death whose reason is
// rejected or delivery_limit (a consumer refused it, or gave up on it),
// else the most recent death. RabbitMQ keeps one x-death entry per queue
// and reason, the most recent first. Not the first death: in a delay or
// retry topology (a queue with a TTL and no consumer, dead-lettering into
// the work exchange) the first death is the delay queue's expiry, and a
// replay there would fan out again to queues that applied the message.
// Nil when the chain names no queue.
func target(ds []death) *death {
	for i := range ds {
		if (ds[i].Reason == "rejected" || ds[i].Reason == "delivery_limit") && ds[i].Queue != "" {
			return &ds[i]
		}
	}
	if len(ds) > 0 && ds[0].Queue != "" {
		return &ds[0]
	}
	return nil
}

// chain shows the deaths of x-death oldest first ("q1 (expired) -> q2
// (rejected, 3 times)"), for the operator who checks where a replay goes.
func chain(ds []death) string {
	parts := make([]string, 0, len(ds))
	for i := len(ds) - 1; i >= 0; i-- {
		p := fmt.Sprintf("%q (%s", ds[i].Queue, orUnknown(ds[i].Reason))
		if ds[i].Count > 1 {
			p += fmt.Sprintf(", %d times", ds[i].Count)
		}
		parts = append(parts, p+")")
	}
	return strings.Join(parts, " -> ")
}

// classOfReason maps an x-death reason to the error taxonomy.
func classOfReason(reason string) failure.Class {
	switch reason {
	case "rejected":
		// A consumer refused it (basic.reject or basic.nack without requeue).
		return failure.Permanent
	case "expired", "maxlen", "delivery_limit":
		// Not consumed in time, pushed out of a full queue, or redelivered
		// too often: nothing says the message itself is wrong.
		return failure.Transient
	}
	return failure.Permanent
}

// rabbitLetter converts a delivery from queue into a Letter. It never fails.
func rabbitLetter(source, queue string, d *amqp.Delivery, now time.Time) *Letter {
	h := d.Headers
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	type header struct {
		Name  any   `json:"name"`
		Value any   `json:"value"`
		AMQP  typed `json:"amqp"`
	}
	hs := make([]header, len(names))
	for i, k := range names {
		hs[i] = header{Name: textOrBase64([]byte(k)), Value: displayValue(h[k]), AMQP: encodeValue(h[k], 0)}
	}
	headers, err := json.Marshal(hs)
	if err != nil {
		headers = []byte("[]")
	}

	props := map[string]any{}
	for k, v := range map[string]string{"content_type": d.ContentType, "content_encoding": d.ContentEncoding,
		"correlation_id": d.CorrelationId, "reply_to": d.ReplyTo, "expiration": d.Expiration, "message_id": d.MessageId,
		"type": d.Type, "user_id": d.UserId, "app_id": d.AppId} {
		if v != "" {
			props[k] = textOrBase64([]byte(v))
		}
	}
	if d.DeliveryMode != 0 {
		props["delivery_mode"] = d.DeliveryMode
	}
	if d.Priority != 0 {
		props["priority"] = d.Priority
	}
	if !d.Timestamp.IsZero() {
		props["timestamp"] = d.Timestamp.Unix()
	}
	identity, _ := json.Marshal(map[string]any{"properties": props, "exchange": textOrBase64([]byte(d.Exchange)),
		"routing_key": textOrBase64([]byte(d.RoutingKey))})
	sum := digest(d.Body, identity, headers)
	ingestKey := "rabbitmq:" + queue + ":" + hex.EncodeToString(sum[:])

	ds := deaths(h)
	origin := target(ds)
	src := map[string]any{"binding": "amqp", "broker": "rabbitmq", "queue": queue,
		"exchange": textOrBase64([]byte(d.Exchange)), "routing_key": textOrBase64([]byte(d.RoutingKey)),
		"properties": props}
	var attempts int64
	first, last := time.Time{}, time.Time{}
	for _, x := range ds {
		attempts += max(x.Count, 1)
		if !x.Time.IsZero() && (first.IsZero() || x.Time.Before(first)) {
			first = x.Time
		}
		if x.Time.After(last) {
			last = x.Time
		}
	}
	if len(ds) > 0 {
		src["x_death"] = plain(h["x-death"], 0)
	}
	if first.IsZero() {
		first, last = now, now
	}
	topic := d.RoutingKey
	if origin != nil {
		src["original_exchange"] = textOrBase64([]byte(origin.Exchange))
		if len(origin.RoutingKeys) > 0 {
			topic = origin.RoutingKeys[0]
			src["original_routing_key"] = textOrBase64([]byte(topic))
		}
		src["original_queue"] = textOrBase64([]byte(origin.Queue))
		if origin.Exchange == "" {
			// An operator's earlier replay: the routing key is the
			// queue's name, the topic is in wire.TopicHeader (unless
			// its spellings disagree: then the routing key).
			if s, ok := wire.TopicOf(h); ok {
				topic = s
			}
		}
	}
	if len(ds) > 1 {
		src["death_chain"] = chain(ds)
	}
	if topic == "" {
		topic = queue
	}
	var errText string
	class := failure.Permanent
	if len(ds) > 0 {
		recent := ds[0]
		class = classOfReason(recent.Reason)
		var b strings.Builder
		fmt.Fprintf(&b, "rabbitmq dead-lettered it: %s in queue %q", orUnknown(recent.Reason), recent.Queue)
		if recent.Count > 1 {
			fmt.Fprintf(&b, " (%d times)", recent.Count)
		}
		if origin != nil {
			fmt.Fprintf(&b, "; it reached queue %q from exchange %q with routing keys %q", origin.Queue, origin.Exchange, origin.RoutingKeys)
		}
		if len(ds) > 1 {
			fmt.Fprintf(&b, "; dead-letter chain, oldest first: %s", chain(ds))
		}
		if recent.OriginalExpiration != "" {
			fmt.Fprintf(&b, "; it had expiration %s ms", recent.OriginalExpiration)
		}
		errText = b.String()
	} else {
		errText = fmt.Sprintf("found in dead-letter queue %q without an x-death header: published there directly, or by a broker that does not record deaths; the original destination is unknown", queue)
	}
	if attempts < 1 {
		attempts = 1
	}

	l := &Letter{Source: source, From: FromRabbitMQ, IngestKey: ingestKey, Payload: d.Body, Headers: headers,
		Error: text(errText, maxErrorBytes), Class: string(class), Attempts: int(min(attempts, 1<<30)),
		FirstFailedAt: first, LastFailedAt: last}
	if l.Payload == nil {
		l.Payload = []byte{}
	}
	stored := text(topic, maxTopicBytes)
	if stored != topic {
		src["raw_topic"] = textOrBase64([]byte(topic))
	}
	if stored == "" {
		stored = text(queue, maxTopicBytes)
	}
	l.Topic = stored
	ce := func(attr string) string {
		for k, v := range h {
			if strings.EqualFold(k, wire.AMQPPrefix+attr) {
				s, _ := str(v)
				return s
			}
		}
		return ""
	}
	own := ce(wire.AttrID)
	if own == "" {
		own = d.MessageId
	}
	l.EventID = eventID(own, ingestKey)
	l.Key = text(ce(wire.AttrPartitionKey), maxShortBytes)
	if n, err := strconv.ParseInt(ce(wire.AttrSequence), 10, 64); err == nil && l.Key != "" {
		l.Sequence = &n
	}
	typ := ce(wire.AttrType)
	if typ == "" {
		typ = d.Type
	}
	l.Type = nonEmpty(text(typ, maxShortBytes))
	if v, ok := integer(h[wire.AMQPPrefix+wire.AttrEventVersion]); ok && v > 0 && v <= 1<<31-1 {
		n := int(v)
		l.Version = &n
	}
	l.ContentType = nonEmpty(text(d.ContentType, maxShortBytes))
	corr := ce(wire.AttrCorrelationID)
	if corr == "" {
		corr = d.CorrelationId
	}
	l.CorrelationID = nonEmpty(text(corr, maxShortBytes))
	if origin, err := json.Marshal(src); err == nil {
		l.Origin = origin
	} else {
		l.Origin = []byte(`{"binding":"amqp","broker":"rabbitmq"}`)
	}
	return l
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown reason"
	}
	return s
}

func (c *RabbitMQConn) dial(ctx context.Context, name string) (*amqp.Connection, error) {
	timeout := c.DialTimeout
	if timeout <= 0 {
		timeout = DialTimeoutDefault
	}
	conn, err := amqp.DialConfig(c.URL, amqp.Config{
		TLSClientConfig: c.TLS,
		Heartbeat:       10 * time.Second,
		Properties:      amqp.Table{"connection_name": name},
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout}
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %s", redactURL(c.URL), scrub(err.Error(), c.URL))
	}
	return conn, nil
}

// redactURL hides the password of an AMQP URL.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func scrub(msg, raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return msg
}

// IngestRabbitMQ copies the messages of cfg.Queue into inbox.dead_letters,
// acknowledging each only after its row is committed.
func (s *Store) IngestRabbitMQ(ctx context.Context, cfg RabbitMQConfig) (Result, error) {
	var res Result
	if cfg.Queue == "" {
		return res, errors.New("ingest: the RabbitMQ queue is required")
	}
	if cfg.Source == "" {
		cfg.Source = "rabbitmq:" + cfg.Queue
	}
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = PrefetchDefault
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = ReconnectMaxDefault
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(slog.String("source", cfg.Source), slog.String("queue", cfg.Queue))
	if err := s.CheckSource(ctx, cfg.Source); err != nil {
		return res, err
	}
	if cfg.Once {
		err := s.rabbitSession(ctx, cfg, &res, log)
		return res, err
	}
	for failures := 0; ; failures++ {
		err := s.rabbitSession(ctx, cfg, &res, log)
		if ctx.Err() != nil {
			return res, nil
		}
		d := min(time.Second<<min(failures, 10), cfg.ReconnectMax)
		d = d/2 + rand.N(d/2+1)
		log.Warn("ingest: interrupted, retrying; unacknowledged messages stay in the queue",
			slog.Any("error", err), slog.Duration("retry_in", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, nil
		case <-t.C:
		}
		if err == nil {
			failures = 0
		}
	}
}

// rabbitSession ingests over one connection. In Once mode it returns nil
// when the queue is empty; otherwise it returns when the connection, the
// channel or the database fails, or ctx ends. Messages not acknowledged
// when the channel closes go back to the queue.
func (s *Store) rabbitSession(ctx context.Context, cfg RabbitMQConfig, res *Result, log *slog.Logger) error {
	conn, err := cfg.dial(ctx, "outboxkit ingest "+cfg.Source)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclarePassive(cfg.Queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("queue %q: %w (declare it, bound to your dead-letter exchange, before ingesting)", cfg.Queue, err)
	}
	handle := func(d *amqp.Delivery) error {
		l := rabbitLetter(cfg.Source, cfg.Queue, d, time.Now().UTC())
		id, inserted, err := s.Ingest(ctx, l)
		if err != nil {
			return err // not acknowledged: the broker keeps it
		}
		if inserted {
			res.Ingested++
			log.Info("ingest: dead letter stored", slog.Int64("dead_letter_id", id), slog.String("error_class", l.Class),
				slog.String("topic", l.Topic))
		} else {
			res.Duplicates++
			log.Info("ingest: ingested before, acknowledging", slog.Int64("dead_letter_id", id))
		}
		if err := d.Ack(false); err != nil {
			// The row is committed; the broker delivers the message again
			// and that delivery inserts nothing.
			return fmt.Errorf("acknowledge: %w", err)
		}
		return nil
	}
	if cfg.Once {
		for ctx.Err() == nil {
			d, ok, err := ch.Get(cfg.Queue, false)
			if err != nil {
				return fmt.Errorf("get from %q: %w", cfg.Queue, err)
			}
			if !ok {
				return nil
			}
			if err := handle(&d); err != nil {
				return err
			}
		}
		return ctx.Err()
	}
	if err := ch.Qos(cfg.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	tag := fmt.Sprintf("outboxkit-ingest-%08x", rand.Uint32())
	deliveries, err := ch.Consume(cfg.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %q: %w", cfg.Queue, err)
	}
	log.Info("ingest: consuming", slog.String("url", redactURL(cfg.URL)))
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-closed:
			if e == nil {
				return errors.New("channel closed")
			}
			return e
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("the broker cancelled the consumer (queue deleted?)")
			}
			if err := handle(&d); err != nil {
				return err
			}
		}
	}
}
