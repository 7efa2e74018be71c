package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// contender is one throughput measurement, repeated -reps times.
type contender struct {
	group  string // "kafka" or "rabbit"
	name   string
	config string
	run    func(ctx context.Context) (measurement, error)
	runs   []measurement
}

// pgEfficiency is events per second of PostgreSQL backend CPU (median of
// the runs), 0 when unknown or when the contender uses no PostgreSQL.
func (c *contender) pgEfficiency() float64 {
	var xs []float64
	for _, m := range c.runs {
		if m.pgCPU > 0 {
			xs = append(xs, float64(m.events)/m.pgCPU.Seconds())
		}
	}
	return median(xs)
}

func (c *contender) median() float64 {
	var rates []float64
	for _, m := range c.runs {
		rates = append(rates, m.rate())
	}
	return median(rates)
}

// results is everything the report shows.
type results struct {
	opts       *options
	machine    machineInfo
	started    time.Time
	finished   time.Time
	contenders []*contender
	byID       map[string]*contender
	latency    []latencyResult // defaults first, then the what-if
	explains   []explainResult
	tune       []tuneRow
	notes      []string
}

func run(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }
	res := &results{opts: o, started: time.Now(), byID: map[string]*contender{}}
	e, err := newEnv(ctx, o)
	if err != nil {
		return err
	}
	defer e.close()
	res.machine = e.machineInfo(ctx)
	logf("bench: %d events, %d keys, %d-byte payloads; %s", o.events, o.keys, o.payload, res.machine.summary())

	needOutbox := o.wants("baresql") || o.wants("relay") || o.wants("rabbit") || o.wants("tune")
	if err := e.migrateTemplate(ctx); err != nil {
		return err
	}
	evs := workload(o.events, o.keys, o.payload)
	if needOutbox {
		t := time.Now()
		if err := e.fillOutboxTemplate(ctx, evs); err != nil {
			return fmt.Errorf("outbox template: %w", err)
		}
		logf("bench: outbox template: %d events enqueued with EnqueueBatch in %s", o.events, time.Since(t).Round(time.Millisecond))
	}
	if o.wants("forwarder") {
		t := time.Now()
		if err := e.fillWatermillTemplate(ctx, evs); err != nil {
			return fmt.Errorf("watermill template: %w", err)
		}
		logf("bench: watermill template: %d events published with the forwarder's publisher in %s", o.events, time.Since(t).Round(time.Millisecond))
	}

	add := func(id string, c *contender) {
		res.contenders = append(res.contenders, c)
		res.byID[id] = c
	}
	if o.wants("forwarder") {
		for _, b := range []int{100, 1000} {
			add(fmt.Sprintf("fwd%d", b), &contender{group: "kafka", name: "watermill-sql v3 forwarder", config: fmt.Sprintf("batch %d", b),
				run: func(ctx context.Context) (measurement, error) { return e.runForwarder(ctx, b) }})
		}
	}
	if o.wants("baresql") {
		add("bare", &contender{group: "kafka", name: "bare SQL claim + mark (no broker)", config: "1,000-row batches, 1 connection",
			run: e.runBareSQL})
	}
	if o.wants("relay") {
		add("relay", &contender{group: "kafka", name: "outboxkit relay + relay/kafka", config: "defaults (" + relayConfig{}.String() + ")",
			run: func(ctx context.Context) (measurement, error) { return e.runRelayKafka(ctx, relayConfig{}, "") }})
		profiled := false
		add("relayTuned", &contender{group: "kafka", name: "outboxkit relay + relay/kafka", config: "tuned (" + o.tuned.String() + ")",
			run: func(ctx context.Context) (measurement, error) {
				prof := ""
				if !profiled {
					prof, profiled = o.cpuProfile, true
				}
				return e.runRelayKafka(ctx, o.tuned, prof)
			}})
		if o.whatIf != "" {
			def, tuned := relayConfig{pg: o.whatIf}, o.tuned
			tuned.pg = o.whatIf
			add("relayWhatIf", &contender{group: "kafka", name: "what-if: outboxkit relay + relay/kafka", config: "defaults (" + def.String() + ")",
				run: func(ctx context.Context) (measurement, error) { return e.runRelayKafka(ctx, def, "") }})
			add("relayTunedWhatIf", &contender{group: "kafka", name: "what-if: outboxkit relay + relay/kafka", config: "tuned (" + tuned.String() + ")",
				run: func(ctx context.Context) (measurement, error) { return e.runRelayKafka(ctx, tuned, "") }})
		}
	}
	if o.wants("rabbit") {
		add("rabbitBare", &contender{group: "rabbit", name: "bare amqp091-go publisher", config: "1 channel, confirms, 1,000 in flight, persistent",
			run: func(ctx context.Context) (measurement, error) { return e.runRabbitBare(ctx, evs, false) }})
		add("rabbitBareCE", &contender{group: "rabbit", name: "bare amqp091-go publisher", config: "the same, with the relay's CloudEvents headers",
			run: func(ctx context.Context) (measurement, error) { return e.runRabbitBare(ctx, evs, true) }})
		add("rabbitRelay", &contender{group: "rabbit", name: "outboxkit relay + relay/rabbitmq", config: "defaults (" + relayConfig{}.String() + ")",
			run: func(ctx context.Context) (measurement, error) { return e.runRelayRabbit(ctx, relayConfig{}) }})
		add("rabbitRelayTuned", &contender{group: "rabbit", name: "outboxkit relay + relay/rabbitmq", config: "tuned (" + o.rabbitTuned.String() + ")",
			run: func(ctx context.Context) (measurement, error) { return e.runRelayRabbit(ctx, o.rabbitTuned) }})
		if o.whatIf != "" {
			def := relayConfig{pg: o.whatIf}
			add("rabbitRelayWhatIf", &contender{group: "rabbit", name: "what-if: outboxkit relay + relay/rabbitmq", config: "defaults (" + def.String() + ")",
				run: func(ctx context.Context) (measurement, error) { return e.runRelayRabbit(ctx, def) }})
		}
	}

	// Interleaved repetitions; each repetition starts one contender later,
	// so that no contender always runs first (cold) or last.
	for rep := 0; rep < o.reps; rep++ {
		n := len(res.contenders)
		for k := 0; k < n; k++ {
			c := res.contenders[(k+rep)%n]
			if err := ctx.Err(); err != nil {
				return err
			}
			m, err := c.run(ctx)
			if err != nil {
				return fmt.Errorf("%s %s (rep %d): %w", c.name, c.config, rep+1, err)
			}
			c.runs = append(c.runs, m)
			logf("bench: [rep %d/%d] %-36s %-44s %9s events/s  (%s, process CPU %s, PostgreSQL CPU %s)", rep+1, o.reps, c.name, c.config,
				thousands(m.rate()), m.elapsed.Round(time.Millisecond), m.cpu.Round(10*time.Millisecond), m.pgCPU.Round(10*time.Millisecond))
			if o.verbose && m.detail != "" {
				logf("%s", m.detail)
			}
		}
	}

	if o.wants("tune") {
		rows, err := e.tuneSweep(ctx, logf)
		if err != nil {
			return err
		}
		res.tune = rows
	}

	if o.wants("latency") {
		pgs := []string{""}
		if o.whatIf != "" && !o.quick {
			pgs = append(pgs, o.whatIf)
		}
		for _, pg := range pgs {
			logf("bench: latency: %d events/s for %s, relay %s, on Kafka", o.latencyRate, o.latencyDuration, relayConfig{pg: pg})
			lr, err := e.runLatency(ctx, pg)
			if err != nil {
				return fmt.Errorf("latency: %w", err)
			}
			res.latency = append(res.latency, lr)
			logf("bench: latency: commit->ack (outbox.messages) p50 %s p99 %s; end to end p50 %s p99 %s",
				ms(lr.db.p50), ms(lr.db.p99), ms(lr.e2e.p50), ms(lr.e2e.p99))
			if o.verbose {
				logf("%s", lr.detail)
			}
		}
	}

	if o.wants("relay") && !o.quick {
		// The shipped defaults: that is where a user meets the plans.
		tr := e.traces["relay "+relayConfig{}.String()]
		ex, err := e.explainRelay(ctx, tr)
		if err != nil {
			res.notes = append(res.notes, "EXPLAIN failed: "+err.Error())
		}
		res.explains = ex
		if o.explainOut != "" {
			if err := writeExplains(o.explainOut, ex); err != nil {
				return err
			}
		}
	}

	res.finished = time.Now()
	res.machine.loadEnd = loadAvg()
	report := res.markdown()
	fmt.Fprint(stdout, report)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			return err
		}
		logf("bench: report written to %s", o.out)
	}
	if o.cpuProfile != "" {
		logf("bench: CPU profile of a tuned relay drain: %s (go tool pprof -top %s)", o.cpuProfile, o.cpuProfile)
	}
	return nil
}

func writeExplains(path string, ex []explainResult) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, x := range ex {
		fmt.Fprintf(f, "==== %s\n%s\n\n", x.what, x.plan)
	}
	return nil
}

// tuneRow is one relay configuration of the sweep.
type tuneRow struct {
	group string
	rc    relayConfig
	m     measurement
}

// tuneSweep drains once per configuration of the grid, to pick the tuned
// settings.
func (e *env) tuneSweep(ctx context.Context, logf func(string, ...any)) ([]tuneRow, error) {
	o := e.opts
	var rows []tuneRow
	for _, broker := range o.tuneBrokers {
		for _, w := range o.tuneWorkers {
			for _, b := range o.tuneBatches {
				rc := relayConfig{batch: b, workers: w, pg: o.tunePG}
				var m measurement
				var err error
				switch broker {
				case "kafka":
					m, err = e.runRelayKafka(ctx, rc, "")
				case "rabbit":
					m, err = e.runRelayRabbit(ctx, rc)
				default:
					return rows, fmt.Errorf("-tune-brokers: unknown broker %q (kafka, rabbit)", broker)
				}
				if err != nil {
					return rows, fmt.Errorf("tune %s %s: %w", broker, rc, err)
				}
				rows = append(rows, tuneRow{broker, rc, m})
				logf("bench: tune %-6s %-48s %9s events/s", broker, rc, thousands(m.rate()))
			}
		}
	}
	return rows, nil
}
