package dashboard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/outboxkit/outboxkit/internal/safetext"
)

// pageData is what the layout needs, plus the page's own Data.
type pageData struct {
	Title   string
	Nav     string
	User    string
	CSRF    string
	Flash   *flash
	Refresh int // seconds; 0 = no auto-refresh
	Data    any
}

func (s *server) pd(rc reqCtx, title, nav string, data any) pageData {
	return pageData{Title: title, Nav: nav, User: rc.sess.user, CSRF: rc.sess.csrf, Flash: rc.sess.flash, Data: data}
}

var funcs = template.FuncMap{
	"vis": safetext.Escape,
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"tsp": func(t *time.Time) string {
		if t == nil || t.IsZero() {
			return ""
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return human(time.Since(t))
	},
	"secs": func(v float64) string { return human(time.Duration(v * float64(time.Second))) },
	"join": strings.Join,
	"short": func(id string) string {
		if len(id) > 13 {
			return id[:8] + "…" + id[len(id)-4:]
		}
		return id
	},
	"pretty": func(v any) string {
		if v == nil {
			return ""
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Sprint(v)
		}
		return safetext.Escape(string(b))
	},
	"oneline": func(s string, n int) string {
		s = strings.Join(strings.Fields(s), " ")
		if len(s) > n {
			s = truncate(s, n) + "…"
		}
		return safetext.Escape(s)
	},
	"hasPrefix": strings.HasPrefix,
}

// human writes a duration the way people say it: 4s, 3m10s, 2h05m, 3d4h.
func human(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

// parsePages parses each page template with the layout.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := strings.TrimPrefix(n, "templates/")
		if base == "layout.html" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("dashboard: template %s: %w", base, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// render writes a page. It renders to a buffer first, so a template error
// becomes a clean 500 instead of half a page.
func (s *server) render(w http.ResponseWriter, r *http.Request, status int, page string, data pageData) {
	t, ok := s.pages[page]
	if !ok {
		s.cfg.Logger.Error("dashboard: no such template", slog.String("page", page))
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", data); err != nil {
		s.cfg.Logger.Error("dashboard: render", slog.String("page", page), slog.Any("error", err))
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(buf.Bytes()) //nolint:errcheck // the client went away
	}
}

// redirectFlash sets a one-time message and sends the browser to path
// (post/redirect/get: reloading the result page does not repeat the action).
func (s *server) redirectFlash(w http.ResponseWriter, r *http.Request, rc reqCtx, path, kind, text string) {
	s.sessions.setFlash(rc.id, flash{Kind: kind, Text: text})
	http.Redirect(w, r, path, http.StatusSeeOther)
}
