package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The two-person rule: with settings.two_person_rule on, a bulk redrive, a
// drop or an edit does not run when asked. RequestApproval records exactly
// what would run (the refs, the payload of an edit) as a pending approval;
// Approve, by another actor before it expires, runs it once, with the
// approval named in every audit entry it writes.

// Errors of the two-person rule.
var (
	ErrApprovalRequired = errors.New("the two-person rule is on: a second operator must approve this before it runs (outboxkit dlq approve)")
	ErrOwnApproval      = errors.New("you asked for this: a second operator must approve it (the two-person rule)")
	ErrApprovalExpired  = errors.New("the approval expired: ask again (outboxkit dlq approvals shows what it was)")
	ErrApprovalDecided  = errors.New("the approval was decided already")
	ErrSettingsOwner    = errors.New("only the owner of the outboxkit tables (the login that ran outboxkit migrate) changes settings")
)

// Settings are the team's settings of the operator tools.
type Settings struct {
	TwoPersonRule  bool          `json:"two_person_rule"`
	ApprovalTTL    time.Duration `json:"approval_ttl"`
	DistinctLogins bool          `json:"distinct_logins"`
	UpdatedAt      time.Time     `json:"updated_at"`
	UpdatedBy      string        `json:"updated_by"`
}

// SettingsChange changes the settings whose fields are not nil.
type SettingsChange struct {
	TwoPersonRule  *bool
	ApprovalTTL    *time.Duration
	DistinctLogins *bool
}

// Settings reads the settings.
func (s *Store) Settings(ctx context.Context) (Settings, error) {
	var st Settings
	var ttl float64
	err := s.pool.QueryRow(ctx, s.ap.settings).Scan(&st.TwoPersonRule, &ttl, &st.DistinctLogins, &st.UpdatedAt, &st.UpdatedBy)
	st.ApprovalTTL = time.Duration(ttl * float64(time.Second))
	return st, err
}

// SetSettings changes the settings, audited. The operator role cannot:
// only the owner of the tables can (ErrSettingsOwner), so that an operator
// cannot switch the two-person rule off alone.
func (s *Store) SetSettings(ctx context.Context, a Action, c SettingsChange) (Settings, error) {
	if err := a.check(); err != nil {
		return Settings{}, err
	}
	var ttl *float64
	if c.ApprovalTTL != nil {
		if *c.ApprovalTTL < time.Second {
			return Settings{}, fmt.Errorf("approval TTL %s: use at least 1s", *c.ApprovalTTL)
		}
		v := c.ApprovalTTL.Seconds()
		ttl = &v
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var before, after json.RawMessage
		if err := tx.QueryRow(ctx, s.ap.settingsState).Scan(&before); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, s.ap.setSettings, c.TwoPersonRule, ttl, c.DistinctLogins, a.Actor).Scan(&after); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, s.sql.audit, a.Actor, "settings", "settings", []string{"settings"}, a.Reason, before, after, nil)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return Settings{}, fmt.Errorf("%w: %s", ErrSettingsOwner, pgErr.Message)
	}
	if err != nil {
		return Settings{}, err
	}
	return s.Settings(ctx)
}

// needApproval refuses verb when the two-person rule is on, unless a runs
// under an approval.
func (s *Store) needApproval(ctx context.Context, a Action, verb string) error {
	if a.approval != 0 {
		return nil
	}
	st, err := s.Settings(ctx)
	if err != nil {
		return fmt.Errorf("read the two-person rule setting: %w", err)
	}
	if st.TwoPersonRule {
		return fmt.Errorf("%s: %w", verb, ErrApprovalRequired)
	}
	return nil
}

// withApproval adds the approval an action runs under to its audit details.
func (a Action) withApproval(details any) any {
	if a.approval == 0 {
		return details
	}
	m := map[string]any{}
	switch d := details.(type) {
	case nil:
	case map[string]any:
		maps.Copy(m, d)
	default:
		m["details"] = d
	}
	m["approval_id"], m["approved_by"] = a.approval, a.approvedBy
	return m
}

// ApprovalSpec is what an approval runs.
type ApprovalSpec struct {
	Verb        string  // redrive, drop or edit
	Refs        []Ref   // drop, edit (one), redrive without a filter (a replay of several refs): the targets
	Filter      *Filter // redrive: the filter; the refs it matches now are what runs
	Payload     []byte  // edit
	ContentType string  // edit of an outbox event
	PerSec      float64 // redrive
}

// Approval is a pending, running, done or rejected approval.
type Approval struct {
	ID             int64           `json:"id"`
	Verb           string          `json:"action"`
	Refs           []string        `json:"refs"`
	Filter         json.RawMessage `json:"filter,omitempty"`
	PayloadSHA256  string          `json:"payload_sha256,omitempty"`
	PayloadBytes   *int            `json:"payload_bytes,omitempty"`
	ContentType    string          `json:"content_type,omitempty"`
	PerSec         float64         `json:"rate,omitempty"`
	RequestedBy    string          `json:"requested_by"`
	RequestedLogin string          `json:"requested_login"`
	Reason         string          `json:"reason"`
	RequestedAt    time.Time       `json:"requested_at"`
	ExpiresAt      time.Time       `json:"expires_at"`
	Expired        bool            `json:"expired"`
	Status         string          `json:"status"`
	DecidedBy      string          `json:"decided_by,omitempty"`
	DecidedLogin   string          `json:"decided_login,omitempty"`
	DecidedAt      *time.Time      `json:"decided_at,omitempty"`
	DecisionReason string          `json:"decision_reason,omitempty"`
	DoneAt         *time.Time      `json:"done_at,omitempty"`
	Result         json.RawMessage `json:"result,omitempty"`

	payload []byte
}

func scanApproval(row pgx.Row) (*Approval, error) {
	ap := &Approval{}
	var filter, result []byte
	err := row.Scan(&ap.ID, &ap.Verb, &ap.Refs, &filter, &ap.payload, &ap.PayloadSHA256, &ap.ContentType, &ap.PerSec,
		&ap.RequestedBy, &ap.RequestedLogin, &ap.Reason, &ap.RequestedAt, &ap.ExpiresAt, &ap.Status, &ap.DecidedBy,
		&ap.DecidedLogin, &ap.DecidedAt, &ap.DecisionReason, &ap.DoneAt, &result, &ap.Expired)
	if err != nil {
		return nil, err
	}
	ap.Filter, ap.Result = filter, result
	if ap.payload != nil {
		n := len(ap.payload)
		ap.PayloadBytes = &n
	}
	return ap, nil
}

// RequestApproval records spec as a pending approval, audited, and returns
// it. For a redrive, the refs the filter matches now are stored: the
// approver approves those, and the approval never runs on more.
func (s *Store) RequestApproval(ctx context.Context, a Action, spec ApprovalSpec) (*Approval, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	var refs []string
	var filter []byte
	var rate *float64
	switch spec.Verb {
	case "redrive":
		if spec.Filter == nil && len(spec.Refs) > 0 {
			// A replay of several refs (ReplayRefs): exactly those.
			for _, r := range spec.Refs {
				refs = append(refs, r.String())
			}
			r := spec.PerSec
			rate = &r
			break
		}
		if spec.Filter == nil {
			return nil, errors.New("a redrive approval needs a filter or refs")
		}
		f, items, err := s.redriveItems(ctx, *spec.Filter)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			refs = append(refs, it.Ref.String())
		}
		if len(refs) == 0 {
			return nil, fmt.Errorf("nothing parked matches the filter: %w", ErrNotFound)
		}
		if filter, err = json.Marshal(f); err != nil {
			return nil, err
		}
		r := spec.PerSec
		rate = &r
	case "drop", "edit":
		if len(spec.Refs) == 0 || (spec.Verb == "edit" && len(spec.Refs) != 1) {
			return nil, fmt.Errorf("%s approval: give the refs (edit: one)", spec.Verb)
		}
		for _, r := range spec.Refs {
			refs = append(refs, r.String())
		}
	default:
		return nil, fmt.Errorf("%q needs no approval: only redrive, drop and edit do", spec.Verb)
	}
	var payload []byte
	var sha, ctype *string
	if spec.Verb == "edit" {
		payload = spec.Payload
		if payload == nil {
			payload = []byte{}
		}
		h := sha256Hex(payload)
		sha, ctype = &h, nullStr(spec.ContentType)
	}
	var ap *Approval
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var id int64
		var expires time.Time
		var login string
		if err := tx.QueryRow(ctx, s.ap.insert, spec.Verb, refs, filter, payload, sha, ctype, rate, a.Actor, a.Reason).Scan(&id, &expires, &login); err != nil {
			return err
		}
		details := map[string]any{"approval_id": id, "action": spec.Verb, "refs": refs, "expires_at": expires, "login": login}
		if filter != nil {
			details["filter"] = json.RawMessage(filter)
		}
		if sha != nil {
			details["payload_sha256"], details["payload_bytes"] = *sha, len(payload)
		}
		if _, err := tx.Exec(ctx, s.sql.audit, a.Actor, "request_approval", "approval", append([]string{fmt.Sprint(id)}, refs...),
			a.Reason, nil, nil, details); err != nil {
			return err
		}
		var err error
		ap, err = scanApproval(tx.QueryRow(ctx, s.ap.lock, id))
		return err
	})
	return ap, err
}

// Approvals lists the pending approvals, or all of them, newest first.
func (s *Store) Approvals(ctx context.Context, all bool, limit int) ([]*Approval, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, s.ap.list, all, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Approval
	for rows.Next() {
		ap, err := scanApproval(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, rows.Err()
}

// decide takes pending approval id for a decision by a (status running for
// an approval, rejected for a rejection), audited, and returns it as it was.
// An approval runs only if ready, when set, finds nothing missing to run it
// with; otherwise it stays pending.
func (s *Store) decide(ctx context.Context, a Action, id int64, status string, ready func(*Approval) error) (*Approval, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	var ap *Approval
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		ap, err = scanApproval(tx.QueryRow(ctx, s.ap.lock, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("approval %d: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if ap.Status != "pending" {
			return fmt.Errorf("approval %d is %s (by %s at %s): %w", id, ap.Status, ap.DecidedBy, ap.DecidedAt.Format(time.RFC3339), ErrApprovalDecided)
		}
		action := "reject"
		if status == "running" {
			action = "approve"
			if ap.Expired {
				return fmt.Errorf("approval %d expired at %s: %w", id, ap.ExpiresAt.Format(time.RFC3339), ErrApprovalExpired)
			}
			if strings.EqualFold(strings.TrimSpace(a.Actor), strings.TrimSpace(ap.RequestedBy)) {
				return fmt.Errorf("approval %d: %w", id, ErrOwnApproval)
			}
			var st Settings
			var ttl float64
			if err := tx.QueryRow(ctx, s.ap.settings).Scan(&st.TwoPersonRule, &ttl, &st.DistinctLogins, &st.UpdatedAt, &st.UpdatedBy); err != nil {
				return err
			}
			if st.DistinctLogins {
				var login string
				if err := tx.QueryRow(ctx, s.ap.sessionUser).Scan(&login); err != nil {
					return err
				}
				if login == ap.RequestedLogin {
					return fmt.Errorf("approval %d was asked with database login %s, the one you use: approve it with your own login (settings.distinct_logins): %w",
						id, login, ErrOwnApproval)
				}
			}
			if ready != nil {
				if err := ready(ap); err != nil {
					return fmt.Errorf("approval %d stays pending: %w", id, err)
				}
			}
		}
		tag, err := tx.Exec(ctx, s.ap.decide, id, status, a.Actor, a.Reason)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("approval %d: %w", id, ErrApprovalDecided)
		}
		_, err = tx.Exec(ctx, s.sql.audit, a.Actor, action, "approval", append([]string{fmt.Sprint(id)}, ap.Refs...), a.Reason,
			nil, nil, map[string]any{"approval_id": id, "action": ap.Verb, "requested_by": ap.RequestedBy, "refs": ap.Refs})
		return err
	})
	return ap, err
}

// Reject refuses pending approval id; the requester may withdraw their own.
func (s *Store) Reject(ctx context.Context, a Action, id int64) error {
	_, err := s.decide(ctx, a, id, "rejected", nil)
	return err
}

// Approve approves pending approval id as a, a different actor than the
// requester, before it expires, and runs it: exactly once, because only
// one decision can take it out of pending. The action's audit entries have
// the requester as actor (with their reason) and name the approval and its
// approver. opt applies to a redrive (progress; the rate is the one asked).
// A broker dead letter among the refs that cannot be sent with s (no
// connection, or a destination s would refuse: targetsReady) leaves the
// approval pending, with the reason.
func (s *Store) Approve(ctx context.Context, a Action, id int64, opt RedriveOptions) ([]Outcome, error) {
	var refs []Ref
	ap, err := s.decide(ctx, a, id, "running", func(ap *Approval) error {
		refs = make([]Ref, 0, len(ap.Refs))
		for _, text := range ap.Refs {
			ref, err := s.ParseRef(ctx, text)
			if err != nil {
				return err
			}
			refs = append(refs, ref)
		}
		if ap.Verb == "drop" {
			return nil
		}
		return s.targetsReady(ctx, refs, ap.Verb == "edit")
	})
	if err != nil {
		return nil, err
	}
	run := Action{Actor: ap.RequestedBy, Reason: ap.Reason, approval: ap.ID, approvedBy: a.Actor}
	var outs []Outcome
	var runErr error
	switch ap.Verb {
	case "redrive":
		opt.PerSec = ap.PerSec
		outs, runErr = s.replayEach(ctx, run, refs, opt)
	case "drop", "edit":
		for _, ref := range refs {
			var o Outcome
			var err error
			if ap.Verb == "drop" {
				o, err = s.Drop(ctx, run, ref)
			} else {
				o, err = s.Edit(ctx, run, ref, ap.payload, ap.ContentType)
			}
			var stop bool
			if o, stop = OutcomeOf(ref, o, err); stop {
				runErr = err
			}
			outs = append(outs, o)
			if stop {
				break
			}
		}
	}
	result, err := json.Marshal(outs)
	if err != nil {
		return outs, err
	}
	// Recorded even when ctx ended mid-way: what ran is what the result says.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := s.pool.Exec(fctx, s.ap.finish, id, result); err != nil {
		return outs, errors.Join(runErr, err)
	}
	return outs, runErr
}
