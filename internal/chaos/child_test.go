package chaos_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	inboxkafka "github.com/outboxkit/outboxkit/inbox/kafka"
	inboxrabbit "github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/relay"
	relaykafka "github.com/outboxkit/outboxkit/relay/kafka"
	relayrabbit "github.com/outboxkit/outboxkit/relay/rabbitmq"
)

// The environment of a child process. The parent (the chaos test) starts the
// test binary again with these set; TestMain then runs the role instead of
// the tests.
const (
	envRole       = "OUTBOXKIT_CHAOS_ROLE" // relay or consumer
	envParent     = "OUTBOXKIT_CHAOS_PARENT"
	envName       = "OUTBOXKIT_CHAOS_NAME" // relay id, or consumer process name
	envDB         = "OUTBOXKIT_CHAOS_DATABASE_URL"
	envKafka      = "OUTBOXKIT_CHAOS_KAFKA"
	envRabbit     = "OUTBOXKIT_CHAOS_RABBITMQ_URL"
	envExchange   = "OUTBOXKIT_CHAOS_EXCHANGE"
	envQueue      = "OUTBOXKIT_CHAOS_QUEUE"
	envPoll       = "OUTBOXKIT_CHAOS_POLL"
	envConsumer   = "OUTBOXKIT_CHAOS_CONSUMER" // inbox consumer name
	envBroker     = "OUTBOXKIT_CHAOS_BROKER"   // kafka or rabbitmq (consumer role)
	envTopicKafka = "OUTBOXKIT_CHAOS_TOPIC_KAFKA"
	envTopicRabb  = "OUTBOXKIT_CHAOS_TOPIC_RABBITMQ"
	envTopicUnrt  = "OUTBOXKIT_CHAOS_TOPIC_UNROUTED"
)

// Timers of the relays and consumers under test: short, so that a fault and
// its recovery fit in seconds.
const (
	relayLeaseTTL     = 2 * time.Second
	relayPoll         = 200 * time.Millisecond
	relayFastPoll     = 50 * time.Millisecond
	relayMaxAttempts  = 10
	kafkaSession      = 4 * time.Second
	eventTypeTransfer = "chaos.transfer"
	eventTypeUnknown  = "chaos.unknown" // no consumer has a handler: parked as no_handler
)

func childMain(role string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go watchParent()
	var err error
	switch role {
	case "relay":
		err = runRelayChild(ctx, log)
	case "consumer":
		err = runConsumerChild(ctx, log)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		log.Error("chaos child failed", slog.Any("error", err))
		return 1
	}
	log.Info("chaos child stopped")
	return 0
}

// watchParent ends the child when the test process is gone (a timed-out or
// killed test must not leave relays running). Pdeathsig covers most cases;
// this covers the rest.
func watchParent() {
	want, _ := strconv.Atoi(os.Getenv(envParent))
	for {
		time.Sleep(500 * time.Millisecond)
		if os.Getppid() != want {
			os.Exit(3)
		}
	}
}

func childPool(ctx context.Context, url, name string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	cfg.ConnConfig.RuntimeParams["application_name"] = "chaos:" + name
	return pgxpool.NewWithConfig(ctx, cfg)
}

func runRelayChild(ctx context.Context, log *slog.Logger) error {
	name := os.Getenv(envName)
	pool, err := childPool(ctx, os.Getenv(envDB), name, 3)
	if err != nil {
		return err
	}
	defer pool.Close()
	kp, err := relaykafka.New(relaykafka.Config{Brokers: strings.Split(os.Getenv(envKafka), ","),
		Timeout: 3 * time.Second, Logger: log})
	if err != nil {
		return err
	}
	rp, err := relayrabbit.New(ctx, relayrabbit.Config{URL: os.Getenv(envRabbit), Exchange: os.Getenv(envExchange),
		SkipDeclare: true, ConfirmTimeout: 3 * time.Second, DialTimeout: 3 * time.Second, Logger: log})
	if err != nil {
		return err
	}
	router := &relay.TopicRouter{Topics: map[string]relay.Publisher{
		os.Getenv(envTopicKafka): kp,
		os.Getenv(envTopicRabb):  rp,
		os.Getenv(envTopicUnrt):  rp, // no queue is bound to it: mandatory returns, parked unroutable
	}}
	defer router.Close()
	poll, err := time.ParseDuration(os.Getenv(envPoll))
	if err != nil {
		return err
	}
	r, err := relay.New(pool, &relay.Config{
		Publisher: router, RelayID: name, BatchSize: 100, PollInterval: poll, LeaseTTL: relayLeaseTTL,
		MaxAttempts: relayMaxAttempts, BackoffBase: 50 * time.Millisecond, BackoffMax: time.Second,
		OutageBackoffMax: time.Second, PublishTimeout: 5 * time.Second, Version: "chaos", Logger: log,
	})
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// consumerChild is one consumer process: an inbox whose handler writes the
// business effects the checker reads (chaos.applied, chaos.balances) and its
// own, independent order and double-apply detectors.
type consumerChild struct {
	name, consumer string
	pool           *pgxpool.Pool

	mu       sync.Mutex
	failed   map[uuid.UUID]bool // events whose injected failure already happened in this process
	failures int64
	panics   int64
}

func runConsumerChild(ctx context.Context, log *slog.Logger) error {
	c := &consumerChild{name: os.Getenv(envName), consumer: os.Getenv(envConsumer), failed: map[uuid.UUID]bool{}}
	pool, err := childPool(ctx, os.Getenv(envDB), c.name, 5)
	if err != nil {
		return err
	}
	defer pool.Close()
	c.pool = pool
	in, err := inbox.New(pool, &inbox.Config{
		Consumer: c.consumer, ConsumerVersion: "chaos", MaxAttempts: 10,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 500 * time.Millisecond, HandlerTimeout: 10 * time.Second,
		Breaker: inbox.BreakerConfig{BackoffBase: 100 * time.Millisecond, BackoffMax: 2 * time.Second},
		Logger:  log,
	})
	if err != nil {
		return err
	}
	in.Register(eventTypeTransfer, 1, c.apply)

	var run func(context.Context) error
	switch os.Getenv(envBroker) {
	case "kafka":
		kc, err := inboxkafka.New(in, inboxkafka.Config{
			Brokers: strings.Split(os.Getenv(envKafka), ","), Topics: []string{os.Getenv(envTopicKafka)},
			GroupID: c.consumer, BatchSize: 50, CommitInterval: 500 * time.Millisecond,
			HeartbeatInterval: time.Second, SessionTimeout: kafkaSession, RebalanceTimeout: kafkaSession, Logger: log,
		})
		if err != nil {
			return err
		}
		run = kc.Run
	case "rabbitmq":
		rc, err := inboxrabbit.New(in, inboxrabbit.Config{
			URL: os.Getenv(envRabbit), Queue: os.Getenv(envQueue), Prefetch: 64, Workers: 4, BatchSize: 32,
			DialTimeout: 3 * time.Second, Heartbeat: 2 * time.Second, ReconnectMax: time.Second, Logger: log,
		})
		if err != nil {
			return err
		}
		run = rc.Run
	default:
		return fmt.Errorf("%s: want kafka or rabbitmq", envBroker)
	}

	statsCtx, stopStats := context.WithCancel(context.WithoutCancel(ctx))
	statsDone := make(chan struct{})
	go func() {
		defer close(statsDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-statsCtx.Done():
				c.writeStats(context.Background(), in)
				return
			case <-t.C:
				c.writeStats(statsCtx, in)
			}
		}
	}()
	err = run(ctx)
	stopStats()
	<-statsDone
	return err
}

// writeStats records the inbox's own counters (duplicates absorbed...) for
// the summary. Best effort: a SIGKILL loses the last second.
func (c *consumerChild) writeStats(ctx context.Context, in *inbox.Inbox) {
	s := in.Stats()
	c.mu.Lock()
	failures, panics := c.failures, c.panics
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c.pool.Exec(ctx, `INSERT INTO chaos.consumer_stats (proc, consumer, applied, duplicate, parked, blocked,
    already_parked, injected_failures, injected_panics, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
ON CONFLICT (proc) DO UPDATE SET applied = EXCLUDED.applied, duplicate = EXCLUDED.duplicate,
    parked = EXCLUDED.parked, blocked = EXCLUDED.blocked, already_parked = EXCLUDED.already_parked,
    injected_failures = EXCLUDED.injected_failures, injected_panics = EXCLUDED.injected_panics,
    updated_at = now()`, c.name, c.consumer, s.Applied, s.Duplicate, s.Parked, s.Blocked, s.AlreadyParked,
		failures, panics) //nolint:errcheck // best effort
}

// inject makes the first attempt of about one event in 40 fail (transient,
// retried by the inbox) and of one in 150 panic, once per process.
func (c *consumerChild) inject(id uuid.UUID) error {
	h := fnv.New32a()
	h.Write(id[:])
	v := h.Sum32()
	if v%40 != 0 && v%150 != 1 {
		return nil
	}
	c.mu.Lock()
	if c.failed[id] {
		c.mu.Unlock()
		return nil
	}
	c.failed[id] = true
	if v%40 == 0 {
		c.failures++
		c.mu.Unlock()
		return errors.New("chaos: injected transient handler failure")
	}
	c.panics++
	c.mu.Unlock()
	panic("chaos: injected handler panic")
}

func (c *consumerChild) apply(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
	if err := c.inject(ev.ID); err != nil {
		return err
	}
	var p struct {
		Amount int64 `json:"amount"`
	}
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		return inbox.Permanent(fmt.Errorf("payload: %w", err))
	}
	tag, err := tx.Exec(ctx, `INSERT INTO chaos.applied (consumer, event_id, topic, key, sequence, amount, proc)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (consumer, event_id) DO NOTHING`,
		c.consumer, ev.ID, ev.Topic, ev.Key, ev.Sequence, p.Amount, c.name)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		// The inbox handed us an event this consumer applied before, and
		// will commit: a double application. Recorded, for the checker.
		if _, err := tx.Exec(ctx, `INSERT INTO chaos.double_applied (consumer, event_id, proc) VALUES ($1, $2, $3)`,
			c.consumer, ev.ID, c.name); err != nil {
			return err
		}
		return nil
	}
	if ev.Key != "" {
		if _, err := tx.Exec(ctx, `INSERT INTO chaos.key_state (consumer, key, last_seq) VALUES ($1, $2, 0)
ON CONFLICT DO NOTHING`, c.consumer, ev.Key); err != nil {
			return err
		}
		var last int64
		if err := tx.QueryRow(ctx, `SELECT last_seq FROM chaos.key_state WHERE consumer = $1 AND key = $2 FOR UPDATE`,
			c.consumer, ev.Key).Scan(&last); err != nil {
			return err
		}
		if ev.Sequence != last+1 {
			if _, err := tx.Exec(ctx, `INSERT INTO chaos.order_violations (consumer, key, expected, got, event_id, proc)
VALUES ($1, $2, $3, $4, $5, $6)`, c.consumer, ev.Key, last+1, ev.Sequence, ev.ID, c.name); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE chaos.key_state SET last_seq = $3 WHERE consumer = $1 AND key = $2`,
			c.consumer, ev.Key, ev.Sequence); err != nil {
			return err
		}
	}
	_, err = tx.Exec(ctx, `INSERT INTO chaos.balances AS b (consumer, key, amount, events) VALUES ($1, $2, $3, 1)
ON CONFLICT (consumer, key) DO UPDATE SET amount = b.amount + EXCLUDED.amount, events = b.events + 1`,
		c.consumer, ev.Key, p.Amount)
	return err
}
