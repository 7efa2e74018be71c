// Package safetext renders bytes from events (payloads, header values,
// error texts) for people: on a terminal (outboxkit dlq show) and in the
// dashboard. Control characters, line and paragraph separators,
// bidirectional controls and invalid UTF-8 are spelled out as Go escapes,
// so what is shown is what the bytes are: raw control bytes could rewrite a
// terminal or the clipboard, and a bidirectional override could disguise a
// value.
package safetext

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Escape keeps newlines and tabs and writes every other control character,
// U+2028, U+2029, bidirectional control and invalid UTF-8 byte as a Go
// escape. A string with none of them is returned as it is.
func Escape(s string) string {
	if clean(s) {
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
		case unsafeRune(r):
			q := fmt.Sprintf("%+q", string(r))
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func clean(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || (r != '\n' && r != '\t' && unsafeRune(r)) {
			return false
		}
	}
	return true
}

func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r)
}

// PrintableRatio is the share of p's runes that are printable (newlines
// and tabs count as printable); 0 for an empty p. Callers show a payload as
// text above a threshold and as a hex dump below it.
func PrintableRatio(p []byte) float64 {
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

// HexDump is a classic dump: 16 bytes a line with their offset and a
// printable ASCII column.
func HexDump(p []byte) string {
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
