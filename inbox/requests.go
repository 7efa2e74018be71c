package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// requestBatch bounds the requests one ProcessRequests call reads.
const requestBatch = 100

// request is a pending operator request on one of this consumer's dead
// letters (table dead_letter_requests).
type request struct {
	id, deadLetterID    int64
	action              string
	payload             []byte
	requestedBy, reason string
	topic, key          string
}

// ProcessRequests runs the pending operator requests on this consumer's
// dead letters, in the order they were made, and returns how many it
// settled. The operator tools (outboxkit dlq replay, edit, drop, and the
// dashboard) only record requests, because the handlers live in the
// consumer's process; ServeRequests, started by the inbox/kafka and
// inbox/rabbitmq consumers' Run, calls this every
// Config.RequestPollInterval. Call it yourself when you feed the Inbox
// another way.
//
// A replay or edit request runs Redrive or RedriveEdited with the
// requester as the actor and the request's reason: the key's order holds
// (the events blocked behind the dead letter follow it, each once). Its
// outcome (applied, failed again, refused with the reason) is recorded on
// the request in the transaction that applies the event or records the new
// failure, so a request is applied at most once even when several
// processes of the consumer run it. A release request (made by a drop of
// the head of a blocked key) applies, in order, the events that waited
// behind the dropped one.
//
// An error means the database could not be used; the requests not settled
// stay pending and are run by the next call.
func (in *Inbox) ProcessRequests(ctx context.Context) (int, error) {
	reqs, err := in.pendingRequests(ctx)
	if err != nil {
		return 0, fmt.Errorf("inbox: operator requests: %w", err)
	}
	n := 0
	for _, r := range reqs {
		if err := in.runRequest(ctx, r); err != nil {
			return n, fmt.Errorf("inbox: operator request %d: %w", r.id, err)
		}
		n++
	}
	return n, nil
}

// ServeRequests calls ProcessRequests every Config.RequestPollInterval
// until ctx ends, then returns nil; with a negative interval it returns at
// once. Errors are logged and the requests tried again at the next poll.
func (in *Inbox) ServeRequests(ctx context.Context) error {
	if in.cfg.RequestPollInterval < 0 {
		return nil
	}
	t := time.NewTicker(in.cfg.RequestPollInterval)
	defer t.Stop()
	for {
		n, err := in.ProcessRequests(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			in.log.Warn("inbox: operator requests not run, trying again at the next poll", slog.Any("error", err))
		case n > 0:
			in.log.Info("inbox: operator requests run", slog.Int("requests", n))
		}
		if n == requestBatch && err == nil {
			continue // more are waiting
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (in *Inbox) pendingRequests(ctx context.Context) ([]request, error) {
	rows, err := in.pool.Query(ctx, in.rq.pending, in.cfg.Consumer, requestBatch)
	if err != nil {
		return nil, err
	}
	var out []request
	var r request
	_, err = pgx.ForEachRow(rows, []any{&r.id, &r.deadLetterID, &r.action, &r.payload, &r.requestedBy, &r.reason,
		&r.topic, &r.key}, func() error {
		out = append(out, r)
		return nil
	})
	return out, err
}

// runRequest runs one request. It returns an error only when the request
// could not be settled (it stays pending).
func (in *Inbox) runRequest(ctx context.Context, r request) error {
	switch r.action {
	case "replay", "edit":
		var payload []byte
		if r.action == "edit" {
			payload = r.payload
			if payload == nil {
				payload = []byte{}
			}
		}
		err := in.redrive(ctx, r.deadLetterID, payload, r.requestedBy, r.reason, r.id)
		var re *RedriveError
		switch {
		case err == nil, errors.As(err, &re):
			return nil // settled with the application or the new failure
		case errors.Is(err, ErrNotRedrivable):
			return in.settleRequestAlone(ctx, r.id, "refused", err.Error())
		default:
			return err
		}
	case "release":
		if r.key == "" {
			return in.settleRequestAlone(ctx, r.id, "applied", "nothing waited behind a keyless dead letter")
		}
		if err := in.release(ctx, r.topic, r.key, r.requestedBy,
			fmt.Sprintf("released after the drop of dead letter %d: %s", r.deadLetterID, r.reason)); err != nil {
			return err
		}
		return in.settleRequestAlone(ctx, r.id, "applied", fmt.Sprintf("key %q released: the events that waited behind dead letter %d were applied in order (one that failed is the key's new parked head)", r.key, r.deadLetterID))
	}
	return in.settleRequestAlone(ctx, r.id, "refused", fmt.Sprintf("unknown action %q", r.action))
}

// settleRequest records the outcome of request id in tx.
func (in *Inbox) settleRequest(ctx context.Context, tx pgx.Tx, id int64, status, outcome string) error {
	_, err := tx.Exec(ctx, in.rq.settle, id, status, in.actor+" "+in.cfg.ConsumerVersion, storableText(outcome, maxAuditActorOrReasonBytes))
	return err
}

func (in *Inbox) settleRequestAlone(ctx context.Context, id int64, status, outcome string) error {
	_, err := in.pool.Exec(ctx, in.rq.settle, id, status, in.actor+" "+in.cfg.ConsumerVersion, storableText(outcome, maxAuditActorOrReasonBytes))
	return err
}
