package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// worker is one claim-publish-mark loop over a subset of the partitions.
type worker struct {
	r  *Relay
	id int
	// checkScheduledAt is when the worker next looks for due delayed events.
	checkScheduledAt time.Time
	sleeping         bool
	dbErrors         int
}

func (r *Relay) work(ctx context.Context, id int) {
	w := &worker{r: r, id: id}
	defer r.setSleeping(context.WithoutCancel(ctx), id, false)
	for ctx.Err() == nil {
		if d := r.outageWait(); d > 0 {
			w.sleep(ctx, d)
			continue
		}
		parts, tokens := r.leases.checkout(id, r.cfg.Workers)
		if len(parts) == 0 {
			w.sleep(ctx, r.cfg.PollInterval)
			continue
		}
		n, err := w.round(ctx, parts, tokens)
		r.leases.checkin(parts)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.dbErrors++
			d := backoff(100*time.Millisecond, 5*time.Second, w.dbErrors)
			r.log.Warn("relay: database round failed; retrying", slog.Int("worker", id),
				slog.String("error_class", string(failure.ClassOf(err))), slog.Any("error", err), slog.Duration("retry_in", d))
			w.sleep(ctx, d)
			continue
		}
		w.dbErrors = 0
		if n > 0 {
			if w.sleeping {
				w.sleeping = false
				r.setSleeping(ctx, id, false)
			}
			continue
		}
		if !w.sleeping {
			// Flag idle first, then look once more before sleeping.
			w.sleeping = true
			r.setSleeping(ctx, id, true)
			continue
		}
		wait := r.cfg.PollInterval
		if d := time.Until(w.checkScheduledAt); d < wait {
			wait = max(d, 0)
		}
		if wait > 0 {
			w.sleep(ctx, wait)
		}
	}
}

// sleep waits for d, a wake-up or the end of ctx. A wake-up (NOTIFY, new
// leases) also makes the next round look at delayed events.
func (w *worker) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-w.r.wakeups[w.id]:
		w.checkScheduledAt = time.Time{}
	}
}

// round promotes due delayed events, claims one batch, publishes it and
// records the outcome. It returns the number of events claimed.
func (w *worker) round(ctx context.Context, parts []int32, tokens []int64) (int, error) {
	r := w.r
	if !time.Now().Before(w.checkScheduledAt) {
		if err := w.promote(ctx, parts); err != nil {
			return 0, fmt.Errorf("promote delayed events: %w", err)
		}
	}
	perPartition := max(50, 2*r.cfg.BatchSize/len(parts)+1)
	msgs, err := w.claim(ctx, parts, perPartition)
	if err != nil {
		return 0, fmt.Errorf("claim: %w", err)
	}
	if !r.keyAtomic {
		msgs = firstOfEachLane(msgs)
	}
	if len(msgs) > r.cfg.BatchSize {
		// Cutting the id-ordered union keeps each partition's part a prefix
		// of its own id order.
		msgs = msgs[:r.cfg.BatchSize]
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	// The batch in flight is finished even when ctx ends: publish, then mark.
	flight := context.WithoutCancel(ctx)
	spanCtx, span := r.tracer.Start(flight, "outboxkit.relay.publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithLinks(traceLinks(msgs)...),
		trace.WithAttributes(attribute.Int("messaging.batch.message_count", len(msgs)), attribute.Int("outboxkit.partitions", len(parts))))
	pubCtx, cancel := context.WithTimeout(spanCtx, r.cfg.PublishTimeout)
	started := time.Now()
	results, batchErr := r.cfg.Publisher.Publish(pubCtx, msgs)
	cancel()
	elapsed := time.Since(started)
	if batchErr == nil && len(results) != len(msgs) {
		batchErr = fmt.Errorf("relay: publisher returned %d results for %d messages", len(results), len(msgs))
	}
	if batchErr != nil {
		span.RecordError(batchErr)
		span.SetStatus(codes.Error, string(failure.ClassOf(batchErr)))
		r.cfg.Metrics.batch(msgs, nil, elapsed)
	} else {
		r.cfg.Metrics.batch(msgs, results, elapsed)
	}
	span.End()
	return len(msgs), w.record(flight, parts, tokens, msgs, results, batchErr, started, elapsed)
}

// claim reads the next pending events of parts, at most perPartition per
// partition, with the plan pinned by claimPlanSQL in the same round trip.
func (w *worker) claim(ctx context.Context, parts []int32, perPartition int) ([]Message, error) {
	b := &pgx.Batch{}
	b.Queue(w.r.sql.claimPlan)
	b.Queue(w.r.sql.claim, parts, perPartition)
	br := w.r.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	msgs, err := pgx.CollectRows(rows, scanMessage)
	if err != nil {
		return nil, err
	}
	return msgs, br.Close()
}

// releaseLanes lets lanes flow again whose blocking head was just
// published (an operator replayed or corrected it).
func (w *worker) releaseLanes(ctx context.Context, published []int64) error {
	r := w.r
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	rows, err := tx.Query(ctx, r.sql.releaseLanes, published)
	if err != nil {
		return err
	}
	var topics, keys []string
	var topic, key string
	if _, err := pgx.ForEachRow(rows, []any{&topic, &key}, func() error {
		topics, keys = append(topics, topic), append(keys, key)
		return nil
	}); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, r.sql.unblockLanes, topics, keys); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	r.log.Info("relay: blocked lanes released after their head was published", slog.Int("lanes", len(topics)))
	r.cfg.Metrics.released(len(topics))
	r.wakeAll()
	return nil
}

// traceLinks links the batch's span to the trace each event was enqueued in
// (at most 32 links: enough to follow, bounded for big batches).
func traceLinks(msgs []Message) []trace.Link {
	var links []trace.Link
	prop := propagation.TraceContext{}
	for i := range msgs {
		if msgs[i].TraceParent == "" {
			continue
		}
		carrier := propagation.MapCarrier{"traceparent": msgs[i].TraceParent, "tracestate": msgs[i].TraceState}
		sc := trace.SpanContextFromContext(prop.Extract(context.Background(), carrier))
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
			if len(links) == 32 {
				break
			}
		}
	}
	return links
}

// firstOfEachLane keeps keyless events and the first event of each lane:
// the others stay pending for the next round.
func firstOfEachLane(msgs []Message) []Message {
	seen := make(map[laneID]bool, len(msgs))
	out := msgs[:0]
	for _, m := range msgs {
		if m.Key != "" {
			id := laneID{m.Topic, m.Key}
			if seen[id] {
				continue
			}
			seen[id] = true
		}
		out = append(out, m)
	}
	return out
}

func scanMessage(row pgx.CollectableRow) (Message, error) {
	var m Message
	var attempts int
	err := row.Scan(&m.ID, &m.EventID, &m.Topic, &m.Key, &m.Partition, &m.Sequence, &m.Type, &m.Version,
		&m.Payload, &m.ContentType, &m.Headers, &m.CorrelationID, &m.CausationID,
		&m.TraceParent, &m.TraceState, &m.Source, &m.CreatedAt, &attempts)
	m.Attempt = attempts + 1
	return m, err
}

// promote moves due delayed events of the worker's partitions into
// messages, then schedules the next look.
func (w *worker) promote(ctx context.Context, parts []int32) error {
	r := w.r
	const chunk = 1000
	for {
		tag, err := r.pool.Exec(ctx, r.sql.promote, parts, chunk)
		if pgutil.SQLState(err) == pgutil.UniqueViolation {
			// An id enqueued both delayed and not (two racing producers):
			// set the delayed copy aside for an operator and go on.
			ct, cerr := r.pool.Exec(ctx, r.sql.markConflict, parts)
			if cerr != nil {
				return cerr
			}
			r.log.Error("relay: delayed event id already enqueued; kept aside in scheduled with a conflict note",
				slog.Int64("rows", ct.RowsAffected()))
			if ct.RowsAffected() == 0 {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		r.cfg.Metrics.promotedEvents(tag.RowsAffected())
		if tag.RowsAffected() < chunk {
			break
		}
	}
	var secs *float64
	if err := r.pool.QueryRow(ctx, r.sql.nextDue, parts).Scan(&secs); err != nil {
		return err
	}
	next := r.cfg.PollInterval
	if secs != nil {
		next = min(next, max(time.Duration(*secs*float64(time.Second)), 0))
	}
	w.checkScheduledAt = time.Now().Add(next)
	return nil
}

type laneID struct{ topic, key string }

// failed is one event whose publish failed, with what happens next.
type failed struct {
	msg     *Message
	err     error
	class   failure.Class
	outcome string // "retry", "parked", "not_counted"
	delay   time.Duration
	policy  topicPolicy
	headOf  bool // first failure of its lane in this batch: the lane is held
}

// record marks the acknowledged events published and handles the failed
// ones. All marks are fenced by the partition leases.
func (w *worker) record(ctx context.Context, parts []int32, tokens []int64, msgs []Message,
	results []Result, batchErr error, started time.Time, elapsed time.Duration) error {
	r := w.r
	if batchErr != nil {
		r.outageFailed(batchErr)
		// One attempt row for the batch's first event keeps the outage in
		// the history without writing a row per event per retry round.
		f := []failed{{msg: &msgs[0], err: batchErr, class: failure.DependencyOutage, outcome: "not_counted"}}
		return w.recordFailures(ctx, parts, tokens, f, started, elapsed)
	}

	var ackIDs []int64
	var acks []string
	var fails []failed
	laneFailed := map[laneID]bool{}
	lanes := map[laneID]bool{}
	outageOnly := true
	for i := range msgs {
		m := &msgs[i]
		lanes[laneID{m.Topic, laneKeyOf(m)}] = true
		if results[i].Err == nil {
			ackIDs = append(ackIDs, m.ID)
			acks = append(acks, results[i].Ack)
			continue
		}
		f := failed{msg: m, err: results[i].Err, class: failure.ClassOf(results[i].Err), policy: r.policy(m.Topic)}
		if f.class != failure.Transient && f.class != failure.DependencyOutage {
			outageOnly = false
		}
		if m.Key != "" {
			id := laneID{m.Topic, m.Key}
			f.headOf = !laneFailed[id]
			laneFailed[id] = true
			if !f.headOf {
				// A later event of a lane whose head failed: it stays pending
				// behind the head's hold; it did not use an attempt of its own.
				continue
			}
		}
		fails = append(fails, f)
	}
	// A KeyAtomic publisher never acknowledges a lane's event after a failed
	// one; if one did, the broker already has the events out of order: say
	// so loudly (the inbox's sequence guard still applies them in order).
	for i := range msgs {
		m := &msgs[i]
		if results[i].Err == nil && m.Key != "" && laneFailed[laneID{m.Topic, m.Key}] && !w.isBefore(msgs, results, i) {
			r.log.Error("relay: publisher acknowledged an event after a failed earlier event of its key; the broker has them out of order",
				slog.String("event_id", m.EventID.String()), slog.String("topic", m.Topic), slog.Int64("sequence", m.Sequence))
		}
	}
	// Every event of two or more lanes failing transiently at once is the
	// broker, not the events: back off as a whole and count nothing.
	if len(ackIDs) == 0 && len(lanes) >= 2 && outageOnly {
		r.outageFailed(results[0].Err)
		for i := range fails {
			fails[i].outcome, fails[i].class = "not_counted", failure.DependencyOutage
		}
		return w.recordFailures(ctx, parts, tokens, fails[:1], started, elapsed)
	}
	if len(ackIDs) > 0 {
		r.outageOver()
		n, headPublished, err := r.mark(ctx, parts, tokens, ackIDs, acks, elapsed)
		if err != nil {
			return fmt.Errorf("mark published: %w", err)
		}
		if headPublished {
			if err := w.releaseLanes(ctx, ackIDs); err != nil {
				return fmt.Errorf("release lanes: %w", err)
			}
		}
		if n < int64(len(ackIDs)) {
			r.log.Warn("relay: lease lost before marking; the events stay pending and the new owner publishes them again (duplicates, never losses)",
				slog.Int("acknowledged", len(ackIDs)), slog.Int64("marked", n))
		}
	}
	if len(fails) == 0 {
		return nil
	}
	outage := false
	for i := range fails {
		f := &fails[i]
		switch {
		case !f.class.CountsAttempt():
			f.outcome = "not_counted"
			outage = true
		case !f.class.Retry() || f.msg.Attempt >= f.policy.maxAttempts:
			f.outcome = "parked"
		default:
			f.outcome = "retry"
			f.delay = backoff(r.cfg.BackoffBase, r.cfg.BackoffMax, f.msg.Attempt)
		}
	}
	if outage {
		r.outageFailed(fails[0].err)
	}
	return w.recordFailures(ctx, parts, tokens, fails, started, elapsed)
}

// mark records acknowledged events as published (markPublishedSQL) and
// returns how many it marked and whether one was the head a blocked lane
// waits for. It does not wait for the WAL flush unless Config.DurableMarks:
// see there why losing a mark is safe.
func (r *Relay) mark(ctx context.Context, parts []int32, tokens []int64, ids []int64, acks []string,
	elapsed time.Duration) (marked int64, headPublished bool, err error) {
	args := []any{r.cfg.RelayID, parts, tokens, ids, acks, elapsed.Milliseconds()}
	if r.cfg.DurableMarks {
		err = r.pool.QueryRow(ctx, r.sql.markPublished, args...).Scan(&marked, &headPublished)
		return marked, headPublished, err
	}
	err = r.withoutFlush(ctx, func(b *pgx.Batch) {
		b.Queue(r.sql.markPublished, args...).QueryRow(func(row pgx.Row) error {
			return row.Scan(&marked, &headPublished)
		})
	})
	return marked, headPublished, err
}

// withoutFlush runs the statements queue adds in one transaction, sent in
// one round trip, that commits without waiting for its WAL flush
// (synchronous_commit = off): for writes whose loss in a database crash is
// harmless.
func (r *Relay) withoutFlush(ctx context.Context, queue func(b *pgx.Batch)) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(asyncCommitSQL)
		queue(b)
		return tx.SendBatch(ctx, b).Close()
	})
}

// isBefore reports whether msgs[i] comes before every failed event of its
// lane in this batch.
func (w *worker) isBefore(msgs []Message, results []Result, i int) bool {
	for j := 0; j < i; j++ {
		if results[j].Err != nil && msgs[j].Topic == msgs[i].Topic && msgs[j].Key == msgs[i].Key {
			return false
		}
	}
	return true
}

func laneKeyOf(m *Message) string {
	if m.Key == "" {
		return "\x00" + m.EventID.String() // each keyless event is its own lane
	}
	return m.Key
}

// recordFailures writes the attempt history, retries, parks and lane holds
// of one batch in one transaction, behind the lease fence. A deadlock with
// a producer or operator on a lane row is retried.
func (w *worker) recordFailures(ctx context.Context, parts []int32, tokens []int64, fails []failed,
	started time.Time, elapsed time.Duration) error {
	var err error
	for try := 1; try <= 3; try++ {
		err = w.recordFailuresTx(ctx, parts, tokens, fails, started, elapsed)
		if s := pgutil.SQLState(err); s != "40P01" && s != "40001" {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("record failed attempts: %w", err)
	}
	for _, f := range fails {
		w.r.cfg.Metrics.failed(&f)
		lvl := slog.LevelWarn
		if f.outcome == "parked" {
			lvl = slog.LevelError
		}
		w.r.log.Log(ctx, lvl, "relay: publish failed", slog.String("event_id", f.msg.EventID.String()),
			slog.String("topic", f.msg.Topic), slog.Int("partition", int(f.msg.Partition)),
			slog.Int("attempt", f.msg.Attempt), slog.String("error_class", string(f.class)),
			slog.String("outcome", f.outcome), slog.Duration("retry_in", f.delay), slog.Any("error", f.err))
	}
	return nil
}

func (w *worker) recordFailuresTx(ctx context.Context, parts []int32, tokens []int64, fails []failed,
	started time.Time, elapsed time.Duration) error {
	r := w.r
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit this is a no-op
	rows, err := tx.Query(ctx, r.sql.fence, r.cfg.RelayID, parts, tokens)
	if err != nil {
		return err
	}
	owned, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return err
	}
	valid := map[int32]bool{}
	for _, p := range owned {
		valid[p] = true
	}
	// Lanes are locked in (topic, key) order, as producers' batches do.
	sorted := make([]failed, 0, len(fails))
	for _, f := range fails {
		if valid[f.msg.Partition] {
			sorted = append(sorted, f)
		}
	}
	if len(sorted) < len(fails) {
		r.log.Warn("relay: lease lost before recording failures; the new owner retries those events",
			slog.Int("failures", len(fails)), slog.Int("recorded", len(sorted)))
	}
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i].msg, sorted[j].msg
		if a.Topic != b.Topic {
			return a.Topic < b.Topic
		}
		return a.Key < b.Key
	})
	b := &pgx.Batch{}
	for _, f := range sorted {
		m := f.msg
		errText := truncate(f.err.Error(), 4000)
		attemptNo := m.Attempt
		switch f.outcome {
		case "retry":
			b.Queue(r.sql.retry, m.ID, f.delay, errText, string(f.class))
		case "parked":
			b.Queue(r.sql.park, m.ID, errText, string(f.class))
			lanePolicy := ""
			if m.Key != "" {
				lanePolicy = f.policy.onPark
			}
			b.Queue(r.sql.auditPark, "relay:"+r.cfg.RelayID, m.EventID.String(),
				fmt.Sprintf("%s: %s", f.class, truncate(errText, 1000)), attemptNo, string(f.class),
				m.ID, m.Topic, m.Key, lanePolicy)
		}
		b.Queue(r.sql.attempt, m.ID, m.EventID, attemptNo, started, elapsed.Milliseconds(), r.cfg.RelayID,
			string(f.class), errText, f.outcome)
		if m.Key == "" || !f.headOf {
			continue
		}
		switch {
		case f.outcome == "retry":
			b.Queue(r.sql.holdLane, m.Topic, m.Key, f.delay, m.ID)
			b.Queue(r.sql.deferLane, m.Topic, m.Key, m.Sequence, f.delay)
		case f.outcome == "parked" && f.policy.onPark == "skip":
			b.Queue(r.sql.releaseLane, m.Topic, m.Key)
			b.Queue(r.sql.releaseLater, m.Topic, m.Key, m.Sequence)
		case f.outcome == "parked":
			b.Queue(r.sql.blockLane, m.Topic, m.Key, m.ID)
			b.Queue(r.sql.blockLater, m.Topic, m.Key, m.Sequence)
		}
	}
	if b.Len() > 0 {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// truncate cuts s to at most n bytes on a rune boundary and makes it valid
// UTF-8 (broker error texts end up in text columns).
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
