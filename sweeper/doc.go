// Package sweeper is outboxkit's safety net: scheduled jobs that find what
// fell through (a relay crashed, a notification was lost, a lease expired),
// keep the tables small, and turn "nothing lost" into a figure.
//
//	s, err := sweeper.New(pool, nil) // nil: every default
//	registry.MustRegister(s.Metrics())
//	err = s.Run(ctx)                  // until ctx is cancelled
//
// or, as a worker: outboxkit sweep. Run as many sweepers as you like (one
// next to each relay is typical): one of them is the leader and runs the
// jobs, the others wait to take over.
//
// # Jobs
//
// Each job has a cron schedule (Config.Schedules; DefaultSchedule) and can
// be run at once with RunJob (outboxkit sweep --once <job>).
//
//   - reclaim (every 15s): frees partition leases that expired more than
//     ReclaimAfter ago and reports the pending events each one left (there
//     is no "claimed" status: the lease is the claim, so a dead relay's
//     batch in flight is simply the pending head of its partitions, which
//     the next relay publishes, perhaps twice: at-least-once). Releases
//     lanes still held by a head that was published over LaneReleaseAfter
//     ago (the relay died between marking the head and releasing its lane:
//     without this the key would wait forever). Deletes relays rows dead for
//     DeadRelayAfter. Freed leases and released lanes are audited.
//   - rescue (every 30s): pending events due for longer than RescueAfter were
//     missed by the relay (lost NOTIFY, no relay holding the partition).
//     The sweeper NOTIFYs the relays' channel, counts them in
//     outboxkit_sweeper_rescued_total and says why in the log (no live
//     relay, partitions nobody holds). Nothing is rewritten: the events are
//     already pending and due.
//   - retry (every 5m): parked events whose last error class is retryable
//     (outbox.error_classes.retry), on topics with
//     outbox.topic_policies.auto_retry, parked at least RetryAfter ago, go
//     back to pending with a fresh attempt budget, as an operator's
//     "dlq replay" would: audited with actor system:sweeper, action replay.
//     At most MaxAutoRetries times per event (counted from its parks in
//     outbox.attempts); then it stays parked for a human.
//   - retention (hourly): deletes published events published more than
//     PublishedRetention ago (default 7 days) with their failed-attempt
//     rows, and inbox.processed records older than ProcessedRetention
//     (default 14 days). Pending, blocked, parked and dropped events, lanes
//     and the audit log are never deleted.
//
// Retention and redact skip every row under an active legal hold
// (outbox.legal_holds: a key, or a tenant header value, in one topic or
// all; placed and released with outboxkit hold) and count them in the
// report and outboxkit_sweeper_held_rows; a released hold's rows go at the
// next run.
//   - reconcile (hourly): for the events created in one window
//     ([now-ReconcileLag-ReconcileWindow, now-ReconcileLag)), per consumer
//     and topic: published = applied + dead-lettered + missing, with the
//     missing event ids listed (bounded) in the report and the log, and
//     outboxkit_reconcile_missing_events per consumer and topic. Needs the
//     outbox and the inbox in one database.
//   - redact (daily at 02:47; off unless RedactAfter is set): replaces the
//     payload of published events published more than RedactAfter ago, and
//     of inbox dead letters resolved, replayed, dropped or edited more
//     than RedactAfter ago, with empty bytes, removes RedactHeaders, and sets
//     redacted_at; every other column stays. Pending, blocked, parked and
//     dropped events and open dead letters are never redacted (table
//     constraints enforce it too). One audit entry per run that redacted
//     anything, with the counts.
//   - alarms (every 30s): gauges for the oldest due pending event per topic,
//     parked events per topic, open dead letters per consumer, stuck
//     partitions, expired leases and the oldest open transaction, and a
//     warning log line (and an Alarm in the report) for each one past its
//     threshold.
//
// Every run writes one summary line (job, rows, duration and the job's own
// figures) and updates outboxkit_sweeper_job_runs_total{job,result},
// outboxkit_sweeper_rows_total{job} and
// outboxkit_sweeper_job_duration_seconds{job}. A failing or panicking job
// is logged and runs again at its next schedule; it never stops the
// sweeper or the other jobs.
//
// # Decisions
//
// Leader: a PostgreSQL session advisory lock (pg_try_advisory_lock), held on
// a dedicated connection outside the pool, keyed by a hash of the outbox
// schema (sweepers of two schemas in one database do not exclude each
// other). Chosen over a lease row because PostgreSQL itself releases the
// lock when the leader's session ends, so a crashed leader is replaced
// within one LeaderCheckInterval (measured: about 140ms with a 250ms
// interval after pg_terminate_backend), with no clock and no renewal
// traffic. A leader whose host vanishes without closing its socket is
// detected by TCP keepalives, which the sweeper shortens on that session to
// about three intervals; the leader itself steps down (cancelling its
// running jobs) when a check of its lock connection fails. Find the leader
// with: SELECT pid, application_name FROM pg_stat_activity WHERE
// application_name LIKE 'outboxkit-sweeper:%' (the followers' connections
// show too; the leader's holds the advisory lock in pg_locks). Behind
// PgBouncer in transaction mode, set Config.LockURL to a direct connection.
//
// A job never runs twice at once: each run holds the job's own advisory lock
// on the pool connection it runs on (so a manual --once run, or a short
// overlap of two leaders during a takeover, cannot overlap a scheduled run),
// and a run that is due while the previous one is still going in this
// process is skipped and counted (result="skipped"), not stacked. More
// fundamentally, no job's correctness depends on the leader: every
// statement locks what it changes (SKIP LOCKED), re-checks its condition,
// and writes its audit entries in the same statement, so two runs at once
// would do the work once. The leader keeps the load and the logs down.
//
// Retention walks outbox.messages in primary-key order, DeleteBatchSize
// rows per statement, deleting the published events of each slice that are
// past the window: each statement touches a bounded slice wherever the old
// rows are, never waits for a row lock (SKIP LOCKED), commits on its own,
// and the walk stops at the first slice created entirely after the cutoff.
// The id lists are arrays so that every statement probes messages_pkey and
// attempts_message_idx (TestRetentionPlanUsesIndexes). Between statements
// retention sleeps as long as the previous one took (DeletePause 0), so it
// keeps one backend busy at most half the time: big backlogs take twice as
// long, the relay and the producers keep the rest. Measured on a shared
// 2-CPU machine (PostgreSQL 15, load average 1.6-3.5): 1,000,000 rows in
// 1,002 statements over 17 s, longest statement 58-125 ms, slowest Enqueue
// meanwhile under 0.1 s; the relay draining a backlog of 400,000 events
// kept 83%, 91% and 87% of its throughput without retention (about 50,000
// events/s) in three runs (TestRetentionInBatchesWhileRelayPublishes with
// OUTBOXKIT_RETENTION_ROWS=1000000 OUTBOXKIT_RETENTION_BACKLOG=400000;
// docs/benchmarks.md; measure on a quiet machine before
// quoting). The window counts from published_at, not created_at: an
// event published late (parked, then replayed) stays replayable for the
// whole window. inbox.processed has no btree on processed_at (consumers pay
// for every index), so its batches scan through the BRIN index; at very
// large sizes partition it by time and drop partitions instead.
// ProcessedRetention may not be shorter than PublishedRetention: an event
// replayed from the outbox after its inbox record is gone would be applied
// twice.
//
// Redact walks the tables exactly as retention does (primary-key slices of
// DeleteBatchSize rows, SKIP LOCKED, one short transaction each, paced by
// DeletePause) and stops at the first slice created entirely after the
// cutoff: every run walks every row older than RedactAfter that retention
// has not deleted yet, so it runs daily. Each statement reads the active
// holds once and checks them against its slice only. The audit log is
// never redacted and never holds payloads (see docs/security.md).
//
// Retry keeps the lane order: a retried head that blocks its lane leaves the
// lane blocked (its later events stay 'blocked') until the relay has
// published it; the relay then releases the lane itself, exactly as after
// an operator replay. Releasing the lane at once would let a later event of
// the key overtake a head that fails again.
//
// Oldest pending age is measured from when an event became due
// (available_at), not from its enqueue time: a delayed event that has just
// become due, or one backing off after a failure, is not late; an event the
// relay does not pick up is.
//
// Long transactions do not hold the relay back (lanes are ordered by a row
// lock and a sequence, not by transaction ids), but they keep vacuum from
// removing dead outbox rows, which slows the relay's claim: hence the
// warning. Grant pg_read_all_stats to the sweeper's role to see other
// roles' sessions. Query texts are never logged (they may carry data).
//
// The health gauges are set by the leader only and cleared when it steps
// down; aggregate them across instances with max().
package sweeper
