package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relayrabbit "github.com/outboxkit/outboxkit/relay/rabbitmq"
)

func TestMain(m *testing.M) {
	opts := []goleak.Option{
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
	}
	for _, f := range testenv.ProxyLeakIgnores {
		opts = append(opts, goleak.IgnoreAnyFunction(f))
	}
	goleak.VerifyTestMain(m, opts...)
}

func logger() *slog.Logger {
	if os.Getenv("OUTBOXKIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

const ledgerTable = `CREATE TABLE ledger (
    n        bigint GENERATED ALWAYS AS IDENTITY,
    event_id uuid   NOT NULL,
    key      text   NOT NULL,
    sequence bigint NOT NULL
)`

func newInbox(t testing.TB, pool *pgxpool.Pool) *inbox.Inbox {
	return newInboxHook(t, pool, nil)
}

// newInboxHook calls applied, when set, in the handler's transaction of
// every event it applies, just before the handler returns.
func newInboxHook(t testing.TB, pool *pgxpool.Pool, applied func(ev *inbox.Event)) *inbox.Inbox {
	t.Helper()
	in, err := inbox.New(pool, &inbox.Config{Consumer: "notifications", ConsumerVersion: "test",
		BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	in.Register("payout.created", 1, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		err := ledgerHandler(ctx, tx, ev)
		if err == nil && applied != nil {
			applied(ev)
		}
		return err
	})
	return in
}

// ledgerHandler writes one ledger row per application (no unique
// constraint: a double application would show).
func ledgerHandler(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
	_, err := tx.Exec(ctx, `INSERT INTO ledger (event_id, key, sequence) VALUES ($1, $2, $3)`, ev.ID, ev.Key, ev.Sequence)
	return err
}

// topology is a test exchange and queue on the real RabbitMQ.
type topology struct {
	ch                     *amqp.Channel
	exchange, queue, topic string
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	conn := testenv.Rabbit(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	tp := &topology{ch: ch, exchange: testenv.UniqueName("okt_inbox_x"), queue: testenv.UniqueName("okt_inbox_q"), topic: "payments"}
	if err := ch.ExchangeDeclare(tp.exchange, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(tp.queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(tp.queue, tp.topic, tp.exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.QueueDelete(tp.queue, false, false, false); ch.ExchangeDelete(tp.exchange, false, false) })
	return tp
}

func run(t *testing.T, fn func(context.Context) error) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(60 * time.Second):
				t.Errorf("Run did not return within 60s of its stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func count(t testing.TB, pool *pgxpool.Pool, q string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func startConsumer(t *testing.T, db *testenv.DB, url, queue string, applied func(*inbox.Event)) (func(), *inbox.Inbox) {
	t.Helper()
	in := newInboxHook(t, db.Pool, applied)
	c, err := rabbitmq.New(in, rabbitmq.Config{URL: url, Queue: queue, Prefetch: 128, Workers: 4,
		BatchSize: 32, ReconnectMax: 500 * time.Millisecond, DialTimeout: 3 * time.Second, Heartbeat: 2 * time.Second,
		Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	return run(t, c.Run), in
}

// Events enqueued with outbox.Enqueue, published by the relay to RabbitMQ
// and consumed by the adapter are applied exactly once and in order per
// key, although the consumer's connection is cut twice between commit and
// acknowledgement (it reconnects; the unacknowledged deliveries come again
// and are skipped) and the consumer is stopped and replaced once.
func TestEndToEndThroughRelayWithCutsAndRestart(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	tp := newTopology(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, ledgerTable); err != nil {
		t.Fatal(err)
	}
	const total, keys = 3000, 150
	var ids []uuid.UUID
	for i := 0; i < total; i += 500 {
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []outbox.Message
		for j := i; j < i+500; j++ {
			msgs = append(msgs, outbox.Message{Topic: tp.topic, Key: fmt.Sprintf("payout-%d", j%keys),
				Type: "payout.created", Payload: []byte(fmt.Sprintf(`{"n":%d}`, j))})
		}
		got, err := outbox.EnqueueBatch(ctx, tx, msgs)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	pub, err := relayrabbit.New(ctx, relayrabbit.Config{URL: testenv.RabbitURL(), Exchange: tp.exchange, SkipDeclare: true, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	r, err := relay.New(db.Pool, &relay.Config{Publisher: pub, PollInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)

	// The consumer's connection is cut twice between the commit of an
	// event's transaction and its acknowledgement (from inside the handler,
	// the commit follows, the ack finds the connection gone), as in a crash
	// or a broker restart at the worst moment. The consumer reconnects and
	// the broker delivers the unacknowledged events again.
	px, proxyURL := testenv.RabbitProxy(t)
	cutAt := map[uuid.UUID]bool{ids[total/4]: true, ids[total/2]: true}
	var cutMu sync.Mutex
	cuts := 0
	cut := func(ev *inbox.Event) {
		cutMu.Lock()
		defer cutMu.Unlock()
		if cutAt[ev.ID] {
			delete(cutAt, ev.ID)
			px.Stop()
			if err := px.Start(); err != nil {
				t.Error(err)
			}
			cuts++
		}
	}
	stop, first := startConsumer(t, db, proxyURL, tp.queue, cut)
	applied := func() int { return count(t, db.Pool, `SELECT count(DISTINCT event_id) FROM ledger`) }
	testenv.Eventually(t, 90*time.Second, "3/4 applied", func() bool { return applied() >= 3*total/4 })
	stop()
	if cuts != 2 {
		t.Fatalf("%d cuts, want 2", cuts)
	}
	if first.Stats().Duplicate == 0 {
		t.Fatal("no delivery came again after the cuts: the test proves nothing")
	}
	_, second := startConsumer(t, db, testenv.RabbitURL(), tp.queue, nil)
	// The ledger shows an event as soon as its transaction commits; the
	// consumer counts it when HandleBatch returns, a moment later: wait for
	// both, or the counts below race the last batch.
	testenv.Eventually(t, 120*time.Second, "all applied and counted", func() bool {
		return applied() >= total && first.Stats().Applied+second.Stats().Applied+second.Stats().Duplicate >= total
	})
	s1, s2 := first.Stats(), second.Stats()
	t.Logf("first consumer %+v, second %+v: %d deliveries came again and were skipped", s1, s2, s1.Duplicate+s2.Duplicate)
	// A transaction cut short by the stop may have committed without its
	// consumer learning it: counted by neither, skipped by the second.
	if s1.Applied+s2.Applied > total || s1.Applied+s2.Applied+s2.Duplicate < total {
		t.Fatalf("%d applications for %d events", s1.Applied+s2.Applied, total)
	}

	if n := count(t, db.Pool, `SELECT count(*) FROM ledger`); n != total {
		t.Fatalf("%d ledger rows for %d events: applied more than once", n, total)
	}
	if n := count(t, db.Pool, `SELECT count(*) FROM (SELECT key, sequence, lag(sequence) OVER (PARTITION BY key ORDER BY n) AS prev FROM ledger) x
	                    WHERE sequence <> coalesce(prev, 0) + 1`); n != 0 {
		t.Fatalf("%d events applied out of order", n)
	}
	if n := count(t, db.Pool, `SELECT count(*) FROM inbox.dead_letters WHERE status <> 'resolved'`); n != 0 {
		t.Fatalf("%d open dead letters", n)
	}
	if n := count(t, db.Pool, `SELECT count(*) FROM inbox.processed`); n != total {
		t.Fatalf("%d processed records", n)
	}
}

// A message that is not an outboxkit event (no headers, garbage body) is
// parked with what it carried, acknowledged, and the queue goes on.
func TestForeignMessageIsParked(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	tp := newTopology(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, ledgerTable); err != nil {
		t.Fatal(err)
	}
	good := uuid.Must(uuid.NewV7())
	for _, p := range []amqp.Publishing{
		{Body: []byte{0x00, 0xff, 'x'}, MessageId: "legacy-1", Headers: amqp.Table{"x-retries": int32(3), "blob": []byte{0xff}}},
		{Body: []byte(`{}`), ContentType: "application/json", Headers: amqp.Table{
			"cloudEvents:specversion": "1.0", "cloudEvents:id": good.String(), "cloudEvents:type": "payout.created",
			"cloudEvents:partitionkey": "k", "cloudEvents:sequence": "1"}},
	} {
		if err := tp.ch.PublishWithContext(ctx, tp.exchange, tp.topic, false, false, p); err != nil {
			t.Fatal(err)
		}
	}
	startConsumer(t, db, testenv.RabbitURL(), tp.queue, nil)
	testenv.Eventually(t, 60*time.Second, "good message applied, foreign one parked", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM ledger`) == 1 && count(t, db.Pool, `SELECT count(*) FROM inbox.dead_letters`) == 1
	})
	var class, headers, source string
	var payload []byte
	if err := db.Pool.QueryRow(ctx, `SELECT error_class, payload, headers::text, source::text FROM inbox.dead_letters`).
		Scan(&class, &payload, &headers, &source); err != nil {
		t.Fatal(err)
	}
	if class != "poison_format" || string(payload) != "\x00\xffx" || !strings.Contains(headers, `"x-retries"`) ||
		!strings.Contains(headers, `{"base64": "/w=="}`) || !strings.Contains(source, `"message_id": "legacy-1"`) {
		t.Fatalf("dead letter %s %q %s %s", class, payload, headers, source)
	}
	testenv.Eventually(t, 30*time.Second, "queue drained", func() bool {
		q, err := tp.ch.QueueDeclarePassive(tp.queue, false, false, false, false, nil)
		return err == nil && q.Messages == 0
	})
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	in := newInbox(t, db.Pool)
	for _, cfg := range []rabbitmq.Config{
		{},
		{URL: "amqp://guest:secret@localhost:5672/"},
		{URL: "http://x", Queue: "q"},
		{URL: "amqp://localhost/", Queue: "q", Prefetch: -1},
		{URL: "amqp://localhost/", Queue: "q", Prefetch: 10, BatchSize: 11},
	} {
		_, err := rabbitmq.New(in, cfg)
		if !errors.Is(err, rabbitmq.ErrInvalidConfig) {
			t.Errorf("%+v: %v", cfg, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("password in error: %v", err)
		}
	}
}

func TestRunWithoutSchemaSaysWhatToDo(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	c, err := rabbitmq.New(newInbox(t, db.Pool), rabbitmq.Config{URL: testenv.RabbitURL(), Queue: "q"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Run(ctx); err == nil || !strings.Contains(err.Error(), "outboxkit migrate up") {
		t.Fatalf("want a hint to run migrate up, got %v", err)
	}
}

// A stop that comes while Run is starting (Verify in flight, or before it)
// is a stop: Run returns nil, as it does after any other stop.
func TestRunStoppedDuringStartReturnsNil(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	in := newInbox(t, db.Pool)
	for i := range 20 {
		c, err := rabbitmq.New(in, rabbitmq.Config{URL: testenv.RabbitURL(), Queue: "q"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if i == 0 {
			cancel() // stopped before it started
		} else {
			time.AfterFunc(time.Duration(i*100)*time.Microsecond, cancel)
		}
		if err := c.Run(ctx); err != nil {
			t.Fatalf("stop %d (after %dµs): Run returned %v, want nil", i, i*100, err)
		}
		cancel()
	}
}
