package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

// newPool opens a pool of its own on the test database, as a separate relay
// process would have.
func newPool(t testing.TB, url string, max int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = max
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("OUTBOXKIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// fastConfig is a relay configuration with short timers for tests.
func fastConfig(t testing.TB, pub relay.Publisher) *relay.Config {
	return &relay.Config{
		Publisher:        pub,
		PollInterval:     200 * time.Millisecond,
		LeaseTTL:         2 * time.Second,
		BackoffBase:      20 * time.Millisecond,
		BackoffMax:       200 * time.Millisecond,
		OutageBackoffMax: 300 * time.Millisecond,
		PublishTimeout:   5 * time.Second,
		Logger:           testLogger(t),
	}
}

// runRelay starts a relay and returns a stop function that cancels it and
// waits for Run to return (also called at cleanup).
func runRelay(t testing.TB, pool *pgxpool.Pool, cfg *relay.Config) (*relay.Relay, func()) {
	t.Helper()
	r, err := relay.New(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("relay Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("relay did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return r, stop
}

func kafkaPublisher(t testing.TB, k *testenv.Kafka) relay.Publisher {
	t.Helper()
	p, err := kafka.New(kafka.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// enqueue commits n events (keys key-0..key-(keys-1), round robin) in
// transactions of perTx events and returns their ids in enqueue order.
func enqueue(t testing.TB, pool *pgxpool.Pool, topic string, n, keys, perTx int) []uuid.UUID {
	t.Helper()
	ctx := context.Background()
	var ids []uuid.UUID
	for i := 0; i < n; i += perTx {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []outbox.Message
		for j := i; j < min(i+perTx, n); j++ {
			msgs = append(msgs, outbox.Message{Topic: topic, Key: fmt.Sprintf("key-%d", j%keys),
				Type: "test.event", Payload: []byte(fmt.Sprintf(`{"n":%d}`, j))})
		}
		got, err := outbox.EnqueueBatch(ctx, tx, msgs)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	return ids
}

func countStatus(t testing.TB, pool *pgxpool.Pool, status string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(),
		`SELECT count(*) FROM outbox.messages WHERE status = $1`, status).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitPublished(t testing.TB, pool *pgxpool.Pool, n int, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, fmt.Sprintf("%d events published", n), func() bool {
		return countStatus(t, pool, "published") >= n
	})
}

func header(r *kgo.Record, name string) string {
	for _, h := range r.Headers {
		if h.Key == name {
			return string(h.Value)
		}
	}
	return ""
}

// checkOrder asserts that, for each key, the records carry ce_sequence
// 1, 2, 3, ... in offset order (duplicates allowed: at-least-once), that
// every key stayed in one Kafka partition, and returns the distinct event ids.
func checkOrder(t testing.TB, recs []*kgo.Record) map[string]bool {
	t.Helper()
	sort.SliceStable(recs, func(i, j int) bool {
		if recs[i].Partition != recs[j].Partition {
			return recs[i].Partition < recs[j].Partition
		}
		return recs[i].Offset < recs[j].Offset
	})
	last := map[string]int64{}
	part := map[string]int32{}
	ids := map[string]bool{}
	for _, r := range recs {
		key := string(r.Key)
		ids[header(r, "ce_id")] = true
		if key == "" {
			continue
		}
		if p, ok := part[key]; ok && p != r.Partition {
			t.Errorf("key %s in Kafka partitions %d and %d", key, p, r.Partition)
		}
		part[key] = r.Partition
		seq, err := strconv.ParseInt(header(r, "ce_sequence"), 10, 64)
		if err != nil {
			t.Fatalf("record without ce_sequence: %v", err)
		}
		switch {
		case seq == last[key]+1:
			last[key] = seq
		case seq <= last[key]:
			// a duplicate of an event already seen: allowed (at-least-once)
		default:
			t.Errorf("key %s: sequence %d after %d (gap or reorder)", key, seq, last[key])
		}
	}
	return ids
}
