package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzValidate checks that validation never panics, that it refuses with a
// *ValidationError naming a field, and that whatever it accepts can be
// stored: text columns get valid UTF-8 without NUL, topics are broker-safe,
// and the headers encode to a JSON object that decodes to the same map.
//
//	go test ./outbox -run '^$' -fuzz FuzzValidate -fuzztime 30s
func FuzzValidate(f *testing.F) {
	f.Add("payments", "payout-42", "payout.created", 2, []byte(`{"a":1}`), "tenant", "t1", "flow-9", "application/json", int64(0))
	f.Add("", "", "", 0, []byte{}, "", "", "", "", int64(-1))
	f.Add("pay ments", "k\x00", "t\n", -5, []byte{0xff, 0x00}, "bad name", "\xc3\x28", "\x1b[31m", "text/;;", int64(time.Hour))
	f.Add("x'; DROP TABLE outbox.messages; --", "€", "ok", 1, []byte("plain"), "ce_id", "v", "", "", int64(1))
	f.Fuzz(func(t *testing.T, topic, key, typ string, version int, payload []byte, hname, hvalue, corr, ctype string, delay int64) {
		m := Message{Topic: topic, Key: key, Type: typ, Version: version, Payload: payload,
			Headers: map[string]string{hname: hvalue}, CorrelationID: corr, ContentType: ctype,
			DeliverAfter: time.Duration(delay)}
		err := validate(&m, -1, 1<<16)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field == "" || !errors.Is(err, ErrInvalid) {
				t.Fatalf("refusal is not a *ValidationError with a field: %v", err)
			}
			if !utf8.ValidString(err.Error()) {
				t.Fatalf("error text is not valid UTF-8: %q", err.Error())
			}
			return
		}
		for name, s := range map[string]string{"topic": topic, "key": key, "type": typ, "header name": hname, "header value": hvalue, "correlation": corr} {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("accepted %s %q that PostgreSQL text cannot store", name, s)
			}
		}
		if topic == "" || strings.ContainsAny(topic, " '\";$`\\/") || typ == "" || version < 0 || delay < 0 || len(payload) > 1<<16 {
			t.Fatalf("accepted an invalid message: %+v", m)
		}
		w, _ := NewWriter(nil)
		r, err := w.prepare(context.Background(), &m, -1)
		if err != nil {
			t.Fatalf("prepare after validate: %v", err)
		}
		var back map[string]string
		if err := json.Unmarshal([]byte(r.headers), &back); err != nil || back[hname] != hvalue || len(back) != 1 {
			t.Fatalf("headers %q do not round-trip: %v", r.headers, err)
		}
	})
}
