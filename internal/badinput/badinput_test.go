package badinput_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/inbox"
	inboxkafka "github.com/outboxkit/outboxkit/inbox/kafka"
	inboxrabbit "github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/internal/cli"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/migrations"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relaykafka "github.com/outboxkit/outboxkit/relay/kafka"
	relayrabbit "github.com/outboxkit/outboxkit/relay/rabbitmq"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// runRelay runs a relay until the test ends or stop is called.
func runRelay(t *testing.T, pool *pgxpool.Pool, pub relay.Publisher) (stop func()) {
	t.Helper()
	r, err := relay.New(pool, &relay.Config{Publisher: pub, PollInterval: 50 * time.Millisecond, LeaseTTL: 2 * time.Second,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, MaxAttempts: 1000, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Payloads are bytes: NUL, invalid UTF-8 and a lone surrogate reach the
// handler byte for byte, and so do a Unicode key and header values full of
// quotes, SQL and shell metacharacters (valid UTF-8: the outbox refuses NUL
// and invalid UTF-8 in text fields at the door, see
// outbox.TestEnqueueRefusesBadInput).
func TestHostileBytesArriveUnchanged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE got (event_id uuid PRIMARY KEY, key text, payload bytea, headers jsonb)`); err != nil {
		t.Fatal(err)
	}
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("badinput.bytes")
	k.CreateTopic(t, topic, 2)
	msgs := []outbox.Message{
		{Topic: topic, Key: "acct-€-ü-😀", Type: "t", Version: 1, Payload: []byte{0x00, 0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0x00},
			Headers: map[string]string{"tenant": `x'; DROP TABLE outbox.messages; --`, "cmd": "$(rm -rf /) `id` | && ; > <"}},
		{Topic: topic, Key: "acct-€-ü-😀", Type: "t", Version: 1, Payload: []byte{},
			Headers: map[string]string{"quote": `"\'\\%_`, "unicode": "zero\u200bwidth \u202e rtl"}},
		{Topic: topic, Type: "t", Version: 1, Payload: bytes.Repeat([]byte{0x00}, 1<<16)},
	}
	ids, err := outbox.EnqueueBatch(ctx, db.Pool, msgs)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := relaykafka.New(relaykafka.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	runRelay(t, db.Pool, pub)

	in, err := inbox.New(db.Pool, &inbox.Config{Consumer: "badinput", ConsumerVersion: "test", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	in.Register("t", 1, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		_, err := tx.Exec(ctx, `INSERT INTO got VALUES ($1, $2, $3, $4)`, ev.ID, ev.Key, ev.Payload, ev.Headers)
		return err
	})
	c, err := inboxkafka.New(in, inboxkafka.Config{Brokers: k.Brokers, Topics: []string{topic}, GroupID: testenv.UniqueName("badinput"),
		Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	testenv.Eventually(t, 60*time.Second, "every event applied", func() bool {
		var n int
		return db.Pool.QueryRow(ctx, `SELECT count(*) FROM got`).Scan(&n) == nil && n == len(msgs)
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		var key string
		var payload []byte
		var headers map[string]string
		if err := db.Pool.QueryRow(ctx, `SELECT key, payload, headers FROM got WHERE event_id = $1`, ids[i]).
			Scan(&key, &payload, &headers); err != nil {
			t.Fatal(err)
		}
		if key != m.Key || !bytes.Equal(payload, m.Payload) {
			t.Errorf("event %d: key %q payload %x, want %q %x", i, key, payload, m.Key, m.Payload)
		}
		for name, v := range m.Headers {
			if headers[name] != v {
				t.Errorf("event %d: header %s = %q, want %q", i, name, headers[name], v)
			}
		}
	}
	var parked int
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox.messages WHERE status <> 'published') +
       (SELECT count(*) FROM inbox.dead_letters)`).Scan(&parked); err != nil || parked != 0 {
		t.Fatalf("%d events not published or dead-lettered (%v)", parked, err)
	}
}

// A RabbitMQ queue that refuses the message (overflow reject-publish) makes
// the broker nack it: the relay keeps the event pending and retries it, with
// the reason in last_error; once the queue takes messages again the event
// is published, and exactly one copy reaches the queue.
func TestBrokerNackLosesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	conn := testenv.Rabbit(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	exchange := testenv.UniqueName("okt_badinput_x")
	full := testenv.UniqueName("okt_badinput_full")
	good := testenv.UniqueName("okt_badinput_q")
	// Not auto-deleted: it must outlive the refusing queue's deletion.
	if err := ch.ExchangeDeclare(exchange, "topic", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(full, false, true, false, false,
		amqp.Table{"x-max-length": int32(0), "x-overflow": "reject-publish", "x-expires": int32(600_000)}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(full, "payments", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A channel of its own: a failed step may have closed ch.
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer ch.Close()
		ch.QueueDelete(full, false, false, false) //nolint:errcheck // may be deleted already
		ch.QueueDelete(good, false, false, false) //nolint:errcheck // may never have been declared
		if err := ch.ExchangeDelete(exchange, false, false); err != nil {
			t.Errorf("cleanup: delete exchange %s: %v", exchange, err)
		}
	})
	id, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "payments", Key: "payout-1", Type: "t", Payload: []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := relayrabbit.New(ctx, relayrabbit.Config{URL: testenv.RabbitURL(), Exchange: exchange, SkipDeclare: true,
		ConfirmTimeout: 5 * time.Second, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	stopRelay := runRelay(t, db.Pool, pub)

	var status, lastErr string
	testenv.Eventually(t, 30*time.Second, "the nacked event retried", func() bool {
		var attempts int
		err := db.Pool.QueryRow(ctx, `SELECT status, attempts, coalesce(last_error, '') FROM outbox.messages WHERE event_id = $1`, id).
			Scan(&status, &attempts, &lastErr)
		return err == nil && attempts >= 3
	})
	if status != "pending" || !strings.Contains(lastErr, "nacked") {
		t.Fatalf("after nacks: status %s, last error %q; want pending with the nack as reason", status, lastErr)
	}
	// The queue takes messages again. The relay is stopped meanwhile: with
	// no queue bound for a moment, a publish would come back unroutable.
	stopRelay()
	if _, err := ch.QueueDelete(full, false, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(good, false, true, false, false, amqp.Table{"x-expires": int32(600_000)}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(good, "payments", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	runRelay(t, db.Pool, pub)
	testenv.Eventually(t, 30*time.Second, "the event published", func() bool {
		return db.Pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE event_id = $1`, id).Scan(&status) == nil &&
			status == "published"
	})
	var got []string
	testenv.Eventually(t, 10*time.Second, "the event in the queue", func() bool {
		d, ok, err := ch.Get(good, true)
		if err == nil && ok {
			got = append(got, d.MessageId)
		}
		return len(got) > 0
	})
	time.Sleep(500 * time.Millisecond) // a second copy would be there by now
	for {
		d, ok, err := ch.Get(good, true)
		if err != nil || !ok {
			break
		}
		got = append(got, d.MessageId)
	}
	if len(got) != 1 || got[0] != id.String() {
		t.Fatalf("queue held %q, want event %s once", got, id)
	}
}

// loginAs creates a login role that is a member of the outboxkit role of
// component and returns a pool connected as it. Roles are cluster-wide:
// they are dropped when the test ends.
func loginAs(t *testing.T, db *testenv.DB, prefix, component string) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	login := prefix + "_" + component + "_login"
	for _, q := range []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN", pgx.Identifier{login}.Sanitize()),
		fmt.Sprintf("GRANT %s TO %s", pgx.Identifier{prefix + "_" + component}.Sanitize(), pgx.Identifier{login}.Sanitize()),
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(login)
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, u.String()
}

func isInsufficientPrivilege(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}

// A component started under another component's role stops at once with
// PostgreSQL's insufficient_privilege (reachable with errors.As) and, for
// the long-running ones, a hint about the grants; a producer under a role
// that may not write stores nothing.
func TestWrongDatabaseRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	prefix := strings.ReplaceAll(testenv.UniqueName("okb"), "-", "_")
	t.Cleanup(func() {
		if err := testenv.DropRoles(db, prefix); err != nil {
			t.Errorf("roles of %s left behind: %v", prefix, err)
		}
	})
	if err := migrations.ApplyRoles(ctx, db.URL, nil, prefix); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "payments", Key: "k", Type: "t"}); err != nil {
		t.Fatal(err)
	}
	producer, _ := loginAs(t, db, prefix, "producer")
	auditor, _ := loginAs(t, db, prefix, "auditor")

	t.Run("relay under the producer role", func(t *testing.T) {
		k := testenv.NewKafka(t)
		pub, err := relaykafka.New(relaykafka.Config{Brokers: k.Brokers})
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Close()
		r, err := relay.New(producer, &relay.Config{Publisher: pub, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err = r.Run(rctx)
		if !isInsufficientPrivilege(err) || !strings.Contains(err.Error(), "relay grants") {
			t.Fatalf("Run = %v, want insufficient_privilege with a hint about the relay grants", err)
		}
	})
	t.Run("consumer under the producer role", func(t *testing.T) {
		in, err := inbox.New(producer, &inbox.Config{Consumer: "billing", ConsumerVersion: "test", Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		c, err := inboxrabbit.New(in, inboxrabbit.Config{URL: testenv.RabbitURL(), Queue: testenv.UniqueName("okt_badinput_role")})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := c.Run(rctx); !isInsufficientPrivilege(err) {
			t.Fatalf("Run = %v, want insufficient_privilege", err)
		}
	})
	t.Run("producer under the auditor role", func(t *testing.T) {
		_, err := outbox.Enqueue(ctx, auditor, outbox.Message{Topic: "payments", Key: "k", Type: "t"})
		if !isInsufficientPrivilege(err) {
			t.Fatalf("Enqueue = %v, want insufficient_privilege", err)
		}
	})
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.messages WHERE status = 'pending'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d pending events (%v), want the one enqueued by the owner, untouched", n, err)
	}
}

// refusingServer speaks just enough of the PostgreSQL protocol to ask for a
// password and refuse it, as a server with password authentication does
// (the test cluster trusts every local connection, so it never asks).
func refusingServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
				be := pgproto3.NewBackend(conn, conn)
				msg, err := be.ReceiveStartupMessage()
				if _, ssl := msg.(*pgproto3.SSLRequest); ssl && err == nil {
					if _, err := conn.Write([]byte("N")); err != nil {
						return
					}
					msg, err = be.ReceiveStartupMessage()
				}
				if _, ok := msg.(*pgproto3.StartupMessage); !ok || err != nil {
					return
				}
				be.Send(&pgproto3.AuthenticationCleartextPassword{})
				if be.Flush() != nil {
					return
				}
				be.SetAuthType(pgproto3.AuthTypeCleartextPassword) //nolint:errcheck
				if _, err := be.Receive(); err != nil {
					return
				}
				be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: `password authentication failed for user "app"`})
				be.Flush() //nolint:errcheck
			}()
		}
	}()
	return ln.Addr().String()
}

// A wrong password is refused with PostgreSQL's reason, and the password
// appears in no error: the library's, the CLI's (both URL and key=value
// forms), and for a login the real server does not know.
func TestBadPasswordNeverPrinted(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-Sup3r-s3cret"
	addr := refusingServer(t)
	host, port, _ := net.SplitHostPort(addr)
	urls := []string{
		"postgres://app:" + secret + "@" + addr + "/app?sslmode=disable&connect_timeout=5",
		"host=" + host + " port=" + port + " user=app password=" + secret + " dbname=app sslmode=disable connect_timeout=5",
		"postgres://app:" + url.QueryEscape(secret) + "@" + addr + "/app?sslmode=prefer&connect_timeout=5",
	}
	for _, u := range urls {
		err := migrations.Up(context.Background(), u, nil)
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Errorf("migrations.Up: %v, want the server's refusal", err)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("migrations.Up error shows the password: %v", err)
		}
		for _, args := range [][]string{{"migrate", "up"}, {"stats"}, {"dlq", "list"}} {
			var out, errOut bytes.Buffer
			env := &cli.Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string {
				if k == "DATABASE_URL" {
					return u
				}
				return ""
			}}
			code := cli.MainEnv(context.Background(), args, env)
			if code != 1 || !strings.Contains(errOut.String(), "password authentication failed") {
				t.Errorf("outboxkit %s: exit %d, stderr %q; want 1 and the server's refusal", strings.Join(args, " "), code, errOut.String())
			}
			if strings.Contains(out.String()+errOut.String(), secret) {
				t.Errorf("outboxkit %s prints the password: %s%s", strings.Join(args, " "), out.String(), errOut.String())
			}
		}
	}
	// The real server, for a login it does not know.
	u, err := url.Parse(testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("okt_no_such_login", secret)
	err = migrations.Up(context.Background(), u.String(), nil)
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Fatalf("unknown login: %v (it must fail without showing the password)", err)
	}
}
