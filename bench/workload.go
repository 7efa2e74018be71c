package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxkit/outboxkit/outbox"
)

const (
	benchTopic = "bench.events"
	benchType  = "transfer.created"
	// forwarderTopic is the watermill-sql topic (table) the forwarder reads.
	forwarderTopic = "okbench_forwarder"
	// enqueueChunk events are committed per producer transaction when the
	// templates are filled.
	enqueueChunk = 1000
)

// event is one event of the workload.
type event struct {
	key     string
	payload []byte
}

// workload returns n events over the given number of keys, each key drawn
// at random (fixed seed: every run and every contender gets the same
// sequence), with a JSON payload of exactly size bytes.
func workload(n, keys, size int) []event {
	rng := rand.New(rand.NewPCG(42, 1042))
	out := make([]event, n)
	for i := range out {
		key := fmt.Sprintf("acct-%d", rng.IntN(keys))
		out[i] = event{key: key, payload: jsonPayload(i, key, rng.IntN(1_000_000), size)}
	}
	return out
}

// jsonPayload is a JSON object of exactly size bytes when size allows it
// (padded by a memo field), else the unpadded object.
func jsonPayload(i int, key string, amount, size int) []byte {
	head := fmt.Sprintf(`{"transfer_id":%d,"account":%q,"amount_cents":%d,"currency":"EUR","memo":"`, i, key, amount)
	const tail = `"}`
	if pad := size - len(head) - len(tail); pad > 0 {
		return []byte(head + strings.Repeat("x", pad) + tail)
	}
	return []byte(head + tail)
}

// fillOutboxTemplate creates the outboxkit template: the migrated database
// plus the workload, committed through outbox.EnqueueBatch in transactions
// of enqueueChunk events, then vacuumed and analysed (the steady state
// autovacuum reaches on a live outbox).
func (e *env) fillOutboxTemplate(ctx context.Context, evs []event) error {
	name, dbURL, err := e.newDB(ctx, e.tplEmpty, "tpl_outbox")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	msgs := make([]outbox.Message, 0, enqueueChunk)
	for start := 0; start < len(evs); start += enqueueChunk {
		msgs = msgs[:0]
		for _, ev := range evs[start:min(start+enqueueChunk, len(evs))] {
			msgs = append(msgs, outbox.Message{Topic: benchTopic, Key: ev.key, Type: benchType, Payload: ev.payload})
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := outbox.EnqueueBatch(ctx, tx, msgs); err != nil {
			tx.Rollback(ctx) //nolint:errcheck
			return fmt.Errorf("enqueue: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, "VACUUM (ANALYZE) outbox.messages"); err != nil {
		return err
	}
	e.tplOutbox = name
	return nil
}

// watermillSchema is the watermill-sql PostgreSQL schema with the given
// subscriber batch size; the payload column stays the default JSON.
func watermillSchema(batch int) wsql.DefaultPostgreSQLSchema {
	return wsql.DefaultPostgreSQLSchema{SubscribeBatchSize: batch}
}

// fillWatermillTemplate creates the watermill template: the tables of
// watermill-sql's default PostgreSQL schema and offsets adapter, and the
// workload committed the way the forwarder's documentation has producers
// do it: a watermill-sql publisher on the producer's transaction, wrapped in
// forwarder.NewPublisher, which stores each event in an envelope naming its
// destination topic.
func (e *env) fillWatermillTemplate(ctx context.Context, evs []event) error {
	name, dbURL, err := e.newDB(ctx, "template0", "tpl_watermill")
	if err != nil {
		return err
	}
	db, err := openSQL(dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
		SchemaAdapter:  watermillSchema(100),
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
	}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	if err := sub.SubscribeInitialize(forwarderTopic); err != nil {
		return fmt.Errorf("watermill schema: %w", err)
	}
	sub.Close()
	for start := 0; start < len(evs); start += enqueueChunk {
		msgs := make([]*message.Message, 0, enqueueChunk)
		for _, ev := range evs[start:min(start+enqueueChunk, len(evs))] {
			m := message.NewMessage(watermill.NewUUID(), ev.payload)
			m.Metadata.Set("key", ev.key)
			m.Metadata.Set("type", benchType)
			msgs = append(msgs, m)
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		pub, err := wsql.NewPublisher(tx, wsql.PublisherConfig{SchemaAdapter: watermillSchema(100)}, watermill.NopLogger{})
		if err != nil {
			tx.Rollback() //nolint:errcheck
			return err
		}
		fwd := forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: forwarderTopic})
		if err := fwd.Publish(benchTopic, msgs...); err != nil {
			tx.Rollback() //nolint:errcheck
			return fmt.Errorf("watermill publish: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	table := watermillSchema(100).MessagesTable(forwarderTopic)
	if _, err := db.ExecContext(ctx, "VACUUM (ANALYZE) "+table); err != nil {
		return err
	}
	e.tplWatermill = name
	return nil
}

// openSQL opens a database/sql handle through pgx's stdlib driver.
func openSQL(dbURL string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	return stdlib.OpenDB(*cfg), nil
}
