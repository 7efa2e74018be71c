package relay

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"
)

// Message is one claimed event as a Publisher sees it.
type Message struct {
	// ID is the row id in outbox.messages (enqueue order).
	ID        int64
	EventID   uuid.UUID
	Topic     string
	Key       string // "" for unordered events
	Partition int32  // relay partition (not the broker's)
	// Sequence is the event's position in its (Topic, Key) lane, 1, 2, 3...
	// (ce_sequence); 0 when Key is empty.
	Sequence      int64
	Type          string
	Version       int
	Payload       []byte
	ContentType   string
	Headers       map[string]string
	CorrelationID string
	CausationID   string
	TraceParent   string
	TraceState    string
	Source        string
	CreatedAt     time.Time
	// Attempt is 1 for the first publish attempt, 2 for the first retry...
	Attempt int
}

// Result is the outcome of publishing one message.
type Result struct {
	// Err is nil when the broker acknowledged the message. Classify it with
	// a class from the taxonomy (see Classify); an unclassified error is
	// treated as transient.
	Err error
	// Ack is where the broker put the message, for the attempt history,
	// e.g. "kafka payments/3@1042" or "amqp outbox/payments#17".
	Ack string
}

// Publisher sends claimed messages to a broker. Implementations live in
// relay/kafka and relay/rabbitmq.
//
// Publish returns exactly one Result per message, in input order, after each
// message was acknowledged by the broker or failed. Messages with the same
// Topic and Key must reach the broker in input order. A non-nil error means
// the whole batch failed before any outcome was known (connection down); the
// relay then treats every message as not delivered and backs off without
// counting attempts. A Publisher is used by one goroutine at a time per
// relay worker, but several workers may call it concurrently.
type Publisher interface {
	Publish(ctx context.Context, msgs []Message) ([]Result, error)
	Close() error
}

// KeyAtomic is implemented by a Publisher whose failures never split a lane
// within one Publish call: when a message fails, every later message of the
// same Topic and Key in that call fails too (Kafka: the records of one
// partition go in one produce request, appended all or nothing). The relay
// then puts many events of one key in a batch. For any other Publisher it
// puts at most one event per key in a batch, so that a failed event can
// never be overtaken at the broker by a later event of its key.
type KeyAtomic interface {
	KeyAtomic() bool
}

func keyAtomic(p Publisher) bool {
	ka, ok := p.(KeyAtomic)
	return ok && ka.KeyAtomic()
}

// TopicRouter sends each message to the Publisher of its topic, or to
// Default. It lets one relay publish some topics to Kafka and others to
// RabbitMQ.
type TopicRouter struct {
	Default Publisher
	Topics  map[string]Publisher
}

func (r *TopicRouter) publisherFor(topic string) Publisher {
	if p, ok := r.Topics[topic]; ok {
		return p
	}
	return r.Default
}

// Publish splits msgs by publisher, publishes the parts concurrently and
// merges the results back into input order.
func (r *TopicRouter) Publish(ctx context.Context, msgs []Message) ([]Result, error) {
	groups := map[Publisher][]int{}
	var order []Publisher
	for i := range msgs {
		p := r.publisherFor(msgs[i].Topic)
		if p == nil {
			continue
		}
		if _, ok := groups[p]; !ok {
			order = append(order, p)
		}
		groups[p] = append(groups[p], i)
	}
	results := make([]Result, len(msgs))
	for i := range msgs {
		if r.publisherFor(msgs[i].Topic) == nil {
			results[i].Err = unroutable(fmt.Errorf("relay: no publisher for topic %q: add a route for it or set a default broker", msgs[i].Topic))
		}
	}
	type part struct {
		idx []int
		res []Result
		err error
	}
	done := make(chan part, len(order))
	for _, p := range order {
		idx := groups[p]
		sub := make([]Message, len(idx))
		for j, i := range idx {
			sub[j] = msgs[i]
		}
		go func() {
			res, err := p.Publish(ctx, sub)
			done <- part{idx, res, err}
		}()
	}
	var firstErr error
	failed := 0
	for range order {
		pt := <-done
		if pt.err == nil && len(pt.res) != len(pt.idx) {
			pt.err = fmt.Errorf("relay: publisher returned %d results for %d messages", len(pt.res), len(pt.idx))
		}
		for j, i := range pt.idx {
			if pt.err != nil {
				results[i].Err = pt.err
			} else {
				results[i] = pt.res[j]
			}
		}
		if pt.err != nil {
			failed++
			if firstErr == nil {
				firstErr = pt.err
			}
		}
	}
	if failed > 0 && failed == len(order) && len(order) == 1 && len(groups[order[0]]) == len(msgs) {
		return nil, firstErr
	}
	return results, nil
}

// KeyAtomic reports whether every routed publisher is KeyAtomic.
func (r *TopicRouter) KeyAtomic() bool {
	if r.Default != nil && !keyAtomic(r.Default) {
		return false
	}
	for _, p := range r.Topics {
		if !keyAtomic(p) {
			return false
		}
	}
	return true
}

// Close closes every distinct publisher once.
func (r *TopicRouter) Close() error {
	seen := map[Publisher]bool{}
	all := []Publisher{r.Default}
	keys := make([]string, 0, len(r.Topics))
	for k := range r.Topics {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		all = append(all, r.Topics[k])
	}
	var first error
	for _, p := range all {
		if p == nil || seen[p] {
			continue
		}
		seen[p] = true
		if err := p.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
