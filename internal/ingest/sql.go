package ingest

import "strings"

// Every statement of the ingester (the actions on ingested rows are the
// operator tools', internal/ops). {{O}} is the quoted outbox schema, {{I}} the quoted inbox schema; values
// are bind parameters.
const (
	// insertSQL stores one broker dead letter and its audit entry in one
	// statement (one round trip, atomic). A broker message ingested before
	// (same ingest_key: a redelivery after a crash between commit and
	// acknowledgement) inserts nothing and returns no row.
	insertSQL = `WITH ins AS (
    INSERT INTO {{I}}.dead_letters (consumer, consumer_version, event_id, topic, key, sequence, type, version,
        payload, headers, content_type, correlation_id, error, error_class, attempts, status, source,
        first_failed_at, last_failed_at, ingested_from, ingest_key)
    VALUES ($1, '', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'parked', $15, $16, $17, $18, $19)
    ON CONFLICT (ingest_key) WHERE ingest_key IS NOT NULL DO NOTHING
    RETURNING id, event_id, status, error_class, attempts, consumer, ingested_from, ingest_key, topic
), aud AS (
    INSERT INTO {{O}}.audit_log (actor, action, target_kind, target_ids, reason, after, details)
    SELECT 'ingest:' || consumer, 'ingest', 'dead_letter', ARRAY[id::text, event_id::text], $12,
           jsonb_build_object('status', status, 'error_class', error_class, 'attempts', attempts,
                              'consumer', consumer, 'ingested_from', ingested_from),
           jsonb_build_object('ingest_key', ingest_key, 'topic', topic)
      FROM ins
)
SELECT id FROM ins`

	existingSQL = `SELECT id FROM {{I}}.dead_letters WHERE ingest_key = $1`

	// sourceInUseSQL: a source named like an inbox consumer would mix its
	// rows with that consumer's own dead letters (processed primary key,
	// dead_letters_consumer_status_idx).
	sourceInUseSQL = `SELECT EXISTS (SELECT 1 FROM {{I}}.processed WHERE consumer = $1)
    OR EXISTS (SELECT 1 FROM {{I}}.dead_letters WHERE consumer = $1 AND ingested_from IS NULL)`
)

type statements struct {
	insert, existing, sourceInUse string
}

func renderStatements(outboxIdent, inboxIdent string) statements {
	r := strings.NewReplacer("{{O}}", outboxIdent, "{{I}}", inboxIdent).Replace
	return statements{insert: r(insertSQL), existing: r(existingSQL), sourceInUse: r(sourceInUseSQL)}
}
