package inbox

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxkit/outboxkit/internal/failure"
)

// Metrics are the inbox's Prometheus metrics. Create them with NewMetrics,
// pass them in Config.Metrics (several inboxes of one process may share one
// Metrics: every series carries the consumer) and register them on your
// registry: Metrics is a prometheus.Collector. Labels carry consumers,
// outcomes, dead letter statuses and error classes, never event ids or
// keys.
type Metrics struct {
	handled         *prometheus.CounterVec
	deadLettered    *prometheus.CounterVec
	failures        *prometheus.CounterVec
	retries         *prometheus.CounterVec
	breakerOpen     *prometheus.GaugeVec
	breakerOpenings *prometheus.CounterVec
	commitToConsume *prometheus.HistogramVec
	all             []prometheus.Collector
}

// NewMetrics creates the inbox's metrics, unregistered.
func NewMetrics() *Metrics {
	m := &Metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_inbox_handled_total",
			Help: "Deliveries settled, by outcome: applied, duplicate (skipped, applied before), parked, blocked, already_parked, ignored, skipped (skip marker)."},
			[]string{"consumer", "outcome"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_inbox_dead_lettered_total",
			Help: "Deliveries stored in inbox.dead_letters, by status (parked, blocked) and error class."},
			[]string{"consumer", "status", "class"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_inbox_attempt_failures_total",
			Help: "Failed attempts at applying an event, by error class (counted or not)."},
			[]string{"consumer", "class"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_inbox_retries_total",
			Help: "Failed attempts followed by another attempt after a backoff (counted against the event)."},
			[]string{"consumer"}),
		breakerOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outboxkit_inbox_breaker_open",
			Help: "1 while the consumer's breaker holds deliveries back (open or half-open), else 0."},
			[]string{"consumer"}),
		breakerOpenings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_inbox_breaker_openings_total",
			Help: "Times the consumer's breaker opened (a dependency was down)."},
			[]string{"consumer"}),
		commitToConsume: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "outboxkit_inbox_commit_to_consume_seconds",
			Help:    "From the event's insert into the outbox (ce_time, producer database clock) to the commit of the handler's transaction (consumer clock).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 20)},
			[]string{"consumer"}),
	}
	m.all = []prometheus.Collector{m.handled, m.deadLettered, m.failures, m.retries, m.breakerOpen,
		m.breakerOpenings, m.commitToConsume}
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

// consumerMetrics are one Inbox's series, resolved once: the hot path does
// no label lookups. Its methods accept a nil receiver (no Metrics
// configured).
type consumerMetrics struct {
	m               *Metrics
	consumer        string
	handled         [Skipped + 1]prometheus.Counter
	retries         prometheus.Counter
	breakerOpen     prometheus.Gauge
	breakerOpenings prometheus.Counter
	commitToConsume prometheus.Observer
}

func (m *Metrics) forConsumer(consumer string) *consumerMetrics {
	if m == nil {
		return nil
	}
	c := &consumerMetrics{m: m, consumer: consumer,
		retries:         m.retries.WithLabelValues(consumer),
		breakerOpen:     m.breakerOpen.WithLabelValues(consumer),
		breakerOpenings: m.breakerOpenings.WithLabelValues(consumer),
		commitToConsume: m.commitToConsume.WithLabelValues(consumer),
	}
	// Every outcome has a series from the start, so that rate() and
	// increase() see the first delivery of each.
	for o := Applied; o <= Skipped; o++ {
		c.handled[o] = m.handled.WithLabelValues(consumer, o.String())
	}
	return c
}

func (c *consumerMetrics) settled(o Outcome) {
	if c != nil && o >= Applied && o <= Skipped {
		c.handled[o].Inc()
	}
}

// applied observes the latency of an event applied at committed.
func (c *consumerMetrics) applied(eventTime, committed time.Time) {
	if c == nil || eventTime.IsZero() {
		return
	}
	c.commitToConsume.Observe(max(committed.Sub(eventTime), 0).Seconds())
}

func (c *consumerMetrics) failure(class failure.Class, retry bool) {
	if c == nil {
		return
	}
	c.m.failures.WithLabelValues(c.consumer, string(class)).Inc()
	if retry {
		c.retries.Inc()
	}
}

func (c *consumerMetrics) deadLettered(status string, class failure.Class) {
	if c != nil {
		c.m.deadLettered.WithLabelValues(c.consumer, status, string(class)).Inc()
	}
}

func (c *consumerMetrics) breaker(open bool) {
	if c == nil {
		return
	}
	if open {
		c.breakerOpen.Set(1)
		c.breakerOpenings.Inc()
	} else {
		c.breakerOpen.Set(0)
	}
}
