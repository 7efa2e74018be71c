package outbox_test

// Benchmarks of the producer path against the real PostgreSQL. Run:
//
//	go test ./outbox -run '^$' -bench . -benchtime 3s -count 5
//
// Each benchmark reports p50 and p99 latency per business transaction
// (p50-µs, p99-µs) besides ns/op, because the goal is stated on the median:
// Enqueue adds at most 15% to a one-INSERT business transaction.
// docs/benchmarks.md has the figures measured on the project machine.

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
)

const businessDDL = `CREATE TABLE transfers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	account text NOT NULL, amount_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`

const businessInsert = `INSERT INTO transfers (account, amount_cents) VALUES ($1, $2)`

type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) { l.mu.Lock(); l.d = append(l.d, d); l.mu.Unlock() }

func (l *latencies) report(b *testing.B) {
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	b.ReportMetric(float64(l.d[len(l.d)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(l.d[len(l.d)*99/100].Microseconds()), "p99-µs")
}

func benchDB(b *testing.B, conns int32) *pgxpool.Pool {
	db := testenv.NewDB(b)
	ctx := context.Background()
	for _, ddl := range []string{businessDDL, peerTableDDL} {
		if _, err := db.Pool.Exec(ctx, ddl); err != nil {
			b.Fatal(err)
		}
	}
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = conns, conns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	// Warm the connections and their prepared statements.
	for i := 0; i < int(conns)*4; i++ {
		if err := businessTx(ctx, pool, nil, i); err != nil {
			b.Fatal(err)
		}
	}
	return pool
}

// txShape is what one business transaction does besides its INSERT.
type txShape func(ctx context.Context, tx pgx.Tx, i int) error

// businessTx is the unit of work measured: BEGIN; one INSERT; [event]; COMMIT.
// With a nil shape it is the baseline.
func businessTx(ctx context.Context, pool *pgxpool.Pool, shape txShape, i int) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if shape != nil {
			return shape(ctx, tx, i)
		}
		_, err := tx.Exec(ctx, businessInsert, account(i), int64(i))
		return err
	})
}

func account(i int) string { return fmt.Sprintf("acct-%d", i%1000) }

var payload = []byte(`{"transfer_id":"7d3c9a52","account":"acct-1","amount_cents":12345,"currency":"EUR"}`)

func eventFor(i int, keyed bool) outbox.Message {
	msg := outbox.Message{Topic: "payments", Type: "transfer.created", Payload: payload}
	if keyed {
		msg.Key = account(i)
	}
	return msg
}

// enqueueWith: the business INSERT, then Enqueue as its own statement.
func enqueueWith(w *outbox.Writer, keyed bool) txShape {
	return func(ctx context.Context, tx pgx.Tx, i int) error {
		if _, err := tx.Exec(ctx, businessInsert, account(i), int64(i)); err != nil {
			return err
		}
		_, err := w.Enqueue(ctx, tx, eventFor(i, keyed))
		return err
	}
}

// queueWith: the business INSERT and the event in one pgx.Batch.
func queueWith(w *outbox.Writer) txShape {
	return func(ctx context.Context, tx pgx.Tx, i int) error {
		b := &pgx.Batch{}
		b.Queue(businessInsert, account(i), int64(i))
		if _, err := w.Queue(ctx, b, eventFor(i, true)); err != nil {
			return err
		}
		return tx.SendBatch(ctx, b).Close()
	}
}

// emptyStatementWith: the business INSERT, then a statement that does no
// work (SELECT 1). It is the floor of any design that writes the event in a
// statement of its own: one more round trip, nothing stored.
func emptyStatementWith() txShape {
	return func(ctx context.Context, tx pgx.Tx, i int) error {
		if _, err := tx.Exec(ctx, businessInsert, account(i), int64(i)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT 1`)
		return err
	}
}

// peerTableDDL and peerInsert are the table and the INSERT of the
// watermill-sql v3 publisher (DefaultPostgreSQLSchema, one message): the
// peer the goal quotes, as a statement shape, without its library.
const (
	peerTableDDL = `CREATE TABLE watermill_payments ("offset" BIGSERIAL, "uuid" VARCHAR(36) NOT NULL,
	"created_at" TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "payload" JSON DEFAULT NULL,
	"metadata" JSON DEFAULT NULL, "transaction_id" xid8 NOT NULL, PRIMARY KEY ("transaction_id", "offset"))`
	peerInsert = `INSERT INTO watermill_payments (uuid, payload, metadata, transaction_id) VALUES ($1, $2, $3, pg_current_xact_id())`
)

// peerInsertWith: the business INSERT, then the peer's event INSERT.
func peerInsertWith() txShape {
	return func(ctx context.Context, tx pgx.Tx, i int) error {
		if _, err := tx.Exec(ctx, businessInsert, account(i), int64(i)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, peerInsert, fmt.Sprintf("0195f0a2-7d3c-7a52-8000-%012d", i), payload, `{"name":"transfer.created"}`)
		return err
	}
}

// relayState registers a relay in the benchmark database: an idle relay makes
// every producer commit send a NOTIFY (the worst case); a busy one makes
// producers skip it.
type relayState int

const (
	noRelay relayState = iota
	idleRelay
	busyRelay
)

func runBusiness(b *testing.B, producers int, relays relayState, shape txShape) {
	pool := benchDB(b, int32(producers))
	ctx := context.Background()
	if relays != noRelay {
		if _, err := pool.Exec(ctx, `INSERT INTO outbox.relays (relay_id, hostname, pid, version, alive_until, idle)
			VALUES ('bench', 'h', 1, 'bench', now() + interval '1 hour', $1)`, relays == idleRelay); err != nil {
			b.Fatal(err)
		}
	}
	var lat latencies
	var mu sync.Mutex
	next := 0
	b.ResetTimer()
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next >= b.N {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				start := time.Now()
				if err := businessTx(ctx, pool, shape, i); err != nil {
					b.Error(err)
					return
				}
				lat.add(time.Since(start))
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	lat.report(b)
}

func mustWriter(b *testing.B, cfg *outbox.Config) *outbox.Writer {
	w, err := outbox.NewWriter(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// BenchmarkBusinessTx is the baseline and the cost of Enqueue on top of it,
// with one producer and with eight concurrent producers.
func BenchmarkBusinessTx(b *testing.B) {
	for _, producers := range []int{1, 8} {
		name := func(s string) string { return fmt.Sprintf("producers=%d/%s", producers, s) }
		b.Run(name("baseline"), func(b *testing.B) {
			runBusiness(b, producers, noRelay, nil)
		})
		// An idle relay: every commit sends a NOTIFY (worst case).
		b.Run(name("enqueue-relay-idle"), func(b *testing.B) {
			runBusiness(b, producers, idleRelay, enqueueWith(mustWriter(b, nil), true))
		})
		// A busy relay needs no wake-up: no NOTIFY is sent.
		b.Run(name("enqueue-relay-busy"), func(b *testing.B) {
			runBusiness(b, producers, busyRelay, enqueueWith(mustWriter(b, nil), true))
		})
		// Keyless events skip the lane row: this is the cost of a bare
		// outbox INSERT, i.e. what an ordering scheme without a per-key
		// lock (transaction-id horizon) would pay on the producer path.
		b.Run(name("enqueue-keyless-relay-busy"), func(b *testing.B) {
			runBusiness(b, producers, busyRelay, enqueueWith(mustWriter(b, nil), false))
		})
		// The business INSERT and the event in one pgx.Batch: no extra
		// round trip.
		b.Run(name("queue-in-batch-relay-busy"), func(b *testing.B) {
			runBusiness(b, producers, busyRelay, queueWith(mustWriter(b, nil)))
		})
		// Floors measured in the same run: an extra statement that does
		// nothing, and the peer's one-index event INSERT.
		b.Run(name("floor-empty-statement"), func(b *testing.B) {
			runBusiness(b, producers, noRelay, emptyStatementWith())
		})
		b.Run(name("floor-peer-insert"), func(b *testing.B) {
			runBusiness(b, producers, noRelay, peerInsertWith())
		})
	}
}

// BenchmarkEnqueueBatch stores batches of 100 and 1,000 events (1,000 keys)
// per transaction and reports events/s.
func BenchmarkEnqueueBatch(b *testing.B) {
	for _, size := range []int{100, 1000} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			db := testenv.NewDB(b)
			ctx := context.Background()
			msgs := make([]outbox.Message, size)
			for i := range msgs {
				msgs[i] = outbox.Message{Topic: "payments", Key: fmt.Sprintf("acct-%d", i%1000), Type: "transfer.created", Payload: payload}
			}
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
					_, err := outbox.EnqueueBatch(ctx, tx, msgs)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N*size)/time.Since(start).Seconds(), "events/s")
		})
	}
}
