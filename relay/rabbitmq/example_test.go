package rabbitmq_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/rabbitmq"
)

func Example() {
	ctx := context.Background()
	exchange := "outbox-example-" + uuid.NewString()[:8]

	pub, err := rabbitmq.New(ctx, rabbitmq.Config{
		URL:      testenv.RabbitURL(), // amqp://user:password@host:5672/vhost
		Exchange: exchange,
		Source:   "/payments-service",
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fmt.Println(err) // configuration errors only
		return
	}
	defer pub.Close()

	// The consumer side binds a queue for the topic; without one, messages
	// come back as unroutable.
	conn, err := amqp.Dial(testenv.RabbitURL())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	defer ch.ExchangeDelete(exchange, false, false)
	q, _ := ch.QueueDeclare("", false, true, true, false, nil)
	_ = ch.QueueBind(q.Name, "payments.#", exchange, false, nil)

	results, err := pub.Publish(ctx, []relay.Message{{
		EventID: uuid.New(), Topic: "payments.payout", Key: "payout-42", Sequence: 1,
		Type: "payout.created", Version: 1, ContentType: "application/json",
		Payload: []byte(`{"amount":"100.00","currency":"EUR"}`), CreatedAt: time.Now(),
	}})
	if err != nil {
		fmt.Println("broker unavailable:", relay.ClassOf(err))
		return
	}
	fmt.Println(results[0].Err, strings.HasPrefix(results[0].Ack, "amqp "+exchange+"/payments.payout#"))
	// Output: <nil> true
}
