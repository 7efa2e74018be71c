package inbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/migrations"
)

// Apply a payout event exactly once: the second delivery of the same event
// (a broker redelivery, a replay) is recognised and skipped.
func ExampleInbox_Handle() {
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
	if _, err := pool.Exec(ctx, `CREATE TABLE ledger (payout_id text PRIMARY KEY, amount_cents bigint NOT NULL)`); err != nil {
		log.Fatal(err)
	}

	in, err := inbox.New(pool, &inbox.Config{Consumer: "billing", ConsumerVersion: "v1.4.0"})
	if err != nil {
		log.Fatal(err)
	}
	in.Register("payout.created", 1, func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		var p struct {
			PayoutID    string `json:"payout_id"`
			AmountCents int64  `json:"amount_cents"`
		}
		if err := json.Unmarshal(ev.Payload, &p); err != nil {
			return inbox.Permanent(err) // retrying cannot fix a bad payload: park it
		}
		_, err := tx.Exec(ctx, `INSERT INTO ledger (payout_id, amount_cents) VALUES ($1, $2)`, p.PayoutID, p.AmountCents)
		return err
	})

	// A record as the relay writes it to Kafka (inbox/kafka builds this
	// Delivery from it; handing deliveries to Handle yourself works too).
	d := inbox.Delivery{
		Binding: inbox.BindingKafka,
		Topic:   "payments",
		Headers: []inbox.Header{
			{Name: "ce_specversion", Value: []byte("1.0")},
			{Name: "ce_id", Value: []byte("0193f6b1-7e2a-7c4d-9a51-3c2b8f0d6e11")},
			{Name: "ce_source", Value: []byte("/payments-api")},
			{Name: "ce_type", Value: []byte("payout.created")},
			{Name: "content-type", Value: []byte("application/json")},
			{Name: "ce_partitionkey", Value: []byte("payout-42")},
			{Name: "ce_sequence", Value: []byte("1")},
		},
		Payload: []byte(`{"payout_id":"payout-42","amount_cents":12500}`),
	}
	for range 2 {
		out, err := in.Handle(ctx, d)
		if err != nil {
			log.Fatal(err) // only when ctx ends: do not acknowledge, the broker redelivers
		}
		fmt.Println(out) // every outcome means: acknowledge to the broker now
	}

	var total int64
	if err := pool.QueryRow(ctx, `SELECT sum(amount_cents) FROM ledger`).Scan(&total); err != nil {
		log.Fatal(err)
	}
	fmt.Println(total)
	// Output:
	// applied
	// duplicate
	// 12500
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
	name := fmt.Sprintf("okt_%d_0_1b", os.Getpid())
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
