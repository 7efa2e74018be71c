package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// renderPayload shows a payload safely on a terminal: indented JSON when it
// is JSON, UTF-8 text with control characters escaped when it is text, and a
// hex + printable dump otherwise. Raw control bytes never reach the
// terminal (they could rewrite the screen or the clipboard).
func renderPayload(p []byte) string {
	if len(p) == 0 {
		return "(empty payload)"
	}
	if json.Valid(p) {
		var buf bytes.Buffer
		if err := json.Indent(&buf, p, "", "  "); err == nil {
			return escapeControls(buf.String())
		}
	}
	if utf8.Valid(p) && printableRatio(p) >= 0.75 {
		return escapeControls(string(p))
	}
	return hexDump(p)
}

func printableRatio(p []byte) float64 {
	s := string(p)
	n, ok := 0, 0
	for _, r := range s {
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

// escapeControls keeps newlines and tabs and writes every other control
// character (and invalid UTF-8) as a Go escape.
func escapeControls(s string) string {
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

// hexDump is a classic 16-bytes-per-line dump with a printable ASCII column.
func hexDump(p []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "(binary payload, %d bytes)\n", len(p))
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
