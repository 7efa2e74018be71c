// Package story holds what the examples share that is not outboxkit: a
// printer for the story each example tells, with checks that decide its exit
// status, a wait loop, and the Kafka broker (embedded or real). Read the
// examples for outboxkit itself; nothing here is needed to use it.
package story

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Story prints numbered steps and their lines, and records checks. It is
// used by one goroutine.
type Story struct {
	w      io.Writer
	step   int
	checks int
	failed []string
}

// New returns a Story printing to w.
func New(w io.Writer) *Story { return &Story{w: w} }

// Title prints the example's title.
func (s *Story) Title(format string, args ...any) {
	fmt.Fprintf(s.w, format+"\n", args...)
}

// Step starts a numbered step.
func (s *Story) Step(format string, args ...any) {
	s.step++
	fmt.Fprintf(s.w, "\n%d. %s\n", s.step, fmt.Sprintf(format, args...))
}

// Say prints one line of the current step.
func (s *Story) Say(format string, args ...any) {
	fmt.Fprintf(s.w, "   %s\n", fmt.Sprintf(format, args...))
}

// Block prints text indented under the current step (e.g. a command's
// output).
func (s *Story) Block(text string) {
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Fprintf(s.w, "     | %s\n", l)
	}
}

// Check prints a checked claim and records whether it holds.
func (s *Story) Check(ok bool, format string, args ...any) bool {
	s.checks++
	line := fmt.Sprintf(format, args...)
	mark := "ok  "
	if !ok {
		mark = "FAIL"
		s.failed = append(s.failed, line)
	}
	fmt.Fprintf(s.w, "   [%s] %s\n", mark, line)
	return ok
}

// Err prints the verdict and returns an error naming every failed check, or
// nil when all held.
func (s *Story) Err() error {
	if len(s.failed) == 0 {
		fmt.Fprintf(s.w, "\nall %d checks hold\n", s.checks)
		return nil
	}
	fmt.Fprintf(s.w, "\n%d of %d checks failed\n", len(s.failed), s.checks)
	return fmt.Errorf("%d of %d checks failed: %s", len(s.failed), s.checks, strings.Join(s.failed, "; "))
}

// Wait polls cond every 25ms until it reports true, returns an error, ctx
// ends or timeout passes. what names the condition in the error.
func Wait(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond(ctx)
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%s did not happen within %s", what, timeout)
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Money formats cents as "12.34 EUR".
func Money(cents int64) string {
	sign := ""
	if cents < 0 {
		sign, cents = "-", -cents
	}
	return fmt.Sprintf("%s%d.%02d EUR", sign, cents/100, cents%100)
}
