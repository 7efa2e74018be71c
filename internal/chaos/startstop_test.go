package chaos_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/inbox"
	inboxkafka "github.com/outboxkit/outboxkit/inbox/kafka"
	inboxrabbit "github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relaykafka "github.com/outboxkit/outboxkit/relay/kafka"
	relayrabbit "github.com/outboxkit/outboxkit/relay/rabbitmq"
	"github.com/outboxkit/outboxkit/sweeper"
)

// startStopCycles is how many times each service is started and stopped:
// a third of the stops come at once, a third after a short random delay
// (somewhere in the start), a third after the service did real work.
const startStopCycles = 50

func isWorkCycle(i int) bool { return i%3 == 1 }

// TestChaosStartStop starts and stops every long-running service 50 times:
// relay.Run, sweeper.Run and the Kafka and RabbitMQ inbox consumers. A
// third of the stops come at once, a third somewhere in the start, a third
// after the service did real work (a lease held and an event published, the
// leader lock taken, an event applied). Every Run must return nil. After each stop nothing may be left
// held (leases, the relay's registration, the leader lock, group membership,
// queue consumers), and after all of them no goroutine may be left running.
func TestChaosStartStop(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos: skipped in -short mode")
	}
	baseline := goleak.IgnoreCurrent()
	db := testenv.NewDB(t)
	if _, err := db.Pool.Exec(context.Background(), `CREATE TABLE startstop_applied (
    consumer text NOT NULL, event_id uuid NOT NULL, sequence bigint NOT NULL, PRIMARY KEY (consumer, event_id))`); err != nil {
		t.Fatal(err)
	}
	t.Run("group", func(t *testing.T) {
		t.Run("relay", func(t *testing.T) { t.Parallel(); startStopRelay(t, db) })
		t.Run("sweeper", func(t *testing.T) { t.Parallel(); startStopSweeper(t, db) })
		t.Run("inbox-kafka", func(t *testing.T) { t.Parallel(); startStopInboxKafka(t, db) })
		t.Run("inbox-rabbitmq", func(t *testing.T) { t.Parallel(); startStopInboxRabbit(t, db) })
	})
	goleak.VerifyNone(t, append(leakOptions(), baseline)...)
}

// runFor runs fn(ctx) in a goroutine, waits until ready() (on a working
// cycle) or a short random time (somewhere in the start), cancels ctx and
// waits up to 30s for fn to return, which must be nil: a stop is never an
// error, whenever it comes.
func runFor(t *testing.T, what string, cycle int, ready func() bool, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	if cycle%3 == 2 {
		// Stop somewhere in the start: connecting, joining, registering.
		time.Sleep(time.Duration(cycle*7%150) * time.Millisecond)
	}
	if isWorkCycle(cycle) {
		deadline := time.Now().Add(60 * time.Second)
		for !ready() {
			select {
			case err := <-done:
				cancel()
				t.Fatalf("%s returned before it was ready: %v", what, err)
			default:
			}
			if time.Now().After(deadline) {
				cancel()
				<-done
				t.Fatalf("%s not ready within 60s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s (cycle %d): Run returned %v after a stop, want nil", what, cycle, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Run did not return within 30s of its context ending", what)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func startStopRelay(t *testing.T, db *testenv.DB) {
	ctx := context.Background()
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("startstop")
	k.CreateTopic(t, topic, 2)
	pool := newPool(t, db.URL, "chaos:startstop-relay", 4)
	for i := range startStopCycles {
		work := isWorkCycle(i)
		var eventID uuid.UUID
		if work {
			id, err := outbox.Enqueue(ctx, pool, outbox.Message{Topic: topic, Key: "k", Type: "startstop", Payload: []byte("{}")})
			if err != nil {
				t.Fatal(err)
			}
			eventID = id
		}
		pub, err := relaykafka.New(relaykafka.Config{Brokers: k.Brokers, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("startstop-relay-%d", i)
		r, err := relay.New(pool, &relay.Config{Publisher: pub, RelayID: id, PollInterval: 50 * time.Millisecond,
			LeaseTTL: 2 * time.Second, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		runFor(t, id, i, func() bool {
			var status string
			err := pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE event_id = $1`, eventID).Scan(&status)
			return err == nil && status == "published" && len(r.Leases()) > 0
		}, r.Run)
		if err := pub.Close(); err != nil {
			t.Fatalf("cycle %d: close publisher: %v", i, err)
		}
		var held, registered int
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox.partitions WHERE owner = $1),
       (SELECT count(*) FROM outbox.relays WHERE relay_id = $1)`, id).Scan(&held, &registered); err != nil {
			t.Fatal(err)
		}
		if held != 0 || registered != 0 {
			t.Fatalf("cycle %d: after the stop %s still holds %d leases (registered: %d)", i, id, held, registered)
		}
	}
}

func startStopSweeper(t *testing.T, db *testenv.DB) {
	ctx := context.Background()
	pool := newPool(t, db.URL, "chaos:startstop-sweeper", 4)
	for i := range startStopCycles {
		s, err := sweeper.New(pool, &sweeper.Config{ID: fmt.Sprintf("startstop-%d", i),
			LeaderCheckInterval: 50 * time.Millisecond, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		runFor(t, "sweeper", i, s.IsLeader, s.Run)
		if s.IsLeader() {
			t.Fatalf("cycle %d: the sweeper still says it is the leader after Run returned", i)
		}
		// The leader lock is a session advisory lock on a connection of its
		// own: after Run returns, no session of this database holds one.
		testenv.Eventually(t, 10*time.Second, "the sweeper's advisory locks released", func() bool {
			var n int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
 WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()`).Scan(&n)
			return err == nil && n == 0
		})
	}
}

// startStopInbox is the common part of the two consumer adapters: each
// working cycle publishes one more event of key "k" and waits until the
// consumer applied every event published so far.
type startStopInbox struct {
	consumer  string
	pool      *pgxpool.Pool
	published atomic.Int64
}

func newStartStopInbox(t *testing.T, db *testenv.DB, consumer string) (*startStopInbox, *inbox.Inbox) {
	s := &startStopInbox{consumer: consumer, pool: newPool(t, db.URL, "chaos:startstop-"+consumer, 4)}
	in, err := inbox.New(s.pool, &inbox.Config{Consumer: consumer, ConsumerVersion: "startstop",
		BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	in.Register("startstop", 1, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		_, err := tx.Exec(ctx, `INSERT INTO startstop_applied (consumer, event_id, sequence) VALUES ($1, $2, $3)`,
			consumer, ev.ID, ev.Sequence)
		return err
	})
	return s, in
}

func (s *startStopInbox) next() []relay.Message {
	seq := s.published.Add(1)
	return []relay.Message{{ID: seq, EventID: uuid.Must(uuid.NewV7()), Topic: "", Key: "k", Sequence: seq,
		Type: "startstop", Version: 1, Payload: []byte("{}"), ContentType: "application/json", CreatedAt: time.Now()}}
}

func (s *startStopInbox) allApplied() bool {
	var n int64
	err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM startstop_applied WHERE consumer = $1`, s.consumer).Scan(&n)
	return err == nil && n == s.published.Load()
}

func publishOne(t *testing.T, pub relay.Publisher, msgs []relay.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := pub.Publish(ctx, msgs)
	if err == nil && res[0].Err != nil {
		err = res[0].Err
	}
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func startStopInboxKafka(t *testing.T, db *testenv.DB) {
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("startstop")
	k.CreateTopic(t, topic, 2)
	pub, err := relaykafka.New(relaykafka.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	s, in := newStartStopInbox(t, db, "startstop-kafka")
	group := "startstop-kafka"
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for i := range startStopCycles {
		work := isWorkCycle(i)
		if work {
			msgs := s.next()
			msgs[0].Topic = topic
			publishOne(t, pub, msgs)
		}
		c, err := inboxkafka.New(in, inboxkafka.Config{Brokers: k.Brokers, Topics: []string{topic}, GroupID: group,
			HeartbeatInterval: 500 * time.Millisecond, SessionTimeout: 6 * time.Second, RebalanceTimeout: 6 * time.Second,
			CommitInterval: 100 * time.Millisecond, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		runFor(t, "kafka consumer", i, s.allApplied, c.Run)
		// It left the group: nobody holds its partitions.
		testenv.Eventually(t, 10*time.Second, "the consumer group empty after the stop", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			groups, err := adm.DescribeGroups(ctx, group)
			if err != nil {
				return false
			}
			g, ok := groups[group]
			return !ok || len(g.Members) == 0
		})
	}
}

func startStopInboxRabbit(t *testing.T, db *testenv.DB) {
	conn := testenv.Rabbit(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	exchange := testenv.UniqueName("okt_startstop_x")
	queue := testenv.UniqueName("okt_startstop_q")
	if err := ch.ExchangeDeclare(exchange, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, false, false, false, amqp.Table{"x-expires": int32(600000)}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, "startstop", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.QueueDelete(queue, false, false, false); ch.ExchangeDelete(exchange, false, false) })
	pub, err := relayrabbit.New(context.Background(), relayrabbit.Config{URL: testenv.RabbitURL(), Exchange: exchange,
		SkipDeclare: true, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	s, in := newStartStopInbox(t, db, "startstop-rabbitmq")
	for i := range startStopCycles {
		work := isWorkCycle(i)
		if work {
			msgs := s.next()
			msgs[0].Topic = "startstop"
			publishOne(t, pub, msgs)
		}
		c, err := inboxrabbit.New(in, inboxrabbit.Config{URL: testenv.RabbitURL(), Queue: queue, Prefetch: 16,
			Workers: 2, BatchSize: 8, ReconnectMax: 200 * time.Millisecond, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		runFor(t, "rabbitmq consumer", i, s.allApplied, c.Run)
		testenv.Eventually(t, 10*time.Second, "the queue without consumers after the stop", func() bool {
			q, err := ch.QueueDeclarePassive(queue, false, false, false, false, amqp.Table{"x-expires": int32(600000)})
			return err == nil && q.Consumers == 0
		})
	}
}
