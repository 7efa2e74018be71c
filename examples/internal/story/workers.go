package story

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/outboxkit/outboxkit/internal/cli"
)

// Workers runs an example's long-running parts (relay, consumers), each
// until it is stopped. Each part's Run returns only after its own goroutines
// ended, so once StopAll returned nothing the example started is left.
type Workers struct {
	mu    sync.Mutex
	stops []func()
	errs  []error
}

// Start runs run(ctx) in a goroutine and returns the function that stops it
// (cancels its context and waits for it to return). An error returned
// before the stop is kept for Err.
func (g *Workers) Start(ctx context.Context, name string, run func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil && ctx.Err() == nil {
			g.mu.Lock()
			g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
			g.mu.Unlock()
		}
	}()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	g.mu.Lock()
	g.stops = append(g.stops, stop)
	g.mu.Unlock()
	return stop
}

// Err returns the errors of parts that stopped by themselves.
func (g *Workers) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return errors.Join(g.errs...)
}

// StopAll stops every part still running, the last started first.
func (g *Workers) StopAll() {
	g.mu.Lock()
	stops := g.stops
	g.stops = nil
	g.mu.Unlock()
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
}

// Outboxkit runs an outboxkit command (the same code as the outboxkit
// binary) on the given database and schemas, and returns what it printed.
func Outboxkit(ctx context.Context, databaseURL, outboxSchema, inboxSchema string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	args = append(args, "--database-url", databaseURL, "--outbox-schema", outboxSchema, "--inbox-schema", inboxSchema)
	env := &cli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }}
	if code := cli.MainEnv(ctx, args, env); code != 0 {
		return "", fmt.Errorf("outboxkit %s: exit status %d: %s", args[0], code, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Redact hides the password of a connection URL.
func Redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}

// SplitList splits a comma-separated list, dropping empty items.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
