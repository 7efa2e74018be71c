package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/outbox"
)

// appTables: the payouts service's table and the reporting service's
// report. The report has no UNIQUE (payout_id) on purpose, so that a double
// application would show in the checks.
const appTables = `
CREATE TABLE %[1]s.payouts (
    id           text        PRIMARY KEY,
    merchant     text        NOT NULL,
    amount_cents bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE %[1]s.payout_report (
    n                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payout_id        text        NOT NULL,
    merchant         text        NOT NULL,
    amount_minor     bigint      NOT NULL,
    received_version integer     NOT NULL,
    event_id         uuid        NOT NULL,
    consumer_version text        NOT NULL,
    applied_at       timestamptz NOT NULL DEFAULT now()
);`

// payoutCreatedV1 is version 1 of "payout.created".
type payoutCreatedV1 struct {
	PayoutID    string `json:"payout_id"`
	Merchant    string `json:"merchant"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// payoutCreatedV2 is version 2: amount_cents was renamed amount_minor
// (currencies without cents exist).
type payoutCreatedV2 struct {
	PayoutID    string `json:"payout_id"`
	Merchant    string `json:"merchant"`
	AmountMinor int64  `json:"amount_minor"`
	Currency    string `json:"currency"`
}

// payouts is the producer. Version says which schema version of
// payout.created this instance writes: during a rolling deploy, old and new
// instances write both.
type payouts struct {
	pool   *pgxpool.Pool
	outbox *outbox.Writer
	app    string
	topic  string
}

func (p *payouts) Create(ctx context.Context, version int, id, merchant string, cents int64) (uuid.UUID, error) {
	var payload []byte
	var err error
	if version == 1 {
		payload, err = json.Marshal(payoutCreatedV1{PayoutID: id, Merchant: merchant, AmountCents: cents, Currency: "EUR"})
	} else {
		payload, err = json.Marshal(payoutCreatedV2{PayoutID: id, Merchant: merchant, AmountMinor: cents, Currency: "EUR"})
	}
	if err != nil {
		return uuid.Nil, err
	}
	var eventID uuid.UUID
	err = pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+p.app+`.payouts (id, merchant, amount_cents) VALUES ($1, $2, $3)`,
			id, merchant, cents); err != nil {
			return err
		}
		eventID, err = p.outbox.Enqueue(ctx, tx, outbox.Message{
			Topic: p.topic, Key: merchant, Type: "payout.created", Version: version, Payload: payload, CorrelationID: id,
		})
		return err
	})
	return eventID, err
}

// reporting is the consumer. Two releases of it appear in the story.
type reporting struct {
	app     string
	version string // consumer version, recorded with every row
}

// applyV1 is the handler of release 1.4.0: it knows version 1 only.
func (r *reporting) applyV1(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
	var p payoutCreatedV1
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		return inbox.Permanent(fmt.Errorf("payout.created v1: %w", err))
	}
	return r.insert(ctx, tx, ev, p.PayoutID, p.Merchant, p.AmountCents)
}

// applyV2 is the handler of release 1.5.0, for version 2. Version 1 events
// reach it through upcastV1 (registered with inbox.RegisterUpcaster).
func (r *reporting) applyV2(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
	var p payoutCreatedV2
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		return inbox.Permanent(fmt.Errorf("payout.created v2: %w", err))
	}
	return r.insert(ctx, tx, ev, p.PayoutID, p.Merchant, p.AmountMinor)
}

// upcastV1 turns a version 1 payload into version 2: the one place that
// knows about the rename.
func upcastV1(payload []byte) ([]byte, error) {
	var p payoutCreatedV1
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, err // parks the event as poison_format
	}
	return json.Marshal(payoutCreatedV2{PayoutID: p.PayoutID, Merchant: p.Merchant, AmountMinor: p.AmountCents, Currency: p.Currency})
}

func (r *reporting) insert(ctx context.Context, tx pgx.Tx, ev *inbox.Event, payoutID, merchant string, minor int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO `+r.app+`.payout_report
		(payout_id, merchant, amount_minor, received_version, event_id, consumer_version)
		VALUES ($1, $2, $3, $4, $5, $6)`, payoutID, merchant, minor, ev.OriginalVersion, ev.ID, r.version)
	return err
}
