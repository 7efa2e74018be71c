package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/examples/internal/localkafka"
	"github.com/outboxkit/outboxkit/examples/internal/story"
	"github.com/outboxkit/outboxkit/inbox"
	inboxkafka "github.com/outboxkit/outboxkit/inbox/kafka"
	"github.com/outboxkit/outboxkit/migrations"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	relaykafka "github.com/outboxkit/outboxkit/relay/kafka"
)

// openingBalances of the four accounts, in cents.
var openingBalances = []struct {
	id    string
	cents int64
}{{"alice", 100000}, {"bob", 50000}, {"carol", 25000}, {"dave", 10000}}

// run tells the whole story and returns an error unless every check holds.
// Everything it starts is stopped before it returns.
func run(ctx context.Context, out io.Writer, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	s := story.New(out)
	s.Title("payments: transfers relayed to Kafka and booked by a ledger, exactly once")

	// 1. Install: the outboxkit tables and the bank's tables, in their own
	// schemas.
	s.Step("Install")
	pool, err := install(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	app := pgx.Identifier{cfg.AppSchema}.Sanitize()
	s.Say("database  %s", story.Redact(cfg.DatabaseURL))
	s.Say("schemas   %s (outbox), %s (inbox), %s (accounts, transfers, ledger)", cfg.OutboxSchema, cfg.InboxSchema, cfg.AppSchema)

	kafka, err := localkafka.Start(cfg.KafkaBrokers)
	if err != nil {
		return err
	}
	defer kafka.Close(context.WithoutCancel(ctx)) //nolint:errcheck // best effort: a real Kafka keeps a stray topic
	runID := time.Now().UTC().Format("20060102t150405.000000")
	runID = strings.ReplaceAll(runID, ".", "")
	topic := "example.payments.transfers." + runID
	if err := kafka.CreateTopic(ctx, topic, 4); err != nil {
		return err
	}
	s.Say("kafka     %s", kafka.Describe())
	s.Say("topic     %s (4 partitions)", topic)

	// The producer's Writer, the relay and the ledger's inbox are configured
	// for the example's schemas; with the default schemas ("outbox",
	// "inbox") the package-level outbox.Enqueue and zero Configs do.
	w, err := outbox.NewWriter(&outbox.Config{Schema: cfg.OutboxSchema, Source: "/examples/payments/transfer-service"})
	if err != nil {
		return err
	}
	bank := &transferService{pool: pool, outbox: w, app: app, topic: topic}

	pub, err := relaykafka.New(relaykafka.Config{Brokers: kafka.Brokers, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	defer pub.Close()
	rl, err := relay.New(pool, &relay.Config{Publisher: pub, Schema: cfg.OutboxSchema, Logger: cfg.Logger})
	if err != nil {
		return err
	}

	in, err := inbox.New(pool, &inbox.Config{
		Consumer:        "ledger",
		ConsumerVersion: "ledger-1.0.0",
		Schema:          cfg.InboxSchema,
		OutboxSchema:    cfg.OutboxSchema,
		Logger:          cfg.Logger,
	})
	if err != nil {
		return err
	}
	led := &ledger{app: app}
	in.Register("transfer.created", 1, led.applyTransfer)
	group := "example-payments-ledger-" + runID
	kafka.ForgetGroupOnClose(group)
	consumer, err := inboxkafka.New(in, consumerConfig(kafka.Brokers, topic, group, cfg))
	if err != nil {
		return err
	}

	var g story.Workers
	defer g.StopAll()
	g.Start(ctx, "relay", rl.Run)
	stopLedger := g.Start(ctx, "ledger consumer", consumer.Run)
	wait := func(what string, timeout time.Duration, cond func(context.Context) (bool, error)) error {
		return story.Wait(ctx, timeout, what, func(ctx context.Context) (bool, error) {
			if err := g.Err(); err != nil {
				return false, err
			}
			return cond(ctx)
		})
	}
	s.Say("running   relay (%s) and ledger consumer (inbox/kafka, group %s)", rl.ID(), group)

	// 2. Open the accounts.
	s.Step("Open accounts")
	for _, a := range openingBalances {
		if _, err := pool.Exec(ctx, `INSERT INTO `+app+`.accounts (id, balance_cents) VALUES ($1, $2)`, a.id, a.cents); err != nil {
			return err
		}
		s.Say("%-6s %12s", a.id, story.Money(a.cents))
	}

	// 3. Transfers: the debit, the credit and the event commit together.
	s.Step("Transfers: money and event in one transaction each")
	transfers := []struct {
		id, from, to string
		cents        int64
		note         string
	}{
		{"t-01", "alice", "bob", 12000, ""},
		{"t-02", "bob", "carol", 4500, ""},
		{"t-03", "carol", "dave", 2000, ""},
		{"t-04", "alice", "dave", 30000, ""},
		{"t-05", "carol", "alice", -1500, "a refund typed with the wrong sign: the service does not check it"},
		{"t-06", "carol", "bob", 1000, "same account as t-05: it will wait behind it"},
		{"t-07", "dave", "alice", 5000000, "more than dave has"},
		{"t-08", "bob", "alice", 2500, ""},
		{"t-09", "dave", "carol", 700, ""},
	}
	var committed []uuid.UUID
	for _, t := range transfers {
		id, err := bank.Transfer(ctx, t.id, t.from, t.to, t.cents)
		line := fmt.Sprintf("%s  %-5s -> %-5s %12s  ", t.id, t.from, t.to, story.Money(t.cents))
		switch {
		case errors.Is(err, errInsufficientFunds):
			line += "refused: insufficient funds, rolled back (no event)"
		case err != nil:
			return err
		default:
			committed = append(committed, id)
			line += "committed, event " + id.String()
		}
		if t.note != "" {
			line += "\n" + strings.Repeat(" ", 43) + "(" + t.note + ")"
		}
		s.Say("%s", line)
	}
	var stored int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{cfg.OutboxSchema}.Sanitize()+`.messages WHERE topic = $1`,
		topic).Scan(&stored); err != nil {
		return err
	}
	s.Check(stored == len(committed), "%d transfers committed, %d events stored: the refused transfer left none", len(committed), stored)

	// 4. The relay publishes, the ledger books; the negative amount is parked.
	s.Step("The relay publishes to Kafka, the ledger books through the inbox")
	settled := func(st inbox.Stats) int64 { return st.Applied + st.Parked + st.Blocked }
	if err := wait("the ledger to settle every event", 60*time.Second, func(context.Context) (bool, error) {
		return settled(in.Stats()) >= int64(len(committed)), nil
	}); err != nil {
		return err
	}
	var published int
	if err := wait("the relay to mark every event published", 30*time.Second, func(ctx context.Context) (bool, error) {
		err := pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{cfg.OutboxSchema}.Sanitize()+`.messages
			WHERE topic = $1 AND status = 'published'`, topic).Scan(&published)
		return published >= len(committed), err
	}); err != nil {
		return err
	}
	s.Check(published == len(committed), "relay: %d of %d events acknowledged by Kafka and marked published", published, len(committed))
	st := in.Stats()
	s.Say("inbox outcomes: %d applied, %d parked, %d blocked behind it", st.Applied, st.Parked, st.Blocked)
	s.Check(st.Applied == int64(len(committed)-2) && st.Parked == 1 && st.Blocked == 1,
		"every event settled: t-05 parked (permanent error, no retries), t-06 waits behind it, the rest booked")
	s.Say("what the on-call engineer sees:")
	dlq, err := story.Outboxkit(ctx, cfg.DatabaseURL, cfg.OutboxSchema, cfg.InboxSchema, "dlq", "list", "--kind", "inbox", "--consumer", "ledger")
	if err != nil {
		return err
	}
	s.Say("$ outboxkit dlq list --kind inbox --consumer ledger")
	s.Block(dlq)

	// 5. The fix: the transfer was a refund from alice to carol. The money
	// already moved that way (carol +15.00, alice -15.00); the operator
	// books it as what it was, with a positive amount, and the event
	// waiting behind it follows.
	s.Step("The fix: correct the parked event and redrive it")
	var dlID int64
	var dlPayload []byte
	if err := pool.QueryRow(ctx, `SELECT id, payload FROM `+pgx.Identifier{cfg.InboxSchema}.Sanitize()+`.dead_letters
		WHERE consumer = 'ledger' AND status = 'parked'`).Scan(&dlID, &dlPayload); err != nil {
		return fmt.Errorf("find the parked event: %w", err)
	}
	var t transferCreated
	if err := json.Unmarshal(dlPayload, &t); err != nil {
		return err
	}
	t.From, t.To, t.AmountCents = t.To, t.From, -t.AmountCents
	fixed, err := json.Marshal(t)
	if err != nil {
		return err
	}
	s.Say("dead letter %d, parked payload: %s", dlID, dlPayload)
	s.Say("corrected payload:             %s", fixed)
	if err := in.RedriveEdited(ctx, dlID, fixed, "oncall:jane",
		"PAY-1234: refund entered with the wrong sign; booked as alice -> carol"); err != nil {
		return fmt.Errorf("redrive: %w", err)
	}
	var open, resolved int
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status IN ('parked', 'blocked')),
		count(*) FILTER (WHERE status = 'resolved') FROM `+pgx.Identifier{cfg.InboxSchema}.Sanitize()+`.dead_letters`).
		Scan(&open, &resolved); err != nil {
		return err
	}
	s.Check(open == 0 && resolved == 2, "redriven: t-05 booked as corrected, t-06 followed in order (%d dead letters resolved, %d open)", resolved, open)
	audit, err := story.Outboxkit(ctx, cfg.DatabaseURL, cfg.OutboxSchema, cfg.InboxSchema, "audit", "--since", "10m")
	if err != nil {
		return err
	}
	s.Say("$ outboxkit audit --since 10m")
	s.Block(audit)
	if err := checkLedger(ctx, s, pool, app, len(committed), true); err != nil {
		return err
	}

	// 6. A redelivery: the consumer restarts and Kafka hands it every record
	// again (as after a crash before an offset commit, or an offset reset).
	s.Step("Kafka delivers every event again")
	stopLedger()
	before := in.Stats()
	group2 := group + "-again"
	kafka.ForgetGroupOnClose(group2)
	again, err := inboxkafka.New(in, consumerConfig(kafka.Brokers, topic, group2, cfg))
	if err != nil {
		return err
	}
	stopAgain := g.Start(ctx, "ledger consumer (second group)", again.Run)
	if err := wait("the redelivered events to settle", 60*time.Second, func(context.Context) (bool, error) {
		return in.Stats().Duplicate-before.Duplicate >= int64(len(committed)), nil
	}); err != nil {
		return err
	}
	stopAgain()
	after := in.Stats()
	s.Say("a consumer in a new group read the topic from the start: %d records", after.Duplicate-before.Duplicate)
	s.Check(after.Applied == before.Applied && after.Duplicate-before.Duplicate == int64(len(committed)),
		"all %d were recognised as duplicates (outcome duplicate), none applied again", len(committed))
	if err := checkLedger(ctx, s, pool, app, len(committed), false); err != nil {
		return err
	}

	g.StopAll()
	if err := g.Err(); err != nil {
		return err
	}
	return s.Err()
}

// checkLedger checks that every committed transfer is booked exactly once
// and that the ledger explains every balance.
func checkLedger(ctx context.Context, s *story.Story, pool *pgxpool.Pool, app string, transfers int, show bool) error {
	var booked, wrong int
	if err := pool.QueryRow(ctx, `SELECT count(DISTINCT transfer_id),
		(SELECT count(*) FROM (SELECT 1 FROM `+app+`.ledger_entries GROUP BY transfer_id HAVING count(*) <> 2) x)
		FROM `+app+`.ledger_entries`).Scan(&booked, &wrong); err != nil {
		return err
	}
	s.Check(booked == transfers && wrong == 0, "ledger: %d transfers booked, each exactly once (two entries)", booked)
	rows, err := pool.Query(ctx, `SELECT a.id, a.balance_cents, coalesce(sum(l.amount_cents), 0)
		FROM `+app+`.accounts a LEFT JOIN `+app+`.ledger_entries l ON l.account = a.id
		GROUP BY a.id, a.balance_cents ORDER BY a.id`)
	if err != nil {
		return err
	}
	opening := map[string]int64{}
	for _, a := range openingBalances {
		opening[a.id] = a.cents
	}
	var mismatched []string
	var lines []string
	var id string
	var balance, movements int64
	if _, err := pgx.ForEachRow(rows, []any{&id, &balance, &movements}, func() error {
		lines = append(lines, fmt.Sprintf("%-6s balance %12s = opening %12s + ledger %12s", id,
			story.Money(balance), story.Money(opening[id]), story.Money(movements)))
		if opening[id]+movements != balance {
			mismatched = append(mismatched, id)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, l := range lines {
		if show {
			s.Say("%s", l)
		}
	}
	s.Check(len(mismatched) == 0, "every balance equals its opening balance plus its ledger entries%s", listSuffix(mismatched))
	return nil
}

func listSuffix(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	return " (not: " + strings.Join(ids, ", ") + ")"
}

// install drops the example's schemas, installs the outboxkit tables with
// migrations.Up (as "outboxkit migrate up" does) and creates the bank's
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

func consumerConfig(brokers []string, topic, group string, cfg Config) inboxkafka.Config {
	return inboxkafka.Config{
		Brokers: brokers,
		Topics:  []string{topic},
		GroupID: group,
		// Shorter than the defaults so that the example's joins, commits
		// and stops are quick; the defaults suit production.
		MaxWait:           100 * time.Millisecond,
		CommitInterval:    200 * time.Millisecond,
		HeartbeatInterval: 300 * time.Millisecond,
		SessionTimeout:    6 * time.Second,
		RebalanceTimeout:  5 * time.Second,
		Logger:            cfg.Logger,
	}
}
