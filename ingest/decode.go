// This file holds the usage-event decoder: request bodies (a JSON batch,
// NDJSON, or one Kafka message) in, meter.Events out, with every size, count
// and length bounded by Limits.
//
// Guarantees:
//
//   - Strict JSON. A strict scan (RFC 8259 grammar, valid UTF-8, no unpaired
//     UTF-16 surrogate escapes, nesting at most fastjson.MaxDepth) runs before
//     fastjson builds its tree, because fastjson's parser on its own accepts
//     NaN, "1-2" and invalid escapes. Malformed input is reported with its
//     byte offset, line and column.
//   - One bad event never fails its neighbours. Only what makes the whole
//     request unreadable is a *RequestError; everything about one event is a
//     per-event *EventError with Code "invalid_event" or "out_of_window" and
//     a stable Reason (see the reason constants).
//   - No aliasing. Nothing in a decoded Event points into the request body or
//     into the parser's memory: the body may be reused as soon as a Decode
//     method returns.
//   - Allocations: a valid event costs one []byte (all its strings and its
//     DataJSON live in it; strings are unsafe.String views of it) plus one
//     []Field when data has members. A per-event rather than a per-request
//     backing array is deliberate: a consumer that keeps an event's ID or
//     CustomerID (an idempotency index, a wallet map) pins that event's few
//     hundred bytes, never a whole 8 MiB request. The bytes are never written
//     again after the strings are made. DataJSON is a separate, capacity-capped
//     region of that array, so appending to it reallocates and writing into it
//     cannot change the strings. A rejected event costs one *EventError and a
//     copy of its id.
//
// Content hash (Decoded.ContentHash) is the first 16 bytes of SHA-256 over a
// canonical encoding of what the event means, so that a resend can be told
// apart from a conflicting reuse of an id (409 idempotency_conflict):
//
//	"meterd.event.v1" 0x00
//	str(customer_id)            the effective one: the event's own or the body's default
//	str(event_type)
//	0x00 | 0x01 str(occurred_at) absent or null: 0x00; else the string AS GIVEN (not
//	                             normalised: "…Z" and "…+00:00" differ), so a resend
//	                             that omits occurred_at matches its original
//	str(subject)                absent, null and "" are the same
//	str(hold_id)                absent, null are the same (and "" is invalid)
//	value(data)                 absent, null and {} are the same
//
// where str(s) is uvarint(len(s)) followed by the bytes of s after JSON
// unescaping, and value(v) is 'o' uvarint(n) then n times str(key) value(member)
// with keys sorted bytewise (recursively); 'a' uvarint(n) then the n elements in
// order; 's' str(string); 'n' str(number literal exactly as written: 1, 1.0 and
// 1e0 differ); 't', 'f', 'z' for true, false, null. Whitespace, key order and
// escape spelling ("\u00e9" vs "é") therefore do not change the hash; any
// change of a value, a type or a key does. The event id is not hashed: it is
// the idempotency key itself. Objects with duplicate keys never get this far
// (reason data_duplicate_key), so the encoding is unambiguous.

package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/valyala/fastjson"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// Limits bound every size, count and length of an events request. A zero or
// negative field means its default (see DefaultLimits); a nil *Limits means
// DefaultLimits().
type Limits struct {
	BodyBytesMax    int           // whole request body (the HTTP layer enforces it too)
	EventsMax       int           // events per request (JSON batch or NDJSON)
	LineBytesMax    int           // one NDJSON line without its line ending; one Kafka message (DecodeOne)
	IDLenMax        int           // event, customer and hold ids: 1..IDLenMax chars of [A-Za-z0-9._:-]
	EventTypeLenMax int           // event_type: 1..EventTypeLenMax chars of [A-Za-z0-9._:-]
	SubjectLenMax   int           // subject: at most this many Unicode code points
	DescriptionMax  int           // description: at most this many Unicode code points
	DataBytesMax    int           // the compact JSON of data
	DataDepthMax    int           // nesting depth of data; data itself is depth 1
	DataKeysMax     int           // object members in total across the data tree
	DataKeyLenMax   int           // one data key, in Unicode code points
	FutureSkewMax   time.Duration // occurred_at may be at most this far ahead of now
	PastWindowMax   time.Duration // occurred_at may be at most this far behind now (the dedup window)
}

// DefaultLimits returns the limits of the contract.
func DefaultLimits() Limits {
	return Limits{
		BodyBytesMax:    8 << 20,
		EventsMax:       10_000,
		LineBytesMax:    64 << 10,
		IDLenMax:        128,
		EventTypeLenMax: 128,
		SubjectLenMax:   256,
		DescriptionMax:  1024,
		DataBytesMax:    16 << 10,
		DataDepthMax:    8,
		DataKeysMax:     256,
		DataKeyLenMax:   128,
		FutureSkewMax:   balance.FutureSkewMax,
		PastWindowMax:   35 * 24 * time.Hour,
	}
}

// resolve returns lim with every unset field at its default.
func resolve(lim *Limits) Limits {
	def := DefaultLimits()
	if lim == nil {
		return def
	}
	l := *lim
	setInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	setInt(&l.BodyBytesMax, def.BodyBytesMax)
	setInt(&l.EventsMax, def.EventsMax)
	setInt(&l.LineBytesMax, def.LineBytesMax)
	setInt(&l.IDLenMax, def.IDLenMax)
	setInt(&l.EventTypeLenMax, def.EventTypeLenMax)
	setInt(&l.SubjectLenMax, def.SubjectLenMax)
	setInt(&l.DescriptionMax, def.DescriptionMax)
	setInt(&l.DataBytesMax, def.DataBytesMax)
	setInt(&l.DataDepthMax, def.DataDepthMax)
	setInt(&l.DataKeysMax, def.DataKeysMax)
	setInt(&l.DataKeyLenMax, def.DataKeyLenMax)
	if l.FutureSkewMax <= 0 {
		l.FutureSkewMax = def.FutureSkewMax
	}
	if l.PastWindowMax <= 0 {
		l.PastWindowMax = def.PastWindowMax
	}
	return l
}

// RequestError refuses a whole request: it could not be read. Codes:
// body_too_large (413), too_many_events (413), line_too_long (413),
// malformed_json (400), invalid_request (400).
type RequestError struct {
	Status  int
	Code    string
	Message string
	Field   string
}

func (e *RequestError) Error() string {
	if e.Field != "" {
		return e.Code + ": " + e.Field + ": " + e.Message
	}
	return e.Code + ": " + e.Message
}

// Request error codes.
const (
	CodeBodyTooLarge   = "body_too_large"
	CodeTooManyEvents  = "too_many_events"
	CodeLineTooLong    = "line_too_long"
	CodeMalformedJSON  = "malformed_json"
	CodeInvalidRequest = wallet.CodeInvalidRequest // the one definition of the code
)

// EventError is the rejection of one event (status "rejected" in the
// response). Code is the contract's per-event code, CodeInvalidEvent or
// CodeOutOfWindow; Reason names the exact check that failed (the Reason
// constants); Field is the path of the offending value.
//
// Field paths start with "events[i]" where i is the index in the JSON batch's
// events array; for NDJSON i is the zero-based physical line number (equal to
// the result index when the body has no blank lines); DecodeOne paths have no
// prefix ("data.input_tokens"). Data keys that are not plain [A-Za-z0-9_-]
// names are written as ["key"], array elements as [i]. A default customer_id
// that is invalid is reported with Field "customer_id" (the body's member).
type EventError struct {
	Code    string
	Reason  string
	Message string
	Field   string
}

func (e *EventError) Error() string {
	s := e.Code + " (" + e.Reason + ")"
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Message
}

// Per-event codes produced by the decoder.
const (
	CodeInvalidEvent = "invalid_event"
	CodeOutOfWindow  = wallet.CodeOutOfWindow
)

// Per-event reasons. All have Code CodeInvalidEvent except the two
// occurred_at window reasons, which have CodeOutOfWindow.
const (
	ReasonMalformedJSON      = "malformed_json"        // NDJSON line or Kafka message is not JSON
	ReasonEventTooLarge      = "event_too_large"       // DecodeOne: message longer than LineBytesMax
	ReasonWrongType          = "wrong_type"            // event not an object, or a member of the wrong JSON type
	ReasonUnknownField       = "unknown_field"         // a member the contract does not define
	ReasonDuplicateField     = "duplicate_field"       // the same member twice
	ReasonMissingID          = "missing_id"            // id absent or null
	ReasonInvalidID          = "invalid_id"            // id empty or outside [A-Za-z0-9._:-]
	ReasonIDTooLong          = "id_too_long"           // id longer than IDLenMax
	ReasonMissingCustomerID  = "missing_customer_id"   // no customer_id and no default
	ReasonInvalidCustomerID  = "invalid_customer_id"   // customer_id empty or outside the charset
	ReasonCustomerIDTooLong  = "customer_id_too_long"  // customer_id longer than IDLenMax
	ReasonMissingEventType   = "missing_event_type"    // event_type absent or null
	ReasonInvalidEventType   = "invalid_event_type"    // event_type empty or outside the charset
	ReasonEventTypeTooLong   = "event_type_too_long"   // event_type longer than EventTypeLenMax
	ReasonInvalidOccurredAt  = "invalid_occurred_at"   // not RFC 3339 with at most 9 fractional digits
	ReasonOccurredAtInFuture = "occurred_at_in_future" // out_of_window: after now+FutureSkewMax
	ReasonOccurredAtTooOld   = "occurred_at_too_old"   // out_of_window: before now-PastWindowMax
	ReasonSubjectTooLong     = "subject_too_long"      // subject longer than SubjectLenMax code points
	ReasonDescriptionTooLong = "description_too_long"  // description longer than DescriptionMax code points
	ReasonInvalidHoldID      = "invalid_hold_id"       // hold_id empty or outside the charset
	ReasonHoldIDTooLong      = "hold_id_too_long"      // hold_id longer than IDLenMax
	ReasonDataNotObject      = "data_not_object"       // data is neither an object nor null
	ReasonDataTooLarge       = "data_too_large"        // compact JSON of data longer than DataBytesMax
	ReasonDataTooDeep        = "data_too_deep"         // nesting deeper than DataDepthMax
	ReasonDataTooManyKeys    = "data_too_many_keys"    // more than DataKeysMax members in the data tree
	ReasonDataKeyTooLong     = "data_key_too_long"     // a key longer than DataKeyLenMax code points
	ReasonDataDuplicateKey   = "data_duplicate_key"    // the same key twice in one data object
)

// Decoded is one event slot of a request, in request order.
type Decoded struct {
	Event meter.Event
	// ContentHash identifies the event's content for idempotency; see the
	// file comment for exactly what it covers. Zero when Err is set.
	ContentHash [16]byte
	// Err, when set, rejects the event. Event.ID is then still filled when
	// the id was a JSON string of at most IDLenMax bytes (even if it broke
	// the charset), so the response can echo it; the rest of Event is zero.
	Err *EventError
}

// Decoder decodes usage events. Its zero value is ready to use. It keeps its
// parser and scratch buffers between calls, so reuse it (a sync.Pool of
// *Decoder in callers); it is not safe for concurrent use.
type Decoder struct {
	p     fastjson.Parser
	check jsonCheck
	lim   Limits
	now   time.Time

	kvs    []member    // object members being walked (a stack of sibling lists)
	path   []pathElem  // where the data walk is, for error paths
	str    []byte      // the event's strings, copied out of the parser
	json   []byte      // the event's compact data JSON
	fields []fieldRef  // the event's top-level data members (offsets into str)
	canon  []byte      // the canonical encoding that is hashed
	num    []byte      // a number literal
	keys   int         // data members seen so far in this event
	derr   *EventError // the data walk's error
}

type member struct {
	key string // unescaped; points into parser memory
	v   *fastjson.Value
}

type pathElem struct {
	key string
	idx int // >= 0: an array index, and key is unused
}

type fieldRef struct {
	key, text  span
	kind       meter.FieldKind
	staticText string // text when it is a constant ("true", "false")
	textIsSpan bool
}

type span struct{ off, n int }

// defCustomer is the body's default customer_id.
type defCustomer struct {
	s      string
	set    bool
	err    *EventError // the default is invalid: events that rely on it get this
	shared bool        // s is already a private copy shared by the request's events
}

// DecodeJSON decodes a JSON batch body ({"customer_id":..., "events":[...]})
// and appends one Decoded per element of events to dst, in order. It returns
// dst unchanged and a *RequestError when the request cannot be read.
func (d *Decoder) DecodeJSON(body []byte, now time.Time, lim *Limits, dst []Decoded) ([]Decoded, *RequestError) {
	d.lim = resolve(lim)
	d.now = now
	if len(body) > d.lim.BodyBytesMax {
		return dst, reqErr(413, CodeBodyTooLarge, "", "the body is "+strconv.Itoa(len(body))+" bytes; at most "+strconv.Itoa(d.lim.BodyBytesMax)+" are accepted")
	}
	if !d.check.run(body) {
		return dst, reqErr(400, CodeMalformedJSON, "", d.check.message())
	}
	root, err := d.p.ParseBytes(body)
	if err != nil { // the strict scan accepts only what fastjson parses
		return dst, reqErr(400, CodeMalformedJSON, "", err.Error())
	}
	if root.Type() != fastjson.TypeObject {
		return dst, reqErr(400, CodeInvalidRequest, "", "the body must be a JSON object with an events array")
	}
	var events, customer *fastjson.Value
	d.kvs = d.collect(root, d.kvs[:0])
	for _, m := range d.kvs {
		var slot **fastjson.Value
		switch m.key {
		case "events":
			slot = &events
		case "customer_id":
			slot = &customer
		default:
			return dst, reqErr(400, CodeInvalidRequest, pathKey("", m.key), "unknown field "+quoteTrunc(m.key))
		}
		if *slot != nil {
			return dst, reqErr(400, CodeInvalidRequest, m.key, "duplicate field "+strconv.Quote(m.key))
		}
		*slot = m.v
	}
	if events == nil {
		return dst, reqErr(400, CodeInvalidRequest, "events", "events is required")
	}
	if events.Type() != fastjson.TypeArray {
		return dst, reqErr(400, CodeInvalidRequest, "events", "events must be an array")
	}
	arr, _ := events.Array()
	if len(arr) > d.lim.EventsMax {
		return dst, reqErr(413, CodeTooManyEvents, "events", strconv.Itoa(len(arr))+" events; at most "+strconv.Itoa(d.lim.EventsMax)+" per request")
	}
	var def defCustomer
	if customer != nil && customer.Type() != fastjson.TypeNull {
		if customer.Type() != fastjson.TypeString {
			return dst, reqErr(400, CodeInvalidRequest, "customer_id", "customer_id must be a string")
		}
		b, _ := customer.StringBytes()
		def = defCustomer{set: true, shared: true}
		if reason, msg := checkID(b, d.lim.IDLenMax, ReasonInvalidCustomerID, ReasonCustomerIDTooLong, "customer_id"); reason != "" {
			def.err = evErr(reason, "customer_id", msg)
		} else {
			def.s = string(b) // one copy for the whole request
		}
	}
	dst = slices.Grow(dst, len(arr))
	for i, v := range arr {
		dst = append(dst, Decoded{})
		d.event(v, i, &def, &dst[len(dst)-1])
	}
	return dst, nil
}

// DecodeNDJSON decodes an NDJSON body, one event object per line, and
// appends one Decoded per non-blank line to dst, in order. Lines end with
// "\n" or "\r\n"; lines of only whitespace are skipped. A line that is not
// JSON rejects that event (reason malformed_json), not the request. The
// whole body is scanned for line_too_long and too_many_events before any
// event is decoded.
func (d *Decoder) DecodeNDJSON(body []byte, now time.Time, lim *Limits, dst []Decoded) ([]Decoded, *RequestError) {
	d.lim = resolve(lim)
	d.now = now
	if len(body) > d.lim.BodyBytesMax {
		return dst, reqErr(413, CodeBodyTooLarge, "", "the body is "+strconv.Itoa(len(body))+" bytes; at most "+strconv.Itoa(d.lim.BodyBytesMax)+" are accepted")
	}
	n := 0
	for rest, lineNo := body, 1; len(rest) > 0; lineNo++ {
		var line []byte
		line, rest = nextLine(rest)
		if len(line) > d.lim.LineBytesMax {
			return dst, reqErr(413, CodeLineTooLong, "line "+strconv.Itoa(lineNo), "the line is "+strconv.Itoa(len(line))+" bytes; at most "+strconv.Itoa(d.lim.LineBytesMax)+" are accepted")
		}
		if isBlank(line) {
			continue
		}
		n++
		if n > d.lim.EventsMax {
			return dst, reqErr(413, CodeTooManyEvents, "line "+strconv.Itoa(lineNo), "more than "+strconv.Itoa(d.lim.EventsMax)+" events in the request")
		}
	}
	dst = slices.Grow(dst, n)
	var def defCustomer
	for rest, idx := body, 0; len(rest) > 0; idx++ {
		var line []byte
		line, rest = nextLine(rest)
		if isBlank(line) {
			continue
		}
		dst = append(dst, Decoded{})
		d.value(line, idx, &def, &dst[len(dst)-1])
	}
	return dst, nil
}

// DecodeOne decodes one event object (a Kafka message) into out. Every
// problem, including malformed JSON and a message longer than LineBytesMax,
// is reported in out.Err. defaultCustomer ("" for none) is used when the event
// has no customer_id. Field paths have no "events[i]" prefix.
func (d *Decoder) DecodeOne(value []byte, now time.Time, lim *Limits, defaultCustomer string, out *Decoded) {
	d.lim = resolve(lim)
	d.now = now
	if len(value) > d.lim.LineBytesMax {
		*out = Decoded{Err: evErr(ReasonEventTooLarge, "", "the event is "+strconv.Itoa(len(value))+" bytes; at most "+strconv.Itoa(d.lim.LineBytesMax)+" are accepted")}
		return
	}
	var def defCustomer
	if defaultCustomer != "" {
		def.set = true
		if reason, msg := checkID(s2b(defaultCustomer), d.lim.IDLenMax, ReasonInvalidCustomerID, ReasonCustomerIDTooLong, "customer_id"); reason != "" {
			def.err = evErr(reason, "customer_id", msg)
		} else {
			def.s = defaultCustomer // copied into the event's own bytes
		}
	}
	d.value(value, -1, &def, out)
}

// value decodes one standalone event text (an NDJSON line, a message).
func (d *Decoder) value(b []byte, idx int, def *defCustomer, out *Decoded) {
	if !d.check.run(b) {
		*out = Decoded{Err: evErr(ReasonMalformedJSON, pathIdx(idx), d.check.message())}
		return
	}
	v, err := d.p.ParseBytes(b)
	if err != nil {
		*out = Decoded{Err: evErr(ReasonMalformedJSON, pathIdx(idx), err.Error())}
		return
	}
	d.event(v, idx, def, out)
}

// The members of an event object.
const (
	mID = iota
	mCustomerID
	mEventType
	mOccurredAt
	mSubject
	mData
	mHoldID
	mDescription
	mCount
)

func memberSlot(key string) int {
	switch key {
	case "id":
		return mID
	case "customer_id":
		return mCustomerID
	case "event_type":
		return mEventType
	case "occurred_at":
		return mOccurredAt
	case "subject":
		return mSubject
	case "data":
		return mData
	case "hold_id":
		return mHoldID
	case "description":
		return mDescription
	}
	return -1
}

// event decodes one parsed event into out. idx is the event's index for
// error paths (-1: no prefix).
func (d *Decoder) event(v *fastjson.Value, idx int, def *defCustomer, out *Decoded) {
	*out = Decoded{}
	if v.Type() != fastjson.TypeObject {
		out.Err = evErr(ReasonWrongType, pathIdx(idx), "an event must be a JSON object, not "+v.Type().String())
		return
	}
	var m [mCount]*fastjson.Value
	var seen uint8
	var first *EventError
	d.kvs = d.collect(v, d.kvs[:0])
	for _, kv := range d.kvs {
		slot := memberSlot(kv.key)
		switch {
		case slot < 0:
			if first == nil {
				first = evErr(ReasonUnknownField, pathMember(idx, kv.key), "unknown field "+quoteTrunc(kv.key))
			}
		case seen&(1<<slot) != 0:
			if first == nil {
				first = evErr(ReasonDuplicateField, pathMember(idx, kv.key), "duplicate field "+strconv.Quote(kv.key))
			}
		default:
			seen |= 1 << slot
			m[slot] = kv.v
		}
	}
	d.kvs = d.kvs[:0]

	// The id, echoed even when the event is rejected.
	var id []byte
	if x := m[mID]; x != nil && x.Type() == fastjson.TypeString {
		id, _ = x.StringBytes()
	}
	reject := func(e *EventError) {
		out.Err = e
		if len(id) > 0 && len(id) <= d.lim.IDLenMax {
			out.Event.ID = string(id)
		}
	}
	if first != nil {
		reject(first)
		return
	}

	// id
	switch t := typeOf(m[mID]); {
	case t == fastjson.TypeNull:
		reject(evErr(ReasonMissingID, pathMember(idx, "id"), "id is required"))
		return
	case t != fastjson.TypeString:
		reject(wrongType(idx, "id", "a string", t))
		return
	}
	if reason, msg := checkID(id, d.lim.IDLenMax, ReasonInvalidID, ReasonIDTooLong, "id"); reason != "" {
		reject(evErr(reason, pathMember(idx, "id"), msg))
		return
	}

	// customer_id
	var customer []byte
	useDefault := false
	switch t := typeOf(m[mCustomerID]); {
	case t == fastjson.TypeNull:
		switch {
		case !def.set:
			reject(evErr(ReasonMissingCustomerID, pathMember(idx, "customer_id"), "customer_id is required (in the event or as the body's default)"))
			return
		case def.err != nil:
			reject(def.err.clone())
			return
		}
		useDefault = true
	case t != fastjson.TypeString:
		reject(wrongType(idx, "customer_id", "a string", t))
		return
	default:
		customer, _ = m[mCustomerID].StringBytes()
		if reason, msg := checkID(customer, d.lim.IDLenMax, ReasonInvalidCustomerID, ReasonCustomerIDTooLong, "customer_id"); reason != "" {
			reject(evErr(reason, pathMember(idx, "customer_id"), msg))
			return
		}
	}
	if useDefault {
		customer = s2b(def.s)
	}

	// event_type
	var eventType []byte
	switch t := typeOf(m[mEventType]); {
	case t == fastjson.TypeNull:
		reject(evErr(ReasonMissingEventType, pathMember(idx, "event_type"), "event_type is required"))
		return
	case t != fastjson.TypeString:
		reject(wrongType(idx, "event_type", "a string", t))
		return
	}
	eventType, _ = m[mEventType].StringBytes()
	if reason, msg := checkID(eventType, d.lim.EventTypeLenMax, ReasonInvalidEventType, ReasonEventTypeTooLong, "event_type"); reason != "" {
		reject(evErr(reason, pathMember(idx, "event_type"), msg))
		return
	}

	// occurred_at (the window is checked last: out_of_window is only for
	// events that are otherwise valid)
	var occurredRaw []byte
	occurred := d.now
	hasOccurred := false
	switch t := typeOf(m[mOccurredAt]); {
	case t == fastjson.TypeNull:
	case t != fastjson.TypeString:
		reject(wrongType(idx, "occurred_at", "an RFC 3339 string", t))
		return
	default:
		occurredRaw, _ = m[mOccurredAt].StringBytes()
		var ok bool
		if occurred, ok = parseRFC3339(occurredRaw); !ok {
			reject(evErr(ReasonInvalidOccurredAt, pathMember(idx, "occurred_at"), "occurred_at must be an RFC 3339 timestamp with at most 9 fractional digits, e.g. 2026-11-21T10:00:00.071Z"))
			return
		}
		hasOccurred = true
	}

	// subject
	var subject []byte
	switch t := typeOf(m[mSubject]); {
	case t == fastjson.TypeNull:
	case t != fastjson.TypeString:
		reject(wrongType(idx, "subject", "a string", t))
		return
	default:
		subject, _ = m[mSubject].StringBytes()
		if len(subject) > d.lim.SubjectLenMax && utf8.RuneCount(subject) > d.lim.SubjectLenMax {
			reject(evErr(ReasonSubjectTooLong, pathMember(idx, "subject"), "subject has more than "+strconv.Itoa(d.lim.SubjectLenMax)+" characters"))
			return
		}
	}

	// description
	var desc []byte
	switch t := typeOf(m[mDescription]); {
	case t == fastjson.TypeNull:
	case t != fastjson.TypeString:
		reject(wrongType(idx, "description", "a string", t))
		return
	default:
		desc, _ = m[mDescription].StringBytes()
		if len(desc) > d.lim.DescriptionMax && utf8.RuneCount(desc) > d.lim.DescriptionMax {
			reject(evErr(ReasonDescriptionTooLong, pathMember(idx, "description"), "description has more than "+strconv.Itoa(d.lim.DescriptionMax)+" characters"))
			return
		}
	}

	// hold_id
	var hold []byte
	switch t := typeOf(m[mHoldID]); {
	case t == fastjson.TypeNull:
	case t != fastjson.TypeString:
		reject(wrongType(idx, "hold_id", "a string or null", t))
		return
	default:
		hold, _ = m[mHoldID].StringBytes()
		if reason, msg := checkID(hold, d.lim.IDLenMax, ReasonInvalidHoldID, ReasonHoldIDTooLong, "hold_id"); reason != "" {
			reject(evErr(reason, pathMember(idx, "hold_id"), msg))
			return
		}
	}

	// Copy the strings out: str holds them back to back, json the data.
	d.str = d.str[:0]
	d.fields = d.fields[:0]
	d.json = d.json[:0]
	sID := d.appendStr(id)
	var sCustomer span
	if !useDefault || !def.shared {
		sCustomer = d.appendStr(customer)
	}
	sType := d.appendStr(eventType)
	sSubject := d.appendStr(subject)
	sHold := d.appendStr(hold)
	sDesc := d.appendStr(desc)

	// data
	data := m[mData]
	switch t := typeOf(data); {
	case t == fastjson.TypeNull:
		data = nil
		d.json = append(d.json, "{}"...)
	case t != fastjson.TypeObject:
		reject(evErr(ReasonDataNotObject, pathMember(idx, "data"), "data must be a JSON object, not "+t.String()))
		return
	default:
		d.keys = 0
		d.derr = nil
		d.path = d.path[:0]
		if !d.walk(data, 1, idx) {
			reject(d.derr)
			return
		}
	}

	// The content hash (its canonical walk also finds duplicate keys).
	c := append(d.canon[:0], "meterd.event.v1\x00"...)
	c = appendCanonStr(c, customer)
	c = appendCanonStr(c, eventType)
	if hasOccurred {
		c = append(c, 1)
		c = appendCanonStr(c, occurredRaw)
	} else {
		c = append(c, 0)
	}
	c = appendCanonStr(c, subject)
	c = appendCanonStr(c, hold)
	if len(desc) > 0 {
		// Only when given, so that an event without one hashes as before
		// descriptions; 'D' is no type tag of a data value.
		c = append(c, 'D')
		c = appendCanonStr(c, desc)
	}
	d.canon = c
	if data == nil {
		d.canon = append(d.canon, 'o', 0)
	} else {
		d.path = d.path[:0]
		if !d.canonValue(data, idx) {
			reject(d.derr)
			return
		}
	}

	// The window, last. The rule is balance's (window.go): the shard checks
	// it again on its own clock when it applies the event.
	occurredNs, nowNs := unixNanoSat(occurred), d.now.UnixNano()
	if balance.OccurredInFuture(occurredNs, nowNs, d.lim.FutureSkewMax) {
		reject(&EventError{Code: CodeOutOfWindow, Reason: ReasonOccurredAtInFuture, Field: pathMember(idx, "occurred_at"),
			Message: "occurred_at is more than " + d.lim.FutureSkewMax.String() + " ahead of the server's clock"})
		return
	}
	if balance.OccurredTooOld(occurredNs, nowNs, d.lim.PastWindowMax) {
		reject(&EventError{Code: CodeOutOfWindow, Reason: ReasonOccurredAtTooOld, Field: pathMember(idx, "occurred_at"),
			Message: "occurred_at is older than the dedup window (" + d.lim.PastWindowMax.String() + ")"})
		return
	}

	sum := sha256.Sum256(d.canon)
	copy(out.ContentHash[:], sum[:16])

	// One allocation for every string of the event and its DataJSON.
	buf := make([]byte, len(d.str)+len(d.json))
	copy(buf, d.str)
	copy(buf[len(d.str):], d.json)
	ev := &out.Event
	ev.ID = view(buf, sID)
	if useDefault && def.shared {
		ev.CustomerID = def.s
	} else {
		ev.CustomerID = view(buf, sCustomer)
	}
	ev.EventType = view(buf, sType)
	ev.Subject = view(buf, sSubject)
	ev.HoldID = view(buf, sHold)
	ev.Description = view(buf, sDesc)
	ev.OccurredAt = occurredNs
	ev.DataJSON = buf[len(d.str):len(buf):len(buf)]
	if len(d.fields) > 0 {
		fs := make([]meter.Field, len(d.fields))
		for i, f := range d.fields {
			fs[i] = meter.Field{Key: view(buf, f.key), Kind: f.kind}
			if f.textIsSpan {
				fs[i].Text = view(buf, f.text)
			} else {
				fs[i].Text = f.staticText
			}
		}
		ev.Data = fs
	}
}

// walk checks the data value v at depth (data itself is 1), writes its
// compact JSON to d.json and, at depth 1, records its members in d.fields.
// It returns false with d.derr set when a limit is crossed.
func (d *Decoder) walk(v *fastjson.Value, depth, idx int) bool {
	t := v.Type()
	if (t == fastjson.TypeObject || t == fastjson.TypeArray) && depth > d.lim.DataDepthMax {
		return d.dataErr(ReasonDataTooDeep, idx, "data is nested more than "+strconv.Itoa(d.lim.DataDepthMax)+" levels deep")
	}
	switch t {
	case fastjson.TypeObject:
		base := len(d.kvs)
		d.kvs = d.collect(v, d.kvs)
		n := len(d.kvs) - base
		d.keys += n
		if d.keys > d.lim.DataKeysMax {
			d.kvs = d.kvs[:base]
			d.path = d.path[:0]
			return d.dataErr(ReasonDataTooManyKeys, idx, "data has more than "+strconv.Itoa(d.lim.DataKeysMax)+" keys in total")
		}
		d.json = append(d.json, '{')
		for i := base; i < base+n; i++ {
			kv := d.kvs[i] // d.kvs may grow below: index it afresh
			d.path = append(d.path, pathElem{key: kv.key, idx: -1})
			if len(kv.key) > d.lim.DataKeyLenMax && utf8.RuneCountInString(kv.key) > d.lim.DataKeyLenMax {
				d.kvs = d.kvs[:base]
				return d.dataErr(ReasonDataKeyTooLong, idx, "a data key has more than "+strconv.Itoa(d.lim.DataKeyLenMax)+" characters")
			}
			if i > base {
				d.json = append(d.json, ',')
			}
			d.json = appendString(d.json, kv.key)
			d.json = append(d.json, ':')
			if depth == 1 {
				d.field(kv)
			}
			if !d.walk(kv.v, depth+1, idx) {
				d.kvs = d.kvs[:base]
				return false
			}
			d.path = d.path[:len(d.path)-1]
		}
		d.kvs = d.kvs[:base]
		d.json = append(d.json, '}')
	case fastjson.TypeArray:
		arr, _ := v.Array()
		d.json = append(d.json, '[')
		for i, e := range arr {
			if i > 0 {
				d.json = append(d.json, ',')
			}
			d.path = append(d.path, pathElem{idx: i})
			if !d.walk(e, depth+1, idx) {
				return false
			}
			d.path = d.path[:len(d.path)-1]
		}
		d.json = append(d.json, ']')
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		d.json = appendString(d.json, b2s(s))
	default: // number (the literal as written), true, false, null
		d.json = v.MarshalTo(d.json)
	}
	if len(d.json) > d.lim.DataBytesMax {
		d.path = d.path[:0]
		return d.dataErr(ReasonDataTooLarge, idx, "data is larger than "+strconv.Itoa(d.lim.DataBytesMax)+" bytes as compact JSON")
	}
	return true
}

// field records a top-level data member.
func (d *Decoder) field(kv member) {
	f := fieldRef{key: d.appendStr(s2b(kv.key))}
	switch kv.v.Type() {
	case fastjson.TypeString:
		s, _ := kv.v.StringBytes()
		f.kind, f.text, f.textIsSpan = meter.FieldString, d.appendStr(s), true
	case fastjson.TypeNumber:
		off := len(d.str)
		d.str = kv.v.MarshalTo(d.str)
		f.kind, f.text, f.textIsSpan = meter.FieldNumber, span{off, len(d.str) - off}, true
	case fastjson.TypeTrue:
		f.kind, f.staticText = meter.FieldBool, "true"
	case fastjson.TypeFalse:
		f.kind, f.staticText = meter.FieldBool, "false"
	case fastjson.TypeNull:
		f.kind = meter.FieldNull
	case fastjson.TypeObject:
		f.kind = meter.FieldObject
	case fastjson.TypeArray:
		f.kind = meter.FieldArray
	}
	d.fields = append(d.fields, f)
}

// canonValue appends the canonical encoding of v to d.canon (see the file
// comment). It returns false with d.derr set on a duplicate key.
func (d *Decoder) canonValue(v *fastjson.Value, idx int) bool {
	switch v.Type() {
	case fastjson.TypeObject:
		base := len(d.kvs)
		d.kvs = d.collect(v, d.kvs)
		n := len(d.kvs) - base
		slices.SortFunc(d.kvs[base:], func(a, b member) int { return strings.Compare(a.key, b.key) })
		for i := base + 1; i < base+n; i++ {
			if key := d.kvs[i].key; key == d.kvs[i-1].key {
				d.path = append(d.path, pathElem{key: key, idx: -1})
				d.kvs = d.kvs[:base]
				return d.dataErr(ReasonDataDuplicateKey, idx, "duplicate key "+quoteTrunc(key)+" in data")
			}
		}
		d.canon = append(d.canon, 'o')
		d.canon = binary.AppendUvarint(d.canon, uint64(n))
		for i := base; i < base+n; i++ {
			kv := d.kvs[i]
			d.canon = appendCanonStr(d.canon, s2b(kv.key))
			d.path = append(d.path, pathElem{key: kv.key, idx: -1})
			if !d.canonValue(kv.v, idx) {
				d.kvs = d.kvs[:base]
				return false
			}
			d.path = d.path[:len(d.path)-1]
		}
		d.kvs = d.kvs[:base]
	case fastjson.TypeArray:
		arr, _ := v.Array()
		d.canon = append(d.canon, 'a')
		d.canon = binary.AppendUvarint(d.canon, uint64(len(arr)))
		for i, e := range arr {
			d.path = append(d.path, pathElem{idx: i})
			if !d.canonValue(e, idx) {
				return false
			}
			d.path = d.path[:len(d.path)-1]
		}
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		d.canon = append(d.canon, 's')
		d.canon = appendCanonStr(d.canon, s)
	case fastjson.TypeNumber:
		d.num = v.MarshalTo(d.num[:0]) // the literal as written
		d.canon = append(d.canon, 'n')
		d.canon = appendCanonStr(d.canon, d.num)
	case fastjson.TypeTrue:
		d.canon = append(d.canon, 't')
	case fastjson.TypeFalse:
		d.canon = append(d.canon, 'f')
	case fastjson.TypeNull:
		d.canon = append(d.canon, 'z')
	}
	return true
}

// dataErr sets d.derr to a data error at the current path and returns false.
func (d *Decoder) dataErr(reason string, idx int, msg string) bool {
	p := pathMember(idx, "data")
	for _, e := range d.path {
		if e.idx >= 0 {
			p += "[" + strconv.Itoa(e.idx) + "]"
		} else {
			p = pathKey(p, e.key)
		}
	}
	d.derr = evErr(reason, p, msg)
	return false
}

// collect appends the members of object v (keys unescaped) to kvs.
func (d *Decoder) collect(v *fastjson.Value, kvs []member) []member {
	o, _ := v.Object()
	o.Visit(func(k []byte, v *fastjson.Value) {
		kvs = append(kvs, member{key: b2s(k), v: v})
	})
	return kvs
}

func (d *Decoder) appendStr(b []byte) span {
	off := len(d.str)
	d.str = append(d.str, b...)
	return span{off, len(b)}
}

// view returns the bytes of sp in buf as a string without copying. buf must
// never be written again.
func view(buf []byte, sp span) string {
	if sp.n == 0 {
		return ""
	}
	return unsafe.String(&buf[sp.off], sp.n)
}

// typeOf is v's type with an absent member as null.
func typeOf(v *fastjson.Value) fastjson.Type {
	if v == nil {
		return fastjson.TypeNull
	}
	return v.Type()
}

// idChars is the identifier charset [A-Za-z0-9._:-].
var idChars = func() (t [256]bool) {
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "._:-" {
		t[c] = true
	}
	return t
}()

// checkID checks an identifier: 1..lenMax chars of [A-Za-z0-9._:-]. It
// returns the failing reason (invalid or tooLong) and a message.
func checkID(b []byte, lenMax int, invalid, tooLong, name string) (reason, msg string) {
	if len(b) == 0 {
		return invalid, name + " must not be empty"
	}
	if len(b) > lenMax {
		return tooLong, name + " is longer than " + strconv.Itoa(lenMax) + " characters"
	}
	for _, c := range b {
		if !idChars[c] {
			return invalid, name + " may contain only A-Z, a-z, 0-9 and . _ : -"
		}
	}
	return "", ""
}

func reqErr(status int, code, field, msg string) *RequestError {
	return &RequestError{Status: status, Code: code, Message: msg, Field: field}
}

func evErr(reason, field, msg string) *EventError {
	return &EventError{Code: CodeInvalidEvent, Reason: reason, Message: msg, Field: field}
}

func (e *EventError) clone() *EventError {
	c := *e
	return &c
}

func wrongType(idx int, name, want string, got fastjson.Type) *EventError {
	return evErr(ReasonWrongType, pathMember(idx, name), name+" must be "+want+", not "+got.String())
}

// pathIdx is the path of event idx ("" when there is no prefix).
func pathIdx(idx int) string {
	if idx < 0 {
		return ""
	}
	return "events[" + strconv.Itoa(idx) + "]"
}

func pathMember(idx int, key string) string {
	return pathKey(pathIdx(idx), key)
}

// pathKey appends key to path: .key for plain names, ["key"] otherwise.
func pathKey(path, key string) string {
	plain := key != ""
	for i := 0; i < len(key) && plain; i++ {
		c := key[i]
		plain = c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	}
	if !plain {
		return path + "[" + quoteTrunc(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// quoteTrunc quotes s for a message, cut to 64 bytes (at a rune boundary).
func quoteTrunc(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

// nextLine splits off the first line of b, without its "\n" or "\r\n".
func nextLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		line, rest = b, nil
	} else {
		line, rest = b[:i], b[i+1:]
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

func isBlank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

func b2s(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func s2b(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// appendCanonStr appends uvarint(len(b)) and b.
func appendCanonStr(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// unixNanoSat is t in unix nanoseconds, saturated at the ends of int64 for
// the times RFC 3339 can write and int64 cannot (before 1678, after 2262),
// where UnixNano is undefined.
func unixNanoSat(t time.Time) int64 {
	switch {
	case t.Before(unixNanoMin):
		return math.MinInt64
	case t.After(unixNanoMax):
		return math.MaxInt64
	}
	return t.UnixNano()
}

var unixNanoMin, unixNanoMax = time.Unix(0, math.MinInt64), time.Unix(0, math.MaxInt64)

// parseRFC3339 parses an RFC 3339 date-time: YYYY-MM-DD "T" hh:mm:ss, an
// optional fraction of 1 to 9 digits, then "Z" or ±hh:mm ("t" and "z" are
// accepted, as RFC 3339 allows; a leap second is not). It does not allocate.
func parseRFC3339(b []byte) (time.Time, bool) {
	if len(b) < len("2006-01-02T15:04:05Z") {
		return time.Time{}, false
	}
	num := func(i, n int) (int, bool) {
		v := 0
		for _, c := range b[i : i+n] {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	year, ok1 := num(0, 4)
	month, ok2 := num(5, 2)
	day, ok3 := num(8, 2)
	hour, ok4 := num(11, 2)
	minute, ok5 := num(14, 2)
	sec, ok6 := num(17, 2)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 ||
		b[4] != '-' || b[7] != '-' || (b[10] != 'T' && b[10] != 't') || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	i := 19
	nsec := 0
	if b[i] == '.' {
		i++
		digits := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			if digits == 9 {
				return time.Time{}, false
			}
			nsec = nsec*10 + int(b[i]-'0')
			digits++
			i++
		}
		if digits == 0 {
			return time.Time{}, false
		}
		for ; digits < 9; digits++ {
			nsec *= 10
		}
	}
	if i >= len(b) {
		return time.Time{}, false
	}
	offset := 0
	switch b[i] {
	case 'Z', 'z':
		i++
	case '+', '-':
		if len(b)-i != 6 || b[i+3] != ':' {
			return time.Time{}, false
		}
		oh, okh := num(i+1, 2)
		om, okm := num(i+4, 2)
		if !okh || !okm || oh > 23 || om > 59 {
			return time.Time{}, false
		}
		offset = (oh*60 + om) * 60
		if b[i] == '-' {
			offset = -offset
		}
		i += 6
	default:
		return time.Time{}, false
	}
	if i != len(b) {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	return t.Add(-time.Duration(offset) * time.Second), true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// jsonCheck is the strict JSON scan that runs before fastjson parses. It
// accepts exactly RFC 8259 JSON text in valid UTF-8 whose \u escapes pair
// their surrogates, nested at most fastjson.MaxDepth deep (counted as
// fastjson counts), and remembers where the first error is.
type jsonCheck struct {
	b       []byte
	errOff  int // byte offset of the first error
	errLine int // its line and column (1-based, column in bytes)
	errCol  int
	errMsg  string
}

func (c *jsonCheck) run(b []byte) bool {
	c.b, c.errMsg = b, ""
	i := c.value(c.ws(0), 1)
	if i >= 0 {
		if i = c.ws(i); i != len(b) {
			c.fail(i, "unexpected data after the JSON value")
		}
	}
	c.b = nil
	return c.errMsg == ""
}

// message describes the error with its position.
func (c *jsonCheck) message() string {
	return "malformed JSON at byte offset " + strconv.Itoa(c.errOff) + " (line " + strconv.Itoa(c.errLine) +
		", column " + strconv.Itoa(c.errCol) + "): " + c.errMsg
}

func (c *jsonCheck) fail(off int, msg string) int {
	c.errOff, c.errMsg = off, msg
	before := c.b[:min(off, len(c.b))]
	c.errLine = 1 + bytes.Count(before, []byte{'\n'})
	c.errCol = 1 + len(before) - (bytes.LastIndexByte(before, '\n') + 1)
	return -1
}

func (c *jsonCheck) ws(i int) int {
	for i < len(c.b) {
		switch c.b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

func (c *jsonCheck) value(i, depth int) int {
	if depth > fastjson.MaxDepth {
		return c.fail(i, "nested more than "+strconv.Itoa(fastjson.MaxDepth)+" levels deep")
	}
	if i >= len(c.b) {
		return c.fail(i, "unexpected end of input")
	}
	switch ch := c.b[i]; {
	case ch == '{':
		return c.object(i+1, depth)
	case ch == '[':
		return c.array(i+1, depth)
	case ch == '"':
		return c.str(i + 1)
	case ch == 't':
		return c.lit(i, "true")
	case ch == 'f':
		return c.lit(i, "false")
	case ch == 'n':
		return c.lit(i, "null")
	case ch == '-' || ch >= '0' && ch <= '9':
		return c.number(i)
	default:
		return c.fail(i, "unexpected character "+strconv.QuoteRune(rune(ch)))
	}
}

func (c *jsonCheck) lit(i int, lit string) int {
	if len(c.b)-i < len(lit) || string(c.b[i:i+len(lit)]) != lit {
		return c.fail(i, "invalid literal (expected "+lit+")")
	}
	return i + len(lit)
}

func (c *jsonCheck) object(i, depth int) int {
	i = c.ws(i)
	if i < len(c.b) && c.b[i] == '}' {
		return i + 1
	}
	for {
		if i >= len(c.b) || c.b[i] != '"' {
			return c.fail(i, "expected a string object key")
		}
		if i = c.str(i + 1); i < 0 {
			return -1
		}
		if i = c.ws(i); i >= len(c.b) || c.b[i] != ':' {
			return c.fail(i, "expected ':' after an object key")
		}
		if i = c.value(c.ws(i+1), depth+1); i < 0 {
			return -1
		}
		if i = c.ws(i); i >= len(c.b) {
			return c.fail(i, "unexpected end of input in an object")
		}
		switch c.b[i] {
		case ',':
			i = c.ws(i + 1)
		case '}':
			return i + 1
		default:
			return c.fail(i, "expected ',' or '}' in an object")
		}
	}
}

func (c *jsonCheck) array(i, depth int) int {
	i = c.ws(i)
	if i < len(c.b) && c.b[i] == ']' {
		return i + 1
	}
	for {
		if i = c.value(i, depth+1); i < 0 {
			return -1
		}
		if i = c.ws(i); i >= len(c.b) {
			return c.fail(i, "unexpected end of input in an array")
		}
		switch c.b[i] {
		case ',':
			i = c.ws(i + 1)
		case ']':
			return i + 1
		default:
			return c.fail(i, "expected ',' or ']' in an array")
		}
	}
}

// str scans a string whose opening quote is just before i.
func (c *jsonCheck) str(i int) int {
	b := c.b
	for i < len(b) {
		switch ch := b[i]; {
		case ch == '"':
			return i + 1
		case ch == '\\':
			if i = c.escape(i); i < 0 {
				return -1
			}
		case ch < 0x20:
			return c.fail(i, "control character in a string")
		case ch < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n <= 1 {
				return c.fail(i, "invalid UTF-8 in a string")
			}
			i += n
		}
	}
	return c.fail(i, "unterminated string")
}

// escape scans the escape sequence at i (b[i] == '\\').
func (c *jsonCheck) escape(i int) int {
	b := c.b
	if i+1 >= len(b) {
		return c.fail(i, "unterminated string")
	}
	switch b[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return i + 2
	case 'u':
		r, ok := hex4(b, i+2)
		if !ok {
			return c.fail(i, "invalid \\u escape")
		}
		switch {
		case r >= 0xDC00 && r < 0xE000:
			return c.fail(i, "unpaired UTF-16 surrogate escape")
		case r >= 0xD800 && r < 0xDC00:
			if i+7 < len(b) && b[i+6] == '\\' && b[i+7] == 'u' {
				if r2, ok := hex4(b, i+8); ok && r2 >= 0xDC00 && r2 < 0xE000 {
					return i + 12
				}
			}
			return c.fail(i, "unpaired UTF-16 surrogate escape")
		}
		return i + 6
	default:
		return c.fail(i, "invalid escape sequence")
	}
}

func hex4(b []byte, i int) (rune, bool) {
	if len(b)-i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

func (c *jsonCheck) number(i int) int {
	b := c.b
	start := i
	if b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return c.fail(start, "invalid number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return c.fail(start, "invalid number: no digits after '.'")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return c.fail(start, "invalid number: no digits in the exponent")
		}
	}
	// fastjson takes the longest run of [0-9.eE+-] as the number; make sure
	// it sees the same one.
	if i < len(b) {
		switch b[i] {
		case '.', 'e', 'E', '+', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			return c.fail(start, "invalid number")
		}
	}
	return i
}
