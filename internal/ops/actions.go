package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Action is who does something and why. Both are required and audited.
type Action struct {
	Actor  string
	Reason string

	// approval is set while an action approved under the two-person rule
	// runs (approvals.go): its audit entries name the approval.
	approval   int64
	approvedBy string
}

func (a Action) check() error {
	if a.Actor == "" {
		return ErrNoActor
	}
	if a.Reason == "" {
		return ErrNoReason
	}
	return nil
}

// Outcome of an action on one event.
type Outcome struct {
	Ref    Ref    `json:"ref"`
	Result string `json:"result"` // "replayed", "dropped", "restored", "edited", "skipped", "would replay"...
	NewRef *Ref   `json:"new_ref,omitempty"`
	Note   string `json:"note,omitempty"`
	// Request is the inbox request the consumer runs (replay, edit, or the
	// release of a key after a drop); 0 when none.
	Request int64 `json:"request,omitempty"`
	// NewEventID is the event id of the corrected copy an edit of a broker
	// dead letter sent (it has no row of its own).
	NewEventID string `json:"new_event_id,omitempty"`
}

// inTx runs fn in a transaction.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, fn)
}

// locked is an outbox row as it was before an action.
type locked struct {
	before   json.RawMessage
	status   string
	topic    string
	key      string
	sequence int64
	eventID  uuid.UUID
}

func (s *Store) lock(ctx context.Context, tx pgx.Tx, ref Ref) (*locked, error) {
	if ref.Kind != KindOutbox {
		return nil, fmt.Errorf("%s: inbox dead letters are replayed by their consumer: %w", ref, ErrWrongStatus)
	}
	l := &locked{}
	err := tx.QueryRow(ctx, s.sql.lockMessage, ref.ID).Scan(&l.before, &l.status, &l.topic, &l.key, &l.sequence, &l.eventID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	return l, err
}

func (s *Store) audit(ctx context.Context, tx pgx.Tx, a Action, action string, ids []string, before, after json.RawMessage, details any) error {
	details = a.withApproval(details)
	var det []byte
	if details != nil {
		var err error
		if det, err = json.Marshal(details); err != nil {
			return err
		}
	}
	_, err := tx.Exec(ctx, s.sql.audit, a.Actor, action, "outbox_message", ids, a.Reason, before, after, det)
	return err
}

// Replay puts a parked outbox event back to pending with a fresh attempt
// budget. A lane it blocks stays blocked until the relay has published it,
// so the lane's later events still follow it. An inbox dead letter is
// replayed by its consumer (a request), a broker dead letter is sent back
// to its broker (replayDeadLetter).
func (s *Store) Replay(ctx context.Context, a Action, ref Ref) (Outcome, error) {
	if ref.Kind == KindInbox {
		return s.replayDeadLetter(ctx, a, ref, false, nil)
	}
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	out := Outcome{Ref: ref, Result: "replayed"}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l, err := s.lock(ctx, tx, ref)
		if err != nil {
			return err
		}
		if l.status != "parked" {
			return fmt.Errorf("%s is %s, only parked events are replayed: %w", ref, l.status, ErrWrongStatus)
		}
		var after json.RawMessage
		if err := tx.QueryRow(ctx, s.sql.replayMessage, ref.ID).Scan(&after); err != nil {
			return err
		}
		return s.audit(ctx, tx, a, "replay", []string{l.eventID.String()}, l.before, after, map[string]any{"ref": ref.String()})
	})
	return out, err
}

// Drop soft-deletes a parked or blocked outbox event: it stays in the table
// with status dropped and is never published; Restore undoes it. A keyed
// event leaves a skip marker (wire.SkippedType, no payload) in its place in
// the lane, so consumers advance past its sequence instead of waiting for it
// forever; a lane that waited for the dropped event waits for the marker,
// and its later events follow once the marker is published.
func (s *Store) Drop(ctx context.Context, a Action, ref Ref) (Outcome, error) {
	if err := s.needApproval(ctx, a, "drop"); err != nil {
		return Outcome{}, err
	}
	if ref.Kind == KindInbox {
		return s.dropDeadLetter(ctx, a, ref)
	}
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	out := Outcome{Ref: ref, Result: "dropped"}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l, err := s.lock(ctx, tx, ref)
		if err != nil {
			return err
		}
		if l.status != "parked" && l.status != "blocked" {
			return fmt.Errorf("%s is %s, only parked or blocked events are dropped: %w", ref, l.status, ErrWrongStatus)
		}
		var after json.RawMessage
		if err := tx.QueryRow(ctx, s.sql.dropMessage, ref.ID).Scan(&after); err != nil {
			return err
		}
		details := map[string]any{"ref": ref.String()}
		if l.key != "" {
			markerStatus := "blocked"
			if l.status == "parked" {
				markerStatus = "pending"
			}
			markerEvent, err := uuid.NewV7()
			if err != nil {
				return err
			}
			var markerID int64
			if err := tx.QueryRow(ctx, s.sql.insertSkipMarker, ref.ID, markerEvent, markerStatus).Scan(&markerID); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, s.sql.retargetLane, ref.ID, markerID)
			if err != nil {
				return err
			}
			out.NewRef = &Ref{KindOutbox, markerID}
			out.Note = fmt.Sprintf("skip marker %s takes its place in key %q", out.NewRef, l.key)
			if tag.RowsAffected() > 0 {
				out.Note += "; the key's waiting events follow once the marker is published"
			}
			details["skip_marker"] = out.NewRef.String()
		}
		return s.audit(ctx, tx, a, "drop", []string{l.eventID.String()}, l.before, after, details)
	})
	return out, err
}

func (s *Store) releaseLane(ctx context.Context, tx pgx.Tx, topic, key string) error {
	if _, err := tx.Exec(ctx, s.sql.releaseLaneOf, topic, key); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, s.sql.unblockLane, topic, key)
	return err
}

// Restore undoes a Drop: the event gets back the status it had before, and
// takes its lane place back from its skip marker. Once the marker has been
// published, consumers have moved past the event: Restore refuses, and the
// event can only be sent again as a corrected copy of a parked event.
func (s *Store) Restore(ctx context.Context, a Action, ref Ref) (Outcome, error) {
	if ref.Kind == KindInbox {
		return s.restoreDeadLetter(ctx, a, ref)
	}
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	out := Outcome{Ref: ref, Result: "restored"}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l, err := s.lock(ctx, tx, ref)
		if err != nil {
			return err
		}
		if l.status != "dropped" {
			return fmt.Errorf("%s is %s, only dropped events are restored: %w", ref, l.status, ErrWrongStatus)
		}
		if l.key != "" {
			var markerID int64
			var markerStatus string
			err := tx.QueryRow(ctx, s.sql.findSkipMarker, ref.ID).Scan(&markerID, &markerStatus)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
			case err != nil:
				return err
			case markerStatus != "pending" && markerStatus != "blocked":
				return fmt.Errorf("%s: its skip marker o:%d is %s: consumers have moved past this event, so it cannot take its place again: %w",
					ref, markerID, markerStatus, ErrWrongStatus)
			default:
				if _, err := tx.Exec(ctx, s.sql.dropMarker, markerID); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, s.sql.retargetLane, markerID, ref.ID); err != nil {
					return err
				}
			}
		}
		prev := "parked"
		if err := tx.QueryRow(ctx, s.sql.lastDrop, l.eventID.String()).Scan(&prev); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if prev != "parked" && prev != "blocked" {
			prev = "parked"
		}
		var after json.RawMessage
		if err := tx.QueryRow(ctx, s.sql.restoreMessage, ref.ID, prev).Scan(&after); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("%s: %w", ref, ErrWrongStatus)
			}
			return err
		}
		return s.audit(ctx, tx, a, "restore", []string{l.eventID.String()}, l.before, after, map[string]any{"ref": ref.String()})
	})
	return out, err
}

// Edit stores a corrected payload as a new event linked to the original:
// the copy gets a new event id, causation_id = the original's event id and
// the header outboxkit-edit-of, and takes the original's place in its lane
// (same sequence). The original row is kept with its payload untouched and
// its status set to dropped, so it is never published. A lane that waited
// for the original now waits for the copy. For inbox and broker dead
// letters, see replayDeadLetter.
func (s *Store) Edit(ctx context.Context, a Action, ref Ref, payload []byte, contentType string) (Outcome, error) {
	if err := s.needApproval(ctx, a, "edit"); err != nil {
		return Outcome{}, err
	}
	if ref.Kind == KindInbox {
		if contentType != "" {
			return Outcome{}, fmt.Errorf("%s: the content type of an inbox dead letter comes from its stored headers; edit the payload only: %w", ref, ErrWrongStatus)
		}
		return s.replayDeadLetter(ctx, a, ref, true, payload)
	}
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	out := Outcome{Ref: ref, Result: "edited"}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l, err := s.lock(ctx, tx, ref)
		if err != nil {
			return err
		}
		if l.status != "parked" {
			return fmt.Errorf("%s is %s, only parked events are edited: %w", ref, l.status, ErrWrongStatus)
		}
		var dropped json.RawMessage
		if err := tx.QueryRow(ctx, s.sql.dropMessage, ref.ID).Scan(&dropped); err != nil {
			return err
		}
		newEventID, err := uuid.NewV7()
		if err != nil {
			return err
		}
		var newID int64
		var after json.RawMessage
		if err := tx.QueryRow(ctx, s.sql.copyEdited, ref.ID, payload, newEventID, nullStr(contentType)).Scan(&newID, &after); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, s.sql.retargetLane, ref.ID, newID); err != nil {
			return err
		}
		out.NewRef = &Ref{KindOutbox, newID}
		return s.audit(ctx, tx, a, "edit", []string{l.eventID.String(), newEventID.String()}, l.before, after,
			map[string]any{"ref": ref.String(), "new_ref": out.NewRef.String(), "original_status": "dropped"})
	})
	return out, err
}

// RedriveOptions control a bulk redrive.
type RedriveOptions struct {
	DryRun   bool
	PerSec   float64                                    // rate limit; 0 means 50 per second
	Progress func(done, total int)                      // called after each event
	Sleep    func(context.Context, time.Duration) error // for tests; default sleeps
}

// sleeper returns opt.Sleep, or a sleep that ends early with ctx.
func (opt RedriveOptions) sleeper() func(context.Context, time.Duration) error {
	if opt.Sleep != nil {
		return opt.Sleep
	}
	return func(ctx context.Context, d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}
}

// Redrive replays every parked outbox event matching f, in key order,
// rate-limited. A dry run changes nothing and says what would happen. With
// f.Kind inbox (or f.Consumer set) it replays every parked inbox dead
// letter matching f instead, in key order, rate-limited: a consumer's own
// becomes a request (each consumer runs its requests in that order), a
// broker dead letter is sent back to its broker (redriveInbox).
func (s *Store) Redrive(ctx context.Context, a Action, f Filter, opt RedriveOptions) ([]Outcome, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	if !opt.DryRun {
		if err := s.needApproval(ctx, a, "redrive"); err != nil {
			return nil, err
		}
	}
	if opt.PerSec <= 0 {
		opt.PerSec = 50
	}
	f, items, err := s.redriveItems(ctx, f)
	if err != nil {
		return nil, err
	}
	if f.Kind == KindInbox {
		return s.redriveInbox(ctx, a, items, opt)
	}
	if !opt.DryRun {
		refs := make([]Ref, len(items))
		for i, it := range items {
			refs[i] = it.Ref
		}
		return s.replayEach(ctx, a, refs, opt)
	}
	var outs []Outcome
	for _, it := range items {
		note := fmt.Sprintf("%s %s key %q #%d, %s: %s", it.Type, it.EventID, it.Key, it.Sequence, it.ErrorClass, it.Error)
		if it.Waiting > 0 {
			note += fmt.Sprintf(" (%d later events of the key follow it)", it.Waiting)
		}
		outs = append(outs, Outcome{Ref: it.Ref, Result: "would replay", Note: note})
	}
	return outs, nil
}

// OutcomeOf is the outcome of one action of a bulk run that returned o and
// err: o, or a failure saying what err means. stop is true when the run must stop: a message may be at its broker
// unrecorded (ErrOutcomeUnknown, ErrSentNotRecorded) or sent twice
// (ErrSentTwice), and going on would pile up more such sends while the
// broker or the database is failing.
func OutcomeOf(ref Ref, o Outcome, err error) (Outcome, bool) {
	switch {
	case err == nil:
		return o, false
	case errors.Is(err, ErrSentNotRecorded):
		return Outcome{Ref: ref, Result: "sent, not recorded", Note: err.Error()}, true
	case errors.Is(err, ErrSentTwice):
		return Outcome{Ref: ref, Result: "sent twice", Note: err.Error()}, true
	case errors.Is(err, ErrOutcomeUnknown):
		return Outcome{Ref: ref, Result: "outcome unknown", Note: err.Error()}, true
	}
	return Outcome{Ref: ref, Result: "failed", Note: err.Error()}, false
}

// ReplayRefs replays several refs as one bulk action, as Redrive does a
// filter's: under the two-person rule it needs an approval
// (ApprovalSpec{Verb: "redrive", Refs: refs}; ErrApprovalRequired); every
// broker a broker dead letter among refs needs is checked before anything
// runs (a *NoBrokerError); the replays are rate-limited (opt.PerSec) and
// stop at the first whose outcome is unknown. One ref is a plain Replay.
func (s *Store) ReplayRefs(ctx context.Context, a Action, refs []Ref, opt RedriveOptions) ([]Outcome, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	if len(refs) == 1 {
		o, err := s.Replay(ctx, a, refs[0])
		o, _ = OutcomeOf(refs[0], o, err)
		return []Outcome{o}, err
	}
	if err := s.needApproval(ctx, a, "replay of several events"); err != nil {
		return nil, err
	}
	if err := s.brokersReady(ctx, refs); err != nil {
		return nil, err
	}
	return s.replayEach(ctx, a, refs, opt)
}

// replayEach replays refs in order, rate-limited, stopping early when
// OutcomeOf says so or ctx ends.
func (s *Store) replayEach(ctx context.Context, a Action, refs []Ref, opt RedriveOptions) ([]Outcome, error) {
	if opt.PerSec <= 0 {
		opt.PerSec = 50
	}
	sleep := opt.sleeper()
	gap := time.Duration(float64(time.Second) / opt.PerSec)
	var outs []Outcome
	for i, ref := range refs {
		if i > 0 {
			if err := sleep(ctx, gap); err != nil {
				return outs, err
			}
		}
		o, err := s.Replay(ctx, a, ref)
		o, stop := OutcomeOf(ref, o, err)
		outs = append(outs, o)
		if stop {
			return outs, err
		}
		if opt.Progress != nil {
			opt.Progress(i+1, len(refs))
		}
	}
	return outs, nil
}

// redriveItems returns what a redrive of f runs on, in key order: the
// parked outbox events matching f or, with f.Kind inbox or f.Consumer set,
// the parked inbox dead letters matching f (at most f.Limit, default
// 10000). It returns f as it applied it.
func (s *Store) redriveItems(ctx context.Context, f Filter) (Filter, []Item, error) {
	f.Dropped = false
	if f.Limit <= 0 {
		f.Limit = 10000
	}
	if f.Kind == KindInbox || f.Consumer != "" {
		f.Kind = KindInbox
	} else {
		f.Kind = KindOutbox
	}
	items, err := s.List(ctx, f)
	if err != nil {
		return f, nil, err
	}
	parked := items[:0]
	for _, it := range items {
		if it.Status == "parked" {
			parked = append(parked, it)
		}
	}
	return f, parked, nil
}
