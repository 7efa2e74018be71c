package sweeper

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

func TestNewValidatesConfig(t *testing.T) {
	db := testDB(t)
	if _, err := New(nil, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("nil pool: %v", err)
	}
	s, err := New(db.Pool, nil)
	if err != nil {
		t.Fatalf("nil config must mean defaults: %v", err)
	}
	if s.cfg.PublishedRetention != 7*24*time.Hour || s.cfg.ProcessedRetention != 14*24*time.Hour ||
		s.cfg.Schedules[JobRetention] != DefaultSchedule(JobRetention) {
		t.Fatalf("defaults not applied: %+v", s.cfg)
	}
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{OutboxSchema: "Bad-Schema"}, "OutboxSchema"},
		{Config{Schedules: map[Job]string{JobRetention: "every tuesday"}}, "schedule of retention"},
		{Config{Schedules: map[Job]string{"vacuum": "@hourly"}}, "unknown job"},
		{Config{PublishedRetention: 7}, "PublishedRetention"},
		{Config{PublishedRetention: 30 * 24 * time.Hour}, "applied twice"},
		{Config{DeleteBatchSize: 1_000_000}, "DeleteBatchSize"},
		{Config{ReconcileWindow: 8 * 24 * time.Hour}, "ReconcileWindow"},
		{Config{RescueAfter: -time.Second}, "RescueAfter"},
		{Config{Consumers: map[string][]string{"billing": nil}}, "Consumers"},
	} {
		if _, err := New(db.Pool, &c.cfg); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: want ErrInvalidConfig mentioning %q, got %v", c.cfg, c.want, err)
		}
	}
	// Five fields, six fields and descriptors are all accepted.
	if _, err := New(db.Pool, &Config{Schedules: map[Job]string{JobRetention: "0 3 * * *", JobAlarms: "*/10 * * * * *",
		JobReconcile: "@hourly", JobRetry: Off}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseJob("Retention"); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseJob("vacuum"); !errors.Is(err, ErrUnknownJob) {
		t.Fatalf("ParseJob(vacuum): %v", err)
	}
}

func TestRunWithoutSchemaSaysWhatToDo(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	s := newSweeper(t, db.Pool, Config{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), "outboxkit migrate up") {
		t.Fatalf("want a hint to run migrate up, got %v", err)
	}
	if _, err := s.RunJob(ctx, JobAlarms); err == nil || !strings.Contains(err.Error(), "migrate up") {
		t.Fatalf("RunJob without tables: want a hint, got %v", err)
	}
}

// leaderPID is the backend of s's leader-lock connection.
func leaderPID(t *testing.T, pool *pgxpool.Pool, s *Sweeper) int {
	t.Helper()
	var pid int
	err := pool.QueryRow(context.Background(), `SELECT pid FROM pg_stat_activity WHERE application_name = $1`,
		"outboxkit-sweeper:"+s.ID()).Scan(&pid)
	if err != nil {
		t.Fatalf("leader connection of %s: %v", s.ID(), err)
	}
	return pid
}

// Two sweepers on one database: exactly one is the leader and only it runs
// the scheduled jobs. When the leader's connection dies, the other takes
// over within one LeaderCheckInterval, and the old leader stops running jobs.
func TestOneLeaderAndTakeover(t *testing.T) {
	db := testDB(t)
	const interval = 250 * time.Millisecond
	cfg := Config{LeaderCheckInterval: interval, Schedules: map[Job]string{JobAlarms: "* * * * * *"}}
	a := newSweeper(t, newPool(t, db.URL, 4), withID(cfg, "a"), nil)
	b := newSweeper(t, newPool(t, db.URL, 4), withID(cfg, "b"), nil)
	start(t, a)
	start(t, b)
	testenv.Eventually(t, 10*time.Second, "a leader", func() bool { return a.IsLeader() || b.IsLeader() })
	leader, follower := a, b
	if b.IsLeader() {
		leader, follower = b, a
	}
	// Several election rounds: still exactly one leader.
	time.Sleep(4 * interval)
	if !leader.IsLeader() || follower.IsLeader() {
		t.Fatalf("leadership moved without a failure: leader %v, follower %v", leader.IsLeader(), follower.IsLeader())
	}
	testenv.Eventually(t, 10*time.Second, "the leader running alarms", func() bool { return runs(t, leader, JobAlarms, resultOK) >= 2 })
	if n := runs(t, follower, JobAlarms, resultOK) + runs(t, follower, JobAlarms, resultError); n != 0 {
		t.Fatalf("the follower ran alarms %v times", n)
	}
	if metric(t, leader.Metrics(), "outboxkit_sweeper_leader", nil) != 1 || metric(t, follower.Metrics(), "outboxkit_sweeper_leader", nil) != 0 {
		t.Fatal("outboxkit_sweeper_leader gauge wrong")
	}

	// The leader's session dies (as when its process or host does).
	pid := leaderPID(t, db.Pool, leader)
	killed := time.Now()
	var terminated bool
	if err := db.Pool.QueryRow(context.Background(), `SELECT pg_terminate_backend($1)`, pid).Scan(&terminated); err != nil || !terminated {
		t.Fatal("could not terminate the leader's backend")
	}
	testenv.Eventually(t, 10*time.Second, "the follower taking over", follower.IsLeader)
	takeover := time.Since(killed)
	testenv.Eventually(t, 10*time.Second, "the old leader stepping down", func() bool { return !leader.IsLeader() })
	t.Logf("takeover %s after the leader's backend was terminated (leader check interval %s)", takeover.Round(time.Millisecond), interval)
	if takeover > interval+500*time.Millisecond {
		t.Errorf("takeover took %s, want within one interval (%s) plus slack", takeover, interval)
	}
	before := runs(t, leader, JobAlarms, resultOK)
	testenv.Eventually(t, 10*time.Second, "the new leader running alarms", func() bool { return runs(t, follower, JobAlarms, resultOK) >= 2 })
	time.Sleep(1500 * time.Millisecond)
	if after := runs(t, leader, JobAlarms, resultOK); after != before {
		t.Errorf("the old leader kept running alarms: %v -> %v", before, after)
	}
	if leader.IsLeader() {
		t.Error("two leaders")
	}
}

func withID(c Config, id string) Config {
	c.ID = id
	return c
}

// A job never runs twice at once: not while another sweeper runs it (the
// job's advisory lock), not while this process still runs it.
func TestJobNeverRunsTwiceAtOnce(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	logs := &logBuffer{}
	s := newSweeper(t, db.Pool, Config{}, logs)

	// Another sweeper holds the retention lock.
	other, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	if _, err := other.Exec(ctx, tryLockSQL, s.jobKeys[JobRetention]); err != nil {
		t.Fatal(err)
	}
	res, err := s.RunJob(ctx, JobRetention)
	if !errors.Is(err, ErrJobBusy) || !strings.Contains(res.Skipped, "another sweeper") {
		t.Fatalf("want ErrJobBusy (another sweeper), got %v %+v", err, res)
	}
	if _, err := s.RunJob(ctx, JobAlarms); err != nil {
		t.Fatalf("other jobs are not blocked: %v", err)
	}
	other.Exec(ctx, unlockSQL, s.jobKeys[JobRetention]) //nolint:errcheck
	if _, err := s.RunJob(ctx, JobRetention); err != nil {
		t.Fatalf("after the other sweeper finished: %v", err)
	}

	// In this process: a slow run is not stacked by the schedule.
	release := make(chan struct{})
	var inside, maxInside atomic.Int32
	s.jobs[JobRetry] = func(ctx context.Context, conn *pgxpool.Conn, res *Result) error {
		n := inside.Add(1)
		defer inside.Add(-1)
		for {
			m := maxInside.Load()
			if n <= m || maxInside.CompareAndSwap(m, n) {
				break
			}
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}
	s.cfg.Schedules[JobRetry] = "* * * * * *"
	start(t, s)
	testenv.Eventually(t, 10*time.Second, "retry runs skipped while the first one runs", func() bool {
		return runs(t, s, JobRetry, resultSkipped) >= 2
	})
	if _, err := s.RunJob(ctx, JobRetry); !errors.Is(err, ErrJobBusy) {
		t.Fatalf("RunJob during a scheduled run: %v", err)
	}
	close(release)
	testenv.Eventually(t, 10*time.Second, "retry finishing", func() bool { return runs(t, s, JobRetry, resultOK) >= 1 })
	if maxInside.Load() != 1 {
		t.Fatalf("retry ran %d times at once", maxInside.Load())
	}
	if logs.count("job skipped: the previous run is still going") < 2 {
		t.Errorf("skips not logged:\n%s", logs.String())
	}
}

// A job that fails (its table is gone) or panics is logged and runs again
// at its next schedule; the other jobs keep running and Run does not stop.
func TestFailingJobDoesNotStopTheSweeper(t *testing.T) {
	db := testDB(t)
	execSQL(t, db.Pool, `DROP TABLE outbox.topic_policies`)
	logs := &logBuffer{}
	s := newSweeper(t, db.Pool, Config{Schedules: map[Job]string{
		JobRetry: "* * * * * *", JobAlarms: "* * * * * *", JobRescue: "* * * * * *"}}, logs)
	s.jobs[JobRescue] = func(context.Context, *pgxpool.Conn, *Result) error { panic("boom") }
	stop := start(t, s)
	testenv.Eventually(t, 20*time.Second, "failing jobs retried and alarms running", func() bool {
		return runs(t, s, JobRetry, resultError) >= 2 && runs(t, s, JobRescue, resultError) >= 2 &&
			runs(t, s, JobAlarms, resultOK) >= 2
	})
	out := logs.String()
	for _, want := range []string{"job failed; it runs again at its next schedule", "topic_policies", "job panicked", "panic: boom", "job=alarms"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	// The failed jobs gave their connections back to the pool without
	// their locks. pg_locks shows the whole cluster: the other tests'
	// sweepers, in their own databases, use the same keys.
	stop()
	for _, j := range []Job{JobRetry, JobRescue} {
		if n := queryInt(t, db.Pool, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND ((classid::bigint << 32) | objid::bigint) = $1`, s.jobKeys[j]); n != 0 {
			t.Errorf("the %s job lock is still held after failures (%d)", j, n)
		}
	}
}

// Run twice is refused; a stopped sweeper leaves no goroutine (goleak) and
// releases the leader lock at once.
func TestRunTwiceAndStop(t *testing.T) {
	db := testDB(t)
	s := newSweeper(t, db.Pool, Config{}, nil)
	stop := start(t, s)
	testenv.Eventually(t, 10*time.Second, "leader", s.IsLeader)
	if err := s.Run(context.Background()); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Run: %v", err)
	}
	stop()
	if s.IsLeader() {
		t.Fatal("still leader after stop")
	}
	other := newSweeper(t, db.Pool, Config{}, nil)
	start(t, other)
	testenv.Eventually(t, 5*time.Second, "a new leader at once", other.IsLeader)
}
