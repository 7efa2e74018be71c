package sweeper

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
)

// envInt reads a size from the environment (for the full-size run).
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// insertHistory inserts n published events, published 8 days ago, one in
// ten with a failed-attempt row, straight in SQL (fast).
func insertHistory(t testing.TB, pool *pgxpool.Pool, n int) {
	t.Helper()
	for done := 0; done < n; done += 100000 {
		execSQL(t, pool, `INSERT INTO outbox.messages (event_id, topic, key, partition, type, payload, content_type,
			status, attempts, created_at, published_at, published_by, broker_ack)
		SELECT gen_random_uuid(), 'history', '', outbox.partition_for(g::text), 'test.event', '\x7b7d', 'application/json',
			'published', 1, now() - interval '9 days', now() - interval '8 days', 'old-relay', 'memory'
		  FROM generate_series(1, $1) g`, min(100000, n-done))
	}
	execSQL(t, pool, `INSERT INTO outbox.attempts (message_id, event_id, attempt, started_at, duration_ms, relay_id, error_class, error, outcome)
		SELECT id, event_id, 1, created_at, 1, 'old-relay', 'transient', 'timeout', 'retry' FROM outbox.messages WHERE id % 10 = 0`)
	// Settle the fixture: without this, autovacuum processes the million
	// fresh rows while the baseline is measured, and only the baseline.
	execSQL(t, pool, `VACUUM (ANALYZE) outbox.messages`)
	execSQL(t, pool, `VACUUM (ANALYZE) outbox.attempts`)
}

// drain runs a relay until it has published want events of topic "live"
// (or stopAt closes) and returns how many it published per second
// meanwhile. Progress is counted as the publisher acknowledges, in memory:
// counting published rows in SQL every few milliseconds would scan the
// history that retention is deleting, and so slow the relay more before
// retention than after it.
func drain(t testing.TB, url string, want int64, stopAt <-chan struct{}) (float64, int64) {
	t.Helper()
	pool := newPool(t, url, 6)
	pub := &countingPublisher{topic: "live"}
	r, err := relay.New(pool, &relay.Config{Publisher: pub, LeaseTTL: 2 * time.Second,
		PollInterval: 50 * time.Millisecond, Logger: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := time.Now()
	go func() { done <- r.Run(ctx) }()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	var got int64
wait:
	for got = pub.acked.Load(); got < want; got = pub.acked.Load() {
		select {
		case <-stopAt:
			got = pub.acked.Load()
			break wait
		case <-tick.C:
		}
	}
	elapsed := time.Since(started)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return float64(got) / elapsed.Seconds(), got
}

// countingPublisher acknowledges every message at once and counts those of
// one topic.
type countingPublisher struct {
	topic string
	acked atomic.Int64
}

func (p *countingPublisher) Publish(_ context.Context, msgs []relay.Message) ([]relay.Result, error) {
	res := make([]relay.Result, len(msgs))
	var n int64
	for i := range msgs {
		res[i].Ack = "memory"
		if msgs[i].Topic == p.topic {
			n++
		}
	}
	p.acked.Add(n)
	return res, nil
}

func (p *countingPublisher) Close() error { return nil }

// trickle runs a producer that enqueues one event every 5ms, each in its
// own transaction, while phase runs, and returns how many it enqueued and
// the slowest Enqueue.
func trickle(t testing.TB, pool *pgxpool.Pool, phase func()) (int, time.Duration) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var slowest time.Duration
	var enqueued int
	wg.Go(func() {
		ctx := context.Background()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			start := time.Now()
			// Its own keys: one deep lane would be published one event per
			// round by a publisher that is not KeyAtomic.
			msg := outbox.Message{Topic: "producer", Key: fmt.Sprintf("p%d", enqueued), Type: "test.event", Payload: []byte(`{}`)}
			if _, err := outbox.Enqueue(ctx, pool, msg); err != nil {
				t.Error(err)
				return
			}
			slowest = max(slowest, time.Since(start))
			enqueued++
		}
	})
	phase()
	close(stop)
	wg.Wait()
	return enqueued, slowest
}

func enqueueLive(t testing.TB, pool *pgxpool.Pool, n int) {
	t.Helper()
	ctx := context.Background()
	for done := 0; done < n; done += 1000 {
		msgs := make([]outbox.Message, min(1000, n-done))
		for i := range msgs {
			msgs[i] = outbox.Message{Topic: "live", Key: fmt.Sprintf("k%d", (done+i)%500), Type: "test.event", Payload: []byte(`{}`)}
		}
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := outbox.EnqueueBatch(ctx, tx, msgs); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Retention of a large history proceeds in bounded statements while a
// relay keeps publishing and producers keep enqueueing: no Enqueue waits
// for it, no statement runs long, and the relay's throughput (draining a
// backlog, in-memory broker) is compared with runs without retention on the
// same database just before and just after.
//
// Default 100,000 rows; OUTBOXKIT_RETENTION_ROWS=1000000 for the issue's
// figure (run without -race for meaningful throughput numbers).
func TestRetentionInBatchesWhileRelayPublishes(t *testing.T) {
	db := testDB(t)
	rows := envInt("OUTBOXKIT_RETENTION_ROWS", 100000)
	backlog := envInt("OUTBOXKIT_RETENTION_BACKLOG", 20000)
	insertHistory(t, db.Pool, rows)

	// Every phase runs with the same producer (trickle), so that the
	// phases differ in retention only.
	// Warm-up (lanes created, caches and plans warm), then the baseline:
	// the relay drains a backlog with nothing else running.
	enqueueLive(t, db.Pool, backlog/5)
	drain(t, db.URL, int64(backlog/5), nil)
	enqueueLive(t, db.Pool, backlog)
	var baseline float64
	trickle(t, db.Pool, func() { baseline, _ = drain(t, db.URL, int64(backlog), nil) })

	// The same with retention deleting the history at the same time.
	enqueueLive(t, db.Pool, backlog)
	var pause time.Duration
	if v := os.Getenv("OUTBOXKIT_RETENTION_PAUSE"); v != "" {
		var err error
		if pause, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	s := newSweeper(t, newPool(t, db.URL, 2), Config{DeletePause: pause}, nil)
	retentionDone := make(chan struct{})
	var res Result
	var retErr error
	go func() {
		defer close(retentionDone)
		res, retErr = s.RunJob(context.Background(), JobRetention)
	}()
	var during float64
	var published int64
	enqueued, maxEnqueue := trickle(t, db.Pool, func() {
		during, published = drain(t, db.URL, int64(backlog), retentionDone)
		<-retentionDone
	})
	if retErr != nil {
		t.Fatal(retErr)
	}
	// Alone again: the machine's load drifts; compare with both.
	enqueueLive(t, db.Pool, backlog)
	var after float64
	trickle(t, db.Pool, func() { after, _ = drain(t, db.URL, int64(backlog), nil) })
	rep := res.Retention
	t.Logf("retention (pause %s): %d events and %d attempt rows deleted in %d statements over %s (longest statement %s)",
		pause, rep.DeletedMessages, rep.DeletedAttempts, rep.Statements, res.Duration.Round(time.Millisecond), rep.LongestStatement.Round(time.Millisecond))
	t.Logf("relay: %.0f events/s without retention before, %.0f during retention, %.0f without after: %.0f%% of without (%d events measured during); %d enqueues during retention, slowest %s",
		baseline, during, after, 200*during/(baseline+after), published, enqueued, maxEnqueue.Round(time.Millisecond))

	if rep.DeletedMessages != int64(rows) || rep.DeletedAttempts != int64(rows/10) {
		t.Fatalf("deleted %d events and %d attempts, want %d and %d", rep.DeletedMessages, rep.DeletedAttempts, rows, rows/10)
	}
	if rep.Statements < rows/DeleteBatchSizeDefault {
		t.Fatalf("%d statements for %d rows: not in batches", rep.Statements, rows)
	}
	if maxEnqueue > time.Second {
		t.Errorf("an Enqueue took %s during retention", maxEnqueue)
	}
	if rep.LongestStatement > time.Second {
		t.Errorf("a retention statement took %s", rep.LongestStatement)
	}
}
