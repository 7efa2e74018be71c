package rabbitmq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/inbox/internal/adapter"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// Defaults of Config. Each field documents its own.
const (
	PrefetchDefault     = 256
	WorkersDefault      = 8
	BatchSizeDefault    = 64
	DialTimeoutDefault  = 10 * time.Second
	HeartbeatDefault    = 10 * time.Second
	ReconnectMaxDefault = 30 * time.Second
)

// keyHeader is the AMQP binding of ce_partitionkey.
const keyHeader = "cloudEvents:partitionkey"

// Config configures a Consumer. URL and Queue are required.
type Config struct {
	// URL is the broker, amqp://user:password@host:5672/vhost or amqps://.
	// Its password never appears in errors or logs.
	URL string
	// Queue is consumed. It must exist, unless BindingKeys is set.
	Queue string
	// Exchange and BindingKeys, when BindingKeys is set, make the consumer
	// declare Queue (durable) and bind it to Exchange (default "outbox", the
	// relay's) with each key, e.g. the topics "payments" or "payments.#".
	// Leave BindingKeys empty when the platform team manages the topology.
	Exchange    string
	BindingKeys []string

	// Prefetch is the most unacknowledged deliveries the broker sends
	// (default 256).
	Prefetch int
	// Workers handle deliveries in parallel (default 8). Deliveries are
	// given to workers by a hash of their key (cloudEvents:partitionkey), so
	// the events of one key are handled one after the other, in the order
	// of the queue.
	Workers int
	// BatchSize is the most deliveries a worker hands to HandleBatch at once
	// (default 64): a run of in-order events is applied in one transaction.
	BatchSize int

	// TLS configures amqps:// connections (nil: system roots).
	TLS *tls.Config
	// DialTimeout bounds connecting (default 10s); Heartbeat is the AMQP
	// heartbeat (default 10s); ReconnectMax caps the wait between
	// reconnection attempts (default 30s).
	DialTimeout, Heartbeat, ReconnectMax time.Duration

	// Logger receives the adapter's logs (default slog.Default()). Payloads
	// are never logged.
	Logger *slog.Logger
}

// ErrInvalidConfig is matched by every configuration error of New.
var ErrInvalidConfig = errors.New("inbox/rabbitmq: invalid configuration")

// ErrAlreadyRunning is returned by Run when the Consumer runs already.
var ErrAlreadyRunning = errors.New("inbox/rabbitmq: consumer is running already")

// Consumer consumes a RabbitMQ queue into an inbox. Create it with New and
// call Run.
type Consumer struct {
	in  *inbox.Inbox
	cfg Config
	log *slog.Logger
	url string // redacted
	// handleBatch is in.HandleBatch; a field for BenchmarkConsume's handler-only arm.
	handleBatch func(context.Context, []inbox.Delivery) ([]inbox.Outcome, error)

	mu      sync.Mutex
	running bool
}

// New checks cfg and returns a Consumer feeding in.
func New(in *inbox.Inbox, cfg Config) (*Consumer, error) {
	if in == nil {
		return nil, fmt.Errorf("%w: inbox is nil", ErrInvalidConfig)
	}
	c := cfg
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Prefetch, PrefetchDefault)
	def(&c.Workers, WorkersDefault)
	def(&c.BatchSize, BatchSizeDefault)
	defD(&c.DialTimeout, DialTimeoutDefault)
	defD(&c.Heartbeat, HeartbeatDefault)
	defD(&c.ReconnectMax, ReconnectMaxDefault)
	if c.Exchange == "" {
		c.Exchange = "outbox"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.URL == "" {
		return nil, bad("URL is required (amqp://user:password@host:5672/vhost)")
	}
	uri, err := amqp.ParseURI(c.URL)
	if err != nil {
		return nil, bad("URL %s cannot be parsed (expected amqp://user:password@host:5672/vhost or amqps://...)", redact(c.URL))
	}
	switch {
	case c.TLS != nil && uri.Scheme != "amqps":
		return nil, bad("TLS is set but URL %s is not amqps://", redact(c.URL))
	case c.Queue == "":
		return nil, bad("Queue is required")
	case c.Prefetch < 1 || c.Prefetch > 65535:
		return nil, bad("Prefetch %d: use 1..65535", c.Prefetch)
	case c.Workers < 1 || c.Workers > 1024:
		return nil, bad("Workers %d: use 1..1024", c.Workers)
	case c.BatchSize < 1 || c.BatchSize > c.Prefetch:
		return nil, bad("BatchSize %d: use 1..Prefetch (%d)", c.BatchSize, c.Prefetch)
	case c.DialTimeout < 0 || c.Heartbeat < 0 || c.ReconnectMax < 0:
		return nil, bad("timeouts must not be negative")
	}
	return &Consumer{in: in, cfg: c, url: redact(c.URL), handleBatch: in.HandleBatch,
		log: c.Logger.With(slog.String("consumer", in.Consumer()), slog.String("queue", c.Queue))}, nil
}

// redact returns u with its password replaced by xxxxx.
func redact(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return "(unparsable URL)"
}

// Run consumes until ctx ends, reconnecting with backoff whenever the
// connection is lost (a broker restart, a network cut). It returns nil
// after a stop by ctx. Deliveries not yet settled when the connection is
// lost or the consumer stops are not acknowledged: the broker delivers them
// again, and the inbox recognises the ones it applied. While it runs, the
// operator requests on the consumer's dead letters (outboxkit dlq replay,
// edit, drop) are run too (inbox.Inbox.ServeRequests).
func (c *Consumer) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return ErrAlreadyRunning
	}
	c.running = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}()
	stopRequests, run, err := adapter.Start(ctx, c.in)
	if !run {
		return err
	}
	defer stopRequests()
	failures := 0
	for {
		connected, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			failures = 0
		}
		failures++
		c.log.Warn("inbox/rabbitmq: connection lost, reconnecting", slog.String("url", c.url),
			slog.Any("error", err), slog.Int("failures", failures))
		if !sleep(ctx, c.backoff(failures)) {
			return nil
		}
	}
}

func (c *Consumer) backoff(n int) time.Duration {
	d := 200 * time.Millisecond
	for i := 1; i < n && d < c.cfg.ReconnectMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.ReconnectMax)
	return d/2 + rand.N(d/2+1)
}

// session runs one connection until it is lost or ctx ends. connected
// reports whether it got as far as consuming.
func (c *Consumer) session(ctx context.Context) (connected bool, err error) {
	conn, err := amqp.DialConfig(c.cfg.URL, amqp.Config{
		Heartbeat:       c.cfg.Heartbeat,
		TLSClientConfig: c.cfg.TLS,
		Properties:      amqp.Table{"connection_name": "outboxkit inbox " + c.in.Consumer()},
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: c.cfg.DialTimeout}
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The AMQP handshake must finish within the timeout too;
			// amqp091 clears the deadline afterwards.
			if err := conn.SetDeadline(time.Now().Add(c.cfg.DialTimeout)); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		},
	})
	if err != nil {
		return false, fmt.Errorf("connect to %s: %w", c.url, scrubbed(err, c.cfg.URL))
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return false, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		return false, fmt.Errorf("set prefetch: %w", err)
	}
	if len(c.cfg.BindingKeys) > 0 {
		if _, err := ch.QueueDeclare(c.cfg.Queue, true, false, false, false, nil); err != nil {
			return false, fmt.Errorf("declare queue %s: %w", c.cfg.Queue, err)
		}
		for _, k := range c.cfg.BindingKeys {
			if err := ch.QueueBind(c.cfg.Queue, k, c.cfg.Exchange, false, nil); err != nil {
				return false, fmt.Errorf("bind queue %s to %s with %q: %w", c.cfg.Queue, c.cfg.Exchange, k, err)
			}
		}
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	tag := fmt.Sprintf("outboxkit-%s-%08x", c.in.Consumer(), rand.Uint32())
	deliveries, err := ch.Consume(c.cfg.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return false, fmt.Errorf("consume %s: %w", c.cfg.Queue, err)
	}
	c.log.Info("inbox/rabbitmq: consuming", slog.String("url", c.url))

	// Workers live as long as this session; each gets the deliveries of
	// its keys. A worker's queue holds at most Prefetch deliveries (the
	// broker sends no more unacknowledged ones), so giving never blocks.
	// When the connection is lost, the workers finish the batch in hand
	// (its acks fail, the broker delivers it again, the inbox skips it),
	// drop what is queued, and are waited for before reconnecting, so that
	// two sessions never handle one key at once.
	lost := make(chan struct{})
	queues := make([]chan amqp.Delivery, c.cfg.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan amqp.Delivery, c.cfg.Prefetch)
		wg.Go(func() { c.worker(ctx, lost, queues[i]) })
	}
	defer func() {
		close(lost)
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			ch.Cancel(tag, false) //nolint:errcheck // the channel closes right after
			return true, ctx.Err()
		case e, ok := <-closed:
			if !ok || e == nil {
				return true, errors.New("channel closed")
			}
			return true, e
		case d, ok := <-deliveries:
			if !ok {
				return true, errors.New("the broker cancelled the consumer (queue deleted?)")
			}
			queues[c.workerOf(&d)] <- d
		}
	}
}

// workerOf picks the worker of a delivery by its key.
func (c *Consumer) workerOf(d *amqp.Delivery) int {
	var key string
	switch v := d.Headers[keyHeader].(type) {
	case string:
		key = v
	case []byte:
		key = string(v)
	default:
		key = d.MessageId
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(c.cfg.Workers))
}

// worker settles its deliveries through the inbox, in order, a batch of
// what is already queued at a time, and acknowledges each after the inbox
// transaction committed. It stops when its session is lost or ctx ends;
// unsettled deliveries are requeued by the broker when the channel closes.
func (c *Consumer) worker(ctx context.Context, lost <-chan struct{}, q <-chan amqp.Delivery) {
	batch := make([]amqp.Delivery, 0, c.cfg.BatchSize)
	ds := make([]inbox.Delivery, 0, c.cfg.BatchSize)
	for {
		d, ok := <-q
		if !ok {
			return
		}
		select {
		case <-lost:
			return
		default:
		}
		batch = append(batch[:0], d)
	drain:
		for len(batch) < c.cfg.BatchSize {
			select {
			case d, ok := <-q:
				if !ok {
					break drain
				}
				batch = append(batch, d)
			default:
				break drain
			}
		}
		ds = ds[:0]
		for i := range batch {
			ds = append(ds, c.delivery(&batch[i]))
		}
		outs, err := c.handleBatch(ctx, ds)
		for i := range outs {
			if aerr := batch[i].Ack(false); aerr != nil {
				// The channel is gone: the broker delivers it again and
				// the inbox recognises it.
				c.log.Debug("inbox/rabbitmq: ack failed", slog.Any("error", aerr))
			}
		}
		if err != nil {
			return // ctx ended
		}
	}
}

// delivery is the inbox's view of an AMQP delivery. Headers are sorted by
// name (an AMQP table has no order); values that are not strings or bytes
// are kept in their printed form.
func (c *Consumer) delivery(d *amqp.Delivery) inbox.Delivery {
	names := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	hs := make([]inbox.Header, len(names))
	for i, k := range names {
		var v []byte
		switch x := d.Headers[k].(type) {
		case string:
			v = []byte(x)
		case []byte:
			v = x
		case nil:
		default:
			v = []byte(fmt.Sprint(x))
		}
		hs[i] = inbox.Header{Name: k, Value: v}
	}
	// The source keeps what identifies and describes the message, not the
	// delivery tag or redelivered flag, which change with every delivery.
	src := map[string]any{"broker": "rabbitmq", "queue": c.cfg.Queue, "exchange": d.Exchange, "routing_key": d.RoutingKey}
	for k, v := range map[string]string{"message_id": d.MessageId, "type": d.Type, "app_id": d.AppId,
		"correlation_id": d.CorrelationId, "content_encoding": d.ContentEncoding, "user_id": d.UserId} {
		if v != "" {
			src[k] = v
		}
	}
	if !d.Timestamp.IsZero() {
		src["timestamp"] = d.Timestamp.UTC().Format(time.RFC3339)
	}
	return inbox.Delivery{Binding: inbox.BindingAMQP, Topic: topic(d), Headers: hs, ContentType: d.ContentType,
		Payload: d.Body, Source: src}
}

// topic is the routing key the event was published with. An operator's
// replay of a broker dead letter goes through the default exchange, whose
// routing key is the queue's name, and carries the original routing key in
// wire.TopicHeader: without it the event would land in another lane and
// its key's real lane would wait for it forever. The header counts only on
// the default exchange, which only a replay to one queue uses. Spellings
// of it that disagree name no topic (wire.TopicOf): the routing key it is.
func topic(d *amqp.Delivery) string {
	if d.Exchange == "" {
		if s, ok := wire.TopicOf(d.Headers); ok {
			return s
		}
	}
	return d.RoutingKey
}

// scrubbed keeps err for errors.Is/As but never shows the URL's password.
func scrubbed(err error, rawURL string) error {
	u, perr := url.Parse(rawURL)
	if perr != nil || u.User == nil {
		return err
	}
	pw, ok := u.User.Password()
	if !ok || pw == "" {
		return err
	}
	return &scrubbedError{text: strings.ReplaceAll(err.Error(), pw, "xxxxx"), err: err}
}

type scrubbedError struct {
	text string
	err  error
}

func (e *scrubbedError) Error() string { return e.text }
func (e *scrubbedError) Unwrap() error { return e.err }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
