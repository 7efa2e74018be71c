package relay_test

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/relay"
	"github.com/outboxkit/outboxkit/relay/kafka"
)

// childMain runs a relay in this process when the test binary was started
// as a child by TestSIGKILLMidBatchLosesNothing. It never returns normally:
// the parent kills it.
func childMain() bool {
	if os.Getenv("OUTBOXKIT_RELAY_CHILD") != "1" {
		return false
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("OUTBOXKIT_CHILD_DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	pub, err := kafka.New(kafka.Config{Brokers: strings.Split(os.Getenv("OUTBOXKIT_CHILD_KAFKA"), ",")})
	if err != nil {
		panic(err)
	}
	r, err := relay.New(pool, &relay.Config{Publisher: pub, LeaseTTL: 2 * time.Second, BatchSize: 200,
		PollInterval: 100 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	if err := r.Run(ctx); err != nil {
		panic(err)
	}
	os.Exit(0)
	return true
}

// A relay process killed with SIGKILL in the middle of its work loses
// nothing: its leases expire, another relay takes over and publishes every
// event that was not marked (some twice: at-least-once).
func TestSIGKILLMidBatchLosesNothing(t *testing.T) {
	t.Parallel()
	db := testenv.NewDB(t)
	k := testenv.NewKafka(t)
	topic := testenv.UniqueName("killed")
	k.CreateTopic(t, topic, 4)
	const total = 6000
	ids := enqueue(t, db.Pool, topic, total, 100, 1000)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var childLog strings.Builder
	defer func() {
		if t.Failed() {
			t.Logf("child relay output:\n%s", childLog.String())
		}
	}()
	for round := 0; round < 2; round++ {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "OUTBOXKIT_RELAY_CHILD=1", "OUTBOXKIT_CHILD_DATABASE_URL="+db.URL,
			"OUTBOXKIT_CHILD_KAFKA="+strings.Join(k.Brokers, ","))
		cmd.Stderr = &childLog
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		target := (round + 1) * total / 4
		testenv.Eventually(t, 60*time.Second, "child relay publishing", func() bool {
			select {
			case <-exited:
				t.Fatalf("child relay exited early: %v", cmd.ProcessState)
			default:
			}
			return countStatus(t, db.Pool, "published") >= target
		})
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exited
	}
	if n := countStatus(t, db.Pool, "published"); n >= total {
		t.Fatalf("the child published everything (%d) before being killed: the test proves nothing", n)
	}
	// The killed relay's leases are still held; a new relay gets them when
	// they expire.
	runRelay(t, newPool(t, db.URL, 4), fastConfig(t, kafkaPublisher(t, k)))
	waitPublished(t, db.Pool, total, 90*time.Second)

	recs := k.Records(t, topic, total, 60*time.Second)
	got := checkOrder(t, recs)
	for _, id := range ids {
		if !got[id.String()] {
			t.Fatalf("event %s lost", id)
		}
	}
	t.Logf("%d events, %d records in Kafka (%d duplicates from the kills)", total, len(recs), len(recs)-total)
	_ = context.Background
}
