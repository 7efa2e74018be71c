package outbox_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/migrations"
	"github.com/outboxkit/outboxkit/outbox"
)

// Enqueue an event in the transaction that writes the business row. The event
// is published if and only if the transaction commits.
func ExampleEnqueue() {
	ctx := context.Background()
	url, drop := exampleDatabase()
	defer drop()
	if err := migrations.Up(ctx, url, nil); err != nil {
		log.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS payouts (id text PRIMARY KEY, amount_cents bigint)`); err != nil {
		log.Fatal(err)
	}

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO payouts (id, amount_cents) VALUES ('payout-42', 12500)`); err != nil {
			return err
		}
		_, err := outbox.Enqueue(ctx, tx, outbox.Message{
			Topic:   "payments",
			Key:     "payout-42",
			Type:    "payout.created",
			Payload: []byte(`{"payout_id":"payout-42","amount_cents":12500}`),
		})
		return err
	})
	if err != nil {
		log.Fatal(err)
	}

	var status string
	var sequence int64
	if err := pool.QueryRow(ctx, `SELECT status, sequence FROM outbox.messages WHERE key = 'payout-42'`).Scan(&status, &sequence); err != nil {
		log.Fatal(err)
	}
	fmt.Println(status, sequence)
	// Output: pending 1
}

// exampleDatabase creates a scratch database for the example on the local
// PostgreSQL (OUTBOXKIT_TEST_DATABASE_URL or postgres@127.0.0.1) and returns
// its URL and a function that drops it.
func exampleDatabase() (string, func()) {
	ctx := context.Background()
	admin := os.Getenv("OUTBOXKIT_TEST_DATABASE_URL")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/postgres"
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("okt_%d_0_e0", os.Getpid())
	conn.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`) //nolint:errcheck
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+name); err != nil {
		log.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(admin)
	if err != nil {
		log.Fatal(err)
	}
	drop := func() {
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`) //nolint:errcheck
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, name), drop
}
