// Package tracecheck holds the trace assertions that the consumer adapters'
// tests share: a trace context set at Enqueue must reach the handler through
// every broker in the same shape.
package tracecheck

import (
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// HandleSpan checks that the handler's span context got is the span
// "outboxkit.inbox.handle", in want's trace, child of want.
func HandleSpan(t *testing.T, rec *tracetest.SpanRecorder, want, got trace.SpanContext) {
	t.Helper()
	if got.TraceID() != want.TraceID() {
		t.Fatalf("handler's trace id %s, want the producer's %s", got.TraceID(), want.TraceID())
	}
	if got.SpanID() == want.SpanID() {
		t.Fatal("the handler runs in the producer's span itself, not in a handle span")
	}
	var handle sdktrace.ReadOnlySpan
	testenv.Eventually(t, 10*time.Second, "the handle span ended", func() bool {
		for _, s := range rec.Ended() {
			if s.SpanContext().SpanID() == got.SpanID() {
				handle = s
				return true
			}
		}
		return false
	})
	if handle.Name() != "outboxkit.inbox.handle" || handle.SpanKind() != trace.SpanKindConsumer {
		t.Fatalf("handler span %q kind %s", handle.Name(), handle.SpanKind())
	}
	attrs := map[string]string{}
	for _, a := range handle.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	if attrs["outboxkit.event_type"] != "payout.created" || attrs["outboxkit.consumer"] == "" || attrs["messaging.message.id"] == "" {
		t.Fatalf("handle span attributes %v", attrs)
	}
	if p := handle.Parent(); p.SpanID() != want.SpanID() || p.TraceID() != want.TraceID() || !p.IsRemote() {
		t.Fatalf("handle span's parent %s/%s (remote %v), want the producer's span %s/%s", p.TraceID(), p.SpanID(),
			p.IsRemote(), want.TraceID(), want.SpanID())
	}
}

// PublishLink checks that a relay publish span links to want.
func PublishLink(t *testing.T, rec *tracetest.SpanRecorder, want trace.SpanContext) {
	t.Helper()
	for _, s := range rec.Ended() {
		if s.Name() != "outboxkit.relay.publish" {
			continue
		}
		for _, l := range s.Links() {
			if l.SpanContext.SpanID() == want.SpanID() && l.SpanContext.TraceID() == want.TraceID() {
				return
			}
		}
	}
	t.Fatal("no relay publish span links to the producer's span")
}
