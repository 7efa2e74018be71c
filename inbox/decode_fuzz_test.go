package inbox

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzDecode: no delivery makes decode panic; what it accepts can be stored
// in text columns; the stored form of any headers reads back byte for byte;
// the stored source is JSON that PostgreSQL's jsonb accepts (no \u0000).
func FuzzDecode(f *testing.F) {
	f.Add("ce_id", []byte("0193f6b1-7e2a-7c4d-9a51-3c2b8f0d6e11"), []byte(`{}`), "payments", false)
	f.Add("ce_partitionkey", []byte("k\x00"), []byte{0xff}, "pay\xffments", true)
	f.Add("cloudEvents:type", []byte{0xc3, 0x28}, []byte(nil), "", true)
	f.Add("\xff", []byte("\x00"), []byte("x"), "t", false)
	f.Fuzz(func(t *testing.T, name string, value, payload []byte, topic string, amqp bool) {
		b, p := BindingKafka, "ce_"
		if amqp {
			b, p = BindingAMQP, "cloudEvents:"
		}
		d := &Delivery{Binding: b, Topic: topic, Payload: payload, Headers: []Header{
			{Name: p + "specversion", Value: []byte("1.0")},
			{Name: p + "id", Value: []byte("0193f6b1-7e2a-7c4d-9a51-3c2b8f0d6e11")},
			{Name: p + "type", Value: []byte("t")},
			{Name: name, Value: value},
		}, Source: map[string]any{"k\x00": string(value), "raw": value}}
		m := decode(d)
		if m.bad == nil {
			ev := m.ev
			for _, s := range []string{ev.Type, ev.Key, ev.Source, ev.ContentType, ev.CorrelationID, ev.CausationID,
				ev.TraceParent, ev.TraceState, m.topic} {
				if !storable(s) {
					t.Fatalf("accepted a value that cannot be stored: %q", s)
				}
			}
			if len(ev.Key) > maxKeyLen || len(m.topic) > maxTopicLen {
				t.Fatal("accepted an oversized key or topic")
			}
		} else if !storable(m.topic) || !storable(errorText(m.bad)) {
			t.Fatalf("malformed delivery with unstorable topic or error: %q %q", m.topic, m.bad)
		}
		hs, err := decodeHeaders(encodeHeaders(d.Headers))
		if err != nil || len(hs) != len(d.Headers) {
			t.Fatalf("headers round trip: %v %v", hs, err)
		}
		for i := range hs {
			if hs[i].Name != d.Headers[i].Name || !bytes.Equal(hs[i].Value, d.Headers[i].Value) {
				t.Fatalf("header %d: %q, want %q", i, hs[i], d.Headers[i])
			}
		}
		for _, js := range [][]byte{encodeHeaders(d.Headers), encodeSource(d, m.topic)} {
			if !json.Valid(js) || strings.Contains(string(js), `\u0000`) {
				t.Fatalf("not storable as jsonb: %s", js)
			}
		}
	})
}
