package sweeper

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	// countCap bounds the counting of pending events per partition.
	countCap = 10000
	// stepRows is the most rows one reclaim or retry statement changes.
	stepRows = 500
	// listedRetries is the most retried events listed in a RetryReport.
	listedRetries = 100
	// loggedIDs is the most event ids written in one log line.
	loggedIDs = 20
)

// reclaim frees expired leases, releases lanes a dead relay left held and
// removes long-dead relay registrations. Three short transactions.
func (s *Sweeper) reclaim(ctx context.Context, conn *pgxpool.Conn, res *Result) error {
	rep := &ReclaimReport{FreedLeases: []FreedLease{}, ReleasedLanes: []ReleasedLane{}, DeadRelays: []DeadRelay{}}
	res.Reclaim = rep

	rows, err := conn.Query(ctx, s.sql.reclaimLeases, s.cfg.ReclaimAfter, countCap, actor, s.cfg.ID)
	if err != nil {
		return fmt.Errorf("free expired leases: %w", err)
	}
	var f FreedLease
	var oldest pgtype.UUID
	if _, err := pgx.ForEachRow(rows, []any{&f.Partition, &f.Owner, &f.LeaseUntil, &f.Pending, &oldest}, func() error {
		if oldest.Valid {
			f.OldestPending = uuid.UUID(oldest.Bytes)
		} else {
			f.OldestPending = uuid.Nil
		}
		rep.FreedLeases = append(rep.FreedLeases, f)
		rep.PendingInFreed += f.Pending
		return nil
	}); err != nil {
		return fmt.Errorf("free expired leases: %w", err)
	}
	for _, f := range rep.FreedLeases {
		attrs := []any{slog.Int("partition", f.Partition), slog.String("owner", f.Owner),
			slog.Time("lease_until", f.LeaseUntil), slog.Int64("pending", f.Pending)}
		if f.Pending > 0 {
			attrs = append(attrs, slog.String("oldest_pending_event_id", f.OldestPending.String()))
		}
		s.log.Warn("sweeper: freed the lease of a relay that stopped renewing it; its pending events go to the next relay that takes the partition", attrs...)
	}

	for {
		n, err := s.releaseOrphanLanes(ctx, conn, rep)
		if err != nil {
			return fmt.Errorf("release orphaned lane holds: %w", err)
		}
		if n < stepRows {
			break
		}
	}

	rows, err = conn.Query(ctx, s.sql.deadRelays, s.cfg.DeadRelayAfter)
	if err != nil {
		return fmt.Errorf("remove dead relays: %w", err)
	}
	var d DeadRelay
	if _, err := pgx.ForEachRow(rows, []any{&d.RelayID, &d.Hostname, &d.PID, &d.AliveUntil}, func() error {
		rep.DeadRelays = append(rep.DeadRelays, d)
		return nil
	}); err != nil {
		return fmt.Errorf("remove dead relays: %w", err)
	}
	for _, d := range rep.DeadRelays {
		s.log.Info("sweeper: removed the registration of a relay that stopped heartbeating",
			slog.String("relay_id", d.RelayID), slog.String("hostname", d.Hostname), slog.Int("pid", d.PID),
			slog.Time("alive_until", d.AliveUntil))
	}
	res.Rows = int64(len(rep.FreedLeases)+len(rep.ReleasedLanes)+len(rep.DeadRelays)) + rep.Unblocked
	return nil
}

// releaseOrphanLanes releases up to stepRows lanes in one transaction and
// returns how many it released.
func (s *Sweeper) releaseOrphanLanes(ctx context.Context, conn *pgxpool.Conn, rep *ReclaimReport) (int, error) {
	var released []ReleasedLane
	var unblocked int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		released = released[:0]
		rows, err := tx.Query(ctx, s.sql.orphanLanes, s.cfg.LaneReleaseAfter, stepRows, actor, s.cfg.ID)
		if err != nil {
			return err
		}
		var l ReleasedLane
		if _, err := pgx.ForEachRow(rows, []any{&l.Topic, &l.Key, &l.HeadMessageID}, func() error {
			released = append(released, l)
			return nil
		}); err != nil {
			return err
		}
		if len(released) == 0 {
			return nil
		}
		topics, keys := make([]string, len(released)), make([]string, len(released))
		for i, l := range released {
			topics[i], keys[i] = l.Topic, l.Key
		}
		tag, err := tx.Exec(ctx, s.sql.unblockLanes, topics, keys)
		unblocked = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	if len(released) > 0 {
		rep.ReleasedLanes = append(rep.ReleasedLanes, released...)
		rep.Unblocked += unblocked
		s.log.Warn("sweeper: released lanes still held by a head that was already published (the relay stopped before releasing them)",
			slog.Int("lanes", len(released)), slog.Int64("events_unblocked", unblocked),
			slog.String("first_lane", released[0].Topic+"/"+released[0].Key))
	}
	return len(released), nil
}

// rescue wakes the relays when events have been due too long.
func (s *Sweeper) rescue(ctx context.Context, conn *pgxpool.Conn, res *Result) error {
	rep := &RescueReport{Partitions: []RescuePartition{}}
	res.Rescue = rep
	rows, err := conn.Query(ctx, s.sql.rescueScan, s.cfg.RescueAfter, countCap)
	if err != nil {
		return err
	}
	var p RescuePartition
	if _, err := pgx.ForEachRow(rows, []any{&p.Partition, &p.Owner, &p.Leased, &p.Waiting, &p.OldestDueSeconds}, func() error {
		rep.Partitions = append(rep.Partitions, p)
		rep.Waiting += p.Waiting
		rep.OldestDueSeconds = max(rep.OldestDueSeconds, p.OldestDueSeconds)
		return nil
	}); err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, s.sql.rescueScheduled, s.cfg.RescueAfter, countCap).Scan(&rep.OverdueScheduled, &rep.LiveRelays); err != nil {
		return err
	}
	res.Rows = rep.Waiting + rep.OverdueScheduled
	if res.Rows == 0 {
		return nil
	}
	if _, err := conn.Exec(ctx, notifySQL, s.channel, "sweeper:rescue"); err != nil {
		return fmt.Errorf("notify the relays: %w", err)
	}
	rep.Notified = true
	s.metrics.rescued.Add(float64(res.Rows))
	var unleased []int
	for _, p := range rep.Partitions {
		if !p.Leased {
			unleased = append(unleased, p.Partition)
		}
	}
	attrs := []any{slog.Int64("waiting", rep.Waiting), slog.Float64("oldest_due_seconds", rep.OldestDueSeconds),
		slog.Int64("overdue_scheduled", rep.OverdueScheduled), slog.Int("partitions", len(rep.Partitions)),
		slog.Int64("live_relays", rep.LiveRelays), slog.Duration("rescue_after", s.cfg.RescueAfter)}
	switch {
	case rep.LiveRelays == 0:
		s.log.Error("sweeper: events are due and no relay is alive: start outboxkit relay", attrs...)
	case len(unleased) > 0:
		s.log.Warn("sweeper: events due too long in partitions no relay holds; woke the relays",
			append(attrs, slog.Any("unleased_partitions", unleased))...)
	default:
		s.log.Warn("sweeper: events due too long (the relay missed them); woke the relays", attrs...)
	}
	return nil
}

// retry returns eligible parked events to pending, stepRows per statement.
func (s *Sweeper) retry(ctx context.Context, conn *pgxpool.Conn, res *Result) error {
	rep := &RetryReport{Events: []RetriedEvent{}}
	res.Retry = rep
	var last int64
	for {
		rows, err := conn.Query(ctx, s.sql.retry, s.cfg.RetryAfter, s.cfg.MaxAutoRetries, last, stepRows, actor, s.cfg.ID)
		if err != nil {
			return err
		}
		var e RetriedEvent
		var retried bool
		n := 0
		if _, err := pgx.ForEachRow(rows, []any{&e.MessageID, &e.EventID, &e.Topic, &e.ErrorClass, &e.AutoRetry, &retried}, func() error {
			n++
			last = e.MessageID
			if !retried {
				rep.Exhausted++
				return nil
			}
			rep.Retried++
			res.Rows++
			if len(rep.Events) < listedRetries {
				rep.Events = append(rep.Events, e)
			}
			if rep.Retried <= loggedIDs {
				s.log.Info("sweeper: parked event retried automatically", slog.String("event_id", e.EventID.String()),
					slog.Int64("message_id", e.MessageID), slog.String("topic", e.Topic),
					slog.String("error_class", e.ErrorClass), slog.Int("auto_retry", e.AutoRetry),
					slog.Int("max_auto_retries", s.cfg.MaxAutoRetries))
			}
			return nil
		}); err != nil {
			return err
		}
		if n < stepRows {
			return nil
		}
	}
}

// retention deletes what is past its window in bounded statements.
func (s *Sweeper) retention(ctx context.Context, conn *pgxpool.Conn, res *Result) error {
	rep := &RetentionReport{}
	res.Retention = rep
	if err := conn.QueryRow(ctx, cutoffSQL, s.cfg.PublishedRetention, s.cfg.ProcessedRetention).
		Scan(&rep.PublishedCutoff, &rep.ProcessedCutoff); err != nil {
		return err
	}
	p := &pacer{pause: s.cfg.DeletePause}
	timed := func(f func() error) error {
		err := p.step(ctx, f)
		rep.Statements, rep.LongestStatement = p.statements, p.longest
		return err
	}

	var last int64
	for {
		var next *int64
		var allNew bool
		var msgs, atts, held int64
		err := timed(func() error {
			return conn.QueryRow(ctx, s.sql.retentionChunk, last, s.cfg.DeleteBatchSize, rep.PublishedCutoff).
				Scan(&next, &allNew, &msgs, &atts, &held)
		})
		if err != nil {
			return fmt.Errorf("delete published events: %w", err)
		}
		rep.DeletedMessages += msgs
		rep.DeletedAttempts += atts
		rep.HeldMessages += held
		res.Rows += msgs + atts
		if next == nil || allNew {
			break
		}
		last = *next
	}

	for {
		var n int64
		err := timed(func() error {
			tag, err := conn.Exec(ctx, s.sql.retentionInbox, rep.ProcessedCutoff, s.cfg.DeleteBatchSize)
			n = tag.RowsAffected()
			return err
		})
		if err != nil {
			return fmt.Errorf("delete inbox records: %w", err)
		}
		rep.DeletedProcessed += n
		res.Rows += n
		if n < int64(s.cfg.DeleteBatchSize) {
			s.metrics.held.WithLabelValues(string(JobRetention)).Set(float64(rep.HeldMessages))
			return nil
		}
	}
}

// pacer runs the statements of a long walk (retention, redaction) one at a
// time, sleeping between two of them: pause when positive, nothing when
// negative, and as long as the previous statement took when zero, so the
// walk keeps one database backend busy at most half the time.
type pacer struct {
	pause      time.Duration
	previous   time.Duration
	statements int
	longest    time.Duration
}

func (p *pacer) step(ctx context.Context, f func() error) error {
	pause := p.pause
	if pause == 0 {
		pause = p.previous
	}
	if p.statements > 0 && pause > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
	}
	start := time.Now()
	err := f()
	p.previous = time.Since(start)
	p.statements++
	p.longest = max(p.longest, p.previous)
	return err
}

// reconcile compares published and applied events of one window, in one
// read-only snapshot.
func (s *Sweeper) reconcile(ctx context.Context, conn *pgxpool.Conn, res *Result) error {
	rep := &ReconcileReport{Topics: []TopicCounts{}, Consumers: []ConsumerCounts{}}
	res.Reconcile = rep
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only

	var lookbackFrom time.Time
	if err := tx.QueryRow(ctx, `SELECT now() - $1::interval - $2::interval, now() - $1::interval, now() - $1::interval - $2::interval - $3::interval`,
		s.cfg.ReconcileLag, s.cfg.ReconcileWindow, s.cfg.ConsumerLookback).Scan(&rep.From, &rep.To, &lookbackFrom); err != nil {
		return err
	}

	var consumers, topics []string
	if len(s.cfg.Consumers) > 0 {
		for c, ts := range s.cfg.Consumers {
			for _, t := range ts {
				consumers, topics = append(consumers, c), append(topics, t)
			}
		}
	} else {
		rows, err := tx.Query(ctx, s.sql.discoverConsumers, lookbackFrom, rep.To.Add(s.cfg.ReconcileLag))
		if err != nil {
			return fmt.Errorf("discover consumers: %w", err)
		}
		var c, t string
		if _, err := pgx.ForEachRow(rows, []any{&c, &t}, func() error {
			consumers, topics = append(consumers, c), append(topics, t)
			return nil
		}); err != nil {
			return fmt.Errorf("discover consumers: %w", err)
		}
	}

	rows, err := tx.Query(ctx, s.sql.reconcileTopics, rep.From, rep.To)
	if err != nil {
		return err
	}
	var tc TopicCounts
	if _, err := pgx.ForEachRow(rows, []any{&tc.Topic, &tc.Enqueued, &tc.Published, &tc.Pending, &tc.Parked, &tc.Dropped}, func() error {
		rep.Topics = append(rep.Topics, tc)
		return nil
	}); err != nil {
		return err
	}

	if len(consumers) > 0 {
		rows, err = tx.Query(ctx, s.sql.reconcileCounts, consumers, topics, rep.From, rep.To)
		if err != nil {
			return err
		}
		var cc ConsumerCounts
		if _, err := pgx.ForEachRow(rows, []any{&cc.Consumer, &cc.Topic, &cc.Published, &cc.Applied, &cc.DeadLettered}, func() error {
			cc.Missing = cc.Published - cc.Applied - cc.DeadLettered
			cc.MissingEventIDs = nil
			rep.Consumers = append(rep.Consumers, cc)
			return nil
		}); err != nil {
			return err
		}
	}
	for i := range rep.Consumers {
		c := &rep.Consumers[i]
		res.Rows += c.Published
		if c.Missing == 0 {
			continue
		}
		rows, err := tx.Query(ctx, s.sql.gaps, c.Consumer, c.Topic, rep.From, rep.To, s.cfg.ReconcileMaxGaps)
		if err != nil {
			return err
		}
		if c.MissingEventIDs, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}

	s.metrics.reconcileMissing.Reset()
	for _, c := range rep.Consumers {
		s.metrics.reconcileMissing.WithLabelValues(c.Consumer, c.Topic).Set(float64(c.Missing))
		if c.Missing == 0 {
			continue
		}
		ids := c.MissingEventIDs[:min(len(c.MissingEventIDs), loggedIDs)]
		s.log.Warn("sweeper: reconcile: published events the consumer neither applied nor dead-lettered",
			slog.String("consumer", c.Consumer), slog.String("topic", c.Topic), slog.Int64("published", c.Published),
			slog.Int64("applied", c.Applied), slog.Int64("dead_lettered", c.DeadLettered), slog.Int64("missing", c.Missing),
			slog.Time("from", rep.From), slog.Time("to", rep.To), slog.Any("event_ids", ids))
	}
	return nil
}

// alarms measures the health gauges and raises the alarms past their
// thresholds, in one read-only transaction with a statement timeout.
func (s *Sweeper) alarms(ctx context.Context, conn *pgxpool.Conn, res *Result) error {
	rep := &AlarmsReport{Topics: []TopicHealth{}, DeadLetters: []ConsumerHealth{}, Partitions: []PartitionHealth{},
		LongTransactions: []LongTransaction{}, Alarms: []Alarm{}}
	res.Alarms = rep
	err := pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = '30s'`); err != nil {
			return err
		}
		topics := map[string]*TopicHealth{}
		topic := func(name string) *TopicHealth {
			if t, ok := topics[name]; ok {
				return t
			}
			t := &TopicHealth{Topic: name}
			topics[name] = t
			return t
		}
		var name string
		var n int64
		var secs float64
		rows, err := tx.Query(ctx, s.sql.pendingAge)
		if err != nil {
			return err
		}
		if _, err := pgx.ForEachRow(rows, []any{&name, &n, &secs}, func() error {
			t := topic(name)
			t.DuePending, t.OldestDueSeconds = n, secs
			return nil
		}); err != nil {
			return err
		}
		if rows, err = tx.Query(ctx, s.sql.parked); err != nil {
			return err
		}
		if _, err := pgx.ForEachRow(rows, []any{&name, &n}, func() error {
			topic(name).Parked = n
			return nil
		}); err != nil {
			return err
		}
		for _, t := range topics {
			rep.Topics = append(rep.Topics, *t)
		}
		sort.Slice(rep.Topics, func(i, j int) bool { return rep.Topics[i].Topic < rep.Topics[j].Topic })

		if rows, err = tx.Query(ctx, s.sql.deadLetters); err != nil {
			return err
		}
		var ch ConsumerHealth
		if _, err := pgx.ForEachRow(rows, []any{&ch.Consumer, &ch.DeadLetters}, func() error {
			rep.DeadLetters = append(rep.DeadLetters, ch)
			return nil
		}); err != nil {
			return err
		}

		if rows, err = tx.Query(ctx, s.sql.partitions, s.cfg.StuckPartitionAfter); err != nil {
			return err
		}
		var ph PartitionHealth
		var waiting *float64
		if _, err := pgx.ForEachRow(rows, []any{&ph.Partition, &ph.Owner, &ph.LeaseExpired, &waiting}, func() error {
			ph.Stuck, ph.WaitingSeconds = waiting != nil, 0
			if waiting != nil {
				ph.WaitingSeconds = *waiting
			}
			rep.Partitions = append(rep.Partitions, ph)
			return nil
		}); err != nil {
			return err
		}

		if err := tx.QueryRow(ctx, s.sql.scheduledConf).Scan(&rep.ScheduledConflicts); err != nil {
			return err
		}

		if rows, err = tx.Query(ctx, longTransactionsSQL); err != nil {
			return err
		}
		var lt LongTransaction
		_, err = pgx.ForEachRow(rows, []any{&lt.PID, &lt.User, &lt.Application, &lt.State, &lt.AgeSeconds, &lt.HoldsHorizon, &lt.WaitEvent}, func() error {
			rep.LongTransactions = append(rep.LongTransactions, lt)
			return nil
		})
		return err
	})
	if err != nil {
		return err
	}
	s.exportHealth(rep)
	s.raiseAlarms(rep)
	res.Rows = int64(len(rep.Alarms))
	return nil
}

func (s *Sweeper) exportHealth(rep *AlarmsReport) {
	m := s.metrics
	m.oldestPending.Reset()
	m.parked.Reset()
	for _, t := range rep.Topics {
		if t.DuePending > 0 {
			m.oldestPending.WithLabelValues(t.Topic).Set(t.OldestDueSeconds)
		}
		if t.Parked > 0 {
			m.parked.WithLabelValues(t.Topic).Set(float64(t.Parked))
		}
	}
	m.deadLetters.Reset()
	for _, d := range rep.DeadLetters {
		m.deadLetters.WithLabelValues(d.Consumer).Set(float64(d.DeadLetters))
	}
	stuck, expired := 0, 0
	for _, p := range rep.Partitions {
		if p.Stuck {
			stuck++
		}
		if p.LeaseExpired {
			expired++
		}
	}
	m.stuckPartitions.Set(float64(stuck))
	m.expiredLeases.Set(float64(expired))
	longest := 0.0
	if len(rep.LongTransactions) > 0 {
		longest = rep.LongTransactions[0].AgeSeconds
	}
	m.longestTx.Set(longest)
}

func (s *Sweeper) raiseAlarms(rep *AlarmsReport) {
	raise := func(a Alarm, attrs ...any) {
		rep.Alarms = append(rep.Alarms, a)
		s.log.Warn("sweeper alarm: "+a.Message, append([]any{slog.String("alarm", a.Kind), slog.String("subject", a.Subject),
			slog.Float64("value", a.Value), slog.Float64("threshold", a.Threshold)}, attrs...)...)
	}
	c := s.cfg
	for _, t := range rep.Topics {
		if c.PendingAgeWarn > 0 && t.DuePending > 0 && t.OldestDueSeconds > c.PendingAgeWarn.Seconds() {
			raise(Alarm{Kind: AlarmPendingAge, Subject: t.Topic, Value: t.OldestDueSeconds, Threshold: c.PendingAgeWarn.Seconds(),
				Message: fmt.Sprintf("topic %s: the oldest due event has waited %s for the relay (%d due)",
					t.Topic, seconds(t.OldestDueSeconds), t.DuePending)},
				slog.String("topic", t.Topic), slog.Int64("due_pending", t.DuePending))
		}
		if c.ParkedWarn > 0 && t.Parked >= int64(c.ParkedWarn) {
			raise(Alarm{Kind: AlarmParked, Subject: t.Topic, Value: float64(t.Parked), Threshold: float64(c.ParkedWarn),
				Message: fmt.Sprintf("topic %s: %d parked events need an operator (outboxkit dlq list --topic %s)", t.Topic, t.Parked, t.Topic)},
				slog.String("topic", t.Topic), slog.Int64("parked", t.Parked))
		}
	}
	for _, d := range rep.DeadLetters {
		if c.DeadLetterWarn > 0 && d.DeadLetters >= int64(c.DeadLetterWarn) {
			raise(Alarm{Kind: AlarmDeadLetters, Subject: d.Consumer, Value: float64(d.DeadLetters), Threshold: float64(c.DeadLetterWarn),
				Message: fmt.Sprintf("consumer %s: %d open dead letters (outboxkit dlq list --consumer %s)", d.Consumer, d.DeadLetters, d.Consumer)},
				slog.String("consumer", d.Consumer), slog.Int64("dead_letters", d.DeadLetters))
		}
	}
	for _, p := range rep.Partitions {
		if !p.Stuck {
			continue
		}
		lease := "no relay holds it"
		switch {
		case p.Owner != "" && p.LeaseExpired:
			lease = "the lease of relay " + p.Owner + " expired"
		case p.Owner != "":
			lease = "relay " + p.Owner + " holds it but makes no progress"
		}
		raise(Alarm{Kind: AlarmStuckPartition, Subject: strconv.Itoa(p.Partition), Value: p.WaitingSeconds,
			Threshold: c.StuckPartitionAfter.Seconds(),
			Message:   fmt.Sprintf("partition %d: an event has been due for %s; %s", p.Partition, seconds(p.WaitingSeconds), lease)},
			slog.Int("partition", p.Partition), slog.String("owner", p.Owner), slog.Bool("lease_expired", p.LeaseExpired))
	}
	for _, t := range rep.LongTransactions {
		if c.LongTransactionWarn > 0 && t.AgeSeconds > c.LongTransactionWarn.Seconds() {
			raise(Alarm{Kind: AlarmLongTransaction, Subject: strconv.Itoa(t.PID), Value: t.AgeSeconds,
				Threshold: c.LongTransactionWarn.Seconds(),
				Message: fmt.Sprintf("a transaction has been open for %s (pid %d, application %q, %s): vacuum cannot remove dead outbox rows meanwhile",
					seconds(t.AgeSeconds), t.PID, t.Application, t.State)},
				slog.Int("pid", t.PID), slog.String("user", t.User), slog.String("application", t.Application),
				slog.String("state", t.State), slog.Bool("holds_horizon", t.HoldsHorizon))
		}
	}
	if rep.ScheduledConflicts > 0 {
		raise(Alarm{Kind: AlarmScheduledConflict, Subject: "scheduled", Value: float64(rep.ScheduledConflicts), Threshold: 1,
			Message: fmt.Sprintf("%d delayed events cannot move into the outbox: their event id is already there (see outbox.scheduled.conflict)",
				rep.ScheduledConflicts)})
	}
}

// seconds formats a number of seconds for people: 10m1s, 1.25s.
func seconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	if d < time.Minute {
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
