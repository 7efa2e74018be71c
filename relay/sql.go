package relay

import "strings"

// Every statement of the relay. {{S}} becomes the quoted outbox schema when a
// Relay is created; all values are bind parameters. The database clock is
// the only clock: due times, backoff and lease expiry all use now().

// Registry: each relay keeps a row in relays while it runs. The count of live
// relays decides each relay's fair share of the partitions.
const (
	heartbeatSQL = `WITH hb AS (
    INSERT INTO {{S}}.relays (relay_id, hostname, pid, version, alive_until)
    VALUES ($1, $2, $3, $4, now() + $5::interval)
    ON CONFLICT (relay_id) DO UPDATE
       SET heartbeat_at = now(), alive_until = EXCLUDED.alive_until
    RETURNING 1
)
SELECT 1 + count(*) FROM {{S}}.relays WHERE alive_until > now() AND relay_id <> $1`

	unregisterSQL = `DELETE FROM {{S}}.relays WHERE relay_id = $1`

	setIdleSQL = `UPDATE {{S}}.relays SET idle = $2 WHERE relay_id = $1`
)

// Leases. lease_token grows by one on every acquisition: it is the fencing
// token every marking statement checks, so a relay that lost a partition
// (paused past its lease, cut off) can never change that partition's rows.
const (
	// acquireSQL takes up to $3 partitions that are free or whose lease
	// expired. SKIP LOCKED keeps two relays acquiring at once from waiting on
	// each other; the re-check after locking keeps them from taking the same
	// partition.
	acquireSQL = `UPDATE {{S}}.partitions p
   SET owner = $1, lease_token = p.lease_token + 1, lease_until = now() + $2::interval,
       heartbeat_at = now(), acquired_at = now()
 WHERE p.partition IN (
       SELECT partition FROM {{S}}.partitions
        WHERE owner IS NULL OR lease_until < now()
        ORDER BY partition
        LIMIT $3
          FOR UPDATE SKIP LOCKED)
   AND (p.owner IS NULL OR p.lease_until < now())
RETURNING p.partition, p.lease_token`

	// renewSQL extends the leases this relay still holds with the token it
	// got. A partition taken over by another relay is not returned: lost.
	renewSQL = `UPDATE {{S}}.partitions p
   SET lease_until = now() + $2::interval, heartbeat_at = now()
  FROM unnest($3::int[], $4::bigint[]) AS f(partition, token)
 WHERE p.partition = f.partition AND p.lease_token = f.token AND p.owner = $1
RETURNING p.partition`

	releaseSQL = `UPDATE {{S}}.partitions p
   SET owner = NULL, lease_until = NULL, heartbeat_at = now()
  FROM unnest($2::int[], $3::bigint[]) AS f(partition, token)
 WHERE p.partition = f.partition AND p.lease_token = f.token AND p.owner = $1
RETURNING p.partition`

	// releaseAllSQL gives back every lease of relay $1 when it stops.
	releaseAllSQL = `UPDATE {{S}}.partitions
   SET owner = NULL, lease_until = NULL, heartbeat_at = now()
 WHERE owner = $1`

	topicPoliciesSQL = `SELECT topic, on_park, coalesce(max_attempts, 0) FROM {{S}}.topic_policies`
)

// fenceCTE locks (FOR SHARE) the partitions of a batch that this relay still
// owns under the same token with an unexpired lease. A takeover (acquireSQL
// updates the row) waits for the marking transaction, and a marking
// statement that runs after a takeover finds the new token and touches
// nothing. $1 owner, $2 partitions, $3 tokens.
const fenceCTE = `fence AS (
    SELECT p.partition FROM {{S}}.partitions p
      JOIN unnest($2::int[], $3::bigint[]) AS f(partition, token)
        ON p.partition = f.partition AND p.lease_token = f.token
     WHERE p.owner = $1 AND p.lease_until > now()
       FOR SHARE OF p
)`

// claimSQL reads the next pending, due events of each partition in id order
// (messages_pending_idx). No row is locked or changed: the partition lease is
// the claim, and only one worker of one relay reads a partition at a time.
//
// The partition is bounded by row comparisons and the rows are ordered by
// (partition, id), not by "partition = p ORDER BY id": with an equality the
// planner may read the rows in id order from messages_pkey and filter,
// walking every published row from the start of the table. It does so when
// the statistics were taken during a backlog (most rows pending) and the
// backlog has since drained: measured 2.1 s per claim over 200,000
// published rows instead of 19 ms. Only messages_pending_idx yields the
// (partition, id) order, so this shape reads pending rows only.
const claimSQL = `SELECT m.id, m.event_id, m.topic, m.key, m.partition, coalesce(m.sequence, 0), m.type, m.version,
       m.payload, m.content_type, m.headers, coalesce(m.correlation_id, ''), coalesce(m.causation_id, ''),
       coalesce(m.traceparent, ''), coalesce(m.tracestate, ''), coalesce(m.source, ''), m.created_at, m.attempts
  FROM unnest($1::int[]) AS p(partition)
 CROSS JOIN LATERAL (
       SELECT * FROM {{S}}.messages m
        WHERE (m.partition, m.id) > (p.partition, 0) AND (m.partition, m.id) < (p.partition + 1, 0)
          AND m.status = 'pending' AND m.available_at <= now()
        ORDER BY m.partition, m.id
        LIMIT $2) m
 ORDER BY m.id`

// claimPlanSQL runs in the same pipeline (one implicit transaction, one
// round trip) just before claimSQL and leaves the planner only the ordered
// scan of messages_pending_idx, which stops after $2 rows per partition.
// Statistics taken while little was pending (the normal state) make the
// planner estimate a handful of pending rows per partition, and then it
// prefers a bitmap scan plus sort: that reads every pending row of every
// partition on each claim, so a backlog drains in quadratic time, exactly
// when the relay has to catch up after an outage. Together with the mark's
// plan (markPublishedSQL), measured on 100,000 to 300,000 pending events
// before ANALYZE: 2,500-9,700 events/s before, 48,000-54,000 after
// (TestClaimPlanUnderBacklog).
// is_local = true: the settings end with the implicit transaction, so a
// pool shared with the application is not changed.
const claimPlanSQL = `SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)`

// markPublishedSQL marks acknowledged events, fenced. $4 ids, $5 broker acks,
// $6 publish duration in ms. It returns how many rows it marked and whether
// one of them is the event a blocked lane waits for (a replayed or
// corrected head: see releaseLanesSQL).
//
// Each event must be looked up by id (messages_pkey). Under statistics
// taken while little was pending, the planner believes
// messages_pending_idx holds a few hundred rows, and with a backlog it then
// reads every pending row (1.5 s per mark of 500 events over a backlog of
// 100,000, TestMarkPlanUnderBacklog). So no condition here lets it use
// that partial index: the fence is checked with array_position, and
// "still pending" (re-checked on the locked row version when an operator
// changed the row meanwhile) is written lower(status) = 'pending', which
// the planner cannot prove implies the index predicate status = 'pending'.
// Statuses are lower-case by the table's CHECK constraint.
const markPublishedSQL = `WITH ` + fenceCTE + `, marked AS (
    UPDATE {{S}}.messages m
       SET status = 'published', published_at = now(), published_by = $1, attempts = m.attempts + 1,
           publish_duration_ms = $6, broker_ack = u.ack
      FROM unnest($4::bigint[], $5::text[]) AS u(id, ack)
     WHERE m.id = u.id AND lower(m.status) = 'pending'
       AND array_position(ARRAY(SELECT partition FROM fence), m.partition) IS NOT NULL
    RETURNING m.id
)
SELECT (SELECT count(*) FROM marked),
       EXISTS (SELECT 1 FROM {{S}}.lanes l JOIN marked ON l.blocked_by = marked.id
                WHERE l.blocked_by IS NOT NULL AND l.hold_until = 'infinity')`

// asyncCommitSQL starts the transactions of Relay.withoutFlush: the marks
// (unless Config.DurableMarks) and the idle flag.
const asyncCommitSQL = `SET LOCAL synchronous_commit = off`

// releaseLanesSQL and unblockLanesSQL run in one transaction when the head a
// blocked lane waited for was published: the lane flows again. Two
// statements, because the second needs a snapshot taken after the first
// waited for producers holding the lane lock (their 'blocked' rows).
const (
	releaseLanesSQL = `UPDATE {{S}}.lanes
   SET hold_until = NULL, blocked_by = NULL, blocked_since = NULL
 WHERE blocked_by = ANY($1::bigint[]) AND blocked_by IS NOT NULL AND hold_until = 'infinity'
RETURNING topic, key`

	unblockLanesSQL = `UPDATE {{S}}.messages m
   SET status = 'pending', available_at = now()
  FROM unnest($1::text[], $2::text[]) AS l(topic, key)
 WHERE m.key = l.key AND m.topic = l.topic AND m.key <> '' AND m.status = 'blocked'`
)

// fenceSQL is the fence alone, run first in the transaction that records
// failures: the FOR SHARE locks then hold until commit.
const fenceSQL = `WITH ` + fenceCTE + ` SELECT partition FROM fence`

// Failure handling, run in one transaction after fenceSQL, only for rows of
// partitions the fence returned. now() is the transaction's start time, so
// every statement computes the same "available again at".
const (
	// retrySQL: one more attempt used; due again after $2.
	retrySQL = `UPDATE {{S}}.messages
   SET attempts = attempts + 1, available_at = now() + $2::interval, last_error = $3, last_error_class = $4
 WHERE id = $1 AND status = 'pending'`

	// parkSQL: no more attempts; an operator decides.
	parkSQL = `UPDATE {{S}}.messages
   SET status = 'parked', parked_at = now(), attempts = attempts + 1, last_error = $2, last_error_class = $3
 WHERE id = $1 AND status = 'pending'`

	// holdLaneSQL keeps later events of the lane back until the failed one is
	// due again. Taking the lane row lock waits for producers that are
	// enqueueing on this lane right now; the next statement (a new snapshot,
	// READ COMMITTED) then sees their rows. A parked (infinite) hold stays.
	holdLaneSQL = `UPDATE {{S}}.lanes
   SET hold_until = now() + $3::interval, blocked_by = $4,
       blocked_since = CASE WHEN blocked_by = $4 THEN coalesce(blocked_since, now()) ELSE now() END
 WHERE topic = $1 AND key = $2 AND hold_until IS DISTINCT FROM 'infinity'`

	// deferLaneSQL moves the lane's later pending events behind the hold
	// (messages_lane_idx).
	deferLaneSQL = `UPDATE {{S}}.messages
   SET available_at = greatest(available_at, now() + $4::interval)
 WHERE key = $2 AND topic = $1 AND key <> '' AND sequence > $3 AND status = 'pending'`

	// blockLaneSQL: the lane's head is parked and the topic's policy is
	// "block": the lane stops until an operator releases it. Producers read
	// the infinite hold and store new events of the lane as 'blocked'.
	blockLaneSQL = `UPDATE {{S}}.lanes
   SET hold_until = 'infinity', blocked_by = $3, blocked_since = now()
 WHERE topic = $1 AND key = $2`

	blockLaterSQL = `UPDATE {{S}}.messages
   SET status = 'blocked'
 WHERE key = $2 AND topic = $1 AND key <> '' AND sequence > $3 AND status = 'pending'`

	// releaseLaneSQL: the parked event's topic policy is "skip": later events
	// go on as if the lane had never been held.
	releaseLaneSQL = `UPDATE {{S}}.lanes
   SET hold_until = NULL, blocked_by = NULL, blocked_since = NULL
 WHERE topic = $1 AND key = $2 AND hold_until IS DISTINCT FROM 'infinity'`

	releaseLaterSQL = `UPDATE {{S}}.messages
   SET available_at = now()
 WHERE key = $2 AND topic = $1 AND key <> '' AND sequence > $3 AND status = 'pending' AND available_at > now()`

	attemptSQL = `INSERT INTO {{S}}.attempts (message_id, event_id, attempt, started_at, duration_ms, relay_id,
    error_class, error, outcome)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`

	auditParkSQL = `INSERT INTO {{S}}.audit_log (actor, action, target_kind, target_ids, reason, after, details)
VALUES ($1, 'park', 'outbox_message', ARRAY[$2::text], $3,
        jsonb_build_object('status', 'parked', 'attempts', $4::int, 'error_class', $5::text),
        jsonb_build_object('message_id', $6::bigint, 'topic', $7::text, 'key', $8::text, 'lane_policy', $9::text))`
)

// Delayed events. promoteSQL moves due rows of scheduled into messages, taking
// each keyed event's lane sequence now, in due order. An event id that
// reached messages meanwhile fails the statement with unique_violation; the
// caller then marks it (markConflictSQL) and tries again.
const (
	promoteSQL = `WITH due AS (
    DELETE FROM {{S}}.scheduled s
     WHERE s.event_id IN (
           SELECT event_id FROM {{S}}.scheduled
            WHERE partition = ANY($1::int[]) AND conflict IS NULL AND due_at <= now()
            ORDER BY due_at, created_at
            LIMIT $2
              FOR UPDATE SKIP LOCKED)
    RETURNING s.*
), ranked AS (
    SELECT d.*,
           row_number() OVER (PARTITION BY d.topic, d.key ORDER BY d.due_at, d.created_at, d.event_id) AS lane_rank,
           count(*) OVER (PARTITION BY d.topic, d.key) AS lane_count
      FROM due d
), lane AS (
    INSERT INTO {{S}}.lanes AS l (topic, key, last_sequence)
    SELECT topic, key, max(lane_count) FROM ranked WHERE key <> '' GROUP BY topic, key ORDER BY topic, key
    ON CONFLICT (topic, key) DO UPDATE
       SET last_sequence = l.last_sequence + EXCLUDED.last_sequence, last_enqueued_at = now()
    RETURNING l.topic, l.key, l.last_sequence, l.hold_until
)
INSERT INTO {{S}}.messages (event_id, topic, key, partition, sequence, type, version, payload,
    content_type, headers, correlation_id, causation_id, traceparent, tracestate, source,
    status, available_at, created_at)
SELECT r.event_id, r.topic, r.key, r.partition,
       CASE WHEN r.key = '' THEN NULL ELSE lane.last_sequence - r.lane_count + r.lane_rank END,
       r.type, r.version, r.payload, r.content_type, r.headers, r.correlation_id, r.causation_id,
       r.traceparent, r.tracestate, r.source,
       CASE WHEN lane.hold_until = 'infinity' THEN 'blocked' ELSE 'pending' END,
       greatest(now(), lane.hold_until), r.created_at
  FROM ranked r
  LEFT JOIN lane ON lane.topic = r.topic AND lane.key = r.key
 ORDER BY r.due_at, r.created_at, r.event_id`

	markConflictSQL = `UPDATE {{S}}.scheduled s
   SET conflict = 'event id already in messages: the event was enqueued twice; drop one of them'
 WHERE s.partition = ANY($1::int[]) AND s.conflict IS NULL AND s.due_at <= now()
   AND EXISTS (SELECT 1 FROM {{S}}.messages m WHERE m.event_id = s.event_id)`

	// nextDueSQL: seconds until the next delayed event of these partitions is
	// due (negative when overdue), NULL when there is none.
	nextDueSQL = `SELECT extract(epoch FROM min(due_at) - now())::float8 FROM {{S}}.scheduled
 WHERE partition = ANY($1::int[]) AND conflict IS NULL`
)

// statements is the SQL of one Relay rendered for its schema.
type statements struct {
	heartbeat, unregister, setIdle                     string
	acquire, renew, release, releaseAll, topicPolicies string
	claimPlan, claim, markPublished, fence             string
	releaseLanes, unblockLanes                         string
	retry, park, holdLane, deferLane                   string
	blockLane, blockLater, releaseLane, releaseLater   string
	attempt, auditPark                                 string
	promote, markConflict, nextDue                     string
}

func renderStatements(schemaIdent string) statements {
	r := func(q string) string { return strings.ReplaceAll(q, "{{S}}", schemaIdent) }
	return statements{
		heartbeat: r(heartbeatSQL), unregister: r(unregisterSQL), setIdle: r(setIdleSQL),
		acquire: r(acquireSQL), renew: r(renewSQL), release: r(releaseSQL), releaseAll: r(releaseAllSQL), topicPolicies: r(topicPoliciesSQL),
		claimPlan: claimPlanSQL, claim: r(claimSQL), markPublished: r(markPublishedSQL), fence: r(fenceSQL),
		releaseLanes: r(releaseLanesSQL), unblockLanes: r(unblockLanesSQL),
		retry: r(retrySQL), park: r(parkSQL), holdLane: r(holdLaneSQL), deferLane: r(deferLaneSQL),
		blockLane: r(blockLaneSQL), blockLater: r(blockLaterSQL), releaseLane: r(releaseLaneSQL), releaseLater: r(releaseLaterSQL),
		attempt: r(attemptSQL), auditPark: r(auditParkSQL),
		promote: r(promoteSQL), markConflict: r(markConflictSQL), nextDue: r(nextDueSQL),
	}
}
