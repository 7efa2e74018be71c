package kafka

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"

	"github.com/outboxkit/outboxkit/relay"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	read := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		err  error
		want relay.ErrorClass
	}{
		{kafkago.UnknownTopicOrPartition, relay.ClassUnroutable},
		{kafkago.InvalidTopic, relay.ClassUnroutable},
		{kafkago.MessageSizeTooLarge, relay.ClassPoisonFormat},
		{kafkago.RecordListTooLarge, relay.ClassPoisonFormat},
		{kafkago.InvalidMessage, relay.ClassPoisonFormat}, // CORRUPT_MESSAGE
		{kafkago.InvalidRecord, relay.ClassPoisonFormat},
		{kafkago.TopicAuthorizationFailed, relay.ClassDependencyOutage},
		{kafkago.ClusterAuthorizationFailed, relay.ClassDependencyOutage},
		{kafkago.SASLAuthenticationFailed, relay.ClassDependencyOutage},
		{kafkago.LeaderNotAvailable, relay.ClassTransient},
		{kafkago.NotLeaderForPartition, relay.ClassTransient},
		{kafkago.RequestTimedOut, relay.ClassTransient},
		{kafkago.NotEnoughReplicas, relay.ClassTransient},
		{kafkago.NotEnoughReplicasAfterAppend, relay.ClassTransient},
		{kafkago.NetworkException, relay.ClassTransient},
		{kafkago.ThrottlingQuotaExceeded, relay.ClassTransient},
		{protocol.NewErrNoLeader("t", 1), relay.ClassTransient}, // kafka-go's stale metadata
		{dial, relay.ClassDependencyOutage},
		{io.ErrUnexpectedEOF, relay.ClassDependencyOutage},
		{syscall.ECONNRESET, relay.ClassDependencyOutage},
		{read, relay.ClassTransient}, // no answer: outcome unknown
		{context.DeadlineExceeded, relay.ClassTransient},
		{context.Canceled, relay.ClassTransient},
	} {
		// Wrapped as kafka-go and produce wrap them.
		err := classify("payments", fmt.Errorf("kafka: produce to payments/3: %w", fmt.Errorf("kafka.(*Client).Produce: %w", tc.err)))
		if got := relay.ClassOf(err); got != tc.want {
			t.Errorf("%v: class %q, want %q", tc.err, got, tc.want)
		}
	}
}
