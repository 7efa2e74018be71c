package outbox

import "strings"

// Every statement of the producer path. {{S}} is replaced by the quoted
// outbox schema when a Writer is created; all values are bind parameters.

// insertKeyedSQL takes the next sequence number of the (topic, key) lane under
// the lane row's lock, then inserts the event. Two transactions enqueueing for
// one key are serialised here, so sequence (and id) order within a lane is
// commit order. An event id already in scheduled raises unique_violation.
const insertKeyedSQL = `WITH {{WAKE}}lane AS (
    INSERT INTO {{S}}.lanes AS l (topic, key, last_sequence)
    SELECT $2, $3, 1
     WHERE CASE WHEN EXISTS (SELECT 1 FROM {{S}}.scheduled WHERE event_id = $1)
                THEN {{S}}.duplicate_event($1) ELSE true END
    ON CONFLICT (topic, key) DO UPDATE
       SET last_sequence = l.last_sequence + 1, last_enqueued_at = now()
    RETURNING l.last_sequence, l.hold_until
)
INSERT INTO {{S}}.messages (event_id, topic, key, partition, sequence, type, version, payload,
    content_type, headers, correlation_id, causation_id, traceparent, tracestate, source,
    status, available_at)
SELECT $1, $2, $3, {{S}}.partition_for($3), lane.last_sequence, $4, $5, $6,
       $7, $8, $9, $10, $11, $12, $13,
       CASE WHEN lane.hold_until = 'infinity' THEN 'blocked' ELSE 'pending' END,
       greatest(now(), lane.hold_until)
  FROM lane{{NOTIFY}}`

// insertKeylessSQL inserts an unordered event; its event id spreads it over
// the partitions.
const insertKeylessSQL = `{{WAKE_WITH}}INSERT INTO {{S}}.messages (event_id, topic, key, partition, sequence, type, version,
    payload, content_type, headers, correlation_id, causation_id, traceparent, tracestate, source)
SELECT $1::uuid, $2, '', {{S}}.partition_for($1::uuid::text), NULL, $3, $4,
       $5, $6, $7, $8, $9, $10, $11, $12
  FROM (SELECT 1) AS one{{NOTIFY}}
 WHERE CASE WHEN EXISTS (SELECT 1 FROM {{S}}.scheduled WHERE event_id = $1)
            THEN {{S}}.duplicate_event($1) ELSE true END`

// insertScheduledSQL stores a delayed event; the relay moves it into messages
// when due_at (database clock) has passed.
const insertScheduledSQL = `{{WAKE_WITH}}INSERT INTO {{S}}.scheduled (event_id, topic, key, partition, type, version, payload,
    content_type, headers, correlation_id, causation_id, traceparent, tracestate, source, due_at)
SELECT $1::uuid, $2, $3::text, {{S}}.partition_for(CASE WHEN $3::text = '' THEN $1::uuid::text ELSE $3::text END), $4, $5, $6,
       $7, $8, $9, $10, $11, $12, $13, now() + $14::interval
  FROM (SELECT 1) AS one{{NOTIFY}}
 WHERE CASE WHEN EXISTS (SELECT 1 FROM {{S}}.messages WHERE event_id = $1)
            THEN {{S}}.duplicate_event($1) ELSE true END`

// insertBatchSQL is the array form of insertKeyedSQL and insertKeylessSQL for
// one chunk of EnqueueBatch. The caller lists the chunk's distinct lanes
// sorted by (topic, key) with their event counts ($14-$16), so lanes are
// locked in one global order (concurrent batches over the same keys do not
// deadlock within a chunk), and gives each event its rank within its lane
// ($17) and its lane's count ($18): each lane gets a contiguous run of
// sequence numbers in input order.
const insertBatchSQL = `WITH {{WAKE}}lane AS (
    INSERT INTO {{S}}.lanes AS l (topic, key, last_sequence)
    SELECT * FROM unnest($14::text[], $15::text[], $16::bigint[])
    ON CONFLICT (topic, key) DO UPDATE
       SET last_sequence = l.last_sequence + EXCLUDED.last_sequence, last_enqueued_at = now()
    RETURNING l.topic, l.key, l.last_sequence, l.hold_until
)
INSERT INTO {{S}}.messages (event_id, topic, key, partition, sequence, type, version, payload,
    content_type, headers, correlation_id, causation_id, traceparent, tracestate, source,
    status, available_at)
SELECT u.event_id, u.topic, u.key,
       {{S}}.partition_for(CASE WHEN u.key = '' THEN u.event_id::text ELSE u.key END),
       lane.last_sequence - u.lane_count + u.lane_rank,
       u.type, u.version, u.payload, u.content_type, u.headers::jsonb,
       u.correlation_id, u.causation_id, u.traceparent, u.tracestate, u.source,
       CASE WHEN lane.hold_until = 'infinity' THEN 'blocked' ELSE 'pending' END,
       greatest(now(), lane.hold_until)
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bytea[],
              $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
              $17::bigint[], $18::bigint[])
       WITH ORDINALITY AS u(event_id, topic, key, type, version, payload,
                            content_type, headers, correlation_id, causation_id, traceparent, tracestate, source,
                            lane_rank, lane_count, ord)
  LEFT JOIN lane ON lane.topic = u.topic AND lane.key = u.key{{NOTIFY}}
 WHERE CASE WHEN EXISTS (SELECT 1 FROM {{S}}.scheduled s WHERE s.event_id = u.event_id)
            THEN {{S}}.duplicate_event(u.event_id) ELSE true END
 ORDER BY u.ord`

// insertScheduledBatchSQL is the array form of insertScheduledSQL.
const insertScheduledBatchSQL = `{{WAKE_WITH}}INSERT INTO {{S}}.scheduled (event_id, topic, key, partition, type, version, payload,
    content_type, headers, correlation_id, causation_id, traceparent, tracestate, source, due_at)
SELECT u.event_id, u.topic, u.key, {{S}}.partition_for(CASE WHEN u.key = '' THEN u.event_id::text ELSE u.key END),
       u.type, u.version, u.payload, u.content_type, u.headers::jsonb,
       u.correlation_id, u.causation_id, u.traceparent, u.tracestate, u.source, now() + u.delay
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bytea[],
              $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::interval[])
       AS u(event_id, topic, key, type, version, payload,
            content_type, headers, correlation_id, causation_id, traceparent, tracestate, source, delay){{NOTIFY}}
 WHERE CASE WHEN EXISTS (SELECT 1 FROM {{S}}.messages m WHERE m.event_id = u.event_id)
            THEN {{S}}.duplicate_event(u.event_id) ELSE true END`

// wakeRelay wakes idle relays. The CTE runs once per statement (a volatile
// function keeps it from being inlined) and calls pg_notify only while some
// live relay is idle: NOTIFY takes a database-wide lock at commit that
// serialises committing transactions, and a busy relay claims new events
// without being woken. PostgreSQL folds identical notifications of one
// transaction into one and delivers it at commit. The channel is the last
// parameter; {{NOTIFY}} joins the CTE into the INSERT's FROM list.
const (
	wakeRelayCTE = `wake_relay AS (
    SELECT pg_notify(${{N}}, '') WHERE EXISTS (SELECT 1 FROM {{S}}.relays WHERE idle AND alive_until > now())
)`
	wakeRelayJoin = `
  LEFT JOIN wake_relay ON true`
)

// statements holds the SQL of one Writer, rendered for its schema.
type statements struct {
	insertKeyed, insertKeyless, insertScheduled string
	insertBatch, insertScheduledBatch           string
}

func renderStatements(schemaIdent string, notify bool) statements {
	render := func(q string, notifyParam string) string {
		wake, wakeWith, join := "", "", ""
		if notify {
			cte := strings.ReplaceAll(wakeRelayCTE, "{{N}}", notifyParam)
			wake, wakeWith, join = cte+", ", "WITH "+cte+"\n", wakeRelayJoin
		}
		r := strings.NewReplacer("{{WAKE}}", wake, "{{WAKE_WITH}}", wakeWith, "{{NOTIFY}}", join)
		return strings.ReplaceAll(r.Replace(q), "{{S}}", schemaIdent)
	}
	return statements{
		insertKeyed:          render(insertKeyedSQL, "14"),
		insertKeyless:        render(insertKeylessSQL, "13"),
		insertScheduled:      render(insertScheduledSQL, "15"),
		insertBatch:          render(insertBatchSQL, "19"),
		insertScheduledBatch: render(insertScheduledBatchSQL, "15"),
	}
}
