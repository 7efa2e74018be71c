package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// run executes the command line with the given environment and returns
// stdout, stderr and the exit status.
func run(t *testing.T, environ map[string]string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := MainEnv(context.Background(), args, &Env{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return environ[k] }})
	return out.String(), errOut.String(), code
}

func TestHelpAndUnknownCommand(t *testing.T) {
	t.Parallel()
	out, _, code := run(t, nil, "help")
	if code != 0 || !strings.Contains(out, "migrate") {
		t.Fatalf("help: code %d\n%s", code, out)
	}
	_, errOut, code := run(t, nil, "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: code %d %q", code, errOut)
	}
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	db := testenv.NewEmptyDB(t)
	env := map[string]string{"DATABASE_URL": db.URL}

	_, errOut, code := run(t, nil, "migrate", "up")
	if code != 2 || !strings.Contains(errOut, "DATABASE_URL") {
		t.Fatalf("without a database: code %d %q", code, errOut)
	}
	out, errOut, code := run(t, env, "migrate", "up")
	if code != 0 || !strings.Contains(out, "version 1") {
		t.Fatalf("up: code %d out %q err %q", code, out, errOut)
	}
	out, _, code = run(t, env, "migrate", "up")
	if code != 0 || !strings.Contains(out, "version 1") {
		t.Fatalf("second up: code %d out %q", code, out)
	}
	out, _, code = run(t, nil, "migrate", "version", "--database-url", db.URL)
	if code != 0 || !strings.Contains(out, "version 1 of 1 (clean)") {
		t.Fatalf("version via flag: code %d out %q", code, out)
	}
	out, _, code = run(t, env, "migrate", "down")
	if code != 0 || !strings.Contains(out, "version 0") {
		t.Fatalf("down: code %d out %q", code, out)
	}
	out, _, code = run(t, nil, "migrate", "print", "--outbox-schema", "pay_outbox", "--partitions", "4")
	if code != 0 || !strings.Contains(out, `CREATE TABLE "pay_outbox".messages`) || !strings.Contains(out, "% 4)") {
		t.Fatalf("print: code %d\n%.300s", code, out)
	}
	_, errOut, code = run(t, nil, "migrate", "sideways", "--database-url", db.URL)
	if code != 2 || !strings.Contains(errOut, "sideways") {
		t.Fatalf("bad action: code %d %q", code, errOut)
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	_, errOut, code := run(t, map[string]string{"DATABASE_URL": "postgres://app:hunter2-secret@127.0.0.1:1/app?connect_timeout=2"}, "migrate", "up")
	if code != 1 {
		t.Fatalf("code %d, want 1 (connection refused)", code)
	}
	if strings.Contains(errOut, "hunter2-secret") {
		t.Fatalf("password printed: %s", errOut)
	}
}
