package wire

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// payloadBytes is a payload that is neither text nor JSON: NUL bytes and
// invalid UTF-8 must travel untouched.
var payloadBytes = []byte("\x00\xff\xfe{\"total\":42}\x00\xc3\x28")

func fullEvent() *Event {
	return &Event{
		ID:     uuid.MustParse("0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d"),
		Source: "/orders-service",
		Type:   "order.created",
		// Not UTC and with every nanosecond digit set: the wire form is UTC,
		// the instant must survive to the nanosecond.
		Time:          time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("CET", 3600)),
		ContentType:   "application/json",
		Topic:         "orders",
		Key:           "order-42",
		Sequence:      7,
		Version:       3,
		CorrelationID: "corr-1",
		CausationID:   "cause-1",
		TraceParent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		TraceState:    "congo=t61rcWkgMzE",
		Headers:       map[string]string{"tenant": "t1", "b-header": "x\x00\xff", "Zeta": "z"},
		Payload:       slices.Clone(payloadBytes),
	}
}

// diffEvents lists the differences between the event that was sent and the
// one decoded. Topic is not compared: it is not on the wire (the Kafka topic
// or AMQP routing is the transport's business). Nil and empty Headers and
// Payload are the same; Time must be the same instant and be in UTC.
func diffEvents(want, got *Event) []string {
	var d []string
	check := func(field string, w, g any) {
		if w != g {
			d = append(d, fmt.Sprintf("%s: got %q, want %q", field, g, w))
		}
	}
	check("ID", want.ID.String(), got.ID.String())
	check("Source", want.Source, got.Source)
	check("Type", want.Type, got.Type)
	if !got.Time.Equal(want.Time) {
		d = append(d, fmt.Sprintf("Time: got %s, want %s", got.Time.Format(time.RFC3339Nano), want.Time.Format(time.RFC3339Nano)))
	}
	if got.Time.Location() != time.UTC {
		d = append(d, fmt.Sprintf("Time: location %q, want UTC", got.Time.Location()))
	}
	check("ContentType", want.ContentType, got.ContentType)
	check("Key", want.Key, got.Key)
	check("Sequence", fmt.Sprint(want.Sequence), fmt.Sprint(got.Sequence))
	check("Version", fmt.Sprint(want.Version), fmt.Sprint(got.Version))
	check("CorrelationID", want.CorrelationID, got.CorrelationID)
	check("CausationID", want.CausationID, got.CausationID)
	check("TraceParent", want.TraceParent, got.TraceParent)
	check("TraceState", want.TraceState, got.TraceState)
	if !maps.Equal(want.Headers, got.Headers) {
		d = append(d, fmt.Sprintf("Headers: got %q, want %q", got.Headers, want.Headers))
	}
	if !bytes.Equal(want.Payload, got.Payload) {
		d = append(d, fmt.Sprintf("Payload: got %q, want %q", got.Payload, want.Payload))
	}
	return d
}

func requireSame(t *testing.T, want, got *Event) {
	t.Helper()
	for _, d := range diffEvents(want, got) {
		t.Error(d)
	}
}

// kafkaRoundTrip is what the Kafka publisher and the inbox do: headers and
// value out, the same back in (the content type travels as a header).
func kafkaRoundTrip(t *testing.T, e *Event) *Event {
	t.Helper()
	got, err := Decode(KafkaPrefix, KafkaHeaders(e), "", e.Payload)
	if err != nil {
		t.Fatalf("Decode(KafkaHeaders(e)): %v", err)
	}
	return got
}

// amqpRoundTrip is the RabbitMQ path: cloudEvents: headers, the content type
// as the content_type property.
func amqpRoundTrip(t *testing.T, e *Event) *Event {
	t.Helper()
	got, err := Decode(AMQPPrefix, Attributes(e, AMQPPrefix), e.ContentType, e.Payload)
	if err != nil {
		t.Fatalf("Decode(Attributes(e, AMQPPrefix)): %v", err)
	}
	return got
}

func TestRoundTrip(t *testing.T) {
	keyless := fullEvent()
	keyless.Key, keyless.Sequence = "", 0

	minimal := &Event{ID: uuid.New(), Source: "/s", Type: "t", Time: time.Unix(0, 1).UTC(), Version: 1}

	trailingZeros := fullEvent() // RFC3339Nano trims zeros: 100ns is ".0000001"
	trailingZeros.Time = time.Date(2025, 1, 2, 3, 4, 5, 100, time.UTC)

	wholeSecond := fullEvent()
	wholeSecond.Time = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

	localTime := fullEvent() // created_at from pgx comes back in time.Local
	localTime.Time = time.Now()

	maxSeq := fullEvent()
	maxSeq.Sequence = 1<<63 - 1

	emptyPayload := fullEvent()
	emptyPayload.Payload = nil

	oddText := fullEvent() // attribute values are bytes on the wire too
	oddText.Type = "type\x00with\xffbytes"
	oddText.Key = "ключ/🔑"
	oddText.CorrelationID = " spaces "

	for name, e := range map[string]*Event{
		"full":           fullEvent(),
		"keyless":        keyless,
		"minimal":        minimal,
		"trailing zeros": trailingZeros,
		"whole second":   wholeSecond,
		"local time":     localTime,
		"max sequence":   maxSeq,
		"empty payload":  emptyPayload,
		"odd text":       oddText,
	} {
		t.Run(name, func(t *testing.T) {
			t.Run("kafka", func(t *testing.T) { requireSame(t, e, kafkaRoundTrip(t, e)) })
			t.Run("amqp", func(t *testing.T) { requireSame(t, e, amqpRoundTrip(t, e)) })
		})
	}
}

func TestRoundTripKeyless(t *testing.T) {
	e := fullEvent()
	e.Key, e.Sequence = "", 0
	for _, h := range KafkaHeaders(e) {
		if h.Name == "ce_partitionkey" || h.Name == "ce_sequence" {
			t.Errorf("keyless event carries %s=%q", h.Name, h.Value)
		}
	}
	got := kafkaRoundTrip(t, e)
	if got.Key != "" || got.Sequence != 0 {
		t.Errorf("keyless event decoded with Key %q Sequence %d", got.Key, got.Sequence)
	}

	// A sequence without a key is not sent: it has no meaning without a lane.
	e.Sequence = 9
	got = kafkaRoundTrip(t, e)
	if got.Sequence != 0 {
		t.Errorf("Sequence without Key decoded as %d, want 0", got.Sequence)
	}
}

func TestDefaults(t *testing.T) {
	e := fullEvent()
	e.Source = ""
	e.Version = 0
	if v := headerValue(KafkaHeaders(e), "ce_source"); v != DefaultSource {
		t.Errorf("ce_source = %q, want %q", v, DefaultSource)
	}
	if v := headerValue(Attributes(e, AMQPPrefix), "cloudEvents:source"); v != DefaultSource {
		t.Errorf("cloudEvents:source = %q, want %q", v, DefaultSource)
	}
	if hasHeader(KafkaHeaders(e), "ce_eventversion") {
		t.Error("Version 0 sent as ce_eventversion")
	}
	want := fullEvent()
	want.Source = DefaultSource
	want.Version = 1 // an event without a version is version 1
	requireSame(t, want, kafkaRoundTrip(t, e))
	requireSame(t, want, amqpRoundTrip(t, e))
}

// TestKafkaHeadersGolden pins the names, values and order of the Kafka
// headers: consumers in other languages read them.
func TestKafkaHeadersGolden(t *testing.T) {
	want := []Header{
		{"ce_specversion", "1.0"},
		{"ce_id", "0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d"},
		{"ce_source", "/orders-service"},
		{"ce_type", "order.created"},
		{"ce_time", "2025-03-04T04:06:07.123456789Z"},
		{"content-type", "application/json"},
		{"ce_partitionkey", "order-42"},
		{"ce_sequence", "7"},
		{"ce_correlationid", "corr-1"},
		{"ce_causationid", "cause-1"},
		{"ce_traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{"ce_tracestate", "congo=t61rcWkgMzE"},
		{"ce_eventversion", "3"},
		// The event's own headers, sorted by bytes: upper case first.
		{"Zeta", "z"},
		{"b-header", "x\x00\xff"},
		{"tenant", "t1"},
	}
	requireHeaders(t, want, KafkaHeaders(fullEvent()))
}

func TestAMQPAttributesGolden(t *testing.T) {
	want := []Header{
		{"cloudEvents:specversion", "1.0"},
		{"cloudEvents:id", "0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d"},
		{"cloudEvents:source", "/orders-service"},
		{"cloudEvents:type", "order.created"},
		{"cloudEvents:time", "2025-03-04T04:06:07.123456789Z"},
		{"cloudEvents:partitionkey", "order-42"},
		{"cloudEvents:sequence", "7"},
		{"cloudEvents:correlationid", "corr-1"},
		{"cloudEvents:causationid", "cause-1"},
		{"cloudEvents:traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{"cloudEvents:tracestate", "congo=t61rcWkgMzE"},
		{"cloudEvents:eventversion", "3"},
		{"Zeta", "z"},
		{"b-header", "x\x00\xff"},
		{"tenant", "t1"},
	}
	// No content-type: AMQP carries it as the content_type property.
	requireHeaders(t, want, Attributes(fullEvent(), AMQPPrefix))
}

func TestKafkaHeadersOptionalAttributes(t *testing.T) {
	e := fullEvent()
	e.ContentType = ""
	e.Key, e.Sequence = "", 0
	e.CorrelationID, e.CausationID, e.TraceParent, e.TraceState = "", "", "", ""
	e.Version = 0
	e.Headers = nil
	want := []Header{
		{"ce_specversion", "1.0"},
		{"ce_id", "0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d"},
		{"ce_source", "/orders-service"},
		{"ce_type", "order.created"},
		{"ce_time", "2025-03-04T04:06:07.123456789Z"},
	}
	requireHeaders(t, want, KafkaHeaders(e))

	// Without a content type nothing else moves.
	e = fullEvent()
	e.ContentType = ""
	full := KafkaHeaders(fullEvent())
	requireHeaders(t, slices.Delete(slices.Clone(full), 5, 6), KafkaHeaders(e))
	got := kafkaRoundTrip(t, e)
	if got.ContentType != "" {
		t.Errorf("ContentType = %q, want empty", got.ContentType)
	}
}

// The relay always sets Time from created_at, so a zero Time is a caller
// mistake; it is still sent (as year 1) and decoded back to the zero Time.
func TestZeroTime(t *testing.T) {
	e := fullEvent()
	e.Time = time.Time{}
	if v := headerValue(KafkaHeaders(e), "ce_time"); v != "0001-01-01T00:00:00Z" {
		t.Errorf("ce_time = %q, want 0001-01-01T00:00:00Z", v)
	}
	got := kafkaRoundTrip(t, e)
	if !got.Time.IsZero() {
		t.Errorf("Time = %v, want zero", got.Time)
	}
	requireSame(t, e, got)
	requireSame(t, e, amqpRoundTrip(t, e))
}

// An event without a type cannot be decoded, but encoding it must not panic
// (KafkaHeaders used to index past the end when ce_type was left out).
func TestEncodeWithoutType(t *testing.T) {
	e := &Event{ID: uuid.New(), ContentType: "text/plain"}
	h := KafkaHeaders(e)
	want := []Header{
		{"ce_specversion", "1.0"},
		{"ce_id", e.ID.String()},
		{"ce_source", DefaultSource},
		{"ce_time", "0001-01-01T00:00:00Z"},
		{"content-type", "text/plain"},
	}
	requireHeaders(t, want, h)
	if _, err := Decode(KafkaPrefix, h, "", nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("Decode without type: err = %v, want ErrMalformed", err)
	}
}

func TestDecodeTimeIsUTC(t *testing.T) {
	for _, tm := range []string{
		"2025-03-04T05:06:07.5+01:00",
		"2025-03-04T04:06:07.5+00:00",
		"2025-03-04T04:06:07.5Z",
		"2025-03-04t04:06:07.5z",
	} {
		h := validHeaders()
		setHeader(&h, "ce_time", tm)
		e, err := Decode(KafkaPrefix, h, "", nil)
		if err != nil {
			t.Errorf("ce_time %q: %v", tm, err)
			continue
		}
		want := time.Date(2025, 3, 4, 4, 6, 7, 5e8, time.UTC)
		if e.Time != want { // == on purpose: same instant, same location
			t.Errorf("ce_time %q decoded as %v, want %v", tm, e.Time, want)
		}
	}
}

// validHeaders is a minimal valid Kafka delivery.
func validHeaders() []Header {
	return []Header{
		{"ce_specversion", "1.0"},
		{"ce_id", "0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d"},
		{"ce_source", "/s"},
		{"ce_type", "t"},
		{"ce_time", "2025-03-04T04:06:07Z"},
		{"ce_partitionkey", "k"},
		{"ce_sequence", "1"},
	}
}

func setHeader(h *[]Header, name, value string) {
	for i := range *h {
		if (*h)[i].Name == name {
			(*h)[i].Value = value
			return
		}
	}
	*h = append(*h, Header{name, value})
}

func delHeader(h *[]Header, name string) {
	*h = slices.DeleteFunc(*h, func(x Header) bool { return x.Name == name })
}

func headerValue(h []Header, name string) string {
	for _, x := range h {
		if x.Name == name {
			return x.Value
		}
	}
	return ""
}

func hasHeader(h []Header, name string) bool {
	return slices.ContainsFunc(h, func(x Header) bool { return x.Name == name })
}

func requireHeaders(t *testing.T, want, got []Header) {
	t.Helper()
	if !slices.Equal(want, got) {
		t.Errorf("headers differ\n got: %q\nwant: %q", got, want)
	}
}

func TestDecodeValid(t *testing.T) {
	if _, err := Decode(KafkaPrefix, validHeaders(), "", nil); err != nil {
		t.Fatalf("the base case of TestDecodeErrors does not decode: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	set := func(name, value string) func(*[]Header) {
		return func(h *[]Header) { setHeader(h, name, value) }
	}
	del := func(name string) func(*[]Header) {
		return func(h *[]Header) { delHeader(h, name) }
	}
	for _, tc := range []struct {
		name   string
		change []func(*[]Header)
		msg    string // part of the error message
	}{
		{"no specversion", []func(*[]Header){del("ce_specversion")}, "specversion"},
		{"specversion 0.3", []func(*[]Header){set("ce_specversion", "0.3")}, "specversion"},
		{"specversion 1", []func(*[]Header){set("ce_specversion", "1")}, "specversion"},
		{"specversion padded", []func(*[]Header){set("ce_specversion", " 1.0")}, "specversion"},
		{"no id", []func(*[]Header){del("ce_id")}, "id"},
		{"id empty", []func(*[]Header){set("ce_id", "")}, "id"},
		{"id not a UUID", []func(*[]Header){set("ce_id", "order-42")}, "not a UUID"},
		{"id short", []func(*[]Header){set("ce_id", "0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6")}, "not a UUID"},
		{"no type", []func(*[]Header){del("ce_type")}, "type"},
		{"type empty", []func(*[]Header){set("ce_type", "")}, "type"},
		{"time not a time", []func(*[]Header){set("ce_time", "yesterday")}, "time"},
		{"time without zone", []func(*[]Header){set("ce_time", "2025-03-04T04:06:07")}, "time"},
		{"time with space", []func(*[]Header){set("ce_time", "2025-03-04 04:06:07Z")}, "time"},
		{"time unix", []func(*[]Header){set("ce_time", "1741061167")}, "time"},
		{"time month 13", []func(*[]Header){set("ce_time", "2025-13-04T04:06:07Z")}, "time"},
		{"sequence 0", []func(*[]Header){set("ce_sequence", "0")}, "sequence"},
		{"sequence negative", []func(*[]Header){set("ce_sequence", "-1")}, "sequence"},
		{"sequence not a number", []func(*[]Header){set("ce_sequence", "seven")}, "sequence"},
		{"sequence fraction", []func(*[]Header){set("ce_sequence", "1.5")}, "sequence"},
		{"sequence overflow", []func(*[]Header){set("ce_sequence", "9223372036854775808")}, "sequence"},
		{"key without sequence", []func(*[]Header){del("ce_sequence")}, "together"},
		{"sequence without key", []func(*[]Header){del("ce_partitionkey")}, "together"},
		{"sequence with empty key", []func(*[]Header){set("ce_partitionkey", "")}, "together"},
		{"eventversion 0", []func(*[]Header){set("ce_eventversion", "0")}, "eventversion"},
		{"eventversion negative", []func(*[]Header){set("ce_eventversion", "-2")}, "eventversion"},
		{"eventversion not a number", []func(*[]Header){set("ce_eventversion", "v2")}, "eventversion"},
		{"eventversion fraction", []func(*[]Header){set("ce_eventversion", "1.0")}, "eventversion"},
		{"no headers at all", []func(*[]Header){func(h *[]Header) { *h = nil }}, "specversion"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := validHeaders()
			for _, c := range tc.change {
				c(&h)
			}
			e, err := Decode(KafkaPrefix, h, "", []byte("x"))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if e != nil {
				t.Errorf("event %+v returned with the error", e)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

// The AMQP binding reports errors the same way.
func TestDecodeErrorsAMQP(t *testing.T) {
	h := Attributes(fullEvent(), AMQPPrefix)
	setHeader(&h, "cloudEvents:id", "nope")
	if _, err := Decode(AMQPPrefix, h, "application/json", nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v, want ErrMalformed", err)
	}
	// ce_ headers mean nothing on AMQP: a Kafka-style delivery is malformed.
	if _, err := Decode(AMQPPrefix, KafkaHeaders(fullEvent()), "", nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Kafka headers decoded as AMQP: err = %v, want ErrMalformed", err)
	}
}

func TestDecodeCaseInsensitivePrefix(t *testing.T) {
	kafka := []Header{
		{"CE_SPECVERSION", "1.0"},
		{"CE_ID", "0190F5E4-7B7C-7A3E-9C2D-3F1E2A4B5C6D"},
		{"Ce_Source", "/s"},
		{"cE_tYpE", "t"},
		{"CE_TIME", "2025-03-04T04:06:07Z"},
		{"Content-Type", "text/plain"},
		{"CE_PARTITIONKEY", "k"},
		{"CE_SEQUENCE", "3"},
		{"CE_EVENTVERSION", "2"},
		{"CE_CorrelationID", "c"},
	}
	e, err := Decode(KafkaPrefix, kafka, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := &Event{
		ID: uuid.MustParse("0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d"), Source: "/s", Type: "t",
		Time: time.Date(2025, 3, 4, 4, 6, 7, 0, time.UTC), ContentType: "text/plain",
		Key: "k", Sequence: 3, Version: 2, CorrelationID: "c",
	}
	requireSame(t, want, e)

	amqp := []Header{
		{"CLOUDEVENTS:SPECVERSION", "1.0"},
		{"cloudevents:id", "0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d"},
		{"CloudEvents:source", "/s"},
		{"cloudEvents:type", "t"},
		{"cloudEvents:time", "2025-03-04T04:06:07Z"},
		{"cloudEvents:partitionkey", "k"},
		{"cloudEvents:sequence", "3"},
		{"cloudEvents:eventversion", "2"},
		{"cloudEvents:correlationid", "c"},
	}
	e, err = Decode(AMQPPrefix, amqp, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	requireSame(t, want, e)
}

func TestDecodeUnknownExtensionsKept(t *testing.T) {
	h := validHeaders()
	h = append(h,
		Header{"ce_dataschema", "https://example.com/schema"},
		Header{"CE_Subject", "order/42"},
		Header{"ce_", "empty extension name"},
		Header{"tenant", "t1"},
		Header{"cloudEvents:id", "not ours on Kafka"},
	)
	e, err := Decode(KafkaPrefix, h, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"ce_dataschema":  "https://example.com/schema",
		"CE_Subject":     "order/42",
		"ce_":            "empty extension name",
		"tenant":         "t1",
		"cloudEvents:id": "not ours on Kafka",
	}
	if !maps.Equal(e.Headers, want) {
		t.Errorf("Headers = %q, want %q", e.Headers, want)
	}
	// And they survive being sent on.
	again := kafkaRoundTrip(t, e)
	requireSame(t, e, again)
}

func TestDecodeContentType(t *testing.T) {
	withHeader := append(validHeaders(), Header{"Content-Type", "from-header"})
	for _, tc := range []struct {
		name    string
		headers []Header
		param   string
		want    string
	}{
		{"header", withHeader, "", "from-header"},
		{"property wins", withHeader, "from-property", "from-property"},
		{"property only", validHeaders(), "from-property", "from-property"},
		{"none", validHeaders(), "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Decode(KafkaPrefix, tc.headers, tc.param, nil)
			if err != nil {
				t.Fatal(err)
			}
			if e.ContentType != tc.want {
				t.Errorf("ContentType = %q, want %q", e.ContentType, tc.want)
			}
			if _, ok := e.Headers["Content-Type"]; ok {
				t.Error("content-type also kept as an event header")
			}
		})
	}
}

func TestDecodeLenient(t *testing.T) {
	h := validHeaders()
	delHeader(&h, "ce_source")
	delHeader(&h, "ce_time")
	setHeader(&h, "ce_id", "urn:uuid:0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d")
	e, err := Decode(KafkaPrefix, h, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.Source != DefaultSource {
		t.Errorf("missing ce_source decoded as %q, want %q", e.Source, DefaultSource)
	}
	if !e.Time.IsZero() {
		t.Errorf("missing ce_time decoded as %v, want zero", e.Time)
	}
	if e.Version != 1 {
		t.Errorf("missing ce_eventversion decoded as %d, want 1", e.Version)
	}
	if e.ID != uuid.MustParse("0190f5e4-7b7c-7a3e-9c2d-3f1e2a4b5c6d") {
		t.Errorf("ID = %s", e.ID)
	}
}

// A ce_time that parses but whose UTC form has no RFC 3339 spelling (year
// 10000) could be received but never sent on: it is refused.
func TestDecodeTimeOutOfRange(t *testing.T) {
	for _, tm := range []string{"9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"} {
		h := validHeaders()
		setHeader(&h, "ce_time", tm)
		if _, err := Decode(KafkaPrefix, h, "", nil); !errors.Is(err, ErrMalformed) {
			t.Errorf("ce_time %q: err = %v, want ErrMalformed", tm, err)
		}
	}
	for _, tm := range []string{"9999-12-31T23:59:59.999999999Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59+01:00"} {
		h := validHeaders()
		setHeader(&h, "ce_time", tm)
		e, err := Decode(KafkaPrefix, h, "", nil)
		if err != nil {
			t.Errorf("ce_time %q: %v", tm, err)
			continue
		}
		requireSame(t, e, kafkaRoundTrip(t, e))
	}
}

// Decode keeps the payload slice it was given: no copy, no change.
func TestDecodePayloadUntouched(t *testing.T) {
	p := slices.Clone(payloadBytes)
	e, err := Decode(KafkaPrefix, validHeaders(), "", p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.Payload, payloadBytes) || &e.Payload[0] != &p[0] {
		t.Errorf("Payload = %q, want the caller's slice", e.Payload)
	}
}

// Every spelling of outboxkit-topic counts; spellings that disagree name
// no topic, so that the reader takes the routing key instead of a pick by
// map order.
func TestTopicOfWithSpellingsThatDisagree(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		headers map[string]any
		topic   string
		ok      bool
	}{
		{"none", map[string]any{"x": "y"}, "", false},
		{"canonical", map[string]any{TopicHeader: "payments"}, "payments", true},
		{"other case, bytes", map[string]any{"Outboxkit-Topic": []byte("payments")}, "payments", true},
		{"spellings agree", map[string]any{TopicHeader: "payments", "OUTBOXKIT-TOPIC": []byte("payments")}, "payments", true},
		{"an empty one names nothing", map[string]any{TopicHeader: "", "Outboxkit-Topic": "payments"}, "payments", true},
		{"spellings disagree", map[string]any{TopicHeader: "payments", "Outboxkit-Topic": "refunds"}, "", false},
		{"not text", map[string]any{TopicHeader: int64(7)}, "", false},
	} {
		// Map order varies: ask often enough to see both orders.
		for range 20 {
			if topic, ok := TopicOf(tc.headers); topic != tc.topic || ok != tc.ok {
				t.Errorf("%s: %q %v, want %q %v", tc.name, topic, ok, tc.topic, tc.ok)
				break
			}
		}
	}
}
