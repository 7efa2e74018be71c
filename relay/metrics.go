package relay

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the relay's Prometheus metrics. Create them with NewMetrics,
// pass them in Config.Metrics (several relays of one process may share one
// Metrics) and register them on your registry: Metrics is a
// prometheus.Collector. Labels carry topics and error classes, never event
// ids or keys.
type Metrics struct {
	published      *prometheus.CounterVec
	failures       *prometheus.CounterVec
	parked         *prometheus.CounterVec
	retries        *prometheus.CounterVec
	outages        prometheus.Counter
	lanesReleased  prometheus.Counter
	promoted       prometheus.Counter
	batchSize      prometheus.Histogram
	publishSeconds prometheus.Histogram
	commitToAck    prometheus.Histogram
	leases         prometheus.Gauge
	all            []prometheus.Collector
}

// NewMetrics creates the relay's metrics, unregistered.
func NewMetrics() *Metrics {
	m := &Metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_relay_published_total", Help: "Events acknowledged by the broker and marked published."}, []string{"topic"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_relay_publish_failures_total", Help: "Failed publish attempts, by error class."}, []string{"topic", "class"}),
		parked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_relay_parked_total", Help: "Events parked (no more attempts): they need an operator."}, []string{"topic", "class"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_relay_retries_total", Help: "Events scheduled for another attempt after a failure."}, []string{"topic"}),
		outages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outboxkit_relay_outage_backoffs_total", Help: "Rounds in which the broker was unavailable for the whole batch (no attempts counted)."}),
		lanesReleased: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outboxkit_relay_lanes_released_total", Help: "Blocked keys that flowed again after their replayed or corrected head was published."}),
		promoted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outboxkit_relay_delayed_promoted_total", Help: "Delayed events moved into the outbox when due."}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "outboxkit_relay_batch_size", Help: "Events per published batch.",
			Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000}}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "outboxkit_relay_publish_duration_seconds", Help: "Time to publish one batch and receive the broker's acknowledgements.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		commitToAck: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "outboxkit_relay_commit_to_ack_seconds", Help: "From the event's insert (database clock) to the broker's acknowledgement (relay clock).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 20)}),
		leases: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outboxkit_relay_partition_leases", Help: "Partition leases held by this process's relays."}),
	}
	m.all = []prometheus.Collector{m.published, m.failures, m.parked, m.retries, m.outages, m.lanesReleased,
		m.promoted, m.batchSize, m.publishSeconds, m.commitToAck, m.leases}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.all {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.all {
		c.Collect(ch)
	}
}

// The recording methods accept a nil *Metrics, so the relay needs no checks.

func (m *Metrics) batch(msgs []Message, results []Result, elapsed time.Duration) {
	if m == nil {
		return
	}
	m.batchSize.Observe(float64(len(msgs)))
	m.publishSeconds.Observe(elapsed.Seconds())
	now := time.Now()
	for i := range msgs {
		if results != nil && results[i].Err == nil {
			m.published.WithLabelValues(msgs[i].Topic).Inc()
			m.commitToAck.Observe(now.Sub(msgs[i].CreatedAt).Seconds())
		}
	}
}

func (m *Metrics) failed(f *failed) {
	if m == nil {
		return
	}
	m.failures.WithLabelValues(f.msg.Topic, string(f.class)).Inc()
	switch f.outcome {
	case "parked":
		m.parked.WithLabelValues(f.msg.Topic, string(f.class)).Inc()
	case "retry":
		m.retries.WithLabelValues(f.msg.Topic).Inc()
	}
}

func (m *Metrics) outage() {
	if m != nil {
		m.outages.Inc()
	}
}

func (m *Metrics) released(n int) {
	if m != nil {
		m.lanesReleased.Add(float64(n))
	}
}

func (m *Metrics) promotedEvents(n int64) {
	if m != nil {
		m.promoted.Add(float64(n))
	}
}

func (m *Metrics) leasesDelta(d int) {
	if m != nil {
		m.leases.Add(float64(d))
	}
}
