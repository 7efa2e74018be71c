package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

// latencyResult is the latency scenario's outcome: three views of the time
// from a producer's commit to Kafka's acknowledgement.
type latencyResult struct {
	config    string // the relay's settings
	events    int
	rate      float64 // achieved commits per second
	producers int
	// db: published_at - created_at from outbox.messages (created_at is the
	// INSERT's clock time, a little before the commit).
	db quantiles
	// client: from tx.Commit returning in the producer to the relay's
	// Publisher returning Kafka's ack (both clocks in this process).
	client quantiles
	// e2e: from ce_time (= created_at) to a Kafka consumer receiving the
	// record.
	e2e quantiles
	// commit: from created_at (the INSERT) to the producer's Commit
	// returning: PostgreSQL's commit time, part of the db view but not the
	// relay's doing.
	commit quantiles
	detail string
}

type quantiles struct {
	n                  int
	p50, p90, p99, max time.Duration
}

func quantilesOf(d []time.Duration) quantiles {
	q := quantiles{n: len(d)}
	q.p50, q.p90, q.p99, q.max = percentiles(d)
	return q
}

// runLatency: producers commit one event per transaction at a steady rate
// (open loop: each event has its due time, whatever the previous commit
// took) while a relay with default settings publishes to Kafka.
func (e *env) runLatency(ctx context.Context, pg string) (latencyResult, error) {
	rate, dur, latencyProducers := e.opts.latencyRate, e.opts.latencyDuration, e.opts.latencyProducers
	total := int(float64(rate) * dur.Seconds())
	evs := workload(total, e.opts.keys, e.opts.payload)
	name, dbURL, err := e.newDB(ctx, e.tplEmpty, "latency")
	if err != nil {
		return latencyResult{}, err
	}
	defer e.dropDB(ctx, name)
	topic := benchTopic + ".latency"
	if err := e.createTopic(ctx, topic); err != nil {
		return latencyResult{}, err
	}
	defer e.deleteTopic(ctx, topic)

	tracer := newSQLTracer()
	relayPool, err := pool(ctx, dbURL, relay.WorkersDefault+4, tracer, pgParams(pg))
	if err != nil {
		return latencyResult{}, err
	}
	defer relayPool.Close()
	prodPool, err := pool(ctx, dbURL, int32(latencyProducers+1), nil, nil)
	if err != nil {
		return latencyResult{}, err
	}
	defer prodPool.Close()
	if err := prodPool.Ping(ctx); err != nil {
		return latencyResult{}, err
	}

	var mu sync.Mutex
	commitAt := make(map[uuid.UUID]time.Time, total)
	ackAt := make(map[uuid.UUID]time.Time, total)
	pub, err := kafka.New(kafka.Config{Brokers: e.brokers, Logger: e.logger()})
	if err != nil {
		return latencyResult{}, err
	}
	defer pub.Close()
	counter := &countingRelayPublisher{Publisher: pub, target: int64(total), done: make(chan struct{}),
		onAck: func(id uuid.UUID, at time.Time) {
			mu.Lock()
			if _, seen := ackAt[id]; !seen {
				ackAt[id] = at
			}
			mu.Unlock()
		}}
	r, err := relay.New(relayPool, &relay.Config{Publisher: counter, Logger: e.logger()})
	if err != nil {
		return latencyResult{}, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(runCtx) }()
	// Wait until the relay holds every partition and sleeps (idle flag set,
	// so producers NOTIFY it), as a relay does between bursts.
	if err := waitFor(ctx, 15*time.Second, func() (bool, error) {
		var owned int
		var idle bool
		err := prodPool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox.partitions WHERE owner IS NOT NULL),
		       coalesce((SELECT bool_or(idle) FROM outbox.relays), false)`).Scan(&owned, &idle)
		return owned == e.opts.partitions && idle, err
	}); err != nil {
		return latencyResult{}, fmt.Errorf("relay did not take its partitions: %w", err)
	}

	// The consumer reads from the start of the topic.
	cons, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		return latencyResult{}, err
	}
	defer cons.Close()
	var e2e []time.Duration
	consDone := make(chan struct{})
	consCtx, stopCons := context.WithCancel(ctx)
	defer stopCons()
	go func() {
		defer close(consDone)
		for len(e2e) < total && consCtx.Err() == nil {
			fs := cons.PollFetches(consCtx)
			now := time.Now()
			fs.EachRecord(func(rec *kgo.Record) {
				for _, h := range rec.Headers {
					if h.Key == "ce_time" {
						if t, err := time.Parse(time.RFC3339Nano, string(h.Value)); err == nil {
							e2e = append(e2e, now.Sub(t))
						}
					}
				}
			})
		}
	}()

	// Producers.
	var next atomic.Int64
	interval := time.Second / time.Duration(rate)
	start := time.Now().Add(50 * time.Millisecond)
	var firstCommit, lastCommit atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, latencyProducers)
	for range latencyProducers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= total || ctx.Err() != nil {
					return
				}
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					time.Sleep(d)
				}
				tx, err := prodPool.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				id, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: evs[i].key, Type: benchType, Payload: evs[i].payload})
				if err != nil {
					tx.Rollback(ctx) //nolint:errcheck
					errs <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
				now := time.Now()
				mu.Lock()
				commitAt[id] = now
				mu.Unlock()
				firstCommit.CompareAndSwap(0, now.UnixNano())
				lastCommit.Store(now.UnixNano())
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return latencyResult{}, fmt.Errorf("producer: %w", err)
	}
	select {
	case <-counter.done:
	case <-time.After(e.opts.timeout):
		return latencyResult{}, fmt.Errorf("latency: only %d of %d events acknowledged", counter.acked.Load(), total)
	}
	if err := waitFor(ctx, e.opts.timeout, func() (bool, error) {
		var pending int
		err := prodPool.QueryRow(ctx, `SELECT count(*) FROM outbox.messages WHERE status <> 'published'`).Scan(&pending)
		return pending == 0, err
	}); err != nil {
		return latencyResult{}, fmt.Errorf("latency: events not marked published: %w", err)
	}
	select {
	case <-consDone:
	case <-time.After(30 * time.Second):
		stopCons()
		<-consDone
	}

	res := latencyResult{config: relayConfig{pg: pg}.String(), events: total, producers: latencyProducers}
	if span := time.Duration(lastCommit.Load() - firstCommit.Load()); span > 0 {
		res.rate = float64(total-1) / span.Seconds()
	}
	var client []time.Duration
	mu.Lock()
	for id, c := range commitAt {
		if a, ok := ackAt[id]; ok {
			client = append(client, a.Sub(c))
		}
	}
	mu.Unlock()
	res.client = quantilesOf(client)
	res.e2e = quantilesOf(e2e)

	rows, err := prodPool.Query(ctx, `SELECT extract(epoch FROM published_at - created_at)::float8 FROM outbox.messages WHERE status = 'published'`)
	if err != nil {
		return res, err
	}
	var db []time.Duration
	for rows.Next() {
		var secs float64
		if err := rows.Scan(&secs); err != nil {
			rows.Close()
			return res, err
		}
		db = append(db, time.Duration(secs*float64(time.Second)))
	}
	if err := rows.Err(); err != nil {
		return res, err
	}
	res.db = quantilesOf(db)

	rows, err = prodPool.Query(ctx, `SELECT event_id, created_at FROM outbox.messages`)
	if err != nil {
		return res, err
	}
	var commit []time.Duration
	mu.Lock()
	for rows.Next() {
		var id uuid.UUID
		var created time.Time
		if err := rows.Scan(&id, &created); err != nil {
			rows.Close()
			mu.Unlock()
			return res, err
		}
		if c, ok := commitAt[id]; ok {
			commit = append(commit, c.Sub(created))
		}
	}
	mu.Unlock()
	if err := rows.Err(); err != nil {
		return res, err
	}
	res.commit = quantilesOf(commit)
	res.detail = tracer.report(&counter.stats, dur, relay.WorkersDefault)
	cancel()
	if err := <-runErr; err != nil {
		return res, err
	}
	if res.e2e.n < total {
		return res, fmt.Errorf("latency: the consumer received %d of %d records", res.e2e.n, total)
	}
	return res, nil
}

func waitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
