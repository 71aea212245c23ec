// Package jsonw writes the JSON meterd answers and publishes: one string
// escaper and one time format for the HTTP API, the Kafka topics, the
// webhooks and the canonical pricing document, so that a value reads the
// same wherever it appears.
package jsonw

import (
	"time"
	"unicode/utf8"
)

// TimeLayout is the output format of times: UTC, millisecond precision.
const TimeLayout = "2006-01-02T15:04:05.000Z"

// AppendString appends s as a JSON string: '"', '\\' and control
// characters escaped (\n, \r, \t, \b, \f by name, the others as \u00XX),
// invalid UTF-8 replaced by U+FFFD, everything else as is.
func AppendString(b []byte, s string) []byte {
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

// AppendOptString appends s as a JSON string, or null when it is empty.
func AppendOptString(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return AppendString(b, s)
}

// AppendTime appends a unix-ns time as a JSON string in TimeLayout, or
// null for 0.
func AppendTime(b []byte, ns int64) []byte {
	if ns == 0 {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = time.Unix(0, ns).UTC().AppendFormat(b, TimeLayout)
	return append(b, '"')
}

// AppendEntryDetails appends the members of a ledger entry that say where
// its credit came from, as the HTTP API and the Kafka ledger topic both
// write them: ,"source", ,"description" (null when empty), and for a
// purchase (a currency or an offer) ,"price":{"amount","currency"} (null
// without a currency) and ,"offer_id".
func AppendEntryDetails(b []byte, source, description, price, currency, offer string) []byte {
	b = append(b, `,"source":`...)
	b = AppendOptString(b, source)
	b = append(b, `,"description":`...)
	b = AppendOptString(b, description)
	if currency == "" && offer == "" {
		return b
	}
	b = append(b, `,"price":`...)
	if currency == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"amount":`...)
		b = AppendString(b, price)
		b = append(b, `,"currency":`...)
		b = AppendString(b, currency)
		b = append(b, '}')
	}
	b = append(b, `,"offer_id":`...)
	return AppendOptString(b, offer)
}
