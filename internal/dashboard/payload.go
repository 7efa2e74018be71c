package dashboard

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/outboxkit/outboxkit/internal/safetext"
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
	if s := string(p); utf8.Valid(p) && safetext.Escape(s) == s && !strings.Contains(s, "\r") {
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
	v.Hex = safetext.HexDump(shown)
	switch {
	case json.Valid(p):
		var buf bytes.Buffer
		if err := json.Indent(&buf, p, "", "  "); err == nil {
			v.Kind, v.Text = "json", safetext.Escape(truncate(buf.String(), maxShownPayload))
			return v
		}
		fallthrough
	case utf8.Valid(p) && safetext.PrintableRatio(p) >= 0.75:
		v.Kind, v.Text = "text", safetext.Escape(truncate(string(p), maxShownPayload))
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
