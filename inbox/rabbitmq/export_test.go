package rabbitmq

import (
	"context"

	"github.com/outboxkit/outboxkit/inbox"
)

// SetHandleBatch makes c settle its batches with f instead of its inbox:
// BenchmarkConsume's handler-only arm.
func SetHandleBatch(c *Consumer, f func(context.Context, []inbox.Delivery) ([]inbox.Outcome, error)) {
	c.handleBatch = f
}
