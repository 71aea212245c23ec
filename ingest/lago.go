package ingest

import (
	"strconv"
	"strings"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/meter/jsonw"
	"github.com/meterd/meterd/meter/strictjson"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// The Lago door: POST /api/v1/events ({"event": {...}}) and POST
// /api/v1/events/batch ({"events": [...]}, at most 100). Each Lago event
// becomes the meterd event
//
//	id:          transaction_id
//	customer_id: external_customer_id, else external_subscription_id
//	event_type:  code
//	occurred_at: timestamp (Unix seconds, an integer, a decimal or a string of one)
//	data:        properties
//
// and is answered as Lago answers it: 200 with the event (or the events)
// when all were applied, else Lago's error object, {"status", "error",
// "code", "error_details"}: 422 validation_errors naming the refused
// field (a batch's details keyed by the event's index), with
// insufficient_funds and the like under "customer". A transaction_id sent
// again answers 422 value_already_exist, as Lago does, or, with
// Config.LagoIdempotent, 200 like the first time when the content is the
// same.

const lagoBatchMax = 100

// lagoEvents serves both Lago endpoints; batch is the batch one.
// parsed, when set, is the body already parsed (doorEventsRoute): it is
// checked strictly, not parsed again.
func (s *Server) lagoEvents(ctx *fasthttp.RequestCtx, batch bool, parsed *fastjson.Value) {
	body := ctx.PostBody()
	if err := strictjson.Valid(body); err != nil {
		writeLagoError(ctx, fasthttp.StatusBadRequest, "bad_request", "the body is not valid JSON: "+err.Error(), nil)
		return
	}
	v, err := parsed, error(nil)
	if v == nil {
		var p fastjson.Parser
		v, err = p.ParseBytes(body)
	}
	if err != nil || v.Type() != fastjson.TypeObject {
		writeLagoError(ctx, fasthttp.StatusBadRequest, "bad_request", "the body must be a JSON object", nil)
		return
	}
	var events []*fastjson.Value
	if batch {
		events = v.GetArray("events")
		if len(events) == 0 || len(events) > lagoBatchMax {
			writeLagoError(ctx, fasthttp.StatusBadRequest, "bad_request", "events must hold 1 to 100 events", nil)
			return
		}
	} else if e := v.Get("event"); e != nil && e.Type() == fastjson.TypeObject {
		events = []*fastjson.Value{e}
	} else {
		writeLagoError(ctx, fasthttp.StatusBadRequest, "bad_request", "the body must be {\"event\": {...}}", nil)
		return
	}
	d := s.newDoorBatch()
	defer d.release()
	d.fields = map[string]string{"id": "transaction_id", "customer_id": s.doorMap.LagoCustomer[0], "event_type": "code",
		"occurred_at": "timestamp", "data": "properties"}
	for _, e := range events {
		d.addLago(e)
	}
	if !d.apply(ctx, func(ctx *fasthttp.RequestCtx, err error) {
		writeLagoError(ctx, fasthttp.StatusServiceUnavailable, "overloaded", "meterd is overloaded: retry the request", nil)
	}) {
		return
	}
	var details []byte
	refused := 0
	for i := range d.n() {
		r := d.result(i)
		field, code := "", ""
		switch {
		case r.Status == balance.EventDuplicate && !s.lagoIdempotent, r.Code == "idempotency_conflict":
			field, code = "transaction_id", "value_already_exist"
		case r.Status == balance.EventRejected && refusedForFunds(r.Code):
			field, code = "customer", r.Code
		case r.Status == balance.EventRejected:
			field, code = r.Field, r.Code
			if r.Code == "invalid_event" {
				code = "invalid_value"
			}
			if field == "" {
				field = "event"
			}
		default:
			continue
		}
		if refused > 0 {
			details = append(details, ',')
		}
		refused++
		if batch {
			details = strconv.AppendQuote(details, strconv.Itoa(i))
			details = append(details, `:{`...)
		}
		details = appendString(details, field)
		details = append(details, `:[`...)
		details = appendString(details, code)
		details = append(details, ']')
		if batch {
			details = append(details, '}')
		}
	}
	if refused > 0 {
		writeLagoError(ctx, fasthttp.StatusUnprocessableEntity, "validation_errors", "", append(append([]byte{'{'}, details...), '}'))
		return
	}
	b := []byte(`{"event":`)
	if batch {
		b = []byte(`{"events":[`)
	}
	for i, e := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendLagoEvent(b, e, d.sc.decoded[i].Event.ID, d.now)
	}
	if batch {
		b = append(b, ']')
	}
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// addLago adds one Lago event.
func (d *doorBatch) addLago(e *fastjson.Value) {
	str := func(key string) string { return string(e.GetStringBytes(key)) }
	txn := str("transaction_id")
	customer := ""
	for _, f := range d.s.doorMap.LagoCustomer {
		if customer = str(f); customer != "" {
			break
		}
	}
	b := append(d.b[:0], `{"id":`...)
	b = appendString(b, foreignID("lago-", "", txn))
	if customer != "" {
		b = append(b, `,"customer_id":`...)
		b = appendString(b, customer)
	}
	b = append(b, `,"event_type":`...)
	b = appendString(b, str("code"))
	if ts := e.Get("timestamp"); ts != nil && ts.Type() != fastjson.TypeNull {
		t, ok := lagoTime(ts)
		if !ok {
			d.reject(txn, ReasonInvalidOccurredAt, "timestamp", "timestamp must be Unix seconds: an integer, a decimal, or a string of one")
			return
		}
		b = append(b, `,"occurred_at":`...)
		b = appendString(b, t.Format(time.RFC3339Nano))
	}
	if props := e.Get("properties"); props != nil && props.Type() != fastjson.TypeNull {
		b = append(b, `,"data":`...)
		b = props.MarshalTo(b)
	}
	d.b = append(b, '}')
	d.add(d.b)
}

// lagoTime reads a Lago timestamp: Unix seconds, possibly with a fraction,
// as a JSON number or string.
func lagoTime(v *fastjson.Value) (time.Time, bool) {
	text := string(v.MarshalTo(nil))
	if v.Type() == fastjson.TypeString {
		text = string(v.GetStringBytes())
	}
	sec, frac, _ := strings.Cut(text, ".")
	n, err := strconv.ParseInt(sec, 10, 64)
	if err != nil || n < 0 || n > 1<<40 || len(frac) > 9 || strings.TrimLeft(frac, "0123456789") != "" || sec[0] == '+' {
		return time.Time{}, false
	}
	ns, _ := strconv.Atoi((frac + "000000000")[:9])
	return time.Unix(n, int64(ns)).UTC(), true
}

// appendLagoEvent appends an applied event as Lago answers it.
func appendLagoEvent(b []byte, e *fastjson.Value, id string, now time.Time) []byte {
	str := func(key string) string { return string(e.GetStringBytes(key)) }
	b = append(b, `{"lago_id":`...)
	b = appendString(b, id)
	b = append(b, `,"transaction_id":`...)
	b = appendString(b, str("transaction_id"))
	for _, k := range []string{"external_customer_id", "external_subscription_id"} {
		b = append(b, `,"`...)
		b = append(b, k...)
		b = append(b, `":`...)
		b = appendOptString(b, str(k))
	}
	b = append(b, `,"code":`...)
	b = appendString(b, str("code"))
	b = append(b, `,"timestamp":`...)
	at := now // no timestamp: the time it arrived (a bad one was refused)
	if ts := e.Get("timestamp"); ts != nil && ts.Type() != fastjson.TypeNull {
		if t, ok := lagoTime(ts); ok {
			at = t
		}
	}
	b = appendString(b, at.UTC().Format(jsonw.TimeLayout))
	b = append(b, `,"properties":`...)
	if props := e.Get("properties"); props != nil && props.Type() == fastjson.TypeObject {
		b = props.MarshalTo(b)
	} else {
		b = append(b, "{}"...)
	}
	b = append(b, `,"created_at":`...)
	b = appendString(b, now.UTC().Format(jsonw.TimeLayout))
	return append(b, '}')
}

// writeLagoError answers Lago's error object; details, when set, is the
// JSON object of error_details.
func writeLagoError(ctx *fasthttp.RequestCtx, status int, code, msg string, details []byte) {
	b := append([]byte(nil), `{"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"error":`...)
	title := fasthttp.StatusMessage(status)
	if msg != "" {
		title = strings.TrimSpace(title + ": " + msg)
	}
	b = appendString(b, title)
	b = append(b, `,"code":`...)
	b = appendString(b, code)
	if details != nil {
		b = append(b, `,"error_details":`...)
		b = append(b, details...)
	}
	b = append(b, '}')
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}
