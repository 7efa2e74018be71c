package chaos_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// invariant is one property the checker proves; count is the number of
// violations found, with a few examples.
type invariant struct {
	name     string
	count    int
	examples []string
}

func (inv *invariant) add(format string, args ...any) {
	inv.count++
	if len(inv.examples) < 5 {
		inv.examples = append(inv.examples, fmt.Sprintf(format, args...))
	}
}

// report is what the checker found.
type report struct {
	invariants []*invariant
	byName     map[string]*invariant

	committed, rolledBack         int
	uncertainIn, uncertainOut     int
	byKind                        map[kind]int
	byTopic                       map[string]int
	keyless                       int
	applied                       map[string]int
	kafkaRecords, kafkaDistinct   int
	rabbitCopies, rabbitDistinct  int
	inboxDuplicates, inboxApplied int64
	injectedFailures, injectedPan int64
	heldForOrder                  int
	expectedDeadLetters           int
	expectedParks                 int
	marksAfterResume              int
	leaseChanges                  int
	e2eP50, e2eP99, e2eMax        time.Duration
}

func (rep *report) inv(name string) *invariant {
	if inv, ok := rep.byName[name]; ok {
		return inv
	}
	inv := &invariant{name: name}
	rep.byName[name] = inv
	rep.invariants = append(rep.invariants, inv)
	return inv
}

// The invariants, in the order of the summary.
const (
	invLost          = "lost: committed, never applied by its consumer"
	invLostBroker    = "lost at the broker: committed, not in Kafka / the RabbitMQ audit queue"
	invGhost         = "ghost: rolled-back or unknown event in the outbox, a broker or the effects"
	invAtomic        = "atomicity: event without its business row or the reverse"
	invDouble        = "double-applied: an event's effects committed twice by one consumer"
	invOrder         = "order violations: per-key sequence not strictly 1, 2, 3... at apply"
	invOrderLane     = "order: applied order differs from the outbox lane order"
	invBrokerOrder   = "broker order: a key's sequence skips ahead in a Kafka partition or the queue"
	invBalance       = "money: a key's balance differs from the committed amounts"
	invStuck         = "stuck: pending or blocked in the outbox after the drain"
	invPark          = "unexpected park (outbox) or dead letter (inbox)"
	invExpected      = "expected park or dead letter missing (unroutable, no handler)"
	invAudit         = "park without an audit entry"
	invFence         = "mark outside the marking relay's lease (fencing)"
	invPauseFence    = "mark by a paused relay after SIGCONT under a lease it lost"
	invLeases        = "leases still held after every relay stopped"
	invCrash         = "crash, panic, data race or unclean stop of a process"
	invUncertainGone = "commit reported as failed but found committed and not applied"
)

func consumerOf(topic string) string {
	if topic == topicKafka {
		return consumerKafka
	}
	return consumerRabbit
}

// check reads the database and the brokers and proves the invariants. It
// trusts the producers' ledger for what was committed and rolled back, the
// database for what exists, the brokers for what was published, and the
// consumers' business tables for what was applied; the components'
// bookkeeping is only compared against them.
func (r *run) check(ctx context.Context, stopErrs []string) *report {
	t := r.t
	rep := &report{byName: map[string]*invariant{}, byKind: map[kind]int{}, byTopic: map[string]int{}, applied: map[string]int{}}
	for _, n := range []string{invLost, invLostBroker, invGhost, invAtomic, invDouble, invOrder, invOrderLane,
		invBrokerOrder, invBalance, invStuck, invPark, invExpected, invAudit, invFence, invPauseFence, invLeases,
		invCrash} {
		rep.inv(n)
	}
	pool := r.e.db.Pool
	query := func(sql string, args ...any) pgx.Rows {
		rows, err := pool.Query(ctx, sql, args...)
		if err != nil {
			t.Fatalf("checker: %v\n%s", err, sql)
		}
		return rows
	}

	// What exists in the database.
	transfers := map[uuid.UUID]bool{}
	{
		rows := query(`SELECT event_id FROM chaos.transfers`)
		ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			transfers[id] = true
		}
	}
	type outboxRow struct {
		topic, key, status, class, publishedBy string
		seq                                    int64
	}
	outboxRows := map[uuid.UUID]outboxRow{}
	{
		rows := query(`SELECT event_id, topic, key, coalesce(sequence, 0), status, coalesce(last_error_class, ''),
       coalesce(published_by, '') FROM outbox.messages`)
		var id uuid.UUID
		var o outboxRow
		if _, err := pgx.ForEachRow(rows, []any{&id, &o.topic, &o.key, &o.seq, &o.status, &o.class, &o.publishedBy}, func() error {
			outboxRows[id] = o
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	// The producers' ledger against the database: atomicity and ghosts.
	events := r.ledger.snapshot()
	committed := map[uuid.UUID]*event{}
	known := map[uuid.UUID]bool{}
	for i := range events {
		ev := &events[i]
		known[ev.id] = true
		inDB := transfers[ev.id]
		_, inOutbox := outboxRows[ev.id]
		if inDB != inOutbox {
			rep.inv(invAtomic).add("%s: business row %v, outbox row %v", ev.id, inDB, inOutbox)
		}
		switch ev.state {
		case stCommitted:
			if !inDB {
				rep.inv(invAtomic).add("%s: committed but not in the database", ev.id)
			}
			committed[ev.id] = ev
		case stUncertain:
			if inDB {
				rep.uncertainIn++
				committed[ev.id] = ev
			} else {
				rep.uncertainOut++
			}
		case stRolledBack, stInFlight:
			rep.rolledBack++
			if inDB || inOutbox {
				rep.inv(invGhost).add("%s: rolled back, yet in the database (business row %v, outbox %v)", ev.id, inDB, inOutbox)
			}
		}
	}
	for id := range outboxRows {
		if !known[id] {
			rep.inv(invGhost).add("%s: in the outbox, never written by a producer", id)
		}
	}
	rep.committed = len(committed)
	for _, ev := range committed {
		rep.byKind[ev.kind]++
		if ev.kind == kindNormal {
			rep.byTopic[ev.topic]++
			if ev.key == "" {
				rep.keyless++
			}
		}
	}

	// The outbox's statuses: published, or parked when meant to be.
	for id, ev := range committed {
		o := outboxRows[id]
		switch {
		case o.status == "pending" || o.status == "blocked":
			rep.inv(invStuck).add("%s (%s/%s #%d) is %s", id, o.topic, o.key, o.seq, o.status)
		case ev.kind == kindUnroutable:
			if o.status == "parked" && o.class == "unroutable" {
				rep.expectedParks++
			} else {
				rep.inv(invExpected).add("%s: unroutable event is %s (%s), want parked unroutable", id, o.status, o.class)
			}
		case o.status != "published":
			rep.inv(invPark).add("outbox %s (%s/%s #%d) is %s: %s", id, o.topic, o.key, o.seq, o.status, o.class)
		}
	}

	// The consumers' effects.
	type appliedRow struct {
		consumer, key string
		id            uuid.UUID
		seq, amount   int64
	}
	var applied []appliedRow
	{
		rows := query(`SELECT consumer, event_id, key, sequence, amount FROM chaos.applied ORDER BY n`)
		var a appliedRow
		if _, err := pgx.ForEachRow(rows, []any{&a.consumer, &a.id, &a.key, &a.seq, &a.amount}, func() error {
			applied = append(applied, a)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	appliedBy := map[string]map[uuid.UUID]bool{consumerKafka: {}, consumerRabbit: {}}
	for _, a := range applied {
		rep.applied[a.consumer]++
		ev, ok := committed[a.id]
		switch {
		case !ok:
			rep.inv(invGhost).add("%s applied by %s: not a committed event", a.id, a.consumer)
		case ev.kind != kindNormal:
			rep.inv(invGhost).add("%s applied by %s: a %s event", a.id, a.consumer, ev.kind)
		case consumerOf(ev.topic) != a.consumer:
			rep.inv(invGhost).add("%s applied by %s: it belongs to topic %s", a.id, a.consumer, ev.topic)
		}
		if appliedBy[a.consumer] == nil {
			appliedBy[a.consumer] = map[uuid.UUID]bool{}
		}
		appliedBy[a.consumer][a.id] = true
	}
	var latencies []time.Duration
	for id, ev := range committed {
		if ev.kind != kindNormal {
			continue
		}
		if !appliedBy[consumerOf(ev.topic)][id] {
			if ev.state == stUncertain {
				rep.inv(invUncertainGone).add("%s", id)
			}
			rep.inv(invLost).add("%s (%s/%s #%d, outbox status %s)", id, ev.topic, ev.key, outboxRows[id].seq, outboxRows[id].status)
		}
		if !ev.appliedAt.IsZero() && !ev.commitAt.IsZero() {
			latencies = append(latencies, ev.appliedAt.Sub(ev.commitAt))
		}
	}
	if len(latencies) > 0 {
		slices.Sort(latencies)
		rep.e2eP50 = latencies[len(latencies)/2]
		rep.e2eP99 = latencies[len(latencies)*99/100]
		rep.e2eMax = latencies[len(latencies)-1]
	}
	var doubles int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM chaos.double_applied`).Scan(&doubles); err != nil {
		t.Fatal(err)
	}
	for range doubles {
		rep.inv(invDouble).add("see chaos.double_applied")
	}
	{
		rows := query(`SELECT consumer, key, expected, got, event_id FROM chaos.order_violations`)
		var c, k string
		var want, got int64
		var id uuid.UUID
		if _, err := pgx.ForEachRow(rows, []any{&c, &k, &want, &got, &id}, func() error {
			rep.inv(invOrder).add("%s key %s: applied #%d (%s) when #%d was next", c, k, got, id, want)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// The applied order of each key, against the outbox lane (the lane's
	// sequence is commit order: taken under the lane's row lock).
	lanes := map[string][]uuid.UUID{}  // consumer|key -> event ids by outbox sequence
	laneSeq := map[string][]int64{}    // the sequences, to prove them gap-free
	appliedSeq := map[string][]int64{} // consumer|key -> sequences in applied order
	appliedIDs := map[string][]uuid.UUID{}
	for id, ev := range committed {
		if ev.kind == kindNormal && ev.key != "" {
			lk := consumerOf(ev.topic) + "|" + ev.key
			lanes[lk] = append(lanes[lk], id)
		}
	}
	for lk, ids := range lanes {
		sort.Slice(ids, func(i, j int) bool { return outboxRows[ids[i]].seq < outboxRows[ids[j]].seq })
		for i, id := range ids {
			laneSeq[lk] = append(laneSeq[lk], outboxRows[id].seq)
			if outboxRows[id].seq != int64(i+1) {
				rep.inv(invOrderLane).add("outbox lane %s: #%d at position %d (gap or duplicate sequence)", lk, outboxRows[id].seq, i+1)
				break
			}
		}
	}
	for _, a := range applied {
		if a.key == "" {
			continue
		}
		lk := a.consumer + "|" + a.key
		appliedSeq[lk] = append(appliedSeq[lk], a.seq)
		appliedIDs[lk] = append(appliedIDs[lk], a.id)
	}
	for lk, seqs := range appliedSeq {
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				rep.inv(invOrder).add("%s: applied #%d after #%d", lk, seqs[i], seqs[i-1])
			}
		}
		want := lanes[lk]
		if len(want) == len(appliedIDs[lk]) && !slices.Equal(want, appliedIDs[lk]) {
			rep.inv(invOrderLane).add("%s: applied order differs from the outbox lane", lk)
		}
	}

	// Money: every key's balance is the sum of its committed amounts.
	expected := map[string]int64{}
	for _, ev := range committed {
		if ev.kind == kindNormal {
			expected[consumerOf(ev.topic)+"|"+ev.key] += ev.amount
		}
	}
	{
		rows := query(`SELECT consumer, key, amount FROM chaos.balances`)
		var c, k string
		var amount int64
		got := map[string]int64{}
		if _, err := pgx.ForEachRow(rows, []any{&c, &k, &amount}, func() error {
			got[c+"|"+k] = amount
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for lk, want := range expected {
			if got[lk] != want {
				rep.inv(invBalance).add("%s: balance %d, committed %d", lk, got[lk], want)
			}
		}
		for lk := range got {
			if _, ok := expected[lk]; !ok {
				rep.inv(invBalance).add("%s: a balance without committed events", lk)
			}
		}
	}

	// Dead letters: only the events without a handler stay parked; the
	// others are the order guard's "waiting" rows, resolved once the
	// missing events arrived.
	{
		rows := query(`SELECT d.id, d.consumer, d.event_id, d.status, d.error_class, left(d.error, 120) FROM inbox.dead_letters d`)
		var id int64
		var c, status, class, msg string
		var evID *uuid.UUID
		seen := map[uuid.UUID]int{}
		if _, err := pgx.ForEachRow(rows, []any{&id, &c, &evID, &status, &class, &msg}, func() error {
			var ev *event
			if evID != nil {
				ev = committed[*evID]
				seen[*evID]++
			}
			switch {
			case ev != nil && ev.kind == kindNoHandler && consumerOf(ev.topic) == c && status == "parked" && class == "no_handler":
				rep.expectedDeadLetters++
			case status == "resolved" && evID != nil && appliedBy[c][*evID]:
				rep.heldForOrder++
			default:
				rep.inv(invPark).add("inbox dead letter %d (%s, %v): %s %s: %s", id, c, evID, status, class, msg)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for id, ev := range committed {
			if ev.kind == kindNoHandler && seen[id] == 0 {
				rep.inv(invExpected).add("%s: no-handler event not dead-lettered by %s", id, consumerOf(ev.topic))
			}
		}
	}

	// Audit: every park, of the relay and of the inbox, has its entry.
	{
		rows := query(`SELECT m.event_id::text FROM outbox.messages m WHERE m.status = 'parked'
   AND NOT EXISTS (SELECT 1 FROM outbox.audit_log a WHERE a.action = 'park' AND a.target_kind = 'outbox_message'
                    AND a.target_ids @> ARRAY[m.event_id::text])
UNION ALL
SELECT 'inbox dead letter ' || d.id FROM inbox.dead_letters d
 WHERE NOT EXISTS (SELECT 1 FROM outbox.audit_log a WHERE a.action = 'park' AND a.target_kind = 'inbox_dead_letter'
                    AND a.target_ids @> ARRAY[d.id::text])`)
		missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range missing {
			rep.inv(invAudit).add("%s", m)
		}
	}

	// Fencing: each published event was marked by the relay whose lease on
	// the event's partition was the latest before the mark.
	{
		rows := query(`SELECT m.event_id, m.partition, m.published_by, m.published_at, coalesce(h.owner, '(none)')
  FROM outbox.messages m
  LEFT JOIN LATERAL (SELECT owner FROM chaos.lease_history h
                      WHERE h.partition = m.partition AND h.at < m.published_at
                      ORDER BY h.at DESC LIMIT 1) h ON true
 WHERE m.status = 'published' AND h.owner IS DISTINCT FROM m.published_by`)
		var id uuid.UUID
		var part int32
		var by, owner string
		var at time.Time
		if _, err := pgx.ForEachRow(rows, []any{&id, &part, &by, &at, &owner}, func() error {
			rep.inv(invFence).add("%s in partition %d marked by %s at %s while %s held the lease", id, part, by,
				at.Format("15:04:05.000000"), owner)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM chaos.lease_history`).Scan(&rep.leaseChanges); err != nil {
			t.Fatal(err)
		}
	}
	r.mu.Lock()
	pauses := append([]*pauseRecord(nil), r.pauses...)
	r.mu.Unlock()
	for _, p := range pauses {
		var after, stale int
		err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE h.owner IS DISTINCT FROM $1 OR h.at < $3)
  FROM outbox.messages m
  LEFT JOIN LATERAL (SELECT owner, at FROM chaos.lease_history h
                      WHERE h.partition = m.partition AND h.at < m.published_at
                      ORDER BY h.at DESC LIMIT 1) h ON true
 WHERE m.published_by = $1 AND m.published_at >= $2 AND m.partition = ANY($4)`,
			p.relayID, p.resumed, p.paused, keysOf(p.held)).Scan(&after, &stale)
		if err != nil {
			t.Fatal(err)
		}
		rep.marksAfterResume += after
		if p.takenOver {
			for range stale {
				rep.inv(invPauseFence).add("%s marked an event of a partition it held before SIGSTOP", p.relayID)
			}
		}
	}
	// After the graceful stop no lease may be held: a stop releases every
	// lease under the relay's id, even one its last lease round acquired
	// while the stop was under way; a killed generation's leases were taken
	// over or reclaimed long before the drain ended.
	{
		rows := query(`SELECT p.partition, p.owner, h.at FROM outbox.partitions p
  LEFT JOIN LATERAL (SELECT at FROM chaos.lease_history h WHERE h.partition = p.partition ORDER BY at DESC LIMIT 1) h ON true
 WHERE p.owner IS NOT NULL`)
		var part int32
		var owner string
		var at *time.Time
		if _, err := pgx.ForEachRow(rows, []any{&part, &owner, &at}, func() error {
			when := "never logged"
			if at != nil {
				when = at.Format("15:04:05.000")
			}
			rep.inv(invLeases).add("partition %d still held by %s (acquired %s)", part, owner, when)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	// The inbox's own counters, for the summary.
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(applied), 0), coalesce(sum(duplicate), 0),
       coalesce(sum(injected_failures), 0), coalesce(sum(injected_panics), 0) FROM chaos.consumer_stats`).
		Scan(&rep.inboxApplied, &rep.inboxDuplicates, &rep.injectedFailures, &rep.injectedPan); err != nil {
		t.Fatal(err)
	}

	// The brokers.
	r.checkKafka(ctx, rep, committed, known)
	r.checkRabbit(ctx, rep, committed, known)

	// The processes.
	for _, p := range r.procs() {
		for _, c := range p.crashList() {
			rep.inv(invCrash).add("%s", c)
		}
		for _, l := range p.scanLog() {
			rep.inv(invCrash).add("%s", l)
		}
	}
	for _, s := range stopErrs {
		rep.inv(invCrash).add("%s", s)
	}
	if rep.byName[invUncertainGone] == nil {
		rep.inv(invUncertainGone)
	}
	return rep
}

// brokerCheck follows one key's sequence through a broker's order: a
// duplicate (a sequence seen before) is at-least-once; a jump ahead is an
// order violation at the broker.
type brokerCheck struct {
	last   map[string]int64
	copies map[uuid.UUID]int
}

func newBrokerCheck() *brokerCheck {
	return &brokerCheck{last: map[string]int64{}, copies: map[uuid.UUID]int{}}
}

func (b *brokerCheck) record(rep *report, where, idText, key, seqText string, committed map[uuid.UUID]*event, known map[uuid.UUID]bool) {
	id, err := uuid.Parse(idText)
	if err != nil {
		rep.inv(invGhost).add("%s: a message with event id %q", where, idText)
		return
	}
	b.copies[id]++
	if _, ok := committed[id]; !ok {
		if known[id] {
			rep.inv(invGhost).add("%s: rolled-back event %s was published", where, id)
		} else {
			rep.inv(invGhost).add("%s: unknown event %s was published", where, id)
		}
		return
	}
	if key == "" {
		return
	}
	seq, err := strconv.ParseInt(seqText, 10, 64)
	if err != nil {
		rep.inv(invBrokerOrder).add("%s: %s without a sequence", where, id)
		return
	}
	switch last := b.last[key]; {
	case seq == last+1:
		b.last[key] = seq
	case seq <= last: // a copy of an event already seen: at-least-once
	default:
		rep.inv(invBrokerOrder).add("%s key %s: #%d after #%d", where, key, seq, last)
	}
}

func (b *brokerCheck) missing(rep *report, where, topic string, committed map[uuid.UUID]*event) int {
	distinct := 0
	for id, ev := range committed {
		if ev.topic != topic {
			continue
		}
		if b.copies[id] == 0 {
			rep.inv(invLostBroker).add("%s: %s (%s/%s)", where, id, ev.topic, ev.key)
		}
	}
	for range b.copies {
		distinct++
	}
	return distinct
}

func (r *run) checkKafka(ctx context.Context, rep *report, committed map[uuid.UUID]*event, known map[uuid.UUID]bool) {
	t := r.t
	cl, err := kgo.NewClient(kgo.SeedBrokers(r.e.kafkaAddr), kgo.ConsumeTopics(topicKafka),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(cctx, topicKafka)
	if err != nil {
		t.Fatalf("checker: Kafka end offsets: %v", err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	var recs []*kgo.Record
	for int64(len(recs)) < total {
		fetches := cl.PollFetches(cctx)
		if cctx.Err() != nil {
			t.Errorf("checker: read %d of %d Kafka records", len(recs), total)
			break
		}
		fetches.EachRecord(func(rec *kgo.Record) { recs = append(recs, rec) })
	}
	sort.SliceStable(recs, func(i, j int) bool {
		if recs[i].Partition != recs[j].Partition {
			return recs[i].Partition < recs[j].Partition
		}
		return recs[i].Offset < recs[j].Offset
	})
	bc := newBrokerCheck()
	part := map[string]int32{}
	for _, rec := range recs {
		h := map[string]string{}
		for _, kv := range rec.Headers {
			h[kv.Key] = string(kv.Value)
		}
		key := string(rec.Key)
		if p, ok := part[key]; ok && p != rec.Partition && key != "" {
			rep.inv(invBrokerOrder).add("Kafka: key %s in partitions %d and %d", key, p, rec.Partition)
		}
		part[key] = rec.Partition
		bc.record(rep, "Kafka", h["ce_id"], key, h["ce_sequence"], committed, known)
	}
	rep.kafkaRecords = len(recs)
	rep.kafkaDistinct = bc.missing(rep, "Kafka", topicKafka, committed)
}

// checkRabbit reads the audit queue: bound like the consumer's queue, read
// by nobody before now, so it holds every copy the relays published.
func (r *run) checkRabbit(ctx context.Context, rep *report, committed map[uuid.UUID]*event, known map[uuid.UUID]bool) {
	t := r.t
	conn, err := amqp.Dial(testenv.RabbitURL())
	if err != nil {
		t.Fatalf("checker: RabbitMQ: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(r.e.auditQueue, true, false, false, false,
		amqp.Table{"x-expires": int32((max(runLength(), 10*time.Minute) + 30*time.Minute) / time.Millisecond)})
	if err != nil {
		t.Fatalf("checker: audit queue: %v", err)
	}
	if err := ch.Qos(1000, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(r.e.auditQueue, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	bc := newBrokerCheck()
	timeout := time.After(2 * time.Minute)
	for n := 0; n < q.Messages; n++ {
		select {
		case d := <-deliveries:
			key, _ := d.Headers["cloudEvents:partitionkey"].(string)
			seq, _ := d.Headers["cloudEvents:sequence"].(string)
			bc.record(rep, "RabbitMQ", d.MessageId, key, seq, committed, known)
			rep.rabbitCopies++
		case <-timeout:
			t.Errorf("checker: read %d of %d messages of the audit queue", n, q.Messages)
			n = q.Messages
		}
	}
	rep.rabbitDistinct = bc.missing(rep, "RabbitMQ", topicRabbit, committed)
}

// table renders the summary.
func (rep *report) table(r *run) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	mode := "default (one pass over every fault kind)"
	if s := runLength(); s > 0 {
		mode = "soak " + s.String()
	}
	l := r.ledger
	l.mu.Lock()
	txc, txr, txf, txu, txh, single, batches := l.txCommitted, l.txRolledBack, l.txFailed, l.txUncertain, l.txHeld, l.single, l.batches
	l.mu.Unlock()
	w("outboxkit chaos run: %s, seed %d", mode, r.seed)
	w("  %d relay processes, 2 consumer processes (Kafka, RabbitMQ), 1 sweeper, %d producer goroutines at %d events/s",
		numRelays, r.prod.n, r.prod.rate)
	w("  faults %s, drain %s, total %s", r.faultsDone.Sub(r.started).Round(time.Second),
		r.drained.Sub(r.faultsDone).Round(time.Second), time.Since(r.started).Round(time.Second))
	w("")
	w("events")
	w("  %-46s %d (Kafka %d, RabbitMQ %d, of them keyless %d; no handler %d; unroutable %d)", "committed",
		rep.committed, rep.byTopic[topicKafka], rep.byTopic[topicRabbit], rep.keyless, rep.byKind[kindNoHandler], rep.byKind[kindUnroutable])
	w("  %-46s %d", "rolled back (or failed before commit)", rep.rolledBack)
	w("  %-46s %d committed, %d rolled back, %d failed, %d commit errors (%d found committed, %d not)",
		"transactions", txc, txr, txf, txu, rep.uncertainIn, rep.uncertainOut)
	w("  %-46s %d single Enqueue, %d EnqueueBatch, %d held open 1-3s", "", single, batches, txh)
	w("  %-46s %s %d, %s %d", "applied (chaos.applied)", consumerKafka, rep.applied[consumerKafka], consumerRabbit, rep.applied[consumerRabbit])
	w("  %-46s Kafka %d records for %d events, RabbitMQ %d copies for %d events", "at the brokers", rep.kafkaRecords,
		rep.kafkaDistinct, rep.rabbitCopies, rep.rabbitDistinct)
	w("  %-46s %d (inbox Duplicate outcomes, summed over consumer processes; a SIGKILL loses up to 1s of counts)",
		"duplicates absorbed by the inbox", rep.inboxDuplicates)
	w("  %-46s %d", "held by the order guard, applied when the gap filled", rep.heldForOrder)
	w("  %-46s %d transient failures, %d panics (all retried)", "handler faults injected", rep.injectedFailures, rep.injectedPan)
	w("  %-46s %d relay parks (unroutable), %d inbox dead letters (no handler)", "expected parks, all audited", rep.expectedParks, rep.expectedDeadLetters)
	w("  %-46s p50 %s, p99 %s, max %s (the feeder polls every 200ms)", "commit to applied", rep.e2eP50.Round(time.Millisecond),
		rep.e2eP99.Round(time.Millisecond), rep.e2eMax.Round(time.Millisecond))
	w("  %-46s %d lease changes; %d marks by paused relays after SIGCONT in partitions they held at the pause", "fencing", rep.leaseChanges, rep.marksAfterResume)
	w("")
	w("faults                     count  max recovery  (recovery: from the fault healed until every event committed before was applied)")
	r.mu.Lock()
	records := append(append([]faultRecord(nil), r.records...), r.longTx...)
	r.mu.Unlock()
	type agg struct {
		n     int
		max   time.Duration
		notOK bool
	}
	kinds := map[string]*agg{}
	var order []string
	for _, f := range faults() {
		order = append(order, f.name)
	}
	order = append(order, "long-transaction")
	for _, rec := range records {
		a := kinds[rec.kind]
		if a == nil {
			a = &agg{}
			kinds[rec.kind] = a
		}
		a.n++
		a.max = max(a.max, rec.recovery)
		a.notOK = a.notOK || !rec.recovered
	}
	total := 0
	for _, k := range order {
		a := kinds[k]
		if a == nil {
			continue
		}
		total += a.n
		rec := fmtRecovery(faultRecord{recovery: a.max, recovered: !a.notOK})
		w("  %-24s %5d  %12s", k, a.n, rec)
	}
	w("  %-24s %5d", "total", total)
	for _, rec := range r.longTx {
		w("  long transaction: %s", rec.note)
	}
	r.mu.Lock()
	for _, p := range r.pauses {
		w("  relay-pause: %s held %d partitions, taken over while stopped: %v, %d batches fenced after SIGCONT",
			p.relayID, len(p.held), p.takenOver, p.fencedAfter)
	}
	r.mu.Unlock()
	w("")
	w("invariants                                                                       violations")
	for _, inv := range rep.invariants {
		w("  %-78s %d", inv.name, inv.count)
	}
	return b.String()
}
