package ops_test

import (
	"context"
	"encoding/base64"
	"log/slog"
	"testing"

	"github.com/outboxkit/outboxkit/inbox"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/testenv"
)

// Show reads an inbox dead letter's headers in exactly the form the inbox
// stores them (a JSON array of {"name", "value"}, {"base64": ...} for what
// jsonb cannot hold): text as text, other bytes as "base64:<...>", repeated
// names kept apart, nothing lost. The dead letter is written by a real
// inbox parking a delivery it cannot read.
func TestShowDecodesInboxDeadLetterHeaders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.NewDB(t)
	in, err := inbox.New(db.Pool, &inbox.Config{Consumer: "billing", ConsumerVersion: "v1",
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	binValue := []byte{0xff, 0xfe, 'x', 0x00}
	binName := "bad\xffname"
	d := inbox.Delivery{Binding: inbox.BindingKafka, Topic: "payments", Payload: []byte{0x00, 0x01},
		Source: map[string]any{"broker": "test", "partition": 0, "offset": 7},
		Headers: []inbox.Header{
			{Name: "tenant", Value: []byte("t1")},
			{Name: "ce_id", Value: []byte("not-a-uuid")},
			{Name: "blob", Value: binValue},
			{Name: binName, Value: []byte("v")},
			{Name: "tenant", Value: []byte("t2")},
			{Name: "with-nul", Value: []byte("a\x00b")},
		}}
	if out, err := in.Handle(ctx, d); err != nil || out != inbox.Parked {
		t.Fatalf("Handle: %v %v", out, err)
	}
	var id int64
	if err := db.Pool.QueryRow(ctx, `SELECT id FROM inbox.dead_letters`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	s, err := ops.New(db.Pool, "outbox", "inbox")
	if err != nil {
		t.Fatal(err)
	}
	det, err := s.Show(ctx, ops.Ref{Kind: ops.KindInbox, ID: id})
	if err != nil {
		t.Fatalf("Show: %v", err)
	}
	want := map[string]string{
		"tenant":   "t1",
		"tenant#2": "t2",
		"ce_id":    "not-a-uuid",
		"blob":     "base64:" + base64.StdEncoding.EncodeToString(binValue),
		"base64:" + base64.StdEncoding.EncodeToString([]byte(binName)): "v",
		"with-nul": "base64:" + base64.StdEncoding.EncodeToString([]byte("a\x00b")),
	}
	if len(det.Headers) != len(want) {
		t.Fatalf("headers %q, want %q", det.Headers, want)
	}
	for k, v := range want {
		if det.Headers[k] != v {
			t.Fatalf("header %q = %q, want %q (all: %q)", k, det.Headers[k], v, det.Headers)
		}
	}
	if string(det.Payload) != "\x00\x01" || det.ErrorClass != "poison_format" {
		t.Fatalf("payload %x class %s", det.Payload, det.ErrorClass)
	}
}
