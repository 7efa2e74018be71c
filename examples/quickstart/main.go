// Command quickstart is the flow of docs/getting-started.md in one program
// that runs by itself: a producer, a relay and a consumer, on Kafka.
//
//	go run ./examples/quickstart
//
// It creates a database of its own, outboxkit_quickstart, on the PostgreSQL
// of DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), dropped and
// created again on every run, so that it can use the default schemas
// ("outbox", "inbox") and the package-level outbox.Enqueue without touching
// any other outbox. Kafka is an embedded broker unless KAFKA_BROKERS is set.
package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/examples/internal/localkafka"
	"github.com/outboxkit/outboxkit/examples/internal/story"
	"github.com/outboxkit/outboxkit/migrations"
)

const (
	defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	database           = "outboxkit_quickstart"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := quickstart(ctx, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func quickstart(ctx context.Context, out io.Writer) error {
	admin := os.Getenv("DATABASE_URL")
	if admin == "" {
		admin = defaultDatabaseURL
	}
	dbURL, err := recreateDatabase(ctx, admin, database)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "database %s (created for this run)\n", story.Redact(dbURL))
	return run(ctx, out, dbURL, story.SplitList(os.Getenv("KAFKA_BROKERS")))
}

// run installs the tables, starts the relay and the consumer, creates three
// payouts and waits until the consumer has applied them.
func run(ctx context.Context, out io.Writer, dbURL string, brokers []string) error {
	// "outboxkit migrate up" does the same.
	if err := migrations.Up(ctx, dbURL, nil); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `
		CREATE TABLE payouts (id text PRIMARY KEY, amount_cents bigint NOT NULL);
		CREATE TABLE accounting_entries (payout_id text NOT NULL, amount_cents bigint NOT NULL)`); err != nil {
		return err
	}

	k, err := localkafka.Start(brokers)
	if err != nil {
		return err
	}
	defer k.Close(context.WithoutCancel(ctx)) //nolint:errcheck
	fmt.Fprintf(out, "kafka    %s\n", k.Describe())
	if k.Embedded {
		if err := k.CreateTopic(ctx, "payouts", 4); err != nil {
			return err
		}
	}

	var g story.Workers
	defer g.StopAll()
	g.Start(ctx, "relay", func(ctx context.Context) error { return runRelay(ctx, pool, k.Brokers) })
	g.Start(ctx, "consumer", func(ctx context.Context) error { return runConsumer(ctx, pool, k.Brokers) })

	for i, cents := range []int64{12500, 4000, 99} {
		id := fmt.Sprintf("payout-%d", i+1)
		if err := createPayout(ctx, pool, id, cents); err != nil {
			return err
		}
		fmt.Fprintf(out, "producer committed %s with its event\n", id)
	}
	var n int
	var total int64
	if err := story.Wait(ctx, 60*time.Second, "the consumer to apply the payouts", func(ctx context.Context) (bool, error) {
		if err := g.Err(); err != nil {
			return false, err
		}
		err := pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(amount_cents), 0) FROM accounting_entries`).Scan(&n, &total)
		return n >= 3, err
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "consumer applied %d payouts, %s in total\n", n, story.Money(total))
	g.StopAll()
	if err := g.Err(); err != nil {
		return err
	}
	fmt.Fprintln(out, "relay and consumer stopped")
	return nil
}

// recreateDatabase drops and creates database name on the server of admin
// and returns its URL.
func recreateDatabase(ctx context.Context, admin, name string) (string, error) {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", fmt.Errorf("connect to PostgreSQL at %s: %w (set DATABASE_URL)", story.Redact(admin), err)
	}
	defer conn.Close(ctx)
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+ident+` WITH (FORCE)`); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+ident); err != nil {
		return "", err
	}
	u, err := url.Parse(admin)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}
