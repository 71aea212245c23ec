package ingest

import (
	"slices"
	"strings"

	"github.com/valyala/fasthttp"
)

// The routes: every endpoint the server serves, as data. The router
// (route) matches a request against this table, docs/API.md's endpoint
// summary lists exactly these (TestRoutesAreDocumented), and the metrics
// label each request with its route's name.

// Scopes beside auth.go's: a route served without a key, and one whose
// handler checks its caller itself.
const (
	scopePublic Scope = 0
	scopeSelf   Scope = 1 << 7
)

// apiRoute is one endpoint: a method and a path pattern of literal and
// {param} segments.
type apiRoute struct {
	method, pattern string // method "*": any
	name            string // the metrics label
	scope           Scope
	door            Door // 0: meterd's own; else served only when the door is on
	handle          func(s *Server, ctx *fasthttp.RequestCtx, p []string)
	segs            []string
}

// customerParam and holdParam are checked before a route's handler runs.
const (
	customerParam = "{customer_id}"
	holdParam     = "{hold_id}"
)

var apiRoutes = compileRoutes([]apiRoute{
	// Probes: any method, and the body is never read.
	{method: "*", pattern: "/healthz", name: "healthz", scope: scopeSelf, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.healthz(ctx) }},
	{method: "*", pattern: "/readyz", name: "readyz", scope: scopeSelf, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.readyz(ctx) }},
	{method: "GET", pattern: "/metrics", name: "metrics", handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.prom(ctx) }},
	{method: "GET", pattern: "/openapi.json", name: "openapi", handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { serveOpenAPI(ctx) }},

	{method: "POST", pattern: "/v1/events", name: "events", scope: ScopeIngest, handle: (*Server).eventsRoute},
	{method: "POST", pattern: "/v1/check", name: "check", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.check(ctx) }},
	{method: "GET", pattern: "/v1/pricing", name: "pricing", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.getPricing(ctx) }},
	{method: "PUT", pattern: "/v1/pricing", name: "pricing", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.putPricing(ctx) }},
	{method: "POST", pattern: "/v1/pricing/simulate", name: "pricing_simulate", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.simulate(ctx) }},
	{method: "GET", pattern: "/v1/offers", name: "offers", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.listOffers(ctx) }},
	{method: "GET", pattern: "/v1/offers/{offer_id}/quote", name: "offer_quote", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.offerQuote(ctx, p[0]) }},
	{method: "GET", pattern: "/v1/topup-quote", name: "topup_quote", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.topUpQuote(ctx) }},
	{method: "GET", pattern: "/v1/test-clock", name: "test_clock", scope: scopeSelf, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.testClock(ctx, "GET") }},
	{method: "POST", pattern: "/v1/test-clock", name: "test_clock", scope: scopeSelf, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.testClock(ctx, "POST") }},

	{method: "POST", pattern: "/v1/holds", name: "holds", scope: ScopeIngest, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.placeHold(ctx) }},
	{method: "GET", pattern: "/v1/holds/" + holdParam, name: "hold", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.getHold(ctx, p[0]) }},
	{method: "POST", pattern: "/v1/holds/" + holdParam + "/release", name: "hold_release", scope: ScopeIngest, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.releaseHold(ctx, p[0]) }},

	{method: "GET", pattern: "/v1/customers/" + customerParam, name: "customer", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.getCustomer(ctx, p[0]) }},
	{method: "PUT", pattern: "/v1/customers/" + customerParam, name: "customer", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.putCustomer(ctx, p[0]) }},
	{method: "PATCH", pattern: "/v1/customers/" + customerParam, name: "customer", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.patchCustomer(ctx, p[0]) }},
	{method: "GET", pattern: "/v1/customers/" + customerParam + "/wallet", name: "wallet", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.getWallet(ctx, p[0]) }},
	{method: "POST", pattern: "/v1/customers/" + customerParam + "/resume", name: "resume", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.resume(ctx, p[0]) }},
	{method: "GET", pattern: "/v1/customers/" + customerParam + "/topups", name: "topups_list", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.listTopUps(ctx, p[0]) }},
	{method: "POST", pattern: "/v1/customers/" + customerParam + "/topups", name: "topups", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.topUp(ctx, p[0]) }},
	{method: "GET", pattern: "/v1/customers/" + customerParam + "/topups/{topup_id}", name: "topup", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.getTopUp(ctx, p[0], p[1]) }},
	{method: "POST", pattern: "/v1/customers/" + customerParam + "/topups/{topup_id}/reverse", name: "topup_reverse", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.reverse(ctx, p[0], p[1]) }},
	{method: "POST", pattern: "/v1/customers/" + customerParam + "/grants/{bucket_id}/reverse", name: "grant_reverse", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.reverseGrant(ctx, p[0], p[1]) }},
	{method: "POST", pattern: "/v1/customers/" + customerParam + "/adjustments", name: "adjustments", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.adjust(ctx, p[0]) }},
	{method: "GET", pattern: "/v1/customers/" + customerParam + "/notifications", name: "notifications", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.notifications(ctx, p[0]) }},
	{method: "GET", pattern: "/v1/customers/" + customerParam + "/auto-reload/requests", name: "reload_requests", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.reloadRequests(ctx, p[0]) }},
	{method: "POST", pattern: "/v1/customers/" + customerParam + "/auto-reload/requests/{request_id}/confirm", name: "reload_confirm", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.resolveReload(ctx, p[0], p[1], true) }},
	{method: "POST", pattern: "/v1/customers/" + customerParam + "/auto-reload/requests/{request_id}/fail", name: "reload_fail", scope: ScopeAdmin, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.resolveReload(ctx, p[0], p[1], false) }},
	{method: "GET", pattern: "/v1/customers/" + customerParam + "/ledger", name: "ledger", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.ledger(ctx, p[0]) }},
	{method: "GET", pattern: "/v1/customers/" + customerParam + "/usage", name: "usage", scope: ScopeRead, handle: func(s *Server, ctx *fasthttp.RequestCtx, p []string) { s.usage(ctx, p[0]) }},

	// The doors (doors.go). OpenMeter and Lago share POST /api/v1/events.
	{method: "POST", pattern: "/api/v1/events", name: "door_events", scope: ScopeIngest, door: DoorOpenMeter | DoorLago, handle: (*Server).doorEventsRoute},
	{method: "POST", pattern: "/api/v1/events/batch", name: "door_lago_batch", scope: ScopeIngest, door: DoorLago, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.lagoEvents(ctx, true, nil) }},
	{method: "POST", pattern: "/v1/billing/meter_events", name: "door_stripe_v1", scope: ScopeIngest, door: DoorStripe, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.stripeMeterEvent(ctx) }},
	{method: "POST", pattern: "/v2/billing/meter_event_session", name: "door_stripe_session", scope: ScopeIngest, door: DoorStripe, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.stripeSession(ctx) }},
	// Authorized by the session's token, not by an API key (stripeStream).
	{method: "POST", pattern: "/v2/billing/meter_event_stream", name: "door_stripe_stream", scope: scopePublic, door: DoorStripe, handle: func(s *Server, ctx *fasthttp.RequestCtx, _ []string) { s.stripeStream(ctx) }},
})

func compileRoutes(rs []apiRoute) []apiRoute {
	for i := range rs {
		rs[i].segs = strings.Split(strings.TrimPrefix(rs[i].pattern, "/"), "/")
	}
	return rs
}

// match returns the path's parameters when path matches r's pattern.
func (r *apiRoute) match(segs []string, params []string) ([]string, bool) {
	if len(segs) != len(r.segs) {
		return nil, false
	}
	params = params[:0]
	for i, seg := range r.segs {
		if len(seg) > 1 && seg[0] == '{' {
			params = append(params, segs[i])
		} else if seg != segs[i] {
			return nil, false
		}
	}
	return params, true
}

// dispatch serves a request by the route table: 404 when no route's path
// matches, 405 (with Allow) when none of those has the method, else the
// parameters' check, the caller's scope, the body (allow) and the handler.
// It returns the route's name, "" when no path matched.
func (s *Server) dispatch(ctx *fasthttp.RequestCtx, path, method string) string {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	var params [4]string
	var allowed []string
	for i := range apiRoutes {
		r := &apiRoutes[i]
		if r.door != 0 && s.doors&r.door == 0 {
			continue
		}
		p, ok := r.match(segs, params[:0])
		if !ok {
			continue
		}
		if r.method != method && r.method != "*" {
			if !slices.Contains(allowed, r.method) {
				allowed = append(allowed, r.method)
			}
			continue
		}
		if !checkParams(ctx, r, p) {
			return r.name
		}
		switch r.scope {
		case scopeSelf:
		case scopePublic:
			if !s.readBody(ctx) {
				return r.name
			}
		default:
			if r.door != 0 {
				if !s.allowDoor(ctx, r) {
					return r.name
				}
			} else if !s.allow(ctx, method, method, r.scope) {
				return r.name
			}
		}
		r.handle(s, ctx, p)
		return r.name
	}
	if len(allowed) > 0 {
		methodNotAllowed(ctx, strings.Join(allowed, ", "))
		return "method_not_allowed"
	}
	return ""
}

// checkParams refuses a customer or hold id that is not an identifier,
// before anything else is read.
func checkParams(ctx *fasthttp.RequestCtx, r *apiRoute, p []string) bool {
	j := 0
	for _, seg := range r.segs {
		if len(seg) < 2 || seg[0] != '{' {
			continue
		}
		switch seg {
		case customerParam:
			if !validID(p[j]) {
				writeError(ctx, "invalid_id", "customer id must be 1-128 characters of [A-Za-z0-9._:-]", "customer_id")
				return false
			}
		case holdParam:
			if !validID(p[j]) {
				writeError(ctx, "invalid_id", "hold id must be 1-128 characters of [A-Za-z0-9._:-]", "id")
				return false
			}
		}
		j++
	}
	return true
}
