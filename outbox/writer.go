package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Execer runs a statement. pgx.Tx, *pgx.Conn, *pgxpool.Pool and *pgxpool.Conn
// satisfy it; wrap a database/sql transaction with SQLTx. Pass the
// transaction that writes your business rows: the event is stored if and
// only if that transaction commits. outboxkit never commits for you.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Defaults of Config.
const (
	SchemaDefault          = "outbox"
	MaxPayloadBytesDefault = 1 << 20
)

// Config configures a Writer. The zero value (or nil) is the default used by
// the package-level Enqueue and EnqueueBatch.
type Config struct {
	// Schema is the outbox schema given to migrations.Config.OutboxSchema.
	// Default "outbox".
	Schema string
	// DisableNotify turns off the pg_notify that wakes relays at commit.
	// NOTIFY takes a database-wide lock while committing; with many
	// concurrent producers, turning it off and letting relays poll
	// (relay.Config.PollInterval) trades latency for commit throughput.
	// See docs/benchmarks.md for the measured cost.
	DisableNotify bool
	// MaxPayloadBytes refuses larger payloads. Default 1 MiB; at most 512 MiB.
	MaxPayloadBytes int
	// Source is the CloudEvents source stored with messages that do not set
	// one. Empty leaves it to the relay's configuration.
	Source string
}

// Writer enqueues messages into one outbox schema. It is safe for concurrent
// use and holds no connections.
type Writer struct {
	cfg     Config
	channel string
	stmts   statements
}

// NewWriter validates cfg and returns a Writer.
func NewWriter(cfg *Config) (*Writer, error) {
	c := Config{}
	if cfg != nil {
		c = *cfg
	}
	if c.Schema == "" {
		c.Schema = SchemaDefault
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = MaxPayloadBytesDefault
	}
	if !pgutil.ValidSchemaName(c.Schema) {
		return nil, fmt.Errorf("outbox: Config.Schema %q must be 1-63 lower-case letters, digits or underscores", c.Schema)
	}
	if c.MaxPayloadBytes < 0 || c.MaxPayloadBytes > MaxPayloadBytesCap {
		return nil, fmt.Errorf("outbox: Config.MaxPayloadBytes %d must be between 1 and %d", c.MaxPayloadBytes, MaxPayloadBytesCap)
	}
	if msg := printableText(c.Source); msg != "" || len(c.Source) > MaxSourceLen {
		return nil, fmt.Errorf("outbox: Config.Source must be printable UTF-8 of at most %d bytes", MaxSourceLen)
	}
	return &Writer{
		cfg:     c,
		channel: pgutil.NotifyChannel(c.Schema),
		stmts:   renderStatements(pgutil.Ident(c.Schema), !c.DisableNotify),
	}, nil
}

// defaultWriter serves the package-level functions. It is never modified.
var defaultWriter = func() *Writer {
	w, err := NewWriter(nil)
	if err != nil {
		panic(err)
	}
	return w
}()

// Enqueue stores msg in the caller's transaction (schema "outbox", default
// Config) and returns its event id. See Writer.Enqueue.
func Enqueue(ctx context.Context, tx Execer, msg Message) (uuid.UUID, error) {
	return defaultWriter.Enqueue(ctx, tx, msg)
}

// EnqueueBatch stores msgs in the caller's transaction (schema "outbox",
// default Config). See Writer.EnqueueBatch.
func EnqueueBatch(ctx context.Context, tx Execer, msgs []Message) ([]uuid.UUID, error) {
	return defaultWriter.EnqueueBatch(ctx, tx, msgs)
}

// Enqueue validates msg and stores it with one INSERT in tx. The event is
// published after tx commits and never if it rolls back.
//
// Errors: *ValidationError (errors.Is ErrInvalid) when msg is refused,
// nothing stored; ErrDuplicate when its ID exists. After any error from the
// database, roll tx back.
func (w *Writer) Enqueue(ctx context.Context, tx Execer, msg Message) (uuid.UUID, error) {
	id, query, args, err := w.statementFor(ctx, &msg)
	if err != nil {
		return uuid.Nil, err
	}
	tag, err := tx.Exec(ctx, query, args...)
	if err != nil {
		return uuid.Nil, w.dbError(err)
	}
	if tag.RowsAffected() != 1 {
		return uuid.Nil, fmt.Errorf("outbox: enqueue stored %d rows instead of 1; roll back the transaction", tag.RowsAffected())
	}
	return id, nil
}

// Queue validates msg and adds its INSERT to b, a pgx.Batch that the caller
// sends in its transaction together with its own statements: the enqueue
// then costs no round trip of its own. Validation errors are returned now;
// database errors (ErrDuplicate included) come from the batch results, e.g.
// tx.SendBatch(ctx, b).Close().
func (w *Writer) Queue(ctx context.Context, b *pgx.Batch, msg Message) (uuid.UUID, error) {
	id, query, args, err := w.statementFor(ctx, &msg)
	if err != nil {
		return uuid.Nil, err
	}
	b.Queue(query, args...).Fn = func(br pgx.BatchResults) error {
		tag, err := br.Exec()
		if err != nil {
			return w.dbError(err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("outbox: enqueue stored %d rows instead of 1; roll back the transaction", tag.RowsAffected())
		}
		return nil
	}
	return id, nil
}

// Queue adds msg to b with the default Config. See Writer.Queue.
func Queue(ctx context.Context, b *pgx.Batch, msg Message) (uuid.UUID, error) {
	return defaultWriter.Queue(ctx, b, msg)
}

// statementFor validates msg and returns its id and the INSERT that stores it.
func (w *Writer) statementFor(ctx context.Context, msg *Message) (uuid.UUID, string, []any, error) {
	r, err := w.prepare(ctx, msg, -1)
	if err != nil {
		return uuid.Nil, "", nil, err
	}
	var (
		query string
		args  []any
	)
	switch {
	case r.delay > 0:
		query = w.stmts.insertScheduled
		args = append(r.head(true), r.common()...)
		args = append(args, r.delay)
	case r.key == "":
		query = w.stmts.insertKeyless
		args = append(r.head(false), r.common()...)
	default:
		query = w.stmts.insertKeyed
		args = append(r.head(true), r.common()...)
	}
	if !w.cfg.DisableNotify {
		args = append(args, w.channel)
	}
	return r.id, query, args, nil
}

// Batch limits: one statement carries at most this many messages or payload
// bytes, so a batch of any size stays far from PostgreSQL's parameter and
// message size limits. All chunks run in the caller's transaction.
const (
	batchChunkMessages = 1000
	batchChunkBytes    = 16 << 20
)

// EnqueueBatch validates every message, then stores them in tx with one
// statement per chunk of up to 1,000 messages (arrays, so batches of any size
// work). Events of one key keep their order in msgs. The returned ids are in
// the order of msgs.
//
// A batch is all or nothing: if one message is invalid nothing is stored; on
// any database error, roll tx back.
func (w *Writer) EnqueueBatch(ctx context.Context, tx Execer, msgs []Message) ([]uuid.UUID, error) {
	rows := make([]row, len(msgs))
	seen := make(map[uuid.UUID]int, len(msgs))
	for i := range msgs {
		r, err := w.prepare(ctx, &msgs[i], i)
		if err != nil {
			return nil, err
		}
		if first, dup := seen[r.id]; dup {
			return nil, fmt.Errorf("%w: messages %d and %d both have id %s; nothing was stored", ErrDuplicate, first, i, r.id)
		}
		seen[r.id] = i
		rows[i] = r
	}
	var now, later []row
	for _, r := range rows {
		if r.delay > 0 {
			later = append(later, r)
		} else {
			now = append(now, r)
		}
	}
	if err := w.insertChunks(ctx, tx, now, w.stmts.insertBatch, false); err != nil {
		return nil, err
	}
	if err := w.insertChunks(ctx, tx, later, w.stmts.insertScheduledBatch, true); err != nil {
		return nil, err
	}
	ids := make([]uuid.UUID, len(rows))
	for i, r := range rows {
		ids[i] = r.id
	}
	return ids, nil
}

func (w *Writer) insertChunks(ctx context.Context, tx Execer, rows []row, query string, scheduled bool) error {
	for start := 0; start < len(rows); {
		end, size := start, 0
		for end < len(rows) && end-start < batchChunkMessages && (end == start || size+len(rows[end].payload) <= batchChunkBytes) {
			size += len(rows[end].payload)
			end++
		}
		chunk := rows[start:end]
		args := batchArgs(chunk, scheduled)
		if !w.cfg.DisableNotify {
			args = append(args, w.channel)
		}
		tag, err := tx.Exec(ctx, query, args...)
		if err != nil {
			return w.dbError(err)
		}
		if tag.RowsAffected() != int64(len(chunk)) {
			return fmt.Errorf("outbox: batch chunk stored %d of %d rows; roll back the transaction", tag.RowsAffected(), len(chunk))
		}
		start = end
	}
	return nil
}

func batchArgs(chunk []row, scheduled bool) []any {
	n := len(chunk)
	var (
		ids                          = make([]pgtype.UUID, n)
		topics, keys, types, ctypes  = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		versions                     = make([]int32, n)
		payloads                     = make([][]byte, n)
		headers                      = make([]string, n)
		corrs, causes, tps, tss, src = make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n)
		delays                       []time.Duration
	)
	if scheduled {
		delays = make([]time.Duration, n)
	}
	for i, r := range chunk {
		ids[i], topics[i], keys[i], types[i], versions[i] = pgutil.UUID(r.id), r.topic, r.key, r.typ, r.version
		payloads[i], ctypes[i], headers[i] = r.payload, r.contentType, r.headers
		corrs[i], causes[i], tps[i], tss[i], src[i] = r.correlationID, r.causationID, r.traceparent, r.tracestate, r.source
		if scheduled {
			delays[i] = r.delay
		}
	}
	args := []any{ids, topics, keys, types, versions, payloads, ctypes, headers, corrs, causes, tps, tss, src}
	if scheduled {
		return append(args, delays)
	}
	return append(args, laneArgs(chunk)...)
}

// laneArgs describes the lanes of a chunk: the distinct (topic, key) pairs
// sorted, with their event counts, and for every event its 1-based rank in
// its lane and its lane's count. Keyless events get NULLs.
func laneArgs(chunk []row) []any {
	type lane struct{ topic, key string }
	counts := map[lane]int64{}
	ranks := make([]*int64, len(chunk))
	for i, r := range chunk {
		if r.key == "" {
			continue
		}
		l := lane{r.topic, r.key}
		counts[l]++
		rank := counts[l]
		ranks[i] = &rank
	}
	lanes := make([]lane, 0, len(counts))
	for l := range counts {
		lanes = append(lanes, l)
	}
	slices.SortFunc(lanes, func(a, b lane) int {
		if c := strings.Compare(a.topic, b.topic); c != 0 {
			return c
		}
		return strings.Compare(a.key, b.key)
	})
	laneTopics, laneKeys, laneCounts := make([]string, len(lanes)), make([]string, len(lanes)), make([]int64, len(lanes))
	for i, l := range lanes {
		laneTopics[i], laneKeys[i], laneCounts[i] = l.topic, l.key, counts[l]
	}
	rowCounts := make([]*int64, len(chunk))
	for i, r := range chunk {
		if r.key != "" {
			n := counts[lane{r.topic, r.key}]
			rowCounts[i] = &n
		}
	}
	return []any{laneTopics, laneKeys, laneCounts, ranks, rowCounts}
}

// row is a validated message with defaults applied, ready for SQL.
type row struct {
	id                                                          uuid.UUID
	topic, key, typ, contentType, headers                       string
	version                                                     int32
	payload                                                     []byte
	correlationID, causationID, traceparent, tracestate, source *string
	delay                                                       time.Duration
}

func (r *row) head(withKey bool) []any {
	if withKey {
		return []any{pgutil.UUID(r.id), r.topic, r.key}
	}
	return []any{pgutil.UUID(r.id), r.topic}
}

func (r *row) common() []any {
	return []any{r.typ, r.version, r.payload, r.contentType, r.headers,
		r.correlationID, r.causationID, r.traceparent, r.tracestate, r.source}
}

func (w *Writer) prepare(ctx context.Context, m *Message, index int) (row, error) {
	if err := validate(m, index, w.cfg.MaxPayloadBytes); err != nil {
		return row{}, err
	}
	r := row{
		id: m.ID, topic: m.Topic, key: m.Key, typ: m.Type, version: int32(m.Version),
		payload: m.Payload, contentType: m.ContentType, delay: m.DeliverAfter,
		correlationID: nullable(m.CorrelationID), causationID: nullable(m.CausationID),
		traceparent: nullable(m.TraceParent), tracestate: nullable(m.TraceState),
		source: nullable(m.Source),
	}
	if r.id == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return row{}, fmt.Errorf("outbox: generate event id: %w", err)
		}
		r.id = id
	}
	if r.version == 0 {
		r.version = 1
	}
	if r.payload == nil {
		r.payload = []byte{}
	}
	if r.contentType == "" {
		if len(r.payload) > 0 && json.Valid(r.payload) {
			r.contentType = "application/json"
		} else {
			r.contentType = "application/octet-stream"
		}
	}
	if r.source == nil && w.cfg.Source != "" {
		r.source = &w.cfg.Source
	}
	if r.traceparent == nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			tp := fmt.Sprintf("00-%s-%s-%02x", sc.TraceID(), sc.SpanID(), byte(sc.TraceFlags()))
			r.traceparent = &tp
			if ts := sc.TraceState().String(); ts != "" && r.tracestate == nil {
				r.tracestate = &ts
			}
		}
	}
	if len(m.Headers) == 0 {
		r.headers = "{}"
	} else {
		b, err := json.Marshal(m.Headers)
		if err != nil {
			return row{}, fmt.Errorf("outbox: encode headers: %w", err)
		}
		r.headers = string(b)
	}
	return r, nil
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// dbError turns database errors into the package's errors, keeping the
// original (*pgconn.PgError) reachable with errors.As.
func (w *Writer) dbError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgutil.UniqueViolation &&
		(pgErr.ConstraintName == "messages_event_id_key" || pgErr.ConstraintName == "scheduled_pkey") {
		return fmt.Errorf("%w: %s; roll back the transaction: %w", ErrDuplicate, pgErr.Detail, err)
	}
	return fmt.Errorf("outbox: enqueue: %w", pgutil.MissingSchemaHint(err, w.cfg.Schema))
}

// SQLTx adapts a database/sql transaction opened through pgx's stdlib driver
// (github.com/jackc/pgx/v5/stdlib) to Execer.
func SQLTx(tx *sql.Tx) Execer { return sqlTx{tx} }

type sqlTx struct{ tx *sql.Tx }

func (s sqlTx) Exec(ctx context.Context, query string, args ...any) (pgconn.CommandTag, error) {
	res, err := s.tx.ExecContext(ctx, query, args...)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	return pgconn.NewCommandTag(fmt.Sprintf("INSERT 0 %d", n)), nil
}
