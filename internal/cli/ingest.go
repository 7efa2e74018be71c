package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/outboxkit/outboxkit/internal/ingest"
	"github.com/outboxkit/outboxkit/internal/safetext"
)

const ingestUsage = `dlq ingest (--rabbitmq-queue Q | --kafka-topic T) [flags]

Copies messages the brokers dead-lettered themselves into inbox.dead_letters,
where dlq list, show, replay, redrive, edit, drop and restore handle them
like every other dead letter (replay, redrive and edit send them back to the
broker they came from, and take the same broker flags):

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
	pool, err := db.openPool(ctx, env, fixedConns(2))
	if err != nil {
		return err
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
		if conn == nil {
			return usageError("no RabbitMQ: pass --rabbitmq-url or set RABBITMQ_URL (or RABBITMQ_URL_FILE)")
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
		if conn == nil {
			return usageError("no Kafka: pass --kafka-brokers or set KAFKA_BROKERS")
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

// rabbitConn is the RabbitMQ connection of the flags, nil when they name
// none.
func (b *brokerConnFlags) rabbitConn(env *Env) (*ingest.RabbitMQConn, error) {
	u, err := b.rabbitmqURL(env)
	if err != nil || u == "" {
		return nil, err
	}
	c := &ingest.RabbitMQConn{URL: u}
	if !b.rabbitTLSFiles.Empty() {
		if c.TLS, err = b.rabbitTLSFiles.Config(); err != nil {
			return nil, usageError("rabbitmq: %v", err)
		}
	}
	return c, nil
}

// kafkaConn is the Kafka connection of the flags, nil when they name none.
// Its transport is always one of the flags' own (closeTransports closes
// it), never kafka-go's process-wide default, whose connections nobody
// closes.
func (b *brokerConnFlags) kafkaConn(env *Env) (*ingest.KafkaConn, error) {
	brokers := b.kafkaBrokerList()
	if len(brokers) == 0 {
		return nil, nil
	}
	t, err := b.kafkaTransport(env)
	if err != nil {
		return nil, err
	}
	if t == nil {
		t = &kafkago.Transport{ClientID: "outboxkit"}
		b.transports = append(b.transports, t)
	}
	return &ingest.KafkaConn{Brokers: brokers, Transport: t}, nil
}

// republisher sends broker dead letters (dlq ingest) back to the brokers
// the flags name; one the flags leave out is not configured, and replaying
// its dead letters fails with an error naming the flag (ops.NoBrokerError).
// The caller closes the Kafka transport (closeTransports).
func (b *brokerConnFlags) republisher(env *Env) (*ingest.Republisher, error) {
	r := &ingest.Republisher{}
	var err error
	if r.RabbitMQ, err = b.rabbitConn(env); err != nil {
		return nil, err
	}
	if r.Kafka, err = b.kafkaConn(env); err != nil {
		return nil, err
	}
	for _, name := range strings.Split(b.replayAllow, ",") {
		if name = strings.TrimSpace(name); name != "" {
			r.Allow = append(r.Allow, name)
		}
	}
	if b.replayAllow != "" && len(r.Allow) == 0 {
		// An empty allowlist allows every destination: a list that was
		// meant to restrict them and names none must not do that.
		return nil, usageError("--replay-allow (or OUTBOXKIT_REPLAY_ALLOW) is set to %q, which names no queue or topic: "+
			"list the destinations, comma-separated, or leave it unset to allow any", b.replayAllow)
	}
	r.KafkaRetryTopic = strings.TrimSpace(b.kafkaRetryTopic)
	return r, nil
}

// registerReplay registers the flags that bound where broker dead letters
// go, for the commands that send them.
func (b *brokerConnFlags) registerReplay(fs *flag.FlagSet, env *Env) {
	fs.StringVar(&b.replayAllow, "replay-allow", env.Getenv("OUTBOXKIT_REPLAY_ALLOW"),
		"comma-separated RabbitMQ queues and Kafka topics broker dead letters may be sent to; any other is refused, and a list naming none is bad usage "+
			"(the destination comes from the message's own headers, which whoever can publish into the DLQ can forge) ($OUTBOXKIT_REPLAY_ALLOW)")
	fs.StringVar(&b.kafkaRetryTopic, "kafka-retry-topic", env.Getenv("OUTBOXKIT_KAFKA_RETRY_TOPIC"),
		"topic the corrected copy of an edited Kafka dead letter goes to, read only by the consumer that failed; without it such edits are refused ($OUTBOXKIT_KAFKA_RETRY_TOPIC)")
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
