package inbox_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// BenchmarkDedupCost measures events/s through Handle with a one-INSERT
// handler against the same handler in a plain transaction (no inbox record,
// no order guard), in interleaved rounds of the same run, and reports the
// medians and the overhead. Workers stand for Kafka partitions: each
// handles its own keys in order.
//
//	go test -run '^$' -bench DedupCost -benchtime 1x ./inbox/
//
// inbox-batch is HandleBatch with batches of OUTBOXKIT_BENCH_BATCH (default
// 100) events per worker, as the adapters call it under load, and
// handler-only-batch the same handler on the same batches in plain
// transactions. floor-empty-statement is the handler alone after a SELECT 1
// in its transaction: what one extra round trip costs, the least any inbox
// that records the event in a statement of its own adds.
// floor-processed-batch is handler-only-batch plus one INSERT of a row per
// event into inbox.processed: the least the batched path can add.
// floor-processed-lanes-batch adds the lanes' update to that statement: the
// least with the per-key order guard.
//
// OUTBOXKIT_BENCH_EVENTS (default 4000) events per round and variant,
// OUTBOXKIT_BENCH_ROUNDS (default 5), OUTBOXKIT_BENCH_WORKERS (default 8),
// OUTBOXKIT_BENCH_KEYS keys per worker (default 16; the Kafka consumer
// benchmark's 1,000 keys on 8 partitions is 125).
// OUTBOXKIT_BENCH_VARIANTS, a comma-separated list, runs only those
// variants (handler-only-batch,inbox-batch to study the batched path).
func BenchmarkDedupCost(b *testing.B) {
	events := envInt("OUTBOXKIT_BENCH_EVENTS", 4000)
	rounds := envInt("OUTBOXKIT_BENCH_ROUNDS", 5)
	workers := envInt("OUTBOXKIT_BENCH_WORKERS", 8)
	keys := envInt("OUTBOXKIT_BENCH_KEYS", 16)
	db := testenv.NewDB(b)
	ctx := context.Background()
	pcfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	pcfg.MaxConns = int32(workers + 2)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE bench_effects (event_id uuid NOT NULL, key text NOT NULL, sequence bigint NOT NULL, payload bytea NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	insert := func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		_, err := tx.Exec(ctx, `INSERT INTO bench_effects (event_id, key, sequence, payload) VALUES ($1, $2, $3, $4)`,
			ev.ID, ev.Key, ev.Sequence, ev.Payload)
		return err
	}
	in, err := inbox.New(pool, &inbox.Config{Consumer: "bench", ConsumerVersion: "bench", Logger: testLogger()})
	if err != nil {
		b.Fatal(err)
	}
	in.Register("bench.event", 1, insert)

	seq := map[string]int64{}
	var seqMu sync.Mutex
	// batch builds one round's deliveries: per worker a slice, keys
	// worker-w-k, sequences continuing across rounds.
	batch := func(prefix string, keyed bool, events int) [][]inbox.Delivery {
		out := make([][]inbox.Delivery, workers)
		seqMu.Lock()
		defer seqMu.Unlock()
		for w := range workers {
			for i := range events / workers {
				e := testEvent{id: uuid.Must(uuid.NewV7()), typ: "bench.event", topic: "bench",
					payload: []byte(`{"amount_cents":12500,"currency":"EUR"}`), offset: 1}
				if keyed {
					e.key = fmt.Sprintf("%s-%d-%d", prefix, w, i%keys)
					seq[e.key]++
					e.seq = seq[e.key]
				}
				out[w] = append(out[w], e.delivery())
			}
		}
		return out
	}
	run := func(name string, ds [][]inbox.Delivery, handle func(inbox.Delivery) error) float64 {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for _, part := range ds {
			wg.Go(func() {
				for _, d := range part {
					if err := handle(d); err != nil {
						errs <- fmt.Errorf("%s: %w", name, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		n := 0
		for _, p := range ds {
			n += len(p)
		}
		return float64(n) / time.Since(start).Seconds()
	}
	batchSize := envInt("OUTBOXKIT_BENCH_BATCH", 100)
	// plainBatch is the handler alone on batches: BatchSize events per
	// transaction, no inbox record, no order guard.
	plainBatch := func(part []inbox.Delivery) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, d := range part {
				if err := insert(ctx, tx, plainEvent(d)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	// floorBatch is plainBatch plus the least a batch's dedup record can
	// be: one statement that inserts a row per event into inbox.processed
	// (its required columns only, a constant fingerprint), no lanes, no
	// dead-letter check, no decoding. No inbox that records each event in
	// inbox.processed, as the contract requires, adds less.
	// floorLanesBatch adds to that statement the order guard's least: the
	// lane of each key of the batch moved to its last sequence (started
	// for a key's first event).
	sha := make([]byte, 32)
	floorWith := func(lanes bool) func(part []inbox.Delivery) error {
		return func(part []inbox.Delivery) error {
			evs := make([]*inbox.Event, len(part))
			ids := make([]pgtype.UUID, len(part))
			keys := make([]string, len(part))
			seqs := make([]int64, len(part))
			for i, d := range part {
				evs[i] = plainEvent(d)
				ids[i] = pgtype.UUID{Bytes: evs[i].ID, Valid: true}
				keys[i], seqs[i] = evs[i].Key, evs[i].Sequence
			}
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				var err error
				if lanes {
					var inserted, moved int
					err = tx.QueryRow(ctx, `WITH input AS (
    SELECT * FROM unnest($1::uuid[], $3::text[], $4::bigint[]) AS t(id, key, seq)
), ins AS (
    INSERT INTO inbox.processed (consumer, event_id, topic, payload_sha256)
    SELECT 'bench-floor-lanes', id, 'bench', $2 FROM input RETURNING 1
), runs AS (
    SELECT 'bench-floor-lanes'::text AS consumer, key, min(seq) AS first, max(seq) AS last FROM input GROUP BY key
), upd AS (
    UPDATE inbox.lanes l SET last_sequence = r.last, updated_at = now() FROM runs r
     WHERE l.consumer = r.consumer AND l.topic = 'bench' AND l.key = r.key AND l.last_sequence = r.first - 1
    RETURNING 1
), new AS (
    INSERT INTO inbox.lanes (consumer, topic, key, last_sequence)
    SELECT r.consumer, 'bench', r.key, r.last FROM runs r WHERE r.first = 1
    ON CONFLICT (consumer, topic, key) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd) + (SELECT count(*) FROM new)`, ids, sha, keys, seqs).Scan(&inserted, &moved)
					if err == nil && (inserted != len(part) || moved != len(slices.Compact(slices.Sorted(slices.Values(keys))))) {
						err = fmt.Errorf("floor with lanes: %d records and %d lanes for %d events", inserted, moved, len(part))
					}
				} else {
					_, err = tx.Exec(ctx, `INSERT INTO inbox.processed (consumer, event_id, topic, payload_sha256)
SELECT 'bench-floor', id, 'bench', $2 FROM unnest($1::uuid[]) AS t(id)`, ids, sha)
				}
				if err != nil {
					return err
				}
				for _, ev := range evs {
					if err := insert(ctx, tx, ev); err != nil {
						return err
					}
				}
				return nil
			})
		}
	}
	runBatch := func(name string, ds [][]inbox.Delivery, handleBatch func([]inbox.Delivery) error) float64 {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for _, part := range ds {
			wg.Go(func() {
				for i := 0; i < len(part); i += batchSize {
					if err := handleBatch(part[i:min(i+batchSize, len(part))]); err != nil {
						errs <- fmt.Errorf("%s: %w", name, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		n := 0
		for _, p := range ds {
			n += len(p)
		}
		return float64(n) / time.Since(start).Seconds()
	}
	viaInbox := func(d inbox.Delivery) error {
		out, err := in.Handle(ctx, d)
		if err == nil && out != inbox.Applied {
			err = fmt.Errorf("outcome %s", out)
		}
		return err
	}
	// plain is what a consumer without the inbox does: decode nothing more
	// than needed and run the handler in its own transaction.
	plain := func(d inbox.Delivery) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return insert(ctx, tx, plainEvent(d)) })
	}
	// floor is the handler alone plus one statement that does no work
	// (SELECT 1) before it: the cost of the extra round trip any inbox
	// that records the event in its own statement pays, with nothing
	// recorded.
	floor := func(d inbox.Delivery) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT 1`); err != nil {
				return err
			}
			return insert(ctx, tx, plainEvent(d))
		})
	}
	viaBatch := func(part []inbox.Delivery) error {
		outs, err := in.HandleBatch(ctx, part)
		if err == nil && outs[0] != inbox.Applied {
			err = fmt.Errorf("outcome %s", outs[0])
		}
		return err
	}

	results := map[string][]float64{}
	for i := 0; i < b.N; i++ {
		// Warm up connections, caches and prepared statements.
		warm := min(events, 4000)
		run("warm-up", batch("warm", true, warm), viaInbox)
		run("warm-up", batch("warm-plain", true, warm), plain)
		runBatch("warm-up", batch("warm-batch", true, warm), viaBatch)
		for r := range rounds {
			prefix := fmt.Sprintf("r%d", r)
			order := []string{"handler-only", "inbox-keyed", "inbox-keyless", "floor-empty-statement", "handler-only-batch", "inbox-batch", "floor-processed-batch", "floor-processed-lanes-batch"}
			if only := os.Getenv("OUTBOXKIT_BENCH_VARIANTS"); only != "" {
				order = slices.DeleteFunc(order, func(v string) bool { return !slices.Contains(strings.Split(only, ","), v) })
			}
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, v := range order {
				switch v {
				case "handler-only":
					results[v] = append(results[v], run(v, batch(prefix+"p", true, events), plain))
				case "inbox-keyed":
					results[v] = append(results[v], run(v, batch(prefix+"k", true, events), viaInbox))
				case "inbox-keyless":
					results[v] = append(results[v], run(v, batch(prefix+"u", false, events), viaInbox))
				case "floor-empty-statement":
					results[v] = append(results[v], run(v, batch(prefix+"f", true, events), floor))
				case "handler-only-batch":
					results[v] = append(results[v], runBatch(v, batch(prefix+"q", true, events), plainBatch))
				case "inbox-batch":
					results[v] = append(results[v], runBatch(v, batch(prefix+"b", true, events), viaBatch))
				case "floor-processed-batch":
					results[v] = append(results[v], runBatch(v, batch(prefix+"g", true, events), floorWith(false)))
				case "floor-processed-lanes-batch":
					results[v] = append(results[v], runBatch(v, batch(prefix+"h", true, events), floorWith(true)))
				}
			}
		}
	}
	med := func(v string) float64 {
		xs := slices.Clone(results[v])
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	for _, v := range []string{"handler-only", "inbox-keyed", "inbox-keyless", "handler-only-batch", "inbox-batch"} {
		if len(results[v]) > 0 {
			b.ReportMetric(med(v), v+"-events/s")
		}
	}
	// overhead reports how much more time an event takes through v than
	// through base, when both ran.
	overhead := func(metric, base, v string) {
		if len(results[base]) > 0 && len(results[v]) > 0 {
			b.ReportMetric(100*(med(base)/med(v)-1), metric)
		}
	}
	overhead("batch-overhead-%", "handler-only-batch", "inbox-batch")
	overhead("keyed-overhead-%", "handler-only", "inbox-keyed")
	overhead("keyless-overhead-%", "handler-only", "inbox-keyless")
	overhead("floor-empty-statement-overhead-%", "handler-only", "floor-empty-statement")
	overhead("floor-processed-batch-overhead-%", "handler-only-batch", "floor-processed-batch")
	overhead("floor-processed-lanes-batch-overhead-%", "handler-only-batch", "floor-processed-lanes-batch")
	b.Logf("workers %d, %d events per round and variant, %d rounds; rounds: %v", workers, events, rounds, results)
}

// plainEvent is the least a consumer without the inbox reads of a delivery.
func plainEvent(d inbox.Delivery) *inbox.Event {
	ev := &inbox.Event{ID: uuid.Must(uuid.NewV7()), Payload: d.Payload}
	for _, h := range d.Headers {
		switch h.Name {
		case "ce_partitionkey":
			ev.Key = string(h.Value)
		case "ce_sequence":
			ev.Sequence, _ = strconv.ParseInt(string(h.Value), 10, 64)
		}
	}
	return ev
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
