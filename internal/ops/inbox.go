package ops

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Inbox dead letters are applied by their consumer, whose process holds the
// handlers: replay and edit record a request (dead_letter_requests) that
// the running consumer picks up within seconds (inbox.Inbox.ProcessRequests)
// and settles with its outcome. Drop and restore change the dead letter
// directly; a drop of the head of a blocked key moves the key past it and
// asks the consumer to apply the events that waited behind it, in order.

// ErrRequestPending is returned when a dead letter already has a request
// the consumer has not run yet.
var ErrRequestPending = errors.New("a request on this dead letter is pending: the consumer runs it when it polls (every few seconds while it runs); see dlq show")

// errIngested refuses a consumer request on a broker dead letter copied by
// outboxkit dlq ingest: no consumer here applies it; its replay republishes
// it to the broker (internal/ingest).
var errIngested = errors.New("it is a broker dead letter (outboxkit dlq ingest): replay republishes it to where it came from, with outboxkit dlq replay REF")

// Request is an operator request on an inbox dead letter and its outcome.
type Request struct {
	ID           int64      `json:"id"`
	DeadLetter   Ref        `json:"dead_letter"`
	Consumer     string     `json:"consumer"`
	Action       string     `json:"action"` // replay, edit, release
	Status       string     `json:"status"` // pending, applied, failed, refused, cancelled
	RequestedBy  string     `json:"requested_by"`
	Reason       string     `json:"reason"`
	RequestedAt  time.Time  `json:"requested_at"`
	DoneAt       *time.Time `json:"done_at,omitempty"`
	DoneBy       string     `json:"done_by,omitempty"`
	Outcome      string     `json:"outcome,omitempty"`
	PayloadBytes *int       `json:"payload_bytes,omitempty"` // edit: size of the corrected payload
}

// deadLetter is a dead letter as an action finds it, locked.
type deadLetter struct {
	before     json.RawMessage
	status     string
	consumer   string
	eventID    string
	topic, key string
	sequence   int64
	blockedBy  int64
	waitingFor *int64
	ingested   string // rabbitmq or kafka: a broker dead letter copied by outboxkit dlq ingest
}

func (d *deadLetter) targets(ref Ref) []string {
	t := []string{strconv.FormatInt(ref.ID, 10)}
	if d.eventID != "" {
		t = append(t, d.eventID)
	}
	return t
}

// details are the audit details every action on d starts with.
func (d *deadLetter) details(ref Ref) map[string]any {
	m := map[string]any{"ref": ref.String(), "consumer": d.consumer}
	if d.ingested != "" {
		m["ingested_from"] = d.ingested
	}
	return m
}

// inboxLane is the consumer's lane of a dead letter's key, locked.
type inboxLane struct {
	exists    bool
	last      int64
	blockedBy int64
}

// lockDeadLetter locks the lane of dead letter ref (when it has a key) and
// then the dead letter, the order the consumer locks them in.
func (s *Store) lockDeadLetter(ctx context.Context, tx pgx.Tx, ref Ref) (*deadLetter, inboxLane, error) {
	var lane inboxLane
	var consumer, topic, key string
	err := tx.QueryRow(ctx, s.in.deadLetterLane, ref.ID).Scan(&consumer, &topic, &key)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, lane, fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return nil, lane, err
	}
	if key != "" {
		err := tx.QueryRow(ctx, s.in.lockLane, consumer, topic, key).Scan(&lane.last, &lane.blockedBy)
		switch {
		case err == nil:
			lane.exists = true
		case !errors.Is(err, pgx.ErrNoRows):
			return nil, lane, err
		}
	}
	d := &deadLetter{}
	err = tx.QueryRow(ctx, s.in.lockDeadLetter, ref.ID).Scan(&d.before, &d.status, &d.consumer, &d.eventID, &d.topic,
		&d.key, &d.sequence, &d.blockedBy, &d.waitingFor, &d.ingested)
	return d, lane, err
}

func (s *Store) auditInbox(ctx context.Context, tx pgx.Tx, a Action, action string, ids []string, before, after json.RawMessage, details any) error {
	det, err := json.Marshal(a.withApproval(details))
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, s.sql.audit, a.Actor, action, "inbox_dead_letter", ids, a.Reason, before, after, det)
	return err
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// replayDeadLetter replays dead letter ref, or with edit applies payload in
// its place. A consumer's own dead letter becomes a request its consumer
// runs; a broker dead letter (outboxkit dlq ingest) is sent back to its
// broker from here (ingested.go).
func (s *Store) replayDeadLetter(ctx context.Context, a Action, ref Ref, edit bool, payload []byte) (Outcome, error) {
	from, err := s.ingestedFrom(ctx, ref)
	if err != nil {
		return Outcome{}, err
	}
	if from != "" {
		return s.sendIngested(ctx, a, ref, edit, payload)
	}
	if edit {
		return s.requestOnDeadLetter(ctx, a, ref, "edit", payload)
	}
	return s.requestOnDeadLetter(ctx, a, ref, "replay", nil)
}

// requestOnDeadLetter records a replay or edit request for the consumer of
// dead letter ref, audited.
func (s *Store) requestOnDeadLetter(ctx context.Context, a Action, ref Ref, action string, payload []byte) (Outcome, error) {
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	out := Outcome{Ref: ref, Result: "requested"}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		d, _, err := s.lockDeadLetter(ctx, tx, ref)
		if err != nil {
			return err
		}
		if d.ingested != "" {
			return fmt.Errorf("%s, ingested from %s: %w: %w", ref, d.ingested, errIngested, ErrWrongStatus)
		}
		switch d.status {
		case "parked":
		case "blocked":
			return fmt.Errorf("%s waits behind i:%d, an earlier event of its key: %s i:%d instead, the events blocked behind it follow in order: %w",
				ref, d.blockedBy, action, d.blockedBy, ErrWrongStatus)
		default:
			return fmt.Errorf("%s is %s, only parked dead letters are replayed or edited: %w", ref, d.status, ErrWrongStatus)
		}
		var pendingID int64
		var pendingAction, pendingBy string
		var pendingAt time.Time
		err = tx.QueryRow(ctx, s.in.pendingRequestOf, ref.ID).Scan(&pendingID, &pendingAction, &pendingBy, &pendingAt)
		switch {
		case err == nil:
			return fmt.Errorf("%s: request #%d (%s by %s at %s): %w", ref, pendingID, pendingAction, pendingBy,
				pendingAt.Format(time.RFC3339), ErrRequestPending)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		var stored []byte
		if action == "edit" {
			stored = payload
			if stored == nil {
				stored = []byte{}
			}
		}
		var id int64
		if err := tx.QueryRow(ctx, s.in.insertRequest, d.consumer, ref.ID, action, stored, a.Actor, a.Reason).Scan(&id); err != nil {
			return err
		}
		out.Request = id
		out.Note = fmt.Sprintf("request #%d: consumer %s applies it when it polls (every few seconds while it runs); dlq show %s shows the outcome",
			id, d.consumer, ref)
		details := map[string]any{"ref": ref.String(), "consumer": d.consumer, "request_id": id}
		if action == "edit" {
			details["edited_payload_sha256"] = sha256Hex(stored)
			details["edited_payload_bytes"] = len(stored)
		}
		after, err := json.Marshal(map[string]any{"status": d.status, "request_id": id, "request_status": "pending"})
		if err != nil {
			return err
		}
		return s.auditInbox(ctx, tx, a, "request_"+action, d.targets(ref), d.before, after, details)
	})
	return out, err
}

// dropDeadLetter drops a parked dead letter: its consumer never applies it.
// When it holds its key (the events after it wait behind it), the key moves
// past it and a release request asks the consumer to apply the waiting
// events in order, as if the dropped one had been applied; when nothing
// waits, the key flows again at once.
func (s *Store) dropDeadLetter(ctx context.Context, a Action, ref Ref) (Outcome, error) {
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	out := Outcome{Ref: ref, Result: "dropped"}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		d, lane, err := s.lockDeadLetter(ctx, tx, ref)
		if err != nil {
			return err
		}
		switch {
		case d.status == "blocked":
			return fmt.Errorf("%s waits behind i:%d, an earlier event of its key: drop or replay i:%d first (dropping an event in the middle of a key would leave a gap the key waits for forever): %w",
				ref, d.blockedBy, d.blockedBy, ErrWrongStatus)
		case d.status != "parked":
			return fmt.Errorf("%s is %s, only parked dead letters are dropped: %w", ref, d.status, ErrWrongStatus)
		case d.key != "" && lane.exists && lane.blockedBy != 0 && lane.blockedBy != ref.ID && d.sequence > lane.last:
			return fmt.Errorf("%s comes after i:%d in its key: drop or replay i:%d first: %w", ref, lane.blockedBy, lane.blockedBy, ErrWrongStatus)
		}
		var after json.RawMessage
		if err := tx.QueryRow(ctx, s.in.dropDeadLetter, ref.ID).Scan(&after); err != nil {
			return err
		}
		details := d.details(ref)
		cancelled, err := s.cancelRequests(ctx, tx, a, ref, "cancelled: the dead letter was dropped by "+a.Actor)
		if err != nil {
			return err
		}
		if len(cancelled) > 0 {
			details["cancelled_requests"] = cancelled
		}
		if d.key != "" && lane.exists && lane.blockedBy == ref.ID {
			// It holds its key: move the key past it.
			newLast := max(lane.last, d.sequence)
			details["lane_last_before"], details["lane_last_after"] = lane.last, newLast
			if d.waitingFor != nil {
				details["gap_accepted"] = fmt.Sprintf("sequences %d to %d of the key were never applied", lane.last+1, d.sequence-1)
			}
			var open int
			if err := tx.QueryRow(ctx, s.in.openBehind, d.consumer, d.topic, d.key, newLast).Scan(&open); err != nil {
				return err
			}
			var holder *int64
			if open > 0 {
				// Events wait behind it: the lane stays held (new events
				// of the key queue behind it too) until the consumer has
				// applied them.
				holder = &ref.ID
				var id int64
				if err := tx.QueryRow(ctx, s.in.insertRequest, d.consumer, ref.ID, "release", nil, a.Actor, a.Reason).Scan(&id); err != nil {
					return err
				}
				out.Request = id
				details["release_request"] = id
				out.Note = fmt.Sprintf("key %q moved past it; request #%d: consumer %s applies the %d events that waited behind it, in order, when it polls",
					d.key, id, d.consumer, open)
			} else {
				out.Note = fmt.Sprintf("key %q moved past it and flows again", d.key)
			}
			if _, err := tx.Exec(ctx, s.in.setLane, d.consumer, d.topic, d.key, newLast, holder); err != nil {
				return err
			}
		}
		return s.auditInbox(ctx, tx, a, "drop", d.targets(ref), d.before, after, details)
	})
	return out, err
}

func (s *Store) cancelRequests(ctx context.Context, tx pgx.Tx, a Action, ref Ref, outcome string) ([]int64, error) {
	rows, err := tx.Query(ctx, s.in.cancelRequests, ref.ID, a.Actor, outcome)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// restoreDeadLetter undoes a drop. When the consumer has not moved the key
// on since (its release request is still pending, or no event of the key
// came), the dead letter takes its place back as the head of its key and
// the release is cancelled: the exact state before the drop. Otherwise it
// is parked again out of its key's order; a replay then applies it out of
// order, which the audit log records.
func (s *Store) restoreDeadLetter(ctx context.Context, a Action, ref Ref) (Outcome, error) {
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	out := Outcome{Ref: ref, Result: "restored"}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		d, lane, err := s.lockDeadLetter(ctx, tx, ref)
		if err != nil {
			return err
		}
		if d.status != "dropped" {
			return fmt.Errorf("%s is %s, only dropped dead letters are restored: %w", ref, d.status, ErrWrongStatus)
		}
		var drop struct {
			LastBefore *int64 `json:"lane_last_before"`
			LastAfter  *int64 `json:"lane_last_after"`
			Release    *int64 `json:"release_request"`
		}
		var before struct {
			WaitingFor *int64 `json:"waiting_for"`
		}
		var dropDetails, dropBefore []byte
		if err := tx.QueryRow(ctx, s.in.lastDrop, strconv.FormatInt(ref.ID, 10)).Scan(&dropDetails, &dropBefore); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if len(dropDetails) > 0 {
			if err := json.Unmarshal(dropDetails, &drop); err != nil {
				return err
			}
			if err := json.Unmarshal(dropBefore, &before); err != nil {
				return err
			}
		}
		details := d.details(ref)
		exact := drop.LastBefore == nil // the drop did not move the key
		if drop.LastBefore != nil && lane.exists && lane.last == *drop.LastAfter {
			switch {
			case drop.Release != nil:
				var status string
				if err := tx.QueryRow(ctx, s.in.requestStatus, *drop.Release).Scan(&status); err != nil {
					return err
				}
				exact = status == "pending" && lane.blockedBy == ref.ID
			default:
				exact = lane.blockedBy == 0
			}
		}
		var waitingFor *int64
		if exact && drop.LastBefore != nil {
			waitingFor = before.WaitingFor // as the drop's audit entry kept it
			if _, err := tx.Exec(ctx, s.in.setLane, d.consumer, d.topic, d.key, *drop.LastBefore, ref.ID); err != nil {
				return err
			}
			if drop.Release != nil {
				if _, err := s.cancelRequests(ctx, tx, a, Ref{KindInbox, ref.ID}, "cancelled: the dropped dead letter was restored by "+a.Actor); err != nil {
					return err
				}
			}
			out.Note = fmt.Sprintf("the head of key %q again; the events behind it wait for it", d.key)
			details["mode"] = "head_again"
		} else if !exact {
			out.Note = fmt.Sprintf("key %q moved on meanwhile: a replay applies it out of order (recorded in the audit log)", d.key)
			details["mode"] = "out_of_order"
		}
		var after json.RawMessage
		if err := tx.QueryRow(ctx, s.in.restoreDeadLetter, ref.ID, waitingFor).Scan(&after); err != nil {
			return err
		}
		return s.auditInbox(ctx, tx, a, "restore", d.targets(ref), d.before, after, details)
	})
	return out, err
}

// redriveInbox replays the parked inbox dead letters items (redriveItems),
// in their order (key order), rate-limited: a consumer's own becomes a
// replay request, which each consumer runs in that order; a broker dead
// letter is sent back to its broker at once. A dry run changes nothing and
// says what would happen to each.
func (s *Store) redriveInbox(ctx context.Context, a Action, items []Item, opt RedriveOptions) ([]Outcome, error) {
	var targets map[int64]brokerTarget
	var err error
	if opt.DryRun {
		if targets, err = s.brokerTargets(ctx, items, false); err != nil {
			return nil, err
		}
	} else if err := s.itemsReady(items); err != nil {
		// Every broker the run needs must be configured before anything
		// runs: a redrive that failed half-way for a missing flag would
		// leave the operator to sort out what ran.
		return nil, err
	}
	sleep := opt.sleeper()
	gap := time.Duration(float64(time.Second) / opt.PerSec)
	var outs []Outcome
	for i, it := range items {
		if opt.DryRun {
			outs = append(outs, s.redriveDryRun(it, targets[it.Ref.ID]))
			continue
		}
		if i > 0 {
			if err := sleep(ctx, gap); err != nil {
				return outs, err
			}
		}
		var o Outcome
		var err error
		if it.IngestedFrom != "" {
			o, err = s.sendIngested(ctx, a, it.Ref, false, nil)
		} else {
			o, err = s.requestOnDeadLetter(ctx, a, it.Ref, "replay", nil)
		}
		var stop bool
		if errors.Is(err, ErrRequestPending) {
			o = Outcome{Ref: it.Ref, Result: "skipped", Note: err.Error()}
		} else if o, stop = OutcomeOf(it.Ref, o, err); stop {
			return append(outs, o), err
		}
		outs = append(outs, o)
		if opt.Progress != nil {
			opt.Progress(i+1, len(items))
		}
	}
	return outs, nil
}

// redriveDryRun says what a redrive would do to dead letter it; t is where
// a broker dead letter would go.
func (s *Store) redriveDryRun(it Item, t brokerTarget) Outcome {
	if it.IngestedFrom != "" {
		note := fmt.Sprintf("%s, %s: %s", it.Consumer, it.ErrorClass, it.Error)
		if it.Key != "" {
			note = fmt.Sprintf("key %q, %s", it.Key, note)
		}
		switch {
		case t.err != nil && !errors.Is(t.err, ErrNoBroker):
			return Outcome{Ref: it.Ref, Result: "would fail", Note: fmt.Sprintf("%v (%s)", t.err, note)}
		case t.err != nil:
			note = fmt.Sprintf("sent back to its origin on %s (%s)", brokerName(it.IngestedFrom), note)
		default:
			note = fmt.Sprintf("sent back to %s (%s)", t.dest, note)
		}
		if it.IngestedFrom == BrokerKafka {
			note += "; every consumer group of the topic reads it again, with the same event id: " +
				"safe only where they deduplicate by event id (the inbox does)"
		}
		var nb *NoBrokerError
		if err := s.BrokerReady(it.IngestedFrom); errors.As(err, &nb) {
			note += fmt.Sprintf("; the real run needs %s", nb.Flag)
		}
		return Outcome{Ref: it.Ref, Result: "would replay", Note: note}
	}
	note := fmt.Sprintf("%s %s key %q #%d, consumer %s, %s: %s", it.Type, it.EventID, it.Key, it.Sequence, it.Consumer,
		it.ErrorClass, it.Error)
	if it.Waiting > 0 {
		note += fmt.Sprintf(" (%d later events of the key follow it)", it.Waiting)
	}
	if it.Request != nil && it.Request.Status == "pending" {
		note += fmt.Sprintf(" (request #%d is pending already: skipped)", it.Request.ID)
	}
	return Outcome{Ref: it.Ref, Result: "would request a replay", Note: note}
}

// attachRequests adds to inbox items the number of dead letters blocked
// behind each and its latest request.
func (s *Store) attachRequests(ctx context.Context, items []Item) error {
	index := map[int64]int{}
	var ids []int64
	for i, it := range items {
		if it.Kind == KindInbox {
			index[it.Ref.ID] = i
			ids = append(ids, it.Ref.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	reqs, err := s.requests(ctx, s.in.requestsOf, ids)
	if err != nil {
		return err
	}
	for _, r := range reqs {
		items[index[r.DeadLetter.ID]].Request = &r // oldest first: the latest wins
	}
	rows, err := s.pool.Query(ctx, s.in.blockedBehind, ids)
	if err != nil {
		return err
	}
	var id int64
	var n int
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error {
		items[index[id]].Waiting = n
		return nil
	})
	return err
}

func (s *Store) requests(ctx context.Context, query string, ids []int64) ([]Request, error) {
	rows, err := s.pool.Query(ctx, query, ids)
	if err != nil {
		return nil, err
	}
	var out []Request
	var r Request
	var payloadBytes *int
	_, err = pgx.ForEachRow(rows, []any{&r.ID, &r.DeadLetter.ID, &r.Consumer, &r.Action, &r.Status, &r.RequestedBy,
		&r.Reason, &r.RequestedAt, &r.DoneAt, &r.DoneBy, &r.Outcome, &payloadBytes}, func() error {
		c := r
		c.DeadLetter.Kind = KindInbox
		c.PayloadBytes = payloadBytes
		out = append(out, c)
		return nil
	})
	return out, err
}

// Requests returns the requests with the given ids.
func (s *Store) Requests(ctx context.Context, ids []int64) ([]Request, error) {
	return s.requests(ctx, s.in.requestsByID, ids)
}

// WaitRequests polls the requests until none is pending or ctx ends, and
// returns them as they are then.
func (s *Store) WaitRequests(ctx context.Context, ids []int64, poll time.Duration) ([]Request, error) {
	for {
		reqs, err := s.Requests(ctx, ids)
		if err != nil {
			return nil, err
		}
		pending := false
		for _, r := range reqs {
			pending = pending || r.Status == "pending"
		}
		if !pending {
			return reqs, nil
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return reqs, nil
		case <-t.C:
		}
	}
}
