package sweeper

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
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
	execSQL(t, pool, `ANALYZE outbox.messages`)
}

// drain runs a relay until want events are published (or stopAt closes)
// and returns how many it published per second meanwhile.
func drain(t testing.TB, url string, want int64, stopAt <-chan struct{}) (float64, int64) {
	t.Helper()
	pool := newPool(t, url, 6)
	count := func() int64 {
		return queryInt(t, pool, `SELECT count(*) FROM outbox.messages WHERE status = 'published' AND topic = 'live'`)
	}
	before := count()
	r, err := relay.New(pool, &relay.Config{Publisher: &ackPublisher{}, LeaseTTL: 2 * time.Second,
		PollInterval: 50 * time.Millisecond, Logger: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := time.Now()
	go func() { done <- r.Run(ctx) }()
	var got int64
	for {
		got = count() - before
		if got >= want {
			break
		}
		select {
		case <-stopAt:
			got = count() - before
		case <-time.After(20 * time.Millisecond):
			continue
		}
		break
	}
	elapsed := time.Since(started)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return float64(got) / elapsed.Seconds(), got
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

	// Warm-up (lanes created, caches and plans warm), then the baseline:
	// the relay drains a backlog with nothing else running.
	enqueueLive(t, db.Pool, backlog/5)
	drain(t, db.URL, int64(backlog/5), nil)
	enqueueLive(t, db.Pool, backlog)
	baseline, _ := drain(t, db.URL, int64(backlog), nil)

	// The same with retention deleting the history at the same time, and a
	// producer enqueueing one event every 5ms.
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
	var wg sync.WaitGroup
	var maxEnqueue time.Duration
	var enqueued int
	wg.Go(func() {
		ctx := context.Background()
		for {
			select {
			case <-retentionDone:
				return
			case <-time.After(5 * time.Millisecond):
			}
			start := time.Now()
			// Its own keys: one deep lane would be published one event per
			// round by a publisher that is not KeyAtomic.
			msg := outbox.Message{Topic: "producer", Key: fmt.Sprintf("p%d", enqueued), Type: "test.event", Payload: []byte(`{}`)}
			if _, err := outbox.Enqueue(ctx, db.Pool, msg); err != nil {
				t.Error(err)
				return
			}
			maxEnqueue = max(maxEnqueue, time.Since(start))
			enqueued++
		}
	})
	during, published := drain(t, db.URL, int64(backlog), retentionDone)
	<-retentionDone
	wg.Wait()
	if retErr != nil {
		t.Fatal(retErr)
	}
	// Alone again: the machine's load drifts; compare with both.
	enqueueLive(t, db.Pool, backlog)
	after, _ := drain(t, db.URL, int64(backlog), nil)
	rep := res.Retention
	t.Logf("retention (pause %s): %d events and %d attempt rows deleted in %d statements over %s (longest statement %s)",
		pause, rep.DeletedMessages, rep.DeletedAttempts, rep.Statements, res.Duration.Round(time.Millisecond), rep.LongestStatement.Round(time.Millisecond))
	t.Logf("relay: %.0f events/s alone before, %.0f during retention, %.0f alone after: %.0f%% of alone (%d events measured during); %d enqueues during retention, slowest %s",
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
