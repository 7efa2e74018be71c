package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/internal/adapter"
)

// Defaults of Config. Each field documents its own.
const (
	BatchSizeDefault         = 100
	CommitIntervalDefault    = time.Second
	MaxWaitDefault           = 250 * time.Millisecond
	MaxBytesDefault          = 10 << 20
	HeartbeatIntervalDefault = 3 * time.Second
	SessionTimeoutDefault    = 30 * time.Second
	RebalanceTimeoutDefault  = 30 * time.Second
	RetryBackoffMaxDefault   = 30 * time.Second
)

// Config configures a Consumer. Brokers and Topics are required.
type Config struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string
	// Topics are read by the consumer group.
	Topics []string
	// GroupID is the Kafka consumer group (default: the inbox's consumer
	// name). Offsets are committed to it.
	GroupID string
	// StartFromLatest makes a group that has no committed offset for a
	// partition start at its end instead of its beginning (the default).
	// Set inbox.Config.StartLanesAtFirstSeen too, or the first event of
	// every key waits for the earlier ones it will never see.
	StartFromLatest bool

	// BatchSize is the most records of one partition handled in one
	// database transaction (default 100). Records are batched only when
	// they are already fetched: a lone record is handled at once.
	BatchSize int
	// CommitInterval is how often each partition commits the offset of its
	// settled records (default 1s). A crash replays at most this much, and
	// the inbox recognises the replay as duplicates.
	CommitInterval time.Duration

	// MaxWait, MinBytes and MaxBytes shape fetch requests (defaults 250ms,
	// 1 byte, 10 MiB).
	MaxWait  time.Duration
	MinBytes int
	MaxBytes int

	// HeartbeatInterval, SessionTimeout and RebalanceTimeout are the
	// consumer group's timers (defaults 3s, 30s, 30s). A consumer that dies
	// without leaving the group gives its partitions up after
	// SessionTimeout.
	HeartbeatInterval, SessionTimeout, RebalanceTimeout time.Duration

	// Dialer connects to the brokers: TLS and SASL go here (default
	// kafka-go's DefaultDialer).
	Dialer *kafkago.Dialer

	// Logger receives the adapter's logs (default: the slog.Default()).
	// Payloads are never logged.
	Logger *slog.Logger
}

// ErrInvalidConfig is matched by every configuration error of New.
var ErrInvalidConfig = errors.New("inbox/kafka: invalid configuration")

// Consumer reads topics as a Kafka consumer group and hands each record to
// an inbox. Create it with New and call Run.
type Consumer struct {
	in  *inbox.Inbox
	cfg Config
	log *slog.Logger
	// handleBatch is in.HandleBatch; a field for BenchmarkConsume's handler-only arm.
	handleBatch func(context.Context, []inbox.Delivery) ([]inbox.Outcome, error)

	mu      sync.Mutex
	running bool
}

// New checks cfg and returns a Consumer feeding in.
func New(in *inbox.Inbox, cfg Config) (*Consumer, error) {
	if in == nil {
		return nil, fmt.Errorf("%w: inbox is nil", ErrInvalidConfig)
	}
	c := cfg
	if c.GroupID == "" {
		c.GroupID = in.Consumer()
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.BatchSize, BatchSizeDefault)
	def(&c.MinBytes, 1)
	def(&c.MaxBytes, MaxBytesDefault)
	defD(&c.CommitInterval, CommitIntervalDefault)
	defD(&c.MaxWait, MaxWaitDefault)
	defD(&c.HeartbeatInterval, HeartbeatIntervalDefault)
	defD(&c.SessionTimeout, SessionTimeoutDefault)
	defD(&c.RebalanceTimeout, RebalanceTimeoutDefault)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	switch {
	case len(c.Brokers) == 0:
		return nil, bad("Brokers is required (host:port of at least one broker)")
	case len(c.Topics) == 0:
		return nil, bad("Topics is required")
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return nil, bad("BatchSize %d: use 1..10000", c.BatchSize)
	case c.CommitInterval < 0 || c.MaxWait < 0:
		return nil, bad("CommitInterval and MaxWait must not be negative")
	case c.MinBytes < 1 || c.MaxBytes < c.MinBytes:
		return nil, bad("MinBytes %d and MaxBytes %d: need 1 <= min <= max", c.MinBytes, c.MaxBytes)
	}
	for _, t := range c.Topics {
		if strings.TrimSpace(t) == "" {
			return nil, bad("Topics contains an empty name")
		}
	}
	return &Consumer{in: in, cfg: c, handleBatch: in.HandleBatch,
		log: c.Logger.With(slog.String("consumer", in.Consumer()), slog.String("group", c.GroupID))}, nil
}

// ErrAlreadyRunning is returned by Run when the Consumer runs already.
var ErrAlreadyRunning = errors.New("inbox/kafka: consumer is running already")

// Run consumes until ctx ends, then stops gracefully: the transactions in
// flight are rolled back (their records are delivered again), the offsets of
// settled records are committed, and the consumer leaves its group. Run
// returns nil after a stop by ctx; errors of the brokers are retried with
// backoff, never returned. While it runs, the operator requests on the
// consumer's dead letters (outboxkit dlq replay, edit, drop) are run too
// (inbox.Inbox.ServeRequests).
func (c *Consumer) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return ErrAlreadyRunning
	}
	c.running = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}()

	stopRequests, run, err := adapter.Start(ctx, c.in)
	if !run {
		return err
	}
	defer stopRequests()
	start := kafkago.FirstOffset
	if c.cfg.StartFromLatest {
		start = kafkago.LastOffset
	}
	group, err := kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID:                    c.cfg.GroupID,
		Brokers:               c.cfg.Brokers,
		Dialer:                c.cfg.Dialer,
		Topics:                c.cfg.Topics,
		HeartbeatInterval:     c.cfg.HeartbeatInterval,
		SessionTimeout:        c.cfg.SessionTimeout,
		RebalanceTimeout:      c.cfg.RebalanceTimeout,
		WatchPartitionChanges: true,
		StartOffset:           start,
		JoinGroupBackoff:      time.Second,
		Logger:                kafkago.LoggerFunc(c.debugf),
		ErrorLogger:           kafkago.LoggerFunc(c.debugf),
	})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	defer group.Close() // ends the generation: waits for the partition loops, leaves the group

	failures := 0
	for {
		gen, err := group.Next(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			c.log.Warn("inbox/kafka: cannot join the consumer group, retrying", slog.Any("error", err),
				slog.Int("failures", failures))
			if !sleep(ctx, backoff(failures)) {
				return nil
			}
			continue
		}
		failures = 0
		n := 0
		for topic, parts := range gen.Assignments {
			for _, p := range parts {
				n++
				gen.Start(func(gctx context.Context) { c.partition(gctx, gen, topic, p.ID, p.Offset) })
			}
		}
		c.log.Info("inbox/kafka: joined the group", slog.Int("generation", int(gen.ID)), slog.Int("partitions", n))
	}
}

func (c *Consumer) debugf(format string, args ...any) {
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("kafka-go: " + fmt.Sprintf(format, args...))
	}
}

// partition handles one assigned partition until its generation ends:
// records in offset order, settled through the inbox, offsets committed
// after the inbox transaction committed.
func (c *Consumer) partition(gctx context.Context, gen *kafkago.Generation, topic string, partition int, offset int64) {
	log := c.log.With(slog.String("topic", topic), slog.Int("partition", partition))
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:   c.cfg.Brokers,
		Dialer:    c.cfg.Dialer,
		Topic:     topic,
		Partition: partition,
		MinBytes:  c.cfg.MinBytes,
		MaxBytes:  c.cfg.MaxBytes,
		MaxWait:   c.cfg.MaxWait,
		Logger:    kafkago.LoggerFunc(c.debugf),
		// Errors are retried by the reader; they show in debug logs.
		ErrorLogger: kafkago.LoggerFunc(c.debugf),
	})
	defer r.Close()
	if err := r.SetOffset(offset); err != nil {
		log.Error("inbox/kafka: cannot set the start offset", slog.Int64("offset", offset), slog.Any("error", err))
		return
	}

	rctx, cancel := context.WithCancel(gctx)
	records := make(chan kafkago.Message, c.cfg.BatchSize)
	var readErr error
	var reading sync.WaitGroup
	reading.Go(func() {
		defer close(records)
		for {
			m, err := r.FetchMessage(rctx)
			if err != nil {
				if rctx.Err() == nil {
					readErr = err
				}
				return
			}
			select {
			case records <- m:
			case <-rctx.Done():
				return
			}
		}
	})
	defer func() {
		cancel()
		reading.Wait()
	}()

	next := int64(-1) // offset to commit: after the last settled record
	committed := int64(-1)
	commit := func() {
		if next < 0 || next == committed {
			return
		}
		if err := gen.CommitOffsets(map[string]map[int]int64{topic: {partition: next}}); err != nil {
			log.Warn("inbox/kafka: offset commit failed; the records after the last commit will be delivered again (deduplicated)",
				slog.Int64("offset", next), slog.Any("error", err))
			return
		}
		committed = next
	}
	defer commit() // the generation's connection is open until this function returns
	ticker := time.NewTicker(c.cfg.CommitInterval)
	defer ticker.Stop()
	batch := make([]kafkago.Message, 0, c.cfg.BatchSize)
	ds := make([]inbox.Delivery, 0, c.cfg.BatchSize)
	for {
		batch = batch[:0]
		select {
		case <-gctx.Done():
			return
		case <-ticker.C:
			commit()
			continue
		case m, ok := <-records:
			if !ok {
				if readErr != nil {
					log.Error("inbox/kafka: reading the partition failed; rejoining the group", slog.Any("error", readErr))
				}
				return
			}
			batch = append(batch, m)
		}
	drain:
		for len(batch) < c.cfg.BatchSize {
			select {
			case m, ok := <-records:
				if !ok {
					break drain
				}
				batch = append(batch, m)
			default:
				break drain
			}
		}
		ds = ds[:0]
		for i := range batch {
			ds = append(ds, delivery(&batch[i]))
		}
		outs, err := c.handleBatch(rctx, ds)
		if len(outs) > 0 {
			next = batch[len(outs)-1].Offset + 1
		}
		if err != nil {
			return // the generation ended (rebalance or stop) mid-batch
		}
	}
}

// delivery is the inbox's view of a record.
func delivery(m *kafkago.Message) inbox.Delivery {
	hs := make([]inbox.Header, len(m.Headers))
	for i, h := range m.Headers {
		hs[i] = inbox.Header{Name: h.Key, Value: h.Value}
	}
	src := map[string]any{"broker": "kafka", "topic": m.Topic, "partition": m.Partition, "offset": m.Offset}
	if m.Key != nil {
		src["record_key"] = m.Key
	}
	if !m.Time.IsZero() {
		src["record_time"] = m.Time.UTC().Format(time.RFC3339Nano)
	}
	return inbox.Delivery{Binding: inbox.BindingKafka, Topic: m.Topic, Headers: hs, Payload: m.Value, Source: src}
}

func backoff(n int) time.Duration {
	d := 500 * time.Millisecond
	for i := 1; i < n && d < RetryBackoffMaxDefault; i++ {
		d *= 2
	}
	d = min(d, RetryBackoffMaxDefault)
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
