package ingest

import "github.com/valyala/fasthttp"

// codeStatus is the one table from an error code to the HTTP status that
// answers it. Every code the server can produce, whichever package names
// it (ingest, balance, meter), has its row here: TestEveryCodeHasAStatus
// reads the source of those packages and fails on a code without one, so a
// new code can never fall through to a 500.
//
// Per-event codes (invalid_event, out_of_window, insufficient_funds, ...)
// are answered inside a 200 events response; their rows give the status
// for when the same code refuses a whole request (an adjustment, a hold).
var codeStatus = map[string]int{
	// 400: the request cannot be read or a value in it is invalid.
	"malformed_json":    fasthttp.StatusBadRequest,
	"malformed_request": fasthttp.StatusBadRequest,
	"invalid_request":   fasthttp.StatusBadRequest,
	"invalid_amount":    fasthttp.StatusBadRequest,
	"invalid_id":        fasthttp.StatusBadRequest,
	"invalid_timestamp": fasthttp.StatusBadRequest,
	"invalid_number":    fasthttp.StatusBadRequest,
	"invalid_event":     fasthttp.StatusBadRequest,
	"invalid_cursor":    fasthttp.StatusBadRequest,
	"invalid_limit":     fasthttp.StatusBadRequest,
	"out_of_window":     fasthttp.StatusBadRequest,
	"bad_framing":       fasthttp.StatusBadRequest,
	// 400: a bounded size, count or length is crossed.
	"field_too_long":          fasthttp.StatusBadRequest,
	"metadata_too_large":      fasthttp.StatusBadRequest,
	"too_many_balance_alerts": fasthttp.StatusBadRequest,
	"too_many_credit_limits":  fasthttp.StatusBadRequest,
	// 401, 403: auth.
	"unauthorized": fasthttp.StatusUnauthorized,
	"forbidden":    fasthttp.StatusForbidden,
	// 404: nothing by that name.
	"not_found":        fasthttp.StatusNotFound,
	"unknown_customer": fasthttp.StatusNotFound,
	"unknown_hold":     fasthttp.StatusNotFound,
	"unknown_request":  fasthttp.StatusNotFound,
	"unknown_bucket":   fasthttp.StatusNotFound,
	// 405, 408, 413, 415, 431: the HTTP exchange itself.
	"method_not_allowed":     fasthttp.StatusMethodNotAllowed,
	"request_timeout":        fasthttp.StatusRequestTimeout,
	"body_too_large":         fasthttp.StatusRequestEntityTooLarge,
	"too_many_events":        fasthttp.StatusRequestEntityTooLarge,
	"line_too_long":          fasthttp.StatusRequestEntityTooLarge,
	"pricing_too_large":      fasthttp.StatusRequestEntityTooLarge,
	"unsupported_media_type": fasthttp.StatusUnsupportedMediaType,
	"headers_too_large":      fasthttp.StatusRequestHeaderFieldsTooLarge,
	// 409: the request conflicts with the state it meets.
	"idempotency_conflict":      fasthttp.StatusConflict,
	"insufficient_funds":        fasthttp.StatusConflict,
	"topup_spent":               fasthttp.StatusConflict,
	"reversal_window_elapsed":   fasthttp.StatusConflict,
	"refund_allowance_exceeded": fasthttp.StatusConflict,
	"hold_limit_reached":        fasthttp.StatusConflict,
	"account_paused":            fasthttp.StatusConflict,
	"hold_not_active":           fasthttp.StatusConflict,
	"reload_not_pending":        fasthttp.StatusConflict,
	"clock_backwards":           fasthttp.StatusConflict,
	"limit_exceeded":            fasthttp.StatusConflict,
	// 422: well formed, but not something the pricing or the plan allows.
	"no_plan_period":         fasthttp.StatusUnprocessableEntity,
	"amount_out_of_range":    fasthttp.StatusUnprocessableEntity,
	"unknown_currency":       fasthttp.StatusUnprocessableEntity,
	"unknown_asset":          fasthttp.StatusUnprocessableEntity,
	"invalid_pricing":        fasthttp.StatusUnprocessableEntity,
	"asset_immutable":        fasthttp.StatusUnprocessableEntity,
	"pricing_limit_exceeded": fasthttp.StatusUnprocessableEntity,
	"unsupported_setting":    fasthttp.StatusUnprocessableEntity,
	// An auto-reload threshold outside the pricing's auto_reload_limits.
	"threshold_below_minimum": fasthttp.StatusUnprocessableEntity,
	"threshold_above_maximum": fasthttp.StatusUnprocessableEntity,
	// Offers (topup_offers with an id) refusing a purchase.
	"unknown_offer":         fasthttp.StatusUnprocessableEntity,
	"offer_requires_plan":   fasthttp.StatusUnprocessableEntity,
	"offer_not_eligible":    fasthttp.StatusUnprocessableEntity,
	"package_mismatch":      fasthttp.StatusUnprocessableEntity,
	"quantity_not_in_units": fasthttp.StatusUnprocessableEntity,
	// Too much ledger for one usage view.
	"usage_range_too_large": fasthttp.StatusUnprocessableEntity,
	// An event type without a price under --unpriced-events reject.
	"unpriced_event": fasthttp.StatusUnprocessableEntity,
	// 429: the key's rate limit (rate_limit in the key file); Retry-After says when.
	"rate_limited": fasthttp.StatusTooManyRequests,
	// 503: retry later with the same ids.
	"overloaded":   fasthttp.StatusServiceUnavailable,
	"unavailable":  fasthttp.StatusServiceUnavailable,
	"sink_backlog": fasthttp.StatusServiceUnavailable,
	"storage_full": fasthttp.StatusServiceUnavailable,
	// 500: a fault of the server, logged.
	"internal_error": fasthttp.StatusInternalServerError,
	"corrupt":        fasthttp.StatusInternalServerError,
}

// statusOf maps an error code to its HTTP status. A code missing from
// codeStatus is a defect the test above catches; it answers 500.
func statusOf(code string) int {
	if st, ok := codeStatus[code]; ok {
		return st
	}
	return fasthttp.StatusInternalServerError
}
