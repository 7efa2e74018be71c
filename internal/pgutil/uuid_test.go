package pgutil_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// TestUUIDParamsSendTheSameBytes: the cheap form of an id is a change of
// speed only. The encoded bytes equal those of uuid.UUID, and PostgreSQL
// reads the same value from both, alone and in arrays.
func TestUUIDParamsSendTheSameBytes(t *testing.T) {
	m := pgtype.NewMap()
	ids := []uuid.UUID{uuid.Must(uuid.NewV7()), uuid.New(), uuid.Nil}
	type pair struct {
		oid             uint32
		original, cheap any
	}
	pairs := []pair{{pgtype.UUIDArrayOID, ids, cheapArray(ids)}}
	for _, id := range ids {
		pairs = append(pairs, pair{pgtype.UUIDOID, id, pgutil.UUID(id)})
	}
	for _, p := range pairs {
		want, err := m.Encode(p.oid, pgtype.BinaryFormatCode, p.original, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Encode(p.oid, pgtype.BinaryFormatCode, p.cheap, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%v: encoded %x, the uuid.UUID form encodes %x", p.original, got, want)
		}
	}

	db := testenv.NewDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var text string
	var same bool
	if err := conn.QueryRow(ctx, `SELECT $1::uuid::text, $2::uuid[] = $3::uuid[]`,
		pgutil.UUID(ids[0]), cheapArray(ids), ids).Scan(&text, &same); err != nil {
		t.Fatal(err)
	}
	if text != ids[0].String() || !same {
		t.Fatalf("PostgreSQL read %s (want %s), arrays equal: %v", text, ids[0], same)
	}
}

// cheapArray is ids as the hot paths pass a uuid[]: []pgtype.UUID.
func cheapArray(ids []uuid.UUID) []pgtype.UUID {
	out := make([]pgtype.UUID, len(ids))
	for i, id := range ids {
		out[i] = pgutil.UUID(id)
	}
	return out
}

// BenchmarkUUIDParams: encoding 1,000 ids as a uuid[] parameter, as
// []uuid.UUID and as []pgtype.UUID through pgutil.UUID.
func BenchmarkUUIDParams(b *testing.B) {
	m := pgtype.NewMap()
	ids := make([]uuid.UUID, 1000)
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7())
	}
	for _, c := range []struct {
		name  string
		value func() any
	}{
		{"uuid.UUID", func() any { return ids }},
		{"pgutil.UUID", func() any { return cheapArray(ids) }},
	} {
		b.Run(fmt.Sprintf("%s/1000", c.name), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, c.value(), nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
