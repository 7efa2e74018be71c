package sweeper

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sweeper's Prometheus metrics. A Sweeper creates its own
// unless Config.Metrics is set; register them on your registry
// (registry.MustRegister(s.Metrics())): Metrics is a prometheus.Collector.
// Labels carry job names, topics and consumers, never event ids or keys.
//
// The health gauges (oldest pending age, parked, dead letters, stuck
// partitions, longest transaction, reconcile gaps) are set by the leader
// only and cleared when it loses the leadership: aggregate them across
// instances with max().
type Metrics struct {
	jobRuns          *prometheus.CounterVec
	rows             *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	lastSuccess      *prometheus.GaugeVec
	rescued          prometheus.Counter
	leader           prometheus.Gauge
	oldestPending    *prometheus.GaugeVec
	parked           *prometheus.GaugeVec
	deadLetters      *prometheus.GaugeVec
	stuckPartitions  prometheus.Gauge
	expiredLeases    prometheus.Gauge
	longestTx        prometheus.Gauge
	reconcileMissing *prometheus.GaugeVec
	redacted         *prometheus.CounterVec
	held             *prometheus.GaugeVec
	all              []prometheus.Collector
}

// NewMetrics creates the sweeper's metrics, unregistered.
func NewMetrics() *Metrics {
	m := &Metrics{
		jobRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_sweeper_job_runs_total",
			Help: "Sweeper job runs by result: ok, error, or skipped (the previous run was still going, here or in another sweeper)."},
			[]string{"job", "result"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_sweeper_rows_total",
			Help: "Rows touched by sweeper jobs: leases freed, events retried or deleted, records deleted, events found waiting."},
			[]string{"job"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "outboxkit_sweeper_job_duration_seconds",
			Help:    "Duration of sweeper job runs.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)},
			[]string{"job"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outboxkit_sweeper_last_success_timestamp_seconds",
			Help: "Unix time of the last successful run of each job (alert when it stops moving)."},
			[]string{"job"}),
		rescued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outboxkit_sweeper_rescued_total",
			Help: "Pending events found due for longer than the rescue threshold (the relay missed them); each rescue run wakes the relays."}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outboxkit_sweeper_leader",
			Help: "1 while a sweeper of this process is the leader (runs the jobs), else 0."}),
		oldestPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outboxkit_oldest_pending_age_seconds",
			Help: "How long the oldest due pending event of each topic has been waiting for the relay."},
			[]string{"topic"}),
		parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outboxkit_parked_events",
			Help: "Parked outbox events per topic: they need an operator (outboxkit dlq list)."},
			[]string{"topic"}),
		deadLetters: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outboxkit_dead_letters",
			Help: "Open inbox dead letters (parked or blocked) per consumer."},
			[]string{"consumer"}),
		stuckPartitions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outboxkit_stuck_partitions",
			Help: "Relay partitions with an event due for longer than the stuck threshold."}),
		expiredLeases: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outboxkit_expired_leases",
			Help: "Partition leases whose owner stopped renewing them."}),
		longestTx: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outboxkit_longest_transaction_seconds",
			Help: "Age of the oldest open transaction in the outbox database (it keeps vacuum from cleaning the outbox)."}),
		reconcileMissing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outboxkit_reconcile_missing_events",
			Help: "Events published in the last reconcile window that a consumer neither applied nor dead-lettered."},
			[]string{"consumer", "topic"}),
		redacted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outboxkit_sweeper_redacted_rows_total",
			Help: "Rows whose payload the redact job replaced with empty bytes, by table: messages (published events) or dead_letters (closed inbox dead letters)."},
			[]string{"table"}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outboxkit_sweeper_held_rows",
			Help: "Rows the last run of a job (retention, redact) would have deleted or redacted but left whole because a legal hold covers them."},
			[]string{"job"}),
	}
	m.all = []prometheus.Collector{m.jobRuns, m.rows, m.duration, m.lastSuccess, m.rescued, m.leader,
		m.oldestPending, m.parked, m.deadLetters, m.stuckPartitions, m.expiredLeases, m.longestTx, m.reconcileMissing,
		m.redacted, m.held}
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

func (m *Metrics) run(job Job, result string, rows int64, d time.Duration) {
	m.jobRuns.WithLabelValues(string(job), result).Inc()
	if result == resultSkipped {
		return
	}
	m.duration.WithLabelValues(string(job)).Observe(d.Seconds())
	m.rows.WithLabelValues(string(job)).Add(float64(rows))
	if result == resultOK {
		m.lastSuccess.WithLabelValues(string(job)).SetToCurrentTime()
	}
}

// clearHealth drops the leader-only gauges, so that a former leader does
// not export stale values.
func (m *Metrics) clearHealth() {
	m.oldestPending.Reset()
	m.parked.Reset()
	m.deadLetters.Reset()
	m.stuckPartitions.Set(0)
	m.expiredLeases.Set(0)
	m.longestTx.Set(0)
	m.reconcileMissing.Reset()
}
