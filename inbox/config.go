package inbox

import (
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Defaults of Config. Each field documents its own.
const (
	SchemaDefault              = "inbox"
	OutboxSchemaDefault        = "outbox"
	MaxAttemptsDefault         = 10
	BackoffBaseDefault         = 250 * time.Millisecond
	BackoffMaxDefault          = 15 * time.Second
	HandlerTimeoutDefault      = 30 * time.Second
	BreakerThresholdDefault    = 5
	BreakerBackoffBaseDefault  = time.Second
	BreakerBackoffMaxDefault   = 30 * time.Second
	RequestPollIntervalDefault = 2 * time.Second
	maxConsumerLen             = 200
	maxConsumerVersionLen      = 200
	maxAuditActorOrReasonBytes = 4096
)

// OnPark says what happens to the later events of a key when one of its
// events is parked.
type OnPark string

const (
	// OnParkBlock (the default): later events of the key are parked as
	// "blocked" behind the parked one and applied, in order, when it is
	// redriven. Other keys keep flowing.
	OnParkBlock OnPark = "block"
	// OnParkSkip: later events of the key are applied as if the parked one
	// had been applied; it can still be redriven (out of order) later.
	OnParkSkip OnPark = "skip"
)

// Config configures an Inbox. Consumer and ConsumerVersion are required;
// every other zero value is a documented default.
type Config struct {
	// Consumer names this consumer (e.g. "billing"). Every consumer has its
	// own processed records, lanes and dead letters, so two consumers of one
	// topic apply each event once each. Required; at most 200 bytes.
	Consumer string
	// ConsumerVersion is the version of the consumer code (a release tag, a
	// commit), recorded in every dead letter. Required.
	ConsumerVersion string

	// Schema is the inbox schema (default "inbox").
	Schema string
	// OutboxSchema is the schema holding error_classes and audit_log
	// (default "outbox").
	OutboxSchema string

	// MaxAttempts is the number of counted attempts before an event is
	// parked (default 10). Permanent errors park at once; outages are not
	// counted.
	MaxAttempts int
	// BackoffBase and BackoffMax bound the wait between two attempts of one
	// event (defaults 250ms and 15s): d = BackoffBase * 2^(attempt-1), capped
	// at BackoffMax, drawn at random from [d/2, d]. With the defaults an
	// event that always fails is parked after about 30 to 60 seconds, during
	// which its key (on Kafka: its partition) waits.
	BackoffBase, BackoffMax time.Duration
	// HandlerTimeout bounds one attempt: the handler and the commit of its
	// transaction (default 30s). A timeout is a transient failure.
	HandlerTimeout time.Duration

	// OnPark is the lane policy when an event of a key is parked: OnParkBlock
	// (default) or OnParkSkip.
	OnPark OnPark
	// StartLanesAtFirstSeen makes the first event this consumer sees of a
	// key start the key's lane, whatever its sequence. By default (false) a
	// key's first event must be sequence 1, and an event that arrives ahead
	// of missing ones waits for them (parked, see the package doc). Set it
	// when the consumer joins a stream whose earlier events it will never
	// receive (topic retention deleted them, or it starts at the latest
	// offset).
	StartLanesAtFirstSeen bool

	// RequestPollInterval is how often ServeRequests (started by the
	// inbox/kafka and inbox/rabbitmq consumers' Run) looks for operator
	// requests on this consumer's dead letters: outboxkit dlq replay, edit,
	// and the release of a key after a drop (default 2s). Negative: never;
	// call ProcessRequests yourself.
	RequestPollInterval time.Duration

	// Breaker configures the circuit breaker that stops taking deliveries
	// while a dependency is down.
	Breaker BreakerConfig

	// Logger receives structured logs (default slog.Default()). Payloads are
	// never logged.
	Logger *slog.Logger

	// Metrics receives the inbox's Prometheus metrics (NewMetrics; register
	// it on your registry). Several inboxes may share one. Default: none.
	Metrics *Metrics
	// TracerProvider creates the handler spans ("outboxkit.inbox.handle",
	// one per handler run, child of the span the event was enqueued under).
	// Default: the global OpenTelemetry provider, a no-op unless the
	// program set one.
	TracerProvider trace.TracerProvider
}

// BreakerConfig configures the breaker. The zero value is enabled with the
// defaults.
type BreakerConfig struct {
	// Disabled turns the breaker off: outages then make each event wait with
	// backoff on its own, still without counting attempts.
	Disabled bool
	// Threshold is the number of distinct events whose latest attempts
	// failed in a row with a retryable error (transient) before the breaker
	// opens (default 5). A single dependency_outage error (Unavailable, a
	// lost database connection) opens it at once.
	Threshold int
	// BackoffBase and BackoffMax bound how long the breaker stays open
	// before it lets one probe through (defaults 1s and 30s, doubling after
	// each failed probe, with jitter).
	BackoffBase, BackoffMax time.Duration
}

func (c Config) withDefaults() Config {
	if c.Schema == "" {
		c.Schema = SchemaDefault
	}
	if c.OutboxSchema == "" {
		c.OutboxSchema = OutboxSchemaDefault
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = MaxAttemptsDefault
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = BackoffBaseDefault
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(BackoffMaxDefault, c.BackoffBase)
	}
	if c.HandlerTimeout == 0 {
		c.HandlerTimeout = HandlerTimeoutDefault
	}
	if c.RequestPollInterval == 0 {
		c.RequestPollInterval = RequestPollIntervalDefault
	}
	if c.OnPark == "" {
		c.OnPark = OnParkBlock
	}
	if c.Breaker.Threshold == 0 {
		c.Breaker.Threshold = BreakerThresholdDefault
	}
	if c.Breaker.BackoffBase == 0 {
		c.Breaker.BackoffBase = BreakerBackoffBaseDefault
	}
	if c.Breaker.BackoffMax == 0 {
		c.Breaker.BackoffMax = max(BreakerBackoffMaxDefault, c.Breaker.BackoffBase)
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
	case strings.TrimSpace(c.Consumer) == "":
		return bad("Consumer is required: name the consumer, e.g. \"billing\"")
	case len(c.Consumer) > maxConsumerLen || !utf8.ValidString(c.Consumer) || strings.ContainsRune(c.Consumer, 0):
		return bad("Consumer must be valid UTF-8 without NUL, at most %d bytes", maxConsumerLen)
	case strings.TrimSpace(c.ConsumerVersion) == "":
		return bad("ConsumerVersion is required: the version of the consumer code, e.g. a release tag")
	case len(c.ConsumerVersion) > maxConsumerVersionLen || !utf8.ValidString(c.ConsumerVersion) || strings.ContainsRune(c.ConsumerVersion, 0):
		return bad("ConsumerVersion must be valid UTF-8 without NUL, at most %d bytes", maxConsumerVersionLen)
	case !pgutil.ValidSchemaName(c.Schema):
		return bad("Schema %q: use 1-63 lower-case letters, digits and underscores", c.Schema)
	case !pgutil.ValidSchemaName(c.OutboxSchema):
		return bad("OutboxSchema %q: use 1-63 lower-case letters, digits and underscores", c.OutboxSchema)
	case c.MaxAttempts < 1:
		return bad("MaxAttempts %d: use at least 1", c.MaxAttempts)
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return bad("BackoffBase %s and BackoffMax %s: need 0 < base <= max", c.BackoffBase, c.BackoffMax)
	case c.HandlerTimeout < 0:
		return bad("HandlerTimeout must not be negative")
	case c.OnPark != OnParkBlock && c.OnPark != OnParkSkip:
		return bad("OnPark %q: use %q or %q", c.OnPark, OnParkBlock, OnParkSkip)
	case c.Breaker.Threshold < 1:
		return bad("Breaker.Threshold %d: use at least 1", c.Breaker.Threshold)
	case c.Breaker.BackoffBase <= 0 || c.Breaker.BackoffMax < c.Breaker.BackoffBase:
		return bad("Breaker.BackoffBase %s and Breaker.BackoffMax %s: need 0 < base <= max",
			c.Breaker.BackoffBase, c.Breaker.BackoffMax)
	}
	return nil
}
