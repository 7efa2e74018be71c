package dashboard

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxShownPayload bounds what a page shows of one payload; the rest is
// counted, not rendered.
const maxShownPayload = 256 << 10

// payloadView is a payload made safe to show. Everything in it is plain
// text: html/template escapes it, and control characters (terminal escapes,
// bidirectional overrides that could disguise a value) are spelled out as
// Go escapes, as the CLI does.
type payloadView struct {
	Kind      string // "empty", "json", "text" or "binary"
	Text      string // pretty JSON or text; for binary, the hex dump
	Hex       string // hex + printable dump, always
	Truncated int    // bytes not shown
	Editable  string // the payload as the edit form pre-fills it
	Encoding  string // "text" or "base64": how Editable is written
	TooBig    bool   // too large to pre-fill the edit form
}

func renderPayload(p []byte) payloadView {
	v := payloadView{Encoding: "text"}
	// A textarea shows control and bidirectional characters raw and sends
	// line breaks back as CRLF: such payloads are edited as base64, byte
	// for byte.
	if s := string(p); utf8.Valid(p) && visible(s) == s && !strings.Contains(s, "\r") {
		v.Editable = s
	} else {
		v.Editable, v.Encoding = base64.StdEncoding.EncodeToString(p), "base64"
	}
	if len(p) == 0 {
		v.Kind = "empty"
		return v
	}
	shown := p
	if len(shown) > maxShownPayload {
		shown, v.Truncated = p[:maxShownPayload], len(p)-maxShownPayload
		v.Editable, v.TooBig = "", true
	}
	v.Hex = hexDump(shown)
	switch {
	case json.Valid(p):
		var buf bytes.Buffer
		if err := json.Indent(&buf, p, "", "  "); err == nil {
			v.Kind, v.Text = "json", visible(truncate(buf.String(), maxShownPayload))
			return v
		}
		fallthrough
	case utf8.Valid(p) && printableRatio(p) >= 0.75:
		v.Kind, v.Text = "text", visible(truncate(string(p), maxShownPayload))
	default:
		v.Kind, v.Text = "binary", v.Hex
		if !v.TooBig {
			v.Editable, v.Encoding = base64.StdEncoding.EncodeToString(p), "base64"
		}
	}
	return v
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func printableRatio(p []byte) float64 {
	n, ok := 0, 0
	for _, r := range string(p) {
		n++
		if unicode.IsPrint(r) || r == '\n' || r == '\t' {
			ok++
		}
	}
	if n == 0 {
		return 0
	}
	return float64(ok) / float64(n)
}

// visible keeps newlines and tabs and writes every other control character,
// line/paragraph separator, bidirectional control and invalid UTF-8 byte as
// a Go escape, so what a page shows is what the bytes are.
func visible(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || (unicode.IsControl(r) && r != '\n' && r != '\t') || r == '\u2028' || r == '\u2029' ||
			unicode.Is(unicode.Bidi_Control, r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r):
			q := fmt.Sprintf("%+q", string(r))
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// hexDump is 16 bytes a line with a printable ASCII column.
func hexDump(p []byte) string {
	var b strings.Builder
	for off := 0; off < len(p); off += 16 {
		end := min(off+16, len(p))
		fmt.Fprintf(&b, "%08x  ", off)
		for i := off; i < off+16; i++ {
			if i < end {
				fmt.Fprintf(&b, "%02x ", p[i])
			} else {
				b.WriteString("   ")
			}
			if i == off+7 {
				b.WriteByte(' ')
			}
		}
		b.WriteString(" |")
		for _, c := range p[off:end] {
			if c >= 0x20 && c < 0x7f {
				b.WriteByte(c)
			} else {
				b.WriteByte('.')
			}
		}
		b.WriteString("|\n")
	}
	return strings.TrimRight(b.String(), "\n")
}
