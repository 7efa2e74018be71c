package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/tlsconf"
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

// brokerFlags are the broker settings shared by relay and demo. Secrets
// (SASL password, an AMQP URL with a password) come from the environment or
// files, never from flag defaults, so --help and ps never show them.
type brokerFlags struct {
	brokerConnFlags
	rabbitExchange string
	defaultBroker  string
	routes         routeFlag
}

// brokerConnFlags are the flags that say how to reach the brokers (address,
// TLS, SASL), shared by every command that talks to one: relay, demo,
// dlq ingest and dlq replay.
type brokerConnFlags struct {
	kafkaBrokers string
	rabbitURL    string

	kafkaTLS          bool
	kafkaTLSFiles     tlsconf.Files
	kafkaSASL         string
	kafkaSASLUser     string
	kafkaSASLPassFile string
	rabbitTLSFiles    tlsconf.Files

	// Where broker dead letters may be sent (registerReplay): the commands
	// that send them, dlq replay, redrive, edit, approve and serve.
	replayAllow     string
	kafkaRetryTopic string

	transports []*kafkago.Transport // created here, closed by closeTransports
}

// closeTransports releases the Kafka connections of transports the flags
// created (a Publisher does not close a Transport it was given).
func (b *brokerConnFlags) closeTransports() {
	for _, t := range b.transports {
		t.CloseIdleConnections()
	}
	b.transports = nil
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
	b.brokerConnFlags.register(fs, env)
	fs.StringVar(&b.rabbitExchange, "rabbitmq-exchange", envOr(env, "RABBITMQ_EXCHANGE", "outbox"), "durable topic exchange events are published to ($RABBITMQ_EXCHANGE)")
	fs.StringVar(&b.defaultBroker, "default-broker", env.Getenv("OUTBOXKIT_DEFAULT_BROKER"), "kafka or rabbitmq: where unrouted topics go when both are configured ($OUTBOXKIT_DEFAULT_BROKER)")
	b.routes = routeFlag{}
	fs.Var(b.routes, "route", "topic=kafka or topic=rabbitmq (repeatable)")
}

func (b *brokerConnFlags) register(fs *flag.FlagSet, env *Env) {
	fs.StringVar(&b.kafkaBrokers, "kafka-brokers", env.Getenv("KAFKA_BROKERS"), "comma-separated Kafka brokers ($KAFKA_BROKERS)")
	fs.StringVar(&b.rabbitURL, "rabbitmq-url", "", "RabbitMQ URL, amqp:// or amqps:// (default $RABBITMQ_URL or the file named by $RABBITMQ_URL_FILE; prefer those when the URL holds a password)")
	fs.BoolVar(&b.kafkaTLS, "kafka-tls", env.Getenv("KAFKA_TLS") == "true" || env.Getenv("KAFKA_TLS") == "1", "connect to Kafka over TLS ($KAFKA_TLS=true)")
	fs.StringVar(&b.kafkaTLSFiles.CA, "kafka-ca-file", env.Getenv("KAFKA_CA_FILE"), "PEM CA bundle for Kafka's certificates ($KAFKA_CA_FILE; implies --kafka-tls)")
	fs.StringVar(&b.kafkaTLSFiles.Cert, "kafka-cert-file", env.Getenv("KAFKA_CERT_FILE"), "PEM client certificate for Kafka ($KAFKA_CERT_FILE)")
	fs.StringVar(&b.kafkaTLSFiles.Key, "kafka-key-file", env.Getenv("KAFKA_KEY_FILE"), "PEM client key for Kafka ($KAFKA_KEY_FILE)")
	fs.StringVar(&b.kafkaSASL, "kafka-sasl", env.Getenv("KAFKA_SASL_MECHANISM"), "SASL mechanism: plain, scram-sha-256 or scram-sha-512 ($KAFKA_SASL_MECHANISM)")
	fs.StringVar(&b.kafkaSASLUser, "kafka-sasl-user", env.Getenv("KAFKA_SASL_USERNAME"), "SASL user name ($KAFKA_SASL_USERNAME); the password comes from $KAFKA_SASL_PASSWORD or $KAFKA_SASL_PASSWORD_FILE")
	fs.StringVar(&b.kafkaSASLPassFile, "kafka-sasl-password-file", "", "file holding the SASL password (instead of $KAFKA_SASL_PASSWORD)")
	fs.StringVar(&b.rabbitTLSFiles.CA, "rabbitmq-ca-file", env.Getenv("RABBITMQ_CA_FILE"), "PEM CA bundle for amqps:// ($RABBITMQ_CA_FILE)")
	fs.StringVar(&b.rabbitTLSFiles.Cert, "rabbitmq-cert-file", env.Getenv("RABBITMQ_CERT_FILE"), "PEM client certificate for amqps:// ($RABBITMQ_CERT_FILE)")
	fs.StringVar(&b.rabbitTLSFiles.Key, "rabbitmq-key-file", env.Getenv("RABBITMQ_KEY_FILE"), "PEM client key for amqps:// ($RABBITMQ_KEY_FILE)")
}

// kafkaTransport returns nil (the publisher's default) or a transport with
// the TLS and SASL settings of the flags.
func (b *brokerConnFlags) kafkaTransport(env *Env) (*kafkago.Transport, error) {
	useTLS := b.kafkaTLS || !b.kafkaTLSFiles.Empty()
	if !useTLS && b.kafkaSASL == "" {
		return nil, nil
	}
	t := &kafkago.Transport{ClientID: "outboxkit"}
	b.transports = append(b.transports, t)
	if useTLS {
		cfg, err := b.kafkaTLSFiles.Config()
		if err != nil {
			return nil, usageError("kafka: %v", err)
		}
		t.TLS = cfg
	}
	if b.kafkaSASL != "" {
		pass, err := tlsconf.Secret(env.Getenv, "KAFKA_SASL_PASSWORD", b.kafkaSASLPassFile)
		if err != nil {
			return nil, err
		}
		if b.kafkaSASLUser == "" || pass == "" {
			return nil, usageError("--kafka-sasl %s needs --kafka-sasl-user and a password in $KAFKA_SASL_PASSWORD or a password file", b.kafkaSASL)
		}
		switch strings.ToLower(b.kafkaSASL) {
		case "plain":
			t.SASL = plain.Mechanism{Username: b.kafkaSASLUser, Password: pass}
		case "scram-sha-256", "scram-sha-512":
			algo := scram.SHA256
			if strings.HasSuffix(b.kafkaSASL, "512") {
				algo = scram.SHA512
			}
			m, err := scram.Mechanism(algo, b.kafkaSASLUser, pass)
			if err != nil {
				return nil, fmt.Errorf("kafka SASL: %w", err)
			}
			t.SASL = m
		default:
			return nil, usageError("--kafka-sasl %q: use plain, scram-sha-256 or scram-sha-512", b.kafkaSASL)
		}
		if !useTLS {
			// Allowed (some clusters terminate TLS elsewhere) but worth a word.
			fmt.Fprintln(env.Stderr, "outboxkit: warning: Kafka SASL without --kafka-tls sends credentials in clear text unless the network is encrypted")
		}
	}
	return t, nil
}

// publisher builds the relay's publisher from the flags.
// rabbitmqURL is --rabbitmq-url, else $RABBITMQ_URL, else the file named
// by $RABBITMQ_URL_FILE, else "".
func (b *brokerConnFlags) rabbitmqURL(env *Env) (string, error) {
	if b.rabbitURL != "" {
		return b.rabbitURL, nil
	}
	return tlsconf.Secret(env.Getenv, "RABBITMQ_URL", "")
}

// kafkaBrokerList splits --kafka-brokers.
func (b *brokerConnFlags) kafkaBrokerList() []string {
	var brokers []string
	for _, s := range strings.Split(b.kafkaBrokers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			brokers = append(brokers, s)
		}
	}
	return brokers
}

func (b *brokerFlags) publisher(ctx context.Context, env *Env, source string, logger *slog.Logger) (relay.Publisher, error) {
	rabbitURL, err := b.rabbitmqURL(env)
	if err != nil {
		return nil, err
	}
	pubs := map[string]relay.Publisher{}
	if b.kafkaBrokers != "" {
		brokers := b.kafkaBrokerList()
		transport, err := b.kafkaTransport(env)
		if err != nil {
			return nil, err
		}
		p, err := kafka.New(kafka.Config{Brokers: brokers, Source: source, Logger: logger, Transport: transport})
		if err != nil {
			return nil, err
		}
		pubs["kafka"] = p
	}
	if rabbitURL != "" {
		rcfg := rabbitmq.Config{URL: rabbitURL, Exchange: b.rabbitExchange, Source: source, Logger: logger}
		if !b.rabbitTLSFiles.Empty() {
			var err error
			if rcfg.TLS, err = b.rabbitTLSFiles.Config(); err != nil {
				closeAll(pubs)
				return nil, usageError("rabbitmq: %v", err)
			}
		}
		p, err := rabbitmq.New(ctx, rcfg)
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
	fs.BoolVar(&cfg.DurableMarks, "durable-marks", false, "wait for the WAL flush of every published mark (default: not, a mark lost in a database crash only republishes)")
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
	pool, err := db.openPool(ctx, env, func(def int32) int32 { return max(int32(cfg.Workers)+3, def) })
	if err != nil {
		return err
	}
	defer pool.Close()
	defer brokers.closeTransports()
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
