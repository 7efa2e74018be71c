package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/metadata"

	"github.com/outboxkit/outboxkit/internal/wire"
	"github.com/outboxkit/outboxkit/relay"
)

// Defaults of Config.
const (
	ClientIDDefault    = "outboxkit"
	TimeoutDefault     = 10 * time.Second
	MaxInFlightDefault = 16
	// MaxBatchBytesDefault stays under Kafka's default max.message.bytes
	// (1 MiB plus 12 bytes).
	MaxBatchBytesDefault = 1_000_000
)

// Config configures a Publisher. Only Brokers is required.
type Config struct {
	// Brokers are the bootstrap brokers, as host:port. Required.
	Brokers []string
	// ClientID names the relay in the brokers' logs and quotas. Default
	// "outboxkit". Ignored when Transport is set: set Transport.ClientID.
	ClientID string
	// Source is ce_source for messages that carry none. Default
	// wire.DefaultSource ("/outboxkit").
	Source string
	// RequiredAcks is kafka-go's RequireAll (the default) or RequireOne. The
	// zero value, which is kafka-go's RequireNone, means the default: a
	// relay never publishes without an acknowledgement.
	RequiredAcks kafkago.RequiredAcks
	// Timeout bounds each request to Kafka (metadata, produce). The broker
	// gets half of it to collect the replicas' acknowledgements. Default 10s.
	Timeout time.Duration
	// MaxInFlight bounds the produce requests one Publish call has in flight
	// (one request per topic partition of the batch). Default 16.
	MaxInFlight int
	// MaxBatchBytes bounds the records of one produce request, before
	// compression; a partition's messages beyond it go in further requests,
	// one after the other. Keep it under the topics' max.message.bytes: a
	// batch Kafka refuses as too large is sent again one message at a
	// time. Default 1,000,000.
	MaxBatchBytes int
	// Transport connects to the brokers: set it for TLS (Transport.TLS),
	// SASL (Transport.SASL), dial timeouts or the metadata TTL. Nil means a
	// plain-TCP transport that the Publisher owns and Close closes. A
	// Transport you pass stays yours: close it with CloseIdleConnections
	// after Close.
	Transport *kafkago.Transport
	// Logger receives the Publisher's logs. Default: none.
	Logger *slog.Logger
}

// ErrClosed is returned by Publish after Close.
var ErrClosed = errors.New("kafka: publisher is closed")

// Publisher is a relay.Publisher that writes to Kafka. It is safe for
// concurrent use.
type Publisher struct {
	cfg          Config
	client       *kafkago.Client
	transport    *kafkago.Transport
	ownTransport bool
	log          *slog.Logger
	keyless      atomic.Uint32 // rotates the partition of keyless messages
	closed       atomic.Bool
}

var _ relay.Publisher = (*Publisher)(nil)

// New validates cfg and returns a Publisher. It does not connect: the first
// Publish does, so a relay can start while Kafka is down.
func New(cfg Config) (*Publisher, error) {
	if cfg.ClientID == "" {
		cfg.ClientID = ClientIDDefault
	}
	if cfg.RequiredAcks == kafkago.RequireNone {
		cfg.RequiredAcks = kafkago.RequireAll
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = TimeoutDefault
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = MaxInFlightDefault
	}
	if cfg.MaxBatchBytes == 0 {
		cfg.MaxBatchBytes = MaxBatchBytesDefault
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", relay.ErrInvalidConfig, err)
	}
	p := &Publisher{cfg: cfg, transport: cfg.Transport, log: cfg.Logger}
	if p.transport == nil {
		p.transport = &kafkago.Transport{ClientID: cfg.ClientID}
		p.ownTransport = true
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.client = &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Timeout: cfg.Timeout, Transport: p.transport}
	return p, nil
}

func (c *Config) validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("kafka: Config.Brokers is empty: list at least one broker as host:port")
	}
	for _, b := range c.Brokers {
		if host, port, err := net.SplitHostPort(b); err != nil || host == "" || port == "" {
			return fmt.Errorf("kafka: Config.Brokers entry %q is not host:port (e.g. kafka-1:9092)", b)
		}
	}
	if c.RequiredAcks != kafkago.RequireAll && c.RequiredAcks != kafkago.RequireOne {
		return fmt.Errorf("kafka: Config.RequiredAcks %d must be kafka-go's RequireAll (-1) or RequireOne (1)", c.RequiredAcks)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("kafka: Config.Timeout %v is negative: leave it 0 for %v", c.Timeout, TimeoutDefault)
	}
	if c.MaxInFlight < 0 {
		return fmt.Errorf("kafka: Config.MaxInFlight %d is negative: leave it 0 for %d", c.MaxInFlight, MaxInFlightDefault)
	}
	if c.MaxBatchBytes < 0 {
		return fmt.Errorf("kafka: Config.MaxBatchBytes %d is negative: leave it 0 for %d", c.MaxBatchBytes, MaxBatchBytesDefault)
	}
	return nil
}

// KeyAtomic reports true: within one Publish call, when a message fails,
// every later message of its topic and key fails too. They share one
// partition and go in one request, appended all or nothing, or in requests
// one after the other that stop at the first failure. The relay may then put
// many events of one key in a batch.
func (p *Publisher) KeyAtomic() bool { return true }

// Close releases the connections of a transport the Publisher created.
// It is idempotent.
func (p *Publisher) Close() error {
	if !p.closed.Swap(true) && p.ownTransport {
		p.transport.CloseIdleConnections()
	}
	return nil
}

// target is one Kafka topic partition. A Publish call sends its messages for
// a target in one produce request, or in a few one after the other.
type target struct {
	topic     string
	partition int
}

// Publish writes msgs and returns one Result per message, in input order.
//
// Messages go to a partition by the Java client's murmur2 hash of their key,
// so Kafka consumers and other producers agree on it. The messages of one
// partition are sent in one request (more, one after the other, beyond
// Config.MaxBatchBytes), in input order, which keeps each key's order; the
// partitions' requests run concurrently. Keyless messages of a batch share
// one partition, a different one on each call.
//
// When no broker can be reached for the whole batch, Publish returns a nil
// slice and an error of class dependency_outage.
func (p *Publisher) Publish(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
	if p.closed.Load() {
		return nil, ErrClosed
	}
	results := make([]relay.Result, len(msgs))
	if len(msgs) == 0 {
		return results, nil
	}
	var names []string
	seen := map[string]bool{}
	for i := range msgs {
		if t := msgs[i].Topic; t != "" && !seen[t] {
			seen[t] = true
			names = append(names, t)
		}
	}
	var topics map[string]topic
	if len(names) > 0 {
		var err error
		if topics, err = p.topics(ctx, names); err != nil {
			return nil, err
		}
	}

	recs := make([]record, len(msgs))
	groups := map[target][]int{}
	var order []target
	keyless := p.keyless.Add(1)
	for i := range msgs {
		m := &msgs[i]
		if m.Topic == "" {
			results[i].Err = relay.Classify(relay.ClassUnroutable, errors.New("kafka: message has no topic"))
			continue
		}
		t := topics[m.Topic]
		if t.err != nil {
			results[i].Err = t.err
			continue
		}
		tg := target{m.Topic, int(keyless % uint32(t.partitions))}
		if m.Key != "" {
			tg.partition = kafkago.Murmur2Balancer{}.Balance(kafkago.Message{Key: []byte(m.Key)}, t.ids...)
		}
		if _, ok := groups[tg]; !ok {
			order = append(order, tg)
		}
		groups[tg] = append(groups[tg], i)
		recs[i] = p.encode(m)
	}

	sem := make(chan struct{}, p.cfg.MaxInFlight)
	var wg sync.WaitGroup
	for _, tg := range order {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			p.send(ctx, tg, msgs, recs, groups[tg], results)
		})
	}
	wg.Wait()

	for _, r := range results {
		if r.Err == nil || relay.ClassOf(r.Err) != relay.ClassDependencyOutage {
			return results, nil
		}
	}
	return nil, fmt.Errorf("kafka: no broker of %v could take the batch: %w", p.cfg.Brokers, results[0].Err)
}

// send produces the messages idx of msgs, in order, to tg and fills their
// results.
func (p *Publisher) send(ctx context.Context, tg target, msgs []relay.Message, recs []record, idx []int, results []relay.Result) {
	// Keys with a failed message: their later messages are held back for
	// the next attempt, since sending them would break the key's order.
	held := map[string]bool{}
	queue := p.chunks(recs, idx)
	for q := 0; q < len(queue); q++ {
		var batch []int
		for _, i := range queue[q] {
			if k := msgs[i].Key; k != "" && held[k] {
				results[i].Err = relay.Classify(relay.ClassTransient,
					fmt.Errorf("kafka: not sent because an earlier message of key %q in the batch failed", k))
				continue
			}
			batch = append(batch, i)
		}
		if len(batch) == 0 {
			continue
		}
		err := p.produce(ctx, tg, msgs, recs, batch, results)
		switch {
		case err == nil:
		case relay.ClassOf(err) == relay.ClassPoisonFormat && len(batch) > 1:
			// Kafka refuses a batch as a whole, so one bad message would
			// fail (and park) the good ones with it: send this batch again
			// one message at a time to find the bad one.
			p.log.WarnContext(ctx, "kafka: batch refused, sending its messages one at a time to isolate the bad one",
				slog.String("topic", tg.topic), slog.Int("partition", tg.partition), slog.Int("messages", len(batch)))
			singles := make([][]int, len(batch))
			for j := range batch {
				singles[j] = batch[j : j+1]
			}
			queue = slices.Insert(queue, q+1, singles...)
		case relay.ClassOf(err) == relay.ClassPoisonFormat:
			results[batch[0]].Err = err
			if k := msgs[batch[0]].Key; k != "" {
				held[k] = true
			}
		default:
			// The broker or the topic, not a message, is the problem: the
			// rest would fail alike, so leave it for the next attempt
			// rather than wait for each request. Stopping here also keeps
			// KeyAtomic's promise.
			for _, rest := range queue[q:] {
				for _, i := range rest {
					if results[i].Err == nil && results[i].Ack == "" {
						results[i].Err = err
					}
				}
			}
			return
		}
	}
}

// chunks cuts idx into consecutive runs of at most MaxBatchBytes (at
// least one message each).
func (p *Publisher) chunks(recs []record, idx []int) [][]int {
	var out [][]int
	start, size := 0, 0
	for j, i := range idx {
		if j > start && size+recs[i].size > p.cfg.MaxBatchBytes {
			out = append(out, idx[start:j])
			start, size = j, 0
		}
		size += recs[i].size
	}
	return append(out, idx[start:])
}

// produce sends the messages batch of msgs to tg in one request and sets
// their Ack, or returns a classified error that applies to all of them.
func (p *Publisher) produce(ctx context.Context, tg target, msgs []relay.Message, recs []record, batch []int, results []relay.Result) error {
	records := make([]kafkago.Record, len(batch))
	for j, i := range batch {
		records[j] = recs[i].kafka()
	}
	res, err := p.client.Produce(ctx, &kafkago.ProduceRequest{
		Topic:        tg.topic,
		Partition:    tg.partition,
		RequiredAcks: p.cfg.RequiredAcks,
		Records:      kafkago.NewRecordReader(records...),
	})
	if err == nil && res.Error != nil {
		err = res.Error
		for j, msg := range res.RecordErrors { // Kafka 2.4+ names the faulty records
			if j >= 0 && j < len(batch) {
				err = fmt.Errorf("%w (message %s: %v)", err, msgs[batch[j]].EventID, msg)
			}
		}
	}
	if err != nil {
		if errors.Is(err, kafkago.UnknownTopicOrPartition) {
			// Our metadata may be stale (topic deleted, partitions
			// shrunk): ask again before calling the message unroutable.
			if t, merr := p.topics(ctx, []string{tg.topic}); merr == nil && t[tg.topic].err != nil {
				return t[tg.topic].err
			}
			return relay.Classify(relay.ClassTransient, fmt.Errorf("kafka: %s/%d: %w", tg.topic, tg.partition, err))
		}
		return classify(tg.topic, fmt.Errorf("kafka: produce to %s/%d: %w", tg.topic, tg.partition, err))
	}
	for j, i := range batch {
		results[i].Ack = fmt.Sprintf("kafka %s/%d@%d", tg.topic, tg.partition, res.BaseOffset+int64(j))
	}
	return nil
}

// record is a message encoded for Kafka. It keeps bytes, not kafka-go's
// readers, which can be read only once: a batch may be sent again.
type record struct {
	key, value []byte
	headers    []kafkago.Header
	size       int // an upper bound of its size in a record batch
}

// encode encodes m in the CloudEvents binary content mode (internal/wire).
func (p *Publisher) encode(m *relay.Message) record {
	src := m.Source
	if src == "" {
		src = p.cfg.Source
	}
	hs := wire.KafkaHeaders(&wire.Event{
		ID:            m.EventID,
		Source:        src,
		Type:          m.Type,
		Time:          m.CreatedAt,
		ContentType:   m.ContentType,
		Topic:         m.Topic,
		Key:           m.Key,
		Sequence:      m.Sequence,
		Version:       m.Version,
		CorrelationID: m.CorrelationID,
		CausationID:   m.CausationID,
		TraceParent:   m.TraceParent,
		TraceState:    m.TraceState,
		Headers:       m.Headers,
	})
	r := record{value: m.Payload, headers: make([]kafkago.Header, len(hs))}
	if m.Key != "" {
		r.key = []byte(m.Key)
	}
	if r.value == nil {
		r.value = []byte{} // a nil value is a tombstone on a compacted topic
	}
	r.size = len(r.key) + len(r.value) + 30 // six varints of at most 5 bytes
	for i, h := range hs {
		r.headers[i] = kafkago.Header{Key: h.Name, Value: []byte(h.Value)}
		r.size += len(h.Name) + len(h.Value) + 10
	}
	return r
}

// kafka returns r as a kafka-go record. Its timestamp is left to the
// producer's clock: ce_time carries the event time, and an old record
// timestamp would let retention delete an event published late.
func (r *record) kafka() kafkago.Record {
	var key kafkago.Bytes // nil: a keyless record
	if r.key != nil {
		key = kafkago.NewBytes(r.key)
	}
	return kafkago.Record{Key: key, Value: kafkago.NewBytes(r.value), Headers: r.headers}
}

// topic is what Publish needs to know of a Kafka topic.
type topic struct {
	partitions int
	ids        []int // 0..partitions-1, for the murmur2 balancer
	err        error // classified: why messages cannot go to this topic now
}

// topics returns the metadata of names, from the transport's cache (which
// kafka-go refreshes every few seconds) and, for topics the cache does not
// know, from the cluster. A non-nil error means the cluster is unreachable.
func (p *Publisher) topics(ctx context.Context, names []string) (map[string]topic, error) {
	res, err := p.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: names})
	if err != nil {
		return nil, p.unreachable(ctx, err)
	}
	out := make(map[string]topic, len(names))
	var unknown []string
	for _, t := range res.Topics {
		if errors.Is(t.Error, kafkago.UnknownTopicOrPartition) {
			unknown = append(unknown, t.Name)
			continue
		}
		out[t.Name] = newTopic(t.Name, t.Error, len(t.Partitions))
	}
	if len(unknown) > 0 {
		// The topic may have been created since the cache was filled. With
		// AllowAutoTopicCreation kafka-go asks the cluster and refreshes its
		// cache; like the Java producer, this lets a broker that has
		// auto.create.topics.enable create the topic.
		rctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
		defer cancel()
		r, err := p.transport.RoundTrip(rctx, p.client.Addr, &metadata.Request{TopicNames: unknown, AllowAutoTopicCreation: true})
		if err != nil {
			return nil, p.unreachable(ctx, err)
		}
		for _, t := range r.(*metadata.Response).Topics {
			var terr error
			if t.ErrorCode != 0 {
				terr = kafkago.Error(t.ErrorCode)
			}
			out[t.Name] = newTopic(t.Name, terr, len(t.Partitions))
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			out[n] = topic{err: relay.Classify(relay.ClassTransient, fmt.Errorf("kafka: no metadata for topic %q", n))}
		}
	}
	return out, nil
}

func newTopic(name string, err error, partitions int) topic {
	if err != nil {
		return topic{err: classify(name, fmt.Errorf("kafka: metadata of topic %q: %w", name, err))}
	}
	if partitions == 0 {
		return topic{err: relay.Classify(relay.ClassTransient, fmt.Errorf("kafka: topic %q has no partitions yet", name))}
	}
	t := topic{partitions: partitions, ids: make([]int, partitions)}
	for i := range t.ids {
		t.ids[i] = i
	}
	return t
}

// unreachable is the batch error for a cluster that did not answer.
func (p *Publisher) unreachable(ctx context.Context, err error) error {
	err = fmt.Errorf("kafka: cannot reach brokers %v (check Config.Brokers and that Kafka is up): %w", p.cfg.Brokers, err)
	if ctx.Err() != nil { // the caller gave up: nothing to say about Kafka
		return relay.Classify(relay.ClassTransient, err)
	}
	return relay.Classify(relay.ClassDependencyOutage, err)
}
