// Package outbox is the producer side of outboxkit: it stores events in the
// same PostgreSQL transaction as your business rows, so an event exists if
// and only if that transaction commits.
//
//	tx, err := pool.Begin(ctx)
//	...
//	_, err = tx.Exec(ctx, `INSERT INTO payouts (id, amount) VALUES ($1, $2)`, id, amount)
//	...
//	eventID, err := outbox.Enqueue(ctx, tx, outbox.Message{
//	    Topic:   "payments",
//	    Key:     "payout-42",        // events of one key keep their order
//	    Type:    "payout.created",
//	    Payload: body,               // any bytes; JSON is common, never required
//	})
//	...
//	err = tx.Commit(ctx)
//
// A relay (package relay, or "outboxkit relay") then publishes committed
// events to Kafka or RabbitMQ and marks them published only after the broker
// acknowledged them.
//
// # What Enqueue does
//
// One INSERT statement: it takes the next sequence number of the message's
// (topic, key) lane under that lane's row lock and inserts the event, plus a
// pg_notify that PostgreSQL delivers at commit to wake the relays (at most
// one per transaction; see Config.DisableNotify for its cost). Two
// transactions enqueueing for the same key are serialised by the lane lock,
// so the lane's order is commit order and its sequence numbers have no gaps.
//
// Delayed events (Message.DeliverAfter) are stored in the scheduled table and
// join their lane when due.
//
// # Errors
//
// Bad input is refused before anything is sent, with a *ValidationError
// (errors.Is(err, ErrInvalid)) naming the field. A reused event id returns
// ErrDuplicate. After any database error PostgreSQL has aborted the
// transaction: roll it back.
package outbox
