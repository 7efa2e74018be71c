// Command redrive is a consumer deploy that breaks on a new event version,
// and its repair:
//
//	go run ./examples/redrive
//
// The payouts service starts writing version 2 of payout.created (a field
// renamed) during a rolling deploy, so old and new instances write both
// versions. The reporting consumer, release 1.4.0, knows version 1 only:
// every version 2 event is parked as no_handler, and the later events of its
// merchant wait behind it, in order, while the other merchants flow. Release
// 1.5.0 adds the version 2 handler and an upcaster from version 1, the
// on-call engineer redrives the parked events (the waiting ones follow), and
// then, to be sure nothing was missed, replays the whole topic to the
// consumer: the inbox's records turn every already-applied event into a
// no-op.
//
// It needs PostgreSQL (DATABASE_URL, default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable); Kafka is an
// embedded broker unless KAFKA_BROKERS is set. It installs the outboxkit
// tables in schemas of its own (example_redrive, example_redrive_inbox,
// example_redrive_app), dropped and created again on every run. It exits 0
// when every check holds.
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
		fmt.Fprintln(os.Stderr, "redrive:", err)
		os.Exit(1)
	}
}

// Config says where the example runs. The zero value is the local default.
type Config struct {
	// DatabaseURL is the PostgreSQL to use (default defaultDatabaseURL).
	DatabaseURL string
	// OutboxSchema, InboxSchema and AppSchema hold the outbox tables, the
	// inbox tables and the services' own tables (defaults example_redrive,
	// example_redrive_inbox, example_redrive_app). They are dropped and
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
		c.OutboxSchema = "example_redrive"
	}
	if c.InboxSchema == "" {
		c.InboxSchema = "example_redrive_inbox"
	}
	if c.AppSchema == "" {
		c.AppSchema = "example_redrive_app"
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
