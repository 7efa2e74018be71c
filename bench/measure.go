package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// measurement is one timed run of one contender.
type measurement struct {
	events  int
	elapsed time.Duration
	cpu     time.Duration // CPU of this process (Go client, and kfake when in-process)
	pgCPU   time.Duration // CPU of the PostgreSQL backends serving the contender
	// brokerCPU is the CPU of the local RabbitMQ node (beam.smp) during a
	// RabbitMQ contender; 0 when there is none on this host.
	brokerCPU time.Duration
	note      string
	detail    string // statement breakdown, when traced
	summary   string // its most expensive steps
}

func (m measurement) rate() float64 {
	if m.elapsed <= 0 {
		return 0
	}
	return float64(m.events) / m.elapsed.Seconds()
}

// cpuClock measures this process's CPU time (user + system).
type cpuClock struct{ start time.Duration }

func startCPU() cpuClock { return cpuClock{processCPU()} }

func (c cpuClock) stop() time.Duration { return processCPU() - c.start }

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU sums the CPU time of the PostgreSQL backends connected to
// database name (PostgreSQL on this host: /proc). Backends are opened for
// each measurement, so this is the server-side cost of the contender.
// Returns 0 when it cannot tell.
func (e *env) backendCPU(ctx context.Context, name string) time.Duration {
	admin, err := e.admin(ctx)
	if err != nil {
		return 0
	}
	defer admin.Close(ctx)
	rows, err := admin.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = $1`, name)
	if err != nil {
		return 0
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, pid := range pids {
		total += procCPU(int(pid))
	}
	return total
}

// rabbitCPU returns the CPU time so far of the local RabbitMQ node (the
// beam.smp process), 0 when none runs on this host. The broker shares the
// machine's cores with PostgreSQL and the contender, so its cost per
// message explains part of every RabbitMQ figure.
func rabbitCPU() time.Duration {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "beam.smp" {
			return procCPU(pid)
		}
	}
	return 0
}

// procCPU is utime+stime of a process from /proc/<pid>/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz
}

// sqlTracer is a pgx QueryTracer that times every statement of the relay's
// pool by kind, and keeps the arguments of the largest claim and mark for
// EXPLAIN ANALYZE.
type sqlTracer struct {
	mu    sync.Mutex
	stats map[string]*stat
	// captured statements for EXPLAIN: text and arguments
	claimSQL, markSQL   string
	claimArgs, markArgs []any
	markRows            int
}

type stat struct {
	calls int
	total time.Duration
}

type traceKey struct{}

type traceStart struct {
	label string
	at    time.Time
}

func newSQLTracer() *sqlTracer { return &sqlTracer{stats: map[string]*stat{}} }

// batchTrace is a batch in flight: the relay sends its marks and the idle
// flag as a batch (SET LOCAL synchronous_commit = off, then the statement).
type batchTrace struct {
	label string
	at    time.Time
}

func (t *sqlTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return context.WithValue(ctx, traceKey{}, &batchTrace{at: time.Now()})
}

func (t *sqlTracer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	b, ok := ctx.Value(traceKey{}).(*batchTrace)
	if !ok || strings.HasPrefix(d.SQL, "SET LOCAL") {
		return
	}
	b.label = statementLabel(d.SQL)
	t.capture(b.label, d.SQL, d.Args)
}

func (t *sqlTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchEndData) {
	if b, ok := ctx.Value(traceKey{}).(*batchTrace); ok && b.label != "" {
		t.record(b.label, time.Since(b.at))
	}
}

// capture keeps the first claim and the largest mark for EXPLAIN.
func (t *sqlTracer) capture(label, sql string, args []any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch label {
	case "claim":
		if t.claimSQL == "" {
			t.claimSQL, t.claimArgs = sql, args
		}
	case "mark published":
		if len(args) >= 4 {
			if ids, ok := args[3].([]int64); ok && len(ids) > t.markRows {
				t.markSQL, t.markArgs, t.markRows = sql, args, len(ids)
			}
		}
	}
}

func (t *sqlTracer) record(label string, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.stats[label]
	if st == nil {
		st = &stat{}
		t.stats[label] = st
	}
	st.calls++
	st.total += d
}

func (t *sqlTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	l := statementLabel(d.SQL)
	t.capture(l, d.SQL, d.Args)
	return context.WithValue(ctx, traceKey{}, traceStart{l, time.Now()})
}

func (t *sqlTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if s, ok := ctx.Value(traceKey{}).(traceStart); ok {
		t.record(s.label, time.Since(s.at))
	}
}

func statementLabel(q string) string {
	switch {
	case strings.Contains(q, "CROSS JOIN LATERAL"):
		return "claim"
	case strings.Contains(q, "SET status = 'published'"):
		return "mark published"
	case strings.Contains(q, "DELETE FROM") && strings.Contains(q, "scheduled"):
		return "promote delayed"
	case strings.Contains(q, "min(due_at)"):
		return "next due (delayed)"
	case strings.Contains(q, "relays (relay_id"):
		return "heartbeat"
	case strings.Contains(q, "SET idle"):
		return "idle flag"
	case strings.Contains(q, "partitions p") && strings.Contains(q, "lease"):
		return "leases"
	}
	q = strings.TrimSpace(q)
	if i := strings.IndexByte(q, '\n'); i > 0 {
		q = q[:i]
	}
	if len(q) > 40 {
		q = q[:40]
	}
	return q
}

// report renders the statement breakdown next to the publisher's.
func (t *sqlTracer) report(pub *pubStats, wall time.Duration, workers int) string {
	return t.reportTop(pub, wall, workers, 0)
}

// reportTop is report limited to the n most expensive steps (0: all).
func (t *sqlTracer) reportTop(pub *pubStats, wall time.Duration, workers, n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	type row struct {
		label string
		calls int
		total time.Duration
	}
	var rows []row
	for l, s := range t.stats {
		rows = append(rows, row{l, s.calls, s.total})
	}
	if pub != nil {
		pub.mu.Lock()
		rows = append(rows, row{fmt.Sprintf("broker publish (%.0f msgs/call)", float64(pub.msgs)/float64(max(pub.calls, 1))), pub.calls, pub.total})
		pub.mu.Unlock()
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].total > rows[j].total })
	if n > 0 && len(rows) > n {
		rows = rows[:n]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "    %-36s %7s %10s %9s %8s\n", "step (client-side time)", "calls", "total", "mean", "of wall")
	for _, r := range rows {
		mean := time.Duration(0)
		if r.calls > 0 {
			mean = r.total / time.Duration(r.calls)
		}
		// Workers run concurrently: share of the wall time of all workers.
		share := 100 * r.total.Seconds() / (wall.Seconds() * float64(workers))
		fmt.Fprintf(&b, "    %-36s %7d %10s %9s %7.1f%%\n", r.label, r.calls, r.total.Round(time.Millisecond),
			mean.Round(10*time.Microsecond), share)
	}
	return b.String()
}

// percentiles of durations (sorted in place): p50, p90, p99, max.
func percentiles(d []time.Duration) (p50, p90, p99, pmax time.Duration) {
	if len(d) == 0 {
		return
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(p float64) time.Duration {
		i := int(float64(len(d))*p+0.999999) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return at(0.50), at(0.90), at(0.99), d[len(d)-1]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
