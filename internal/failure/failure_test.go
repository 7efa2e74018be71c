package failure

import (
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestClassOf(t *testing.T) {
	cases := []struct {
		err  error
		want Class
	}{
		{New(Unroutable, errors.New("no route")), Unroutable},
		{fmt.Errorf("wrapped: %w", New(PoisonFormat, errors.New("x"))), PoisonFormat},
		{&pgconn.PgError{Code: "40001"}, Transient},
		{&pgconn.PgError{Code: "08006"}, DependencyOutage},
		{&pgconn.PgError{Code: "22P02"}, Permanent},
		{&pgconn.PgError{Code: "23505"}, Conflict},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), DependencyOutage},
		{io.EOF, DependencyOutage},
		// What pgx returns for a connection whose socket went away (found
		// by the chaos soak: an inbox adapter starting during a database
		// cut exited instead of waiting).
		{fmt.Errorf("inbox: %w", pgconn.ErrConnClosed), DependencyOutage},
		{errors.New("something odd"), Transient},
		{&Error{Class: "bogus", Err: errors.New("x")}, Transient},
	}
	for _, c := range cases {
		if got := ClassOf(c.err); got != c.want {
			t.Errorf("ClassOf(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	if ClassOf(nil) != "" {
		t.Error("ClassOf(nil) must be empty")
	}
	if New(Transient, nil) != nil {
		t.Error("New(class, nil) must be nil")
	}
}

func TestClassPolicy(t *testing.T) {
	for _, c := range Classes {
		if !c.Valid() {
			t.Errorf("%s not valid", c)
		}
	}
	if !Transient.Retry() || !Transient.CountsAttempt() {
		t.Error("transient: retry and count")
	}
	if !DependencyOutage.Retry() || DependencyOutage.CountsAttempt() {
		t.Error("dependency_outage: retry without counting")
	}
	for _, c := range []Class{Unroutable, PoisonFormat, Permanent, Conflict, NoHandler} {
		if c.Retry() {
			t.Errorf("%s must not retry", c)
		}
	}
}
