package main

import (
	"context"
	"encoding/json"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	inboxkafka "github.com/outboxkit/outboxkit/inbox/kafka"
)

// runConsumer applies payout.created events to the accounting table, each
// exactly once, until ctx ends.
func runConsumer(ctx context.Context, pool *pgxpool.Pool, brokers []string) error {
	in, err := inbox.New(pool, &inbox.Config{Consumer: "accounting", ConsumerVersion: "1.0.0"})
	if err != nil {
		return err
	}
	in.Register("payout.created", 1, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		var p payoutCreated
		if err := json.Unmarshal(ev.Payload, &p); err != nil {
			return inbox.Permanent(err) // cannot be fixed by retrying: parked as a dead letter
		}
		// tx already holds the inbox's record of ev.ID: this write and that
		// record commit together, so a redelivery is skipped.
		_, err := tx.Exec(ctx, `INSERT INTO accounting_entries (payout_id, amount_cents) VALUES ($1, $2)`,
			p.PayoutID, p.AmountCents)
		return err // other errors: retried with backoff, then parked
	})
	c, err := inboxkafka.New(in, inboxkafka.Config{Brokers: brokers, Topics: []string{"payouts"}})
	if err != nil {
		return err
	}
	return c.Run(ctx) // offsets are committed only after the inbox transaction
}
