package main

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outboxkit/outboxkit/examples/internal/story"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*Cluster).run"),
	)
}

// TestRedrive runs the whole example in a database of its own, exactly as
// "go run ./examples/redrive" does (KAFKA_BROKERS included), and fails
// unless every check of the story holds.
func TestRedrive(t *testing.T) {
	db := testenv.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, &out, Config{DatabaseURL: db.URL, KafkaBrokers: story.SplitList(os.Getenv("KAFKA_BROKERS"))})
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out.Bytes(), []byte("checks hold")) {
		t.Fatal("the story did not reach its verdict")
	}
}
