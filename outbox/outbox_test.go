package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type storedRow struct {
	ID                                      int64
	EventID                                 uuid.UUID
	Topic, Key, Type, ContentType, Status   string
	Partition                               int
	Sequence                                *int64
	Version                                 int
	Payload                                 []byte
	Headers                                 map[string]string
	CorrelationID, CausationID, Traceparent *string
	Tracestate, Source                      *string
	AvailableAt                             pgtype.Timestamptz
	CreatedAt                               time.Time
}

func load(t *testing.T, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, id uuid.UUID) (storedRow, bool) {
	t.Helper()
	var r storedRow
	err := q.QueryRow(context.Background(), `SELECT id, event_id, topic, key, type, content_type, status, partition, sequence,
		version, payload, headers, correlation_id, causation_id, traceparent, tracestate, source, available_at, created_at
		FROM outbox.messages WHERE event_id = $1`, id).Scan(&r.ID, &r.EventID, &r.Topic, &r.Key, &r.Type, &r.ContentType,
		&r.Status, &r.Partition, &r.Sequence, &r.Version, &r.Payload, &r.Headers, &r.CorrelationID, &r.CausationID,
		&r.Traceparent, &r.Tracestate, &r.Source, &r.AvailableAt, &r.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return r, true
}

func count(t *testing.T, db *testenv.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestEnqueueCommitStoresEveryField(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	payload := []byte{0x00, 0xff, 'n', 'o', 't', ' ', 'j', 's', 'o', 'n', 0x00} // NUL and invalid UTF-8: stored as is
	msg := outbox.Message{
		Topic: "payments", Key: "payout-42", Type: "payout.created", Version: 2,
		Payload: payload, Headers: map[string]string{"tenant": "t1", "x-region": "eu-ouest-é"},
		CorrelationID: "flow-9", CausationID: "cmd-7", ContentType: "application/vnd.acme+protobuf",
		Source: "/payments-service",
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	id, err := outbox.Enqueue(ctx, tx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if id.Version() != 7 {
		t.Errorf("generated id %s is UUID version %d, want 7", id, id.Version())
	}
	if _, found := load(t, db.Pool, id); found {
		t.Fatal("event visible to another connection before commit")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r, found := load(t, db.Pool, id)
	if !found {
		t.Fatal("committed event not stored")
	}
	want := storedRow{
		ID: r.ID, EventID: id, Topic: "payments", Key: "payout-42", Type: "payout.created",
		ContentType: "application/vnd.acme+protobuf", Status: "pending", Partition: r.Partition,
		Version: 2, Payload: payload, Headers: msg.Headers,
	}
	if r.Topic != want.Topic || r.Key != want.Key || r.Type != want.Type || r.ContentType != want.ContentType ||
		r.Status != want.Status || r.Version != want.Version || !bytes.Equal(r.Payload, payload) ||
		fmt.Sprint(r.Headers) != fmt.Sprint(msg.Headers) || *r.CorrelationID != "flow-9" || *r.CausationID != "cmd-7" ||
		*r.Source != "/payments-service" || r.Traceparent != nil {
		t.Fatalf("stored %+v\nwant %+v", r, want)
	}
	if r.Sequence == nil || *r.Sequence != 1 {
		t.Fatalf("sequence = %v, want 1 (first event of the lane)", r.Sequence)
	}
	var wantPartition int
	if err := db.Pool.QueryRow(ctx, `SELECT outbox.partition_for('payout-42')`).Scan(&wantPartition); err != nil || r.Partition != wantPartition {
		t.Fatalf("partition = %d, want partition_for(key) = %d (%v)", r.Partition, wantPartition, err)
	}
}

func TestEnqueueRollbackStoresNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	id, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: "payments", Key: "k", Type: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, found := load(t, db.Pool, id); found {
		t.Fatal("rolled-back event stored")
	}
	if n := count(t, db, `SELECT count(*) FROM outbox.lanes`); n != 0 {
		t.Fatalf("rollback left %d lane rows", n)
	}
	// The lane's sequence is not consumed by the rolled-back event.
	id2, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "payments", Key: "k", Type: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := load(t, db.Pool, id2); r.Sequence == nil || *r.Sequence != 1 {
		t.Fatalf("sequence after rollback = %v, want 1", r.Sequence)
	}
}

func TestEnqueueDefaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	jsonID, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Type: "x", Payload: []byte(`{"amount":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	binID, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Type: "x", Payload: []byte("plain")})
	if err != nil {
		t.Fatal(err)
	}
	emptyID, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	j, _ := load(t, db.Pool, jsonID)
	b, _ := load(t, db.Pool, binID)
	e, _ := load(t, db.Pool, emptyID)
	if j.ContentType != "application/json" || b.ContentType != "application/octet-stream" || e.ContentType != "application/octet-stream" {
		t.Fatalf("content types %q %q %q", j.ContentType, b.ContentType, e.ContentType)
	}
	if j.Version != 1 || j.Sequence != nil || j.Key != "" || len(e.Payload) != 0 {
		t.Fatalf("defaults: version %d sequence %v key %q payload %v", j.Version, j.Sequence, j.Key, e.Payload)
	}
}

func TestEnqueueDuplicateID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	id := uuid.Must(uuid.NewV7())
	if _, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{ID: id, Topic: "t", Key: "k", Type: "x"}); err != nil {
		t.Fatal(err)
	}
	for name, msg := range map[string]outbox.Message{
		"keyed":   {ID: id, Topic: "t", Key: "k", Type: "x"},
		"keyless": {ID: id, Topic: "t", Type: "x"},
		"delayed": {ID: id, Topic: "t", Type: "x", DeliverAfter: time.Hour},
	} {
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = outbox.Enqueue(ctx, tx, msg)
		tx.Rollback(ctx) //nolint:errcheck
		if !errors.Is(err, outbox.ErrDuplicate) {
			t.Errorf("%s: err = %v, want ErrDuplicate", name, err)
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Errorf("%s: the PostgreSQL error is not reachable with errors.As: %v", name, err)
		}
	}
	// A delayed event's id is also taken.
	delayed := uuid.Must(uuid.NewV7())
	if _, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{ID: delayed, Topic: "t", Type: "x", DeliverAfter: time.Hour}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"k", ""} {
		_, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{ID: delayed, Topic: "t", Key: key, Type: "x"})
		if !errors.Is(err, outbox.ErrDuplicate) {
			t.Errorf("immediate event reusing a scheduled id (key %q): err = %v, want ErrDuplicate", key, err)
		}
	}
	// Inside a batch, against the table and within the batch itself.
	_, err := outbox.EnqueueBatch(ctx, db.Pool, []outbox.Message{{Topic: "t", Type: "x"}, {ID: id, Topic: "t", Type: "x"}})
	if !errors.Is(err, outbox.ErrDuplicate) {
		t.Errorf("batch with an existing id: err = %v", err)
	}
	dup := uuid.Must(uuid.NewV7())
	_, err = outbox.EnqueueBatch(ctx, db.Pool, []outbox.Message{{ID: dup, Topic: "t", Type: "x"}, {ID: dup, Topic: "t", Type: "x"}})
	if !errors.Is(err, outbox.ErrDuplicate) || !strings.Contains(err.Error(), "messages 0 and 1") {
		t.Errorf("batch with an id twice: err = %v", err)
	}
	if n := count(t, db, `SELECT count(*) FROM outbox.messages`); n != 1 {
		t.Fatalf("%d messages stored, want only the first", n)
	}
	if n := count(t, db, `SELECT last_sequence FROM outbox.lanes WHERE key = 'k'`); n != 1 {
		t.Fatalf("lane sequence = %d after refused duplicates, want 1", n)
	}
}

func TestEnqueueRefusesBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	ok := outbox.Message{Topic: "payments", Key: "k", Type: "payout.created"}
	with := func(f func(*outbox.Message)) outbox.Message { m := ok; f(&m); return m }
	cases := []struct {
		name  string
		msg   outbox.Message
		field string
	}{
		{"empty topic", with(func(m *outbox.Message) { m.Topic = "" }), "Topic"},
		{"long topic", with(func(m *outbox.Message) { m.Topic = strings.Repeat("t", outbox.MaxTopicLen+1) }), "Topic"},
		{"topic with SQL", with(func(m *outbox.Message) { m.Topic = "x'; DROP TABLE outbox.messages; --" }), "Topic"},
		{"topic with shell", with(func(m *outbox.Message) { m.Topic = "$(rm -rf /)" }), "Topic"},
		{"topic dot", with(func(m *outbox.Message) { m.Topic = ".." }), "Topic"},
		{"empty type", with(func(m *outbox.Message) { m.Type = "" }), "Type"},
		{"long type", with(func(m *outbox.Message) { m.Type = strings.Repeat("t", outbox.MaxTypeLen+1) }), "Type"},
		{"type control char", with(func(m *outbox.Message) { m.Type = "a\nb" }), "Type"},
		{"long key", with(func(m *outbox.Message) { m.Key = strings.Repeat("k", outbox.MaxKeyLen+1) }), "Key"},
		{"key NUL", with(func(m *outbox.Message) { m.Key = "a\x00b" }), "Key"},
		{"key invalid UTF-8", with(func(m *outbox.Message) { m.Key = "a\xffb" }), "Key"},
		{"payload too big", with(func(m *outbox.Message) { m.Payload = make([]byte, outbox.MaxPayloadBytesDefault+1) }), "Payload"},
		{"header not a token", with(func(m *outbox.Message) { m.Headers = map[string]string{"bad name": "v"} }), `Headers["bad name"]`},
		{"header empty name", with(func(m *outbox.Message) { m.Headers = map[string]string{"": "v"} }), "Headers"},
		{"header reserved", with(func(m *outbox.Message) { m.Headers = map[string]string{"ce_id": "v"} }), `Headers["ce_id"]`},
		{"header reserved for operators", with(func(m *outbox.Message) { m.Headers = map[string]string{"outboxkit-replay-to": "billing"} }), `Headers["outboxkit-replay-to"]`},
		{"header content-type", with(func(m *outbox.Message) { m.Headers = map[string]string{"Content-Type": "v"} }), `Headers["Content-Type"]`},
		{"header value NUL", with(func(m *outbox.Message) { m.Headers = map[string]string{"h": "\x00"} }), `Headers["h"]`},
		{"header value invalid UTF-8", with(func(m *outbox.Message) { m.Headers = map[string]string{"h": "\xc3\x28"} }), `Headers["h"]`},
		{"header value too long", with(func(m *outbox.Message) {
			m.Headers = map[string]string{"h": strings.Repeat("v", outbox.MaxHeaderValueLen+1)}
		}), `Headers["h"]`},
		{"too many headers", with(func(m *outbox.Message) {
			m.Headers = map[string]string{}
			for i := 0; i <= outbox.MaxHeaders; i++ {
				m.Headers[fmt.Sprintf("h%d", i)] = "v"
			}
		}), "Headers"},
		{"negative version", with(func(m *outbox.Message) { m.Version = -1 }), "Version"},
		{"negative delay", with(func(m *outbox.Message) { m.DeliverAfter = -time.Second }), "DeliverAfter"},
		{"correlation id control", with(func(m *outbox.Message) { m.CorrelationID = "a\x1b[31m" }), "CorrelationID"},
		{"long causation id", with(func(m *outbox.Message) { m.CausationID = strings.Repeat("c", outbox.MaxIDLen+1) }), "CausationID"},
		{"bad content type", with(func(m *outbox.Message) { m.ContentType = "not a type;;" }), "ContentType"},
		{"bad traceparent", with(func(m *outbox.Message) { m.TraceParent = "00-xyz" }), "TraceParent"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := outbox.Enqueue(ctx, db.Pool, c.msg)
			var ve *outbox.ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, outbox.ErrInvalid) {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			if ve.Field != c.field || ve.Index != -1 {
				t.Fatalf("field %q index %d, want %q -1 (%v)", ve.Field, ve.Index, c.field, err)
			}
			_, err = outbox.EnqueueBatch(ctx, db.Pool, []outbox.Message{ok, ok, c.msg})
			if !errors.As(err, &ve) || ve.Index != 2 {
				t.Fatalf("batch: err = %v, want *ValidationError at index 2", err)
			}
		})
	}
	if n := count(t, db, `SELECT count(*) FROM outbox.messages`); n != 0 {
		t.Fatalf("refused input stored %d rows", n)
	}
	// A custom limit.
	w, err := outbox.NewWriter(&outbox.Config{MaxPayloadBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Type: "x", Payload: make([]byte, 11)}); !errors.Is(err, outbox.ErrInvalid) {
		t.Fatalf("custom MaxPayloadBytes: %v", err)
	}
}

func TestNewWriterRefusesBadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []outbox.Config{
		{Schema: `outbox"; DROP SCHEMA public; --`},
		{MaxPayloadBytes: -1},
		{MaxPayloadBytes: outbox.MaxPayloadBytesCap + 1},
		{Source: "a\nb"},
	} {
		if _, err := outbox.NewWriter(&cfg); err == nil {
			t.Errorf("NewWriter(%+v) accepted", cfg)
		}
	}
}

func TestEnqueueMissingSchemaSaysWhatToDo(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	_, err := outbox.Enqueue(context.Background(), db.Pool, outbox.Message{Topic: "t", Key: "k", Type: "x"})
	if err == nil || !strings.Contains(err.Error(), "outboxkit migrate up") {
		t.Fatalf("err = %v, want a hint to run migrations", err)
	}
}

func TestEnqueueBatch10000(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	msgs := make([]outbox.Message, 10_000)
	for i := range msgs {
		msgs[i] = outbox.Message{Topic: "payments", Key: fmt.Sprintf("acct-%d", i%50), Type: "transfer.created",
			Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
		if i%10 == 0 {
			msgs[i].Key = "" // keyless ones mixed in
		}
		if i%1000 == 7 {
			msgs[i].DeliverAfter = time.Hour
		}
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	ids, err := outbox.EnqueueBatch(ctx, tx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if len(ids) != len(msgs) {
		t.Fatalf("%d ids for %d messages", len(ids), len(msgs))
	}
	if n := count(t, db, `SELECT count(*) FROM outbox.messages`) + count(t, db, `SELECT count(*) FROM outbox.scheduled`); n != 10_000 {
		t.Fatalf("stored %d, want 10000", n)
	}
	if n := count(t, db, `SELECT count(*) FROM outbox.scheduled`); n != 10 {
		t.Fatalf("scheduled %d, want 10", n)
	}
	// Each lane holds 1..n in input order, and ids follow the input order.
	rows, err := db.Pool.Query(ctx, `SELECT event_id, key, sequence FROM outbox.messages ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[uuid.UUID]int{}
	for i, id := range ids {
		pos[id] = i
	}
	last := map[string]int64{}
	prev := -1
	for rows.Next() {
		var id uuid.UUID
		var key string
		var seq *int64
		if err := rows.Scan(&id, &key, &seq); err != nil {
			t.Fatal(err)
		}
		if pos[id] <= prev {
			t.Fatalf("id order differs from input order at input %d", pos[id])
		}
		prev = pos[id]
		if key == "" {
			continue
		}
		if seq == nil || *seq != last[key]+1 {
			t.Fatalf("lane %s: sequence %v after %d", key, seq, last[key])
		}
		last[key] = *seq
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
}

// Two transactions enqueue for one key at once; the second waits for the
// first, so sequence order is commit order and there are no gaps.
func TestSameKeyConcurrentTransactionsSerialise(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	tx1, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, err := outbox.Enqueue(ctx, tx1, outbox.Message{Topic: "payments", Key: "acct-1", Type: "debit"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan uuid.UUID)
	go func() {
		tx2, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Error(err)
			close(done)
			return
		}
		id, err := outbox.Enqueue(ctx, tx2, outbox.Message{Topic: "payments", Key: "acct-1", Type: "credit"})
		if err != nil {
			t.Error(err)
		}
		if err := tx2.Commit(ctx); err != nil {
			t.Error(err)
		}
		done <- id
	}()
	select {
	case <-done:
		t.Fatal("second transaction enqueued for the same key while the first was open")
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	second := <-done
	a, _ := load(t, db.Pool, first)
	b, _ := load(t, db.Pool, second)
	if *a.Sequence != 1 || *b.Sequence != 2 || a.ID >= b.ID {
		t.Fatalf("first: seq %d id %d, second: seq %d id %d", *a.Sequence, a.ID, *b.Sequence, b.ID)
	}
}

func TestSixteenConcurrentProducers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	const producers, each = 16, 50
	var wg sync.WaitGroup
	var mu sync.Mutex
	committed := map[uuid.UUID]bool{}
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `SELECT 1`); err != nil { // stands in for the business write
						return err
					}
					id, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: "payments", Key: fmt.Sprintf("acct-%d", i%5), Type: "t"})
					if err != nil {
						return err
					}
					if i%7 == 3 {
						return errRollback
					}
					mu.Lock()
					committed[id] = true
					mu.Unlock()
					return nil
				})
				if err != nil && !errors.Is(err, errRollback) {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	rows, err := db.Pool.Query(ctx, `SELECT event_id, key, sequence FROM outbox.messages ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	last := map[string]int64{}
	stored := 0
	for rows.Next() {
		var id uuid.UUID
		var key string
		var seq int64
		if err := rows.Scan(&id, &key, &seq); err != nil {
			t.Fatal(err)
		}
		stored++
		if !committed[id] {
			t.Errorf("event %s stored but its transaction rolled back", id)
		}
		if seq != last[key]+1 {
			t.Errorf("lane %s: sequence %d after %d (gap or reorder)", key, seq, last[key])
		}
		last[key] = seq
	}
	if stored != len(committed) {
		t.Fatalf("stored %d events, committed %d", stored, len(committed))
	}
}

var errRollback = errors.New("roll back on purpose")

func TestEnqueueAcceptsConnPoolAndSQLTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := outbox.Enqueue(ctx, conn, outbox.Message{Topic: "t", Key: "a", Type: "x"}); err != nil {
		t.Fatalf("*pgx.Conn: %v", err)
	}
	if _, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "a", Type: "x"}); err != nil {
		t.Fatalf("*pgxpool.Pool: %v", err)
	}

	sqlDB, err := sql.Open("pgx", db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	_ = stdlib.GetDefaultDriver()
	stx, err := sqlDB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := outbox.Enqueue(ctx, outbox.SQLTx(stx), outbox.Message{Topic: "t", Key: "a", Type: "x", Headers: map[string]string{"h": "v"}})
	if err != nil {
		t.Fatalf("*sql.Tx: %v", err)
	}
	ids, err := outbox.EnqueueBatch(ctx, outbox.SQLTx(stx), []outbox.Message{{Topic: "t", Key: "a", Type: "x"}, {Topic: "t", Type: "y", DeliverAfter: time.Minute}})
	if err != nil || len(ids) != 2 {
		t.Fatalf("*sql.Tx batch: %v", err)
	}
	if _, err := outbox.Enqueue(ctx, outbox.SQLTx(stx), outbox.Message{ID: id, Topic: "t", Type: "x"}); !errors.Is(err, outbox.ErrDuplicate) {
		t.Fatalf("*sql.Tx duplicate: %v", err)
	}
	stx.Rollback() //nolint:errcheck
	if n := count(t, db, `SELECT count(*) FROM outbox.messages`); n != 2 {
		t.Fatalf("%d messages, want the 2 enqueued outside the rolled-back sql.Tx", n)
	}
}

func TestEnqueueCapturesTraceContext(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ts, _ := trace.ParseTraceState("vendor=abc")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled, TraceState: ts,
	}))
	id, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Type: "x"})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := load(t, db.Pool, id)
	if r.Traceparent == nil || *r.Traceparent != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" ||
		r.Tracestate == nil || *r.Tracestate != "vendor=abc" {
		t.Fatalf("traceparent %v tracestate %v", r.Traceparent, r.Tracestate)
	}
	explicit := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
	id, err = outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Type: "x", TraceParent: explicit})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := load(t, db.Pool, id); *r.Traceparent != explicit {
		t.Fatalf("explicit traceparent overridden: %s", *r.Traceparent)
	}
}

// One NOTIFY per committing transaction, none on rollback, none when disabled.
func TestEnqueueNotifiesOncePerTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	listener, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, `LISTEN outboxkit_outbox`); err != nil {
		t.Fatal(err)
	}
	notifications := func() int {
		n := 0
		for {
			wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err := listener.WaitForNotification(wctx)
			cancel()
			if err != nil {
				return n
			}
			n++
		}
	}
	// Producers notify only while some live relay is idle.
	relay := func(idle bool, aliveFor string) {
		t.Helper()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox.relays (relay_id, hostname, pid, version, alive_until, idle)
			VALUES ('r1', 'h', 1, 'test', now() + $1::interval, $2)
			ON CONFLICT (relay_id) DO UPDATE SET alive_until = EXCLUDED.alive_until, idle = EXCLUDED.idle`, aliveFor, idle); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name     string
		idle     bool
		aliveFor string
	}{{"no relay", false, ""}, {"busy relay", false, "1 minute"}, {"dead idle relay", true, "-1 minute"}} {
		if c.aliveFor != "" {
			relay(c.idle, c.aliveFor)
		}
		if _, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "k", Type: "x"}); err != nil {
			t.Fatal(err)
		}
		if n := notifications(); n != 0 {
			t.Fatalf("%s: %d notifications, want none", c.name, n)
		}
	}
	relay(true, "1 minute")

	tx, _ := db.Pool.Begin(ctx)
	for i := 0; i < 3; i++ {
		if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: "t", Key: fmt.Sprint(i), Type: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := outbox.EnqueueBatch(ctx, tx, []outbox.Message{{Topic: "t", Type: "x"}, {Topic: "t", Type: "x", DeliverAfter: time.Second}}); err != nil {
		t.Fatal(err)
	}
	tx.Commit(ctx) //nolint:errcheck
	if n := notifications(); n != 1 {
		t.Fatalf("commit of 5 events: %d notifications, want 1", n)
	}
	tx, _ = db.Pool.Begin(ctx)
	outbox.Enqueue(ctx, tx, outbox.Message{Topic: "t", Type: "x"}) //nolint:errcheck
	tx.Rollback(ctx)                                               //nolint:errcheck
	if n := notifications(); n != 0 {
		t.Fatalf("rollback: %d notifications", n)
	}
	quiet, err := outbox.NewWriter(&outbox.Config{DisableNotify: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []outbox.Message{{Topic: "t", Key: "k", Type: "x"}, {Topic: "t", Type: "x"}, {Topic: "t", Type: "x", DeliverAfter: time.Second}} {
		if _, err := quiet.Enqueue(ctx, db.Pool, m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := quiet.EnqueueBatch(ctx, db.Pool, []outbox.Message{{Topic: "t", Type: "x"}, {Topic: "t", Type: "x", DeliverAfter: time.Second}}); err != nil {
		t.Fatal(err)
	}
	if n := notifications(); n != 0 {
		t.Fatalf("DisableNotify: %d notifications", n)
	}
}

func TestDelayedEventIsScheduled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	id, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "k", Type: "x", DeliverAfter: 90 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, found := load(t, db.Pool, id); found {
		t.Fatal("delayed event went straight to messages")
	}
	var delay float64
	if err := db.Pool.QueryRow(ctx, `SELECT extract(epoch FROM due_at - now()) FROM outbox.scheduled WHERE event_id = $1`, id).Scan(&delay); err != nil {
		t.Fatal(err)
	}
	if delay < 85 || delay > 91 {
		t.Fatalf("due in %.1fs, want about 90s", delay)
	}
	if n := count(t, db, `SELECT count(*) FROM outbox.lanes`); n != 0 {
		t.Fatal("a delayed event took a sequence number at enqueue; it must take one when due")
	}
}

// An event enqueued behind a parked event of its key is stored as blocked.
func TestEnqueueIntoHeldLane(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if _, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "parked", Type: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "backoff", Type: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.lanes SET hold_until = 'infinity' WHERE key = 'parked';
		UPDATE outbox.lanes SET hold_until = now() + interval '1 hour' WHERE key = 'backoff'`); err != nil {
		t.Fatal(err)
	}
	parked, _ := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "parked", Type: "x"})
	backoff, _ := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Key: "backoff", Type: "x"})
	ids, err := outbox.EnqueueBatch(ctx, db.Pool, []outbox.Message{{Topic: "t", Key: "parked", Type: "x"}, {Topic: "t", Key: "free", Type: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := load(t, db.Pool, parked)
	b, _ := load(t, db.Pool, backoff)
	bp, _ := load(t, db.Pool, ids[0])
	bf, _ := load(t, db.Pool, ids[1])
	if p.Status != "blocked" || bp.Status != "blocked" || b.Status != "pending" || bf.Status != "pending" {
		t.Fatalf("statuses: parked lane %s/%s, backoff lane %s, free lane %s", p.Status, bp.Status, b.Status, bf.Status)
	}
	if p.AvailableAt.InfinityModifier != pgtype.Infinity {
		t.Fatalf("event behind a parked head is available at %v, want infinity", p.AvailableAt)
	}
	if time.Until(b.AvailableAt.Time) < 50*time.Minute {
		t.Fatalf("event behind a backing-off head is available at %s, want about an hour from now", b.AvailableAt.Time)
	}
}

func TestHeadersRoundTripAsJSONObject(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	h := map[string]string{"tenant": "t1", "quote": `"x"`, "unicode": "€ ✓"}
	id, err := outbox.Enqueue(ctx, db.Pool, outbox.Message{Topic: "t", Type: "x", Headers: h})
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	if err := db.Pool.QueryRow(ctx, `SELECT headers::text FROM outbox.messages WHERE event_id = $1`, id).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(raw, &got); err != nil || fmt.Sprint(got) != fmt.Sprint(h) {
		t.Fatalf("headers %s (%v)", raw, err)
	}
}

// Queue puts the enqueue into the caller's pgx.Batch: one round trip for the
// business write and the event, and the same errors as Enqueue.
func TestQueueInCallersBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE transfers (id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	var id uuid.UUID
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO transfers (id) VALUES ('tr-1')`)
		var err error
		if id, err = outbox.Queue(ctx, b, outbox.Message{Topic: "payments", Key: "acct-1", Type: "transfer.created"}); err != nil {
			return err
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	if r, found := load(t, db.Pool, id); !found || *r.Sequence != 1 {
		t.Fatalf("queued event: found %v %+v", found, r)
	}
	// Validation errors are immediate; duplicates come back from the batch.
	b := &pgx.Batch{}
	if _, err := outbox.Queue(ctx, b, outbox.Message{Topic: "", Type: "x"}); !errors.Is(err, outbox.ErrInvalid) || b.Len() != 0 {
		t.Fatalf("invalid message: err %v, batch len %d", err, b.Len())
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := outbox.Queue(ctx, b, outbox.Message{ID: id, Topic: "payments", Type: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.SendBatch(ctx, b).Close(); !errors.Is(err, outbox.ErrDuplicate) {
		t.Fatalf("duplicate in batch: %v", err)
	}
}
