package rabbitmq_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/internal/tracecheck"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relayrabbit "github.com/outboxkit/outboxkit/relay/rabbitmq"
)

// The trace context of the span an event is enqueued under travels through
// the outbox row, the relay and RabbitMQ (cloudEvents:traceparent) to the
// consumer: the handler's ctx carries the span "outboxkit.inbox.handle", in
// the producer's trace, whose parent is the producer's span. The relay's
// publish span is linked to the producer's span.
func TestTraceContextReachesHandlerThroughRabbitMQ(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	db := testenv.NewDB(t)
	top := newTopology(t)

	pctx, producer := tp.Tracer("producer").Start(ctx, "create payout")
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(pctx, tx, outbox.Message{Topic: top.topic, Key: "payout-42", Type: "payout.created",
		Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	producer.End()
	want := producer.SpanContext()

	pub, err := relayrabbit.New(ctx, relayrabbit.Config{URL: testenv.RabbitURL(), Exchange: top.exchange, SkipDeclare: true, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	r, err := relay.New(db.Pool, &relay.Config{Publisher: pub, PollInterval: 50 * time.Millisecond,
		LeaseTTL: 2 * time.Second, TracerProvider: tp, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)

	in, err := inbox.New(db.Pool, &inbox.Config{Consumer: "notifications", ConsumerVersion: "test", TracerProvider: tp, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan trace.SpanContext, 1)
	in.Register("payout.created", 1, func(ctx context.Context, _ pgx.Tx, _ *inbox.Event) error {
		seen <- trace.SpanContextFromContext(ctx)
		return nil
	})
	c, err := rabbitmq.New(in, rabbitmq.Config{URL: testenv.RabbitURL(), Queue: top.queue, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, c.Run)

	var got trace.SpanContext
	select {
	case got = <-seen:
	case <-time.After(60 * time.Second):
		t.Fatal("the handler was not called within 60s")
	}
	tracecheck.HandleSpan(t, rec, want, got)
	tracecheck.PublishLink(t, rec, want)
}
