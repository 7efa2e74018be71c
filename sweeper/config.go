package sweeper

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Job names one of the sweeper's jobs. The names are used in schedules,
// metrics labels, logs and the CLI (outboxkit sweep --once <job>).
type Job string

// The jobs, in the order they are listed and scheduled.
const (
	// JobReclaim frees partition leases of relays that stopped renewing them,
	// releases lanes left held by a relay that died between marking a head
	// published and releasing its lane, removes relays rows that stopped
	// heartbeating long ago, and reports the pending events such relays left.
	JobReclaim Job = "reclaim"
	// JobRescue wakes the relays (NOTIFY) when events have been due for
	// longer than Config.RescueAfter without being published: the relay
	// missed them (lost notification, dead relay).
	JobRescue Job = "rescue"
	// JobRetry returns parked events with a retryable error class on topics
	// with outbox.topic_policies.auto_retry to pending with a fresh attempt
	// budget, audited as the system actor.
	JobRetry Job = "retry"
	// JobRetention deletes published events (and their failed-attempt
	// history) and inbox.processed records older than their retention
	// windows, in small batches.
	JobRetention Job = "retention"
	// JobReconcile counts, per consumer and topic, the events published in a
	// time window and how many of them each consumer applied, dead-lettered
	// or is missing, and lists missing event ids.
	JobReconcile Job = "reconcile"
	// JobAlarms exports the health gauges (oldest due pending event, parked
	// events, dead letters, stuck partitions, long transactions) and logs a
	// warning for each one past its threshold.
	JobAlarms Job = "alarms"
	// JobRedact replaces the payloads of published events and closed inbox
	// dead letters older than Config.RedactAfter with empty bytes and
	// removes Config.RedactHeaders, keeping every other column, except for
	// rows under a legal hold. Off unless RedactAfter is set.
	JobRedact Job = "redact"
)

// Jobs returns every job, in schedule order.
func Jobs() []Job {
	return []Job{JobReclaim, JobRescue, JobRetry, JobRetention, JobReconcile, JobAlarms, JobRedact}
}

// ParseJob returns the job named s, or an error wrapping ErrUnknownJob.
func ParseJob(s string) (Job, error) {
	j := Job(strings.TrimSpace(strings.ToLower(s)))
	if slices.Contains(Jobs(), j) {
		return j, nil
	}
	names := make([]string, 0, len(Jobs()))
	for _, j := range Jobs() {
		names = append(names, string(j))
	}
	return "", fmt.Errorf("%w %q: use one of %s", ErrUnknownJob, s, strings.Join(names, ", "))
}

// Off is the schedule that disables a job.
const Off = "off"

// DefaultSchedule returns the schedule of j when Config.Schedules has none
// (cron with a seconds field: second minute hour day-of-month month
// day-of-week). The frequent jobs are cheap; retention and reconcile run
// hourly, at different minutes; redact (when RedactAfter turns it on) runs
// daily at 02:47, as privacy windows are counted in days.
func DefaultSchedule(j Job) string {
	switch j {
	case JobReclaim:
		return "*/15 * * * * *"
	case JobRescue, JobAlarms:
		return "*/30 * * * * *"
	case JobRetry:
		return "0 */5 * * * *"
	case JobRetention:
		return "0 7 * * * *"
	case JobReconcile:
		return "0 37 * * * *"
	case JobRedact:
		return "0 47 2 * * *"
	}
	return Off
}

// Defaults of Config. Each field documents its own.
const (
	SchemaDefault              = "outbox"
	InboxSchemaDefault         = "inbox"
	LeaderCheckIntervalDefault = 5 * time.Second
	JobTimeoutDefault          = 30 * time.Minute
	ReclaimAfterDefault        = 30 * time.Second
	LaneReleaseAfterDefault    = time.Minute
	DeadRelayAfterDefault      = 15 * time.Minute
	RescueAfterDefault         = time.Minute
	RetryAfterDefault          = 5 * time.Minute
	MaxAutoRetriesDefault      = 3
	PublishedRetentionDefault  = 7 * 24 * time.Hour
	ProcessedRetentionDefault  = 14 * 24 * time.Hour
	DeleteBatchSizeDefault     = 1000
	ReconcileWindowDefault     = time.Hour
	ReconcileLagDefault        = 15 * time.Minute
	ReconcileMaxGapsDefault    = 100
	ConsumerLookbackDefault    = 24 * time.Hour
	PendingAgeWarnDefault      = 5 * time.Minute
	ParkedWarnDefault          = 1
	DeadLetterWarnDefault      = 1
	StuckPartitionAfterDefault = 2 * time.Minute
	LongTransactionWarnDefault = 5 * time.Minute
)

// MinRetention is the shortest retention window accepted: a guard against
// a unit mistake (7 instead of 7*24*time.Hour) deleting history.
const MinRetention = time.Hour

// Config configures a Sweeper. A nil *Config means all defaults. The zero
// value of every field is its default; for the warning thresholds of the
// alarms job a negative value turns the warning off (the gauge is still
// exported).
type Config struct {
	// OutboxSchema is the schema of the outbox tables (default "outbox").
	// The leader lock and the job locks are derived from it, so sweepers of
	// different outbox schemas in one database do not exclude each other.
	OutboxSchema string
	// InboxSchema is the schema of the inbox tables (default "inbox").
	InboxSchema string
	// ID names this sweeper in logs, in its connection's application_name
	// (outboxkit-sweeper:<id>) and in audit details. Default:
	// hostname-pid-random.
	ID string

	// Schedules maps a job to its cron spec: six fields with seconds
	// ("*/30 * * * * *"), five classic fields ("0 * * * *", minute
	// resolution) or a descriptor ("@every 30s", "@hourly"). A job missing
	// from the map uses DefaultSchedule; Off ("off") disables it. Prefix a
	// spec with CRON_TZ=Europe/Paris for a time zone other than Location.
	Schedules map[Job]string
	// Location is the time zone of the schedules (default time.Local).
	Location *time.Location

	// LeaderCheckInterval is how often a follower tries to become the
	// leader and the leader checks its lock connection (default 5s). A
	// leader whose process or connection dies is replaced within one
	// interval; one whose host vanishes without closing the connection,
	// within about three (see doc.go).
	LeaderCheckInterval time.Duration
	// LockURL is the database URL of the dedicated connection that holds
	// the leader lock. Empty means the pool's connection settings. A session
	// advisory lock needs a real session: behind PgBouncer in transaction
	// mode, point it at PostgreSQL directly.
	LockURL string
	// JobTimeout bounds one run of any job (default 30m); a run cut short is
	// logged as failed and runs again at its next schedule.
	JobTimeout time.Duration

	// ReclaimAfter: the reclaim job frees a partition lease that expired at
	// least this long ago (default 30s). Relays take expired leases over by
	// themselves; freeing them makes an abandoned partition visible as free
	// and stops a relay that comes back from renewing it.
	ReclaimAfter time.Duration
	// LaneReleaseAfter: the reclaim job releases a lane still held
	// (outbox.lanes.hold_until = infinity) by a head event that was
	// published at least this long ago (default 1m). That state means the
	// relay died between marking the head published and releasing its lane.
	LaneReleaseAfter time.Duration
	// DeadRelayAfter: the reclaim job deletes outbox.relays rows whose
	// alive_until passed this long ago (default 15m). A relay that comes back
	// registers again.
	DeadRelayAfter time.Duration

	// RescueAfter: the rescue job wakes the relays when a pending event has
	// been due for longer than this (default 1m).
	RescueAfter time.Duration

	// RetryAfter: the retry job only retries events parked at least this
	// long ago (default 5m), which spaces the automatic retries out.
	RetryAfter time.Duration
	// MaxAutoRetries is how many times the retry job returns one event to
	// pending (default 3). It counts the event's parks in outbox.attempts:
	// an event parked more than MaxAutoRetries times stays parked for an
	// operator.
	MaxAutoRetries int

	// PublishedRetention: published outbox events are deleted this long
	// after they were published (default 7 days; at least MinRetention).
	// It is also how far back "outboxkit replay" can go.
	PublishedRetention time.Duration
	// ProcessedRetention: inbox.processed records are deleted this long
	// after they were applied (default 14 days). It must be at least
	// PublishedRetention: a replayed event whose record is gone would be
	// applied twice.
	ProcessedRetention time.Duration
	// DeleteBatchSize is the most rows one retention statement deletes, and
	// one redaction statement redacts (default 1000). Each statement is its
	// own short transaction.
	DeleteBatchSize int
	// DeletePause is slept between two retention (or redaction) statements, to leave the
	// database to the relay and the producers (and replicas and autovacuum
	// time to follow). Zero (the default) sleeps as long as the previous
	// statement took, so retention keeps a database backend busy at most
	// half the time; a positive value is a fixed pause; a negative value
	// deletes as fast as it can.
	DeletePause time.Duration

	// RedactAfter turns the redact job on (zero, the default, leaves it
	// off: redaction destroys data, so it is opted into). Published events
	// are redacted this long after they were published, and inbox dead
	// letters this long after they were resolved, replayed, dropped or
	// edited (resolved_at): the payload becomes empty bytes, RedactHeaders are
	// removed, redacted_at is set, every other column stays. Rows under an
	// active legal hold (outbox.legal_holds) are skipped. At least
	// MinRetention. A redacted event can no longer be replayed, so the
	// replay window becomes the shorter of RedactAfter and
	// PublishedRetention.
	RedactAfter time.Duration
	// RedactHeaders names headers the redact job removes along with the
	// payload (compared case-insensitively), e.g. "customer-email". The
	// headers outboxkit itself reads (ce_*, content-type, traceparent) are
	// columns of their own and are never needed from here.
	RedactHeaders []string

	// ReconcileWindow is the span of enqueue times the reconcile job checks
	// (default 1h): events created in [now-ReconcileLag-ReconcileWindow,
	// now-ReconcileLag).
	ReconcileWindow time.Duration
	// ReconcileLag keeps the newest events out of the window (default 15m),
	// so that events still in flight to consumers are not reported missing.
	ReconcileLag time.Duration
	// ReconcileMaxGaps is the most missing event ids listed per consumer
	// and topic (default 100); the counts are always complete.
	ReconcileMaxGaps int
	// Consumers lists, per consumer name, the topics it consumes. Empty:
	// every (consumer, topic) pair seen in inbox.processed within
	// ConsumerLookback before the window. Set it in production: a consumer
	// that stopped longer ago than the lookback is no longer discovered.
	Consumers map[string][]string
	// ConsumerLookback is how far back consumers are discovered (default
	// 24h).
	ConsumerLookback time.Duration

	// PendingAgeWarn: warn when the oldest due pending event of a topic has
	// waited longer than this (default 5m).
	PendingAgeWarn time.Duration
	// ParkedWarn: warn when a topic has at least this many parked events
	// (default 1).
	ParkedWarn int
	// DeadLetterWarn: warn when a consumer has at least this many open dead
	// letters (parked or blocked; default 1).
	DeadLetterWarn int
	// StuckPartitionAfter: a partition is stuck when an event in it has been
	// due this long without being published (default 2m), whether its lease
	// is held, expired or free.
	StuckPartitionAfter time.Duration
	// LongTransactionWarn: warn about transactions in this database open
	// longer than this (default 5m). They do not hold the relay back (lanes
	// are row-locked, not ordered by transaction ids), but they keep vacuum
	// from removing dead outbox rows.
	LongTransactionWarn time.Duration

	// Metrics receive the sweeper's Prometheus metrics. Default: a new
	// Metrics, returned by (*Sweeper).Metrics for registration.
	Metrics *Metrics
	// Logger receives the sweeper's structured logs (default slog.Default()).
	Logger *slog.Logger
}

// Errors to branch on.
var (
	// ErrInvalidConfig is returned (wrapped) by New for a bad Config.
	ErrInvalidConfig = errors.New("sweeper: invalid config")
	// ErrUnknownJob is returned (wrapped) for a job name that does not exist.
	ErrUnknownJob = errors.New("sweeper: unknown job")
	// ErrJobBusy is returned by RunJob when the job is running already, in
	// this process or in another sweeper on the same database.
	ErrJobBusy = errors.New("sweeper: job is running already")
	// ErrAlreadyRunning is returned by Run when this Sweeper runs already.
	ErrAlreadyRunning = errors.New("sweeper: already running")
	// ErrRedactionOff is returned by RunJob(JobRedact) when
	// Config.RedactAfter is not set.
	ErrRedactionOff = errors.New("sweeper: redaction is off")
)

// specParser accepts six fields (with seconds), five classic fields and
// descriptors.
var specParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

func (c Config) withDefaults() Config {
	if c.OutboxSchema == "" {
		c.OutboxSchema = SchemaDefault
	}
	if c.InboxSchema == "" {
		c.InboxSchema = InboxSchemaDefault
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "sweeper"
		}
		b := make([]byte, 3)
		rand.Read(b) //nolint:errcheck // crypto/rand does not fail
		c.ID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
	}
	schedules := make(map[Job]string, len(Jobs()))
	for _, j := range Jobs() {
		schedules[j] = DefaultSchedule(j)
	}
	for j, s := range c.Schedules {
		if s = strings.TrimSpace(s); s != "" {
			schedules[j] = s
		}
	}
	c.Schedules = schedules
	if c.Location == nil {
		c.Location = time.Local
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defI := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD(&c.LeaderCheckInterval, LeaderCheckIntervalDefault)
	defD(&c.JobTimeout, JobTimeoutDefault)
	defD(&c.ReclaimAfter, ReclaimAfterDefault)
	defD(&c.LaneReleaseAfter, LaneReleaseAfterDefault)
	defD(&c.DeadRelayAfter, DeadRelayAfterDefault)
	defD(&c.RescueAfter, RescueAfterDefault)
	defD(&c.RetryAfter, RetryAfterDefault)
	defI(&c.MaxAutoRetries, MaxAutoRetriesDefault)
	defD(&c.PublishedRetention, PublishedRetentionDefault)
	defD(&c.ProcessedRetention, ProcessedRetentionDefault)
	defI(&c.DeleteBatchSize, DeleteBatchSizeDefault)
	defD(&c.ReconcileWindow, ReconcileWindowDefault)
	defD(&c.ReconcileLag, ReconcileLagDefault)
	defI(&c.ReconcileMaxGaps, ReconcileMaxGapsDefault)
	defD(&c.ConsumerLookback, ConsumerLookbackDefault)
	defD(&c.PendingAgeWarn, PendingAgeWarnDefault)
	defI(&c.ParkedWarn, ParkedWarnDefault)
	defI(&c.DeadLetterWarn, DeadLetterWarnDefault)
	defD(&c.StuckPartitionAfter, StuckPartitionAfterDefault)
	defD(&c.LongTransactionWarn, LongTransactionWarnDefault)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if !pgutil.ValidSchemaName(c.OutboxSchema) {
		return bad("OutboxSchema %q: use 1-63 lower-case letters, digits and underscores", c.OutboxSchema)
	}
	if !pgutil.ValidSchemaName(c.InboxSchema) {
		return bad("InboxSchema %q: use 1-63 lower-case letters, digits and underscores", c.InboxSchema)
	}
	if len(c.ID) > 200 {
		return bad("ID is longer than 200 bytes")
	}
	for j, spec := range c.Schedules {
		if _, err := ParseJob(string(j)); err != nil {
			return bad("Schedules: %v", err)
		}
		if spec == Off {
			continue
		}
		if _, err := specParser.Parse(spec); err != nil {
			return bad("schedule of %s %q: %v (e.g. \"*/30 * * * * *\", \"0 7 * * * *\", \"@every 1m\" or %q)", j, spec, err, Off)
		}
	}
	positive := []struct {
		name string
		v    time.Duration
	}{
		{"LeaderCheckInterval", c.LeaderCheckInterval}, {"JobTimeout", c.JobTimeout},
		{"ReclaimAfter", c.ReclaimAfter}, {"LaneReleaseAfter", c.LaneReleaseAfter},
		{"DeadRelayAfter", c.DeadRelayAfter}, {"RescueAfter", c.RescueAfter}, {"RetryAfter", c.RetryAfter},
		{"ReconcileWindow", c.ReconcileWindow}, {"ReconcileLag", c.ReconcileLag},
		{"ConsumerLookback", c.ConsumerLookback}, {"StuckPartitionAfter", c.StuckPartitionAfter},
	}
	for _, p := range positive {
		if p.v < 0 {
			return bad("%s %s must not be negative", p.name, p.v)
		}
	}
	switch {
	case c.LeaderCheckInterval < 50*time.Millisecond:
		return bad("LeaderCheckInterval %s: use at least 50ms", c.LeaderCheckInterval)
	case c.MaxAutoRetries < 0:
		return bad("MaxAutoRetries %d must not be negative", c.MaxAutoRetries)
	case c.PublishedRetention < MinRetention:
		return bad("PublishedRetention %s: use at least %s", c.PublishedRetention, MinRetention)
	case c.ProcessedRetention < c.PublishedRetention:
		return bad("ProcessedRetention %s is shorter than PublishedRetention %s: a replayed event whose inbox record is gone would be applied twice",
			c.ProcessedRetention, c.PublishedRetention)
	case c.DeleteBatchSize < 1 || c.DeleteBatchSize > 50000:
		return bad("DeleteBatchSize %d: use 1..50000", c.DeleteBatchSize)
	case c.ReconcileWindow+c.ReconcileLag > c.PublishedRetention:
		return bad("ReconcileWindow + ReconcileLag (%s) reach past PublishedRetention %s: those events are deleted",
			c.ReconcileWindow+c.ReconcileLag, c.PublishedRetention)
	case c.ReconcileMaxGaps < 1 || c.ReconcileMaxGaps > 100000:
		return bad("ReconcileMaxGaps %d: use 1..100000", c.ReconcileMaxGaps)
	}
	switch {
	case c.RedactAfter < 0:
		return bad("RedactAfter %s must not be negative (0 turns redaction off)", c.RedactAfter)
	case c.RedactAfter > 0 && c.RedactAfter < MinRetention:
		return bad("RedactAfter %s: use at least %s (or 0 to turn redaction off)", c.RedactAfter, MinRetention)
	}
	for _, h := range c.RedactHeaders {
		if strings.TrimSpace(h) == "" || len(h) > 200 {
			return bad("RedactHeaders: %q is not a header name", h)
		}
	}
	for consumer, topics := range c.Consumers {
		if consumer == "" || len(topics) == 0 || slices.Contains(topics, "") {
			return bad("Consumers: consumer %q needs a name and at least one non-empty topic", consumer)
		}
	}
	return nil
}
