package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
	Broker     string `json:"broker"`
	Exchange   string `json:"exchange,omitempty"`
	RoutingKey string `json:"routing_key,omitempty"`
	Topic      string `json:"topic,omitempty"`
	Partition  *int   `json:"partition,omitempty"` // Kafka: the original partition, when known
}

func (d Destination) String() string {
	switch {
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

// BrokerTarget says where a replay of broker dead letter ref would send it.
func (s *Store) BrokerTarget(ctx context.Context, ref Ref) (Destination, error) {
	targets, err := s.brokerTargets(ctx, []Item{{Ref: ref}})
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
// says where each would go, in one query.
func (s *Store) brokerTargets(ctx context.Context, items []Item) (map[int64]brokerTarget, error) {
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
	var items []Item
	for _, r := range refs {
		if r.Kind == KindInbox {
			items = append(items, Item{Ref: r})
		}
	}
	targets, err := s.brokerTargets(ctx, items)
	if err != nil {
		return err
	}
	for i := range items {
		items[i].IngestedFrom = targets[items[i].Ref.ID].from
	}
	return s.itemsReady(items)
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

// sendIngested sends parked broker dead letter ref back to its broker (with
// edit, a corrected copy of it carrying payload), then marks it replayed
// (edited), audited, in one transaction. The row stays locked during the
// send (one message, bounded by the Republisher's timeout) so that two
// operators never send it twice, and it changes only once the broker has
// confirmed the message. If the database fails after that, the row stays
// parked and the error says so.
func (s *Store) sendIngested(ctx context.Context, a Action, ref Ref, edit bool, payload []byte) (Outcome, error) {
	if err := a.check(); err != nil {
		return Outcome{}, err
	}
	out := Outcome{Ref: ref, Result: "replayed"}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l := &BrokerLetter{Ref: ref}
		var before json.RawMessage
		var status, consumer string
		err := tx.QueryRow(ctx, s.in.lockIngested, ref.ID).Scan(&before, &status, &consumer, &l.From, &l.EventID,
			&l.Payload, &l.Headers, &l.Source)
		var pgErr *pgconn.PgError
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("%s: %w", ref, ErrNotFound)
		case errors.As(err, &pgErr) && pgErr.Code == "55P03": // lock_not_available
			return fmt.Errorf("%s: %w", ref, ErrBusy)
		case err != nil:
			return err
		case l.From == "":
			return fmt.Errorf("%s belongs to consumer %s, not to a broker: %w", ref, consumer, ErrWrongStatus)
		case status != "parked":
			return fmt.Errorf("%s is %s, only parked dead letters are replayed or edited: %w", ref, status, ErrWrongStatus)
		}
		if err := s.BrokerReady(l.From); err != nil {
			return fmt.Errorf("%s %w", ref, err)
		}
		details := map[string]any{"ref": ref.String(), "consumer": consumer, "ingested_from": l.From}
		targets := []string{strconv.FormatInt(ref.ID, 10), l.EventID}
		action, newStatus := "replay", "replayed"
		var edited []byte
		if edit {
			copyID, err := uuid.NewV7()
			if err != nil {
				return err
			}
			// Fingerprints and size only: the audit log never holds payload
			// bytes. The corrected payload is kept on the dead letter
			// (edited_payload), where redaction reaches it.
			edited = payload
			if edited == nil {
				edited = []byte{}
			}
			l.CopyID = copyID.String()
			details["new_event_id"], details["edit_of"] = l.CopyID, l.EventID
			details["original_payload_sha256"] = sha256Hex(l.Payload)
			details["edited_payload_sha256"], details["edited_payload_bytes"] = sha256Hex(edited), len(edited)
			l.Payload = edited
			targets = append(targets, l.CopyID)
			action, newStatus, out.Result, out.NewEventID = "edit", "edited", "edited", l.CopyID
		}
		dest, err := s.republisher.Republish(ctx, l)
		if err != nil {
			return fmt.Errorf("%s not %s, still parked: %w", ref, newStatus, err)
		}
		details["republished_to"] = dest
		var after json.RawMessage
		if err := tx.QueryRow(ctx, s.in.closeIngested, ref.ID, newStatus, edited).Scan(&after); err != nil {
			if edit {
				return fmt.Errorf("%s: its corrected copy (event %s) went to %s, but the dead letter could not be marked edited: %w; look for the copy there before editing again (a second edit sends another copy, with another event id)",
					ref, l.CopyID, dest, err)
			}
			return fmt.Errorf("%s went to %s, but could not be marked replayed: %w; a second replay sends it again (consumers deduplicate by event id)",
				ref, dest, err)
		}
		out.Note = fmt.Sprintf("republished to %s (confirmed by the broker)", dest)
		if edit {
			out.Note = fmt.Sprintf("a corrected copy, event %s, republished to %s (confirmed by the broker); the original is kept, status edited",
				l.CopyID, dest)
		}
		return s.auditInbox(ctx, tx, a, action, targets, before, after, details)
	})
	return out, err
}
