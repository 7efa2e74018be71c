package rabbitmq

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/wire"
	"github.com/outboxkit/outboxkit/relay"
)

// Defaults of Config. Each field documents its own.
const (
	ExchangeDefault       = "outbox"
	ConfirmTimeoutDefault = 10 * time.Second
	DialTimeoutDefault    = 10 * time.Second
)

// Config configures a Publisher. Only URL is required.
type Config struct {
	// URL is the broker, amqp://user:password@host:5672/vhost or amqps://...
	// for TLS. Required. Its password never appears in errors or logs.
	URL string

	// Exchange receives every message, with the message's Topic as routing
	// key (default "outbox"). It is declared as a durable topic exchange
	// whenever a channel is opened, unless SkipDeclare is set.
	Exchange string

	// SkipDeclare leaves the exchange alone: it is managed by the platform
	// team (or is a built-in one such as amq.topic) and the relay's user may
	// lack the configure permission. Publishing to a missing exchange then
	// fails the messages as unroutable.
	SkipDeclare bool

	// Source is the AMQP app_id and cloudEvents:source of messages that carry
	// no Source of their own (default "/outboxkit").
	Source string

	// ConfirmTimeout bounds the wait for the publisher confirms of a batch,
	// and any single socket write (default 10s). A batch that runs out of
	// it is reported as not delivered and published again later: a duplicate
	// is possible, a loss is not.
	ConfirmTimeout time.Duration

	// DialTimeout bounds connecting to the broker, TCP plus the TLS and AMQP
	// handshakes (default 10s).
	DialTimeout time.Duration

	// TLS configures amqps:// connections (optional). With an amqps:// URL
	// and a nil TLS, the system roots and the URL's host name are used. An
	// amqp:// URL with TLS set is refused, so that a plain-text connection is
	// never mistaken for an encrypted one.
	TLS *tls.Config

	// Logger receives connection events (default slog.Default()). Payloads
	// are never logged.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Exchange == "" {
		c.Exchange = ExchangeDefault
	}
	if c.Source == "" {
		c.Source = wire.DefaultSource
	}
	if c.ConfirmTimeout == 0 {
		c.ConfirmTimeout = ConfirmTimeoutDefault
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DialTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// exchangeName is what RabbitMQ accepts for an exchange name.
var exchangeName = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,255}$`)

func (c Config) validate() error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: rabbitmq: %s", relay.ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if c.URL == "" {
		return invalid("URL is required (amqp://user:password@host:5672/vhost)")
	}
	uri, err := amqp.ParseURI(c.URL)
	if err != nil {
		// ParseURI's error may quote the URL (net/url does): scrub it.
		return invalid("URL %s: %s (expected amqp://user:password@host:5672/vhost or amqps://...)",
			redactURL(c.URL), scrub(err.Error(), c.URL))
	}
	if c.TLS != nil && uri.Scheme != "amqps" {
		return invalid("TLS is set but URL %s is not amqps://: use amqps:// to encrypt the connection", redactURL(c.URL))
	}
	if !exchangeName.MatchString(c.Exchange) {
		return invalid("Exchange %q: use 1 to 255 letters, digits, '-', '_', '.' or ':'", c.Exchange)
	}
	if !c.SkipDeclare && strings.HasPrefix(c.Exchange, "amq.") {
		return invalid("Exchange %q: names starting with \"amq.\" are reserved by RabbitMQ; set SkipDeclare to publish to a built-in exchange", c.Exchange)
	}
	if len(c.Source) > maxShortString {
		return invalid("Source is %d bytes, AMQP app_id allows %d", len(c.Source), maxShortString)
	}
	if c.ConfirmTimeout < 0 {
		return invalid("ConfirmTimeout %s is negative", c.ConfirmTimeout)
	}
	if c.DialTimeout < 0 {
		return invalid("DialTimeout %s is negative", c.DialTimeout)
	}
	return nil
}

// userinfo finds the password part of a URL in any text, for when the text
// is not a URL that net/url can parse.
var userinfo = regexp.MustCompile(`(?i)(amqps?://[^:@/\s]*:)[^@/\n]*@`)

// redactURL returns the URL with its password replaced by "xxxxx".
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return userinfo.ReplaceAllString(s, "${1}xxxxx@")
}

// scrub removes the password of rawURL from text: in URL form, raw and
// percent-decoded.
func scrub(text, rawURL string) string {
	text = userinfo.ReplaceAllString(text, "${1}xxxxx@")
	if m := userinfo.FindStringSubmatch(rawURL); m != nil {
		full := userinfo.FindString(rawURL)
		pw := full[len(m[1]) : len(full)-1]
		// Very short passwords are left to the URL-form rule above: replacing
		// every "a" in an error text would make it unreadable.
		for _, p := range []string{pw, unescape(pw)} {
			if len(p) >= 4 {
				text = strings.ReplaceAll(text, p, "xxxxx")
			}
		}
	}
	return text
}

func unescape(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// scrubbedError shows a scrubbed text but keeps the original error for
// errors.Is and errors.As.
type scrubbedError struct {
	text string
	err  error
}

func (e *scrubbedError) Error() string { return e.text }
func (e *scrubbedError) Unwrap() error { return e.err }
