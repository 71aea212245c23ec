package ingest

import (
	"bytes"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/meter"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// eventsScratch holds what one events request needs, reused through a pool.
type eventsScratch struct {
	dec     Decoder
	parser  fastjson.Parser // a door's request
	decoded []Decoded
	ins     []balance.EventIn
	ptrs    []*balance.EventIn
	slot    []int // decoded index -> ins index, or -1
	out     []byte
}

func (s *Server) scratch() *eventsScratch {
	if sc, ok := s.pool.Get().(*eventsScratch); ok {
		return sc
	}
	return &eventsScratch{}
}

// decodeEvents decodes the body by its content type, answering the request when it cannot be read.
func (s *Server) decodeEvents(ctx *fasthttp.RequestCtx, sc *eventsScratch, now time.Time) bool {
	ct := ctx.Request.Header.ContentType()
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = bytes.TrimSpace(ct)
	var rerr *RequestError
	switch {
	case len(ct) == 0 || bytes.EqualFold(ct, []byte("application/json")):
		sc.decoded, rerr = sc.dec.DecodeJSON(ctx.PostBody(), now, &s.lim, sc.decoded[:0])
	case bytes.EqualFold(ct, []byte("application/x-ndjson")):
		sc.decoded, rerr = sc.dec.DecodeNDJSON(ctx.PostBody(), now, &s.lim, sc.decoded[:0])
	default:
		writeError(ctx, "unsupported_media_type",
			"Content-Type must be application/json or application/x-ndjson", "")
		return false
	}
	if rerr != nil {
		writeError(ctx, rerr.Code, rerr.Message, rerr.Field)
		return false
	}
	return true
}

// events serves POST /v1/events.
func (s *Server) events(ctx *fasthttp.RequestCtx) {
	if s.admit != nil {
		if err := s.admit(); err != nil {
			ctx.Response.Header.Set("Retry-After", "5")
			s.writeErr(ctx, err)
			return
		}
	}
	sc := s.scratch()
	defer s.pool.Put(sc)
	if !s.decodeEvents(ctx, sc, time.Unix(0, s.e.Now())) {
		return
	}
	if err := s.e.Events(sc.inputs()); err != nil {
		ctx.Response.Header.Set("Retry-After", "1")
		s.writeErr(ctx, err)
		return
	}
	s.writeResults(ctx, sc, true)
}

// check serves POST /v1/check: the events of a body like /v1/events,
// each answered as /v1/events would answer it now (charged, with the
// charges, buckets and balances after; recorded; rejected), with nothing
// applied, stored or counted (balance.Engine.Check).
func (s *Server) check(ctx *fasthttp.RequestCtx) {
	sc := s.scratch()
	defer s.pool.Put(sc)
	if !s.decodeEvents(ctx, sc, time.Unix(0, s.e.Now())) {
		return
	}
	if err := s.e.Check(sc.inputs()); err != nil {
		s.writeErr(ctx, err)
		return
	}
	s.writeResults(ctx, sc, false)
}

// inputs makes the engine's inputs of the decoded events that could be
// read, remembering in slot where each decoded event's result will be.
func (sc *eventsScratch) inputs() []*balance.EventIn {
	sc.ins, sc.slot, sc.ptrs = sc.ins[:0], sc.slot[:0], sc.ptrs[:0]
	for i := range sc.decoded {
		d := &sc.decoded[i]
		if d.Err != nil {
			sc.slot = append(sc.slot, -1)
			continue
		}
		sc.slot = append(sc.slot, len(sc.ins))
		sc.ins = append(sc.ins, balance.EventIn{Event: &d.Event, Hash: d.ContentHash})
	}
	for i := range sc.ins {
		sc.ptrs = append(sc.ptrs, &sc.ins[i])
	}
	return sc.ptrs
}

// writeResults answers every decoded event's result, in the body's order;
// with count, the events metrics count them (a check's are not).
func (s *Server) writeResults(ctx *fasthttp.RequestCtx, sc *eventsScratch, count bool) {
	b := append(sc.out[:0], `{"results":[`...)
	for i := range sc.decoded {
		if i > 0 {
			b = append(b, ',')
		}
		d := &sc.decoded[i]
		if sc.slot[i] < 0 {
			if count {
				s.metrics.event(balance.EventRejected, d.Err.Code)
			}
			b = appendRejected(b, d.Event.ID, d.Err.Code, d.Err.Reason, d.Err.Message, d.Err.Field)
			continue
		}
		r := &sc.ins[sc.slot[i]].Result
		if count {
			s.metrics.event(r.Status, r.Code)
		}
		b = appendEventResult(b, d.Event.ID, r)
	}
	b = append(b, "]}"...)
	sc.out = b
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

var statusNames = [...]string{
	balance.EventCharged:   "charged",
	balance.EventRecorded:  "recorded",
	balance.EventDuplicate: "duplicate",
	balance.EventRejected:  "rejected",
}

// appendEventResult appends one event's result object.
func appendEventResult(b []byte, id string, r *balance.EventResult) []byte {
	status := statusNames[r.Status]
	if r.Status == balance.EventRejected {
		return appendRejected(b, id, r.Code, "", r.Message, r.Field)
	}
	b = append(b, `{"id":`...)
	b = appendString(b, id)
	b = append(b, `,"status":"`...)
	b = append(b, status...)
	b = append(b, `","pricing_version":`...)
	b = appendUint(b, uint64(r.PricingVersion))
	b = append(b, `,"charges":[`...)
	for i := range r.Charges {
		c := &r.Charges[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"account":`...)
		b = appendString(b, c.Account)
		b = append(b, `,"amount":`...)
		b = appendUnits(b, c.Amount, c.Scale)
		b = append(b, `,"buckets":[`...)
		for j, p := range c.Parts {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"bucket_id":`...)
			if p.BucketID == "" {
				b = append(b, `null,"debt":true`...)
			} else {
				b = appendString(b, p.BucketID)
			}
			b = append(b, `,"amount":`...)
			b = appendUnits(b, p.Amount, c.Scale)
			b = append(b, '}')
		}
		b = append(b, "]}"...)
	}
	b = append(b, `],"balances":{`...)
	for i := range r.Charges {
		c := &r.Charges[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, c.Account)
		b = append(b, ':')
		b = appendUnits(b, c.BalanceAfter, c.Scale)
	}
	return append(b, "}}"...)
}

func appendRejected(b []byte, id, code, reason, msg, field string) []byte {
	b = append(b, `{"id":`...)
	if id == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, id)
	}
	b = append(b, `,"status":"rejected","error":{"code":`...)
	b = appendString(b, code)
	if reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, reason)
	}
	b = append(b, `,"message":`...)
	b = appendString(b, msg)
	if field != "" {
		b = append(b, `,"field":`...)
		b = appendString(b, field)
	}
	return append(b, "}}"...)
}

// simulate serves POST /v1/pricing/simulate: the events are priced by the
// pricing in force and nothing is applied. Each charge shows the exact amount
// and the whole units that would be charged before any carry.
func (s *Server) simulate(ctx *fasthttp.RequestCtx) {
	sc := s.scratch()
	defer s.pool.Put(sc)
	if !s.decodeEvents(ctx, sc, time.Unix(0, s.e.Now())) {
		return
	}
	p := s.e.Pricing()
	var charges []meter.Charge
	b := append(sc.out[:0], `{"pricing_version":`...)
	b = appendUint(b, uint64(p.Version))
	b = append(b, `,"results":[`...)
	for i := range sc.decoded {
		d := &sc.decoded[i]
		if i > 0 {
			b = append(b, ',')
		}
		if d.Err != nil {
			b = appendRejected(b, d.Event.ID, d.Err.Code, d.Err.Reason, d.Err.Message, d.Err.Field)
			continue
		}
		var matched bool
		var err error
		charges, matched, err = p.Rate(&d.Event, charges[:0])
		if err != nil {
			msg, field := err.Error(), ""
			if me, ok := err.(*meter.Error); ok {
				msg, field = me.Message, me.Field
			}
			b = appendRejected(b, d.Event.ID, "invalid_event", "", msg, field)
			continue
		}
		b = append(b, `{"id":`...)
		b = appendString(b, d.Event.ID)
		if !matched {
			b = append(b, `,"status":"recorded","charges":[]}`...)
			continue
		}
		b = append(b, `,"status":"priced","charges":[`...)
		for j, c := range charges {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"account":`...)
			b = appendString(b, c.Account)
			b = append(b, `,"amount":`...)
			b = appendUnits(b, c.Amount.Units, c.Scale)
			b = append(b, `,"exact":`...)
			b = appendString(b, meter.FormatFine(c.Amount, c.Scale))
			b = append(b, '}')
		}
		b = append(b, "]}"...)
	}
	b = append(b, "]}"...)
	sc.out = b
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}
