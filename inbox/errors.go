package inbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxkit/outboxkit/internal/failure"
)

// ErrorClass is a class of the error taxonomy stored in outbox.error_classes,
// shared with the relay. The class of a failed attempt decides what happens
// next: retry with backoff, park at once, or wait without counting the
// attempt (the breaker).
type ErrorClass = failure.Class

// The error classes a consumer meets.
const (
	// ClassTransient: retried with backoff and jitter, parked after
	// Config.MaxAttempts. Any error without a class is transient.
	ClassTransient = failure.Transient
	// ClassDependencyOutage: a dependency (the database, a partner) is down
	// for everything. The breaker opens, the attempt is not counted.
	ClassDependencyOutage = failure.DependencyOutage
	// ClassPoisonFormat: the delivery cannot be read (not CloudEvents,
	// invalid UTF-8 or NUL in an attribute, an upcaster refused it). Parked
	// at once.
	ClassPoisonFormat = failure.PoisonFormat
	// ClassPermanent: refused for good (validation, business rule, an event
	// that arrived after its key moved past it). Parked at once.
	ClassPermanent = failure.Permanent
	// ClassConflict: the event id was applied before with another payload.
	// Parked at once.
	ClassConflict = failure.Conflict
	// ClassNoHandler: no handler or upcaster for the event's type and
	// version. Parked at once.
	ClassNoHandler = failure.NoHandler
)

// Permanent marks err as permanent: the event is parked at once, without
// retries. A nil err stays nil.
func Permanent(err error) error { return failure.New(failure.Permanent, err) }

// Unavailable marks err as "a dependency is down for everything" (class
// dependency_outage): the breaker opens and the consumer stops taking new
// deliveries until a probe succeeds; the attempt is not counted against the
// event, so an outage never burns events into the dead letters. A nil err
// stays nil.
func Unavailable(err error) error { return failure.New(failure.DependencyOutage, err) }

// Classify marks err with any class of the taxonomy. A nil err stays nil.
func Classify(class ErrorClass, err error) error { return failure.New(class, err) }

// ClassOf returns the class the inbox gives err: the class set with
// Permanent, Unavailable or Classify; else for PostgreSQL errors by SQLSTATE
// (connection and resource errors: dependency_outage; serialization,
// deadlock and lock timeouts: transient; data and integrity errors,
// including a unique violation in the handler's own writes: permanent); else
// dependency_outage for network errors; else transient.
func ClassOf(err error) ErrorClass {
	if err == nil {
		return ""
	}
	var fe *failure.Error
	if errors.As(err, &fe) && fe.Class.Valid() {
		return fe.Class
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		c := failure.PostgresClass(pgErr.Code)
		if c == failure.Conflict {
			// A unique violation in the handler's writes is the business
			// refusing the event; "conflict" is reserved for an event id that
			// came back with another payload.
			return failure.Permanent
		}
		return c
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return failure.Transient // the handler ran out of Config.HandlerTimeout
	}
	return failure.ClassOf(err)
}

// ErrInvalidConfig is matched by every configuration error of New.
var ErrInvalidConfig = errors.New("inbox: invalid configuration")

// ErrNotRedrivable is matched by the errors of Redrive that refuse to act:
// the dead letter does not exist, belongs to another consumer, or is not
// parked.
var ErrNotRedrivable = errors.New("inbox: dead letter cannot be redriven")

// RedriveError is returned by Redrive when the redriven event failed again.
// The dead letter stays parked with the new error and one more attempt.
type RedriveError struct {
	DeadLetterID int64
	Class        ErrorClass
	Err          error
}

func (e *RedriveError) Error() string {
	return fmt.Sprintf("inbox: redrive of dead letter %d failed (%s): %v", e.DeadLetterID, e.Class, e.Err)
}

func (e *RedriveError) Unwrap() error { return e.Err }

// PanicError is what a handler's panic becomes: an error of class transient
// carrying the panic value and the stack.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("handler panicked: %v\n%s", e.Value, e.Stack)
}
