package ops

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// The send ends recordReserve before the caller's deadline, so that the
// recording of a confirmed send fits in it; with too little time left
// nothing is sent.
func TestSendContextKeepsTimeToRecord(t *testing.T) {
	t.Parallel()
	ref := Ref{Kind: KindInbox, ID: 7}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sctx, scancel, err := sendContext(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer scancel()
	caller, _ := ctx.Deadline()
	send, ok := sctx.Deadline()
	if !ok || caller.Sub(send) < recordReserve-time.Second { // less the time the call took
		t.Errorf("the send ends %s before the caller's deadline, want at least %s", caller.Sub(send), recordReserve)
	}

	short, cancel2 := context.WithTimeout(context.Background(), recordReserve+minSendBudget/2)
	defer cancel2()
	if _, _, err := sendContext(short, ref); err == nil || !strings.Contains(err.Error(), "nothing was sent") {
		t.Errorf("with too little time left: %v", err)
	}

	if sctx, scancel, err := sendContext(context.Background(), ref); err != nil {
		t.Error(err)
	} else if _, ok := sctx.Deadline(); ok {
		t.Error("a caller without a deadline got one")
	} else {
		scancel()
	}
}

// The event id of a corrected copy is the same for the same dead letter
// and bytes, and differs for other bytes or another dead letter.
func TestCopyIDIsStablePerDeadLetterAndPayload(t *testing.T) {
	t.Parallel()
	ev := uuid.NewString()
	a := copyID(Ref{Kind: KindInbox, ID: 1}, ev, []byte(`{"amount":"10.00"}`))
	id, err := uuid.Parse(a)
	if err != nil || id.Version() != 8 || id.Variant() != uuid.RFC4122 {
		t.Fatalf("copy id %s: version %d variant %v %v", a, id.Version(), id.Variant(), err)
	}
	for name, other := range map[string]string{
		"same":          copyID(Ref{Kind: KindInbox, ID: 1}, ev, []byte(`{"amount":"10.00"}`)),
		"other payload": copyID(Ref{Kind: KindInbox, ID: 1}, ev, []byte(`{"amount":"10.01"}`)),
		"other row":     copyID(Ref{Kind: KindInbox, ID: 2}, ev, []byte(`{"amount":"10.00"}`)),
	} {
		if (other == a) != (name == "same") {
			t.Errorf("%s: %s vs %s", name, other, a)
		}
	}
}
