package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

type machineInfo struct {
	cpus      int
	cpuModel  string
	goVersion string
	postgres  string
	rabbitmq  string
	kafka     string
	commit    string
	loadStart string
	loadEnd   string
}

func (e *env) machineInfo(ctx context.Context) machineInfo {
	mi := machineInfo{cpus: runtime.NumCPU(), goVersion: runtime.Version(), loadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				mi.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if admin, err := e.admin(ctx); err == nil {
		admin.QueryRow(ctx, "SHOW server_version").Scan(&mi.postgres) //nolint:errcheck
		admin.Close(ctx)
	}
	if conn, err := amqp.Dial(e.rabbitURL); err == nil {
		mi.rabbitmq, _ = conn.Properties["version"].(string)
		conn.Close()
	}
	if e.fake != nil {
		mi.kafka = fmt.Sprintf("kfake (franz-go, in this process, TCP on loopback, 1 broker), %d partitions per topic", e.opts.kafkaPartitions)
	} else {
		mi.kafka = fmt.Sprintf("KAFKA_BROKERS=%s, %d partitions per topic", strings.Join(e.brokers, ","), e.opts.kafkaPartitions)
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		mi.commit = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--", "..").Output(); err == nil && len(st) > 0 {
			mi.commit += " (with uncommitted changes)"
		}
	}
	return mi
}

func (m machineInfo) summary() string {
	return fmt.Sprintf("%d CPUs, %s, PostgreSQL %s, RabbitMQ %s, load %s", m.cpus, m.goVersion, m.postgres, m.rabbitmq, m.loadStart)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func thousands(x float64) string {
	s := fmt.Sprintf("%.0f", x)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func (r *results) markdown() string {
	o := r.opts
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	mi := r.machine
	w("# outboxkit benchmark results\n\n")
	w("Command: `cd bench && %s` (%s, %s)\n\n", o.cmdline, r.started.UTC().Format("2006-01-02 15:04 UTC"),
		r.finished.Sub(r.started).Round(time.Second))
	w("| machine | |\n|---|---|\n")
	w("| CPUs (nproc) | %d (%s) |\n", mi.cpus, mi.cpuModel)
	w("| Go | %s |\n", mi.goVersion)
	w("| PostgreSQL | %s (local, shared with other work) |\n", mi.postgres)
	w("| RabbitMQ | %s (local) |\n", mi.rabbitmq)
	w("| Kafka | %s |\n", mi.kafka)
	if mi.commit != "" {
		w("| outboxkit | %s |\n", mi.commit)
	}
	w("| load average (1/5/15 min) | start %s, end %s |\n\n", mi.loadStart, mi.loadEnd)
	w("Workload: %s committed events, %d-byte JSON payloads, %s keys (drawn at random, fixed seed), "+
		"enqueued in transactions of 1,000 before the clock starts; %d outbox partitions. "+
		"Each throughput figure is the median of %d runs, interleaved. "+
		"CPU columns: this process (the client, and kfake when in-process) and the PostgreSQL backends serving the contender, median seconds.\n\n",
		thousands(float64(o.events)), o.payload, thousands(float64(o.keys)), o.partitions, o.reps)

	var goals []string
	goal := func(what, measured, target string, ok bool) {
		goals = append(goals, fmt.Sprintf("| %s | %s | %s | %s |", what, measured, target, met(ok)))
	}

	table := func(group string) {
		broker := group == "rabbit"
		w("| contender | configuration |")
		for i := range o.reps {
			w(" run %d |", i+1)
		}
		w(" median events/s | client CPU s | PostgreSQL CPU s | events per PostgreSQL CPU-second |")
		if broker {
			w(" RabbitMQ CPU s |")
		}
		w("\n|---|---|")
		for range o.reps {
			w("---:|")
		}
		w("---:|---:|---:|---:|")
		if broker {
			w("---:|")
		}
		w("\n")
		for _, c := range r.contenders {
			if c.group != group {
				continue
			}
			w("| %s | %s |", c.name, c.config)
			var cpu, pg, bk []float64
			for _, m := range c.runs {
				w(" %s |", thousands(m.rate()))
				cpu = append(cpu, m.cpu.Seconds())
				pg = append(pg, m.pgCPU.Seconds())
				bk = append(bk, m.brokerCPU.Seconds())
			}
			eff := "–"
			if e := c.pgEfficiency(); e > 0 {
				eff = thousands(e)
			}
			w(" **%s** | %.2f | %.2f | %s |", thousands(c.median()), median(cpu), median(pg), eff)
			if broker {
				w(" %.2f |", median(bk))
			}
			w("\n")
		}
		w("\n")
	}
	ratio := func(a, b string) (float64, bool) {
		ca, cb := r.byID[a], r.byID[b]
		if ca == nil || cb == nil || cb.median() == 0 {
			return 0, false
		}
		return ca.median() / cb.median(), true
	}

	if hasGroup(r, "kafka") {
		w("## 1. Drain to Kafka\n\n")
		w("Time from the contender's start until Kafka acknowledged every event (outboxkit: until every row is marked published).\n\n")
		table("kafka")
		var lines []string
		fwdBest := ""
		if f1, f2 := r.byID["fwd100"], r.byID["fwd1000"]; f1 != nil && f2 != nil {
			fwdBest = "fwd100"
			if f2.median() > f1.median() {
				fwdBest = "fwd1000"
			}
		}
		for _, id := range []string{"relay", "relayTuned", "relayWhatIf", "relayTunedWhatIf"} {
			c := r.byID[id]
			if c == nil {
				continue
			}
			whatIf := strings.HasPrefix(c.name, "what-if")
			goal := goal
			if whatIf {
				goal = func(string, string, string, bool) {} // what-ifs are findings, not the product as shipped
			}
			label := "outboxkit"
			if whatIf {
				label = "what-if outboxkit"
			}
			for _, f := range []string{"fwd100", "fwd1000"} {
				if x, ok := ratio(id, f); ok {
					lines = append(lines, fmt.Sprintf("| %s %s / forwarder %s | %.1fx | %s |", label, c.config, r.byID[f].config, x,
						map[bool]string{true: "≥ 10x (the faster forwarder)", false: ""}[f == fwdBest]))
					if f == fwdBest {
						goal(fmt.Sprintf("Kafka drain: outboxkit %s vs the forwarder (%s)", c.config, r.byID[f].config), fmt.Sprintf("%.1fx", x), "≥ 10x", x >= 10)
					}
				}
			}
			if x, ok := ratio(id, "bare"); ok {
				lines = append(lines, fmt.Sprintf("| %s %s / bare SQL | %.0f%% | ≥ 60%% |", label, c.config, 100*x))
				goal(fmt.Sprintf("Kafka drain: outboxkit %s vs bare SQL", c.config), fmt.Sprintf("%.0f%%", 100*x), "≥ 60%", x >= 0.6)
			}
			if b := r.byID["bare"]; b != nil && b.pgEfficiency() > 0 && c.pgEfficiency() > 0 {
				x := c.pgEfficiency() / b.pgEfficiency()
				lines = append(lines, fmt.Sprintf("| %s %s / bare SQL, in events per PostgreSQL CPU-second | %.0f%% | (≥ 60%%) |", label, c.config, 100*x))
				goal(fmt.Sprintf("Kafka drain: outboxkit %s vs bare SQL, PostgreSQL CPU per event (robust to a busy machine)", c.config),
					fmt.Sprintf("%.0f%%", 100*x), "(≥ 60%)", x >= 0.6)
			}
		}
		if x, ok := ratio("bare", fwdBest); ok {
			lines = append(lines, fmt.Sprintf("| ceiling: bare SQL / forwarder %s (the most any relay that claims and marks rows in PostgreSQL can reach) | %.1fx | |",
				r.byID[fwdBest].config, x))
		}
		if len(lines) > 0 {
			w("| ratio (medians) | measured | goal |\n|---|---:|---|\n%s\n\n", strings.Join(lines, "\n"))
		}
	}

	if hasGroup(r, "rabbit") {
		w("## 2. RabbitMQ with publisher confirms\n\n")
		w("A durable topic exchange bound to a durable classic queue; persistent, mandatory messages. The bare publisher sends the same payloads " +
			"with basic properties only, and a second time with the CloudEvents headers the relay sends (the wire format); the relay " +
			"also reads from and marks in PostgreSQL. The broker runs on the same cores as everything else: its CPU is the last column.\n\n")
		table("rabbit")
		var lines []string
		for _, id := range []string{"rabbitRelay", "rabbitRelayTuned", "rabbitRelayWhatIf"} {
			if x, ok := ratio(id, "rabbitBare"); ok {
				c := r.byID[id]
				if strings.HasPrefix(c.name, "what-if") {
					lines = append(lines, fmt.Sprintf("| what-if outboxkit %s / bare amqp091-go | %.0f%% | ≥ 80%% |", c.config, 100*x))
					continue
				}
				lines = append(lines, fmt.Sprintf("| outboxkit %s / bare amqp091-go | %.0f%% | ≥ 80%% |", c.config, 100*x))
				goal(fmt.Sprintf("RabbitMQ: outboxkit %s vs bare amqp091-go", c.config), fmt.Sprintf("%.0f%%", 100*x), "≥ 80%", x >= 0.8)
			}
		}
		if x, ok := ratio("rabbitBareCE", "rabbitBare"); ok {
			lines = append(lines, fmt.Sprintf("| bare amqp091-go with the CloudEvents headers / without (the wire format's cost at the broker) | %.0f%% | |", 100*x))
		}
		if x, ok := ratio("rabbitRelay", "rabbitBareCE"); ok {
			lines = append(lines, fmt.Sprintf("| outboxkit %s / bare amqp091-go with the same headers | %.0f%% | |", r.byID["rabbitRelay"].config, 100*x))
		}
		if len(lines) > 0 {
			w("| ratio (medians) | measured | goal |\n|---|---:|---|\n%s\n\n", strings.Join(lines, "\n"))
		}
	}

	if len(r.latency) > 0 {
		l0 := r.latency[0]
		w("## 3. Latency at %s events/s\n\n", thousands(float64(o.latencyRate)))
		w("%d producers commit one event per transaction (outbox.Enqueue), paced open-loop at %s events/s for %s; "+
			"one relay publishes to Kafka.\n\n", l0.producers, thousands(float64(o.latencyRate)), o.latencyDuration)
		w("| relay | measure | n | p50 | p90 | p99 | max |\n|---|---|---:|---:|---:|---:|---:|\n")
		for i, l := range r.latency {
			name := "defaults"
			if i > 0 {
				name = "what-if: " + l.config
			}
			name += fmt.Sprintf(" (achieved %s events/s)", thousands(l.rate))
			row := func(measure string, q quantiles) {
				w("| %s | %s | %d | %s | %s | %s | %s |\n", name, measure, q.n, ms(q.p50), ms(q.p90), ms(q.p99), ms(q.max))
			}
			row("commit → broker ack: `published_at - created_at`", l.db)
			row("commit → broker ack: producer's Commit returned → Publish returned", l.client)
			row("end to end: `ce_time` → received by a kgo consumer", l.e2e)
			row("(producer side: `created_at` → producer's Commit returned)", l.commit)
		}
		w("\n`created_at` is the INSERT's clock time, slightly before the commit; `published_at` is the mark, slightly after the ack. " +
			"The second measure is taken in this process: the producer's `tx.Commit` returning, to the relay's `Publisher.Publish` returning; " +
			"the last row is the part of the first that is PostgreSQL committing the producer's transaction, before the relay can see the event.\n\n")
		goal("Latency p50 (published_at - created_at), relay defaults", ms(l0.db.p50), "< 5 ms", l0.db.p50 < 5*time.Millisecond)
		goal("Latency p99 (published_at - created_at), relay defaults", ms(l0.db.p99), "< 25 ms", l0.db.p99 < 25*time.Millisecond)
	}

	if len(goals) > 0 {
		w("## Goals\n\n| goal | measured | target | met |\n|---|---:|---|---|\n%s\n\n", strings.Join(goals, "\n"))
	}

	if len(r.explains) > 0 {
		w("## Where the relay's time goes\n\n")
		w("Client-side time per step in the last drain of each configuration (pgx tracer on the relay's pool, " +
			"a timer around the Publisher; workers run concurrently, so shares are of workers × wall):\n\n")
		for _, id := range []string{"relay", "relayTuned", "relayWhatIf", "rabbitRelay", "rabbitRelayWhatIf"} {
			if c := r.byID[id]; c != nil && len(c.runs) > 0 {
				last := c.runs[len(c.runs)-1]
				w("%s, %s: %s events/s\n```\n%s```\n", c.name, c.config, thousands(last.rate()), last.summary)
			}
		}
		w("\n")
		w("EXPLAIN (ANALYZE, BUFFERS) on a fresh copy of the backlog, with the relay's own statement text and arguments:\n\n| statement | execution time |\n|---|---:|\n")
		for _, x := range r.explains {
			w("| %s | %s |\n", x.what, x.exec)
		}
		w("\n")
	}
	if len(r.tune) > 0 {
		w("## Tuning sweep (one run each)\n\n| broker | configuration | events/s |\n|---|---|---:|\n")
		for _, t := range r.tune {
			w("| %s | %s | %s |\n", t.group, t.rc, thousands(t.m.rate()))
		}
		w("\n")
	}
	for _, n := range r.notes {
		w("Note: %s\n\n", n)
	}
	return b.String()
}

func hasGroup(r *results, g string) bool {
	for _, c := range r.contenders {
		if c.group == g && len(c.runs) > 0 {
			return true
		}
	}
	return false
}
