// Package holds places, lists and releases legal holds
// (outbox.legal_holds): while a hold is active, the sweeper neither deletes
// (retention) nor redacts the rows of its key or tenant, in the outbox and
// the inbox tables. Holds are never deleted: a release is recorded on the
// row. Every action writes its outbox.audit_log entry (actor, reason,
// before and after) in the same transaction.
//
// It is what outboxkit hold runs; the rules it follows are in
// docs/security.md (Privacy).
package holds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// TenantHeaderDefault is the header that carries the tenant when a hold
// names none.
const TenantHeaderDefault = "tenant"

// Errors callers branch on.
var (
	// ErrInvalid is returned (wrapped, with what to do) for a hold or a
	// release that is missing something or names both a key and a tenant.
	ErrInvalid = errors.New("invalid legal hold")
	// ErrNotFound: no hold has this id.
	ErrNotFound = errors.New("legal hold not found")
	// ErrReleased: the hold was released already.
	ErrReleased = errors.New("legal hold already released")
)

// Hold is one legal hold.
type Hold struct {
	ID int64 `json:"id"`
	// Topic limits the hold to one topic; empty: every topic.
	Topic string `json:"topic,omitempty"`
	// Key holds the rows of one ordering key. Exactly one of Key and
	// Tenant is set.
	Key string `json:"key,omitempty"`
	// Tenant holds the rows whose TenantHeader header has this value.
	Tenant string `json:"tenant,omitempty"`
	// TenantHeader names the header that carries the tenant (default
	// TenantHeaderDefault; exact, case-sensitive).
	TenantHeader  string     `json:"tenant_header,omitempty"`
	Reason        string     `json:"reason"`
	Actor         string     `json:"actor"`
	CreatedAt     time.Time  `json:"created_at"`
	ReleasedAt    *time.Time `json:"released_at,omitempty"`
	ReleasedBy    string     `json:"released_by,omitempty"`
	ReleaseReason string     `json:"release_reason,omitempty"`
}

// Active reports whether the hold still stops retention and redaction.
func (h Hold) Active() bool { return h.ReleasedAt == nil }

// Store places, lists and releases holds.
type Store struct {
	pool *pgxpool.Pool
	sql  statements
}

// New returns a Store on the outbox schema (quoted wherever it reaches SQL).
func New(pool *pgxpool.Pool, outboxSchema string) (*Store, error) {
	if !pgutil.ValidSchemaName(outboxSchema) {
		return nil, fmt.Errorf("schema %q: use 1-63 lower-case letters, digits and underscores", outboxSchema)
	}
	return &Store{pool: pool, sql: renderStatements(pgutil.Ident(outboxSchema))}, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// Add places hold h (Key or Tenant, Reason and Actor set) and returns it as
// stored. It applies to every retention and redaction statement that starts
// after Add returns.
func (s *Store) Add(ctx context.Context, h Hold) (Hold, error) {
	h.Topic, h.Key, h.Tenant = strings.TrimSpace(h.Topic), strings.TrimSpace(h.Key), strings.TrimSpace(h.Tenant)
	h.Reason, h.Actor = strings.TrimSpace(h.Reason), strings.TrimSpace(h.Actor)
	switch {
	case h.Key != "" && h.Tenant != "":
		return h, invalid("give a key or a tenant, not both: place two holds to hold both")
	case h.Key == "" && h.Tenant == "":
		return h, invalid("give the key (--key) or the tenant (--tenant) to hold")
	case h.Reason == "":
		return h, invalid("a reason is required (the case or matter reference): pass --reason")
	case h.Actor == "":
		return h, invalid("an actor is required: pass --actor or set OUTBOXKIT_ACTOR")
	}
	if h.Tenant == "" {
		h.TenantHeader = ""
	} else if h.TenantHeader = strings.TrimSpace(h.TenantHeader); h.TenantHeader == "" {
		h.TenantHeader = TenantHeaderDefault
	}
	var out Hold
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if out, err = scanHold(tx.QueryRow(ctx, s.sql.add, h.Topic, h.Key, h.TenantHeader, h.Tenant, h.Reason, h.Actor)); err != nil {
			return err
		}
		return s.audit(ctx, tx, "legal_hold", out.Actor, out.Reason, out.ID, nil, &out)
	})
	return out, err
}

// List returns the active holds, or every hold (released ones too) with
// all, in the order they were placed.
func (s *Store) List(ctx context.Context, all bool) ([]Hold, error) {
	rows, err := s.pool.Query(ctx, s.sql.list, all)
	if err != nil {
		return nil, err
	}
	out := []Hold{}
	for rows.Next() {
		h, err := scanHold(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// Release ends hold id: retention and redaction take its rows at their next
// runs. The row stays, with who released it and why.
func (s *Store) Release(ctx context.Context, id int64, actor, reason string) (Hold, error) {
	actor, reason = strings.TrimSpace(actor), strings.TrimSpace(reason)
	switch {
	case reason == "":
		return Hold{}, invalid("a reason is required to release a hold: pass --reason")
	case actor == "":
		return Hold{}, invalid("an actor is required: pass --actor or set OUTBOXKIT_ACTOR")
	}
	var out Hold
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanHold(tx.QueryRow(ctx, s.sql.lock, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: no hold has id %d (outboxkit hold list --all shows them)", ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		if !before.Active() {
			return fmt.Errorf("%w: hold %d was released at %s by %s", ErrReleased, id,
				before.ReleasedAt.Format(time.RFC3339), before.ReleasedBy)
		}
		if out, err = scanHold(tx.QueryRow(ctx, s.sql.release, id, actor, reason)); err != nil {
			return err
		}
		return s.audit(ctx, tx, "legal_hold_release", actor, reason, id, &before, &out)
	})
	return out, err
}

func (s *Store) audit(ctx context.Context, tx pgx.Tx, action, actor, reason string, id int64, before, after *Hold) error {
	js := func(h *Hold) ([]byte, error) {
		if h == nil {
			return nil, nil
		}
		return json.Marshal(h)
	}
	b, err := js(before)
	if err != nil {
		return err
	}
	a, err := js(after)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, s.sql.audit, actor, action, fmt.Sprint(id), reason, b, a, nil)
	return err
}

func scanHold(row pgx.Row) (Hold, error) {
	var h Hold
	err := row.Scan(&h.ID, &h.Topic, &h.Key, &h.TenantHeader, &h.Tenant, &h.Reason, &h.Actor, &h.CreatedAt,
		&h.ReleasedAt, &h.ReleasedBy, &h.ReleaseReason)
	return h, err
}
