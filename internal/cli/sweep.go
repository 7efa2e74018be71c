package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxkit/outboxkit/sweeper"
)

const sweepUsage = `sweep [flags]

Runs the sweeper until SIGTERM or SIGINT: scheduled recovery, retention,
reconcile and alarm jobs. Run one next to each relay if you like: one of all
the sweepers of a database is the leader and runs the jobs; when it dies
another takes over within --leader-check-interval.

  --once JOB   run one job now, print its report and exit (1 if it failed,
               or if it is running in another sweeper right now)

Jobs: reclaim, rescue, retry, retention, reconcile, alarms, redact.
redact is off unless --redact-after is given: it replaces the payloads of
events published, and of inbox dead letters closed, longer ago than that with
empty bytes (and removes --redact-headers), except under a legal hold
(outboxkit hold).
Schedules are cron specs with a seconds field ("*/30 * * * * *"), classic
five-field specs ("0 3 * * *"), descriptors ("@every 1m", "@hourly"), or
"off". Durations take Go syntax (90s, 36h) and days (7d, 1d12h).`

// daysDuration is a duration flag that also accepts days: 7d, 1d12h.
type daysDuration struct{ d *time.Duration }

func (f daysDuration) String() string {
	if f.d == nil || *f.d == 0 {
		return "0s"
	}
	if *f.d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(*f.d/(24*time.Hour)), 10) + "d"
	}
	return f.d.String()
}

func (f daysDuration) Set(s string) error {
	d, err := parseDays(s)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

// parseDays parses a Go duration optionally preceded by a number of days.
// Negative durations and durations past time.Duration's range (about 292
// years) are refused: a value that wrapped around would be a retention or
// threshold nobody asked for.
func parseDays(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	invalid := fmt.Errorf("invalid duration %q: use e.g. 7d, 36h or 90s", s)
	const day = 24 * time.Hour
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n < 0 || n > int64(math.MaxInt64/day) {
			return 0, invalid
		}
		days = time.Duration(n) * day
		if s = s[i+1:]; s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > math.MaxInt64-days {
		return 0, invalid
	}
	return days + d, nil
}

// consumerFlag collects --consumer billing=payments,refunds.
type consumerFlag map[string][]string

func (c consumerFlag) String() string { return "" }

func (c consumerFlag) Set(v string) error {
	name, topics, ok := strings.Cut(v, "=")
	if !ok || strings.TrimSpace(name) == "" || strings.TrimSpace(topics) == "" {
		return fmt.Errorf("consumer %q: use name=topic1,topic2", v)
	}
	for _, t := range strings.Split(topics, ",") {
		if t = strings.TrimSpace(t); t != "" {
			c[strings.TrimSpace(name)] = append(c[strings.TrimSpace(name)], t)
		}
	}
	return nil
}

func runSweep(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "sweep", sweepUsage)
	metricsAddr := fs.String("metrics-addr", env.Getenv("OUTBOXKIT_METRICS_ADDR"), "serve /metrics, /healthz and /readyz here, e.g. 127.0.0.1:9091 ($OUTBOXKIT_METRICS_ADDR)")
	var db dbFlags
	db.register(fs, env)
	var logs logFlags
	logs.register(fs, env)
	once := fs.String("once", "", "run this job now, print its report and exit")
	asJSON := fs.Bool("json", false, "with --once: print the report as JSON")

	cfg := sweeper.Config{
		PublishedRetention: sweeper.PublishedRetentionDefault, ProcessedRetention: sweeper.ProcessedRetentionDefault,
		ReclaimAfter: sweeper.ReclaimAfterDefault, LaneReleaseAfter: sweeper.LaneReleaseAfterDefault,
		DeadRelayAfter: sweeper.DeadRelayAfterDefault, RescueAfter: sweeper.RescueAfterDefault,
		RetryAfter: sweeper.RetryAfterDefault, ReconcileWindow: sweeper.ReconcileWindowDefault,
		ReconcileLag: sweeper.ReconcileLagDefault, ConsumerLookback: sweeper.ConsumerLookbackDefault,
		PendingAgeWarn: sweeper.PendingAgeWarnDefault, StuckPartitionAfter: sweeper.StuckPartitionAfterDefault,
		LongTransactionWarn: sweeper.LongTransactionWarnDefault, LeaderCheckInterval: sweeper.LeaderCheckIntervalDefault,
		JobTimeout: sweeper.JobTimeoutDefault,
	}
	fs.StringVar(&cfg.ID, "sweeper-id", env.Getenv("OUTBOXKIT_SWEEPER_ID"), "name of this sweeper in logs and pg_stat_activity (default hostname-pid-random)")
	fs.StringVar(&cfg.LockURL, "lock-url", "", "direct PostgreSQL URL for the leader lock when --database-url goes through PgBouncer in transaction mode (default $OUTBOXKIT_LOCK_URL)")
	dur := func(p *time.Duration, name, usage string) { fs.Var(daysDuration{p}, name, usage) }
	dur(&cfg.LeaderCheckInterval, "leader-check-interval", "how often followers try to become the leader and the leader checks its lock")
	dur(&cfg.JobTimeout, "job-timeout", "longest run of any job")

	schedules := map[sweeper.Job]*string{}
	for _, j := range sweeper.Jobs() {
		schedules[j] = fs.String(string(j)+"-schedule", sweeper.DefaultSchedule(j), "cron schedule of the "+string(j)+" job, or off")
	}

	dur(&cfg.ReclaimAfter, "reclaim-after", "reclaim: free partition leases expired for this long")
	dur(&cfg.LaneReleaseAfter, "lane-release-after", "reclaim: release lanes still held by a head published this long ago")
	dur(&cfg.DeadRelayAfter, "dead-relay-after", "reclaim: remove relays rows dead for this long")
	dur(&cfg.RescueAfter, "rescue-after", "rescue: wake the relays when an event has been due this long")
	dur(&cfg.RetryAfter, "retry-after", "retry: retry events parked at least this long ago")
	fs.IntVar(&cfg.MaxAutoRetries, "max-auto-retries", sweeper.MaxAutoRetriesDefault, "retry: automatic retries per event")
	dur(&cfg.PublishedRetention, "published-retention", "retention: keep published events this long after publication")
	dur(&cfg.ProcessedRetention, "processed-retention", "retention: keep inbox.processed records this long (at least --published-retention)")
	fs.IntVar(&cfg.DeleteBatchSize, "delete-batch", sweeper.DeleteBatchSizeDefault, "retention, redact: most rows per statement")
	dur(&cfg.DeletePause, "delete-pause", "retention, redact: pause between two statements (0: as long as the previous one took; negative: none)")
	dur(&cfg.RedactAfter, "redact-after", "redact: empty the payloads of events published, and dead letters closed, this long ago (e.g. 30d; default off) ($OUTBOXKIT_REDACT_AFTER)")
	redactHeaders := fs.String("redact-headers", env.Getenv("OUTBOXKIT_REDACT_HEADERS"), "redact: comma-separated header names to remove as well, e.g. customer-email,customer-name ($OUTBOXKIT_REDACT_HEADERS)")
	dur(&cfg.ReconcileWindow, "reconcile-window", "reconcile: span of enqueue times checked")
	dur(&cfg.ReconcileLag, "reconcile-lag", "reconcile: leave out events newer than this (still in flight)")
	fs.IntVar(&cfg.ReconcileMaxGaps, "reconcile-max-gaps", sweeper.ReconcileMaxGapsDefault, "reconcile: most missing event ids listed per consumer and topic")
	consumers := consumerFlag{}
	fs.Var(consumers, "consumer", "reconcile: name=topic1,topic2 (repeatable; default: consumers seen in inbox.processed)")
	dur(&cfg.ConsumerLookback, "consumer-lookback", "reconcile: how far back consumers are discovered")
	dur(&cfg.PendingAgeWarn, "pending-age-warn", "alarms: warn when an event has been due this long (negative: off)")
	fs.IntVar(&cfg.ParkedWarn, "parked-warn", sweeper.ParkedWarnDefault, "alarms: warn at this many parked events in a topic (negative: off)")
	fs.IntVar(&cfg.DeadLetterWarn, "dead-letter-warn", sweeper.DeadLetterWarnDefault, "alarms: warn at this many open dead letters of a consumer (negative: off)")
	dur(&cfg.StuckPartitionAfter, "stuck-partition-after", "alarms: a partition is stuck when an event in it has been due this long")
	dur(&cfg.LongTransactionWarn, "long-transaction-warn", "alarms: warn about transactions open this long (negative: off)")

	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("unexpected argument %q", pos[0])
	}
	var job sweeper.Job
	if *once != "" {
		j, err := sweeper.ParseJob(*once)
		if err != nil {
			return usageError("--once: %v", err)
		}
		job = j
	} else if *asJSON {
		return usageError("--json goes with --once")
	}
	if cfg.LockURL == "" {
		cfg.LockURL = env.Getenv("OUTBOXKIT_LOCK_URL")
	}
	if v := env.Getenv("OUTBOXKIT_REDACT_AFTER"); v != "" && cfg.RedactAfter == 0 {
		d, err := parseDays(v)
		if err != nil {
			return usageError("$OUTBOXKIT_REDACT_AFTER: %v", err)
		}
		cfg.RedactAfter = d
	}
	for _, h := range strings.Split(*redactHeaders, ",") {
		if h = strings.TrimSpace(h); h != "" {
			cfg.RedactHeaders = append(cfg.RedactHeaders, h)
		}
	}
	cfg.Schedules = map[sweeper.Job]string{}
	for j, s := range schedules {
		cfg.Schedules[j] = *s
	}
	if len(consumers) > 0 {
		cfg.Consumers = consumers
	}
	cfg.OutboxSchema, cfg.InboxSchema = db.outboxSchema, db.inboxSchema
	logger, err := newLogger(env, logs.format, logs.level)
	if err != nil {
		return err
	}
	cfg.Logger = logger
	conns := func(def int32) int32 { return max(int32(len(sweeper.Jobs())+1), def) }
	if job != "" {
		conns = fixedConns(2)
	}
	pool, err := db.openPool(ctx, env, conns)
	if err != nil {
		return err
	}
	defer pool.Close()
	s, err := sweeper.New(pool, &cfg)
	if err != nil {
		if errors.Is(err, sweeper.ErrInvalidConfig) {
			return usageError("%s", strings.TrimPrefix(err.Error(), sweeper.ErrInvalidConfig.Error()+": "))
		}
		return err
	}

	if job != "" {
		res, err := s.RunJob(ctx, job)
		if errors.Is(err, sweeper.ErrRedactionOff) {
			return usageError("--once redact: redaction is off: pass --redact-after (e.g. 30d) to redact payloads older than that")
		}
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(env.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(res)
		}
		printSweepResult(env.Stdout, &res)
		return nil
	}
	if *metricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(s.Metrics())
		_, stop, err := observability(ctx, *metricsAddr, reg, func(ctx context.Context) error { return pool.Ping(ctx) }, logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	start := time.Now()
	err = s.Run(ctx)
	logger.Info("sweeper exited", slog.Duration("uptime", time.Since(start).Round(time.Second)))
	return err
}

// printSweepResult prints a job's report for people.
func printSweepResult(w io.Writer, res *sweeper.Result) {
	fmt.Fprintf(w, "%s: %d rows in %s\n", res.Job, res.Rows, res.Duration.Round(time.Millisecond))
	ts := func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") }
	switch {
	case res.Reclaim != nil:
		r := res.Reclaim
		for _, f := range r.FreedLeases {
			fmt.Fprintf(w, "  freed partition %d: relay %s stopped renewing its lease at %s; %d pending events",
				f.Partition, f.Owner, ts(f.LeaseUntil), f.Pending)
			if f.Pending > 0 {
				fmt.Fprintf(w, " (oldest %s)", f.OldestPending)
			}
			fmt.Fprintln(w)
		}
		for _, l := range r.ReleasedLanes {
			fmt.Fprintf(w, "  released lane %s/%s: its head (message %d) was published but the lane was still held\n", l.Topic, l.Key, l.HeadMessageID)
		}
		if r.Unblocked > 0 {
			fmt.Fprintf(w, "  %d blocked events flow again\n", r.Unblocked)
		}
		for _, d := range r.DeadRelays {
			fmt.Fprintf(w, "  removed dead relay %s (%s pid %d, alive until %s)\n", d.RelayID, d.Hostname, d.PID, ts(d.AliveUntil))
		}
		if len(r.FreedLeases)+len(r.ReleasedLanes)+len(r.DeadRelays) == 0 {
			fmt.Fprintln(w, "  nothing to reclaim")
		}
	case res.Rescue != nil:
		r := res.Rescue
		if !r.Notified {
			fmt.Fprintln(w, "  no event waits longer than the rescue threshold")
			return
		}
		fmt.Fprintf(w, "  %d events due for up to %s were not published; %d delayed events overdue; woke the relays (%d alive)\n",
			r.Waiting, time.Duration(r.OldestDueSeconds*float64(time.Second)).Round(time.Second), r.OverdueScheduled, r.LiveRelays)
		for _, p := range r.Partitions {
			holder := "no relay holds it"
			if p.Leased {
				holder = "held by " + p.Owner
			}
			fmt.Fprintf(w, "  partition %d: %d waiting, %s\n", p.Partition, p.Waiting, holder)
		}
	case res.Retry != nil:
		r := res.Retry
		fmt.Fprintf(w, "  %d parked events back to pending; %d left parked (retried too often)\n", r.Retried, r.Exhausted)
		for _, e := range r.Events {
			fmt.Fprintf(w, "  %s  %s  %s  retry %d\n", e.EventID, e.Topic, e.ErrorClass, e.AutoRetry)
		}
	case res.Retention != nil:
		r := res.Retention
		fmt.Fprintf(w, "  deleted %d published events (published before %s), %d attempt rows, %d inbox records (applied before %s)\n",
			r.DeletedMessages, ts(r.PublishedCutoff), r.DeletedAttempts, r.DeletedProcessed, ts(r.ProcessedCutoff))
		if r.HeldMessages > 0 {
			fmt.Fprintf(w, "  kept %d published events past the window: a legal hold covers them (outboxkit hold list)\n", r.HeldMessages)
		}
		fmt.Fprintf(w, "  %d statements, the longest %s\n", r.Statements, r.LongestStatement.Round(time.Millisecond))
	case res.Reconcile != nil:
		r := res.Reconcile
		fmt.Fprintf(w, "  events created %s .. %s\n", ts(r.From), ts(r.To))
		for _, t := range r.Topics {
			fmt.Fprintf(w, "  topic %s: %d enqueued, %d published, %d pending, %d parked, %d dropped\n",
				t.Topic, t.Enqueued, t.Published, t.Pending, t.Parked, t.Dropped)
		}
		for _, c := range r.Consumers {
			fmt.Fprintf(w, "  consumer %s, topic %s: %d published = %d applied + %d dead-lettered + %d missing\n",
				c.Consumer, c.Topic, c.Published, c.Applied, c.DeadLettered, c.Missing)
			for _, id := range c.MissingEventIDs {
				fmt.Fprintf(w, "    missing %s\n", id)
			}
			if int64(len(c.MissingEventIDs)) < c.Missing {
				fmt.Fprintf(w, "    ... and %d more\n", c.Missing-int64(len(c.MissingEventIDs)))
			}
		}
		if len(r.Consumers) == 0 {
			fmt.Fprintln(w, "  no consumer to reconcile (none seen in inbox.processed; name them with --consumer)")
		}
	case res.Redact != nil:
		r := res.Redact
		fmt.Fprintf(w, "  redacted %d published events and %d dead letters closed before %s (%d headers removed)\n",
			r.RedactedMessages, r.RedactedDeadLetters, ts(r.Cutoff), r.HeadersRemoved)
		if r.HeldMessages+r.HeldDeadLetters > 0 {
			fmt.Fprintf(w, "  kept %d events and %d dead letters whole: a legal hold covers them (outboxkit hold list)\n",
				r.HeldMessages, r.HeldDeadLetters)
		}
		fmt.Fprintf(w, "  %d statements, the longest %s\n", r.Statements, r.LongestStatement.Round(time.Millisecond))
	case res.Alarms != nil:
		r := res.Alarms
		for _, a := range r.Alarms {
			fmt.Fprintf(w, "  ALARM %s\n", a.Message)
		}
		if len(r.Alarms) == 0 {
			fmt.Fprintln(w, "  no alarm")
		}
	}
}

var _ flag.Value = daysDuration{}
