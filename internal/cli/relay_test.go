package cli

import (
	"bytes"
	"context"
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
