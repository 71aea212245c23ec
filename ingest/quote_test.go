package ingest

import (
	"strings"
	"testing"
)

// TestAPITopUpQuote: GET /v1/topup-quote against the contract's offer (USD,
// 10 to 10000, 100 credits per dollar from 10, 125 from 300), through a
// real engine and server.
func TestAPITopUpQuote(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	const q = "/v1/topup-quote"

	// Before any pricing there is no offer.
	apiWantErr(t, "no pricing", e.call("GET", q+"?amount=120&currency=USD", ""), 422, "unknown_currency", "currency")

	e.putPricing(apiContractPricing)
	for _, c := range []struct{ query, want string }{
		{"?amount=120&currency=USD",
			`{"amount":"120","currency":"USD","account":"default:CREDITS","credits":"12000","tier":1,"rate":"100","save_pct":"0","next_tier":{"add":"180","extra_credits":"7500"}}`},
		{"?currency=USD&amount=300",
			`{"amount":"300","currency":"USD","account":"default:CREDITS","credits":"37500","tier":2,"rate":"125","save_pct":"20","next_tier":null}`},
		{"?amount=10.01&currency=USD",
			`{"amount":"10.01","currency":"USD","account":"default:CREDITS","credits":"1001","tier":1,"rate":"100","save_pct":"0","next_tier":{"add":"289.99","extra_credits":"7500"}}`},
		// 10.009 * 100 = 1000.9 credits: rounded down.
		{"?amount=10.009&currency=USD",
			`{"amount":"10.009","currency":"USD","account":"default:CREDITS","credits":"1000","tier":1,"rate":"100","save_pct":"0","next_tier":{"add":"289.991","extra_credits":"7500"}}`},
		{"?amount=10000&currency=USD",
			`{"amount":"10000","currency":"USD","account":"default:CREDITS","credits":"1250000","tier":2,"rate":"125","save_pct":"20","next_tier":null}`},
	} {
		r := e.must(200, "GET", q+c.query, "")
		if string(r.Body) != c.want {
			t.Errorf("GET %s =\n  %s\nwant\n  %s", c.query, r.Body, c.want)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET %s: Content-Type %q", c.query, ct)
		}
	}

	for _, c := range []struct {
		query  string
		status int
		code   string
		field  string
	}{
		{"?amount=9.99&currency=USD", 422, "amount_out_of_range", "amount"},
		{"?amount=10000.01&currency=USD", 422, "amount_out_of_range", "amount"},
		{"?amount=-120&currency=USD", 422, "amount_out_of_range", "amount"},
		{"?amount=120&currency=EUR", 422, "unknown_currency", "currency"},
		{"?amount=120&currency=usd", 422, "unknown_currency", "currency"},
		{"?amount=abc&currency=USD", 400, "invalid_amount", "amount"},
		{"?amount=1e2&currency=USD", 400, "invalid_amount", "amount"},
		{"?amount=120.0000001&currency=USD", 400, "invalid_amount", "amount"}, // USD has scale 6
		{"?amount=&currency=USD", 400, "invalid_amount", "amount"},
		{"?currency=USD", 400, "invalid_amount", "amount"},
		{"?amount=120", 400, "invalid_request", "currency"},
		{"?amount=120&currency=", 400, "invalid_request", "currency"},
		{"", 400, "invalid_amount", "amount"},
		{"?amount=120&currency=USD&customer_id=c1", 400, "invalid_request", "customer_id"},
		{"?amount=120&amount=300&currency=USD", 400, "invalid_request", "amount"},
		{"?amount=120&currency=USD&currency=USD", 400, "invalid_request", "currency"},
	} {
		apiWantErr(t, "GET "+q+c.query, e.call("GET", q+c.query, ""), c.status, c.code, c.field)
	}
	r := e.call("POST", q+"?amount=120&currency=USD", "")
	apiWantErr(t, "POST", r, 405, "method_not_allowed", "")
	if r.Header.Get("Allow") != "GET" {
		t.Errorf("POST: Allow %q, want GET", r.Header.Get("Allow"))
	}

	// Quotes follow the pricing in force.
	e.putPricing(strings.Replace(apiContractPricing, `"credits_per_unit":"125"`, `"credits_per_unit":"150"`, 1))
	r = e.must(200, "GET", q+"?amount=120&currency=USD", "")
	want := `{"amount":"120","currency":"USD","account":"default:CREDITS","credits":"12000","tier":1,"rate":"100","save_pct":"0","next_tier":{"add":"180","extra_credits":"15000"}}`
	if string(r.Body) != want {
		t.Errorf("after the new pricing: %s, want %s", r.Body, want)
	}
	r = e.must(200, "GET", q+"?amount=300&currency=USD", "")
	if !strings.Contains(string(r.Body), `"credits":"45000","tier":2,"rate":"150","save_pct":"33.33"`) {
		t.Errorf("after the new pricing, 300: %s", r.Body)
	}
}

// TestAPITopUpQuoteAuth: a quote needs the read scope (admin implies it).
func TestAPITopUpQuoteAuth(t *testing.T) {
	keys := threeKeys(t)
	e := newAPIEnv(t, apiEnvOpts{Keys: keys})
	if r := e.send("PUT", "/v1/pricing", "application/json", adminKey, []byte(apiContractPricing)); r.Status != 200 {
		t.Fatalf("admin PUT /v1/pricing: %s", r)
	}
	const q = "/v1/topup-quote?amount=120&currency=USD"
	apiWantErr(t, "no key", e.send("GET", q, "", "-", nil), 401, "unauthorized", "")
	apiWantErr(t, "ingest key", e.send("GET", q, "", ingestKey, nil), 403, "forbidden", "")
	for _, k := range []string{readKey, adminKey} {
		if r := e.send("GET", q, "", k, nil); r.Status != 200 || !strings.Contains(string(r.Body), `"credits":"12000"`) {
			t.Errorf("GET %s with a %s key: %s", q, k[:4], r)
		}
	}
}
