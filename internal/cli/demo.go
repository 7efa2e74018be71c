package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/migrations"
	"github.com/outboxkit/outboxkit/outbox"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

const demoUsage = `demo [flags]

Shows the whole flow on your machine in under a minute: installs the
outboxkit tables in their own schemas (outboxkit_demo, outboxkit_demo_inbox),
starts an embedded Kafka-protocol broker (unless KAFKA_BROKERS is set),
commits transfers and their events in one transaction each, relays them to
Kafka, reads them back and checks that every event arrived in per-key order.`

// demoDefaultDatabaseURL is the local PostgreSQL of a developer machine.
const demoDefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

const (
	demoSchema      = "outboxkit_demo"
	demoInboxSchema = "outboxkit_demo_inbox"
	demoTopic       = "payments"
)

func runDemo(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "demo", demoUsage)
	dbURL := fs.String("database-url", "", "PostgreSQL connection string (default $DATABASE_URL, else "+demoDefaultDatabaseURL+")")
	kafkaBrokers := fs.String("kafka-brokers", env.Getenv("KAFKA_BROKERS"), "real Kafka brokers instead of the embedded one ($KAFKA_BROKERS)")
	events := fs.Int("events", 10000, "transfers to commit")
	keys := fs.Int("keys", 1000, "accounts (ordering keys)")
	producers := fs.Int("producers", 4, "concurrent producer connections")
	rate := fs.Int("rate", 0, "target transfers per second (0: as fast as possible)")
	verbose := fs.Bool("v", false, "show the relay's logs")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("unexpected argument %q", pos[0])
	}
	if *events < 1 || *keys < 1 || *producers < 1 || *rate < 0 {
		return usageError("--events, --keys and --producers must be positive, --rate not negative")
	}
	url := *dbURL
	if url == "" {
		url = envOr(env, "DATABASE_URL", demoDefaultDatabaseURL)
	}
	out := env.Stdout
	logLevel := slog.LevelWarn
	if *verbose {
		logLevel = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: logLevel}))

	fmt.Fprintf(out, "outboxkit demo\n  database  %s (schema %s)\n", pgutil.Redact(url), demoSchema)
	if err := migrations.Up(ctx, url, &migrations.Config{OutboxSchema: demoSchema, InboxSchema: demoInboxSchema, Partitions: 16, Logger: logger}); err != nil {
		return fmt.Errorf("install the demo tables: %w (is PostgreSQL running? pass --database-url)", err)
	}
	poolCfg, err := pgutil.ParsePoolConfig(url)
	if err != nil {
		return err
	}
	poolCfg.MaxConns = int32(*producers) + 8
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+pgutil.Ident(demoSchema, "demo_transfers")+` (
		id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account text NOT NULL, amount_cents bigint NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}

	brokers := splitList(*kafkaBrokers)
	if len(brokers) == 0 {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(8), kfake.AllowAutoTopicCreation())
		if err != nil {
			return fmt.Errorf("start the embedded Kafka broker: %w", err)
		}
		defer cluster.Close()
		brokers = cluster.ListenAddrs()
		fmt.Fprintf(out, "  kafka     embedded broker at %s\n", strings.Join(brokers, ","))
	} else {
		fmt.Fprintf(out, "  kafka     %s\n", strings.Join(brokers, ","))
	}
	topic := demoTopic + "." + strconv.FormatInt(time.Now().Unix(), 10)
	if err := createTopic(ctx, brokers, topic, 8); err != nil {
		return err
	}
	fmt.Fprintf(out, "  topic     %s\n  workload  %d transfers on %d accounts, %d producers\n\n", topic, *events, *keys, *producers)

	pub, err := kafka.New(kafka.Config{Brokers: brokers, Source: "/outboxkit/demo", Logger: logger})
	if err != nil {
		return err
	}
	defer pub.Close()
	rl, err := relay.New(pool, &relay.Config{Publisher: pub, Schema: demoSchema, Logger: logger, LeaseTTL: 5 * time.Second, Version: Version})
	if err != nil {
		return err
	}
	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var wg sync.WaitGroup
	var relayErr error
	wg.Go(func() { relayErr = rl.Run(runCtx) })

	consumed := &demoConsumer{want: map[uuid.UUID]bool{}, lastSeq: map[string]int64{}}
	consumerErr := make(chan error, 1)
	wg.Go(func() { consumerErr <- consumed.run(runCtx, brokers, topic) })

	start := time.Now()
	var enqueued atomic.Int64
	prodErr := make(chan error, *producers)
	var prodWG sync.WaitGroup
	w, err := outbox.NewWriter(&outbox.Config{Schema: demoSchema, Source: "/outboxkit/demo"})
	if err != nil {
		return err
	}
	for p := 0; p < *producers; p++ {
		prodWG.Go(func() {
			prodErr <- produceDemo(runCtx, pool, w, consumed, &enqueued, topic, p, *producers, *events, *keys, *rate)
		})
	}
	prodDone := make(chan struct{})
	go func() { prodWG.Wait(); close(prodDone) }()

	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Minute)
	producing := true
	for done := false; !done; {
		select {
		case <-ctx.Done():
			stopAll()
			wg.Wait()
			return ctx.Err()
		case <-prodDone:
			if producing {
				producing = false
				for range *producers {
					if err := <-prodErr; err != nil {
						stopAll()
						wg.Wait()
						return fmt.Errorf("producer: %w", err)
					}
				}
			}
		case err := <-consumerErr:
			stopAll()
			wg.Wait()
			return fmt.Errorf("consumer: %w", err)
		case <-deadline:
			stopAll()
			wg.Wait()
			return errors.New("demo did not finish within 5 minutes: run with -v to see the relay's logs")
		case <-tick.C:
			progress(out, pool, time.Since(start), enqueued.Load(), consumed)
			done = !producing && consumed.count() >= int64(*events)
		}
	}
	elapsed := time.Since(start)
	stopAll()
	wg.Wait()
	if relayErr != nil {
		return relayErr
	}
	return summary(ctx, out, pool, elapsed, int64(*events), consumed)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func createTopic(ctx context.Context, brokers []string, topic string, partitions int32) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	resp, err := kadm.NewClient(cl).CreateTopic(ctx, partitions, -1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("create Kafka topic %s: %w", topic, err)
	}
	return nil
}

// produceDemo commits this producer's share of the transfers: a business row
// and its event in one transaction each.
func produceDemo(ctx context.Context, pool *pgxpool.Pool, w *outbox.Writer, c *demoConsumer, enqueued *atomic.Int64,
	topic string, p, producers, events, keys, rate int) error {
	insert := `INSERT INTO ` + pgutil.Ident(demoSchema, "demo_transfers") + ` (account, amount_cents) VALUES ($1, $2)`
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(producers) / float64(rate))
	}
	next := time.Now()
	for i := p; i < events; i += producers {
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		}
		account := fmt.Sprintf("acct-%04d", rand.IntN(keys))
		amount := 100 + rand.Int64N(100000)
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, insert, account, amount); err != nil {
			tx.Rollback(ctx)
			return err
		}
		id, err := w.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: account, Type: "transfer.created",
			Payload: fmt.Appendf(nil, `{"account":%q,"amount_cents":%d,"currency":"EUR"}`, account, amount)})
		if err != nil {
			tx.Rollback(ctx)
			return err
		}
		c.expect(id)
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		enqueued.Add(1)
	}
	return nil
}

// demoConsumer reads the topic back and checks per-key order.
type demoConsumer struct {
	mu         sync.Mutex
	want       map[uuid.UUID]bool // true once received
	received   int64
	duplicates int64
	lastSeq    map[string]int64
	disorder   int64
}

func (c *demoConsumer) expect(id uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.want[id]; !ok {
		c.want[id] = false
	}
}

func (c *demoConsumer) count() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.received
}

func (c *demoConsumer) run(ctx context.Context, brokers []string, topic string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		fetches.EachRecord(func(r *kgo.Record) {
			var id uuid.UUID
			var seq int64
			for _, h := range r.Headers {
				switch h.Key {
				case "ce_id":
					id, _ = uuid.Parse(string(h.Value))
				case "ce_sequence":
					seq, _ = strconv.ParseInt(string(h.Value), 10, 64)
				}
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			if got, ok := c.want[id]; ok && got {
				c.duplicates++
				return
			}
			c.want[id] = true
			c.received++
			// Each run has its own topic, so every account's lane starts at
			// 1: the first copy of each event must come in 1, 2, 3... order.
			key := string(r.Key)
			if seq != c.lastSeq[key]+1 {
				c.disorder++
			}
			c.lastSeq[key] = seq
		})
	}
}

func progress(out io.Writer, pool *pgxpool.Pool, elapsed time.Duration, enqueued int64, c *demoConsumer) {
	var pending, published int64
	_ = pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE status = 'pending'),
		count(*) FILTER (WHERE status = 'published') FROM `+pgutil.Ident(demoSchema, "messages")+
		` WHERE created_at > now() - interval '10 minutes'`).Scan(&pending, &published)
	got := c.count()
	fmt.Fprintf(out, "  %5.1fs  committed %6d   pending %6d   consumed %6d   %6.0f events/s\n",
		elapsed.Seconds(), enqueued, pending, got, float64(got)/elapsed.Seconds())
}

func summary(ctx context.Context, out io.Writer, pool *pgxpool.Pool, elapsed time.Duration, events int64, c *demoConsumer) error {
	var p50, p99 float64
	err := pool.QueryRow(ctx, `SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0),
		       coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0)
		  FROM (SELECT extract(epoch FROM published_at - created_at) * 1000 AS ms
		          FROM `+pgutil.Ident(demoSchema, "messages")+`
		         WHERE status = 'published' AND published_at > now() - $1::interval) t`, elapsed+time.Second).Scan(&p50, &p99)
	if err != nil {
		return err
	}
	c.mu.Lock()
	missing := int64(0)
	for _, got := range c.want {
		if !got {
			missing++
		}
	}
	received, dups, disorder := c.received, c.duplicates, c.disorder
	c.mu.Unlock()
	fmt.Fprintf(out, "\nsummary\n")
	fmt.Fprintf(out, "  committed          %d transfers, each with its event in the same transaction\n", events)
	fmt.Fprintf(out, "  consumed           %d events from Kafka (%d duplicates, %d missing)\n", received, dups, missing)
	fmt.Fprintf(out, "  per-key order      %s\n", map[bool]string{true: "held for every account", false: fmt.Sprintf("VIOLATED %d times", disorder)}[disorder == 0])
	fmt.Fprintf(out, "  throughput         %.0f events/s end to end (%.1fs)\n", float64(received)/elapsed.Seconds(), elapsed.Seconds())
	fmt.Fprintf(out, "  commit to ack      p50 %.1f ms, p99 %.1f ms (includes the backlog while producing at full speed)\n", p50, p99)
	fmt.Fprintf(out, "\nNext: see README.md to use outboxkit in your service. The demo tables are in schema %s (outboxkit migrate down --all --outbox-schema %s --inbox-schema %s removes them).\n",
		demoSchema, demoSchema, demoInboxSchema)
	if missing > 0 || disorder > 0 {
		return fmt.Errorf("demo found %d missing events and %d order violations: please report this", missing, disorder)
	}
	return nil
}
