package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
	"github.com/outboxkit/outboxkit/relay/rabbitmq"
)

// pubStats times the broker side of the relay.
type pubStats struct {
	mu    sync.Mutex
	calls int
	msgs  int
	total time.Duration
}

// countingRelayPublisher wraps the relay's Publisher: it counts
// acknowledged events, closes done at target, times the publish calls, and
// (when onAck is set) reports each acknowledged event's id and time. It
// passes KeyAtomic through, so the relay batches exactly as it would with the
// wrapped publisher.
type countingRelayPublisher struct {
	relay.Publisher
	acked  atomic.Int64
	target int64
	done   chan struct{}
	once   sync.Once
	stats  pubStats
	onAck  func(id uuid.UUID, at time.Time)
}

func (c *countingRelayPublisher) Publish(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
	start := time.Now()
	res, err := c.Publisher.Publish(ctx, msgs)
	now := time.Now()
	c.stats.mu.Lock()
	c.stats.calls++
	c.stats.msgs += len(msgs)
	c.stats.total += now.Sub(start)
	c.stats.mu.Unlock()
	if err != nil {
		return res, err
	}
	ok := 0
	for i, r := range res {
		if r.Err == nil {
			ok++
			if c.onAck != nil {
				c.onAck(msgs[i].EventID, now)
			}
		}
	}
	if c.acked.Add(int64(ok)) >= c.target && c.done != nil {
		c.once.Do(func() { close(c.done) })
	}
	return res, nil
}

func (c *countingRelayPublisher) KeyAtomic() bool {
	ka, ok := c.Publisher.(relay.KeyAtomic)
	return ok && ka.KeyAtomic()
}

// relayConfig names one relay configuration under test.
type relayConfig struct {
	batch, workers int // 0: the relay's default
	// pg, when set, is a comma list of PostgreSQL settings (name=value)
	// sent at connection start by every connection of the relay's pool, as
	// ?random_page_cost=1.1 in its database URL or ALTER ROLE ... SET would
	// do: not a relay setting, a what-if for the proposed fixes.
	pg string
}

func (c relayConfig) String() string {
	b, w := c.batch, c.workers
	if b == 0 {
		b = relay.BatchSizeDefault
	}
	if w == 0 {
		w = relay.WorkersDefault
	}
	s := fmt.Sprintf("BatchSize %d, Workers %d", b, w)
	if c.pg != "" {
		s += ", " + strings.ReplaceAll(c.pg, ",", ", ")
	}
	return s
}

func (e *env) logger() *slog.Logger {
	if e.opts.verbose {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// runRelayKafka drains the outbox template with an outboxkit relay and its
// Kafka publisher. The time runs from relay.Run until every event is marked
// published in outbox.messages (after Kafka's acknowledgement).
func (e *env) runRelayKafka(ctx context.Context, rc relayConfig, cpuProfile string) (measurement, error) {
	topic := benchTopic
	if err := e.createTopic(ctx, topic); err != nil {
		return measurement{}, err
	}
	defer e.deleteTopic(ctx, topic)
	pub, err := kafka.New(kafka.Config{Brokers: e.brokers, Logger: e.logger()})
	if err != nil {
		return measurement{}, err
	}
	defer pub.Close()
	m, err := e.drainWithRelay(ctx, pub, rc, "relay", cpuProfile)
	if err != nil {
		return m, err
	}
	got, err := e.topicRecords(ctx, topic)
	if err != nil {
		return m, err
	}
	if got < int64(e.opts.events) {
		return m, fmt.Errorf("relay: Kafka holds %d records, want %d", got, e.opts.events)
	}
	m.note = fmt.Sprintf("%d records in Kafka", got)
	return m, nil
}

// runRelayRabbit drains the outbox template with an outboxkit relay and its
// RabbitMQ publisher (confirms, mandatory, persistent) into the bench queue.
func (e *env) runRelayRabbit(ctx context.Context, rc relayConfig) (measurement, error) {
	conn, err := e.rabbitSetup()
	if err != nil {
		return measurement{}, err
	}
	defer conn.Close()
	pub, err := rabbitmq.New(ctx, rabbitmq.Config{URL: e.rabbitURL, Exchange: rabbitExchange, Logger: e.logger()})
	if err != nil {
		return measurement{}, err
	}
	defer pub.Close()
	broker := rabbitCPU()
	m, err := e.drainWithRelay(ctx, pub, rc, "rabbit", "")
	m.brokerCPU = rabbitCPU() - broker
	if err != nil {
		return m, err
	}
	got, err := rabbitDrainQueue(conn)
	if err != nil {
		return m, err
	}
	if got < e.opts.events {
		return m, fmt.Errorf("relay: queue holds %d messages, want %d", got, e.opts.events)
	}
	m.note = fmt.Sprintf("%d messages in the queue", got)
	return m, nil
}

func (e *env) drainWithRelay(ctx context.Context, pub relay.Publisher, rc relayConfig, suffix, cpuProfile string) (measurement, error) {
	n := e.opts.events
	name, dbURL, err := e.newDB(ctx, e.tplOutbox, suffix)
	if err != nil {
		return measurement{}, err
	}
	defer e.dropDB(ctx, name)
	workers := rc.workers
	if workers == 0 {
		workers = relay.WorkersDefault
	}
	tracer := newSQLTracer()
	p, err := pool(ctx, dbURL, int32(workers+4), tracer, pgParams(rc.pg))
	if err != nil {
		return measurement{}, err
	}
	defer p.Close()
	counter := &countingRelayPublisher{Publisher: pub, target: int64(n), done: make(chan struct{})}
	r, err := relay.New(p, &relay.Config{Publisher: counter, BatchSize: rc.batch, Workers: rc.workers, Logger: e.logger()})
	if err != nil {
		return measurement{}, err
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return measurement{}, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return measurement{}, err
		}
		defer pprof.StopCPUProfile()
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	cpu := startCPU()
	start := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(runCtx) }()
	deadline := time.After(e.opts.timeout)
	select {
	case <-counter.done:
	case err := <-runErr:
		return measurement{}, fmt.Errorf("relay stopped: %v", err)
	case <-deadline:
		return measurement{}, fmt.Errorf("relay: only %d of %d events acknowledged after %s", counter.acked.Load(), n, e.opts.timeout)
	}
	// All acknowledged: wait for the last marks to commit.
	var elapsed time.Duration
	for {
		var pending int
		if err := p.QueryRow(ctx, `SELECT count(*) FROM outbox.messages WHERE status <> 'published'`).Scan(&pending); err != nil {
			return measurement{}, err
		}
		if pending == 0 {
			elapsed = time.Since(start)
			break
		}
		select {
		case <-deadline:
			return measurement{}, fmt.Errorf("relay: %d events still not marked published after %s", pending, e.opts.timeout)
		case <-time.After(5 * time.Millisecond):
		}
	}
	m := measurement{events: n, elapsed: elapsed, cpu: cpu.stop()}
	m.pgCPU = e.backendCPU(ctx, name)
	m.detail = tracer.report(&counter.stats, elapsed, workers)
	m.summary = tracer.reportTop(&counter.stats, elapsed, workers, 4)
	cancel()
	if err := <-runErr; err != nil {
		return m, err
	}
	e.traces[suffix+" "+rc.String()] = tracer
	return m, nil
}

// pgParams parses "name=value,name=value".
func pgParams(s string) map[string]string {
	if s == "" {
		return nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			out[k] = v
		}
	}
	return out
}
