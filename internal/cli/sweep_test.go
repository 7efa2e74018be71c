package cli

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/sweeper"
)

// sweep runs runSweep (the command's function, registered as "sweep") and
// returns stdout, stderr and its error.
func sweep(t *testing.T, ctx context.Context, environ map[string]string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut syncBuffer
	err := runSweep(ctx, &Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return environ[k] }}, args)
	return out.String(), errOut.String(), err
}

func TestSweepOnce(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx := context.Background()
	env := map[string]string{"DATABASE_URL": db.URL}
	var ids [3]string
	for i := range ids {
		id, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "payments", Key: "p-1", Type: "t", Payload: []byte("{}")})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id.String()
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.messages SET status = 'published', created_at = now() - interval '10 days',
		published_at = now() - interval '9 days' WHERE event_id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.messages SET status = 'parked', parked_at = now(), last_error_class = 'permanent' WHERE event_id = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}

	out, errOut, err := sweep(t, ctx, env, "--once", "retention", "--published-retention", "7d", "--delete-batch", "10")
	if err != nil || !strings.Contains(out, "deleted 1 published events") || !strings.Contains(errOut, "job=retention") {
		t.Fatalf("retention: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	out, _, err = sweep(t, ctx, env, "--once", "alarms")
	if err != nil || !strings.Contains(out, "ALARM topic payments: 1 parked events") {
		t.Fatalf("alarms: %v\n%s", err, out)
	}
	out, _, err = sweep(t, ctx, env, "--once", "alarms", "--json", "--parked-warn", "5")
	if err != nil {
		t.Fatal(err)
	}
	var res sweeper.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Job != sweeper.JobAlarms || res.Alarms == nil ||
		len(res.Alarms.Alarms) != 0 || len(res.Alarms.Topics) != 1 || res.Alarms.Topics[0].Parked != 1 {
		t.Fatalf("alarms --json: %v\n%s", err, out)
	}
	for _, j := range sweeper.Jobs() {
		if _, errOut, err := sweep(t, ctx, env, "--once", string(j), "--redact-after", "30d"); err != nil {
			t.Errorf("--once %s: %v\n%s", j, err, errOut)
		}
	}

	// Redaction is opted into, by flag or environment.
	if _, _, err := sweep(t, ctx, env, "--once", "redact"); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "pass --redact-after") {
		t.Errorf("--once redact without --redact-after: %v", err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.messages SET status = 'published', created_at = now() - interval '3 days',
		published_at = now() - interval '2 days', headers = '{"customer-email": "a@b.c", "tenant": "t1"}' WHERE event_id = $1`, ids[2]); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = sweep(t, ctx, map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_REDACT_AFTER": "1d"},
		"--once", "redact", "--redact-headers", "Customer-Email, customer-name")
	if err != nil || !strings.Contains(out, "redacted 1 published events and 0 dead letters") || !strings.Contains(out, "1 headers removed") ||
		!strings.Contains(errOut, "messages_redacted=1") {
		t.Fatalf("redact: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	var payload, headers string
	if err := db.Pool.QueryRow(ctx, `SELECT encode(payload, 'escape'), headers::text FROM outbox.messages WHERE event_id = $1`, ids[2]).
		Scan(&payload, &headers); err != nil || payload != "" || headers != `{"tenant": "t1"}` {
		t.Fatalf("after redact: payload %q headers %s (%v)", payload, headers, err)
	}
}

func TestSweepUsageErrors(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://app:s3cret@127.0.0.1:1/app?connect_timeout=1"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--once", "vacuum"}, "unknown job"},
		{[]string{"--json"}, "--json goes with --once"},
		{[]string{"--retention-schedule", "every tuesday"}, "schedule of retention"},
		{[]string{"--published-retention", "7"}, "invalid duration"},
		{[]string{"--published-retention", "30d"}, "applied twice"},
		{[]string{"--consumer", "billing"}, "name=topic1,topic2"},
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"--redact-after", "10m"}, "RedactAfter 10m0s: use at least 1h"},
		{[]string{"--redact-after", "30"}, "invalid duration"},
	} {
		_, _, err := sweep(t, context.Background(), env, c.args...)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: want a usage error mentioning %q, got %v", c.args, c.want, err)
		}
	}
	if _, _, err := sweep(t, context.Background(), nil, "--once", "alarms"); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Errorf("no database: %v", err)
	}
	_, _, err := sweep(t, context.Background(), env, "--once", "alarms")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("unreachable database: %v", err)
	}
}

func TestParseDays(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90s": 90 * time.Second, "0d": 0} {
		if got, err := parseDays(in); err != nil || got != want {
			t.Errorf("%s: %v %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"7", "d", "-1d", "7days", ""} {
		if _, err := parseDays(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	d := 14 * 24 * time.Hour
	if s := (daysDuration{&d}).String(); s != "14d" {
		t.Errorf("String %s", s)
	}
}

// outboxkit sweep runs as a worker, becomes the leader, runs its jobs on
// schedule and stops cleanly on cancellation (SIGTERM in main).
func TestSweepDaemonStopsOnCancel(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	env := &Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return map[string]string{"DATABASE_URL": db.URL}[k] }}
	done := make(chan error, 1)
	go func() {
		done <- runSweep(ctx, env, []string{"--alarms-schedule", "* * * * * *", "--leader-check-interval", "200ms", "--log-format", "json"})
	}()
	testenv.Eventually(t, 20*time.Second, "the alarms job running on schedule", func() bool {
		return strings.Contains(errOut.String(), `"job":"alarms"`) && strings.Contains(errOut.String(), "became the leader")
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sweep: %v\n%s", err, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sweep did not stop")
	}
	if !strings.Contains(errOut.String(), "sweeper exited") {
		t.Errorf("no exit line:\n%s", errOut.String())
	}
}
