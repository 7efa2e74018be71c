package inbox

import (
	"context"
	"sync"
	"time"

	"github.com/outboxkit/outboxkit/internal/failure"
)

type breakerState int

const (
	breakerClosed breakerState = iota
	breakerOpen
	breakerHalfOpen
)

// breaker stops every Handle of an Inbox from starting new attempts while a
// dependency is down. Closed: attempts run. Open: attempts wait until the
// backoff is over. Half-open: exactly one attempt (the probe) runs; if it
// succeeds the breaker closes, if it fails with a retryable error the
// breaker opens again for twice as long, if it proves nothing (a duplicate,
// a permanent failure of that one event) the next waiter probes.
//
// Attempts that fail while the breaker is open or half-open are not counted
// against their events: they are parked only for their own reasons, never
// because of an outage.
type breaker struct {
	cfg BreakerConfig

	mu       sync.Mutex
	state    breakerState
	until    time.Time // end of the open period
	opens    int       // consecutive openings without a successful probe
	probing  bool
	failing  map[string]struct{} // distinct events failing in a row
	changed  chan struct{}       // closed and replaced on every state change
	openedAt time.Time
	onChange func(open bool)
}

func newBreaker(cfg BreakerConfig, onChange func(open bool)) *breaker {
	return &breaker{cfg: cfg, failing: map[string]struct{}{}, changed: make(chan struct{}), onChange: onChange}
}

func (b *breaker) broadcast() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// acquire waits until an attempt may start. probe is true when this attempt
// is the half-open probe; the caller must then report its end with success,
// failure or inconclusive.
func (b *breaker) acquire(ctx context.Context) (probe bool, err error) {
	if b.cfg.Disabled {
		return false, nil
	}
	for {
		b.mu.Lock()
		switch b.state {
		case breakerClosed:
			b.mu.Unlock()
			return false, nil
		case breakerOpen:
			if wait := time.Until(b.until); wait > 0 {
				ch := b.changed
				b.mu.Unlock()
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return false, ctx.Err()
				case <-t.C:
				case <-ch:
					t.Stop()
				}
				continue
			}
			b.state = breakerHalfOpen
			b.probing = false
			fallthrough
		case breakerHalfOpen:
			if !b.probing {
				b.probing = true
				b.mu.Unlock()
				return true, nil
			}
			ch := b.changed
			b.mu.Unlock()
			select {
			case <-ctx.Done():
				return false, ctx.Err()
			case <-ch:
			}
		}
	}
}

// success reports an attempt that applied its event.
func (b *breaker) success(probe bool) {
	if b.cfg.Disabled {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.failing)
	if b.state == breakerClosed {
		return
	}
	if probe || b.state == breakerOpen {
		// A probe went through, or an attempt that started before the
		// breaker opened did: the dependency works.
		b.state = breakerClosed
		b.opens = 0
		b.probing = false
		b.broadcast()
		if b.onChange != nil {
			b.onChange(false)
		}
	}
}

// inconclusive reports an attempt that says nothing about the dependency.
func (b *breaker) inconclusive(probe bool) {
	if b.cfg.Disabled || !probe {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == breakerHalfOpen {
		b.probing = false
		b.broadcast()
	}
}

// failure reports a failed attempt of event (an identifier of the event)
// with class. It returns whether the attempt counts against the event: not
// when the class never counts (dependency_outage), nor when the breaker was
// open, half-open or opened by this very failure's outage.
func (b *breaker) failure(probe bool, class failure.Class, event string) (counts bool) {
	counts = class.CountsAttempt()
	if b.cfg.Disabled {
		return counts
	}
	if !class.Retry() {
		// The event's own problem (permanent, no handler...): it proves
		// nothing about dependencies.
		b.inconclusive(probe)
		return counts
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerOpen:
		return false
	case breakerHalfOpen:
		if probe {
			b.open()
		}
		return false
	}
	b.failing[event] = struct{}{}
	if class == failure.DependencyOutage || len(b.failing) >= b.cfg.Threshold {
		b.open()
	}
	return counts
}

// open opens the breaker; b.mu is held.
func (b *breaker) open() {
	wasClosed := b.state == breakerClosed
	b.opens++
	b.state = breakerOpen
	b.probing = false
	b.until = time.Now().Add(backoff(b.cfg.BackoffBase, b.cfg.BackoffMax, b.opens))
	if wasClosed {
		b.openedAt = time.Now()
	}
	clear(b.failing)
	b.broadcast()
	if wasClosed && b.onChange != nil {
		b.onChange(true)
	}
}

// isOpen reports whether attempts are held back (open or half-open).
func (b *breaker) isOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state != breakerClosed
}
