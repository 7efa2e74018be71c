package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// ErrAlreadyRunning is returned by Run when the Relay is running already.
var ErrAlreadyRunning = errors.New("relay: already running")

// Relay publishes committed outbox events. Create it with New and run it
// with Run; several relays (in one process or many) share the partitions.
type Relay struct {
	pool     *pgxpool.Pool
	cfg      Config
	sql      statements
	log      *slog.Logger
	channel  string
	hostname string

	leases     *leaseSet
	partitions int // total partitions in the schema, read at start
	policies   atomic.Pointer[map[string]topicPolicy]
	wakeups    []chan struct{}
	idle       idleState
	outage     outageState
	running    atomic.Bool
	lastDBOK   atomic.Int64 // unix nanos of the last successful lease round
	tracer     trace.Tracer
	keyAtomic  bool // see KeyAtomic
}

type topicPolicy struct {
	onPark      string // "block" or "skip"
	maxAttempts int    // 0: Config.MaxAttempts
}

// New checks cfg and returns a Relay that uses pool for all its statements
// (and the pool's settings for its LISTEN connection unless
// Config.ListenURL is set). The pool must reach the database directly or
// through a pooler in session mode; see Config.ListenURL for PgBouncer.
func New(pool *pgxpool.Pool, cfg *Config) (*Relay, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	if cfg == nil {
		return nil, fmt.Errorf("%w: config is nil: Publisher is required", ErrInvalidConfig)
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	r := &Relay{
		pool:      pool,
		cfg:       c,
		sql:       renderStatements(pgutil.Ident(c.Schema)),
		log:       c.Logger.With(slog.String("relay_id", c.RelayID)),
		channel:   pgutil.NotifyChannel(c.Schema),
		hostname:  host,
		leases:    newLeaseSet(),
		wakeups:   make([]chan struct{}, c.Workers),
		keyAtomic: keyAtomic(c.Publisher),
		tracer:    c.TracerProvider.Tracer("github.com/outboxkit/outboxkit/relay"),
	}
	for i := range r.wakeups {
		r.wakeups[i] = make(chan struct{}, 1)
	}
	empty := map[string]topicPolicy{}
	r.policies.Store(&empty)
	return r, nil
}

// ID is the relay's id as recorded in leases and published_by.
func (r *Relay) ID() string { return r.cfg.RelayID }

// Run relays events until ctx is cancelled, then stops gracefully: each
// worker finishes the batch in flight (publish and mark, bounded by
// PublishTimeout), the leases are released so other relays take over at
// once, and Run returns nil. It returns an error only when the relay cannot
// start (outboxkit tables missing, Run called twice). A database or broker
// that is down is waited for, not an error.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer r.running.Store(false)

	if err := r.start(ctx); err != nil {
		if ctx.Err() != nil {
			// Stopped during the start, possibly after registering.
			r.unregister(ctx)
			return nil
		}
		return err
	}
	r.log.Info("relay started", slog.String("schema", r.cfg.Schema), slog.Int("partitions", r.partitions),
		slog.Int("workers", r.cfg.Workers), slog.Int("batch_size", r.cfg.BatchSize))

	// The lease loop and the listener outlive the workers: leases keep being
	// renewed while the last batches finish.
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var bg, workers sync.WaitGroup
	bg.Go(func() { r.leaseLoop(bgCtx) })
	if !r.cfg.DisableListen {
		bg.Go(func() { r.listen(bgCtx) })
	}
	for w := range r.cfg.Workers {
		workers.Go(func() { r.work(ctx, w) })
	}
	<-ctx.Done()
	workers.Wait()
	stopBackground()
	bg.Wait()

	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	parts, _ := r.leases.takeAll()
	r.cfg.Metrics.leasesDelta(-len(parts))
	// Every lease under this relay's id, not only the ones it knows of: no
	// worker of it runs any more, and a lease it took without learning so
	// (a lost reply) would otherwise wait lease_ttl for its expiry.
	tag, err := r.pool.Exec(stopCtx, r.sql.releaseAll, r.cfg.RelayID)
	released := tag.RowsAffected()
	if err != nil {
		r.log.Warn("relay stop: releasing leases failed; they expire on their own", slog.Any("error", err))
	}
	r.unregister(stopCtx)
	r.log.Info("relay stopped", slog.Int64("leases_released", released))
	return nil
}

// unregister removes the relay's registration, so that the others count
// one relay less for their fair share at once instead of after lease_ttl.
// It runs even when ctx has ended (the stop), for at most 5 seconds.
func (r *Relay) unregister(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := r.pool.Exec(ctx, r.sql.unregister, r.cfg.RelayID); err != nil {
		r.log.Warn("relay stop: unregister failed", slog.Any("error", err))
	}
}

// start registers the relay, retrying while the database is unreachable.
func (r *Relay) start(ctx context.Context) error {
	delay := 100 * time.Millisecond
	for {
		// Not cancelled mid-statement by the stop (as lease rounds): a
		// cancelled registration could commit after Run's unregister.
		attemptCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := r.pool.QueryRow(attemptCtx, `SELECT count(*) FROM `+pgutil.Ident(r.cfg.Schema, "partitions")).Scan(&r.partitions)
		if err == nil {
			_, err = r.heartbeat(attemptCtx)
		}
		cancel()
		if err == nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			if r.partitions == 0 {
				return fmt.Errorf("relay: %s.partitions is empty: run outboxkit migrate up", r.cfg.Schema)
			}
			return nil
		}
		if hinted := pgutil.MissingSchemaHint(err, r.cfg.Schema); hinted != err {
			return fmt.Errorf("relay: %w", hinted)
		}
		if pgutil.SQLState(err) == pgutil.InsufficientPrivilege {
			return fmt.Errorf("relay: %w (the relay's database role needs the relay grants: see docs/security.md)", err)
		}
		r.log.Warn("relay: database not reachable, retrying", slog.Any("error", err), slog.Duration("retry_in", delay))
		if !sleepCtx(ctx, delay) {
			return ctx.Err()
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func (r *Relay) heartbeat(ctx context.Context) (live int, err error) {
	err = r.pool.QueryRow(ctx, r.sql.heartbeat, r.cfg.RelayID, r.hostname, os.Getpid(), r.cfg.Version,
		r.cfg.LeaseTTL).Scan(&live)
	return live, err
}

// leaseLoop keeps this relay's fair share of partitions: heartbeat, renew,
// give back what is above the share, take what is free up to it.
func (r *Relay) leaseLoop(ctx context.Context) {
	tick := time.NewTicker(r.cfg.LeaseTTL / 3)
	defer tick.Stop()
	for {
		// A lease round is never cancelled mid-statement: a cancelled
		// acquire can commit on the server while the client loses its
		// result, and this relay would stop without knowing it holds those
		// leases. Stopping waits for the round in flight instead.
		roundCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.LeaseTTL)
		err := r.balance(roundCtx)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.log.Warn("relay: lease round failed; leases expire after lease_ttl unless renewed",
				slog.Any("error", err), slog.Duration("lease_ttl", r.cfg.LeaseTTL))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (r *Relay) balance(ctx context.Context) error {
	live, err := r.heartbeat(ctx)
	if err != nil {
		return err
	}
	share := int(math.Ceil(float64(r.partitions) / float64(max(live, 1))))

	parts, tokens := r.leases.snapshot()
	if len(parts) > 0 {
		rows, err := r.pool.Query(ctx, r.sql.renew, r.cfg.RelayID, r.cfg.LeaseTTL, parts, tokens)
		if err != nil {
			return err
		}
		renewed := map[int32]bool{}
		for rows.Next() {
			var p int32
			if err := rows.Scan(&p); err != nil {
				rows.Close()
				return err
			}
			renewed[p] = true
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if lost := r.leases.keepOnly(renewed); len(lost) > 0 {
			r.cfg.Metrics.leasesDelta(-len(lost))
			r.log.Warn("relay: partition leases lost to another relay", slog.Any("partitions", lost))
		}
	}

	if rel, relTokens := r.leases.shrinkTo(share); len(rel) > 0 {
		r.cfg.Metrics.leasesDelta(-len(rel))
		if _, err := r.release(ctx, rel, relTokens); err != nil {
			return err
		}
		r.log.Info("relay: released partitions above fair share", slog.Any("partitions", rel),
			slog.Int("share", share), slog.Int("live_relays", live))
	}

	if need := share - r.leases.count(); need > 0 {
		rows, err := r.pool.Query(ctx, r.sql.acquire, r.cfg.RelayID, r.cfg.LeaseTTL, need)
		if err != nil {
			return err
		}
		var got []int32
		for rows.Next() {
			var p int32
			var token int64
			if err := rows.Scan(&p, &token); err != nil {
				rows.Close()
				return err
			}
			r.leases.add(p, token)
			got = append(got, p)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(got) > 0 {
			r.cfg.Metrics.leasesDelta(len(got))
			r.log.Info("relay: acquired partitions", slog.Any("partitions", got), slog.Int("share", share),
				slog.Int("live_relays", live))
			r.wakeAll() // the new partitions may have a backlog
		}
	}
	if err := r.loadPolicies(ctx); err != nil {
		return err
	}
	r.lastDBOK.Store(time.Now().UnixNano())
	return nil
}

// Ready reports whether the relay is doing its job: running, talking to the
// database (a lease round succeeded within two lease periods) and able to
// reach the broker (not backing off from an outage). For /readyz.
func (r *Relay) Ready() error {
	if !r.running.Load() {
		return errors.New("relay is not running")
	}
	last := time.Unix(0, r.lastDBOK.Load())
	if since := time.Since(last); since > 2*r.cfg.LeaseTTL {
		return fmt.Errorf("no successful database round for %s (PostgreSQL unreachable?)", since.Round(time.Second))
	}
	r.outage.mu.Lock()
	streak := r.outage.streak
	r.outage.mu.Unlock()
	if streak > 0 {
		return fmt.Errorf("broker unavailable for %d consecutive batches", streak)
	}
	return nil
}

// Leases returns the partitions this relay holds now.
func (r *Relay) Leases() []int32 {
	parts, _ := r.leases.snapshot()
	return parts
}

func (r *Relay) release(ctx context.Context, parts []int32, tokens []int64) (int, error) {
	if len(parts) == 0 {
		return 0, nil
	}
	tag, err := r.pool.Exec(ctx, r.sql.release, r.cfg.RelayID, parts, tokens)
	return int(tag.RowsAffected()), err
}

func (r *Relay) loadPolicies(ctx context.Context) error {
	rows, err := r.pool.Query(ctx, r.sql.topicPolicies)
	if err != nil {
		return err
	}
	m := map[string]topicPolicy{}
	var topic string
	var p topicPolicy
	_, err = pgx.ForEachRow(rows, []any{&topic, &p.onPark, &p.maxAttempts}, func() error {
		m[topic] = p
		return nil
	})
	if err != nil {
		return err
	}
	r.policies.Store(&m)
	return nil
}

func (r *Relay) policy(topic string) topicPolicy {
	p := (*r.policies.Load())[topic]
	if p.onPark == "" {
		p.onPark = "block"
	}
	if p.maxAttempts == 0 {
		p.maxAttempts = r.cfg.MaxAttempts
	}
	return p
}

// listen wakes the workers on every notification of the outbox channel. It
// runs on its own connection (LISTEN needs a session) and reconnects with
// backoff; while it is down, polling still finds every event.
func (r *Relay) listen(ctx context.Context) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("relay: LISTEN connection lost; polling every poll_interval until it is back",
			slog.Any("error", err), slog.Duration("poll_interval", r.cfg.PollInterval), slog.Duration("retry_in", delay))
		if !sleepCtx(ctx, delay) {
			return
		}
		delay = min(delay*2, 10*time.Second)
	}
}

func (r *Relay) listenOnce(ctx context.Context) error {
	var cfg *pgx.ConnConfig
	if r.cfg.ListenURL != "" {
		c, err := pgutil.ParseConnConfig(r.cfg.ListenURL)
		if err != nil {
			return err
		}
		cfg = c
	} else {
		cfg = r.pool.Config().ConnConfig.Copy()
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgutil.Ident(r.channel)); err != nil {
		return err
	}
	r.wakeAll() // events committed while we were not listening
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		r.wakeAll()
	}
}

func (r *Relay) wakeAll() {
	for _, ch := range r.wakeups {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// idleState tracks whether any worker sleeps, mirrored in relays.idle:
// producers send NOTIFY only while some live relay is idle, because NOTIFY
// serialises committing transactions on a database-wide lock.
type idleState struct {
	mu       sync.Mutex
	sleeping map[int]bool
	dbIdle   bool
}

// setSleeping records worker w's state and updates relays.idle when it
// changes. A worker that goes to sleep must look for events once more after
// this returns: a commit between its empty claim and the flag sent no NOTIFY.
func (r *Relay) setSleeping(ctx context.Context, w int, sleeping bool) {
	s := &r.idle
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sleeping == nil {
		s.sleeping = map[int]bool{}
	}
	s.sleeping[w] = sleeping
	anySleeping := false
	for _, v := range s.sleeping {
		anySleeping = anySleeping || v
	}
	if anySleeping == s.dbIdle {
		return
	}
	// A hint, written without waiting for the WAL flush: a worker waking
	// up must not wait for a disk round trip before its next claim.
	if err := r.withoutFlush(ctx, func(b *pgx.Batch) { b.Queue(r.sql.setIdle, r.cfg.RelayID, anySleeping) }); err != nil {
		// Producers keep the last flag: at worst they notify while we are
		// busy (slower commits) or not while we sleep (polling finds it).
		r.log.Warn("relay: updating the idle flag failed", slog.Any("error", err))
		return
	}
	s.dbIdle = anySleeping
}

// outageState is the relay-wide backoff while the broker is down for
// everything.
type outageState struct {
	mu     sync.Mutex
	until  time.Time
	streak int
}

func (r *Relay) outageWait() time.Duration {
	r.outage.mu.Lock()
	defer r.outage.mu.Unlock()
	return time.Until(r.outage.until)
}

func (r *Relay) outageFailed(err error) time.Duration {
	r.outage.mu.Lock()
	defer r.outage.mu.Unlock()
	r.outage.streak++
	r.cfg.Metrics.outage()
	d := backoff(100*time.Millisecond, r.cfg.OutageBackoffMax, r.outage.streak)
	r.outage.until = time.Now().Add(d)
	r.log.Warn("relay: broker unavailable for the whole batch; backing off without counting attempts",
		slog.String("error_class", string(failure.ClassOf(err))), slog.Any("error", err),
		slog.Int("consecutive", r.outage.streak), slog.Duration("retry_in", d))
	return d
}

func (r *Relay) outageOver() {
	r.outage.mu.Lock()
	defer r.outage.mu.Unlock()
	if r.outage.streak > 0 {
		r.log.Info("relay: broker reachable again", slog.Int("failed_rounds", r.outage.streak))
	}
	r.outage.streak = 0
	r.outage.until = time.Time{}
}

// backoff is base*2^(n-1) capped at limit, drawn from [d/2, d] so that many
// events failing together do not retry in lockstep.
func backoff(base, limit time.Duration, n int) time.Duration {
	d := limit
	if n < 40 {
		if b := base << (n - 1); b > 0 && b < limit {
			d = b
		}
	}
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func randomSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
