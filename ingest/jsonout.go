package ingest

import (
	"strconv"

	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/meter/jsonw"
)

// appendString appends s as a JSON string (jsonw.AppendString). The
// decoder uses it for the compact data JSON too.
func appendString(b []byte, s string) []byte { return jsonw.AppendString(b, s) }

// appendUnits appends an amount as a JSON string of its exact decimal.
func appendUnits(b []byte, u int64, scale uint8) []byte {
	b = append(b, '"')
	b = meter.AppendUnits(b, u, scale)
	return append(b, '"')
}

// appendTime appends a unix-ns time as a JSON string, or null for 0.
func appendTime(b []byte, ns int64) []byte { return jsonw.AppendTime(b, ns) }

// appendRaw appends raw JSON, or def when it is empty.
func appendRaw[T []byte | string](b []byte, raw T, def string) []byte {
	if len(raw) == 0 {
		return append(b, def...)
	}
	return append(b, raw...)
}

func appendUint(b []byte, v uint64) []byte { return strconv.AppendUint(b, v, 10) }
