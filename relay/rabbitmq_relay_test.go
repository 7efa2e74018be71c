package relay_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/relay/rabbitmq"
)

// The connection between relay and RabbitMQ is cut twice in the middle of
// the stream: the relay reconnects, and every event reaches the queue at
// least once, in per-key order, with nothing parked.
func TestRabbitMQConnectionCutLosesNothing(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	conn := testenv.Rabbit(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	exchange := testenv.UniqueName("okt_relay_x")
	queue := testenv.UniqueName("okt_relay_q")
	topic := "payments"
	if err := ch.ExchangeDeclare(exchange, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, topic, exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.QueueDelete(queue, false, false, false); ch.ExchangeDelete(exchange, false, false) })

	px, proxyURL := testenv.RabbitProxy(t)
	pub, err := rabbitmq.New(context.Background(), rabbitmq.Config{URL: proxyURL, Exchange: exchange, SkipDeclare: true,
		ConfirmTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	const total = 3000
	ids := enqueue(t, db.Pool, topic, total, 300, 500)
	cfg := fastConfig(t, pub)
	cfg.MaxAttempts = 3 // a cut must never burn through attempts into parking
	runRelay(t, newPool(t, db.URL, 4), cfg)

	for cut := 1; cut <= 2; cut++ {
		target := cut * total / 3
		testenv.Eventually(t, 60*time.Second, "relay publishing to RabbitMQ", func() bool {
			return countStatus(t, db.Pool, "published") >= target
		})
		px.Stop()
		time.Sleep(500 * time.Millisecond) // the relay sees the broker gone and backs off
		if err := px.Start(); err != nil {
			t.Fatal(err)
		}
	}
	waitPublished(t, db.Pool, total, 90*time.Second)
	if n := countStatus(t, db.Pool, "parked"); n != 0 {
		t.Fatalf("%d events parked by a connection cut", n)
	}

	deliveries, err := ch.Consume(queue, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	last := map[string]int64{}
	copies := 0
	timeout := time.After(60 * time.Second)
	for len(seen) < total {
		var d amqp.Delivery
		select {
		case d = <-deliveries:
		case <-timeout:
			t.Fatalf("%d of %d events in the queue", len(seen), total)
		}
		copies++
		key, _ := d.Headers["cloudEvents:partitionkey"].(string)
		seqText, _ := d.Headers["cloudEvents:sequence"].(string)
		seq, _ := strconv.ParseInt(seqText, 10, 64)
		switch {
		case seq == last[key]+1:
			last[key] = seq
		case seq <= last[key]: // a duplicate after a cut: at-least-once
		default:
			t.Fatalf("key %s: sequence %d after %d", key, seq, last[key])
		}
		seen[d.MessageId] = true
	}
	for _, id := range ids {
		if !seen[id.String()] {
			t.Fatalf("event %s lost", id)
		}
	}
	t.Logf("%d events, %d copies delivered (%d duplicates from the cuts)", total, copies, copies-total)
}
