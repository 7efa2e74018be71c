package sweeper

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

func runJob(t *testing.T, s *Sweeper, job Job) Result {
	t.Helper()
	res, err := s.RunJob(context.Background(), job)
	if err != nil {
		t.Fatalf("%s: %v", job, err)
	}
	return res
}

// An expired lease is freed (and audited), its pending events reported; a
// live lease and a recently expired one are left alone; long-dead relays
// rows are removed.
func TestReclaimExpiredLease(t *testing.T) {
	db := testDB(t)
	ids := enqueue(t, db.Pool, "payments", "payout-1", 3)
	part := queryInt(t, db.Pool, `SELECT partition FROM outbox.messages WHERE event_id = $1`, ids[0])
	other := (part + 1) % testenv.Partitions
	recent := (part + 2) % testenv.Partitions
	execSQL(t, db.Pool, `UPDATE outbox.partitions SET owner = 'dead-relay', lease_token = 7, lease_until = now() - interval '2 minutes' WHERE partition = $1`, part)
	execSQL(t, db.Pool, `UPDATE outbox.partitions SET owner = 'live-relay', lease_until = now() + interval '1 minute' WHERE partition = $1`, other)
	execSQL(t, db.Pool, `UPDATE outbox.partitions SET owner = 'slow-relay', lease_until = now() - interval '1 second' WHERE partition = $1`, recent)
	execSQL(t, db.Pool, `INSERT INTO outbox.relays (relay_id, hostname, pid, version, alive_until) VALUES
		('dead-relay', 'h1', 11, 'dev', now() - interval '1 hour'), ('live-relay', 'h2', 12, 'dev', now() + interval '1 minute')`)

	logs := &logBuffer{}
	s := newSweeper(t, db.Pool, Config{}, logs)
	res := runJob(t, s, JobReclaim)
	rep := res.Reclaim
	if len(rep.FreedLeases) != 1 {
		t.Fatalf("freed %+v, want partition %d only", rep.FreedLeases, part)
	}
	f := rep.FreedLeases[0]
	if int64(f.Partition) != part || f.Owner != "dead-relay" || f.Pending != 3 || f.OldestPending != ids[0] {
		t.Fatalf("freed lease %+v, want partition %d of dead-relay with 3 pending, oldest %s", f, part, ids[0])
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.partitions WHERE partition = $1 AND owner IS NULL AND lease_until IS NULL AND lease_token = 7`, part); n != 1 {
		t.Fatal("partition not freed, or its fencing token changed")
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.partitions WHERE owner IN ('live-relay', 'slow-relay')`); n != 2 {
		t.Fatal("a live or just-expired lease was freed")
	}
	if len(rep.DeadRelays) != 1 || rep.DeadRelays[0].RelayID != "dead-relay" {
		t.Fatalf("dead relays %+v", rep.DeadRelays)
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.relays`); n != 1 {
		t.Fatalf("%d relays rows left, want the live one", n)
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.audit_log WHERE actor = 'system:sweeper' AND action = 'reclaim'
		AND target_kind = 'partition' AND target_ids = ARRAY[$1::text] AND before->>'owner' = 'dead-relay'`, fmt.Sprint(part)); n != 1 {
		t.Fatal("reclaim not audited")
	}
	if res.Rows != 2 || !strings.Contains(logs.String(), "oldest_pending_event_id="+ids[0].String()) {
		t.Fatalf("rows %d, log:\n%s", res.Rows, logs.String())
	}
	// Nothing left to do: a second run touches nothing.
	if res := runJob(t, s, JobReclaim); res.Rows != 0 {
		t.Fatalf("second run touched %d rows", res.Rows)
	}
}

// The scenario: a relay process is killed with SIGKILL mid-work;
// its leases expire, the sweeper frees them and reports what it left
// pending, and another relay publishes everything.
func TestReclaimAfterRelaySIGKILL(t *testing.T) {
	db := testDB(t)
	const total = 3000
	for i := 0; i < total/500; i++ {
		enqueue(t, db.Pool, "payments", fmt.Sprintf("k%d", i), 250)
		enqueue(t, db.Pool, "payments", "", 250)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "OUTBOXKIT_SWEEPER_RELAY_CHILD=1", "OUTBOXKIT_CHILD_DATABASE_URL="+db.URL,
		"OUTBOXKIT_CHILD_RELAY_ID=doomed-relay")
	var childLog logBuffer
	cmd.Stderr = &childLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() //nolint:errcheck
	defer func() {
		cmd.Process.Kill() //nolint:errcheck
		<-exited
		if t.Failed() {
			t.Logf("child relay:\n%s", childLog.String())
		}
	}()
	testenv.Eventually(t, 60*time.Second, "the child relay publishing", func() bool {
		return queryInt(t, db.Pool, `SELECT count(*) FROM outbox.messages WHERE status = 'published'`) >= total/5
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	pending := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.messages WHERE status = 'pending'`)
	if pending == 0 {
		t.Fatal("the child published everything before it was killed: the test proves nothing")
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.partitions WHERE owner = 'doomed-relay'`); n != testenv.Partitions {
		t.Fatalf("the killed relay held %d partitions, want all %d", n, testenv.Partitions)
	}

	s := newSweeper(t, db.Pool, Config{ReclaimAfter: time.Millisecond, DeadRelayAfter: time.Millisecond}, nil)
	testenv.Eventually(t, 10*time.Second, "the killed relay's leases expiring", func() bool {
		return queryInt(t, db.Pool, `SELECT count(*) FROM outbox.expired_leases`) == testenv.Partitions
	})
	rep := runJob(t, s, JobReclaim).Reclaim
	var reported int64
	for _, f := range rep.FreedLeases {
		if f.Owner != "doomed-relay" {
			t.Errorf("freed %+v", f)
		}
		reported += f.Pending
	}
	if len(rep.FreedLeases) != testenv.Partitions || reported != pending {
		t.Fatalf("freed %d leases reporting %d pending events, want %d and %d", len(rep.FreedLeases), reported, testenv.Partitions, pending)
	}
	dead := rep.DeadRelays
	if len(dead) == 0 { // its registration outlived its leases by a moment
		testenv.Eventually(t, 5*time.Second, "the dead relay's registration expiring", func() bool {
			return queryInt(t, db.Pool, `SELECT count(*) FROM outbox.relays WHERE alive_until < now()`) == 1
		})
		dead = runJob(t, s, JobReclaim).Reclaim.DeadRelays
	}
	if len(dead) != 1 || dead[0].RelayID != "doomed-relay" {
		t.Fatalf("dead relays %+v", dead)
	}
	t.Logf("killed relay left %d of %d events pending in %d partitions", pending, total, len(rep.FreedLeases))

	runRelay(t, db.Pool, &ackPublisher{})
	testenv.Eventually(t, 60*time.Second, "every event published by the next relay", func() bool {
		return queryInt(t, db.Pool, `SELECT count(*) FROM outbox.messages WHERE status = 'published'`) == total
	})
}

// A lane left held by a relay that died after marking its replayed head
// published (before releasing the lane) flows again, audited.
func TestReclaimReleasesOrphanedLaneHold(t *testing.T) {
	db := testDB(t)
	ids := enqueue(t, db.Pool, "payments", "payout-9", 3)
	young := enqueue(t, db.Pool, "payments", "payout-10", 2)
	for _, c := range []struct {
		head, later uuid.UUID
		ago         string
	}{{ids[0], ids[1], "5 minutes"}, {young[0], young[1], "5 seconds"}} {
		execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', published_at = now() - $2::interval WHERE event_id = $1`, c.head, c.ago)
		execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'blocked' WHERE key = (SELECT key FROM outbox.messages WHERE event_id = $1) AND event_id <> $1`, c.head)
		execSQL(t, db.Pool, `UPDATE outbox.lanes SET hold_until = 'infinity', blocked_since = now(), blocked_by = (SELECT id FROM outbox.messages WHERE event_id = $1)
			WHERE key = (SELECT key FROM outbox.messages WHERE event_id = $1)`, c.head)
	}
	s := newSweeper(t, db.Pool, Config{}, nil)
	rep := runJob(t, s, JobReclaim).Reclaim
	if len(rep.ReleasedLanes) != 1 || rep.ReleasedLanes[0].Key != "payout-9" || rep.Unblocked != 2 {
		t.Fatalf("released %+v, unblocked %d; want payout-9 only (payout-10's head was published just now: the relay is releasing it)", rep.ReleasedLanes, rep.Unblocked)
	}
	if statusOf(t, db.Pool, ids[1]) != "pending" || statusOf(t, db.Pool, ids[2]) != "pending" || statusOf(t, db.Pool, young[1]) != "blocked" {
		t.Fatal("wrong events unblocked")
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.lanes WHERE key = 'payout-9' AND hold_until IS NULL AND blocked_by IS NULL`); n != 1 {
		t.Fatal("lane still held")
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.audit_log WHERE actor = 'system:sweeper' AND action = 'lane_release' AND target_ids = ARRAY[$1::text]`, ids[0].String()); n != 1 {
		t.Fatal("lane release not audited")
	}
}

// Rescue: an event due for longer than the threshold (its NOTIFY was never
// seen) makes the sweeper notify the relays' channel, and is counted.
func TestRescueNotifiesMissedEvents(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	missed := enqueue(t, db.Pool, "payments", "payout-1", 2)
	enqueue(t, db.Pool, "payments", "payout-2", 1) // due just now: not missed yet
	execSQL(t, db.Pool, `UPDATE outbox.messages SET available_at = now() - interval '5 minutes' WHERE event_id = ANY($1)`, missed)
	// A delayed event due five minutes ago that no relay moved.
	execSQL(t, db.Pool, `INSERT INTO outbox.scheduled (event_id, topic, key, partition, type, payload, content_type, due_at)
		VALUES (gen_random_uuid(), 'payments', 'payout-3', outbox.partition_for('payout-3'), 'test.event', '\x7b7d', 'application/json',
		        now() - interval '5 minutes')`)

	listener, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, "LISTEN "+pgutil.Ident(pgutil.NotifyChannel("outbox"))); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	s := newSweeper(t, db.Pool, Config{RescueAfter: time.Minute}, logs)
	res := runJob(t, s, JobRescue)
	if res.Rescue.Waiting != 2 || res.Rescue.OverdueScheduled != 1 || res.Rows != 3 || !res.Rescue.Notified ||
		len(res.Rescue.Partitions) != 1 || res.Rescue.OldestDueSeconds < 299 {
		t.Fatalf("rescue report %+v", res.Rescue)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(waitCtx)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	if n.Channel != pgutil.NotifyChannel("outbox") || n.Payload != "sweeper:rescue" {
		t.Fatalf("notification %+v", n)
	}
	if v := metric(t, s.Metrics(), "outboxkit_sweeper_rescued_total", nil); v != 3 {
		t.Fatalf("outboxkit_sweeper_rescued_total = %v, want 3", v)
	}
	if !strings.Contains(logs.String(), "no relay is alive: start outboxkit relay") {
		t.Errorf("no relay alive not reported:\n%s", logs.String())
	}

	// With a relay running, the missed events are published and the next
	// rescue finds nothing.
	runRelay(t, db.Pool, &ackPublisher{})
	testenv.Eventually(t, 30*time.Second, "published", func() bool {
		return queryInt(t, db.Pool, `SELECT count(*) FROM outbox.messages WHERE status = 'published'`) == 4
	})
	if res := runJob(t, s, JobRescue); res.Rows != 0 || res.Rescue.Notified {
		t.Fatalf("second rescue %+v", res.Rescue)
	}
}

// Retry returns to pending only events parked with a retryable class, on
// topics with auto_retry, parked long enough ago and not retried too often;
// each retry is audited as the system actor; a blocked lane follows its
// retried head in order.
func TestRetryOnlyTransientOnAutoRetryTopics(t *testing.T) {
	db := testDB(t)
	execSQL(t, db.Pool, `INSERT INTO outbox.topic_policies (topic, auto_retry, updated_by) VALUES ('auto', true, 'test'), ('manual', false, 'test')`)
	eligible := enqueue(t, db.Pool, "auto", "lane-1", 3) // head parked transient, two blocked behind it
	permanent := enqueue(t, db.Pool, "auto", "lane-2", 1)[0]
	manual := enqueue(t, db.Pool, "manual", "lane-3", 1)[0]
	noPolicy := enqueue(t, db.Pool, "nopolicy", "lane-4", 1)[0]
	fresh := enqueue(t, db.Pool, "auto", "lane-5", 1)[0]
	exhausted := enqueue(t, db.Pool, "auto", "lane-6", 1)[0]
	park := func(id uuid.UUID, class, ago string, parks int) {
		execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'parked', attempts = 10, parked_at = now() - $3::interval,
			last_error_class = $2, last_error = 'broker said no' WHERE event_id = $1`, id, class, ago)
		for i := 0; i < parks; i++ {
			execSQL(t, db.Pool, `INSERT INTO outbox.attempts (message_id, event_id, attempt, started_at, duration_ms, relay_id, error_class, error, outcome)
				SELECT id, event_id, 10, now(), 1, 'r', $2, 'broker said no', 'parked' FROM outbox.messages WHERE event_id = $1`, id, class)
		}
	}
	park(eligible[0], "transient", "10 minutes", 1)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'blocked' WHERE event_id = ANY($1)`, eligible[1:])
	execSQL(t, db.Pool, `UPDATE outbox.lanes SET hold_until = 'infinity', blocked_since = now(),
		blocked_by = (SELECT id FROM outbox.messages WHERE event_id = $1) WHERE key = 'lane-1'`, eligible[0])
	park(permanent, "permanent", "10 minutes", 1)
	park(manual, "transient", "10 minutes", 1)
	park(noPolicy, "transient", "10 minutes", 1)
	park(fresh, "transient", "1 minute", 1)
	park(exhausted, "transient", "10 minutes", 4)
	auditBefore := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.audit_log`)

	s := newSweeper(t, db.Pool, Config{RetryAfter: 5 * time.Minute, MaxAutoRetries: 3}, nil)
	res := runJob(t, s, JobRetry)
	if res.Retry.Retried != 1 || res.Retry.Exhausted != 1 || len(res.Retry.Events) != 1 || res.Retry.Events[0].EventID != eligible[0] ||
		res.Retry.Events[0].AutoRetry != 1 {
		t.Fatalf("retry report %+v", res.Retry)
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.messages WHERE event_id = $1 AND status = 'pending' AND attempts = 0
		AND parked_at IS NULL AND available_at <= now()`, eligible[0]); n != 1 {
		t.Fatal("eligible event not back to pending with a fresh budget")
	}
	for _, id := range []uuid.UUID{permanent, manual, noPolicy, fresh, exhausted} {
		if st := statusOf(t, db.Pool, id); st != "parked" {
			t.Errorf("%s is %s, want parked", id, st)
		}
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.audit_log`) - auditBefore; n != 1 {
		t.Fatalf("%d audit entries, want 1", n)
	}
	var actorName, action, reason string
	if err := db.Pool.QueryRow(context.Background(), `SELECT actor, action, reason FROM outbox.audit_log
		WHERE target_ids = ARRAY[$1::text] ORDER BY id DESC LIMIT 1`, eligible[0].String()).Scan(&actorName, &action, &reason); err != nil {
		t.Fatal(err)
	}
	if actorName != "system:sweeper" || action != "replay" || !strings.Contains(reason, "automatic retry 1 of 3") {
		t.Fatalf("audit entry %q %q %q", actorName, action, reason)
	}
	// The lane stays blocked behind its head until the relay publishes the
	// head, then flows in order.
	if statusOf(t, db.Pool, eligible[1]) != "blocked" {
		t.Fatal("later events of the lane released before their head was published")
	}
	pub := &ackPublisher{}
	runRelay(t, db.Pool, pub)
	testenv.Eventually(t, 30*time.Second, "the lane published", func() bool {
		return statusOf(t, db.Pool, eligible[2]) == "published"
	})
	var order []uuid.UUID
	for _, m := range pub.published() {
		if m.Key == "lane-1" && !slices.Contains(order, m.EventID) {
			order = append(order, m.EventID)
		}
	}
	if !slices.Equal(order, eligible) {
		t.Fatalf("lane published in order %v, want %v", order, eligible)
	}
}

// Retention deletes exactly the published rows past the window (and their
// attempt history) and the inbox records past theirs, in many small
// statements; pending, blocked, parked, dropped, young rows and the audit
// log stay.
func TestRetentionDeletesOnlyWhatIsPastItsWindow(t *testing.T) {
	db := testDB(t)
	for i := 0; i < 5; i++ {
		enqueue(t, db.Pool, "payments", fmt.Sprintf("k%d", i), 10)
		enqueue(t, db.Pool, "payments", "", 10)
	}
	// 100 events: 50 old published (with an attempt row each), 10 young
	// published, 10 each of old pending, blocked, parked, dropped (with
	// attempts), old published yesterday from an event enqueued long ago.
	execSQL(t, db.Pool, `UPDATE outbox.messages SET created_at = now() - interval '30 days'`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', published_at = now() - interval '8 days' WHERE id <= (SELECT min(id) + 49 FROM outbox.messages)`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', published_at = now() - interval '1 day', created_at = now() - interval '2 days'
		WHERE id > (SELECT min(id) + 49 FROM outbox.messages) AND id <= (SELECT min(id) + 59 FROM outbox.messages)`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', published_at = now() - interval '1 day'
		WHERE id > (SELECT min(id) + 59 FROM outbox.messages) AND id <= (SELECT min(id) + 64 FROM outbox.messages)`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'blocked' WHERE id > (SELECT min(id) + 64 FROM outbox.messages) AND id <= (SELECT min(id) + 74 FROM outbox.messages)`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'parked', parked_at = now() - interval '20 days' WHERE id > (SELECT min(id) + 74 FROM outbox.messages) AND id <= (SELECT min(id) + 84 FROM outbox.messages)`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'dropped' WHERE id > (SELECT min(id) + 84 FROM outbox.messages) AND id <= (SELECT min(id) + 94 FROM outbox.messages)`)
	execSQL(t, db.Pool, `INSERT INTO outbox.attempts (message_id, event_id, attempt, started_at, duration_ms, relay_id, error_class, error, outcome)
		SELECT id, event_id, 1, created_at, 1, 'r', 'transient', 'x', 'retry' FROM outbox.messages`)
	execSQL(t, db.Pool, `INSERT INTO outbox.audit_log (at, actor, action, target_kind, reason) SELECT now() - interval '1 year', 'op', 'drop', 'outbox_message', 'old' FROM generate_series(1, 10)`)
	execSQL(t, db.Pool, `INSERT INTO inbox.processed (consumer, event_id, topic, payload_sha256, processed_at)
		SELECT 'billing', gen_random_uuid(), 'payments', '\x00', now() - interval '20 days' FROM generate_series(1, 33)`)
	execSQL(t, db.Pool, `INSERT INTO inbox.processed (consumer, event_id, topic, payload_sha256, processed_at)
		SELECT 'billing', gen_random_uuid(), 'payments', '\x00', now() - interval '10 days' FROM generate_series(1, 7)`)
	type counts map[string]int64
	snapshot := func() counts {
		c := counts{}
		rows, _ := db.Pool.Query(context.Background(), `SELECT status, count(*) FROM outbox.messages GROUP BY status`)
		var st string
		var n int64
		pgx.ForEachRow(rows, []any{&st, &n}, func() error { c[st] = n; return nil }) //nolint:errcheck
		c["attempts"] = queryInt(t, db.Pool, `SELECT count(*) FROM outbox.attempts`)
		c["audit"] = queryInt(t, db.Pool, `SELECT count(*) FROM outbox.audit_log`)
		c["processed"] = queryInt(t, db.Pool, `SELECT count(*) FROM inbox.processed`)
		return c
	}
	before := snapshot()

	s := newSweeper(t, db.Pool, Config{DeleteBatchSize: 7}, nil)
	res := runJob(t, s, JobRetention)
	rep := res.Retention
	if rep.DeletedMessages != 50 || rep.DeletedAttempts != 50 || rep.DeletedProcessed != 33 || res.Rows != 133 {
		t.Fatalf("retention report %+v", rep)
	}
	if rep.Statements < 100/7+33/7 {
		t.Fatalf("%d statements: not in batches of 7", rep.Statements)
	}
	after := snapshot()
	want := counts{"published": before["published"] - 50, "pending": before["pending"], "blocked": before["blocked"],
		"parked": before["parked"], "dropped": before["dropped"], "attempts": before["attempts"] - 50,
		"audit": before["audit"], "processed": 7}
	for k, v := range want {
		if after[k] != v {
			t.Errorf("%s: %d after retention, want %d (before %d)", k, after[k], v, before[k])
		}
	}
	if n := queryInt(t, db.Pool, `SELECT count(*) FROM outbox.attempts a WHERE NOT EXISTS (SELECT 1 FROM outbox.messages m WHERE m.id = a.message_id)`); n != 0 {
		t.Errorf("%d attempts of deleted events left", n)
	}
	if res := runJob(t, s, JobRetention); res.Rows != 0 {
		t.Fatalf("second run deleted %d rows", res.Rows)
	}
}

// Reconcile: published = applied + dead-lettered + missing, per consumer,
// with the missing event ids listed.
func TestReconcileFindsGap(t *testing.T) {
	db := testDB(t)
	ids := enqueue(t, db.Pool, "payments", "payout-1", 6)
	outside := enqueue(t, db.Pool, "payments", "payout-2", 1)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', published_at = now() - interval '40 minutes', created_at = now() - interval '45 minutes'`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET created_at = now() - interval '5 minutes' WHERE event_id = $1`, outside[0]) // inside the lag
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'parked', published_at = NULL WHERE event_id = $1`, ids[5])
	// billing applied 0..2, dead-lettered 3, never saw 4.
	execSQL(t, db.Pool, `INSERT INTO inbox.processed (consumer, event_id, topic, payload_sha256, processed_at)
		SELECT 'billing', e, 'payments', '\x00', now() - interval '30 minutes' FROM unnest($1::uuid[]) e`, ids[:3])
	execSQL(t, db.Pool, `INSERT INTO inbox.dead_letters (consumer, consumer_version, event_id, topic, payload, error, error_class, attempts, status, first_failed_at, last_failed_at)
		VALUES ('billing', 'v1', $1, 'payments', '\x00', 'bad', 'permanent', 3, 'parked', now(), now())`, ids[3])

	logs := &logBuffer{}
	s := newSweeper(t, db.Pool, Config{ReconcileWindow: time.Hour, ReconcileLag: 15 * time.Minute,
		Consumers: map[string][]string{"billing": {"payments"}, "ledger": {"payments"}}}, logs)
	rep := runJob(t, s, JobReconcile).Reconcile
	if len(rep.Topics) != 1 || rep.Topics[0] != (TopicCounts{Topic: "payments", Enqueued: 6, Published: 5, Parked: 1}) {
		t.Fatalf("topics %+v", rep.Topics)
	}
	if len(rep.Consumers) != 2 {
		t.Fatalf("consumers %+v", rep.Consumers)
	}
	billing, ledger := rep.Consumers[0], rep.Consumers[1]
	if billing.Consumer != "billing" || billing.Published != 5 || billing.Applied != 3 || billing.DeadLettered != 1 ||
		billing.Missing != 1 || !slices.Equal(billing.MissingEventIDs, []uuid.UUID{ids[4]}) {
		t.Fatalf("billing %+v, want 5 published, 3 applied, 1 dead-lettered, %s missing", billing, ids[4])
	}
	if ledger.Consumer != "ledger" || ledger.Missing != 5 || len(ledger.MissingEventIDs) != 5 || ledger.MissingEventIDs[0] != ids[0] {
		t.Fatalf("ledger %+v", ledger)
	}
	if v := metric(t, s.Metrics(), "outboxkit_reconcile_missing_events", map[string]string{"consumer": "billing", "topic": "payments"}); v != 1 {
		t.Fatalf("missing gauge %v", v)
	}
	if !strings.Contains(logs.String(), ids[4].String()) {
		t.Errorf("gap not logged:\n%s", logs.String())
	}

	// Discovered consumers: billing only (ledger never applied anything).
	s2 := newSweeper(t, db.Pool, Config{}, nil)
	rep = runJob(t, s2, JobReconcile).Reconcile
	if len(rep.Consumers) != 1 || rep.Consumers[0].Consumer != "billing" || rep.Consumers[0].Missing != 1 {
		t.Fatalf("discovered %+v", rep.Consumers)
	}
}

// Alarms: past their thresholds they are raised (metrics and warnings);
// below them only the gauges move.
func TestAlarmsFirePastThresholds(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	parked := enqueue(t, db.Pool, "payments", "", 3)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'parked', parked_at = now(), last_error_class = 'permanent' WHERE event_id = ANY($1)`, parked)
	enqueue(t, db.Pool, "refunds", "", 2)
	late := enqueue(t, db.Pool, "notifications", "n-1", 1)[0]
	execSQL(t, db.Pool, `UPDATE outbox.messages SET available_at = now() - interval '10 minutes' WHERE event_id = $1`, late)
	latePart := queryInt(t, db.Pool, `SELECT partition FROM outbox.messages WHERE event_id = $1`, late)
	execSQL(t, db.Pool, `UPDATE outbox.partitions SET owner = 'gone', lease_until = now() - interval '1 minute' WHERE partition = $1`, latePart)
	execSQL(t, db.Pool, `INSERT INTO inbox.dead_letters (consumer, consumer_version, topic, payload, error, error_class, attempts, status, first_failed_at, last_failed_at)
		SELECT 'billing', 'v1', 'payments', '\x00', 'bad', 'permanent', 3, 'parked', now(), now() FROM generate_series(1, 4)`)

	// A session sits in an open transaction.
	idle, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(ctx)
	if _, err := idle.Exec(ctx, `BEGIN; SELECT txid_current()`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	logs := &logBuffer{}
	s := newSweeper(t, db.Pool, Config{PendingAgeWarn: 5 * time.Minute, ParkedWarn: 3, DeadLetterWarn: 5,
		StuckPartitionAfter: 2 * time.Minute, LongTransactionWarn: 100 * time.Millisecond}, logs)
	res := runJob(t, s, JobAlarms)
	kinds := map[string][]string{}
	for _, a := range res.Alarms.Alarms {
		kinds[a.Kind] = append(kinds[a.Kind], a.Subject)
	}
	want := map[string][]string{
		AlarmPendingAge:      {"notifications"},
		AlarmParked:          {"payments"},
		AlarmStuckPartition:  {fmt.Sprint(latePart)},
		AlarmLongTransaction: {fmt.Sprint(idle.PgConn().PID())},
	}
	for k, v := range want {
		if !slices.Equal(kinds[k], v) {
			t.Errorf("alarm %s: %v, want %v", k, kinds[k], v)
		}
	}
	if len(kinds[AlarmDeadLetters]) != 0 {
		t.Errorf("4 dead letters are below the threshold of 5: %v", kinds[AlarmDeadLetters])
	}
	if res.Rows != int64(len(res.Alarms.Alarms)) || len(res.Alarms.Alarms) != 4 {
		t.Errorf("%d alarms: %+v", len(res.Alarms.Alarms), res.Alarms.Alarms)
	}
	m := s.Metrics()
	checks := []struct {
		name   string
		labels map[string]string
		ok     func(float64) bool
	}{
		{"outboxkit_oldest_pending_age_seconds", map[string]string{"topic": "notifications"}, func(v float64) bool { return v >= 600 }},
		{"outboxkit_oldest_pending_age_seconds", map[string]string{"topic": "refunds"}, func(v float64) bool { return v >= 0 && v < 60 }},
		{"outboxkit_parked_events", map[string]string{"topic": "payments"}, func(v float64) bool { return v == 3 }},
		{"outboxkit_dead_letters", map[string]string{"consumer": "billing"}, func(v float64) bool { return v == 4 }},
		{"outboxkit_stuck_partitions", nil, func(v float64) bool { return v == 1 }},
		{"outboxkit_expired_leases", nil, func(v float64) bool { return v == 1 }},
		{"outboxkit_longest_transaction_seconds", nil, func(v float64) bool { return v >= 0.3 }},
	}
	for _, c := range checks {
		if v := metric(t, m, c.name, c.labels); !c.ok(v) {
			t.Errorf("%s%v = %v", c.name, c.labels, v)
		}
	}
	out := logs.String()
	for _, w := range []string{"sweeper alarm: topic payments: 3 parked events", "partition " + fmt.Sprint(latePart) + ": an event has been due for 10m", "the lease of relay gone expired",
		"vacuum cannot remove dead outbox rows"} {
		if !strings.Contains(out, w) {
			t.Errorf("log lacks %q:\n%s", w, out)
		}
	}

	// Fixed: the next run raises nothing and the gauges follow.
	idle.Exec(ctx, `ROLLBACK`) //nolint:errcheck
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'dropped' WHERE status = 'parked'`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', published_at = now() WHERE status = 'pending'`)
	res = runJob(t, s, JobAlarms)
	if len(res.Alarms.Alarms) != 0 {
		t.Fatalf("alarms after the fix: %+v", res.Alarms.Alarms)
	}
	if v := metric(t, m, "outboxkit_parked_events", map[string]string{"topic": "payments"}); v != -1 {
		t.Errorf("parked gauge not cleared: %v", v)
	}
}

// The retention statement probes the primary key and attempts_message_idx:
// a plan that hashes a whole table per statement would make retention
// quadratic.
func TestRetentionPlanUsesIndexes(t *testing.T) {
	db := testDB(t)
	insertHistory(t, db.Pool, 20000)
	execSQL(t, db.Pool, `ANALYZE outbox.attempts`)
	s := newSweeper(t, db.Pool, Config{}, nil)
	rows, err := db.Pool.Query(context.Background(), "EXPLAIN "+s.sql.retentionChunk, int64(0), 1000, time.Now().Add(-7*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	for _, want := range []string{"messages_pkey", "attempts_message_idx"} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan does not use %s:\n%s", want, plan)
		}
	}
	for _, table := range []string{"messages", "attempts"} {
		if strings.Contains(plan, "Seq Scan on "+table) {
			t.Errorf("plan scans %s:\n%s", table, plan)
		}
	}
}

// TestPendingProbePlansReadPendingRowsOnly: with statistics taken during a
// backlog that has since drained, the per-partition probes of rescue and
// alarms still read messages_pending_idx, never messages_pkey through the
// published history (see relay claimSQL).
func TestPendingProbePlansReadPendingRowsOnly(t *testing.T) {
	db := testDB(t)
	execSQL(t, db.Pool, `ALTER TABLE outbox.messages SET (autovacuum_enabled = false)`)
	execSQL(t, db.Pool, `INSERT INTO outbox.messages (event_id, topic, partition, type, payload, content_type)
		SELECT gen_random_uuid(), 'payments', i % 32, 'payment.created', '\x7b7d', 'application/json'
		  FROM generate_series(1, 50000) i`)
	execSQL(t, db.Pool, `ANALYZE outbox.messages`)
	execSQL(t, db.Pool, `UPDATE outbox.messages SET status = 'published', published_at = now() WHERE id <= 45000`)
	s := newSweeper(t, db.Pool, Config{}, nil)
	for name, q := range map[string]string{"rescue": s.sql.rescueScan, "alarms": s.sql.partitions} {
		args := []any{"1 minute"}
		if name == "rescue" {
			args = append(args, 1000)
		}
		rows, err := db.Pool.Query(context.Background(), "EXPLAIN "+q, args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		plan := strings.Join(lines, "\n")
		if !strings.Contains(plan, "messages_pending_idx") {
			t.Errorf("%s does not read messages_pending_idx:\n%s", name, plan)
		}
		for _, bad := range []string{"messages_pkey", "Seq Scan on messages"} {
			if strings.Contains(plan, bad) {
				t.Errorf("%s uses %s, which walks published rows:\n%s", name, bad, plan)
			}
		}
	}
}
