package relay_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/outboxkit/outboxkit/internal/metricscheck"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/relay"
)

// The relay's metrics, scraped over HTTP, follow a publish, a retry and a
// park; leases held are counted.
func TestMetricsScrapedOverHTTP(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("metered")
	k.CreateTopic(t, topic, 1)
	ids := enqueue(t, db.Pool, topic, 6, 3, 6)
	pub := &faultPublisher{Publisher: kafkaPublisher(t, k)}
	pub.setFail(ids[0], relay.Classify(relay.ClassTransient, errors.New("leader moved")))
	metrics := relay.NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	cfg := fastConfig(t, pub)
	cfg.MaxAttempts = 2
	cfg.Metrics = metrics
	runRelay(t, newPool(t, db.URL, 4), cfg)

	testenv.Eventually(t, 30*time.Second, "event parked after 2 attempts", func() bool { return countStatus(t, db.Pool, "parked") == 1 })
	waitPublished(t, db.Pool, 3, 10*time.Second) // key-0 is blocked behind its head; keys 1 and 2 went out
	fams := metricscheck.Scrape(t, srv.URL)
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"outboxkit_relay_published_total", map[string]string{"topic": topic}, 4},
		{"outboxkit_relay_retries_total", map[string]string{"topic": topic}, 1},
		{"outboxkit_relay_parked_total", map[string]string{"topic": topic, "class": "transient"}, 1},
		{"outboxkit_relay_publish_failures_total", map[string]string{"topic": topic, "class": "transient"}, 2},
		{"outboxkit_relay_partition_leases", nil, testenv.Partitions},
	}
	for _, c := range checks {
		if got := metricscheck.Value(fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if metricscheck.Value(fams, "outboxkit_relay_commit_to_ack_seconds", nil) != 4 || metricscheck.Value(fams, "outboxkit_relay_batch_size", nil) < 1 {
		t.Error("histograms not observed")
	}
	_ = context.Background
}
