// Command notifications texts customers about their withdrawals, through
// RabbitMQ, while the SMS partner has an outage:
//
//	go run ./examples/notifications
//
// A withdrawal and its money.withdrawn event commit in one transaction; a
// relay publishes the events to RabbitMQ; an SMS-notification consumer
// (inbox + inbox/rabbitmq) texts the account holder through an SMS partner,
// simulated by an HTTP server in this process. Half-way the partner goes
// down: the consumer's calls fail with inbox.Unavailable, the inbox's
// breaker opens, deliveries wait in the queue, and nothing is dead-lettered.
// When the partner is back, every customer gets exactly one SMS per
// withdrawal.
//
// It needs PostgreSQL (DATABASE_URL, default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable) and RabbitMQ
// (RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672/). It installs the
// outboxkit tables in schemas of its own (example_notifications,
// example_notifications_inbox, example_notifications_app), dropped and
// created again on every run, and declares an exchange and a queue with
// names unique to the run, deleted at the end. It exits 0 when every check
// holds.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const (
	defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	defaultRabbitMQURL = "amqp://guest:guest@127.0.0.1:5672/"
)

func main() {
	verbose := flag.Bool("v", false, "show outboxkit's own logs on stderr")
	outage := flag.Duration("outage", 3*time.Second, "how long the SMS partner stays down")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cfg := Config{DatabaseURL: os.Getenv("DATABASE_URL"), RabbitMQURL: os.Getenv("RABBITMQ_URL"), Outage: *outage}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	err := run(ctx, os.Stdout, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "notifications:", err)
		os.Exit(1)
	}
}

// Config says where the example runs. The zero value is the local default.
type Config struct {
	// DatabaseURL is the PostgreSQL to use (default defaultDatabaseURL).
	DatabaseURL string
	// RabbitMQURL is the broker (default defaultRabbitMQURL).
	RabbitMQURL string
	// OutboxSchema, InboxSchema and AppSchema hold the outbox tables, the
	// inbox tables and the services' own tables (defaults
	// example_notifications, example_notifications_inbox,
	// example_notifications_app). They are dropped and created again, so
	// their names must start with "example_".
	OutboxSchema, InboxSchema, AppSchema string
	// Outage is how long the SMS partner stays down (default 3s).
	Outage time.Duration
	// Logger receives outboxkit's logs (default: discarded).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.DatabaseURL == "" {
		c.DatabaseURL = defaultDatabaseURL
	}
	if c.RabbitMQURL == "" {
		c.RabbitMQURL = defaultRabbitMQURL
	}
	if c.OutboxSchema == "" {
		c.OutboxSchema = "example_notifications"
	}
	if c.InboxSchema == "" {
		c.InboxSchema = "example_notifications_inbox"
	}
	if c.AppSchema == "" {
		c.AppSchema = "example_notifications_app"
	}
	if c.Outage <= 0 {
		c.Outage = 3 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	for _, s := range []string{c.OutboxSchema, c.InboxSchema, c.AppSchema} {
		if !strings.HasPrefix(s, "example_") {
			return fmt.Errorf("schema %q: the example drops its schemas on every run, so their names must start with \"example_\"", s)
		}
	}
	return nil
}
