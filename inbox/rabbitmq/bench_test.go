package rabbitmq_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/internal/consumebench"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// BenchmarkConsume measures events/s through the RabbitMQ adapter with a
// one-INSERT handler, and what the inbox costs, in two arms run alternately
// in the same run. "inbox" is the adapter feeding the inbox (HandleBatch).
// "handler-only" is the same adapter, prefetch, workers, batching and acks
// on the same kind of messages, each batch applied by the same handler in
// one plain transaction: no inbox record, no order guard.
//
// For each arm and round, messages in the relay's wire format (1,000 keys)
// are published to a new queue first, then a consumer with a new name
// drains it; the clock runs from the first applied event to the last. A
// warm-up of both arms (up to 4,000 events each) is not reported. Rounds
// alternate which arm goes first (ABBA), so that drift of the machine
// weighs on both. The medians of both arms are reported, and the overhead,
// 100*(handler-only/inbox - 1): how much more time an event takes through
// the inbox.
//
//	go test -run '^$' -bench Consume -benchtime 1x ./inbox/rabbitmq/
//
// OUTBOXKIT_BENCH_EVENTS (default 20000) events per round and arm,
// OUTBOXKIT_BENCH_ROUNDS (default 5).
func BenchmarkConsume(b *testing.B) {
	events := envInt("OUTBOXKIT_BENCH_EVENTS", 20000)
	rounds := envInt("OUTBOXKIT_BENCH_ROUNDS", 5)
	db := testenv.NewDB(b)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, ledgerTable); err != nil {
		b.Fatal(err)
	}
	conn := testenv.Rabbit(b)
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}

	// consume publishes n messages to a new queue and returns the events/s
	// of arm draining it as inbox consumer name.
	consume := func(arm, name string, n int) float64 {
		queue := testenv.UniqueName("okt_inbox_bench")
		if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
		defer ch.QueueDelete(queue, false, false, false) //nolint:errcheck
		seq := map[string]int64{}
		for j := range n {
			key := fmt.Sprintf("payout-%d", j%1000)
			seq[key]++
			err := ch.PublishWithContext(ctx, "", queue, false, false, amqp.Publishing{
				ContentType: "application/json", MessageId: uuid.Must(uuid.NewV7()).String(), Type: "payout.created",
				Body: []byte(`{"amount_cents":12500,"currency":"EUR"}`),
				Headers: amqp.Table{"cloudEvents:specversion": "1.0", "cloudEvents:id": uuid.Must(uuid.NewV7()).String(),
					"cloudEvents:source": "/bench", "cloudEvents:type": "payout.created",
					"cloudEvents:partitionkey": key, "cloudEvents:sequence": strconv.FormatInt(seq[key], 10)},
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		testenv.Eventually(b, 60*time.Second, "queue filled", func() bool {
			q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
			return err == nil && q.Messages == n
		})
		in, err := inbox.New(db.Pool, &inbox.Config{Consumer: name, ConsumerVersion: "bench", Logger: logger()})
		if err != nil {
			b.Fatal(err)
		}
		in.Register("payout.created", 1, ledgerHandler)
		c, err := rabbitmq.New(in, rabbitmq.Config{URL: testenv.RabbitURL(), Queue: queue, Logger: logger()})
		if err != nil {
			b.Fatal(err)
		}
		return consumebench.Measure(b, arm, n, in, db.Pool, "cloudEvents:", ledgerHandler,
			func(f consumebench.HandleBatch) { rabbitmq.SetHandleBatch(c, f) }, c.Run,
			func() int { return count(b, db.Pool, `SELECT count(*) FROM ledger`) })
	}

	consumebench.Run(b, events, rounds, "1000 keys, default Prefetch/Workers/BatchSize", consume)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
