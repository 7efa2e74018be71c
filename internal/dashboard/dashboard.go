// Package dashboard is the web dashboard of outboxkit (`outboxkit serve`):
// the operator views and actions of `outboxkit dlq`, `lanes`, `trace`,
// `stats` and `audit` as server-rendered pages.
//
// Every page and action needs a signed-in user. Users and their tokens come
// from configuration (Users); a sign-in starts a server-side session (a
// random 32-byte cookie, HttpOnly, SameSite=Strict, Secure over TLS) that
// ends after SessionTTL or SessionIdle without a request. Sign-in attempts
// are limited per remote address. Only POST changes anything, and every POST
// carries the session's CSRF token and must come from the dashboard's own
// origin. Every action goes through ops.Store with the signed-in user as
// the actor and the reason typed in the form, so it lands in the audit log.
//
// Pages are html/template (everything escaped) with one embedded CSS file and
// one small JS file, served under a Content-Security-Policy without inline
// scripts or styles. Charts are SVG drawn on the server from a Sampler.
package dashboard

import (
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/outboxkit/outboxkit/internal/ops"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Defaults of Config.
const (
	SessionTTLDefault     = 8 * time.Hour
	SessionIdleDefault    = 30 * time.Minute
	SignInAttemptsDefault = 5
	SignInWindowDefault   = time.Minute
)

// The security headers of every response.
const (
	ContentSecurityPolicy = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

// Config configures the dashboard. Users is required; every other zero
// value is a documented default.
type Config struct {
	// Users may sign in. At least one is required.
	Users *Users
	// SessionTTL is the longest a session lives, however busy (default 8h).
	SessionTTL time.Duration
	// SessionIdle ends a session after this long without a request
	// (default 30m).
	SessionIdle time.Duration
	// SecureCookies marks the cookies Secure (sent over HTTPS only) and
	// names the session cookie with the __Host- prefix. Set it when the
	// dashboard is served over TLS, directly or behind a TLS proxy. Cookies
	// of requests that arrive over TLS are Secure anyway.
	SecureCookies bool
	// Origins are the origins (scheme://host[:port]) a POST may come from.
	// Default: the origin the request was sent to (its Host header, https
	// when TLS or SecureCookies, else http). Set it behind a proxy that
	// rewrites Host.
	Origins []string
	// SignInAttempts per remote address and SignInWindow limit sign-in
	// attempts (default 5 per minute). Right or wrong, every attempt counts.
	SignInAttempts int
	SignInWindow   time.Duration
	// Sampler, when set, provides the overview's backlog and rate charts.
	// Its owner runs it (Sampler.Run); the dashboard only reads it.
	Sampler *Sampler
	// Logger receives sign-ins, sign-outs, actions and errors, never tokens
	// or payloads (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock of sessions and rate limits (default time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.SessionTTL == 0 {
		c.SessionTTL = SessionTTLDefault
	}
	if c.SessionIdle == 0 {
		c.SessionIdle = SessionIdleDefault
	}
	if c.SignInAttempts == 0 {
		c.SignInAttempts = SignInAttemptsDefault
	}
	if c.SignInWindow == 0 {
		c.SignInWindow = SignInWindowDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Users.Len() == 0:
		return ErrNoUsers
	case c.SessionTTL < time.Minute:
		return errors.New("dashboard: session TTL must be at least 1m")
	case c.SessionIdle < time.Minute:
		return errors.New("dashboard: session idle timeout must be at least 1m")
	case c.SignInAttempts < 1:
		return errors.New("dashboard: sign-in attempts must be at least 1")
	case c.SignInWindow < time.Second:
		return errors.New("dashboard: sign-in window must be at least 1s")
	}
	for _, o := range c.Origins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("dashboard: origin %q: use scheme://host[:port], e.g. https://outbox.example.com", o)
		}
	}
	return nil
}

// server is the dashboard's http.Handler.
type server struct {
	store      *ops.Store
	cfg        Config
	sessions   *sessions
	limiter    *limiter
	pages      map[string]*template.Template
	mux        *http.ServeMux
	cookieName string
	origins    map[string]bool
}

const (
	sessionCookie       = "outboxkit_session"
	secureSessionCookie = "__Host-outboxkit_session"
	signInCookie        = "outboxkit_signin"
	maxFormBytes        = 8 << 20
	maxSignInBytes      = 8 << 10
)

// New returns the dashboard as an http.Handler on store.
func New(store *ops.Store, cfg Config) (http.Handler, error) {
	if store == nil {
		return nil, errors.New("dashboard: New needs an ops.Store")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s := &server{
		store:      store,
		cfg:        cfg,
		sessions:   newSessions(cfg.SessionTTL, cfg.SessionIdle, cfg.Now),
		limiter:    newLimiter(cfg.SignInAttempts, cfg.SignInWindow, cfg.Now),
		pages:      pages,
		mux:        http.NewServeMux(),
		cookieName: sessionCookie,
		origins:    map[string]bool{},
	}
	if cfg.SecureCookies {
		s.cookieName = secureSessionCookie
	}
	for _, o := range cfg.Origins {
		s.origins[strings.TrimSuffix(strings.ToLower(o), "/")] = true
	}
	s.routes()
	return s, nil
}

func (s *server) routes() {
	static, _ := fs.Sub(staticFS, "static")
	fileServer := http.StripPrefix("/static/", http.FileServerFS(static))
	s.mux.Handle("GET /static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		fileServer.ServeHTTP(w, r)
	}))
	s.mux.HandleFunc("GET /signin", s.signInForm)
	s.mux.HandleFunc("POST /signin", s.signIn)
	s.mux.HandleFunc("POST /signout", s.action(s.signOut))

	s.mux.HandleFunc("GET /{$}", s.page(s.overview))
	s.mux.HandleFunc("GET /events", s.page(s.events))
	s.mux.HandleFunc("GET /events/{ref}", s.page(s.event))
	s.mux.HandleFunc("POST /events/{ref}/{verb}", s.action(s.eventAction))
	s.mux.HandleFunc("GET /redrive", s.page(s.redrivePreview))
	s.mux.HandleFunc("POST /redrive", s.action(s.redrive))
	s.mux.HandleFunc("GET /lanes", s.page(s.lanes))
	s.mux.HandleFunc("POST /lanes", s.action(s.laneAction))
	s.mux.HandleFunc("GET /approvals", s.page(s.approvals))
	s.mux.HandleFunc("POST /approvals/{id}/{verb}", s.action(s.approvalAction))
	s.mux.HandleFunc("GET /audit", s.page(s.audit))
	s.mux.HandleFunc("GET /system", s.page(s.system))
	s.mux.HandleFunc("GET /trace", s.page(s.trace))
	s.mux.HandleFunc("/", s.notFound)
}

// ServeHTTP sets the security headers of every response, then routes.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
	h.Set("Cache-Control", "no-store")
	if s.secure(r) {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	s.mux.ServeHTTP(w, r)
}

func (s *server) secure(r *http.Request) bool { return r.TLS != nil || s.cfg.SecureCookies }

// reqCtx is what a signed-in handler knows about its request.
type reqCtx struct {
	id   string // session cookie value
	sess session
}

// signedIn returns the request's live session, if any.
func (s *server) signedIn(r *http.Request) (reqCtx, bool) {
	c, err := r.Cookie(s.cookieName)
	if err != nil {
		return reqCtx{}, false
	}
	sess, ok := s.sessions.get(c.Value)
	return reqCtx{id: c.Value, sess: sess}, ok
}

// page wraps a GET handler: without a session the browser is sent to the
// sign-in page and back afterwards.
func (s *server) page(fn func(http.ResponseWriter, *http.Request, reqCtx)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rc, ok := s.signedIn(r)
		if !ok {
			s.clearSessionCookie(w, r)
			http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		fn(w, r, rc)
	}
}

// action wraps a POST handler: it needs a session, the session's CSRF token
// and a same-origin request; anything else is refused with 403 and changes
// nothing.
func (s *server) action(fn func(http.ResponseWriter, *http.Request, reqCtx)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rc, ok := s.signedIn(r)
		if !ok {
			s.forbidden(w, r, "Sign in first: this action needs a signed-in user.")
			return
		}
		if why := s.crossSite(r); why != "" {
			s.cfg.Logger.Warn("dashboard: cross-site request refused", slog.String("user", rc.sess.user),
				slog.String("path", r.URL.Path), slog.String("why", why), slog.String("remote", remoteIP(r)))
			s.forbidden(w, r, "Refused: "+why+".")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			s.forbidden(w, r, "Refused: the form could not be read (at most 8 MiB).")
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(rc.sess.csrf)) != 1 {
			s.cfg.Logger.Warn("dashboard: bad CSRF token", slog.String("user", rc.sess.user), slog.String("path", r.URL.Path),
				slog.String("remote", remoteIP(r)))
			s.forbidden(w, r, "Refused: the form's security token is missing or stale. Reload the page and try again.")
			return
		}
		fn(w, r, rc)
	}
}

// crossSite says why a POST does not come from the dashboard's own pages,
// or "" when it does: the Origin header (else the Referer) must be the
// dashboard's origin, and Sec-Fetch-Site, when sent, must not be cross-site.
func (s *server) crossSite(r *http.Request) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return "the request comes from another site"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		ref := r.Header.Get("Referer")
		if ref == "" {
			return "the request names no Origin or Referer"
		}
		u, err := url.Parse(ref)
		if err != nil || u.Host == "" {
			return "the request's Referer is not a URL"
		}
		origin = u.Scheme + "://" + u.Host
	}
	origin = strings.ToLower(origin)
	if len(s.origins) > 0 {
		if s.origins[origin] {
			return ""
		}
		return "the request comes from another origin"
	}
	scheme := "http"
	if s.secure(r) {
		scheme = "https"
	}
	if origin != scheme+"://"+strings.ToLower(r.Host) {
		return "the request comes from another origin"
	}
	return ""
}

func (s *server) setSessionCookie(w http.ResponseWriter, r *http.Request, id string) {
	http.SetCookie(w, &http.Cookie{Name: s.cookieName, Value: id, Path: "/", HttpOnly: true, Secure: s.secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.cfg.SessionTTL / time.Second)})
}

func (s *server) clearSessionCookie(w http.ResponseWriter, r *http.Request) {
	if _, err := r.Cookie(s.cookieName); err != nil {
		return
	}
	http.SetCookie(w, &http.Cookie{Name: s.cookieName, Value: "", Path: "/", HttpOnly: true, Secure: s.secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	rc, ok := s.signedIn(r)
	if !ok {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			http.Redirect(w, r, "/signin", http.StatusSeeOther)
			return
		}
		s.forbidden(w, r, "Sign in first.")
		return
	}
	s.errorPage(w, r, rc, http.StatusNotFound, "No such page.")
}

func (s *server) forbidden(w http.ResponseWriter, r *http.Request, msg string) {
	s.render(w, r, http.StatusForbidden, "error.html", pageData{Title: "Refused", Data: msg})
}

func (s *server) errorPage(w http.ResponseWriter, r *http.Request, rc reqCtx, status int, msg string) {
	s.render(w, r, status, "error.html", s.pd(rc, "Error", "", msg))
}

// internalError logs err and shows a page that says where to look.
func (s *server) internalError(w http.ResponseWriter, r *http.Request, rc reqCtx, err error) {
	s.cfg.Logger.Error("dashboard: request failed", slog.String("path", r.URL.Path), slog.String("user", rc.sess.user),
		slog.Any("error", err))
	s.errorPage(w, r, rc, http.StatusInternalServerError, "Something failed while reading the database; the server log has the details.")
}
