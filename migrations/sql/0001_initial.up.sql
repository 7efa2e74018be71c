-- outboxkit schema, version 1.
--
-- This file is a Go text/template rendered by package migrations: the .Outbox
-- and .Inbox placeholders become the quoted schema names chosen in
-- migrations.Config (default "outbox" and "inbox"), and .Partitions the number
-- of relay partitions. The outbox schema itself is created by the migration
-- runner before this file runs, because golang-migrate keeps its version
-- table there.

CREATE SCHEMA IF NOT EXISTS {{.Inbox}};
COMMENT ON SCHEMA {{.Inbox}} IS 'outboxkit inbox: what each consumer applied (exactly once) and what it could not apply (dead letters).';

-- ---------------------------------------------------------------------------
-- Partitions and the hash that maps a key to one.
-- ---------------------------------------------------------------------------

-- partition_for maps an ordering key to a relay partition. It is inlined into
-- the INSERT, so producers never need to know the partition count, and all
-- events of one key land in one partition (one relay at a time publishes them).
CREATE FUNCTION {{.Outbox}}.partition_for(k text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT ((hashtextextended(k, 0) & 9223372036854775807) % {{.Partitions}})::integer $$;
COMMENT ON FUNCTION {{.Outbox}}.partition_for(text) IS
    'Relay partition of an ordering key: hashtextextended(key) mod {{.Partitions}}. Keyless events hash their event id. Changing the partition count requires draining pending events first (docs/operations.md).';

CREATE TABLE {{.Outbox}}.partitions (
    partition    integer     PRIMARY KEY,
    owner        text,
    lease_token  bigint      NOT NULL DEFAULT 0,
    lease_until  timestamptz,
    heartbeat_at timestamptz,
    acquired_at  timestamptz,
    CONSTRAINT partitions_partition_range CHECK (partition >= 0 AND partition < {{.Partitions}}),
    CONSTRAINT partitions_owner_has_lease CHECK ((owner IS NULL) = (lease_until IS NULL))
);
COMMENT ON TABLE {{.Outbox}}.partitions IS 'One row per relay partition. A relay publishes a partition only while it holds an unexpired lease on it; the lease token is a fencing token checked by every write the relay makes.';
COMMENT ON COLUMN {{.Outbox}}.partitions.partition IS 'Partition number, 0 to {{.Partitions}}-1; messages.partition refers to it.';
COMMENT ON COLUMN {{.Outbox}}.partitions.owner IS 'Relay id holding the lease (see relays.relay_id), NULL when free.';
COMMENT ON COLUMN {{.Outbox}}.partitions.lease_token IS 'Fencing token, incremented on every acquisition. A relay whose token no longer matches cannot mark any message of this partition.';
COMMENT ON COLUMN {{.Outbox}}.partitions.lease_until IS 'Lease expiry (database clock). After it, any relay may take the partition over.';
COMMENT ON COLUMN {{.Outbox}}.partitions.heartbeat_at IS 'Last renewal by the owner.';
COMMENT ON COLUMN {{.Outbox}}.partitions.acquired_at IS 'When the current owner acquired the lease.';
INSERT INTO {{.Outbox}}.partitions (partition) SELECT generate_series(0, {{.Partitions}} - 1);

CREATE TABLE {{.Outbox}}.relays (
    relay_id     text        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    version      text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    alive_until  timestamptz NOT NULL,
    idle         boolean     NOT NULL DEFAULT false
);
COMMENT ON TABLE {{.Outbox}}.relays IS 'Relays that are running (or were, until alive_until). Each relay takes a fair share of the partitions: ceil(partitions / live relays).';
COMMENT ON COLUMN {{.Outbox}}.relays.relay_id IS 'Unique relay id (hostname-pid-random unless configured).';
COMMENT ON COLUMN {{.Outbox}}.relays.hostname IS 'Host the relay runs on.';
COMMENT ON COLUMN {{.Outbox}}.relays.pid IS 'Operating-system process id of the relay.';
COMMENT ON COLUMN {{.Outbox}}.relays.version IS 'outboxkit version of the relay binary.';
COMMENT ON COLUMN {{.Outbox}}.relays.started_at IS 'When the relay registered.';
COMMENT ON COLUMN {{.Outbox}}.relays.heartbeat_at IS 'Last heartbeat.';
COMMENT ON COLUMN {{.Outbox}}.relays.idle IS 'The relay has nothing to do and waits for a NOTIFY. Producers send pg_notify only while some live relay is idle: NOTIFY serialises commits database-wide, so a busy relay (which needs no wake-up) spares producers that cost.';
COMMENT ON COLUMN {{.Outbox}}.relays.alive_until IS 'The relay counts as alive until this time; a relay that stops heartbeating is ignored after it.';

-- ---------------------------------------------------------------------------
-- Messages: the outbox itself.
-- ---------------------------------------------------------------------------

CREATE TABLE {{.Outbox}}.messages (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id            uuid        NOT NULL,
    topic               text        NOT NULL,
    key                 text        NOT NULL DEFAULT '',
    partition           integer     NOT NULL,
    sequence            bigint,
    type                text        NOT NULL,
    version             integer     NOT NULL DEFAULT 1,
    payload             bytea       NOT NULL,
    content_type        text        NOT NULL,
    headers             jsonb       NOT NULL DEFAULT '{}',
    correlation_id      text,
    causation_id        text,
    traceparent         text,
    tracestate          text,
    source              text,
    status              text        NOT NULL DEFAULT 'pending',
    attempts            integer     NOT NULL DEFAULT 0,
    available_at        timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at        timestamptz,
    published_by        text,
    publish_duration_ms integer,
    broker_ack          text,
    last_error          text,
    last_error_class    text,
    parked_at           timestamptz,
    CONSTRAINT messages_event_id_key UNIQUE (event_id),
    CONSTRAINT messages_status_check CHECK (status IN ('pending', 'blocked', 'published', 'parked', 'dropped')),
    CONSTRAINT messages_topic_not_empty CHECK (topic <> ''),
    CONSTRAINT messages_type_not_empty CHECK (type <> ''),
    CONSTRAINT messages_sequence_iff_key CHECK ((key = '') = (sequence IS NULL)),
    CONSTRAINT messages_attempts_not_negative CHECK (attempts >= 0),
    CONSTRAINT messages_published_has_time CHECK ((status = 'published') = (published_at IS NOT NULL))
);
COMMENT ON TABLE {{.Outbox}}.messages IS 'The transactional outbox: one row per event, inserted in the producer''s transaction by outbox.Enqueue. The relay publishes rows in id order per partition and marks them published after the broker acknowledged them. Published rows are kept for the retention window, then deleted by the sweeper.';
COMMENT ON COLUMN {{.Outbox}}.messages.id IS 'Enqueue order. Within one (topic, key) lane, id order equals sequence order.';
COMMENT ON COLUMN {{.Outbox}}.messages.event_id IS 'Event id (UUIDv7 unless the producer supplied one), sent as ce_id / message_id; consumers deduplicate on it.';
COMMENT ON COLUMN {{.Outbox}}.messages.topic IS 'Logical topic; routed to a Kafka topic or a RabbitMQ exchange and routing key by the relay configuration.';
COMMENT ON COLUMN {{.Outbox}}.messages.key IS 'Ordering key (aggregate id), empty for unordered events. Events of one (topic, key) are published and applied in sequence order.';
COMMENT ON COLUMN {{.Outbox}}.messages.partition IS 'Relay partition, partition_for(key) (or of the event id when keyless).';
COMMENT ON COLUMN {{.Outbox}}.messages.sequence IS 'Position in the (topic, key) lane: 1, 2, 3... without gaps, taken under the lane row lock at enqueue. Sent as ce_sequence. NULL when keyless.';
COMMENT ON COLUMN {{.Outbox}}.messages.type IS 'Event type, e.g. payout.created (ce_type).';
COMMENT ON COLUMN {{.Outbox}}.messages.version IS 'Schema version of the payload (ce_eventversion).';
COMMENT ON COLUMN {{.Outbox}}.messages.payload IS 'Payload bytes exactly as enqueued; any format (JSON is common, never required).';
COMMENT ON COLUMN {{.Outbox}}.messages.content_type IS 'Media type of the payload (content-type on the wire).';
COMMENT ON COLUMN {{.Outbox}}.messages.headers IS 'Producer headers, a JSON object of string values, sent as broker headers.';
COMMENT ON COLUMN {{.Outbox}}.messages.correlation_id IS 'Correlation id back to the business flow (ce_correlationid).';
COMMENT ON COLUMN {{.Outbox}}.messages.causation_id IS 'Id of the message that caused this one (ce_causationid).';
COMMENT ON COLUMN {{.Outbox}}.messages.traceparent IS 'W3C traceparent captured at enqueue (ce_traceparent).';
COMMENT ON COLUMN {{.Outbox}}.messages.tracestate IS 'W3C tracestate captured at enqueue (ce_tracestate).';
COMMENT ON COLUMN {{.Outbox}}.messages.source IS 'CloudEvents source of the producer; NULL means the relay''s configured source.';
COMMENT ON COLUMN {{.Outbox}}.messages.status IS 'pending: waiting for the relay; blocked: waiting behind a parked event of its lane; published: acknowledged by the broker; parked: given up on, needs an operator; dropped: removed by an operator (reversible).';
COMMENT ON COLUMN {{.Outbox}}.messages.attempts IS 'Publish attempts counted against this event (broker-wide outages are not counted).';
COMMENT ON COLUMN {{.Outbox}}.messages.available_at IS 'Earliest time (database clock) the relay may try this event; in the future while the event, or an earlier event of its lane, backs off.';
COMMENT ON COLUMN {{.Outbox}}.messages.created_at IS 'When the event was enqueued (clock time of the INSERT); ce_time.';
COMMENT ON COLUMN {{.Outbox}}.messages.published_at IS 'When the relay recorded the broker acknowledgement.';
COMMENT ON COLUMN {{.Outbox}}.messages.published_by IS 'Relay id that published the event.';
COMMENT ON COLUMN {{.Outbox}}.messages.publish_duration_ms IS 'Duration of the successful publish call, in milliseconds.';
COMMENT ON COLUMN {{.Outbox}}.messages.broker_ack IS 'Broker coordinates of the acknowledgement, e.g. kafka payments/3@1042 or rabbitmq exchange=outbox key=payments.';
COMMENT ON COLUMN {{.Outbox}}.messages.last_error IS 'Error of the last failed attempt (all attempts are in outbox.attempts).';
COMMENT ON COLUMN {{.Outbox}}.messages.last_error_class IS 'Class of the last error (see outbox.error_classes).';
COMMENT ON COLUMN {{.Outbox}}.messages.parked_at IS 'When the event was parked.';

-- The relay claim: pending rows of a partition in id order. Partial, so
-- published history never slows the claim down.
CREATE INDEX messages_pending_idx ON {{.Outbox}}.messages (partition, id) WHERE status = 'pending';
-- Lane lookups (trace by key, lane release, backoff of later events) and a
-- hard guarantee that a lane never holds two live events with one sequence
-- number. A dropped event leaves the index: "dlq edit" drops the original and
-- gives its corrected copy the same place in the lane.
CREATE UNIQUE INDEX messages_lane_idx ON {{.Outbox}}.messages (key, topic, sequence) WHERE key <> '' AND status <> 'dropped';
CREATE INDEX messages_parked_idx ON {{.Outbox}}.messages (topic, id) WHERE status = 'parked';
-- Dropped events by key, for the operator's timeline: messages_lane_idx
-- leaves them out.
CREATE INDEX messages_dropped_idx ON {{.Outbox}}.messages (key, topic) WHERE status = 'dropped';
CREATE INDEX messages_blocked_idx ON {{.Outbox}}.messages (topic, id) WHERE status = 'blocked';
-- Time-range scans (replay, DBA queries). BRIN: tiny and nearly free to maintain.
CREATE INDEX messages_created_at_brin ON {{.Outbox}}.messages USING brin (created_at);
-- Publish rates (outboxkit stats, the dashboard): a published row is a new
-- tuple version at the end of the heap, so published_at follows the
-- physical order closely enough for BRIN.
CREATE INDEX messages_published_at_brin ON {{.Outbox}}.messages USING brin (published_at);

CREATE TABLE {{.Outbox}}.scheduled (
    event_id       uuid        PRIMARY KEY,
    topic          text        NOT NULL,
    key            text        NOT NULL DEFAULT '',
    partition      integer     NOT NULL,
    type           text        NOT NULL,
    version        integer     NOT NULL DEFAULT 1,
    payload        bytea       NOT NULL,
    content_type   text        NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    correlation_id text,
    causation_id   text,
    traceparent    text,
    tracestate     text,
    source         text,
    due_at         timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    conflict       text,
    CONSTRAINT scheduled_topic_not_empty CHECK (topic <> ''),
    CONSTRAINT scheduled_type_not_empty CHECK (type <> '')
);
COMMENT ON TABLE {{.Outbox}}.scheduled IS 'Delayed events (Message.DeliverAfter > 0). When due, the relay owning the partition moves each one into messages, where it takes the next sequence number of its lane: a delayed event joins its key''s order when it becomes due and never holds back the events enqueued after it.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.event_id IS 'Event id; unique across scheduled and messages.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.topic IS 'As messages.topic.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.key IS 'As messages.key.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.partition IS 'As messages.partition.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.type IS 'As messages.type.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.version IS 'As messages.version.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.payload IS 'As messages.payload.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.content_type IS 'As messages.content_type.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.headers IS 'As messages.headers.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.correlation_id IS 'As messages.correlation_id.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.causation_id IS 'As messages.causation_id.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.traceparent IS 'As messages.traceparent.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.tracestate IS 'As messages.tracestate.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.source IS 'As messages.source.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.due_at IS 'When the event becomes due (database clock at enqueue plus DeliverAfter).';
COMMENT ON COLUMN {{.Outbox}}.scheduled.created_at IS 'When the event was enqueued; kept as messages.created_at when it moves.';
COMMENT ON COLUMN {{.Outbox}}.scheduled.conflict IS 'Set when the event could not move because its event id already exists in messages (a producer reused the id); an operator must drop one of the two.';
CREATE INDEX scheduled_due_idx ON {{.Outbox}}.scheduled (partition, due_at) WHERE conflict IS NULL;

CREATE TABLE {{.Outbox}}.lanes (
    topic            text        NOT NULL,
    key              text        NOT NULL,
    last_sequence    bigint      NOT NULL,
    hold_until       timestamptz,
    blocked_by       bigint,
    blocked_since    timestamptz,
    last_enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, key),
    CONSTRAINT lanes_key_not_empty CHECK (key <> ''),
    CONSTRAINT lanes_sequence_positive CHECK (last_sequence > 0)
) WITH (fillfactor = 70); -- every Enqueue updates its lane row: room for HOT updates keeps the table small
-- The relay releases a blocked lane when the event it waits for (a replayed
-- or corrected head) is published: a probe of this small index per batch.
CREATE INDEX lanes_blocked_by_idx ON {{.Outbox}}.lanes (blocked_by) WHERE blocked_by IS NOT NULL;
COMMENT ON TABLE {{.Outbox}}.lanes IS 'One row per (topic, key) ordering lane. Enqueue takes the next sequence number under this row''s lock, so two transactions enqueueing for one key are serialised and sequence order equals commit order. Also records why a lane is held back.';
COMMENT ON COLUMN {{.Outbox}}.lanes.topic IS 'Topic of the lane.';
COMMENT ON COLUMN {{.Outbox}}.lanes.key IS 'Ordering key of the lane.';
COMMENT ON COLUMN {{.Outbox}}.lanes.last_sequence IS 'Sequence number of the last event enqueued in the lane.';
COMMENT ON COLUMN {{.Outbox}}.lanes.hold_until IS 'Events of the lane may not be published before this time: set while the head event backs off, infinity while it is parked (block policy). NULL or past: not held.';
COMMENT ON COLUMN {{.Outbox}}.lanes.blocked_by IS 'messages.id of the event holding the lane back.';
COMMENT ON COLUMN {{.Outbox}}.lanes.blocked_since IS 'When the lane was first held back by blocked_by.';
COMMENT ON COLUMN {{.Outbox}}.lanes.last_enqueued_at IS 'Transaction time of the last enqueue in the lane.';

-- ---------------------------------------------------------------------------
-- Failures: taxonomy, attempt history, per-topic policy.
-- ---------------------------------------------------------------------------

CREATE TABLE {{.Outbox}}.error_classes (
    class          text    PRIMARY KEY,
    retry          boolean NOT NULL,
    counts_attempt boolean NOT NULL,
    description    text    NOT NULL
);
COMMENT ON TABLE {{.Outbox}}.error_classes IS 'The stable error taxonomy shared by relay and inbox. The class of an error decides between retrying and parking.';
COMMENT ON COLUMN {{.Outbox}}.error_classes.class IS 'Class name, stored in last_error_class and attempts.error_class.';
COMMENT ON COLUMN {{.Outbox}}.error_classes.retry IS 'true: retried with exponential backoff; false: parked at once.';
COMMENT ON COLUMN {{.Outbox}}.error_classes.counts_attempt IS 'false for outages: the attempt is not counted against the event, so an outage never burns events into the parked state.';
COMMENT ON COLUMN {{.Outbox}}.error_classes.description IS 'What the class means and what an operator does about it.';
INSERT INTO {{.Outbox}}.error_classes (class, retry, counts_attempt, description) VALUES
    ('transient',         true,  true,  'A temporary failure of this event (timeout, leader change, lock conflict). Retried with backoff; parked after the maximum attempts.'),
    ('dependency_outage', true,  false, 'The broker or a dependency is down for everything. The whole publisher or consumer backs off; attempts are not counted.'),
    ('unroutable',        false, true,  'The broker cannot route the event (no queue bound, unknown topic). Fix the routing or topology, then redrive.'),
    ('poison_format',     false, true,  'The event cannot be encoded or decoded (too large, malformed). Edit the payload or drop the event.'),
    ('permanent',         false, true,  'The receiver refused the event for good (authorization, validation). Needs a human decision.'),
    ('conflict',          false, true,  'The same event id arrived with a different payload. Investigate the producer before replaying.'),
    ('no_handler',        false, true,  'No handler or upcaster for this event type and version. Deploy a handler, then redrive.');

CREATE TABLE {{.Outbox}}.attempts (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    relay_id    text        NOT NULL,
    error_class text        NOT NULL REFERENCES {{.Outbox}}.error_classes (class),
    error       text        NOT NULL,
    outcome     text        NOT NULL,
    CONSTRAINT attempts_outcome_check CHECK (outcome IN ('retry', 'parked', 'not_counted'))
);
COMMENT ON TABLE {{.Outbox}}.attempts IS 'Every failed publish attempt. The successful attempt is recorded on the message row itself (published_at, published_by, publish_duration_ms, broker_ack) so that the hot path writes one row per event; outbox.attempt_history shows both.';
COMMENT ON COLUMN {{.Outbox}}.attempts.id IS 'Attempt record id.';
COMMENT ON COLUMN {{.Outbox}}.attempts.message_id IS 'messages.id of the event.';
COMMENT ON COLUMN {{.Outbox}}.attempts.event_id IS 'Event id of the event.';
COMMENT ON COLUMN {{.Outbox}}.attempts.attempt IS 'Attempt number counted against the event after this attempt (unchanged for outages).';
COMMENT ON COLUMN {{.Outbox}}.attempts.started_at IS 'When the publish call started.';
COMMENT ON COLUMN {{.Outbox}}.attempts.duration_ms IS 'Duration of the publish call, in milliseconds.';
COMMENT ON COLUMN {{.Outbox}}.attempts.relay_id IS 'Relay that made the attempt.';
COMMENT ON COLUMN {{.Outbox}}.attempts.error_class IS 'Class of the error (outbox.error_classes).';
COMMENT ON COLUMN {{.Outbox}}.attempts.error IS 'Error text, as returned by the broker client.';
COMMENT ON COLUMN {{.Outbox}}.attempts.outcome IS 'retry: backed off for another attempt; parked: given up; not_counted: outage, not counted against the event.';
CREATE INDEX attempts_message_idx ON {{.Outbox}}.attempts (message_id);

CREATE TABLE {{.Outbox}}.topic_policies (
    topic        text        PRIMARY KEY,
    on_park      text        NOT NULL DEFAULT 'block',
    auto_retry   boolean     NOT NULL DEFAULT false,
    max_attempts integer,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text        NOT NULL,
    CONSTRAINT topic_policies_on_park_check CHECK (on_park IN ('block', 'skip')),
    CONSTRAINT topic_policies_max_attempts_positive CHECK (max_attempts IS NULL OR max_attempts > 0)
);
COMMENT ON TABLE {{.Outbox}}.topic_policies IS 'Per-topic failure policy. A topic without a row uses the defaults: block, no automatic retry, the relay''s MaxAttempts.';
COMMENT ON COLUMN {{.Outbox}}.topic_policies.topic IS 'Topic the policy applies to.';
COMMENT ON COLUMN {{.Outbox}}.topic_policies.on_park IS 'block: later events of a parked event''s key wait (status blocked) until an operator resolves it; skip: they go on.';
COMMENT ON COLUMN {{.Outbox}}.topic_policies.auto_retry IS 'The sweeper may return events parked with a retryable error class to pending.';
COMMENT ON COLUMN {{.Outbox}}.topic_policies.max_attempts IS 'Attempts before parking; NULL uses the relay''s MaxAttempts.';
COMMENT ON COLUMN {{.Outbox}}.topic_policies.updated_at IS 'Last change.';
COMMENT ON COLUMN {{.Outbox}}.topic_policies.updated_by IS 'Who made the last change.';

-- ---------------------------------------------------------------------------
-- Audit log: append-only.
-- ---------------------------------------------------------------------------

CREATE TABLE {{.Outbox}}.audit_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target_kind text        NOT NULL,
    target_ids  text[]      NOT NULL DEFAULT '{}',
    reason      text        NOT NULL,
    before      jsonb,
    after       jsonb,
    details     jsonb,
    CONSTRAINT audit_log_actor_not_empty CHECK (actor <> ''),
    CONSTRAINT audit_log_reason_not_empty CHECK (reason <> '')
);
COMMENT ON TABLE {{.Outbox}}.audit_log IS 'Append-only record of every park, replay, redrive, drop, restore, edit and policy change: who, when, what, why, before and after. UPDATE, DELETE and TRUNCATE are refused by trigger.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.id IS 'Entry id, in order of writing.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.at IS 'When the action happened.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.actor IS 'Operator, or relay:<id> / sweeper:<id> / inbox:<consumer> for system actions.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.action IS 'What was done: park, ingest (a broker dead letter copied into inbox.dead_letters), replay, redrive, drop, restore, edit, release, policy.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.target_kind IS 'What it was done to: message, dead_letter, lane, topic_policy, partition.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.target_ids IS 'Ids of the targets (event ids, dead-letter ids, topic/key).';
COMMENT ON COLUMN {{.Outbox}}.audit_log.reason IS 'Why: the operator''s reason or the error that caused a park.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.before IS 'State of the target before the action.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.after IS 'State of the target after the action.';
COMMENT ON COLUMN {{.Outbox}}.audit_log.details IS 'Anything else worth keeping (filters of a bulk action, counts).';

CREATE FUNCTION {{.Outbox}}.audit_log_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'outboxkit audit log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit entries are kept forever; archive them by copying, never by changing this table.';
END $$;
COMMENT ON FUNCTION {{.Outbox}}.audit_log_append_only() IS 'Trigger function refusing UPDATE, DELETE and TRUNCATE on audit_log.';
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON {{.Outbox}}.audit_log
    FOR EACH ROW EXECUTE FUNCTION {{.Outbox}}.audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON {{.Outbox}}.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION {{.Outbox}}.audit_log_append_only();

-- ---------------------------------------------------------------------------
-- Settings and the two-person rule.
-- ---------------------------------------------------------------------------

CREATE TABLE {{.Outbox}}.settings (
    singleton       boolean     PRIMARY KEY DEFAULT true,
    two_person_rule boolean     NOT NULL DEFAULT false,
    approval_ttl    interval    NOT NULL DEFAULT '1 hour',
    distinct_logins boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text        NOT NULL,
    CONSTRAINT settings_one_row CHECK (singleton),
    CONSTRAINT settings_approval_ttl_positive CHECK (approval_ttl > interval '0')
);
COMMENT ON TABLE {{.Outbox}}.settings IS 'Team settings of the operator tools, one row. Only the owner of the outboxkit tables changes it (outboxkit dlq settings, audited); the operator role reads it.';
COMMENT ON COLUMN {{.Outbox}}.settings.singleton IS 'Always true: the table has one row.';
COMMENT ON COLUMN {{.Outbox}}.settings.two_person_rule IS 'When true, bulk redrive, drop and edit (CLI and dashboard) do not run when asked: they create a pending approval (outbox.approvals) that a second operator must approve. Default false.';
COMMENT ON COLUMN {{.Outbox}}.settings.approval_ttl IS 'How long a pending approval can be approved (default 1 hour); after it, it expires and must be asked again.';
COMMENT ON COLUMN {{.Outbox}}.settings.distinct_logins IS 'When true, the approver must also use another database login (session_user) than the requester, not only another actor name: actor names are declared by the operator, logins are authenticated by PostgreSQL.';
COMMENT ON COLUMN {{.Outbox}}.settings.updated_at IS 'Last change.';
COMMENT ON COLUMN {{.Outbox}}.settings.updated_by IS 'Who made the last change (actor), or migration.';
INSERT INTO {{.Outbox}}.settings (updated_by) VALUES ('migration');

CREATE TABLE {{.Outbox}}.approvals (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action          text        NOT NULL,
    refs            text[]      NOT NULL,
    filter          jsonb,
    payload         bytea,
    payload_sha256  text,
    content_type    text,
    rate            double precision,
    requested_by    text        NOT NULL,
    requested_login text        NOT NULL DEFAULT session_user,
    reason          text        NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',
    decided_by      text,
    decided_login   text,
    decided_at      timestamptz,
    decision_reason text,
    done_at         timestamptz,
    result          jsonb,
    CONSTRAINT approvals_action_check CHECK (action IN ('redrive', 'drop', 'edit')),
    CONSTRAINT approvals_status_check CHECK (status IN ('pending', 'running', 'done', 'rejected')),
    CONSTRAINT approvals_edit_has_payload CHECK ((action = 'edit') = (payload IS NOT NULL)),
    CONSTRAINT approvals_second_person CHECK (decided_by IS NULL OR status = 'rejected' OR decided_by <> requested_by),
    CONSTRAINT approvals_decided CHECK ((status = 'pending') = (decided_at IS NULL)),
    CONSTRAINT approvals_not_empty CHECK (requested_by <> '' AND reason <> '')
);
COMMENT ON TABLE {{.Outbox}}.approvals IS 'The two-person rule (settings.two_person_rule): a bulk redrive, drop or edit asked for while the rule is on waits here until a second operator approves it (outboxkit dlq approve), then runs exactly once with the approval named in its audit entries. Every request, approval and rejection is also in audit_log.';
COMMENT ON COLUMN {{.Outbox}}.approvals.id IS 'Approval id, given to the approver.';
COMMENT ON COLUMN {{.Outbox}}.approvals.action IS 'redrive, drop or edit.';
COMMENT ON COLUMN {{.Outbox}}.approvals.refs IS 'Exactly what runs: the events (o:<id>) and dead letters (i:<id>), in the order they run. For a redrive, what the filter matched when it was asked; an approval never runs on more.';
COMMENT ON COLUMN {{.Outbox}}.approvals.filter IS 'For a redrive: the filter given, for the approver to read.';
COMMENT ON COLUMN {{.Outbox}}.approvals.payload IS 'For an edit: the corrected payload that runs. Emptied by the sweeper''s redact job once the approval was decided longer ago than its RedactAfter.';
COMMENT ON COLUMN {{.Outbox}}.approvals.payload_sha256 IS 'For an edit: SHA-256 (hex) of payload, shown to the approver.';
COMMENT ON COLUMN {{.Outbox}}.approvals.content_type IS 'For an edit of an outbox event: the content type of the corrected copy, when changed.';
COMMENT ON COLUMN {{.Outbox}}.approvals.rate IS 'For a redrive: events per second.';
COMMENT ON COLUMN {{.Outbox}}.approvals.requested_by IS 'Operator who asked.';
COMMENT ON COLUMN {{.Outbox}}.approvals.requested_login IS 'Database login (session_user) of the request.';
COMMENT ON COLUMN {{.Outbox}}.approvals.reason IS 'Why, as given by the requester.';
COMMENT ON COLUMN {{.Outbox}}.approvals.requested_at IS 'When it was asked.';
COMMENT ON COLUMN {{.Outbox}}.approvals.expires_at IS 'After this time it can no longer be approved (requested_at + settings.approval_ttl).';
COMMENT ON COLUMN {{.Outbox}}.approvals.status IS 'pending: waits for a second operator; running: approved, the action runs; done: it ran (see result); rejected: refused by an operator (the requester may withdraw their own).';
COMMENT ON COLUMN {{.Outbox}}.approvals.decided_by IS 'Operator who approved or rejected it; never the requester for an approval.';
COMMENT ON COLUMN {{.Outbox}}.approvals.decided_login IS 'Database login (session_user) of the decision.';
COMMENT ON COLUMN {{.Outbox}}.approvals.decided_at IS 'When it was approved or rejected.';
COMMENT ON COLUMN {{.Outbox}}.approvals.decision_reason IS 'Why, as given by the approver.';
COMMENT ON COLUMN {{.Outbox}}.approvals.done_at IS 'When the approved action finished. An approval left running without done_at was interrupted (its audit entries say how far it got).';
COMMENT ON COLUMN {{.Outbox}}.approvals.result IS 'The outcome of each ref, as JSON.';
CREATE INDEX approvals_pending_idx ON {{.Outbox}}.approvals (id) WHERE status = 'pending';

-- ---------------------------------------------------------------------------
-- Inbox.
-- ---------------------------------------------------------------------------

CREATE TABLE {{.Inbox}}.processed (
    consumer       text        NOT NULL,
    event_id       uuid        NOT NULL,
    topic          text        NOT NULL,
    key            text        NOT NULL DEFAULT '',
    sequence       bigint,
    payload_sha256 bytea       NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
COMMENT ON TABLE {{.Inbox}}.processed IS 'Events applied by each consumer, inserted in the same transaction as the consumer''s own writes: a redelivered or replayed event finds its row and is skipped. Kept for the inbox retention window (default 14 days), which must exceed the longest possible redelivery delay.';
COMMENT ON COLUMN {{.Inbox}}.processed.consumer IS 'Consumer name (e.g. billing).';
COMMENT ON COLUMN {{.Inbox}}.processed.event_id IS 'Event id (ce_id).';
COMMENT ON COLUMN {{.Inbox}}.processed.topic IS 'Topic the event came from.';
COMMENT ON COLUMN {{.Inbox}}.processed.key IS 'Ordering key of the event, empty when keyless.';
COMMENT ON COLUMN {{.Inbox}}.processed.sequence IS 'ce_sequence of the event in its lane.';
COMMENT ON COLUMN {{.Inbox}}.processed.payload_sha256 IS 'SHA-256 of the payload: the same event id with another payload is a conflict, not a duplicate.';
COMMENT ON COLUMN {{.Inbox}}.processed.processed_at IS 'When the consumer''s transaction applied the event.';
CREATE INDEX processed_processed_at_brin ON {{.Inbox}}.processed USING brin (processed_at);

CREATE TABLE {{.Inbox}}.lanes (
    consumer      text        NOT NULL,
    topic         text        NOT NULL,
    key           text        NOT NULL,
    last_sequence bigint      NOT NULL,
    blocked_by    bigint,
    blocked_since timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, key)
);
COMMENT ON TABLE {{.Inbox}}.lanes IS 'Order guard: the last applied sequence of each (consumer, topic, key), and the dead letter holding the lane back when one is parked. One row per key, never deleted by retention: it also keeps a keyed event replayed after its processed row expired from being applied again (it is parked as out of order instead).';
COMMENT ON COLUMN {{.Inbox}}.lanes.consumer IS 'Consumer name.';
COMMENT ON COLUMN {{.Inbox}}.lanes.topic IS 'Topic of the lane.';
COMMENT ON COLUMN {{.Inbox}}.lanes.key IS 'Ordering key of the lane.';
COMMENT ON COLUMN {{.Inbox}}.lanes.last_sequence IS 'Highest sequence applied in order; 0 while nothing is applied (the row then exists only to hold blocked_by).';
COMMENT ON COLUMN {{.Inbox}}.lanes.blocked_by IS 'dead_letters.id of the parked event later events wait for (while a redrive releases the lane: the next dead letter to apply). NULL: events flow.';
COMMENT ON COLUMN {{.Inbox}}.lanes.blocked_since IS 'When the lane became blocked.';
COMMENT ON COLUMN {{.Inbox}}.lanes.updated_at IS 'Last change.';

CREATE TABLE {{.Inbox}}.dead_letters (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer         text        NOT NULL,
    consumer_version text        NOT NULL,
    event_id         uuid,
    topic            text        NOT NULL,
    key              text        NOT NULL DEFAULT '',
    sequence         bigint,
    type             text,
    version          integer,
    payload          bytea       NOT NULL,
    headers          jsonb       NOT NULL DEFAULT '[]',
    content_type     text,
    correlation_id   text,
    error            text        NOT NULL,
    error_class      text        NOT NULL REFERENCES {{.Outbox}}.error_classes (class),
    attempts         integer     NOT NULL,
    status           text        NOT NULL,
    blocked_by       bigint      REFERENCES {{.Inbox}}.dead_letters (id),
    waiting_for      bigint,
    source           jsonb       NOT NULL DEFAULT '{}',
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    resolved_at      timestamptz,
    ingested_from    text,
    ingest_key       text,
    CONSTRAINT dead_letters_status_check CHECK (status IN ('parked', 'blocked', 'replayed', 'resolved', 'dropped', 'edited')),
    CONSTRAINT dead_letters_ingested_from_check CHECK (ingested_from IN ('rabbitmq', 'kafka')),
    CONSTRAINT dead_letters_ingested_has_key CHECK ((ingested_from IS NULL) = (ingest_key IS NULL)),
    CONSTRAINT dead_letters_blocked_has_pointer CHECK ((status = 'blocked') = (blocked_by IS NOT NULL)),
    CONSTRAINT dead_letters_waiting_is_parked CHECK (waiting_for IS NULL OR status = 'parked')
);
COMMENT ON TABLE {{.Inbox}}.dead_letters IS 'What a consumer could not apply, kept whole: raw payload bytes and headers whatever their shape, the error and its class, attempts, consumer and version, correlation id, failure times. Operators inspect, redrive, edit or drop rows here.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.id IS 'Dead-letter id.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.consumer IS 'Consumer that failed.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.consumer_version IS 'Version of the consumer code that failed.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.event_id IS 'Event id, NULL when the message carried none (malformed).';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.topic IS 'Topic (Kafka topic or RabbitMQ routing key) the message came from.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.key IS 'Ordering key, empty when unknown.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.sequence IS 'ce_sequence, when present.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.type IS 'Event type, when present.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.version IS 'Event schema version, when present.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.payload IS 'Payload bytes exactly as received.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.headers IS 'All broker headers as received, in order: a JSON array of {"name","value"}. A name or value that is not valid UTF-8 or contains NUL (which jsonb cannot hold) is stored as {"base64": ...}. Rows ingested from RabbitMQ keep each header''s typed AMQP value too, under "amqp" ({"type": ..., "value": ...}, tables and arrays nested), so nested tables such as x-death are shown readably in "value" and republished exactly from "amqp".';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.content_type IS 'Content type, when present.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.correlation_id IS 'Correlation id, when present.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.error IS 'Error of the last attempt.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.error_class IS 'Class of the error (outbox.error_classes).';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.attempts IS 'Attempts made before parking.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.status IS 'parked: failed, needs an operator; blocked: not tried, waits for blocked_by (an earlier event of its key); replayed: sent through the consumer again, or (ingested rows) back to the broker it came from; resolved: applied; dropped: removed by an operator; edited (ingested rows): an operator sent a corrected copy (edited_payload) back to the broker as a new message in its place, the row keeps the original.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.blocked_by IS 'For blocked rows: the dead letter this one waits for.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.waiting_for IS 'For a parked row that arrived ahead of earlier events of its key that never came: the sequence it waits for. When that event arrives and is applied, this row and the blocked ones behind it are applied in order automatically; redriving it instead accepts the gap.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.source IS 'Where the message came from: binding (kafka or amqp, needed to read the headers back), broker, topic or queue, partition, offset, routing key, AMQP properties. Strings jsonb cannot hold are {"base64": ...}.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.first_failed_at IS 'First failure.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.last_failed_at IS 'Last failure.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.resolved_at IS 'When the row left the parked or blocked state.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.ingested_from IS 'NULL for a dead letter parked by an inbox consumer. rabbitmq or kafka for a message the broker dead-lettered itself (a queue bound to a dead-letter exchange, a dead-letter topic) and outboxkit dlq ingest copied here; consumer then names the ingest source (default rabbitmq:<queue> or kafka:<topic>), and replay republishes the original bytes and headers to the broker instead of asking a consumer.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.ingest_key IS 'For ingested rows: the identity of the broker dead letter (kafka:<topic>/<partition>@<offset>, or rabbitmq:<queue>:<sha256 of body, properties and headers>). Unique, so ingesting the same broker message again (a redelivery after a crash between commit and acknowledgement) inserts nothing.';
CREATE INDEX dead_letters_consumer_status_idx ON {{.Inbox}}.dead_letters (consumer, status);
CREATE INDEX dead_letters_lane_idx ON {{.Inbox}}.dead_letters (consumer, topic, key, sequence) WHERE status IN ('parked', 'blocked');
CREATE INDEX dead_letters_event_idx ON {{.Inbox}}.dead_letters (event_id);
CREATE UNIQUE INDEX dead_letters_ingest_key_idx ON {{.Inbox}}.dead_letters (ingest_key) WHERE ingest_key IS NOT NULL;

CREATE TABLE {{.Inbox}}.attempts (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer       text        NOT NULL,
    event_id       uuid,
    dead_letter_id bigint,
    attempt        integer     NOT NULL,
    started_at     timestamptz NOT NULL,
    duration_ms    integer     NOT NULL,
    error_class    text        NOT NULL REFERENCES {{.Outbox}}.error_classes (class),
    error          text        NOT NULL,
    outcome        text        NOT NULL,
    CONSTRAINT attempts_outcome_check CHECK (outcome IN ('retry', 'parked', 'not_counted'))
);
COMMENT ON TABLE {{.Inbox}}.attempts IS 'Every failed attempt of a consumer to apply an event. Successful applications are in processed.';
COMMENT ON COLUMN {{.Inbox}}.attempts.id IS 'Attempt record id.';
COMMENT ON COLUMN {{.Inbox}}.attempts.consumer IS 'Consumer name.';
COMMENT ON COLUMN {{.Inbox}}.attempts.event_id IS 'Event id, NULL when the message carried none.';
COMMENT ON COLUMN {{.Inbox}}.attempts.dead_letter_id IS 'dead_letters.id when the attempt parked the event or replayed a dead letter.';
COMMENT ON COLUMN {{.Inbox}}.attempts.attempt IS 'Attempt number counted against the event after this attempt (unchanged for not_counted attempts).';
COMMENT ON COLUMN {{.Inbox}}.attempts.started_at IS 'When the handler started.';
COMMENT ON COLUMN {{.Inbox}}.attempts.duration_ms IS 'Handler duration, in milliseconds.';
COMMENT ON COLUMN {{.Inbox}}.attempts.error_class IS 'Class of the error.';
COMMENT ON COLUMN {{.Inbox}}.attempts.error IS 'Error text.';
COMMENT ON COLUMN {{.Inbox}}.attempts.outcome IS 'retry, parked or not_counted (breaker open).';
CREATE INDEX attempts_event_idx ON {{.Inbox}}.attempts (consumer, event_id);

CREATE TABLE {{.Inbox}}.dead_letter_requests (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer       text        NOT NULL,
    dead_letter_id bigint      NOT NULL REFERENCES {{.Inbox}}.dead_letters (id),
    action         text        NOT NULL,
    payload        bytea,
    requested_by   text        NOT NULL,
    reason         text        NOT NULL,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    status         text        NOT NULL DEFAULT 'pending',
    done_at        timestamptz,
    done_by        text,
    outcome        text,
    CONSTRAINT dead_letter_requests_action_check CHECK (action IN ('replay', 'edit', 'release')),
    CONSTRAINT dead_letter_requests_status_check CHECK (status IN ('pending', 'applied', 'failed', 'refused', 'cancelled')),
    CONSTRAINT dead_letter_requests_edit_has_payload CHECK ((action = 'edit') = (payload IS NOT NULL)),
    CONSTRAINT dead_letter_requests_done_has_time CHECK ((status = 'pending') = (done_at IS NULL)),
    CONSTRAINT dead_letter_requests_by_not_empty CHECK (requested_by <> '' AND reason <> '')
);
COMMENT ON TABLE {{.Inbox}}.dead_letter_requests IS 'Operator requests on inbox dead letters (outboxkit dlq replay, edit, and the release after a drop), run by the consumer itself: only its process has the handlers. The operator tools insert a row (audited); the running consumer (inbox.Inbox.ProcessRequests, started by the Kafka and RabbitMQ adapters) picks up the pending rows of its consumer name every few seconds, applies them in request order with the redrive logic, and records the outcome here in the same transaction as the application.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.id IS 'Request id; requests of one consumer run in id order.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.consumer IS 'Consumer that runs the request: the dead letter''s consumer.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.dead_letter_id IS 'The dead letter (dead_letters.id) to replay or edit, or the dropped head whose key is released.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.action IS 'replay: apply the stored payload again; edit: apply the corrected payload (the dead letter keeps the original); release: apply, in order, the events that waited behind a dropped head.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.payload IS 'The corrected payload of an edit, exactly as given; NULL for other actions. Emptied by the sweeper''s redact job with its dead letter.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.requested_by IS 'Operator who asked (also the actor of the consumer''s audit entries for it).';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.reason IS 'Why, as given by the operator.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.requested_at IS 'When the request was recorded.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.status IS 'pending: waiting for the consumer; applied: done (the event is applied, or the key released); failed: the event failed again and stays parked; refused: the consumer could not run it (see outcome); cancelled: the dead letter was dropped or restored first.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.done_at IS 'When the request left pending.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.done_by IS 'Who settled it: inbox:<consumer> <consumer version>, or the operator who cancelled it.';
COMMENT ON COLUMN {{.Inbox}}.dead_letter_requests.outcome IS 'What happened, in words: the error of a failed or refused request.';
-- The consumer's poll: its pending requests in order; at most one pending
-- request per dead letter.
CREATE INDEX dead_letter_requests_pending_idx ON {{.Inbox}}.dead_letter_requests (consumer, id) WHERE status = 'pending';
CREATE UNIQUE INDEX dead_letter_requests_one_pending_idx ON {{.Inbox}}.dead_letter_requests (dead_letter_id) WHERE status = 'pending';
CREATE INDEX dead_letter_requests_dead_letter_idx ON {{.Inbox}}.dead_letter_requests (dead_letter_id);

-- ---------------------------------------------------------------------------
-- Views for DBAs and operators.
-- ---------------------------------------------------------------------------

CREATE VIEW {{.Outbox}}.backlog AS
    SELECT topic, status, count(*) AS events, min(created_at) AS oldest_created_at,
           now() - min(created_at) AS oldest_age
      FROM {{.Outbox}}.messages WHERE status = 'pending' GROUP BY topic, status
    UNION ALL
    SELECT topic, status, count(*), min(created_at), now() - min(created_at)
      FROM {{.Outbox}}.messages WHERE status = 'blocked' GROUP BY topic, status
    UNION ALL
    SELECT topic, status, count(*), min(created_at), now() - min(created_at)
      FROM {{.Outbox}}.messages WHERE status = 'parked' GROUP BY topic, status
    UNION ALL
    SELECT topic, 'scheduled', count(*), min(created_at), now() - min(created_at)
      FROM {{.Outbox}}.scheduled GROUP BY topic;
COMMENT ON VIEW {{.Outbox}}.backlog IS 'Events not yet published, by topic and status, with the oldest one''s age. Reads only the partial indexes, so it is cheap on a large table.';
COMMENT ON COLUMN {{.Outbox}}.backlog.topic IS 'Topic.';
COMMENT ON COLUMN {{.Outbox}}.backlog.status IS 'pending, blocked, parked or scheduled.';
COMMENT ON COLUMN {{.Outbox}}.backlog.events IS 'Number of events.';
COMMENT ON COLUMN {{.Outbox}}.backlog.oldest_created_at IS 'Enqueue time of the oldest event.';
COMMENT ON COLUMN {{.Outbox}}.backlog.oldest_age IS 'Age of the oldest event.';

CREATE VIEW {{.Outbox}}.parked_messages AS
    SELECT m.id, m.event_id, m.topic, m.key, m.sequence, m.type, m.version, m.attempts,
           m.last_error_class, m.last_error, m.parked_at, m.created_at, m.correlation_id,
           (SELECT count(*) FROM {{.Outbox}}.messages b
             WHERE b.key = m.key AND b.topic = m.topic AND b.key <> '' AND b.sequence > m.sequence
               AND b.status = 'blocked') AS blocked_behind
      FROM {{.Outbox}}.messages m
     WHERE m.status = 'parked';
COMMENT ON VIEW {{.Outbox}}.parked_messages IS 'Parked events with their reason and how many later events of the same key wait behind them.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.id IS 'messages.id.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.event_id IS 'Event id.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.topic IS 'Topic.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.key IS 'Ordering key.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.sequence IS 'Sequence in its lane.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.type IS 'Event type.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.version IS 'Event schema version.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.attempts IS 'Attempts counted.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.last_error_class IS 'Class of the error that parked it.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.last_error IS 'Error that parked it.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.parked_at IS 'When it was parked.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.created_at IS 'When it was enqueued.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.correlation_id IS 'Correlation id.';
COMMENT ON COLUMN {{.Outbox}}.parked_messages.blocked_behind IS 'Events of the same key waiting (status blocked).';

CREATE VIEW {{.Outbox}}.blocked_lanes AS
    SELECT l.topic, l.key, l.blocked_by, b.event_id AS blocked_by_event_id, b.status AS blocked_by_status,
           b.last_error_class, l.blocked_since, l.hold_until
      FROM {{.Outbox}}.lanes l
      LEFT JOIN {{.Outbox}}.messages b ON b.id = l.blocked_by
     WHERE l.hold_until > now();
COMMENT ON VIEW {{.Outbox}}.blocked_lanes IS 'Keys held back by a failing or parked event.';
COMMENT ON COLUMN {{.Outbox}}.blocked_lanes.topic IS 'Topic.';
COMMENT ON COLUMN {{.Outbox}}.blocked_lanes.key IS 'Ordering key.';
COMMENT ON COLUMN {{.Outbox}}.blocked_lanes.blocked_by IS 'messages.id of the head event.';
COMMENT ON COLUMN {{.Outbox}}.blocked_lanes.blocked_by_event_id IS 'Event id of the head event.';
COMMENT ON COLUMN {{.Outbox}}.blocked_lanes.blocked_by_status IS 'pending (backing off) or parked.';
COMMENT ON COLUMN {{.Outbox}}.blocked_lanes.last_error_class IS 'Error class of the head event.';
COMMENT ON COLUMN {{.Outbox}}.blocked_lanes.blocked_since IS 'Since when the lane is held.';
COMMENT ON COLUMN {{.Outbox}}.blocked_lanes.hold_until IS 'Until when (infinity while parked).';

CREATE VIEW {{.Outbox}}.expired_leases AS
    SELECT p.partition, p.owner, p.lease_until, now() - p.lease_until AS expired_for, r.hostname, r.pid
      FROM {{.Outbox}}.partitions p
      LEFT JOIN {{.Outbox}}.relays r ON r.relay_id = p.owner
     WHERE p.owner IS NOT NULL AND p.lease_until < now();
COMMENT ON VIEW {{.Outbox}}.expired_leases IS 'Partition leases whose owner stopped renewing them (crashed or paused relay); any live relay takes them over.';
COMMENT ON COLUMN {{.Outbox}}.expired_leases.partition IS 'Partition.';
COMMENT ON COLUMN {{.Outbox}}.expired_leases.owner IS 'Relay that held the lease.';
COMMENT ON COLUMN {{.Outbox}}.expired_leases.lease_until IS 'When the lease expired.';
COMMENT ON COLUMN {{.Outbox}}.expired_leases.expired_for IS 'How long ago.';
COMMENT ON COLUMN {{.Outbox}}.expired_leases.hostname IS 'Host of the relay, if still registered.';
COMMENT ON COLUMN {{.Outbox}}.expired_leases.pid IS 'Process id of the relay, if still registered.';

CREATE VIEW {{.Outbox}}.attempt_history AS
    SELECT a.message_id, a.event_id, a.attempt, a.started_at, a.duration_ms, a.relay_id,
           a.outcome, a.error_class, a.error, NULL::text AS broker_ack
      FROM {{.Outbox}}.attempts a
    UNION ALL
    SELECT m.id, m.event_id, m.attempts, m.published_at, m.publish_duration_ms, m.published_by,
           'published', NULL, NULL, m.broker_ack
      FROM {{.Outbox}}.messages m
     WHERE m.status = 'published';
COMMENT ON VIEW {{.Outbox}}.attempt_history IS 'Every publish attempt: failures from outbox.attempts and the successful one from the message row. Filter by event_id or message_id.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.message_id IS 'messages.id.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.event_id IS 'Event id.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.attempt IS 'Attempt number.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.started_at IS 'Start of a failed attempt, or publish time of the successful one.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.duration_ms IS 'Duration of the publish call.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.relay_id IS 'Relay.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.outcome IS 'published, retry, parked or not_counted.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.error_class IS 'Error class of a failed attempt.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.error IS 'Error of a failed attempt.';
COMMENT ON COLUMN {{.Outbox}}.attempt_history.broker_ack IS 'Broker coordinates of the successful attempt.';

CREATE VIEW {{.Inbox}}.dead_letters_by_consumer AS
    SELECT consumer, status, error_class, count(*) AS dead_letters,
           min(first_failed_at) AS oldest_failure, max(last_failed_at) AS newest_failure
      FROM {{.Inbox}}.dead_letters
     WHERE status IN ('parked', 'blocked')
     GROUP BY consumer, status, error_class;
COMMENT ON VIEW {{.Inbox}}.dead_letters_by_consumer IS 'Open dead letters (parked or blocked) by consumer and error class.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters_by_consumer.consumer IS 'Consumer.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters_by_consumer.status IS 'parked or blocked.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters_by_consumer.error_class IS 'Error class.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters_by_consumer.dead_letters IS 'Number of rows.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters_by_consumer.oldest_failure IS 'Oldest first failure.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters_by_consumer.newest_failure IS 'Newest failure.';

-- ---------------------------------------------------------------------------
-- Event ids are unique across messages and scheduled.
-- ---------------------------------------------------------------------------

-- duplicate_event raises the same error as the messages unique constraint, so
-- an event id reused across the two tables aborts the producer's transaction
-- exactly like any other duplicate (outbox.ErrDuplicate).
CREATE FUNCTION {{.Outbox}}.duplicate_event(id uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'duplicate key value violates unique constraint "messages_event_id_key"'
        USING ERRCODE = 'unique_violation',
              CONSTRAINT = 'messages_event_id_key',
              DETAIL = format('Key (event_id)=(%s) already exists.', id);
END $$;
COMMENT ON FUNCTION {{.Outbox}}.duplicate_event(uuid) IS 'Raises unique_violation for an event id that already exists in messages or scheduled; used by enqueue statements.';

-- ---------------------------------------------------------------------------
-- Privacy: redaction and legal holds (sweeper job "redact", outboxkit hold).
-- Kept in one block: the columns are added here rather than in the CREATE
-- TABLE statements above.
-- ---------------------------------------------------------------------------

ALTER TABLE {{.Outbox}}.messages ADD COLUMN redacted_at timestamptz;
-- Only a published event is ever redacted, and a redacted event never goes
-- back to pending: a replay would publish the empty payload as the event.
ALTER TABLE {{.Outbox}}.messages ADD CONSTRAINT messages_redacted_is_published
    CHECK (redacted_at IS NULL OR status = 'published');
COMMENT ON COLUMN {{.Outbox}}.messages.redacted_at IS 'When the sweeper''s redact job replaced the payload with empty bytes and removed the configured headers (RedactAfter after publication). NULL: payload as enqueued. Every other column is kept.';

ALTER TABLE {{.Inbox}}.dead_letters ADD COLUMN edited_payload bytea;
ALTER TABLE {{.Inbox}}.dead_letters ADD COLUMN redacted_at timestamptz;
-- Only a dead letter that left the parked and blocked states is redacted,
-- and it never goes back: its payload is gone, it cannot be applied.
ALTER TABLE {{.Inbox}}.dead_letters ADD CONSTRAINT dead_letters_redacted_is_closed
    CHECK (redacted_at IS NULL OR status IN ('resolved', 'replayed', 'dropped', 'edited'));
COMMENT ON COLUMN {{.Inbox}}.dead_letters.edited_payload IS 'The corrected payload a redrive applied instead of payload (Inbox.RedriveEdited), or that an edit of an ingested row sent back to the broker (status edited); NULL when none. The audit log keeps only its SHA-256 and size.';
COMMENT ON COLUMN {{.Inbox}}.dead_letters.redacted_at IS 'When the sweeper''s redact job replaced payload (and edited_payload) with empty bytes and removed the configured headers (RedactAfter after resolved_at). NULL: as received.';

CREATE TABLE {{.Outbox}}.legal_holds (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic          text,
    key            text,
    tenant_header  text,
    tenant         text,
    reason         text        NOT NULL,
    actor          text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    released_at    timestamptz,
    released_by    text,
    release_reason text,
    CONSTRAINT legal_holds_key_or_tenant CHECK ((key IS NULL) <> (tenant IS NULL)),
    CONSTRAINT legal_holds_tenant_has_header CHECK ((tenant IS NULL) = (tenant_header IS NULL)),
    CONSTRAINT legal_holds_not_empty CHECK (key <> '' AND tenant <> '' AND tenant_header <> '' AND topic <> ''),
    CONSTRAINT legal_holds_reason_not_empty CHECK (reason <> '' AND actor <> ''),
    CONSTRAINT legal_holds_release_complete CHECK ((released_at IS NULL) = (released_by IS NULL)
                                                   AND (released_at IS NULL) = (release_reason IS NULL))
);
COMMENT ON TABLE {{.Outbox}}.legal_holds IS 'Legal holds: while a hold is active (released_at IS NULL), neither retention (deletion) nor redaction touches the rows of its key or tenant in outbox.messages, outbox.attempts, inbox.processed and inbox.dead_letters. Rows are never deleted: a release is recorded on the row and in the audit log.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.id IS 'Hold id (outboxkit hold release ID).';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.topic IS 'Only rows of this topic (the topic column of each table: the outbox topic, or the broker topic the inbox saw); NULL: every topic.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.key IS 'Ordering key held (messages.key, processed.key, dead_letters.key); NULL for a tenant hold.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.tenant_header IS 'Name of the header that carries the tenant (exact, case-sensitive), recorded with the hold so the sweeper needs no configuration to match it; NULL for a key hold.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.tenant IS 'Tenant held: rows whose tenant_header header has exactly this value (messages.headers, dead_letters.headers, and inbox.processed rows of such events); NULL for a key hold.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.reason IS 'Why the hold was placed (case or matter reference).';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.actor IS 'Who placed the hold.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.created_at IS 'When the hold was placed.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.released_at IS 'When the hold was released; NULL while active. Retention and redaction resume for the rows at their next run.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.released_by IS 'Who released the hold.';
COMMENT ON COLUMN {{.Outbox}}.legal_holds.release_reason IS 'Why the hold was released.';
-- Every retention and redaction statement reads the active holds once: this
-- keeps that read (and "is key K held?") small however many released holds
-- the table keeps over the years.
CREATE INDEX legal_holds_active_idx ON {{.Outbox}}.legal_holds (key, tenant) WHERE released_at IS NULL;
