package cli

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// outboxkit sweep --metrics-addr serves the sweeper's metrics, and serve
// --metrics-addr the outbox table metrics.
func TestSweepAndServeMetricsAddr(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"sweep"}, "outboxkit_sweeper_leader"},
		{[]string{"serve", "--listen", "127.0.0.1:0"}, "outboxkit_outbox_scrape_ok 1"},
	} {
		addr := freeAddr(t)
		ctx, cancel := context.WithCancel(context.Background())
		var out syncBuffer
		env := &Env{Stdout: &out, Stderr: &out, Getenv: func(k string) string {
			return map[string]string{"DATABASE_URL": db.URL, "OUTBOXKIT_DASHBOARD_USERS": "alice:0123456789abcdef0123"}[k]
		}}
		done := make(chan int, 1)
		go func() { done <- MainEnv(ctx, append(c.args, "--metrics-addr", addr), env) }()
		testenv.Eventually(t, 20*time.Second, c.args[0]+" metrics", func() bool {
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return strings.Contains(string(b), c.want)
		})
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s /readyz: %v %v", c.args[0], err, resp)
		} else {
			resp.Body.Close()
		}
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("%s exit %d:\n%s", c.args[0], code, out.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not stop", c.args[0])
		}
	}
}
