// Command bench measures outboxkit against the watermill-sql forwarder, a
// bare SQL claim-and-mark ceiling and a bare amqp091-go publisher, in one
// run on the local services, and prints a Markdown report.
//
//	cd bench && go run .                      # the full run (about 5 minutes)
//	cd bench && go run . -events 2000 -quick  # smoke test (under 30 s)
//
// See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	events, keys, payload int
	scenarios             string
	reps                  int
	quick                 bool
	tuned, rabbitTuned    relayConfig
	latencyRate           int
	latencyProducers      int
	latencyDuration       time.Duration
	partitions            int
	kafkaPartitions       int
	timeout               time.Duration
	out                   string
	cpuProfile            string
	explainOut            string
	databaseURL           string
	rabbitURL             string
	verbose               bool
	keep                  bool
	tuneBatches           []int
	tuneWorkers           []int
	tuneBrokers           []string
	tunePG                string
	whatIf                string
	cmdline               string
}

// Tuned relay settings: the best of the sweep (-scenarios tune) on the
// 2-core reference machine; see README.md.
var (
	tunedKafkaDefault  = relayConfig{batch: 10000, workers: 4}
	tunedRabbitDefault = relayConfig{batch: 1000, workers: 8}
)

// whatIfDefault are the settings of the what-if runs: the two proposed
// fixes that need no code change to try (see README.md, "Findings").
const whatIfDefault = "random_page_cost=1.1,synchronous_commit=off"

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.events, "events", 50000, "committed events per throughput measurement")
	fs.IntVar(&o.keys, "keys", 1000, "distinct ordering keys")
	fs.IntVar(&o.payload, "payload", 100, "payload size in bytes (JSON)")
	fs.StringVar(&o.scenarios, "scenarios", "all", "comma list of forwarder, baresql, relay, rabbit, latency, tune; all = every one but tune")
	fs.IntVar(&o.reps, "reps", 3, "repetitions of each throughput measurement (interleaved); the report gives medians")
	fs.BoolVar(&o.quick, "quick", false, "smoke mode: one repetition, a 2 s latency run, no what-if runs, no EXPLAIN, no results file")
	tuned := fs.String("tuned", fmtRC(tunedKafkaDefault), "tuned relay settings for Kafka, BatchSize/Workers")
	rabbitTuned := fs.String("rabbit-tuned", fmtRC(tunedRabbitDefault), "tuned relay settings for RabbitMQ, BatchSize/Workers")
	fs.IntVar(&o.latencyRate, "latency-rate", 1000, "latency scenario: committed events per second")
	fs.IntVar(&o.latencyProducers, "latency-producers", 32, "latency scenario: concurrent producer connections (open loop: enough to keep the rate when commits slow down)")
	fs.DurationVar(&o.latencyDuration, "latency-duration", 20*time.Second, "latency scenario: how long producers commit")
	fs.IntVar(&o.partitions, "partitions", 32, "outbox partitions (migrations.Config.Partitions)")
	fs.IntVar(&o.kafkaPartitions, "kafka-partitions", 8, "partitions of each Kafka topic")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up on one measurement after this long")
	fs.StringVar(&o.out, "out", "RESULTS.md", "write the report to this file as well (not in -quick mode unless set)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of one tuned outboxkit Kafka drain to this file")
	fs.StringVar(&o.explainOut, "explain", "", "write the full EXPLAIN (ANALYZE, BUFFERS) plans to this file")
	fs.StringVar(&o.databaseURL, "database-url", envOr("OUTBOXKIT_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
		"PostgreSQL admin URL; scratch databases okbench_* are created and dropped ($OUTBOXKIT_BENCH_DATABASE_URL)")
	fs.StringVar(&o.rabbitURL, "rabbitmq-url", envOr("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ URL ($RABBITMQ_URL)")
	fs.BoolVar(&o.verbose, "v", false, "show the relays' logs")
	fs.BoolVar(&o.keep, "keep", false, "keep the template databases (okbench_<pid>_*_tpl_*) for inspection; drop them by hand")
	fs.StringVar(&o.whatIf, "whatif", whatIfDefault,
		"relay and latency scenarios: also run the relay with these PostgreSQL settings on its connections (name=value,...); empty: skip")
	tuneBatches := fs.String("tune-batches", "500,1000,2000,5000,10000", "tune: BatchSize values")
	tuneWorkers := fs.String("tune-workers", "1,2,4,8", "tune: Workers values")
	tuneBrokers := fs.String("tune-brokers", "kafka,rabbit", "tune: brokers")
	fs.StringVar(&o.tunePG, "tune-pg", "", "tune: PostgreSQL settings of the relay's connections, name=value,... (empty: the server's)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	outSet := false
	fs.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "out" })
	if o.quick {
		o.reps = 1
		if !isSet(fs, "latency-duration") {
			o.latencyDuration = 2 * time.Second
		}
		if !outSet {
			o.out = ""
		}
		if !isSet(fs, "timeout") {
			o.timeout = time.Minute
		}
		if !isSet(fs, "whatif") {
			o.whatIf = ""
		}
	}
	var err error
	if o.tuneBatches, err = intList(*tuneBatches); err != nil {
		return nil, fmt.Errorf("-tune-batches: %w", err)
	}
	if o.tuneWorkers, err = intList(*tuneWorkers); err != nil {
		return nil, fmt.Errorf("-tune-workers: %w", err)
	}
	o.tuneBrokers = strings.Split(*tuneBrokers, ",")
	if o.tuned, err = parseRC(*tuned); err != nil {
		return nil, fmt.Errorf("-tuned: %w", err)
	}
	if o.rabbitTuned, err = parseRC(*rabbitTuned); err != nil {
		return nil, fmt.Errorf("-rabbit-tuned: %w", err)
	}
	for _, kv := range strings.Split(o.whatIf+","+o.tunePG, ",") {
		if kv = strings.TrimSpace(kv); kv != "" && !strings.Contains(kv, "=") {
			return nil, fmt.Errorf("-whatif and -tune-pg take name=value,name=value; got %q", kv)
		}
	}
	switch {
	case o.events < 1 || o.keys < 1 || o.payload < 1 || o.reps < 1:
		return nil, errors.New("-events, -keys, -payload and -reps must be positive")
	case o.latencyRate < 1 || o.latencyDuration < time.Second || o.latencyProducers < 1:
		return nil, errors.New("-latency-rate and -latency-producers must be positive and -latency-duration at least 1s")
	}
	o.cmdline = "go run ."
	if len(args) > 0 {
		o.cmdline += " " + strings.Join(args, " ")
	}
	return o, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive integers separated by commas", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func fmtRC(c relayConfig) string { return fmt.Sprintf("%d/%d", c.batch, c.workers) }

func parseRC(s string) (relayConfig, error) {
	b, w, ok := strings.Cut(s, "/")
	if !ok {
		return relayConfig{}, fmt.Errorf("%q: want BatchSize/Workers, e.g. 2000/2", s)
	}
	bi, err1 := strconv.Atoi(b)
	wi, err2 := strconv.Atoi(w)
	if err1 != nil || err2 != nil || bi < 1 || wi < 1 {
		return relayConfig{}, fmt.Errorf("%q: want BatchSize/Workers, e.g. 2000/2", s)
	}
	return relayConfig{batch: bi, workers: wi}, nil
}

func (o *options) wants(s string) bool {
	for _, w := range strings.Split(o.scenarios, ",") {
		w = strings.TrimSpace(w)
		if w == s || (w == "all" && s != "tune") {
			return true
		}
	}
	return false
}
