package wire

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// The fuzzers take a list of headers as one string: one header per line,
// name and value split at the first '='. A line without '=' is a name with
// an empty value. Names cannot hold '=' or '\n' and values cannot hold '\n';
// anything else (NUL, invalid UTF-8, prefixes in any case) can be fuzzed.

func parseHeaderLines(s string) []Header {
	if s == "" {
		return nil
	}
	var out []Header
	for line := range strings.SplitSeq(s, "\n") {
		name, value, _ := strings.Cut(line, "=")
		out = append(out, Header{name, value})
	}
	return out
}

func headerLines(h []Header) string {
	var b strings.Builder
	for i, x := range h {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(x.Name + "=" + x.Value)
	}
	return b.String()
}

// fuzzPrefix maps a fuzzed byte to a binding: even is Kafka, odd is AMQP.
func fuzzPrefix(b byte) string {
	if b%2 == 0 {
		return KafkaPrefix
	}
	return AMQPPrefix
}

// encodeFor sends e the way the binding's publisher does and returns what a
// consumer passes to Decode.
func encodeFor(prefix string, e *Event) (headers []Header, contentType string) {
	if prefix == KafkaPrefix {
		return KafkaHeaders(e), ""
	}
	return Attributes(e, AMQPPrefix), e.ContentType
}

// FuzzDecode: no input makes Decode panic; every refusal is ErrMalformed;
// whatever Decode accepts can be sent on unchanged (decode, encode, decode
// gives the same event, and encoding that gives the same headers).
func FuzzDecode(f *testing.F) {
	kafka := func(e *Event) string { return headerLines(KafkaHeaders(e)) }
	amqp := func(e *Event) string { return headerLines(Attributes(e, AMQPPrefix)) }
	keyless := fullEvent()
	keyless.Key, keyless.Sequence = "", 0

	f.Add(byte(0), kafka(fullEvent()), "", payloadBytes)
	f.Add(byte(1), amqp(fullEvent()), "application/json", payloadBytes)
	f.Add(byte(0), kafka(keyless), "", []byte{})
	f.Add(byte(0), headerLines(validHeaders()), "text/plain", []byte("x"))
	// Upper case prefixes, a urn: id, a zone offset, signs and leading zeros.
	f.Add(byte(0), "CE_SPECVERSION=1.0\nCe_Id=urn:uuid:0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d\nCE_TYPE=t\nCE_TIME=2025-03-04T05:06:07.5+01:00\nce_partitionkey=k\nce_sequence=+007\nce_eventversion=02", "", []byte(nil))
	f.Add(byte(1), "CLOUDEVENTS:specversion=1.0\ncloudevents:ID={0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d}\ncloudEvents:type=t\nContent-Type=text/plain", "", []byte("{}"))
	// Unknown extensions, an empty extension name, duplicates (last wins).
	f.Add(byte(0), "ce_specversion=1.0\nce_id=0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d\nce_type=a\nce_type=b\nce_dataschema=s\nce_=x\ncontent-type=\nContent-Type=y\ntenant=t1\ntenant=t2", "", []byte("\x00"))
	// Times at the edge of what RFC 3339 can spell once in UTC.
	f.Add(byte(0), "ce_specversion=1.0\nce_id=0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d\nce_type=t\nce_time=9999-12-31T23:59:59-01:00", "", []byte(nil))
	f.Add(byte(1), "cloudEvents:specversion=1.0\ncloudEvents:id=0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d\ncloudEvents:type=t\ncloudEvents:time=0000-01-01T00:00:00+00:01", "", []byte(nil))
	// Refusals.
	f.Add(byte(0), "ce_specversion=0.3\nce_id=1\nce_type=t", "", []byte(nil))
	f.Add(byte(0), "ce_specversion=1.0\nce_id=0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d\nce_type=t\nce_sequence=9223372036854775808\nce_partitionkey=k", "", []byte(nil))
	f.Add(byte(1), "cloudEvents:specversion=1.0\ncloudEvents:id=0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d\ncloudEvents:type=t\ncloudEvents:eventversion=0", "", []byte(nil))

	f.Fuzz(func(t *testing.T, binding byte, headers, contentType string, payload []byte) {
		prefix := fuzzPrefix(binding)
		e1, err := Decode(prefix, parseHeaderLines(headers), contentType, payload)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			if e1 != nil {
				t.Fatalf("event returned with error %v", err)
			}
			return
		}
		if e1.Time.Location() != time.UTC {
			t.Errorf("Time %v is not in UTC", e1.Time)
		}
		h1, ct1 := encodeFor(prefix, e1)
		e2, err := Decode(prefix, h1, ct1, e1.Payload)
		if err != nil {
			t.Fatalf("decoded event does not decode once sent on: %v\nevent: %+v\nheaders: %q", err, e1, h1)
		}
		for _, d := range diffEvents(e1, e2) {
			t.Errorf("not idempotent: %s", d)
		}
		if h2, ct2 := encodeFor(prefix, e2); !slices.Equal(h1, h2) || ct1 != ct2 {
			t.Errorf("wire form not stable:\n%q %q\n%q %q", h1, ct1, h2, ct2)
		}
	})
}

// reservedName is what outbox validation refuses as an event header name
// (plus the AMQP prefix, which is no HTTP token anyway).
func reservedName(name string) bool {
	lower := strings.ToLower(name)
	return strings.HasPrefix(lower, "ce_") || strings.HasPrefix(lower, "cloudevents:") || lower == ContentTypeHeader
}

// FuzzRoundTrip: any event the outbox can hold comes back equal through
// either binding.
func FuzzRoundTrip(f *testing.F) {
	e := fullEvent()
	add := func(binding byte, e *Event, zoneOffset int) {
		f.Add(binding, e.ID[:], e.Source, e.Type, e.Time.UnixNano(), zoneOffset, e.ContentType, e.Key, e.Sequence, e.Version,
			e.CorrelationID, e.CausationID, e.TraceParent, e.TraceState, headerLines(sortedHeaders(e.Headers)), e.Payload)
	}
	add(0, e, 3600)
	add(1, e, -5*3600)
	keyless := fullEvent()
	keyless.Key, keyless.Sequence = "", 0
	add(0, keyless, 0)
	add(1, keyless, 0)
	bare := &Event{ID: uuid.Nil, Type: "t", Time: time.Unix(0, 0)} // default source, version 0 → 1
	add(0, bare, 0)
	add(1, bare, 0)
	odd := fullEvent()
	odd.Type, odd.Key, odd.Source = "\x00", "\xff", "=\n"
	odd.Headers = map[string]string{"": "empty name", "x": "", "Ce-Not-Reserved": "v"}
	add(0, odd, 1)
	add(1, odd, -1)
	noType := fullEvent()
	noType.Type = "" // refused by Decode, must not panic in KafkaHeaders
	add(0, noType, 0)
	badSeq := fullEvent()
	badSeq.Sequence = -3 // refused by Decode
	add(0, badSeq, 0)

	f.Fuzz(func(t *testing.T, binding byte, id []byte, source, typ string, unixNano int64, zoneOffset int,
		contentType, key string, seq int64, version int, corr, caus, traceParent, traceState, headers string, payload []byte) {
		e := &Event{
			Source: source, Type: typ, ContentType: contentType, Key: key, Sequence: seq, Version: version,
			CorrelationID: corr, CausationID: caus, TraceParent: traceParent, TraceState: traceState,
			Payload: payload,
		}
		copy(e.ID[:], id)
		// Zone offsets up to a day either way, like PostgreSQL's.
		e.Time = time.Unix(0, unixNano).In(time.FixedZone("", zoneOffset%(24*3600)))
		for _, h := range parseHeaderLines(headers) {
			if reservedName(h.Name) {
				t.Skip("reserved header name: refused by outbox validation")
			}
			if e.Headers == nil {
				e.Headers = map[string]string{}
			}
			e.Headers[h.Name] = h.Value
		}

		prefix := fuzzPrefix(binding)
		h, ct := encodeFor(prefix, e)
		if names, want := headerNames(h), wantNames(prefix, e); !slices.Equal(names, want) {
			t.Fatalf("header names\n got: %q\nwant: %q", names, want)
		}
		got, err := Decode(prefix, h, ct, e.Payload)
		if typ == "" || (key != "" && seq < 1) {
			// Not an event the outbox sends: refused, never a panic.
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Decode: %v\nheaders: %q", err, h)
		}

		want := *e
		if want.Source == "" {
			want.Source = DefaultSource
		}
		if want.Key == "" {
			want.Sequence = 0 // a sequence orders a key's lane; no key, no sequence
		}
		want.Version = max(want.Version, 1)
		for _, d := range diffEvents(&want, got) {
			t.Error(d)
		}
	})
}

func headerNames(h []Header) []string {
	out := make([]string, len(h))
	for i, x := range h {
		out[i] = x.Name
	}
	return out
}

// wantNames is the contract's header order, spelled out independently of
// the encoder: which attributes are present depends only on which fields
// are set.
func wantNames(prefix string, e *Event) []string {
	names := []string{prefix + "specversion", prefix + "id", prefix + "source"}
	if e.Type != "" {
		names = append(names, prefix+"type")
	}
	names = append(names, prefix+"time")
	if prefix == KafkaPrefix && e.ContentType != "" {
		names = append(names, "content-type")
	}
	if e.Key != "" {
		names = append(names, prefix+"partitionkey", prefix+"sequence")
	}
	for _, a := range []struct{ name, value string }{
		{"correlationid", e.CorrelationID},
		{"causationid", e.CausationID},
		{"traceparent", e.TraceParent},
		{"tracestate", e.TraceState},
	} {
		if a.value != "" {
			names = append(names, prefix+a.name)
		}
	}
	if e.Version > 0 {
		names = append(names, prefix+"eventversion")
	}
	return append(names, slices.Sorted(maps.Keys(e.Headers))...)
}
