package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// RabbitDLQRoutingKey is the routing key of RabbitDLQ's work queue.
const RabbitDLQRoutingKey = "invoices"

// RabbitDLQ is a RabbitMQ work queue whose rejected messages the broker
// dead-letters into a DLQ, with unique names, deleted when the test ends:
//
//	Exchange (direct) --RabbitDLQRoutingKey--> Work (x-dead-letter-exchange DLX)
//	DLX (fanout) --> DLQ
type RabbitDLQ struct {
	Ch                       *amqp.Channel
	Exchange, DLX, Work, DLQ string
}

// NewRabbitDLQ declares a RabbitDLQ whose names start with prefix.
func NewRabbitDLQ(t testing.TB, prefix string) *RabbitDLQ {
	t.Helper()
	ch, err := Rabbit(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	name := UniqueName(prefix)
	r := &RabbitDLQ{Ch: ch, Exchange: name + "-ex", DLX: name + "-dlx", Work: name + "-work", DLQ: name + "-dlq"}
	t.Cleanup(func() {
		ch.QueueDelete(r.Work, false, false, false) //nolint:errcheck
		ch.QueueDelete(r.DLQ, false, false, false)  //nolint:errcheck
		ch.ExchangeDelete(r.Exchange, false, false) //nolint:errcheck
		ch.ExchangeDelete(r.DLX, false, false)      //nolint:errcheck
	})
	for _, err := range []error{
		ch.ExchangeDeclare(r.Exchange, "direct", true, false, false, false, nil),
		ch.ExchangeDeclare(r.DLX, "fanout", true, false, false, false, nil),
		func() error {
			_, err := ch.QueueDeclare(r.Work, true, false, false, false, amqp.Table{"x-dead-letter-exchange": r.DLX})
			return err
		}(),
		func() error { _, err := ch.QueueDeclare(r.DLQ, true, false, false, false, nil); return err }(),
		ch.QueueBind(r.Work, RabbitDLQRoutingKey, r.Exchange, false, nil),
		ch.QueueBind(r.DLQ, "", r.DLX, false, nil),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// DeadLetter publishes msgs to the work queue and rejects them there, as a
// consumer that cannot handle them does: RabbitMQ dead-letters each into
// the DLQ with an x-death header naming the exchange and routing key.
func (r *RabbitDLQ) DeadLetter(t testing.TB, msgs ...amqp.Publishing) {
	t.Helper()
	before := r.Count(t, r.DLQ)
	for _, m := range msgs {
		if err := r.Ch.PublishWithContext(context.Background(), r.Exchange, RabbitDLQRoutingKey, false, false, m); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < len(msgs); {
		d, ok, err := r.Ch.Get(r.Work, false)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if err := d.Reject(false); err != nil {
				t.Fatal(err)
			}
			i++
		}
	}
	Eventually(t, 10*time.Second, "dead letters in "+r.DLQ, func() bool { return r.Count(t, r.DLQ) == before+len(msgs) })
}

// Count is the number of messages ready in queue q.
func (r *RabbitDLQ) Count(t testing.TB, q string) int {
	t.Helper()
	st, err := r.Ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st.Messages
}

// Take returns the next message of the work queue, acknowledged, and fails
// the test when there is none.
func (r *RabbitDLQ) Take(t testing.TB) amqp.Delivery {
	t.Helper()
	d, ok, err := r.Ch.Get(r.Work, true)
	if err != nil || !ok {
		t.Fatalf("testenv: no message in %s: %v", r.Work, err)
	}
	return d
}

// InsertInboxDeadLetter writes a bare row into inbox.dead_letters: the dead
// letter of consumer for event (nil: a malformed delivery's, without an
// id) on topic, with status and blockedBy, and returns its id. For tests of
// what the inbox reads of dead letters; the error and payload are fixed.
func InsertInboxDeadLetter(t testing.TB, pool *pgxpool.Pool, consumer string, event *uuid.UUID, topic, status string, blockedBy *int64) int64 {
	t.Helper()
	var id int64
	if err := pool.QueryRow(context.Background(), `INSERT INTO inbox.dead_letters (consumer, consumer_version, event_id, topic, payload,
    error, error_class, attempts, status, blocked_by, first_failed_at, last_failed_at)
VALUES ($1, 'v1', $2, $3, '\x00', 'boom', 'permanent', 1, $4, $5, now(), now()) RETURNING id`,
		consumer, event, topic, status, blockedBy).Scan(&id); err != nil {
		t.Fatalf("testenv: dead letter of %s: %v", consumer, err)
	}
	return id
}
