package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitWindow is the bare publisher's number of unconfirmed messages.
const rabbitWindow = 1000

// runRabbitBare is the RabbitMQ ceiling: amqp091-go on one confirm-mode
// channel, persistent and mandatory messages to the bench exchange (bound to
// a durable queue), a sliding window of rabbitWindow unconfirmed messages.
// The messages carry the workload's payloads and the basic properties a
// publisher sets (message_id, type, timestamp, content_type), not the
// CloudEvents headers.
func (e *env) runRabbitBare(ctx context.Context, evs []event) (measurement, error) {
	conn, err := e.rabbitSetup()
	if err != nil {
		return measurement{}, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return measurement{}, err
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return measurement{}, err
	}
	var returned atomic.Int64
	returns := ch.NotifyReturn(make(chan amqp.Return, rabbitWindow))
	go func() {
		for range returns {
			returned.Add(1)
		}
	}()
	ids := make([]string, len(evs))
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7()).String()
	}

	cpu := startCPU()
	start := time.Now()
	window := make([]*amqp.DeferredConfirmation, 0, rabbitWindow)
	nacked := 0
	wait := func(dc *amqp.DeferredConfirmation) error {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return err
		}
		if !ok {
			nacked++
		}
		return nil
	}
	for i, ev := range evs {
		if len(window) == rabbitWindow {
			if err := wait(window[0]); err != nil {
				return measurement{}, err
			}
			window = window[1:]
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, rabbitExchange, benchTopic, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			ContentType:  "application/json",
			MessageId:    ids[i],
			Type:         benchType,
			Timestamp:    time.Now(),
			Body:         ev.payload,
		})
		if err != nil {
			return measurement{}, err
		}
		window = append(window, dc)
	}
	for _, dc := range window {
		if err := wait(dc); err != nil {
			return measurement{}, err
		}
	}
	m := measurement{events: len(evs), elapsed: time.Since(start), cpu: cpu.stop()}
	if nacked > 0 || returned.Load() > 0 {
		return m, fmt.Errorf("bare RabbitMQ publisher: %d nacked, %d returned", nacked, returned.Load())
	}
	got, err := rabbitDrainQueue(conn)
	if err != nil {
		return m, err
	}
	if got < len(evs) {
		return m, fmt.Errorf("bare RabbitMQ publisher: queue holds %d messages, want %d", got, len(evs))
	}
	m.note = fmt.Sprintf("%d messages in the queue", got)
	return m, nil
}
