package main

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

// runRelay publishes committed events to Kafka until ctx ends. In
// production, run "outboxkit relay" instead: it is this, plus flags, metrics
// and health endpoints.
func runRelay(ctx context.Context, pool *pgxpool.Pool, brokers []string) error {
	pub, err := kafka.New(kafka.Config{Brokers: brokers})
	if err != nil {
		return err
	}
	defer pub.Close()
	r, err := relay.New(pool, &relay.Config{Publisher: pub})
	if err != nil {
		return err
	}
	return r.Run(ctx) // returns after a graceful stop: batch in flight finished, leases released
}
