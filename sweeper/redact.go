package sweeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// redact replaces the payloads (and the configured headers) of published
// events and closed dead letters past RedactAfter, in bounded statements,
// and records the run in the audit log.
func (s *Sweeper) redact(ctx context.Context, conn *pgxpool.Conn, res *Result) (err error) {
	rep := &RedactReport{}
	res.Redact = rep
	if err := conn.QueryRow(ctx, redactCutoffSQL, s.cfg.RedactAfter).Scan(&rep.Cutoff); err != nil {
		return err
	}
	headers := make([]string, 0, len(s.cfg.RedactHeaders))
	for _, h := range s.cfg.RedactHeaders {
		headers = append(headers, strings.ToLower(strings.TrimSpace(h)))
	}
	// Whatever was redacted is audited, even when the run stops half way:
	// every statement committed on its own.
	defer func() {
		if rep.RedactedMessages+rep.RedactedDeadLetters+rep.RedactedApprovals == 0 {
			return
		}
		// On the pool, not conn: a cancelled run may have closed conn.
		if aerr := s.auditRedaction(context.WithoutCancel(ctx), rep, headers, err); aerr != nil {
			err = errors.Join(err, fmt.Errorf("record the redaction in the audit log: %w", aerr))
		}
	}()

	p := &pacer{pause: s.cfg.DeletePause}
	walk := func(sql, table string, redacted, held *int64) error {
		var last int64
		for {
			var next *int64
			var allNew bool
			var n, h, removed int64
			err := p.step(ctx, func() error {
				return conn.QueryRow(ctx, sql, last, s.cfg.DeleteBatchSize, rep.Cutoff, headers).
					Scan(&next, &allNew, &n, &h, &removed)
			})
			rep.Statements, rep.LongestStatement = p.statements, p.longest
			if err != nil {
				return fmt.Errorf("redact %s: %w", table, err)
			}
			*redacted += n
			*held += h
			rep.HeadersRemoved += removed
			res.Rows += n
			s.metrics.redacted.WithLabelValues(table).Add(float64(n))
			if next == nil || allNew {
				return nil
			}
			last = *next
		}
	}
	if err := walk(s.sql.redactMessages, "messages", &rep.RedactedMessages, &rep.HeldMessages); err != nil {
		return err
	}
	if err := walk(s.sql.redactDeadLetters, "dead_letters", &rep.RedactedDeadLetters, &rep.HeldDeadLetters); err != nil {
		return err
	}
	tag, err := conn.Exec(ctx, s.sql.redactApprovals, rep.Cutoff)
	if err != nil {
		return fmt.Errorf("redact approvals: %w", err)
	}
	rep.RedactedApprovals = tag.RowsAffected()
	res.Rows += rep.RedactedApprovals
	s.metrics.redacted.WithLabelValues("approvals").Add(float64(rep.RedactedApprovals))
	s.metrics.held.WithLabelValues(string(JobRedact)).Set(float64(rep.HeldMessages + rep.HeldDeadLetters))
	return nil
}

// auditRedaction writes the run's one audit entry: counts, cutoff and the
// header names, never ids of every row (redacted_at marks each row) and
// never payloads.
func (s *Sweeper) auditRedaction(ctx context.Context, rep *RedactReport, headers []string, runErr error) error {
	reason := fmt.Sprintf("retention with privacy: payloads of events published and dead letters closed before %s (RedactAfter %s) replaced with empty bytes",
		rep.Cutoff.UTC().Format(time.RFC3339), s.cfg.RedactAfter)
	if len(headers) > 0 {
		reason += "; headers removed: " + strings.Join(headers, ", ")
	}
	details := map[string]any{
		"cutoff": rep.Cutoff, "redact_after": s.cfg.RedactAfter.String(), "redact_headers": headers,
		"messages": rep.RedactedMessages, "dead_letters": rep.RedactedDeadLetters, "approvals": rep.RedactedApprovals,
		"headers_removed": rep.HeadersRemoved,
		"messages_held":   rep.HeldMessages, "dead_letters_held": rep.HeldDeadLetters, "sweeper": s.cfg.ID,
	}
	if runErr != nil {
		details["interrupted"] = runErr.Error()
	}
	b, err := json.Marshal(details)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = s.pool.Exec(ctx, s.sql.redactAudit, actor, reason, b)
	return err
}
