package rabbitmq

import (
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/relay"
)

// replyClass maps the AMQP 0-9-1 reply code with which the broker closed a
// channel or connection (or returned a message) to the class of the messages
// whose confirms were lost with it.
//
// A channel exception fails every unconfirmed message of the channel, and
// the broker does not say which one caused it. So a code is unroutable only
// when it concerns the target that all of them share (the exchange); a
// refused permission waits as an outage; codes caused by one message's content
// (406, 311) are transient: the culprit keeps failing and is parked after
// its attempts, the others go through on retry. Connection-level codes mean
// the broker is unavailable for everything.
func replyClass(code int) relay.ErrorClass {
	switch code {
	case amqp.NoRoute, amqp.NoConsumers, amqp.NotFound:
		return relay.ClassUnroutable
	case amqp.AccessRefused:
		// A permission mistake would otherwise park the whole backlog:
		// nothing is wrong with the events, so wait for the fix.
		return relay.ClassDependencyOutage
	case amqp.ContentTooLarge, amqp.ResourceLocked, amqp.PreconditionFailed:
		return relay.ClassTransient
	case 200, // reply-success: closed on purpose, by us or an operator
		amqp.ConnectionForced, amqp.InvalidPath,
		amqp.FrameError, amqp.SyntaxError, amqp.CommandInvalid, amqp.ChannelError,
		amqp.UnexpectedFrame, amqp.ResourceError, amqp.NotAllowed,
		amqp.NotImplemented, amqp.InternalError:
		return relay.ClassDependencyOutage
	}
	return relay.ClassTransient
}
