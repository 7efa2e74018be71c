package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
)

func TestRelayUsageErrors(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	cases := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"DATABASE_URL": db.URL}, []string{"relay"}, "no broker"},
		{map[string]string{"DATABASE_URL": db.URL, "KAFKA_BROKERS": "127.0.0.1:9", "RABBITMQ_URL": "amqp://guest:secret@127.0.0.1:9/"},
			[]string{"relay"}, "--default-broker"},
		{map[string]string{"DATABASE_URL": db.URL, "KAFKA_BROKERS": "127.0.0.1:9"}, []string{"relay", "--route", "payments"}, "topic=kafka"},
		{map[string]string{"DATABASE_URL": db.URL, "KAFKA_BROKERS": "127.0.0.1:9"}, []string{"relay", "--route", "payments=rabbitmq"}, "not configured"},
		{nil, []string{"relay", "--kafka-brokers", "127.0.0.1:9"}, "DATABASE_URL"},
	}
	for _, c := range cases {
		_, errOut, code := run(t, c.env, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: code %d, stderr %q, want 2 and %q", c.args, code, errOut, c.want)
		}
		if strings.Contains(errOut, "secret") {
			t.Errorf("%v: password in the error output: %s", c.args, errOut)
		}
	}
}

// outboxkit relay publishes to Kafka and stops cleanly on cancellation,
// releasing its leases.
func TestRelayCommand(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("cli")
	k.CreateTopic(t, topic, 2)
	ctx := context.Background()
	tx, _ := db.Pool.Begin(ctx)
	for i := 0; i < 20; i++ {
		if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: "k", Type: "t", Payload: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	tx.Commit(ctx)

	runCtx, cancel := context.WithCancel(ctx)
	var out, errOut syncBuffer
	env := &Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string {
		return map[string]string{"DATABASE_URL": db.URL}[k]
	}}
	done := make(chan int, 1)
	go func() {
		done <- MainEnv(runCtx, []string{"relay", "--kafka-brokers", strings.Join(k.Brokers, ","), "--log-format", "json"}, env)
	}()
	testenv.Eventually(t, 30*time.Second, "events published by outboxkit relay", func() bool {
		var n int
		db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.messages WHERE status = 'published'`).Scan(&n)
		return n == 20
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not stop")
	}
	var held int
	db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.partitions WHERE owner IS NOT NULL`).Scan(&held)
	if held != 0 {
		t.Errorf("%d leases held after the relay stopped", held)
	}
	if !strings.Contains(errOut.String(), `"msg":"relay stopped"`) {
		t.Errorf("no structured stop log:\n%s", errOut.String())
	}
	if recs := k.Records(t, topic, 20, 10*time.Second); len(recs) != 20 {
		t.Errorf("%d records in Kafka, want 20", len(recs))
	}
}

// The README's first command: the demo runs the whole flow and reports
// nothing missing and order held.
func TestDemoCommand(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	env := map[string]string{"DATABASE_URL": db.URL}
	if k := testenvKafkaBrokers(); k != "" {
		env["KAFKA_BROKERS"] = k
	}
	out, errOut, code := run(t, env, "demo", "--events", "400", "--keys", "25")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{"consumed           400 events from Kafka (0 duplicates, 0 missing)", "held for every account", "commit to ack"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func testenvKafkaBrokers() string { return os.Getenv("KAFKA_BROKERS") }

// syncBuffer is a bytes.Buffer safe for the command's concurrent logging.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// outboxkit relay --metrics-addr serves /metrics, /healthz and /readyz;
// readiness flips when PostgreSQL becomes unreachable and back when it
// returns.
func TestRelayMetricsAndReadiness(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	u, _ := url.Parse(db.URL)
	px := testenv.Proxy(t, "postgres", u.Host)
	u.Host = px.Listen
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	runCtx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	env := &Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string {
		return map[string]string{"DATABASE_URL": u.String()}[k]
	}}
	done := make(chan int, 1)
	go func() {
		done <- MainEnv(runCtx, []string{"relay", "--kafka-brokers", strings.Join(k.Brokers, ","), "--metrics-addr", addr,
			"--lease-ttl", "2s"}, env)
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("relay did not stop")
		}
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testenv.Eventually(t, 20*time.Second, "ready", func() bool { c, _ := get("/readyz"); return c == 200 })
	if c, _ := get("/healthz"); c != 200 {
		t.Errorf("/healthz %d", c)
	}
	testenv.Eventually(t, 10*time.Second, "leases in /metrics", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, "outboxkit_relay_partition_leases 8") && strings.Contains(body, "outboxkit_outbox_scrape_ok 1")
	})
	px.Stop()
	testenv.Eventually(t, 20*time.Second, "not ready without PostgreSQL", func() bool {
		c, body := get("/readyz")
		return c == 503 && strings.Contains(body, "not ready")
	})
	if c, _ := get("/healthz"); c != 200 {
		t.Errorf("/healthz %d while PostgreSQL is down: the process is alive", c)
	}
	if err := px.Start(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "ready again", func() bool { c, _ := get("/readyz"); return c == 200 })
}
