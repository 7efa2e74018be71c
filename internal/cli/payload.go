package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/outboxkit/outboxkit/internal/safetext"
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
			return safetext.Escape(buf.String())
		}
	}
	if utf8.Valid(p) && safetext.PrintableRatio(p) >= 0.75 {
		return safetext.Escape(string(p))
	}
	return fmt.Sprintf("(binary payload, %d bytes)\n", len(p)) + safetext.HexDump(p)
}
