package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Lane is a key held back behind a failed event.
type Lane struct {
	Topic           string     `json:"topic"`
	Key             string     `json:"key"`
	BlockedBy       int64      `json:"blocked_by,omitempty"`
	BlockedByEvent  string     `json:"blocked_by_event_id,omitempty"`
	BlockedByStatus string     `json:"blocked_by_status,omitempty"`
	ErrorClass      string     `json:"error_class,omitempty"`
	Error           string     `json:"error,omitempty"`
	BlockedSince    *time.Time `json:"blocked_since,omitempty"`
	HoldUntil       *time.Time `json:"hold_until,omitempty"` // nil: blocked until an operator acts
	Waiting         int        `json:"waiting"`
}

// Describe is the one-line story of a lane for people.
func (l Lane) Describe() string {
	since := ""
	if l.BlockedSince != nil {
		since = " since " + l.BlockedSince.Local().Format("2006-01-02 15:04:05")
	}
	what := "retrying"
	if l.HoldUntil == nil {
		what = "blocked"
	}
	return fmt.Sprintf("%s/%s %s%s by event o:%d (%s, class %s), %d events waiting",
		l.Topic, l.Key, what, since, l.BlockedBy, l.BlockedByStatus, l.ErrorClass, l.Waiting)
}

// Lanes lists held keys (blocked by a parked event, or waiting for a retry).
func (s *Store) Lanes(ctx context.Context, topic, key string, limit int) ([]Lane, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, s.sql.listLanes, nullStr(topic), nullStr(key), limit)
	if err != nil {
		return nil, err
	}
	var out []Lane
	var l Lane
	_, err = pgx.ForEachRow(rows, []any{&l.Topic, &l.Key, &l.BlockedBy, &l.BlockedByEvent, &l.BlockedByStatus,
		&l.ErrorClass, &l.Error, &l.BlockedSince, &l.HoldUntil, &l.Waiting}, func() error {
		out = append(out, l)
		l = Lane{}
		return nil
	})
	return out, err
}

// LaneAction is one of the lane verbs.
type LaneAction string

const (
	LaneRetryHead LaneAction = "retry-head" // replay the parked head; the lane follows it
	LaneSkipHead  LaneAction = "skip-head"  // drop the head; the lane's later events go on
	LaneRelease   LaneAction = "release"    // the lane goes on; the head stays parked
)

// ActOnLane applies a lane verb to topic/key.
func (s *Store) ActOnLane(ctx context.Context, a Action, topic, key string, verb LaneAction) (Outcome, error) {
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	lanes, err := s.Lanes(ctx, topic, key, 1)
	if err != nil {
		return Outcome{}, err
	}
	if len(lanes) == 0 || lanes[0].Topic != topic || lanes[0].Key != key {
		return Outcome{}, fmt.Errorf("lane %s/%s is not held: %w", topic, key, ErrNotFound)
	}
	head := Ref{KindOutbox, lanes[0].BlockedBy}
	switch verb {
	case LaneRetryHead:
		return s.Replay(ctx, a, head)
	case LaneSkipHead:
		return s.Drop(ctx, a, head)
	case LaneRelease:
		out := Outcome{Ref: head, Result: "released"}
		err := s.inTx(ctx, func(tx pgx.Tx) error {
			if err := s.releaseLane(ctx, tx, topic, key); err != nil {
				return err
			}
			return s.audit(ctx, tx, a, "lane_release", []string{lanes[0].BlockedByEvent}, nil, nil,
				map[string]any{"topic": topic, "key": key, "head": head.String()})
		})
		return out, err
	}
	return Outcome{}, fmt.Errorf("lane action %q: use retry-head, skip-head or release", verb)
}

// Stats is the state of the outbox at a glance.
type Stats struct {
	At          time.Time         `json:"at"`
	Backlog     []BacklogRow      `json:"backlog"`
	PerMinute   int64             `json:"published_last_minute"`
	Per15Min    int64             `json:"published_last_15_minutes"`
	Partitions  []PartitionRow    `json:"partitions"`
	Relays      []RelayRow        `json:"relays"`
	DeadLetters []DeadLetterCount `json:"dead_letters"`
}

type BacklogRow struct {
	Topic      string    `json:"topic"`
	Status     string    `json:"status"`
	Events     int64     `json:"events"`
	Oldest     time.Time `json:"oldest_created_at"`
	OldestSecs float64   `json:"oldest_age_seconds"`
}

type PartitionRow struct {
	Partition  int        `json:"partition"`
	Owner      string     `json:"owner,omitempty"`
	LeaseUntil *time.Time `json:"lease_until,omitempty"`
	Expired    bool       `json:"lease_expired"`
	Pending    int64      `json:"pending"`
}

type RelayRow struct {
	ID        string    `json:"relay_id"`
	Hostname  string    `json:"hostname"`
	PID       int       `json:"pid"`
	Version   string    `json:"version"`
	Started   time.Time `json:"started_at"`
	Heartbeat time.Time `json:"heartbeat_at"`
	Alive     bool      `json:"alive"`
	Idle      bool      `json:"idle"`
}

type DeadLetterCount struct {
	Consumer string `json:"consumer"`
	Status   string `json:"status"`
	Count    int64  `json:"count"`
}

// Stats reads backlog, rates, partitions, relays and dead-letter counts.
func (s *Store) Stats(ctx context.Context) (*Stats, error) {
	st := &Stats{At: time.Now()}
	rows, err := s.pool.Query(ctx, s.sql.statsBacklog)
	if err != nil {
		return nil, err
	}
	var b BacklogRow
	if _, err := pgx.ForEachRow(rows, []any{&b.Topic, &b.Status, &b.Events, &b.Oldest, &b.OldestSecs}, func() error {
		st.Backlog = append(st.Backlog, b)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := s.pool.QueryRow(ctx, s.sql.statsRate).Scan(&st.PerMinute, &st.Per15Min); err != nil {
		return nil, err
	}
	rows, err = s.pool.Query(ctx, s.sql.statsPartitions)
	if err != nil {
		return nil, err
	}
	var p PartitionRow
	if _, err := pgx.ForEachRow(rows, []any{&p.Partition, &p.Owner, &p.LeaseUntil, &p.Expired, &p.Pending}, func() error {
		st.Partitions = append(st.Partitions, p)
		return nil
	}); err != nil {
		return nil, err
	}
	rows, err = s.pool.Query(ctx, s.sql.statsRelays)
	if err != nil {
		return nil, err
	}
	var r RelayRow
	if _, err := pgx.ForEachRow(rows, []any{&r.ID, &r.Hostname, &r.PID, &r.Version, &r.Started, &r.Heartbeat, &r.Alive, &r.Idle}, func() error {
		st.Relays = append(st.Relays, r)
		return nil
	}); err != nil {
		return nil, err
	}
	rows, err = s.pool.Query(ctx, s.sql.statsDeadLetters)
	if err != nil {
		return nil, err
	}
	var d DeadLetterCount
	_, err = pgx.ForEachRow(rows, []any{&d.Consumer, &d.Status, &d.Count}, func() error {
		st.DeadLetters = append(st.DeadLetters, d)
		return nil
	})
	return st, err
}

// TraceQuery selects whose story to tell: one of Key, EventID, Correlation.
type TraceQuery struct {
	Key         string
	EventID     string
	Correlation string
	Limit       int
}

// TraceEntry is one line of a timeline.
type TraceEntry struct {
	At      time.Time `json:"at"`
	Where   string    `json:"where"` // outbox, relay, inbox:<consumer>, dead-letter:<consumer>, audit
	EventID string    `json:"event_id,omitempty"`
	What    string    `json:"what"`
}

// Trace tells one key's, event's or correlation's whole story across the
// outbox, the attempt history, broker acks, inbox records per consumer,
// dead letters and the audit log, in time order.
func (s *Store) Trace(ctx context.Context, q TraceQuery) ([]TraceEntry, error) {
	n := 0
	for _, v := range []string{q.Key, q.EventID, q.Correlation} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("trace needs exactly one of --key, --event, --correlation")
	}
	if q.Limit <= 0 {
		q.Limit = 1000
	}
	var eventID *uuid.UUID
	if q.EventID != "" {
		u, err := uuid.Parse(q.EventID)
		if err != nil {
			return nil, fmt.Errorf("--event %q is not an event id (UUID)", q.EventID)
		}
		eventID = &u
	}
	rows, err := s.pool.Query(ctx, s.sql.traceMessages, nullStr(q.Key), eventID, nullStr(q.Correlation), q.Limit)
	if err != nil {
		return nil, err
	}
	var out []TraceEntry
	var ids []int64
	var eventIDs []uuid.UUID
	var textIDs []string
	names := map[int64]string{}
	var (
		id                                 int64
		ev                                 uuid.UUID
		topic, key, typ, status            string
		seq                                int64
		attempts                           int
		created                            time.Time
		published                          *time.Time
		ack, class, lastErr, correlationID string
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &ev, &topic, &key, &seq, &typ, &status, &attempts, &created, &published,
		&ack, &class, &lastErr, &correlationID}, func() error {
		ids, eventIDs, textIDs = append(ids, id), append(eventIDs, ev), append(textIDs, ev.String())
		names[id] = ev.String()
		what := fmt.Sprintf("enqueued o:%d %s on %s", id, typ, topic)
		if key != "" {
			what += fmt.Sprintf(" key %s #%d", key, seq)
		}
		if correlationID != "" {
			what += " correlation " + correlationID
		}
		out = append(out, TraceEntry{At: created, Where: "outbox", EventID: ev.String(), What: what + "; now " + status})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(ids) > 0 {
		rows, err := s.pool.Query(ctx, s.sql.traceAttempts, ids)
		if err != nil {
			return nil, err
		}
		var mid int64
		var attempt int
		var at time.Time
		var outcome, ecls, emsg, relayID, back string
		if _, err := pgx.ForEachRow(rows, []any{&mid, &attempt, &at, &outcome, &ecls, &emsg, &relayID, &back}, func() error {
			what := fmt.Sprintf("attempt %d by %s: %s", attempt, relayID, outcome)
			if back != "" {
				what += " (" + back + ")"
			}
			if ecls != "" {
				what += fmt.Sprintf(" [%s] %s", ecls, emsg)
			}
			out = append(out, TraceEntry{At: at, Where: "relay", EventID: names[mid], What: what})
			return nil
		}); err != nil {
			return nil, err
		}
	}
	rows, err = s.pool.Query(ctx, s.sql.traceProcessed, eventIDs)
	if err != nil {
		return nil, err
	}
	var consumer string
	var pev uuid.UUID
	var at time.Time
	if _, err := pgx.ForEachRow(rows, []any{&consumer, &pev, &at}, func() error {
		out = append(out, TraceEntry{At: at, Where: "inbox:" + consumer, EventID: pev.String(), What: "applied by " + consumer})
		return nil
	}); err != nil {
		return nil, err
	}
	rows, err = s.pool.Query(ctx, s.sql.traceDeadLetters, eventIDs, nullStr(q.Key))
	if err != nil {
		return nil, err
	}
	var dlID int64
	var dlEvent, dlStatus, dlClass, dlErr string
	var first, last time.Time
	if _, err := pgx.ForEachRow(rows, []any{&dlID, &consumer, &dlEvent, &dlStatus, &dlClass, &dlErr, &first, &last}, func() error {
		out = append(out, TraceEntry{At: first, Where: "dead-letter:" + consumer, EventID: dlEvent,
			What: fmt.Sprintf("i:%d %s [%s] %s (last failure %s)", dlID, dlStatus, dlClass, dlErr, last.Format(time.RFC3339))})
		return nil
	}); err != nil {
		return nil, err
	}
	rows, err = s.pool.Query(ctx, s.sql.traceAudit, textIDs)
	if err != nil {
		return nil, err
	}
	var actor, action, kind, reason string
	var targets []string
	if _, err := pgx.ForEachRow(rows, []any{&at, &actor, &action, &kind, &targets, &reason}, func() error {
		ev := ""
		if len(targets) > 0 {
			ev = targets[0]
		}
		out = append(out, TraceEntry{At: at, Where: "audit", EventID: ev, What: fmt.Sprintf("%s by %s: %s", action, actor, reason)})
		return nil
	}); err != nil {
		return nil, err
	}
	sortEntries(out)
	return out, nil
}

func sortEntries(e []TraceEntry) {
	for i := 1; i < len(e); i++ {
		for j := i; j > 0 && e[j].At.Before(e[j-1].At); j-- {
			e[j], e[j-1] = e[j-1], e[j]
		}
	}
}

// AuditEntry is one row of outbox.audit_log.
type AuditEntry struct {
	ID      int64          `json:"id"`
	At      time.Time      `json:"at"`
	Actor   string         `json:"actor"`
	Action  string         `json:"action"`
	Kind    string         `json:"target_kind"`
	Targets []string       `json:"target_ids"`
	Reason  string         `json:"reason"`
	Before  map[string]any `json:"before,omitempty"`
	After   map[string]any `json:"after,omitempty"`
	Details map[string]any `json:"details,omitempty"`
}

// Audit lists audit entries, newest first.
func (s *Store) Audit(ctx context.Context, actor, action string, since time.Time, limit int) ([]AuditEntry, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, s.sql.listAudit, nullStr(actor), nullStr(action), nullTime(since), limit)
	if err != nil {
		return nil, err
	}
	var out []AuditEntry
	var e AuditEntry
	_, err = pgx.ForEachRow(rows, []any{&e.ID, &e.At, &e.Actor, &e.Action, &e.Kind, &e.Targets, &e.Reason, &e.Before, &e.After, &e.Details}, func() error {
		out = append(out, e)
		e = AuditEntry{}
		return nil
	})
	return out, err
}
