package relay

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Defaults of Config. Each field documents its own.
const (
	SchemaDefault           = "outbox"
	BatchSizeDefault        = 500
	WorkersDefault          = 2
	PollIntervalDefault     = time.Second
	LeaseTTLDefault         = 10 * time.Second
	MaxAttemptsDefault      = 10
	BackoffBaseDefault      = time.Second
	BackoffMaxDefault       = 5 * time.Minute
	OutageBackoffMaxDefault = 30 * time.Second
	PublishTimeoutDefault   = 30 * time.Second
)

// Config configures a Relay. The zero value of every field but Publisher is a
// sensible default; a nil *Config is not allowed because Publisher is
// required.
type Config struct {
	// Publisher sends events to the broker(s). Required. Use a *TopicRouter
	// to send topics to different brokers.
	Publisher Publisher

	// Schema is the outbox schema (default "outbox").
	Schema string
	// RelayID names this relay in leases, the attempt history and
	// published_by. Default: hostname-pid-random. Must be unique among
	// running relays.
	RelayID string
	// BatchSize is the most events claimed per partition and round
	// (default 500).
	BatchSize int
	// Workers is the number of claim-publish-mark loops; each serves a
	// disjoint subset of this relay's partitions, so one loop publishes while
	// another talks to the database (default 2).
	Workers int
	// PollInterval is how often an idle worker looks for events without
	// being woken by NOTIFY: the safety net for a lost notification and the
	// delivery latency when NOTIFY is off (default 1s).
	PollInterval time.Duration
	// LeaseTTL is how long a partition lease lasts without renewal; a dead
	// relay's partitions are taken over after at most this long. Leases are
	// renewed every LeaseTTL/3 (default 10s).
	LeaseTTL time.Duration
	// MaxAttempts is the number of counted attempts before an event is
	// parked, unless outbox.topic_policies says otherwise for its topic
	// (default 10).
	MaxAttempts int
	// BackoffBase and BackoffMax bound the exponential backoff between
	// attempts of one event (defaults 1s and 5m); the delay is drawn at
	// random from [d/2, d] (jitter) where d = BackoffBase * 2^(attempt-1).
	BackoffBase, BackoffMax time.Duration
	// OutageBackoffMax caps the backoff of the whole relay while the broker
	// is unreachable (default 30s). Outages never count attempts.
	OutageBackoffMax time.Duration
	// PublishTimeout bounds one Publish call (default 30s). A batch that
	// times out is retried: a duplicate is possible, a loss is not.
	PublishTimeout time.Duration

	// DurableMarks makes every "published" mark wait for its WAL flush, as
	// the database's synchronous_commit says. By default the relay marks
	// with synchronous_commit = off for that one transaction: a mark lost
	// in a database crash (the last few hundred milliseconds at most) only
	// means those events are published again, which consumers absorb (the
	// inbox deduplicates by event id), and the relay no longer waits for a
	// disk flush on every batch. Nothing else the relay writes (failures,
	// parks, lane releases, leases) is affected.
	DurableMarks bool

	// ListenURL is the database URL of the connection that LISTENs for
	// wake-ups. Empty means the pool's own connection settings. Behind
	// PgBouncer in transaction pooling mode (where LISTEN does not work) set
	// it to a direct PostgreSQL URL, or set DisableListen and rely on polling.
	ListenURL string
	// DisableListen turns LISTEN off: events are found by polling every
	// PollInterval.
	DisableListen bool

	// Metrics, when set, receive the relay's Prometheus metrics (NewMetrics).
	Metrics *Metrics
	// TracerProvider creates the relay's spans (one per published batch,
	// linked to the trace context each event was enqueued with). Default:
	// the global OpenTelemetry provider, a no-op unless the program set one.
	TracerProvider trace.TracerProvider

	// Version is recorded in outbox.relays (default "dev").
	Version string
	// Logger receives the relay's structured logs (default slog.Default()).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Schema == "" {
		c.Schema = SchemaDefault
	}
	if c.RelayID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "relay"
		}
		c.RelayID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), randomSuffix())
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.BatchSize, BatchSizeDefault)
	def(&c.Workers, WorkersDefault)
	def(&c.MaxAttempts, MaxAttemptsDefault)
	defD(&c.PollInterval, PollIntervalDefault)
	defD(&c.LeaseTTL, LeaseTTLDefault)
	defD(&c.BackoffBase, BackoffBaseDefault)
	defD(&c.BackoffMax, BackoffMaxDefault)
	defD(&c.OutageBackoffMax, OutageBackoffMaxDefault)
	defD(&c.PublishTimeout, PublishTimeoutDefault)
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	return c
}

func (c Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	switch {
	case c.Publisher == nil:
		return bad("Publisher is required (relay/kafka.New or relay/rabbitmq.New)")
	case !pgutil.ValidSchemaName(c.Schema):
		return bad("schema %q: use 1-63 lower-case letters, digits and underscores", c.Schema)
	case len(c.RelayID) > 200:
		return bad("RelayID is longer than 200 bytes")
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return bad("BatchSize %d: use 1..10000", c.BatchSize)
	case c.Workers < 1 || c.Workers > 64:
		return bad("Workers %d: use 1..64", c.Workers)
	case c.MaxAttempts < 1:
		return bad("MaxAttempts %d: use at least 1", c.MaxAttempts)
	case c.PollInterval < 10*time.Millisecond:
		return bad("PollInterval %s: use at least 10ms", c.PollInterval)
	case c.LeaseTTL < time.Second:
		return bad("LeaseTTL %s: use at least 1s", c.LeaseTTL)
	case c.PublishTimeout < 0:
		return bad("PublishTimeout must not be negative")
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return bad("BackoffBase %s and BackoffMax %s: need 0 < base <= max", c.BackoffBase, c.BackoffMax)
	case c.OutageBackoffMax <= 0:
		return bad("OutageBackoffMax must be positive")
	}
	return nil
}
