package relay

import (
	"errors"

	"github.com/outboxkit/outboxkit/internal/failure"
)

// ErrorClass is a class of the error taxonomy stored in outbox.error_classes.
// The class of a failed publish decides what happens next: retry with
// backoff, park at once, or wait without counting the attempt.
type ErrorClass = failure.Class

// The error classes. See docs/design-decisions.md for how each is handled.
const (
	ClassTransient        = failure.Transient
	ClassDependencyOutage = failure.DependencyOutage
	ClassUnroutable       = failure.Unroutable
	ClassPoisonFormat     = failure.PoisonFormat
	ClassPermanent        = failure.Permanent
)

// Classify marks err with class, for Publisher implementations. A nil err
// stays nil.
func Classify(class ErrorClass, err error) error { return failure.New(class, err) }

// ClassOf returns the class of a publish error: the class given by Classify
// if any, dependency_outage for network errors, transient otherwise.
func ClassOf(err error) ErrorClass { return failure.ClassOf(err) }

func unroutable(err error) error { return failure.New(failure.Unroutable, err) }

// ErrInvalidConfig is matched by every configuration error of New.
var ErrInvalidConfig = errors.New("relay: invalid configuration")
