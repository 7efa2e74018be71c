package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// Inbox applies events for one consumer exactly once, in order per key.
// Create it with New, register handlers, then feed it deliveries with Handle
// (the adapters in inbox/kafka and inbox/rabbitmq do that). An Inbox is safe
// for concurrent use; events of one key must not be handled concurrently
// (the adapters guarantee it), although even then nothing is applied twice
// or out of order.
type Inbox struct {
	pool    *pgxpool.Pool
	cfg     Config
	sql     statements
	rq      requestStatements // operator requests (requests.go)
	log     *slog.Logger
	breaker *breaker
	actor   string // audit actor of the inbox's own actions
	metrics *consumerMetrics

	counts [Skipped + 1]atomic.Int64 // deliveries settled, by Outcome

	mu         sync.RWMutex
	handlers   map[typeVersion]Handler
	upcasters  map[typeVersion]Upcaster
	propagator propagation.TraceContext
	tracer     trace.Tracer
}

type typeVersion struct {
	typ     string
	version int
}

// New checks cfg and returns an Inbox that uses pool for all its
// statements. The handlers' transactions come from pool too.
func New(pool *pgxpool.Pool, cfg *Config) (*Inbox, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	if cfg == nil {
		return nil, fmt.Errorf("%w: config is nil: Consumer and ConsumerVersion are required", ErrInvalidConfig)
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	in := &Inbox{
		pool:      pool,
		cfg:       c,
		sql:       renderStatements(pgutil.Ident(c.Schema), pgutil.Ident(c.OutboxSchema)),
		rq:        renderRequestStatements(pgutil.Ident(c.Schema)),
		log:       c.Logger.With(slog.String("consumer", c.Consumer)),
		actor:     "inbox:" + c.Consumer,
		metrics:   c.Metrics.forConsumer(c.Consumer),
		tracer:    c.TracerProvider.Tracer("github.com/outboxkit/outboxkit/inbox"),
		handlers:  map[typeVersion]Handler{},
		upcasters: map[typeVersion]Upcaster{},
	}
	in.breaker = newBreaker(c.Breaker, func(open bool) {
		in.metrics.breaker(open)
		if open {
			in.log.Warn("inbox: breaker open: deliveries wait until a probe succeeds")
		} else {
			in.log.Info("inbox: breaker closed: deliveries flow again")
		}
	})
	return in, nil
}

// Consumer returns the consumer name.
func (in *Inbox) Consumer() string { return in.cfg.Consumer }

// Register sets the handler of an event type and schema version. Events of
// older versions reach it through upcasters (RegisterUpcaster). Registering
// the same type and version again replaces the handler.
func (in *Inbox) Register(eventType string, version int, h Handler) {
	if h == nil {
		panic("inbox: Register with a nil handler")
	}
	if version < 1 {
		panic(fmt.Sprintf("inbox: Register %s with version %d: versions start at 1", eventType, version))
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.handlers[typeVersion{eventType, version}] = h
}

// RegisterUpcaster sets the function that turns the payload of version
// fromVersion of eventType into the payload of version fromVersion+1. An
// event with no handler for its own version is upcast step by step until a
// version with a handler is reached.
func (in *Inbox) RegisterUpcaster(eventType string, fromVersion int, up func(payload []byte) ([]byte, error)) {
	if up == nil {
		panic("inbox: RegisterUpcaster with a nil function")
	}
	if fromVersion < 1 {
		panic(fmt.Sprintf("inbox: RegisterUpcaster %s from version %d: versions start at 1", eventType, fromVersion))
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.upcasters[typeVersion{eventType, fromVersion}] = up
}

// maxUpcastSteps bounds an upcaster chain.
const maxUpcastSteps = 1000

// resolve finds the handler of ev and the event it is given: ev itself, or
// ev upcast to the first newer version that has a handler.
func (in *Inbox) resolve(ev *wire.Event) (Handler, *Event, error) {
	in.mu.RLock()
	defer in.mu.RUnlock()
	payload, version := ev.Payload, ev.Version
	for range maxUpcastSteps {
		if h, ok := in.handlers[typeVersion{ev.Type, version}]; ok {
			return h, eventOf(ev, version, payload), nil
		}
		up, ok := in.upcasters[typeVersion{ev.Type, version}]
		if !ok {
			break
		}
		next, err := callUpcaster(up, payload)
		if err != nil {
			return nil, nil, failure.New(failure.PoisonFormat,
				fmt.Errorf("upcaster %s v%d to v%d: %w", ev.Type, version, version+1, err))
		}
		payload, version = next, version+1
	}
	return nil, nil, failure.New(failure.NoHandler, noHandlerError(ev.Type, ev.Version, version))
}

func noHandlerError(typ string, original, reached int) error {
	if original == reached {
		return fmt.Errorf("no handler for %s v%d", typ, original)
	}
	return fmt.Errorf("no handler for %s v%d (upcast from v%d)", typ, reached, original)
}

func callUpcaster(up Upcaster, payload []byte) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return up(payload)
}

func eventOf(ev *wire.Event, version int, payload []byte) *Event {
	return &Event{
		ID: ev.ID, Type: ev.Type, Version: version, OriginalVersion: ev.Version,
		Key: ev.Key, Sequence: ev.Sequence, Topic: ev.Topic, Payload: payload, ContentType: ev.ContentType,
		Headers: ev.Headers, CorrelationID: ev.CorrelationID, CausationID: ev.CausationID,
		TraceParent: ev.TraceParent, TraceState: ev.TraceState, Time: ev.Time, Source: ev.Source,
	}
}

// Verify checks that the inbox can reach its tables: the database answers
// and the schemas are migrated. The adapters call it when they start; an
// error names what to do.
func (in *Inbox) Verify(ctx context.Context) error {
	if _, err := in.pool.Exec(ctx, in.sql.verify); err != nil {
		return fmt.Errorf("inbox: %w", pgutil.MissingSchemaHint(err, in.cfg.Schema))
	}
	return nil
}

// BreakerOpen reports whether the breaker holds deliveries back (open, or
// half-open waiting for its probe). Useful for readiness checks.
func (in *Inbox) BreakerOpen() bool { return in.breaker.isOpen() }

// Handle applies one delivery and returns what it did. Every Outcome means
// the delivery is settled: acknowledge it to the broker (after Handle
// returned, never before). Handle returns an error only when ctx ended
// before the delivery was settled; then do not acknowledge it, the broker
// delivers it again.
//
// Handle never panics on a delivery: a malformed one is parked as
// poison_format. It retries failing attempts itself, with backoff, inside
// the call (see the package documentation), and waits while the breaker is
// open.
func (in *Inbox) Handle(ctx context.Context, d Delivery) (Outcome, error) {
	out, err := in.handle(ctx, d)
	if err == nil {
		in.settled(out)
	}
	return out, err
}

// settled counts a settled delivery.
func (in *Inbox) settled(out Outcome) {
	in.counts[out].Add(1)
	in.metrics.settled(out)
}

// Stats counts the deliveries this Inbox settled since it was created.
type Stats struct {
	Applied, Duplicate, Parked, Blocked, AlreadyParked, Ignored, Skipped int64
}

// Stats returns the deliveries settled so far, by outcome.
func (in *Inbox) Stats() Stats {
	return Stats{Applied: in.counts[Applied].Load(), Duplicate: in.counts[Duplicate].Load(),
		Parked: in.counts[Parked].Load(), Blocked: in.counts[Blocked].Load(),
		AlreadyParked: in.counts[AlreadyParked].Load(), Ignored: in.counts[Ignored].Load(),
		Skipped: in.counts[Skipped].Load()}
}

func (in *Inbox) handle(ctx context.Context, d Delivery) (Outcome, error) {
	m := decode(&d)
	if m.bad != nil {
		return in.settle(ctx, func() (Outcome, error) {
			return in.parkMalformed(ctx, m)
		})
	}
	if to, ok := m.ev.Headers[ReplayToHeader]; ok && to != in.cfg.Consumer {
		return Ignored, nil
	}
	counted := -1 // counted attempts so far, read from the database at the first failure
	outages := 0
	for {
		probe, err := in.breaker.acquire(ctx)
		if err != nil {
			return 0, err
		}
		started := time.Now()
		out, hErr, err := in.attempt(ctx, m)
		if err == nil && hErr == nil {
			if out == Applied {
				in.breaker.success(probe)
			} else {
				in.breaker.inconclusive(probe)
			}
			return out, nil
		}
		if ctx.Err() != nil {
			in.breaker.inconclusive(probe)
			return 0, ctx.Err()
		}
		failed := hErr
		if failed == nil {
			failed = err // the inbox's own statements failed: same treatment
		}
		class := ClassOf(failed)
		rec := attemptRecord{started: started, duration: time.Since(started), class: class, err: failed}
		counts := in.breaker.failure(probe, class, m.ev.ID.String())
		if !class.Retry() {
			in.metrics.failure(class, false)
			if counted < 0 {
				counted = in.countAttempts(ctx, m)
			}
			rec.number, rec.outcome = counted+1, "parked"
			return in.settle(ctx, func() (Outcome, error) { return in.parkFailed(ctx, m, rec) })
		}
		if !counts {
			in.metrics.failure(class, false)
			outages++
			rec.number, rec.outcome = max(counted, 0), "not_counted"
			in.recordAttempt(ctx, m, rec)
			in.log.Warn("inbox: attempt failed, not counted (dependency down)", eventAttrs(m, class, failed)...)
			if in.cfg.Breaker.Disabled && !sleepCtx(ctx, backoff(in.cfg.Breaker.BackoffBase, in.cfg.Breaker.BackoffMax, outages)) {
				return 0, ctx.Err()
			}
			continue
		}
		if counted < 0 {
			counted = in.countAttempts(ctx, m)
		}
		counted++
		rec.number = counted
		if counted >= in.cfg.MaxAttempts {
			in.metrics.failure(class, false)
			rec.outcome = "parked"
			return in.settle(ctx, func() (Outcome, error) { return in.parkFailed(ctx, m, rec) })
		}
		in.metrics.failure(class, true)
		rec.outcome = "retry"
		in.recordAttempt(ctx, m, rec)
		in.log.Info("inbox: attempt failed, will retry", append(eventAttrs(m, class, failed), slog.Int("attempt", counted))...)
		if !sleepCtx(ctx, backoff(in.cfg.BackoffBase, in.cfg.BackoffMax, counted)) {
			return 0, ctx.Err()
		}
	}
}

// settle runs a bookkeeping step (a park) until it succeeds or ctx ends: a
// delivery is acknowledged only once its dead letter is stored. Failures are
// outages of the database (or bugs): the breaker backs off, nothing is lost.
func (in *Inbox) settle(ctx context.Context, step func() (Outcome, error)) (Outcome, error) {
	for n := 1; ; n++ {
		out, err := step()
		if err == nil {
			return out, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		in.log.Error("inbox: cannot store a dead letter, retrying", slog.Any("error", err), slog.Int("try", n))
		if !sleepCtx(ctx, backoff(in.cfg.Breaker.BackoffBase, in.cfg.Breaker.BackoffMax, n)) {
			return 0, ctx.Err()
		}
	}
}

func eventAttrs(m *message, class ErrorClass, err error) []any {
	attrs := []any{slog.String("topic", m.topic), slog.String("error_class", string(class)), slog.Any("error", err)}
	if m.ev != nil {
		attrs = append(attrs, slog.String("event_id", m.ev.ID.String()), slog.String("type", m.ev.Type))
		if m.ev.Key != "" {
			attrs = append(attrs, slog.String("key", m.ev.Key), slog.Int64("sequence", m.ev.Sequence))
		}
	}
	return attrs
}

// backoff returns the wait before attempt n+1: base * 2^(n-1), capped at
// limit, drawn from [d/2, d].
func backoff(base, limit time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	half := d / 2
	return half + rand.N(half+1)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// handleSpan is the name of the span around each handler run.
const handleSpan = "outboxkit.inbox.handle"

// runHandler calls h with panics recovered, inside a span whose parent is
// the span the event was enqueued under (its W3C trace context, carried by
// ce_traceparent and ce_tracestate). ctx's own span is the parent only when
// the event carries no trace context.
func (in *Inbox) runHandler(ctx context.Context, h Handler, tx pgx.Tx, ev *Event) (err error) {
	if ev.TraceParent != "" {
		ctx = in.propagator.Extract(ctx, propagation.MapCarrier{"traceparent": ev.TraceParent, "tracestate": ev.TraceState})
	}
	ctx, span := in.tracer.Start(ctx, handleSpan, trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		// Only for a recording span: without an SDK the hot path builds
		// no attributes.
		span.SetAttributes(
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", ev.Topic),
			attribute.String("messaging.message.id", ev.ID.String()),
			attribute.String("outboxkit.consumer", in.cfg.Consumer),
			attribute.String("outboxkit.event_type", ev.Type),
			attribute.Int("outboxkit.event_version", ev.Version))
	}
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, string(ClassOf(err)))
		}
		span.End()
	}()
	return h(ctx, tx, ev)
}

// handlerCtx bounds one attempt by HandlerTimeout.
func (in *Inbox) handlerCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if in.cfg.HandlerTimeout > 0 {
		return context.WithTimeout(ctx, in.cfg.HandlerTimeout)
	}
	return context.WithCancel(ctx)
}

// rollback ends tx when it is still open; the error of a rollback after a
// failure says nothing new.
func rollback(tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		_ = err // the connection is closed by pgx on a failed rollback
	}
}
