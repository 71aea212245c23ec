package ingest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/meter"
)

var testNow = time.Date(2026, 11, 21, 10, 1, 0, 0, time.UTC)

const validEvent = `{"id":"evt_1","customer_id":"c1","event_type":"message_completed",` +
	`"occurred_at":"2026-11-21T10:00:00.071Z","subject":"chat_5f53",` +
	`"data":{"model":"gpt-4-1","input_tokens":2353,"output_tokens":34697},"hold_id":null}`

func decodeBatch(t *testing.T, body string, lim *Limits) []Decoded {
	t.Helper()
	var d Decoder
	out, rerr := d.DecodeJSON([]byte(body), testNow, lim, nil)
	if rerr != nil {
		t.Fatalf("DecodeJSON(%.200s): %v", body, rerr)
	}
	return out
}

func decodeOneOK(t *testing.T, ev string) Decoded {
	t.Helper()
	out := decodeBatch(t, `{"events":[`+ev+`]}`, nil)
	if len(out) != 1 {
		t.Fatalf("%d results", len(out))
	}
	if out[0].Err != nil {
		t.Fatalf("event %.200s: %v", ev, out[0].Err)
	}
	return out[0]
}

func nest(depth int) string { // data nested depth levels deep (data itself is 1)
	return strings.Repeat(`{"a":`, depth-1) + `{}` + strings.Repeat(`}`, depth-1)
}

func manyKeys(n int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"k` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + strings.Repeat("y", i/26) + `":1`)
	}
	b.WriteString("}")
	return b.String()
}

// ev builds an event from the valid one with members replaced ("-" drops one).
func ev(members ...string) string {
	base := [][2]string{
		{"id", `"evt_1"`}, {"customer_id", `"c1"`}, {"event_type", `"message_completed"`},
		{"occurred_at", `"2026-11-21T10:00:00.071Z"`}, {"subject", `"chat_5f53"`},
		{"data", `{"model":"gpt-4-1","input_tokens":2353}`}, {"hold_id", `null`},
	}
	var extra []string
	for i := 0; i+1 < len(members); i += 2 {
		k, v := members[i], members[i+1]
		found := false
		for j := range base {
			if base[j][0] == k {
				base[j][1] = v
				found = true
			}
		}
		if !found {
			extra = append(extra, `"`+k+`":`+v)
		}
	}
	var parts []string
	for _, kv := range base {
		if kv[1] != "-" {
			parts = append(parts, `"`+kv[0]+`":`+kv[1])
		}
	}
	return "{" + strings.Join(append(parts, extra...), ",") + "}"
}

func TestEventReasons(t *testing.T) {
	long := func(n int) string { return `"` + strings.Repeat("x", n) + `"` }
	cases := []struct {
		name   string
		event  string
		code   string
		reason string
		field  string
		echoID string
	}{
		{"not an object", `5`, CodeInvalidEvent, ReasonWrongType, "events[0]", ""},
		{"unknown field", ev("amount", `1`), CodeInvalidEvent, ReasonUnknownField, "events[0].amount", "evt_1"},
		{"unknown odd field", ev("a b", `1`), CodeInvalidEvent, ReasonUnknownField, `events[0]["a b"]`, "evt_1"},
		{"duplicate field", `{"id":"a","id":"b","customer_id":"c","event_type":"t"}`, CodeInvalidEvent, ReasonDuplicateField, "events[0].id", "a"},
		{"missing id", ev("id", "-"), CodeInvalidEvent, ReasonMissingID, "events[0].id", ""},
		{"null id", ev("id", "null"), CodeInvalidEvent, ReasonMissingID, "events[0].id", ""},
		{"id wrong type", ev("id", "7"), CodeInvalidEvent, ReasonWrongType, "events[0].id", ""},
		{"empty id", ev("id", `""`), CodeInvalidEvent, ReasonInvalidID, "events[0].id", ""},
		{"id charset", ev("id", `"evt 1"`), CodeInvalidEvent, ReasonInvalidID, "events[0].id", "evt 1"},
		{"id too long", ev("id", long(129)), CodeInvalidEvent, ReasonIDTooLong, "events[0].id", ""},
		{"missing customer", ev("customer_id", "-"), CodeInvalidEvent, ReasonMissingCustomerID, "events[0].customer_id", "evt_1"},
		{"customer wrong type", ev("customer_id", "{}"), CodeInvalidEvent, ReasonWrongType, "events[0].customer_id", "evt_1"},
		{"customer charset", ev("customer_id", `"c/1"`), CodeInvalidEvent, ReasonInvalidCustomerID, "events[0].customer_id", "evt_1"},
		{"customer too long", ev("customer_id", long(129)), CodeInvalidEvent, ReasonCustomerIDTooLong, "events[0].customer_id", "evt_1"},
		{"missing event type", ev("event_type", "-"), CodeInvalidEvent, ReasonMissingEventType, "events[0].event_type", "evt_1"},
		{"event type wrong type", ev("event_type", "true"), CodeInvalidEvent, ReasonWrongType, "events[0].event_type", "evt_1"},
		{"event type charset", ev("event_type", `"a+b"`), CodeInvalidEvent, ReasonInvalidEventType, "events[0].event_type", "evt_1"},
		{"event type too long", ev("event_type", long(129)), CodeInvalidEvent, ReasonEventTypeTooLong, "events[0].event_type", "evt_1"},
		{"occurred_at wrong type", ev("occurred_at", "1700000000"), CodeInvalidEvent, ReasonWrongType, "events[0].occurred_at", "evt_1"},
		{"occurred_at space", ev("occurred_at", `"2026-11-21 10:00:00Z"`), CodeInvalidEvent, ReasonInvalidOccurredAt, "events[0].occurred_at", "evt_1"},
		{"occurred_at no zone", ev("occurred_at", `"2026-11-21T10:00:00"`), CodeInvalidEvent, ReasonInvalidOccurredAt, "events[0].occurred_at", "evt_1"},
		{"occurred_at bad offset", ev("occurred_at", `"2026-11-21T10:00:00+0100"`), CodeInvalidEvent, ReasonInvalidOccurredAt, "events[0].occurred_at", "evt_1"},
		{"occurred_at Feb 30", ev("occurred_at", `"2026-02-30T10:00:00Z"`), CodeInvalidEvent, ReasonInvalidOccurredAt, "events[0].occurred_at", "evt_1"},
		{"occurred_at 10 digits", ev("occurred_at", `"2026-11-21T10:00:00.1234567890Z"`), CodeInvalidEvent, ReasonInvalidOccurredAt, "events[0].occurred_at", "evt_1"},
		{"occurred_at leap second", ev("occurred_at", `"2026-11-21T10:00:60Z"`), CodeInvalidEvent, ReasonInvalidOccurredAt, "events[0].occurred_at", "evt_1"},
		{"in future", ev("occurred_at", `"2026-11-21T10:06:00.000000001Z"`), CodeOutOfWindow, ReasonOccurredAtInFuture, "events[0].occurred_at", "evt_1"},
		{"far future", ev("occurred_at", `"9999-12-31T23:59:59Z"`), CodeOutOfWindow, ReasonOccurredAtInFuture, "events[0].occurred_at", "evt_1"},
		{"too old", ev("occurred_at", `"2026-10-17T10:00:59.999Z"`), CodeOutOfWindow, ReasonOccurredAtTooOld, "events[0].occurred_at", "evt_1"},
		{"year 0", ev("occurred_at", `"0000-01-01T00:00:00Z"`), CodeOutOfWindow, ReasonOccurredAtTooOld, "events[0].occurred_at", "evt_1"},
		{"subject wrong type", ev("subject", "[]"), CodeInvalidEvent, ReasonWrongType, "events[0].subject", "evt_1"},
		{"subject too long", ev("subject", `"`+strings.Repeat("é", 257)+`"`), CodeInvalidEvent, ReasonSubjectTooLong, "events[0].subject", "evt_1"},
		{"hold wrong type", ev("hold_id", "1"), CodeInvalidEvent, ReasonWrongType, "events[0].hold_id", "evt_1"},
		{"hold empty", ev("hold_id", `""`), CodeInvalidEvent, ReasonInvalidHoldID, "events[0].hold_id", "evt_1"},
		{"hold charset", ev("hold_id", `"h#1"`), CodeInvalidEvent, ReasonInvalidHoldID, "events[0].hold_id", "evt_1"},
		{"hold too long", ev("hold_id", long(129)), CodeInvalidEvent, ReasonHoldIDTooLong, "events[0].hold_id", "evt_1"},
		{"data array", ev("data", "[1]"), CodeInvalidEvent, ReasonDataNotObject, "events[0].data", "evt_1"},
		{"data string", ev("data", `"x"`), CodeInvalidEvent, ReasonDataNotObject, "events[0].data", "evt_1"},
		{"data too large", ev("data", `{"s":`+long(16<<10)+`}`), CodeInvalidEvent, ReasonDataTooLarge, "events[0].data", "evt_1"},
		{"data too deep", ev("data", nest(9)), CodeInvalidEvent, ReasonDataTooDeep, "events[0].data" + strings.Repeat(".a", 8), "evt_1"},
		{"data array too deep", ev("data", `{"x":[[[[[[[[1]]]]]]]]}`), CodeInvalidEvent, ReasonDataTooDeep, "events[0].data.x[0][0][0][0][0][0][0]", "evt_1"},
		{"data too many keys", ev("data", manyKeys(257)), CodeInvalidEvent, ReasonDataTooManyKeys, "events[0].data", "evt_1"},
		{"data too many nested keys", ev("data", `{"a":`+manyKeys(255)+`,"b":1}`), CodeInvalidEvent, ReasonDataTooManyKeys, "events[0].data", "evt_1"},
		{"data key too long", ev("data", `{"ok":{`+long(129)+`:1}}`), CodeInvalidEvent, ReasonDataKeyTooLong, "events[0].data.ok." + strings.Repeat("x", 129), "evt_1"},
		{"data duplicate key", ev("data", `{"x":{"b":1,"a":2,"b":3}}`), CodeInvalidEvent, ReasonDataDuplicateKey, "events[0].data.x.b", "evt_1"},
		{"data duplicate escaped key", ev("data", `{"a":1,"\u0061":2}`), CodeInvalidEvent, ReasonDataDuplicateKey, "events[0].data.a", "evt_1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := decodeBatch(t, `{"events":[`+validEvent+`,`+tc.event+`,`+validEvent+`]}`, nil)
			if len(out) != 3 || out[0].Err != nil || out[2].Err != nil {
				t.Fatalf("neighbours: %+v", out)
			}
			e := out[1].Err
			if e == nil {
				t.Fatalf("accepted: %+v", out[1].Event)
			}
			tc.field = strings.Replace(tc.field, "events[0]", "events[1]", 1)
			if e.Code != tc.code || e.Reason != tc.reason || e.Field != tc.field || e.Message == "" {
				t.Errorf("got %q %q %q (%s), want %q %q %q", e.Code, e.Reason, e.Field, e.Message, tc.code, tc.reason, tc.field)
			}
			if out[1].Event.ID != tc.echoID {
				t.Errorf("echoed id %q, want %q", out[1].Event.ID, tc.echoID)
			}
			if out[1].ContentHash != ([16]byte{}) {
				t.Errorf("rejected event has a content hash")
			}
		})
	}
}

func TestLimitsBoundaries(t *testing.T) {
	ok := []string{
		ev("id", `"`+strings.Repeat("a", 128)+`"`),
		ev("id", `"A-z.0_9:x"`),
		ev("subject", `"`+strings.Repeat("é", 256)+`"`),
		ev("subject", `""`),
		ev("subject", `"\u0000 any \n text"`),
		ev("data", nest(8)),
		ev("data", `{"x":[[[[[[[1]]]]]]]}`),
		ev("data", manyKeys(256)),
		ev("data", `{"`+strings.Repeat("é", 128)+`":1}`),
		ev("data", `{"s":"`+strings.Repeat("x", 16<<10-8)+`"}`), // {"s":"..."} is exactly 16 KiB
		ev("occurred_at", `"2026-11-21T10:06:00Z"`),             // now + 5m exactly
		ev("occurred_at", `"2026-10-17T10:01:00Z"`),             // now - 35d exactly
		ev("hold_id", `"h1"`),
		ev("data", `null`),
		ev("data", "-", "subject", "-", "hold_id", "-", "occurred_at", "-"),
	}
	for _, e := range ok {
		decodeOneOK(t, e)
	}
}

func TestRequestErrors(t *testing.T) {
	small := DefaultLimits()
	small.BodyBytesMax = 100
	small.EventsMax = 2
	small.LineBytesMax = 400
	three := validEvent + "\n" + validEvent + "\n" + validEvent + "\n"
	cases := []struct {
		name   string
		ndjson bool
		body   string
		lim    *Limits
		status int
		code   string
		field  string
	}{
		{"json body too large", false, `{"events":[` + validEvent + `]}`, &small, 413, CodeBodyTooLarge, ""},
		{"ndjson body too large", true, validEvent, &small, 413, CodeBodyTooLarge, ""},
		{"malformed", false, `{"events":[}`, nil, 400, CodeMalformedJSON, ""},
		{"empty body", false, ``, nil, 400, CodeMalformedJSON, ""},
		{"trailing garbage", false, `{"events":[]} x`, nil, 400, CodeMalformedJSON, ""},
		{"NaN", false, `{"events":[{"data":{"x":NaN}}]}`, nil, 400, CodeMalformedJSON, ""},
		{"loose number", false, `{"events":[{"data":{"x":1-2}}]}`, nil, 400, CodeMalformedJSON, ""},
		{"leading zero", false, `{"events":[{"data":{"x":01}}]}`, nil, 400, CodeMalformedJSON, ""},
		{"bad escape", false, `{"events":[{"id":"\x"}]}`, nil, 400, CodeMalformedJSON, ""},
		{"lone surrogate", false, `{"events":[{"id":"\ud800"}]}`, nil, 400, CodeMalformedJSON, ""},
		{"bad surrogate pair", false, `{"events":[{"id":"\ud800\u0041"}]}`, nil, 400, CodeMalformedJSON, ""},
		{"invalid utf8", false, "{\"events\":[{\"id\":\"\xff\"}]}", nil, 400, CodeMalformedJSON, ""},
		{"control char", false, "{\"events\":[{\"id\":\"a\tb\"}]}", nil, 400, CodeMalformedJSON, ""},
		{"too deep for the parser", false, `{"events":[` + strings.Repeat("[", 400) + strings.Repeat("]", 400) + `]}`, nil, 400, CodeMalformedJSON, ""},
		{"not an object", false, `[]`, nil, 400, CodeInvalidRequest, ""},
		{"missing events", false, `{"customer_id":"c1"}`, nil, 400, CodeInvalidRequest, "events"},
		{"events not array", false, `{"events":{}}`, nil, 400, CodeInvalidRequest, "events"},
		{"events null", false, `{"events":null}`, nil, 400, CodeInvalidRequest, "events"},
		{"unknown member", false, `{"events":[],"dry_run":true}`, nil, 400, CodeInvalidRequest, "dry_run"},
		{"duplicate events", false, `{"events":[],"events":[]}`, nil, 400, CodeInvalidRequest, "events"},
		{"default customer wrong type", false, `{"customer_id":5,"events":[]}`, nil, 400, CodeInvalidRequest, "customer_id"},
		{"json too many events", false, `{"events":[1,2,3]}`, &Limits{EventsMax: 2}, 413, CodeTooManyEvents, "events"},
		{"ndjson too many events", true, three, &Limits{EventsMax: 2}, 413, CodeTooManyEvents, "line 3"},
		{"ndjson line too long", true, "{}\n" + validEvent + strings.Repeat(" ", 200) + "\n", &small2, 413, CodeLineTooLong, "line 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var d Decoder
			dst := make([]Decoded, 1, 4)
			var out []Decoded
			var err *RequestError
			if tc.ndjson {
				out, err = d.DecodeNDJSON([]byte(tc.body), testNow, tc.lim, dst)
			} else {
				out, err = d.DecodeJSON([]byte(tc.body), testNow, tc.lim, dst)
			}
			if err == nil {
				t.Fatalf("accepted: %+v", out)
			}
			if err.Status != tc.status || err.Code != tc.code || err.Field != tc.field || err.Message == "" {
				t.Errorf("got %d %q %q (%s), want %d %q %q", err.Status, err.Code, err.Field, err.Message, tc.status, tc.code, tc.field)
			}
			if len(out) != 1 {
				t.Errorf("dst changed to %d slots", len(out))
			}
			if tc.code == CodeMalformedJSON && !strings.Contains(err.Message, "byte offset") {
				t.Errorf("no position in %q", err.Message)
			}
		})
	}
}

var small2 = Limits{LineBytesMax: 300}

func TestMalformedPosition(t *testing.T) {
	var d Decoder
	_, err := d.DecodeJSON([]byte("{\"events\":[\n  {\"id\": tru}]}"), testNow, nil, nil)
	if err == nil || !strings.Contains(err.Message, "byte offset 21 (line 2, column 10)") {
		t.Fatalf("got %v", err)
	}
}

func TestJSONBatchMixed(t *testing.T) {
	body := `{"customer_id":"acme","events":[
		{"id":"e1","event_type":"message_completed","data":{"input_tokens":10}},
		"nope",
		{"id":"e2","customer_id":"other","event_type":"image_generated","subject":"s","hold_id":"h1","occurred_at":"2026-11-21T09:00:00Z"},
		{"id":"e3","event_type":"x","bogus":1},
		{"id":"e4","event_type":"x","data":null}
	]}`
	out := decodeBatch(t, body, nil)
	if len(out) != 5 {
		t.Fatalf("%d results", len(out))
	}
	want := []struct {
		id, customer, typ, reason string
	}{
		{"e1", "acme", "message_completed", ""},
		{"", "", "", ReasonWrongType},
		{"e2", "other", "image_generated", ""},
		{"e3", "", "", ReasonUnknownField},
		{"e4", "acme", "x", ""},
	}
	for i, w := range want {
		got := out[i]
		reason := ""
		if got.Err != nil {
			reason = got.Err.Reason
		}
		if reason != w.reason || got.Event.ID != w.id || got.Event.CustomerID != w.customer || got.Event.EventType != w.typ {
			t.Errorf("%d: got %+v %v", i, got.Event, got.Err)
		}
	}
	if e := out[0].Event; e.OccurredAt != testNow.UnixNano() || string(e.DataJSON) != `{"input_tokens":10}` || len(e.Data) != 1 {
		t.Errorf("e1: %+v", e)
	}
	if e := out[2].Event; e.Subject != "s" || e.HoldID != "h1" || e.OccurredAt != time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC).UnixNano() ||
		string(e.DataJSON) != `{}` || e.Data != nil {
		t.Errorf("e2: %+v", e)
	}
	if string(out[4].Event.DataJSON) != "{}" {
		t.Errorf("e4 data %q", out[4].Event.DataJSON)
	}
	// Empty batch.
	if out := decodeBatch(t, `{"events":[]}`, nil); len(out) != 0 {
		t.Errorf("empty batch: %d results", len(out))
	}
}

func TestDefaultCustomer(t *testing.T) {
	out := decodeBatch(t, `{"customer_id":"bad id","events":[{"id":"a","event_type":"t"},{"id":"b","customer_id":"c2","event_type":"t"}]}`, nil)
	if e := out[0].Err; e == nil || e.Reason != ReasonInvalidCustomerID || e.Field != "customer_id" || out[0].Event.ID != "a" {
		t.Errorf("event relying on an invalid default: %+v %v", out[0].Event, e)
	}
	if out[1].Err != nil || out[1].Event.CustomerID != "c2" {
		t.Errorf("event with its own customer: %+v %v", out[1].Event, out[1].Err)
	}
	out = decodeBatch(t, `{"customer_id":null,"events":[{"id":"a","event_type":"t","customer_id":null}]}`, nil)
	if e := out[0].Err; e == nil || e.Reason != ReasonMissingCustomerID {
		t.Errorf("null default: %v", e)
	}
	long := strings.Repeat("c", 129)
	out = decodeBatch(t, `{"customer_id":"`+long+`","events":[{"id":"a","event_type":"t"}]}`, nil)
	if e := out[0].Err; e == nil || e.Reason != ReasonCustomerIDTooLong || e.Field != "customer_id" {
		t.Errorf("long default: %v", e)
	}
}

func TestNDJSON(t *testing.T) {
	body := "\n" + // line 1 blank
		`{"id":"e1","customer_id":"c1","event_type":"t","data":{"n":1.5}}` + "\r\n" + // line 2
		"  \t\r\n" + // line 3 blank
		`{"id":"e2","customer_id":"c1","event_type":"t",` + "\n" + // line 4: malformed
		`[1]` + "\n" + // line 5: not an object
		`{"id":"e3","customer_id":"c1","event_type":"t","data":{"x":1}}` + "\n" + // line 6
		`{"id":"e4","event_type":"t"}` + "\n" + // line 7: no default in NDJSON
		`{"id":"e5","customer_id":"c1","event_type":"t"}` // line 8, no trailing newline
	var d Decoder
	out, rerr := d.DecodeNDJSON([]byte(body), testNow, nil, nil)
	if rerr != nil {
		t.Fatal(rerr)
	}
	want := []struct{ id, reason, field string }{
		{"e1", "", ""},
		{"", ReasonMalformedJSON, "events[3]"},
		{"", ReasonWrongType, "events[4]"},
		{"e3", "", ""},
		{"e4", ReasonMissingCustomerID, "events[6].customer_id"},
		{"e5", "", ""},
	}
	if len(out) != len(want) {
		t.Fatalf("%d results: %+v", len(out), out)
	}
	for i, w := range want {
		var reason, field string
		if out[i].Err != nil {
			reason, field = out[i].Err.Reason, out[i].Err.Field
		}
		if out[i].Event.ID != w.id || reason != w.reason || field != w.field {
			t.Errorf("%d: got %q %q %q, want %+v", i, out[i].Event.ID, reason, field, w)
		}
	}
	if f, _ := out[0].Event.Lookup("n"); f.Text != "1.5" || f.Kind != meter.FieldNumber {
		t.Errorf("e1 data: %+v", out[0].Event.Data)
	}
	if !strings.Contains(out[1].Err.Message, "byte offset") {
		t.Errorf("malformed line message: %q", out[1].Err.Message)
	}
	// Blank body and lines of exactly LineBytesMax.
	if out, err := d.DecodeNDJSON([]byte("\n\r\n \n"), testNow, nil, nil); err != nil || len(out) != 0 {
		t.Errorf("blank body: %v %v", out, err)
	}
	line := ev("subject", `"`+strings.Repeat("s", 100)+`"`)
	lim := Limits{LineBytesMax: len(line)}
	if out, err := d.DecodeNDJSON([]byte(line+"\r\n"+line), testNow, &lim, nil); err != nil || len(out) != 2 || out[1].Err != nil {
		t.Errorf("lines at the limit: %v %v", out, err)
	}
}

func TestDecodeOne(t *testing.T) {
	var d Decoder
	var out Decoded
	d.DecodeOne([]byte(`{"id":"e1","event_type":"t","data":{"a":"b"}}`), testNow, nil, "c9", &out)
	if out.Err != nil || out.Event.CustomerID != "c9" || out.Event.ID != "e1" {
		t.Fatalf("%+v %v", out.Event, out.Err)
	}
	d.DecodeOne([]byte(`{"id":"e1","event_type":"t","data":[]}`), testNow, nil, "c9", &out)
	if out.Err == nil || out.Err.Field != "data" || out.Err.Reason != ReasonDataNotObject || out.Event.CustomerID != "" {
		t.Fatalf("%+v %v", out.Event, out.Err)
	}
	d.DecodeOne([]byte(`{"id":`), testNow, nil, "", &out)
	if out.Err == nil || out.Err.Reason != ReasonMalformedJSON || out.Err.Code != CodeInvalidEvent {
		t.Fatalf("%v", out.Err)
	}
	d.DecodeOne([]byte(validEvent), testNow, &Limits{LineBytesMax: 10}, "", &out)
	if out.Err == nil || out.Err.Reason != ReasonEventTooLarge {
		t.Fatalf("%v", out.Err)
	}
	d.DecodeOne([]byte(`{"id":"e1","event_type":"t"}`), testNow, nil, "", &out)
	if out.Err == nil || out.Err.Reason != ReasonMissingCustomerID || out.Err.Field != "customer_id" {
		t.Fatalf("%v", out.Err)
	}
	d.DecodeOne([]byte(`{"id":"e1","event_type":"t"}`), testNow, nil, "c 1", &out)
	if out.Err == nil || out.Err.Reason != ReasonInvalidCustomerID {
		t.Fatalf("%v", out.Err)
	}
}

func TestFullEvent(t *testing.T) {
	got := decodeOneOK(t, validEvent)
	e := got.Event
	want := meter.Event{
		ID: "evt_1", CustomerID: "c1", EventType: "message_completed", Subject: "chat_5f53",
		OccurredAt: time.Date(2026, 11, 21, 10, 0, 0, 71e6, time.UTC).UnixNano(),
		Data: []meter.Field{
			{Key: "model", Kind: meter.FieldString, Text: "gpt-4-1"},
			{Key: "input_tokens", Kind: meter.FieldNumber, Text: "2353"},
			{Key: "output_tokens", Kind: meter.FieldNumber, Text: "34697"},
		},
		DataJSON: []byte(`{"model":"gpt-4-1","input_tokens":2353,"output_tokens":34697}`),
	}
	if e.ID != want.ID || e.CustomerID != want.CustomerID || e.EventType != want.EventType || e.Subject != want.Subject ||
		e.HoldID != "" || e.OccurredAt != want.OccurredAt || !bytes.Equal(e.DataJSON, want.DataJSON) || len(e.Data) != 3 {
		t.Fatalf("got %+v", e)
	}
	for i := range want.Data {
		if e.Data[i] != want.Data[i] {
			t.Errorf("field %d: %+v, want %+v", i, e.Data[i], want.Data[i])
		}
	}
	// DataJSON may be appended to without touching the strings.
	_ = append(e.DataJSON, "garbage"...)
	if e.Data[2].Text != "34697" || e.HoldID != "" {
		t.Errorf("append to DataJSON changed the event")
	}
}

func TestOccurredAt(t *testing.T) {
	cases := map[string]time.Time{
		"2026-11-21T11:00:00.123456789+01:00": time.Date(2026, 11, 21, 10, 0, 0, 123456789, time.UTC),
		"2026-11-21T04:30:00.5-05:30":         time.Date(2026, 11, 21, 10, 0, 0, 5e8, time.UTC),
		"2026-11-21t10:00:00z":                time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC),
		"2026-11-21T10:00:00-00:00":           time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC),
		"2026-11-22T09:59:59.000000001+23:59": time.Date(2026, 11, 21, 10, 0, 59, 1, time.UTC),
		"2026-11-21T10:00:00.000001Z":         time.Date(2026, 11, 21, 10, 0, 0, 1000, time.UTC),
	}
	for s, want := range cases {
		got := decodeOneOK(t, ev("occurred_at", `"`+s+`"`))
		if got.Event.OccurredAt != want.UnixNano() {
			t.Errorf("%s: got %v, want %v", s, time.Unix(0, got.Event.OccurredAt).UTC(), want)
		}
	}
	for s, ok := range map[string]bool{
		"2024-02-29T00:00:00Z": true, "2100-02-29T00:00:00Z": false, "2000-02-29T00:00:00Z": true,
		"2026-04-31T00:00:00Z": false, "2026-12-31T23:59:59.999999999Z": true, "2026-13-01T00:00:00Z": false,
		"2026-11-21T24:00:00Z": false, "2026-11-21T10:00:00.Z": false, "2026-11-21T10:00:00+24:00": false,
		"2026-11-21T10:00:00+01:60": false, "2026-11-21T10:00:00+01:00 ": false, "+026-11-21T10:00:00Z": false,
	} {
		if _, got := parseRFC3339([]byte(s)); got != ok {
			t.Errorf("parseRFC3339(%q) ok = %v", s, got)
		}
	}
}

func TestDataTextAndJSON(t *testing.T) {
	got := decodeOneOK(t, ev("data", ` { "a" : 2353 , "b":1.5, "c":1e3, "d":-0.0, "e":1E+3, "f":12345678901234567890123,
		"g":true, "h":false, "i":null, "j":{"x":[1, "y"]}, "k":[ ], "l":"tab\tquote\"nul\u0000\u00e9\/", "\u006d":"é"}`))
	want := []meter.Field{
		fld("a", meter.FieldNumber, "2353"), fld("b", meter.FieldNumber, "1.5"), fld("c", meter.FieldNumber, "1e3"),
		fld("d", meter.FieldNumber, "-0.0"), fld("e", meter.FieldNumber, "1E+3"), fld("f", meter.FieldNumber, "12345678901234567890123"),
		fld("g", meter.FieldBool, "true"), fld("h", meter.FieldBool, "false"), fld("i", meter.FieldNull, ""),
		fld("j", meter.FieldObject, ""), fld("k", meter.FieldArray, ""), fld("l", meter.FieldString, "tab\tquote\"nul\x00é/"),
		fld("m", meter.FieldString, "é"),
	}
	if len(got.Event.Data) != len(want) {
		t.Fatalf("%+v", got.Event.Data)
	}
	for i := range want {
		if got.Event.Data[i] != want[i] {
			t.Errorf("%d: %+v, want %+v", i, got.Event.Data[i], want[i])
		}
	}
	wantJSON := `{"a":2353,"b":1.5,"c":1e3,"d":-0.0,"e":1E+3,"f":12345678901234567890123,"g":true,"h":false,"i":null,` +
		`"j":{"x":[1,"y"]},"k":[],"l":"tab\tquote\"nul\u0000é/","m":"é"}`
	if string(got.Event.DataJSON) != wantJSON {
		t.Errorf("DataJSON\n got %s\nwant %s", got.Event.DataJSON, wantJSON)
	}
	if !json.Valid(got.Event.DataJSON) {
		t.Errorf("DataJSON is not valid JSON")
	}
}

func fld(key string, kind meter.FieldKind, text string) meter.Field {
	return meter.Field{Key: key, Kind: kind, Text: text}
}

func hashOf(t *testing.T, body string) [16]byte {
	t.Helper()
	out := decodeBatch(t, body, nil)
	if len(out) != 1 || out[0].Err != nil {
		t.Fatalf("%.300s: %+v", body, out)
	}
	if out[0].ContentHash == ([16]byte{}) {
		t.Fatalf("zero hash")
	}
	return out[0].ContentHash
}

func TestContentHash(t *testing.T) {
	base := `{"events":[{"id":"e1","customer_id":"c1","event_type":"t","occurred_at":"2026-11-21T10:00:00Z",` +
		`"subject":"s","hold_id":"h1","data":{"model":"m","n":2353,"o":{"x":[1,{"p":true,"q":null}],"y":"z"}}}]}`
	h := hashOf(t, base)
	same := []string{
		// whitespace and member order, top level and nested
		"{ \"events\" : [ {\n\"data\":{\"o\":{\"y\":\"z\",\"x\":[1,{\"q\":null,\"p\":true}]},\"n\":2353,\"model\":\"m\"}," +
			"\"hold_id\":\"h1\",\"subject\":\"s\",\"occurred_at\":\"2026-11-21T10:00:00Z\",\"event_type\":\"t\",\"customer_id\":\"c1\",\"id\":\"e1\"} ] }",
		// escape spelling
		strings.Replace(base, `"model":"m"`, `"mod\u0065l":"\u006d"`, 1),
		// a different id: the id is not content
		strings.Replace(base, `"id":"e1"`, `"id":"e2"`, 1),
		// the default customer instead of the event's own
		strings.Replace(strings.Replace(base, `"customer_id":"c1",`, ``, 1), `{"events"`, `{"customer_id":"c1","events"`, 1),
	}
	for _, b := range same {
		if hashOf(t, b) != h {
			t.Errorf("hash differs for %s", b)
		}
	}
	different := []string{
		strings.Replace(base, `"c1"`, `"c2"`, 1),
		strings.Replace(base, `"event_type":"t"`, `"event_type":"u"`, 1),
		strings.Replace(base, `10:00:00Z`, `10:00:00.000Z`, 1), // as given
		strings.Replace(base, `10:00:00Z`, `11:00:00+01:00`, 1),
		strings.Replace(base, `"occurred_at":"2026-11-21T10:00:00Z",`, ``, 1),
		strings.Replace(base, `"subject":"s"`, `"subject":"S"`, 1),
		strings.Replace(base, `"subject":"s",`, ``, 1),
		strings.Replace(base, `"hold_id":"h1"`, `"hold_id":null`, 1),
		strings.Replace(base, `"n":2353`, `"n":2353.0`, 1),
		strings.Replace(base, `"n":2353`, `"n":"2353"`, 1),
		strings.Replace(base, `"n":2353`, `"N":2353`, 1),
		strings.Replace(base, `"p":true`, `"p":false`, 1),
		strings.Replace(base, `"q":null`, `"q":{}`, 1),
		strings.Replace(base, `[1,{`, `[{`, 1),
		strings.Replace(base, `"x":[1,{"p":true,"q":null}]`, `"x":[{"p":true,"q":null},1]`, 1),
		strings.Replace(base, `"y":"z"`, `"y":"z "`, 1),
		strings.Replace(base, `"model":"m",`, ``, 1),
		strings.Replace(base, `"o":{`, `"o":{"":0,`, 1),
	}
	seen := map[[16]byte]string{h: base}
	for _, b := range different {
		got := hashOf(t, b)
		if prev, dup := seen[got]; dup {
			t.Errorf("same hash for\n%s\n%s", b, prev)
		}
		seen[got] = b
	}
	// Absent, null and empty data; absent and null subject, hold_id and occurred_at.
	a := hashOf(t, `{"events":[{"id":"e","customer_id":"c","event_type":"t"}]}`)
	for _, b := range []string{
		`{"events":[{"id":"e","customer_id":"c","event_type":"t","data":null}]}`,
		`{"events":[{"id":"e","customer_id":"c","event_type":"t","data":{}}]}`,
		`{"events":[{"id":"e","customer_id":"c","event_type":"t","subject":null,"hold_id":null,"occurred_at":null}]}`,
		`{"events":[{"id":"e","customer_id":"c","event_type":"t","subject":""}]}`,
	} {
		if hashOf(t, b) != a {
			t.Errorf("hash differs for %s", b)
		}
	}
	// The length prefixes keep field boundaries apart.
	if hashOf(t, `{"events":[{"id":"e","customer_id":"c","event_type":"t","subject":"ab"}]}`) ==
		hashOf(t, `{"events":[{"id":"e","customer_id":"c","event_type":"t","subject":"a","hold_id":"b"}]}`) {
		t.Errorf("subject/hold_id boundary not in the hash")
	}
}

func TestNoAliasing(t *testing.T) {
	body := []byte(`{"customer_id":"cdef","events":[` + validEvent + `,{"id":"e2","event_type":"t2","data":{"k\u00e9y":"v\u00e9"}}]}`)
	var d Decoder
	out, rerr := d.DecodeJSON(body, testNow, nil, nil)
	if rerr != nil {
		t.Fatal(rerr)
	}
	snapshot := func() string {
		var b strings.Builder
		for _, r := range out {
			e := r.Event
			b.WriteString(e.ID + "|" + e.CustomerID + "|" + e.EventType + "|" + e.Subject + "|" + e.HoldID + "|" + string(e.DataJSON))
			for _, f := range e.Data {
				b.WriteString("|" + f.Key + "=" + f.Text)
			}
			b.WriteString("\n")
		}
		return b.String()
	}
	before := snapshot()
	want := "evt_1|c1|message_completed|chat_5f53||{\"model\":\"gpt-4-1\",\"input_tokens\":2353,\"output_tokens\":34697}" +
		"|model=gpt-4-1|input_tokens=2353|output_tokens=34697\n" +
		"e2|cdef|t2|||{\"kéy\":\"vé\"}|kéy=vé\n"
	if before != want {
		t.Fatalf("got\n%s\nwant\n%s", before, want)
	}
	// Overwrite the body and reuse the decoder (and so its parser memory).
	for i := range body {
		body[i] = 'X'
	}
	other := []byte(`{"customer_id":"zzzz","events":[` + strings.Repeat(`{"id":"q","event_type":"w","data":{"zzzzzzzzzzzzzzz":"zzzzzzzzzzzzzzzzzz"}},`, 20) + `1]}`)
	if _, rerr := d.DecodeJSON(other, testNow, nil, nil); rerr != nil {
		t.Fatal(rerr)
	}
	if _, rerr := d.DecodeNDJSON(other, testNow, nil, nil); rerr != nil {
		t.Fatal(rerr)
	}
	if after := snapshot(); after != before {
		t.Fatalf("strings changed after the body was overwritten:\n%s", after)
	}
}

func TestDstAppend(t *testing.T) {
	var d Decoder
	dst := make([]Decoded, 1)
	dst[0].Event.ID = "keep"
	out, err := d.DecodeJSON([]byte(`{"events":[`+validEvent+`,`+validEvent+`]}`), testNow, nil, dst)
	if err != nil || len(out) != 3 || out[0].Event.ID != "keep" || out[2].Event.ID != "evt_1" {
		t.Fatalf("%v %+v", err, out)
	}
}

func TestDecodeAllocs(t *testing.T) {
	body := []byte(benchBody(100))
	var d Decoder
	dst := make([]Decoded, 0, 100)
	allocs := testing.AllocsPerRun(20, func() {
		var err *RequestError
		dst, err = d.DecodeJSON(body, testNow, nil, dst[:0])
		if err != nil {
			t.Fatal(err)
		}
	})
	// One []byte and one []Field per event, and the default customer_id.
	if allocs > 201 {
		t.Errorf("%v allocations for 100 events", allocs)
	}
}
