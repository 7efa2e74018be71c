package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

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

const consumerName = "merchant-reporting"

// payout is one payout of the story and the payouts-service instance
// (schema version) that writes it.
type payout struct {
	id, merchant string
	version      int
	cents        int64
}

// run tells the whole story and returns an error unless every check holds.
// Everything it starts is stopped before it returns.
func run(ctx context.Context, out io.Writer, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	s := story.New(out)
	s.Title("redrive: a consumer breaks on event version 2, is fixed, and its dead letters are redriven")

	// 1. Install.
	s.Step("Install")
	pool, err := install(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	app := pgx.Identifier{cfg.AppSchema}.Sanitize()
	inboxSchema := pgx.Identifier{cfg.InboxSchema}.Sanitize()
	s.Say("database  %s", story.Redact(cfg.DatabaseURL))
	s.Say("schemas   %s (outbox), %s (inbox), %s (payouts, payout_report)", cfg.OutboxSchema, cfg.InboxSchema, cfg.AppSchema)
	kafka, err := localkafka.Start(cfg.KafkaBrokers)
	if err != nil {
		return err
	}
	defer kafka.Close(context.WithoutCancel(ctx)) //nolint:errcheck // best effort: a real Kafka keeps a stray topic
	runID := strings.ReplaceAll(time.Now().UTC().Format("20060102t150405.000000"), ".", "")
	topic := "example.redrive.payouts." + runID
	if err := kafka.CreateTopic(ctx, topic, 4); err != nil {
		return err
	}
	s.Say("kafka     %s", kafka.Describe())
	s.Say("topic     %s", topic)

	w, err := outbox.NewWriter(&outbox.Config{Schema: cfg.OutboxSchema, Source: "/examples/redrive/payouts"})
	if err != nil {
		return err
	}
	producer := &payouts{pool: pool, outbox: w, app: app, topic: topic}
	pub, err := relaykafka.New(relaykafka.Config{Brokers: kafka.Brokers, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	defer pub.Close()
	rl, err := relay.New(pool, &relay.Config{Publisher: pub, Schema: cfg.OutboxSchema, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	var g story.Workers
	defer g.StopAll()
	g.Start(ctx, "relay", rl.Run)
	wait := func(what string, cond func(context.Context) (bool, error)) error {
		return story.Wait(ctx, 60*time.Second, what, func(ctx context.Context) (bool, error) {
			if err := g.Err(); err != nil {
				return false, err
			}
			return cond(ctx)
		})
	}
	group := "example-redrive-reporting-" + runID
	kafka.ForgetGroupOnClose(group)
	// deploy starts a release of the reporting consumer: a new Inbox with
	// that release's handlers, on the same consumer name and Kafka group
	// (so it takes over where the previous release stopped).
	deploy := func(release string, register func(*inbox.Inbox, *reporting)) (*inbox.Inbox, func(), error) {
		in, err := inbox.New(pool, &inbox.Config{Consumer: consumerName, ConsumerVersion: release,
			Schema: cfg.InboxSchema, OutboxSchema: cfg.OutboxSchema, Logger: cfg.Logger})
		if err != nil {
			return nil, nil, err
		}
		register(in, &reporting{app: app, version: release})
		c, err := inboxkafka.New(in, inboxkafka.Config{Brokers: kafka.Brokers, Topics: []string{topic}, GroupID: group,
			// Shorter than the defaults so that the example's joins,
			// commits and stops are quick.
			MaxWait: 100 * time.Millisecond, CommitInterval: 200 * time.Millisecond,
			HeartbeatInterval: 300 * time.Millisecond, SessionTimeout: 6 * time.Second, RebalanceTimeout: 5 * time.Second,
			Logger: cfg.Logger})
		if err != nil {
			return nil, nil, err
		}
		return in, g.Start(ctx, "reporting "+release, c.Run), nil
	}
	committed := 0
	create := func(ps []payout, note func(payout) string) error {
		for _, p := range ps {
			id, err := producer.Create(ctx, p.version, p.id, p.merchant, p.cents)
			if err != nil {
				return err
			}
			committed++
			s.Say("%s  %-5s %11s  payout.created v%d  event %s%s", p.id, p.merchant, story.Money(p.cents), p.version, id, note(p))
		}
		return nil
	}
	settled := func(in *inbox.Inbox, n int) func(context.Context) (bool, error) {
		return func(context.Context) (bool, error) {
			st := in.Stats()
			return st.Applied+st.Parked+st.Blocked >= int64(n), nil
		}
	}
	count := func(query string, args ...any) (n int, err error) {
		err = pool.QueryRow(ctx, query, args...).Scan(&n)
		return n, err
	}

	// 2. Release 1.4.0 knows version 1.
	s.Step("Reporting 1.4.0 (handles payout.created v1) applies the first payouts")
	v14, stopV14, err := deploy("1.4.0", func(in *inbox.Inbox, r *reporting) {
		in.Register("payout.created", 1, r.applyV1)
	})
	if err != nil {
		return err
	}
	none := func(payout) string { return "" }
	if err := create([]payout{
		{"p-01", "acme", 1, 120000}, {"p-02", "bolt", 1, 45050}, {"p-03", "cafe", 1, 9900}, {"p-04", "dune", 1, 31000},
	}, none); err != nil {
		return err
	}
	if err := wait("the first payouts to be applied", settled(v14, committed)); err != nil {
		return err
	}
	s.Check(v14.Stats().Applied == int64(committed), "%d applied", v14.Stats().Applied)

	// 3. The producer's rolling deploy: new instances write v2, old ones v1.
	s.Step("The payouts service rolls out 2.0 (writes v2: amount_cents renamed amount_minor); old instances still write v1")
	firstWave := committed
	if err := create([]payout{
		{"p-05", "acme", 2, 50000}, {"p-06", "bolt", 1, 12000}, {"p-07", "cafe", 2, 7500}, {"p-08", "acme", 1, 20000},
		{"p-09", "dune", 1, 4000}, {"p-10", "bolt", 2, 66000}, {"p-11", "acme", 2, 15500}, {"p-12", "cafe", 1, 2500},
		{"p-13", "dune", 1, 8000}, {"p-14", "bolt", 1, 30000},
	}, func(p payout) string {
		if p.version == 2 {
			return "  (new instance)"
		}
		return ""
	}); err != nil {
		return err
	}
	if err := wait("the rollout's payouts to settle", settled(v14, committed)); err != nil {
		return err
	}
	st := v14.Stats()
	s.Say("reporting 1.4.0: %d applied, %d parked, %d blocked behind a parked event of their merchant",
		st.Applied-int64(firstWave), st.Parked, st.Blocked)
	s.Check(st.Parked == 3 && st.Blocked == 4,
		"the first v2 event of acme, bolt and cafe is parked (no_handler); their later events wait, v1 or not; dune flows")
	dlq, err := story.Outboxkit(ctx, cfg.DatabaseURL, cfg.OutboxSchema, cfg.InboxSchema, "dlq", "list", "--kind", "inbox", "--consumer", consumerName)
	if err != nil {
		return err
	}
	s.Say("$ outboxkit dlq list --kind inbox --consumer %s", consumerName)
	s.Block(dlq)

	// 4. The fix.
	s.Step("Reporting 1.5.0: a v2 handler, and an upcaster v1 -> v2 so that one handler serves both")
	stopV14()
	v15, _, err := deploy("1.5.0", func(in *inbox.Inbox, r *reporting) {
		in.Register("payout.created", 2, r.applyV2)
		in.RegisterUpcaster("payout.created", 1, upcastV1)
	})
	if err != nil {
		return err
	}
	beforeNew := committed
	if err := create([]payout{{"p-15", "dune", 2, 11000}, {"p-16", "acme", 2, 9000}}, func(p payout) string {
		if p.merchant == "acme" {
			return "  (acme is still held: it waits)"
		}
		return ""
	}); err != nil {
		return err
	}
	if err := wait("the new payouts to settle", settled(v15, committed-beforeNew)); err != nil {
		return err
	}
	st = v15.Stats()
	s.Check(st.Applied == 1 && st.Blocked == 1, "p-15 (dune) applied by 1.5.0 at once; p-16 joins acme's queue behind the parked p-05")

	// 5. The redrive, head by head; what waited behind each head follows.
	s.Step("Redrive the parked events with release 1.5.0")
	rows, err := pool.Query(ctx, `SELECT id, key, sequence, version FROM `+inboxSchema+`.dead_letters
		WHERE consumer = $1 AND status = 'parked' ORDER BY id`, consumerName)
	if err != nil {
		return err
	}
	type parked struct {
		id       int64
		merchant string
		seq      int64
		version  int
	}
	heads, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (parked, error) {
		var p parked
		return p, r.Scan(&p.id, &p.merchant, &p.seq, &p.version)
	})
	if err != nil {
		return err
	}
	for _, h := range heads {
		waiting, err := count(`SELECT count(*) FROM `+inboxSchema+`.dead_letters WHERE blocked_by = $1 AND status = 'blocked'`, h.id)
		if err != nil {
			return err
		}
		if err := v15.Redrive(ctx, h.id, "oncall:sam", "reporting 1.5.0 handles payout.created v2 (INC-812)"); err != nil {
			return fmt.Errorf("redrive dead letter %d: %w", h.id, err)
		}
		s.Say("i:%d  %s #%d (v%d) applied; %s of %s that waited behind it followed, in order",
			h.id, h.merchant, h.seq, h.version, plural(waiting, "event"), h.merchant)
	}
	open, err := count(`SELECT count(*) FROM `+inboxSchema+`.dead_letters WHERE consumer = $1 AND status IN ('parked', 'blocked')`, consumerName)
	if err != nil {
		return err
	}
	s.Check(len(heads) == 3 && open == 0, "%d heads redriven, %d dead letters open", len(heads), open)
	if err := checkReport(ctx, s, pool, app, committed, true); err != nil {
		return err
	}

	// 6. To be sure nothing was missed, replay everything to this consumer.
	s.Step("Replay the whole topic to %s, to be sure", consumerName)
	base := v15.Stats()
	replayArgs := []string{"replay", "--topic", topic, "--from", "1h", "--consumer", consumerName,
		"--actor", "oncall:sam", "--reason", "INC-812: make sure reporting has every payout"}
	replayed, err := story.Outboxkit(ctx, cfg.DatabaseURL, cfg.OutboxSchema, cfg.InboxSchema, replayArgs...)
	if err != nil {
		return err
	}
	s.Say("$ outboxkit %s", strings.Join(quoteArgs(replayArgs), " "))
	s.Block(replayed)
	if err := wait("the replayed events to settle", func(context.Context) (bool, error) {
		st := v15.Stats()
		return st.Applied+st.Duplicate+st.Parked+st.Blocked+st.AlreadyParked-
			(base.Applied+base.Duplicate+base.Parked+base.Blocked+base.AlreadyParked) >= int64(committed), nil
	}); err != nil {
		return err
	}
	st = v15.Stats()
	s.Say("inbox outcomes of the replay: %d duplicate, %d applied, %d parked",
		st.Duplicate-base.Duplicate, st.Applied-base.Applied, st.Parked-base.Parked)
	s.Check(st.Duplicate-base.Duplicate == int64(committed) && st.Applied == base.Applied,
		"all %d replayed events were no-ops: the inbox had recorded each one", committed)
	if err := checkReport(ctx, s, pool, app, committed, false); err != nil {
		return err
	}

	g.StopAll()
	if err := g.Err(); err != nil {
		return err
	}
	return s.Err()
}

// checkReport checks that the report has every payout exactly once, with
// the producer's amount.
func checkReport(ctx context.Context, s *story.Story, pool *pgxpool.Pool, app string, payouts int, show bool) error {
	var rows, distinct, wrong, v1, v2, by14, by15 int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT r.payout_id),
		count(*) FILTER (WHERE p.id IS NULL OR p.amount_cents <> r.amount_minor OR p.merchant <> r.merchant),
		count(*) FILTER (WHERE r.received_version = 1), count(*) FILTER (WHERE r.received_version = 2),
		count(*) FILTER (WHERE r.consumer_version = '1.4.0'), count(*) FILTER (WHERE r.consumer_version = '1.5.0')
		FROM `+app+`.payout_report r LEFT JOIN `+app+`.payouts p ON p.id = r.payout_id`).
		Scan(&rows, &distinct, &wrong, &v1, &v2, &by14, &by15); err != nil {
		return err
	}
	if show {
		s.Say("report: %d rows; received as v1: %d, as v2: %d; applied by 1.4.0: %d, by 1.5.0: %d", rows, v1, v2, by14, by15)
	}
	s.Check(rows == payouts && distinct == payouts && wrong == 0,
		"report: each of the %d payouts exactly once, with the producer's merchant and amount", payouts)
	return nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " :") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return out
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
