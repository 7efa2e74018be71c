package inbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

func TestMain(m *testing.M) {
	opts := []goleak.Option{
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*Cluster).run"),
	}
	for _, f := range testenv.ProxyLeakIgnores {
		opts = append(opts, goleak.IgnoreAnyFunction(f))
	}
	goleak.VerifyTestMain(m, opts...)
}

func testLogger() *slog.Logger {
	if os.Getenv("OUTBOXKIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// bundle is one test's database, inbox and business table.
type bundle struct {
	t     *testing.T
	db    *testenv.DB
	in    *inbox.Inbox
	cfg   *inbox.Config
	fail  *failures
	calls atomic.Int64
}

// failures decides, per event, what the test handler returns.
type failures struct {
	mu sync.Mutex
	fn func(ev *inbox.Event) error
}

func (f *failures) set(fn func(ev *inbox.Event) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fn = fn
}

func (f *failures) get(ev *inbox.Event) error {
	f.mu.Lock()
	fn := f.fn
	f.mu.Unlock()
	if fn == nil {
		return nil
	}
	return fn(ev)
}

// fastConfig has short timers for tests.
func fastConfig(consumer string) *inbox.Config {
	return &inbox.Config{
		Consumer:        consumer,
		ConsumerVersion: "v1.2.3",
		MaxAttempts:     3,
		BackoffBase:     5 * time.Millisecond,
		BackoffMax:      20 * time.Millisecond,
		Breaker:         inbox.BreakerConfig{Threshold: 5, BackoffBase: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond},
		Logger:          testLogger(),
	}
}

const effectsTable = `CREATE TABLE effects (
    n          bigint GENERATED ALWAYS AS IDENTITY,
    consumer   text   NOT NULL,
    event_id   uuid   NOT NULL,
    key        text   NOT NULL,
    sequence   bigint NOT NULL,
    version    int    NOT NULL,
    payload    bytea  NOT NULL
)`

// newBundle creates a database with the effects table and an inbox whose
// handler for test.event v1 records an effect (or fails as b.fail says).
func newBundle(t *testing.T, cfg *inbox.Config) *bundle {
	t.Helper()
	db := testenv.NewDB(t)
	if _, err := db.Pool.Exec(context.Background(), effectsTable); err != nil {
		t.Fatal(err)
	}
	if cfg == nil {
		cfg = fastConfig("billing")
	}
	b := &bundle{t: t, db: db, cfg: cfg, fail: &failures{}}
	b.in = b.newInbox(db.Pool, cfg)
	return b
}

func (b *bundle) newInbox(pool *pgxpool.Pool, cfg *inbox.Config) *inbox.Inbox {
	b.t.Helper()
	in, err := inbox.New(pool, cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	in.Register("test.event", 1, b.handler(cfg.Consumer))
	return in
}

func (b *bundle) handler(consumer string) inbox.Handler {
	return func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		b.calls.Add(1)
		if err := b.fail.get(ev); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO effects (consumer, event_id, key, sequence, version, payload) VALUES ($1, $2, $3, $4, $5, $6)`,
			consumer, ev.ID, ev.Key, ev.Sequence, ev.Version, ev.Payload)
		return err
	}
}

// testEvent builds deliveries in the Kafka binding of the wire format.
type testEvent struct {
	id       uuid.UUID
	typ      string
	version  int
	key      string
	seq      int64
	payload  []byte
	corr     string
	topic    string
	offset   int64
	binding  inbox.Binding
	extraHdr []inbox.Header
}

var offsets atomic.Int64

func event(key string, seq int64) testEvent {
	return testEvent{id: uuid.Must(uuid.NewV7()), typ: "test.event", key: key, seq: seq,
		payload: []byte(fmt.Sprintf(`{"key":%q,"seq":%d}`, key, seq)), corr: "flow-" + key, topic: "payments"}
}

func (e testEvent) delivery() inbox.Delivery {
	p := "ce_"
	if e.binding == inbox.BindingAMQP {
		p = "cloudEvents:"
	}
	hs := []inbox.Header{
		{Name: p + "specversion", Value: []byte("1.0")},
		{Name: p + "id", Value: []byte(e.id.String())},
		{Name: p + "source", Value: []byte("/test")},
		{Name: p + "type", Value: []byte(e.typ)},
		{Name: p + "time", Value: []byte("2026-11-23T10:00:00Z")},
	}
	d := inbox.Delivery{Binding: inbox.BindingKafka, Topic: e.topic, Payload: e.payload}
	if e.binding == inbox.BindingAMQP {
		d.Binding = inbox.BindingAMQP
		d.ContentType = "application/json"
	} else {
		hs = append(hs, inbox.Header{Name: "content-type", Value: []byte("application/json")})
	}
	if e.key != "" {
		hs = append(hs, inbox.Header{Name: p + "partitionkey", Value: []byte(e.key)},
			inbox.Header{Name: p + "sequence", Value: []byte(strconv.FormatInt(e.seq, 10))})
	}
	if e.corr != "" {
		hs = append(hs, inbox.Header{Name: p + "correlationid", Value: []byte(e.corr)})
	}
	if e.version > 0 {
		hs = append(hs, inbox.Header{Name: p + "eventversion", Value: []byte(strconv.Itoa(e.version))})
	}
	d.Headers = append(hs, e.extraHdr...)
	off := e.offset
	if off == 0 {
		off = offsets.Add(1)
	}
	d.Source = map[string]any{"broker": "test", "partition": 0, "offset": off}
	return d
}

func (b *bundle) handle(d inbox.Delivery) inbox.Outcome {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := b.in.Handle(ctx, d)
	if err != nil {
		b.t.Fatalf("Handle: %v", err)
	}
	return out
}

func (b *bundle) expect(d inbox.Delivery, want inbox.Outcome) {
	b.t.Helper()
	if got := b.handle(d); got != want {
		b.t.Fatalf("Handle: outcome %s, want %s", got, want)
	}
}

func (b *bundle) count(query string, args ...any) int {
	b.t.Helper()
	var n int
	if err := b.db.Pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		b.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// effectOrder returns the sequences applied for key, in order of application.
func (b *bundle) effectOrder(key string) []int64 {
	b.t.Helper()
	rows, err := b.db.Pool.Query(context.Background(), `SELECT sequence FROM effects WHERE key = $1 ORDER BY n`, key)
	if err != nil {
		b.t.Fatal(err)
	}
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		b.t.Fatal(err)
	}
	return seqs
}

// requireKeysInOrderNoDeadLetters fails the test unless every key acct-0 …
// acct-(keys-1) was applied 1, 2, 3… in order and nothing was parked.
func (b *bundle) requireKeysInOrderNoDeadLetters(keys int) {
	b.t.Helper()
	for k := range keys {
		got := b.effectOrder(fmt.Sprintf("acct-%d", k))
		for i, s := range got {
			if s != int64(i+1) {
				b.t.Fatalf("key acct-%d applied in order %v", k, got)
			}
		}
	}
	if n := b.count(`SELECT count(*) FROM inbox.dead_letters`); n != 0 {
		b.t.Fatalf("%d dead letters", n)
	}
}

// deadLetter is a dead letter row as the tests read it.
type deadLetter struct {
	ID              int64
	Consumer        string
	ConsumerVersion string
	EventID         *uuid.UUID
	Topic, Key      string
	Sequence        *int64
	Type            *string
	Version         *int
	Payload         []byte
	Headers         []byte
	ContentType     *string
	CorrelationID   *string
	Error, Class    string
	Attempts        int
	Status          string
	BlockedBy       *int64
	WaitingFor      *int64
	Source          []byte
	FirstFailedAt   time.Time
	LastFailedAt    time.Time
	ResolvedAt      *time.Time
}

func (b *bundle) deadLetters(where string, args ...any) []deadLetter {
	b.t.Helper()
	rows, err := b.db.Pool.Query(context.Background(), `SELECT id, consumer, consumer_version, event_id, topic, key, sequence,
       type, version, payload, headers, content_type, correlation_id, error, error_class, attempts, status, blocked_by,
       waiting_for, source, first_failed_at, last_failed_at, resolved_at
  FROM inbox.dead_letters WHERE `+where+` ORDER BY id`, args...)
	if err != nil {
		b.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (deadLetter, error) {
		var d deadLetter
		err := r.Scan(&d.ID, &d.Consumer, &d.ConsumerVersion, &d.EventID, &d.Topic, &d.Key, &d.Sequence, &d.Type,
			&d.Version, &d.Payload, &d.Headers, &d.ContentType, &d.CorrelationID, &d.Error, &d.Class, &d.Attempts,
			&d.Status, &d.BlockedBy, &d.WaitingFor, &d.Source, &d.FirstFailedAt, &d.LastFailedAt, &d.ResolvedAt)
		return d, err
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

func (b *bundle) deadLetter(eventID uuid.UUID) deadLetter {
	b.t.Helper()
	dls := b.deadLetters("event_id = $1", eventID)
	if len(dls) != 1 {
		b.t.Fatalf("event %s: %d dead letters, want 1", eventID, len(dls))
	}
	return dls[0]
}

type attemptRow struct {
	Attempt      int
	Class, Error string
	Outcome      string
	DeadLetterID *int64
}

func (b *bundle) attempts(eventID uuid.UUID) []attemptRow {
	b.t.Helper()
	rows, err := b.db.Pool.Query(context.Background(), `SELECT attempt, error_class, error, outcome, dead_letter_id
  FROM inbox.attempts WHERE event_id = $1 ORDER BY id`, eventID)
	if err != nil {
		b.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[attemptRow])
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

type auditRow struct {
	Actor, Action, Reason string
	Targets               []string
	Details               map[string]any
}

func (b *bundle) audits(target string) []auditRow {
	b.t.Helper()
	rows, err := b.db.Pool.Query(context.Background(), `SELECT actor, action, reason, target_ids, coalesce(details, '{}')
  FROM outbox.audit_log WHERE $1 = ANY(target_ids) ORDER BY id`, target)
	if err != nil {
		b.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (auditRow, error) {
		var a auditRow
		var details []byte
		if err := r.Scan(&a.Actor, &a.Action, &a.Reason, &a.Targets, &details); err != nil {
			return a, err
		}
		return a, json.Unmarshal(details, &a.Details)
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// storedHeaders decodes dead_letters.headers back to raw pairs.
func storedHeaders(t *testing.T, raw []byte) []inbox.Header {
	t.Helper()
	var hs []struct {
		Name  json.RawMessage `json:"name"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &hs); err != nil {
		t.Fatalf("headers %s: %v", raw, err)
	}
	out := make([]inbox.Header, len(hs))
	for i, h := range hs {
		out[i] = inbox.Header{Name: string(bytesOf(t, h.Name)), Value: bytesOf(t, h.Value)}
	}
	return out
}

func bytesOf(t *testing.T, raw json.RawMessage) []byte {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []byte(s)
	}
	var o struct {
		Base64 []byte `json:"base64"` // encoding/json decodes base64 into []byte
	}
	if err := json.Unmarshal(raw, &o); err != nil || o.Base64 == nil {
		t.Fatalf("header part %s is neither a string nor {base64}", raw)
	}
	return o.Base64
}
