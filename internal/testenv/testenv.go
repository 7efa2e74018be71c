// Package testenv gives each test its own PostgreSQL database and access to
// the real brokers: a Kafka-protocol broker started in the test process
// (kfake, over TCP on loopback) unless KAFKA_BROKERS points at a real Kafka,
// and the local RabbitMQ.
//
// Environment:
//
//	OUTBOXKIT_TEST_DATABASE_URL  admin connection (default postgres://postgres@127.0.0.1:5432/postgres)
//	KAFKA_BROKERS                comma-separated real Kafka brokers instead of kfake
//	RABBITMQ_URL                 default amqp://guest:guest@127.0.0.1:5672/
package testenv

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/migrations"
)

// AdminURL is the connection used to create and drop test databases.
func AdminURL() string {
	if u := os.Getenv("OUTBOXKIT_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// DB is a database of one test, migrated with the default schemas
// ("outbox", "inbox") unless created with NewEmptyDB.
type DB struct {
	Name string
	URL  string
	// Pool is a small pool (MaxConns 8) on the database, closed at cleanup.
	Pool *pgxpool.Pool
}

// Partitions is the partition count of the test template.
const Partitions = 8

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
	dbCounter    atomic.Int64
)

// NewDB returns a fresh migrated database, copied from a template that is
// migrated once per migration content (shared across packages and runs).
// It is dropped when the test ends.
func NewDB(t testing.TB) *DB {
	t.Helper()
	templateOnce.Do(func() { templateName, templateErr = ensureTemplate() })
	if templateErr != nil {
		t.Fatalf("testenv: template database: %v", templateErr)
	}
	return newDB(t, templateName)
}

// NewEmptyDB returns a fresh database without outboxkit tables.
func NewEmptyDB(t testing.TB) *DB {
	t.Helper()
	return newDB(t, "template0")
}

func newDB(t testing.TB, template string) *DB {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("okt_%d_%d_%s", os.Getpid(), dbCounter.Add(1), randHex(3))
	admin := adminConn(t, ctx)
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{template}.Sanitize()); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	dbURL := withDatabase(AdminURL(), name)
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("testenv: pool: %v", err)
	}
	t.Cleanup(func() {
		// A failed test may still hold a connection (an open transaction):
		// pool.Close would wait for it forever, so bound the wait. DROP
		// DATABASE ... WITH (FORCE) below ends such sessions anyway.
		closed := make(chan struct{})
		go func() { pool.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Logf("testenv: pool of %s still has connections in use after the test (missing tx.Rollback?)", name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Logf("testenv: drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("testenv: drop %s: %v", name, err)
		}
	})
	return &DB{Name: name, URL: dbURL, Pool: pool}
}

func adminConn(t testing.TB, ctx context.Context) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("testenv: connect to PostgreSQL at %s: %v (is it running? .ci/run starts it)", AdminURL(), err)
	}
	return conn
}

// ensureTemplate creates okt_tpl_<hash of migrations> once, under an
// advisory lock so parallel test processes do not race, and drops databases
// left behind by test processes that died.
func ensureTemplate() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	files, err := migrations.Render(&migrations.Config{Partitions: Partitions})
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range files {
		h.Write([]byte(f.Name))
		h.Write([]byte(f.SQL))
	}
	name := "okt_tpl_" + hex.EncodeToString(h.Sum(nil))[:16]

	conn, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return "", fmt.Errorf("connect to PostgreSQL at %s: %w (is it running? .ci/run starts it)", AdminURL(), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(872634001)"); err != nil {
		return "", err
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock(872634001)") //nolint:errcheck

	dropOrphans(ctx, conn, name)

	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	building := name + "_b"
	conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{building}.Sanitize()+" WITH (FORCE)") //nolint:errcheck
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{building}.Sanitize()+" TEMPLATE template0"); err != nil {
		return "", err
	}
	if err := migrations.Up(ctx, withDatabase(AdminURL(), building), &migrations.Config{Partitions: Partitions}); err != nil {
		return "", fmt.Errorf("migrate template: %w", err)
	}
	if _, err := conn.Exec(ctx, "COMMENT ON DATABASE "+pgx.Identifier{building}.Sanitize()+" IS '"+templateComment+time.Now().UTC().Format(time.RFC3339)+"'"); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{building}.Sanitize()+" RENAME TO "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	return name, nil
}

// templateComment prefixes the build time in a template's comment.
const templateComment = "outboxkit test template built "

var orphanName = regexp.MustCompile(`^okt_(\d+)_\d+_[0-9a-f]+$`)

// dropOrphans removes test databases of dead processes and templates of
// older migration contents. Best effort: errors are ignored.
func dropOrphans(ctx context.Context, conn *pgx.Conn, currentTemplate string) {
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE 'okt\\_%'")
	if err != nil {
		return
	}
	names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	for _, n := range names {
		drop := false
		if m := orphanName.FindStringSubmatch(n); m != nil {
			pid, _ := strconv.Atoi(m[1])
			drop = pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH
		} else if strings.HasPrefix(n, "okt_tpl_") && n != currentTemplate && !strings.HasSuffix(n, "_b") {
			// Another checkout (a worktree, a branch) may still be using a
			// template of other migration contents: drop it only when it
			// was built long ago.
			var built string
			conn.QueryRow(ctx, "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = $1", n).Scan(&built) //nolint:errcheck
			at, err := time.Parse(time.RFC3339, strings.TrimPrefix(built, templateComment))
			drop = err != nil || time.Since(at) > 12*time.Hour
		}
		if drop {
			conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize()) //nolint:errcheck
		}
	}
}

// withDatabase returns the URL u pointing at database name.
func withDatabase(u, name string) string {
	parsed, err := url.Parse(u)
	if err != nil || parsed.Scheme == "" {
		return u + " dbname=" + name
	}
	parsed.Path = "/" + name
	return parsed.String()
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) //nolint:errcheck // crypto/rand does not fail
	return hex.EncodeToString(b)
}

// UniqueName returns prefix plus a random suffix, for broker objects (topics,
// exchanges, queues) that tests share a broker for.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), randHex(4))
}

// Eventually polls cond every 20ms until it returns true or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
