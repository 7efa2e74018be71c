// Package failure is outboxkit's error taxonomy. The classes are stored as
// data in outbox.error_classes (migration 0001); the relay and the inbox
// classify every failed attempt into one of them, and the class decides
// between retry, park and "wait without counting the attempt".
package failure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Class is one row of outbox.error_classes. The names are a contract: they are
// stored in the attempt history, dead letters and metrics labels.
type Class string

const (
	// Transient is a temporary failure of this event: retried with backoff,
	// parked after the maximum attempts.
	Transient Class = "transient"
	// DependencyOutage means the broker or a dependency is down for
	// everything: back off as a whole, do not count the attempt.
	DependencyOutage Class = "dependency_outage"
	// Unroutable: the broker has nowhere to put the event (no queue bound,
	// unknown topic). Parked at once.
	Unroutable Class = "unroutable"
	// PoisonFormat: the event cannot be encoded or decoded. Parked at once.
	PoisonFormat Class = "poison_format"
	// Permanent: refused for good (authorization, validation). Parked at once.
	Permanent Class = "permanent"
	// Conflict: the same event id arrived with a different payload.
	Conflict Class = "conflict"
	// NoHandler: no handler or upcaster for the event's type and version.
	NoHandler Class = "no_handler"
)

// Classes lists every class in the order of the migration's seed rows.
var Classes = []Class{Transient, DependencyOutage, Unroutable, PoisonFormat, Permanent, Conflict, NoHandler}

// Retry reports whether a failure of this class is tried again.
func (c Class) Retry() bool { return c == Transient || c == DependencyOutage }

// CountsAttempt reports whether a failure of this class uses up an attempt.
func (c Class) CountsAttempt() bool { return c != DependencyOutage }

// Valid reports whether c is one of the known classes.
func (c Class) Valid() bool {
	for _, k := range Classes {
		if c == k {
			return true
		}
	}
	return false
}

// Error carries a class with the error that caused it.
type Error struct {
	Class Class
	Err   error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return string(e.Class)
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// New wraps err with class. A nil err stays nil.
func New(class Class, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Class: class, Err: err}
}

// Newf formats an error of class.
func Newf(class Class, format string, args ...any) error {
	return &Error{Class: class, Err: fmt.Errorf(format, args...)}
}

// ClassOf returns the class of err: the outermost *Error in its chain, else
// what the PostgreSQL and network classifiers say, else Transient (an
// unknown failure is retried, then parked: never lost, never looping).
func ClassOf(err error) Class {
	if err == nil {
		return ""
	}
	var fe *Error
	if errors.As(err, &fe) && fe.Class.Valid() {
		return fe.Class
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return PostgresClass(pgErr.Code)
	}
	if IsNetwork(err) {
		return DependencyOutage
	}
	return Transient
}

// IsNetwork reports errors that mean the peer is unreachable or the
// connection broke, not that this one event is bad.
func IsNetwork(err error) bool {
	// pgconn.ErrConnClosed: pgx refuses to use a connection it closed after
	// its socket broke; the next connection may work.
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	var dnsErr *net.DNSError
	return errors.As(err, &dnsErr)
}

// IsContext reports a cancelled or expired context: the outcome of the
// operation is unknown, which callers treat as "not delivered, try again".
func IsContext(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// PostgresClass maps a SQLSTATE to a class. Connection, resource and
// operator-intervention errors mean the database is unavailable; serialization
// and lock failures are transient; data and integrity errors are permanent.
func PostgresClass(sqlstate string) Class {
	if len(sqlstate) < 2 {
		return Transient
	}
	switch sqlstate {
	case "40001", "40P01", "55P03", "57014": // serialization, deadlock, lock not available, query canceled
		return Transient
	case "23505":
		return Conflict
	}
	switch sqlstate[:2] {
	case "08", "53", "57", "58", "XX": // connection, resources, operator intervention, system, internal
		return DependencyOutage
	case "22", "23", "42", "2P", "0A": // data, integrity, syntax/access, unsupported
		return Permanent
	case "28": // invalid authorization
		return DependencyOutage
	}
	return Transient
}
