package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/outbox"
)

// transferCreated is version 1 of the "transfer.created" event: what the
// transfer service tells the rest of the bank after it moved money.
type transferCreated struct {
	TransferID  string `json:"transfer_id"`
	From        string `json:"from"`
	To          string `json:"to"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// appTables are the bank's own tables (not outboxkit's). The ledger has no
// UNIQUE (transfer_id) on purpose, so that a double booking would show in
// the checks; in production, add it as a second line of defence.
const appTables = `
CREATE TABLE %[1]s.accounts (
    id            text   PRIMARY KEY,
    balance_cents bigint NOT NULL
);
CREATE TABLE %[1]s.transfers (
    id           text        PRIMARY KEY,
    from_account text        NOT NULL REFERENCES %[1]s.accounts,
    to_account   text        NOT NULL REFERENCES %[1]s.accounts,
    amount_cents bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE %[1]s.ledger_entries (
    n            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id  text        NOT NULL,
    event_id     uuid        NOT NULL,
    account      text        NOT NULL,
    amount_cents bigint      NOT NULL,
    booked_at    timestamptz NOT NULL DEFAULT now()
);`

var errInsufficientFunds = errors.New("insufficient funds")

// transferService is the producer: it moves money and records the
// transfer.created event in the same transaction.
type transferService struct {
	pool   *pgxpool.Pool
	outbox *outbox.Writer
	app    string // quoted schema of the bank's tables
	topic  string
}

// Transfer debits from, credits to and enqueues transfer.created, all in one
// transaction: the event exists if and only if the money moved. It does not
// check the sign of the amount (that is the bug this example shows).
func (s *transferService) Transfer(ctx context.Context, id, from, to string, amountCents int64) (uuid.UUID, error) {
	var eventID uuid.UUID
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE `+s.app+`.accounts SET balance_cents = balance_cents - $2
			WHERE id = $1 AND balance_cents >= $2`, from, amountCents)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("transfer %s: %w on %s", id, errInsufficientFunds, from)
		}
		if _, err := tx.Exec(ctx, `UPDATE `+s.app+`.accounts SET balance_cents = balance_cents + $2 WHERE id = $1`,
			to, amountCents); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+s.app+`.transfers (id, from_account, to_account, amount_cents)
			VALUES ($1, $2, $3, $4)`, id, from, to, amountCents); err != nil {
			return err
		}
		payload, err := json.Marshal(transferCreated{TransferID: id, From: from, To: to, AmountCents: amountCents, Currency: "EUR"})
		if err != nil {
			return err
		}
		// The event goes last, just before COMMIT: Enqueue takes the row
		// lock of the key's lane (here the debited account), and holding it
		// for less time lets the next transfer of that account go sooner.
		eventID, err = s.outbox.Enqueue(ctx, tx, outbox.Message{
			Topic:         s.topic,
			Key:           from, // events of one account keep their order
			Type:          "transfer.created",
			Version:       1,
			Payload:       payload,
			CorrelationID: id,
		})
		return err // nil: BeginFunc commits the money and the event together
	})
	return eventID, err
}
