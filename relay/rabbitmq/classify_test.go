package rabbitmq_test

import (
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/rabbitmq"
)

func TestReplyClass(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code int
		want relay.ErrorClass
	}{
		{amqp.NoRoute, relay.ClassUnroutable},
		{amqp.NoConsumers, relay.ClassUnroutable},
		{amqp.NotFound, relay.ClassUnroutable},
		{amqp.AccessRefused, relay.ClassDependencyOutage},
		{amqp.ContentTooLarge, relay.ClassTransient},
		{amqp.ResourceLocked, relay.ClassTransient},
		{amqp.PreconditionFailed, relay.ClassTransient},
		{200, relay.ClassDependencyOutage},
		{amqp.ConnectionForced, relay.ClassDependencyOutage},
		{amqp.InvalidPath, relay.ClassDependencyOutage},
		{amqp.FrameError, relay.ClassDependencyOutage},
		{amqp.SyntaxError, relay.ClassDependencyOutage},
		{amqp.CommandInvalid, relay.ClassDependencyOutage},
		{amqp.ChannelError, relay.ClassDependencyOutage},
		{amqp.UnexpectedFrame, relay.ClassDependencyOutage},
		{amqp.ResourceError, relay.ClassDependencyOutage},
		{amqp.NotAllowed, relay.ClassDependencyOutage},
		{amqp.NotImplemented, relay.ClassDependencyOutage},
		{amqp.InternalError, relay.ClassDependencyOutage},
		{0, relay.ClassTransient},
		{999, relay.ClassTransient},
	}
	for _, tt := range tests {
		if got := rabbitmq.ReplyClass(tt.code); got != tt.want {
			t.Errorf("ReplyClass(%d) = %s, want %s", tt.code, got, tt.want)
		}
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
	}{
		{"amqp://guest:Sup3rS3cret@127.0.0.1:5672/", "amqp://guest:xxxxx@127.0.0.1:5672/"},
		{"amqps://u:p%40ss%2Fw0rd@mq.example.com/vh", "amqps://u:xxxxx@mq.example.com/vh"},
		{"amqp://guest@127.0.0.1/", "amqp://guest@127.0.0.1/"},
		{"amqp://127.0.0.1:5672/", "amqp://127.0.0.1:5672/"},
		// Unparsable by net/url: the regular expression still finds it.
		{"amqp://u:Sup3rS3cret@host:notaport/", "amqp://u:xxxxx@host:notaport/"},
	}
	for _, tt := range tests {
		if got := rabbitmq.RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestScrub(t *testing.T) {
	t.Parallel()
	raw := "amqp://u:p%40ssw0rd@host:notaport/"
	text := `parse "amqp://u:p%40ssw0rd@host:notaport/": invalid port; password p@ssw0rd, p%40ssw0rd`
	got := rabbitmq.Scrub(text, raw)
	for _, secret := range []string{"p@ssw0rd", "p%40ssw0rd"} {
		if strings.Contains(got, secret) {
			t.Errorf("Scrub left %q in %q", secret, got)
		}
	}
}
