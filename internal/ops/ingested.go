package ops

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Broker dead letters are the rows of inbox.dead_letters that outboxkit dlq
// ingest copied from RabbitMQ or Kafka (ingested_from set). No consumer of
// ours applies them, so the operator's process acts on them itself: a
// replay sends the original message back to where it came from, an edit
// sends a corrected copy there as a new message linked to the original,
// drop and restore change the row (inbox.go). The sending is done by a
// Republisher (internal/ingest implements it), so that ops imports no
// broker client.

// Broker names, as inbox.dead_letters.ingested_from stores them.
const (
	BrokerRabbitMQ = "rabbitmq"
	BrokerKafka    = "kafka"
)

// Errors of broker dead letters.
var (
	// ErrNoBroker is matched by a *NoBrokerError.
	ErrNoBroker = errors.New("broker not configured")
	// ErrBusy: another operator holds the dead letter (a send in flight).
	ErrBusy = errors.New("another operator is acting on this dead letter right now; try again in a moment")
	// ErrSentNotRecorded: the broker confirmed the message, but neither the
	// operator's transaction nor a fresh one could record it (status,
	// audit entry). The message is at its destination.
	ErrSentNotRecorded = errors.New("sent and confirmed by the broker, but not recorded (the database failed): do not retry, the message was sent; " +
		"check the dead letter's status and the audit log once the database is back")
	// ErrSentTwice: the broker confirmed the message, but the operator's
	// transaction was lost and, the row's lock gone with it, another
	// action (another operator's replay, edit or drop) changed the dead
	// letter before this send was recorded. Both sends are at the broker and
	// in the audit log.
	ErrSentTwice = errors.New("sent and confirmed by the broker, but another action on the same dead letter came first while this " +
		"operator's transaction was lost: the dead letter was sent twice; do not retry; check with the other operator which message " +
		"the consumer should keep (the audit log has both)")
	// ErrOutcomeUnknown: the message may have reached the broker; its
	// confirmation was lost (a timeout, a dropped connection). A
	// Republisher wraps it around such errors.
	ErrOutcomeUnknown = errors.New("the broker's confirmation was lost, so the message may have been sent: do not retry blindly; " +
		"look for it at its destination first (a retry of the same replay or edit sends the same event id, which consumers deduplicate)")
)

// NoBrokerError says that a broker dead letter cannot be replayed or edited
// here because its broker is not configured, and how to configure it.
type NoBrokerError struct {
	Broker string // BrokerRabbitMQ or BrokerKafka
	Flag   string // the command-line flag that configures it
	Env    string // the environment variable that does
}

// brokerSettings are the flag and variable of each broker, as the relay,
// dlq ingest, dlq and serve read them.
var brokerSettings = map[string]NoBrokerError{
	BrokerRabbitMQ: {Broker: BrokerRabbitMQ, Flag: "--rabbitmq-url", Env: "RABBITMQ_URL"},
	BrokerKafka:    {Broker: BrokerKafka, Flag: "--kafka-brokers", Env: "KAFKA_BROKERS"},
}

func (e *NoBrokerError) Error() string {
	return fmt.Sprintf("came from %s: pass %s (or set %s; and the TLS or SASL flags, if the broker needs them) to send it back",
		brokerName(e.Broker), e.Flag, e.Env)
}

// Is makes errors.Is(err, ErrNoBroker) true.
func (e *NoBrokerError) Is(target error) bool { return target == ErrNoBroker }

func brokerName(broker string) string {
	switch broker {
	case BrokerRabbitMQ:
		return "RabbitMQ"
	case BrokerKafka:
		return "Kafka"
	}
	return strconv.Quote(broker)
}

// BrokerLetter is a broker dead letter as a Republisher sends it.
type BrokerLetter struct {
	Ref     Ref
	From    string          // BrokerRabbitMQ or BrokerKafka
	EventID string          // the dead letter's event id
	Payload []byte          // the bytes to send: the original ones, or the corrected ones of an edit
	Headers json.RawMessage // inbox.dead_letters.headers, as stored
	Source  json.RawMessage // inbox.dead_letters.source: where the message came from
	// CopyID is set when the message is the corrected copy of an edit: the
	// copy is a new message with this event id, linked to the original
	// (EventID) by the header wire.EditOfHeader and, when the message is a
	// CloudEvent, by its causation id.
	CopyID string
}

// Destination is where a broker dead letter goes back to.
type Destination struct {
	Broker string `json:"broker"`
	// RabbitMQ: the queue that dead-lettered the message, reached through
	// the default exchange (Exchange "", RoutingKey the queue's name), so
	// that only that queue gets it again.
	Queue      string `json:"queue,omitempty"`
	Exchange   string `json:"exchange,omitempty"`
	RoutingKey string `json:"routing_key,omitempty"`
	Topic      string `json:"topic,omitempty"`
	Partition  *int   `json:"partition,omitempty"` // Kafka: the original partition, when known
	// Chain: RabbitMQ's dead-letter chain when the message died more than
	// once (oldest first), for the operator who checks the choice of Queue.
	Chain string `json:"chain,omitempty"`
}

func (d Destination) String() string {
	switch {
	case d.Broker == BrokerRabbitMQ && d.Queue != "" && d.Exchange == "" && d.Chain != "":
		return fmt.Sprintf("RabbitMQ queue %q (through the default exchange: no other queue gets it; "+
			"the queue that rejected it or, if none did, that dead-lettered it last, in the chain %s)", d.Queue, d.Chain)
	case d.Broker == BrokerRabbitMQ && d.Queue != "" && d.Exchange == "":
		return fmt.Sprintf("RabbitMQ queue %q (through the default exchange: no other queue gets it)", d.Queue)
	case d.Broker == BrokerRabbitMQ:
		return fmt.Sprintf("RabbitMQ exchange %q with routing key %q", d.Exchange, d.RoutingKey)
	case d.Broker == BrokerKafka && d.Partition != nil:
		return fmt.Sprintf("Kafka topic %q, partition %d", d.Topic, *d.Partition)
	case d.Broker == BrokerKafka:
		return fmt.Sprintf("Kafka topic %q", d.Topic)
	}
	return brokerName(d.Broker)
}

// Republisher sends broker dead letters back to their broker.
type Republisher interface {
	// Connected reports whether broker (BrokerRabbitMQ or BrokerKafka) is
	// configured.
	Connected(broker string) bool
	// Target says where l goes, without sending anything, or why it cannot
	// go (the message did not say where it came from).
	Target(l *BrokerLetter) (Destination, error)
	// Republish sends l to its Target and returns once the broker has
	// confirmed it.
	Republish(ctx context.Context, l *BrokerLetter) (Destination, error)
}

// WithRepublisher returns a copy of s whose replay, edit and redrive of
// broker dead letters send through r. Without one they fail with a
// *NoBrokerError.
func (s *Store) WithRepublisher(r Republisher) *Store {
	c := *s
	c.republisher = r
	return &c
}

// BrokerReady returns nil when a broker dead letter from broker can be
// replayed or edited with s, else a *NoBrokerError.
func (s *Store) BrokerReady(broker string) error {
	if s.republisher != nil && s.republisher.Connected(broker) {
		return nil
	}
	e, ok := brokerSettings[broker]
	if !ok {
		return fmt.Errorf("unknown broker %q", broker)
	}
	return &e
}

// BrokerTarget says where a replay of broker dead letter ref would send it,
// or with edit where the corrected copy of an edit would go.
func (s *Store) BrokerTarget(ctx context.Context, ref Ref, edit bool) (Destination, error) {
	targets, err := s.brokerTargets(ctx, []Item{{Ref: ref}}, edit)
	if err != nil {
		return Destination{}, err
	}
	t, ok := targets[ref.ID]
	if !ok {
		return Destination{}, fmt.Errorf("%s: %w (as a broker dead letter)", ref, ErrNotFound)
	}
	return t.dest, t.err
}

type brokerTarget struct {
	from string // BrokerRabbitMQ or BrokerKafka
	dest Destination
	err  error
}

// brokerTargets reads the origin of the broker dead letters among items and
// says where each would go (with edit, its corrected copy), in one query.
func (s *Store) brokerTargets(ctx context.Context, items []Item, edit bool) (map[int64]brokerTarget, error) {
	var ids []int64
	for _, it := range items {
		if it.Ref.Kind == KindInbox {
			ids = append(ids, it.Ref.ID)
		}
	}
	out := map[int64]brokerTarget{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, s.in.ingestedOrigins, ids)
	if err != nil {
		return nil, err
	}
	var l BrokerLetter
	_, err = pgx.ForEachRow(rows, []any{&l.Ref.ID, &l.From, &l.EventID, &l.Source}, func() error {
		c := l
		c.Ref.Kind = KindInbox
		if edit {
			// Where a copy goes does not depend on its id; Target only
			// needs to know that it is one.
			c.CopyID = "the corrected copy"
		}
		t := brokerTarget{from: c.From}
		if s.republisher == nil {
			t.dest, t.err = Destination{Broker: c.From}, s.BrokerReady(c.From)
		} else {
			t.dest, t.err = s.republisher.Target(&c)
		}
		out[c.Ref.ID] = t
		return nil
	})
	return out, err
}

// brokersReady returns a *NoBrokerError, naming the dead letter, when a
// broker dead letter among refs came from a broker s cannot reach.
func (s *Store) brokersReady(ctx context.Context, refs []Ref) error {
	items, _, err := s.resolve(ctx, refs, false)
	if err != nil {
		return err
	}
	return s.itemsReady(items)
}

// targetsReady is brokersReady that also resolves where each broker dead
// letter among refs would go (with edit, its corrected copy), as the send
// will: an approval spent on a run where every send fails on a missing
// --kafka-retry-topic, a destination --replay-allow refuses or an unknown
// destination is worse than one left pending with the reason.
func (s *Store) targetsReady(ctx context.Context, refs []Ref, edit bool) error {
	items, targets, err := s.resolve(ctx, refs, edit)
	if err != nil {
		return err
	}
	if err := s.itemsReady(items); err != nil {
		return err
	}
	var errs []error
	for _, it := range items {
		if t, ok := targets[it.Ref.ID]; ok && t.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", it.Ref, t.err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w (fix the flags and approve again, or reject the approval and ask for one without these dead letters)",
			errors.Join(errs...))
	}
	return nil
}

// resolve returns the inbox dead letters among refs as items that say
// where they came from, and where each broker dead letter would go.
func (s *Store) resolve(ctx context.Context, refs []Ref, edit bool) ([]Item, map[int64]brokerTarget, error) {
	var items []Item
	for _, r := range refs {
		if r.Kind == KindInbox {
			items = append(items, Item{Ref: r})
		}
	}
	targets, err := s.brokerTargets(ctx, items, edit)
	if err != nil {
		return nil, nil, err
	}
	for i := range items {
		items[i].IngestedFrom = targets[items[i].Ref.ID].from
	}
	return items, targets, nil
}

// itemsReady is brokersReady for listed items, which say where they came
// from.
func (s *Store) itemsReady(items []Item) error {
	for _, it := range items {
		if it.IngestedFrom == "" {
			continue
		}
		if err := s.BrokerReady(it.IngestedFrom); err != nil {
			return fmt.Errorf("%s %w", it.Ref, err)
		}
	}
	return nil
}

// ingestedFrom returns BrokerRabbitMQ or BrokerKafka for a broker dead
// letter, "" for a consumer's own.
func (s *Store) ingestedFrom(ctx context.Context, ref Ref) (string, error) {
	var from string
	err := s.pool.QueryRow(ctx, s.in.ingestedFrom, ref.ID).Scan(&from)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	return from, err
}

// Budgets of a send to a broker. The recording of a confirmed send (the
// status change and the audit entry) runs on its own budget, after the
// caller's context has ended if need be: once the broker has the message,
// leaving it unrecorded is worse than finishing late.
const (
	// recordTimeout bounds the recording of a confirmed send, each try.
	recordTimeout = 10 * time.Second
	// recordReserve is kept of the caller's deadline for the recording;
	// the send gets what is left.
	recordReserve = 10 * time.Second
	// minSendBudget: with less time than this left for the send, nothing
	// is sent.
	minSendBudget = 2 * time.Second
)

// copyNamespace is the name space of the event ids of corrected copies
// (copyID).
const copyNamespace = "5d3c1a8e-7f0b-4c2e-9a61-0b7e2f4d8c19"

// copyID is the event id of the corrected copy of broker dead letter ref
// (event eventID) carrying payload: a UUID (version 8, SHA-256 name based)
// of the three, so that a retry of the same edit, after an unknown outcome
// or a send that could not be recorded, sends the same event id again,
// which consumers deduplicate, and a different correction gets its own.
func copyID(ref Ref, eventID string, payload []byte) string {
	sum := sha256.Sum256(payload)
	name := fmt.Appendf(nil, "inbox.dead_letters/%d/%s/%x", ref.ID, eventID, sum)
	return uuid.NewHash(sha256.New(), uuid.MustParse(copyNamespace), name, 8).String()
}

// sendContext is the caller's context for the send, ending recordReserve
// before the caller's deadline so that the recording fits in it.
func sendContext(ctx context.Context, ref Ref) (context.Context, context.CancelFunc, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		c, cancel := context.WithCancel(ctx)
		return c, cancel, nil
	}
	left := time.Until(deadline) - recordReserve
	if left < minSendBudget {
		return nil, nil, fmt.Errorf("%s: only %s left before the deadline, too little to send it and record the send; nothing was sent",
			ref, time.Until(deadline).Round(time.Millisecond))
	}
	c, cancel := context.WithTimeout(ctx, left)
	return c, cancel, nil
}

// send is a broker dead letter about to be sent, and what recording the
// send writes.
type send struct {
	letter  *BrokerLetter
	before  json.RawMessage
	action  string // replay or edit
	status  string // replayed or edited
	edited  []byte // edit: the corrected payload, kept on the row
	sendID  string // in the audit details: proves, after a lost transaction, that it committed
	mark    int64  // the last audit entry before the send's own (auditMarkSQL)
	targets []string
	details map[string]any
}

// sendIngested sends parked broker dead letter ref back to its broker (with
// edit, a corrected copy of it carrying payload), then marks it replayed
// (edited), audited. The row stays locked during the send (one message,
// bounded by the Republisher's timeout and the caller's deadline less
// recordReserve) so that two operators never send it at once, and it
// changes only once the broker has confirmed the message.
//
// After the confirmation the recording runs whatever the caller's context:
// in the transaction that locked the row, else (that transaction was lost:
// a failover, idle_in_transaction_session_timeout) in a fresh one
// (recordLostSend), which is ErrSentTwice when another action changed the
// row in between. If both fail the error is ErrSentNotRecorded; if the
// broker's answer was lost, ErrOutcomeUnknown. The copy of an edit has a stable event id (copyID), so
// a retry of the same edit sends the same event again, never a second one.
func (s *Store) sendIngested(ctx context.Context, a Action, ref Ref, edit bool, payload []byte) (Outcome, error) {
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	rec := context.WithoutCancel(ctx)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return Outcome{}, err
	}
	defer func() {
		c, cancel := context.WithTimeout(rec, recordTimeout)
		defer cancel()
		tx.Rollback(c) //nolint:errcheck // after a commit, or on a lost connection, there is nothing to roll back
	}()
	p, err := s.lockForSend(ctx, tx, ref, edit, payload)
	if err != nil {
		return Outcome{}, err
	}
	// Where recordLostSend starts looking for this send's audit entry.
	if err := tx.QueryRow(ctx, s.in.auditMark).Scan(&p.mark); err != nil {
		return Outcome{}, err
	}
	sendCtx, cancelSend, err := sendContext(ctx, ref)
	if err != nil {
		return Outcome{}, err
	}
	dest, err := s.republisher.Republish(sendCtx, p.letter)
	cancelSend()
	switch {
	case errors.Is(err, ErrOutcomeUnknown):
		return Outcome{}, fmt.Errorf("%s is still parked, but %w", ref, err)
	case err != nil:
		return Outcome{}, fmt.Errorf("%s not %s, nothing was sent, still parked: %w", ref, p.status, err)
	}
	p.details["republished_to"] = dest
	out := Outcome{Ref: ref, Result: p.status, Note: fmt.Sprintf("republished to %s (confirmed by the broker)", dest)}
	if edit {
		out.NewEventID = p.letter.CopyID
		out.Note = fmt.Sprintf("a corrected copy, event %s, republished to %s (confirmed by the broker); the original is kept, status edited",
			p.letter.CopyID, dest)
	}
	c, cancel := context.WithTimeout(rec, recordTimeout)
	defer cancel()
	first := s.recordSend(c, tx, a, ref, p)
	if first == nil {
		if first = tx.Commit(c); first == nil {
			return out, nil
		}
	}
	// The locking transaction is lost, the message is at the broker:
	// record it in a fresh transaction.
	p.details["recorded_after_error"] = pgutil.Redact(first.Error())
	c2, cancel2 := context.WithTimeout(rec, recordTimeout)
	defer cancel2()
	var lost lostSend
	if err := pgx.BeginFunc(c2, s.pool, func(tx pgx.Tx) (err error) {
		lost, err = s.recordLostSend(c2, tx, a, ref, p)
		return err
	}); err != nil {
		what := "it"
		if edit {
			what = "its corrected copy, event " + p.letter.CopyID + ","
		}
		return out, fmt.Errorf("%s: %s went to %s: %w: %w", ref, what, dest, ErrSentNotRecorded, errors.Join(first, err))
	}
	return lost.report(out, dest)
}

// What recordLostSend found.
const (
	lostRecorded  = iota // recorded now
	lostCommitted        // the lost transaction had committed: already recorded
	lostTwice            // another action changed the row meanwhile: a second send, audited
)

type lostSend struct {
	outcome       int
	status, actor string
}

// report completes out, the outcome of a confirmed send to dest, with how
// it was recorded after its first transaction was lost.
func (lost lostSend) report(out Outcome, dest Destination) (Outcome, error) {
	switch lost.outcome {
	case lostCommitted:
		out.Note += "; recorded (the answer to the commit was lost, but the commit went through)"
	case lostTwice:
		return out, fmt.Errorf("%s went to %s, after %s had made it %s while the first transaction was lost: %w; "+
			"the audit log has both sends", out.Ref, dest, lost.actor, lost.status, ErrSentTwice)
	default:
		out.Note += "; recorded in a second transaction, the first was lost after the send"
	}
	return out, nil
}

// recordLostSend records confirmed send p after the transaction that locked
// the row was lost. The lock went with it, so another operator may have
// acted meanwhile: a status equal to p.status proves nothing. The lost
// transaction's own audit entry does, found by the send id it carries: if
// it is there, that transaction committed and recorded the send; if not and
// the row is still parked, the send is recorded now; if someone else
// changed the row, this send is audited all the same (a second send, after
// theirs), and the caller says so.
func (s *Store) recordLostSend(ctx context.Context, tx pgx.Tx, a Action, ref Ref, p *send) (lostSend, error) {
	var committed bool
	var ls lostSend
	var current json.RawMessage
	if err := tx.QueryRow(ctx, s.in.lostSend, ref.ID, p.mark, p.sendID).Scan(&committed, &ls.status, &ls.actor, &current); err != nil {
		return lostSend{}, err
	}
	switch {
	case committed:
		ls.outcome = lostCommitted
		return ls, nil
	case ls.status == "parked":
		var after json.RawMessage
		if err := tx.QueryRow(ctx, s.in.closeIngested, ref.ID, p.status, p.edited).Scan(&after); err != nil {
			return lostSend{}, err
		}
		return lostSend{outcome: lostRecorded}, s.auditInbox(ctx, tx, a, p.action, p.targets, p.before, after, p.details)
	}
	ls.outcome = lostTwice
	p.details["second_send_after"] = map[string]any{"status": ls.status, "by": ls.actor}
	return ls, s.auditInbox(ctx, tx, a, p.action, p.targets, p.before, current, p.details)
}

// lockForSend locks parked broker dead letter ref (NOWAIT) and prepares its
// send.
func (s *Store) lockForSend(ctx context.Context, tx pgx.Tx, ref Ref, edit bool, payload []byte) (*send, error) {
	l := &BrokerLetter{Ref: ref}
	p := &send{letter: l, action: "replay", status: "replayed"}
	var status, consumer string
	err := tx.QueryRow(ctx, s.in.lockIngested, ref.ID).Scan(&p.before, &status, &consumer, &l.From, &l.EventID,
		&l.Payload, &l.Headers, &l.Source)
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("%s: %w", ref, ErrNotFound)
	case errors.As(err, &pgErr) && pgErr.Code == "55P03": // lock_not_available
		return nil, fmt.Errorf("%s: %w", ref, ErrBusy)
	case err != nil:
		return nil, err
	case l.From == "":
		return nil, fmt.Errorf("%s belongs to consumer %s, not to a broker: %w", ref, consumer, ErrWrongStatus)
	case status != "parked":
		return nil, fmt.Errorf("%s is %s, only parked dead letters are replayed or edited: %w", ref, status, ErrWrongStatus)
	}
	if err := s.BrokerReady(l.From); err != nil {
		return nil, fmt.Errorf("%s %w", ref, err)
	}
	p.sendID = uuid.NewString()
	p.details = map[string]any{"ref": ref.String(), "consumer": consumer, "ingested_from": l.From, "send_id": p.sendID}
	p.targets = []string{strconv.FormatInt(ref.ID, 10), l.EventID}
	if edit {
		// Fingerprints and size only: the audit log never holds payload
		// bytes. The corrected payload is kept on the dead letter
		// (edited_payload), where redaction reaches it.
		p.edited = payload
		if p.edited == nil {
			p.edited = []byte{}
		}
		l.CopyID = copyID(ref, l.EventID, p.edited)
		p.details["new_event_id"], p.details["edit_of"] = l.CopyID, l.EventID
		p.details["original_payload_sha256"] = sha256Hex(l.Payload)
		p.details["edited_payload_sha256"], p.details["edited_payload_bytes"] = sha256Hex(p.edited), len(p.edited)
		l.Payload = p.edited
		p.targets = append(p.targets, l.CopyID)
		p.action, p.status = "edit", "edited"
	}
	return p, nil
}

// recordSend marks the dead letter of a confirmed send replayed (edited) and
// audits it, in tx, the transaction that locked the row.
func (s *Store) recordSend(ctx context.Context, tx pgx.Tx, a Action, ref Ref, p *send) error {
	var after json.RawMessage
	if err := tx.QueryRow(ctx, s.in.closeIngested, ref.ID, p.status, p.edited).Scan(&after); err != nil {
		return err
	}
	return s.auditInbox(ctx, tx, a, p.action, p.targets, p.before, after, p.details)
}
