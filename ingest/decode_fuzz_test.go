package ingest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/meterd/meterd/meter"
)

var fuzzSeeds = []string{
	`{"events":[` + validEvent + `]}`,
	`{"customer_id":"c","events":[{"id":"a","event_type":"t","data":{"x":[1,{"y":"\u00e9\ud83d\ude00"}],"z":1e3}},5,{"id":""}]}`,
	`{"events":[{"id":"a","event_type":"t","data":{"a":1,"a":2}}]}`,
	`{"events":[{"id":"a","customer_id":"c","event_type":"t","occurred_at":"2026-11-21T11:00:00.123456789+01:00"}]}`,
	`{"events":[]}`,
	`{"events":[}`,
	"{\"id\":\"a\",\"customer_id\":\"c\",\"event_type\":\"t\"}\r\n\n{\"id\":\n[1]\n",
	`{"id":"a","customer_id":"c","event_type":"t","data":` + nest(9) + `}`,
}

// checkResult asserts that a slot is either rejected or a valid event.
func checkResult(t *testing.T, r *Decoded) {
	t.Helper()
	if r.Err != nil {
		e := r.Err
		if (e.Code != CodeInvalidEvent && e.Code != CodeOutOfWindow) || e.Reason == "" || e.Message == "" {
			t.Fatalf("bad error %+v", e)
		}
		if r.Event.CustomerID != "" || r.Event.DataJSON != nil || r.ContentHash != ([16]byte{}) {
			t.Fatalf("rejected event carries content: %+v", r.Event)
		}
		return
	}
	ev := &r.Event
	lim := DefaultLimits()
	for _, s := range []string{ev.ID, ev.CustomerID, ev.EventType} {
		if reason, _ := checkID([]byte(s), 128, "bad", "bad", "x"); reason != "" {
			t.Fatalf("invalid id %q in an accepted event", s)
		}
	}
	if ev.HoldID != "" {
		if reason, _ := checkID([]byte(ev.HoldID), 128, "bad", "bad", "x"); reason != "" {
			t.Fatalf("invalid hold id %q", ev.HoldID)
		}
	}
	if !utf8.ValidString(ev.Subject) || utf8.RuneCountInString(ev.Subject) > lim.SubjectLenMax {
		t.Fatalf("bad subject %q", ev.Subject)
	}
	if len(ev.DataJSON) > lim.DataBytesMax || !json.Valid(ev.DataJSON) || ev.DataJSON[0] != '{' {
		t.Fatalf("bad DataJSON %q", ev.DataJSON)
	}
	if ev.OccurredAt < testNow.Add(-lim.PastWindowMax).UnixNano() || ev.OccurredAt > testNow.Add(lim.FutureSkewMax).UnixNano() {
		t.Fatalf("occurred_at %d out of window", ev.OccurredAt)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(ev.DataJSON, &m); err != nil || len(m) != len(ev.Data) {
		t.Fatalf("Data %+v does not match DataJSON %s (%v)", ev.Data, ev.DataJSON, err)
	}
	for _, f := range ev.Data {
		raw, ok := m[f.Key]
		if !ok || f.Kind < meter.FieldString || f.Kind > meter.FieldArray {
			t.Fatalf("field %+v not in %s", f, ev.DataJSON)
		}
		if f.Kind == meter.FieldNumber && string(raw) != f.Text {
			t.Fatalf("number %+v is %s in DataJSON", f, raw)
		}
	}
	if r.ContentHash == ([16]byte{}) {
		t.Fatalf("zero content hash")
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	var d Decoder
	f.Fuzz(func(t *testing.T, body []byte) {
		orig := bytes.Clone(body)
		out, rerr := d.DecodeJSON(body, testNow, nil, nil)
		if !bytes.Equal(body, orig) {
			t.Fatalf("the body was modified")
		}
		if rerr != nil {
			if rerr.Code == "" || rerr.Message == "" || (rerr.Status != 400 && rerr.Status != 413) {
				t.Fatalf("bad request error %+v", rerr)
			}
			if rerr.Code != CodeMalformedJSON && !json.Valid(body) {
				t.Fatalf("invalid JSON accepted by the strict scan: %q", body)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("invalid JSON accepted: %q", body)
		}
		var env struct{ Events []json.RawMessage }
		if err := json.Unmarshal(body, &env); err == nil && len(env.Events) != len(out) {
			t.Fatalf("%d events, %d results", len(env.Events), len(out))
		}
		for i := range out {
			checkResult(t, &out[i])
		}
	})
}

func FuzzDecodeNDJSON(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
		f.Add([]byte(strings.ReplaceAll(s, "\n", "")))
	}
	f.Add([]byte(validEvent + "\n" + validEvent + "\r\n\n"))
	var d Decoder
	f.Fuzz(func(t *testing.T, body []byte) {
		out, rerr := d.DecodeNDJSON(body, testNow, nil, nil)
		if rerr != nil {
			if rerr.Code == "" || rerr.Message == "" || rerr.Status != 413 {
				t.Fatalf("bad request error %+v", rerr)
			}
			return
		}
		lines := 0
		for _, l := range bytes.Split(body, []byte("\n")) {
			if len(bytes.TrimLeft(l, " \t\r")) > 0 {
				lines++
			}
		}
		if lines != len(out) {
			t.Fatalf("%d lines, %d results", lines, len(out))
		}
		for i := range out {
			checkResult(t, &out[i])
		}
		var one Decoded
		d.DecodeOne(body, testNow, nil, "c1", &one)
		checkResult(t, &one)
	})
}
