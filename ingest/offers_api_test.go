package ingest

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// offerTopUp is a top-up as POST and GET answer it, with its offer.
type offerTopUp struct {
	ID           string  `json:"id"`
	BucketID     string  `json:"bucket_id"`
	Account      string  `json:"account"`
	Amount       string  `json:"amount"`
	Description  *string `json:"description"`
	ExchangeRate *string `json:"exchange_rate"`
	ExpiresAt    *string `json:"expires_at"`
	Price        *struct {
		Amount   string `json:"amount"`
		Currency string `json:"currency"`
	} `json:"price"`
	Offer *struct {
		ID   string `json:"id"`
		Tier *int   `json:"tier"`
		Rate struct {
			Price   string `json:"price"`
			Credits string `json:"credits"`
		} `json:"rate"`
	} `json:"offer"`
	Metadata json.RawMessage `json:"metadata"`
}

func (e *apiEnv) buy(status int, customer, body string) offerTopUp {
	e.t.Helper()
	r := e.must(status, "POST", "/v1/customers/"+customer+"/topups", body)
	var tu offerTopUp
	apiDecode(e.t, r.Body, &tu)
	return tu
}

func wantBought(t *testing.T, what string, tu offerTopUp, credits, price, offer string) {
	t.Helper()
	if tu.Amount != credits || tu.Price == nil || tu.Price.Amount != price || tu.Price.Currency != "USD" ||
		tu.Offer == nil || tu.Offer.ID != offer {
		t.Errorf("%s: got %s; want %s credits for %s USD under %s", what, apiJSON(tu), credits, price, offer)
	}
}

// TestOffersThroughHTTP: each product's offers, set up from its public
// numbers (meter/testdata/offers.json), bought through HTTP, and each
// refusal with its own code.
func TestOffersThroughHTTP(t *testing.T) {
	doc, err := os.ReadFile("../meter/testdata/offers.json")
	if err != nil {
		t.Fatal(err)
	}
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(string(doc))
	e.newCustomer("anon", `{}`)
	e.newCustomer("core", `{"plan":{"id":"make_core","allocations":[{"asset":"CREDITS","amount":"10000","period":"month","anchor":"2026-01-01T00:00:00Z"}]}}`)

	// Alphio: $120 is tier 1 with the hint to add $180; $300 is tier 2.
	r := e.must(200, "GET", "/v1/offers/alphio_credits/quote?amount=120", "")
	var q struct {
		Amount, Credits string
		Tier            *int
		NextTier        *struct{ Add, ExtraCredits string } `json:"next_tier"`
	}
	apiDecode(t, r.Body, &q)
	if q.Credits != "12000" || q.Tier == nil || *q.Tier != 1 || q.NextTier == nil || q.NextTier.Add != "180" {
		t.Errorf("Alphio quote of $120: %s", r.Body)
	}
	tu := e.buy(201, "anon", `{"id":"a120","offer_id":"alphio_credits","price":{"amount":"120"}}`)
	wantBought(t, "Alphio $120", tu, "12000", "120", "alphio_credits")
	if tu.Offer == nil || tu.Offer.Tier == nil || *tu.Offer.Tier != 1 || tu.Offer.Rate.Credits != "100" {
		t.Errorf("Alphio $120: offer %s", apiJSON(tu.Offer))
	}
	tu = e.buy(201, "anon", `{"id":"a300","offer_id":"alphio_credits","price":{"amount":"300"}}`)
	wantBought(t, "Alphio $300", tu, "37500", "300", "alphio_credits")
	if tu.Offer == nil || tu.Offer.Tier == nil || *tu.Offer.Tier != 2 {
		t.Errorf("Alphio $300: offer %s", apiJSON(tu.Offer))
	}
	apiWantErr(t, "Alphio $5", e.call("POST", "/v1/customers/anon/topups", `{"id":"a5","offer_id":"alphio_credits","price":{"amount":"5"}}`),
		422, "amount_out_of_range", "price.amount")
	apiWantErr(t, "Alphio $10,001", e.call("POST", "/v1/customers/anon/topups", `{"id":"a10001","offer_id":"alphio_credits","price":{"amount":"10001"}}`),
		422, "amount_out_of_range", "price.amount")
	apiWantErr(t, "Alphio quote of $5", e.call("GET", "/v1/offers/alphio_credits/quote?amount=5", ""), 422, "amount_out_of_range", "amount")

	// Wanclouds: four bundles and a custom amount.
	for _, b := range []struct{ id, credits, price string }{
		{"wan_100", "8000000", "100"}, {"wan_250", "20000000", "250"}, {"wan_1000", "80000000", "1000"}, {"wan_2000", "160000000", "2000"},
	} {
		tu = e.buy(201, "anon", `{"id":"w_`+b.id+`","offer_id":"`+b.id+`"}`)
		wantBought(t, "Wanclouds "+b.id, tu, b.credits, b.price, b.id)
	}
	tu = e.buy(201, "anon", `{"id":"w_custom","offer_id":"wan_custom","price":{"amount":"137.50","currency":"USD"}}`)
	wantBought(t, "Wanclouds custom $137.50", tu, "11000000", "137.5", "wan_custom")
	apiWantErr(t, "Wanclouds bundle for another price", e.call("POST", "/v1/customers/anon/topups", `{"id":"w_bad","offer_id":"wan_100","price":{"amount":"99"}}`),
		422, "package_mismatch", "price.amount")

	// APOB: Nano bought; Macro by auto-reload at 10% off.
	e.newCustomer("apob", `{}`)
	tu = e.buy(201, "apob", `{"id":"nano","offer_id":"apob_nano"}`)
	wantBought(t, "APOB Nano", tu, "4000", "12", "apob_nano")
	e.must(200, "PUT", "/v1/customers/apob", `{"auto_reload":{"offer_id":"apob_macro","threshold":"1000"}}`)
	r = e.must(200, "GET", "/v1/customers/apob", "")
	var cust struct {
		AutoReload struct {
			OfferID string `json:"offer_id"`
			Amount  string
			Price   struct{ Amount, Currency string }
		} `json:"auto_reload"`
	}
	apiDecode(t, r.Body, &cust)
	if cust.AutoReload.OfferID != "apob_macro" || cust.AutoReload.Amount != "20000" || cust.AutoReload.Price.Amount != "36" {
		t.Errorf("APOB Macro by auto-reload: %s", r.Body)
	}
	// A PATCH that leaves the offer alone keeps it, and its price.
	e.must(200, "PATCH", "/v1/customers/apob", `{"auto_reload":{"threshold":"1500"}}`)
	r = e.must(200, "GET", "/v1/customers/apob", "")
	apiDecode(t, r.Body, &cust)
	if cust.AutoReload.OfferID != "apob_macro" || cust.AutoReload.Price.Amount != "36" {
		t.Errorf("after a PATCH of the threshold: %s", r.Body)
	}
	// Spending below the threshold reloads: 20,000 credits billed $36.
	e.must(201, "POST", "/v1/customers/apob/adjustments", `{"transaction_id":"spend","asset":"CREDITS","amount":"-2500"}`)
	if res := e.event1(`{"id":"task1","customer_id":"apob","event_type":"task"}`); res.Status != "charged" {
		t.Fatalf("APOB task: %s", apiJSON(res))
	}
	r = e.must(200, "GET", "/v1/customers/apob/auto-reload/requests", "")
	var reqs struct {
		Requests []struct {
			Amount string
			Charge struct{ Amount, Currency string }
		}
	}
	apiDecode(t, r.Body, &reqs)
	if len(reqs.Requests) != 1 || reqs.Requests[0].Amount != "20000" || !apiDecEq(t, reqs.Requests[0].Charge.Amount, "36") {
		t.Errorf("APOB Macro reload: %s", r.Body)
	}

	// Make: units of 1,000 at the plan's rate, $9 / 10,000.
	apiWantErr(t, "Make 1,500 credits", e.call("POST", "/v1/customers/core/topups", `{"id":"m1500","offer_id":"make_extra","amount":"1500"}`),
		422, "quantity_not_in_units", "amount")
	tu = e.buy(201, "core", `{"id":"m2000","offer_id":"make_extra","amount":"2000"}`)
	wantBought(t, "Make 2,000 credits", tu, "2000", "1.8", "make_extra")
	r = e.must(200, "GET", "/v1/offers/make_extra/quote?credits=2000&customer_id=core", "")
	apiDecode(t, r.Body, &q)
	if q.Amount != "1.8" {
		t.Errorf("Make quote of 2,000 credits for core: %s", r.Body)
	}
	// A customer without a plan is refused where the offer says so.
	apiWantErr(t, "Make without a plan", e.call("POST", "/v1/customers/anon/topups", `{"id":"m_anon","offer_id":"make_extra","amount":"2000"}`),
		422, "offer_requires_plan", "offer_id")
	apiWantErr(t, "Mega without a plan", e.call("POST", "/v1/customers/anon/topups", `{"id":"mega_anon","offer_id":"apob_mega"}`),
		422, "offer_requires_plan", "offer_id")
	apiWantErr(t, "a pro-only pack on core", e.call("POST", "/v1/customers/core/topups", `{"id":"pp","offer_id":"pro_pack"}`),
		422, "offer_not_eligible", "offer_id")
	apiWantErr(t, "an unknown offer", e.call("POST", "/v1/customers/core/topups", `{"id":"nope","offer_id":"nope"}`),
		422, "unknown_offer", "offer_id")

	// A replay answers the original purchase; GET reads it back.
	again := e.buy(200, "core", `{"id":"m2000","offer_id":"make_extra","amount":"2000"}`)
	if apiJSON(again) != apiJSON(tu) {
		t.Errorf("replay: %s\nwant %s", apiJSON(again), apiJSON(tu))
	}
	if en := ledgerDetails(t, e, "core")[0]; en.Type != "topup" || apiStrOr(en.OfferID, "") != "make_extra" ||
		en.Price == nil || en.Price.Amount != "1.8" || apiStrOr(en.Source, "") != "topup" {
		t.Errorf("Make top-up entry: %s", apiJSON(en))
	}
	var got offerTopUp
	apiDecode(t, e.must(200, "GET", "/v1/customers/core/topups/m2000", "").Body, &got)
	if apiJSON(got) != apiJSON(tu) {
		t.Errorf("GET: %s\nwant %s", apiJSON(got), apiJSON(tu))
	}
}

// TestCredytTopUp: Credyt's top-up, as its documentation writes it (50
// USD crediting an asset at 1,000,000 per dollar, with a description, an
// expiry and metadata; meterd's id added for idempotency), credits exactly
// 50,000,000 and keeps those fields.
func TestCredytTopUp(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(`{"assets":[{"code":"TOK","scale":0},{"code":"USD","scale":2}],
		"prices":[{"event_type":"chat","account":"default:TOK","unit_price":"1000"}]}`)
	e.newCustomer("cr1", `{}`)
	const body = `{"id":"credyt_1","amount":50,"currency":"USD",
		"destination":{"account_name":"default","asset":"TOK","exchange_rate":1000000},
		"description":"Top-up of 50 USD","credit_expires_at":"2030-01-01T00:00:00Z",
		"metadata":{"order_id":"ord_123"}}`
	tu := e.buy(201, "cr1", body)
	if tu.Amount != "50000000" || tu.Account != "default:TOK" || tu.Price == nil || tu.Price.Amount != "50" ||
		tu.Price.Currency != "USD" || tu.ExchangeRate == nil || *tu.ExchangeRate != "1000000" ||
		tu.Description == nil || *tu.Description != "Top-up of 50 USD" || tu.ExpiresAt == nil ||
		*tu.ExpiresAt != "2030-01-01T00:00:00.000Z" || string(tu.Metadata) != `{"order_id":"ord_123"}` {
		t.Fatalf("Credyt top-up: %s", apiJSON(tu))
	}
	if w, _ := e.wallet("cr1"); w.available("default:TOK") != "50000000" {
		t.Fatalf("available after the Credyt top-up: %s", w.available("default:TOK"))
	}
	// Its retry is the same top-up; the same id with another rate is not.
	if again := e.buy(200, "cr1", body); apiJSON(again) != apiJSON(tu) {
		t.Errorf("replay: %s\nwant %s", apiJSON(again), apiJSON(tu))
	}
	apiWantErr(t, "same id, another rate", e.call("POST", "/v1/customers/cr1/topups",
		`{"id":"credyt_1","amount":50,"currency":"USD","destination":{"asset":"TOK","exchange_rate":999999}}`), 409, "idempotency_conflict", "")
	apiWantErr(t, "no destination", e.call("POST", "/v1/customers/cr1/topups", `{"id":"c2","amount":50,"currency":"USD"}`),
		400, "invalid_request", "destination")
	apiWantErr(t, "zero rate", e.call("POST", "/v1/customers/cr1/topups",
		`{"id":"c3","amount":50,"currency":"USD","destination":{"asset":"TOK","exchange_rate":"0"}}`), 400, "invalid_amount", "destination.exchange_rate")

	// Its usage event, with a description, as written.
	res := e.event1(`{"id":"evt_credyt","customer_id":"cr1","event_type":"chat","description":"Chat completion",
		"occurred_at":"` + apiTime(time.Now()) + `","data":{"model":"m1"}}`)
	if res.Status != "charged" {
		t.Fatalf("Credyt usage event: %s", apiJSON(res))
	}
	// Each ledger entry carries its bucket's source and the description;
	// the top-up's carries what was paid.
	entries := ledgerDetails(t, e, "cr1")
	if len(entries) != 2 {
		t.Fatalf("ledger: %s", apiJSON(entries))
	}
	use, top := entries[0], entries[1]
	if use.Type != "usage" || apiStrOr(use.Source, "") != "topup" || apiStrOr(use.Description, "") != "Chat completion" {
		t.Errorf("usage entry: %s", apiJSON(use))
	}
	if top.Type != "topup" || apiStrOr(top.Description, "") != "Top-up of 50 USD" || top.Price == nil ||
		top.Price.Amount != "50" || top.Price.Currency != "USD" {
		t.Errorf("top-up entry: %s", apiJSON(top))
	}
}

// ledgerEntry is the part of a ledger entry these tests read.
type ledgerEntry struct {
	Type, Amount string
	Source       *string `json:"source"`
	Description  *string `json:"description"`
	OfferID      *string `json:"offer_id"`
	Price        *struct {
		Amount, Currency string
	} `json:"price"`
}

// ledgerDetails reads a customer's ledger, newest first.
func ledgerDetails(t *testing.T, e *apiEnv, customer string) []ledgerEntry {
	t.Helper()
	var page struct{ Entries []ledgerEntry }
	apiDecode(t, e.must(200, "GET", "/v1/customers/"+customer+"/ledger?limit=1000", "").Body, &page)
	return page.Entries
}

// TestOneAccountNaming: "name:ASSET" names an account everywhere; the
// split form (account or account_name, and asset) is still accepted.
func TestOneAccountNaming(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(`{"assets":[{"code":"CREDITS","scale":0},{"code":"TOK","scale":0}]}`)
	e.newCustomer("n1", `{"plan":{"id":"p","allocations":[{"account":"default:CREDITS","amount":"100","period":"month",
		"anchor":"2026-01-01T00:00:00Z"}]},
		"auto_reload":{"account":"team:TOK","threshold":"10","amount":"50","price":{"amount":"1","currency":"USD"}}}`)
	e.topUp("n1", `{"id":"t1","account":"team:TOK","amount":"70"}`)
	e.topUp("n1", `{"id":"t2","account":"team","asset":"TOK","amount":"30"}`)
	e.must(201, "POST", "/v1/customers/n1/adjustments", `{"transaction_id":"a1","account_name":"default:CREDITS","amount":"5"}`)
	w, _ := e.wallet("n1")
	if w.available("default:CREDITS") != "105" || w.available("team:TOK") != "100" {
		t.Fatalf("wallet: %s", apiJSON(w))
	}
	r := e.must(200, "GET", "/v1/customers/n1", "")
	var c struct {
		AutoReload struct{ Account, Asset string } `json:"auto_reload"`
	}
	apiDecode(t, r.Body, &c)
	if c.AutoReload.Account != "team" || c.AutoReload.Asset != "TOK" {
		t.Errorf("auto_reload: %s", r.Body)
	}
	apiWantErr(t, "two assets", e.call("POST", "/v1/customers/n1/topups", `{"id":"t3","account":"team:TOK","asset":"CREDITS","amount":"1"}`),
		400, "invalid_request", "asset")
	apiWantErr(t, "a bad name", e.call("POST", "/v1/customers/n1/adjustments", `{"transaction_id":"a2","account_name":"a b:TOK","amount":"1"}`),
		400, "invalid_request", "account_name")
}

// TestValidationErrorsNameTheirField: a refused value is named by the
// error's field, on every endpoint that takes one.
func TestValidationErrorsNameTheirField(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(`{"assets":[{"code":"CREDITS","scale":0}],"prices":[{"event_type":"task","account":"default:CREDITS","unit_price":"1"}],
		"topup_offers":[{"id":"pack","currency":"USD","account":"default:CREDITS","package":{"price":"5","credits":"500"}}]}`)
	e.newCustomer("v1", `{}`)
	e.topUp("v1", `{"id":"t0","asset":"CREDITS","amount":"10"}`)
	for _, c := range []struct{ method, path, body, field string }{
		{"POST", "/v1/customers/v1/topups", `{"id":"t1","asset":"CREDITS","amount":"0"}`, "amount"},
		{"POST", "/v1/customers/v1/topups", `{"id":"t1","asset":"NOPE","amount":"1"}`, "asset"},
		{"POST", "/v1/customers/v1/topups", `{"id":"t1","asset":"CREDITS","amount":"1","expires_at":"2001-01-01T00:00:00Z"}`, "expires_at"},
		{"POST", "/v1/customers/v1/topups", `{"id":"t1","asset":"CREDITS","amount":"1","expires_at":"period_end"}`, "expires_at"},
		{"POST", "/v1/customers/v1/topups", `{"id":"t1","asset":"CREDITS","amount":"1","price":{"amount":"1.0000000001","currency":"USD"}}`, "price.amount"},
		{"POST", "/v1/customers/v1/topups", `{"id":"t1","offer_id":"pack","amount":"501"}`, "amount"},
		{"POST", "/v1/customers/v1/topups", `{"id":"t1","offer_id":"pack","price":{"amount":"6"}}`, "price.amount"},
		{"POST", "/v1/customers/v1/topups", `{"id":"t1","description":"` + strings.Repeat("x", 5000) + `"}`, "description"},
		{"POST", "/v1/customers/v1/adjustments", `{"transaction_id":"a1","asset":"CREDITS","amount":"1","priority":101}`, "priority"},
		{"POST", "/v1/customers/v1/adjustments", `{"transaction_id":"a1","asset":"CREDITS","amount":"-1000000000000000000000"}`, "amount"},
		{"POST", "/v1/holds", `{"id":"h1","customer_id":"v1","account":"default:CREDITS","amount":"0"}`, "amount"},
		{"POST", "/v1/holds", `{"id":"h1","customer_id":"v1","account":"default:CREDITS","amount":"1","expires_at":"2001-01-01T00:00:00Z"}`, "expires_at"},
		{"PUT", "/v1/customers/v1", `{"plan_change":{"at":"period_end"},"plan":null}`, "plan_change.at"},
		{"PUT", "/v1/customers/v1", `{"auto_reload":{"offer_id":"nope","threshold":"1"}}`, "auto_reload.offer_id"},
		{"PUT", "/v1/customers/v1", `{"auto_reload":{"offer_id":"pack","threshold":"1","price":{"amount":"1","currency":"USD"}}}`, "auto_reload.price"},
		{"GET", "/v1/offers/pack/quote?amount=6", "", "amount"},
		{"GET", "/v1/offers/nope/quote?amount=6", "", "offer_id"},
		{"GET", "/v1/customers/v1/ledger?limit=0", "", "limit"},
	} {
		r := e.call(c.method, c.path, c.body)
		var body apiErrorResp
		if r.Status < 400 || json.Unmarshal(r.Body, &body) != nil || body.Error == nil {
			t.Errorf("%s %s %s: %s, want an error", c.method, c.path, apiTrunc(c.body, 80), apiTrunc(string(r.Body), 200))
			continue
		}
		if body.Error.Field != c.field {
			t.Errorf("%s %s %s: field %q, want %q (%s)", c.method, c.path, apiTrunc(c.body, 80), body.Error.Field, c.field, r.Body)
		}
	}
}
