package ingest

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/meter/strictjson"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// The OpenMeter door: POST /api/v1/events with CloudEvents 1.0, one event
// (application/cloudevents+json, or application/json with an object) or a
// batch (application/cloudevents-batch+json, or application/json with an
// array). Each event becomes the meterd event
//
//	id:          source:id (or ce- and a hash of both; foreignID)
//	customer_id: subject
//	event_type:  type
//	occurred_at: time, when given
//	data:        data
//
// Extension attributes are ignored. All events applied (charged, recorded
// or already seen: OpenMeter deduplicates on source and id alone, so an
// event seen before with other content is dropped too): 204 No Content,
// as OpenMeter answers. Otherwise an RFC
// 7807 problem (application/problem+json), as OpenMeter's errors are: 400
// when an event is invalid, 402 when every refused event was valid but
// could not be paid for (insufficient funds, a paused account); its
// "events" member lists each refused event, by its CloudEvents id and
// source. The events that were applied stay applied: a retry of the whole
// request finds them already seen.

// openMeterEvents serves the OpenMeter door.
// parsed, when set, is the body already parsed (doorEventsRoute): it is
// not parsed again.
func (s *Server) openMeterEvents(ctx *fasthttp.RequestCtx, parsed *fastjson.Value) {
	if len(ctx.Request.Header.Peek("ce-specversion")) > 0 {
		s.openMeterBinary(ctx)
		return
	}
	ct := mediaType(ctx)
	var batch bool
	switch ct {
	case "application/cloudevents+json":
	case "application/cloudevents-batch+json":
		batch = true
	case "application/json", "":
		batch = bytes.HasPrefix(bytes.TrimLeft(ctx.PostBody(), " \t\r\n"), []byte("["))
	default:
		writeProblem(ctx, fasthttp.StatusUnsupportedMediaType, "Content-Type must be application/cloudevents+json, "+
			"application/cloudevents-batch+json or application/json", nil)
		return
	}
	// The envelope is read leniently, as OpenMeter reads it; each event's
	// data is checked strictly when it is decoded as a meterd event.
	d := s.newDoorBatch()
	defer d.release()
	v, err := parsed, error(nil)
	if v == nil {
		if v, err = d.sc.parser.ParseBytes(ctx.PostBody()); err != nil {
			writeProblem(ctx, fasthttp.StatusBadRequest, "the body is not valid JSON: "+err.Error(), nil)
			return
		}
	}
	events := []*fastjson.Value{v}
	if batch {
		if events, err = v.Array(); err != nil {
			writeProblem(ctx, fasthttp.StatusBadRequest, "a batch of CloudEvents is a JSON array", nil)
			return
		}
	}
	if len(events) > s.lim.EventsMax {
		writeProblem(ctx, fasthttp.StatusRequestEntityTooLarge, "a request carries at most "+strconv.Itoa(s.lim.EventsMax)+" events", nil)
		return
	}
	d.fields = map[string]string{"customer_id": s.doorMap.OpenMeterCustomer, "event_type": s.doorMap.OpenMeterEventType, "occurred_at": "time"}
	ids := make([][2]string, len(events)) // CloudEvents id and source, for the answer
	for i, ev := range events {
		ids[i] = d.addCloudEvent(ev)
	}
	if !d.apply(ctx, func(ctx *fasthttp.RequestCtx, err error) {
		writeProblem(ctx, fasthttp.StatusServiceUnavailable, "meterd is overloaded: retry the request", nil)
	}) {
		return
	}
	var refused []byte
	status := fasthttp.StatusPaymentRequired
	n := 0
	for i := range d.n() {
		r := d.result(i)
		if r.Status != balance.EventRejected || r.Code == "idempotency_conflict" {
			continue // OpenMeter drops an event whose source and id it has seen, whatever its content
		}
		if !refusedForFunds(r.Code) {
			status = fasthttp.StatusBadRequest
		}
		if n > 0 {
			refused = append(refused, ',')
		}
		n++
		refused = append(refused, `{"id":`...)
		refused = appendString(refused, ids[i][0])
		refused = append(refused, `,"source":`...)
		refused = appendString(refused, ids[i][1])
		refused = append(refused, `,"code":`...)
		refused = appendString(refused, r.Code)
		refused = append(refused, `,"message":`...)
		refused = appendString(refused, r.Message)
		if r.Field != "" {
			refused = append(refused, `,"field":`...)
			refused = appendString(refused, r.Field)
		}
		refused = append(refused, '}')
	}
	if n == 0 {
		ctx.SetStatusCode(fasthttp.StatusNoContent)
		return
	}
	detail := strconv.Itoa(n) + " of " + strconv.Itoa(d.n()) + " events were refused"
	if n < d.n() {
		detail += "; the others were applied"
	}
	writeProblem(ctx, status, detail,
		append(append([]byte(`[`), refused...), ']'))
}

// openMeterBinary serves one CloudEvent in binary content mode: its
// attributes in ce-* headers, its data the body (JSON).
func (s *Server) openMeterBinary(ctx *fasthttp.RequestCtx) {
	h := &ctx.Request.Header
	b := append([]byte(nil), '{')
	for i, attr := range []string{"specversion", "id", "source", "type", "subject", "time"} {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, attr)
		b = append(b, ':')
		if v := h.Peek("ce-" + attr); len(v) > 0 {
			b = appendString(b, string(v))
		} else {
			b = append(b, "null"...)
		}
	}
	if body := ctx.PostBody(); len(bytes.TrimSpace(body)) > 0 {
		if ct := mediaType(ctx); ct != "application/json" && ct != "" {
			writeProblem(ctx, fasthttp.StatusUnsupportedMediaType, "the data of a binary-mode CloudEvent must be application/json", nil)
			return
		}
		if err := strictjson.Valid(body); err != nil {
			writeProblem(ctx, fasthttp.StatusBadRequest, "the data is not valid JSON: "+err.Error(), nil)
			return
		}
		b = append(b, `,"data":`...)
		b = append(b, body...)
	}
	b = append(b, '}')
	ctx.Request.Header.SetContentType("application/cloudevents+json")
	ctx.Request.SetBody(b)
	ctx.Request.Header.Del("ce-specversion")
	s.openMeterEvents(ctx, nil)
}

// addCloudEvent adds one CloudEvent and returns its id and source.
func (d *doorBatch) addCloudEvent(v *fastjson.Value) [2]string {
	o, err := v.Object()
	if err != nil {
		d.reject("", ReasonWrongType, "", "a CloudEvent is a JSON object")
		return [2]string{}
	}
	// One pass over the members: the attributes as strings (ok false when
	// one is not a string), data as it is.
	var attr [6][]byte
	var ok [6]bool
	for i := range ok {
		ok[i] = true
	}
	var data *fastjson.Value
	o.Visit(func(k []byte, x *fastjson.Value) {
		i := -1
		switch string(k) {
		case "specversion":
			i = 0
		case "id":
			i = 1
		case "source":
			i = 2
		case "type":
			i = 3
		case "subject":
			i = 4
		case "time":
			i = 5
		case "data":
			data = x
		}
		if i < 0 || x.Type() == fastjson.TypeNull {
			return
		}
		attr[i], err = x.StringBytes()
		ok[i] = err == nil
	})
	spec, id, source, tm := attr[0], string(attr[1]), string(attr[2]), attr[5]
	ref := [2]string{id, source}
	m := &d.s.doorMap
	named := func(field string) ([]byte, bool) {
		switch field {
		case "type":
			return attr[3], ok[3]
		case "subject":
			return attr[4], ok[4]
		}
		return cloudEventValue(v, data, field)
	}
	typ, typOK := named(m.OpenMeterEventType)
	subject, subjectOK := named(m.OpenMeterCustomer)
	switch {
	case !ok[0] || string(spec) != "1.0":
		d.reject(id, ReasonWrongType, "specversion", "specversion must be \"1.0\"")
	case !ok[1] || id == "":
		d.reject(id, ReasonMissingID, "id", "id is required: a non-empty string")
	case !ok[2] || source == "":
		d.reject(id, ReasonMissingID, "source", "source is required: a non-empty string")
	case !typOK || len(typ) == 0:
		d.reject(id, ReasonMissingEventType, m.OpenMeterEventType, m.OpenMeterEventType+" is required: it is the event type")
	case !subjectOK || len(subject) == 0:
		d.reject(id, ReasonMissingCustomerID, m.OpenMeterCustomer, m.OpenMeterCustomer+" is required: it is the customer")
	case !ok[5]:
		d.reject(id, ReasonInvalidOccurredAt, "time", "time must be an RFC 3339 string")
	default:
		b := append(d.b[:0], `{"id":`...)
		b = appendString(b, foreignID("ce-", source, id))
		b = append(b, `,"customer_id":`...)
		b = appendString(b, string(subject))
		b = append(b, `,"event_type":`...)
		b = appendString(b, string(typ))
		if len(tm) > 0 {
			b = append(b, `,"occurred_at":`...)
			b = appendString(b, string(tm))
		}
		if data != nil && data.Type() != fastjson.TypeNull {
			b = append(b, `,"data":`...)
			b = data.MarshalTo(b)
		}
		d.b = append(b, '}')
		d.add(d.b)
	}
	return ref
}

// cloudEventValue is the string a mapping names in a CloudEvent: a data
// member (data.<member>) or an extension attribute. ok is false when it
// is there but not a string.
func cloudEventValue(v, data *fastjson.Value, field string) ([]byte, bool) {
	if member, ok := strings.CutPrefix(field, "data."); ok {
		if data == nil {
			return nil, true
		}
		v, field = data, member
	}
	x := v.Get(field)
	if x == nil || x.Type() == fastjson.TypeNull {
		return nil, true
	}
	b, err := x.StringBytes()
	return b, err == nil
}

// writeProblem answers an RFC 7807 problem: the error shape of OpenMeter.
// events, when set, is a JSON array of the refused events.
func writeProblem(ctx *fasthttp.RequestCtx, status int, detail string, events []byte) {
	b := append([]byte(nil), `{"type":"about:blank","title":`...)
	b = appendString(b, fasthttp.StatusMessage(status))
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"detail":`...)
	b = appendString(b, detail)
	b = append(b, `,"instance":`...)
	b = appendString(b, string(ctx.Path()))
	if events != nil {
		b = append(b, `,"events":`...)
		b = append(b, events...)
	}
	b = append(b, '}')
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/problem+json")
	ctx.SetBody(b)
}

// mediaType is the request's Content-Type without parameters, lower case.
func mediaType(ctx *fasthttp.RequestCtx) string {
	ct := ctx.Request.Header.ContentType()
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return string(bytes.ToLower(bytes.TrimSpace(ct)))
}
