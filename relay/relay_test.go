package relay_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
)

func TestMain(m *testing.M) {
	if childMain() {
		return
	}
	opts := []goleak.Option{
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*Cluster).run"),
	}
	for _, f := range testenv.ProxyLeakIgnores {
		opts = append(opts, goleak.IgnoreAnyFunction(f))
	}
	goleak.VerifyTestMain(m, opts...)
}

// faultPublisher wraps a real publisher and fails chosen events, so the
// relay's failure handling is exercised against a real broker.
type faultPublisher struct {
	relay.Publisher
	mu     sync.Mutex
	fail   map[uuid.UUID]error // event id -> error returned instead of publishing
	before func(msgs []relay.Message)
}

func (f *faultPublisher) Publish(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
	f.mu.Lock()
	before := f.before
	var pass []relay.Message
	var idx []int
	results := make([]relay.Result, len(msgs))
	for i, m := range msgs {
		if err, ok := f.fail[m.EventID]; ok {
			results[i].Err = err
			continue
		}
		pass = append(pass, m)
		idx = append(idx, i)
	}
	f.mu.Unlock()
	if before != nil {
		before(msgs)
	}
	if len(pass) == 0 {
		return results, nil
	}
	res, err := f.Publisher.Publish(ctx, pass)
	if err != nil {
		return nil, err
	}
	for j, i := range idx {
		results[i] = res[j]
	}
	return results, nil
}

func (f *faultPublisher) setFail(id uuid.UUID, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail == nil {
		f.fail = map[uuid.UUID]error{}
	}
	if err == nil {
		delete(f.fail, id)
	} else {
		f.fail[id] = err
	}
}

func TestNewValidatesConfig(t *testing.T) {
	db := testenv.NewDB(t)
	if _, err := relay.New(db.Pool, nil); !errors.Is(err, relay.ErrInvalidConfig) {
		t.Fatalf("nil config: %v", err)
	}
	if _, err := relay.New(db.Pool, &relay.Config{}); !errors.Is(err, relay.ErrInvalidConfig) || !strings.Contains(err.Error(), "Publisher") {
		t.Fatalf("no publisher: %v", err)
	}
	pub := &faultPublisher{}
	for _, cfg := range []relay.Config{
		{Publisher: pub, Schema: "Bad-Schema"},
		{Publisher: pub, BatchSize: -1},
		{Publisher: pub, Workers: 100},
		{Publisher: pub, LeaseTTL: time.Millisecond},
		{Publisher: pub, BackoffBase: time.Minute, BackoffMax: time.Second},
	} {
		if _, err := relay.New(db.Pool, &cfg); !errors.Is(err, relay.ErrInvalidConfig) {
			t.Errorf("%+v: want ErrInvalidConfig, got %v", cfg, err)
		}
	}
}

func TestRunWithoutSchemaSaysWhatToDo(t *testing.T) {
	db := testenv.NewEmptyDB(t)
	r, err := relay.New(db.Pool, &relay.Config{Publisher: &faultPublisher{}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = r.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "outboxkit migrate up") {
		t.Fatalf("want a hint to run migrate up, got %v", err)
	}
}

// Committed events are published with their attributes; rolled-back ones
// never; the relay marks each published with its broker coordinates.
func TestPublishesCommittedNeverRolledBack(t *testing.T) {
	t.Parallel()
	for _, durable := range []bool{false, true} {
		t.Run(fmt.Sprintf("DurableMarks=%v", durable), func(t *testing.T) {
			t.Parallel()
			testPublishesCommittedNeverRolledBack(t, durable)
		})
	}
}

func testPublishesCommittedNeverRolledBack(t *testing.T, durableMarks bool) {
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("transfers")
	k.CreateTopic(t, topic, 4)
	ctx := context.Background()

	var committed []uuid.UUID
	for i := 0; i < 60; i++ {
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: fmt.Sprintf("acct-%d", i%7),
			Type: "transfer.created", Version: 2, Payload: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Headers: map[string]string{"tenant": "t1"}, CorrelationID: "flow-1"})
		if err != nil {
			t.Fatal(err)
		}
		if i%3 == 2 {
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		committed = append(committed, id)
	}
	pool := newPool(t, db.URL, 6)
	cfg := fastConfig(t, kafkaPublisher(t, k))
	cfg.DurableMarks = durableMarks
	runRelay(t, pool, cfg)
	waitPublished(t, db.Pool, len(committed), 30*time.Second)

	recs := k.Records(t, topic, len(committed), 20*time.Second)
	ids := checkOrder(t, recs)
	if len(ids) != len(committed) {
		t.Fatalf("%d distinct events in Kafka, want %d", len(ids), len(committed))
	}
	for _, id := range committed {
		if !ids[id.String()] {
			t.Errorf("committed event %s not in Kafka", id)
		}
	}
	r := recs[0]
	for name, want := range map[string]string{"ce_specversion": "1.0", "ce_type": "transfer.created",
		"ce_eventversion": "2", "ce_correlationid": "flow-1", "tenant": "t1", "content-type": "application/json"} {
		if got := header(r, name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	var missingAck int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.messages
		WHERE status = 'published' AND (broker_ack IS NULL OR published_by IS NULL OR attempts <> 1)`).Scan(&missingAck); err != nil {
		t.Fatal(err)
	}
	if missingAck != 0 {
		t.Errorf("%d published rows without broker_ack/published_by or with attempts <> 1", missingAck)
	}
}

// Three relays share the partitions; 8 producers enqueue on 200 keys at
// once; every key's events reach Kafka in sequence order, none missing.
func TestPerKeyOrderThreeRelays(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("orders")
	k.CreateTopic(t, topic, 6)
	pub := kafkaPublisher(t, k)
	for i := 0; i < 3; i++ {
		cfg := fastConfig(t, pub)
		cfg.BatchSize = 100
		runRelay(t, newPool(t, db.URL, 4), cfg)
	}
	const producers, perProducer = 8, 300
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Go(func() {
			ctx := context.Background()
			for i := 0; i < perProducer; i++ {
				tx, err := db.Pool.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: fmt.Sprintf("key-%d", (p*perProducer+i)%200),
					Type: "test.event", Payload: []byte("{}")}); err != nil {
					t.Error(err)
					tx.Rollback(ctx)
					return
				}
				if err := tx.Commit(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	const total = producers * perProducer
	waitPublished(t, db.Pool, total, 60*time.Second)
	recs := k.Records(t, topic, total, 30*time.Second)
	if ids := checkOrder(t, recs); len(ids) != total {
		t.Fatalf("%d distinct events in Kafka, want %d", len(ids), total)
	}
	var owners int
	if err := db.Pool.QueryRow(context.Background(),
		`SELECT count(DISTINCT published_by) FROM outbox.messages`).Scan(&owners); err != nil {
		t.Fatal(err)
	}
	if owners < 2 {
		t.Errorf("events published by %d relay(s); the partitions were not shared", owners)
	}
}

// A transient failure is retried with backoff and recorded each time; after
// MaxAttempts the event is parked with its history and an audit entry, later
// events of its key are blocked (also new ones), other keys flow.
func TestRetryThenParkBlocksOnlyItsKey(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("payouts")
	k.CreateTopic(t, topic, 2)
	ctx := context.Background()

	ids := enqueue(t, db.Pool, topic, 30, 3, 30) // key-0: ids[0], ids[3], ...
	poison := ids[3]                             // key-0, sequence 2
	pub := &faultPublisher{Publisher: kafkaPublisher(t, k)}
	pub.setFail(poison, relay.Classify(relay.ClassTransient, errors.New("leader moved")))
	cfg := fastConfig(t, pub)
	cfg.MaxAttempts = 3
	runRelay(t, newPool(t, db.URL, 4), cfg)

	testenv.Eventually(t, 30*time.Second, "poison event parked", func() bool {
		var status string
		db.Pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE event_id = $1`, poison).Scan(&status)
		return status == "parked"
	})
	// key-0: sequence 1 published, 2 parked, 3..10 blocked; keys 1, 2 published.
	waitPublished(t, db.Pool, 21, 20*time.Second)
	rows, err := db.Pool.Query(ctx, `SELECT key, sequence, status, attempts FROM outbox.messages ORDER BY key, sequence`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var key, status string
		var seq int64
		var attempts int
		if err := rows.Scan(&key, &seq, &status, &attempts); err != nil {
			t.Fatal(err)
		}
		want := "published"
		if key == "key-0" && seq == 2 {
			want = "parked"
		} else if key == "key-0" && seq > 2 {
			want = "blocked"
		}
		if status != want {
			t.Errorf("%s #%d: status %s, want %s", key, seq, status, want)
		}
		if want == "parked" && attempts != 3 {
			t.Errorf("parked event: attempts %d, want 3", attempts)
		}
	}
	var outcomes []string
	rows, err = db.Pool.Query(ctx, `SELECT outcome || ':' || error_class FROM outbox.attempts WHERE event_id = $1 ORDER BY attempt`, poison)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		rows.Scan(&s)
		outcomes = append(outcomes, s)
	}
	if got := strings.Join(outcomes, ","); got != "retry:transient,retry:transient,parked:transient" {
		t.Errorf("attempt history %q", got)
	}
	var audits int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.audit_log WHERE action = 'park' AND target_ids = ARRAY[$1::text]`, poison.String()).Scan(&audits)
	if audits != 1 {
		t.Errorf("%d audit entries for the park, want 1", audits)
	}
	// A new event on the blocked key waits too; one on another key goes out.
	tx, _ := db.Pool.Begin(ctx)
	late, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: "key-0", Type: "test.event", Payload: []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: "key-9", Type: "test.event", Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	tx.Commit(ctx)
	waitPublished(t, db.Pool, 22, 20*time.Second)
	var lateStatus string
	db.Pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE event_id = $1`, late).Scan(&lateStatus)
	if lateStatus != "blocked" {
		t.Errorf("event enqueued on a blocked key: status %s, want blocked", lateStatus)
	}
	var blockedLanes int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.blocked_lanes WHERE key = 'key-0' AND blocked_by_event_id = $1`, poison).Scan(&blockedLanes)
	if blockedLanes != 1 {
		t.Errorf("blocked_lanes shows %d rows for key-0", blockedLanes)
	}
}

// With the topic policy "skip", a parked event does not hold its key back.
func TestParkWithSkipPolicy(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("notices")
	k.CreateTopic(t, topic, 1)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox.topic_policies (topic, on_park, updated_by) VALUES ($1, 'skip', 'test')`, topic); err != nil {
		t.Fatal(err)
	}
	ids := enqueue(t, db.Pool, topic, 5, 1, 5)
	pub := &faultPublisher{Publisher: kafkaPublisher(t, k)}
	pub.setFail(ids[1], relay.Classify(relay.ClassPoisonFormat, errors.New("record too large")))
	runRelay(t, newPool(t, db.URL, 4), fastConfig(t, pub))
	waitPublished(t, db.Pool, 4, 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "poison event parked", func() bool { return countStatus(t, db.Pool, "parked") == 1 })
	var attempts int
	var class string
	db.Pool.QueryRow(ctx, `SELECT attempts, last_error_class FROM outbox.messages WHERE event_id = $1`, ids[1]).Scan(&attempts, &class)
	if attempts != 1 || class != "poison_format" {
		t.Errorf("poison event: attempts %d class %s, want parked at once as poison_format", attempts, class)
	}
}

// An event for a Kafka topic that does not exist is parked as unroutable
// with a reason naming the topic.
func TestUnroutableParksWithReason(t *testing.T) {
	t.Parallel()
	if testenvKafkaIsReal() {
		t.Skip("a real Kafka may auto-create topics")
	}
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("nowhere")
	ids := enqueue(t, db.Pool, topic, 1, 1, 1)
	runRelay(t, newPool(t, db.URL, 4), fastConfig(t, kafkaPublisher(t, k)))
	testenv.Eventually(t, 30*time.Second, "unroutable event parked", func() bool { return countStatus(t, db.Pool, "parked") == 1 })
	var class, lastErr string
	db.Pool.QueryRow(context.Background(), `SELECT last_error_class, last_error FROM outbox.messages WHERE event_id = $1`, ids[0]).Scan(&class, &lastErr)
	if class != "unroutable" || !strings.Contains(lastErr, topic) {
		t.Errorf("class %q error %q: want unroutable naming the topic", class, lastErr)
	}
}

// While the broker is unreachable, events wait: no attempt is counted and
// nothing is parked; when it is back, everything goes out.
func TestOutageCountsNoAttempts(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("outage")
	k.CreateTopic(t, topic, 2)
	enqueue(t, db.Pool, topic, 40, 10, 40)
	down := &faultPublisher{Publisher: kafkaPublisher(t, k)}
	var rounds sync.WaitGroup
	rounds.Add(1)
	var once sync.Once
	calls := 0
	var mu sync.Mutex
	broken := true
	down.before = func([]relay.Message) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 4 {
			once.Do(rounds.Done)
		}
	}
	outagePub := publisherFunc(func(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
		mu.Lock()
		b := broken
		mu.Unlock()
		if b {
			down.before(msgs)
			return nil, relay.Classify(relay.ClassDependencyOutage, errors.New("dial tcp 127.0.0.1:9: connection refused"))
		}
		return down.Publish(ctx, msgs)
	})
	cfg := fastConfig(t, outagePub)
	cfg.MaxAttempts = 2
	runRelay(t, newPool(t, db.URL, 4), cfg)
	rounds.Wait() // four failed rounds: far more than MaxAttempts
	var maxAttempts int
	db.Pool.QueryRow(context.Background(), `SELECT max(attempts) FROM outbox.messages`).Scan(&maxAttempts)
	if maxAttempts != 0 || countStatus(t, db.Pool, "parked") != 0 {
		t.Fatalf("outage counted attempts (max %d) or parked events", maxAttempts)
	}
	mu.Lock()
	broken = false
	mu.Unlock()
	waitPublished(t, db.Pool, 40, 30*time.Second)
}

type publisherFunc func(ctx context.Context, msgs []relay.Message) ([]relay.Result, error)

func (f publisherFunc) Publish(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
	return f(ctx, msgs)
}
func (f publisherFunc) Close() error { return nil }

// Delayed events go out when due, to the second, and not before.
func TestDelayedDelivery(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("later")
	k.CreateTopic(t, topic, 1)
	runRelay(t, newPool(t, db.URL, 4), fastConfig(t, kafkaPublisher(t, k)))
	ctx := context.Background()
	tx, _ := db.Pool.Begin(ctx)
	var txStart time.Time // the database's now(): DeliverAfter counts from it
	if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&txStart); err != nil {
		t.Fatal(err)
	}
	now := outbox.Message{Topic: topic, Key: "k", Type: "t", Payload: []byte("now")}
	later := outbox.Message{Topic: topic, Key: "k", Type: "t", Payload: []byte("later"), DeliverAfter: 2 * time.Second}
	laterID, err := outbox.Enqueue(ctx, tx, later)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, tx, now); err != nil {
		t.Fatal(err)
	}
	tx.Commit(ctx)
	waitPublished(t, db.Pool, 2, 15*time.Second)
	var late time.Duration
	var seq int64
	if err := db.Pool.QueryRow(ctx, `SELECT sequence, published_at - ($2::timestamptz + interval '2 seconds')
		  FROM outbox.messages WHERE event_id = $1`, laterID, txStart).Scan(&seq, &late); err != nil {
		t.Fatal(err)
	}
	if late < 0 {
		t.Errorf("delayed event published %s before it was due", -late)
	}
	if late > 1500*time.Millisecond {
		t.Errorf("delayed event published %s after it was due", late)
	}
	if seq != 2 {
		t.Errorf("delayed event took lane sequence %d, want 2 (after the event enqueued later without delay)", seq)
	}
}

// A relay that lost its lease (paused while another took over) cannot mark
// anything: its acknowledged batch stays pending for the new owner.
func TestFencedAfterLeaseLoss(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("fenced")
	k.CreateTopic(t, topic, 1)
	enqueue(t, db.Pool, topic, 20, 4, 20)
	var stolen sync.Once
	published := make(chan struct{})
	inner := kafkaPublisher(t, k)
	pub := publisherFunc(func(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
		first := false
		stolen.Do(func() {
			// Another relay takes every partition over while this batch is in flight.
			if _, err := db.Pool.Exec(context.Background(),
				`UPDATE outbox.partitions SET owner = 'thief', lease_token = lease_token + 1, lease_until = now() + interval '1 hour'`); err != nil {
				t.Error(err)
			}
			first = true
		})
		res, err := inner.Publish(ctx, msgs)
		if first {
			close(published)
		}
		return res, err
	})
	_, stop := runRelay(t, newPool(t, db.URL, 4), fastConfig(t, pub))
	select {
	case <-published:
	case <-time.After(20 * time.Second):
		t.Fatal("the relay never published")
	}
	stop() // returns after the batch in flight was published and its marking tried
	if n := countStatus(t, db.Pool, "published"); n != 0 {
		t.Fatalf("%d events marked by a relay that no longer held the lease", n)
	}
	var theirs int
	db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox.partitions WHERE owner = 'thief'`).Scan(&theirs)
	if theirs != testenv.Partitions {
		t.Errorf("the fenced relay changed partitions it did not own (%d left to the thief)", theirs)
	}
}

func testenvKafkaIsReal() bool { return os.Getenv("KAFKA_BROKERS") != "" }

// Leases: one relay takes every partition; a second one gets its fair share;
// a graceful stop releases the leases at once and unregisters.
func TestLeaseSharingAndGracefulStop(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	pub := &faultPublisher{}
	ctx := context.Background()
	owned := func(id string) int {
		var n int
		db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.partitions WHERE owner = $1 AND lease_until > now()`, id).Scan(&n)
		return n
	}
	a, _ := runRelay(t, newPool(t, db.URL, 4), fastConfig(t, pub))
	testenv.Eventually(t, 10*time.Second, "relay A holds every partition", func() bool { return owned(a.ID()) == testenv.Partitions })
	b, stopB := runRelay(t, newPool(t, db.URL, 4), fastConfig(t, pub))
	half := testenv.Partitions / 2
	testenv.Eventually(t, 15*time.Second, "partitions shared 4/4", func() bool { return owned(a.ID()) == half && owned(b.ID()) == half })
	stopB()
	var left int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.partitions WHERE owner = $1`, b.ID()).Scan(&left)
	if left != 0 {
		t.Errorf("%d leases still held after a graceful stop", left)
	}
	var registered int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.relays WHERE relay_id = $1`, b.ID()).Scan(&registered)
	if registered != 0 {
		t.Error("stopped relay still registered")
	}
	testenv.Eventually(t, 15*time.Second, "relay A takes every partition back", func() bool { return owned(a.ID()) == testenv.Partitions })
}

// TestStopDuringStartLeavesNoLease stops relays at random moments of their
// start, when a lease round may be in flight: a stopped relay must never
// leave a lease behind (it would hold its partitions for lease_ttl).
func TestStopDuringStartLeavesNoLease(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	pool := newPool(t, db.URL, 8)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range 40 {
		cfg := fastConfig(t, &faultPublisher{})
		cfg.LeaseTTL = time.Minute // a leaked lease would outlive the test
		r, err := relay.New(pool, cfg)
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(runCtx) }()
		time.Sleep(time.Duration(rng.IntN(30_000)) * time.Microsecond)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("stop %d: Run: %v", i, err)
		}
		var held, registered int
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox.partitions WHERE owner = $1),
       (SELECT count(*) FROM outbox.relays WHERE relay_id = $1)`, r.ID()).Scan(&held, &registered); err != nil {
			t.Fatal(err)
		}
		if held != 0 || registered != 0 {
			t.Fatalf("stop %d: relay %s still holds %d leases (registered: %d) after Run returned", i, r.ID(), held, registered)
		}
	}
}
