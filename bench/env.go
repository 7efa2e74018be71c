package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxkit/outboxkit/migrations"
)

// env is what every scenario shares: the PostgreSQL server (scratch
// databases copied from templates), the Kafka cluster and the RabbitMQ URL.
type env struct {
	opts     *options
	adminURL string
	prefix   string // okbench_<pid>_
	counter  int

	// Templates: migrated and empty; migrated and filled with the workload
	// through outbox.EnqueueBatch; watermill-sql tables filled with the same
	// workload through the watermill forwarder's publisher.
	tplEmpty, tplOutbox, tplWatermill string

	brokers []string
	fake    *kfake.Cluster
	kadm    *kadm.Client
	kcl     *kgo.Client

	rabbitURL string
	created   []string // databases to drop at the end

	// traces keeps the statement tracer of the last relay run of each
	// configuration, for EXPLAIN ANALYZE of its claim and mark.
	traces map[string]*sqlTracer
}

func newEnv(ctx context.Context, o *options) (*env, error) {
	e := &env{opts: o, adminURL: o.databaseURL, rabbitURL: o.rabbitURL,
		prefix: fmt.Sprintf("okbench_%d_", os.Getpid()), traces: map[string]*sqlTracer{}}
	admin, err := e.admin(ctx)
	if err != nil {
		return nil, err
	}
	dropOrphans(ctx, admin)
	admin.Close(ctx)

	if b := os.Getenv("KAFKA_BROKERS"); b != "" {
		e.brokers = strings.Split(b, ",")
	} else {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(o.kafkaPartitions))
		if err != nil {
			return nil, fmt.Errorf("start kfake: %w", err)
		}
		e.fake = c
		e.brokers = c.ListenAddrs()
	}
	e.kcl, err = kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		e.close()
		return nil, err
	}
	e.kadm = kadm.NewClient(e.kcl)
	return e, nil
}

func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if admin, err := e.admin(ctx); err == nil {
		for i := len(e.created) - 1; i >= 0; i-- {
			if e.opts.keep && strings.Contains(e.created[i], "_tpl_") {
				fmt.Fprintf(os.Stderr, "bench: kept database %s\n", e.created[i])
				continue
			}
			admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{e.created[i]}.Sanitize()+" WITH (FORCE)") //nolint:errcheck
		}
		admin.Close(ctx)
	}
	if e.kcl != nil {
		e.kcl.Close()
	}
	if e.fake != nil {
		e.fake.Close()
	}
}

func (e *env) admin(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, e.adminURL)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w (set -database-url or OUTBOXKIT_BENCH_DATABASE_URL)", redact(e.adminURL), err)
	}
	return conn, nil
}

// newDB creates a scratch database as a copy of template (template0 for an
// empty one) and returns its name and URL. It is dropped by dropDB or at the
// end of the run.
func (e *env) newDB(ctx context.Context, template, suffix string) (name, dbURL string, err error) {
	e.counter++
	name = fmt.Sprintf("%s%d_%s", e.prefix, e.counter, suffix)
	admin, err := e.admin(ctx)
	if err != nil {
		return "", "", err
	}
	defer admin.Close(ctx)
	// WAL_LOG (the default) copies through shared buffers and needs no
	// checkpoint: cheap for databases of a few tens of MB.
	q := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	for try := 0; ; try++ {
		_, err = admin.Exec(ctx, q)
		// "source database is being accessed by other users": a pool to the
		// template closed a moment ago.
		if err == nil || try == 20 || !strings.Contains(err.Error(), "being accessed") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return "", "", fmt.Errorf("create database %s: %w", name, err)
	}
	e.created = append(e.created, name)
	return name, withDatabase(e.adminURL, name), nil
}

func (e *env) dropDB(ctx context.Context, name string) {
	admin, err := e.admin(ctx)
	if err != nil {
		return
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err == nil {
		for i, n := range e.created {
			if n == name {
				e.created = append(e.created[:i], e.created[i+1:]...)
				break
			}
		}
	}
}

// pool opens a pool on dbURL with at most conns connections.
func pool(ctx context.Context, dbURL string, conns int32, tracer pgx.QueryTracer, params map[string]string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = conns
	cfg.ConnConfig.Tracer = tracer
	for k, v := range params {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// migrateTemplate creates the empty, migrated template.
func (e *env) migrateTemplate(ctx context.Context) error {
	name, dbURL, err := e.newDB(ctx, "template0", "tpl_empty")
	if err != nil {
		return err
	}
	if err := migrations.Up(ctx, dbURL, &migrations.Config{Partitions: e.opts.partitions}); err != nil {
		return fmt.Errorf("migrate %s: %w", name, err)
	}
	e.tplEmpty = name
	return nil
}

var orphanName = regexp.MustCompile(`^okbench_(\d+)_`)

// dropOrphans drops scratch databases of bench runs whose process is gone.
func dropOrphans(ctx context.Context, admin *pgx.Conn) {
	rows, err := admin.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'okbench\_%'`)
	if err != nil {
		return
	}
	names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	for _, n := range names {
		m := orphanName.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid != os.Getpid() && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize()+" WITH (FORCE)") //nolint:errcheck
		}
	}
}

func withDatabase(u, name string) string {
	p, err := url.Parse(u)
	if err != nil || p.Scheme == "" {
		return u + " dbname=" + name
	}
	p.Path = "/" + name
	return p.String()
}

func redact(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return u
}

// Kafka topics: one fresh topic per measurement, deleted afterwards so the
// in-process broker does not keep every run's records in memory.

func (e *env) createTopic(ctx context.Context, topic string) error {
	// A topic deleted a moment ago may still be going away on a real
	// cluster: retry for a while.
	var err error
	for try := 0; try < 50; try++ {
		var resp kadm.CreateTopicResponse
		resp, err = e.kadm.CreateTopic(ctx, int32(e.opts.kafkaPartitions), -1, nil, topic)
		if err == nil {
			err = resp.Err
		}
		if err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("create Kafka topic %s: %w", topic, err)
}

func (e *env) deleteTopic(ctx context.Context, topic string) {
	e.kadm.DeleteTopics(ctx, topic) //nolint:errcheck // best effort
}

// topicRecords is the number of records in topic (sum of end offsets).
func (e *env) topicRecords(ctx context.Context, topic string) (int64, error) {
	offs, err := e.kadm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, err
	}
	var n int64
	var ferr error
	offs.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			ferr = o.Err
		}
		n += o.Offset
	})
	return n, ferr
}

// RabbitMQ: one durable topic exchange and one durable queue bound to the
// workload's topic, purged before each measurement and deleted at the end.

const (
	rabbitExchange = "okbench"
	rabbitQueue    = "okbench.events"
)

func (e *env) rabbitSetup() (*amqp.Connection, error) {
	conn, err := amqp.Dial(e.rabbitURL)
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %w (set -rabbitmq-url or RABBITMQ_URL)", redact(e.rabbitURL), err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer ch.Close()
	if err := ch.ExchangeDeclare(rabbitExchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		conn.Close()
		return nil, err
	}
	if _, err := ch.QueueDeclare(rabbitQueue, true, false, false, false, nil); err != nil {
		conn.Close()
		return nil, err
	}
	if err := ch.QueueBind(rabbitQueue, benchTopic, rabbitExchange, false, nil); err != nil {
		conn.Close()
		return nil, err
	}
	if _, err := ch.QueuePurge(rabbitQueue, false); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// rabbitQueued returns the queue's message count, then purges it.
func rabbitDrainQueue(conn *amqp.Connection) (int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(rabbitQueue, true, false, false, false, nil)
	if err != nil {
		return 0, err
	}
	_, err = ch.QueuePurge(rabbitQueue, false)
	return q.Messages, err
}

func rabbitTeardown(conn *amqp.Connection) {
	if ch, err := conn.Channel(); err == nil {
		ch.QueueDelete(rabbitQueue, false, false, false) //nolint:errcheck
		ch.ExchangeDelete(rabbitExchange, false, false)  //nolint:errcheck
		ch.Close()
	}
	conn.Close()
}
