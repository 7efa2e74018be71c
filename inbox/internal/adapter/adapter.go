// Package adapter holds what the broker adapters of the inbox (inbox/kafka,
// inbox/rabbitmq) do alike around their own delivery loops.
package adapter

import (
	"context"
	"sync"

	"github.com/outboxkit/outboxkit/inbox"
)

// Start begins an adapter's Run. It checks the inbox's tables: a database
// that is down is waited for later (the inbox's breaker), tables that are
// missing are a deployment error worth stopping for, and a stop that comes
// while the check runs is a stop, not an error. Then it serves the operator
// requests on the consumer's dead letters (outboxkit dlq replay, edit,
// drop) here, where the handlers are, until stop is called.
//
// run is false when ctx ended during the check: the adapter returns nil.
// stop is non-nil only when run is true and err is nil; it returns once the
// request loop has.
func Start(ctx context.Context, in *inbox.Inbox) (stop func(), run bool, err error) {
	if err := in.Verify(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, false, nil
		}
		if inbox.ClassOf(err) != inbox.ClassDependencyOutage {
			return nil, false, err
		}
	}
	reqCtx, cancel := context.WithCancel(ctx)
	var requests sync.WaitGroup
	requests.Go(func() { in.ServeRequests(reqCtx) }) //nolint:errcheck // it returns nil when reqCtx ends
	return func() {
		cancel()
		requests.Wait()
	}, true, nil
}
