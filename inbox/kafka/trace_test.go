package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/kafka"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/internal/tracecheck"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relaykafka "github.com/outboxkit/outboxkit/relay/kafka"
)

// The trace context of the span an event is enqueued under travels through
// the outbox row, the relay and Kafka to the consumer: the handler's ctx
// carries the span "outboxkit.inbox.handle", in the producer's trace, whose
// parent is the producer's span. The relay's publish span is linked to the
// producer's span (a batch has many parents, so links, not a parent).
func TestTraceContextReachesHandlerThroughKafka(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("payments")
	k.CreateTopic(t, topic, 1)

	pctx, producer := tp.Tracer("producer").Start(ctx, "create payout")
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(pctx, tx, outbox.Message{Topic: topic, Key: "payout-42", Type: "payout.created",
		Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	producer.End()
	want := producer.SpanContext()

	pub, err := relaykafka.New(relaykafka.Config{Brokers: k.Brokers})
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

	in, err := inbox.New(db.Pool, &inbox.Config{Consumer: "billing", ConsumerVersion: "test", TracerProvider: tp, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan trace.SpanContext, 1)
	in.Register("payout.created", 1, func(ctx context.Context, _ pgx.Tx, _ *inbox.Event) error {
		seen <- trace.SpanContextFromContext(ctx)
		return nil
	})
	c, err := kafka.New(in, consumerConfig(k.Brokers, topic, 50*time.Millisecond))
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
