package inbox

import (
	"context"
	"log/slog"
)

// HandleBatch handles deliveries in order and returns one Outcome per
// delivery settled. It applies them in one transaction when every one is
// the next event of its key (or a clean duplicate) and every handler
// succeeds: one commit, one fsync, for the whole batch. Anything else (a
// handler error, a gap, a blocked key, a conflict, a malformed delivery)
// rolls that transaction back and handles each delivery on its own with
// Handle, with its retries, parks and order guard. The effect is the same
// as calling Handle for each delivery in turn; only the speed differs.
//
// Deliveries of one key must be in their received order, and no other
// goroutine may handle deliveries of the same keys meanwhile (the adapters
// give one partition, or one set of keys, to one goroutine). Handlers of a
// batch share one transaction: a handler must not change session state
// (SET, temporary tables) that another would see.
//
// When ctx ends, HandleBatch returns the outcomes of the deliveries settled
// so far (a prefix of ds) and ctx's error: acknowledge those only.
func (in *Inbox) HandleBatch(ctx context.Context, ds []Delivery) ([]Outcome, error) {
	if len(ds) == 1 {
		out, err := in.Handle(ctx, ds[0])
		if err != nil {
			return nil, err
		}
		return []Outcome{out}, nil
	}
	if outs, ok := in.tryBatch(ctx, ds); ok {
		for _, o := range outs {
			in.counts[o].Add(1)
		}
		return outs, nil
	}
	outs := make([]Outcome, 0, len(ds))
	for _, d := range ds {
		out, err := in.Handle(ctx, d)
		if err != nil {
			return outs, err
		}
		outs = append(outs, out)
	}
	return outs, nil
}

// tryBatch is the fast path of HandleBatch: true when it applied (or
// recognised as duplicates) every delivery of ds in one transaction.
func (in *Inbox) tryBatch(ctx context.Context, ds []Delivery) ([]Outcome, bool) {
	ms := make([]*message, len(ds))
	for i := range ds {
		m := decode(&ds[i])
		if m.bad != nil {
			return nil, false
		}
		if to, ok := m.ev.Headers[ReplayToHeader]; ok && to != in.cfg.Consumer {
			return nil, false
		}
		ms[i] = m
	}
	probe, err := in.breaker.acquire(ctx)
	if err != nil {
		return nil, false
	}
	outs, ok := in.batchTx(ctx, ms)
	if !ok && ctx.Err() == nil {
		in.log.Debug("inbox: batch handled one by one", slog.Int("deliveries", len(ms)))
	}
	if ok {
		applied := false
		for _, o := range outs {
			applied = applied || o == Applied
		}
		if applied {
			in.breaker.success(probe)
			return outs, true
		}
	}
	// Either every one was a duplicate (nothing learnt) or the batch must
	// go one by one, which reports to the breaker itself.
	in.breaker.inconclusive(probe)
	return outs, ok
}

func (in *Inbox) batchTx(ctx context.Context, ms []*message) ([]Outcome, bool) {
	hctx, cancel := in.handlerCtx(ctx)
	defer cancel()
	tx, err := in.pool.Begin(hctx)
	if err != nil {
		return nil, false
	}
	outs := make([]Outcome, len(ms))
	for i, m := range ms {
		ev := m.ev
		var inserted, inOrder, parked bool
		if ev.Key != "" {
			err = tx.QueryRow(hctx, in.sql.claimKeyed, in.cfg.Consumer, ev.ID, m.topic, ev.Key, ev.Sequence, m.sha[:],
				in.cfg.StartLanesAtFirstSeen).Scan(&inserted, &inOrder, &parked)
		} else {
			err = tx.QueryRow(hctx, in.sql.claim, in.cfg.Consumer, ev.ID, m.topic, m.sha[:]).Scan(&inserted, &inOrder, &parked)
		}
		if err != nil || parked {
			rollback(tx)
			return nil, false
		}
		switch {
		case inserted && inOrder:
			h, e, err := in.resolve(ev)
			if err != nil {
				rollback(tx)
				return nil, false
			}
			if err := in.runHandler(hctx, h, tx, e); err != nil {
				rollback(tx)
				return nil, false
			}
			outs[i] = Applied
		case !inserted && !(ev.Key != "" && inOrder):
			// Recorded before: the claim changed nothing. A different
			// payload (a conflict) needs the slow path.
			var sha []byte
			if err := tx.QueryRow(hctx, in.sql.processedSha, in.cfg.Consumer, ev.ID).Scan(&sha); err != nil || string(sha) != string(m.sha[:]) {
				rollback(tx)
				return nil, false
			}
			outs[i] = Duplicate
		default:
			rollback(tx)
			return nil, false
		}
	}
	if err := tx.Commit(hctx); err != nil {
		return nil, false
	}
	return outs, true
}
