package main

import (
	"context"
	"encoding/json"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/outbox"
)

// payoutCreated is the event's payload (version 1).
type payoutCreated struct {
	PayoutID    string `json:"payout_id"`
	AmountCents int64  `json:"amount_cents"`
}

// createPayout is the producer: the payout row and its event commit in one
// transaction, or neither does.
func createPayout(ctx context.Context, pool *pgxpool.Pool, id string, amountCents int64) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO payouts (id, amount_cents) VALUES ($1, $2)`, id, amountCents); err != nil {
			return err // rolled back: no payout, no event
		}
		payload, err := json.Marshal(payoutCreated{PayoutID: id, AmountCents: amountCents})
		if err != nil {
			return err
		}
		_, err = outbox.Enqueue(ctx, tx, outbox.Message{
			Topic:   "payouts",        // Kafka topic (or RabbitMQ routing key)
			Key:     id,               // events of one key keep their order
			Type:    "payout.created", // what the consumer registers for
			Version: 1,
			Payload: payload,
		})
		return err // nil: BeginFunc commits the payout and its event together
	})
}
