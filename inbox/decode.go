package inbox

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/wire"
)

// Limits that keep every stored value inside PostgreSQL's btree entry size
// (lanes and dead_letters index topic and key). The producer side enforces
// the same (outbox.MaxTopicLen, outbox.MaxKeyLen); a delivery beyond them is
// poison_format.
const (
	maxTopicLen = 255
	maxKeyLen   = 1024
)

// message is a delivery with what Handle learnt about it.
type message struct {
	d     *Delivery
	ev    *wire.Event // nil when malformed
	bad   error       // why the delivery is malformed (class poison_format)
	sha   [32]byte    // of the payload as received
	topic string      // d.Topic, made storable when it was not
}

func (m *message) keyed() bool { return m.ev != nil && m.ev.Key != "" }

// skipMarker reports whether ev is the skip marker an operator's drop of a
// keyed outbox event left in its lane place: type wire.SkippedType, keyed,
// and the header wire.SkippedHeader naming the dropped event. Producers
// cannot set outboxkit-* headers (outbox refuses them), so an event of
// that type sent by a producer is an ordinary event (without a handler it
// is parked as no_handler), never silently skipped.
func skipMarker(ev *wire.Event) bool {
	if ev == nil || ev.Key == "" || ev.Type != wire.SkippedType {
		return false
	}
	_, ok := ev.Headers[wire.SkippedHeader]
	return ok
}

// storable reports whether s can be stored in a PostgreSQL text column.
func storable(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// storableText returns s with invalid UTF-8 replaced and NUL removed, cut
// to at most n bytes on a rune boundary.
func storableText(s string, n int) string {
	if !storable(s) {
		s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
	}
	if len(s) > n {
		i := n
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return s
}

func prefixOf(b Binding) (string, bool) {
	switch b {
	case BindingKafka:
		return wire.KafkaPrefix, true
	case BindingAMQP:
		return wire.AMQPPrefix, true
	}
	return "", false
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// decode reads the CloudEvents attributes of d. It never fails: a delivery
// that is not a readable event comes back with bad set.
func decode(d *Delivery) *message {
	m := &message{d: d, sha: sha256.Sum256(d.Payload), topic: storableText(d.Topic, maxTopicLen)}
	malformed := func(format string, args ...any) *message {
		m.bad = failure.New(failure.PoisonFormat, fmt.Errorf("%w: "+format, append([]any{wire.ErrMalformed}, args...)...))
		return m
	}
	if m.topic != d.Topic {
		return malformed("topic %q is not valid UTF-8, contains NUL or is longer than %d bytes", m.topic, maxTopicLen)
	}
	prefix, ok := prefixOf(d.Binding)
	if !ok {
		return malformed("unknown binding %q (want %q or %q)", d.Binding, BindingKafka, BindingAMQP)
	}
	if !storable(d.ContentType) {
		return malformed("content type property is not valid UTF-8 or contains NUL")
	}
	hs := make([]wire.Header, len(d.Headers))
	for i, h := range d.Headers {
		v := string(h.Value)
		if hasPrefixFold(h.Name, prefix) || strings.EqualFold(h.Name, wire.ContentTypeHeader) {
			// Attributes end up in text columns and in the handler's Event:
			// they must be text. The event's own headers are passed on as
			// they are.
			if !storable(h.Name) {
				return malformed("header name %q is not valid UTF-8 or contains NUL", h.Name)
			}
			if !storable(v) {
				return malformed("header %s is not valid UTF-8 or contains NUL", h.Name)
			}
		}
		hs[i] = wire.Header{Name: h.Name, Value: v}
	}
	ev, err := wire.Decode(prefix, hs, d.ContentType, d.Payload)
	if err != nil {
		if len(d.Headers) == 0 {
			return malformed("no headers: not a CloudEvents %s message", d.Binding)
		}
		m.bad = failure.New(failure.PoisonFormat, err)
		return m
	}
	if ev.Version > math.MaxInt32 {
		return malformed("%seventversion %d is out of range", prefix, ev.Version)
	}
	if len(ev.Key) > maxKeyLen {
		return malformed("%spartitionkey is %d bytes, at most %d allowed", prefix, len(ev.Key), maxKeyLen)
	}
	ev.Topic = d.Topic
	m.ev = ev
	return m
}

// textOrBase64 is how a header name or value is stored in JSON: as a string
// when PostgreSQL's jsonb can hold it byte for byte (valid UTF-8, no NUL),
// else as {"base64": "..."}.
func textOrBase64(b []byte) any {
	if utf8.Valid(b) && bytes.IndexByte(b, 0) < 0 {
		return string(b)
	}
	return map[string]string{"base64": base64.StdEncoding.EncodeToString(b)}
}

type jsonHeader struct {
	Name  any `json:"name"`
	Value any `json:"value"`
}

// encodeHeaders is the dead_letters.headers form of hs: a JSON array of
// {"name", "value"} in received order.
func encodeHeaders(hs []Header) []byte {
	out := make([]jsonHeader, len(hs))
	for i, h := range hs {
		out[i] = jsonHeader{Name: textOrBase64([]byte(h.Name)), Value: textOrBase64(h.Value)}
	}
	b, err := json.Marshal(out)
	if err != nil { // cannot happen: strings and maps of strings only
		return []byte("[]")
	}
	return b
}

// decodeHeaders reverses encodeHeaders.
func decodeHeaders(b []byte) ([]Header, error) {
	var raw []struct {
		Name  json.RawMessage `json:"name"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("headers: %w", err)
	}
	hs := make([]Header, len(raw))
	for i, r := range raw {
		name, err := fromTextOrBase64(r.Name)
		if err != nil {
			return nil, err
		}
		value, err := fromTextOrBase64(r.Value)
		if err != nil {
			return nil, err
		}
		hs[i] = Header{Name: string(name), Value: value}
	}
	return hs, nil
}

func fromTextOrBase64(raw json.RawMessage) ([]byte, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return []byte(s), nil
	}
	var obj struct {
		Base64 *string `json:"base64"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Base64 == nil {
		return nil, errors.New("headers: a name or value is neither a string nor {\"base64\": ...}")
	}
	return base64.StdEncoding.DecodeString(*obj.Base64)
}

// jsonSafe returns v with every string that jsonb cannot hold byte for byte
// replaced by {"base64": ...}, recursively through maps and slices. Other
// values are left to encoding/json.
func jsonSafe(v any) any {
	switch x := v.(type) {
	case string:
		return textOrBase64([]byte(x))
	case []byte:
		return textOrBase64(x)
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[storableText(k, 1<<10)] = jsonSafe(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonSafe(e)
		}
		return out
	}
	return v
}

// encodeSource is the dead_letters.source form of d: its Source plus the
// binding (needed to read the headers back) and, when the topic could not
// be stored as text, the raw topic.
func encodeSource(d *Delivery, storedTopic string) []byte {
	src := make(map[string]any, len(d.Source)+2)
	for k, v := range d.Source {
		src[k] = v
	}
	src["binding"] = string(d.Binding)
	if storedTopic != d.Topic {
		src["raw_topic"] = []byte(d.Topic)
	}
	if d.ContentType != "" {
		src["content_type_property"] = d.ContentType
	}
	b, err := json.Marshal(jsonSafe(src))
	if err != nil {
		// A value encoding/json refuses (a channel, a NaN): keep what can be
		// said, never fail the park.
		b, _ = json.Marshal(map[string]any{"binding": string(d.Binding), "error": storableText(err.Error(), 1<<10)})
	}
	return b
}
