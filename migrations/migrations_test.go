package migrations_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/migrations"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func tableExists(t *testing.T, db *testenv.DB, schema, table string) bool {
	t.Helper()
	var ok bool
	err := db.Pool.QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2)`,
		schema, table).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestUpDownUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewEmptyDB(t)

	if v, dirty, err := migrations.Version(ctx, db.URL, nil); err != nil || v != 0 || dirty {
		t.Fatalf("fresh database: version %d dirty %v err %v, want 0 false nil", v, dirty, err)
	}
	if err := migrations.Up(ctx, db.URL, nil); err != nil {
		t.Fatalf("up: %v", err)
	}
	for _, tb := range []struct{ schema, table string }{
		{"outbox", "messages"}, {"outbox", "partitions"}, {"outbox", "audit_log"}, {"outbox", "lanes"},
		{"outbox", "scheduled"}, {"outbox", "attempts"}, {"outbox", migrations.VersionTable},
		{"inbox", "processed"}, {"inbox", "dead_letters"},
	} {
		if !tableExists(t, db, tb.schema, tb.table) {
			t.Errorf("after up: %s.%s missing", tb.schema, tb.table)
		}
	}
	if tableExists(t, db, "public", "schema_migrations") {
		t.Error("up created public.schema_migrations; outboxkit must keep its own version table")
	}
	v, dirty, err := migrations.Version(ctx, db.URL, nil)
	if err != nil || v != migrations.Latest() || dirty {
		t.Fatalf("version %d dirty %v err %v, want %d", v, dirty, err, migrations.Latest())
	}
	var partitions int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.partitions`).Scan(&partitions); err != nil || partitions != migrations.PartitionsDefault {
		t.Fatalf("partitions = %d (%v), want %d", partitions, err, migrations.PartitionsDefault)
	}

	// A second up is a no-op.
	if err := migrations.Up(ctx, db.URL, nil); err != nil {
		t.Fatalf("second up: %v", err)
	}

	if err := migrations.Down(ctx, db.URL, nil, migrations.DownOptions{All: true}); err != nil {
		t.Fatalf("down: %v", err)
	}
	if tableExists(t, db, "outbox", "messages") || tableExists(t, db, "inbox", "processed") {
		t.Fatal("after down: tables still exist")
	}
	if v, _, err := migrations.Version(ctx, db.URL, nil); err != nil || v != 0 {
		t.Fatalf("after down: version %d err %v, want 0", v, err)
	}
	if err := migrations.Up(ctx, db.URL, nil); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if !tableExists(t, db, "outbox", "messages") {
		t.Fatal("after up again: messages missing")
	}
}

func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewEmptyDB(t)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = migrations.Up(ctx, db.URL, nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("runner %d: %v", i, err)
		}
	}
	v, dirty, err := migrations.Version(ctx, db.URL, nil)
	if err != nil || dirty || v != migrations.Latest() {
		t.Fatalf("version %d dirty %v err %v", v, dirty, err)
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.error_classes`).Scan(&n); err != nil || n != 7 {
		t.Fatalf("error_classes has %d rows (%v): seed data applied more or less than once", n, err)
	}
}

func TestCustomSchemasAndPartitions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewEmptyDB(t)
	cfg := &migrations.Config{OutboxSchema: "pay_outbox", InboxSchema: "pay_inbox", Partitions: 4}
	if err := migrations.Up(ctx, db.URL, cfg); err != nil {
		t.Fatal(err)
	}
	if !tableExists(t, db, "pay_outbox", "messages") || !tableExists(t, db, "pay_inbox", "dead_letters") {
		t.Fatal("tables not created in the configured schemas")
	}
	if tableExists(t, db, "outbox", "messages") {
		t.Fatal("default schema used despite configuration")
	}
	var n, maxPart int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*), max(pay_outbox.partition_for(k)) FROM pay_outbox.partitions, generate_series(1, 200) g, LATERAL (SELECT 'key-' || g AS k) s`).Scan(&n, &maxPart); err != nil {
		t.Fatal(err)
	}
	if n != 4*200 || maxPart != 3 {
		t.Fatalf("partitions: %d rows, max partition_for %d; want 4 partitions numbered 0-3", n/200, maxPart)
	}
	// A second installation in other schemas of the same database is independent.
	if err := migrations.Up(ctx, db.URL, nil); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Down(ctx, db.URL, cfg, migrations.DownOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	if !tableExists(t, db, "outbox", "messages") {
		t.Fatal("down of one installation removed the other")
	}
}

func TestDownRefusesUnpublishedEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox.messages (event_id, topic, partition, type, payload, content_type) VALUES (gen_random_uuid(), 'payments', 0, 'payout.created', '\x00', 'application/octet-stream')`); err != nil {
		t.Fatal(err)
	}
	err := migrations.Down(ctx, db.URL, &migrations.Config{Partitions: testenv.Partitions}, migrations.DownOptions{All: true})
	if !errors.Is(err, migrations.ErrUnpublished) {
		t.Fatalf("down with a pending event: err = %v, want ErrUnpublished", err)
	}
	if !tableExists(t, db, "outbox", "messages") {
		t.Fatal("down refused but dropped the table anyway")
	}
	if err := migrations.Down(ctx, db.URL, nil, migrations.DownOptions{All: true, Force: true}); err != nil {
		t.Fatalf("forced down: %v", err)
	}
}

func TestInvalidConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []*migrations.Config{
		{OutboxSchema: `x"; DROP TABLE y; --`},
		{OutboxSchema: "Outbox"},
		{InboxSchema: "1inbox"},
		{OutboxSchema: "same", InboxSchema: "same"},
		{Partitions: -1},
		{Partitions: migrations.MaxPartitions + 1},
	} {
		err := migrations.Up(context.Background(), "postgres://127.0.0.1:1/none", cfg)
		if !errors.Is(err, migrations.ErrInvalidConfig) {
			t.Errorf("Up(%+v) = %v, want ErrInvalidConfig", *cfg, err)
		}
	}
}

func TestBadURLDoesNotLeakPassword(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"postgres://alice:s3cr3t-pw@127.0.0.1:notaport/db",
		"host=127.0.0.1 port=x password=s3cr3t-pw",
		"postgres://alice:s3cr3t-pw@127.0.0.1:5432/db?sslmode=bogus",
	} {
		err := migrations.Up(context.Background(), u, nil)
		if err == nil {
			t.Fatalf("Up(%q) succeeded", u)
		}
		if strings.Contains(err.Error(), "s3cr3t-pw") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
}

// Every table, view and column the migrations create has a comment: DBAs read
// the schema with \d+.
func TestEverythingCommented(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	rows, err := db.Pool.Query(context.Background(), `
		SELECT c.relname || coalesce('.' || a.attname, '')
		  FROM pg_class c
		  JOIN pg_namespace n ON n.oid = c.relnamespace
		  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		 WHERE n.nspname IN ('outbox', 'inbox') AND c.relkind IN ('r', 'v')
		   AND c.relname <> $1
		   AND (a.attnum IS NULL AND obj_description(c.oid, 'pg_class') IS NULL
		        OR a.attnum IS NOT NULL AND col_description(c.oid, a.attnum) IS NULL)
		UNION ALL
		SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname IN ('outbox', 'inbox') AND c.relkind IN ('r', 'v') AND c.relname <> $1
		   AND obj_description(c.oid, 'pg_class') IS NULL`, migrations.VersionTable)
	if err != nil {
		t.Fatal(err)
	}
	missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) > 0 {
		t.Fatalf("no COMMENT ON: %s", strings.Join(missing, ", "))
	}
}

func TestAuditLogIsAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox.audit_log (actor, action, target_kind, reason) VALUES ('alice', 'drop', 'message', 'test')`); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`UPDATE outbox.audit_log SET actor = 'mallory'`,
		`DELETE FROM outbox.audit_log`,
		`TRUNCATE outbox.audit_log`,
	} {
		if _, err := db.Pool.Exec(ctx, stmt); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: err = %v, want refusal", stmt, err)
		}
	}
	var actor string
	if err := db.Pool.QueryRow(ctx, `SELECT actor FROM outbox.audit_log`).Scan(&actor); err != nil || actor != "alice" {
		t.Fatalf("audit row changed: %q %v", actor, err)
	}
}

func TestRenderQuotesIdentifiers(t *testing.T) {
	t.Parallel()
	files, err := migrations.Render(&migrations.Config{OutboxSchema: "o_x", InboxSchema: "i_x", Partitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 || !strings.HasSuffix(files[0].Name, ".sql") {
		t.Fatalf("render returned %v", files)
	}
	up := files[len(files)-1].SQL
	for _, f := range files {
		if strings.Contains(f.Name, ".up.") {
			up = f.SQL
			break
		}
	}
	if !strings.Contains(up, `"o_x".messages`) || !strings.Contains(up, `"i_x".processed`) || strings.Contains(up, "{{") {
		t.Fatalf("rendered SQL does not use the quoted schema names:\n%.400s", up)
	}
}
