package sweeper_test

import (
	"context"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxkit/outboxkit/sweeper"
)

// Embedding the sweeper in a service: it runs until SIGTERM; of all the
// replicas of the service, one is the leader and runs the jobs.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	s, err := sweeper.New(pool, &sweeper.Config{
		PublishedRetention: 3 * 24 * time.Hour,
		ProcessedRetention: 14 * 24 * time.Hour,
		Schedules:          map[sweeper.Job]string{sweeper.JobRetention: "0 */10 * * * *", sweeper.JobReconcile: sweeper.Off},
		Consumers:          map[string][]string{"billing": {"payments"}},
		Logger:             slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry() // served on /metrics by promhttp.HandlerFor(reg, ...)
	reg.MustRegister(s.Metrics())
	if err := s.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// Running one job now, as outboxkit sweep --once does.
func ExampleSweeper_RunJob() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	s, err := sweeper.New(pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	res, err := s.RunJob(ctx, sweeper.JobReconcile)
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range res.Reconcile.Consumers {
		log.Printf("%s/%s: %d published, %d applied, %d dead-lettered, %d missing %v",
			c.Consumer, c.Topic, c.Published, c.Applied, c.DeadLettered, c.Missing, c.MissingEventIDs)
	}
}
