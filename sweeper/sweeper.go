package sweeper

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/robfig/cron/v3"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Sweeper runs the recovery, retention, reconcile and alarm jobs on a
// schedule, on one leader among all sweepers of an outbox schema. Create it
// with New, run it with Run; RunJob runs one job at once.
type Sweeper struct {
	pool    *pgxpool.Pool
	cfg     Config
	sql     statements
	log     *slog.Logger
	metrics *Metrics
	channel string

	leaderKey int64
	jobKeys   map[Job]int64
	jobs      map[Job]jobFunc
	busy      map[Job]*atomic.Bool
	running   atomic.Bool

	mu       sync.Mutex
	leadCtx  context.Context // non-nil while this sweeper is the leader
	leadStop context.CancelFunc
}

// jobFunc does one run of a job on conn (holding the job's lock) and fills
// res. It may use other pool connections.
type jobFunc func(ctx context.Context, conn *pgxpool.Conn, res *Result) error

// Run results, the result label of outboxkit_sweeper_job_runs_total.
const (
	resultOK      = "ok"
	resultError   = "error"
	resultSkipped = "skipped"
)

// New checks cfg (nil means all defaults) and returns a Sweeper that runs
// its jobs on pool. The pool needs one connection per job running at once
// (at most seven); the leader lock uses a dedicated connection of its own.
func New(pool *pgxpool.Pool, cfg *Config) (*Sweeper, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	s := &Sweeper{
		pool:      pool,
		cfg:       c,
		sql:       renderStatements(pgutil.Ident(c.OutboxSchema), pgutil.Ident(c.InboxSchema)),
		log:       c.Logger.With(slog.String("sweeper_id", c.ID)),
		metrics:   c.Metrics,
		channel:   pgutil.NotifyChannel(c.OutboxSchema),
		leaderKey: lockKey("leader", c.OutboxSchema),
		jobKeys:   map[Job]int64{},
		busy:      map[Job]*atomic.Bool{},
	}
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}
	s.jobs = map[Job]jobFunc{
		JobReclaim:   s.reclaim,
		JobRescue:    s.rescue,
		JobRetry:     s.retry,
		JobRetention: s.retention,
		JobReconcile: s.reconcile,
		JobAlarms:    s.alarms,
		JobRedact:    s.redact,
	}
	for _, j := range Jobs() {
		s.jobKeys[j] = lockKey("job:"+string(j), c.OutboxSchema)
		s.busy[j] = &atomic.Bool{}
	}
	return s, nil
}

// lockKey derives an advisory lock key from the outbox schema, so that
// sweepers of different schemas in one database never exclude each other.
// FNV-1a, 64 bits, of "outboxkit:sweeper:<what>:<schema>".
func lockKey(what, schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("outboxkit:sweeper:" + what + ":" + schema))
	return int64(h.Sum64())
}

// ID is the sweeper's id, as in its logs and its lock connection's
// application_name.
func (s *Sweeper) ID() string { return s.cfg.ID }

// Metrics returns the sweeper's metrics, to register on a registry.
func (s *Sweeper) Metrics() *Metrics { return s.metrics }

// IsLeader reports whether this sweeper holds the leader lock right now.
func (s *Sweeper) IsLeader() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leadCtx != nil
}

// Run schedules the jobs and takes part in the leader election until ctx
// is cancelled. Only the leader runs scheduled jobs; the others wait to take
// over. On cancellation the running jobs are cancelled (every change they
// make is a short transaction of its own, so nothing is left half done; what
// was done stays done), and Run returns nil
// after they and every goroutine of the sweeper have stopped. It returns an
// error only when it cannot start: the outboxkit tables are missing, or Run
// was called twice. A database that is down is waited for.
func (s *Sweeper) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer s.running.Store(false)
	if err := s.start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	c := cron.New(cron.WithParser(specParser), cron.WithLocation(s.cfg.Location), cron.WithLogger(cronLogger{s.log}))
	attrs := []any{slog.String("outbox_schema", s.cfg.OutboxSchema), slog.String("inbox_schema", s.cfg.InboxSchema)}
	for _, j := range Jobs() {
		spec := s.cfg.Schedules[j]
		if j == JobRedact && s.cfg.RedactAfter == 0 {
			// Redaction destroys data: it runs only when asked for.
			attrs = append(attrs, slog.String(string(j), Off+" (RedactAfter not set)"))
			continue
		}
		attrs = append(attrs, slog.String(string(j), spec))
		if spec == Off {
			continue
		}
		if _, err := c.AddFunc(spec, func() { s.scheduled(j) }); err != nil {
			return fmt.Errorf("%w: schedule of %s: %v", ErrInvalidConfig, j, err)
		}
	}
	c.Start()
	s.log.Info("sweeper started", attrs...)

	s.elect(ctx) // until ctx ends; then no job is started any more
	<-c.Stop().Done()
	s.log.Info("sweeper stopped")
	return nil
}

// start checks that the outbox tables exist, waiting while the database is
// unreachable.
func (s *Sweeper) start(ctx context.Context) error {
	delay := 100 * time.Millisecond
	for {
		var exists bool
		err := s.pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`,
			pgutil.Ident(s.cfg.OutboxSchema, "messages")).Scan(&exists)
		if err == nil {
			if !exists {
				return fmt.Errorf("sweeper: table %s.messages does not exist: run outboxkit migrate up (or set the outbox schema)", s.cfg.OutboxSchema)
			}
			return nil
		}
		if pgutil.SQLState(err) == pgutil.InsufficientPrivilege {
			return fmt.Errorf("sweeper: %w (the sweeper's database role needs the sweeper grants: outboxkit migrate --roles)", err)
		}
		s.log.Warn("sweeper: database not reachable, retrying", slog.Any("error", err), slog.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// scheduled is what cron calls: run the job if this sweeper is the leader.
func (s *Sweeper) scheduled(job Job) {
	s.mu.Lock()
	ctx := s.leadCtx
	s.mu.Unlock()
	if ctx == nil {
		return
	}
	res, err := s.run(ctx, job)
	switch {
	case errors.Is(err, ErrJobBusy):
		s.log.Info("sweeper: job skipped: "+res.Skipped, slog.String("job", string(job)))
	case err != nil && ctx.Err() != nil:
		s.log.Info("sweeper: job cancelled (leadership lost or stopping)", slog.String("job", string(job)),
			slog.Duration("duration", res.Duration), slog.Int64("rows", res.Rows))
	case err != nil:
		s.log.Error("sweeper: job failed; it runs again at its next schedule", slog.String("job", string(job)),
			slog.Int64("rows", res.Rows), slog.Duration("duration", res.Duration), slog.Any("error", err))
	default:
		s.logDone(res, "schedule")
	}
}

// RunJob runs one job now, in the calling goroutine, whether or not this
// sweeper is the leader (for tests, the CLI's --once and operators). It
// returns ErrJobBusy when the job is running already, here or in another
// sweeper on the same database: a job never runs twice at once. A
// successful run logs its summary line; a failed one returns the error.
func (s *Sweeper) RunJob(ctx context.Context, job Job) (Result, error) {
	if _, err := ParseJob(string(job)); err != nil {
		return Result{Job: job}, err
	}
	if job == JobRedact && s.cfg.RedactAfter == 0 {
		return Result{Job: job}, fmt.Errorf("%w: set RedactAfter (outboxkit sweep --redact-after 30d) to redact payloads older than that", ErrRedactionOff)
	}
	res, err := s.run(ctx, job)
	if err == nil {
		s.logDone(res, "manual")
	}
	return res, err
}

func (s *Sweeper) logDone(res Result, trigger string) {
	attrs := []any{slog.String("job", string(res.Job)), slog.Int64("rows", res.Rows),
		slog.Duration("duration", res.Duration), slog.String("trigger", trigger)}
	attrs = append(attrs, res.attrs()...)
	s.log.Info("sweeper: job done", attrs...)
}

// run does one run of job: at most one at a time per process (busy) and
// per database (the job's advisory lock, held on the connection the job
// runs on), bounded by JobTimeout, panics recovered.
func (s *Sweeper) run(ctx context.Context, job Job) (res Result, err error) {
	res = Result{Job: job, Started: time.Now()}
	busy := s.busy[job]
	if !busy.CompareAndSwap(false, true) {
		res.Skipped = "the previous run is still going"
		s.metrics.run(job, resultSkipped, 0, 0)
		return res, fmt.Errorf("%w: %s: %s", ErrJobBusy, job, res.Skipped)
	}
	defer busy.Store(false)
	defer func() {
		res.Duration = time.Since(res.Started)
		switch {
		case errors.Is(err, ErrJobBusy):
			s.metrics.run(job, resultSkipped, 0, 0)
		case err != nil:
			s.metrics.run(job, resultError, res.Rows, res.Duration)
		default:
			s.metrics.run(job, resultOK, res.Rows, res.Duration)
		}
	}()

	ctx, cancel := context.WithTimeout(ctx, s.cfg.JobTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("sweeper %s: %w", job, err)
	}
	var locked bool
	if err := conn.QueryRow(ctx, tryLockSQL, s.jobKeys[job]).Scan(&locked); err != nil {
		conn.Release()
		return res, fmt.Errorf("sweeper %s: job lock: %w", job, err)
	}
	if !locked {
		conn.Release()
		res.Skipped = "it is running in another sweeper"
		return res, fmt.Errorf("%w: %s: %s", ErrJobBusy, job, res.Skipped)
	}
	defer s.releaseJobConn(conn, job)

	if err := s.safely(ctx, job, conn, &res); err != nil {
		return res, fmt.Errorf("sweeper %s: %w", job, pgutil.MissingSchemaHint(err, s.cfg.OutboxSchema))
	}
	return res, nil
}

// safely runs the job's function, turning a panic into an error.
func (s *Sweeper) safely(ctx context.Context, job Job, conn *pgxpool.Conn, res *Result) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("sweeper: job panicked", slog.String("job", string(job)), slog.Any("panic", r),
				slog.String("stack", string(debug.Stack())))
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return s.jobs[job](ctx, conn, res)
}

// releaseJobConn unlocks the job lock and gives the connection back, or
// closes it when it cannot be left clean (the lock must never stay with a
// pooled connection).
func (s *Sweeper) releaseJobConn(conn *pgxpool.Conn, job Job) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var unlocked bool
	err := conn.QueryRow(ctx, unlockSQL, s.jobKeys[job]).Scan(&unlocked)
	if err != nil || !unlocked || conn.Conn().PgConn().TxStatus() != 'I' {
		c := conn.Hijack()
		c.Close(ctx) //nolint:errcheck // closing ends the session and its locks
		return
	}
	conn.Release()
}

// cronLogger sends robfig/cron's own messages (only errors: its Info is
// per-tick noise) to slog.
type cronLogger struct{ log *slog.Logger }

func (l cronLogger) Info(string, ...any) {}

func (l cronLogger) Error(err error, msg string, kv ...any) {
	l.log.Error("sweeper: cron: "+msg, append([]any{slog.Any("error", err)}, kv...)...)
}
