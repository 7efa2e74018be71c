package inbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// attempt makes one attempt at applying m. It returns the outcome when the
// delivery is settled; hErr when the handler (or its commit) failed; err
// when the inbox's own statements failed. Both errors are classified and
// retried by Handle.
func (in *Inbox) attempt(ctx context.Context, m *message) (out Outcome, hErr, err error) {
	ev := m.ev
	hctx, cancel := in.handlerCtx(ctx)
	defer cancel()
	tx, err := in.pool.Begin(hctx)
	if err != nil {
		return 0, nil, err
	}
	var inserted, inOrder, parked bool
	if ev.Key != "" {
		err = tx.QueryRow(hctx, in.sql.claimKeyed, in.cfg.Consumer, pgutil.UUID(ev.ID), m.topic, ev.Key, ev.Sequence, m.sha[:],
			in.cfg.StartLanesAtFirstSeen).Scan(&inserted, &inOrder, &parked)
	} else {
		err = tx.QueryRow(hctx, in.sql.claim, in.cfg.Consumer, pgutil.UUID(ev.ID), m.topic, m.sha[:]).Scan(&inserted, &inOrder, &parked)
	}
	if err != nil {
		rollback(tx)
		return 0, nil, err
	}
	if inserted && inOrder && !parked {
		return in.applyIn(hctx, tx, m)
	}
	rollback(tx)
	switch {
	case !inserted:
		return in.duplicate(ctx, m)
	case parked:
		return AlreadyParked, nil, nil
	}
	return in.slowPath(ctx, m)
}

// applyIn runs the handler of m in tx, which holds m's processed record
// (and its lane), and commits. tx is always ended. A skip marker runs no
// handler: the record and the lane's move are all it commits.
func (in *Inbox) applyIn(ctx context.Context, tx pgx.Tx, m *message) (Outcome, error, error) {
	if skipMarker(m.ev) {
		if err := tx.Commit(ctx); err != nil {
			return 0, fmt.Errorf("commit: %w", err), nil
		}
		in.logSkipped(m.ev)
		return Skipped, nil, nil
	}
	h, ev, err := in.resolve(m.ev)
	if err != nil {
		rollback(tx)
		return 0, err, nil
	}
	if err := in.runHandler(ctx, h, tx, ev); err != nil {
		rollback(tx)
		return 0, err, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err), nil
	}
	in.metrics.applied(m.ev.Time, time.Now())
	return Applied, nil, nil
}

// duplicate settles an event whose id this consumer recorded before: the
// same payload is a duplicate, another payload a conflict.
func (in *Inbox) duplicate(ctx context.Context, m *message) (Outcome, error, error) {
	var sha []byte
	err := in.pool.QueryRow(ctx, in.sql.processedSha, in.cfg.Consumer, m.ev.ID).Scan(&sha)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, errors.New("processed record vanished while reading it (retention?); trying again")
	}
	if err != nil {
		return 0, nil, err
	}
	if bytes.Equal(sha, m.sha[:]) {
		return Duplicate, nil, nil
	}
	out, err := in.parkConflict(ctx, m, sha)
	return out, nil, err
}

// laneState is a lane row read under its lock.
type laneState struct {
	last      int64
	blockedBy *int64
	headSeq   *int64 // sequence of blockedBy
	fresh     bool   // created by this transaction
}

// lockLane creates the lane if needed and locks it for the rest of tx.
func (in *Inbox) lockLane(ctx context.Context, tx pgx.Tx, topic, key string) (laneState, error) {
	var l laneState
	tag, err := tx.Exec(ctx, in.sql.ensureLane, in.cfg.Consumer, topic, key)
	if err != nil {
		return l, err
	}
	l.fresh = tag.RowsAffected() == 1
	err = tx.QueryRow(ctx, in.sql.lockLane, in.cfg.Consumer, topic, key).Scan(&l.last, &l.blockedBy, &l.headSeq)
	return l, err
}

// slowPath handles a keyed event that is not simply the next of its lane:
// it arrived after later events, ahead of missing ones, or while its lane is
// blocked. It decides under the lane's lock.
func (in *Inbox) slowPath(ctx context.Context, m *message) (out Outcome, hErr, err error) {
	ev := m.ev
	hctx, cancel := in.handlerCtx(ctx)
	defer cancel()
	tx, err := in.pool.Begin(hctx)
	if err != nil {
		return 0, nil, err
	}
	committed := false
	defer func() {
		if !committed {
			rollback(tx)
		}
	}()
	lane, err := in.lockLane(hctx, tx, m.topic, ev.Key)
	if err != nil {
		return 0, nil, err
	}
	// What the claim saw may have changed before the lock: look again.
	var sha []byte
	switch err := tx.QueryRow(hctx, in.sql.processedSha, in.cfg.Consumer, ev.ID).Scan(&sha); {
	case err == nil:
		rollback(tx)
		committed = true
		if bytes.Equal(sha, m.sha[:]) {
			return Duplicate, nil, nil
		}
		out, err := in.parkConflict(ctx, m, sha)
		return out, nil, err
	case !errors.Is(err, pgx.ErrNoRows):
		return 0, nil, err
	}
	var openID int64
	switch err := tx.QueryRow(hctx, in.sql.openDeadLetter, in.cfg.Consumer, ev.ID).Scan(&openID); {
	case err == nil:
		return AlreadyParked, nil, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return 0, nil, err
	}

	s := ev.Sequence
	expected := lane.last + 1
	if lane.fresh && in.cfg.StartLanesAtFirstSeen {
		expected = s
	}
	// settle commits tx, which stored the dead letter dl when not nil.
	settle := func(out Outcome, dl *deadLetter, err error) (Outcome, error, error) {
		if err != nil {
			return 0, nil, err
		}
		if err := tx.Commit(hctx); err != nil {
			return 0, nil, err
		}
		committed = true
		if dl != nil {
			in.metrics.deadLettered(dl.status, dl.class)
		}
		return out, nil, nil
	}
	apply := func() (Outcome, error, error) {
		if _, err := tx.Exec(hctx, in.sql.processedInsert, in.cfg.Consumer, ev.ID, m.topic, ev.Key, s, m.sha[:]); err != nil {
			return 0, nil, err
		}
		if _, err := tx.Exec(hctx, in.sql.advanceLane, in.cfg.Consumer, m.topic, ev.Key, s); err != nil {
			return 0, nil, err
		}
		committed = true // applyIn ends tx
		return in.applyIn(hctx, tx, m)
	}

	switch {
	case s < expected && skipMarker(ev):
		// A skip marker behind its lane (the lane moved past its sequence
		// another way: OnParkSkip, an accepted gap): it has nothing to
		// apply and nothing to hold back. Record it so that a redelivery
		// is a duplicate.
		if _, err := tx.Exec(hctx, in.sql.processedInsert, in.cfg.Consumer, ev.ID, m.topic, ev.Key, s, m.sha[:]); err != nil {
			return 0, nil, err
		}
		out, hErr, err := settle(Skipped, nil, nil)
		if out == Skipped {
			in.logSkipped(ev)
		}
		return out, hErr, err

	case s < expected:
		// Its lane moved past it, yet this consumer never applied it (no
		// processed record): a late event, a replay after the processed
		// record expired, or an event whose gap an operator accepted.
		// Applying it now would break the order; skipping it silently could
		// lose money. Park it.
		dl := deadLetter{
			status: "parked", class: failure.Permanent, attempts: 0,
			err: fmt.Sprintf("out of order: sequence %d of key %q arrived after sequence %d was applied; not applied (redrive to apply it out of order, or drop it)",
				s, ev.Key, lane.last),
		}
		_, err := in.insertDeadLetter(hctx, tx, m, dl, nil)
		return settle(Parked, &dl, err)

	case lane.blockedBy != nil:
		if s == expected && (lane.headSeq == nil || s < *lane.headSeq) {
			// It fills the gap in front of the lane's head: apply it, then
			// let the head and the events behind it follow.
			out, hErr, err := apply()
			if out == Applied {
				in.releaseAfterGap(ctx, m.topic, ev.Key, s)
			}
			return out, hErr, err
		}
		dl := deadLetter{
			status: "blocked", class: in.headClass(hctx, tx, *lane.blockedBy), blockedBy: lane.blockedBy,
			err: fmt.Sprintf("blocked: waits for dead letter %d, an earlier event of key %q", *lane.blockedBy, ev.Key),
		}
		_, err := in.insertDeadLetter(hctx, tx, m, dl, nil)
		return settle(Blocked, &dl, err)

	case s == expected:
		return apply()

	case in.cfg.OnPark == OnParkSkip:
		in.log.Warn("inbox: sequence gap accepted (OnPark skip): earlier events of the key are missing",
			slog.String("event_id", ev.ID.String()), slog.String("key", ev.Key),
			slog.Int64("sequence", s), slog.Int64("expected", expected))
		return apply()

	default:
		// Ahead of events that have not arrived: hold it (and the events
		// behind it) until the missing one is applied.
		waiting := expected
		dl := deadLetter{
			status: "parked", class: failure.Transient, waitingFor: &waiting,
			err: fmt.Sprintf("waiting for sequence %d of key %q (received %d): applied automatically when the missing events arrive; redrive to skip them",
				expected, ev.Key, s),
		}
		id, err := in.insertDeadLetter(hctx, tx, m, dl, nil)
		if err == nil {
			_, err = tx.Exec(hctx, in.sql.blockLane, in.cfg.Consumer, m.topic, ev.Key, id)
		}
		return settle(Parked, &dl, err)
	}
}

// logSkipped logs a skip marker that moved its lane.
func (in *Inbox) logSkipped(ev *wire.Event) {
	in.log.Info("inbox: skip marker: the key moved past an event an operator dropped",
		slog.String("event_id", ev.ID.String()), slog.String("key", ev.Key), slog.Int64("sequence", ev.Sequence),
		slog.String("dropped_event_id", ev.Headers[wire.SkippedHeader]))
}

// headClass is the error class of dead letter id, given to the rows blocked
// behind it (the view dead_letters_by_consumer then groups them with it).
func (in *Inbox) headClass(ctx context.Context, tx pgx.Tx, id int64) failure.Class {
	var c string
	if err := tx.QueryRow(ctx, in.sql.headClass, id).Scan(&c); err != nil {
		return failure.Transient
	}
	return failure.Class(c)
}

// releaseAfterGap runs the release of a lane after the event that fills its
// gap was applied. The event is settled whatever happens here: a failure
// leaves the lane blocked for the next event or a redrive to release.
func (in *Inbox) releaseAfterGap(ctx context.Context, topic, key string, seq int64) {
	if err := in.release(ctx, topic, key, in.actor, fmt.Sprintf("sequence %d of key %q arrived", seq, key)); err != nil {
		in.log.Error("inbox: cannot release a lane after its gap was filled; the next event or a redrive releases it",
			slog.String("topic", topic), slog.String("key", key), slog.Any("error", err))
	}
}

// attemptRecord is one failed attempt for the attempt history.
type attemptRecord struct {
	number   int
	started  time.Time
	duration time.Duration
	class    failure.Class
	err      error
	outcome  string // retry, parked, not_counted
}

func (in *Inbox) countAttempts(ctx context.Context, m *message) int {
	if m.ev == nil {
		return 0
	}
	var n int
	if err := in.pool.QueryRow(ctx, in.sql.countAttempts, in.cfg.Consumer, m.ev.ID).Scan(&n); err != nil {
		return 0 // the database is failing too; the count restarts, bounded anyway
	}
	return n
}

func (in *Inbox) recordAttempt(ctx context.Context, m *message, rec attemptRecord) {
	if err := in.insertAttempt(ctx, in.pool, &m.ev.ID, rec, nil); err != nil && ctx.Err() == nil {
		in.log.Warn("inbox: cannot record an attempt", slog.Any("error", err))
	}
}

// querier is what both a pool and a transaction offer.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (in *Inbox) insertAttempt(ctx context.Context, q querier, eventID *uuid.UUID, rec attemptRecord, deadLetterID *int64) error {
	_, err := q.Exec(ctx, in.sql.insertAttempt, in.cfg.Consumer, eventID, deadLetterID, rec.number, rec.started,
		int(rec.duration.Milliseconds()), string(rec.class), errorText(rec.err), rec.outcome)
	return err
}

// maxErrorText bounds stored error texts (a panic carries its stack).
const maxErrorText = 16 << 10

func errorText(err error) string {
	if err == nil {
		return "unknown error"
	}
	s := storableText(err.Error(), maxErrorText)
	if s == "" {
		s = fmt.Sprintf("%T with an empty message", err)
	}
	return s
}
