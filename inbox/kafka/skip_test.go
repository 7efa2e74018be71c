package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/kafka"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relaykafka "github.com/outboxkit/outboxkit/relay/kafka"
)

// refusing is a Kafka publisher that refuses one event permanently, as a
// broker refuses a record it will never take.
type refusing struct {
	relay.Publisher
	refuse uuid.UUID
}

func (p *refusing) Publish(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
	var pass []relay.Message
	for _, m := range msgs {
		if m.EventID != p.refuse {
			pass = append(pass, m)
		}
	}
	var got []relay.Result
	if len(pass) > 0 {
		var err error
		if got, err = p.Publisher.Publish(ctx, pass); err != nil {
			return nil, err
		}
	}
	out := make([]relay.Result, len(msgs))
	for i, m := range msgs {
		if m.EventID == p.refuse {
			out[i] = relay.Result{Err: relay.Classify(relay.ClassPermanent, errors.New("record refused by the test"))}
			continue
		}
		out[i], got = got[0], got[1:]
	}
	return out, nil
}

// An operator drops the parked event 2 of key K (events 1, 2, 3): the
// relay publishes the skip marker in its place, the consumer applies 1 then
// 3, its handler never sees the marker, and a consumer reading the topic
// again (a new group: every record delivered a second time) finds all
// three, marker included, duplicates.
func TestDroppedEventSkipMarkerThroughKafka(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("payments")
	k.CreateTopic(t, topic, 1)
	if _, err := db.Pool.Exec(ctx, ledgerTable); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []outbox.Message
	for i := 1; i <= 3; i++ {
		msgs = append(msgs, outbox.Message{Topic: topic, Key: "K", Type: "payout.created", Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))})
	}
	ids, err := outbox.EnqueueBatch(ctx, tx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	pub, err := relaykafka.New(relaykafka.Config{Brokers: k.Brokers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	r, err := relay.New(db.Pool, &relay.Config{Publisher: &refusing{Publisher: pub, refuse: ids[1]},
		PollInterval: 50 * time.Millisecond, LeaseTTL: 2 * time.Second, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	status := func(id uuid.UUID) string {
		var s string
		if err := db.Pool.QueryRow(ctx, `SELECT status FROM outbox.messages WHERE event_id = $1`, id).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	testenv.Eventually(t, 30*time.Second, "event 2 parked by the relay", func() bool { return status(ids[1]) == "parked" })

	store, err := ops.New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	var rowID int64
	if err := db.Pool.QueryRow(ctx, `SELECT id FROM outbox.messages WHERE event_id = $1`, ids[1]).Scan(&rowID); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Drop(ctx, ops.Action{Actor: "alice", Reason: "refused by the broker, settled by hand"},
		ops.Ref{Kind: ops.KindOutbox, ID: rowID}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "event 3 published after the marker", func() bool { return status(ids[2]) == "published" })

	consume := func(group string) (*inbox.Inbox, func()) {
		pool, err := pgxpool.New(ctx, db.URL)
		if err != nil {
			t.Fatal(err)
		}
		in, err := newInbox(pool, logger())
		if err != nil {
			t.Fatal(err)
		}
		cfg := consumerConfig(k.Brokers, topic, 50*time.Millisecond)
		cfg.GroupID = group
		c, err := kafka.New(in, cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, c.Run)
		return in, func() { stop(); pool.Close() }
	}
	first, stop := consume(topic + "-1")
	testenv.Eventually(t, 60*time.Second, "three deliveries settled", func() bool {
		st := first.Stats()
		return st.Applied+st.Skipped >= 3
	})
	stop()
	if st := first.Stats(); st.Applied != 2 || st.Skipped != 1 || st.Parked+st.Blocked != 0 {
		t.Fatalf("first consumer: %+v, want 2 applied and 1 skipped", st)
	}
	var order string
	if err := db.Pool.QueryRow(ctx, `SELECT string_agg(sequence::text, ',' ORDER BY n) FROM ledger`).Scan(&order); err != nil {
		t.Fatal(err)
	}
	if order != "1,3" {
		t.Fatalf("ledger sequences %s, want 1,3", order)
	}
	var markerSeq int64
	if err := db.Pool.QueryRow(ctx, `SELECT p.sequence FROM inbox.processed p JOIN outbox.messages m ON m.event_id = p.event_id
	  WHERE m.type = 'outboxkit.skipped' AND m.headers->>'outboxkit-skipped' = $1`, ids[1].String()).Scan(&markerSeq); err != nil || markerSeq != 2 {
		t.Fatalf("marker processed record: sequence %d, %v", markerSeq, err)
	}

	again, stop := consume(topic + "-2")
	testenv.Eventually(t, 60*time.Second, "three redeliveries settled", func() bool { return again.Stats().Duplicate >= 3 })
	stop()
	if st := again.Stats(); st.Duplicate != 3 || st.Applied+st.Skipped+st.Parked+st.Blocked != 0 {
		t.Fatalf("second reading: %+v, want 3 duplicates", st)
	}
	if n := count(t, db.Pool, `SELECT count(*) FROM ledger`); n != 2 {
		t.Fatalf("%d ledger rows, want 2", n)
	}
	if n := count(t, db.Pool, `SELECT count(*) FROM inbox.dead_letters`); n != 0 {
		t.Fatalf("%d dead letters, want none", n)
	}
}

func count(t *testing.T, pool *pgxpool.Pool, q string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
