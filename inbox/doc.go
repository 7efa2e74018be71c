// Package inbox is the consumer side of outboxkit: it applies each event
// exactly once per consumer, in order per key, and keeps whatever it cannot
// apply as a dead letter an operator can inspect and redrive.
//
//	in, err := inbox.New(pool, &inbox.Config{Consumer: "billing", ConsumerVersion: "v1.4.0"})
//	...
//	in.Register("payout.created", 2, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
//	    _, err := tx.Exec(ctx, `INSERT INTO ledger ...`, ...) // in the inbox's transaction
//	    return err
//	})
//	in.RegisterUpcaster("payout.created", 1, payoutV1toV2)
//	// Then run an adapter (inbox/kafka, inbox/rabbitmq), or call
//	// in.Handle(ctx, delivery) yourself and acknowledge after it returns.
//
// The rest of this page records how it works and why; each "Decision" names
// what was chosen and what was not.
//
// # Exactly once
//
// Handle opens a transaction and runs one statement before the handler: it
// inserts (consumer, event_id, topic, key, sequence, payload_sha256) into
// inbox.processed with ON CONFLICT DO NOTHING, moves the key's lane
// (inbox.lanes) forward when the event is the next one, and checks that the
// event is not a dead letter already. Only when the record is new, the
// event is next in its lane and it is not parked does the handler run, in
// that same transaction; the record and the handler's writes commit
// together or not at all, and the broker is acknowledged only after the
// commit (Handle returns). A crash after the commit and before the
// acknowledgement brings the event back; the record is found and the event
// is skipped (Outcome Duplicate).
//
// The same event id with a different payload is not skipped: its SHA-256
// differs from the recorded one and it is parked with class conflict. The
// payload fingerprint is of the bytes as received (before upcasting), so a
// redelivery is recognised whatever upcasters do.
//
// Retention (Decision). A processed record must outlive every way its event
// can come back. That is the longest of: the Kafka topic's retention (a
// consumer group reset to the earliest offset replays all of it; Kafka's
// default is 7 days), the outbox's retention of published events (the
// window of "outboxkit replay"), the longest a RabbitMQ message can wait
// in a queue (message TTL, or a consumer down for days), and a backup
// restore of the broker. The default window in the schema comment is 14
// days; keep inbox retention at least as long as the longest of those.
// Keyed events are protected beyond the window as well: lanes are never
// deleted, so a keyed event that comes back after its record expired is
// behind its lane and is parked as out of order, never applied again. Only
// keyless events rely on the window alone.
//
// # Order per key
//
// Every keyed event carries its position in its (topic, key) lane
// (ce_sequence, 1, 2, 3... without gaps, taken at enqueue). inbox.lanes
// holds, per consumer, the last sequence applied. An event is applied only
// when its sequence is last+1.
//
//   - The first event a consumer sees of a key must be sequence 1
//     (Decision: accepting any first sequence as the start would, on
//     RabbitMQ where a requeued delivery can come back behind later ones,
//     silently skip the earlier event). Config.StartLanesAtFirstSeen
//     accepts any first sequence, for a consumer that joins a stream whose
//     earlier events it will never receive.
//   - An event at or below last that this consumer never applied (no
//     processed record: a replay after the record expired, an event that
//     arrived after an operator accepted a gap) is parked with class
//     permanent ("out of order"), not applied and not dropped silently.
//   - An event above last+1 arrived ahead of missing ones. Decision: it is
//     parked at once, marked waiting_for (the sequence it waits for), and
//     holds its lane; it is not waited for in memory, because on Kafka the
//     missing event never comes in the same partition, and on RabbitMQ it
//     is often queued behind it on the same worker. When the missing event
//     arrives and is applied, the waiting one and the ones blocked behind
//     it are applied in order automatically (audit action "release" by
//     inbox:<consumer>). If it never arrives, redriving the waiting one
//     accepts the gap (audited as gap_accepted).
//   - When an event is parked (failed, no handler, waiting), Config.OnPark
//     decides for its key. OnParkBlock (default): later events of the key
//     are parked with status blocked and blocked_by pointing at it, and are
//     applied in order when it is redriven; other keys flow. OnParkSkip:
//     the lane moves past it and gaps are accepted (with a warning), for
//     consumers that value flow over order; the parked event can be
//     redriven later, out of order.
//   - Skip markers. When an operator drops a parked keyed outbox event
//     ("outboxkit dlq drop"), an event of type "outboxkit.skipped" takes
//     its lane place: same topic, key and sequence, no payload, and the
//     header "outboxkit-skipped" naming the dropped event. The relay
//     publishes it like any event. The inbox treats it as a no-op that
//     moves the key's lane: it is recorded in inbox.processed (a
//     redelivery is a Duplicate), the lane advances past its sequence so
//     the next event flows, no handler is called (not even one registered
//     for that type), and it is never parked for want of a handler
//     (Outcome Skipped). It keeps its place in the order like any event: it
//     waits in the dead letters when it arrives ahead of a missing event,
//     or behind a parked head, and is released with the events around it;
//     a marker behind its lane is recorded and skipped, not parked as out of
//     order. Only the marker header makes the marker: a producer cannot set
//     outboxkit-* headers, so an event a producer typed outboxkit.skipped
//     is an ordinary event.
//
// # Failures and retries
//
// Every failed attempt is classified into the taxonomy shared with the relay
// (outbox.error_classes): Permanent(err) and Classify set a class; PostgreSQL
// errors are classified by SQLSTATE (a unique violation in the handler's
// own writes is permanent, not a conflict); network errors are
// dependency_outage; anything else is transient. A handler that panics is
// recovered; Decision: the panic is transient (retried, then parked with
// the stack), because a panic caused by a broken dependency then opens the
// breaker instead of parking everything at once, and a deterministic one
// is still parked after MaxAttempts. A handler that runs past
// HandlerTimeout is transient. An upcaster that fails is poison_format.
//
// Decision: retries happen inside Handle, with exponential backoff and
// jitter (BackoffBase 250ms doubling to BackoffMax 15s, drawn from
// [d/2, d]), not by nacking and redelivering. Kafka has no per-message
// redelivery, and a RabbitMQ requeue comes back at once (no delay) and may
// overtake the key's order. The cost: a failing event holds its Kafka
// partition, or its RabbitMQ worker's keys, for up to about a minute with
// the defaults before it is parked. Every failed attempt is recorded in
// inbox.attempts (retry, parked or not_counted) as it happens; the count of
// attempts is read back from there, so a consumer restarted in the middle
// of the retries continues the count instead of starting over. After
// MaxAttempts (default 10), or at once for permanent, poison_format,
// conflict and no_handler, the event is parked.
//
// # Dead letters
//
// A parked event is a row of inbox.dead_letters with everything needed to
// understand and replay it: the payload bytes exactly as received, every
// header in received order (a JSON array of {"name", "value"}; a name or
// value that is not valid UTF-8 or contains NUL, which jsonb cannot hold,
// is {"base64": "..."}), the binding and the broker coordinates (source),
// event id, type, version, key, sequence, content type, correlation id, the
// error and its class, the attempts, consumer and consumer version, first
// and last failure. Its attempts are linked to it, and each park writes an
// entry to the outbox schema's audit_log (actor inbox:<consumer>, action
// park, target_ids the dead letter id and the event id).
//
// A delivery that is not a readable event (not CloudEvents, no or bad
// ce_id, an attribute that is not valid UTF-8 or contains NUL, a topic or
// key beyond the size limits) is parked raw with class poison_format and
// no event id; it never crashes the consumer and never blocks a key. Such a
// delivery has no id to deduplicate on: a redelivery is recognised by
// topic, payload, headers and source (Kafka partition and offset).
// Decision: an event's own (non-CloudEvents) headers may carry any bytes;
// they reach the handler unchanged in Event.Headers.
//
// # Versions
//
// Handlers are registered per event type and schema version
// (ce_eventversion, 1 when absent). An event whose version has no handler
// is upcast step by step (RegisterUpcaster, version n to n+1) until a
// version with a handler; the handler sees that version in Event.Version
// and the original in Event.OriginalVersion. With no way to a handler, the
// event is parked with class no_handler and the reason "no handler for
// payout.created v3"; deploy the handler, then redrive.
//
// # Breaker
//
// When a dependency is down for everything, retrying each event until it
// is parked would move the whole stream into the dead letters. The breaker
// (one per Inbox) opens when a handler reports Unavailable(err) or another
// dependency_outage (the database connection lost, a network error), or
// when BreakerConfig.Threshold distinct events (default 5) failed in a row
// with transient errors (one event failing again and again does not count:
// that is the event's problem). While open, every Handle waits before its
// next attempt: adapters stop taking deliveries, their bounded buffers fill
// and fetching stops. After a backoff (1s doubling to 30s, with jitter) one
// attempt goes through as a probe: success closes the breaker, a retryable
// failure opens it again for longer. Attempts that fail while the breaker
// is open or half-open are recorded as not_counted and never park an event;
// dependency_outage failures are never counted at all. BreakerOpen reports
// the state for readiness probes.
//
// # Redrive
//
// Redrive(ctx, id, actor, reason) applies a parked dead letter again,
// straight from its row, with this Inbox's handlers: no broker, no other
// consumer is involved. It writes an audit entry (action redrive, before and
// after), marks the row resolved, and then releases the key: the blocked
// rows behind it are applied in sequence order, each once; the first one
// that fails becomes the parked head, a gap leaves the next one waiting.
// RedriveEdited applies a corrected payload and keeps the original in the
// row (the edited bytes and both fingerprints go to the audit log).
// Redrive refuses (ErrNotRedrivable) a row of another consumer, a blocked
// row (redrive its head), a row that is not parked, and, with OnParkBlock,
// a row with an earlier open dead letter of its key. A redriven event that
// fails again stays parked with one more attempt (*RedriveError). Redrive
// ignores the breaker and runs each event once, so an operator sees the
// result at once.
//
// # Operator requests
//
// outboxkit dlq replay, edit, redrive and drop (and the dashboard) cannot
// run a consumer's handlers, so for inbox dead letters they record a request
// in dead_letter_requests. ProcessRequests runs the pending requests of
// this consumer in the order they were made, with Redrive or RedriveEdited
// (the requester is the actor), or applies the events that waited behind a
// dropped head (a release); it records each outcome on the request in the
// transaction that applies the event, so a request is applied once even
// when several processes of the consumer run requests. ServeRequests calls
// it every Config.RequestPollInterval (2s); the inbox/kafka and
// inbox/rabbitmq consumers run ServeRequests while their Run is active.
//
// # Batches
//
// HandleBatch applies a run of deliveries in one transaction when each is
// the next of its lane (or a clean duplicate) and each handler succeeds: one
// commit for the batch instead of one per event. When the batch's events
// of each key follow each other, one statement claims them all (arrays
// through unnest); otherwise the claims are pipelined, one statement per
// event in one round trip. Anything else rolls the batch back and handles
// each delivery on its own with Handle. The adapters
// use it with what they have already fetched, so a quiet stream is handled
// one event at a time and a busy one in batches.
//
// # Replays for one consumer
//
// An event whose ReplayToHeader ("outboxkit-replay-to") names another
// consumer is acknowledged without being applied or recorded (Outcome
// Ignored): "outboxkit replay --consumer C" reaches C alone.
//
// # Concurrency and privileges
//
// Handle is safe for concurrent use. Events of one key should be handled by
// one goroutine at a time, in order (the adapters do so); even when they
// are not, every decision about a lane is taken under its row lock, so
// nothing is applied twice or out of order. The statements need SELECT,
// INSERT and UPDATE on the inbox tables, SELECT on outbox.error_classes
// and INSERT on outbox.audit_log: the consumer role of
// "outboxkit migrate roles" (no DELETE: the inbox never deletes).
// Processed records are removed by the sweeper after the retention window.
//
// # Observability
//
// Logs go to Config.Logger (slog) with the consumer, event id, type, key
// and error class; payloads are never logged. Stats counts settled
// deliveries by outcome. Config.Metrics (NewMetrics, registered on the
// caller's prometheus.Registerer) exports, per consumer, deliveries by
// outcome (duplicates included), dead letters by status and class, failed
// attempts by class, retries, the breaker's state and openings, and the
// commit-to-consume latency of applied events (docs/operations.md lists
// them).
//
// Traces. Each handler run is a span "outboxkit.inbox.handle" (kind
// consumer) from Config.TracerProvider (the global OpenTelemetry provider by
// default: no SDK is imposed). Its parent is the span the event was
// enqueued under: outbox.Enqueue stores the W3C trace context of its ctx
// (traceparent, tracestate), the relay sends it as ce_traceparent /
// cloudEvents:traceparent, and the inbox extracts it as the remote parent.
// So the producer's request, the handler and whatever the handler calls
// with its ctx are one trace. The relay's span for a published batch
// ("outboxkit.relay.publish") is not on that path: a batch carries events
// of many traces, so it is linked to each (up to 32), not their parent.
// The span records the handler's error and its class; a failed attempt and
// its retries are separate spans under the same parent. Skip markers run no
// handler and have no span. An event without trace context gets a span
// whose parent is ctx's own span, if any.
package inbox
