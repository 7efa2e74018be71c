// Command payments is a transfer service, a relay to Kafka and a ledger
// consumer in one process, telling what happens as it goes:
//
//	go run ./examples/payments
//
// The transfer service debits an account and enqueues transfer.created in one
// transaction. The relay publishes the events to Kafka (an embedded broker
// unless KAFKA_BROKERS is set). The ledger consumer books each transfer
// through the inbox, exactly once. One transfer carries a negative amount:
// the ledger refuses it, the inbox parks it (and the later events of its
// account wait behind it), an operator corrects it and redrives it, and the
// waiting events follow. Finally Kafka delivers every event a second time,
// and nothing is booked twice.
//
// It needs PostgreSQL (DATABASE_URL, default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable) and installs
// the outboxkit tables in schemas of its own (example_payments,
// example_payments_inbox, example_payments_app), dropped and created again on
// every run. It exits 0 when every check holds.
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

	"github.com/outboxkit/outboxkit/examples/internal/story"
)

const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func main() {
	verbose := flag.Bool("v", false, "show outboxkit's own logs on stderr")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cfg := Config{DatabaseURL: os.Getenv("DATABASE_URL"), KafkaBrokers: story.SplitList(os.Getenv("KAFKA_BROKERS"))}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	err := run(ctx, os.Stdout, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "payments:", err)
		os.Exit(1)
	}
}

// Config says where the example runs. The zero value is the local default.
type Config struct {
	// DatabaseURL is the PostgreSQL to use (default defaultDatabaseURL).
	DatabaseURL string
	// OutboxSchema, InboxSchema and AppSchema hold the outbox tables, the
	// inbox tables and the bank's own tables (defaults example_payments,
	// example_payments_inbox, example_payments_app). They are dropped and
	// created again, so their names must start with "example_".
	OutboxSchema, InboxSchema, AppSchema string
	// KafkaBrokers is a real Kafka; empty starts an embedded broker.
	KafkaBrokers []string
	// Logger receives outboxkit's logs (default: discarded).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.DatabaseURL == "" {
		c.DatabaseURL = defaultDatabaseURL
	}
	if c.OutboxSchema == "" {
		c.OutboxSchema = "example_payments"
	}
	if c.InboxSchema == "" {
		c.InboxSchema = "example_payments_inbox"
	}
	if c.AppSchema == "" {
		c.AppSchema = "example_payments_app"
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
