package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/ingest"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/internal/safetext"
)

const ingestUsage = `dlq ingest (--rabbitmq-queue Q | --kafka-topic T) [flags]

Copies messages the brokers dead-lettered themselves into inbox.dead_letters,
where dlq list, show, replay, drop and restore handle them like every other
dead letter:

  --rabbitmq-queue Q   a queue bound to a dead-letter exchange (x-death headers
                       say why and where from)
  --kafka-topic T      a dead-letter topic (Spring Kafka kafka_dlt-*, Kafka
                       Connect __connect.errors.* or outboxkit-dlt-* headers)

Each message becomes one row whose consumer is --source (default rabbitmq:Q or
kafka:T). A message is acknowledged (RabbitMQ ack, Kafka offset commit) only
after its row is committed; one ingested before is acknowledged without a
second row. --once drains what is there and exits (cron, tests); otherwise it
runs until SIGTERM or SIGINT. Run it as a login role with the consumer role's
privileges.`

func runDLQIngest(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "dlq ingest", ingestUsage)
	var db dbFlags
	db.register(fs, env)
	var brokers brokerConnFlags
	brokers.register(fs, env)
	var logs logFlags
	logs.register(fs, env)
	queue := fs.String("rabbitmq-queue", env.Getenv("OUTBOXKIT_INGEST_RABBITMQ_QUEUE"), "RabbitMQ dead-letter queue to ingest ($OUTBOXKIT_INGEST_RABBITMQ_QUEUE)")
	topic := fs.String("kafka-topic", env.Getenv("OUTBOXKIT_INGEST_KAFKA_TOPIC"), "Kafka dead-letter topic to ingest ($OUTBOXKIT_INGEST_KAFKA_TOPIC)")
	group := fs.String("kafka-group", env.Getenv("OUTBOXKIT_INGEST_KAFKA_GROUP"), "Kafka consumer group that records what was ingested (default outboxkit-ingest-<topic>; $OUTBOXKIT_INGEST_KAFKA_GROUP)")
	source := fs.String("source", env.Getenv("OUTBOXKIT_INGEST_SOURCE"), "consumer name stored on the rows, to filter by (default rabbitmq:<queue> or kafka:<topic>; $OUTBOXKIT_INGEST_SOURCE)")
	once := fs.Bool("once", false, "ingest what is there now, then exit")
	prefetch := fs.Int("prefetch", ingest.PrefetchDefault, "RabbitMQ: most unacknowledged messages in flight")
	asJSON := fs.Bool("json", false, "print the counts as JSON when done")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("unexpected argument %q", pos[0])
	}
	if (*queue == "") == (*topic == "") {
		return usageError("pass one of --rabbitmq-queue or --kafka-topic (run one ingest per dead-letter queue or topic)")
	}
	logger, err := newLogger(env, logs.format, logs.level)
	if err != nil {
		return err
	}
	url, err := db.databaseURL(env)
	if err != nil {
		return err
	}
	poolCfg, err := pgutil.ParsePoolConfig(url)
	if err != nil {
		return err
	}
	poolCfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL at %s: %w", pgutil.Redact(url), err)
	}
	defer pool.Close()
	store, err := ingest.NewStore(pool, db.outboxSchema, db.inboxSchema)
	if err != nil {
		return usageError("%v", err)
	}
	defer brokers.closeTransports()
	var res ingest.Result
	if *queue != "" {
		conn, err := brokers.rabbitConn(env)
		if err != nil {
			return err
		}
		res, err = store.IngestRabbitMQ(ctx, ingest.RabbitMQConfig{RabbitMQConn: *conn, Queue: *queue, Source: *source,
			Once: *once, Prefetch: *prefetch, Logger: logger})
		if err != nil {
			return ingestError(err, res)
		}
	} else {
		conn, err := brokers.kafkaConn(env)
		if err != nil {
			return err
		}
		res, err = store.IngestKafka(ctx, ingest.KafkaConfig{KafkaConn: *conn, Topic: *topic, Group: *group, Source: *source,
			Once: *once, Logger: logger})
		if err != nil {
			return ingestError(err, res)
		}
	}
	logger.Info("ingest: done", slog.Int("ingested", res.Ingested), slog.Int("duplicates", res.Duplicates))
	if *asJSON {
		return printJSON(env.Stdout, res)
	}
	fmt.Fprintf(env.Stdout, "ingested %d dead letters (%d ingested before)\n", res.Ingested, res.Duplicates)
	return nil
}

func ingestError(err error, res ingest.Result) error {
	if errors.Is(err, ingest.ErrSourceInUse) {
		return usageError("%v", err)
	}
	return fmt.Errorf("%w (ingested %d before it stopped; what was not acknowledged stays in the broker: run again)", err, res.Ingested)
}

// rabbitConn is the RabbitMQ connection of the flags, or an error saying
// which flag is missing.
func (b *brokerConnFlags) rabbitConn(env *Env) (*ingest.RabbitMQConn, error) {
	u, err := b.rabbitmqURL(env)
	if err != nil {
		return nil, err
	}
	if u == "" {
		return nil, usageError("no RabbitMQ: pass --rabbitmq-url or set RABBITMQ_URL (or RABBITMQ_URL_FILE)")
	}
	c := &ingest.RabbitMQConn{URL: u}
	if !b.rabbitTLSFiles.Empty() {
		if c.TLS, err = b.rabbitTLSFiles.Config(); err != nil {
			return nil, usageError("rabbitmq: %v", err)
		}
	}
	return c, nil
}

func (b *brokerConnFlags) kafkaConn(env *Env) (*ingest.KafkaConn, error) {
	brokers := b.kafkaBrokerList()
	if len(brokers) == 0 {
		return nil, usageError("no Kafka: pass --kafka-brokers or set KAFKA_BROKERS")
	}
	t, err := b.kafkaTransport(env)
	if err != nil {
		return nil, err
	}
	return &ingest.KafkaConn{Brokers: brokers, Transport: t}, nil
}

// ingestedAction runs replay, drop or restore on an inbox dead letter that
// dlq ingest copied from a broker: such a row has no consumer to ask, so
// the action is done here (replay republishes to the broker it came from).
// handled is false for a consumer's own dead letter, which the caller
// dispatches as usual.
func ingestedAction(ctx context.Context, env *Env, o *opsFlags, verb string, a ops.Action, ref ops.Ref) (out ops.Outcome, handled bool, err error) {
	if ref.Kind != ops.KindInbox {
		return out, false, nil
	}
	store, err := ingest.NewStore(o.pool, o.db.outboxSchema, o.db.inboxSchema)
	if err != nil {
		return out, true, usageError("%v", err)
	}
	from, err := store.Origin(ctx, ref.ID)
	if err != nil || from == "" {
		return out, false, nil // not found or a consumer's own: the usual path says so
	}
	ia := ingest.Action{Actor: a.Actor, Reason: a.Reason}
	out = ops.Outcome{Ref: ref}
	switch verb {
	case "replay":
		var b ingest.Brokers
		switch from {
		case ingest.FromRabbitMQ:
			if b.RabbitMQ, err = o.brokers.rabbitConn(env); err != nil {
				return out, true, err
			}
		case ingest.FromKafka:
			defer o.brokers.closeTransports()
			if b.Kafka, err = o.brokers.kafkaConn(env); err != nil {
				return out, true, err
			}
		}
		out.Result = "replayed"
		out.Note, err = store.Replay(ctx, ia, ref.ID, b)
	case "drop":
		out.Result = "dropped"
		err = store.Drop(ctx, ia, ref.ID)
	case "restore":
		out.Result = "restored"
		err = store.Restore(ctx, ia, ref.ID)
	case "edit":
		err = fmt.Errorf("%s was ingested from %s: edit is not supported for broker dead letters; replay it, or drop it and publish a corrected message", ref, from)
	default:
		return out, false, nil
	}
	return out, true, err
}

// printOrigin shows where an ingested dead letter came from, one fact a
// line, and each x-death entry on its own line.
func printOrigin(out io.Writer, origin map[string]any) {
	if len(origin) == 0 {
		return
	}
	fmt.Fprintln(out, "broker origin")
	keys := make([]string, 0, len(origin))
	for k := range origin {
		if k != "x_death" && k != "binding" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		b, _ := json.Marshal(origin[k])
		v := string(b)
		if s, ok := origin[k].(string); ok {
			v = s
		}
		fmt.Fprintf(out, "  %s: %s\n", safetext.Escape(strings.ReplaceAll(k, "_", " ")), safetext.Escape(v))
	}
	if deaths, ok := origin["x_death"].([]any); ok {
		fmt.Fprintln(out, "x-death (most recent first)")
		for _, d := range deaths {
			b, _ := json.Marshal(d)
			fmt.Fprintf(out, "  %s\n", safetext.Escape(string(b)))
		}
	}
}
