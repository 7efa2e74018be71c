package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net"
	"net/http"
	"sync"
	"time"
)

// session is one signed-in browser. The cookie carries a random 32-byte id;
// the server keeps only its SHA-256, so a memory dump of the map does not
// give working cookies.
type session struct {
	user    string
	csrf    string
	created time.Time
	seen    time.Time
	flash   *flash
}

// flash is a one-time message shown on the next page (post/redirect/get).
type flash struct {
	Kind string // "ok" or "error"
	Text string
}

// sessions is the in-memory session store. Expired sessions are removed
// lazily on every new sign-in, so the map is bounded by the sessions alive.
type sessions struct {
	mu   sync.Mutex
	m    map[[sha256.Size]byte]*session
	ttl  time.Duration // absolute lifetime
	idle time.Duration // lifetime without a request
	now  func() time.Time
}

func newSessions(ttl, idle time.Duration, now func() time.Time) *sessions {
	return &sessions{m: map[[sha256.Size]byte]*session{}, ttl: ttl, idle: idle, now: now}
}

// randomToken returns 32 random bytes, base64url-encoded.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) //nolint:errcheck // crypto/rand never fails (it crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *sessions) expired(x *session, now time.Time) bool {
	return now.Sub(x.created) >= s.ttl || now.Sub(x.seen) >= s.idle
}

// maxSessionsPerUser bounds the live sessions of one user: signing in once
// more ends the oldest, so a script that signs in in a loop cannot fill the
// memory.
const maxSessionsPerUser = 20

// create starts a session for user and returns its cookie value.
func (s *sessions) create(user string) string {
	id := randomToken()
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	mine := 0
	var oldest [sha256.Size]byte
	var oldestAt time.Time
	for k, x := range s.m {
		if s.expired(x, now) {
			delete(s.m, k)
			continue
		}
		if x.user == user {
			mine++
			if oldestAt.IsZero() || x.created.Before(oldestAt) {
				oldest, oldestAt = k, x.created
			}
		}
	}
	if mine >= maxSessionsPerUser {
		delete(s.m, oldest)
	}
	s.m[sha256.Sum256([]byte(id))] = &session{user: user, csrf: randomToken(), created: now, seen: now}
	return id
}

// get returns a copy of the live session with this cookie value and marks
// it seen; expired sessions are removed.
func (s *sessions) get(id string) (session, bool) {
	if id == "" {
		return session{}, false
	}
	k := sha256.Sum256([]byte(id))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	x, ok := s.m[k]
	if !ok {
		return session{}, false
	}
	if s.expired(x, now) {
		delete(s.m, k)
		return session{}, false
	}
	x.seen = now
	c := *x
	x.flash = nil
	return c, true
}

func (s *sessions) setFlash(id string, f flash) {
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	if x, ok := s.m[k]; ok {
		x.flash = &f
	}
}

func (s *sessions) delete(id string) {
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, k)
}

// limiter allows a fixed number of sign-in attempts per remote address in
// each window. The map is pruned when it grows, so an attacker cycling
// through addresses costs memory for one window at most.
type limiter struct {
	mu     sync.Mutex
	max    int
	window time.Duration
	now    func() time.Time
	m      map[string]*bucket
}

type bucket struct {
	start time.Time
	n     int
}

const limiterPruneAt = 10000

func newLimiter(max int, window time.Duration, now func() time.Time) *limiter {
	return &limiter{max: max, window: window, now: now, m: map[string]*bucket{}}
}

// allow counts an attempt from addr and reports whether it may go on, and
// if not, how long until it may.
func (l *limiter) allow(addr string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.m) >= limiterPruneAt {
		for k, b := range l.m {
			if now.Sub(b.start) >= l.window {
				delete(l.m, k)
			}
		}
	}
	b, ok := l.m[addr]
	if !ok || now.Sub(b.start) >= l.window {
		b = &bucket{start: now}
		l.m[addr] = b
	}
	if b.n >= l.max {
		return false, b.start.Add(l.window).Sub(now)
	}
	b.n++
	return true, 0
}

// remoteIP is the address the connection comes from. X-Forwarded-For is not
// trusted: anyone can send it.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
