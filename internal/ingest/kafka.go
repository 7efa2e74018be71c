package ingest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// IdleTimeoutDefault ends a Once run of a Kafka ingest that has received
// nothing for this long although the end offsets it aimed for were not
// reached (offsets taken by transaction markers are never delivered).
const IdleTimeoutDefault = 15 * time.Second

// KafkaConn is how to reach Kafka.
type KafkaConn struct {
	Brokers []string
	// Transport carries TLS and SASL settings (nil: plain TCP).
	Transport *kafkago.Transport
}

func (c *KafkaConn) dialer() *kafkago.Dialer {
	d := &kafkago.Dialer{Timeout: 10 * time.Second, DualStack: true, ClientID: "outboxkit-ingest"}
	if c.Transport != nil {
		d.TLS, d.SASLMechanism = c.Transport.TLS, c.Transport.SASL
	}
	return d
}

func (c *KafkaConn) client() *kafkago.Client {
	return &kafkago.Client{Addr: kafkago.TCP(c.Brokers...), Timeout: 30 * time.Second, Transport: c.roundTripper()}
}

// roundTripper is the Transport, or nil (kafka-go's default) when there is
// none: a nil *Transport in the interface would be called.
func (c *KafkaConn) roundTripper() kafkago.RoundTripper {
	if c.Transport == nil {
		return nil
	}
	return c.Transport
}

// KafkaConfig configures an ingest from a Kafka dead-letter topic.
type KafkaConfig struct {
	KafkaConn
	// Topic is the dead-letter topic.
	Topic string
	// Group is the consumer group whose committed offsets say what was
	// ingested (default "outboxkit-ingest-" + Topic).
	Group string
	// Source is stored as the consumer of every row (default "kafka:<topic>").
	Source string
	// Once reads up to the end offsets found at the start and returns;
	// otherwise Ingest runs until ctx ends.
	Once bool
	// IdleTimeout: see IdleTimeoutDefault.
	IdleTimeout  time.Duration
	ReconnectMax time.Duration
	Logger       *slog.Logger
}

// Header conventions of dead-letter topics. The first convention that
// carries a field wins, in this order: outboxkit, Spring Kafka, Kafka
// Connect. The replay of a row leaves every one of them out, so the
// replayed record is the record as it was first published.
const (
	// outboxkit's own, for any producer that writes a dead-letter topic:
	// decimal numbers and RFC 3339 times as text.
	OutboxkitDLTPrefix       = "outboxkit-dlt-"
	hdrOKTopic               = "outboxkit-dlt-original-topic"
	hdrOKPartition           = "outboxkit-dlt-original-partition"
	hdrOKOffset              = "outboxkit-dlt-original-offset"
	hdrOKError               = "outboxkit-dlt-error"
	hdrOKClass               = "outboxkit-dlt-error-class"
	hdrOKAttempts            = "outboxkit-dlt-attempts"
	hdrOKConsumer            = "outboxkit-dlt-consumer"
	hdrOKFirstFailed         = "outboxkit-dlt-first-failed-at"
	hdrOKLastFailed          = "outboxkit-dlt-last-failed-at"
	springPrefix             = "kafka_dlt-"
	hdrSpringTopic           = "kafka_dlt-original-topic"
	hdrSpringPartition       = "kafka_dlt-original-partition" // 4-byte big-endian int
	hdrSpringOffset          = "kafka_dlt-original-offset"    // 8-byte big-endian long
	hdrSpringGroup           = "kafka_dlt-original-consumer-group"
	hdrSpringFQCN            = "kafka_dlt-exception-fqcn"
	hdrSpringCause           = "kafka_dlt-exception-cause-fqcn"
	hdrSpringMessage         = "kafka_dlt-exception-message"
	hdrSpringKeyFQCN         = "kafka_dlt-key-exception-fqcn"
	hdrSpringKeyMessage      = "kafka_dlt-key-exception-message"
	springRetryPrefix        = "retry_topic-"
	hdrSpringRetryAttempts   = "retry_topic-attempts" // 4-byte big-endian int
	connectPrefix            = "__connect.errors."
	hdrConnectTopic          = "__connect.errors.topic"
	hdrConnectPartition      = "__connect.errors.partition"
	hdrConnectOffset         = "__connect.errors.offset"
	hdrConnectConnector      = "__connect.errors.connector.name"
	hdrConnectStage          = "__connect.errors.stage"
	hdrConnectExceptionClass = "__connect.errors.exception.class.name"
	hdrConnectMessage        = "__connect.errors.exception.message"
)

func isDLTHeader(name string) bool {
	for _, p := range []string{OutboxkitDLTPrefix, springPrefix, springRetryPrefix, connectPrefix} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// kafkaHeaders finds header values; the last occurrence wins (a record
// dead-lettered twice carries the newest context last).
type kafkaHeaders []kafkago.Header

func (hs kafkaHeaders) get(name string) ([]byte, bool) {
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i].Key == name {
			return hs[i].Value, true
		}
	}
	return nil, false
}

func (hs kafkaHeaders) text(names ...string) string {
	for _, n := range names {
		if v, ok := hs.get(n); ok && len(v) > 0 {
			return string(v)
		}
	}
	return ""
}

func (hs kafkaHeaders) getFold(name string) string {
	for i := len(hs) - 1; i >= 0; i-- {
		if strings.EqualFold(hs[i].Key, name) {
			return string(hs[i].Value)
		}
	}
	return ""
}

// number reads a decimal text, or (Spring) a big-endian binary integer of
// binaryLen bytes.
func (hs kafkaHeaders) number(name string, binaryLen int) (int64, bool) {
	v, ok := hs.get(name)
	if !ok {
		return 0, false
	}
	if n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64); err == nil {
		return n, true
	}
	switch {
	case binaryLen == 4 && len(v) == 4:
		return int64(int32(binary.BigEndian.Uint32(v))), true
	case binaryLen == 8 && len(v) == 8:
		return int64(binary.BigEndian.Uint64(v)), true
	}
	return 0, false
}

var poisonHints = []string{"DeserializationException", "SerializationException", "ConversionException", "ConverterException"}

// kafkaLetter converts a record of a dead-letter topic into a Letter. It
// never fails.
func kafkaLetter(source string, m *kafkago.Message, now time.Time) *Letter {
	hs := kafkaHeaders(m.Headers)
	type header struct {
		Name  any `json:"name"`
		Value any `json:"value"`
	}
	list := make([]header, len(hs))
	for i, h := range hs {
		list[i] = header{Name: textOrBase64([]byte(h.Key)), Value: textOrBase64(h.Value)}
	}
	headers, err := json.Marshal(list)
	if err != nil {
		headers = []byte("[]")
	}
	ingestKey := fmt.Sprintf("kafka:%s/%d@%d", m.Topic, m.Partition, m.Offset)
	src := map[string]any{"binding": "kafka", "broker": "kafka", "topic": textOrBase64([]byte(m.Topic)),
		"partition": m.Partition, "offset": m.Offset}
	if m.Key != nil {
		src["key"] = textOrBase64(m.Key)
	}
	if !m.Time.IsZero() {
		src["timestamp"] = m.Time.UTC().Format(time.RFC3339Nano)
	}
	var conventions []string
	for _, c := range []struct{ name, prefix string }{{"outboxkit", OutboxkitDLTPrefix}, {"spring-kafka", springPrefix},
		{"kafka-connect", connectPrefix}} {
		for _, h := range hs {
			if strings.HasPrefix(h.Key, c.prefix) {
				conventions = append(conventions, c.name)
				break
			}
		}
	}
	if len(conventions) > 0 {
		src["conventions"] = conventions
	}

	origTopic := hs.text(hdrOKTopic, hdrSpringTopic, hdrConnectTopic)
	if origTopic != "" {
		src["original_topic"] = textOrBase64([]byte(origTopic))
	}
	for _, f := range []struct {
		key   string
		names []string
		bin   int
	}{{"original_partition", []string{hdrOKPartition, hdrSpringPartition, hdrConnectPartition}, 4},
		{"original_offset", []string{hdrOKOffset, hdrSpringOffset, hdrConnectOffset}, 8}} {
		for _, n := range f.names {
			if v, ok := hs.number(n, f.bin); ok {
				src[f.key] = v
				break
			}
		}
	}
	if g := hs.text(hdrOKConsumer, hdrSpringGroup, hdrConnectConnector); g != "" {
		src["failed_consumer"] = textOrBase64([]byte(g))
	}

	// The error, in the words of whichever convention wrote it.
	class := failure.Permanent
	var errText string
	switch {
	case hs.text(hdrOKError) != "":
		errText = hs.text(hdrOKError)
	case hs.text(hdrSpringFQCN, hdrSpringMessage) != "":
		errText = strings.TrimPrefix(hs.text(hdrSpringFQCN)+": "+hs.text(hdrSpringMessage), ": ")
		if c := hs.text(hdrSpringCause); c != "" {
			errText += " (cause " + c + ")"
		}
	case hs.text(hdrSpringKeyFQCN, hdrSpringKeyMessage) != "":
		errText = "key: " + strings.TrimPrefix(hs.text(hdrSpringKeyFQCN)+": "+hs.text(hdrSpringKeyMessage), ": ")
	case hs.text(hdrConnectExceptionClass, hdrConnectMessage) != "":
		errText = strings.TrimPrefix(hs.text(hdrConnectExceptionClass)+": "+hs.text(hdrConnectMessage), ": ")
		if st := hs.text(hdrConnectStage); st != "" {
			errText += " (stage " + st + ")"
		}
	default:
		errText = fmt.Sprintf("found in dead-letter topic %q without error headers (none of the outboxkit-dlt-*, kafka_dlt-* or __connect.errors.* conventions)", m.Topic)
	}
	if c := failure.Class(hs.text(hdrOKClass)); c != "" && validClass(c) {
		class = c
	} else {
		probe := hs.text(hdrSpringFQCN) + " " + hs.text(hdrSpringCause) + " " + hs.text(hdrSpringKeyFQCN) + " " + hs.text(hdrConnectExceptionClass)
		for _, p := range poisonHints {
			if strings.Contains(probe, p) {
				class = failure.PoisonFormat
			}
		}
		if st := hs.text(hdrConnectStage); strings.HasSuffix(st, "_CONVERTER") {
			class = failure.PoisonFormat
		}
	}
	attempts := int64(1)
	if n, ok := hs.number(hdrOKAttempts, 0); ok && n > 0 {
		attempts = n
	} else if n, ok := hs.number(hdrSpringRetryAttempts, 4); ok && n > 0 {
		attempts = n
	}
	last := m.Time.UTC()
	if last.IsZero() {
		last = now
	}
	if t, err := time.Parse(time.RFC3339Nano, hs.text(hdrOKLastFailed)); err == nil {
		last = t.UTC()
	}
	first := last
	if t, err := time.Parse(time.RFC3339Nano, hs.text(hdrOKFirstFailed)); err == nil && !t.After(last) {
		first = t.UTC()
	}

	topic := origTopic
	if topic == "" {
		topic = m.Topic
	}
	l := &Letter{Source: source, From: FromKafka, IngestKey: ingestKey, Payload: m.Value, Headers: headers,
		Error: text(errText, maxErrorBytes), Class: string(class), Attempts: int(min(attempts, 1<<30)),
		FirstFailedAt: first, LastFailedAt: last}
	if l.Payload == nil {
		l.Payload = []byte{}
	}
	l.Topic = text(topic, maxTopicBytes)
	if l.Topic != topic {
		src["raw_topic"] = textOrBase64([]byte(topic))
	}
	if l.Topic == "" {
		l.Topic = text(m.Topic, maxTopicBytes)
	}
	ce := func(attr string) string { return hs.getFold(wire.KafkaPrefix + attr) }
	l.EventID = eventID(ce(wire.AttrID), ingestKey)
	key := ce(wire.AttrPartitionKey)
	if key == "" && isText(m.Key) {
		key = string(m.Key)
	}
	l.Key = text(key, maxShortBytes)
	if n, err := strconv.ParseInt(ce(wire.AttrSequence), 10, 64); err == nil && l.Key != "" {
		l.Sequence = &n
	}
	l.Type = nonEmpty(text(ce(wire.AttrType), maxShortBytes))
	if n, err := strconv.Atoi(ce(wire.AttrEventVersion)); err == nil && n > 0 {
		l.Version = &n
	}
	l.ContentType = nonEmpty(text(hs.getFold(wire.ContentTypeHeader), maxShortBytes))
	l.CorrelationID = nonEmpty(text(ce(wire.AttrCorrelationID), maxShortBytes))
	if origin, err := json.Marshal(src); err == nil {
		l.Origin = origin
	} else {
		l.Origin = []byte(`{"binding":"kafka","broker":"kafka"}`)
	}
	return l
}

func validClass(c failure.Class) bool {
	for _, k := range failure.Classes {
		if k == c {
			return true
		}
	}
	return false
}

// IngestKafka copies the records of cfg.Topic into inbox.dead_letters as
// consumer group cfg.Group, committing each record's offset only after its
// row is committed.
func (s *Store) IngestKafka(ctx context.Context, cfg KafkaConfig) (Result, error) {
	var res Result
	if cfg.Topic == "" || len(cfg.Brokers) == 0 {
		return res, errors.New("ingest: the Kafka topic and brokers are required")
	}
	if cfg.Source == "" {
		cfg.Source = "kafka:" + cfg.Topic
	}
	if cfg.Group == "" {
		cfg.Group = "outboxkit-ingest-" + cfg.Topic
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = IdleTimeoutDefault
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = ReconnectMaxDefault
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(slog.String("source", cfg.Source), slog.String("topic", cfg.Topic), slog.String("group", cfg.Group))
	if err := s.CheckSource(ctx, cfg.Source); err != nil {
		return res, err
	}
	if cfg.Once {
		err := s.kafkaOnce(ctx, cfg, &res, log)
		return res, err
	}
	for failures := 0; ; failures++ {
		err := s.kafkaSession(ctx, cfg, &res, log, nil)
		if ctx.Err() != nil {
			return res, nil
		}
		d := min(time.Second<<min(failures, 10), cfg.ReconnectMax)
		d = d/2 + rand.N(d/2+1)
		log.Warn("ingest: interrupted, retrying from the last committed offset", slog.Any("error", err), slog.Duration("retry_in", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, nil
		case <-t.C:
		}
	}
}

// kafkaOnce reads up to the end offsets of the topic's partitions as they
// are at the start.
func (s *Store) kafkaOnce(ctx context.Context, cfg KafkaConfig, res *Result, log *slog.Logger) error {
	cl := cfg.client()
	meta, err := cl.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{cfg.Topic}})
	if err != nil {
		return fmt.Errorf("kafka metadata of %q: %w", cfg.Topic, err)
	}
	if len(meta.Topics) != 1 || meta.Topics[0].Error != nil {
		var terr error
		if len(meta.Topics) == 1 {
			terr = meta.Topics[0].Error
		}
		return fmt.Errorf("kafka topic %q: %v", cfg.Topic, terr)
	}
	var reqs []kafkago.OffsetRequest
	var parts []int
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafkago.FirstOffsetOf(p.ID), kafkago.LastOffsetOf(p.ID))
		parts = append(parts, p.ID)
	}
	offs, err := cl.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{cfg.Topic: reqs}})
	if err != nil {
		return fmt.Errorf("kafka end offsets of %q: %w", cfg.Topic, err)
	}
	committed, err := cl.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: cfg.Group, Topics: map[string][]int{cfg.Topic: parts}})
	if err != nil {
		return fmt.Errorf("kafka committed offsets of group %q: %w", cfg.Group, err)
	}
	start := map[int]int64{}
	for _, p := range committed.Topics[cfg.Topic] {
		if p.Error == nil && p.CommittedOffset >= 0 {
			start[p.Partition] = p.CommittedOffset
		}
	}
	target := map[int]int64{}
	for _, p := range offs.Topics[cfg.Topic] {
		if p.Error != nil {
			return fmt.Errorf("kafka offsets of %s/%d: %w", cfg.Topic, p.Partition, p.Error)
		}
		from, ok := start[p.Partition]
		if !ok || from < p.FirstOffset {
			from = p.FirstOffset
		}
		if from < p.LastOffset {
			target[p.Partition] = p.LastOffset
		}
	}
	if len(target) == 0 {
		return nil
	}
	return s.kafkaSession(ctx, cfg, res, log, target)
}

// kafkaSession reads as the consumer group until ctx ends, the database
// fails (the reader is closed so the record is read again from the last
// commit), or, when target is set, every partition in it has reached its
// offset.
func (s *Store) kafkaSession(ctx context.Context, cfg KafkaConfig, res *Result, log *slog.Logger, target map[int]int64) error {
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers: cfg.Brokers, GroupID: cfg.Group, Topic: cfg.Topic, Dialer: cfg.dialer(),
		StartOffset: kafkago.FirstOffset, CommitInterval: 0, MaxWait: 250 * time.Millisecond,
		HeartbeatInterval: 3 * time.Second, SessionTimeout: 30 * time.Second, RebalanceTimeout: 30 * time.Second,
		JoinGroupBackoff: time.Second, WatchPartitionChanges: target == nil,
		ErrorLogger: kafkago.LoggerFunc(func(f string, a ...any) { log.Debug("kafka-go: " + fmt.Sprintf(f, a...)) }),
	})
	defer r.Close()
	if target != nil {
		log.Info("ingest: reading up to the current end", slog.Any("end_offsets", target))
	}
	for {
		fctx, cancel := ctx, context.CancelFunc(func() {})
		if target != nil {
			fctx, cancel = context.WithTimeout(ctx, cfg.IdleTimeout)
		}
		m, err := r.FetchMessage(fctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if target != nil && errors.Is(err, context.DeadlineExceeded) {
				log.Info("ingest: nothing more arrived; the offsets left are transaction markers or were deleted",
					slog.Any("end_offsets", target))
				return nil
			}
			return fmt.Errorf("read %q: %w", cfg.Topic, err)
		}
		l := kafkaLetter(cfg.Source, &m, time.Now().UTC())
		id, inserted, err := s.Ingest(ctx, l)
		if err != nil {
			return err // not committed: read again after the reader is reopened
		}
		if inserted {
			res.Ingested++
			log.Info("ingest: dead letter stored", slog.Int64("dead_letter_id", id), slog.String("error_class", l.Class),
				slog.String("dlt", l.IngestKey))
		} else {
			res.Duplicates++
			log.Info("ingest: ingested before, committing", slog.Int64("dead_letter_id", id))
		}
		if err := r.CommitMessages(ctx, m); err != nil {
			return fmt.Errorf("commit offset: %w", err)
		}
		if target != nil {
			if end, ok := target[m.Partition]; ok && m.Offset+1 >= end {
				delete(target, m.Partition)
			}
			if len(target) == 0 {
				return nil
			}
		}
	}
}
