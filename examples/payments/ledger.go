package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/inbox"
)

// ledger is the consumer: it books every transfer as two entries, a debit
// and a credit, so that the ledger of an account always explains its
// balance.
type ledger struct {
	app string // quoted schema of the bank's tables
}

// applyTransfer is the inbox handler of transfer.created version 1. It runs
// in a transaction that already holds the inbox's record of the event: the
// two entries and that record commit together, so the transfer is booked
// exactly once however often Kafka delivers it.
func (l *ledger) applyTransfer(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
	var t transferCreated
	if err := json.Unmarshal(ev.Payload, &t); err != nil {
		return inbox.Permanent(fmt.Errorf("transfer.created is not valid JSON: %w", err))
	}
	if t.AmountCents <= 0 {
		// Retrying cannot fix this: park it for a human, at once. The other
		// accounts keep flowing; later events of this account wait behind it.
		return inbox.Permanent(fmt.Errorf("transfer %s: amount_cents must be positive, got %d", t.TransferID, t.AmountCents))
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+l.app+`.ledger_entries (transfer_id, event_id, account, amount_cents)
		VALUES ($1, $2, $3, $4), ($1, $2, $5, $6)`,
		t.TransferID, ev.ID, t.From, -t.AmountCents, t.To, t.AmountCents)
	return err // a database error is retried with backoff, then parked
}
