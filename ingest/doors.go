package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/meter"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// Doors: the ingest APIs of the systems products move over from
// (OpenMeter, Stripe meters, Lago), served beside meterd's own. Each door
// is thin: it reads its system's request, makes each of its events a
// meterd event (the same JSON object as an element of POST /v1/events),
// and hands them to the events path: the same decoder and limits, the same
// engine, an answer only once the events are durable. Only the answer is
// the door's own: its system's status codes and error shape.

// Door is one foreign ingest API.
type Door uint8

// The doors.
const (
	DoorOpenMeter Door = 1 << iota
	DoorStripe
	DoorLago

	AllDoors = DoorOpenMeter | DoorStripe | DoorLago
)

// doorNames are the names of the doors, as --doors lists them.
var doorNames = []struct {
	d    Door
	name string
}{{DoorOpenMeter, "openmeter"}, {DoorStripe, "stripe"}, {DoorLago, "lago"}}

// ParseDoors reads a comma-separated list of door names ("" for none).
func ParseDoors(s string) (Door, bool) {
	var out Door
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		found := false
		for _, dn := range doorNames {
			if dn.name == name {
				out |= dn.d
				found = true
			}
		}
		if !found {
			return 0, false
		}
	}
	return out, true
}

// doorBatch collects the meterd events a door makes of one request, then
// applies them.
type doorBatch struct {
	s   *Server
	sc  *eventsScratch
	now time.Time
	b   []byte // the native event being built
	// fields names the members of a meterd event by the door's own
	// (customer_id: subject): what a refusal's field says.
	fields map[string]string
}

func (s *Server) newDoorBatch() *doorBatch {
	sc := s.scratch()
	sc.decoded = sc.decoded[:0]
	return &doorBatch{s: s, sc: sc, now: time.Unix(0, s.e.Now())}
}

// release returns the batch's scratch to the pool; its events and results
// must not be used after.
func (d *doorBatch) release() { d.s.pool.Put(d.sc) }

// add decodes one native event object, as POST /v1/events decodes an
// element of events.
func (d *doorBatch) add(native []byte) {
	d.sc.decoded = append(d.sc.decoded, Decoded{})
	d.sc.dec.DecodeOne(native, d.now, &d.s.lim, "", &d.sc.decoded[len(d.sc.decoded)-1])
}

// reject adds an event the door could not make a meterd event of.
func (d *doorBatch) reject(id, reason, field, msg string) {
	d.sc.decoded = append(d.sc.decoded, Decoded{Event: meter.Event{ID: id}, Err: evErr(reason, field, msg)})
}

// apply applies the decoded events; false when the engine refused the
// request whole (overloaded, storage full), answered already.
func (d *doorBatch) apply(ctx *fasthttp.RequestCtx, overloaded func(ctx *fasthttp.RequestCtx, err error)) bool {
	s := d.s
	if s.admit != nil {
		if err := s.admit(); err != nil {
			ctx.Response.Header.Set("Retry-After", "5")
			overloaded(ctx, err)
			return false
		}
	}
	ins := d.sc.inputs()
	for _, in := range ins {
		in.Notify = true // a refusal also reaches the customer's notifications (webhooks, Kafka)
	}
	if err := s.e.Events(ins); err != nil {
		ctx.Response.Header.Set("Retry-After", "1")
		overloaded(ctx, err)
		return false
	}
	for i := range d.sc.decoded {
		if j := d.sc.slot[i]; j >= 0 {
			s.metrics.event(d.sc.ins[j].Result.Status, d.sc.ins[j].Result.Code)
		} else {
			s.metrics.event(balance.EventRejected, d.sc.decoded[i].Err.Code)
		}
	}
	return true
}

// doorResult is one event's outcome, as a door answers it.
type doorResult struct {
	ID                   string
	Status               uint8 // balance.EventCharged, ...
	Code, Message, Field string
}

// result is the outcome of the i-th event added.
func (d *doorBatch) result(i int) doorResult {
	dec := &d.sc.decoded[i]
	j := d.sc.slot[i]
	if j < 0 {
		return doorResult{ID: dec.Event.ID, Status: balance.EventRejected, Code: dec.Err.Code, Message: dec.Err.Message,
			Field: d.foreignField(dec.Err.Field)}
	}
	r := &d.sc.ins[j].Result
	out := doorResult{ID: dec.Event.ID, Status: r.Status}
	if r.Status == balance.EventRejected {
		out.Code, out.Message, out.Field = r.Code, r.Message, d.foreignField(r.Field)
	}
	return out
}

// foreignField names a meterd event's field (data.value) by the door's
// (payload[value]).
func (d *doorBatch) foreignField(f string) string {
	if f == "" || d.fields == nil {
		return f
	}
	root, rest := f, ""
	if i := strings.IndexAny(f, ".["); i >= 0 {
		root, rest = f[:i], f[i:]
	}
	name, ok := d.fields[root]
	if !ok {
		return f
	}
	if strings.HasSuffix(name, "[]") && strings.HasPrefix(rest, ".") { // payload[] + .value: payload[value]
		return strings.TrimSuffix(name, "[]") + "[" + rest[1:] + "]"
	}
	return name + rest
}

// n is the number of events added.
func (d *doorBatch) n() int { return len(d.sc.decoded) }

// refusedForFunds reports whether a rejection is about the customer's
// money or state (the event itself was fine): what a door reports as
// payment required, not as a bad request.
func refusedForFunds(code string) bool {
	switch code {
	case "insufficient_funds", "account_paused", "unknown_customer", "hold_limit_reached":
		return true
	}
	return false
}

// foreignID makes a meterd event id of a foreign system's id, scoped by
// what makes it unique there (a CloudEvents source): scope:id when that is
// an identifier, else a hash of both (ce- and 40 hex digits), so that the
// same foreign event is always the same meterd event.
func foreignID(prefix, scope, id string) string {
	if id == "" {
		return ""
	}
	full := id
	if scope != "" {
		full = scope + ":" + id
	}
	if !strings.Contains(scope, ":") && len(full) <= 128 && validID(full) {
		return full
	}
	h := sha256.New()
	h.Write([]byte(scope))
	h.Write([]byte{0})
	h.Write([]byte(id))
	return prefix + hex.EncodeToString(h.Sum(nil)[:20])
}

// lagoBody reports whether a body for POST /api/v1/events is Lago's
// ({"event": {...}}) rather than a CloudEvent or a batch of them: both
// systems use that path.
//
// It returns the body parsed with p when it parsed it (nil otherwise: a
// CloudEvents content type, a binary-mode CloudEvent, a batch, or no
// JSON), for the door to use rather than parse it again.
func lagoBody(ctx *fasthttp.RequestCtx, p *fastjson.Parser) (*fastjson.Value, bool) {
	switch mediaType(ctx) {
	case "application/cloudevents+json", "application/cloudevents-batch+json":
		return nil, false
	}
	body := bytes.TrimLeft(ctx.PostBody(), " \t\r\n")
	if len(ctx.Request.Header.Peek("ce-specversion")) > 0 || len(body) == 0 || body[0] != '{' {
		return nil, false
	}
	v, err := p.ParseBytes(body)
	if err != nil {
		return nil, false
	}
	return v, v.Get("event") != nil && v.Get("specversion") == nil
}

// DoorMapping says which of a foreign event's fields are the meterd
// event's customer and event type, where a door's system lets its users
// choose (Stripe meters name their customer key; CloudEvents put a
// customer where the producer likes). The zero value is the defaults.
type DoorMapping struct {
	// OpenMeterCustomer and OpenMeterEventType are "subject" and "type"
	// (the defaults), "data.<member>" (a string member of data), or the
	// name of a CloudEvents extension attribute.
	OpenMeterCustomer, OpenMeterEventType string
	// StripeCustomerKey is the payload key of the customer
	// (stripe_customer_id by default, a meter's customer_mapping).
	StripeCustomerKey string
	// LagoCustomer is the fields tried in order for the customer
	// (external_customer_id, then external_subscription_id by default).
	LagoCustomer []string
}

// Check validates a mapping; the error names the setting.
func (m *DoorMapping) Check() error {
	for _, f := range []struct{ name, v string }{{"door-openmeter-customer", m.OpenMeterCustomer}, {"door-openmeter-event-type", m.OpenMeterEventType}} {
		if f.v != "" && !cloudEventField(f.v) {
			return fmt.Errorf("--%s %q: want subject, type, data.<member> or an extension attribute (1-20 of a-z and 0-9)", f.name, f.v)
		}
	}
	if m.StripeCustomerKey != "" && (strings.ContainsAny(m.StripeCustomerKey, "[]") || len(m.StripeCustomerKey) > 100) {
		return fmt.Errorf("--door-stripe-customer-key %q: want a payload key without brackets, at most 100 bytes", m.StripeCustomerKey)
	}
	for _, f := range m.LagoCustomer {
		if f != "external_customer_id" && f != "external_subscription_id" {
			return fmt.Errorf("--door-lago-customer %q: want external_customer_id and/or external_subscription_id", f)
		}
	}
	return nil
}

// cloudEventField reports whether f names where to find a value in a
// CloudEvent: subject, type, data.<member>, or an extension attribute.
func cloudEventField(f string) bool {
	if member, ok := strings.CutPrefix(f, "data."); ok {
		return member != "" && len(member) <= 128
	}
	if f == "" || len(f) > 20 {
		return false
	}
	for i := 0; i < len(f); i++ {
		if !(f[i] >= 'a' && f[i] <= 'z' || f[i] >= '0' && f[i] <= '9') {
			return false
		}
	}
	return true
}

// withDefaults is m with every unset field at its default.
func (m DoorMapping) withDefaults() DoorMapping {
	if m.OpenMeterCustomer == "" {
		m.OpenMeterCustomer = "subject"
	}
	if m.OpenMeterEventType == "" {
		m.OpenMeterEventType = "type"
	}
	if m.StripeCustomerKey == "" {
		m.StripeCustomerKey = "stripe_customer_id"
	}
	if len(m.LagoCustomer) == 0 {
		m.LagoCustomer = []string{"external_customer_id", "external_subscription_id"}
	}
	return m
}

// allowDoor is allow for a door's route: a refused key is answered in the
// door's own error shape, as its SDK expects. POST /api/v1/events, which
// OpenMeter and Lago share, answers in OpenMeter's unless Lago's is the
// only door on (its body is not read before the key is checked).
func (s *Server) allowDoor(ctx *fasthttp.RequestCtx, r *apiRoute) bool {
	if status, code, msg := s.authorize(ctx, r.scope); status != 0 {
		switch {
		case r.door == DoorStripe:
			writeStripeError(ctx, status, "invalid_request_error", code, "", msg)
		case r.door == DoorLago || s.doors&DoorOpenMeter == 0:
			writeLagoError(ctx, status, code, msg, nil)
		default:
			writeProblem(ctx, status, msg, nil)
		}
		return false
	}
	return s.readBody(ctx)
}
