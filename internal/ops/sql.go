package ops

import "strings"

// Every statement of the operator tools. {{O}} is the quoted outbox schema,
// {{I}} the quoted inbox schema; values are bind parameters.

// listParkedSQL lists parked and dropped outbox events matching a filter.
// Filters are optional: a NULL parameter matches everything.
const listParkedSQL = `SELECT m.id, m.event_id, m.topic, m.key, coalesce(m.sequence, 0), m.type, m.version, m.status,
       m.attempts, coalesce(m.last_error_class, ''), coalesce(m.last_error, ''), coalesce(m.correlation_id, ''),
       m.created_at, m.parked_at, length(m.payload),
       (SELECT count(*) FROM {{O}}.messages b
         WHERE b.key = m.key AND b.topic = m.topic AND b.key <> '' AND b.status = 'blocked') AS waiting
  FROM {{O}}.messages m
 WHERE m.status = ANY($1::text[])
   AND ($2::text IS NULL OR m.topic = $2)
   AND ($3::text IS NULL OR m.key = $3)
   AND ($4::text IS NULL OR m.last_error_class = $4)
   AND ($5::text IS NULL OR m.last_error ILIKE '%' || $5 || '%')
   AND ($6::timestamptz IS NULL OR m.created_at >= $6)
   AND ($7::timestamptz IS NULL OR m.created_at < $7)
 ORDER BY m.topic, m.key, m.sequence NULLS LAST, m.id
 LIMIT $8`

const listDeadLettersSQL = `SELECT d.id, coalesce(d.event_id::text, ''), d.topic, d.key, coalesce(d.sequence, 0), coalesce(d.type, ''),
       coalesce(d.version, 0), d.status, d.attempts, d.error_class, d.error, coalesce(d.correlation_id, ''),
       d.consumer, d.consumer_version, d.first_failed_at, d.last_failed_at, length(d.payload),
       coalesce(d.ingested_from, '')
  FROM {{I}}.dead_letters d
 WHERE d.status = ANY($1::text[])
   AND ($2::text IS NULL OR d.topic = $2)
   AND ($3::text IS NULL OR d.key = $3)
   AND ($4::text IS NULL OR d.error_class = $4)
   AND ($5::text IS NULL OR d.error ILIKE '%' || $5 || '%')
   AND ($6::timestamptz IS NULL OR d.first_failed_at >= $6)
   AND ($7::timestamptz IS NULL OR d.first_failed_at < $7)
   AND ($8::text IS NULL OR d.consumer = $8)
 ORDER BY d.consumer, d.topic, d.key, d.sequence NULLS LAST, d.id
 LIMIT $9`

// showMessageSQL reads one outbox event by row id, every column.
const showMessageSQL = `SELECT m.id, m.event_id, m.topic, m.key, coalesce(m.sequence, 0), m.partition, m.type, m.version,
       m.payload, m.content_type, m.headers, coalesce(m.correlation_id, ''), coalesce(m.causation_id, ''),
       coalesce(m.traceparent, ''), coalesce(m.source, ''), m.status, m.attempts, m.available_at, m.created_at,
       m.published_at, coalesce(m.published_by, ''), coalesce(m.broker_ack, ''), coalesce(m.last_error, ''),
       coalesce(m.last_error_class, ''), m.parked_at
  FROM {{O}}.messages m WHERE m.id = $1`

const messageIDByEventSQL = `SELECT id FROM {{O}}.messages WHERE event_id = $1`

const attemptsSQL = `SELECT attempt, started_at, coalesce(duration_ms, 0), coalesce(relay_id, ''), outcome,
       coalesce(error_class, ''), coalesce(error, ''), coalesce(broker_ack, '')
  FROM {{O}}.attempt_history WHERE message_id = $1 ORDER BY started_at, attempt`

const showDeadLetterSQL = `SELECT d.id, coalesce(d.event_id::text, ''), d.topic, d.key, coalesce(d.sequence, 0), coalesce(d.type, ''),
       coalesce(d.version, 0), d.payload, d.headers, coalesce(d.content_type, ''), coalesce(d.correlation_id, ''),
       d.status, d.attempts, d.error_class, d.error, d.consumer, d.consumer_version, d.first_failed_at, d.last_failed_at,
       d.blocked_by, d.source, coalesce(d.ingested_from, '')
  FROM {{I}}.dead_letters d WHERE d.id = $1`

const deadLetterAttemptsSQL = `SELECT attempt, started_at, duration_ms, '', outcome, error_class, error, ''
  FROM {{I}}.attempts WHERE dead_letter_id = $1 OR (event_id = $2 AND consumer = $3) ORDER BY started_at, attempt`

// Outbox actions. Each runs in the transaction that writes its audit entry.
// lockMessageSQL reads the row as it is before the action (the audit's
// "before") and locks it against a concurrent relay or operator.
//
// Audit snapshots of a message never hold its payload or its header values,
// only the payload's size and the header names: the audit log is
// append-only, so whatever personal data it held would outlive the
// redaction of the row itself (sweeper redact job, docs/security.md).
const (
	lockMessageSQL = `SELECT to_jsonb(m) - 'payload' - 'headers'
       || jsonb_build_object('payload_bytes', length(m.payload),
                             'header_names', (SELECT coalesce(jsonb_agg(k ORDER BY k), '[]') FROM jsonb_object_keys(m.headers) k)),
       m.status,
       m.topic, m.key, coalesce(m.sequence, 0), m.event_id
  FROM {{O}}.messages m WHERE m.id = $1 FOR UPDATE`

	// replayMessageSQL puts a parked event back to pending with a fresh
	// attempt budget. If its lane is blocked by it, the lane stays blocked
	// until the relay publishes it, then flows (relay: releaseLanesSQL).
	replayMessageSQL = `UPDATE {{O}}.messages
   SET status = 'pending', attempts = 0, available_at = now(), parked_at = NULL
 WHERE id = $1 AND status = 'parked'
RETURNING to_jsonb(messages) - 'payload' - 'headers'
       || jsonb_build_object('header_names', (SELECT coalesce(jsonb_agg(k ORDER BY k), '[]') FROM jsonb_object_keys(messages.headers) k))`

	// dropMessageSQL is a soft delete: the row stays, with every column.
	dropMessageSQL = `UPDATE {{O}}.messages SET status = 'dropped'
 WHERE id = $1 AND status IN ('parked', 'blocked')
RETURNING to_jsonb(messages) - 'payload' - 'headers'
       || jsonb_build_object('header_names', (SELECT coalesce(jsonb_agg(k ORDER BY k), '[]') FROM jsonb_object_keys(messages.headers) k))`

	// restoreMessageSQL undoes a drop: the status the audit log recorded
	// before the drop comes back; nothing else changed.
	restoreMessageSQL = `UPDATE {{O}}.messages SET status = $2
 WHERE id = $1 AND status = 'dropped'
RETURNING to_jsonb(messages) - 'payload' - 'headers'
       || jsonb_build_object('header_names', (SELECT coalesce(jsonb_agg(k ORDER BY k), '[]') FROM jsonb_object_keys(messages.headers) k))`

	lastDropSQL = `SELECT before->>'status' FROM {{O}}.audit_log
 WHERE action = 'drop' AND target_kind = 'outbox_message' AND target_ids = ARRAY[$1::text]
 ORDER BY id DESC LIMIT 1`

	// copyEditedSQL inserts the corrected copy of event $1 with payload $2
	// and a new event id $3, in the original's place in its lane (same
	// sequence: the original is dropped first, which takes it out of
	// messages_lane_idx).
	copyEditedSQL = `INSERT INTO {{O}}.messages (event_id, topic, key, partition, sequence, type, version, payload,
    content_type, headers, correlation_id, causation_id, traceparent, tracestate, source, status, available_at)
SELECT $3, topic, key, partition, sequence, type, version, $2, coalesce($4, content_type),
       headers || jsonb_build_object('outboxkit-edit-of', event_id::text), correlation_id, event_id::text,
       traceparent, tracestate, source, 'pending', now()
  FROM {{O}}.messages WHERE id = $1
RETURNING id, to_jsonb(messages) - 'payload' - 'headers'
       || jsonb_build_object('header_names', (SELECT coalesce(jsonb_agg(k ORDER BY k), '[]') FROM jsonb_object_keys(messages.headers) k))`

	// insertSkipMarkerSQL leaves a skip marker (wire.SkippedType) in the lane
	// place of dropped event $1: consumers advance past the sequence instead
	// of waiting for it. $2 new event id, $3 status of the marker.
	insertSkipMarkerSQL = `INSERT INTO {{O}}.messages (event_id, topic, key, partition, sequence, type, version, payload,
    content_type, headers, correlation_id, causation_id, source, status, available_at)
SELECT $2, topic, key, partition, sequence, 'outboxkit.skipped', 1, ''::bytea, 'application/octet-stream',
       jsonb_build_object('outboxkit-skipped', event_id::text), correlation_id, event_id::text, source, $3, now()
  FROM {{O}}.messages WHERE id = $1
RETURNING id`

	// findSkipMarkerSQL finds the live skip marker in the lane place of $1.
	findSkipMarkerSQL = `SELECT k.id, k.status FROM {{O}}.messages k, {{O}}.messages o
 WHERE o.id = $1 AND k.key = o.key AND k.topic = o.topic AND k.sequence = o.sequence
   AND k.key <> '' AND k.status <> 'dropped' AND k.type = 'outboxkit.skipped'`

	dropMarkerSQL = `UPDATE {{O}}.messages SET status = 'dropped' WHERE id = $1 AND status IN ('pending', 'blocked')`

	// retargetLaneSQL: a lane blocked by the original now waits for its
	// corrected copy.
	retargetLaneSQL = `UPDATE {{O}}.lanes SET blocked_by = $2
 WHERE blocked_by = $1 AND blocked_by IS NOT NULL AND hold_until = 'infinity'`

	// releaseLaneOfSQL lets a lane blocked by event $1 flow again; the next
	// statement (new snapshot) unblocks its waiting events.
	releaseLaneOfSQL = `UPDATE {{O}}.lanes SET hold_until = NULL, blocked_by = NULL, blocked_since = NULL
 WHERE topic = $1 AND key = $2
RETURNING blocked_by`

	unblockLaneSQL = `UPDATE {{O}}.messages SET status = 'pending', available_at = now()
 WHERE key = $2 AND topic = $1 AND key <> '' AND status = 'blocked'`

	// blockLaneAgainSQL: a restored head blocks its lane again if events of
	// the lane are still waiting.
	laneHeadSQL = `SELECT l.hold_until = 'infinity', coalesce(l.blocked_by, 0) FROM {{O}}.lanes l WHERE l.topic = $1 AND l.key = $2`

	auditSQL = `INSERT INTO {{O}}.audit_log (actor, action, target_kind, target_ids, reason, before, after, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`
)

// Lanes.
const listLanesSQL = `SELECT l.topic, l.key, coalesce(l.blocked_by, 0), coalesce(b.event_id::text, ''),
       coalesce(b.status, ''), coalesce(b.last_error_class, ''), coalesce(b.last_error, ''), l.blocked_since,
       CASE WHEN l.hold_until = 'infinity' THEN NULL ELSE l.hold_until END,
       (SELECT count(*) FROM {{O}}.messages w
         WHERE w.key = l.key AND w.topic = l.topic AND w.key <> '' AND w.status IN ('blocked', 'pending')
           AND w.id <> coalesce(l.blocked_by, 0)) AS waiting
  FROM {{O}}.lanes l
  LEFT JOIN {{O}}.messages b ON b.id = l.blocked_by
 WHERE l.hold_until > now()
   AND ($1::text IS NULL OR l.topic = $1)
   AND ($2::text IS NULL OR l.key = $2)
 ORDER BY l.blocked_since NULLS LAST, l.topic, l.key
 LIMIT $3`

// Stats.
const (
	statsBacklogSQL = `SELECT topic, status, events, oldest_created_at, extract(epoch FROM oldest_age)::float8
  FROM {{O}}.backlog ORDER BY topic, status`

	statsRateSQL = `SELECT count(*) FILTER (WHERE published_at > now() - interval '1 minute'),
       count(*) FILTER (WHERE published_at > now() - interval '15 minutes')
  FROM {{O}}.messages WHERE status = 'published' AND published_at > now() - interval '15 minutes'`

	statsPartitionsSQL = `SELECT p.partition, coalesce(p.owner, ''), p.lease_until, coalesce(p.lease_until < now(), false),
       (SELECT count(*) FROM {{O}}.messages m WHERE m.partition = p.partition AND m.status = 'pending')
  FROM {{O}}.partitions p ORDER BY p.partition`

	statsRelaysSQL = `SELECT relay_id, hostname, pid, version, started_at, heartbeat_at, alive_until > now(), idle
  FROM {{O}}.relays ORDER BY relay_id`

	statsDeadLettersSQL = `SELECT consumer, status, count(*) FROM {{I}}.dead_letters
 WHERE status IN ('parked', 'blocked') GROUP BY consumer, status ORDER BY consumer, status`
)

// Trace: one key's (or event's, or correlation's) story.
const (
	traceMessagesSQL = `SELECT m.id, m.event_id, m.topic, m.key, coalesce(m.sequence, 0), m.type, m.status, m.attempts,
       m.created_at, m.published_at, coalesce(m.broker_ack, ''), coalesce(m.last_error_class, ''),
       coalesce(m.last_error, ''), coalesce(m.correlation_id, '')
  FROM {{O}}.messages m
 WHERE m.key = $1 AND m.key <> '' AND m.status <> 'dropped' AND $1::text IS NOT NULL -- messages_lane_idx
    OR m.key = $1 AND m.status = 'dropped' AND $1::text IS NOT NULL                  -- messages_dropped_idx
    OR m.event_id = $2 AND $2::uuid IS NOT NULL                                      -- messages_event_id_key
    OR m.correlation_id = $3 AND $3::text IS NOT NULL                                -- full scan: rare, bounded by LIMIT
 ORDER BY m.id
 LIMIT $4`

	traceAttemptsSQL = `SELECT message_id, attempt, started_at, outcome, coalesce(error_class, ''), coalesce(error, ''),
       coalesce(relay_id, ''), coalesce(broker_ack, '')
  FROM {{O}}.attempt_history WHERE message_id = ANY($1::bigint[]) ORDER BY started_at`

	traceProcessedSQL = `SELECT consumer, event_id, processed_at FROM {{I}}.processed
 WHERE event_id = ANY($1::uuid[]) ORDER BY processed_at`

	traceDeadLettersSQL = `SELECT id, consumer, coalesce(event_id::text, ''), status, error_class, error, first_failed_at, last_failed_at
  FROM {{I}}.dead_letters
 WHERE event_id = ANY($1::uuid[]) OR ($2::text IS NOT NULL AND key = $2)
 ORDER BY first_failed_at`

	traceAuditSQL = `SELECT at, actor, action, target_kind, target_ids, reason FROM {{O}}.audit_log
 WHERE target_ids && $1::text[] ORDER BY id`
)

const listAuditSQL = `SELECT id, at, actor, action, target_kind, target_ids, reason, before, after, details
  FROM {{O}}.audit_log
 WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
   AND ($3::timestamptz IS NULL OR at >= $3)
 ORDER BY id DESC LIMIT $4`

const (
	// rangeSelectSQL leaves redacted events out: their payload is gone, and
	// sending the empty bytes as the event would be a new, wrong event
	// (messages_redacted_is_published refuses it anyway). rangeRedactedSQL
	// counts them, so the operator is told.
	rangeSelectSQL = `SELECT id, event_id::text FROM {{O}}.messages
 WHERE status = 'published' AND topic = $1 AND created_at >= $2 AND created_at < $3
   AND ($4::text IS NULL OR key = $4) AND redacted_at IS NULL
 ORDER BY id LIMIT $5
   FOR UPDATE`

	rangeRedactedSQL = `SELECT count(*) FROM {{O}}.messages
 WHERE status = 'published' AND topic = $1 AND created_at >= $2 AND created_at < $3
   AND ($4::text IS NULL OR key = $4) AND redacted_at IS NOT NULL`

	// rangeReplaySQL sends published events again, in their original order
	// (their ids), with their original event ids and sequences. The audit
	// entry keeps what the rows said before (published_at, broker_ack).
	rangeReplaySQL = `UPDATE {{O}}.messages
   SET status = 'pending', published_at = NULL, available_at = now(), attempts = 0,
       headers = CASE WHEN $2::text IS NULL THEN headers - 'outboxkit-replay-to'
                      ELSE headers || jsonb_build_object('outboxkit-replay-to', $2::text) END
 WHERE id = ANY($1::bigint[]) AND status = 'published'`
)

type statements struct {
	listParked, listDeadLetters, showMessage, messageIDByEvent, attempts string
	showDeadLetter, deadLetterAttempts                                   string
	lockMessage, replayMessage, dropMessage, restoreMessage, lastDrop    string
	copyEdited, retargetLane, releaseLaneOf, unblockLane, laneHead       string
	audit, listLanes                                                     string
	statsBacklog, statsRate, statsPartitions, statsRelays                string
	statsDeadLetters                                                     string
	traceMessages, traceAttempts, traceProcessed, traceDeadLetters       string
	traceAudit, listAudit                                                string
	rangeSelect, rangeReplay, rangeRedacted                              string
	insertSkipMarker, findSkipMarker, dropMarker                         string
}

func renderStatements(outboxIdent, inboxIdent string) statements {
	rep := strings.NewReplacer("{{O}}", outboxIdent, "{{I}}", inboxIdent)
	r := rep.Replace
	return statements{
		listParked: r(listParkedSQL), listDeadLetters: r(listDeadLettersSQL), showMessage: r(showMessageSQL),
		messageIDByEvent: r(messageIDByEventSQL), attempts: r(attemptsSQL),
		showDeadLetter: r(showDeadLetterSQL), deadLetterAttempts: r(deadLetterAttemptsSQL),
		lockMessage: r(lockMessageSQL), replayMessage: r(replayMessageSQL), dropMessage: r(dropMessageSQL),
		restoreMessage: r(restoreMessageSQL), lastDrop: r(lastDropSQL),
		copyEdited: r(copyEditedSQL), retargetLane: r(retargetLaneSQL), releaseLaneOf: r(releaseLaneOfSQL),
		unblockLane: r(unblockLaneSQL), laneHead: r(laneHeadSQL),
		audit: r(auditSQL), listLanes: r(listLanesSQL),
		statsBacklog: r(statsBacklogSQL), statsRate: r(statsRateSQL), statsPartitions: r(statsPartitionsSQL),
		statsRelays: r(statsRelaysSQL), statsDeadLetters: r(statsDeadLettersSQL),
		traceMessages: r(traceMessagesSQL), traceAttempts: r(traceAttemptsSQL), traceProcessed: r(traceProcessedSQL),
		traceDeadLetters: r(traceDeadLettersSQL), traceAudit: r(traceAuditSQL), listAudit: r(listAuditSQL),
		rangeSelect: r(rangeSelectSQL), rangeReplay: r(rangeReplaySQL), rangeRedacted: r(rangeRedactedSQL),
		insertSkipMarker: r(insertSkipMarkerSQL), findSkipMarker: r(findSkipMarkerSQL), dropMarker: r(dropMarkerSQL),
	}
}

// Inbox dead letters: the operator records requests that the consumer runs
// (inbox.Inbox.ProcessRequests), and drops or restores dead letters
// directly. Locks are taken in the inbox's order: the lane row first, then
// the dead letter.
const (
	// lockDeadLetterSQL is the audit "before" of a dead letter and what an
	// action decides on, locked against the consumer and other operators.
	lockDeadLetterSQL = `SELECT to_jsonb(d) - 'payload' - 'edited_payload' - 'headers' || jsonb_build_object('payload_bytes', length(d.payload)),
       d.status, d.consumer, coalesce(d.event_id::text, ''), d.topic, d.key, coalesce(d.sequence, 0),
       coalesce(d.blocked_by, 0), d.waiting_for, coalesce(d.ingested_from, '')
  FROM {{I}}.dead_letters d WHERE d.id = $1 FOR UPDATE`

	deadLetterLaneSQL = `SELECT consumer, topic, key FROM {{I}}.dead_letters WHERE id = $1`

	// lockInboxLaneSQL: the consumer's lane of the dead letter's key.
	lockInboxLaneSQL = `SELECT last_sequence, coalesce(blocked_by, 0) FROM {{I}}.lanes
 WHERE consumer = $1 AND topic = $2 AND key = $3 FOR UPDATE`

	pendingRequestOfSQL = `SELECT id, action, requested_by, requested_at FROM {{I}}.dead_letter_requests
 WHERE dead_letter_id = $1 AND status = 'pending'`

	insertRequestSQL = `INSERT INTO {{I}}.dead_letter_requests (consumer, dead_letter_id, action, payload, requested_by, reason)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id`

	// cancelRequestsSQL: a drop or restore settles the pending requests of
	// dead letter $1 before the consumer runs them.
	cancelRequestsSQL = `UPDATE {{I}}.dead_letter_requests
   SET status = 'cancelled', done_at = now(), done_by = $2, outcome = $3
 WHERE dead_letter_id = $1 AND status = 'pending'
RETURNING id`

	dropDeadLetterSQL = `UPDATE {{I}}.dead_letters
   SET status = 'dropped', resolved_at = now(), blocked_by = NULL, waiting_for = NULL
 WHERE id = $1 AND status = 'parked'
RETURNING to_jsonb(dead_letters) - 'payload' - 'edited_payload' - 'headers'`

	restoreDeadLetterSQL = `UPDATE {{I}}.dead_letters
   SET status = 'parked', resolved_at = NULL, waiting_for = $2
 WHERE id = $1 AND status = 'dropped'
RETURNING to_jsonb(dead_letters) - 'payload' - 'edited_payload' - 'headers'`

	// openBehindSQL: is any dead letter of the lane still to be applied
	// after sequence $4 (dead_letters_lane_idx)?
	openBehindSQL = `SELECT count(*) FROM {{I}}.dead_letters
 WHERE consumer = $1 AND topic = $2 AND key = $3 AND status IN ('parked', 'blocked') AND sequence > $4`

	// setInboxLaneSQL moves a lane to last sequence $4, held by $5 (NULL:
	// flowing). A drop moves the lane past the dropped head.
	setInboxLaneSQL = `UPDATE {{I}}.lanes
   SET last_sequence = $4, blocked_by = $5,
       blocked_since = CASE WHEN $5::bigint IS NULL THEN NULL ELSE coalesce(blocked_since, now()) END,
       updated_at = now()
 WHERE consumer = $1 AND topic = $2 AND key = $3`

	// lastInboxDropSQL: the audit details and "before" of the last drop of
	// dead letter $1 (how its lane moved, the release request it made, the
	// dead letter's state).
	lastInboxDropSQL = `SELECT coalesce(details, '{}'), coalesce(before, '{}') FROM {{O}}.audit_log
 WHERE action = 'drop' AND target_kind = 'inbox_dead_letter' AND target_ids[1] = $1::text
 ORDER BY id DESC LIMIT 1`

	requestStatusSQL = `SELECT status FROM {{I}}.dead_letter_requests WHERE id = $1 FOR UPDATE`

	// Broker dead letters (ingested.go). ingested_from never changes once
	// the row is in, so it is read without a lock to choose the path.
	ingestedFromSQL = `SELECT coalesce(ingested_from, '') FROM {{I}}.dead_letters WHERE id = $1`

	// ingestedOriginsSQL: where the broker dead letters among $1 came from.
	ingestedOriginsSQL = `SELECT id, ingested_from, coalesce(event_id::text, ''), source FROM {{I}}.dead_letters
 WHERE id = ANY($1::bigint[]) AND ingested_from IS NOT NULL`

	// lockIngestedSQL locks a dead letter for a send to its broker; NOWAIT,
	// so that a second operator acting on it at once is told so instead of
	// waiting for a broker round trip.
	lockIngestedSQL = `SELECT to_jsonb(d) - 'payload' - 'edited_payload' - 'headers' || jsonb_build_object('payload_bytes', length(d.payload)),
       d.status, d.consumer, coalesce(d.ingested_from, ''), coalesce(d.event_id::text, ''), d.payload, d.headers, d.source
  FROM {{I}}.dead_letters d WHERE d.id = $1
   FOR UPDATE NOWAIT`

	// closeIngestedSQL marks a broker dead letter sent: replayed, or edited
	// with the corrected payload $3 (the original payload stays as it is).
	closeIngestedSQL = `UPDATE {{I}}.dead_letters d
   SET status = $2, resolved_at = now(), edited_payload = $3
 WHERE d.id = $1 AND d.status = 'parked' AND d.ingested_from IS NOT NULL
RETURNING to_jsonb(d) - 'payload' - 'edited_payload' - 'headers' || jsonb_build_object('payload_bytes', length(d.payload))`

	// auditMarkSQL: the last audit entry's id when a dead letter is locked
	// for a send. The send's own entry, if that transaction commits, comes
	// after it (identity values only grow), so a lost transaction's entry is
	// looked for among the rows written since: a short backward scan of the
	// primary key, not the whole log.
	auditMarkSQL = `SELECT coalesce(max(id), 0) FROM {{O}}.audit_log`

	// lostSendSQL, after the transaction that locked dead letter $1 for a
	// send was lost: whether that transaction's audit entry exists (it
	// carries send id $3 and comes after entry $2: if it is there, the
	// transaction committed), the row's status, who last acted on it, and
	// the row as audit entries show it. The row is locked: what is decided
	// from it is written before anyone else acts. The send id, not the
	// transaction id (pg_xact_status), is the proof: a standby promoted
	// after an asynchronous failover reissues transaction ids, so a lost
	// transaction's xid may name another transaction, or one in its future.
	lostSendSQL = `SELECT EXISTS (SELECT 1 FROM {{O}}.audit_log a
                WHERE a.id > $2::bigint AND a.target_kind = 'inbox_dead_letter' AND a.details->>'send_id' = $3::text),
       d.status,
       coalesce((SELECT a.actor FROM {{O}}.audit_log a
                  WHERE a.target_kind = 'inbox_dead_letter' AND a.target_ids[1] = $1::bigint::text
                  ORDER BY a.id DESC LIMIT 1), 'unknown'),
       to_jsonb(d) - 'payload' - 'edited_payload' - 'headers' || jsonb_build_object('payload_bytes', length(d.payload))
  FROM {{I}}.dead_letters d WHERE d.id = $1::bigint
   FOR UPDATE OF d`

	// requestsOfSQL: every request on the dead letters $1, oldest first.
	requestsOfSQL = `SELECT id, dead_letter_id, consumer, action, status, requested_by, reason, requested_at, done_at,
       coalesce(done_by, ''), coalesce(outcome, ''), length(payload)
  FROM {{I}}.dead_letter_requests
 WHERE dead_letter_id = ANY($1::bigint[])
 ORDER BY dead_letter_id, id`

	requestsByIDSQL = `SELECT id, dead_letter_id, consumer, action, status, requested_by, reason, requested_at, done_at,
       coalesce(done_by, ''), coalesce(outcome, ''), length(payload)
  FROM {{I}}.dead_letter_requests
 WHERE id = ANY($1::bigint[])
 ORDER BY id`

	// blockedBehindSQL counts the dead letters blocked behind each of $1.
	blockedBehindSQL = `SELECT blocked_by, count(*) FROM {{I}}.dead_letters
 WHERE blocked_by = ANY($1::bigint[]) AND status = 'blocked'
 GROUP BY blocked_by`
)

type inboxStatements struct {
	lockDeadLetter, deadLetterLane, lockLane, pendingRequestOf, insertRequest string
	cancelRequests, dropDeadLetter, restoreDeadLetter, openBehind, setLane    string
	lastDrop, requestStatus, requestsOf, requestsByID, blockedBehind          string
	ingestedFrom, ingestedOrigins, lockIngested, closeIngested, auditMark     string
	lostSend                                                                  string
}

func renderInboxStatements(outboxIdent, inboxIdent string) inboxStatements {
	r := strings.NewReplacer("{{O}}", outboxIdent, "{{I}}", inboxIdent).Replace
	return inboxStatements{
		lockDeadLetter: r(lockDeadLetterSQL), deadLetterLane: r(deadLetterLaneSQL), lockLane: r(lockInboxLaneSQL),
		pendingRequestOf: r(pendingRequestOfSQL), insertRequest: r(insertRequestSQL),
		cancelRequests: r(cancelRequestsSQL), dropDeadLetter: r(dropDeadLetterSQL),
		restoreDeadLetter: r(restoreDeadLetterSQL), openBehind: r(openBehindSQL), setLane: r(setInboxLaneSQL),
		lastDrop: r(lastInboxDropSQL), requestStatus: r(requestStatusSQL), requestsOf: r(requestsOfSQL),
		requestsByID: r(requestsByIDSQL), blockedBehind: r(blockedBehindSQL),
		ingestedFrom: r(ingestedFromSQL), ingestedOrigins: r(ingestedOriginsSQL), lockIngested: r(lockIngestedSQL),
		closeIngested: r(closeIngestedSQL), auditMark: r(auditMarkSQL), lostSend: r(lostSendSQL),
	}
}

// Settings and the two-person rule (approvals.go).
const (
	settingsSQL = `SELECT two_person_rule, extract(epoch FROM approval_ttl)::float8, distinct_logins, updated_at, updated_by
  FROM {{O}}.settings`

	settingsStateSQL = `SELECT to_jsonb(s) FROM {{O}}.settings s FOR UPDATE`

	// setSettingsSQL: NULL leaves a setting as it is.
	setSettingsSQL = `UPDATE {{O}}.settings
   SET two_person_rule = coalesce($1, two_person_rule),
       approval_ttl = coalesce(make_interval(secs => $2), approval_ttl),
       distinct_logins = coalesce($3, distinct_logins),
       updated_at = now(), updated_by = $4
RETURNING to_jsonb(settings)`

	insertApprovalSQL = `INSERT INTO {{O}}.approvals (action, refs, filter, payload, payload_sha256, content_type, rate,
    requested_by, reason, expires_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, now() + approval_ttl FROM {{O}}.settings
RETURNING id, expires_at, requested_login`

	approvalColumns = `id, action, refs, filter, payload, coalesce(payload_sha256, ''), coalesce(content_type, ''),
       coalesce(rate, 0), requested_by, requested_login, reason, requested_at, expires_at, status,
       coalesce(decided_by, ''), coalesce(decided_login, ''), decided_at, coalesce(decision_reason, ''), done_at, result,
       expires_at <= now()`

	lockApprovalSQL = `SELECT ` + approvalColumns + ` FROM {{O}}.approvals WHERE id = $1 FOR UPDATE`

	listApprovalsSQL = `SELECT ` + approvalColumns + ` FROM {{O}}.approvals
 WHERE ($1::boolean OR status = 'pending')
 ORDER BY id DESC LIMIT $2`

	// decideApprovalSQL takes a pending approval for one decision: it can
	// only leave pending once, so an approval runs at most once.
	decideApprovalSQL = `UPDATE {{O}}.approvals
   SET status = $2, decided_by = $3, decided_login = session_user, decided_at = now(), decision_reason = $4
 WHERE id = $1 AND status = 'pending'`

	sessionUserSQL = `SELECT session_user::text`

	finishApprovalSQL = `UPDATE {{O}}.approvals SET status = 'done', done_at = now(), result = $2
 WHERE id = $1 AND status = 'running'`
)

type approvalStatements struct {
	settings, settingsState, setSettings, insert, lock, list, decide, sessionUser, finish string
}

func renderApprovalStatements(outboxIdent string) approvalStatements {
	r := strings.NewReplacer("{{O}}", outboxIdent).Replace
	return approvalStatements{
		settings: r(settingsSQL), settingsState: r(settingsStateSQL), setSettings: r(setSettingsSQL),
		insert: r(insertApprovalSQL), lock: r(lockApprovalSQL), list: r(listApprovalsSQL),
		decide: r(decideApprovalSQL), sessionUser: r(sessionUserSQL), finish: r(finishApprovalSQL),
	}
}
