package dashboard

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// MinTokenLength is the shortest token a user may have. A dashboard that can
// replay and drop payments is no place for a guessable password: generate
// tokens with `openssl rand -hex 32`.
const MinTokenLength = 16

// ErrNoUsers is returned by New when Config.Users holds nobody.
var ErrNoUsers = errors.New("no dashboard users: pass --users-file FILE (lines name:token) or set OUTBOXKIT_DASHBOARD_USERS=name:token,...")

var userNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// Users are the people who may sign in, each with a secret token. Only a
// SHA-256 hash of each token is kept; tokens are compared in constant time
// and never appear in errors or logs.
type Users struct {
	list []user
}

type user struct {
	name      string
	nameHash  [sha256.Size]byte
	tokenHash [sha256.Size]byte
}

// Len is the number of users.
func (u *Users) Len() int {
	if u == nil {
		return 0
	}
	return len(u.list)
}

// Names lists the user names (never their tokens).
func (u *Users) Names() []string {
	if u == nil {
		return nil
	}
	out := make([]string, len(u.list))
	for i, x := range u.list {
		out[i] = x.name
	}
	return out
}

// Add adds a user. The error names the user, never the token.
func (u *Users) Add(name, token string) error {
	name = strings.TrimSpace(name)
	if !userNamePattern.MatchString(name) {
		return errors.New("user name: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
	}
	if len(token) < MinTokenLength {
		return fmt.Errorf("user %s: the token is shorter than %d characters (generate one with `openssl rand -hex 32`)", name, MinTokenLength)
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return fmt.Errorf("user %s: the token contains white space", name)
	}
	for _, x := range u.list {
		if x.name == name {
			return fmt.Errorf("user %s is listed twice", name)
		}
	}
	u.list = append(u.list, user{name: name, nameHash: sha256.Sum256([]byte(name)), tokenHash: sha256.Sum256([]byte(token))})
	return nil
}

// ParseUsersFile reads lines "name:token"; blank lines and lines starting
// with # are skipped. Errors give the line number, never the line.
func (u *Users) ParseUsersFile(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, token, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("line %d: use name:token", n)
		}
		if err := u.Add(name, strings.TrimSpace(token)); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("line %d: %w", n+1, err)
	}
	return nil
}

// ParseUsersList reads "name:token,name:token" (the form of
// OUTBOXKIT_DASHBOARD_USERS). Errors give the entry's position, never its text.
func (u *Users) ParseUsersList(s string) error {
	for i, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, token, ok := strings.Cut(entry, ":")
		if !ok {
			return fmt.Errorf("entry %d: use name:token", i+1)
		}
		if err := u.Add(name, strings.TrimSpace(token)); err != nil {
			return fmt.Errorf("entry %d: %w", i+1, err)
		}
	}
	return nil
}

// Authenticate returns the user name when name and token match a user. It
// takes the same time whichever part is wrong: both sides are hashed to the
// same length and every user is compared with crypto/subtle.
func (u *Users) Authenticate(name, token string) (string, bool) {
	if u == nil {
		return "", false
	}
	nh := sha256.Sum256([]byte(strings.TrimSpace(name)))
	th := sha256.Sum256([]byte(token))
	found := -1
	for i := range u.list {
		ok := subtle.ConstantTimeCompare(nh[:], u.list[i].nameHash[:]) & subtle.ConstantTimeCompare(th[:], u.list[i].tokenHash[:])
		if ok == 1 {
			found = i
		}
	}
	if found < 0 || token == "" {
		return "", false
	}
	return u.list[found].name, true
}
