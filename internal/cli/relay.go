package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
	"github.com/outboxkit/outboxkit/relay/rabbitmq"
)

const relayUsage = `relay [flags]

Publishes committed outbox events to Kafka and/or RabbitMQ until SIGTERM or
SIGINT, then finishes the batch in flight, releases its partition leases and
exits. Run as many as you like: they share the partitions.

With one broker configured every topic goes there. With both, pass
--default-broker and optionally --route topic=kafka|rabbitmq (repeatable).`

// brokerFlags are the broker settings shared by relay and demo.
type brokerFlags struct {
	kafkaBrokers   string
	rabbitURL      string
	rabbitExchange string
	defaultBroker  string
	routes         routeFlag
}

type routeFlag map[string]string

func (r routeFlag) String() string { return "" }
func (r routeFlag) Set(v string) error {
	topic, broker, ok := strings.Cut(v, "=")
	if !ok || topic == "" || (broker != "kafka" && broker != "rabbitmq") {
		return fmt.Errorf("route %q: use topic=kafka or topic=rabbitmq", v)
	}
	r[topic] = broker
	return nil
}

func (b *brokerFlags) register(fs *flag.FlagSet, env *Env) {
	fs.StringVar(&b.kafkaBrokers, "kafka-brokers", env.Getenv("KAFKA_BROKERS"), "comma-separated Kafka brokers ($KAFKA_BROKERS)")
	fs.StringVar(&b.rabbitURL, "rabbitmq-url", "", "RabbitMQ URL, amqp:// or amqps:// (default $RABBITMQ_URL)")
	fs.StringVar(&b.rabbitExchange, "rabbitmq-exchange", envOr(env, "RABBITMQ_EXCHANGE", "outbox"), "durable topic exchange events are published to ($RABBITMQ_EXCHANGE)")
	fs.StringVar(&b.defaultBroker, "default-broker", env.Getenv("OUTBOXKIT_DEFAULT_BROKER"), "kafka or rabbitmq: where unrouted topics go when both are configured ($OUTBOXKIT_DEFAULT_BROKER)")
	b.routes = routeFlag{}
	fs.Var(b.routes, "route", "topic=kafka or topic=rabbitmq (repeatable)")
}

// publisher builds the relay's publisher from the flags.
func (b *brokerFlags) publisher(ctx context.Context, env *Env, source string, logger *slog.Logger) (relay.Publisher, error) {
	rabbitURL := b.rabbitURL
	if rabbitURL == "" {
		rabbitURL = env.Getenv("RABBITMQ_URL")
	}
	pubs := map[string]relay.Publisher{}
	if b.kafkaBrokers != "" {
		var brokers []string
		for _, s := range strings.Split(b.kafkaBrokers, ",") {
			if s = strings.TrimSpace(s); s != "" {
				brokers = append(brokers, s)
			}
		}
		p, err := kafka.New(kafka.Config{Brokers: brokers, Source: source, Logger: logger})
		if err != nil {
			return nil, err
		}
		pubs["kafka"] = p
	}
	if rabbitURL != "" {
		p, err := rabbitmq.New(ctx, rabbitmq.Config{URL: rabbitURL, Exchange: b.rabbitExchange, Source: source, Logger: logger})
		if err != nil {
			closeAll(pubs)
			return nil, err
		}
		pubs["rabbitmq"] = p
	}
	if len(pubs) == 0 {
		return nil, usageError("no broker: pass --kafka-brokers (or KAFKA_BROKERS) and/or --rabbitmq-url (or RABBITMQ_URL)")
	}
	router := &relay.TopicRouter{Topics: map[string]relay.Publisher{}}
	for topic, broker := range b.routes {
		p, ok := pubs[broker]
		if !ok {
			closeAll(pubs)
			return nil, usageError("--route %s=%s: %s is not configured", topic, broker, broker)
		}
		router.Topics[topic] = p
	}
	switch {
	case len(pubs) == 1:
		for _, p := range pubs {
			router.Default = p
		}
	case b.defaultBroker != "":
		p, ok := pubs[b.defaultBroker]
		if !ok {
			closeAll(pubs)
			return nil, usageError("--default-broker %q: use kafka or rabbitmq", b.defaultBroker)
		}
		router.Default = p
	case len(b.routes) == 0:
		closeAll(pubs)
		return nil, usageError("both Kafka and RabbitMQ are configured: pass --default-broker kafka|rabbitmq (and --route topic=... for the others)")
	}
	return router, nil
}

func closeAll(pubs map[string]relay.Publisher) {
	for _, p := range pubs {
		p.Close()
	}
}

func runRelay(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "relay", relayUsage)
	var db dbFlags
	db.register(fs, env)
	var brokers brokerFlags
	brokers.register(fs, env)
	var logs logFlags
	logs.register(fs, env)
	cfg := relay.Config{}
	fs.StringVar(&cfg.RelayID, "relay-id", env.Getenv("OUTBOXKIT_RELAY_ID"), "unique name of this relay (default hostname-pid-random)")
	fs.IntVar(&cfg.BatchSize, "batch-size", relay.BatchSizeDefault, "most events claimed per partition and round")
	fs.IntVar(&cfg.Workers, "workers", relay.WorkersDefault, "claim-publish-mark loops")
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", relay.MaxAttemptsDefault, "counted attempts before an event is parked")
	fs.DurationVar(&cfg.PollInterval, "poll-interval", relay.PollIntervalDefault, "look for events this often without a NOTIFY")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", relay.LeaseTTLDefault, "partition lease duration; a dead relay's partitions move after this")
	fs.StringVar(&cfg.ListenURL, "listen-url", "", "direct PostgreSQL URL for LISTEN when --database-url goes through PgBouncer in transaction mode (default $OUTBOXKIT_LISTEN_URL)")
	fs.BoolVar(&cfg.DisableListen, "no-listen", false, "do not LISTEN; find events by polling only")
	source := fs.String("source", envOr(env, "OUTBOXKIT_SOURCE", ""), "CloudEvents source for events that have none ($OUTBOXKIT_SOURCE)")
	metricsAddr := fs.String("metrics-addr", env.Getenv("OUTBOXKIT_METRICS_ADDR"), "serve /metrics, /healthz and /readyz here, e.g. 127.0.0.1:9090 ($OUTBOXKIT_METRICS_ADDR)")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("unexpected argument %q", pos[0])
	}
	if cfg.ListenURL == "" {
		cfg.ListenURL = env.Getenv("OUTBOXKIT_LISTEN_URL")
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
	poolCfg.MaxConns = max(int32(cfg.Workers)+3, poolCfg.MaxConns)
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL at %s: %w", pgutil.Redact(url), err)
	}
	defer pool.Close()
	pub, err := brokers.publisher(ctx, env, *source, logger)
	if err != nil {
		return err
	}
	defer pub.Close()
	cfg.Publisher = pub
	cfg.Schema = db.outboxSchema
	cfg.Version = Version
	cfg.Logger = logger
	cfg.Metrics = relay.NewMetrics()
	r, err := relay.New(pool, &cfg)
	if err != nil {
		return err
	}
	if *metricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(cfg.Metrics)
		if store, err := ops.New(pool, db.outboxSchema, db.inboxSchema); err == nil {
			reg.MustRegister(ops.NewCollector(store))
		}
		_, stop, err := observability(ctx, *metricsAddr, reg, func(ctx context.Context) error {
			if err := pool.Ping(ctx); err != nil {
				return fmt.Errorf("database: %w", err)
			}
			return r.Ready()
		}, logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	start := time.Now()
	err = r.Run(ctx)
	logger.Info("relay exited", slog.Duration("uptime", time.Since(start).Round(time.Second)))
	return err
}
