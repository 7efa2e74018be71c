package cli

import (
	"errors"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/outboxkit/outboxkit/internal/ops"
)

// FuzzParseWhen checks the time filter of dlq, audit and replay (--from,
// --to, --since): it never panics, a refusal says what to type, a duration
// means that long before now (never after it), and an absolute time printed
// back in RFC 3339 parses to the same instant.
//
//	go test ./internal/cli -run '^$' -fuzz '^FuzzParseWhen$' -fuzztime 30s
func FuzzParseWhen(f *testing.F) {
	for _, s := range []string{"", "2h", "90s", "0s", "-1h", "1h30m", "2026-11-23T10:00:00Z",
		"2026-11-23T10:00:00.123456789+05:30", "2026-11-23T10:00", "2026-11-23 10:00", "2026-11-23",
		"yesterday", "9999999999h", "2026-13-40", "2026-11-23T10:00:00+24:00", " 2h", "2h\x00", "\xff"} {
		f.Add(s, int64(1_795_000_000_000_000_000))
	}
	f.Fuzz(func(t *testing.T, s string, nowNanos int64) {
		now := time.Unix(0, nowNanos)
		got, err := parseWhen(s, now)
		if err != nil {
			if !got.IsZero() {
				t.Fatalf("parseWhen(%q) returned %v with an error", s, got)
			}
			if msg := err.Error(); !strings.Contains(msg, "use RFC 3339") && !strings.Contains(msg, "use a positive duration") {
				t.Fatalf("parseWhen(%q): the error does not say what to type: %v", s, err)
			}
			return
		}
		if s == "" {
			if !got.IsZero() {
				t.Fatalf("an empty filter means no bound, got %v", got)
			}
			return
		}
		if d, derr := time.ParseDuration(s); derr == nil {
			if d < 0 {
				t.Fatalf("parseWhen(%q) accepted a negative duration", s)
			}
			if !got.Equal(now.Add(-d)) || got.After(now) {
				t.Fatalf("parseWhen(%q) = %v, want %v (that long before %v)", s, got, now.Add(-d), now)
			}
			return
		}
		back, err := parseWhen(got.Format(time.RFC3339Nano), now)
		if err != nil || !back.Equal(got) {
			t.Fatalf("parseWhen(%q) = %v; printed as %q it parses to %v, %v", s, got, got.Format(time.RFC3339Nano), back, err)
		}
	})
}

// FuzzFilterFlags checks the filter flags of dlq list and redrive as the
// command line passes them: whatever the values, parsing never panics, a
// refusal is a usage error (exit status 2), and an accepted filter is what
// was asked for: the kind is outbox, inbox or both, the text filters are
// passed through untouched (they become query parameters, never SQL), and
// --from is before --to.
//
//	go test ./internal/cli -run '^$' -fuzz '^FuzzFilterFlags$' -fuzztime 30s
func FuzzFilterFlags(f *testing.F) {
	f.Add("", "", "", "", "", "", "", "100")
	f.Add("outbox", "payments", "payout-42", "billing", "transient", "timeout", "2h", "1h")
	f.Add("inbox", "x'; DROP TABLE outbox.messages; --", "$(rm -rf /)", "`id`", "poison_format", "%_\\", "2026-11-23", "2026-11-24T00:00:00Z")
	f.Add("both", "t", "k\x00", "c\xff", "", "", "1h", "2h")
	f.Add("", "-", "--", "-json", "", "", "-1h", "-5")
	f.Add("", "", "", "", "", "", "2026-11-24", "2026-11-23")
	f.Fuzz(func(t *testing.T, kind, topic, key, consumer, class, errText, from, to string) {
		var o opsFlags
		env := &Env{Stdout: io.Discard, Stderr: io.Discard, Getenv: func(string) string { return "" }}
		fs := newFlagSet(env, "dlq list", "dlq list")
		o.register(fs, env)
		o.registerFilter(fs)
		args := []string{"--kind=" + kind, "--topic=" + topic, "--key=" + key, "--consumer=" + consumer,
			"--class=" + class, "--error=" + errText, "--from=" + from, "--to=" + to}
		if _, err := parse(fs, args); err != nil {
			t.Fatalf("string flags with = never fail to parse: %v", err)
		}
		now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
		got, err := o.resolveFilter(now)
		if err != nil {
			if !errors.Is(err, errUsage) {
				t.Fatalf("refusal is not a usage error: %v", err)
			}
			if !utf8.ValidString(err.Error()) && utf8.ValidString(kind+from+to) {
				t.Fatalf("error text is not valid UTF-8: %q", err.Error())
			}
			return
		}
		switch {
		case kind == "" && got.Kind == "", kind == "outbox" && got.Kind == ops.KindOutbox, kind == "inbox" && got.Kind == ops.KindInbox:
		default:
			t.Fatalf("--kind %q accepted as %q", kind, got.Kind)
		}
		if got.Topic != topic || got.Key != key || got.Consumer != consumer || got.Class != class || got.ErrorText != errText {
			t.Fatalf("text filters changed: %+v", got)
		}
		if !got.From.IsZero() && !got.To.IsZero() && !got.From.Before(got.To) {
			t.Fatalf("accepted --from %q not before --to %q", from, to)
		}
		if got.Limit != 100 {
			t.Fatalf("limit %d, want the default 100", got.Limit)
		}
	})
}

// FuzzParseDays checks the sweeper's duration flags (retention, thresholds:
// 7d, 36h, 1d12h): never a panic, and an accepted value is exactly the days
// plus the Go duration, never a value that overflowed into something else
// (a retention that wrapped around would delete the wrong rows).
//
//	go test ./internal/cli -run '^$' -fuzz '^FuzzParseDays$' -fuzztime 30s
func FuzzParseDays(f *testing.F) {
	for _, s := range []string{"7d", "14d", "1d12h", "36h", "90s", "0d", "d", "-1d", "1d-1h", "106751d",
		"106752d", "9223372036854775807d", "1d9223372036854775807ns", " 7d ", "7D", "7dd", "1.5d", "+3d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseDays(s)
		if err != nil {
			if !strings.Contains(err.Error(), "use e.g. 7d, 36h or 90s") {
				t.Fatalf("parseDays(%q): the error does not say what to type: %v", s, err)
			}
			return
		}
		// The value it must be, computed without overflow.
		want := new(big.Int)
		rest := strings.TrimSpace(s)
		if i := strings.IndexByte(rest, 'd'); i > 0 {
			days, ok := new(big.Int).SetString(rest[:i], 10)
			if !ok {
				t.Fatalf("parseDays(%q) accepted days %q that are not a number", s, rest[:i])
			}
			want.Mul(days, big.NewInt(int64(24*time.Hour)))
			rest = rest[i+1:]
		}
		if rest != "" {
			d, err := time.ParseDuration(rest)
			if err != nil {
				t.Fatalf("parseDays(%q) accepted %q that is not a duration", s, rest)
			}
			want.Add(want, big.NewInt(int64(d)))
		}
		if want.Cmp(big.NewInt(int64(got))) != 0 {
			t.Fatalf("parseDays(%q) = %d, want %s (overflow)", s, int64(got), want)
		}
		if got < 0 {
			t.Fatalf("parseDays(%q) = %v: a negative duration", s, got)
		}
	})
}
