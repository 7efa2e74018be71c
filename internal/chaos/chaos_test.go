package chaos_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/sweeper"
)

// run is one chaos run: the environment, the processes, the workload and
// what the schedule did.
type run struct {
	t    *testing.T
	e    *env
	seed uint64

	rngMu sync.Mutex
	rng   *rand.Rand

	ledger *ledger
	prod   *producers

	relays                        []*proc
	kafkaConsumer, rabbitConsumer *proc

	mu        sync.Mutex
	records   []faultRecord
	pauses    []*pauseRecord
	longTx    []faultRecord
	longTxPID atomic.Uint32

	started, faultsDone, drained time.Time
}

func (r *run) procs() []*proc {
	return append(append([]*proc{}, r.relays...), r.kafkaConsumer, r.rabbitConsumer)
}

// TestChaos is the fault-injection soak. By default it makes one pass over
// every fault kind (about a minute of faults); -soak D repeats passes in a
// seeded random order for D. It fails when any invariant breaks; the summary
// table is logged (go test -v) and written to -chaos.summary.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos: skipped in -short mode")
	}
	seed := uint64(*seedFlag)
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	soak := runLength()
	if dl, ok := t.Deadline(); ok && soak > 0 && time.Until(dl) < soak+5*time.Minute {
		t.Fatalf("chaos: -soak %s needs -timeout of at least %s", soak, (soak + 6*time.Minute).Round(time.Minute))
	}
	t.Logf("chaos: seed %d (-chaos.seed %d repeats this run's workload and schedule)", seed, seed)

	longTx := 20 * time.Second
	if soak > 0 {
		longTx = min(3*time.Minute, soak/3)
	}
	e := newEnv(t, max(soak, 10*time.Minute)+30*time.Minute)
	r := &run{t: t, e: e, seed: seed, rng: rand.New(rand.NewPCG(seed, 0xC4A05)), ledger: newLedger()}
	t.Logf("chaos: child logs in %s", e.logDir)

	common := map[string]string{
		envTopicKafka: topicKafka, envTopicRabb: topicRabbit, envTopicUnrt: topicUnrouted,
		envKafka: e.kafkaAddr,
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range common {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for i := range numRelays {
		poll := relayPoll
		if i == numRelays-1 {
			poll = relayFastPoll
		}
		r.relays = append(r.relays, e.newProc("relay", fmt.Sprintf("relay-%d", i+1), with(map[string]string{
			envDB: e.relayDBURLs[i], envRabbit: e.rabbitRelayURL, envExchange: e.exchange, envPoll: poll.String(),
		})))
	}
	r.kafkaConsumer = e.newProc("consumer", "consumer-kafka", with(map[string]string{
		envDB: e.consumerDBURL, envBroker: "kafka", envConsumer: consumerKafka,
	}))
	r.rabbitConsumer = e.newProc("consumer", "consumer-rabbitmq", with(map[string]string{
		envDB: e.consumerDBURL, envBroker: "rabbitmq", envConsumer: consumerRabbit, envRabbit: e.rabbitConsumerURL,
		envQueue: e.queue,
	}))
	for _, p := range r.procs() {
		p.start()
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			for _, p := range r.procs() {
				p.kill()
			}
		}
		if t.Failed() {
			for _, p := range r.procs() {
				t.Logf("--- last lines of %s's log (%s):\n%s", p.base, p.log.Name(), p.tail(40))
			}
		}
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bg sync.WaitGroup
	defer bg.Wait()
	defer cancel()

	prodPool := newPool(t, e.db.URL, "chaos:producers", 6)
	prod, err := newProducers(prodPool, r.ledger, seed, *rateFlag)
	if err != nil {
		t.Fatal(err)
	}
	r.prod = prod
	bg.Go(func() { feed(ctx, e.db.Pool, r.ledger) })

	// A sweeper next to the relays, as in production: it frees expired
	// leases and wakes relays for events due too long.
	sw, err := sweeper.New(newPool(t, e.db.URL, "chaos:sweeper", 3), &sweeper.Config{
		Schedules: map[sweeper.Job]string{
			sweeper.JobReclaim: "@every 2s", sweeper.JobRescue: "@every 2s",
			sweeper.JobRetry: sweeper.Off, sweeper.JobRetention: sweeper.Off,
			sweeper.JobReconcile: sweeper.Off, sweeper.JobAlarms: sweeper.Off,
		},
		LeaderCheckInterval: 500 * time.Millisecond, ReclaimAfter: 2 * time.Second, RescueAfter: 3 * time.Second,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	sweepCtx, cancelSweeper := context.WithCancel(ctx)
	sweepDone := make(chan error, 1)
	go func() { sweepDone <- sw.Run(sweepCtx) }()
	var sweepOnce sync.Once
	var sweepErr error
	stopSweeper := func() error {
		sweepOnce.Do(func() { cancelSweeper(); sweepErr = <-sweepDone })
		return sweepErr
	}
	defer stopSweeper() //nolint:errcheck // checked below on the normal path

	prodCtx, stopProducers := context.WithCancel(ctx)
	prodDone := make(chan struct{})
	go func() { defer close(prodDone); prod.run(prodCtx) }()
	defer func() { stopProducers(); <-prodDone }()

	r.started = time.Now()
	testenv.Eventually(t, 90*time.Second, "the first events applied through Kafka and RabbitMQ", func() bool {
		var k, q int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE consumer = $1), count(*) FILTER (WHERE consumer = $2)
FROM chaos.applied`, consumerKafka, consumerRabbit).Scan(&k, &q); err != nil {
			return false
		}
		return k > 0 && q > 0
	})
	t.Logf("chaos: warm-up done in %s", time.Since(r.started).Round(100*time.Millisecond))

	// Long transactions run beside the schedule: one at the start, and in a
	// soak one every 10 minutes.
	faultsCtx, endFaults := context.WithCancel(ctx)
	bg.Go(func() {
		for {
			began := time.Now()
			r.longTransaction(ctx, longTx)
			if soak == 0 || faultsCtx.Err() != nil {
				return
			}
			select {
			case <-faultsCtx.Done():
				return
			case <-time.After(time.Until(began.Add(10 * time.Minute))):
			}
		}
	})

	r.schedulePasses(ctx, soak)
	endFaults()
	r.faultsDone = time.Now()

	stopProducers()
	<-prodDone
	drainLimit := 3 * time.Minute
	if !r.drain(ctx, drainLimit) {
		t.Errorf("chaos: the system did not drain within %s after the last fault (see the lost/stuck counts below)", drainLimit)
	}
	r.drained = time.Now()
	cancel() // the long transaction, the feeder
	bg.Wait()

	// Stop everything gracefully: relays release their leases.
	var stopErrs []string
	for _, p := range r.procs() {
		if err := p.stop(30 * time.Second); err != nil {
			stopErrs = append(stopErrs, err.Error())
		}
	}
	stopped = true
	if err := stopSweeper(); err != nil {
		stopErrs = append(stopErrs, "sweeper: "+err.Error())
	}

	rep := r.check(context.Background(), stopErrs)
	summary := rep.table(r)
	t.Log("\n" + summary)
	if *summaryFlag != "" {
		if err := os.WriteFile(*summaryFlag, []byte(summary), 0o644); err != nil {
			t.Errorf("write summary: %v", err)
		}
	}
	for _, inv := range rep.invariants {
		if inv.count > 0 {
			t.Errorf("invariant broken: %s: %d (e.g. %v)", inv.name, inv.count, inv.examples)
		}
	}
}

func newPool(t *testing.T, url, app string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// schedulePasses runs passes over the fault kinds: one pass in the fixed
// order when soak is 0, else shuffled passes until soak has passed. Each
// fault is followed by a wait for recovery (every event committed before
// the fault healed is applied) before the next one starts.
func (r *run) schedulePasses(ctx context.Context, soak time.Duration) {
	end := time.Now().Add(soak)
	for {
		for _, f := range r.schedule(soak > 0) {
			if soak > 0 && time.Now().After(end) {
				return
			}
			r.step(ctx, f)
		}
		if soak == 0 || time.Now().After(end) {
			return
		}
	}
}

func (r *run) step(ctx context.Context, f fault) {
	rec := faultRecord{kind: f.name, at: time.Now()}
	healed, note, err := f.inject(r, ctx)
	if err != nil {
		r.t.Errorf("chaos: fault %s: %v", f.name, err)
		return
	}
	rec.healed, rec.note = healed, note
	rec.recovery, rec.recovered = r.waitRecovered(ctx, healed, time.Minute)
	if f.name == "relay-pause" {
		r.mu.Lock()
		p := r.pauses[len(r.pauses)-1]
		r.mu.Unlock()
		for _, rel := range r.relays {
			if name, _, _ := rel.current(); name == p.relayID {
				p.fencedAfter = rel.countAfter("resumed after pause", "lease lost before marking")
				rec.note += fmt.Sprintf("; %d batches fenced after SIGCONT", p.fencedAfter)
			}
		}
	}
	r.t.Logf("chaos: %-24s healed after %-6s recovered in %-8s %s", f.name,
		healed.Sub(rec.at).Round(100*time.Millisecond), fmtRecovery(rec), rec.note)
	r.mu.Lock()
	r.records = append(r.records, rec)
	r.mu.Unlock()
	time.Sleep(200 * time.Millisecond)
}

func fmtRecovery(rec faultRecord) string {
	if !rec.recovered {
		return ">" + rec.recovery.Round(time.Second).String()
	}
	return rec.recovery.Round(10 * time.Millisecond).String()
}

// waitRecovered waits until every normal event committed before healed has
// been applied by its consumer, up to limit after healed, and returns how
// long after healed the last of them was applied.
func (r *run) waitRecovered(ctx context.Context, healed time.Time, limit time.Duration) (time.Duration, bool) {
	pending := r.ledger.pendingBefore(healed)
	for {
		if all, last := r.ledger.appliedAtOf(pending); all {
			if last.Before(healed) {
				return 0, true
			}
			return last.Sub(healed), true
		}
		if ctx.Err() != nil || time.Since(healed) > limit {
			return time.Since(healed), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// drain waits until every committed event is applied (or, for the ones
// meant to fail, parked) and nothing is pending in the outbox.
func (r *run) drain(ctx context.Context, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if len(r.ledger.pendingBefore(time.Now())) == 0 {
			var pending, expectedDL, dl int
			err := r.e.db.Pool.QueryRow(ctx, `SELECT
  (SELECT count(*) FROM outbox.messages WHERE status IN ('pending', 'blocked')),
  (SELECT count(*) FROM outbox.messages m JOIN chaos.transfers t USING (event_id) WHERE t.kind = 'no_handler'),
  (SELECT count(*) FROM inbox.dead_letters d JOIN chaos.transfers t USING (event_id) WHERE t.kind = 'no_handler')`).
				Scan(&pending, &expectedDL, &dl)
			if err == nil && pending == 0 && dl >= expectedDL {
				return true
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return false
}
