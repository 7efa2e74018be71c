package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReplayHeader names the one consumer a replayed event is for. Inbox
// adapters of other consumers acknowledge such an event without applying
// or recording it; the named consumer applies it unless its inbox already
// has it (the inbox's deduplication stays on: a replay never applies an
// event twice).
const ReplayHeader = "outboxkit-replay-to"

// RangeReplay selects published events to send again.
type RangeReplay struct {
	Topic    string
	Key      string // optional
	From, To time.Time
	Consumer string // optional: only this consumer applies them
	DryRun   bool
	Limit    int // default and maximum 100000 per call
}

// RangeResult says what a range replay did (or would do).
type RangeResult struct {
	Events int `json:"events"`
	// Redacted counts the published events of the range left out because
	// their payload was redacted (sweeper redact job): they cannot be sent
	// again.
	Redacted int64    `json:"redacted"`
	EventIDs []string `json:"event_ids,omitempty"` // the first 100
	DryRun   bool     `json:"dry_run"`
}

// ReplayRange re-sends already published events of a topic and time range
// (created_at), to every consumer or to one. Events older than the
// retention window (sweeper) are gone and cannot be replayed; redacted
// events (sweeper redact job) are left out and counted in
// RangeResult.Redacted.
func (s *Store) ReplayRange(ctx context.Context, a Action, q RangeReplay) (RangeResult, error) {
	res := RangeResult{DryRun: q.DryRun}
	if err := a.check(); err != nil && !q.DryRun {
		return res, err
	}
	if q.Topic == "" || q.From.IsZero() || q.To.IsZero() || !q.From.Before(q.To) {
		return res, errors.New("replay needs --topic and a time range --from < --to")
	}
	if q.Limit <= 0 || q.Limit > 100000 {
		q.Limit = 100000
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, s.sql.rangeSelect, q.Topic, q.From, q.To, nullStr(q.Key), q.Limit)
		if err != nil {
			return err
		}
		var ids []int64
		var id int64
		var ev string
		if _, err := pgx.ForEachRow(rows, []any{&id, &ev}, func() error {
			ids = append(ids, id)
			if len(res.EventIDs) < 100 {
				res.EventIDs = append(res.EventIDs, ev)
			}
			return nil
		}); err != nil {
			return err
		}
		res.Events = len(ids)
		if err := tx.QueryRow(ctx, s.sql.rangeRedacted, q.Topic, q.From, q.To, nullStr(q.Key)).Scan(&res.Redacted); err != nil {
			return err
		}
		if q.DryRun || len(ids) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, s.sql.rangeReplay, ids, nullStr(q.Consumer)); err != nil {
			return err
		}
		details, _ := json.Marshal(map[string]any{"topic": q.Topic, "key": q.Key, "from": q.From, "to": q.To,
			"consumer": q.Consumer, "events": len(ids), "listed": len(res.EventIDs), "redacted_left_out": res.Redacted})
		_, err = tx.Exec(ctx, s.sql.audit, a.Actor, "replay_range", "outbox_message", res.EventIDs, a.Reason, nil, nil, details)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("replay range: %w", err)
	}
	return res, nil
}
