// Package cli implements the outboxkit command. Each command lives in its own
// file and is registered in commands; Main is what cmd/outboxkit calls, and
// what tests call with their own arguments, environment and output.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

// Version is the outboxkit version, set at build time with
// -ldflags "-X github.com/outboxkit/outboxkit/internal/cli.Version=v1.2.3".
var Version = "dev"

// Env is what a command may touch of the outside world.
type Env struct {
	Stdout, Stderr io.Writer
	// Getenv reads the environment (os.Getenv in production).
	Getenv func(string) string
}

type command struct {
	summary string
	run     func(ctx context.Context, env *Env, args []string) error
}

// commands lists every command. Each one's run function lives in its own file.
func commands() map[string]command {
	return map[string]command{
		"migrate": {"install, upgrade or inspect the outboxkit tables", runMigrate},
		"relay":   {"publish committed events to Kafka and/or RabbitMQ", runRelay},
		"demo":    {"see the whole flow in a minute: produce, relay to an embedded Kafka, consume", runDemo},
		"dlq":     {"parked events and dead letters: list, show, replay, redrive, drop, restore, edit", runDLQ},
		"lanes":   {"keys held back behind a failed event, and the lane actions", runLanes},
		"trace":   {"one key's, event's or flow's whole story", runTrace},
		"stats":   {"backlog, rates, parked, dead letters, partitions and relays", runStats},
		"audit":   {"the audit log of operator and system actions", runAudit},
		"hold":    {"legal holds: keys or tenants that retention and redaction must not touch", runHold},
		"replay":  {"send published events of a time range again, to every consumer or one", runReplay},
		"sweep":   {"run the sweeper: reclaim, rescue, retry, retention, reconcile, alarms, redact (one leader)", runSweep},
		"serve":   {"the web dashboard: backlog, parked events, dead letters, actions, audit (signed-in users only)", runServe},
	}
}

// errUsage marks errors caused by bad arguments (exit status 2).
var errUsage = errors.New("usage")

func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// Main runs the command named by args[0] and returns the exit status:
// 0 success, 1 failure, 2 bad usage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return MainEnv(ctx, args, &Env{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv})
}

// MainEnv is Main with an explicit environment.
func MainEnv(ctx context.Context, args []string, env *Env) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printHelp(env.Stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "version" || args[0] == "--version" {
		fmt.Fprintln(env.Stdout, "outboxkit", Version)
		return 0
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(env.Stderr, "outboxkit: unknown command %q; run \"outboxkit help\" for the list\n", args[0])
		return 2
	}
	err := cmd.run(ctx, env, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(env.Stderr, "outboxkit %s: %s\n", args[0], strings.TrimPrefix(err.Error(), "usage: "))
		return 2
	default:
		fmt.Fprintf(env.Stderr, "outboxkit %s: %s\n", args[0], pgutil.Redact(err.Error()))
		return 1
	}
}

func printHelp(w io.Writer) {
	fmt.Fprintln(w, "outboxkit: transactional outbox, relay, inbox and sweeper for PostgreSQL, Kafka and RabbitMQ")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: outboxkit <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	all := commands()
	names := make([]string, 0, len(all))
	for name := range all {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-10s %s\n", name, all[name].summary)
	}
	fmt.Fprintln(w, "  version    print the version")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run \"outboxkit <command> -h\" for the flags of a command.")
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints its usage to env.Stderr.
func newFlagSet(env *Env, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: outboxkit %s\n\nFlags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags that may appear before or after positional arguments,
// returning the positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// dbFlags are the flags every database command shares.
type dbFlags struct {
	url          string
	outboxSchema string
	inboxSchema  string
}

func (d *dbFlags) register(fs *flag.FlagSet, env *Env) {
	fs.StringVar(&d.url, "database-url", "", "PostgreSQL connection string (default $DATABASE_URL)")
	fs.StringVar(&d.outboxSchema, "outbox-schema", envOr(env, "OUTBOXKIT_OUTBOX_SCHEMA", "outbox"), "schema of the outbox tables ($OUTBOXKIT_OUTBOX_SCHEMA)")
	fs.StringVar(&d.inboxSchema, "inbox-schema", envOr(env, "OUTBOXKIT_INBOX_SCHEMA", "inbox"), "schema of the inbox tables ($OUTBOXKIT_INBOX_SCHEMA)")
}

// databaseURL returns the flag, else $DATABASE_URL, else an error saying so.
func (d *dbFlags) databaseURL(env *Env) (string, error) {
	if d.url != "" {
		return d.url, nil
	}
	if u := env.Getenv("DATABASE_URL"); u != "" {
		return u, nil
	}
	return "", usageError("no database: pass --database-url or set DATABASE_URL (e.g. postgres://user@127.0.0.1:5432/app)")
}

// openPool connects to the database of the flags (databaseURL). conns gets
// pgx's default pool size (from pool_max_conns in the URL, else pgx's own)
// and returns the size the command needs.
func (d *dbFlags) openPool(ctx context.Context, env *Env, conns func(def int32) int32) (*pgxpool.Pool, error) {
	url, err := d.databaseURL(env)
	if err != nil {
		return nil, err
	}
	cfg, err := pgutil.ParsePoolConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = conns(cfg.MaxConns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w", pgutil.Redact(url), err)
	}
	return pool, nil
}

// fixedConns is a pool size for openPool that ignores the default.
func fixedConns(n int32) func(int32) int32 { return func(int32) int32 { return n } }

func envOr(env *Env, name, fallback string) string {
	if v := env.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// newLogger builds the process logger: text for people, JSON for machines.
func newLogger(env *Env, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(env.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(env.Stderr, opts)), nil
	}
	return nil, usageError("--log-format %q: use text or json", format)
}

// logFlags are the logging flags of long-running commands.
type logFlags struct{ format, level string }

func (l *logFlags) register(fs *flag.FlagSet, env *Env) {
	fs.StringVar(&l.format, "log-format", envOr(env, "OUTBOXKIT_LOG_FORMAT", "text"), "text or json ($OUTBOXKIT_LOG_FORMAT)")
	fs.StringVar(&l.level, "log-level", envOr(env, "OUTBOXKIT_LOG_LEVEL", "info"), "debug, info, warn or error ($OUTBOXKIT_LOG_LEVEL)")
}
