package ingest

// Acceptance tests of the contract's strict JSON input (API.md,
// "Conventions"): on every endpoint a key given twice, a key in another case
// than documented and invalid UTF-8 are 400 invalid_request naming the
// field, at the top level and nested, and nothing is applied.

import (
	"strings"
	"testing"
)

// strictCase is one request that must be refused with 400 invalid_request
// naming field.
type strictCase struct {
	what, method, path, body, field string
}

func runStrictCases(t *testing.T, e *apiEnv, cases []strictCase) {
	t.Helper()
	for _, c := range cases {
		apiWantErr(t, c.what+": "+c.body, e.call(c.method, c.path, c.body), 400, "invalid_request", c.field)
	}
}

// TestStrictJSONAdminWrites: top-ups, adjustments, customers and holds.
func TestStrictJSONAdminWrites(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "strict"
	e.newCustomer(c, `{"metadata":{"tier":"gold"}}`)
	e.topUp(c, `{"id":"t0","asset":"CREDITS","amount":"1000"}`)
	customerBefore := apiCanon(t, e.must(200, "GET", "/v1/customers/"+c, "").Body)
	ledgerBefore := len(e.ledgerAll(c, ""))

	const topups = "/v1/customers/" + c + "/topups"
	const adjust = "/v1/customers/" + c + "/adjustments"
	const cust = "/v1/customers/" + c
	const fresh = "/v1/customers/strict-new"
	const tu = `"id":"tu1","asset":"CREDITS","amount":"5"`
	const adj = `"transaction_id":"a1","asset":"CREDITS","amount":"5"`
	const alloc = `"asset":"CREDITS","amount":"10","period":"month"`
	const reload = `"asset":"CREDITS","threshold":"1","amount":"10","price":{"amount":"5","currency":"USD"}`
	const hold = `"id":"h1","customer_id":"` + c + `","account":"default:CREDITS","amount":"5"`
	cases := []strictCase{
		// Top-ups.
		{"top-up: amount twice", "POST", topups, `{"id":"tu1","asset":"CREDITS","amount":"5","amount":"999"}`, "amount"},
		{"top-up: id twice", "POST", topups, `{"id":"tu1","id":"tu2","asset":"CREDITS","amount":"5"}`, "id"},
		{"top-up: id twice, once escaped", "POST", topups, `{"id":"tu1","\u0069d":"tu2","asset":"CREDITS","amount":"5"}`, "id"},
		{"top-up: keys in another case", "POST", topups, `{"ID":"t","Amount":"7","ASSET":"CREDITS"}`, "ID"},
		{"top-up: amount in another case", "POST", topups, `{` + tu + `,"Amount":"999"}`, "Amount"},
		{"top-up: price.amount twice", "POST", topups, `{` + tu + `,"price":{"amount":"1","amount":"2","currency":"USD"}}`, "price.amount"},
		{"top-up: price.currency in another case", "POST", topups, `{` + tu + `,"price":{"amount":"1","Currency":"USD"}}`, "price.Currency"},
		{"top-up: price twice", "POST", topups, `{` + tu + `,"price":null,"price":{"amount":"1","currency":"USD"}}`, "price"},
		{"top-up: metadata key twice", "POST", topups, `{` + tu + `,"metadata":{"k":"a","k":"b"}}`, "metadata.k"},
		{"top-up: metadata nested key twice", "POST", topups, `{` + tu + `,"metadata":{"o":{"x":1,"x":2}}}`, "metadata.o.x"},
		{"top-up: metadata key twice in an array", "POST", topups, `{` + tu + `,"metadata":{"a":[0,{"x":1,"x":2}]}}`, "metadata.a[1].x"},
		{"top-up: metadata numeric key twice", "POST", topups, `{` + tu + `,"metadata":{"0":{"1":1,"1":2}}}`, "metadata.0.1"},
		{"top-up: invalid UTF-8 in source", "POST", topups, "{" + tu + ",\"source\":\"a\xffb\"}", "source"},
		{"top-up: unpaired surrogate in source", "POST", topups, `{` + tu + `,"source":"a\ud800b"}`, "source"},
		{"top-up: invalid UTF-8 in metadata value", "POST", topups, "{" + tu + ",\"metadata\":{\"k\":\"\xc3\"}}", "metadata.k"},
		{"top-up: invalid UTF-8 in a metadata key", "POST", topups, "{" + tu + ",\"metadata\":{\"k\xff\":1}}", "metadata"},
		{"top-up: unpaired surrogate in metadata", "POST", topups, `{` + tu + `,"metadata":{"k":["\udc00"]}}`, "metadata.k[0]"},
		{"top-up: invalid UTF-8 in id", "POST", topups, "{\"id\":\"t\xff\",\"asset\":\"CREDITS\",\"amount\":\"5\"}", "id"},

		// Adjustments.
		{"adjustment: amount twice (the issue's)", "POST", adjust, `{"transaction_id":"a","asset":"CREDITS","amount":"5","amount":"-999999"}`, "amount"},
		{"adjustment: amount in another case", "POST", adjust, `{"transaction_id":"a","asset":"CREDITS","amount":"5","Amount":"-999999"}`, "Amount"},
		{"adjustment: transaction_id twice", "POST", adjust, `{"transaction_id":"a","transaction_id":"b","asset":"CREDITS","amount":"5"}`, "transaction_id"},
		{"adjustment: kind in another case", "POST", adjust, `{` + adj + `,"Kind":"promotional"}`, "Kind"},
		{"adjustment: invalid UTF-8 in description", "POST", adjust, "{" + adj + ",\"description\":\"caf\xe9\"}", "description"},
		{"adjustment: unpaired surrogate in description", "POST", adjust, `{` + adj + `,"description":"\ud83d"}`, "description"},
		{"adjustment: invalid UTF-8 in reason", "POST", adjust, "{" + adj + ",\"reason\":\"\xed\xa0\x80\"}", "reason"},
		{"adjustment: invalid UTF-8 in transaction_id", "POST", adjust, "{\"transaction_id\":\"a\xff\",\"asset\":\"CREDITS\",\"amount\":\"5\"}", "transaction_id"},
		{"adjustment: metadata key twice", "POST", adjust, `{` + adj + `,"metadata":{"k":{"deep":[{"z":1,"z":1}]}}}`, "metadata.k.deep[0].z"},

		// Customers: an update of an existing one and a creation.
		{"customer: insufficient_funds twice (the issue's)", "PUT", cust, `{"insufficient_funds":"reject","insufficient_funds":"overdraft"}`, "insufficient_funds"},
		{"customer: insufficient_funds in another case", "PUT", cust, `{"Insufficient_Funds":"overdraft"}`, "Insufficient_Funds"},
		{"customer: status twice", "PUT", fresh, `{"status":"active","status":"paused"}`, "status"},
		{"customer: a body of null, not an object", "PUT", fresh, `null`, ""},
		{"customer: plan.id twice", "PUT", cust, `{"plan":{"id":"p","id":"q","allocations":[{` + alloc + `}]}}`, "plan.id"},
		{"customer: plan allocation amount twice", "PUT", cust, `{"plan":{"id":"p","allocations":[{` + alloc + `,"amount":"99999"}]}}`, "plan.allocations[0].amount"},
		{"customer: plan allocation amount in another case", "PUT", cust, `{"plan":{"id":"p","allocations":[{"asset":"CREDITS","Amount":"10","period":"month"}]}}`, "plan.allocations[0].Amount"},
		{"customer: second plan allocation's period twice", "PUT", fresh, `{"plan":{"id":"p","allocations":[{` + alloc + `},{` + alloc + `,"period":"day"}]}}`, "plan.allocations[1].period"},
		{"customer: plan in another case", "PUT", fresh, `{"Plan":{"id":"p","allocations":[{` + alloc + `}]}}`, "Plan"},
		{"customer: auto_reload threshold twice", "PUT", cust, `{"auto_reload":{` + reload + `,"threshold":"900"}}`, "auto_reload.threshold"},
		{"customer: auto_reload price amount twice", "PUT", cust, `{"auto_reload":{"asset":"CREDITS","threshold":"1","amount":"10","price":{"amount":"5","currency":"USD","amount":"0"}}}`, "auto_reload.price.amount"},
		{"customer: auto_reload mode in another case", "PUT", cust, `{"auto_reload":{` + reload + `,"MODE":"await_payment"}}`, "auto_reload.MODE"},
		{"customer: credit_limit account twice", "PUT", cust, `{"credit_limit":{"default:CREDITS":"10","default:CREDITS":"100000"}}`, "credit_limit.default:CREDITS"},
		{"customer: metadata key twice", "PUT", cust, `{"metadata":{"tier":"gold","tier":"platinum"}}`, "metadata.tier"},
		{"customer: invalid UTF-8 in metadata", "PUT", fresh, "{\"metadata\":{\"name\":\"Jos\xe9\"}}", "metadata.name"},
		{"customer: invalid UTF-8 in a balance alert", "PUT", cust, "{\"balance_alerts\":[\"10\",\"1\xff\"]}", "balance_alerts[1]"},
		{"customer: invalid UTF-8 in plan.id", "PUT", fresh, "{\"plan\":{\"id\":\"p\xff\",\"allocations\":[{" + alloc + "}]}}", "plan.id"},

		// Holds.
		{"hold: amount twice", "POST", "/v1/holds", `{` + hold + `,"amount":"900"}`, "amount"},
		{"hold: customer_id twice", "POST", "/v1/holds", `{` + hold + `,"customer_id":"someone-else"}`, "customer_id"},
		{"hold: customer_id in another case", "POST", "/v1/holds", `{"id":"h1","Customer_Id":"` + c + `","account":"default:CREDITS","amount":"5"}`, "Customer_Id"},
		{"hold: invalid UTF-8 in id", "POST", "/v1/holds", "{\"id\":\"h\xff\",\"customer_id\":\"" + c + "\",\"account\":\"default:CREDITS\",\"amount\":\"5\"}", "id"},
		{"hold: unpaired surrogate in account", "POST", "/v1/holds", `{"id":"h1","customer_id":"` + c + `","account":"default:CREDITS\udfff","amount":"5"}`, "account"},
	}
	runStrictCases(t, e, cases)

	// Nothing was applied.
	if got := apiCanon(t, e.must(200, "GET", "/v1/customers/"+c, "").Body); got != customerBefore {
		t.Errorf("customer changed by refused requests:\n%s\nwas\n%s", got, customerBefore)
	}
	if n := len(e.ledgerAll(c, "")); n != ledgerBefore {
		t.Errorf("ledger has %d entries after refused requests, had %d", n, ledgerBefore)
	}
	w, _ := e.wallet(c)
	if a := w.account("default:CREDITS"); a == nil || len(a.Buckets) != 1 || a.Held != "0" {
		t.Errorf("wallet changed by refused requests: %+v", w)
	}
	apiWantDec(t, "available after refused requests", w.available("default:CREDITS"), "1000")
	apiWantErr(t, "customer created by a refused request", e.call("GET", fresh, ""), 404, "unknown_customer", "")
	apiWantErr(t, "hold placed by a refused request", e.call("GET", "/v1/holds/h1", ""), 404, "not_found", "")

	// What is strict is the JSON, not the data: metadata keys differing only
	// in case are distinct keys, escapes are fine, and the canonical form of
	// metadata (sorted keys, numbers as written) is kept.
	r := e.topUp(c, `{"id":"ok1","asset":"CREDITS","amount":"5","source":"caf\u00e9 \ud83d\ude00","metadata":{"k":1.50,"K":"x","\u006b2":[{"a":1},{"a":2}]}}`)
	if r.Status != "completed" {
		t.Errorf("valid top-up: %+v", r)
	}
	w, _ = e.wallet(c)
	var md string
	for _, b := range w.account("default:CREDITS").Buckets {
		if b.ID == r.BucketID {
			md = string(b.Metadata)
			if b.Source != "café 😀" {
				t.Errorf("source stored as %q", b.Source)
			}
		}
	}
	if md != `{"K":"x","k":1.50,"k2":[{"a":1},{"a":2}]}` {
		t.Errorf("metadata stored as %s", md)
	}
	e.must(200, "PUT", "/v1/customers/"+c, `{"metadata":{"Tier":"gold","tier":"silver"}}`)
}

// TestStrictJSONTestClockAndPricing: the test clock's body, the pricing
// document (PUT /v1/pricing) and the simulation body.
func TestStrictJSONTestClockAndPricing(t *testing.T) {
	e, clk := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	before := clk.Now()
	version := func() string {
		t.Helper()
		var v struct {
			Version any `json:"version"`
		}
		apiDecode(t, e.must(200, "GET", "/v1/pricing", "").Body, &v)
		return apiJSON(v.Version)
	}
	v0 := version()
	const price = `"account":"default:CREDITS","unit_price":"1"`
	const assets = `"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}]`
	cases := []strictCase{
		{"test clock: advance twice", "POST", "/v1/test-clock", `{"advance":"1h","advance":"1000h"}`, "advance"},
		{"test clock: advance in another case", "POST", "/v1/test-clock", `{"Advance":"1h"}`, "Advance"},
		{"test clock: now in another case", "POST", "/v1/test-clock", `{"NOW":"2026-12-01T00:00:00Z"}`, "NOW"},
		{"test clock: invalid UTF-8", "POST", "/v1/test-clock", "{\"now\":\"2026-12-01T00:00:00Z\xff\"}", "now"},

		{"pricing: assets twice", "PUT", "/v1/pricing", `{` + assets + `,` + assets + `}`, "assets"},
		{"pricing: prices in another case", "PUT", "/v1/pricing", `{` + assets + `,"Prices":[]}`, "Prices"},
		{"pricing: unit_price in another case", "PUT", "/v1/pricing", `{` + assets + `,"prices":[{"event_type":"e","account":"default:CREDITS","Unit_Price":"1"}]}`, "prices[0].Unit_Price"},
		{"pricing: unit_price key twice", "PUT", "/v1/pricing", `{` + assets + `,"prices":[{"event_type":"e","account":"default:CREDITS","dimensions":["m"],"unit_price":{"a":"1","a":"0"}}]}`, "prices[0].unit_price.a"},
		{"pricing: invalid UTF-8 in an asset code", "PUT", "/v1/pricing", "{\"assets\":[{\"code\":\"CR\xffDITS\",\"scale\":0}]}", "assets[0].code"},
		{"pricing: unpaired surrogate in an event type", "PUT", "/v1/pricing", `{` + assets + `,"prices":[{"event_type":"e\ud800",` + price + `}]}`, "prices[0].event_type"},
		{"pricing: surrogate paired with a non-surrogate", "PUT", "/v1/pricing", `{` + assets + `,"prices":[{"event_type":"e\ud800\u0041",` + price + `}]}`, "prices[0].event_type"},
		{"pricing: unpaired surrogate in a dimension key", "PUT", "/v1/pricing", `{` + assets + `,"prices":[{"event_type":"e","account":"default:CREDITS","dimensions":["m"],"unit_price":{"\udc00":"1","*":"2"}}]}`, "prices[0].unit_price"},

		{"simulate: events twice", "POST", "/v1/pricing/simulate", `{"events":[],"events":[{"id":"x","customer_id":"c","event_type":"api_call"}]}`, "events"},
		{"simulate: events in another case", "POST", "/v1/pricing/simulate", `{"Events":[]}`, "Events"},
	}
	runStrictCases(t, e, cases)
	if got := clk.Now(); got != before {
		t.Errorf("the test clock moved to %d on refused requests (was %d)", got, before)
	}
	if v := version(); v != v0 {
		t.Errorf("pricing version %s after refused documents, was %s", v, v0)
	}

	// The simulation decodes events as /v1/events does: a key twice or in
	// another case inside an event rejects that event; invalid UTF-8 refuses
	// the request.
	var rs apiResults
	apiDecode(t, e.must(200, "POST", "/v1/pricing/simulate",
		`{"events":[{"id":"a","customer_id":"c","event_type":"api_call","event_type":"big_job"},{"id":"b","customer_id":"c","Event_Type":"api_call"}]}`).Body, &rs)
	if len(rs.Results) != 2 {
		t.Fatalf("simulate: %+v", rs)
	}
	for i, r := range rs.Results {
		if r.Status != "rejected" || r.Error == nil || r.Error.Code != "invalid_event" || r.Error.Field == "" {
			t.Errorf("simulate: event %d with a key twice or in another case: %+v", i, r)
		}
	}
	if !strings.Contains(rs.Results[1].Error.Field, "Event_Type") {
		t.Errorf("simulate: the key in another case is not named: %+v", rs.Results[1])
	}
	r := e.call("POST", "/v1/pricing/simulate", "{\"events\":[{\"id\":\"a\",\"customer_id\":\"c\",\"event_type\":\"api_call\",\"subject\":\"\xff\"}]}")
	if r.Status != 400 {
		t.Errorf("simulate with invalid UTF-8: %s", r)
	}
}
