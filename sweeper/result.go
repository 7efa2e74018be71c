package sweeper

import (
	"log/slog"
	"time"

	"github.com/google/uuid"
)

// Result is the outcome of one job run. Exactly one of the reports is set,
// the one of Job.
type Result struct {
	Job     Job       `json:"job"`
	Started time.Time `json:"started"`
	// Duration of the run.
	Duration time.Duration `json:"duration_ns"`
	// Rows is what the run touched or found, as counted in
	// outboxkit_sweeper_rows_total: leases, lanes and relays rows freed
	// (reclaim), events found waiting (rescue), events retried (retry), rows
	// deleted (retention), published events checked (reconcile), alarms
	// raised (alarms), payloads redacted (redact).
	Rows int64 `json:"rows"`
	// Skipped says why the run did not happen (with ErrJobBusy).
	Skipped string `json:"skipped,omitempty"`

	Reclaim   *ReclaimReport   `json:"reclaim,omitempty"`
	Rescue    *RescueReport    `json:"rescue,omitempty"`
	Retry     *RetryReport     `json:"retry,omitempty"`
	Retention *RetentionReport `json:"retention,omitempty"`
	Reconcile *ReconcileReport `json:"reconcile,omitempty"`
	Alarms    *AlarmsReport    `json:"alarms,omitempty"`
	Redact    *RedactReport    `json:"redact,omitempty"`
}

// attrs are the job-specific attributes of the run's summary log line.
func (r *Result) attrs() []any {
	switch {
	case r.Reclaim != nil:
		return []any{slog.Int("leases_freed", len(r.Reclaim.FreedLeases)),
			slog.Int64("pending_in_freed_partitions", r.Reclaim.PendingInFreed),
			slog.Int("lanes_released", len(r.Reclaim.ReleasedLanes)), slog.Int64("events_unblocked", r.Reclaim.Unblocked),
			slog.Int("dead_relays_removed", len(r.Reclaim.DeadRelays))}
	case r.Rescue != nil:
		return []any{slog.Int64("waiting", r.Rescue.Waiting), slog.Float64("oldest_due_seconds", r.Rescue.OldestDueSeconds),
			slog.Int64("overdue_scheduled", r.Rescue.OverdueScheduled), slog.Bool("notified", r.Rescue.Notified)}
	case r.Retry != nil:
		return []any{slog.Int64("retried", r.Retry.Retried), slog.Int64("exhausted", r.Retry.Exhausted)}
	case r.Retention != nil:
		return []any{slog.Int64("messages_deleted", r.Retention.DeletedMessages),
			slog.Int64("attempts_deleted", r.Retention.DeletedAttempts),
			slog.Int64("processed_deleted", r.Retention.DeletedProcessed), slog.Int64("held_by_legal_hold", r.Retention.HeldMessages),
			slog.Int("statements", r.Retention.Statements),
			slog.Duration("longest_statement", r.Retention.LongestStatement)}
	case r.Reconcile != nil:
		var missing int64
		for _, c := range r.Reconcile.Consumers {
			missing += c.Missing
		}
		return []any{slog.Time("from", r.Reconcile.From), slog.Time("to", r.Reconcile.To),
			slog.Int("consumers", len(r.Reconcile.Consumers)), slog.Int64("missing", missing)}
	case r.Alarms != nil:
		return []any{slog.Int("alarms", len(r.Alarms.Alarms))}
	case r.Redact != nil:
		return []any{slog.Time("cutoff", r.Redact.Cutoff), slog.Int64("messages_redacted", r.Redact.RedactedMessages),
			slog.Int64("dead_letters_redacted", r.Redact.RedactedDeadLetters), slog.Int64("approvals_redacted", r.Redact.RedactedApprovals),
			slog.Int64("headers_removed", r.Redact.HeadersRemoved),
			slog.Int64("messages_held", r.Redact.HeldMessages), slog.Int64("dead_letters_held", r.Redact.HeldDeadLetters),
			slog.Int("statements", r.Redact.Statements), slog.Duration("longest_statement", r.Redact.LongestStatement)}
	}
	return nil
}

// ReclaimReport is what the reclaim job found and repaired.
type ReclaimReport struct {
	// FreedLeases are the partition leases freed because their owner
	// stopped renewing them.
	FreedLeases []FreedLease `json:"freed_leases"`
	// PendingInFreed sums FreedLease.Pending.
	PendingInFreed int64 `json:"pending_in_freed_partitions"`
	// ReleasedLanes are lanes that were still held by a head already
	// published (or gone); Unblocked counts their events set back from
	// blocked to pending.
	ReleasedLanes []ReleasedLane `json:"released_lanes"`
	Unblocked     int64          `json:"unblocked_events"`
	// DeadRelays are the outbox.relays rows removed.
	DeadRelays []DeadRelay `json:"dead_relays"`
}

// FreedLease is a partition lease freed by the reclaim job. There is no
// "claimed" state: the events the dead relay was publishing are pending
// rows of this partition, published by the next relay to take it (some
// perhaps twice: at-least-once).
type FreedLease struct {
	Partition  int       `json:"partition"`
	Owner      string    `json:"owner"`
	LeaseUntil time.Time `json:"lease_until"`
	// Pending counts the partition's pending events (at most 10,000 are
	// counted).
	Pending int64 `json:"pending"`
	// OldestPending is the first pending event of the partition, the one
	// the dead relay was most likely publishing (uuid.Nil when none).
	OldestPending uuid.UUID `json:"oldest_pending_event_id"`
}

// ReleasedLane is a lane released by the reclaim job.
type ReleasedLane struct {
	Topic         string `json:"topic"`
	Key           string `json:"key"`
	HeadMessageID int64  `json:"head_message_id"`
}

// DeadRelay is a relays row removed by the reclaim job.
type DeadRelay struct {
	RelayID    string    `json:"relay_id"`
	Hostname   string    `json:"hostname"`
	PID        int       `json:"pid"`
	AliveUntil time.Time `json:"alive_until"`
}

// RescueReport is what the rescue job found.
type RescueReport struct {
	// Waiting counts pending events due for longer than RescueAfter (at most
	// 10,000 per partition are counted).
	Waiting int64 `json:"waiting"`
	// OldestDueSeconds is how long the oldest of them has been due.
	OldestDueSeconds float64 `json:"oldest_due_seconds"`
	// Partitions holds the partitions with waiting events.
	Partitions []RescuePartition `json:"partitions"`
	// OverdueScheduled counts delayed events due for longer than
	// RescueAfter and still not moved into the outbox.
	OverdueScheduled int64 `json:"overdue_scheduled"`
	// LiveRelays is the number of relays alive; 0 means nobody will
	// publish anything until a relay starts.
	LiveRelays int64 `json:"live_relays"`
	// Notified is true when the relays were woken with NOTIFY.
	Notified bool `json:"notified"`
}

// RescuePartition is a partition with events the relay missed.
type RescuePartition struct {
	Partition        int     `json:"partition"`
	Owner            string  `json:"owner,omitempty"`
	Leased           bool    `json:"leased"`
	Waiting          int64   `json:"waiting"`
	OldestDueSeconds float64 `json:"oldest_due_seconds"`
}

// RetryReport is what the retry job did.
type RetryReport struct {
	// Retried counts the events returned to pending.
	Retried int64 `json:"retried"`
	// Events lists the first 100 of them.
	Events []RetriedEvent `json:"events"`
	// Exhausted counts eligible events left parked because they were
	// already retried MaxAutoRetries times.
	Exhausted int64 `json:"exhausted"`
}

// RetriedEvent is an event the retry job returned to pending.
type RetriedEvent struct {
	MessageID  int64     `json:"message_id"`
	EventID    uuid.UUID `json:"event_id"`
	Topic      string    `json:"topic"`
	ErrorClass string    `json:"error_class"`
	// AutoRetry is the number of this automatic retry (1 the first time).
	AutoRetry int `json:"auto_retry"`
}

// RetentionReport is what the retention job deleted.
type RetentionReport struct {
	// PublishedCutoff: published events published before it were deleted.
	PublishedCutoff time.Time `json:"published_cutoff"`
	// ProcessedCutoff: inbox records applied before it were deleted.
	ProcessedCutoff  time.Time `json:"processed_cutoff"`
	DeletedMessages  int64     `json:"deleted_messages"`
	DeletedAttempts  int64     `json:"deleted_attempts"`
	DeletedProcessed int64     `json:"deleted_processed"`
	// HeldMessages counts published events past the window that were kept
	// because a legal hold covers their key or tenant (inbox records kept
	// by a hold are not counted).
	HeldMessages int64 `json:"held_messages"`
	// Statements is the number of DELETE statements (each its own
	// transaction); LongestStatement the slowest of them.
	Statements       int           `json:"statements"`
	LongestStatement time.Duration `json:"longest_statement_ns"`
}

// ReconcileReport compares, for the events created in [From, To), what was
// published with what each consumer applied.
type ReconcileReport struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Topics is the producer side: events created in the window, by status.
	Topics []TopicCounts `json:"topics"`
	// Consumers is the consumer side, per consumer and topic:
	// Published = Applied + DeadLettered + Missing.
	Consumers []ConsumerCounts `json:"consumers"`
}

// TopicCounts are the events of a topic created in the reconcile window.
type TopicCounts struct {
	Topic     string `json:"topic"`
	Enqueued  int64  `json:"enqueued"`
	Published int64  `json:"published"`
	Pending   int64  `json:"pending"` // pending or blocked
	Parked    int64  `json:"parked"`
	Dropped   int64  `json:"dropped"`
}

// ConsumerCounts are one consumer's figures for one topic.
type ConsumerCounts struct {
	Consumer     string `json:"consumer"`
	Topic        string `json:"topic"`
	Published    int64  `json:"published"`
	Applied      int64  `json:"applied"`
	DeadLettered int64  `json:"dead_lettered"`
	// Missing = Published - Applied - DeadLettered: neither applied nor in
	// the consumer's dead letters. MissingEventIDs lists the first
	// ReconcileMaxGaps of them in enqueue order.
	Missing         int64       `json:"missing"`
	MissingEventIDs []uuid.UUID `json:"missing_event_ids,omitempty"`
}

// AlarmsReport is the health the alarms job measured. Alarms lists what was
// past its threshold (each also logged as a warning).
type AlarmsReport struct {
	Topics             []TopicHealth     `json:"topics"`
	DeadLetters        []ConsumerHealth  `json:"dead_letters"`
	Partitions         []PartitionHealth `json:"partitions"`
	LongTransactions   []LongTransaction `json:"long_transactions"`
	ScheduledConflicts int64             `json:"scheduled_conflicts"`
	Alarms             []Alarm           `json:"alarms"`
}

// TopicHealth is one topic's backlog.
type TopicHealth struct {
	Topic string `json:"topic"`
	// DuePending counts pending events that are due.
	DuePending int64 `json:"due_pending"`
	// OldestDueSeconds is how long the oldest of them has been due.
	OldestDueSeconds float64 `json:"oldest_due_seconds"`
	Parked           int64   `json:"parked"`
}

// ConsumerHealth is one consumer's open dead letters.
type ConsumerHealth struct {
	Consumer    string `json:"consumer"`
	DeadLetters int64  `json:"dead_letters"`
}

// PartitionHealth is one relay partition's state.
type PartitionHealth struct {
	Partition    int    `json:"partition"`
	Owner        string `json:"owner,omitempty"`
	LeaseExpired bool   `json:"lease_expired"`
	// Stuck: an event in it has been due longer than StuckPartitionAfter;
	// WaitingSeconds is how long.
	Stuck          bool    `json:"stuck"`
	WaitingSeconds float64 `json:"waiting_seconds,omitempty"`
}

// LongTransaction is an open transaction of a client session.
type LongTransaction struct {
	PID         int     `json:"pid"`
	User        string  `json:"user"`
	Application string  `json:"application"`
	State       string  `json:"state"`
	AgeSeconds  float64 `json:"age_seconds"`
	// HoldsHorizon: the session holds back the vacuum horizon (it has a
	// transaction id or a snapshot).
	HoldsHorizon bool   `json:"holds_horizon"`
	WaitEvent    string `json:"wait_event_type,omitempty"`
}

// Alarm kinds.
const (
	AlarmPendingAge        = "pending_age"
	AlarmParked            = "parked"
	AlarmDeadLetters       = "dead_letters"
	AlarmStuckPartition    = "stuck_partition"
	AlarmLongTransaction   = "long_transaction"
	AlarmScheduledConflict = "scheduled_conflict"
)

// Alarm is one health figure past its threshold.
type Alarm struct {
	Kind string `json:"kind"`
	// Subject is what it is about: a topic, consumer, partition number,
	// backend pid.
	Subject   string  `json:"subject"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	Message   string  `json:"message"`
}

// RedactReport is what the redact job did.
type RedactReport struct {
	// Cutoff: events published, and dead letters closed (resolved_at),
	// before it were redacted.
	Cutoff time.Time `json:"cutoff"`
	// RedactedMessages and RedactedDeadLetters count the rows whose payload
	// was replaced by empty bytes in this run.
	RedactedMessages    int64 `json:"redacted_messages"`
	RedactedDeadLetters int64 `json:"redacted_dead_letters"`
	// RedactedApprovals counts the two-person-rule approvals of edits,
	// decided before the cutoff, whose copy of the corrected payload was
	// emptied. (A redacted dead letter's finished edit requests lose their
	// copy with it.)
	RedactedApprovals int64 `json:"redacted_approvals"`
	// HeadersRemoved counts the headers (Config.RedactHeaders) removed.
	HeadersRemoved int64 `json:"headers_removed"`
	// HeldMessages and HeldDeadLetters count the rows past the cutoff left
	// whole because a legal hold covers them.
	HeldMessages    int64 `json:"held_messages"`
	HeldDeadLetters int64 `json:"held_dead_letters"`
	// Statements is the number of UPDATE statements (each its own
	// transaction); LongestStatement the slowest of them.
	Statements       int           `json:"statements"`
	LongestStatement time.Duration `json:"longest_statement_ns"`
}
