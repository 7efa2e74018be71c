package dashboard

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/outboxkit/outboxkit/internal/ops"
)

// Defaults of SamplerConfig.
const (
	SampleEveryDefault = 15 * time.Second
	SamplesDefault     = 240 // an hour at the default interval
)

// SamplerConfig configures a Sampler. Zero values take the defaults.
type SamplerConfig struct {
	// Every is the sampling interval (default 15s). Each sample runs
	// ops.Store.Stats once.
	Every time.Duration
	// Keep is how many samples the ring buffer holds (default 240); older
	// ones are overwritten.
	Keep int
	// Logger receives sampling errors (default slog.Default()).
	Logger *slog.Logger
}

// Sample is the state of the outbox at one moment, for the overview chart.
type Sample struct {
	At        time.Time
	Pending   int64 // pending + blocked: waiting to be published
	Parked    int64
	PerMinute int64 // published in the minute before At
}

// Sampler keeps the recent history of the backlog and the publish rate in a
// bounded ring buffer in memory. Run samples until its context ends; the
// dashboard reads the buffer. The history starts when the sampler starts
// and is lost when it stops.
type Sampler struct {
	store  *ops.Store
	every  time.Duration
	logger *slog.Logger

	mu   sync.Mutex
	ring []Sample
	next int
	full bool
}

// NewSampler returns a Sampler on store.
func NewSampler(store *ops.Store, cfg SamplerConfig) (*Sampler, error) {
	if store == nil {
		return nil, errors.New("dashboard: NewSampler needs a store")
	}
	if cfg.Every == 0 {
		cfg.Every = SampleEveryDefault
	}
	if cfg.Keep == 0 {
		cfg.Keep = SamplesDefault
	}
	if cfg.Every < 100*time.Millisecond {
		return nil, errors.New("dashboard: sample interval must be at least 100ms")
	}
	if cfg.Keep < 2 || cfg.Keep > 100000 {
		return nil, errors.New("dashboard: keep 2..100000 samples")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Sampler{store: store, every: cfg.Every, logger: cfg.Logger, ring: make([]Sample, cfg.Keep)}, nil
}

// Run takes a sample now and then every interval until ctx ends; it returns
// nil when ctx ends. A failed sample is logged and skipped.
func (s *Sampler) Run(ctx context.Context) error {
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		if err := s.SampleNow(ctx); err != nil && ctx.Err() == nil {
			s.logger.Warn("dashboard: sample failed", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// SampleNow takes one sample.
func (s *Sampler) SampleNow(ctx context.Context) error {
	st, err := s.store.Stats(ctx)
	if err != nil {
		return err
	}
	s.Add(sampleOf(st))
	return nil
}

func sampleOf(st *ops.Stats) Sample {
	x := Sample{At: st.At, PerMinute: st.PerMinute}
	for _, b := range st.Backlog {
		switch b.Status {
		case "pending", "blocked":
			x.Pending += b.Events
		case "parked":
			x.Parked += b.Events
		}
	}
	return x
}

// Add appends a sample, overwriting the oldest when the buffer is full.
func (s *Sampler) Add(x Sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = x
	s.next = (s.next + 1) % len(s.ring)
	if s.next == 0 {
		s.full = true
	}
}

// Samples returns the buffered samples, oldest first.
func (s *Sampler) Samples() []Sample {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.full {
		return append([]Sample(nil), s.ring[:s.next]...)
	}
	out := make([]Sample, 0, len(s.ring))
	out = append(out, s.ring[s.next:]...)
	return append(out, s.ring[:s.next]...)
}

// Every is the sampling interval.
func (s *Sampler) Every() time.Duration { return s.every }
