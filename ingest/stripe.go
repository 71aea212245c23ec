package ingest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// The Stripe door: Stripe's billing meter events.
//
//   - POST /v1/billing/meter_events, form-encoded (event_name,
//     payload[stripe_customer_id], payload[value] and other payload keys,
//     identifier, timestamp), answers the meter event object;
//   - POST /v2/billing/meter_event_session answers a session whose
//     authentication_token (valid 15 minutes) authorizes
//   - POST /v2/billing/meter_event_stream: JSON {"events": [...]}, at most
//     100, each {event_name, identifier, payload, timestamp (RFC 3339)};
//     200 {} when every event was applied.
//
// Each meter event becomes the meterd event
//
//	id:          identifier (one is made when it is absent, as Stripe does)
//	customer_id: payload[stripe_customer_id]
//	event_type:  event_name
//	occurred_at: timestamp
//	data:        the other payload keys; a value that reads as a number is one
//
// Errors have Stripe's shape, {"error": {"type", "code", "message",
// "param"}}: 400 invalid_request_error for a bad event, 402 for one that
// could not be paid for (code insufficient_funds, account_paused, ...),
// 401 billing_meter_event_session_expired for a stream request without a
// live session token. A resent identifier with the same content answers
// as the first time (Stripe's SDKs retry); with other content it is 400
// resource_already_exists.

const (
	stripeStreamMax  = 100
	stripeSessionTTL = 15 * time.Minute
)

// stripePayloadKey matches a form key payload[name].
var stripePayloadKey = regexp.MustCompile(`^payload\[([^\[\]]+)\]$`)

// stripeMeterEvent serves POST /v1/billing/meter_events.
func (s *Server) stripeMeterEvent(ctx *fasthttp.RequestCtx) {
	if ct := mediaType(ctx); ct != "application/x-www-form-urlencoded" {
		writeStripeError(ctx, fasthttp.StatusBadRequest, "invalid_request_error", "", "",
			"meter events are form-encoded (Content-Type: application/x-www-form-urlencoded)")
		return
	}
	ev := stripeEvent{payload: map[string]string{}}
	var bad string
	for k, v := range ctx.PostArgs().All() {
		key := string(k)
		switch {
		case key == "event_name":
			ev.name = string(v)
		case key == "identifier":
			ev.identifier = string(v)
		case key == "timestamp":
			ev.timestamp = string(v)
		case stripePayloadKey.MatchString(key):
			ev.payload[stripePayloadKey.FindStringSubmatch(key)[1]] = string(v)
		default:
			if bad == "" {
				bad = key
			}
		}
	}
	if bad != "" {
		writeStripeError(ctx, fasthttp.StatusBadRequest, "invalid_request_error", "parameter_unknown", bad,
			"Received unknown parameter: "+bad)
		return
	}
	if ev.timestamp != "" {
		sec, err := strconv.ParseInt(ev.timestamp, 10, 64)
		if err != nil {
			writeStripeError(ctx, fasthttp.StatusBadRequest, "invalid_request_error", "parameter_invalid_integer", "timestamp",
				"Invalid integer: "+ev.timestamp)
			return
		}
		ev.timestamp = time.Unix(sec, 0).UTC().Format(time.RFC3339)
	}
	d := s.newDoorBatch()
	defer d.release()
	d.fields = s.stripeFields()
	d.addStripe(&ev)
	if !d.apply(ctx, stripeOverloaded) {
		return
	}
	if r := d.result(0); r.Status == balance.EventRejected {
		writeStripeRefusal(ctx, &r)
		return
	}
	b := append([]byte(nil), `{"object":"billing.meter_event","created":`...)
	b = strconv.AppendInt(b, d.now.Unix(), 10)
	b = append(b, `,"event_name":`...)
	b = appendString(b, ev.name)
	b = append(b, `,"identifier":`...)
	b = appendString(b, ev.identifier)
	b = append(b, `,"livemode":false,"payload":{`...)
	for i, k := range slices.Sorted(maps.Keys(ev.payload)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, ev.payload[k])
	}
	b = append(b, `},"timestamp":`...)
	ts := d.now.Unix()
	if t, err := time.Parse(time.RFC3339, ev.timestamp); err == nil {
		ts = t.Unix()
	}
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// stripeEvent is one meter event as Stripe reads it.
type stripeEvent struct {
	name, identifier, timestamp string // timestamp: RFC 3339, "" for now
	payload                     map[string]string
}

// stripeFields name a meterd event's members by a meter event's.
func (s *Server) stripeFields() map[string]string {
	return map[string]string{"id": "identifier", "customer_id": "payload[" + s.doorMap.StripeCustomerKey + "]",
		"event_type": "event_name", "occurred_at": "timestamp", "data": "payload[]"}
}

// addStripe adds one meter event; an identifier is made when it has none.
func (d *doorBatch) addStripe(ev *stripeEvent) {
	if ev.identifier == "" {
		var r [12]byte
		rand.Read(r[:])
		ev.identifier = "mev_" + base64.RawURLEncoding.EncodeToString(r[:])
	}
	b := append(d.b[:0], `{"id":`...)
	b = appendString(b, foreignID("stripe-", "", ev.identifier))
	key := d.s.doorMap.StripeCustomerKey
	if c, ok := ev.payload[key]; ok {
		b = append(b, `,"customer_id":`...)
		b = appendString(b, c)
	}
	b = append(b, `,"event_type":`...)
	b = appendString(b, ev.name)
	if ev.timestamp != "" {
		b = append(b, `,"occurred_at":`...)
		b = appendString(b, ev.timestamp)
	}
	b = append(b, `,"data":{`...)
	first := true
	for _, k := range slices.Sorted(maps.Keys(ev.payload)) { // in one order: the content hash reads them in order
		v := ev.payload[k]
		if k == key {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, k)
		b = append(b, ':')
		if isJSONNumber(v) {
			b = append(b, v...)
		} else {
			b = appendString(b, v)
		}
	}
	d.b = append(b, "}}"...)
	d.add(d.b)
}

// isJSONNumber reports whether s is a JSON number.
func isJSONNumber(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	var p fastjson.Parser
	v, err := p.Parse(s)
	return err == nil && v.Type() == fastjson.TypeNumber
}

// writeStripeRefusal answers a refused meter event.
func writeStripeRefusal(ctx *fasthttp.RequestCtx, r *doorResult) {
	switch {
	case r.Code == "idempotency_conflict":
		writeStripeError(ctx, fasthttp.StatusBadRequest, "invalid_request_error", "resource_already_exists", "identifier",
			"a meter event with this identifier was already sent with other content")
	case refusedForFunds(r.Code):
		writeStripeError(ctx, fasthttp.StatusPaymentRequired, "invalid_request_error", r.Code, r.Field, r.Message)
	default:
		writeStripeError(ctx, fasthttp.StatusBadRequest, "invalid_request_error", r.Code, r.Field, r.Message)
	}
}

func stripeOverloaded(ctx *fasthttp.RequestCtx, err error) {
	writeStripeError(ctx, fasthttp.StatusServiceUnavailable, "api_error", "overloaded", "", "meterd is overloaded: retry the request")
}

// writeStripeError answers Stripe's error object.
func writeStripeError(ctx *fasthttp.RequestCtx, status int, typ, code, param, msg string) {
	b := append([]byte(nil), `{"error":{"type":`...)
	b = appendString(b, typ)
	if code != "" {
		b = append(b, `,"code":`...)
		b = appendString(b, code)
	}
	b = append(b, `,"message":`...)
	b = appendString(b, msg)
	if param != "" {
		b = append(b, `,"param":`...)
		b = appendString(b, param)
	}
	b = append(b, "}}"...)
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// stripeSessions signs meter event session tokens: a token is its expiry
// and an HMAC of it under a key made when the server starts, so a token
// outlives no restart and no state is kept.
type stripeSessions struct{ key [32]byte }

func newStripeSessions() *stripeSessions {
	s := &stripeSessions{}
	rand.Read(s.key[:])
	return s
}

func (ss *stripeSessions) token(expires time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(expires.Unix()))
	m := hmac.New(sha256.New, ss.key[:])
	m.Write(b[:])
	return "mes_tok_" + base64.RawURLEncoding.EncodeToString(append(b[:], m.Sum(nil)...))
}

// valid reports whether an Authorization header holds a live token.
func (ss *stripeSessions) valid(auth []byte, now time.Time) bool {
	tok, ok := strings.CutPrefix(string(auth), "Bearer ")
	if !ok {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(tok, "mes_tok_"))
	if err != nil || len(raw) != 8+sha256.Size || !strings.HasPrefix(tok, "mes_tok_") {
		return false
	}
	m := hmac.New(sha256.New, ss.key[:])
	m.Write(raw[:8])
	if !hmac.Equal(m.Sum(nil), raw[8:]) {
		return false
	}
	return now.Unix() < int64(binary.BigEndian.Uint64(raw[:8]))
}

// stripeSession serves POST /v2/billing/meter_event_session.
func (s *Server) stripeSession(ctx *fasthttp.RequestCtx) {
	now := time.Unix(0, s.e.Now()).UTC()
	exp := now.Add(stripeSessionTTL)
	b := append([]byte(nil), `{"id":"mes_`...)
	b = strconv.AppendInt(b, now.UnixNano(), 36)
	b = append(b, `","object":"v2.billing.meter_event_session","authentication_token":`...)
	b = appendString(b, s.stripe.token(exp))
	b = append(b, `,"created":`...)
	b = appendString(b, now.Format(time.RFC3339))
	b = append(b, `,"expires_at":`...)
	b = appendString(b, exp.Format(time.RFC3339))
	b = append(b, `,"livemode":false}`...)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// stripeStream serves POST /v2/billing/meter_event_stream.
func (s *Server) stripeStream(ctx *fasthttp.RequestCtx) {
	if !s.stripe.valid(ctx.Request.Header.Peek("Authorization"), time.Unix(0, s.e.Now())) {
		writeStripeV2Error(ctx, fasthttp.StatusUnauthorized, "billing_meter_event_session_expired",
			"the meter event session token is missing, invalid or expired: create a new session")
		return
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(ctx.PostBody())
	if err != nil || v.Type() != fastjson.TypeObject {
		writeStripeV2Error(ctx, fasthttp.StatusBadRequest, "invalid_request", "the body must be a JSON object {\"events\": [...]}")
		return
	}
	events := v.GetArray("events")
	if len(events) == 0 || len(events) > stripeStreamMax {
		writeStripeV2Error(ctx, fasthttp.StatusBadRequest, "invalid_request", "events must hold 1 to 100 meter events")
		return
	}
	d := s.newDoorBatch()
	defer d.release()
	d.fields = s.stripeFields()
	for _, e := range events {
		ev := stripeEvent{name: string(e.GetStringBytes("event_name")), identifier: string(e.GetStringBytes("identifier")),
			timestamp: string(e.GetStringBytes("timestamp")), payload: map[string]string{}}
		if o := e.GetObject("payload"); o != nil {
			o.Visit(func(k []byte, pv *fastjson.Value) {
				if sb, err := pv.StringBytes(); err == nil {
					ev.payload[string(k)] = string(sb)
				} else {
					ev.payload[string(k)] = string(pv.MarshalTo(nil))
				}
			})
		}
		d.addStripe(&ev)
	}
	if !d.apply(ctx, func(ctx *fasthttp.RequestCtx, err error) {
		writeStripeV2Error(ctx, fasthttp.StatusServiceUnavailable, "overloaded", "meterd is overloaded: retry the request")
	}) {
		return
	}
	for i := range d.n() {
		if r := d.result(i); r.Status == balance.EventRejected {
			status := fasthttp.StatusBadRequest
			if refusedForFunds(r.Code) {
				status = fasthttp.StatusPaymentRequired
			}
			writeStripeV2Error(ctx, status, r.Code, "event "+strconv.Itoa(i)+" ("+r.ID+"): "+r.Message)
			return
		}
	}
	ctx.SetContentType("application/json")
	ctx.SetBodyString("{}")
}

// writeStripeV2Error answers the error shape of Stripe's v2 API.
func writeStripeV2Error(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	writeStripeError(ctx, status, "invalid_request_error", code, "", msg)
}
