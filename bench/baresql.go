package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The bare SQL ceiling: what PostgreSQL alone allows for claiming and
// marking the outbox rows, without a broker and without any of the relay's
// bookkeeping (leases, fencing, lanes, attempts). One connection, 1,000-row
// batches, every column a publisher needs read, then one UPDATE per batch.
const (
	bareClaimSQL = `SELECT id, event_id, topic, key, partition, sequence, type, version, payload, content_type,
       headers, created_at
  FROM outbox.messages
 WHERE partition = ANY($1) AND status = 'pending'
 ORDER BY id
 LIMIT 1000`
	bareMarkSQL = `UPDATE outbox.messages SET status = 'published', published_at = now() WHERE id = ANY($1)`
)

func (e *env) runBareSQL(ctx context.Context) (measurement, error) {
	n := e.opts.events
	name, dbURL, err := e.newDB(ctx, e.tplOutbox, "bare")
	if err != nil {
		return measurement{}, err
	}
	defer e.dropDB(ctx, name)
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return measurement{}, err
	}
	defer conn.Close(ctx)
	parts := make([]int32, e.opts.partitions)
	for i := range parts {
		parts[i] = int32(i)
	}
	cpu := startCPU()
	start := time.Now()
	done := 0
	ids := make([]int64, 0, 1000)
	for {
		rows, err := conn.Query(ctx, bareClaimSQL, parts)
		if err != nil {
			return measurement{}, err
		}
		ids = ids[:0]
		for rows.Next() {
			var r bareRow
			if err := rows.Scan(&r.id, &r.eventID, &r.topic, &r.key, &r.partition, &r.sequence, &r.typ, &r.version,
				&r.payload, &r.contentType, &r.headers, &r.createdAt); err != nil {
				rows.Close()
				return measurement{}, err
			}
			ids = append(ids, r.id)
		}
		if err := rows.Err(); err != nil {
			return measurement{}, err
		}
		if len(ids) == 0 {
			break
		}
		tag, err := conn.Exec(ctx, bareMarkSQL, ids)
		if err != nil {
			return measurement{}, err
		}
		done += int(tag.RowsAffected())
	}
	m := measurement{events: n, elapsed: time.Since(start), cpu: cpu.stop()}
	m.pgCPU = e.backendCPU(ctx, name)
	if done != n {
		return m, fmt.Errorf("bare SQL marked %d rows, want %d", done, n)
	}
	return m, nil
}

type bareRow struct {
	id          int64
	eventID     [16]byte
	topic, key  string
	partition   int32
	sequence    *int64
	typ         string
	version     int32
	payload     []byte
	contentType string
	headers     map[string]string
	createdAt   time.Time
}
