package rabbitmq_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/ingest"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// An outboxkit event that RabbitMQ dead-lettered before the inbox saw it
// (a reject, a TTL, a quorum queue's delivery limit) leaves a gap in its
// key's lane. The operator replays the broker dead letter to close the gap.
// The inbox takes its topic from the routing key; a replay through the
// default exchange arrives with the queue's name as routing key, so it
// would land in another lane, and the key's later events would wait for it
// forever: the replay carries the original routing key in outboxkit-topic.
func TestReplayedBrokerDeadLetterClosesTheGapInItsLane(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if _, err := db.Pool.Exec(ctx, ledgerTable); err != nil {
		t.Fatal(err)
	}
	tp := newTopology(t)
	// A second queue like the consumer's, with a dead-letter exchange.
	dlx, q, dlq := testenv.UniqueName("okt_dl_dlx"), testenv.UniqueName("okt_dl_q"), testenv.UniqueName("okt_dl_dlq")
	t.Cleanup(func() {
		tp.ch.QueueDelete(q, false, false, false)   //nolint:errcheck
		tp.ch.QueueDelete(dlq, false, false, false) //nolint:errcheck
		tp.ch.ExchangeDelete(dlx, false, false)     //nolint:errcheck
	})
	for _, err := range []error{
		tp.ch.ExchangeDeclare(dlx, "fanout", false, true, false, false, nil),
		func() error {
			_, err := tp.ch.QueueDeclare(q, false, false, false, false, amqp.Table{"x-dead-letter-exchange": dlx})
			return err
		}(),
		func() error { _, err := tp.ch.QueueDeclare(dlq, false, false, false, false, nil); return err }(),
		tp.ch.QueueBind(q, tp.topic, tp.exchange, false, nil),
		tp.ch.QueueBind(dlq, "", dlx, false, nil),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	event := func(seq string) amqp.Publishing {
		id := uuid.Must(uuid.NewV7()).String()
		return amqp.Publishing{Body: []byte(`{}`), ContentType: "application/json", MessageId: id, Headers: amqp.Table{
			"cloudEvents:specversion": "1.0", "cloudEvents:id": id, "cloudEvents:type": "payout.created",
			"cloudEvents:partitionkey": "k", "cloudEvents:sequence": seq}}
	}
	if err := tp.ch.PublishWithContext(ctx, tp.exchange, tp.topic, false, false, event("1")); err != nil {
		t.Fatal(err)
	}
	// RabbitMQ dead-letters event 1 before the inbox sees it.
	var d amqp.Delivery
	testenv.Eventually(t, 10*time.Second, "event 1 in the queue", func() bool {
		m, ok, err := tp.ch.Get(q, false)
		if err != nil {
			t.Fatal(err)
		}
		d = m
		return ok
	})
	if err := d.Reject(false); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the dead letter", func() bool {
		st, err := tp.ch.QueueDeclarePassive(dlq, false, false, false, false, nil)
		return err == nil && st.Messages == 1
	})
	is, err := ingest.NewStore(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	conn := ingest.RabbitMQConn{URL: testenv.RabbitURL()}
	if res, err := is.IngestRabbitMQ(ctx, ingest.RabbitMQConfig{RabbitMQConn: conn, Queue: dlq, Once: true}); err != nil || res.Ingested != 1 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	store, err := ops.New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	ref := ops.Ref{Kind: ops.KindInbox, ID: maxDeadLetter(t, db.Pool)}
	if _, err := store.WithRepublisher(&ingest.Republisher{RabbitMQ: &conn}).Replay(ctx,
		ops.Action{Actor: "oncall-ann", Reason: "close the gap"}, ref); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	topics := map[int64]string{}
	startConsumer(t, db, testenv.RabbitURL(), q, func(ev *inbox.Event) {
		mu.Lock()
		topics[ev.Sequence] = ev.Topic
		mu.Unlock()
	})
	if err := tp.ch.PublishWithContext(ctx, tp.exchange, tp.topic, false, false, event("2")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			var lanes string
			db.Pool.QueryRow(ctx, `SELECT string_agg(topic || '/' || key || '@' || last_sequence, ', ') FROM inbox.lanes`).Scan(&lanes) //nolint:errcheck
			mu.Lock()
			t.Logf("topics applied %v, want %q; lanes: %s", topics, tp.topic, lanes)
			mu.Unlock()
		}
	})
	applied := func() bool { return count(t, db.Pool, `SELECT count(*) FROM ledger`) == 2 }
	testenv.Eventually(t, 15*time.Second, "events 1 (replayed) and 2 applied", applied)
	mu.Lock()
	defer mu.Unlock()
	if topics[1] != tp.topic || topics[2] != tp.topic {
		t.Errorf("topics applied %v, want %q for both", topics, tp.topic)
	}
}

func maxDeadLetter(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var id int64
	if err := pool.QueryRow(context.Background(), `SELECT max(id) FROM inbox.dead_letters`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}
