// Package migrations creates and upgrades the outboxkit tables with
// golang-migrate. The SQL files are embedded; the schema names and the
// partition count come from Config and are rendered into them as quoted
// identifiers, so two outboxkit installations can share one database.
//
// The version table is "<outbox schema>".outboxkit_migrations: outboxkit never
// touches an application's own schema_migrations table.
//
//	err := migrations.Up(ctx, "postgres://localhost/app", nil)
//
// Up is idempotent and safe to run from several processes at once: an
// advisory lock serialises them and the late ones find nothing to do.
package migrations

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strings"
	"text/template"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

//go:embed sql/*.sql
var files embed.FS

// Defaults applied by Config.WithDefaults.
const (
	OutboxSchemaDefault = "outbox"
	InboxSchemaDefault  = "inbox"
	PartitionsDefault   = 32
	// VersionTable is the golang-migrate version table, in the outbox schema.
	VersionTable = "outboxkit_migrations"
)

// MaxPartitions bounds Config.Partitions. More partitions than relays is
// normal; beyond this the per-claim cost of empty partitions shows.
const MaxPartitions = 1024

// ErrInvalidConfig is returned (wrapped) for a Config that cannot be used.
var ErrInvalidConfig = errors.New("migrations: invalid config")

// ErrUnpublished is returned by Down when migrating down would delete events
// that were never published. Pass Force to do it anyway.
var ErrUnpublished = errors.New("migrations: outbox holds unpublished events")

// Config chooses where the tables live. The zero value (or nil) means schemas
// "outbox" and "inbox" and 32 partitions.
type Config struct {
	// OutboxSchema holds messages, partitions, lanes, audit log and the
	// version table. Lower-case letters, digits and underscores.
	// Default "outbox".
	OutboxSchema string
	// InboxSchema holds processed and dead_letters. Default "inbox".
	InboxSchema string
	// Partitions is the number of relay partitions created by the first
	// migration. Relays scale out up to one per partition. Changing it later
	// is an operation of its own (docs/operations.md). Default 32.
	Partitions int
	// Logger receives one line per applied migration. Default: discard.
	Logger *slog.Logger
}

// WithDefaults returns a copy of c (which may be nil) with defaults applied.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.OutboxSchema == "" {
		out.OutboxSchema = OutboxSchemaDefault
	}
	if out.InboxSchema == "" {
		out.InboxSchema = InboxSchemaDefault
	}
	if out.Partitions == 0 {
		out.Partitions = PartitionsDefault
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	return &out
}

func (c *Config) validate() error {
	for _, s := range []struct{ field, value string }{{"OutboxSchema", c.OutboxSchema}, {"InboxSchema", c.InboxSchema}} {
		if !pgutil.ValidSchemaName(s.value) {
			return fmt.Errorf("%w: %s %q must be 1-63 lower-case letters, digits or underscores, not starting with a digit", ErrInvalidConfig, s.field, s.value)
		}
	}
	if c.OutboxSchema == c.InboxSchema {
		return fmt.Errorf("%w: OutboxSchema and InboxSchema are both %q; they must differ", ErrInvalidConfig, c.OutboxSchema)
	}
	if c.Partitions < 1 || c.Partitions > MaxPartitions {
		return fmt.Errorf("%w: Partitions %d must be between 1 and %d", ErrInvalidConfig, c.Partitions, MaxPartitions)
	}
	return nil
}

// File is one rendered migration file.
type File struct {
	Name string // e.g. 0001_initial.up.sql
	SQL  string
}

// Render returns the migration files rendered for cfg, in version order, for
// DBAs who apply DDL themselves (outboxkit migrate print).
func Render(cfg *Config) ([]File, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(files, "sql")
	if err != nil {
		return nil, fmt.Errorf("migrations: read embedded files: %w", err)
	}
	data := struct {
		Outbox, Inbox string
		Partitions    int
	}{
		Outbox:     pgx.Identifier{cfg.OutboxSchema}.Sanitize(),
		Inbox:      pgx.Identifier{cfg.InboxSchema}.Sanitize(),
		Partitions: cfg.Partitions,
	}
	out := make([]File, 0, len(entries))
	for _, e := range entries {
		raw, err := files.ReadFile(path.Join("sql", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("migrations: read %s: %w", e.Name(), err)
		}
		tmpl, err := template.New(e.Name()).Option("missingkey=error").Parse(string(raw))
		if err != nil {
			return nil, fmt.Errorf("migrations: parse %s: %w", e.Name(), err)
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, data); err != nil {
			return nil, fmt.Errorf("migrations: render %s: %w", e.Name(), err)
		}
		out = append(out, File{Name: e.Name(), SQL: buf.String()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Up applies every migration not yet applied. Running it again is a no-op.
func Up(ctx context.Context, databaseURL string, cfg *Config) error {
	return run(ctx, databaseURL, cfg, func(m *migrate.Migrate) error { return m.Up() })
}

// DownOptions controls Down.
type DownOptions struct {
	// Steps is the number of migrations to revert; 0 means one. Ignored when All.
	Steps int
	// All reverts every migration, dropping every outboxkit table.
	All bool
	// Force reverts even when unpublished events would be lost.
	Force bool
}

// Down reverts migrations. Without Force it refuses (ErrUnpublished) when
// the outbox still holds events that were never published, because reverting
// the first migration drops them.
func Down(ctx context.Context, databaseURL string, cfg *Config, opts DownOptions) error {
	return run(ctx, databaseURL, cfg, func(m *migrate.Migrate) error {
		if !opts.Force {
			if err := refuseUnpublished(ctx, databaseURL, cfg.WithDefaults()); err != nil {
				return err
			}
		}
		if opts.All {
			return m.Down()
		}
		steps := opts.Steps
		if steps <= 0 {
			steps = 1
		}
		return m.Steps(-steps)
	})
}

// Version reports the applied migration version; 0 with no error means none
// has been applied yet. Dirty means a migration failed half-way and needs a
// DBA (see docs/operations.md).
func Version(ctx context.Context, databaseURL string, cfg *Config) (version uint, dirty bool, err error) {
	err = run(ctx, databaseURL, cfg, func(m *migrate.Migrate) error {
		version, dirty, err = m.Version()
		if errors.Is(err, migrate.ErrNilVersion) {
			version, dirty = 0, false
			return nil
		}
		return err
	})
	return version, dirty, err
}

// Latest is the highest migration version embedded in this build.
func Latest() uint {
	entries, _ := fs.ReadDir(files, "sql")
	var latest uint
	for _, e := range entries {
		if m, err := source.Parse(e.Name()); err == nil && m.Version > latest {
			latest = m.Version
		}
	}
	return latest
}

func refuseUnpublished(ctx context.Context, databaseURL string, cfg *Config) error {
	connConfig, err := pgutil.ParseConnConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, connConfig)
	if err != nil {
		return fmt.Errorf("migrations: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{cfg.OutboxSchema, "messages"}.Sanitize()).Scan(&exists); err != nil {
		return fmt.Errorf("migrations: look for messages table: %w", err)
	}
	if !exists {
		return nil
	}
	var n int64
	q := `SELECT count(*) FROM ` + pgx.Identifier{cfg.OutboxSchema, "messages"}.Sanitize() + ` WHERE status IN ('pending', 'blocked', 'parked')`
	if err := conn.QueryRow(ctx, q).Scan(&n); err != nil {
		return fmt.Errorf("migrations: count unpublished events: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("%w: %d events are pending, blocked or parked in %s.messages; drain or export them first, or pass --force to lose them", ErrUnpublished, n, cfg.OutboxSchema)
	}
	return nil
}

// run opens a migrate instance for cfg under a session advisory lock (so
// concurrent runners, including the CREATE SCHEMA before golang-migrate
// starts, are serialised), runs fn and closes everything.
func run(ctx context.Context, databaseURL string, cfg *Config, fn func(*migrate.Migrate) error) error {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	rendered, err := Render(cfg)
	if err != nil {
		return err
	}
	connConfig, err := pgutil.ParseConnConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	db := stdlib.OpenDB(*connConfig)
	defer db.Close()

	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrations: connect: %w", err)
	}
	defer conn.Close()
	lockID := advisoryLockID(cfg.OutboxSchema)
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, lockID); err != nil {
		return fmt.Errorf("migrations: take migration lock: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockID) //nolint:errcheck // the lock also ends with the session
	if _, err := conn.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{cfg.OutboxSchema}.Sanitize()); err != nil {
		return fmt.Errorf("migrations: create schema %q: %w", cfg.OutboxSchema, err)
	}

	driver, err := migratepgx.WithInstance(db, &migratepgx.Config{
		MigrationsTable:       pgx.Identifier{cfg.OutboxSchema, VersionTable}.Sanitize(),
		MigrationsTableQuoted: true,
		SchemaName:            cfg.OutboxSchema,
	})
	if err != nil {
		return fmt.Errorf("migrations: open version table: %w", err)
	}
	src, err := newSource(rendered)
	if err != nil {
		return err
	}
	m, err := migrate.NewWithInstance("outboxkit", src, "pgx5", driver)
	if err != nil {
		return fmt.Errorf("migrations: init: %w", err)
	}
	m.Log = migrateLogger{cfg.Logger}
	// golang-migrate has no context; stop it between migrations when ctx ends.
	stop := context.AfterFunc(ctx, func() {
		select {
		case m.GracefulStop <- true:
		default:
		}
	})
	defer stop()
	err = fn(m)
	srcErr, dbErr := m.Close()
	if errors.Is(err, migrate.ErrNoChange) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if srcErr != nil || dbErr != nil {
		return fmt.Errorf("migrations: close: %w", errors.Join(srcErr, dbErr))
	}
	return ctx.Err()
}

// advisoryLockID is stable per outbox schema, so installations in separate
// schemas do not wait for each other.
func advisoryLockID(schema string) int64 {
	h := fnv.New64a()
	io.WriteString(h, "outboxkit-migrate:"+schema) //nolint:errcheck // hash writes cannot fail
	return int64(h.Sum64() >> 1)
}

type migrateLogger struct{ l *slog.Logger }

func (m migrateLogger) Printf(format string, v ...any) {
	m.l.Info(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "migrations")
}
func (m migrateLogger) Verbose() bool { return false }

// memSource is a golang-migrate source over the rendered files.
type memSource struct {
	migrations *source.Migrations
	files      map[string]string
}

func newSource(rendered []File) (*memSource, error) {
	s := &memSource{migrations: source.NewMigrations(), files: map[string]string{}}
	for _, f := range rendered {
		m, err := source.Parse(f.Name)
		if err != nil {
			return nil, fmt.Errorf("migrations: file %s: %w", f.Name, err)
		}
		if !s.migrations.Append(m) {
			return nil, fmt.Errorf("migrations: duplicate migration %s", f.Name)
		}
		s.files[f.Name] = f.SQL
	}
	return s, nil
}

func (s *memSource) Open(string) (source.Driver, error) { return s, nil }
func (s *memSource) Close() error                       { return nil }
func (s *memSource) First() (uint, error) {
	if v, ok := s.migrations.First(); ok {
		return v, nil
	}
	return 0, &fs.PathError{Op: "first", Path: "sql", Err: fs.ErrNotExist}
}
func (s *memSource) Prev(version uint) (uint, error) {
	if v, ok := s.migrations.Prev(version); ok {
		return v, nil
	}
	return 0, &fs.PathError{Op: "prev", Path: fmt.Sprint(version), Err: fs.ErrNotExist}
}
func (s *memSource) Next(version uint) (uint, error) {
	if v, ok := s.migrations.Next(version); ok {
		return v, nil
	}
	return 0, &fs.PathError{Op: "next", Path: fmt.Sprint(version), Err: fs.ErrNotExist}
}
func (s *memSource) ReadUp(version uint) (io.ReadCloser, string, error) {
	return s.read(s.migrations.Up(version))
}
func (s *memSource) ReadDown(version uint) (io.ReadCloser, string, error) {
	return s.read(s.migrations.Down(version))
}
func (s *memSource) read(m *source.Migration, ok bool) (io.ReadCloser, string, error) {
	if !ok {
		return nil, "", &fs.PathError{Op: "read", Path: "migration", Err: fs.ErrNotExist}
	}
	return io.NopCloser(strings.NewReader(s.files[m.Raw])), m.Identifier, nil
}

var _ source.Driver = (*memSource)(nil)
