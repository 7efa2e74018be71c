// Package ingest copies messages that the brokers dead-lettered themselves
// (a RabbitMQ queue bound to a dead-letter exchange, whose messages carry
// x-death; a Kafka dead-letter topic written by Spring Kafka, Kafka Connect
// or any producer following outboxkit's header convention) into
// inbox.dead_letters, so that every failure is in one place and handled
// with the same operator verbs (outboxkit dlq ingest, list, show, replay,
// redrive, edit, drop, restore).
//
// Each broker message becomes one row, marked by ingested_from (rabbitmq or
// kafka) and identified by ingest_key, which is unique: the broker message
// is acknowledged (RabbitMQ ack, Kafka offset commit) only after its row is
// committed, and a redelivery after a crash between the two inserts
// nothing. Conversion never fails: any payload and any headers, text or
// not, nested or not, are stored faithfully.
//
// The operator tools (internal/ops) replay, redrive and edit ingested rows
// through a Republisher, which sends the original bytes and headers (or a
// corrected copy) back to where the message came from: RabbitMQ, the
// original exchange and routing key from x-death, with publisher confirms
// and mandatory routing; Kafka, the original topic. ops then marks the row
// and writes its audit entry.
package ingest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Broker names, as stored in inbox.dead_letters.ingested_from.
const (
	FromRabbitMQ = ops.BrokerRabbitMQ
	FromKafka    = ops.BrokerKafka
)

// Limits of what is stored as text; longer texts are cut (the payload and
// headers are always kept whole).
const (
	maxTopicBytes = 1 << 10
	maxErrorBytes = 8 << 10
	maxShortBytes = 1 << 10
)

// Errors callers branch on.
var (
	ErrSourceInUse = errors.New("source names an inbox consumer")
	ErrNoTarget    = errors.New("the original destination is unknown")
)

// Store writes ingested dead letters.
type Store struct {
	pool *pgxpool.Pool
	sql  statements
}

// NewStore returns a Store on the given schemas (quoted wherever they reach
// SQL).
func NewStore(pool *pgxpool.Pool, outboxSchema, inboxSchema string) (*Store, error) {
	for _, s := range []string{outboxSchema, inboxSchema} {
		if !pgutil.ValidSchemaName(s) {
			return nil, fmt.Errorf("schema %q: use 1-63 lower-case letters, digits and underscores", s)
		}
	}
	return &Store{pool: pool, sql: renderStatements(pgutil.Ident(outboxSchema), pgutil.Ident(inboxSchema))}, nil
}

// Letter is one broker dead letter, converted and ready to store.
type Letter struct {
	Source        string // stored as the consumer name
	From          string // FromRabbitMQ or FromKafka
	IngestKey     string
	EventID       uuid.UUID
	Topic         string
	Key           string
	Sequence      *int64
	Type          *string
	Version       *int
	Payload       []byte
	Headers       []byte // jsonb array of {"name","value"[,"amqp"]}
	ContentType   *string
	CorrelationID *string
	Error         string
	Class         string
	Attempts      int
	FirstFailedAt time.Time
	LastFailedAt  time.Time
	Origin        []byte // jsonb: dead_letters.source
}

// Ingest stores l unless a row with its ingest key exists. It returns the
// row id and whether this call inserted it.
func (s *Store) Ingest(ctx context.Context, l *Letter) (int64, bool, error) {
	var id int64
	err := s.pool.QueryRow(ctx, s.sql.insert, l.Source, l.EventID, l.Topic, l.Key, l.Sequence, l.Type, l.Version,
		l.Payload, l.Headers, l.ContentType, l.CorrelationID, l.Error, l.Class, l.Attempts, l.Origin,
		l.FirstFailedAt, l.LastFailedAt, l.From, l.IngestKey).Scan(&id)
	if err == nil {
		return id, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return 0, false, fmt.Errorf("store dead letter: %w", err)
	}
	if err := s.pool.QueryRow(ctx, s.sql.existing, l.IngestKey).Scan(&id); err != nil {
		return 0, false, fmt.Errorf("find the dead letter ingested before: %w", err)
	}
	return id, false, nil
}

// CheckSource refuses a source name that an inbox consumer uses: the inbox
// looks up its open dead letters by consumer name, and must never find an
// ingested row there.
func (s *Store) CheckSource(ctx context.Context, source string) error {
	if !isText([]byte(source)) || strings.TrimSpace(source) == "" || len(source) > 200 {
		return fmt.Errorf("source %q: use 1-200 bytes of UTF-8 text without NUL", source)
	}
	var used bool
	if err := s.pool.QueryRow(ctx, s.sql.sourceInUse, source).Scan(&used); err != nil {
		return fmt.Errorf("check source: %w", err)
	}
	if used {
		return fmt.Errorf("%w %q: its dead letters and the ingested ones would mix; pick another --source (the default is rabbitmq:<queue> or kafka:<topic>)", ErrSourceInUse, source)
	}
	return nil
}

// Result counts what a run ingested.
type Result struct {
	Ingested   int `json:"ingested"`   // new rows
	Duplicates int `json:"duplicates"` // broker messages ingested before (redeliveries)
}

// text cuts s to n bytes of valid UTF-8 without NUL, for text columns.
func text(s string, n int) string {
	if !isText([]byte(s)) {
		s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
	}
	if len(s) > n {
		i := n
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return s
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// idNamespace derives event ids for messages whose id is not a UUID, or
// that carry none: the same input always gives the same id.
var idNamespace = uuid.MustParse("5f0a3c1e-8d47-4b7e-9a55-0c2b7f1d9e61")

// eventID is the event id of a dead letter: the message's own id when it
// is a UUID, a UUID derived from it when it is another string, else one
// derived from the ingest key (the broker coordinates).
func eventID(own, ingestKey string) uuid.UUID {
	if own != "" {
		if u, err := uuid.Parse(own); err == nil {
			return u
		}
		return uuid.NewSHA1(idNamespace, []byte("id:"+own))
	}
	return uuid.NewSHA1(idNamespace, []byte("key:"+ingestKey))
}

func digest(parts ...[]byte) [sha256.Size]byte {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		for i, l := 0, uint64(len(p)); i < 8; i++ {
			n[i] = byte(l >> (56 - 8*i))
		}
		h.Write(n[:])
		h.Write(p)
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}
