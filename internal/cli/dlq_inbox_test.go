package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/inbox"
	inboxkafka "github.com/outboxkit/outboxkit/inbox/kafka"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// consumerBench is a consumer "billing" whose handler writes one ledger row
// per application (no unique constraint: a double application shows) and
// refuses any payload containing "bad" while broken is set.
type consumerBench struct {
	t      *testing.T
	db     *testenv.DB
	env    map[string]string
	in     *inbox.Inbox
	broken atomic.Bool
}

func newConsumerBench(t *testing.T, poll time.Duration) *consumerBench {
	t.Helper()
	db := testenv.NewDB(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE ledger (n bigint GENERATED ALWAYS AS IDENTITY, event_id uuid NOT NULL,
		key text NOT NULL, sequence bigint NOT NULL, payload text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	b := &consumerBench{t: t, db: db, env: map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_ACTOR": "oncall-bob"}}
	b.broken.Store(true)
	in, err := inbox.New(db.Pool, &inbox.Config{Consumer: "billing", ConsumerVersion: "v1", MaxAttempts: 1,
		BackoffBase: 5 * time.Millisecond, BackoffMax: 10 * time.Millisecond, RequestPollInterval: poll,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	in.Register("payout.created", 1, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		if b.broken.Load() && bytes.Contains(ev.Payload, []byte("bad")) {
			return inbox.Permanent(errors.New("amount missing"))
		}
		_, err := tx.Exec(ctx, `INSERT INTO ledger (event_id, key, sequence, payload) VALUES ($1, $2, $3, $4)`,
			ev.ID, ev.Key, ev.Sequence, string(ev.Payload))
		return err
	})
	b.in = in
	return b
}

// delivery is event (key, seq) in the Kafka binding.
func delivery(topic, key string, seq int64, payload string) inbox.Delivery {
	e := &wire.Event{ID: uuid.Must(uuid.NewV7()), Type: "payout.created", Topic: topic, Key: key, Sequence: seq,
		Version: 1, ContentType: "application/json", Time: time.Now(), Payload: []byte(payload)}
	var hs []inbox.Header
	for _, h := range wire.KafkaHeaders(e) {
		hs = append(hs, inbox.Header{Name: h.Name, Value: []byte(h.Value)})
	}
	return inbox.Delivery{Binding: inbox.BindingKafka, Topic: topic, Headers: hs, Payload: e.Payload,
		Source: map[string]any{"broker": "test", "offset": seq}}
}

func (b *consumerBench) handle(d inbox.Delivery, want inbox.Outcome) {
	b.t.Helper()
	out, err := b.in.Handle(context.Background(), d)
	if err != nil || out != want {
		b.t.Fatalf("handle: %v %v, want %v", out, err, want)
	}
}

func (b *consumerBench) deadLetter(key string, seq int64) string {
	b.t.Helper()
	var id int64
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT id FROM inbox.dead_letters WHERE key = $1 AND sequence = $2`,
		key, seq).Scan(&id); err != nil {
		b.t.Fatalf("dead letter %s #%d: %v", key, seq, err)
	}
	return "i:" + strconv.FormatInt(id, 10)
}

func (b *consumerBench) ledger(key string) string {
	b.t.Helper()
	var s string
	b.db.Pool.QueryRow(context.Background(), `SELECT coalesce(string_agg(sequence::text || '=' || payload, ' ' ORDER BY n), '')
		FROM ledger WHERE key = $1`, key).Scan(&s)
	return s
}

func (b *consumerBench) query(q string, args ...any) string {
	b.t.Helper()
	var s string
	if err := b.db.Pool.QueryRow(context.Background(), q, args...).Scan(&s); err != nil {
		b.t.Fatalf("%s: %v", q, err)
	}
	return s
}

// produce sends events to Kafka as the relay would (CloudEvents binary mode).
func produce(t *testing.T, brokers []string, topic string, events ...[3]string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, ev := range events {
		seq, _ := strconv.ParseInt(ev[1], 10, 64)
		e := &wire.Event{ID: uuid.Must(uuid.NewV7()), Type: "payout.created", Topic: topic, Key: ev[0], Sequence: seq,
			Version: 1, ContentType: "application/json", Time: time.Now(), Payload: []byte(ev[2])}
		rec := &kgo.Record{Topic: topic, Key: []byte(ev[0]), Value: e.Payload}
		for _, h := range wire.KafkaHeaders(e) {
			rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.Name, Value: []byte(h.Value)})
		}
		if err := cl.ProduceSync(context.Background(), rec).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

// An on-call engineer replays an inbox dead letter from the CLI; the running
// Kafka consumer applies it exactly once, and the event blocked behind it
// follows in order. Edit applies the corrected payload; bulk redrive
// requests replays in key order.
func TestDLQInboxReplayByRunningKafkaConsumer(t *testing.T) {
	t.Parallel()
	b := newConsumerBench(t, 100*time.Millisecond)
	ctx := context.Background()
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("payouts")
	k.CreateTopic(t, topic, 1)
	c, err := inboxkafka.New(b.in, inboxkafka.Config{Brokers: k.Brokers, Topics: []string{topic}, GroupID: topic,
		MaxWait: 100 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond, SessionTimeout: 6 * time.Second,
		RebalanceTimeout: 10 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var running sync.WaitGroup
	running.Go(func() {
		if err := c.Run(runCtx); err != nil {
			t.Errorf("consumer: %v", err)
		}
	})
	defer func() {
		stop()
		running.Wait()
	}()

	produce(t, k.Brokers, topic,
		[3]string{"payout-1", "1", `{"amount":"bad"}`}, [3]string{"payout-1", "2", `{"amount":2}`},
		[3]string{"payout-2", "1", `{"amount":"bad"}`}, [3]string{"payout-3", "1", `{"amount":"bad"}`},
		[3]string{"payout-4", "1", `{"amount":4}`})
	testenv.Eventually(t, 30*time.Second, "the bad events parked, the later one blocked", func() bool {
		var parked, blocked, applied int
		b.db.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'parked'), count(*) FILTER (WHERE status = 'blocked'),
			(SELECT count(*) FROM ledger) FROM inbox.dead_letters`).Scan(&parked, &blocked, &applied)
		return parked == 3 && blocked == 1 && applied == 1
	})
	head := b.deadLetter("payout-1", 1)
	out, errOut, code := run(t, b.env, "dlq", "list", "--kind", "inbox", "--key", "payout-1")
	if code != 0 || !strings.Contains(out, head+"  parked") || !strings.Contains(out, "REQUEST") {
		t.Fatalf("list: %d\n%s%s", code, out, errOut)
	}

	// The fix is deployed; the operator replays the head and waits.
	b.broken.Store(false)
	out, errOut, code = run(t, b.env, "dlq", "replay", head, "--reason", "amount parser fixed in v2", "--wait", "30s")
	if code != 0 || !strings.Contains(out, head+" requested") || !strings.Contains(out, "replay applied: requested by oncall-bob") {
		t.Fatalf("replay: %d\n%s%s", code, out, errOut)
	}
	// The request is settled with the head's application; the consumer
	// then releases the key.
	testenv.Eventually(t, 30*time.Second, "the blocked event applied after the head", func() bool {
		return b.query(`SELECT string_agg(status, ',' ORDER BY sequence) FROM inbox.dead_letters WHERE key = 'payout-1'`) == "resolved,resolved"
	})
	if got := b.ledger("payout-1"); got != `1={"amount":"bad"} 2={"amount":2}` {
		t.Errorf("payout-1 ledger: %s (want the head once, then the blocked event once, in order)", got)
	}
	// Running the requests again applies nothing twice.
	if n, err := b.in.ProcessRequests(ctx); err != nil || n != 0 {
		t.Errorf("second ProcessRequests: %d %v", n, err)
	}
	_, errOut, code = run(t, b.env, "dlq", "replay", head, "--reason", "again")
	if code != 1 || !strings.Contains(errOut, "is resolved") {
		t.Errorf("replay of a resolved dead letter: %d %s", code, errOut)
	}
	out, _, _ = run(t, b.env, "dlq", "show", head)
	if !strings.Contains(out, "requests\n  #") || !strings.Contains(out, "replay applied: requested by oncall-bob") ||
		!strings.Contains(out, "by inbox:billing v1: applied (applied)") {
		t.Errorf("show:\n%s", out)
	}
	audit := b.query(`SELECT string_agg(action || ':' || actor, ',' ORDER BY id) FROM outbox.audit_log
		WHERE target_kind = 'inbox_dead_letter' AND action <> 'park'`)
	if audit != "request_replay:oncall-bob,redrive:oncall-bob,release:oncall-bob" {
		t.Errorf("audit: %s", audit)
	}
	if got := b.query(`SELECT (details->>'request_id' = r.id::text)::text FROM outbox.audit_log a, inbox.dead_letter_requests r
		WHERE a.action = 'redrive'`); got != "true" {
		t.Errorf("the consumer's redrive entry does not name the request")
	}

	// Edit: the consumer applies the corrected payload; the dead letter
	// keeps the original.
	edited := b.deadLetter("payout-2", 1)
	b.broken.Store(true)
	file := filepath.Join(t.TempDir(), "fixed.json")
	os.WriteFile(file, []byte(`{"amount":20}`), 0o600)
	out, errOut, code = run(t, b.env, "dlq", "edit", edited, "--payload-file", file, "--reason", "amount restored from the bank statement", "--wait", "30s")
	if code != 0 || !strings.Contains(out, "edit applied") {
		t.Fatalf("edit: %d\n%s%s", code, out, errOut)
	}
	if got := b.ledger("payout-2"); got != `1={"amount":20}` {
		t.Errorf("payout-2 ledger: %s", got)
	}
	if got := b.query(`SELECT convert_from(payload, 'UTF8') FROM inbox.dead_letters WHERE id = $1`, edited[2:]); got != `{"amount":"bad"}` {
		t.Errorf("the dead letter's payload changed: %s", got)
	}

	// Bulk: a dry run changes nothing; then every parked dead letter of the
	// consumer is requested, in key order.
	produce(t, k.Brokers, topic, [3]string{"payout-0", "1", `{"amount":"bad","n":0}`}) // broken is still set
	testenv.Eventually(t, 30*time.Second, "payout-0 parked", func() bool {
		return b.query(`SELECT count(*)::text FROM inbox.dead_letters WHERE status = 'parked'`) == "2"
	})
	out, errOut, code = run(t, b.env, "dlq", "redrive", "--kind", "inbox", "--consumer", "billing", "--dry-run")
	if code != 0 || strings.Count(out, "would request a replay") != 2 || b.query(`SELECT count(*)::text FROM inbox.dead_letter_requests WHERE status = 'pending'`) != "0" {
		t.Fatalf("dry run: %d\n%s%s", code, out, errOut)
	}
	b.broken.Store(false)
	out, errOut, code = run(t, b.env, "dlq", "redrive", "--consumer", "billing", "--reason", "INC-7 fixed", "--rate", "100", "--wait", "30s", "--json")
	var res struct {
		Requests []struct {
			Status     string
			DeadLetter string `json:"dead_letter"`
		} `json:"requests"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || len(res.Requests) != 2 {
		t.Fatalf("redrive: %d\n%s%s", code, out, errOut)
	}
	if res.Requests[0].DeadLetter != b.deadLetter("payout-0", 1) || res.Requests[1].DeadLetter != b.deadLetter("payout-3", 1) ||
		res.Requests[0].Status != "applied" || res.Requests[1].Status != "applied" {
		t.Errorf("bulk requests (want key order, applied): %+v", res.Requests)
	}
	if got := b.query(`SELECT count(*)::text FROM ledger`); got != "6" {
		t.Errorf("ledger rows: %s, want 6 (each event once)", got)
	}
}

// Drop and restore of an inbox dead letter: a drop of the head of a blocked
// key moves the key past it and asks the consumer to apply the event that
// waited; a restore before the consumer ran returns the exact row and lane.
func TestDLQInboxDropRestore(t *testing.T) {
	t.Parallel()
	b := newConsumerBench(t, -1) // no poller: the test runs the requests itself
	ctx := context.Background()
	b.handle(delivery("payments", "k", 1, `{"bad":1}`), inbox.Parked)
	b.handle(delivery("payments", "k", 2, `{"n":2}`), inbox.Blocked)
	head := b.deadLetter("k", 1)
	rowOf := func() string {
		return b.query(`SELECT (to_jsonb(d) || jsonb_build_object('lane', to_jsonb(l) - 'updated_at'))::text FROM inbox.dead_letters d, inbox.lanes l
			WHERE d.id = $1 AND l.key = d.key`, head[2:])
	}
	before := rowOf()

	_, errOut, code := run(t, b.env, "dlq", "drop", b.deadLetter("k", 2), "--reason", "x")
	if code != 1 || !strings.Contains(errOut, "waits behind "+head) {
		t.Errorf("drop of a blocked dead letter: %d %s", code, errOut)
	}
	out, errOut, code := run(t, b.env, "dlq", "drop", head, "--reason", "duplicate payout", "--json")
	var outs []struct {
		Result  string
		Request int64
	}
	if code != 0 || json.Unmarshal([]byte(out), &outs) != nil || outs[0].Result != "dropped" || outs[0].Request == 0 {
		t.Fatalf("drop: %d %s %s", code, out, errOut)
	}
	// A new event of the key queues behind the dropped head until the
	// consumer has released the key.
	b.handle(delivery("payments", "k", 3, `{"n":3}`), inbox.Blocked)
	if b.ledger("k") != "" {
		t.Fatal("applied before the release")
	}
	out, errOut, code = run(t, b.env, "dlq", "restore", head, "--reason", "dropped the wrong one")
	if code != 0 || !strings.Contains(out, "head of key") {
		t.Fatalf("restore: %d %s %s", code, out, errOut)
	}
	if after := rowOf(); after != before {
		t.Errorf("restore did not return the exact row and lane:\nbefore %s\nafter  %s", before, after)
	}
	if got := b.query(`SELECT status FROM inbox.dead_letter_requests WHERE id = $1`, outs[0].Request); got != "cancelled" {
		t.Errorf("release request %s", got)
	}

	// Dropped again, and this time the consumer runs the release.
	if _, _, code := run(t, b.env, "dlq", "drop", head, "--reason", "duplicate payout, confirmed"); code != 0 {
		t.Fatal("second drop")
	}
	if n, err := b.in.ProcessRequests(ctx); err != nil || n != 1 {
		t.Fatalf("ProcessRequests: %d %v", n, err)
	}
	if got := b.ledger("k"); got != `2={"n":2} 3={"n":3}` {
		t.Errorf("after the release: %q", got)
	}
	b.handle(delivery("payments", "k", 4, `{"n":4}`), inbox.Applied)
	// The key moved on: a restore parks it out of order, and a replay
	// applies it out of order, once.
	out, _, code = run(t, b.env, "dlq", "restore", head, "--reason", "it was not a duplicate after all")
	if code != 0 || !strings.Contains(out, "moved on meanwhile") {
		t.Fatalf("late restore: %d %s", code, out)
	}
	b.broken.Store(false)
	if _, _, code := run(t, b.env, "dlq", "replay", head, "--reason", "apply it late"); code != 0 {
		t.Fatal("replay after restore")
	}
	if n, err := b.in.ProcessRequests(ctx); err != nil || n != 1 {
		t.Fatalf("ProcessRequests: %d %v", n, err)
	}
	if got := b.ledger("k"); got != `2={"n":2} 3={"n":3} 4={"n":4} 1={"bad":1}` {
		t.Errorf("ledger: %q", got)
	}
	audit := b.query(`SELECT string_agg(action || coalesce('/' || (details->>'mode'), ''), ',' ORDER BY id) FROM outbox.audit_log
		WHERE actor = 'oncall-bob'`)
	if audit != "drop,restore/head_again,drop,release,release,restore/out_of_order,request_replay,redrive" {
		t.Errorf("audit: %s", audit)
	}
}
