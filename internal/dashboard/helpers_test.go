package dashboard_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/dashboard"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*Cluster).run"))
}

// Tokens of the test users: long enough for MinTokenLength.
const (
	aliceToken = "alice-token-5f2b8c1d9e7a4b3c"
	bobToken   = "bob-token-0a9b8c7d6e5f4a3b2c"
)

// fakeClock is the dashboard's clock in tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// syncBuffer collects logs written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is one dashboard over one test database.
type env struct {
	t       *testing.T
	db      *testenv.DB
	store   *ops.Store
	handler http.Handler
	srv     *httptest.Server
	sampler *dashboard.Sampler // not running: tests call SampleNow
	clock   *fakeClock
	logs    *syncBuffer
}

func testUsers(t *testing.T) *dashboard.Users {
	t.Helper()
	var u dashboard.Users
	if err := u.ParseUsersList("alice:" + aliceToken + ",bob:" + bobToken); err != nil {
		t.Fatal(err)
	}
	return &u
}

func newEnv(t *testing.T, mutate func(*dashboard.Config)) *env {
	t.Helper()
	db := testenv.NewDB(t)
	store, err := ops.New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db, clock: &fakeClock{t: time.Now()}, logs: &syncBuffer{}}
	e.sampler, err = dashboard.NewSampler(store, dashboard.SamplerConfig{Every: time.Second, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	e.serve(store, mutate)
	t.Cleanup(func() {
		for _, tok := range []string{aliceToken, bobToken} {
			if strings.Contains(e.logs.String(), tok) {
				t.Errorf("a token appears in the dashboard's logs:\n%s", e.logs.String())
			}
		}
	})
	return e
}

// serve starts the dashboard on store, in place of the one running, as
// outboxkit serve started again with other flags would. Clients made
// before have no session on it.
func (e *env) serve(store *ops.Store, mutate func(*dashboard.Config)) {
	e.t.Helper()
	cfg := dashboard.Config{Users: testUsers(e.t), Now: e.clock.Now, Sampler: e.sampler,
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if mutate != nil {
		mutate(&cfg)
	}
	h, err := dashboard.New(store, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.srv != nil {
		e.srv.Close()
	}
	e.store, e.handler, e.srv = store, h, httptest.NewServer(h)
	e.t.Cleanup(e.srv.Close)
}

// client is one browser: a cookie jar, no automatic redirects, and the
// dashboard's origin on every POST (as a browser sends it).
type client struct {
	t      *testing.T
	e      *env
	hc     *http.Client
	origin string
	csrf   string
}

func (e *env) client() *client {
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	e.t.Cleanup(hc.CloseIdleConnections)
	return &client{t: e.t, e: e, hc: hc, origin: e.srv.URL}
}

func (c *client) do(req *http.Request) (*http.Response, string) {
	c.t.Helper()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp, string(body)
}

func (c *client) get(path string) (*http.Response, string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.e.srv.URL+path, nil)
	return c.do(req)
}

// post sends a form with the session's CSRF token (unless the form sets
// csrf itself) and the dashboard's Origin (unless origin is changed).
func (c *client) post(path string, form url.Values) (*http.Response, string) {
	c.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok && c.csrf != "" {
		form.Set("csrf", c.csrf)
	}
	req, _ := http.NewRequest(http.MethodPost, c.e.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if c.origin != "" {
		req.Header.Set("Origin", c.origin)
	}
	return c.do(req)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf field in:\n%s", body)
	}
	return m[1]
}

// trySignIn loads the sign-in form and submits it.
func (c *client) trySignIn(name, token string) (*http.Response, string) {
	c.t.Helper()
	_, form := c.get("/signin")
	return c.post("/signin", url.Values{"csrf": {csrfOf(c.t, form)}, "name": {name}, "token": {token}, "next": {"/"}})
}

// signIn signs in and keeps the session's CSRF token.
func (c *client) signIn(name, token string) *client {
	c.t.Helper()
	resp, body := c.trySignIn(name, token)
	if resp.StatusCode != http.StatusSeeOther {
		c.t.Fatalf("sign in as %s: %d\n%s", name, resp.StatusCode, body)
	}
	_, page := c.get("/")
	c.csrf = csrfOf(c.t, page)
	return c
}

// seedParked enqueues events of one key and parks the first the way the
// relay does: status parked, lane blocked, the others blocked behind it.
func seedParked(t *testing.T, pool *pgxpool.Pool, topic, key string, payloads ...[]byte) []int64 {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	for i, p := range payloads {
		if _, err := outbox.Enqueue(ctx, tx, outbox.Message{Topic: topic, Key: key, Type: "payout.created", Version: 2,
			Payload: p, CorrelationID: fmt.Sprintf("flow-%d", i), Headers: map[string]string{"tenant": "t1"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	rows, err := pool.Query(ctx, `SELECT id FROM outbox.messages WHERE topic = $1 AND key = $2 ORDER BY sequence`, topic, key)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, st := range []struct {
		q    string
		args []any
	}{
		{`UPDATE outbox.messages SET status = 'parked', attempts = 3, parked_at = now(), last_error_class = 'poison_format',
		        last_error = 'schema mismatch: <b>amount</b> missing' WHERE id = $1`, []any{ids[0]}},
		{`UPDATE outbox.lanes SET hold_until = 'infinity', blocked_by = $1, blocked_since = now() WHERE topic = $2 AND key = $3`, []any{ids[0], topic, key}},
		{`UPDATE outbox.messages SET status = 'blocked' WHERE topic = $2 AND key = $3 AND id <> $1`, []any{ids[0], topic, key}},
	} {
		if _, err := pool.Exec(ctx, st.q, st.args...); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func status(t *testing.T, pool *pgxpool.Pool, id int64) string {
	t.Helper()
	var s string
	if err := pool.QueryRow(context.Background(), `SELECT status FROM outbox.messages WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

type auditRow struct {
	Actor, Action, Reason string
	Targets               []string
}

func auditRows(t *testing.T, pool *pgxpool.Pool) []auditRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT actor, action, reason, target_ids FROM outbox.audit_log ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var a auditRow
		if err := rows.Scan(&a.Actor, &a.Action, &a.Reason, &a.Targets); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}
