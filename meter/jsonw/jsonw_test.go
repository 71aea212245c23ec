package jsonw

import (
	"encoding/json"
	"testing"
	"time"
)

// Every string, valid UTF-8 or not, is written as JSON that reads back as
// the same text (invalid bytes as U+FFFD), with the short escapes.
func TestAppendString(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain", `"plain"`},
		{"q\"b\\n\nr\rt\tb\bf\f\x01é世", `"q\"b\\n\nr\rt\tb\bf\f\u0001é世"`},
		{"bad\xffbyte", `"bad\ufffdbyte"`},
		{"", `""`},
	} {
		got := string(AppendString(nil, c.in))
		if got != c.want {
			t.Errorf("AppendString(%q) = %s, want %s", c.in, got, c.want)
		}
		var back string
		if err := json.Unmarshal([]byte(got), &back); err != nil {
			t.Errorf("%s does not read back: %v", got, err)
		}
	}
	if got := string(AppendOptString(nil, "")); got != "null" {
		t.Errorf("AppendOptString of nothing: %s", got)
	}
}

func TestAppendTime(t *testing.T) {
	ns := time.Date(2026, 11, 21, 10, 0, 0, 71_999_999, time.FixedZone("x", 3600)).UnixNano()
	if got := string(AppendTime(nil, ns)); got != `"2026-11-21T09:00:00.071Z"` {
		t.Errorf("AppendTime = %s", got)
	}
	if got := string(AppendTime(nil, 0)); got != "null" {
		t.Errorf("AppendTime(0) = %s", got)
	}
}
