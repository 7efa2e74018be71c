package chaos_test

import (
	"flag"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

var (
	soakFlag = flag.Duration("soak", 0,
		"run the fault schedule for this long, in passes over every fault kind in a seeded random order "+
			"(0: one pass in a fixed order, about a minute; set -timeout above the soak)")
	seedFlag          = flag.Int64("chaos.seed", 0, "random seed of the workload and the schedule (0: derived from the clock, printed)")
	rateFlag          = flag.Int("chaos.rate", 120, "events per second the producers aim at (committed and rolled back)")
	restartRabbitFlag = flag.Bool("chaos.restart-rabbitmq", false,
		"also restart the RabbitMQ application (rabbitmqctl stop_app, start_app) as a fault; "+
			"this disturbs every other test that uses the broker at the time")
	logsFlag = flag.String("chaos.logs", os.Getenv("OUTBOXKIT_CHAOS_LOGS"),
		"keep the child processes' logs in this directory ($OUTBOXKIT_CHAOS_LOGS; default: a temporary directory)")
	summaryFlag = flag.String("chaos.summary", os.Getenv("OUTBOXKIT_CHAOS_SUMMARY"),
		"also write the summary table to this file ($OUTBOXKIT_CHAOS_SUMMARY)")
)

// TestMain runs a child role when the test binary was started by the chaos
// test as one of its processes (a relay or a consumer); otherwise it runs the
// tests and checks that they leave no goroutine behind.
func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(childMain(role))
	}
	goleak.VerifyTestMain(m, leakOptions()...)
}

// leakOptions are the goroutines that outlive a test legitimately: pgxpool's
// health check finishing after Close, kfake's cluster loop, and toxiproxy's
// links that end a moment after their proxy stopped.
func leakOptions() []goleak.Option {
	opts := []goleak.Option{
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*Cluster).run"),
	}
	for _, f := range testenv.ProxyLeakIgnores {
		opts = append(opts, goleak.IgnoreAnyFunction(f))
	}
	return opts
}

// runLength is how long the fault schedule runs: one pass (0) by default.
func runLength() time.Duration { return *soakFlag }
