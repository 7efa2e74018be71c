package main

import (
	"context"
	"fmt"
	"strconv"
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
// publisher sets (message_id, type, timestamp, content_type); with
// ceHeaders also the CloudEvents headers and app_id the relay sends (the
// wire format of docs/wire-format.md), so that the broker does the same work
// per message as for the relay's.
func (e *env) runRabbitBare(ctx context.Context, evs []event, ceHeaders bool) (measurement, error) {
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
	// Built before the clock starts, as the relay reads them from its rows.
	var headers []amqp.Table
	if ceHeaders {
		headers = make([]amqp.Table, len(evs))
		seq := map[string]int64{}
		now := time.Now().UTC().Format(time.RFC3339Nano)
		for i, ev := range evs {
			seq[ev.key]++
			headers[i] = amqp.Table{
				"cloudEvents:specversion": "1.0", "cloudEvents:id": ids[i], "cloudEvents:source": "/outboxkit",
				"cloudEvents:type": benchType, "cloudEvents:time": now,
				"cloudEvents:partitionkey": ev.key, "cloudEvents:sequence": strconv.FormatInt(seq[ev.key], 10),
				"cloudEvents:eventversion": "1",
			}
		}
	}

	cpu, broker := startCPU(), rabbitCPU()
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
		pub := amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			ContentType:  "application/json",
			MessageId:    ids[i],
			Type:         benchType,
			Timestamp:    time.Now(),
			Body:         ev.payload,
		}
		if ceHeaders {
			pub.Headers, pub.AppId = headers[i], "/outboxkit"
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, rabbitExchange, benchTopic, true, false, pub)
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
	m := measurement{events: len(evs), elapsed: time.Since(start), cpu: cpu.stop(), brokerCPU: rabbitCPU() - broker}
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
