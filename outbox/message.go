package outbox

import (
	"errors"
	"fmt"
	"math"
	"mime"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Message is one event to publish. Topic and Type are required; everything
// else has a sensible zero value.
type Message struct {
	// ID is the event id (ce_id). Zero means a new UUIDv7 is generated.
	// A caller-supplied id that already exists fails with ErrDuplicate.
	ID uuid.UUID
	// Topic is the logical topic; the relay routes it to a Kafka topic or a
	// RabbitMQ exchange/routing key. Letters, digits, '.', '_' and '-'.
	Topic string
	// Key is the ordering key (aggregate id, e.g. "payout-42"). Events with
	// the same Topic and Key are published and applied in enqueue order.
	// Empty means unordered.
	Key string
	// Type is the event type, e.g. "payout.created" (ce_type).
	Type string
	// Version is the schema version of Payload (ce_eventversion). 0 means 1.
	Version int
	// Payload is stored and sent byte for byte. Any format; JSON is common,
	// never required.
	Payload []byte
	// Headers are sent as broker headers. Names are HTTP tokens; names
	// starting with "ce_" and "content-type" are reserved for the wire
	// format, names starting with "outboxkit-" for operator actions.
	Headers map[string]string
	// CorrelationID links the event back to the business flow.
	CorrelationID string
	// CausationID is the id of the message that caused this one.
	CausationID string
	// DeliverAfter delays publication. A delayed event joins its key's order
	// when it becomes due: it never holds back events enqueued after it.
	DeliverAfter time.Duration

	// ContentType of Payload. Empty means "application/json" when the payload
	// is valid JSON, else "application/octet-stream".
	ContentType string
	// Source is the CloudEvents source (ce_source). Empty means the Writer's
	// Source, else the relay's.
	Source string
	// TraceParent and TraceState override the W3C trace context; by default
	// Enqueue captures them from ctx (OpenTelemetry span context).
	TraceParent string
	TraceState  string
}

// Limits enforced by validation. MaxPayloadBytes is configurable per Writer
// (Config.MaxPayloadBytes); the others are fixed because they shape indexes
// and broker names.
const (
	MaxTopicLen        = 249 // Kafka's limit for topic names
	MaxKeyLen          = 1024
	MaxTypeLen         = 255
	MaxIDLen           = 255 // CorrelationID, CausationID
	MaxSourceLen       = 1024
	MaxContentTypeLen  = 255
	MaxHeaders         = 64
	MaxHeaderNameLen   = 128
	MaxHeaderValueLen  = 8 << 10
	MaxHeadersBytes    = 64 << 10
	MaxTraceStateLen   = 512
	MaxPayloadBytesCap = 512 << 20 // upper bound for Config.MaxPayloadBytes
)

// ErrInvalid is matched (errors.Is) by every *ValidationError.
var ErrInvalid = errors.New("outbox: invalid message")

// ErrDuplicate means a message with the same ID already exists (or appears
// twice in one batch). PostgreSQL has aborted the transaction: roll it back.
var ErrDuplicate = errors.New("outbox: duplicate event id")

// ValidationError says which field of which message is wrong and why.
// Nothing was stored.
type ValidationError struct {
	// Index of the message in EnqueueBatch, or -1 for Enqueue.
	Index  int
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("outbox: message %d: %s %s", e.Index, e.Field, e.Reason)
	}
	return fmt.Sprintf("outbox: %s %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

var (
	topicPattern       = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
	traceparentPattern = regexp.MustCompile(`^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)
)

// validate checks m against the limits. index is the batch position or -1.
func validate(m *Message, index, maxPayload int) error {
	bad := func(field, format string, args ...any) error {
		return &ValidationError{Index: index, Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case m.Topic == "":
		return bad("Topic", "is empty; every message needs a topic")
	case len(m.Topic) > MaxTopicLen:
		return bad("Topic", "is %d bytes; the limit is %d", len(m.Topic), MaxTopicLen)
	case !topicPattern.MatchString(m.Topic) || m.Topic == "." || m.Topic == "..":
		return bad("Topic", "%q may only contain letters, digits, '.', '_' and '-' (a name every broker accepts)", clip(m.Topic))
	}
	if len(m.Key) > MaxKeyLen {
		return bad("Key", "is %d bytes; the limit is %d", len(m.Key), MaxKeyLen)
	}
	if err := storableText(m.Key); err != "" {
		return bad("Key", "%s", err)
	}
	switch {
	case m.Type == "":
		return bad("Type", "is empty; every message needs a type such as \"payout.created\"")
	case len(m.Type) > MaxTypeLen:
		return bad("Type", "is %d bytes; the limit is %d", len(m.Type), MaxTypeLen)
	}
	if err := printableText(m.Type); err != "" {
		return bad("Type", "%s", err)
	}
	if m.Version < 0 || m.Version > math.MaxInt32 {
		return bad("Version", "is %d; use 1 or more (0 means 1)", m.Version)
	}
	if len(m.Payload) > maxPayload {
		return bad("Payload", "is %d bytes; the limit is %d (Config.MaxPayloadBytes)", len(m.Payload), maxPayload)
	}
	if m.DeliverAfter < 0 {
		return bad("DeliverAfter", "is negative (%s)", m.DeliverAfter)
	}
	for _, f := range []struct{ name, value string }{{"CorrelationID", m.CorrelationID}, {"CausationID", m.CausationID}} {
		if len(f.value) > MaxIDLen {
			return bad(f.name, "is %d bytes; the limit is %d", len(f.value), MaxIDLen)
		}
		if err := printableText(f.value); err != "" {
			return bad(f.name, "%s", err)
		}
	}
	if len(m.Source) > MaxSourceLen {
		return bad("Source", "is %d bytes; the limit is %d", len(m.Source), MaxSourceLen)
	}
	if err := printableText(m.Source); err != "" {
		return bad("Source", "%s", err)
	}
	if m.ContentType != "" {
		if len(m.ContentType) > MaxContentTypeLen {
			return bad("ContentType", "is %d bytes; the limit is %d", len(m.ContentType), MaxContentTypeLen)
		}
		if _, _, err := mime.ParseMediaType(m.ContentType); err != nil {
			return bad("ContentType", "%q is not a media type such as application/json", clip(m.ContentType))
		}
	}
	if m.TraceParent != "" && !traceparentPattern.MatchString(m.TraceParent) {
		return bad("TraceParent", "%q is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)", clip(m.TraceParent))
	}
	if len(m.TraceState) > MaxTraceStateLen {
		return bad("TraceState", "is %d bytes; the limit is %d", len(m.TraceState), MaxTraceStateLen)
	}
	if err := printableText(m.TraceState); err != "" {
		return bad("TraceState", "%s", err)
	}
	return validateHeaders(m.Headers, bad)
}

func validateHeaders(h map[string]string, bad func(field, format string, args ...any) error) error {
	if len(h) > MaxHeaders {
		return bad("Headers", "has %d entries; the limit is %d", len(h), MaxHeaders)
	}
	total := 0
	for name, value := range h {
		field := fmt.Sprintf("Headers[%q]", clip(name))
		switch {
		case name == "":
			return bad("Headers", "has an empty name")
		case len(name) > MaxHeaderNameLen:
			return bad(field, "name is %d bytes; the limit is %d", len(name), MaxHeaderNameLen)
		case !isToken(name):
			return bad(field, "name is not an HTTP token (letters, digits and !#$%%&'*+-.^_`|~)")
		case reservedHeader(name):
			return bad(field, "name is reserved (ce_* and content-type for the wire format, outboxkit-* for operator actions); set the matching Message field instead")
		case len(value) > MaxHeaderValueLen:
			return bad(field, "value is %d bytes; the limit is %d", len(value), MaxHeaderValueLen)
		}
		if err := storableText(value); err != "" {
			return bad(field, "value %s", err)
		}
		total += len(name) + len(value)
	}
	if total > MaxHeadersBytes {
		return bad("Headers", "total %d bytes; the limit is %d", total, MaxHeadersBytes)
	}
	return nil
}

// storableText rejects what PostgreSQL text and jsonb cannot hold.
func storableText(s string) string {
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "contains a NUL byte"
	}
	return ""
}

// printableText also rejects control characters: these values are shown to
// operators and sent as broker properties.
func printableText(s string) string {
	if msg := storableText(s); msg != "" {
		return msg
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Sprintf("contains the control character %U", r)
		}
	}
	return ""
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func reservedHeader(name string) bool {
	lower := strings.ToLower(name)
	return strings.HasPrefix(lower, "ce_") || lower == "content-type" || strings.HasPrefix(lower, "outboxkit-")
}

// clip shortens a value for an error message and makes it safe to print.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
