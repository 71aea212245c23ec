package ingest

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/meterd/meterd/meter"
)

// appendString appends s as a JSON string: '"', '\\' and control characters
// escaped, invalid UTF-8 replaced by U+FFFD, everything else as is. The
// decoder uses it for the compact data JSON too.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendUnits appends an amount as a JSON string of its exact decimal.
func appendUnits(b []byte, u int64, scale uint8) []byte {
	b = append(b, '"')
	b = meter.AppendUnits(b, u, scale)
	return append(b, '"')
}

// timeLayout is the contract's output format: UTC, millisecond precision.
const timeLayout = "2006-01-02T15:04:05.000Z"

// appendTime appends a unix-ns time as a JSON string, or null for 0.
func appendTime(b []byte, ns int64) []byte {
	if ns == 0 {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = time.Unix(0, ns).UTC().AppendFormat(b, timeLayout)
	return append(b, '"')
}

// appendRaw appends raw JSON, or def when it is empty.
func appendRaw[T []byte | string](b []byte, raw T, def string) []byte {
	if len(raw) == 0 {
		return append(b, def...)
	}
	return append(b, raw...)
}

func appendUint(b []byte, v uint64) []byte { return strconv.AppendUint(b, v, 10) }
