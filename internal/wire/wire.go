// Package wire is outboxkit's wire format: CloudEvents 1.0 in binary content
// mode. The payload travels untouched as the record value / message body;
// the event's attributes travel as headers. This is a contract: consumers in
// other languages read these names.
//
// Kafka: headers ce_specversion, ce_id, ce_source, ce_type, ce_time,
// content-type, ce_partitionkey, ce_sequence, ce_correlationid,
// ce_causationid, ce_traceparent, ce_tracestate, ce_eventversion, then the
// event's own headers. The record key is the event key.
//
// AMQP 0-9-1: the same attributes as "cloudEvents:"-prefixed headers
// (cloudEvents:id, ...), plus the AMQP properties message_id, type,
// timestamp, content_type, correlation_id and app_id; the event's own
// headers unprefixed.
//
// Operator actions add outboxkit-* headers: outboxkit-skipped (SkippedHeader)
// on the marker of a dropped event, outboxkit-edit-of (EditOfHeader) on the
// corrected copy of an edit, and on a RabbitMQ dead letter sent back to one
// queue through the default exchange outboxkit-topic (TopicHeader), the
// routing key it was published with, which consumers take as the topic of
// deliveries from the default exchange.
package wire

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// SpecVersion is the CloudEvents version outboxkit speaks.
const SpecVersion = "1.0"

// SkippedType is the type of the marker an operator's drop of a keyed event
// leaves in its place: it carries the dropped event's lane sequence and no
// payload, so consumers advance the key's order past it instead of waiting
// for an event that will never come. Its header SkippedHeader names the
// dropped event.
const (
	SkippedType   = "outboxkit.skipped"
	SkippedHeader = "outboxkit-skipped"
)

// EditOfHeader names the event an operator's corrected copy replaces
// (outboxkit dlq edit): the copy is a new event, with a new id, and this
// header carries the original's event id.
const EditOfHeader = "outboxkit-edit-of"

// TopicHeader carries the original routing key of a RabbitMQ message an
// operator sends back to one queue (outboxkit dlq replay and edit of an
// ingested dead letter): the send goes through the default exchange, whose
// routing key is the queue's name, so that no other queue gets it again.
// The inbox's RabbitMQ consumer takes the header as the event's topic only
// for a delivery from the default exchange; anywhere else the routing key
// is the topic, and a forged header changes nothing.
const TopicHeader = "outboxkit-topic"

// TopicOf returns the topic that headers name in TopicHeader, matched
// whatever its case as every other header outboxkit reads; ok is false when
// none names one, or when spellings disagree: a pick among them would be
// chance (map order), so the caller falls back to the routing key. Values
// are strings or bytes, as AMQP carries them; an empty one names nothing.
func TopicOf(headers map[string]any) (topic string, ok bool) {
	for k, v := range headers {
		if !strings.EqualFold(k, TopicHeader) {
			continue
		}
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case []byte:
			s = string(x)
		}
		switch {
		case s == "":
		case !ok:
			topic, ok = s, true
		case s != topic:
			return "", false
		}
	}
	return topic, ok
}

// DefaultSource is ce_source when neither the event nor the relay set one.
const DefaultSource = "/outboxkit"

// Attribute names without their binding prefix.
const (
	AttrSpecVersion   = "specversion"
	AttrID            = "id"
	AttrSource        = "source"
	AttrType          = "type"
	AttrTime          = "time"
	AttrPartitionKey  = "partitionkey"
	AttrSequence      = "sequence"
	AttrCorrelationID = "correlationid"
	AttrCausationID   = "causationid"
	AttrTraceParent   = "traceparent"
	AttrTraceState    = "tracestate"
	AttrEventVersion  = "eventversion"
)

// Binding prefixes and the content-type header name.
const (
	KafkaPrefix       = "ce_"
	AMQPPrefix        = "cloudEvents:"
	ContentTypeHeader = "content-type"
)

// Event is what travels: the attributes and the payload.
type Event struct {
	ID            uuid.UUID
	Source        string
	Type          string
	Time          time.Time
	ContentType   string
	Topic         string
	Key           string
	Sequence      int64 // 0 when the event has no key
	Version       int
	CorrelationID string
	CausationID   string
	TraceParent   string
	TraceState    string
	Headers       map[string]string // the event's own headers
	Payload       []byte
}

// Header is one name/value pair, in wire order.
type Header struct {
	Name  string
	Value string
}

// ErrMalformed is matched by every decoding error: the delivery is not an
// outboxkit/CloudEvents event (a consumer parks it, never crashes).
var ErrMalformed = errors.New("wire: malformed event")

// Attributes returns the CloudEvents attributes of e with the given prefix,
// in a fixed order, followed by the event's own headers (sorted by name so
// the wire form is deterministic). The content type is returned separately
// by the callers that need it as a property; Kafka carries it as a header.
//
// An empty Source is sent as DefaultSource and a Version below 1 is left out
// (Decode reads both back as their defaults). The sequence is sent only with
// a key. Attributes does not validate e: an event without a Type, or with a
// Key and a Sequence below 1, is encoded but refused by Decode.
func Attributes(e *Event, prefix string) []Header {
	return attributes(e, prefix, "")
}

// KafkaHeaders is Attributes with the ce_ prefix plus content-type, right
// after ce_time, as in the CloudEvents Kafka binding's examples.
func KafkaHeaders(e *Event) []Header {
	return attributes(e, KafkaPrefix, e.ContentType)
}

// attributes builds the header list; contentType, when set, goes after the
// time attribute under ContentTypeHeader.
func attributes(e *Event, prefix, contentType string) []Header {
	src := e.Source
	if src == "" {
		src = DefaultSource
	}
	h := make([]Header, 0, 13+len(e.Headers))
	add := func(name, v string) {
		if v != "" {
			h = append(h, Header{prefix + name, v})
		}
	}
	add(AttrSpecVersion, SpecVersion)
	add(AttrID, e.ID.String())
	add(AttrSource, src)
	add(AttrType, e.Type)
	add(AttrTime, e.Time.UTC().Format(time.RFC3339Nano))
	if contentType != "" {
		h = append(h, Header{ContentTypeHeader, contentType})
	}
	if e.Key != "" {
		add(AttrPartitionKey, e.Key)
		add(AttrSequence, strconv.FormatInt(e.Sequence, 10))
	}
	add(AttrCorrelationID, e.CorrelationID)
	add(AttrCausationID, e.CausationID)
	add(AttrTraceParent, e.TraceParent)
	add(AttrTraceState, e.TraceState)
	if e.Version > 0 {
		add(AttrEventVersion, strconv.Itoa(e.Version))
	}
	return append(h, sortedHeaders(e.Headers)...)
}

func sortedHeaders(m map[string]string) []Header {
	if len(m) == 0 {
		return nil
	}
	out := make([]Header, 0, len(m))
	for k, v := range m {
		out = append(out, Header{k, v})
	}
	for i := 1; i < len(out); i++ { // small n: insertion sort keeps this allocation-free
		for j := i; j > 0 && out[j].Name < out[j-1].Name; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// Decode rebuilds an Event from headers carrying the given prefix (the
// content type may be given by the caller, e.g. from the AMQP property, or
// found as a content-type header). Headers without the prefix become the
// event's own headers. Required: specversion 1.0, a UUID id, a type.
// Defaults: a missing source is DefaultSource, a missing eventversion is 1,
// a missing time is the zero Time. The time is returned in UTC.
//
// Whatever Decode accepts, Attributes/KafkaHeaders encode so that Decode
// gives the same event back.
func Decode(prefix string, headers []Header, contentType string, payload []byte) (*Event, error) {
	e := &Event{Payload: payload, ContentType: contentType}
	var specVersion, id, seq, ver, tm string
	for _, h := range headers {
		name, ok := cutPrefixFold(h.Name, prefix)
		if !ok {
			if strings.EqualFold(h.Name, ContentTypeHeader) {
				if e.ContentType == "" {
					e.ContentType = h.Value
				}
				continue
			}
			if e.Headers == nil {
				e.Headers = map[string]string{}
			}
			e.Headers[h.Name] = h.Value
			continue
		}
		switch strings.ToLower(name) {
		case AttrSpecVersion:
			specVersion = h.Value
		case AttrID:
			id = h.Value
		case AttrSource:
			e.Source = h.Value
		case AttrType:
			e.Type = h.Value
		case AttrTime:
			tm = h.Value
		case AttrPartitionKey:
			e.Key = h.Value
		case AttrSequence:
			seq = h.Value
		case AttrCorrelationID:
			e.CorrelationID = h.Value
		case AttrCausationID:
			e.CausationID = h.Value
		case AttrTraceParent:
			e.TraceParent = h.Value
		case AttrTraceState:
			e.TraceState = h.Value
		case AttrEventVersion:
			ver = h.Value
		default:
			// Unknown CloudEvents extensions are kept, with their prefix, as
			// ordinary headers: nothing is lost.
			if e.Headers == nil {
				e.Headers = map[string]string{}
			}
			e.Headers[h.Name] = h.Value
		}
	}
	if specVersion != SpecVersion {
		return nil, fmt.Errorf("%w: %sspecversion is %q, want %q", ErrMalformed, prefix, specVersion, SpecVersion)
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return nil, fmt.Errorf("%w: %sid %q is not a UUID", ErrMalformed, prefix, id)
	}
	e.ID = u
	if e.Source == "" {
		e.Source = DefaultSource // as Attributes sends it
	}
	if e.Type == "" {
		return nil, fmt.Errorf("%w: %stype is missing", ErrMalformed, prefix)
	}
	if tm != "" {
		if e.Time, err = parseTime(tm); err != nil {
			return nil, fmt.Errorf("%w: %stime %q %v", ErrMalformed, prefix, tm, err)
		}
	}
	if seq != "" {
		if e.Sequence, err = strconv.ParseInt(seq, 10, 64); err != nil || e.Sequence < 1 {
			return nil, fmt.Errorf("%w: %ssequence %q is not a positive integer", ErrMalformed, prefix, seq)
		}
	}
	if (e.Key == "") != (seq == "") {
		return nil, fmt.Errorf("%w: %spartitionkey and %ssequence must come together", ErrMalformed, prefix, prefix)
	}
	e.Version = 1
	if ver != "" {
		if e.Version, err = strconv.Atoi(ver); err != nil || e.Version < 1 {
			return nil, fmt.Errorf("%w: %seventversion %q is not a positive integer", ErrMalformed, prefix, ver)
		}
	}
	return e, nil
}

// parseTime reads an RFC 3339 time and returns it in UTC. RFC 3339 allows a
// lower-case "t" and "z"; Go's parser does not, so they are upper-cased
// first. A time whose UTC form falls outside years 0000-9999 (possible with
// an offset: 9999-12-31T23:59:59-01:00) is refused: it has no RFC 3339
// spelling, so it could be received but not sent on.
func parseTime(s string) (time.Time, error) {
	if len(s) > 10 && s[10] == 't' {
		s = s[:10] + "T" + s[11:]
	}
	if strings.HasSuffix(s, "z") {
		s = s[:len(s)-1] + "Z"
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, errors.New("is not RFC 3339")
	}
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return time.Time{}, errors.New("is out of range once in UTC")
	}
	return t, nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return "", false
}
