package safetext

import "testing"

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain\ttext\n":         "plain\ttext\n",
		"\x1b[2Jclear":          `\x1b[2Jclear`,
		"pay\u202eevil":         `pay\u202eevil`,
		"bad \xff byte":         `bad \xff byte`,
		"line\u2028sep":         `line\u2028sep`,
		"replacement \ufffd ok": "replacement \ufffd ok",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHexDumpAndRatio(t *testing.T) {
	want := "00000000  00 41 42 0a                                       |.AB.|"
	if got := HexDump([]byte{0, 'A', 'B', '\n'}); got != want {
		t.Errorf("HexDump = %q, want %q", got, want)
	}
	if r := PrintableRatio([]byte("ab\x00\x01")); r != 0.5 {
		t.Errorf("PrintableRatio = %v, want 0.5", r)
	}
}
