package sweeper

import "strings"

// Every statement of the sweeper. {{O}} becomes the quoted outbox schema and
// {{I}} the quoted inbox schema when a Sweeper is created; all values are
// bind parameters. The database clock is the only clock. Every statement is
// safe to run twice at once (row locks, SKIP LOCKED, re-checked conditions):
// the single leader keeps the load and the logs down, correctness never
// depends on it.

// The system actor of every audit entry the sweeper writes.
const actor = "system:sweeper"

// Per-partition probes of pending events bound the partition by row
// comparisons and order by (partition, id), never "partition = p ORDER BY
// id": only messages_pending_idx yields that order, so the planner cannot
// walk messages_pkey through the published history (see relay claimSQL).

// Reclaim.
const (
	// reclaimLeasesSQL frees partition leases that expired more than $1 ago.
	// Relays take expired leases over by themselves (relay acquireSQL); a
	// freed lease is simply visible as free, and a relay that comes back
	// after its lease expired can no longer renew it (renewSQL matches the
	// owner). The token stays: the next acquisition increments it. For each
	// freed partition: its pending events (at most $2 counted) and the
	// oldest one, which the dead relay may have had in flight. One audit
	// entry per partition.
	reclaimLeasesSQL = `WITH expired AS (
    SELECT partition, owner, lease_until, lease_token
      FROM {{O}}.partitions
     WHERE owner IS NOT NULL AND lease_until < now() - $1::interval
     ORDER BY partition
       FOR UPDATE SKIP LOCKED
), freed AS (
    UPDATE {{O}}.partitions p
       SET owner = NULL, lease_until = NULL
      FROM expired e
     WHERE p.partition = e.partition AND p.lease_token = e.lease_token
    RETURNING p.partition, e.owner, e.lease_until, p.lease_token
), audited AS (
    INSERT INTO {{O}}.audit_log (actor, action, target_kind, target_ids, reason, before, after, details)
    SELECT $3, 'reclaim', 'partition', ARRAY[f.partition::text],
           format('lease of relay %s expired at %s and was not renewed', f.owner, f.lease_until),
           jsonb_build_object('owner', f.owner, 'lease_until', f.lease_until, 'lease_token', f.lease_token),
           jsonb_build_object('owner', NULL),
           jsonb_build_object('sweeper', $4::text)
      FROM freed f
)
SELECT f.partition, f.owner, f.lease_until,
       (SELECT count(*) FROM (SELECT 1 FROM {{O}}.messages m
                               WHERE (m.partition, m.id) > (f.partition, 0) AND (m.partition, m.id) < (f.partition + 1, 0)
                                 AND m.status = 'pending' ORDER BY m.partition, m.id LIMIT $2) c),
       (SELECT m.event_id FROM {{O}}.messages m
         WHERE (m.partition, m.id) > (f.partition, 0) AND (m.partition, m.id) < (f.partition + 1, 0)
           AND m.status = 'pending' ORDER BY m.partition, m.id LIMIT 1)
  FROM freed f
 ORDER BY f.partition`

	// orphanLanesSQL releases lanes still held forever by a head that is
	// no longer waiting: published more than $1 ago (the relay died between
	// marking it published and releasing its lane: relay releaseLanesSQL)
	// or gone. The small partial index lanes_blocked_by_idx finds the held
	// lanes; rows are locked in (topic, key) order, as producers lock them.
	orphanLanesSQL = `WITH orphan AS (
    SELECT l.topic, l.key, l.blocked_by, b.event_id, b.published_at
      FROM {{O}}.lanes l
      LEFT JOIN {{O}}.messages b ON b.id = l.blocked_by
     WHERE l.blocked_by IS NOT NULL AND l.hold_until = 'infinity'
       AND (b.id IS NULL OR (b.status = 'published' AND b.published_at < now() - $1::interval))
     ORDER BY l.topic, l.key
     LIMIT $2
       FOR UPDATE OF l SKIP LOCKED
), released AS (
    UPDATE {{O}}.lanes l
       SET hold_until = NULL, blocked_by = NULL, blocked_since = NULL
      FROM orphan o
     WHERE l.topic = o.topic AND l.key = o.key AND l.blocked_by = o.blocked_by AND l.hold_until = 'infinity'
    RETURNING l.topic, l.key, o.blocked_by, o.event_id, o.published_at
), audited AS (
    INSERT INTO {{O}}.audit_log (actor, action, target_kind, target_ids, reason, before, after, details)
    SELECT $3, 'lane_release', 'outbox_message', ARRAY[coalesce(r.event_id::text, r.blocked_by::text)],
           CASE WHEN r.event_id IS NULL
                THEN 'lane held by an event that no longer exists'
                ELSE 'lane still held after its head was published: the relay stopped before releasing it' END,
           jsonb_build_object('hold_until', 'infinity', 'blocked_by', r.blocked_by),
           jsonb_build_object('hold_until', NULL, 'blocked_by', NULL),
           jsonb_build_object('topic', r.topic, 'key', r.key, 'head_message_id', r.blocked_by,
                              'head_published_at', r.published_at, 'sweeper', $4::text)
      FROM released r
)
SELECT topic, key, blocked_by FROM released ORDER BY topic, key`

	// unblockLanesSQL runs after orphanLanesSQL in the same transaction (a
	// new snapshot: producers that held the lane lock have committed their
	// 'blocked' rows), as the relay's own unblockLanesSQL does.
	unblockLanesSQL = `UPDATE {{O}}.messages m
   SET status = 'pending', available_at = now()
  FROM unnest($1::text[], $2::text[]) AS l(topic, key)
 WHERE m.key = l.key AND m.topic = l.topic AND m.key <> '' AND m.status = 'blocked'`

	// deadRelaysSQL removes registrations that stopped heartbeating long
	// ago. They no longer count towards the fair share anyway (relay
	// heartbeatSQL counts alive_until > now()); a relay that comes back
	// registers again.
	deadRelaysSQL = `DELETE FROM {{O}}.relays WHERE alive_until < now() - $1::interval
RETURNING relay_id, hostname, pid, alive_until`
)

// Rescue.
const (
	// rescueScanSQL finds, per partition, pending events due for longer than
	// $1 (at most $2 counted per partition), and whether a live relay holds
	// the partition. messages_pending_idx, one probe per partition.
	rescueScanSQL = `SELECT p.partition, coalesce(p.owner, ''), coalesce(p.lease_until > now(), false),
       w.waiting, extract(epoch FROM now() - w.oldest_due)::float8
  FROM {{O}}.partitions p
 CROSS JOIN LATERAL (
       SELECT count(*) AS waiting, min(x.available_at) AS oldest_due
         FROM (SELECT m.available_at FROM {{O}}.messages m
                WHERE (m.partition, m.id) > (p.partition, 0) AND (m.partition, m.id) < (p.partition + 1, 0)
                  AND m.status = 'pending' AND m.available_at < now() - $1::interval
                ORDER BY m.partition, m.id LIMIT $2) x) w
 WHERE w.waiting > 0
 ORDER BY p.partition`

	// rescueScheduledSQL counts delayed events overdue by more than $1 (the
	// relay owning their partition moves them when due) and live relays.
	rescueScheduledSQL = `SELECT (SELECT count(*) FROM (SELECT 1 FROM {{O}}.scheduled
                              WHERE conflict IS NULL AND due_at < now() - $1::interval LIMIT $2) s),
       (SELECT count(*) FROM {{O}}.relays WHERE alive_until > now())`

	// notifySQL wakes every relay (they ignore the payload).
	notifySQL = `SELECT pg_notify($1, $2)`
)

// retrySQL returns up to $4 parked events after id $3 to pending: parked
// more than $1 ago, with a retryable error class, on a topic with
// auto_retry, parked at most $2 times (their 'parked' attempts). The same
// change as an operator replay (ops replayMessageSQL): fresh attempt
// budget, due now; a lane the event blocks stays blocked until the relay has
// published it, then flows (relay releaseLanesSQL), so the lane's order
// holds. One audit entry per event, in the same statement. Every candidate
// is returned, retried or not (exhausted), for the keyset and the report.
const retrySQL = `WITH candidates AS (
    SELECT m.id, m.event_id, m.topic, m.key, m.attempts, m.parked_at, m.last_error_class,
           greatest(1, (SELECT count(*) FROM {{O}}.attempts a WHERE a.message_id = m.id AND a.outcome = 'parked')) AS parks
      FROM {{O}}.messages m
      JOIN {{O}}.topic_policies tp ON tp.topic = m.topic AND tp.auto_retry
      JOIN {{O}}.error_classes ec ON ec.class = m.last_error_class AND ec.retry
     WHERE m.status = 'parked' AND m.parked_at < now() - $1::interval AND m.id > $3
     ORDER BY m.id
     LIMIT $4
       FOR UPDATE OF m SKIP LOCKED
), retried AS (
    UPDATE {{O}}.messages m
       SET status = 'pending', attempts = 0, available_at = now(), parked_at = NULL
      FROM candidates c
     WHERE m.id = c.id AND m.status = 'parked' AND c.parks <= $2
    RETURNING m.id
), audited AS (
    INSERT INTO {{O}}.audit_log (actor, action, target_kind, target_ids, reason, before, after, details)
    SELECT $5, 'replay', 'outbox_message', ARRAY[c.event_id::text],
           format('automatic retry %s of %s: topic %s has auto_retry and error class %s is retryable',
                  c.parks, $2::int, c.topic, c.last_error_class),
           jsonb_build_object('status', 'parked', 'attempts', c.attempts, 'parked_at', c.parked_at,
                              'last_error_class', c.last_error_class),
           jsonb_build_object('status', 'pending', 'attempts', 0),
           jsonb_build_object('message_id', c.id, 'topic', c.topic, 'key', c.key, 'automatic', true,
                              'auto_retry', c.parks, 'max_auto_retries', $2::int, 'sweeper', $6::text)
      FROM candidates c JOIN retried r ON r.id = c.id
)
SELECT c.id, c.event_id, c.topic, c.last_error_class, c.parks, r.id IS NOT NULL
  FROM candidates c LEFT JOIN retried r ON r.id = c.id
 ORDER BY c.id`

// Retention.
const (
	cutoffSQL = `SELECT now() - $1::interval, now() - $2::interval`

	// retentionChunkSQL walks the outbox in id order, $2 rows at a time after
	// id $1 (primary key range: each statement touches a bounded slice of the
	// table wherever the old rows are), and deletes the published events of
	// the slice published before $3, with their failed-attempt history,
	// except those under a legal hold (counted). A row locked by anyone is
	// skipped, never waited for. It returns the last
	// id of the slice (NULL at the end of the table), whether every row of
	// the slice was created at or after $3 (nothing older follows: stop),
	// the counts deleted and held. published_at >= created_at, so a slice
	// created entirely after the cutoff has nothing to delete. The id lists
	// are arrays (= ANY) so that the planner probes messages_pkey and
	// attempts_message_idx instead of hashing a whole table per statement.
	retentionChunkSQL = `WITH ` + holdsCTE + `, chunk AS (
    SELECT id, created_at FROM {{O}}.messages WHERE id > $1 ORDER BY id LIMIT $2
), due AS (
    SELECT m.id, m.topic, m.key, m.headers FROM {{O}}.messages m
     WHERE m.id = ANY (ARRAY(SELECT id FROM chunk)) AND m.status = 'published' AND m.published_at < $3
), held AS (
    SELECT d.id FROM due d WHERE ` + heldMessageSQL + `
), doomed AS (
    SELECT m.id FROM {{O}}.messages m
     WHERE m.id = ANY (ARRAY(SELECT id FROM due EXCEPT ALL SELECT id FROM held))
       FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM {{O}}.messages m USING doomed d
     WHERE m.id = d.id AND m.status = 'published'
    RETURNING m.id
), deleted_attempts AS (
    DELETE FROM {{O}}.attempts a WHERE a.message_id = ANY (ARRAY(SELECT id FROM deleted))
    RETURNING 1
)
SELECT (SELECT max(id) FROM chunk),
       coalesce((SELECT bool_and(created_at >= $3) FROM chunk), true),
       (SELECT count(*) FROM deleted),
       (SELECT count(*) FROM deleted_attempts),
       (SELECT count(*) FROM held)`

	// retentionInboxSQL deletes up to $2 inbox records applied before $1,
	// except those under a legal hold: of a held key, or of an event whose
	// outbox row carries a held tenant (the inbox records no headers; the
	// probe uses messages_event_id_key). The scan may use
	// processed_processed_at_brin. The ctids are read and
	// deleted under one snapshot, so they still address the rows read (a row
	// deleted meanwhile by someone else is skipped). No FOR UPDATE: the
	// sweeper role may delete inbox records but not update them, and nothing
	// ever updates them.
	retentionInboxSQL = `WITH ` + holdsCTE + `
DELETE FROM {{I}}.processed
 WHERE ctid = ANY (ARRAY(
       SELECT p.ctid FROM {{I}}.processed p
        WHERE p.processed_at < $1
          AND NOT EXISTS (SELECT 1 FROM holds h
                           WHERE (h.topic IS NULL OR h.topic = p.topic)
                             AND (h.key = p.key
                                  OR h.tenant IS NOT NULL AND EXISTS (
                                     SELECT 1 FROM {{O}}.messages m
                                      WHERE m.event_id = p.event_id AND m.headers ->> h.tenant_header = h.tenant)))
        LIMIT $2))`
)

// Legal holds. An active hold (released_at IS NULL) matches a row of its
// topic (any topic when NULL) whose key is the held key, or whose tenant
// header (named by the hold itself) has the held value. Each statement reads
// the active holds once (holdsCTE, legal_holds_active_idx however many
// released holds the table keeps) and checks them against the bounded slice
// it works on, so the check never scans a big table. A hold placed while a
// statement runs applies from the next statement on.
const (
	// holdsCTE is the first CTE of every statement that honours holds.
	holdsCTE = `holds AS MATERIALIZED (
    SELECT topic, key, tenant_header, tenant FROM {{O}}.legal_holds WHERE released_at IS NULL
)`

	// heldMessageSQL: outbox row d (topic, key, headers) is held.
	heldMessageSQL = `EXISTS (SELECT 1 FROM holds h
                  WHERE (h.topic IS NULL OR h.topic = d.topic)
                    AND (h.key = d.key OR d.headers ->> h.tenant_header = h.tenant))`

	// heldDeadLetterSQL: dead letter d is held. Its headers are the broker
	// headers as received, an array of {"name", "value"}.
	heldDeadLetterSQL = `EXISTS (SELECT 1 FROM holds h
                  WHERE (h.topic IS NULL OR h.topic = d.topic)
                    AND (h.key = d.key
                         OR d.headers @> jsonb_build_array(jsonb_build_object('name', h.tenant_header, 'value', h.tenant))))`
)

// Redaction. Like retention, each statement walks one slice of the table in
// primary-key order ($2 rows after id $1), changes what is due in it, skips
// rows locked by anyone (SKIP LOCKED) and commits on its own; the walk
// stops at the first slice created entirely after the cutoff $3. $4 is the
// lower-cased names of the headers to remove. Each returns the last id of
// the slice (NULL at the end), whether the slice was entirely new, the rows
// redacted, the rows held, and the headers removed.
const (
	// redactMessagesSQL: published events published before $3, not yet
	// redacted, not held. The status is re-checked under the row lock; a
	// pending, blocked, parked or dropped event is never touched
	// (messages_redacted_is_published enforces it as well).
	redactMessagesSQL = `WITH ` + holdsCTE + `, chunk AS (
    SELECT id, created_at FROM {{O}}.messages WHERE id > $1 ORDER BY id LIMIT $2
), due AS (
    SELECT m.id, m.topic, m.key, m.headers FROM {{O}}.messages m
     WHERE m.id = ANY (ARRAY(SELECT id FROM chunk)) AND m.status = 'published' AND m.published_at < $3
       AND m.redacted_at IS NULL
), held AS (
    SELECT d.id FROM due d WHERE ` + heldMessageSQL + `
), doomed AS (
    SELECT m.id, m.headers FROM {{O}}.messages m
     WHERE m.id = ANY (ARRAY(SELECT id FROM due EXCEPT ALL SELECT id FROM held))
       FOR UPDATE SKIP LOCKED
), redacted AS (
    UPDATE {{O}}.messages m
       SET payload = ''::bytea, redacted_at = now(),
           headers = (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}'::jsonb)
                        FROM jsonb_each(m.headers) e WHERE lower(e.key) <> ALL ($4::text[]))
      FROM doomed d
     WHERE m.id = d.id AND m.status = 'published' AND m.redacted_at IS NULL
    RETURNING (SELECT count(*) FROM jsonb_object_keys(d.headers)) - (SELECT count(*) FROM jsonb_object_keys(m.headers)) AS removed
)
SELECT (SELECT max(id) FROM chunk),
       coalesce((SELECT bool_and(created_at >= $3) FROM chunk), true),
       (SELECT count(*) FROM redacted),
       (SELECT count(*) FROM held),
       (SELECT coalesce(sum(removed), 0) FROM redacted)`

	// redactDeadLettersSQL: dead letters resolved, replayed, dropped or
	// edited before $3 (resolved_at), not yet redacted, not held. Open ones
	// (parked, blocked) are never touched (dead_letters_redacted_is_closed).
	// resolved_at >= first_failed_at, so a slice that first failed after
	// the cutoff has nothing due. A header whose name is not valid UTF-8
	// (stored as {"base64": ...}) cannot match a configured name and stays.
	redactDeadLettersSQL = `WITH ` + holdsCTE + `, chunk AS (
    SELECT id, first_failed_at FROM {{I}}.dead_letters WHERE id > $1 ORDER BY id LIMIT $2
), due AS (
    SELECT d.id, d.topic, d.key, d.headers FROM {{I}}.dead_letters d
     WHERE d.id = ANY (ARRAY(SELECT id FROM chunk)) AND d.status IN ('resolved', 'replayed', 'dropped', 'edited')
       AND d.resolved_at < $3 AND d.redacted_at IS NULL
), held AS (
    SELECT d.id FROM due d WHERE ` + heldDeadLetterSQL + `
), doomed AS (
    SELECT d.id, d.headers FROM {{I}}.dead_letters d
     WHERE d.id = ANY (ARRAY(SELECT id FROM due EXCEPT ALL SELECT id FROM held))
       FOR UPDATE SKIP LOCKED
), redacted AS (
    UPDATE {{I}}.dead_letters d
       SET payload = ''::bytea, redacted_at = now(),
           edited_payload = CASE WHEN d.edited_payload IS NULL THEN NULL ELSE ''::bytea END,
           headers = (SELECT coalesce(jsonb_agg(x.e ORDER BY x.n), '[]'::jsonb)
                        FROM jsonb_array_elements(d.headers) WITH ORDINALITY AS x(e, n)
                       WHERE jsonb_typeof(x.e->'name') <> 'string' OR lower(x.e->>'name') <> ALL ($4::text[]))
      FROM doomed o
     WHERE d.id = o.id AND d.status IN ('resolved', 'replayed', 'dropped', 'edited') AND d.redacted_at IS NULL
    RETURNING d.id, jsonb_array_length(o.headers) - jsonb_array_length(d.headers) AS removed
), requests AS (
    -- The copies of a corrected payload on the dead letter's finished edit
    -- requests go with it (a data-modifying CTE always runs).
    UPDATE {{I}}.dead_letter_requests r
       SET payload = ''::bytea
      FROM redacted x
     WHERE r.dead_letter_id = x.id AND r.payload IS NOT NULL AND r.payload <> ''::bytea AND r.status <> 'pending'
)
SELECT (SELECT max(id) FROM chunk),
       coalesce((SELECT bool_and(first_failed_at >= $3) FROM chunk), true),
       (SELECT count(*) FROM redacted),
       (SELECT count(*) FROM held),
       (SELECT coalesce(sum(removed), 0) FROM redacted)`

	// redactApprovalsSQL: the corrected payloads of edits decided (approved
	// and run, or rejected) before $1. The edit itself is kept where it
	// ran (the corrected event, or the dead letter's edited_payload), which
	// retention, redaction and holds govern; the approval's copy goes.
	redactApprovalsSQL = `UPDATE {{O}}.approvals SET payload = ''::bytea
 WHERE action = 'edit' AND status IN ('done', 'rejected') AND decided_at < $1
   AND payload IS NOT NULL AND payload <> ''::bytea`

	// redactCutoffSQL: the one cutoff of a run, on the database clock.
	redactCutoffSQL = `SELECT now() - $1::interval`

	// redactAuditSQL: one entry per run that redacted anything. Counts,
	// cutoff and header names only: the audit log never holds payloads.
	redactAuditSQL = `INSERT INTO {{O}}.audit_log (actor, action, target_kind, reason, details)
VALUES ($1, 'redact', 'redaction_run', $2, $3)`
)

// Reconcile. Run in one read-only REPEATABLE READ transaction, so the counts
// and the lists agree.
const (
	// discoverConsumersSQL: (consumer, topic) pairs that applied anything
	// between $1 and $2 (processed_processed_at_brin).
	discoverConsumersSQL = `SELECT DISTINCT consumer, topic FROM {{I}}.processed
 WHERE processed_at >= $1 AND processed_at < $2 ORDER BY consumer, topic`

	// reconcileTopicsSQL: the producer side of the window, per topic.
	reconcileTopicsSQL = `SELECT topic, count(*),
       count(*) FILTER (WHERE status = 'published'),
       count(*) FILTER (WHERE status IN ('pending', 'blocked')),
       count(*) FILTER (WHERE status = 'parked'),
       count(*) FILTER (WHERE status = 'dropped')
  FROM {{O}}.messages
 WHERE created_at >= $1 AND created_at < $2
 GROUP BY topic ORDER BY topic`

	// reconcileCountsSQL: per (consumer, topic) pair, the events created in
	// [$3, $4) and published, how many the consumer applied (inbox.processed
	// primary key), and how many of the rest it dead-lettered.
	reconcileCountsSQL = `WITH pairs AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS p(consumer, topic)
), pub AS (
    SELECT m.event_id, m.topic FROM {{O}}.messages m
     WHERE m.status = 'published' AND m.created_at >= $3 AND m.created_at < $4 AND m.topic = ANY($2::text[])
), st AS (
    SELECT pr.consumer, pr.topic, pub.event_id,
           EXISTS (SELECT 1 FROM {{I}}.processed x WHERE x.consumer = pr.consumer AND x.event_id = pub.event_id) AS applied,
           EXISTS (SELECT 1 FROM {{I}}.dead_letters d WHERE d.event_id = pub.event_id AND d.consumer = pr.consumer) AS dead
      FROM pairs pr LEFT JOIN pub ON pub.topic = pr.topic
)
SELECT consumer, topic, count(event_id),
       count(event_id) FILTER (WHERE applied),
       count(event_id) FILTER (WHERE NOT applied AND dead)
  FROM st
 GROUP BY consumer, topic ORDER BY consumer, topic`

	// reconcileGapsSQL lists, in enqueue order, up to $5 events of topic $2
	// published in the window that consumer $1 neither applied nor
	// dead-lettered.
	reconcileGapsSQL = `SELECT m.event_id FROM {{O}}.messages m
 WHERE m.status = 'published' AND m.topic = $2 AND m.created_at >= $3 AND m.created_at < $4
   AND NOT EXISTS (SELECT 1 FROM {{I}}.processed x WHERE x.consumer = $1 AND x.event_id = m.event_id)
   AND NOT EXISTS (SELECT 1 FROM {{I}}.dead_letters d WHERE d.event_id = m.event_id AND d.consumer = $1)
 ORDER BY m.id
 LIMIT $5`
)

// Alarms. Run in one read-only transaction with a statement timeout.
const (
	// pendingAgeSQL: per topic, pending events that are due and how long the
	// oldest has been due. Due time, not enqueue time: a delayed event
	// (enqueued long ago, due now) or one backing off after a failure is
	// not late; an event the relay does not pick up is.
	pendingAgeSQL = `SELECT topic, count(*), extract(epoch FROM now() - min(available_at))::float8
  FROM {{O}}.messages
 WHERE status = 'pending' AND available_at <= now()
 GROUP BY topic ORDER BY topic`

	// parkedSQL: parked events per topic (messages_parked_idx).
	parkedSQL = `SELECT topic, count(*) FROM {{O}}.messages WHERE status = 'parked' GROUP BY topic ORDER BY topic`

	// deadLettersSQL: open dead letters per consumer
	// (dead_letters_consumer_status_idx).
	deadLettersSQL = `SELECT consumer, count(*) FROM {{I}}.dead_letters
 WHERE status IN ('parked', 'blocked') GROUP BY consumer ORDER BY consumer`

	// partitionsSQL: each partition's lease and the oldest event in it due
	// for longer than $1 (one probe of messages_pending_idx per partition).
	partitionsSQL = `SELECT p.partition, coalesce(p.owner, ''), p.owner IS NOT NULL AND p.lease_until < now(),
       extract(epoch FROM now() - w.available_at)::float8
  FROM {{O}}.partitions p
  LEFT JOIN LATERAL (
       SELECT m.available_at FROM {{O}}.messages m
        WHERE (m.partition, m.id) > (p.partition, 0) AND (m.partition, m.id) < (p.partition + 1, 0)
          AND m.status = 'pending' AND m.available_at < now() - $1::interval
        ORDER BY m.partition, m.id LIMIT 1) w ON true
 ORDER BY p.partition`

	// scheduledConflictsSQL: delayed events that cannot move into the
	// outbox because their event id is already there.
	scheduledConflictsSQL = `SELECT count(*) FROM {{O}}.scheduled WHERE conflict IS NOT NULL`

	// longTransactionsSQL: the oldest open transactions of client sessions
	// in this database. Other roles' sessions show their times only to
	// members of pg_read_all_stats (grant it to the sweeper's role). No
	// query text: it may carry data.
	longTransactionsSQL = `SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(state, ''),
       extract(epoch FROM now() - xact_start)::float8,
       backend_xmin IS NOT NULL OR backend_xid IS NOT NULL, coalesce(wait_event_type, '')
  FROM pg_stat_activity
 WHERE datname = current_database() AND backend_type = 'client backend'
   AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
 ORDER BY xact_start
 LIMIT 10`
)

// Locks: the leader lock on the dedicated connection, a job lock on the
// connection a job runs on.
const (
	tryLockSQL = `SELECT pg_try_advisory_lock($1)`
	unlockSQL  = `SELECT pg_advisory_unlock($1)`
)

// statements is the SQL of one Sweeper rendered for its schemas.
type statements struct {
	reclaimLeases, orphanLanes, unblockLanes, deadRelays       string
	rescueScan, rescueScheduled                                string
	retry                                                      string
	retentionChunk, retentionInbox                             string
	redactMessages, redactDeadLetters, redactAudit             string
	redactApprovals                                            string
	discoverConsumers, reconcileTopics, reconcileCounts, gaps  string
	pendingAge, parked, deadLetters, partitions, scheduledConf string
}

func renderStatements(outboxIdent, inboxIdent string) statements {
	rep := strings.NewReplacer("{{O}}", outboxIdent, "{{I}}", inboxIdent)
	r := rep.Replace
	return statements{
		reclaimLeases: r(reclaimLeasesSQL), orphanLanes: r(orphanLanesSQL), unblockLanes: r(unblockLanesSQL),
		deadRelays: r(deadRelaysSQL),
		rescueScan: r(rescueScanSQL), rescueScheduled: r(rescueScheduledSQL),
		retry:          r(retrySQL),
		retentionChunk: r(retentionChunkSQL), retentionInbox: r(retentionInboxSQL),
		redactMessages: r(redactMessagesSQL), redactDeadLetters: r(redactDeadLettersSQL), redactAudit: r(redactAuditSQL),
		redactApprovals:   r(redactApprovalsSQL),
		discoverConsumers: r(discoverConsumersSQL), reconcileTopics: r(reconcileTopicsSQL),
		reconcileCounts: r(reconcileCountsSQL), gaps: r(reconcileGapsSQL),
		pendingAge: r(pendingAgeSQL), parked: r(parkedSQL), deadLetters: r(deadLettersSQL),
		partitions: r(partitionsSQL), scheduledConf: r(scheduledConflictsSQL),
	}
}
