package inbox

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Handler applies one event. It runs inside the transaction tx, which
// already holds this consumer's record of the event: the handler's writes
// and that record commit together or not at all. The handler must not
// commit or roll back tx, and should not have effects outside the database
// that cannot be repeated (a failed attempt is rolled back and retried).
//
// Return nil to apply the event; Permanent(err) to park it at once;
// Unavailable(err) when a dependency is down for everything (the breaker
// opens, the attempt is not counted); any other error to retry with backoff
// until Config.MaxAttempts, then park. A panic is recovered and counts as a
// transient error (*PanicError).
type Handler func(ctx context.Context, tx pgx.Tx, ev *Event) error

// Upcaster turns the payload of one schema version of an event type into the
// payload of the next version. An error (or a panic) parks the event with
// class poison_format.
type Upcaster func(payload []byte) ([]byte, error)

// Event is an event as a handler sees it.
type Event struct {
	ID   uuid.UUID // ce_id; the consumer deduplicates on it
	Type string    // ce_type, e.g. "payout.created"
	// Version is the schema version of Payload as the handler receives it:
	// the version the handler was registered for, after upcasting.
	Version int
	// OriginalVersion is the version the event arrived with.
	OriginalVersion int
	Key             string // ordering key (ce_partitionkey), "" when unordered
	Sequence        int64  // position in the key's lane (ce_sequence), 0 when unordered
	Topic           string // Kafka topic or AMQP routing key
	Payload         []byte // after upcasting
	ContentType     string
	Headers         map[string]string // the event's own headers
	CorrelationID   string
	CausationID     string
	TraceParent     string
	TraceState      string
	Time            time.Time // ce_time, UTC
	Source          string    // ce_source
}

// Binding names the CloudEvents protocol binding a delivery came in, which
// decides the header prefix.
type Binding string

const (
	// BindingKafka: attributes in "ce_" headers, content type in a
	// "content-type" header.
	BindingKafka Binding = "kafka"
	// BindingAMQP: attributes in "cloudEvents:" headers, content type in the
	// AMQP content_type property.
	BindingAMQP Binding = "amqp"
)

// Header is one broker header exactly as received. Names and values may be
// any bytes; whatever their shape they are kept in a dead letter.
type Header struct {
	Name  string
	Value []byte
}

// Delivery is one message as a broker adapter received it. Handle reads the
// CloudEvents attributes from Headers; a delivery that is not a readable
// event is parked, raw, as poison_format.
type Delivery struct {
	Binding Binding
	// Topic is the Kafka topic or the AMQP routing key; together with the
	// event's key it names the ordering lane.
	Topic   string
	Headers []Header
	// ContentType is the AMQP content_type property; empty for Kafka, where
	// it is a header.
	ContentType string
	Payload     []byte
	// Source tells where the message came from (broker, partition, offset,
	// queue, delivery tag...). It is stored with a dead letter as JSON;
	// values that are not valid UTF-8 are stored base64-encoded.
	Source map[string]any
}

// Outcome is what Handle did with a delivery. Every outcome means the
// delivery is settled: acknowledge it to the broker.
type Outcome int

const (
	// Applied: the handler ran and its transaction committed.
	Applied Outcome = iota + 1
	// Duplicate: this consumer applied the event before (same id and same
	// payload); nothing was done.
	Duplicate
	// Parked: the event was stored as a dead letter with status parked
	// (failed, malformed, conflicting, no handler, out of order, or waiting
	// for an earlier event of its key).
	Parked
	// Blocked: the event was stored as a dead letter with status blocked,
	// behind a parked earlier event of its key; it is applied when that one
	// is redriven.
	Blocked
	// AlreadyParked: the event is in this consumer's dead letters already
	// (parked, blocked or dropped); nothing was done.
	AlreadyParked
	// Ignored: the event was replayed for another consumer (its
	// ReplayToHeader names another consumer); nothing was done or recorded.
	Ignored
	// Skipped: the event was the skip marker an operator's drop of a keyed
	// outbox event left in its place (type "outboxkit.skipped"): it was
	// recorded as processed and its key's lane moved past the dropped
	// event's sequence, without calling any handler.
	Skipped
)

// ReplayToHeader is the event header by which "outboxkit replay --consumer C"
// addresses a replayed event to consumer C alone. Every other consumer
// acknowledges it without applying or recording it (Outcome Ignored); C
// applies it like any delivery, deduplication and order guard included.
const ReplayToHeader = "outboxkit-replay-to"

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Duplicate:
		return "duplicate"
	case Parked:
		return "parked"
	case Blocked:
		return "blocked"
	case AlreadyParked:
		return "already_parked"
	case Ignored:
		return "ignored"
	case Skipped:
		return "skipped"
	}
	return "unknown"
}
