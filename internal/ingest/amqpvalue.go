package ingest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

// An AMQP table keeps the type of every value (a 32-bit and a 64-bit
// integer differ, a byte array is not a string, x-death is an array of
// tables). jsonb has no such types, so each value is stored as a typed
// node, {"type": ..., "value": ...}, from which republishing rebuilds the
// exact Go value amqp091 sends; and it is shown as its plain rendering
// (numbers, strings, objects) for people.

// typed is the stored form of one AMQP field value.
type typed struct {
	Type   string          `json:"type"`
	Value  json.RawMessage `json:"value,omitempty"`
	Base64 string          `json:"base64,omitempty"` // string or bytes that are not text jsonb can hold
	Scale  *uint8          `json:"scale,omitempty"`  // decimal
}

// field is one named entry of a stored table.
type field struct {
	Name  any   `json:"name"` // string, or {"base64": ...}
	Value typed `json:"value"`
}

// isText reports whether b can be a jsonb string as it is: valid UTF-8
// without NUL.
func isText(b []byte) bool { return utf8.Valid(b) && bytes.IndexByte(b, 0) < 0 }

// textOrBase64 is the jsonb form of bytes that may not be text.
func textOrBase64(b []byte) any {
	if isText(b) {
		return string(b)
	}
	return map[string]string{"base64": base64.StdEncoding.EncodeToString(b)}
}

func raw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil { // numbers, bools and valid strings only
		return json.RawMessage("null")
	}
	return b
}

func textNode(kind string, b []byte) typed {
	if isText(b) {
		return typed{Type: kind, Value: raw(string(b))}
	}
	return typed{Type: kind, Base64: base64.StdEncoding.EncodeToString(b)}
}

func floatText(f float64, bits int) string { return strconv.FormatFloat(f, 'g', -1, bits) }

// encodeValue is the typed node of an AMQP field value. It accepts every
// type amqp091 decodes; anything else (not produced by the client) is kept
// as its printed form, typed "unknown", so nothing is ever refused.
func encodeValue(v any, depth int) typed {
	if depth > 64 {
		return typed{Type: "unknown", Value: raw("nested deeper than 64 levels")}
	}
	switch x := v.(type) {
	case nil:
		return typed{Type: "void"}
	case bool:
		return typed{Type: "bool", Value: raw(x)}
	case uint8:
		return typed{Type: "uint8", Value: raw(x)}
	case int8:
		return typed{Type: "int8", Value: raw(x)}
	case int16:
		return typed{Type: "int16", Value: raw(x)}
	case int32:
		return typed{Type: "int32", Value: raw(x)}
	case int:
		return typed{Type: "int64", Value: raw(int64(x))}
	case int64:
		return typed{Type: "int64", Value: raw(x)}
	case uint16:
		return typed{Type: "uint16", Value: raw(x)}
	case uint32:
		return typed{Type: "uint32", Value: raw(x)}
	case float32:
		// As text: exact, and NaN and infinities have no JSON number.
		return typed{Type: "float32", Value: raw(floatText(float64(x), 32))}
	case float64:
		return typed{Type: "float64", Value: raw(floatText(x, 64))}
	case amqp.Decimal:
		s := x.Scale
		return typed{Type: "decimal", Value: raw(x.Value), Scale: &s}
	case string:
		return textNode("string", []byte(x))
	case []byte:
		return textNode("bytes", x)
	case time.Time:
		return typed{Type: "timestamp", Value: raw(x.UTC().Format(time.RFC3339))}
	case amqp.Table:
		return typed{Type: "table", Value: raw(encodeTable(x, depth+1))}
	case []any:
		out := make([]typed, len(x))
		for i, e := range x {
			out[i] = encodeValue(e, depth+1)
		}
		return typed{Type: "array", Value: raw(out)}
	}
	return typed{Type: "unknown", Value: raw(fmt.Sprintf("%T %v", v, v))}
}

// encodeTable is the stored form of a table: its fields sorted by name (a
// table has no order), so that one table always has one rendering.
func encodeTable(t amqp.Table, depth int) []field {
	names := make([]string, 0, len(t))
	for k := range t {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make([]field, len(names))
	for i, k := range names {
		out[i] = field{Name: textOrBase64([]byte(k)), Value: encodeValue(t[k], depth)}
	}
	return out
}

var errBadNode = errors.New("stored AMQP value is malformed")

func (n typed) text() ([]byte, error) {
	if n.Base64 != "" {
		return base64.StdEncoding.DecodeString(n.Base64)
	}
	var s string
	if err := json.Unmarshal(n.Value, &s); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errBadNode, n.Type, err)
	}
	return []byte(s), nil
}

func (n typed) integer(bits int, unsigned bool) (int64, uint64, error) {
	d := json.NewDecoder(bytes.NewReader(n.Value))
	d.UseNumber()
	var num json.Number
	if err := d.Decode(&num); err != nil {
		return 0, 0, fmt.Errorf("%w: %s: %v", errBadNode, n.Type, err)
	}
	if unsigned {
		u, err := strconv.ParseUint(num.String(), 10, bits)
		return 0, u, err
	}
	i, err := strconv.ParseInt(num.String(), 10, bits)
	return i, 0, err
}

// decodeValue reverses encodeValue.
func decodeValue(n typed) (any, error) {
	switch n.Type {
	case "void":
		return nil, nil
	case "bool":
		var b bool
		err := json.Unmarshal(n.Value, &b)
		return b, err
	case "int8", "int16", "int32", "int64":
		bits, _ := strconv.Atoi(n.Type[3:])
		i, _, err := n.integer(bits, false)
		switch n.Type {
		case "int8":
			return int8(i), err
		case "int16":
			return int16(i), err
		case "int32":
			return int32(i), err
		}
		return i, err
	case "uint8", "uint16", "uint32":
		bits, _ := strconv.Atoi(n.Type[4:])
		_, u, err := n.integer(bits, true)
		switch n.Type {
		case "uint8":
			return uint8(u), err
		case "uint16":
			return uint16(u), err
		}
		return uint32(u), err
	case "float32", "float64":
		b, err := n.text()
		if err != nil {
			return nil, err
		}
		bits := 64
		if n.Type == "float32" {
			bits = 32
		}
		f, err := strconv.ParseFloat(string(b), bits)
		if err != nil && !math.IsInf(f, 0) {
			return nil, fmt.Errorf("%w: %s: %v", errBadNode, n.Type, err)
		}
		if bits == 32 {
			return float32(f), nil
		}
		return f, nil
	case "decimal":
		i, _, err := n.integer(32, false)
		if err != nil || n.Scale == nil {
			return nil, fmt.Errorf("%w: decimal", errBadNode)
		}
		return amqp.Decimal{Scale: *n.Scale, Value: int32(i)}, nil
	case "string":
		b, err := n.text()
		return string(b), err
	case "bytes":
		return n.text()
	case "timestamp":
		var s string
		if err := json.Unmarshal(n.Value, &s); err != nil {
			return nil, fmt.Errorf("%w: timestamp: %v", errBadNode, err)
		}
		return time.Parse(time.RFC3339, s)
	case "table":
		var fs []field
		if err := json.Unmarshal(n.Value, &fs); err != nil {
			return nil, fmt.Errorf("%w: table: %v", errBadNode, err)
		}
		return decodeTable(fs)
	case "array":
		var ns []typed
		if err := json.Unmarshal(n.Value, &ns); err != nil {
			return nil, fmt.Errorf("%w: array: %v", errBadNode, err)
		}
		out := make([]any, len(ns))
		for i, e := range ns {
			v, err := decodeValue(e)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: type %q cannot be sent back to RabbitMQ", errBadNode, n.Type)
}

func decodeName(name any) (string, error) {
	switch x := name.(type) {
	case string:
		return x, nil
	case map[string]any:
		if s, ok := x["base64"].(string); ok {
			b, err := base64.StdEncoding.DecodeString(s)
			return string(b), err
		}
	}
	return "", fmt.Errorf("%w: field name %v", errBadNode, name)
}

func decodeTable(fs []field) (amqp.Table, error) {
	t := make(amqp.Table, len(fs))
	for _, f := range fs {
		name, err := decodeName(f.Name)
		if err != nil {
			return nil, err
		}
		v, err := decodeValue(f.Value)
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", name, err)
		}
		t[name] = v
	}
	return t, nil
}

// plain is the rendering of an AMQP value for people: strings, numbers,
// objects and arrays; bytes and strings that are not text as
// {"base64": ...}; timestamps as RFC 3339.
func plain(v any, depth int) any {
	if depth > 64 {
		return "…"
	}
	switch x := v.(type) {
	case nil, bool, uint8, int8, int16, int32, int, int64, uint16, uint32:
		return x
	case float32:
		return floatText(float64(x), 32)
	case float64:
		return floatText(x, 64)
	case amqp.Decimal:
		s := strconv.Itoa(int(x.Value))
		if x.Scale == 0 {
			return s
		}
		neg := ""
		if x.Value < 0 {
			neg, s = "-", s[1:]
		}
		for len(s) <= int(x.Scale) {
			s = "0" + s
		}
		return neg + s[:len(s)-int(x.Scale)] + "." + s[len(s)-int(x.Scale):]
	case string:
		return textOrBase64([]byte(x))
	case []byte:
		return textOrBase64(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case amqp.Table:
		out := make(map[string]any, len(x))
		for k, e := range x {
			name := k
			if !isText([]byte(k)) {
				name = "base64:" + base64.StdEncoding.EncodeToString([]byte(k))
			}
			out[name] = plain(e, depth+1)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = plain(e, depth+1)
		}
		return out
	}
	return fmt.Sprintf("%T", v)
}

// displayValue is the "value" of a stored header: a string stays a string
// (or {"base64": ...} when it is not text), anything else becomes the
// compact JSON text of its plain rendering, so that every header reads as
// one line in "dlq show".
func displayValue(v any) any {
	p := plain(v, 0)
	switch p.(type) {
	case string, map[string]string:
		return p
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Sprint(p)
	}
	return string(b)
}
