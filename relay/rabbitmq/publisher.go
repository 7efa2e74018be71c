package rabbitmq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/wire"
	"github.com/outboxkit/outboxkit/relay"
)

const (
	// maxInFlight is the most unconfirmed messages on one channel, and the
	// capacity of the channel's basic.return buffer. amqp091 hands a return
	// over from the connection's only reader goroutine, waits at most 5s for
	// room and then drops it; a dropped return would turn an unroutable
	// message into a false success (and a full buffer would stall every
	// channel of the connection meanwhile). Waiting for the confirms of each
	// maxInFlight messages before sending more guarantees room for all their
	// returns.
	maxInFlight = 1024

	// maxIdleChannels is how many confirm-mode channels are kept open between
	// Publish calls; more concurrent calls open more and close the extra.
	maxIdleChannels = 16

	// maxShortString is the AMQP limit of routing keys, property strings and
	// header names. amqp091 finds an overlong one only halfway through
	// writing the message, and then drops the whole connection: it is checked
	// before sending.
	maxShortString = 255

	// closeTimeout bounds Close on a broker that does not answer.
	closeTimeout = 5 * time.Second
)

// ErrClosed is returned by Publish after Close, classified
// dependency_outage so that nothing burns attempts while the relay stops.
var ErrClosed = errors.New("rabbitmq: publisher is closed")

var errConfirmTimeout = errors.New("no publisher confirm in time")

// Publisher publishes relay messages to one RabbitMQ exchange with publisher
// confirms and mandatory routing. It implements relay.Publisher and is safe
// for concurrent use.
//
// Concurrency: each Publish call takes a confirm-mode channel of its own from
// a small pool on one shared connection, and publishes its whole batch, in
// input order, on it. Concurrent calls therefore run in parallel, and the
// order of a batch is the order in which the broker receives it.
//
// Connection: the connection is opened by New (when the broker is up) or by
// the first Publish that needs it, and is opened again by the next Publish
// after it is lost. amqp091's own automatic recovery stays off: it would
// renumber confirms behind the relay's back, and the relay must know exactly
// which messages were confirmed.
type Publisher struct {
	cfg Config
	log *slog.Logger
	url string // redacted, for errors and logs

	// dialSem lets one caller dial at a time; the callers that waited for it
	// share its outcome instead of each dialing a broker that is down.
	dialSem chan struct{}

	mu      sync.Mutex
	closed  bool
	cur     *connection
	idle    []*channel
	dialGen uint64
	dialErr error
	// wg counts the connection watchers and the channel closers; Close
	// waits for them. Add is only called under mu while !closed.
	wg sync.WaitGroup
}

type connection struct {
	conn *amqp.Connection
	// blocked holds the broker's reason while it blocks publishers (a
	// memory or disk alarm), nil otherwise.
	blocked atomic.Pointer[string]
}

type channel struct {
	conn    *connection
	ch      *amqp.Channel
	closes  chan *amqp.Error
	returns chan amqp.Return

	closeSeen bool
	closeErr  *amqp.Error
}

// New validates cfg and returns a Publisher. Configuration errors match
// relay.ErrInvalidConfig.
//
// New tries to connect at once, so that a wrong address or password shows in
// the log at start, but a broker that is down does not make it fail: the
// first Publish then returns a dependency_outage error, and every later one
// tries to connect again. ctx bounds that first attempt.
func New(ctx context.Context, cfg Config) (*Publisher, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Publisher{
		cfg:     cfg,
		log:     cfg.Logger,
		url:     redactURL(cfg.URL),
		dialSem: make(chan struct{}, 1),
	}
	if _, err := p.connect(ctx, nil); err != nil {
		p.log.Warn("rabbitmq: not connected at start; every publish retries", "error", err.Error())
	}
	return p, nil
}

// Publish sends msgs to the exchange with routing key = Topic and waits for
// the broker's confirms. It returns one Result per message in input order:
// Ack "amqp <exchange>/<routing key>#<delivery tag>" when the broker took it,
// otherwise an error classified unroutable (no queue bound for the routing
// key), poison_format (cannot be encoded in AMQP), permanent (refused),
// transient or dependency_outage (not delivered: publish it again).
//
// The error is non-nil only when no message got an outcome because the
// broker could not be reached or confirmed nothing; it is then classified
// dependency_outage.
func (p *Publisher) Publish(ctx context.Context, msgs []relay.Message) ([]relay.Result, error) {
	results := make([]relay.Result, len(msgs))
	pubs := make([]amqp.Publishing, len(msgs))
	send := make([]int, 0, len(msgs)) // indices to send, in input order
	local := false                    // a message failed before reaching the broker
	var broken map[lane]bool
	for i := range msgs {
		m := &msgs[i]
		ln := lane{m.Topic, m.Key}
		if m.Key != "" && broken[ln] {
			results[i].Err = relay.Classify(relay.ClassTransient, fmt.Errorf(
				"rabbitmq: event %s not sent: an earlier event of key %q in this batch failed, and sending this one before it would break the key's order", m.EventID, m.Key))
			local = true
			continue
		}
		pub, err := p.publishing(m)
		if err != nil {
			results[i].Err = err
			local = true
			if m.Key != "" {
				if broken == nil {
					broken = map[lane]bool{}
				}
				broken[ln] = true
			}
			continue
		}
		pubs[i] = pub
		send = append(send, i)
	}
	if len(send) == 0 {
		return results, nil
	}

	ch, err := p.acquire(ctx)
	if err != nil {
		if !local {
			return nil, err
		}
		for _, i := range send {
			results[i].Err = err
		}
		return results, nil
	}

	acked := 0
	done := make([]bool, len(msgs)) // the broker gave an outcome
	clean := true                   // no confirm or return of this call can still arrive
	var lost error                  // why the messages without an outcome got none
	var lostClass relay.ErrorClass
	for start := 0; start < len(send) && lost == nil; start += maxInFlight {
		chunk := send[start:min(start+maxInFlight, len(send))]
		dcs := make([]*amqp.DeferredConfirmation, len(chunk))
		var sendErr error
		for j, i := range chunk {
			dc, err := ch.ch.PublishWithDeferredConfirmWithContext(ctx, p.cfg.Exchange, msgs[i].Topic, true, false, pubs[i])
			if err != nil {
				sendErr = err
				break
			}
			dcs[j] = dc
		}
		if sendErr != nil && ctx.Err() == nil {
			// A failed write makes amqp091 drop the connection, a moment
			// later: do not pool a channel that is about to close.
			clean = false
		}
		waitErr := p.await(ctx, dcs)

		// Read the confirms before the returns: a message's basic.return
		// arrives before its basic.ack, so every return of an ack seen here
		// is already in the buffer.
		states := make([]confirmState, len(chunk))
		for j, dc := range dcs {
			states[j] = stateOf(dc)
			if dc != nil && states[j] == confirmPending {
				clean = false
			}
		}
		returns := ch.takeReturns()
		closeErr, closed := ch.closeReason()

		for j, i := range chunk {
			switch states[j] {
			case confirmAcked:
				acked++
				done[i] = true
				if r, ok := returns.take(pubs[i].MessageId); ok {
					results[i].Err = relay.Classify(relay.ClassUnroutable, fmt.Errorf(
						"rabbitmq: no queue bound to exchange %q for routing key %q: bind a queue or fix the route (broker: %d %s)",
						p.cfg.Exchange, msgs[i].Topic, r.ReplyCode, r.ReplyText))
				} else {
					results[i].Ack = fmt.Sprintf("amqp %s/%s#%d", p.cfg.Exchange, msgs[i].Topic, dcs[j].DeliveryTag)
				}
			case confirmNacked:
				// When the channel closed, amqp091 nacks every pending
				// confirm itself: such a nack says nothing.
				if !closed {
					done[i] = true
					results[i].Err = relay.Classify(relay.ClassTransient, fmt.Errorf(
						"rabbitmq: broker nacked event %s on exchange %q (a queue refused it: overflow reject-publish, or a quorum queue without quorum): it will be published again",
						msgs[i].EventID, p.cfg.Exchange))
				}
			}
		}
		if closed || sendErr != nil || waitErr != nil {
			lostClass, lost = p.lostCause(closeErr, closed, sendErr, waitErr)
		}
	}

	p.release(ch, clean)
	if lost == nil {
		return results, nil
	}
	if lostClass == relay.ClassDependencyOutage {
		if acked == 0 && !local && !anyDone(done) {
			return nil, relay.Classify(relay.ClassDependencyOutage, lost)
		}
		if acked > 0 {
			// The broker confirmed part of the batch: it is up, this was a
			// blip, and an attempt may be counted.
			lostClass = relay.ClassTransient
		}
	}
	for _, i := range send {
		if !done[i] {
			results[i].Err = relay.Classify(lostClass, lost)
		}
	}
	return results, nil
}

// Close closes the connection and waits for the publisher's goroutines. A
// Publish in flight fails with its unconfirmed messages not delivered. Close
// is idempotent.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	cur := p.cur
	p.cur, p.idle = nil, nil
	p.mu.Unlock()

	var err error
	if cur != nil && !cur.conn.IsClosed() {
		// A deadline, so that a broker that does not answer cannot hang the
		// relay's shutdown.
		if e := cur.conn.CloseDeadline(time.Now().Add(closeTimeout)); e != nil && !errors.Is(e, amqp.ErrClosed) {
			err = &scrubbedError{text: fmt.Sprintf("rabbitmq: close connection to %s: %s", p.url, scrub(e.Error(), p.cfg.URL)), err: e}
		}
	}
	p.wg.Wait()
	return err
}

type lane struct{ topic, key string }

type confirmState uint8

const (
	confirmPending confirmState = iota // or not sent
	confirmAcked
	confirmNacked
)

func stateOf(dc *amqp.DeferredConfirmation) confirmState {
	if dc == nil {
		return confirmPending
	}
	select {
	case <-dc.Done():
		if dc.Acked() {
			return confirmAcked
		}
		return confirmNacked
	default:
		return confirmPending
	}
}

func anyDone(done []bool) bool {
	for _, d := range done {
		if d {
			return true
		}
	}
	return false
}

// await waits for every confirm of dcs (up to the first nil: the rest was
// not sent). A closed channel completes its pending confirms as nacks, so a
// lost connection ends the wait too.
func (p *Publisher) await(ctx context.Context, dcs []*amqp.DeferredConfirmation) error {
	timer := time.NewTimer(p.cfg.ConfirmTimeout)
	defer timer.Stop()
	for _, dc := range dcs {
		if dc == nil {
			return nil
		}
		select {
		case <-dc.Done():
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return errConfirmTimeout
		}
	}
	return nil
}

// lostCause explains why messages got no confirm, with their class.
func (p *Publisher) lostCause(closeErr *amqp.Error, closed bool, sendErr, waitErr error) (relay.ErrorClass, error) {
	outage := relay.ClassDependencyOutage
	switch {
	case closeErr != nil:
		class := replyClass(closeErr.Code)
		if class == outage {
			return outage, fmt.Errorf("rabbitmq: connection to %s lost before the publisher confirm (%w): the message may or may not have reached the broker; it will be published again", p.url, closeErr)
		}
		hint := ""
		switch {
		case closeErr.Code == amqp.NotFound && !p.cfg.SkipDeclare:
			// The exchange was deleted after this publisher declared it;
			// the next channel declares it again, so a retry goes through.
			class = relay.ClassTransient
			hint = ": the exchange was deleted; it is declared again on the next attempt"
		case closeErr.Code == amqp.NotFound:
			hint = ": declare the exchange or fix Config.Exchange"
		case closeErr.Code == amqp.AccessRefused:
			hint = ": grant the user the write permission on the exchange"
		}
		return class, fmt.Errorf("rabbitmq: broker closed the channel to exchange %q before the publisher confirm: %w%s", p.cfg.Exchange, closeErr, hint)
	case closed:
		return outage, fmt.Errorf("rabbitmq: connection to %s closed before the publisher confirm: the message may or may not have reached the broker; it will be published again", p.url)
	case errors.Is(waitErr, errConfirmTimeout):
		return outage, fmt.Errorf("rabbitmq: no publisher confirm from %s within %s: the broker is overloaded, blocked or unreachable; the message will be published again", p.url, p.cfg.ConfirmTimeout)
	case waitErr != nil:
		return outage, fmt.Errorf("rabbitmq: stopped waiting for publisher confirms: %w", waitErr)
	default:
		var ae *amqp.Error
		if errors.As(sendErr, &ae) {
			return replyClass(ae.Code), fmt.Errorf("rabbitmq: publish to exchange %q: %w", p.cfg.Exchange, sendErr)
		}
		return outage, fmt.Errorf("rabbitmq: publish to exchange %q: %w", p.cfg.Exchange, sendErr)
	}
}

// publishing encodes m in the AMQP binding of the wire format.
func (p *Publisher) publishing(m *relay.Message) (amqp.Publishing, error) {
	src := m.Source
	if src == "" {
		src = p.cfg.Source
	}
	e := wire.Event{
		ID: m.EventID, Source: src, Type: m.Type, Time: m.CreatedAt, ContentType: m.ContentType,
		Topic: m.Topic, Key: m.Key, Sequence: m.Sequence, Version: m.Version,
		CorrelationID: m.CorrelationID, CausationID: m.CausationID,
		TraceParent: m.TraceParent, TraceState: m.TraceState,
		Headers: m.Headers, Payload: m.Payload,
	}
	tooLong := func(what string, n int) error {
		return relay.Classify(relay.ClassPoisonFormat, fmt.Errorf(
			"rabbitmq: event %s: %s is %d bytes, AMQP allows %d: shorten it", m.EventID, what, n, maxShortString))
	}
	for _, f := range []struct{ what, v string }{
		{"topic (the routing key)", m.Topic}, {"type", m.Type}, {"content type", m.ContentType},
		{"correlation id", m.CorrelationID}, {"source (app_id)", src},
	} {
		if len(f.v) > maxShortString {
			return amqp.Publishing{}, tooLong(f.what, len(f.v))
		}
	}
	attrs := wire.Attributes(&e, wire.AMQPPrefix)
	headers := make(amqp.Table, len(attrs))
	for _, h := range attrs {
		if _, dup := headers[h.Name]; dup {
			// The CloudEvents attributes come first: an event header cannot
			// override them.
			continue
		}
		if len(h.Name) > maxShortString {
			return amqp.Publishing{}, tooLong(fmt.Sprintf("header name %.40q...", h.Name), len(h.Name))
		}
		headers[h.Name] = h.Value
	}
	return amqp.Publishing{
		Headers:       headers,
		ContentType:   m.ContentType,
		DeliveryMode:  amqp.Persistent,
		CorrelationId: m.CorrelationID,
		MessageId:     m.EventID.String(),
		Timestamp:     m.CreatedAt,
		Type:          m.Type,
		AppId:         src,
		Body:          m.Payload,
	}, nil
}

// acquire returns a confirm-mode channel for one Publish call, connecting
// first when needed.
func (p *Publisher) acquire(ctx context.Context) (*channel, error) {
	for range 2 {
		pc, cur, err := p.pooled()
		if pc != nil || err != nil {
			return pc, err
		}
		if cur != nil && !cur.conn.IsClosed() {
			return p.open(cur)
		}
		// A new connection comes with its first channel in the pool.
		if _, err := p.connect(ctx, cur); err != nil {
			return nil, err
		}
	}
	return nil, relay.Classify(relay.ClassDependencyOutage, fmt.Errorf("rabbitmq: connection to %s closed right after it was opened", p.url))
}

// pooled takes an idle channel of the current connection, if any, and
// returns the current connection.
func (p *Publisher) pooled() (*channel, *connection, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, relay.Classify(relay.ClassDependencyOutage, ErrClosed)
	}
	cur := p.cur
	if cur == nil || cur.conn.IsClosed() {
		return nil, cur, nil
	}
	if err := p.blockedError(cur); err != nil {
		return nil, cur, err
	}
	for len(p.idle) > 0 {
		pc := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if pc.conn == cur && !pc.ch.IsClosed() {
			return pc, cur, nil
		}
	}
	return nil, cur, nil
}

func (p *Publisher) blockedError(c *connection) error {
	reason := c.blocked.Load()
	if reason == nil {
		return nil
	}
	return relay.Classify(relay.ClassDependencyOutage, fmt.Errorf(
		"rabbitmq: %s blocks publishers (%s): a memory or disk alarm is raised on the broker; free memory or disk space there", p.url, *reason))
}

// release gives a channel back to the pool, or closes it when its state is
// unknown (confirms or returns may still arrive for the last batch).
func (p *Publisher) release(c *channel, reusable bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if reusable && !p.closed && c.conn == p.cur && !c.ch.IsClosed() && len(p.idle) < maxIdleChannels {
		p.idle = append(p.idle, c)
		return
	}
	if p.closed || c.ch.IsClosed() {
		// Close closes the connection, and this channel with it.
		return
	}
	// Closing is a round trip to a broker that may be slow or gone: the
	// caller does not wait for it. Close ends it by closing the connection.
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		_ = c.ch.Close()
	}()
}

// connect opens a new connection unless another caller did so while this
// one waited, replacing stale (the connection found dead, or nil).
func (p *Publisher) connect(ctx context.Context, stale *connection) (*connection, error) {
	p.mu.Lock()
	gen := p.dialGen
	p.mu.Unlock()
	select {
	case p.dialSem <- struct{}{}:
	case <-ctx.Done():
		return nil, relay.Classify(relay.ClassDependencyOutage, fmt.Errorf("rabbitmq: connect to %s: %w", p.url, ctx.Err()))
	}
	defer func() { <-p.dialSem }()

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, relay.Classify(relay.ClassDependencyOutage, ErrClosed)
	}
	if cur := p.cur; cur != nil && cur != stale && !cur.conn.IsClosed() {
		p.mu.Unlock()
		return cur, nil
	}
	if p.dialGen != gen && p.dialErr != nil {
		err := p.dialErr
		p.mu.Unlock()
		return nil, err
	}
	p.mu.Unlock()

	conn, err := p.dial(ctx)
	var c *connection
	var first *channel
	var closes chan *amqp.Error
	var blocks chan amqp.Blocking
	if err == nil {
		c = &connection{conn: conn}
		closes = conn.NotifyClose(make(chan *amqp.Error, 1))
		blocks = conn.NotifyBlocked(make(chan amqp.Blocking, 1))
		// Declare the exchange now: after New, with the broker up, the
		// exchange exists and consumers can bind their queues to it.
		if first, err = p.open(c); err != nil {
			_ = conn.CloseDeadline(time.Now().Add(time.Second))
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialGen++
	if err != nil {
		if c == nil {
			err = p.dialError(err)
		}
		p.dialErr = err
		return nil, err
	}
	p.dialErr = nil
	if p.closed {
		_ = conn.CloseDeadline(time.Now().Add(time.Second))
		return nil, relay.Classify(relay.ClassDependencyOutage, ErrClosed)
	}
	p.cur = c
	p.idle = append(p.idle[:0], first)
	p.wg.Add(1)
	go p.watch(c, closes, blocks)
	p.log.Info("rabbitmq: connected", "url", p.url, "exchange", p.cfg.Exchange)
	return c, nil
}

func (p *Publisher) dial(ctx context.Context) (*amqp.Connection, error) {
	timeout := p.cfg.DialTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("outboxkit relay")
	var tlsConfig *tls.Config
	if p.cfg.TLS != nil {
		// amqp091 fills in ServerName on the config it is given: keep the
		// caller's untouched.
		tlsConfig = p.cfg.TLS.Clone()
	}
	return amqp.DialConfig(p.cfg.URL, amqp.Config{
		TLSClientConfig: tlsConfig,
		Properties:      props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The TLS and AMQP handshakes take no context: bound them.
			// amqp091 clears the deadline once the connection is open.
			if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
				conn.Close()
				return nil, err
			}
			return &writeTimeoutConn{Conn: conn, timeout: p.cfg.ConfirmTimeout}, nil
		},
	})
}

func (p *Publisher) dialError(err error) error {
	hint := "check that RabbitMQ runs and is reachable there; publishing retries"
	var ae *amqp.Error
	if errors.As(err, &ae) && (ae.Code == amqp.AccessRefused || ae.Code == amqp.InvalidPath || ae.Code == amqp.NotAllowed) {
		hint = "check the user name and password in the URL, the vhost, and the user's permissions on it"
	}
	text := fmt.Sprintf("rabbitmq: connect to %s: %s: %s", p.url, scrub(err.Error(), p.cfg.URL), hint)
	return relay.Classify(relay.ClassDependencyOutage, &scrubbedError{text: text, err: err})
}

// watch follows one connection: the broker's blocked/unblocked
// notifications, and its end.
func (p *Publisher) watch(c *connection, closes chan *amqp.Error, blocks chan amqp.Blocking) {
	defer p.wg.Done()
	for {
		select {
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			if b.Active {
				reason := b.Reason
				c.blocked.Store(&reason)
				p.log.Warn("rabbitmq: broker blocks publishers", "url", p.url, "reason", b.Reason)
			} else {
				c.blocked.Store(nil)
				p.log.Info("rabbitmq: broker unblocked publishers", "url", p.url)
			}
		case e, ok := <-closes:
			if ok && e != nil {
				p.log.Warn("rabbitmq: connection lost; the next publish reconnects",
					"url", p.url, "code", e.Code, "reason", scrub(e.Reason, p.cfg.URL))
			}
			return
		}
	}
}

// open opens a channel in confirm mode with a returns buffer, and declares
// the exchange on it. Declaring on every new channel (they are pooled, so
// this is rare) restores an exchange deleted while the relay runs.
func (p *Publisher) open(c *connection) (*channel, error) {
	// Opening takes three round trips, and amqp091 waits for each answer
	// without a timeout: on a connection that died silently that lasts until
	// the heartbeats notice (30s). Past DialTimeout the connection is given
	// up, which fails the call at once.
	var timedOut atomic.Bool
	stuck := make(chan struct{})
	timer := time.AfterFunc(p.cfg.DialTimeout, func() {
		defer close(stuck)
		timedOut.Store(true)
		_ = c.conn.CloseDeadline(time.Now().Add(time.Second))
	})
	defer func() {
		if !timer.Stop() {
			<-stuck
		}
	}()
	// Every failure here would fail every message the same way: a batch
	// error (dependency_outage), so that the backlog waits for the broker
	// or the fix instead of burning attempts.
	fail := func(step string, err error) (*channel, error) {
		if timedOut.Load() {
			err = fmt.Errorf("rabbitmq: %s: no answer from %s within %s (%w): the connection was dropped; the next publish reconnects",
				step, p.url, p.cfg.DialTimeout, err)
		} else {
			err = fmt.Errorf("rabbitmq: %s on %s: %w", step, p.url, err)
		}
		return nil, relay.Classify(relay.ClassDependencyOutage, err)
	}

	ch, err := c.conn.Channel()
	if err != nil {
		return fail("open a channel", err)
	}
	pc := &channel{
		conn:    c,
		ch:      ch,
		closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		returns: ch.NotifyReturn(make(chan amqp.Return, maxInFlight)),
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return fail("enable publisher confirms", err)
	}
	if !p.cfg.SkipDeclare {
		if err := ch.ExchangeDeclare(p.cfg.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			_ = ch.Close()
			var ae *amqp.Error
			if errors.As(err, &ae) && ae.Server && (ae.Code == amqp.PreconditionFailed || ae.Code == amqp.AccessRefused) {
				return nil, relay.Classify(relay.ClassDependencyOutage, fmt.Errorf(
					"rabbitmq: declare exchange %q: %w: it must be a durable topic exchange and the user needs the configure permission on it; fix the exchange, or manage it yourself and set SkipDeclare",
					p.cfg.Exchange, err))
			}
			return fail(fmt.Sprintf("declare exchange %q", p.cfg.Exchange), err)
		}
	}
	return pc, nil
}

// returned holds the basic.returns of a batch by message id.
type returned map[string][]amqp.Return

func (r returned) take(id string) (amqp.Return, bool) {
	q := r[id]
	if len(q) == 0 {
		return amqp.Return{}, false
	}
	r[id] = q[1:]
	return q[0], true
}

// takeReturns drains the returns buffered so far without waiting.
func (c *channel) takeReturns() returned {
	var out returned
	for {
		select {
		case r, ok := <-c.returns:
			if !ok {
				return out
			}
			if out == nil {
				out = returned{}
			}
			out[r.MessageId] = append(out[r.MessageId], r)
		default:
			return out
		}
	}
}

// closeReason reports whether the channel is closed, and the broker's or
// the connection's error when it closed abnormally.
func (c *channel) closeReason() (*amqp.Error, bool) {
	if c.closeSeen {
		return c.closeErr, true
	}
	if !c.ch.IsClosed() {
		return nil, false
	}
	// amqp091 marks the channel closed first and hands out the error just
	// after (then closes c.closes), so wait for it: a 404 must not be taken
	// for a lost connection. The timer only guards against the unexpected.
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case c.closeErr = <-c.closes:
	case <-t.C:
	}
	c.closeSeen = true
	return c.closeErr, true
}

// writeTimeoutConn bounds every write. A broker that stops reading (it
// blocks publishers under a resource alarm, or the network is gone) would
// otherwise hang a publish in the socket write, where no context reaches; a
// failed write makes amqp091 close the connection, and every waiting
// Publish returns.
type writeTimeoutConn struct {
	net.Conn
	timeout time.Duration
}

func (c *writeTimeoutConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}
