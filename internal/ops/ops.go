// Package ops is what the operator tools (outboxkit dlq, lanes, trace,
// stats, and the dashboard) do to the outbox and inbox tables. Every action
// writes its outbox.audit_log entry (actor, reason, before and after) in the
// same transaction as the change, so an action and its audit entry commit
// together or not at all.
package ops

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Errors callers branch on.
var (
	ErrNotFound    = errors.New("not found")
	ErrWrongStatus = errors.New("not in a state that allows this action")
	ErrNoActor     = errors.New("an actor is required: pass --actor or set OUTBOXKIT_ACTOR")
	ErrNoReason    = errors.New("a reason is required: pass --reason")
	ErrBadRef      = errors.New("bad reference: use o:<id> for an outbox event, i:<id> for an inbox dead letter, or an event id")
)

// Store runs operator reads and actions.
type Store struct {
	pool *pgxpool.Pool
	sql  statements
	in   inboxStatements    // inbox dead letters (inbox.go)
	ap   approvalStatements // the two-person rule (approvals.go)

	republisher Republisher // sends broker dead letters back (ingested.go); nil: none
}

// New returns a Store on the given schemas (quoted wherever they reach SQL).
func New(pool *pgxpool.Pool, outboxSchema, inboxSchema string) (*Store, error) {
	for _, s := range []string{outboxSchema, inboxSchema} {
		if !pgutil.ValidSchemaName(s) {
			return nil, fmt.Errorf("schema %q: use 1-63 lower-case letters, digits and underscores", s)
		}
	}
	return &Store{pool: pool, sql: renderStatements(pgutil.Ident(outboxSchema), pgutil.Ident(inboxSchema)),
		in: renderInboxStatements(pgutil.Ident(outboxSchema), pgutil.Ident(inboxSchema)),
		ap: renderApprovalStatements(pgutil.Ident(outboxSchema))}, nil
}

// Kind is where a failed event lives.
type Kind string

const (
	KindOutbox Kind = "outbox" // a parked outbox event (not delivered to the broker)
	KindInbox  Kind = "inbox"  // an inbox dead letter (not applied by a consumer)
)

// Ref names one failed event: o:<row id>, i:<dead letter id>, or an event id
// (the outbox row of that event).
type Ref struct {
	Kind Kind
	ID   int64
}

func (r Ref) String() string {
	if r.Kind == KindInbox {
		return "i:" + strconv.FormatInt(r.ID, 10)
	}
	return "o:" + strconv.FormatInt(r.ID, 10)
}

// ParseRef parses o:123, i:45, a bare number (outbox) or an event UUID.
func (s *Store) ParseRef(ctx context.Context, text string) (Ref, error) {
	text = strings.TrimSpace(text)
	kind := KindOutbox
	switch {
	case strings.HasPrefix(text, "o:"):
		text = text[2:]
	case strings.HasPrefix(text, "i:"):
		kind, text = KindInbox, text[2:]
	}
	if id, err := strconv.ParseInt(text, 10, 64); err == nil && id > 0 {
		return Ref{kind, id}, nil
	}
	if u, err := uuid.Parse(text); err == nil && kind == KindOutbox {
		var id int64
		if err := s.pool.QueryRow(ctx, s.sql.messageIDByEvent, u).Scan(&id); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return Ref{}, fmt.Errorf("event %s: %w in the outbox", u, ErrNotFound)
			}
			return Ref{}, err
		}
		return Ref{KindOutbox, id}, nil
	}
	return Ref{}, fmt.Errorf("%q: %w", text, ErrBadRef)
}

// Filter selects failed events. Empty fields match everything.
type Filter struct {
	Kind      Kind      `json:"kind,omitzero"` // "" both
	Topic     string    `json:"topic,omitzero"`
	Key       string    `json:"key,omitzero"`
	Consumer  string    `json:"consumer,omitzero"` // inbox only; setting it implies Kind inbox
	Class     string    `json:"class,omitzero"`
	ErrorText string    `json:"error,omitzero"` // case-insensitive substring of the error
	From      time.Time `json:"from,omitzero"`
	To        time.Time `json:"to,omitzero"`
	Dropped   bool      `json:"dropped,omitzero"` // list dropped instead of parked/blocked
	Limit     int       `json:"limit,omitzero"`   // default 100
}

// Item is one failed event in a listing.
type Item struct {
	Ref             Ref       `json:"ref"`
	Kind            Kind      `json:"kind"`
	EventID         string    `json:"event_id"`
	Topic           string    `json:"topic"`
	Key             string    `json:"key,omitempty"`
	Sequence        int64     `json:"sequence,omitempty"`
	Type            string    `json:"type"`
	Version         int       `json:"version"`
	Status          string    `json:"status"`
	Attempts        int       `json:"attempts"`
	ErrorClass      string    `json:"error_class"`
	Error           string    `json:"error"`
	CorrelationID   string    `json:"correlation_id,omitempty"`
	Consumer        string    `json:"consumer,omitempty"`
	ConsumerVersion string    `json:"consumer_version,omitempty"`
	FirstFailedAt   time.Time `json:"first_failed_at"`
	LastFailedAt    time.Time `json:"last_failed_at"`
	PayloadBytes    int       `json:"payload_bytes"`
	Waiting         int       `json:"waiting,omitempty"` // later events of the key held behind it
	Request         *Request  `json:"request,omitempty"` // inbox: the latest operator request and its outcome
	// IngestedFrom is rabbitmq or kafka for a dead letter the broker made
	// and outboxkit dlq ingest copied: a replay sends it back there.
	IngestedFrom string `json:"ingested_from,omitempty"`
}

// MarshalText makes Ref print as o:1 / i:2 in JSON.
func (r Ref) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

func nullStr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// List returns failed events matching f: parked (and blocked) outbox events
// and inbox dead letters, in key order.
func (s *Store) List(ctx context.Context, f Filter) ([]Item, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	var out []Item
	if f.Kind != KindInbox && f.Consumer == "" {
		statuses := []string{"parked"}
		if f.Dropped {
			statuses = []string{"dropped"}
		}
		rows, err := s.pool.Query(ctx, s.sql.listParked, statuses, nullStr(f.Topic), nullStr(f.Key), nullStr(f.Class),
			nullStr(f.ErrorText), nullTime(f.From), nullTime(f.To), f.Limit)
		if err != nil {
			return nil, err
		}
		var it Item
		var eventID uuid.UUID
		var parkedAt *time.Time
		_, err = pgx.ForEachRow(rows, []any{&it.Ref.ID, &eventID, &it.Topic, &it.Key, &it.Sequence, &it.Type, &it.Version,
			&it.Status, &it.Attempts, &it.ErrorClass, &it.Error, &it.CorrelationID, &it.FirstFailedAt, &parkedAt,
			&it.PayloadBytes, &it.Waiting}, func() error {
			c := it
			c.Ref.Kind, c.Kind, c.EventID = KindOutbox, KindOutbox, eventID.String()
			if parkedAt != nil {
				c.LastFailedAt = *parkedAt
			}
			out = append(out, c)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if f.Kind != KindOutbox {
		statuses := []string{"parked", "blocked"}
		if f.Dropped {
			statuses = []string{"dropped"}
		}
		rows, err := s.pool.Query(ctx, s.sql.listDeadLetters, statuses, nullStr(f.Topic), nullStr(f.Key), nullStr(f.Class),
			nullStr(f.ErrorText), nullTime(f.From), nullTime(f.To), nullStr(f.Consumer), f.Limit)
		if err != nil {
			return nil, err
		}
		var it Item
		_, err = pgx.ForEachRow(rows, []any{&it.Ref.ID, &it.EventID, &it.Topic, &it.Key, &it.Sequence, &it.Type, &it.Version,
			&it.Status, &it.Attempts, &it.ErrorClass, &it.Error, &it.CorrelationID, &it.Consumer, &it.ConsumerVersion,
			&it.FirstFailedAt, &it.LastFailedAt, &it.PayloadBytes, &it.IngestedFrom}, func() error {
			c := it
			c.Ref.Kind, c.Kind = KindInbox, KindInbox
			out = append(out, c)
			return nil
		})
		if err != nil {
			return nil, err
		}
		if err := s.attachRequests(ctx, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Attempt is one entry of an event's attempt history.
type Attempt struct {
	Attempt    int       `json:"attempt"`
	At         time.Time `json:"at"`
	DurationMS int       `json:"duration_ms"`
	Relay      string    `json:"relay,omitempty"`
	Outcome    string    `json:"outcome"`
	ErrorClass string    `json:"error_class,omitempty"`
	Error      string    `json:"error,omitempty"`
	BrokerAck  string    `json:"broker_ack,omitempty"`
}

// Detail is everything known about one failed event. In the Headers of an
// inbox dead letter, bytes that are not text are shown as "base64:<...>" and
// a repeated name as name#2, name#3 (see inboxHeaders).
type Detail struct {
	Item
	Partition   int               `json:"partition,omitempty"`
	ContentType string            `json:"content_type"`
	Headers     map[string]string `json:"headers"`
	CausationID string            `json:"causation_id,omitempty"`
	TraceParent string            `json:"traceparent,omitempty"`
	Source      string            `json:"source,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	PublishedAt *time.Time        `json:"published_at,omitempty"`
	BrokerAck   string            `json:"broker_ack,omitempty"`
	BlockedBy   int64             `json:"blocked_by,omitempty"`
	Payload     []byte            `json:"payload"`
	History     []Attempt         `json:"attempts_history"`
	// Origin says where a broker dead letter (Item.IngestedFrom) came from:
	// x-death, original exchange and routing key, or original topic.
	Origin   map[string]any `json:"origin,omitempty"`
	Requests []Request      `json:"requests,omitempty"` // inbox: operator requests, oldest first
}

// inboxHeaders reads inbox.dead_letters.headers as the inbox writes them
// (inbox/decode.go, encodeHeaders): a JSON array of {"name", "value"} in
// received order, where a name or value that jsonb cannot hold byte for
// byte (not valid UTF-8, or with NUL) is {"base64": "..."}. Such bytes are
// shown as "base64:<standard base64>"; the second and later headers of a
// repeated name are shown as name#2, name#3... A value that is not in that
// format (never written by the inbox) is shown whole under "(unreadable)",
// so Show still answers.
func inboxHeaders(raw []byte) map[string]string {
	var list []struct {
		Name  json.RawMessage `json:"name"`
		Value json.RawMessage `json:"value"`
	}
	out := map[string]string{}
	unreadable := func() map[string]string { return map[string]string{"(unreadable)": string(raw)} }
	if err := json.Unmarshal(raw, &list); err != nil {
		return unreadable()
	}
	for _, h := range list {
		name, ok1 := headerText(h.Name)
		value, ok2 := headerText(h.Value)
		if !ok1 || !ok2 {
			return unreadable()
		}
		key := name
		for n := 2; ; n++ {
			if _, taken := out[key]; !taken {
				break
			}
			key = fmt.Sprintf("%s#%d", name, n)
		}
		out[key] = value
	}
	return out
}

// headerText reads one name or value of inbox headers: a JSON string, or
// {"base64": "..."} shown as "base64:...".
func headerText(raw json.RawMessage) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true
	}
	var b struct {
		Base64 *string `json:"base64"`
	}
	if err := json.Unmarshal(raw, &b); err != nil || b.Base64 == nil {
		return "", false
	}
	if _, err := base64.StdEncoding.DecodeString(*b.Base64); err != nil {
		return "", false
	}
	return "base64:" + *b.Base64, true
}

// Show returns one failed (or any) event with its payload and history.
func (s *Store) Show(ctx context.Context, ref Ref) (*Detail, error) {
	d := &Detail{}
	d.Ref, d.Kind = ref, ref.Kind
	var history pgx.Rows
	var err error
	switch ref.Kind {
	case KindOutbox:
		var eventID uuid.UUID
		var parkedAt *time.Time
		err = s.pool.QueryRow(ctx, s.sql.showMessage, ref.ID).Scan(&d.Ref.ID, &eventID, &d.Topic, &d.Key, &d.Sequence,
			&d.Partition, &d.Type, &d.Version, &d.Payload, &d.ContentType, &d.Headers, &d.CorrelationID, &d.CausationID,
			&d.TraceParent, &d.Source, &d.Status, &d.Attempts, new(time.Time), &d.CreatedAt, &d.PublishedAt,
			new(string), &d.BrokerAck, &d.Error, &d.ErrorClass, &parkedAt)
		if err == nil {
			d.EventID = eventID.String()
			d.PayloadBytes = len(d.Payload)
			if parkedAt != nil {
				d.LastFailedAt = *parkedAt
			}
			history, err = s.pool.Query(ctx, s.sql.attempts, ref.ID)
		}
	case KindInbox:
		var headers []byte
		var blockedBy *int64
		var source map[string]any
		err = s.pool.QueryRow(ctx, s.sql.showDeadLetter, ref.ID).Scan(&d.Ref.ID, &d.EventID, &d.Topic, &d.Key, &d.Sequence,
			&d.Type, &d.Version, &d.Payload, &headers, &d.ContentType, &d.CorrelationID, &d.Status, &d.Attempts,
			&d.ErrorClass, &d.Error, &d.Consumer, &d.ConsumerVersion, &d.FirstFailedAt, &d.LastFailedAt, &blockedBy, &source,
			&d.IngestedFrom)
		if err == nil {
			d.PayloadBytes = len(d.Payload)
			d.Headers = inboxHeaders(headers)
			if d.IngestedFrom != "" {
				d.Origin = source
			}
			if blockedBy != nil {
				d.BlockedBy = *blockedBy
			}
			var eventID *uuid.UUID
			if u, perr := uuid.Parse(d.EventID); perr == nil {
				eventID = &u
			}
			history, err = s.pool.Query(ctx, s.sql.deadLetterAttempts, ref.ID, eventID, d.Consumer)
		}
	default:
		return nil, ErrBadRef
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var a Attempt
	_, err = pgx.ForEachRow(history, []any{&a.Attempt, &a.At, &a.DurationMS, &a.Relay, &a.Outcome, &a.ErrorClass,
		&a.Error, &a.BrokerAck}, func() error {
		d.History = append(d.History, a)
		return nil
	})
	if err == nil && ref.Kind == KindInbox {
		d.Requests, err = s.requests(ctx, s.in.requestsOf, []int64{ref.ID})
	}
	return d, err
}
