// Package rabbitmq feeds an inbox from a RabbitMQ queue (AMQP 0-9-1, on
// rabbitmq/amqp091-go): manual acknowledgements, each sent only after the
// inbox transaction that settled the delivery committed.
//
//	in, err := inbox.New(pool, &inbox.Config{Consumer: "notifications", ConsumerVersion: version})
//	...
//	in.Register("payout.created", 1, notifyPayout)
//	c, err := rabbitmq.New(in, rabbitmq.Config{URL: url, Queue: "notifications.payments"})
//	...
//	err = c.Run(ctx) // until ctx ends; reconnects by itself
//
// # How deliveries flow
//
// One connection, one channel, one consumer with Prefetch unacknowledged
// deliveries at most. Each delivery goes to one of Workers goroutines by a
// hash of its key (the cloudEvents:partitionkey header the relay writes), so
// one key's events are handled one after the other, in queue order, while
// other keys proceed in parallel. A worker hands what it has queued, up to
// BatchSize, to inbox.(*Inbox).HandleBatch and acknowledges each settled
// delivery. Every Outcome is acknowledged (parked events live on in
// inbox.dead_letters); nothing is ever rejected to a broker dead-letter
// exchange, and nothing is nacked: failures are retried inside the inbox
// with backoff, and a delivery that is not settled (the consumer stops, the
// connection drops) is simply left unacknowledged, so the broker requeues
// it when the channel closes. While the inbox's breaker is open the workers
// wait, Prefetch fills and the broker stops sending.
//
// Order: RabbitMQ keeps a queue's order, and a requeued delivery may come
// back behind later ones. The inbox's order guard (cloudEvents:sequence)
// holds an event that arrives ahead of a missing one and applies it when the
// missing one arrives; see package inbox.
//
// # Reconnects
//
// When the connection or channel is lost (broker restart, network cut,
// heartbeat timeout), the workers finish the batch in hand (its acks fail),
// drop what they had queued, and the consumer reconnects with backoff up to
// ReconnectMax. The broker delivers the unacknowledged deliveries again; the
// inbox skips the ones it applied (Outcome Duplicate).
//
// Topic: the event's topic is the delivery's routing key, the topic the
// relay published it with. A delivery from the default exchange (exchange
// "") is an operator's replay or edit of a broker dead letter (outboxkit dlq
// replay), sent to this one queue with the queue's name as routing key; it
// carries the original routing key in the header outboxkit-topic, and that
// is its topic, so that it lands in its key's lane and closes the gap there.
//
// Messages without CloudEvents headers (another producer) are parked raw:
// body, headers (sorted by name; values that are neither strings nor bytes
// in their printed form), and the AMQP properties in the dead letter's
// source. The delivery tag and redelivered flag are left out of the source,
// so that a redelivered malformed message is recognised instead of parked
// twice (two identical malformed messages are parked once).
package rabbitmq
