package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
)

// runRelayUntil runs "outboxkit relay args..." until cond holds, then stops
// it and returns its output.
func runRelayUntil(t *testing.T, environ map[string]string, args []string, what string, cond func() bool) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	env := &Env{Stdout: &out, Stderr: &out, Getenv: func(k string) string { return environ[k] }}
	done := make(chan int, 1)
	go func() { done <- MainEnv(ctx, append([]string{"relay"}, args...), env) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("relay did not stop")
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; relay output:\n%s", what, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return out.String()
}

func enqueueOne(t *testing.T, db *testenv.DB, topic string) {
	t.Helper()
	ctx := context.Background()
	tx, _ := db.Pool.Begin(ctx)
	if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: "k", Type: "t", Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	tx.Commit(ctx)
}

func published(db *testenv.DB) func() bool {
	return func() bool {
		var n int
		db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox.messages WHERE status = 'published'`).Scan(&n)
		return n == 1
	}
}

// Kafka over TLS with a private CA and SASL/SCRAM, the password read from a
// file: the event is published and the password appears nowhere in the
// output, even when the password is wrong.
func TestRelayKafkaTLSAndSCRAM(t *testing.T) {
	t.Parallel()
	if os.Getenv("KAFKA_BROKERS") != "" {
		t.Skip("uses an in-process kfake broker with TLS and SASL")
	}
	certs := testenv.NewCerts(t)
	serverTLS := certs.Server.Clone()
	serverTLS.ClientAuth = 0 // SASL authenticates the client here
	const secret = "s3cr3t-Passw0rd-for-relay"
	k := testenv.NewKafka(t, kfake.TLS(serverTLS), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "relay", secret),
		kfake.AllowAutoTopicCreation())
	db := testenv.NewDB(t)
	topic := testenv.UniqueName("secure")
	enqueueOne(t, db, topic)
	passFile := filepath.Join(t.TempDir(), "kafka-password")
	os.WriteFile(passFile, []byte(secret+"\n"), 0o600)

	environ := map[string]string{"DATABASE_URL": db.URL, "KAFKA_SASL_PASSWORD_FILE": passFile}
	args := []string{"--kafka-brokers", strings.Join(k.Brokers, ","), "--kafka-ca-file", certs.CAFile,
		"--kafka-sasl", "scram-sha-256", "--kafka-sasl-user", "relay", "--log-level", "debug"}
	out := runRelayUntil(t, environ, args, "event published over TLS+SCRAM", published(db))
	if strings.Contains(out, secret) {
		t.Fatalf("the SASL password appears in the relay's output:\n%s", out)
	}

	// A wrong password: the relay keeps trying (an outage, not a park) and
	// never prints the secret it was given.
	const wrong = "wrong-Passw0rd-xyz"
	os.WriteFile(passFile, []byte(wrong), 0o600)
	enqueueOne(t, db, topic)
	var failures int
	out = runRelayUntil(t, environ, args, "authentication failures logged", func() bool {
		failures++
		return failures > 60 // ~3s of trying
	})
	if strings.Contains(out, wrong) || strings.Contains(out, secret) {
		t.Fatalf("a password appears in the relay's output:\n%s", out)
	}
	var parked int
	db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox.messages WHERE status = 'parked'`).Scan(&parked)
	if parked != 0 {
		t.Errorf("bad credentials parked %d events", parked)
	}
	_, helpOut, _ := run(t, map[string]string{"KAFKA_SASL_PASSWORD": secret, "RABBITMQ_URL": "amqp://u:" + secret + "@h/"}, "relay", "-h")
	if strings.Contains(helpOut, secret) {
		t.Error("--help shows a secret from the environment")
	}
}

// RabbitMQ over amqps:// with a private CA and a client certificate (mutual
// TLS): a TLS front that requires the client certificate forwards to the
// local RabbitMQ. Without the client certificate the connection is refused.
func TestRelayRabbitMQMutualTLS(t *testing.T) {
	t.Parallel()
	certs := testenv.NewCerts(t)
	front := testenv.TLSProxy(t, certs.Server, "127.0.0.1:5672")
	db := testenv.NewDB(t)
	conn := testenv.Rabbit(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	exchange, queue := testenv.UniqueName("okt_tls_x"), testenv.UniqueName("okt_tls_q")
	ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil) // as the relay declares it
	ch.QueueDeclare(queue, false, true, false, false, nil)
	ch.QueueBind(queue, "#", exchange, false, nil)
	t.Cleanup(func() { ch.QueueDelete(queue, false, false, false); ch.ExchangeDelete(exchange, false, false) })
	enqueueOne(t, db, "secure.payments")

	url := "amqps://guest:guest@" + strings.Replace(front, "127.0.0.1", "localhost", 1) + "/"
	environ := map[string]string{"DATABASE_URL": db.URL, "RABBITMQ_URL": url}
	base := []string{"--rabbitmq-exchange", exchange, "--rabbitmq-ca-file", certs.CAFile}
	// Without a client certificate: refused, nothing published, nothing parked.
	var tries int
	out := runRelayUntil(t, environ, base, "refusals", func() bool { tries++; return tries > 40 })
	if published(db)() {
		t.Fatal("published without a client certificate")
	}
	if strings.Contains(out, "guest:guest") {
		t.Errorf("the AMQP password appears in the output:\n%s", out)
	}
	withCert := append(base, "--rabbitmq-cert-file", certs.ClientCertFile, "--rabbitmq-key-file", certs.ClientKeyFile)
	runRelayUntil(t, environ, withCert, "event published over mutual TLS", published(db))
	msg, ok, err := ch.Get(queue, true)
	if err != nil || !ok || msg.RoutingKey != "secure.payments" {
		t.Fatalf("queue: ok=%v err=%v key=%q", ok, err, msg.RoutingKey)
	}
}
