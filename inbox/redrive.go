package inbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/internal/failure"
)

// Redrive applies the parked dead letter deadLetterID again, straight from
// its row, with this Inbox's handlers: only this consumer is involved, no
// broker, no other consumer. actor (who) and reason (why) are required and
// go to the audit log with the dead letter's state before and after.
//
// On success the dead letter is resolved and, when it held its key's lane,
// the events blocked behind it are applied in sequence order (each once; the
// first that fails becomes the parked head of the lane, and Redrive still
// returns nil: the redriven event was applied). A dead letter that was
// waiting for missing earlier events is applied anyway: the gap is accepted
// and recorded in the audit log.
//
// When the redriven event fails again, Redrive returns a *RedriveError and
// the dead letter stays parked with one more attempt. A dead letter that
// does not exist, belongs to another consumer, is not parked, or has an
// earlier open dead letter of the same key (OnParkBlock) is refused with an
// error matching ErrNotRedrivable.
//
// Redrive needs the consumer's handlers, so it runs in a process where they
// are registered (for example an admin endpoint of the consumer service).
func (in *Inbox) Redrive(ctx context.Context, deadLetterID int64, actor, reason string) error {
	return in.redrive(ctx, deadLetterID, nil, actor, reason, 0)
}

// RedriveEdited is Redrive with a corrected payload. The dead letter keeps
// the original payload and, once applied, the edited one (edited_payload);
// the audit log keeps both fingerprints and the size, never the bytes. The event keeps its id: the processed record stores the
// original payload's fingerprint, so a later redelivery of the original is
// a duplicate, not a conflict.
func (in *Inbox) RedriveEdited(ctx context.Context, deadLetterID int64, payload []byte, actor, reason string) error {
	if payload == nil {
		payload = []byte{}
	}
	return in.redrive(ctx, deadLetterID, payload, actor, reason, 0)
}

// redrive applies dead letter id; request, when not 0, is the operator
// request (dead_letter_requests) it runs, settled with the outcome.
func (in *Inbox) redrive(ctx context.Context, id int64, payload []byte, actor, reason string, request int64) error {
	if strings.TrimSpace(actor) == "" || strings.TrimSpace(reason) == "" {
		return fmt.Errorf("%w: an actor (who) and a reason (why) are required for the audit log", ErrNotRedrivable)
	}
	r, err := in.loadDeadLetter(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: dead letter %d does not exist", ErrNotRedrivable, id)
	}
	if err != nil {
		return err
	}
	if r.consumer != in.cfg.Consumer {
		return fmt.Errorf("%w: dead letter %d belongs to consumer %q, not %q: redrive it with that consumer's inbox",
			ErrNotRedrivable, id, r.consumer, in.cfg.Consumer)
	}
	switch r.status {
	case "parked":
	case "blocked":
		return fmt.Errorf("%w: dead letter %d is blocked behind dead letter %d of the same key: redrive that one, the blocked ones follow in order",
			ErrNotRedrivable, id, r.blockedBy)
	default:
		return fmt.Errorf("%w: dead letter %d is %s, not parked", ErrNotRedrivable, id, r.status)
	}
	if _, err := in.applyDeadLetter(ctx, r, applyMode{redrive: true, payload: payload, action: "redrive",
		actor: actor, reason: reason, request: request}); err != nil {
		return err
	}
	if r.key == "" {
		return nil
	}
	return in.release(ctx, r.topic, r.key, actor, fmt.Sprintf("released after the redrive of dead letter %d: %s", id, reason))
}

// dlRow is a dead letter as a redrive reads it.
type dlRow struct {
	id                  int64
	consumer, status    string
	eventID             *uuid.UUID
	topic, key          string
	sequence            int64
	payload, headers    []byte
	contentTypeProperty string
	binding             string
	blockedBy           int64
}

func (in *Inbox) loadDeadLetter(ctx context.Context, id int64) (*dlRow, error) {
	r := &dlRow{}
	err := in.pool.QueryRow(ctx, in.sql.loadDeadLetter, id).Scan(&r.id, &r.consumer, &r.status, &r.eventID, &r.topic,
		&r.key, &r.sequence, &r.payload, &r.headers, &r.contentTypeProperty, &r.binding, &r.blockedBy)
	return r, err
}

// messageOf rebuilds the delivery of a dead letter, with payload.
func messageOf(r *dlRow, payload []byte) *message {
	hs, err := decodeHeaders(r.headers)
	d := &Delivery{Binding: Binding(r.binding), Topic: r.topic, Headers: hs, ContentType: r.contentTypeProperty, Payload: payload}
	if err != nil {
		return &message{d: d, topic: r.topic, sha: sha256.Sum256(payload), bad: failure.New(failure.PoisonFormat, err)}
	}
	return decode(d)
}

type applyMode struct {
	redrive       bool   // an operator's redrive: the order guard yields
	payload       []byte // edited payload; nil: the stored one
	action        string // audit action: redrive or release
	actor, reason string
	request       int64 // operator request settled with the outcome; 0: none
}

// applyDeadLetter applies dead letter r in one transaction under its lane's
// lock. A release (not a redrive) applies r only when it is next in its
// lane, and reports false without error when it is not (or was settled by
// someone else meanwhile). A failure of the event is stored on the dead
// letter and returned as a *RedriveError.
func (in *Inbox) applyDeadLetter(ctx context.Context, r *dlRow, mode applyMode) (bool, error) {
	hctx, cancel := in.handlerCtx(ctx)
	defer cancel()
	tx, err := in.pool.Begin(hctx)
	if err != nil {
		return false, err
	}
	ended := false
	defer func() {
		if !ended {
			rollback(tx)
		}
	}()
	keyed := r.key != ""
	var lane laneState
	if keyed {
		if lane, err = in.lockLane(hctx, tx, r.topic, r.key); err != nil {
			return false, err
		}
	}
	var status string
	if err := tx.QueryRow(hctx, in.sql.lockDeadLetter, r.id).Scan(&status); err != nil {
		return false, err
	}
	if mode.redrive {
		if status != "parked" {
			return false, fmt.Errorf("%w: dead letter %d is %s, not parked", ErrNotRedrivable, r.id, status)
		}
		if keyed && in.cfg.OnPark == OnParkBlock {
			var earlierID, earlierSeq int64
			switch err := tx.QueryRow(hctx, in.sql.earlierInLane, in.cfg.Consumer, r.topic, r.key, r.sequence, lane.last).Scan(&earlierID, &earlierSeq); {
			case err == nil:
				return false, fmt.Errorf("%w: dead letter %d (sequence %d) of the same key comes first: redrive it first",
					ErrNotRedrivable, earlierID, earlierSeq)
			case !errors.Is(err, pgx.ErrNoRows):
				return false, err
			}
		}
	} else if (status != "parked" && status != "blocked") || (keyed && r.sequence != lane.last+1) {
		return false, nil
	}
	var before []byte
	if err := tx.QueryRow(hctx, in.sql.deadLetterState, r.id).Scan(&before); err != nil {
		return false, err
	}
	payload := r.payload
	if mode.payload != nil {
		payload = mode.payload
	}
	m := messageOf(r, payload)
	fail := func(cause error) (bool, error) {
		rollback(tx)
		ended = true
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, in.failDeadLetter(ctx, r, m, mode, before, cause)
	}
	if m.bad != nil {
		return fail(m.bad)
	}
	ev := m.ev
	if r.eventID != nil && ev.ID != *r.eventID {
		return fail(failure.Newf(failure.PoisonFormat, "the stored headers carry event id %s, the dead letter %s", ev.ID, *r.eventID))
	}
	origSha := sha256.Sum256(r.payload)
	var seq *int64
	if keyed {
		seq = &r.sequence
	}
	tag, err := tx.Exec(hctx, in.sql.processedInsert, in.cfg.Consumer, ev.ID, r.topic, r.key, seq, origSha[:])
	if err != nil {
		return false, err
	}
	details := map[string]any{"outcome": "applied", "consumer_version": in.cfg.ConsumerVersion}
	if tag.RowsAffected() == 0 {
		var sha []byte
		if err := tx.QueryRow(hctx, in.sql.processedSha, in.cfg.Consumer, ev.ID).Scan(&sha); err != nil {
			return false, err
		}
		if !bytes.Equal(sha, origSha[:]) {
			return fail(failure.Newf(failure.Conflict,
				"event %s was applied with payload sha256 %x; this dead letter's payload has sha256 %x", ev.ID, sha, origSha))
		}
		details["outcome"] = "already_applied"
	}
	newLast := lane.last
	if keyed {
		switch {
		case r.sequence > lane.last+1:
			details["gap_accepted"] = fmt.Sprintf("sequences %d to %d of the key were never applied", lane.last+1, r.sequence-1)
		case r.sequence <= lane.last:
			details["out_of_order"] = fmt.Sprintf("applied after sequence %d of the key", lane.last)
		}
		if r.sequence > lane.last {
			newLast = r.sequence
			if _, err := tx.Exec(hctx, in.sql.advanceLane, in.cfg.Consumer, r.topic, r.key, r.sequence); err != nil {
				return false, err
			}
		}
	}
	if details["outcome"] == "applied" && skipMarker(ev) {
		// A skip marker held back in the dead letters (waiting for a gap,
		// or blocked behind a parked head): its lane moves past it, no
		// handler runs.
		details["outcome"] = "skipped"
	} else if details["outcome"] == "applied" {
		h, e, err := in.resolve(ev)
		if err != nil {
			return fail(err)
		}
		if err := in.runHandler(hctx, h, tx, e); err != nil {
			return fail(err)
		}
	}
	if mode.payload != nil {
		// Fingerprints and size only: the audit log is append-only and never
		// holds payload bytes. The corrected payload is kept on the dead
		// letter (edited_payload), where redaction can reach it.
		edited := sha256.Sum256(mode.payload)
		details["edited_payload_bytes"] = len(mode.payload)
		details["edited_payload_sha256"] = hex.EncodeToString(edited[:])
		details["original_payload_sha256"] = hex.EncodeToString(origSha[:])
	}
	if _, err := tx.Exec(hctx, in.sql.resolveDeadLetter, r.id, mode.payload); err != nil {
		return false, err
	}
	if keyed {
		// The lane stays held by the next open dead letter, if any, so that
		// live events keep queueing behind the ones being released.
		if err := in.holdLaneForNext(hctx, tx, r.topic, r.key, newLast); err != nil {
			return false, err
		}
	}
	after := map[string]any{"status": "resolved"}
	if mode.request != 0 {
		details["request_id"] = mode.request
		if err := in.settleRequest(hctx, tx, mode.request, "applied", fmt.Sprintf("applied (%s)", details["outcome"])); err != nil {
			return false, err
		}
	}
	if err := in.audit(hctx, tx, mode.action, mode.actor, mode.reason, targetsOf(r.id, &ev.ID), before, after, details); err != nil {
		return false, err
	}
	ended = true
	if err := tx.Commit(hctx); err != nil {
		return false, err
	}
	in.log.Info("inbox: dead letter applied", slog.String("action", mode.action), slog.Int64("dead_letter_id", r.id),
		slog.String("event_id", ev.ID.String()), slog.String("actor", mode.actor))
	return true, nil
}

func (in *Inbox) holdLaneForNext(ctx context.Context, tx pgx.Tx, topic, key string, last int64) error {
	var nextID, nextSeq int64
	var nextStatus string
	var waiting bool
	err := tx.QueryRow(ctx, in.sql.nextInLane, in.cfg.Consumer, topic, key, last).Scan(&nextID, &nextStatus, &nextSeq, &waiting)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		_, err = tx.Exec(ctx, in.sql.unblockLane, in.cfg.Consumer, topic, key)
		return err
	case err != nil:
		return err
	}
	_, err = tx.Exec(ctx, in.sql.blockLane, in.cfg.Consumer, topic, key, nextID)
	return err
}

func targetsOf(id int64, eventID *uuid.UUID) []string {
	t := []string{fmt.Sprint(id)}
	if eventID != nil {
		t = append(t, eventID.String())
	}
	return t
}

// failDeadLetter records that dead letter r failed again: parked, one more
// attempt, the head of its lane when the lane policy blocks.
func (in *Inbox) failDeadLetter(ctx context.Context, r *dlRow, m *message, mode applyMode, before []byte, cause error) error {
	class := ClassOf(cause)
	started := time.Now()
	tx, err := in.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer rollback(tx)
	var lane laneState
	if r.key != "" {
		if lane, err = in.lockLane(ctx, tx, r.topic, r.key); err != nil {
			return err
		}
	}
	var attempts int
	if err := tx.QueryRow(ctx, in.sql.failDeadLetter, r.id, errorText(cause), string(class), 1).Scan(&attempts); err != nil {
		return err
	}
	rec := attemptRecord{number: attempts, started: started, class: class, err: cause, outcome: "parked"}
	if err := in.insertAttempt(ctx, tx, r.eventID, rec, &r.id); err != nil {
		return err
	}
	if r.key != "" {
		if err := in.parkedInLane(ctx, tx, r.topic, r.key, lane, r.id, r.sequence); err != nil {
			return err
		}
	}
	after := map[string]any{"status": "parked", "error_class": class, "attempts": attempts}
	details := map[string]any{"outcome": "failed", "error": errorText(cause), "consumer_version": in.cfg.ConsumerVersion}
	if mode.request != 0 {
		details["request_id"] = mode.request
		if err := in.settleRequest(ctx, tx, mode.request, "failed", fmt.Sprintf("failed again [%s]: %s", class, errorText(cause))); err != nil {
			return err
		}
	}
	if err := in.audit(ctx, tx, mode.action, mode.actor, mode.reason, targetsOf(r.id, r.eventID), before, after, details); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	in.log.Warn("inbox: dead letter failed again", slog.String("action", mode.action), slog.Int64("dead_letter_id", r.id),
		slog.String("error_class", string(class)), slog.Any("error", cause))
	return &RedriveError{DeadLetterID: r.id, Class: class, Err: cause}
}

// release applies, in sequence order, the open dead letters of a lane that
// come next after its last applied sequence: blocked ones, and parked ones
// that were waiting for the gap now filled. It stops at a failed parked
// event (the head an operator must redrive), at a gap (the next one waits
// for the missing sequence), when an event fails (it becomes the head), or
// when nothing is left (the lane flows again).
func (in *Inbox) release(ctx context.Context, topic, key, actor, reason string) error {
	var lastTried int64
	for {
		next, stop, err := in.releaseStep(ctx, topic, key, actor, reason)
		if err != nil || stop {
			return err
		}
		if next == lastTried {
			return fmt.Errorf("inbox: release of key %q: dead letter %d did not apply twice in a row", key, next)
		}
		r, err := in.loadDeadLetter(ctx, next)
		if err != nil {
			return err
		}
		applied, err := in.applyDeadLetter(ctx, r, applyMode{action: "release", actor: actor, reason: reason})
		var re *RedriveError
		if errors.As(err, &re) {
			return nil // it is the lane's parked head now
		}
		if err != nil {
			return err
		}
		if !applied {
			lastTried = next
		} else {
			lastTried = 0
		}
	}
}

// releaseStep looks at the lane under its lock and returns the dead letter
// to apply next, or stop when the release is over (having left the lane
// held by its new head, or flowing).
func (in *Inbox) releaseStep(ctx context.Context, topic, key, actor, reason string) (next int64, stop bool, err error) {
	tx, err := in.pool.Begin(ctx)
	if err != nil {
		return 0, false, err
	}
	defer rollback(tx)
	lane, err := in.lockLane(ctx, tx, topic, key)
	if err != nil {
		return 0, false, err
	}
	var id, seq int64
	var status string
	var waiting bool
	err = tx.QueryRow(ctx, in.sql.nextInLane, in.cfg.Consumer, topic, key, lane.last).Scan(&id, &status, &seq, &waiting)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := tx.Exec(ctx, in.sql.unblockLane, in.cfg.Consumer, topic, key); err != nil {
			return 0, false, err
		}
		return 0, true, tx.Commit(ctx)
	case err != nil:
		return 0, false, err
	}
	failedHead := status == "parked" && !waiting
	if seq == lane.last+1 && !failedHead {
		return id, false, nil
	}
	if !failedHead {
		// The next one is ahead of missing events: it waits for them.
		var before []byte
		if err := tx.QueryRow(ctx, in.sql.deadLetterState, id).Scan(&before); err != nil {
			return 0, false, err
		}
		text := fmt.Sprintf("waiting for sequence %d of key %q (this is %d): applied automatically when the missing events arrive; redrive to skip them",
			lane.last+1, key, seq)
		if _, err := tx.Exec(ctx, in.sql.holdDeadLetter, id, lane.last+1, text); err != nil {
			return 0, false, err
		}
		if status == "blocked" {
			after := map[string]any{"status": "parked", "error_class": failure.Transient, "waiting_for": lane.last + 1}
			if err := in.audit(ctx, tx, "park", in.actor, text, []string{fmt.Sprint(id)}, before, after,
				map[string]any{"topic": topic, "key": key, "sequence": seq, "released_by": actor, "release_reason": reason}); err != nil {
				return 0, false, err
			}
		}
	}
	// A failed head (an operator redrives it) or a new waiting one: the
	// lane waits behind it.
	if _, err := tx.Exec(ctx, in.sql.blockLane, in.cfg.Consumer, topic, key, id); err != nil {
		return 0, false, err
	}
	if _, err := tx.Exec(ctx, in.sql.repoint, in.cfg.Consumer, topic, key, id); err != nil {
		return 0, false, err
	}
	return 0, true, tx.Commit(ctx)
}
