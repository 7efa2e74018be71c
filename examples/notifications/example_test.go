package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
	)
}

// TestNotifications runs the whole example in a database of its own against
// the test RabbitMQ, with a shorter outage, and fails unless every check of
// the story holds.
func TestNotifications(t *testing.T) {
	db := testenv.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, &out, Config{DatabaseURL: db.URL, RabbitMQURL: testenv.RabbitURL(), Outage: 1500 * time.Millisecond})
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out.Bytes(), []byte("checks hold")) {
		t.Fatal("the story did not reach its verdict")
	}
}
