package sweeper

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// holdsLockSQL checks that this session holds the advisory lock $1 (an
// int8 key shows in pg_locks as classid = high 32 bits, objid = low 32
// bits, objsubid = 1). Behind a pooler that moved the session, it is false.
const holdsLockSQL = `SELECT EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
       AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid)`

// elect takes part in the leader election until ctx ends. Every
// LeaderCheckInterval a follower tries pg_try_advisory_lock on its own
// connection, and the leader checks that its connection still holds the
// lock. A leader whose connection fails stops being leader (its running
// jobs are cancelled) at the next check; PostgreSQL releases the lock when
// the session ends, and a follower takes it at its next try.
func (s *Sweeper) elect(ctx context.Context) {
	var conn *pgx.Conn
	failing := false
	defer func() {
		s.loseLeadership(nil)
		if conn != nil {
			closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn.Close(closeCtx) //nolint:errcheck // ending the session releases the lock
			cancel()
		}
	}()
	tick := time.NewTicker(s.cfg.LeaderCheckInterval)
	defer tick.Stop()
	for {
		var err error
		conn, err = s.electRound(ctx, conn)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			s.log.Warn("sweeper: leader election: database unreachable; retrying every leader_check_interval",
				slog.Any("error", err), slog.Duration("leader_check_interval", s.cfg.LeaderCheckInterval))
		case err == nil && failing:
			failing = false
			s.log.Info("sweeper: leader election: database reachable again")
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// electRound is one try or check. It returns the connection to keep (nil
// after a failure: the next round connects again).
func (s *Sweeper) electRound(ctx context.Context, conn *pgx.Conn) (*pgx.Conn, error) {
	roundCtx, cancel := context.WithTimeout(ctx, max(s.cfg.LeaderCheckInterval, time.Second))
	defer cancel()
	drop := func(err error) (*pgx.Conn, error) {
		if s.IsLeader() {
			s.loseLeadership(err)
		}
		if conn != nil {
			conn.Close(roundCtx) //nolint:errcheck // broken anyway
		}
		return nil, err
	}
	if conn == nil {
		c, err := s.connectLock(roundCtx)
		if err != nil {
			return drop(err)
		}
		conn = c
	}
	if s.IsLeader() {
		var held bool
		if err := conn.QueryRow(roundCtx, holdsLockSQL, s.leaderKey).Scan(&held); err != nil {
			return drop(fmt.Errorf("leader lock connection: %w", err))
		}
		if !held {
			return drop(fmt.Errorf("leader lock is no longer held by this session (a pooler in transaction mode? set LockURL)"))
		}
		return conn, nil
	}
	var got bool
	if err := conn.QueryRow(roundCtx, tryLockSQL, s.leaderKey).Scan(&got); err != nil {
		return drop(fmt.Errorf("leader lock: %w", err))
	}
	if got {
		s.becomeLeader(ctx)
	}
	return conn, nil
}

// connectLock opens the dedicated connection of the leader lock. Its
// server-side TCP keepalives are shortened so that PostgreSQL ends the
// session, and releases the lock, within about three check intervals when
// the sweeper's host disappears without closing the connection.
func (s *Sweeper) connectLock(ctx context.Context) (*pgx.Conn, error) {
	var cfg *pgx.ConnConfig
	if s.cfg.LockURL != "" {
		c, err := pgutil.ParseConnConfig(s.cfg.LockURL)
		if err != nil {
			return nil, err
		}
		cfg = c
	} else {
		cfg = s.pool.Config().ConnConfig.Copy()
	}
	name := "outboxkit-sweeper:" + s.cfg.ID
	if len(name) > 63 {
		name = name[:63]
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = name
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	secs := max(1, int(s.cfg.LeaderCheckInterval.Round(time.Second)/time.Second))
	for _, set := range []string{
		fmt.Sprintf("SET tcp_keepalives_idle = %d", secs),
		fmt.Sprintf("SET tcp_keepalives_interval = %d", max(1, secs/2)),
		"SET tcp_keepalives_count = 3",
	} {
		// Best effort: refused behind some poolers, ignored on Unix sockets.
		conn.Exec(ctx, set) //nolint:errcheck
	}
	return conn, nil
}

func (s *Sweeper) becomeLeader(parent context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leadCtx != nil {
		return
	}
	s.leadCtx, s.leadStop = context.WithCancel(parent)
	s.metrics.leader.Inc()
	s.log.Info("sweeper: became the leader; running the scheduled jobs")
}

// loseLeadership cancels the leader's running jobs. cause nil means the
// sweeper is stopping.
func (s *Sweeper) loseLeadership(cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leadCtx == nil {
		return
	}
	s.leadStop()
	s.leadCtx, s.leadStop = nil, nil
	s.metrics.leader.Dec()
	s.metrics.clearHealth()
	if cause != nil {
		s.log.Warn("sweeper: lost the leadership; running jobs are cancelled and another sweeper takes over",
			slog.Any("error", cause))
	} else {
		s.log.Info("sweeper: leaving the leadership (stopping)")
	}
}
