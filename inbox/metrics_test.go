package inbox_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/metricscheck"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// The inbox's metrics, registered on the caller's registry and scraped over
// HTTP, follow a handled event, a retry, a park, a duplicate and the breaker.
func TestMetricsScrapedOverHTTP(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	metrics := inbox.NewMetrics()
	reg.MustRegister(metrics)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	url := srv.URL + "/metrics"

	cfg := fastConfig("billing")
	cfg.Metrics = metrics
	b := newBundle(t, cfg)
	// A second inbox on the same Metrics: its series are its own.
	other := fastConfig("notifications")
	other.Metrics = metrics
	b.newInbox(b.db.Pool, other)

	c := map[string]string{"consumer": "billing"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"consumer": "billing"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	f := metricscheck.Scrape(t, url)
	for _, o := range []string{"applied", "duplicate", "parked", "blocked", "already_parked", "ignored", "skipped"} {
		if _, ok := findSeries(f, "outboxkit_inbox_handled_total", with("outcome", o)); !ok {
			t.Fatalf("no series for outcome %s before the first delivery", o)
		}
	}
	if _, ok := findSeries(f, "outboxkit_inbox_breaker_open", map[string]string{"consumer": "notifications"}); !ok {
		t.Fatal("no breaker series for the second consumer")
	}

	// Handled.
	e1 := event("k", 1)
	b.expect(e1.delivery(), inbox.Applied)
	f = metricscheck.Scrape(t, url)
	if v := metricscheck.Value(f, "outboxkit_inbox_handled_total", with("outcome", "applied")); v != 1 {
		t.Fatalf("applied %v, want 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_commit_to_consume_seconds", c); v != 1 {
		t.Fatalf("commit_to_consume samples %v, want 1", v)
	}

	// A retry: one transient failure, then applied.
	var failedOnce atomic.Bool
	b.fail.set(func(ev *inbox.Event) error {
		if ev.Sequence == 2 && failedOnce.CompareAndSwap(false, true) {
			return errors.New("deadlock, try again")
		}
		if ev.Sequence == 3 {
			return inbox.Permanent(errors.New("account closed"))
		}
		return nil
	})
	b.expect(event("k", 2).delivery(), inbox.Applied)
	f = metricscheck.Scrape(t, url)
	if v := metricscheck.Value(f, "outboxkit_inbox_retries_total", c); v != 1 {
		t.Fatalf("retries %v, want 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_attempt_failures_total", with("class", "transient")); v != 1 {
		t.Fatalf("transient failures %v, want 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_handled_total", with("outcome", "applied")); v != 2 {
		t.Fatalf("applied %v, want 2", v)
	}

	// A park (dead letter), and the event behind it blocked.
	b.expect(event("k", 3).delivery(), inbox.Parked)
	b.expect(event("k", 4).delivery(), inbox.Blocked)
	f = metricscheck.Scrape(t, url)
	if v := metricscheck.Value(f, "outboxkit_inbox_dead_lettered_total", with("status", "parked", "class", "permanent")); v != 1 {
		t.Fatalf("dead lettered (parked, permanent) %v, want 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_dead_lettered_total", with("status", "blocked", "class", "permanent")); v != 1 {
		t.Fatalf("dead lettered (blocked) %v, want 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_handled_total", with("outcome", "parked")); v != 1 {
		t.Fatalf("parked %v, want 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_retries_total", c); v != 1 {
		t.Fatalf("retries %v after a permanent failure, want still 1", v)
	}

	// A duplicate.
	b.expect(e1.delivery(), inbox.Duplicate)
	f = metricscheck.Scrape(t, url)
	if v := metricscheck.Value(f, "outboxkit_inbox_handled_total", with("outcome", "duplicate")); v != 1 {
		t.Fatalf("duplicates %v, want 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_commit_to_consume_seconds", c); v != 2 {
		t.Fatalf("commit_to_consume samples %v, want 2 (applied events only)", v)
	}

	// The breaker: a dependency down opens it (gauge 1) until a probe
	// succeeds (gauge 0).
	var down atomic.Bool
	down.Store(true)
	b.fail.set(func(ev *inbox.Event) error {
		if down.Load() {
			return inbox.Unavailable(errors.New("ledger service down"))
		}
		return nil
	})
	done := make(chan inbox.Outcome, 1)
	go func() {
		out, _ := b.in.Handle(context.Background(), event("j", 1).delivery())
		done <- out
	}()
	testenv.Eventually(t, 10*time.Second, "breaker open in the scrape", func() bool {
		return metricscheck.Value(metricscheck.Scrape(t, url), "outboxkit_inbox_breaker_open", c) == 1
	})
	down.Store(false)
	if out := <-done; out != inbox.Applied {
		t.Fatalf("outcome %s after the outage, want applied", out)
	}
	f = metricscheck.Scrape(t, url)
	if v := metricscheck.Value(f, "outboxkit_inbox_breaker_open", c); v != 0 {
		t.Fatalf("breaker gauge %v after the probe succeeded, want 0", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_breaker_openings_total", c); v != 1 {
		t.Fatalf("breaker openings %v, want 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_attempt_failures_total", with("class", "dependency_outage")); v < 1 {
		t.Fatalf("dependency_outage failures %v, want at least 1", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_retries_total", c); v != 1 {
		t.Fatalf("retries %v after an outage, want still 1 (outages are not counted)", v)
	}
	if v := metricscheck.Value(f, "outboxkit_inbox_handled_total", map[string]string{"consumer": "notifications"}); v != 0 {
		t.Fatalf("the other consumer handled %v, want 0", v)
	}
}

func findSeries(fams map[string]*dto.MetricFamily, name string, want map[string]string) (*dto.Metric, bool) {
	for _, m := range fams[name].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if match {
			return m, true
		}
	}
	return nil, false
}
