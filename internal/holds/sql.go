package holds

import "strings"

// Every statement of the legal holds. {{O}} is the quoted outbox schema;
// values are bind parameters. Each action writes its audit entry in the
// same transaction.

// holdColumns is the column list every read returns, in scanHold order.
const holdColumns = `id, coalesce(topic, ''), coalesce(key, ''), coalesce(tenant_header, ''), coalesce(tenant, ''),
       reason, actor, created_at, released_at, coalesce(released_by, ''), coalesce(release_reason, '')`

const (
	addSQL = `INSERT INTO {{O}}.legal_holds (topic, key, tenant_header, tenant, reason, actor)
VALUES (NULLIF($1, ''), NULLIF($2, ''), NULLIF($3, ''), NULLIF($4, ''), $5, $6)
RETURNING ` + holdColumns

	// listSQL: active holds (legal_holds_active_idx), or every hold with $1.
	listSQL = `SELECT ` + holdColumns + ` FROM {{O}}.legal_holds
 WHERE released_at IS NULL OR $1
 ORDER BY id`

	// lockSQL reads a hold as it is before its release and locks it against
	// a concurrent release.
	lockSQL = `SELECT ` + holdColumns + ` FROM {{O}}.legal_holds WHERE id = $1 FOR UPDATE`

	releaseSQL = `UPDATE {{O}}.legal_holds
   SET released_at = now(), released_by = $2, release_reason = $3
 WHERE id = $1 AND released_at IS NULL
RETURNING ` + holdColumns

	// auditSQL: $3 is the hold's id; before and after are the hold rows.
	auditSQL = `INSERT INTO {{O}}.audit_log (actor, action, target_kind, target_ids, reason, before, after, details)
VALUES ($1, $2, 'legal_hold', ARRAY[$3::text], $4, $5, $6, $7)`
)

type statements struct{ add, list, lock, release, audit string }

func renderStatements(outboxIdent string) statements {
	r := strings.NewReplacer("{{O}}", outboxIdent).Replace
	return statements{add: r(addSQL), list: r(listSQL), lock: r(lockSQL), release: r(releaseSQL), audit: r(auditSQL)}
}
