package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/kafka"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relaykafka "github.com/outboxkit/outboxkit/relay/kafka"
)

func TestMain(m *testing.M) {
	if childMain() {
		return
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*Cluster).run"),
	)
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

// newInbox is the consumer under test: its handler writes one ledger row
// per application (no unique constraint: a double application would show).
func newInbox(pool *pgxpool.Pool, log *slog.Logger) (*inbox.Inbox, error) {
	in, err := inbox.New(pool, &inbox.Config{Consumer: "billing", ConsumerVersion: "test",
		BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, Logger: log})
	if err != nil {
		return nil, err
	}
	in.Register("payout.created", 1, ledgerHandler)
	return in, nil
}

func ledgerHandler(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
	_, err := tx.Exec(ctx, `INSERT INTO ledger (event_id, key, sequence) VALUES ($1, $2, $3)`, ev.ID, ev.Key, ev.Sequence)
	return err
}

func consumerConfig(brokers []string, topic string, commit time.Duration) kafka.Config {
	// The group is named after the topic: tests (and rounds) never share a
	// group, also on a real cluster (KAFKA_BROKERS).
	return kafka.Config{Brokers: brokers, Topics: []string{topic}, GroupID: topic, CommitInterval: commit,
		MaxWait: 100 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond,
		SessionTimeout: 6 * time.Second, RebalanceTimeout: 10 * time.Second, Logger: logger()}
}

// childMain runs a consumer in this process when the test binary was
// started as a child by TestSIGKILLedConsumerAppliesEachEventOnce. The
// parent kills it.
func childMain() bool {
	if os.Getenv("OUTBOXKIT_INBOX_CHILD") != "1" {
		return false
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("OUTBOXKIT_CHILD_DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	in, err := newInbox(pool, logger())
	if err != nil {
		panic(err)
	}
	commit, err := time.ParseDuration(os.Getenv("OUTBOXKIT_CHILD_COMMIT"))
	if err != nil {
		panic(err)
	}
	c, err := kafka.New(in, consumerConfig(strings.Split(os.Getenv("OUTBOXKIT_CHILD_KAFKA"), ","),
		os.Getenv("OUTBOXKIT_CHILD_TOPIC"), commit))
	if err != nil {
		panic(err)
	}
	if err := c.Run(ctx); err != nil {
		panic(err)
	}
	os.Exit(0)
	return true
}

// setup is a database with the ledger, a topic, and events enqueued through
// the outbox and published by a running relay.
type setup struct {
	db    *testenv.DB
	k     *testenv.Kafka
	topic string
	ids   []uuid.UUID
}

func newSetup(t *testing.T, total, keys int) *setup {
	t.Helper()
	s := &setup{db: testenv.NewDB(t), k: testenv.NewKafka(t), topic: testenv.UniqueName("payments")}
	s.k.CreateTopic(t, s.topic, 4)
	ctx := context.Background()
	if _, err := s.db.Pool.Exec(ctx, ledgerTable); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < total; i += 500 {
		tx, err := s.db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []outbox.Message
		for j := i; j < min(i+500, total); j++ {
			msgs = append(msgs, outbox.Message{Topic: s.topic, Key: fmt.Sprintf("payout-%d", j%keys), Type: "payout.created",
				Payload: []byte(fmt.Sprintf(`{"n":%d}`, j)), CorrelationID: "flow-1"})
		}
		ids, err := outbox.EnqueueBatch(ctx, tx, msgs)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		s.ids = append(s.ids, ids...)
	}
	pub, err := relaykafka.New(relaykafka.Config{Brokers: s.k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	r, err := relay.New(s.db.Pool, &relay.Config{Publisher: pub, PollInterval: 100 * time.Millisecond,
		LeaseTTL: 2 * time.Second, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	return s
}

// run starts fn in a goroutine and returns a stop function that cancels it
// and waits for it (also called at cleanup).
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

func (s *setup) startConsumer(t *testing.T, commit time.Duration) func() {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), s.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	in, err := newInbox(pool, logger())
	if err != nil {
		t.Fatal(err)
	}
	c, err := kafka.New(in, consumerConfig(s.k.Brokers, s.topic, commit))
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c.Run)
	return func() { stop(); pool.Close() }
}

func (s *setup) count(t *testing.T, q string) int {
	t.Helper()
	var n int
	if err := s.db.Pool.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (s *setup) waitApplied(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, fmt.Sprintf("%d events applied", n), func() bool {
		return s.count(t, `SELECT count(DISTINCT event_id) FROM ledger`) >= n
	})
}

// verify checks exactly-once and per-key order of the ledger.
func (s *setup) verify(t *testing.T) {
	t.Helper()
	if n := s.count(t, `SELECT count(*) FROM ledger`); n != len(s.ids) {
		t.Fatalf("%d ledger rows for %d events: applied more than once", n, len(s.ids))
	}
	if n := s.count(t, `SELECT count(*) FROM ledger l JOIN outbox.messages m ON m.event_id = l.event_id`); n != len(s.ids) {
		t.Fatalf("%d of %d ledger rows match an enqueued event", n, len(s.ids))
	}
	if n := s.count(t, `SELECT count(*) FROM (SELECT key, sequence, lag(sequence) OVER (PARTITION BY key ORDER BY n) AS prev FROM ledger) x
	                    WHERE sequence <> coalesce(prev, 0) + 1`); n != 0 {
		t.Fatalf("%d events applied out of order", n)
	}
	if n := s.count(t, `SELECT count(*) FROM inbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}

// Events enqueued with outbox.Enqueue, published by the relay to Kafka and
// consumed by the adapter are applied exactly once and in order per key,
// although the consumer is stopped and started again mid-stream and a
// second consumer joins the group (rebalance).
func TestEndToEndThroughRelayWithRestart(t *testing.T) {
	t.Parallel()
	s := newSetup(t, 3000, 200)
	stop := s.startConsumer(t, 200*time.Millisecond)
	s.waitApplied(t, 1000, 90*time.Second)
	stop() // graceful: commits what it settled
	s.startConsumer(t, 200*time.Millisecond)
	s.waitApplied(t, 2000, 90*time.Second)
	s.startConsumer(t, 200*time.Millisecond) // a second member: the partitions are shared
	s.waitApplied(t, len(s.ids), 120*time.Second)
	s.verify(t)
}

// A consumer killed with SIGKILL after applying events but before committing
// their offsets (CommitInterval of an hour: it never commits) leaves them to
// be delivered again: the next consumer skips every one of them as a
// duplicate, and applies the rest once.
func TestSIGKILLedConsumerAppliesEachEventOnce(t *testing.T) {
	t.Parallel()
	s := newSetup(t, 3000, 100)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var childLog strings.Builder
	defer func() {
		if t.Failed() {
			t.Logf("child consumer output:\n%s", childLog.String())
		}
	}()
	for round, commit := range []string{"1h", "100ms"} {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "OUTBOXKIT_INBOX_CHILD=1", "OUTBOXKIT_CHILD_DATABASE_URL="+s.db.URL,
			"OUTBOXKIT_CHILD_KAFKA="+strings.Join(s.k.Brokers, ","), "OUTBOXKIT_CHILD_TOPIC="+s.topic,
			"OUTBOXKIT_CHILD_COMMIT="+commit)
		cmd.Stderr = &childLog
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		target := (round + 1) * len(s.ids) / 4
		testenv.Eventually(t, 120*time.Second, "child consumer applying", func() bool {
			select {
			case <-exited:
				t.Fatalf("child consumer exited early: %v", cmd.ProcessState)
			default:
			}
			return s.count(t, `SELECT count(*) FROM ledger`) >= target
		})
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exited
	}
	applied := s.count(t, `SELECT count(*) FROM ledger`)
	if applied >= len(s.ids) {
		t.Fatalf("the children applied everything (%d) before being killed: the test proves nothing", applied)
	}
	// The children never committed (round 1) or committed only some of the
	// offsets (round 2): the parent consumer gets their events again.
	offsets := committedOffsets(t, s)
	if offsets >= applied {
		t.Fatalf("committed offsets %d >= %d applied events: no redelivery to prove", offsets, applied)
	}
	s.startConsumer(t, 200*time.Millisecond)
	s.waitApplied(t, len(s.ids), 120*time.Second)
	s.verify(t)
	t.Logf("%d events; the killed consumers applied %d and committed offsets for %d: %d were delivered again and skipped",
		len(s.ids), applied, offsets, applied-offsets)
}

// committedOffsets sums the offsets the group committed on the topic.
func committedOffsets(t *testing.T, s *setup) int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.k.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resps, err := kadm.NewClient(cl).FetchOffsets(context.Background(), s.topic)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	resps.Each(func(o kadm.OffsetResponse) {
		if o.Topic == s.topic && o.Err == nil && o.At > 0 {
			sum += int(o.At)
		}
	})
	return sum
}

// Records without CloudEvents headers (written by a foreign producer) are
// parked raw with their coordinates, and the partition goes on.
func TestForeignRecordsAreParked(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("mixed")
	k.CreateTopic(t, topic, 1)
	if _, err := db.Pool.Exec(context.Background(), ledgerTable); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	good := uuid.Must(uuid.NewV7())
	recs := []*kgo.Record{
		{Topic: topic, Key: []byte("k"), Value: []byte{0xff, 0xfe, 0x00}},
		{Topic: topic, Key: []byte("k"), Value: []byte(`{}`), Headers: []kgo.RecordHeader{{Key: "ce_id", Value: []byte{0xc3, 0x28}}}},
		{Topic: topic, Key: []byte("k"), Value: []byte(`{}`), Headers: []kgo.RecordHeader{
			{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte(good.String())},
			{Key: "ce_type", Value: []byte("payout.created")}, {Key: "ce_partitionkey", Value: []byte("k")},
			{Key: "ce_sequence", Value: []byte("1")}}},
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	in, err := newInbox(db.Pool, logger())
	if err != nil {
		t.Fatal(err)
	}
	c, err := kafka.New(in, consumerConfig(k.Brokers, topic, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	run(t, c.Run)
	testenv.Eventually(t, 60*time.Second, "good record applied", func() bool {
		var n int
		db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger WHERE event_id = $1`, good).Scan(&n)
		return n == 1
	})
	rows, err := db.Pool.Query(context.Background(), `SELECT error_class, payload, source->>'offset', source->>'partition'
  FROM inbox.dead_letters ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	type dl struct {
		Class             string
		Payload           []byte
		Offset, Partition string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[dl])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Class != "poison_format" || string(got[0].Payload) != "\xff\xfe\x00" || got[0].Offset != "0" ||
		got[1].Offset != "1" || got[1].Partition != "0" {
		t.Fatalf("dead letters %q", got)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	in, err := newInbox(db.Pool, logger())
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []kafka.Config{
		{},
		{Brokers: []string{"x:9092"}},
		{Topics: []string{"t"}},
		{Brokers: []string{"x:9092"}, Topics: []string{""}},
		{Brokers: []string{"x:9092"}, Topics: []string{"t"}, BatchSize: -1},
	} {
		if _, err := kafka.New(in, cfg); !errors.Is(err, kafka.ErrInvalidConfig) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	if _, err := kafka.New(nil, kafka.Config{Brokers: []string{"x:9092"}, Topics: []string{"t"}}); !errors.Is(err, kafka.ErrInvalidConfig) {
		t.Errorf("nil inbox: %v", err)
	}
}

func TestRunWithoutSchemaSaysWhatToDo(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	in, err := newInbox(db.Pool, logger())
	if err != nil {
		t.Fatal(err)
	}
	c, err := kafka.New(in, kafka.Config{Brokers: []string{"127.0.0.1:1"}, Topics: []string{"t"}})
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
	in, err := newInbox(db.Pool, logger())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		c, err := kafka.New(in, kafka.Config{Brokers: []string{"127.0.0.1:1"}, Topics: []string{"t"}})
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
