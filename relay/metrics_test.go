package relay_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/relay"
)

// scrape fetches /metrics over HTTP and parses it.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value sums the samples of a family whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

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
	fams := scrape(t, srv.URL)
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
		if got := value(fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if value(fams, "outboxkit_relay_commit_to_ack_seconds", nil) != 4 || value(fams, "outboxkit_relay_batch_size", nil) < 1 {
		t.Error("histograms not observed")
	}
	_ = context.Background
}
