package ops_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*Cluster).run"))
}

var who = ops.Action{Actor: "alice", Reason: "INC-42 fixed the consumer"}

func store(t *testing.T, db *testenv.DB) *ops.Store {
	t.Helper()
	s, err := ops.New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// seed enqueues n events of one key and parks the first one the way the
// relay does (status parked, lane blocked, followers blocked).
func seed(t *testing.T, pool *pgxpool.Pool, topic, key string, n int) []int64 {
	t.Helper()
	ctx := context.Background()
	tx, _ := pool.Begin(ctx)
	for i := 0; i < n; i++ {
		if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: key, Type: "payout.created",
			Payload: []byte(fmt.Sprintf(`{"n":%d,"note":"<script>alert(1)</script>"}`, i)), CorrelationID: "flow-7"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	rows, _ := pool.Query(ctx, `SELECT id FROM outbox.messages WHERE topic = $1 AND key = $2 ORDER BY sequence`, topic, key)
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids = append(ids, id)
	}
	steps := []struct {
		q    string
		args []any
	}{
		{`UPDATE outbox.messages SET status = 'parked', attempts = 3, parked_at = now(), last_error_class = 'poison_format',
		        last_error = 'schema mismatch' WHERE id = $1`, []any{ids[0]}},
		{`UPDATE outbox.lanes SET hold_until = 'infinity', blocked_by = $1, blocked_since = now() WHERE topic = $2 AND key = $3`, []any{ids[0], topic, key}},
		{`UPDATE outbox.messages SET status = 'blocked' WHERE topic = $2 AND key = $3 AND id <> $1`, []any{ids[0], topic, key}},
	}
	for _, st := range steps {
		if _, err := pool.Exec(ctx, st.q, st.args...); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func rowJSON(t *testing.T, pool *pgxpool.Pool, id int64) string {
	t.Helper()
	var s string
	if err := pool.QueryRow(context.Background(), `SELECT to_jsonb(m)::text FROM outbox.messages m WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func auditCount(t *testing.T, pool *pgxpool.Pool, action string) int {
	var n int
	pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox.audit_log WHERE action = $1 AND actor = 'alice' AND reason <> ''`, action).Scan(&n)
	return n
}

func TestActionsNeedActorAndReason(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	s := store(t, db)
	ids := seed(t, db.Pool, "payouts", "p-1", 1)
	ref := ops.Ref{Kind: ops.KindOutbox, ID: ids[0]}
	if _, err := s.Replay(context.Background(), ops.Action{Reason: "x"}, ref); !errors.Is(err, ops.ErrNoActor) {
		t.Errorf("no actor: %v", err)
	}
	if _, err := s.Drop(context.Background(), ops.Action{Actor: "a"}, ref); !errors.Is(err, ops.ErrNoReason) {
		t.Errorf("no reason: %v", err)
	}
	if _, err := s.Replay(context.Background(), who, ops.Ref{Kind: ops.KindOutbox, ID: 999999}); !errors.Is(err, ops.ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
}

// Drop then restore gives back the exact row; both are audited with
// before and after; the dropped head's lane flows again.
func TestDropRestoreExactRow(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	s := store(t, db)
	ctx := context.Background()
	ids := seed(t, db.Pool, "payouts", "p-2", 3)
	before := rowJSON(t, db.Pool, ids[0])
	ref := ops.Ref{Kind: ops.KindOutbox, ID: ids[0]}
	out, err := s.Drop(ctx, who, ref)
	if err != nil {
		t.Fatal(err)
	}
	if out.NewRef == nil || !strings.Contains(out.Note, "skip marker") {
		t.Fatalf("drop of a keyed head: %+v", out)
	}
	// The marker takes the dropped event's lane place; the lane waits for it.
	var markerType, markerStatus string
	var markerSeq, blockedBy int64
	db.Pool.QueryRow(ctx, `SELECT type, status, sequence FROM outbox.messages WHERE id = $1`, out.NewRef.ID).Scan(&markerType, &markerStatus, &markerSeq)
	db.Pool.QueryRow(ctx, `SELECT blocked_by FROM outbox.lanes WHERE key = 'p-2'`).Scan(&blockedBy)
	if markerType != "outboxkit.skipped" || markerStatus != "pending" || markerSeq != 1 || blockedBy != out.NewRef.ID {
		t.Errorf("marker %s %s #%d, lane waits for %d", markerType, markerStatus, markerSeq, blockedBy)
	}
	if _, err := s.Drop(ctx, who, ref); !errors.Is(err, ops.ErrWrongStatus) {
		t.Errorf("second drop: %v", err)
	}
	if _, err := s.Restore(ctx, who, ref); err != nil {
		t.Fatal(err)
	}
	if after := rowJSON(t, db.Pool, ids[0]); after != before {
		t.Errorf("restore changed the row:\nbefore %s\nafter  %s", before, after)
	}
	db.Pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE id = $1`, out.NewRef.ID).Scan(&markerStatus)
	db.Pool.QueryRow(ctx, `SELECT blocked_by FROM outbox.lanes WHERE key = 'p-2'`).Scan(&blockedBy)
	if markerStatus != "dropped" || blockedBy != ids[0] {
		t.Errorf("after restore: marker %s, lane waits for %d (want the restored event %d)", markerStatus, blockedBy, ids[0])
	}
	if auditCount(t, db.Pool, "drop") != 1 || auditCount(t, db.Pool, "restore") != 1 {
		t.Error("drop and restore must each write one audit entry")
	}
	var b, a string
	db.Pool.QueryRow(ctx, `SELECT before->>'status', after->>'status' FROM outbox.audit_log WHERE action = 'drop'`).Scan(&b, &a)
	if b != "parked" || a != "dropped" {
		t.Errorf("drop audit before/after status %q/%q", b, a)
	}
}

// Edit stores a corrected copy in the original's place; the original keeps
// its payload.
func TestEditKeepsOriginal(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	s := store(t, db)
	ctx := context.Background()
	ids := seed(t, db.Pool, "payouts", "p-3", 2)
	var origPayload []byte
	db.Pool.QueryRow(ctx, `SELECT payload FROM outbox.messages WHERE id = $1`, ids[0]).Scan(&origPayload)
	out, err := s.Edit(ctx, who, ops.Ref{Kind: ops.KindOutbox, ID: ids[0]}, []byte(`{"n":0,"fixed":true}`), "")
	if err != nil {
		t.Fatal(err)
	}
	var payload []byte
	var status string
	db.Pool.QueryRow(ctx, `SELECT payload, status FROM outbox.messages WHERE id = $1`, ids[0]).Scan(&payload, &status)
	if string(payload) != string(origPayload) || status != "dropped" {
		t.Errorf("original: payload %q status %s", payload, status)
	}
	var seq, origSeq int64
	var causation, editOf, newStatus string
	db.Pool.QueryRow(ctx, `SELECT sequence, causation_id, headers->>'outboxkit-edit-of', status FROM outbox.messages WHERE id = $1`,
		out.NewRef.ID).Scan(&seq, &causation, &editOf, &newStatus)
	db.Pool.QueryRow(ctx, `SELECT sequence FROM outbox.messages WHERE id = $1`, ids[0]).Scan(&origSeq)
	var origEvent string
	db.Pool.QueryRow(ctx, `SELECT event_id::text FROM outbox.messages WHERE id = $1`, ids[0]).Scan(&origEvent)
	if seq != origSeq || causation != origEvent || editOf != origEvent || newStatus != "pending" {
		t.Errorf("copy: sequence %d (orig %d), causation %q, edit-of %q, status %s", seq, origSeq, causation, editOf, newStatus)
	}
	var blockedBy int64
	db.Pool.QueryRow(ctx, `SELECT blocked_by FROM outbox.lanes WHERE key = 'p-3'`).Scan(&blockedBy)
	if blockedBy != out.NewRef.ID {
		t.Errorf("lane waits for %d, want the copy %d", blockedBy, out.NewRef.ID)
	}
	if auditCount(t, db.Pool, "edit") != 1 {
		t.Error("edit not audited")
	}
}

// A dry run says what would happen and changes nothing; the real redrive
// replays in key order, with progress.
func TestRedriveDryRunAndProgress(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	s := store(t, db)
	ctx := context.Background()
	seed(t, db.Pool, "payouts", "p-b", 2)
	seed(t, db.Pool, "payouts", "p-a", 2)
	seed(t, db.Pool, "refunds", "r-1", 1)
	snapshot := func() string {
		var s string
		db.Pool.QueryRow(ctx, `SELECT string_agg(id || status || attempts, ',' ORDER BY id) FROM outbox.messages`).Scan(&s)
		return s
	}
	before := snapshot()
	outs, err := s.Redrive(ctx, who, ops.Filter{Topic: "payouts"}, ops.RedriveOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 2 || outs[0].Result != "would replay" || !strings.Contains(outs[0].Note, `"p-a"`) {
		t.Fatalf("dry run: %+v", outs)
	}
	if snapshot() != before {
		t.Fatal("dry run changed rows")
	}
	var progress []int
	var slept int
	outs, err = s.Redrive(ctx, who, ops.Filter{Topic: "payouts"}, ops.RedriveOptions{PerSec: 10,
		Progress: func(done, total int) { progress = append(progress, done) },
		Sleep:    func(context.Context, time.Duration) error { slept++; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 2 || outs[0].Result != "replayed" || len(progress) != 2 || slept != 1 {
		t.Fatalf("redrive: %+v progress %v slept %d", outs, progress, slept)
	}
	if n := auditCount(t, db.Pool, "replay"); n != 2 {
		t.Errorf("%d replay audit entries, want 2", n)
	}
}

func TestLanesStatsTrace(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	s := store(t, db)
	ctx := context.Background()
	ids := seed(t, db.Pool, "payouts", "payout-123", 15)
	lanes, err := s.Lanes(ctx, "", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(lanes) != 1 || lanes[0].Waiting != 14 || lanes[0].HoldUntil != nil {
		t.Fatalf("lanes: %+v", lanes)
	}
	if d := lanes[0].Describe(); !strings.Contains(d, "payout-123 blocked since") || !strings.Contains(d, "class poison_format), 14 events waiting") {
		t.Errorf("describe: %s", d)
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Partitions) != testenv.Partitions || len(st.Backlog) == 0 {
		t.Errorf("stats: %+v", st)
	}
	if _, err := s.ActOnLane(ctx, who, "payouts", "payout-123", ops.LaneRelease); err != nil {
		t.Fatal(err)
	}
	var pending int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.messages WHERE status = 'pending'`).Scan(&pending)
	if pending != 14 {
		t.Errorf("release: %d pending, want 14 (head stays parked)", pending)
	}
	tr, err := s.Trace(ctx, ops.TraceQuery{Key: "payout-123"})
	if err != nil {
		t.Fatal(err)
	}
	if len(tr) < 16 || !strings.Contains(tr[0].What, "enqueued") {
		t.Errorf("trace: %d entries, first %+v", len(tr), tr[0])
	}
	last := tr[len(tr)-1]
	if last.Where != "audit" || !strings.Contains(last.What, "lane_release by alice") {
		t.Errorf("trace ends with %+v", last)
	}
	_ = ids
}

// End to end: an event parked as unroutable (its Kafka topic is missing)
// blocks its key; the topic is created and the operator replays the head;
// the relay publishes it and then the key's waiting events, in order.
func TestReplayWithRelayKeepsKeyOrder(t *testing.T) {
	t.Parallel()
	if testenvRealKafka() {
		t.Skip("a real Kafka may auto-create topics")
	}
	db := testenv.NewDB(t)
	s := store(t, db)
	ctx := context.Background()
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("ledger")
	tx, _ := db.Pool.Begin(ctx)
	for i := 0; i < 5; i++ {
		outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: "acct-1", Type: "t", Payload: []byte("{}")})
	}
	tx.Commit(ctx)
	pub, err := kafka.New(kafka.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	r, err := relay.New(db.Pool, &relay.Config{Publisher: pub, PollInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	testenv.Eventually(t, 30*time.Second, "head parked, key blocked", func() bool {
		var parked, blocked int
		db.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'parked'), count(*) FILTER (WHERE status = 'blocked') FROM outbox.messages`).Scan(&parked, &blocked)
		return parked == 1 && blocked == 4
	})
	items, err := s.List(ctx, ops.Filter{Class: "unroutable"})
	if err != nil || len(items) != 1 || items[0].Waiting != 4 {
		t.Fatalf("list: %+v %v", items, err)
	}
	k.CreateTopic(t, topic, 1)
	if _, err := s.Replay(ctx, who, items[0].Ref); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "all five published", func() bool {
		var n int
		db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.messages WHERE status = 'published'`).Scan(&n)
		return n == 5
	})
	recs := k.Records(t, topic, 5, 10*time.Second)
	for i, rec := range recs {
		var seq string
		for _, h := range rec.Headers {
			if h.Key == "ce_sequence" {
				seq = string(h.Value)
			}
		}
		if seq != fmt.Sprint(i+1) {
			t.Errorf("record %d has ce_sequence %s", i, seq)
		}
	}
}

func testenvRealKafka() bool { return os.Getenv("KAFKA_BROKERS") != "" }
