package outbox_test

import (
	"context"
	"database/sql"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outboxkit/outboxkit/internal/testenv"
	"github.com/outboxkit/outboxkit/outbox"
)

// TestEveryPathStoresTheGivenIDs: whatever form the ids take as bind
// parameters, every enqueue path (Enqueue keyed, keyless and scheduled,
// EnqueueBatch mixing all of them, Queue) stores exactly the ids it
// returns, with the partition PostgreSQL derives from them, through pgx
// and through database/sql (pgx stdlib), in every pgx query exec mode.
func TestEveryPathStoresTheGivenIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	msgs := func() []outbox.Message {
		return []outbox.Message{
			{ID: uuid.Must(uuid.NewV7()), Topic: "t", Key: "k", Type: "x"},
			{Topic: "t", Type: "x"},
			{Topic: "t", Key: "k", Type: "x", DeliverAfter: time.Hour},
			{ID: uuid.New(), Topic: "t", Type: "x", DeliverAfter: time.Hour},
			{Topic: "t", Key: "k2", Type: "x"},
		}
	}
	var want []uuid.UUID
	enqueueAll := func(t *testing.T, tx outbox.Execer) {
		t.Helper()
		for _, m := range msgs() {
			id, err := outbox.Enqueue(ctx, tx, m)
			if err != nil || (m.ID != uuid.Nil && id != m.ID) {
				t.Fatalf("Enqueue %+v: id %s, %v", m, id, err)
			}
			want = append(want, id)
		}
		ms := msgs()
		ids, err := outbox.EnqueueBatch(ctx, tx, ms)
		if err != nil {
			t.Fatalf("EnqueueBatch: %v", err)
		}
		for i, m := range ms {
			if m.ID != uuid.Nil && ids[i] != m.ID {
				t.Fatalf("EnqueueBatch returned %s for message %d, given %s", ids[i], i, m.ID)
			}
		}
		want = append(want, ids...)
	}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}
	for _, mode := range modes {
		cfg, err := pgx.ParseConfig(db.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = mode
		t.Run("pgx/"+mode.String(), func(t *testing.T) {
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			enqueueAll(t, tx)
			b := &pgx.Batch{}
			for _, m := range msgs() {
				id, err := outbox.Queue(ctx, b, m)
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, id)
			}
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				t.Fatalf("Queue: %v", err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		})
		t.Run("database/sql/"+mode.String(), func(t *testing.T) {
			sqlDB := stdlib.OpenDB(*cfg)
			defer sqlDB.Close()
			stx, err := sqlDB.BeginTx(ctx, &sql.TxOptions{})
			if err != nil {
				t.Fatal(err)
			}
			enqueueAll(t, outbox.SQLTx(stx))
			if err := stx.Commit(); err != nil {
				t.Fatal(err)
			}
		})
	}
	rows, err := db.Pool.Query(ctx, `SELECT event_id FROM outbox.messages UNION ALL SELECT event_id FROM outbox.scheduled`)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	less := func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) }
	slices.SortFunc(stored, less)
	slices.SortFunc(want, less)
	if !slices.Equal(stored, want) {
		t.Fatalf("stored ids differ from the %d returned (%d stored)", len(want), len(stored))
	}
	// Keyless events are spread by their id's text form.
	if n := count(t, db, `SELECT count(*) FROM (
		SELECT event_id, key, partition FROM outbox.messages UNION ALL SELECT event_id, key, partition FROM outbox.scheduled) r
		WHERE partition <> outbox.partition_for(CASE WHEN key = '' THEN event_id::text ELSE key END)`); n != 0 {
		t.Fatalf("%d events in the wrong partition", n)
	}
}
