package sweeper

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
)

func TestMain(m *testing.M) {
	if relayChildMain() {
		return
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"))
}

// relayChildMain runs a relay with an acknowledging in-memory publisher when
// the test binary was started as a child by TestReclaimAfterRelaySIGKILL.
// It never returns normally: the parent kills it.
func relayChildMain() bool {
	if os.Getenv("OUTBOXKIT_SWEEPER_RELAY_CHILD") != "1" {
		return false
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("OUTBOXKIT_CHILD_DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	r, err := relay.New(pool, &relay.Config{Publisher: &ackPublisher{delay: 20 * time.Millisecond},
		RelayID: os.Getenv("OUTBOXKIT_CHILD_RELAY_ID"), LeaseTTL: time.Second, BatchSize: 50,
		PollInterval: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		panic(err)
	}
	if err := r.Run(ctx); err != nil {
		panic(err)
	}
	os.Exit(0)
	return true
}

// ackPublisher acknowledges every message after delay, in memory: the relay
// is real, the broker is not the subject of these tests.
type ackPublisher struct {
	delay time.Duration
	mu    sync.Mutex
	got   []relay.Message
}

func (p *ackPublisher) Publish(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
	if p.delay > 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(p.delay):
		}
	}
	p.mu.Lock()
	p.got = append(p.got, msgs...)
	p.mu.Unlock()
	res := make([]relay.Result, len(msgs))
	for i := range res {
		res[i].Ack = "memory"
	}
	return res, nil
}

func (p *ackPublisher) Close() error { return nil }

func (p *ackPublisher) published() []relay.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]relay.Message(nil), p.got...)
}

// runRelay runs an in-process relay until the test ends.
func runRelay(t *testing.T, pool *pgxpool.Pool, pub relay.Publisher) {
	t.Helper()
	r, err := relay.New(pool, &relay.Config{Publisher: pub, LeaseTTL: time.Second, PollInterval: 50 * time.Millisecond,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, Logger: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("relay: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("relay did not stop")
		}
	})
}

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) count(substr string) int { return strings.Count(b.String(), substr) }

// testLogger logs to buf (when not nil) and, with OUTBOXKIT_TEST_LOG set, to
// stderr.
func testLogger(t testing.TB, buf *logBuffer) *slog.Logger {
	var ws []io.Writer
	if buf != nil {
		ws = append(ws, buf)
	}
	if os.Getenv("OUTBOXKIT_TEST_LOG") != "" {
		ws = append(ws, os.Stderr)
	}
	if len(ws) == 0 {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(io.MultiWriter(ws...), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newSweeper returns a Sweeper with every schedule off unless cfg sets one.
func newSweeper(t testing.TB, pool *pgxpool.Pool, cfg Config, logs *logBuffer) *Sweeper {
	t.Helper()
	sched := map[Job]string{}
	for _, j := range Jobs() {
		sched[j] = Off
	}
	for j, s := range cfg.Schedules {
		sched[j] = s
	}
	cfg.Schedules = sched
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t, logs)
	}
	if cfg.LeaderCheckInterval == 0 {
		cfg.LeaderCheckInterval = 200 * time.Millisecond
	}
	s, err := New(pool, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// start runs s until the returned stop is called (also at cleanup).
func start(t testing.TB, s *Sweeper) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("sweeper Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("sweeper did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newPool(t testing.TB, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// enqueue commits n events of topic with the given key ("" for keyless)
// and returns their ids in enqueue order.
func enqueue(t testing.TB, pool *pgxpool.Pool, topic, key string, n int) []uuid.UUID {
	t.Helper()
	ctx := context.Background()
	msgs := make([]outbox.Message, n)
	for i := range msgs {
		msgs[i] = outbox.Message{Topic: topic, Key: key, Type: "test.event", Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	ids, err := outbox.EnqueueBatch(ctx, tx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

func execSQL(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	tag, err := pool.Exec(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tag.RowsAffected()
}

func queryInt(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func statusOf(t testing.TB, pool *pgxpool.Pool, id uuid.UUID) string {
	t.Helper()
	var s string
	if err := pool.QueryRow(context.Background(), `SELECT status FROM outbox.messages WHERE event_id = $1`, id).Scan(&s); err != nil {
		t.Fatalf("status of %s: %v", id, err)
	}
	return s
}

// metric returns the value of the metric name with labels (nil: no labels)
// from m, or -1 when it is not exported.
func metric(t testing.TB, m *Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, mm := range f.GetMetric() {
			got := map[string]string{}
			for _, l := range mm.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			switch {
			case mm.GetCounter() != nil:
				return mm.GetCounter().GetValue()
			case mm.GetGauge() != nil:
				return mm.GetGauge().GetValue()
			case mm.GetHistogram() != nil:
				return float64(mm.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

func runs(t testing.TB, s *Sweeper, job Job, result string) float64 {
	return max(0, metric(t, s.Metrics(), "outboxkit_sweeper_job_runs_total", map[string]string{"job": string(job), "result": result}))
}

// testDB returns a fresh migrated database.
func testDB(t *testing.T) *testenv.DB {
	t.Helper()
	t.Parallel()
	return testenv.NewDB(t)
}
