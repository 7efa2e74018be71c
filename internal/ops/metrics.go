package ops

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the state of the outbox tables at scrape time: events
// per topic and status (pending, blocked, parked, scheduled), the oldest
// pending event's age per topic, and held keys per topic. Each scrape runs
// one query on the backlog view (partial indexes) and one on lanes,
// bounded by a timeout.
type Collector struct {
	store   *Store
	timeout time.Duration
	events  *prometheus.Desc
	oldest  *prometheus.Desc
	held    *prometheus.Desc
	up      *prometheus.Desc
}

// NewCollector returns a Collector on s.
func NewCollector(s *Store) *Collector {
	return &Collector{
		store:   s,
		timeout: 5 * time.Second,
		events:  prometheus.NewDesc("outboxkit_outbox_events", "Events in the outbox table by topic and status (published rows are not counted).", []string{"topic", "status"}, nil),
		oldest:  prometheus.NewDesc("outboxkit_outbox_oldest_pending_age_seconds", "Age of the oldest pending event per topic.", []string{"topic"}, nil),
		held:    prometheus.NewDesc("outboxkit_outbox_held_keys", "Keys held back behind a failed event (retrying or blocked) per topic.", []string{"topic"}, nil),
		up:      prometheus.NewDesc("outboxkit_outbox_scrape_ok", "1 if the last scrape of the outbox tables succeeded.", nil, nil),
	}
}

func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.oldest
	ch <- c.held
	ch <- c.up
}

func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	ok := 1.0
	st, err := c.store.Stats(ctx)
	if err != nil {
		ok = 0
	} else {
		for _, b := range st.Backlog {
			ch <- prometheus.MustNewConstMetric(c.events, prometheus.GaugeValue, float64(b.Events), b.Topic, b.Status)
			if b.Status == "pending" {
				ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, b.OldestSecs, b.Topic)
			}
		}
	}
	lanes, err := c.store.Lanes(ctx, "", "", 100000)
	if err != nil {
		ok = 0
	} else {
		per := map[string]int{}
		for _, l := range lanes {
			per[l.Topic]++
		}
		for topic, n := range per {
			ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(n), topic)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, ok)
}
