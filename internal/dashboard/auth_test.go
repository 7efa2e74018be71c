package dashboard_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outboxkit/outboxkit/internal/dashboard"
	"github.com/outboxkit/outboxkit/internal/ops"
)

var (
	getPages  = []string{"/", "/events", "/events?kind=inbox", "/events/o:1", "/lanes", "/audit", "/system", "/trace?key=k", "/redrive", "/redrive?preview=1", "/nowhere"}
	postPages = []string{"/events/o:1/replay", "/events/o:1/drop", "/events/o:1/restore", "/events/o:1/edit", "/lanes", "/redrive", "/signout", "/nowhere"}
)

// Without a session every page sends the browser to the sign-in page, and
// every POST is refused with 403 and changes nothing.
func TestUnauthenticatedRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ids := seedParked(t, e.db.Pool, "payouts", "p-1", []byte(`{"secret":"payload-of-p-1"}`))
	c := e.client()
	for _, p := range getPages {
		resp, body := c.get(strings.ReplaceAll(p, "o:1", "o:"+itoa(ids[0])))
		loc := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/signin") {
			t.Errorf("GET %s: %d Location %q, want 303 to /signin", p, resp.StatusCode, loc)
		}
		if strings.Contains(body, "payload-of-p-1") || strings.Contains(body, "payouts") {
			t.Errorf("GET %s without a session shows data:\n%s", p, body)
		}
	}
	for _, p := range postPages {
		resp, body := c.post(strings.ReplaceAll(p, "o:1", "o:"+itoa(ids[0])), url.Values{"reason": {"x"}, "topic": {"payouts"},
			"key": {"p-1"}, "verb": {"release"}, "csrf": {"guess"}})
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("POST %s: %d, want 403\n%s", p, resp.StatusCode, body)
		}
	}
	// A forged cookie is no session.
	u, _ := url.Parse(e.srv.URL)
	c.hc.Jar.SetCookies(u, []*http.Cookie{{Name: "outboxkit_session", Value: "forged-cookie-value"}})
	if resp, _ := c.get("/"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("forged cookie: %d, want 303", resp.StatusCode)
	}
	if got := status(t, e.db.Pool, ids[0]); got != "parked" {
		t.Errorf("status %s after refused requests", got)
	}
	if a := auditRows(t, e.db.Pool); len(a) != 0 {
		t.Errorf("refused requests wrote audit entries: %+v", a)
	}
	// The sign-in redirect comes back to the page asked for, and only to
	// this site.
	resp, _ := c.get("/lanes?topic=payouts")
	if loc := resp.Header.Get("Location"); loc != "/signin?next="+url.QueryEscape("/lanes?topic=payouts") {
		t.Errorf("Location %q", loc)
	}
	for _, next := range []string{"//evil.example/", "https://evil.example/", "/\\evil.example"} {
		_, form := c.get("/signin?next=" + url.QueryEscape(next))
		if strings.Contains(form, "evil.example") {
			t.Errorf("next=%q kept in the sign-in form", next)
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// A wrong token, an unknown user, an empty token and a token of another
// user are all refused with the same message and no session cookie.
func TestWrongTokenRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *dashboard.Config) { c.SignInAttempts = 100 })
	for _, tc := range []struct{ name, token string }{
		{"alice", "alice-token-wrong-0000000"},
		{"alice", bobToken},
		{"alice", ""},
		{"mallory", aliceToken},
		{"", aliceToken},
		{"alice", aliceToken + "x"},
		{"alice", aliceToken[:len(aliceToken)-1]},
	} {
		c := e.client()
		resp, body := c.trySignIn(tc.name, tc.token)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "Wrong name or token.") {
			t.Errorf("%q/%q: %d\n%s", tc.name, tc.token, resp.StatusCode, body)
		}
		for _, ck := range resp.Cookies() {
			if strings.Contains(ck.Name, "session") && ck.Value != "" {
				t.Errorf("%q: a session cookie was set", tc.name)
			}
		}
		if r, _ := c.get("/"); r.StatusCode != http.StatusSeeOther {
			t.Errorf("%q: signed in after a refused sign-in", tc.name)
		}
	}
	// The right one works, and the page says who is signed in.
	c := e.client().signIn("alice", aliceToken)
	if _, body := c.get("/"); !strings.Contains(body, `<span class="who" title="signed in">alice</span>`) {
		t.Errorf("overview does not name the user:\n%s", body)
	}
	// A sign-in form without its cookie (posted from elsewhere) is refused.
	c2 := e.client()
	resp, _ := c2.post("/signin", url.Values{"csrf": {"x"}, "name": {"alice"}, "token": {aliceToken}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("sign-in without the form's cookie: %d, want 403", resp.StatusCode)
	}
	// A sign-in posted from another origin is refused even with the token.
	c3 := e.client()
	c3.origin = "http://evil.example"
	resp, _ = c3.trySignIn("alice", aliceToken)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin sign-in: %d, want 403", resp.StatusCode)
	}
}

// Five attempts per minute per address, right or wrong; the sixth is
// refused with a clear message and Retry-After, even with the right token;
// other addresses are not affected; after the window it works again.
func TestSignInRateLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	c := e.client()
	for i := 0; i < dashboard.SignInAttemptsDefault; i++ {
		if resp, _ := c.trySignIn("alice", "wrong-token-000000000"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d", i+1, resp.StatusCode)
		}
	}
	resp, body := c.trySignIn("alice", aliceToken)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "Too many sign-in attempts from your address") {
		t.Fatalf("sixth attempt: %d\n%s", resp.StatusCode, body)
	}
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After %q", ra)
	}
	if r, _ := c.get("/"); r.StatusCode != http.StatusSeeOther {
		t.Error("the right token got through the rate limit")
	}
	// Another address still gets its own attempts (the handler is called
	// directly: RemoteAddr is not a connection here).
	form := url.Values{"csrf": {"k"}, "name": {"alice"}, "token": {aliceToken}}
	req := httptest.NewRequest(http.MethodPost, e.srv.URL+"/signin", strings.NewReader(form.Encode()))
	req.RemoteAddr = "192.0.2.7:41000"
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", e.srv.URL)
	req.Host = strings.TrimPrefix(e.srv.URL, "http://")
	req.AddCookie(&http.Cookie{Name: "outboxkit_signin", Value: "k"})
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther {
		t.Errorf("another address: %d, want 303\n%s", rec.Code, rec.Body.String())
	}
	e.clock.Advance(dashboard.SignInWindowDefault + time.Second)
	if resp, _ := c.trySignIn("alice", aliceToken); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after the window: %d, want 303", resp.StatusCode)
	}
	if !strings.Contains(e.logs.String(), "sign-in rate limit") {
		t.Error("the rate limit is not logged")
	}
}

// A signed-in browser that is made to POST by another site, or a form
// without the session's token, changes nothing.
func TestCrossSiteRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ids := seedParked(t, e.db.Pool, "payouts", "p-1", []byte(`{}`), []byte(`{}`))
	c := e.client().signIn("alice", aliceToken)
	path := "/events/o:" + itoa(ids[0]) + "/replay"
	good := c.csrf
	cases := []struct {
		name    string
		csrf    string // "" = none
		origin  string
		referer string
		site    string
	}{
		{"no csrf token", "", e.srv.URL, "", ""},
		{"wrong csrf token", "AAAA" + good[4:], e.srv.URL, "", ""},
		{"another session's token", "", e.srv.URL, "", ""},
		{"foreign origin", good, "http://evil.example", "", ""},
		{"null origin", good, "null", "", ""},
		{"no origin or referer", good, "", "", ""},
		{"foreign referer", good, "", "http://evil.example/page", ""},
		{"sec-fetch-site cross-site", good, e.srv.URL, "", "cross-site"},
		{"origin with another port", good, strings.Replace(e.srv.URL, ":", ":1", 2), "", ""},
	}
	other := e.client().signIn("bob", bobToken)
	for _, tc := range cases {
		form := url.Values{"reason": {"attack"}}
		switch {
		case tc.name == "another session's token":
			form.Set("csrf", other.csrf)
		case tc.csrf != "":
			form.Set("csrf", tc.csrf)
		default:
			form.Set("csrf", "")
		}
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		if tc.referer != "" {
			req.Header.Set("Referer", tc.referer)
		}
		if tc.site != "" {
			req.Header.Set("Sec-Fetch-Site", tc.site)
		}
		resp, body := c.do(req)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "Refused") {
			t.Errorf("%s: %d, want 403\n%s", tc.name, resp.StatusCode, body)
		}
	}
	if got := status(t, e.db.Pool, ids[0]); got != "parked" {
		t.Fatalf("status %s after cross-site requests, want parked", got)
	}
	if a := auditRows(t, e.db.Pool); len(a) != 0 {
		t.Fatalf("cross-site requests wrote audit entries: %+v", a)
	}
	// A same-origin Referer without Origin is accepted, as is the normal form.
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(url.Values{"csrf": {good}, "reason": {"ok"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Referer", e.srv.URL+"/events/o:"+itoa(ids[0]))
	if resp, body := c.do(req); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("same-origin Referer: %d\n%s", resp.StatusCode, body)
	}
	if got := status(t, e.db.Pool, ids[0]); got != "pending" {
		t.Errorf("status %s after the real replay", got)
	}
	// GET never changes anything.
	if _, err := e.db.Pool.Exec(t.Context(), `UPDATE outbox.messages SET status = 'parked' WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	n := len(auditRows(t, e.db.Pool))
	resp, _ := c.get(path + "?reason=x&csrf=" + url.QueryEscape(good))
	if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET on an action: %d, want 404 or 405", resp.StatusCode)
	}
	if got := status(t, e.db.Pool, ids[0]); got != "parked" || len(auditRows(t, e.db.Pool)) != n {
		t.Errorf("GET on an action changed something: status %s", got)
	}
}

// Configured origins replace the request's own.
func TestConfiguredOrigins(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *dashboard.Config) { c.Origins = []string{"https://outbox.bank.example"} })
	c := e.client()
	resp, _ := c.trySignIn("alice", aliceToken)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("own origin not configured: %d, want 403", resp.StatusCode)
	}
	c.origin = "https://outbox.bank.example"
	if resp, _ := c.trySignIn("alice", aliceToken); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("configured origin: %d, want 303", resp.StatusCode)
	}
	if _, err := dashboard.New(e.store, dashboard.Config{Users: testUsers(t), Origins: []string{"outbox.bank.example"}}); err == nil {
		t.Error("an origin without a scheme was accepted")
	}
}

// Sessions end after SessionIdle without a request and after SessionTTL in
// any case; signing out ends them at once.
func TestSessionExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	c := e.client().signIn("alice", aliceToken)
	e.clock.Advance(dashboard.SessionIdleDefault - time.Minute)
	if r, _ := c.get("/lanes"); r.StatusCode != http.StatusOK {
		t.Fatalf("within the idle timeout: %d", r.StatusCode)
	}
	e.clock.Advance(dashboard.SessionIdleDefault)
	if r, _ := c.get("/lanes"); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the idle timeout: %d, want 303", r.StatusCode)
	}
	if r, _ := c.post("/lanes", url.Values{"topic": {"t"}, "key": {"k"}, "verb": {"release"}, "reason": {"r"}}); r.StatusCode != http.StatusForbidden {
		t.Errorf("POST after the idle timeout: %d, want 403", r.StatusCode)
	}

	// Busy all day: the absolute lifetime still ends the session.
	c = e.client().signIn("alice", aliceToken)
	for elapsed := time.Duration(0); elapsed < dashboard.SessionTTLDefault-20*time.Minute; elapsed += 20 * time.Minute {
		e.clock.Advance(20 * time.Minute)
		if r, _ := c.get("/lanes"); r.StatusCode != http.StatusOK {
			t.Fatalf("busy session ended after %s", elapsed)
		}
	}
	e.clock.Advance(20 * time.Minute)
	if r, _ := c.get("/lanes"); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the session TTL: %d, want 303", r.StatusCode)
	}

	// Sign out: the old cookie is dead even if replayed.
	c = e.client().signIn("alice", aliceToken)
	u, _ := url.Parse(e.srv.URL)
	old := c.hc.Jar.Cookies(u)
	if r, _ := c.post("/signout", nil); r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/signin" {
		t.Fatalf("sign out: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	c.hc.Jar.SetCookies(u, old)
	if r, _ := c.get("/lanes"); r.StatusCode != http.StatusSeeOther {
		t.Errorf("old cookie after sign-out: %d, want 303", r.StatusCode)
	}
}

var (
	inlineScript  = regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>\s*[^<\s]`)
	inlineHandler = regexp.MustCompile(`(?i)<[^>]+\son[a-z]+\s*=`)
	inlineStyle   = regexp.MustCompile(`(?i)<style|<[^>]+\sstyle\s*=`)
	scriptSrc     = regexp.MustCompile(`(?i)<script[^>]*>`)
)

// Every response carries the security headers; pages with data are not
// cached; no page has an inline script, handler or style (the CSP would
// block them); the session cookie is HttpOnly and SameSite=Strict.
func TestSecureHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ids := seedParked(t, e.db.Pool, "payouts", "p-1", []byte(`{"a":1}`))
	anon := e.client()
	c := e.client()
	resp, _ := c.trySignIn("alice", aliceToken)
	var sc *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "outboxkit_session" {
			sc = ck
		}
	}
	if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.Path != "/" || sc.Secure ||
		sc.MaxAge != int(dashboard.SessionTTLDefault/time.Second) || len(sc.Value) < 43 {
		t.Errorf("session cookie %+v", sc)
	}
	_, page := c.get("/")
	c.csrf = csrfOf(t, page)

	check := func(what string, resp *http.Response, body string, data bool) {
		t.Helper()
		h := resp.Header
		want := map[string]string{
			"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
			"X-Frame-Options":         "DENY",
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "same-origin",
		}
		if data {
			want["Cache-Control"] = "no-store"
		}
		for k, v := range want {
			if h.Get(k) != v {
				t.Errorf("%s: %s = %q, want %q", what, k, h.Get(k), v)
			}
		}
		if strings.HasPrefix(h.Get("Content-Type"), "text/html") {
			for _, re := range []*regexp.Regexp{inlineScript, inlineHandler, inlineStyle} {
				if m := re.FindString(body); m != "" {
					t.Errorf("%s: inline script or style %q", what, m)
				}
			}
			for _, tag := range scriptSrc.FindAllString(body, -1) {
				if tag != `<script src="/static/app.js" defer>` {
					t.Errorf("%s: script tag %q", what, tag)
				}
			}
		}
	}
	for _, p := range []string{"/", "/events", "/events/o:" + itoa(ids[0]), "/lanes", "/audit", "/system", "/trace?key=p-1",
		"/redrive?preview=1", "/nowhere"} {
		resp, body := c.get(p)
		check("GET "+p, resp, body, true)
	}
	resp, body := anon.get("/signin")
	check("sign-in form", resp, body, true)
	resp, body = anon.get("/")
	check("redirect", resp, body, true)
	resp, body = c.get("/static/app.css")
	check("static css", resp, body, false)
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Errorf("css served as %q", resp.Header.Get("Content-Type"))
	}
	resp, body = c.post("/events/o:"+itoa(ids[0])+"/replay", url.Values{"reason": {"r"}})
	check("action", resp, body, true)
	resp, body = anon.post("/lanes", nil)
	check("refused action", resp, body, true)
}

// With SecureCookies the session cookie is Secure and __Host- prefixed.
func TestSecureCookies(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *dashboard.Config) {
		c.SecureCookies = true
		c.Origins = []string{"https://dash.example"}
	})
	c := e.client()
	c.origin = "https://dash.example"
	resp, body := c.trySignIn("alice", aliceToken)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	found := false
	for _, ck := range resp.Cookies() {
		if ck.Name == "__Host-outboxkit_session" {
			found = ck.Secure && ck.HttpOnly && ck.Path == "/" && ck.Domain == ""
		}
	}
	if !found {
		t.Errorf("no Secure __Host- session cookie in %v", resp.Cookies())
	}
	if resp.Header.Get("Strict-Transport-Security") == "" {
		t.Error("no HSTS header with secure cookies")
	}
}

func TestNewNeedsUsers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	if _, err := dashboard.New(e.store, dashboard.Config{}); !errors.Is(err, dashboard.ErrNoUsers) {
		t.Errorf("no users: %v", err)
	}
	if _, err := dashboard.New(e.store, dashboard.Config{Users: &dashboard.Users{}}); !errors.Is(err, dashboard.ErrNoUsers) {
		t.Errorf("empty users: %v", err)
	}
	if _, err := dashboard.New(nil, dashboard.Config{Users: testUsers(t)}); err == nil {
		t.Error("nil store accepted")
	}
	var _ *ops.Store = e.store
}

func TestParseUsers(t *testing.T) {
	t.Parallel()
	secret := "s3cr3t-token-abcdefghij"
	var u dashboard.Users
	err := u.ParseUsersFile(strings.NewReader("# on-call\n\nalice:" + secret + "\n  bob : " + secret + "-2  \n"))
	if err != nil || u.Len() != 2 || strings.Join(u.Names(), ",") != "alice,bob" {
		t.Fatalf("%v %v", err, u.Names())
	}
	if name, ok := u.Authenticate("bob", secret+"-2"); !ok || name != "bob" {
		t.Error("bob's token")
	}
	if _, ok := u.Authenticate("bob", secret); ok {
		t.Error("alice's token let bob in")
	}
	for _, tc := range []struct{ in, want string }{
		{"alice" + secret, "line 1: use name:token"},
		{"alice:short", "shorter than 16"},
		{"al ice:" + secret, "user name"},
		{"alice:" + secret + "\nalice:" + secret + "x", "line 2: user alice is listed twice"},
		{"alice:" + secret[:8] + " " + secret[8:], "white space"},
	} {
		var u dashboard.Users
		err := u.ParseUsersFile(strings.NewReader(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), secret[:8])) {
			t.Errorf("error shows the token: %v", err)
		}
	}
	var l dashboard.Users
	if err := l.ParseUsersList("alice:" + secret + ", bob"); err == nil || !strings.Contains(err.Error(), "entry 2") || strings.Contains(err.Error(), secret) {
		t.Errorf("list error: %v", err)
	}
}

// Signing in again and again keeps at most 20 sessions of a user alive:
// the oldest ends.
func TestSessionsPerUserBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *dashboard.Config) { c.SignInAttempts = 100 })
	first := e.client().signIn("alice", aliceToken)
	for i := 0; i < 20; i++ {
		e.clock.Advance(time.Second)
		e.client().signIn("alice", aliceToken)
	}
	if r, _ := first.get("/lanes"); r.StatusCode != http.StatusSeeOther {
		t.Errorf("the oldest of 21 sessions is still alive: %d", r.StatusCode)
	}
}
