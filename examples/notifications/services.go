package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/outbox"
)

// appTables are the services' own tables: the bank's accounts and
// withdrawals, and the notifications service's contacts and SMS log.
const appTables = `
CREATE TABLE %[1]s.accounts (
    id            text   PRIMARY KEY,
    balance_cents bigint NOT NULL
);
CREATE TABLE %[1]s.withdrawals (
    id           text        PRIMARY KEY,
    account      text        NOT NULL REFERENCES %[1]s.accounts,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE %[1]s.contacts (
    account text PRIMARY KEY,
    phone   text NOT NULL
);
CREATE TABLE %[1]s.sms_log (
    event_id           uuid        PRIMARY KEY,
    withdrawal_id      text        NOT NULL,
    phone              text        NOT NULL,
    partner_message_id text        NOT NULL,
    sent_at            timestamptz NOT NULL DEFAULT now()
);`

// moneyWithdrawn is version 1 of the "money.withdrawn" event.
type moneyWithdrawn struct {
	WithdrawalID string `json:"withdrawal_id"`
	Account      string `json:"account"`
	AmountCents  int64  `json:"amount_cents"`
	BalanceCents int64  `json:"balance_cents"`
	Currency     string `json:"currency"`
}

var errInsufficientFunds = errors.New("insufficient funds")

// bank is the producer: a withdrawal and its money.withdrawn event commit
// together.
type bank struct {
	pool   *pgxpool.Pool
	outbox *outbox.Writer
	app    string // quoted schema
	topic  string
}

func (b *bank) Withdraw(ctx context.Context, id, account string, amountCents int64) (uuid.UUID, error) {
	var eventID uuid.UUID
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		var balance int64
		err := tx.QueryRow(ctx, `UPDATE `+b.app+`.accounts SET balance_cents = balance_cents - $2
			WHERE id = $1 AND balance_cents >= $2 RETURNING balance_cents`, account, amountCents).Scan(&balance)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("withdrawal %s: %w on %s", id, errInsufficientFunds, account)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+b.app+`.withdrawals (id, account, amount_cents) VALUES ($1, $2, $3)`,
			id, account, amountCents); err != nil {
			return err
		}
		payload, err := json.Marshal(moneyWithdrawn{WithdrawalID: id, Account: account, AmountCents: amountCents,
			BalanceCents: balance, Currency: "EUR"})
		if err != nil {
			return err
		}
		eventID, err = b.outbox.Enqueue(ctx, tx, outbox.Message{
			Topic: b.topic, Key: account, Type: "money.withdrawn", Version: 1, Payload: payload, CorrelationID: id,
		})
		return err
	})
	return eventID, err
}

// notifier is the consumer: it texts the account holder about each
// withdrawal, once.
type notifier struct {
	app string // quoted schema
	sms *smsClient
}

// onWithdrawal is the inbox handler of money.withdrawn version 1.
//
// Sending an SMS is an effect outside the database, so the inbox's
// transaction alone cannot make it happen once: if the commit after a
// successful send failed, the retry would send again. The event id as the
// partner's idempotency key closes that gap (the partner answers a repeated
// key with the first message and sends nothing), and the sms_log row,
// written in the inbox's transaction, records what was sent.
func (n *notifier) onWithdrawal(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
	var w moneyWithdrawn
	if err := json.Unmarshal(ev.Payload, &w); err != nil {
		return inbox.Permanent(fmt.Errorf("money.withdrawn is not valid JSON: %w", err))
	}
	var phone string
	err := tx.QueryRow(ctx, `SELECT phone FROM `+n.app+`.contacts WHERE account = $1`, w.Account).Scan(&phone)
	if errors.Is(err, pgx.ErrNoRows) {
		return inbox.Permanent(fmt.Errorf("account %s has no phone number", w.Account))
	}
	if err != nil {
		return err
	}
	text := fmt.Sprintf("%d.%02d EUR was withdrawn from your account %s. New balance: %d.%02d EUR.",
		w.AmountCents/100, w.AmountCents%100, w.Account, w.BalanceCents/100, w.BalanceCents%100)
	msgID, err := n.sms.Send(ctx, ev.ID.String(), phone, text)
	switch {
	case errors.Is(err, errPartnerDown):
		// Down for everyone, not this event's fault: the breaker opens, the
		// attempt is not counted, nothing is parked.
		return inbox.Unavailable(err)
	case errors.Is(err, errPartnerRefused):
		return inbox.Permanent(err) // this message will never be accepted: park it
	case err != nil:
		return err // anything else: retried with backoff, parked after MaxAttempts
	}
	_, err = tx.Exec(ctx, `INSERT INTO `+n.app+`.sms_log (event_id, withdrawal_id, phone, partner_message_id)
		VALUES ($1, $2, $3, $4)`, ev.ID, w.WithdrawalID, phone, msgID)
	return err
}
