package kafka

import (
	"errors"
	"fmt"
	"net"
	"os"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/relay"
)

// classify gives err, which failed messages of topic, its class in the
// relay's taxonomy, and says what to do where the fix is known. The kafka-go
// error stays in the chain for errors.As.
func classify(topic string, err error) error {
	var code kafkago.Error
	var op *net.OpError
	switch {
	case errors.As(err, &code):
		switch code {
		case kafkago.UnknownTopicOrPartition:
			return relay.Classify(relay.ClassUnroutable,
				fmt.Errorf("kafka topic %q does not exist: create it or enable auto-creation: %w", topic, err))
		case kafkago.InvalidTopic:
			return relay.Classify(relay.ClassUnroutable,
				fmt.Errorf("kafka topic %q is not a valid topic name: fix the event's topic: %w", topic, err))
		case kafkago.MessageSizeTooLarge, kafkago.RecordListTooLarge, kafkago.InvalidMessageSize:
			return relay.Classify(relay.ClassPoisonFormat,
				fmt.Errorf("kafka topic %q refused the message as too large: raise the topic's max.message.bytes or shrink the payload: %w", topic, err))
		case kafkago.InvalidMessage, kafkago.InvalidRecord, kafkago.UnsupportedForMessageFormat:
			return relay.Classify(relay.ClassPoisonFormat, fmt.Errorf("kafka topic %q refused the message as invalid: %w", topic, err))
		case kafkago.TopicAuthorizationFailed, kafkago.ClusterAuthorizationFailed, kafkago.TransactionalIDAuthorizationFailed:
			// A missing ACL is a configuration fault, not the events': wait
			// for the grant without burning attempts or parking the topic.
			return relay.Classify(relay.ClassDependencyOutage,
				fmt.Errorf("kafka refused writes to topic %q: grant the relay's principal WRITE on it: %w", topic, err))
		case kafkago.SASLAuthenticationFailed, kafkago.UnsupportedSASLMechanism, kafkago.IllegalSASLState:
			// Credentials fail for every message alike: back off and wait
			// for the fix rather than park the whole outbox.
			return relay.Classify(relay.ClassDependencyOutage,
				fmt.Errorf("kafka authentication failed: check the SASL mechanism and credentials: %w", err))
		}
		// Leader changes, not enough replicas, timeouts, throttling: the
		// cluster's state, retried.
		return relay.Classify(relay.ClassTransient, err)
	case errors.As(err, &op) && op.Op == "dial":
		return relay.Classify(relay.ClassDependencyOutage, err)
	case failure.IsContext(err) || errors.Is(err, os.ErrDeadlineExceeded):
		// Kafka may have written the records: send again (a duplicate is
		// acceptable, a loss is not).
		return relay.Classify(relay.ClassTransient, fmt.Errorf("%w: no answer in time, outcome unknown", err))
	case failure.IsNetwork(err):
		return relay.Classify(relay.ClassDependencyOutage, err)
	}
	// kafka-go's own errors (stale metadata: no leader, no partition) and
	// anything unknown are retried.
	return relay.Classify(relay.ClassTransient, err)
}
