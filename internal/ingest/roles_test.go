package ingest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/migrations"
)

// dlq ingest runs with the consumer role's privileges, and replay, edit,
// drop and restore of ingested rows with the operator role's
// (migrations/roles).
func TestRolesIngestAsConsumerActAsOperator(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t)
	prefix := strings.ToLower(fmt.Sprintf("okig%d_%s", os.Getpid(), strings.ReplaceAll(uuid.NewString()[:8], "-", "")))
	t.Cleanup(func() { testenv.DropRoles(b.db, prefix) }) //nolint:errcheck // tidying up
	if err := migrations.ApplyRoles(ctx, b.db.URL, nil, prefix); err != nil {
		t.Fatal(err)
	}
	login := func(role string) *pgxpool.Pool {
		name := prefix + "_" + role + "_login"
		for _, q := range []string{
			"CREATE ROLE " + pgx.Identifier{name}.Sanitize() + " LOGIN",
			"GRANT " + pgx.Identifier{prefix + "_" + role}.Sanitize() + " TO " + pgx.Identifier{name}.Sanitize(),
		} {
			if _, err := b.db.Pool.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		u, err := url.Parse(b.db.URL)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.User(name)
		pool, err := pgxpool.New(ctx, u.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return pool
	}
	consumer, err := NewStore(login("consumer"), "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	operator, err := ops.New(login("operator"), "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	operator = operator.WithRepublisher(&Republisher{RabbitMQ: &RabbitMQConn{URL: testenv.RabbitURL()}})

	id := uuid.New()
	b.topo.publish(t, "payments", amqp.Publishing{MessageId: id.String(), Body: []byte("r")})
	b.topo.publish(t, "payments", amqp.Publishing{MessageId: uuid.NewString(), Body: []byte("d")})
	b.topo.publish(t, "payments", amqp.Publishing{MessageId: uuid.NewString(), Body: []byte("e")})
	b.topo.rejectAll(t, 3)
	b.topo.waitFor(t, b.topo.dlq, 3)
	if res, err := consumer.IngestRabbitMQ(ctx, b.rabbitCfg()); err != nil || res.Ingested != 3 {
		t.Fatalf("ingest as consumer: %+v %v", res, err)
	}
	a := ops.Action{Actor: "oncall", Reason: "roles"}
	ref := func(where string, args ...any) ops.Ref {
		return ops.Ref{Kind: ops.KindInbox, ID: b.row(t, where, args...).ID}
	}
	if _, err := operator.Replay(ctx, a, ref("event_id = $1", id)); err != nil {
		t.Fatalf("replay as operator: %v", err)
	}
	if _, err := operator.Edit(ctx, a, ref("payload = $1", []byte("e")), []byte("e2"), ""); err != nil {
		t.Fatalf("edit as operator: %v", err)
	}
	d := ref("payload = $1", []byte("d"))
	if _, err := operator.Drop(ctx, a, d); err != nil {
		t.Fatalf("drop as operator: %v", err)
	}
	if _, err := operator.Restore(ctx, a, d); err != nil {
		t.Fatalf("restore as operator: %v", err)
	}
}
