package dashboard

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

type signInData struct {
	Next    string
	Message string
}

// safeNext keeps a post-sign-in destination on this site: a local path,
// never //host or a scheme.
func safeNext(next string) string {
	if next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") ||
		strings.ContainsAny(next, "\r\n\\") || strings.HasPrefix(next, "/signin") {
		return "/"
	}
	return next
}

// signInForm shows the sign-in form. The form carries a token that must
// match a cookie set with it (double submit), so another site cannot sign a
// browser in under someone else's name.
func (s *server) signInForm(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.signedIn(r); ok {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	s.clearSessionCookie(w, r)
	s.renderSignIn(w, r, http.StatusOK, safeNext(r.URL.Query().Get("next")), "")
}

func (s *server) renderSignIn(w http.ResponseWriter, r *http.Request, status int, next, msg string) {
	// Keep the token of a form already open: a second load (another tab,
	// the browser's own requests) must not invalidate the first form.
	tok := randomToken()
	if c, err := r.Cookie(signInCookie); err == nil && len(c.Value) == len(tok) {
		tok = c.Value
	}
	http.SetCookie(w, &http.Cookie{Name: signInCookie, Value: tok, Path: "/signin", HttpOnly: true, Secure: s.secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: 3600})
	s.render(w, r, status, "signin.html", pageData{Title: "Sign in", CSRF: tok, Data: signInData{Next: next, Message: msg}})
}

func (s *server) signIn(w http.ResponseWriter, r *http.Request) {
	ip := remoteIP(r)
	if ok, wait := s.limiter.allow(ip); !ok {
		secs := int(math.Ceil(wait.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		s.cfg.Logger.Warn("dashboard: sign-in rate limit", slog.String("remote", ip))
		s.renderSignIn(w, r, http.StatusTooManyRequests, "/",
			fmt.Sprintf("Too many sign-in attempts from your address. Wait %d seconds, then try again.", secs))
		return
	}
	if why := s.crossSite(r); why != "" {
		s.cfg.Logger.Warn("dashboard: cross-site sign-in refused", slog.String("remote", ip), slog.String("why", why))
		s.forbidden(w, r, "Refused: "+why+".")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxSignInBytes)
	if err := r.ParseForm(); err != nil {
		s.forbidden(w, r, "Refused: the form could not be read.")
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	c, err := r.Cookie(signInCookie)
	if err != nil || c.Value == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostForm.Get("csrf"))) != 1 {
		s.renderSignIn(w, r, http.StatusForbidden, next, "The sign-in form expired or came from another site. Try again.")
		return
	}
	name, ok := s.cfg.Users.Authenticate(r.PostForm.Get("name"), r.PostForm.Get("token"))
	if !ok {
		// The name is not logged: people paste tokens into the wrong field.
		s.cfg.Logger.Warn("dashboard: sign-in failed", slog.String("remote", ip))
		s.renderSignIn(w, r, http.StatusUnauthorized, next, "Wrong name or token.")
		return
	}
	id := s.sessions.create(name)
	s.setSessionCookie(w, r, id)
	http.SetCookie(w, &http.Cookie{Name: signInCookie, Value: "", Path: "/signin", HttpOnly: true, Secure: s.secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	s.cfg.Logger.Info("dashboard: signed in", slog.String("user", name), slog.String("remote", ip),
		slog.Duration("session_ttl", s.cfg.SessionTTL), slog.Duration("session_idle", s.cfg.SessionIdle))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *server) signOut(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	s.sessions.delete(rc.id)
	http.SetCookie(w, &http.Cookie{Name: s.cookieName, Value: "", Path: "/", HttpOnly: true, Secure: s.secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	s.cfg.Logger.Info("dashboard: signed out", slog.String("user", rc.sess.user), slog.Duration("session_age",
		s.cfg.Now().Sub(rc.sess.created).Round(time.Second)))
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}
