package inbox

import (
	"bytes"
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outboxkit/outboxkit/internal/pgutil"
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
			in.settled(o)
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
	var outs []Outcome
	ok := false
	if inRuns(ms) {
		outs, ok = in.runTx(ctx, ms)
	}
	if !ok && ctx.Err() == nil {
		outs, ok = in.batchTx(ctx, ms)
	}
	if !ok && ctx.Err() == nil {
		in.log.Debug("inbox: batch handled one by one", slog.Int("deliveries", len(ms)))
	}
	if ok {
		applied := false
		for i, o := range outs {
			applied = applied || o == Applied
			if o == Skipped {
				in.logSkipped(ms[i].ev)
			}
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

// inRuns reports whether, within ms, each key's sequences follow each other
// without gaps, in order, and no event id repeats: the condition for
// claiming the batch in one statement.
func inRuns(ms []*message) bool {
	type lane struct{ topic, key string }
	last := make(map[lane]int64, len(ms))
	ids := make(map[[16]byte]struct{}, len(ms))
	for _, m := range ms {
		if _, dup := ids[m.ev.ID]; dup {
			return false
		}
		ids[m.ev.ID] = struct{}{}
		if m.ev.Key == "" {
			continue
		}
		l := lane{m.topic, m.ev.Key}
		if prev, ok := last[l]; ok && m.ev.Sequence != prev+1 {
			return false
		}
		last[l] = m.ev.Sequence
	}
	return true
}

// runTx applies ms with one claim statement for the whole batch: true when
// every event was new, next in its lane and applied.
func (in *Inbox) runTx(ctx context.Context, ms []*message) ([]Outcome, bool) {
	hctx, cancel := in.handlerCtx(ctx)
	defer cancel()
	ids := make([]pgtype.UUID, len(ms))
	topics := make([]string, len(ms))
	keys := make([]string, len(ms))
	seqs := make([]*int64, len(ms))
	shas := make([][]byte, len(ms))
	for i, m := range ms {
		ids[i], topics[i], keys[i], shas[i] = pgutil.UUID(m.ev.ID), m.topic, m.ev.Key, m.sha[:]
		if m.ev.Key != "" {
			seqs[i] = &m.ev.Sequence
		}
	}
	tx, err := in.pool.Begin(hctx)
	if err != nil {
		return nil, false
	}
	var inserted, lanes, runs int
	var parked bool
	err = tx.QueryRow(hctx, in.sql.claimRun, in.cfg.Consumer, ids, topics, keys, seqs, shas,
		in.cfg.StartLanesAtFirstSeen).Scan(&inserted, &lanes, &runs, &parked)
	if err != nil || parked || inserted != len(ms) || lanes != runs {
		rollback(tx)
		return nil, false
	}
	outs := make([]Outcome, len(ms))
	for i, m := range ms {
		if skipMarker(m.ev) {
			outs[i] = Skipped
			continue
		}
		h, e, err := in.resolve(m.ev)
		if err == nil {
			err = in.runHandler(hctx, h, tx, e)
		}
		if err != nil {
			rollback(tx)
			return nil, false
		}
		outs[i] = Applied
	}
	if err := tx.Commit(hctx); err != nil {
		return nil, false
	}
	in.observeApplied(ms, outs)
	return outs, true
}

// batchTx claims every event of ms in one round trip (a pipelined batch of
// claim statements), then runs the handlers in order, then commits.
func (in *Inbox) batchTx(ctx context.Context, ms []*message) ([]Outcome, bool) {
	hctx, cancel := in.handlerCtx(ctx)
	defer cancel()
	tx, err := in.pool.Begin(hctx)
	if err != nil {
		return nil, false
	}
	fail := func() ([]Outcome, bool) {
		rollback(tx)
		return nil, false
	}
	claims := &pgx.Batch{}
	for _, m := range ms {
		ev := m.ev
		if ev.Key != "" {
			claims.Queue(in.sql.claimKeyed, in.cfg.Consumer, pgutil.UUID(ev.ID), m.topic, ev.Key, ev.Sequence, m.sha[:],
				in.cfg.StartLanesAtFirstSeen)
		} else {
			claims.Queue(in.sql.claim, in.cfg.Consumer, pgutil.UUID(ev.ID), m.topic, m.sha[:])
		}
	}
	outs := make([]Outcome, len(ms))
	br := tx.SendBatch(hctx, claims)
	for i, m := range ms {
		var inserted, inOrder, parked bool
		if err := br.QueryRow().Scan(&inserted, &inOrder, &parked); err != nil || parked {
			br.Close()
			return fail()
		}
		switch {
		case inserted && inOrder:
			outs[i] = Applied
		case !inserted && !(m.ev.Key != "" && inOrder):
			outs[i] = Duplicate // recorded before: the claim changed nothing
		default:
			br.Close()
			return fail()
		}
	}
	if err := br.Close(); err != nil {
		return fail()
	}
	for i, m := range ms {
		if outs[i] == Duplicate {
			// The same payload is a duplicate; another one (a conflict)
			// needs the one-by-one path.
			var sha []byte
			if err := tx.QueryRow(hctx, in.sql.processedSha, in.cfg.Consumer, pgutil.UUID(m.ev.ID)).Scan(&sha); err != nil ||
				!bytes.Equal(sha, m.sha[:]) {
				return fail()
			}
			continue
		}
		if skipMarker(m.ev) {
			outs[i] = Skipped
			continue
		}
		h, e, err := in.resolve(m.ev)
		if err != nil {
			return fail()
		}
		if err := in.runHandler(hctx, h, tx, e); err != nil {
			return fail()
		}
	}
	if err := tx.Commit(hctx); err != nil {
		return nil, false
	}
	in.observeApplied(ms, outs)
	return outs, true
}

// observeApplied records the commit-to-consume latency of the applied
// events of a committed batch.
func (in *Inbox) observeApplied(ms []*message, outs []Outcome) {
	now := time.Now()
	for i, o := range outs {
		if o == Applied {
			in.metrics.applied(ms[i].ev.Time, now)
		}
	}
}
