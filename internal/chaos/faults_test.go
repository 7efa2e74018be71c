package chaos_test

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5"
)

// fault is one kind of fault: inject runs it and heals it, and returns the
// moment the system was whole again (the process restarted, the network
// back). Recovery is measured from there.
type fault struct {
	name   string
	what   string // one line for the docs and the summary
	inject func(r *run, ctx context.Context) (healed time.Time, note string, err error)
	// optIn faults run only when their flag is set.
	optIn bool
}

// faultRecord is one injected fault and how long the system took to recover.
type faultRecord struct {
	kind      string
	at        time.Time
	healed    time.Time
	recovery  time.Duration // until every event committed before healed was applied
	recovered bool
	note      string
}

// pauseRecord is one SIGSTOP/SIGCONT of a relay, for the fencing check.
type pauseRecord struct {
	relayID     string
	held        map[int32]int64 // partition -> lease token at the pause
	paused      time.Time
	resumed     time.Time
	takenOver   bool
	fencedAfter int // "lease lost before marking" lines the relay logged after resuming
}

func faults() []fault {
	return []fault{
		{name: "relay-kill", what: "SIGKILL a relay process, restart it 0.2-0.7s later", inject: (*run).relayKill},
		{name: "consumer-kill-kafka", what: "SIGKILL the Kafka consumer process, restart it", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			return r.consumerKill(ctx, r.kafkaConsumer)
		}},
		{name: "kafka-cut", what: "close every connection to Kafka and refuse new ones for 1.5s (relays and consumer)", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			return r.cut(r.e.kafkaProxy, 1500*time.Millisecond)
		}},
		{name: "relay-pause", what: "SIGSTOP a relay until its partitions are taken over (past its 2s lease), then SIGCONT", inject: (*run).relayPause},
		{name: "rabbitmq-relay-cut", what: "cut the relays' RabbitMQ connections for 1.5s", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			return r.cut(r.e.rabbitRelayProxy, 1500*time.Millisecond)
		}},
		{name: "consumer-kill-rabbitmq", what: "SIGKILL the RabbitMQ consumer process, restart it", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			return r.consumerKill(ctx, r.rabbitConsumer)
		}},
		{name: "db-relay-partition", what: "partition one relay from PostgreSQL for 3s (traffic held, not dropped: longer than its 2s lease)", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			i := r.pick(len(r.relays))
			h, err := r.partition(r.e.relayDBProxies[i], 3*time.Second)
			return h, r.relays[i].base, err
		}},
		{name: "kafka-partition", what: "partition Kafka from everyone for 2s (traffic held, not dropped)", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			h, err := r.partition(r.e.kafkaProxy, 2*time.Second)
			return h, "", err
		}},
		{name: "rabbitmq-consumer-cut", what: "cut the RabbitMQ consumer's connection for 1.5s", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			return r.cut(r.e.rabbitConsumerProxy, 1500*time.Millisecond)
		}},
		{name: "db-relay-cut", what: "cut one relay's PostgreSQL connections for 1.5s", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			i := r.pick(len(r.relays))
			h, note, err := r.cut(r.e.relayDBProxies[i], 1500*time.Millisecond)
			return h, r.relays[i].base + note, err
		}},
		{name: "db-consumer-cut", what: "cut the consumers' PostgreSQL connections for 1.5s", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			return r.cut(r.e.consumerDBProxy, 1500*time.Millisecond)
		}},
		{name: "notify-off", what: "producers send no NOTIFY for 3s: relays find events by polling (200ms; one relay 50ms)", inject: (*run).notifyOff},
		{name: "kafka-latency", what: "add 150ms (+-50ms) each way between everyone and Kafka for 3s", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			h, err := r.latency(r.e.kafkaProxy, 150, 50, 3*time.Second)
			return h, "", err
		}},
		{name: "db-relay-latency", what: "add 50ms (+-20ms) each way between every relay and PostgreSQL for 3s", inject: func(r *run, ctx context.Context) (time.Time, string, error) {
			var healed time.Time
			var wg sync.WaitGroup
			var mu sync.Mutex
			var first error
			for _, px := range r.e.relayDBProxies {
				wg.Go(func() {
					h, err := r.latency(px, 50, 20, 3*time.Second)
					mu.Lock()
					defer mu.Unlock()
					if err != nil && first == nil {
						first = err
					}
					if h.After(healed) {
						healed = h
					}
				})
			}
			wg.Wait()
			return healed, "", first
		}},
		{name: "pg-terminate", what: "terminate every session of the test database (a PostgreSQL restart as the clients see it)", inject: (*run).pgTerminate},
		{name: "rabbitmq-restart", what: "rabbitmqctl stop_app, 2s, start_app (only with -chaos.restart-rabbitmq)", inject: (*run).rabbitRestart, optIn: true},
	}
}

func (r *run) pick(n int) int {
	r.rngMu.Lock()
	defer r.rngMu.Unlock()
	return r.rng.IntN(n)
}

func (r *run) jitter(base, spread time.Duration) time.Duration {
	r.rngMu.Lock()
	defer r.rngMu.Unlock()
	return base + time.Duration(r.rng.Int64N(int64(spread)+1))
}

func (r *run) relayKill(ctx context.Context) (time.Time, string, error) {
	p := r.relays[r.pick(len(r.relays))]
	name, _, _ := p.current()
	p.kill()
	time.Sleep(r.jitter(200*time.Millisecond, 500*time.Millisecond))
	p.start()
	return time.Now(), name, nil
}

func (r *run) consumerKill(ctx context.Context, p *proc) (time.Time, string, error) {
	name, _, _ := p.current()
	p.kill()
	time.Sleep(r.jitter(200*time.Millisecond, 500*time.Millisecond))
	p.start()
	return time.Now(), name, nil
}

// relayPause stops a relay with SIGSTOP, waits until every partition it held
// was taken over by another relay (or the sweeper freed it), and resumes
// it. The checker then proves it marked nothing under its old leases.
func (r *run) relayPause(ctx context.Context) (time.Time, string, error) {
	p := r.relays[r.pick(len(r.relays))]
	name, _, _ := p.current()
	rec := &pauseRecord{relayID: name, held: map[int32]int64{}}
	rows, err := r.e.db.Pool.Query(ctx, `SELECT partition, lease_token FROM outbox.partitions WHERE owner = $1`, name)
	if err != nil {
		return time.Time{}, "", err
	}
	var part int32
	var token int64
	if _, err := pgx.ForEachRow(rows, []any{&part, &token}, func() error { rec.held[part] = token; return nil }); err != nil {
		return time.Time{}, "", err
	}
	p.signal(syscall.SIGSTOP)
	rec.paused = time.Now()
	deadline := time.Now().Add(5 * relayLeaseTTL)
	time.Sleep(relayLeaseTTL)
	for time.Now().Before(deadline) {
		var still int
		err := r.e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.partitions p
  JOIN unnest($1::int[], $2::bigint[]) AS h(partition, token) ON h.partition = p.partition
 WHERE p.owner = $3 AND p.lease_token = h.token`, keysOf(rec.held), valuesOf(rec.held), name).Scan(&still)
		if err == nil && still == 0 {
			rec.takenOver = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Let the new owners publish and mark some of what the paused relay
	// had in flight before it wakes up.
	time.Sleep(300 * time.Millisecond)
	p.signal(syscall.SIGCONT)
	rec.resumed = time.Now()
	p.mark("resumed after pause (%d partitions held at the pause, taken over: %v)", len(rec.held), rec.takenOver)
	r.mu.Lock()
	r.pauses = append(r.pauses, rec)
	r.mu.Unlock()
	note := fmt.Sprintf("%s held %d partitions", name, len(rec.held))
	if !rec.takenOver {
		note += "; not all taken over within 5 lease periods"
	}
	return rec.resumed, note, nil
}

// keysOf returns the partitions of m, in ascending order.
func keysOf(m map[int32]int64) []int32 {
	out := make([]int32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// valuesOf returns the tokens of m in the order of keysOf(m), so that the
// two make (partition, token) pairs.
func valuesOf(m map[int32]int64) []int64 {
	keys := keysOf(m)
	out := make([]int64, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

// cut closes every connection through px and refuses new ones for d.
func (r *run) cut(px *toxiproxy.Proxy, d time.Duration) (time.Time, string, error) {
	px.Stop()
	time.Sleep(d)
	if err := px.Start(); err != nil {
		return time.Time{}, "", fmt.Errorf("restart proxy %s: %w", px.Name, err)
	}
	return time.Now(), "", nil
}

// partition holds every byte through px for d (a latency far longer than d,
// removed after d: what was held is then delivered, as TCP would after a
// network partition heals).
func (r *run) partition(px *toxiproxy.Proxy, d time.Duration) (time.Time, error) {
	return r.toxic(px, `{"type":"latency","attributes":{"latency":600000}}`, d)
}

func (r *run) latency(px *toxiproxy.Proxy, ms, jitterMS int, d time.Duration) (time.Time, error) {
	return r.toxic(px, fmt.Sprintf(`{"type":"latency","attributes":{"latency":%d,"jitter":%d}}`, ms, jitterMS), d)
}

func (r *run) toxic(px *toxiproxy.Proxy, spec string, d time.Duration) (time.Time, error) {
	names := []string{"chaos_up", "chaos_down"}
	for i, stream := range []string{"upstream", "downstream"} {
		js := strings.Replace(spec, "{", fmt.Sprintf(`{"name":%q,"stream":%q,`, names[i], stream), 1)
		if _, err := px.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			return time.Time{}, fmt.Errorf("add toxic to %s: %w", px.Name, err)
		}
	}
	time.Sleep(d)
	for _, n := range names {
		if err := px.Toxics.RemoveToxic(context.Background(), n); err != nil {
			return time.Time{}, fmt.Errorf("remove toxic from %s: %w", px.Name, err)
		}
	}
	return time.Now(), nil
}

func (r *run) notifyOff(ctx context.Context) (time.Time, string, error) {
	r.prod.notifyOff.Store(true)
	start := time.Now()
	time.Sleep(3 * time.Second)
	r.prod.notifyOff.Store(false)
	end := time.Now()
	return end, fmt.Sprintf("%d events applied while no NOTIFY was sent", r.ledger.appliedBetween(start, end)), nil
}

// pgTerminate ends every session of the test database but the long
// transaction's: relays, consumers, producers, the sweeper and the checker
// all lose their connections at once, as in a PostgreSQL restart.
func (r *run) pgTerminate(ctx context.Context) (time.Time, string, error) {
	conn, err := r.e.adminConn(ctx)
	if err != nil {
		return time.Time{}, "", err
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> $1`, r.longTxPID.Load()).Scan(&n)
	if err != nil {
		return time.Time{}, "", err
	}
	return time.Now(), fmt.Sprintf("%d sessions terminated", n), nil
}

func (r *run) rabbitRestart(ctx context.Context) (time.Time, string, error) {
	if out, err := exec.CommandContext(ctx, "rabbitmqctl", "stop_app").CombinedOutput(); err != nil {
		return time.Time{}, "", fmt.Errorf("rabbitmqctl stop_app: %v: %s", err, out)
	}
	time.Sleep(2 * time.Second)
	if out, err := exec.CommandContext(ctx, "rabbitmqctl", "start_app").CombinedOutput(); err != nil {
		return time.Time{}, "", fmt.Errorf("rabbitmqctl start_app: %v: %s", err, out)
	}
	return time.Now(), "", nil
}

// longTransaction keeps a REPEATABLE READ transaction with a transaction id
// open for d, holding back the xmin horizon of the whole cluster, and
// records how many events were applied meanwhile (the lanes are ordered by
// row locks, not by transaction ids: the flow must not stop).
func (r *run) longTransaction(ctx context.Context, d time.Duration) {
	rec := faultRecord{kind: "long-transaction", at: time.Now()}
	defer func() {
		r.mu.Lock()
		r.longTx = append(r.longTx, rec)
		r.mu.Unlock()
	}()
	conn, err := r.e.adminConn(ctx)
	if err != nil {
		rec.note = "could not connect: " + err.Error()
		return
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		rec.note = err.Error()
		return
	}
	var pid uint32
	var xid int64
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid(), txid_current()`).Scan(&pid, &xid); err != nil {
		rec.note = err.Error()
		return
	}
	r.longTxPID.Store(pid)
	start := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	var horizonHeld bool
	err = r.e.db.Pool.QueryRow(context.Background(),
		`SELECT backend_xmin IS NOT NULL OR backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&horizonHeld)
	end := time.Now()
	tx.Commit(context.Background()) //nolint:errcheck
	r.longTxPID.Store(0)
	rec.healed = end
	rec.note = fmt.Sprintf("open %s (xid %d, horizon held: %v); %d events applied meanwhile",
		end.Sub(start).Round(time.Second), xid, horizonHeld && err == nil, r.ledger.appliedBetween(start, end))
	rec.recovery, rec.recovered = r.waitRecovered(context.Background(), end, time.Minute)
}

// schedule returns the order of the faults of one pass: the fixed order of
// faults() for the default run, shuffled by the seed in a soak.
func (r *run) schedule(shuffle bool) []fault {
	var out []fault
	for _, f := range faults() {
		if f.optIn && !(f.name == "rabbitmq-restart" && *restartRabbitFlag) {
			continue
		}
		out = append(out, f)
	}
	if shuffle {
		r.rngMu.Lock()
		r.rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		r.rngMu.Unlock()
	}
	return out
}
