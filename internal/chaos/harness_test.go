package chaos_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

// Topics and consumers of the run. Every event goes to one topic, and each
// topic has one consumer, so "applied exactly once" is per (consumer, event).
const (
	topicKafka       = "chaos.ledger"
	topicRabbit      = "chaos.notify"
	topicUnrouted    = "chaos.unrouted"
	consumerKafka    = "ledger-kafka"
	consumerRabbit   = "notify-rabbitmq"
	kafkaPartitions  = 4
	numRelays        = 3
	schemaSetupChaos = `
CREATE SCHEMA chaos;
-- The producers' business rows: one per event, in the event's transaction.
CREATE TABLE chaos.transfers (
    event_id   uuid PRIMARY KEY,
    topic      text NOT NULL,
    key        text NOT NULL,
    amount     bigint NOT NULL,
    kind       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- The consumers' business effects. The unique constraint is the
-- independent double-apply detector; a conflicting insert is recorded in
-- double_applied by the handler.
CREATE TABLE chaos.applied (
    n          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer   text NOT NULL,
    event_id   uuid NOT NULL,
    topic      text NOT NULL,
    key        text NOT NULL,
    sequence   bigint NOT NULL,
    amount     bigint NOT NULL,
    proc       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT applied_once UNIQUE (consumer, event_id)
);
CREATE INDEX applied_event_idx ON chaos.applied (event_id);
CREATE TABLE chaos.double_applied (consumer text, event_id uuid, proc text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE chaos.key_state (consumer text, key text, last_seq bigint NOT NULL, PRIMARY KEY (consumer, key));
CREATE TABLE chaos.order_violations (consumer text, key text, expected bigint, got bigint, event_id uuid, proc text,
    at timestamptz DEFAULT clock_timestamp());
CREATE TABLE chaos.balances (consumer text, key text, amount bigint NOT NULL, events bigint NOT NULL,
    PRIMARY KEY (consumer, key));
CREATE TABLE chaos.consumer_stats (proc text PRIMARY KEY, consumer text, applied bigint, duplicate bigint,
    parked bigint, blocked bigint, already_parked bigint, injected_failures bigint, injected_panics bigint,
    updated_at timestamptz);
-- Every change of a partition's owner or fencing token, with the time it
-- happened: the checker proves from it that each event was marked published
-- by the relay that held its partition's lease at that moment.
CREATE TABLE chaos.lease_history (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition integer NOT NULL,
    owner     text,
    token     bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX lease_history_idx ON chaos.lease_history (partition, at);
CREATE FUNCTION chaos.log_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.owner IS DISTINCT FROM OLD.owner OR NEW.lease_token IS DISTINCT FROM OLD.lease_token THEN
        INSERT INTO chaos.lease_history (partition, owner, token) VALUES (NEW.partition, NEW.owner, NEW.lease_token);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_lease_history AFTER UPDATE ON outbox.partitions
    FOR EACH ROW EXECUTE FUNCTION chaos.log_lease();
`
)

// env is what one chaos run talks to: its database, the brokers, and the
// proxies that stand between the components and them.
type env struct {
	t      *testing.T
	db     *testenv.DB
	exe    string
	logDir string

	kafka      *kfake.Cluster
	kafkaAddr  string           // what every Kafka client dials: the proxy
	kafkaProxy *toxiproxy.Proxy // relays and the Kafka consumer <-> kfake

	rabbitRelayProxy, rabbitConsumerProxy *toxiproxy.Proxy
	rabbitRelayURL, rabbitConsumerURL     string
	exchange, queue, auditQueue           string

	relayDBProxies  []*toxiproxy.Proxy // one per relay
	consumerDBProxy *toxiproxy.Proxy   // shared by the consumers
	relayDBURLs     []string
	consumerDBURL   string
}

// proxiedListener is kfake's listener, reporting the proxy's address as its
// own: kfake advertises it in metadata, so every client (the relays'
// kafka-go, the consumer's, the checker's franz-go) reaches the broker only
// through the proxy, where the network can be cut.
type proxiedListener struct {
	net.Listener
	addr net.Addr
}

func (l proxiedListener) Addr() net.Addr { return l.addr }

func newEnv(t *testing.T, auditExpiry time.Duration) *env {
	t.Helper()
	e := &env{t: t, db: testenv.NewDB(t)}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e.exe = exe
	e.logDir = *logsFlag
	if e.logDir == "" {
		e.logDir = t.TempDir()
	} else if err := os.MkdirAll(e.logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := e.db.Pool.Exec(ctx, schemaSetupChaos); err != nil {
		t.Fatalf("chaos schema: %v", err)
	}

	// Kafka: kfake behind a proxy it advertises.
	listen := func(network, _ string) (net.Listener, error) {
		ln, err := net.Listen(network, "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		px := testenv.Proxy(t, "kafka", ln.Addr().String())
		e.kafkaProxy = px
		addr, err := net.ResolveTCPAddr("tcp", px.Listen)
		if err != nil {
			return nil, err
		}
		return proxiedListener{Listener: ln, addr: addr}, nil
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(listen), kfake.DefaultNumPartitions(kafkaPartitions),
		kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	e.kafka = c
	e.kafkaAddr = c.ListenAddrs()[0]
	if e.kafkaAddr != e.kafkaProxy.Listen {
		t.Fatalf("kfake advertises %s, want the proxy %s", e.kafkaAddr, e.kafkaProxy.Listen)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.kafkaAddr))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	resp, err := kadm.NewClient(cl).CreateTopic(cctx, kafkaPartitions, 1, nil, topicKafka)
	cancel()
	cl.Close()
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topicKafka, err)
	}

	// RabbitMQ: a durable exchange and queue of this run (durable, so that a
	// broker restart loses nothing), plus an audit queue bound like the
	// consumer's that nobody reads until the checker does.
	conn := testenv.Rabbit(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	e.exchange = testenv.UniqueName("okt_chaos_x")
	e.queue = testenv.UniqueName("okt_chaos_q")
	e.auditQueue = testenv.UniqueName("okt_chaos_audit")
	if err := ch.ExchangeDeclare(e.exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		name   string
		expiry time.Duration
	}{{e.queue, 15 * time.Minute}, {e.auditQueue, auditExpiry}} {
		// x-expires removes a queue a killed test left behind.
		args := amqp.Table{"x-expires": int32(q.expiry / time.Millisecond)}
		if _, err := ch.QueueDeclare(q.name, true, false, false, false, args); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind(q.name, topicRabbit, e.exchange, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ch, err := testenv.Rabbit(t).Channel()
		if err != nil {
			return
		}
		ch.QueueDelete(e.queue, false, false, false)      //nolint:errcheck
		ch.QueueDelete(e.auditQueue, false, false, false) //nolint:errcheck
		ch.ExchangeDelete(e.exchange, false, false)       //nolint:errcheck
	})
	ch.Close()
	e.rabbitRelayProxy, e.rabbitRelayURL = testenv.RabbitProxy(t)
	e.rabbitConsumerProxy, e.rabbitConsumerURL = testenv.RabbitProxy(t)

	// PostgreSQL: a proxy per relay and one for the consumers. Producers,
	// the sweeper and the checker connect directly.
	u, err := url.Parse(e.db.URL)
	if err != nil || u.Host == "" {
		t.Skipf("chaos: the test database URL must be a URL with a host (got %q)", e.db.URL)
	}
	upstream := u.Host
	if u.Port() == "" {
		upstream = net.JoinHostPort(u.Hostname(), "5432")
	}
	through := func(px *toxiproxy.Proxy) string {
		v := *u
		v.Host = px.Listen
		return v.String()
	}
	for i := range numRelays {
		px := testenv.Proxy(t, fmt.Sprintf("pg-relay-%d", i+1), upstream)
		e.relayDBProxies = append(e.relayDBProxies, px)
		e.relayDBURLs = append(e.relayDBURLs, through(px))
	}
	e.consumerDBProxy = testenv.Proxy(t, "pg-consumers", upstream)
	e.consumerDBURL = through(e.consumerDBProxy)
	return e
}

// adminConn is a direct connection to the run's database.
func (e *env) adminConn(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, e.db.URL)
}

// proc is one child process role (relay-2, consumer-kafka): started, killed
// and restarted by the schedule; each start is a new generation with its own
// name (relay-2.g3), so that leases and published_by tell generations apart.
type proc struct {
	e    *env
	role string
	base string
	env  []string

	mu       sync.Mutex
	gen      int
	name     string
	cmd      *exec.Cmd
	exited   chan struct{}
	expected bool // the exit is ours (kill or stop)
	log      *os.File
	crashes  []string
}

func (e *env) newProc(role, base string, vars map[string]string) *proc {
	p := &proc{e: e, role: role, base: base}
	p.env = append(os.Environ(), envRole+"="+role, envParent+"="+strconv.Itoa(os.Getpid()))
	for k, v := range vars {
		p.env = append(p.env, k+"="+v)
	}
	f, err := os.OpenFile(filepath.Join(e.logDir, base+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	p.log = f
	e.t.Cleanup(func() { f.Close() })
	return p
}

// mark writes a line of the parent's into the child's log.
func (p *proc) mark(format string, args ...any) {
	fmt.Fprintf(p.log, "=== chaos %s: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// start starts the next generation. The child is killed if the test process
// dies (Pdeathsig) and watches its parent too.
func (p *proc) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.name = fmt.Sprintf("%s.g%d", p.base, p.gen)
	cmd := exec.Command(p.e.exe)
	cmd.Env = append(append([]string{}, p.env...), envName+"="+p.name)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.mark("start %s", p.name)
	if err := cmd.Start(); err != nil {
		p.e.t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd, p.expected = cmd, false
	exited := make(chan struct{})
	p.exited = exited
	name := p.name
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		if !p.expected || (err != nil && p.cmd == cmd && !isSignalExit(err)) {
			p.crashes = append(p.crashes, fmt.Sprintf("%s exited on its own: %v", name, err))
		}
		p.mu.Unlock()
		p.mark("%s exited: %v", name, err)
		close(exited)
	}()
}

func isSignalExit(err error) bool {
	ee, ok := err.(*exec.ExitError)
	if !ok {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled()
}

func (p *proc) current() (string, *exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.name, p.cmd, p.exited
}

// kill SIGKILLs the current generation and waits for it to be gone.
func (p *proc) kill() {
	p.mu.Lock()
	p.expected = true
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	p.mark("SIGKILL %s", p.name)
	cmd.Process.Signal(syscall.SIGKILL) //nolint:errcheck // it may be gone already
	<-exited
}

func (p *proc) signal(sig syscall.Signal) {
	name, cmd, _ := p.current()
	p.mark("%s %s", sig, name)
	cmd.Process.Signal(sig) //nolint:errcheck
}

// stop asks the current generation to stop (SIGTERM) and waits up to
// timeout; then it kills it and reports the stop as failed.
func (p *proc) stop(timeout time.Duration) error {
	p.mu.Lock()
	p.expected = true
	name, cmd, exited := p.name, p.cmd, p.exited
	p.mu.Unlock()
	p.mark("SIGTERM %s", name)
	cmd.Process.Signal(syscall.SIGCONT) //nolint:errcheck // in case it is paused
	cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	select {
	case <-exited:
		if cmd.ProcessState != nil && !cmd.ProcessState.Success() {
			return fmt.Errorf("%s stopped with %v", name, cmd.ProcessState)
		}
		return nil
	case <-time.After(timeout):
		cmd.Process.Signal(syscall.SIGKILL) //nolint:errcheck
		<-exited
		return fmt.Errorf("%s did not stop within %s of SIGTERM", name, timeout)
	}
}

func (p *proc) crashList() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.crashes...)
}

// scanLog reports the lines of the child's log that mean a defect: a data
// race, a panic, a fatal error.
func (p *proc) scanLog() []string {
	f, err := os.Open(p.log.Name())
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var bad []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "WARNING: DATA RACE") || strings.HasPrefix(line, "panic: ") ||
			strings.HasPrefix(line, "fatal error: ") {
			bad = append(bad, p.base+": "+line)
		}
	}
	return bad
}

// countAfter counts lines containing needle after the last line containing
// marker in the child's log.
func (p *proc) countAfter(marker, needle string) int {
	f, err := os.Open(p.log.Name())
	if err != nil {
		return 0
	}
	defer f.Close()
	n, seen := 0, false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		switch line := sc.Text(); {
		case strings.Contains(line, marker):
			seen, n = true, 0
		case seen && strings.Contains(line, needle):
			n++
		}
	}
	return n
}

// tail returns the last n lines of the child's log.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log.Name())
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
