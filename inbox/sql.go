package inbox

import "strings"

// Every statement of the inbox. {{I}} becomes the quoted inbox schema and
// {{O}} the quoted outbox schema when an Inbox is created; all values are
// bind parameters.

// The hot path: one statement after BEGIN records the event as processed by
// this consumer, moves its lane forward when it is the next in order, and
// says whether the event is already a dead letter. The handler runs only
// when all three answers are right; otherwise the transaction is rolled back
// (or, for the slow paths, continues with the statements further down).
//
// The dead-letter check looks the event up by id alone (dead_letters_event_idx)
// inside a subquery with OFFSET 0, which keeps the planner from pushing the
// consumer and status conditions into it. Without that fence, statistics
// taken before an incident parked the consumer's events (20 rows, say,
// against 20,000 now) made the planner read every dead letter of the
// consumer through dead_letters_consumer_status_idx: once per event for a
// single claim, once per batch for a batch claim
// (TestClaimPlansLookDeadLettersUpByEvent). openDeadLetterSQL is written the
// same way. The batch claim first asks whether the consumer has an open dead
// letter at all (a probe of dead_letters_consumer_status_idx per open
// status: with equality on both columns the probes cannot turn into a read
// of the consumer's closed dead letters) and looks its events up only then:
// 100 lookups in an index with nothing of the consumer in it cost 0.18 ms
// per batch, the probes 0.005 ms.
const (
	// claimKeyedSQL: $1 consumer, $2 event id, $3 topic, $4 key, $5
	// sequence, $6 payload sha256, $7 whether a key's first event may start
	// its lane at any sequence. Indexes: processed's primary key, lanes'
	// primary key, dead_letters_event_idx.
	claimKeyedSQL = `WITH ins AS (
    INSERT INTO {{I}}.processed (consumer, event_id, topic, key, sequence, payload_sha256)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING 1
), upd AS (
    UPDATE {{I}}.lanes SET last_sequence = $5, updated_at = now()
     WHERE consumer = $1 AND topic = $3 AND key = $4 AND last_sequence = $5 - 1 AND blocked_by IS NULL
    RETURNING 1
), new AS (
    INSERT INTO {{I}}.lanes (consumer, topic, key, last_sequence)
    SELECT $1, $3, $4, $5 WHERE ($5 = 1 OR $7::boolean) AND NOT EXISTS (SELECT 1 FROM upd)
    ON CONFLICT (consumer, topic, key) DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM ins),
       EXISTS (SELECT 1 FROM upd) OR EXISTS (SELECT 1 FROM new),
       EXISTS (SELECT 1 FROM (SELECT consumer, status FROM {{I}}.dead_letters WHERE event_id = $2 OFFSET 0) d
                WHERE d.consumer = $1 AND d.status IN ('parked', 'blocked', 'dropped'))`

	// claimSQL is claimKeyedSQL for an event without a key: no lane.
	claimSQL = `WITH ins AS (
    INSERT INTO {{I}}.processed (consumer, event_id, topic, key, sequence, payload_sha256)
    VALUES ($1, $2, $3, '', NULL, $4)
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM ins), true,
       EXISTS (SELECT 1 FROM (SELECT consumer, status FROM {{I}}.dead_letters WHERE event_id = $2 OFFSET 0) d
                WHERE d.consumer = $1 AND d.status IN ('parked', 'blocked', 'dropped'))`

	// claimRunSQL is the claim of a whole batch in one statement: $2..$6
	// are arrays (event ids, topics, keys, sequences, payload sha256) of
	// events whose keys' sequences are contiguous and in order within the
	// batch (checked by the caller). It returns how many processed records
	// it inserted, how many lanes it moved (or started), how many lanes the
	// batch has, and whether any event is a dead letter already. The batch
	// is all good only when every record and every lane was taken.
	//
	// The records are a plain INSERT: an event recorded before fails the
	// statement with unique_violation, and the caller handles the batch the
	// slower way, which settles duplicates. ON CONFLICT DO NOTHING would
	// make every record a speculative insertion, confirmed by a second
	// write: 14 µs instead of 7 µs per record on the project machine, for a
	// case (a redelivered batch) that is rare.
	//
	// The lanes are matched on their whole primary key from runs (the
	// consumer too comes from runs, not from $1): with "l.consumer = $1",
	// statistics taken before the consumer had many lanes (a new consumer,
	// or the first hours of one) made the planner read every lane of the
	// consumer and compare each with every run, 40-90 ms per batch of 100
	// at 1,000 lanes (TestClaimRunPlanLooksLanesUpByKey).
	claimRunSQL = `WITH input AS (
    SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::bytea[]) AS t(event_id, topic, key, sequence, sha)
), ins AS (
    INSERT INTO {{I}}.processed (consumer, event_id, topic, key, sequence, payload_sha256)
    SELECT $1, event_id, topic, key, sequence, sha FROM input
    RETURNING 1
), runs AS (
    SELECT $1::text AS consumer, topic, key, min(sequence) AS first, max(sequence) AS last
      FROM input WHERE key <> '' GROUP BY topic, key
), upd AS (
    UPDATE {{I}}.lanes l SET last_sequence = r.last, updated_at = now()
      FROM runs r
     WHERE l.consumer = r.consumer AND l.topic = r.topic AND l.key = r.key AND l.last_sequence = r.first - 1 AND l.blocked_by IS NULL
    RETURNING 1
), new AS (
    INSERT INTO {{I}}.lanes (consumer, topic, key, last_sequence)
    SELECT r.consumer, r.topic, r.key, r.last FROM runs r
     WHERE (r.first = 1 OR $7::boolean)
       AND NOT EXISTS (SELECT 1 FROM {{I}}.lanes l WHERE l.consumer = r.consumer AND l.topic = r.topic AND l.key = r.key)
    ON CONFLICT (consumer, topic, key) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd) + (SELECT count(*) FROM new), (SELECT count(*) FROM runs),
       (EXISTS (SELECT 1 FROM {{I}}.dead_letters WHERE consumer = $1 AND status = 'parked')
        OR EXISTS (SELECT 1 FROM {{I}}.dead_letters WHERE consumer = $1 AND status = 'blocked')
        OR EXISTS (SELECT 1 FROM {{I}}.dead_letters WHERE consumer = $1 AND status = 'dropped'))
       AND EXISTS (SELECT 1 FROM input i
                    CROSS JOIN LATERAL (SELECT consumer, status FROM {{I}}.dead_letters WHERE event_id = i.event_id OFFSET 0) d
                    WHERE d.consumer = $1 AND d.status IN ('parked', 'blocked', 'dropped'))`

	processedShaSQL = `SELECT payload_sha256 FROM {{I}}.processed WHERE consumer = $1 AND event_id = $2`

	processedInsertSQL = `INSERT INTO {{I}}.processed (consumer, event_id, topic, key, sequence, payload_sha256)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (consumer, event_id) DO NOTHING`
)

// Lanes: the slow path and the release of a blocked lane lock the lane row
// first, then read or change the dead letters of the lane. Everything that
// decides about a lane does it under this lock, in this order.
const (
	// ensureLaneSQL creates a lane with nothing applied (last_sequence 0),
	// so that it can be locked and hold a blocked_by.
	ensureLaneSQL = `INSERT INTO {{I}}.lanes (consumer, topic, key, last_sequence) VALUES ($1, $2, $3, 0)
ON CONFLICT (consumer, topic, key) DO NOTHING`

	lockLaneSQL = `SELECT l.last_sequence, l.blocked_by, h.sequence
  FROM {{I}}.lanes l
  LEFT JOIN {{I}}.dead_letters h ON h.id = l.blocked_by
 WHERE l.consumer = $1 AND l.topic = $2 AND l.key = $3
   FOR UPDATE OF l`

	advanceLaneSQL = `UPDATE {{I}}.lanes SET last_sequence = greatest(last_sequence, $4), updated_at = now()
 WHERE consumer = $1 AND topic = $2 AND key = $3`

	blockLaneSQL = `UPDATE {{I}}.lanes
   SET blocked_by = $4, blocked_since = CASE WHEN blocked_by IS NULL THEN now() ELSE blocked_since END, updated_at = now()
 WHERE consumer = $1 AND topic = $2 AND key = $3`

	unblockLaneSQL = `UPDATE {{I}}.lanes SET blocked_by = NULL, blocked_since = NULL, updated_at = now()
 WHERE consumer = $1 AND topic = $2 AND key = $3`

	// nextInLaneSQL: the open dead letter of the lane that comes next in
	// order (dead_letters_lane_idx).
	nextInLaneSQL = `SELECT id, status, sequence, waiting_for IS NOT NULL
  FROM {{I}}.dead_letters
 WHERE consumer = $1 AND topic = $2 AND key = $3 AND status IN ('parked', 'blocked') AND sequence > $4
 ORDER BY sequence, id
 LIMIT 1`

	// repointSQL makes $4 the dead letter every blocked one of the lane
	// waits for.
	repointSQL = `UPDATE {{I}}.dead_letters SET blocked_by = $4
 WHERE consumer = $1 AND topic = $2 AND key = $3 AND status = 'blocked' AND id <> $4
   AND blocked_by IS DISTINCT FROM $4`
)

// Dead letters and the attempt history.
const (
	openDeadLetterSQL = `SELECT id FROM (SELECT id, consumer, status FROM {{I}}.dead_letters WHERE event_id = $2 OFFSET 0) d
 WHERE consumer = $1 AND status IN ('parked', 'blocked', 'dropped')
 ORDER BY id LIMIT 1`

	// findMalformedSQL finds an open dead letter holding the same malformed
	// delivery (no event id to deduplicate on): same topic, payload, headers
	// and source. Kafka sources carry partition and offset, so a redelivered
	// record is found and a different record with the same bytes is not.
	findMalformedSQL = `SELECT id FROM {{I}}.dead_letters
 WHERE consumer = $1 AND status IN ('parked', 'blocked', 'dropped') AND event_id IS NULL
   AND topic = $2 AND sha256(payload) = $3 AND headers = $4::jsonb AND source = $5::jsonb
 ORDER BY id LIMIT 1`

	// insertDeadLetterSQL: first_failed_at is the first failed attempt of
	// the event not yet linked to a dead letter, or now.
	insertDeadLetterSQL = `INSERT INTO {{I}}.dead_letters (consumer, consumer_version, event_id, topic, key, sequence, type,
    version, payload, headers, content_type, correlation_id, error, error_class, attempts, status, blocked_by,
    waiting_for, source, first_failed_at, last_failed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
    coalesce((SELECT min(a.started_at) FROM {{I}}.attempts a
               WHERE a.consumer = $1 AND a.event_id = $3 AND a.dead_letter_id IS NULL), now()),
    now())
RETURNING id`

	// linkAttemptsSQL attaches the attempts that led to a park to its dead
	// letter; the budget of a later redelivery starts from zero.
	linkAttemptsSQL = `UPDATE {{I}}.attempts SET dead_letter_id = $3
 WHERE consumer = $1 AND event_id = $2 AND dead_letter_id IS NULL`

	countAttemptsSQL = `SELECT count(*) FROM {{I}}.attempts
 WHERE consumer = $1 AND event_id = $2 AND dead_letter_id IS NULL AND outcome = 'retry'`

	insertAttemptSQL = `INSERT INTO {{I}}.attempts (consumer, event_id, dead_letter_id, attempt, started_at, duration_ms,
    error_class, error, outcome)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`

	auditSQL = `INSERT INTO {{O}}.audit_log (actor, action, target_kind, target_ids, reason, before, after, details)
VALUES ($1, $2, 'inbox_dead_letter', $3::text[], $4, $5, $6, $7)`

	// loadDeadLetterSQL reads what a redrive needs; FOR UPDATE variant below.
	loadDeadLetterSQL = `SELECT id, consumer, status, event_id, topic, key, coalesce(sequence, 0), payload, headers,
       coalesce(source->>'content_type_property', ''), coalesce(source->>'binding', ''), coalesce(blocked_by, 0)
  FROM {{I}}.dead_letters WHERE id = $1`

	// earlierInLaneSQL: an open dead letter of the lane that is still to
	// be applied (after the lane's last sequence $5) and comes before
	// sequence $4. Rows at or below the last sequence (conflicts, late
	// arrivals) hold nothing back.
	earlierInLaneSQL = `SELECT id, sequence FROM {{I}}.dead_letters
 WHERE consumer = $1 AND topic = $2 AND key = $3 AND status IN ('parked', 'blocked') AND sequence < $4 AND sequence > $5
 ORDER BY sequence, id LIMIT 1`

	// deadLetterStateSQL is the audit "before" of a dead letter.
	deadLetterStateSQL = `SELECT to_jsonb(d) - 'payload' - 'edited_payload' - 'headers' || jsonb_build_object('payload_bytes', length(d.payload))
  FROM {{I}}.dead_letters d WHERE id = $1`

	headClassSQL = `SELECT error_class FROM {{I}}.dead_letters WHERE id = $1`

	lockDeadLetterSQL = `SELECT status FROM {{I}}.dead_letters WHERE id = $1 FOR UPDATE`

	resolveDeadLetterSQL = `UPDATE {{I}}.dead_letters
   SET status = 'resolved', resolved_at = now(), blocked_by = NULL, waiting_for = NULL, edited_payload = $2
 WHERE id = $1`

	// failDeadLetterSQL: a redriven or released dead letter failed again; it
	// is parked (the head of its lane when the lane is blocked).
	failDeadLetterSQL = `UPDATE {{I}}.dead_letters
   SET status = 'parked', blocked_by = NULL, waiting_for = NULL, error = $2, error_class = $3,
       attempts = attempts + $4, last_failed_at = now()
 WHERE id = $1
RETURNING attempts`

	// holdDeadLetterSQL: a blocked dead letter whose predecessor never
	// arrived becomes the head of its lane, waiting for sequence $2.
	holdDeadLetterSQL = `UPDATE {{I}}.dead_letters
   SET status = 'parked', blocked_by = NULL, waiting_for = $2, error = $3, error_class = 'transient',
       last_failed_at = now()
 WHERE id = $1`
)

// verifySQL touches every table the inbox reads (audit_log is insert-only
// for the consumer role).
const verifySQL = `SELECT 1 FROM {{I}}.processed, {{I}}.lanes, {{I}}.dead_letters, {{I}}.attempts, {{O}}.error_classes LIMIT 0`

type statements struct {
	verify                                                            string
	claimKeyed, claim, claimRun, processedSha, processedInsert        string
	ensureLane, lockLane, advanceLane, blockLane, unblockLane         string
	nextInLane, repoint                                               string
	openDeadLetter, insertDeadLetter, linkAttempts, countAttempts     string
	insertAttempt, audit, loadDeadLetter, deadLetterState             string
	lockDeadLetter, resolveDeadLetter, failDeadLetter, holdDeadLetter string
	headClass, findMalformed, earlierInLane                           string
}

func renderStatements(inboxIdent, outboxIdent string) statements {
	r := strings.NewReplacer("{{I}}", inboxIdent, "{{O}}", outboxIdent).Replace
	return statements{
		verify:     r(verifySQL),
		claimKeyed: r(claimKeyedSQL), claim: r(claimSQL), claimRun: r(claimRunSQL), processedSha: r(processedShaSQL),
		processedInsert: r(processedInsertSQL),
		ensureLane:      r(ensureLaneSQL), lockLane: r(lockLaneSQL), advanceLane: r(advanceLaneSQL),
		blockLane: r(blockLaneSQL), unblockLane: r(unblockLaneSQL), nextInLane: r(nextInLaneSQL), repoint: r(repointSQL),
		openDeadLetter: r(openDeadLetterSQL), insertDeadLetter: r(insertDeadLetterSQL),
		linkAttempts: r(linkAttemptsSQL), countAttempts: r(countAttemptsSQL), insertAttempt: r(insertAttemptSQL),
		audit: r(auditSQL), loadDeadLetter: r(loadDeadLetterSQL), deadLetterState: r(deadLetterStateSQL),
		lockDeadLetter: r(lockDeadLetterSQL), resolveDeadLetter: r(resolveDeadLetterSQL),
		failDeadLetter: r(failDeadLetterSQL), holdDeadLetter: r(holdDeadLetterSQL),
		headClass: r(headClassSQL), findMalformed: r(findMalformedSQL), earlierInLane: r(earlierInLaneSQL),
	}
}

// Operator requests (dead_letter_requests): recorded by the operator tools,
// run by the consumer. A request is settled in the transaction that applies
// its dead letter (or records the new failure), so its outcome and the
// application commit together.
const (
	// pendingRequestsSQL: this consumer's pending requests in request order
	// (dead_letter_requests_pending_idx), with the lane of their dead letter.
	pendingRequestsSQL = `SELECT r.id, r.dead_letter_id, r.action, r.payload, r.requested_by, r.reason, d.topic, d.key
  FROM {{I}}.dead_letter_requests r
  JOIN {{I}}.dead_letters d ON d.id = r.dead_letter_id
 WHERE r.consumer = $1 AND r.status = 'pending'
 ORDER BY r.id
 LIMIT $2`

	// settleRequestSQL: only a pending request is settled, so that two
	// processes of one consumer never record two outcomes.
	settleRequestSQL = `UPDATE {{I}}.dead_letter_requests
   SET status = $2, done_at = now(), done_by = $3, outcome = $4
 WHERE id = $1 AND status = 'pending'`
)

type requestStatements struct {
	pending, settle string
}

func renderRequestStatements(inboxIdent string) requestStatements {
	r := strings.NewReplacer("{{I}}", inboxIdent).Replace
	return requestStatements{pending: r(pendingRequestsSQL), settle: r(settleRequestSQL)}
}
