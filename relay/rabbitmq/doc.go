// Package rabbitmq is a relay.Publisher for RabbitMQ (AMQP 0-9-1) on
// github.com/rabbitmq/amqp091-go.
//
// Every message goes to one exchange (a durable topic exchange, "outbox" by
// default) with its Topic as routing key, persistent, mandatory, in the AMQP
// binding of outboxkit's wire format: the payload untouched as body;
// message_id, type, timestamp, content_type, correlation_id and app_id as
// properties; the CloudEvents attributes as "cloudEvents:" headers next to the
// event's own headers.
//
// A message counts as published only when the broker confirmed it (publisher
// confirms) and did not return it (mandatory: a message that no queue is
// bound for comes back and is reported unroutable, instead of vanishing).
// The messages of one Publish call are sent back to back on one channel and
// their confirms awaited together, so a batch costs about one round trip.
//
// When the connection is lost, every message not yet confirmed is reported
// not delivered, and the next Publish reconnects. A message that reached the
// broker but whose confirm was lost is published again: consumers see it
// twice, which the inbox absorbs (at least once, never lost).
//
// Order: a batch is sent in input order on one channel, so the broker
// receives each key's events in order. A nack in the middle of a batch (a
// queue refused one message) can let a later event of the same key through
// before the nacked one is retried; the inbox's order guard (the
// cloudEvents:sequence header) holds that event back.
//
// Usage:
//
//	pub, err := rabbitmq.New(ctx, rabbitmq.Config{
//		URL:    os.Getenv("RABBITMQ_URL"), // amqp://user:password@host:5672/vhost
//		Source: "/payments-service",
//	})
//	if err != nil {
//		return err // only configuration errors: a broker that is down is retried
//	}
//	defer pub.Close()
//	r, err := relay.New(pool, &relay.Config{Publisher: pub})
//
// Bind queues to the exchange with the topics as binding keys
// ("payments", "payments.#", ...): a message whose topic matches no binding
// is parked as unroutable.
package rabbitmq
