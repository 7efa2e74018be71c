package inbox

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/internal/failure"
)

// deadLetter is what a park stores beyond the delivery itself.
type deadLetter struct {
	status     string // parked or blocked
	class      failure.Class
	err        string
	attempts   int
	blockedBy  *int64
	waitingFor *int64
}

// insertDeadLetter stores m as a dead letter in tx, with final (the attempt
// that parked it, when there is one) in the attempt history, links the
// earlier attempts of the event to it, and writes the audit entry. Lane
// effects are the caller's.
func (in *Inbox) insertDeadLetter(ctx context.Context, tx pgx.Tx, m *message, dl deadLetter, final *attemptRecord) (int64, error) {
	var (
		eventID               *uuid.UUID
		key, typ, ct, corr    string
		sequence              *int64
		version               *int
		nullableType, corrPtr *string
	)
	ct = m.d.ContentType
	if ev := m.ev; ev != nil {
		eventID, key, typ, ct, corr = &ev.ID, ev.Key, ev.Type, ev.ContentType, ev.CorrelationID
		if ev.Key != "" {
			sequence = &ev.Sequence
		}
		version = &ev.Version
		nullableType = &typ
		if corr != "" {
			corrPtr = &corr
		}
	}
	var ctPtr *string
	if ct != "" {
		ctPtr = &ct
	}
	payload := m.d.Payload
	if payload == nil {
		payload = []byte{}
	}
	if dl.err == "" {
		dl.err = string(dl.class)
	}
	var id int64
	err := tx.QueryRow(ctx, in.sql.insertDeadLetter,
		in.cfg.Consumer, in.cfg.ConsumerVersion, eventID, m.topic, key, sequence, nullableType, version,
		payload, encodeHeaders(m.d.Headers), ctPtr, corrPtr, dl.err, string(dl.class), dl.attempts, dl.status,
		dl.blockedBy, dl.waitingFor, encodeSource(m.d, m.topic)).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("insert dead letter: %w", err)
	}
	if final != nil {
		if err := in.insertAttempt(ctx, tx, eventID, *final, &id); err != nil {
			return 0, fmt.Errorf("record the last attempt: %w", err)
		}
	}
	if eventID != nil {
		if _, err := tx.Exec(ctx, in.sql.linkAttempts, in.cfg.Consumer, *eventID, id); err != nil {
			return 0, fmt.Errorf("link attempts: %w", err)
		}
	}
	after := map[string]any{"status": dl.status, "error_class": dl.class, "attempts": dl.attempts,
		"consumer": in.cfg.Consumer, "consumer_version": in.cfg.ConsumerVersion}
	details := map[string]any{"topic": m.topic, "payload_sha256": hex.EncodeToString(m.sha[:])}
	targets := []string{fmt.Sprint(id)}
	if m.ev != nil {
		targets = append(targets, m.ev.ID.String())
		details["event_id"], details["type"], details["version"] = m.ev.ID.String(), m.ev.Type, m.ev.Version
		if m.ev.Key != "" {
			details["key"], details["sequence"] = m.ev.Key, m.ev.Sequence
		}
	}
	if dl.blockedBy != nil {
		details["blocked_by"] = *dl.blockedBy
	}
	if dl.waitingFor != nil {
		details["waiting_for"] = *dl.waitingFor
	}
	if err := in.audit(ctx, tx, "park", in.actor, dl.err, targets, nil, after, details); err != nil {
		return 0, err
	}
	return id, nil
}

// audit appends an entry to the outbox schema's audit log.
func (in *Inbox) audit(ctx context.Context, tx pgx.Tx, action, actor, reason string, targets []string,
	before []byte, after, details map[string]any) error {
	reason = storableText(reason, maxAuditActorOrReasonBytes)
	if reason == "" {
		reason = action
	}
	var afterJSON, detailsJSON []byte
	var err error
	if after != nil {
		if afterJSON, err = json.Marshal(jsonSafe(after)); err != nil {
			return err
		}
	}
	if details != nil {
		if detailsJSON, err = json.Marshal(jsonSafe(details)); err != nil {
			return err
		}
	}
	var beforeArg any
	if before != nil {
		beforeArg = before
	}
	if _, err := tx.Exec(ctx, in.sql.audit, storableText(actor, maxAuditActorOrReasonBytes), action, targets, reason,
		beforeArg, afterJSON, detailsJSON); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// parkFailed parks an event whose attempts failed (or that has no handler),
// with the lane policy: OnParkBlock makes it the head its key's later events
// wait behind; OnParkSkip moves the lane past it.
func (in *Inbox) parkFailed(ctx context.Context, m *message, rec attemptRecord) (Outcome, error) {
	tx, err := in.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer rollback(tx)
	ev := m.ev
	var lane laneState
	if ev.Key != "" {
		if lane, err = in.lockLane(ctx, tx, m.topic, ev.Key); err != nil {
			return 0, err
		}
	}
	var openID int64
	switch err := tx.QueryRow(ctx, in.sql.openDeadLetter, in.cfg.Consumer, ev.ID).Scan(&openID); {
	case err == nil:
		// Parked meanwhile (a concurrent delivery of the same event).
		if err := in.insertAttempt(ctx, tx, &ev.ID, rec, &openID); err != nil {
			return 0, err
		}
		return AlreadyParked, tx.Commit(ctx)
	case !errors.Is(err, pgx.ErrNoRows):
		return 0, err
	}
	id, err := in.insertDeadLetter(ctx, tx, m, deadLetter{status: "parked", class: rec.class, err: errorText(rec.err),
		attempts: rec.number}, &rec)
	if err != nil {
		return 0, err
	}
	if ev.Key != "" {
		if err := in.parkedInLane(ctx, tx, m.topic, ev.Key, lane, id, ev.Sequence); err != nil {
			return 0, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	in.metrics.deadLettered("parked", rec.class)
	in.log.Warn("inbox: event parked", append(eventAttrs(m, rec.class, rec.err),
		slog.Int64("dead_letter_id", id), slog.Int("attempts", rec.number))...)
	return Parked, nil
}

// parkedInLane applies the lane policy to dead letter id (sequence seq),
// parked after failing. lane was read under the lock in tx.
func (in *Inbox) parkedInLane(ctx context.Context, tx pgx.Tx, topic, key string, lane laneState, id, seq int64) error {
	if in.cfg.OnPark == OnParkSkip {
		_, err := tx.Exec(ctx, in.sql.advanceLane, in.cfg.Consumer, topic, key, seq)
		return err
	}
	if seq <= lane.last {
		return nil // behind the lane (applied out of order by a redrive): blocks nothing
	}
	if lane.blockedBy != nil && *lane.blockedBy != id && lane.headSeq != nil && *lane.headSeq < seq {
		return nil // an earlier event of the key is the head already
	}
	if _, err := tx.Exec(ctx, in.sql.blockLane, in.cfg.Consumer, topic, key, id); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, in.sql.repoint, in.cfg.Consumer, topic, key, id)
	return err
}

// parkConflict parks an event whose id this consumer applied before with
// another payload. Its lane is not touched: the id was applied.
func (in *Inbox) parkConflict(ctx context.Context, m *message, appliedSha []byte) (Outcome, error) {
	tx, err := in.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer rollback(tx)
	var openID int64
	switch err := tx.QueryRow(ctx, in.sql.openDeadLetter, in.cfg.Consumer, m.ev.ID).Scan(&openID); {
	case err == nil:
		return AlreadyParked, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return 0, err
	}
	cause := fmt.Errorf("event %s was applied with payload sha256 %x; this delivery's payload has sha256 %x: not applied, investigate the producer",
		m.ev.ID, appliedSha, m.sha)
	rec := attemptRecord{number: 1, started: time.Now(), class: failure.Conflict, err: cause, outcome: "parked"}
	id, err := in.insertDeadLetter(ctx, tx, m, deadLetter{status: "parked", class: failure.Conflict, err: cause.Error(), attempts: 1}, &rec)
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	in.metrics.deadLettered("parked", failure.Conflict)
	in.log.Warn("inbox: event parked", append(eventAttrs(m, failure.Conflict, cause), slog.Int64("dead_letter_id", id))...)
	return Parked, nil
}

// parkMalformed parks a delivery that is not a readable event, raw.
func (in *Inbox) parkMalformed(ctx context.Context, m *message) (Outcome, error) {
	tx, err := in.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer rollback(tx)
	headers, source := encodeHeaders(m.d.Headers), encodeSource(m.d, m.topic)
	var openID int64
	switch err := tx.QueryRow(ctx, in.sql.findMalformed, in.cfg.Consumer, m.topic, m.sha[:], headers, source).Scan(&openID); {
	case err == nil:
		return AlreadyParked, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return 0, err
	}
	rec := attemptRecord{number: 1, started: time.Now(), class: failure.PoisonFormat, err: m.bad, outcome: "parked"}
	id, err := in.insertDeadLetter(ctx, tx, m, deadLetter{status: "parked", class: failure.PoisonFormat,
		err: errorText(m.bad), attempts: 1}, &rec)
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	in.metrics.deadLettered("parked", failure.PoisonFormat)
	in.log.Warn("inbox: malformed delivery parked", append(eventAttrs(m, failure.PoisonFormat, m.bad),
		slog.Int64("dead_letter_id", id))...)
	return Parked, nil
}
