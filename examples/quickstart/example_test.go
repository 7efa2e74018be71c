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

// TestQuickstart runs the getting-started code in a database of its own
// (migrated with the default schemas, as "outboxkit migrate up" does).
func TestQuickstart(t *testing.T) {
	db := testenv.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, &out, db.URL, story.SplitList(os.Getenv("KAFKA_BROKERS")))
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out.Bytes(), []byte("consumer applied 3 payouts")) {
		t.Fatal("the consumer did not apply the three payouts")
	}
}
