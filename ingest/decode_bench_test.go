package ingest

import (
	"strconv"
	"strings"
	"testing"
)

// benchBody is a JSON batch of n copies of the contract's message_completed
// example, with distinct ids.
func benchBody(n int) string {
	var b strings.Builder
	b.WriteString(`{"customer_id":"c1","events":[`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"id":"evt_` + strconv.Itoa(i) + `","customer_id":"c1","event_type":"message_completed",` +
			`"occurred_at":"2026-11-21T10:00:00.071Z","subject":"chat_5f53",` +
			`"data":{"model":"gpt-4-1","input_tokens":2353,"output_tokens":34697},"hold_id":null}`)
	}
	b.WriteString(`]}`)
	return b.String()
}

// BenchmarkDecodeJSON decodes a 100-event batch with a reused Decoder and dst,
// as the HTTP handler does with a pooled Decoder.
//
//	go test ./ingest/ -run '^$' -bench 'Decode(JSON|NDJSON)$' -benchmem
func BenchmarkDecodeJSON(b *testing.B) {
	const events = 100
	body := []byte(benchBody(events))
	var d Decoder
	dst := make([]Decoded, 0, events)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var err *RequestError
		dst, err = d.DecodeJSON(body, testNow, nil, dst[:0])
		if err != nil || len(dst) != events || dst[events-1].Err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
}

// BenchmarkDecodeNDJSON is the same batch as NDJSON.
func BenchmarkDecodeNDJSON(b *testing.B) {
	const events = 100
	var sb strings.Builder
	for i := range events {
		sb.WriteString(`{"id":"evt_` + strconv.Itoa(i) + `","customer_id":"c1","event_type":"message_completed",` +
			`"occurred_at":"2026-11-21T10:00:00.071Z","subject":"chat_5f53",` +
			`"data":{"model":"gpt-4-1","input_tokens":2353,"output_tokens":34697},"hold_id":null}` + "\n")
	}
	body := []byte(sb.String())
	var d Decoder
	dst := make([]Decoded, 0, events)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var err *RequestError
		dst, err = d.DecodeNDJSON(body, testNow, nil, dst[:0])
		if err != nil || len(dst) != events || dst[events-1].Err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
}
