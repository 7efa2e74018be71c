package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxkit/outboxkit/internal/dashboard"
	"github.com/outboxkit/outboxkit/internal/ops"
)

const serveUsage = `serve [flags]

The web dashboard: backlog and rates at a glance, parked events and dead
letters with their payloads, replay, drop, restore, edit, bulk redrive,
lanes, trace, the audit log, partitions and relays.

Every page needs a signed-in user. Users come from --users-file (lines
name:token, # comments) and/or $OUTBOXKIT_DASHBOARD_USERS (name:token,...);
tokens are at least 16 characters (openssl rand -hex 32). Every action is
audited with the signed-in user as the actor.

Broker dead letters (dlq ingest) are replayed and edited from the dashboard
when serve can reach their broker: --rabbitmq-url or --kafka-brokers (or
RABBITMQ_URL, KAFKA_BROKERS) and the TLS or SASL flags the relay takes;
without them the page shows the action disabled and says which flag it needs.
--replay-allow lists the queues and topics they may be sent to (their
destination comes from headers whoever writes to the DLQ controls);
--kafka-retry-topic is where the corrected copy of a Kafka dead letter goes.

Listens on 127.0.0.1:8080 unless --listen says otherwise. Serve over TLS
(--tls-cert/--tls-key) or behind a TLS proxy (--secure-cookies, --origin)
whenever the dashboard is reachable from another machine.`

// serveShutdownTimeout bounds the wait for requests in flight on shutdown.
const serveShutdownTimeout = 15 * time.Second

// originsFlag collects --origin values.
type originsFlag []string

func (o *originsFlag) String() string { return strings.Join(*o, ",") }
func (o *originsFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*o = append(*o, s)
		}
	}
	return nil
}

func runServe(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "serve", serveUsage)
	var db dbFlags
	db.register(fs, env)
	var logs logFlags
	logs.register(fs, env)
	var brokers brokerConnFlags // replay and edit of broker dead letters (dlq ingest)
	brokers.register(fs, env)
	brokers.registerReplay(fs, env)
	listen := fs.String("listen", envOr(env, "OUTBOXKIT_DASHBOARD_LISTEN", "127.0.0.1:8080"), "address to listen on ($OUTBOXKIT_DASHBOARD_LISTEN)")
	usersFile := fs.String("users-file", env.Getenv("OUTBOXKIT_DASHBOARD_USERS_FILE"), "file of users, one name:token a line ($OUTBOXKIT_DASHBOARD_USERS_FILE); $OUTBOXKIT_DASHBOARD_USERS adds name:token,... pairs")
	sessionTTL := fs.Duration("session-ttl", dashboard.SessionTTLDefault, "longest a sign-in lasts")
	sessionIdle := fs.Duration("session-idle", dashboard.SessionIdleDefault, "sign-in ends after this long without a request")
	tlsCert := fs.String("tls-cert", "", "TLS certificate file (PEM); serve HTTPS with --tls-key")
	tlsKey := fs.String("tls-key", "", "TLS private key file (PEM)")
	secureCookies := fs.Bool("secure-cookies", false, "mark cookies Secure (HTTPS only); implied by --tls-cert; set it behind a TLS proxy")
	var origins originsFlag
	fs.Var(&origins, "origin", "origin the browser uses, e.g. https://outbox.example.com (repeatable); needed behind a proxy that changes Host")
	sampleEvery := fs.Duration("sample-every", dashboard.SampleEveryDefault, "how often the overview's charts are sampled")
	metricsAddr := fs.String("metrics-addr", env.Getenv("OUTBOXKIT_METRICS_ADDR"), "serve /metrics, /healthz and /readyz here, apart from the dashboard ($OUTBOXKIT_METRICS_ADDR)")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("unexpected argument %q", pos[0])
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return usageError("--tls-cert and --tls-key go together")
	}
	logger, err := newLogger(env, logs.format, logs.level)
	if err != nil {
		return err
	}
	users, err := loadUsers(env, *usersFile)
	if err != nil {
		return err
	}
	if *usersFile != "" {
		if st, err := os.Stat(*usersFile); err == nil && st.Mode().Perm()&0o077 != 0 {
			logger.Warn("dashboard: the users file is readable by other accounts: chmod 600 it", slog.String("file", *usersFile),
				slog.String("mode", st.Mode().Perm().String()))
		}
	}
	pool, err := db.openPool(ctx, env, fixedConns(8))
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := ops.New(pool, db.outboxSchema, db.inboxSchema)
	if err != nil {
		return usageError("%v", err)
	}
	rep, err := brokers.republisher(env)
	if err != nil {
		return err
	}
	defer brokers.closeTransports()
	store = store.WithRepublisher(rep)
	sampler, err := dashboard.NewSampler(store, dashboard.SamplerConfig{Every: *sampleEvery, Logger: logger})
	if err != nil {
		return usageError("--sample-every: %v", err)
	}
	if *metricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(ops.NewCollector(store))
		_, stop, err := observability(ctx, *metricsAddr, reg, func(ctx context.Context) error { return pool.Ping(ctx) }, logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	secure := *secureCookies || *tlsCert != ""
	handler, err := dashboard.New(store, dashboard.Config{
		Users: users, SessionTTL: *sessionTTL, SessionIdle: *sessionIdle, SecureCookies: secure,
		Origins: origins, Sampler: sampler, Logger: logger,
	})
	if err != nil {
		return usageError("%v", err)
	}

	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return usageError("--tls-cert/--tls-key: %v", err)
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	scheme := "http"
	if srv.TLSConfig != nil {
		scheme = "https"
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	addr := ln.Addr().String()
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() && srv.TLSConfig == nil && !secure {
		logger.Warn("dashboard: serving plain HTTP on a non-loopback address: tokens and session cookies cross the network in clear text; use --tls-cert/--tls-key, or a TLS proxy with --secure-cookies",
			slog.String("addr", addr))
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		sampler.Run(runCtx) //nolint:errcheck // returns nil when runCtx ends
	}()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logger.Info("dashboard listening", slog.String("addr", addr), slog.String("url", scheme+"://"+addr+"/"),
		slog.Any("users", users.Names()), slog.Duration("session_ttl", *sessionTTL), slog.Duration("session_idle", *sessionIdle),
		slog.Bool("rabbitmq", rep.Connected(ops.BrokerRabbitMQ)), slog.Bool("kafka", rep.Connected(ops.BrokerKafka)))

	select {
	case err = <-served:
		// Serve failed on its own (the listener broke).
	case <-ctx.Done():
		shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), serveShutdownTimeout)
		err = srv.Shutdown(shutCtx)
		cancel()
		if serr := <-served; !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
	}
	stop()
	<-sampled
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	logger.Info("dashboard stopped")
	return err
}

// loadUsers reads the users file and $OUTBOXKIT_DASHBOARD_USERS. Errors name
// the source and line, never a token.
func loadUsers(env *Env, file string) (*dashboard.Users, error) {
	users := &dashboard.Users{}
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, usageError("--users-file: %v", err)
		}
		defer f.Close()
		if err := users.ParseUsersFile(f); err != nil {
			return nil, usageError("--users-file %s: %v", file, err)
		}
	}
	if list := env.Getenv("OUTBOXKIT_DASHBOARD_USERS"); list != "" {
		if err := users.ParseUsersList(list); err != nil {
			return nil, usageError("$OUTBOXKIT_DASHBOARD_USERS: %v", err)
		}
	}
	if users.Len() == 0 {
		return nil, usageError("%v", dashboard.ErrNoUsers)
	}
	return users, nil
}
