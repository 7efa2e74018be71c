package kafka_test

import (
	"errors"
	"fmt"
	"log"

	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

// Create the Kafka publisher a relay hands its claimed events to. New does
// not connect: a relay may start while Kafka is down.
func ExampleNew() {
	pub, err := kafka.New(kafka.Config{
		Brokers: []string{"kafka-1:9092", "kafka-2:9092"},
		Source:  "/payments-api",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()

	var _ relay.Publisher = pub // hand it to the relay
	fmt.Println("ready")
	// Output: ready
}

// Configuration errors wrap relay.ErrInvalidConfig and say what to fix.
func ExampleNew_invalidConfig() {
	_, err := kafka.New(kafka.Config{Brokers: []string{"kafka-1"}})
	fmt.Println(errors.Is(err, relay.ErrInvalidConfig))
	fmt.Println(err)
	// Output:
	// true
	// relay: invalid configuration: kafka: Config.Brokers entry "kafka-1" is not host:port (e.g. kafka-1:9092)
}
