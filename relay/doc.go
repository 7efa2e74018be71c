// Package relay publishes committed outbox events to a broker and marks them
// published only after the broker acknowledged them.
//
// # How it works
//
// The outbox is split into partitions (outbox.partitions; an event's
// partition is a hash of its key). Every running Relay registers in
// outbox.relays and holds leases on a fair share of the partitions,
// ceil(partitions / live relays), renewed every LeaseTTL/3. A relay that dies
// stops renewing; after LeaseTTL its partitions are taken by the others. Each
// acquisition increments the partition's lease_token, and every statement
// that marks events checks the token under a FOR SHARE lock: a relay that
// lost its lease (paused, cut off) can never mark rows it no longer owns.
//
// Each worker loop claims the next pending, due events of its partitions in
// id order (a plain read: the lease is the claim), publishes them through
// the Publisher, and marks the acknowledged ones published with their broker
// coordinates in one fenced statement. Events with the same topic and key
// form a lane with a gap-free sequence (ce_sequence) taken at enqueue under
// the lane's row lock, so lane order is commit order.
//
// # Failures
//
// A failed publish is classified (ErrorClass): transient errors are retried
// with exponential backoff and jitter, and the lane's later events wait
// (lanes.hold_until) while other lanes flow; after MaxAttempts, or at once
// for unroutable, poison_format and permanent errors, the event is parked
// with its error, its attempt history (outbox.attempts) and an audit entry,
// and its lane stays blocked (topic policy "block", the default) or goes on
// ("skip"). When the broker is down for everything, the relay backs off as a
// whole and counts no attempts. A publish whose outcome is unknown is retried:
// duplicates are possible, losses are not.
//
// # Wake-up
//
// A relay LISTENs on its own connection; producers NOTIFY only while some
// relay is idle (outbox.relays.idle), because NOTIFY serialises commits.
// PollInterval is the safety net. Behind PgBouncer in transaction mode set
// Config.ListenURL to a direct connection, or DisableListen to poll.
//
// Delayed events (outbox.Message.DeliverAfter) wait in outbox.scheduled and
// are moved into the outbox by the relay owning their partition when due;
// they take their lane sequence at that moment.
package relay
