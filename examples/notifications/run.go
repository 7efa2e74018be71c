package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/examples/internal/story"
	"github.com/outboxkit/outboxkit/inbox"
	inboxrabbit "github.com/outboxkit/outboxkit/inbox/rabbitmq"
	"github.com/outboxkit/outboxkit/migrations"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relayrabbit "github.com/outboxkit/outboxkit/relay/rabbitmq"
)

// customers of the bank: account, phone, opening balance in cents.
var customers = []struct {
	account, phone string
	cents          int64
}{
	{"acct-ana", "+351910000001", 80000},
	{"acct-ben", "+351910000002", 60000},
	{"acct-cho", "+351910000003", 40000},
	{"acct-dan", "+351910000004", 30000},
	{"acct-eva", "+351910000005", 20000},
}

const topic = "accounts.withdrawals"

// run tells the whole story and returns an error unless every check holds.
// Everything it starts is stopped, and the RabbitMQ objects it declared are
// deleted, before it returns.
func run(ctx context.Context, out io.Writer, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	s := story.New(out)
	s.Title("notifications: withdrawals relayed to RabbitMQ, an SMS for each, through a partner outage")

	// 1. Install: tables, RabbitMQ topology, the simulated SMS partner.
	s.Step("Install")
	pool, err := install(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	app := pgx.Identifier{cfg.AppSchema}.Sanitize()
	inboxSchema := pgx.Identifier{cfg.InboxSchema}.Sanitize()
	s.Say("database  %s", story.Redact(cfg.DatabaseURL))
	s.Say("schemas   %s (outbox), %s (inbox), %s (accounts, withdrawals, contacts, SMS log)",
		cfg.OutboxSchema, cfg.InboxSchema, cfg.AppSchema)

	runID := strings.ReplaceAll(time.Now().UTC().Format("20060102t150405.000000"), ".", "")
	exchange := "example.notifications." + runID
	queue := "example.notifications.sms." + runID
	rabbit, err := declareTopology(ctx, cfg.RabbitMQURL, exchange, queue)
	if err != nil {
		return err
	}
	defer func() {
		rabbit.Delete() //nolint:errcheck // after a failure; the queue expires by itself anyway
		rabbit.Close()
	}()
	s.Say("rabbitmq  %s", story.Redact(cfg.RabbitMQURL))
	s.Say("          exchange %s -> queue %s (binding key %q)", exchange, queue, topic)

	partner, err := startPartner()
	if err != nil {
		return err
	}
	defer partner.Close()
	s.Say("partner   simulated SMS gateway at %s", partner.URL)

	w, err := outbox.NewWriter(&outbox.Config{Schema: cfg.OutboxSchema, Source: "/examples/notifications/bank"})
	if err != nil {
		return err
	}
	bank := &bank{pool: pool, outbox: w, app: app, topic: topic}

	// The relay publishes every topic to the one exchange, routing key =
	// topic, with publisher confirms. The exchange is the example's
	// (declared above), hence SkipDeclare.
	pub, err := relayrabbit.New(ctx, relayrabbit.Config{URL: cfg.RabbitMQURL, Exchange: exchange, SkipDeclare: true, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	defer pub.Close()
	rl, err := relay.New(pool, &relay.Config{Publisher: pub, Schema: cfg.OutboxSchema, Logger: cfg.Logger})
	if err != nil {
		return err
	}

	in, err := inbox.New(pool, &inbox.Config{
		Consumer:        "sms-notifications",
		ConsumerVersion: "sms-notifications-2.3.1",
		Schema:          cfg.InboxSchema,
		OutboxSchema:    cfg.OutboxSchema,
		// Three counted attempts only: without the breaker, an outage
		// would park every waiting event within seconds.
		MaxAttempts: 3,
		BackoffBase: 100 * time.Millisecond,
		BackoffMax:  time.Second,
		// Probe the partner every 0.2s at first, backing off to 1s (the
		// defaults, 1s to 30s, suit production).
		Breaker: inbox.BreakerConfig{BackoffBase: 200 * time.Millisecond, BackoffMax: time.Second},
		Logger:  cfg.Logger,
	})
	if err != nil {
		return err
	}
	sms := &notifier{app: app, sms: &smsClient{url: partner.URL, http: &http.Client{Timeout: 5 * time.Second}}}
	in.Register("money.withdrawn", 1, sms.onWithdrawal)
	consumer, err := inboxrabbit.New(in, inboxrabbit.Config{URL: cfg.RabbitMQURL, Queue: queue, Workers: 4, Logger: cfg.Logger})
	if err != nil {
		return err
	}

	var g story.Workers
	defer g.StopAll()
	g.Start(ctx, "relay", rl.Run)
	g.Start(ctx, "sms consumer", consumer.Run)
	wait := func(what string, timeout time.Duration, cond func(context.Context) (bool, error)) error {
		return story.Wait(ctx, timeout, what, func(ctx context.Context) (bool, error) {
			if err := g.Err(); err != nil {
				return false, err
			}
			return cond(ctx)
		})
	}
	count := func(ctx context.Context, query string, args ...any) (n int, err error) {
		err = pool.QueryRow(ctx, query, args...).Scan(&n)
		return n, err
	}
	smsLogged := func(ctx context.Context) (int, error) {
		return count(ctx, `SELECT count(*) FROM `+app+`.sms_log`)
	}
	deadLetters := func(ctx context.Context) (int, error) {
		return count(ctx, `SELECT count(*) FROM `+inboxSchema+`.dead_letters WHERE consumer = 'sms-notifications'`)
	}
	s.Say("running   relay (%s) and consumer sms-notifications (inbox/rabbitmq, 4 workers)", rl.ID())

	for _, c := range customers {
		if _, err := pool.Exec(ctx, `INSERT INTO `+app+`.accounts (id, balance_cents) VALUES ($1, $2)`, c.account, c.cents); err != nil {
			return err
		}
		if _, err := pool.Exec(ctx, `INSERT INTO `+app+`.contacts (account, phone) VALUES ($1, $2)`, c.account, c.phone); err != nil {
			return err
		}
	}
	withdrawals := 0
	withdraw := func(round int) error {
		for i, c := range customers {
			id := fmt.Sprintf("w-%02d", withdrawals+1)
			amount := int64(2000 + 500*i + 1000*round)
			if _, err := bank.Withdraw(ctx, id, c.account, amount); err != nil {
				return err
			}
			withdrawals++
		}
		return nil
	}

	// 2. Normal operation.
	s.Step("The partner is up: %d withdrawals, one SMS each", len(customers))
	if err := withdraw(0); err != nil {
		return err
	}
	if err := wait("the first SMS", 30*time.Second, func(ctx context.Context) (bool, error) {
		n, err := smsLogged(ctx)
		return n >= withdrawals, err
	}); err != nil {
		return err
	}
	pc := partner.Counts()
	s.Check(pc.Sent == withdrawals && pc.Refused == 0, "%d withdrawals committed, %d SMS sent by the partner", withdrawals, pc.Sent)

	// 3. The outage.
	s.Step("The SMS partner goes down (it answers 503) for %s", cfg.Outage)
	partner.SetUp(false)
	outageStart := time.Now()
	before := withdrawals
	if err := withdraw(1); err != nil {
		return err
	}
	if err := withdraw(2); err != nil {
		return err
	}
	s.Say("%d more withdrawals committed and relayed while the partner is down", withdrawals-before)
	if err := wait("the breaker to open", 30*time.Second, func(context.Context) (bool, error) {
		return in.BreakerOpen(), nil
	}); err != nil {
		return err
	}
	s.Say("breaker open %dms after the partner went down: the consumer stops taking deliveries,", time.Since(outageStart).Milliseconds())
	s.Say("the deliveries stay unacknowledged in RabbitMQ, one probe at a time tries the partner")
	select {
	case <-time.After(time.Until(outageStart.Add(cfg.Outage))):
	case <-ctx.Done():
		return ctx.Err()
	}
	pc = partner.Counts()
	dl, err := deadLetters(ctx)
	if err != nil {
		return err
	}
	var counted, notCounted int
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE outcome <> 'not_counted'), count(*) FILTER (WHERE outcome = 'not_counted')
		FROM `+inboxSchema+`.attempts WHERE consumer = 'sms-notifications'`).Scan(&counted, &notCounted); err != nil {
		return err
	}
	s.Say("during the outage the partner refused %d requests for %d waiting withdrawals", pc.Refused, withdrawals-before)
	s.Say("inbox attempts recorded: %d not counted (dependency_outage), %d counted", notCounted, counted)
	s.Check(in.BreakerOpen(), "the breaker is still open at the end of the outage")
	s.Check(dl == 0 && counted == 0, "no dead-lettering storm: %d dead letters, %d attempts counted against events (MaxAttempts is 3)", dl, counted)
	s.Check(pc.Sent == before, "no SMS lost or invented: still %d sent", pc.Sent)

	// 4. Recovery.
	s.Step("The partner comes back")
	partner.SetUp(true)
	back := time.Now()
	if err := wait("every SMS", 30*time.Second, func(ctx context.Context) (bool, error) {
		n, err := smsLogged(ctx)
		return n >= withdrawals && in.Stats().Applied >= int64(withdrawals) && !in.BreakerOpen(), err
	}); err != nil {
		return err
	}
	s.Say("the next probe succeeded, the breaker closed, the waiting withdrawals were texted in %dms",
		time.Since(back).Milliseconds())
	// 5. The result.
	s.Step("Result")
	pc = partner.Counts()
	logged, err := smsLogged(ctx)
	if err != nil {
		return err
	}
	dl, err = deadLetters(ctx)
	if err != nil {
		return err
	}
	published, err := count(ctx, `SELECT count(*) FROM `+pgx.Identifier{cfg.OutboxSchema}.Sanitize()+`.messages WHERE status = 'published'`)
	if err != nil {
		return err
	}
	s.Say("partner: %d requests, %d refused during the outage, %d repeated keys answered without sending", pc.Requests, pc.Refused, pc.Duplicates)
	s.Check(published == withdrawals, "%d withdrawals, %d events published to RabbitMQ", withdrawals, published)
	s.Check(pc.Sent == withdrawals && logged == withdrawals, "exactly one SMS per withdrawal: %d sent by the partner, %d in the SMS log", pc.Sent, logged)
	perPhone := true
	partner.mu.Lock()
	for _, c := range customers {
		perPhone = perPhone && partner.phones[c.phone] == 3
	}
	partner.mu.Unlock()
	s.Check(perPhone, "each of the %d customers got exactly 3 SMS", len(customers))
	s.Check(dl == 0, "dead letters: %d", dl)
	st := in.Stats()
	s.Say("inbox outcomes: %d applied, %d duplicates, %d parked", st.Applied, st.Duplicate, st.Parked)

	// Stopping the consumer returns every unacknowledged delivery to the
	// queue: an empty queue means every delivery was settled and acknowledged.
	g.StopAll()
	if err := g.Err(); err != nil {
		return err
	}
	left, err := rabbit.Ready()
	if err != nil {
		return err
	}
	s.Check(left == 0, "consumer stopped, %d messages left in the queue: every delivery was acknowledged", left)
	if err := rabbit.Delete(); err != nil {
		return err
	}
	s.Say("deleted queue %s and exchange %s", queue, exchange)
	return s.Err()
}

// install drops the example's schemas, installs the outboxkit tables with
// migrations.Up (as "outboxkit migrate up" does) and creates the services'
// tables.
func install(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w (set DATABASE_URL)", story.Redact(cfg.DatabaseURL), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{cfg.AppSchema}.Sanitize()+`, `+
		pgx.Identifier{cfg.InboxSchema}.Sanitize()+`, `+pgx.Identifier{cfg.OutboxSchema}.Sanitize()+` CASCADE`); err != nil {
		return nil, err
	}
	if err := migrations.Up(ctx, cfg.DatabaseURL, &migrations.Config{
		OutboxSchema: cfg.OutboxSchema, InboxSchema: cfg.InboxSchema, Partitions: 8, Logger: cfg.Logger,
	}); err != nil {
		return nil, fmt.Errorf("install the outboxkit tables: %w", err)
	}
	app := pgx.Identifier{cfg.AppSchema}.Sanitize()
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+app+`;`+fmt.Sprintf(appTables, app)); err != nil {
		return nil, err
	}
	return pgxpool.New(ctx, cfg.DatabaseURL)
}

// topology is the example's exchange and queue. In production the platform
// team declares them (or the consumer does, with inboxrabbit.Config
// BindingKeys); here they are unique to the run and removed at the end.
type topology struct {
	conn            *amqp.Connection
	exchange, queue string
	deleted         bool
}

// queueArgs make RabbitMQ delete the queue by itself if a run is killed
// before it cleans up (unused for 10 minutes); the exchange is auto-delete
// and goes with its last binding.
var queueArgs = amqp.Table{"x-expires": int32(10 * 60 * 1000)}

func declareTopology(ctx context.Context, url, exchange, queue string) (*topology, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %w (set RABBITMQ_URL)", story.Redact(url), err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer ch.Close()
	err = ch.ExchangeDeclare(exchange, "topic", true, true, false, false, nil)
	if err == nil {
		_, err = ch.QueueDeclare(queue, true, false, false, false, queueArgs)
	}
	if err == nil {
		err = ch.QueueBind(queue, topic, exchange, false, nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("declare the example's exchange and queue: %w", err)
	}
	return &topology{conn: conn, exchange: exchange, queue: queue}, nil
}

// Ready returns the messages waiting in the queue. Deliveries a consumer
// holds unacknowledged are not counted until its channel closes.
func (t *topology) Ready() (int, error) {
	ch, err := t.conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(t.queue, true, false, false, false, queueArgs)
	if err != nil {
		return 0, err
	}
	return q.Messages, nil
}

// Delete removes the queue and the exchange, once.
func (t *topology) Delete() error {
	if t.deleted {
		return nil
	}
	ch, err := t.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(t.queue, false, false, false); err != nil {
		return fmt.Errorf("delete queue %s: %w", t.queue, err)
	}
	// The exchange is auto-delete and went with its last binding; deleting
	// a missing exchange is not an error in RabbitMQ.
	if err := ch.ExchangeDelete(t.exchange, false, false); err != nil {
		return fmt.Errorf("delete exchange %s: %w", t.exchange, err)
	}
	t.deleted = true
	return nil
}

func (t *topology) Close() { t.conn.Close() }
