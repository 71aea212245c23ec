package ingest

// HTTP acceptance tests of meterd's core API, against /work/shared/API.md
// (the contract). Each TestAPI* function is one acceptance point; each runs a
// real engine and a real server on loopback (see api_helpers_test.go).

import (
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// apiAssets are the contract's three assets.
const apiAssets = `[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}]`

// apiCreditsPricing prices api_call at 2 CREDITS per event, big_job at
// 1000000 CREDITS per event, and tokens_used at 1 CREDIT per token.
const apiCreditsPricing = `{"assets":` + apiAssets + `,"prices":[
 {"event_type":"api_call","account":"default:CREDITS","unit_price":"2"},
 {"event_type":"big_job","account":"default:CREDITS","unit_price":"1000000"},
 {"event_type":"tokens_used","account":"default:CREDITS","components":[{"field":"tokens","package_size":"1","unit_price":"1"}]}]}`

// apiContractPricing is the pricing example of the contract, verbatim.
const apiContractPricing = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],
 "prices":[
  {"event_type":"message_completed","account":"default:USD",
   "dimensions":["model"],
   "components":[
     {"field":"input_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"2.00","*":"1.25"}},
     {"field":"output_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"8.00","*":"5.00"}}]},
  {"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"}],
 "topup_offers":[{"currency":"USD","account":"default:CREDITS","min":"10","max":"10000",
   "tiers":[{"from":"10","credits_per_unit":"100"},{"from":"300","credits_per_unit":"125"}]}]}`

// partsOf returns a result's single charge as "bucket:amount" strings.
func partsOf(t *testing.T, r apiResult) []string {
	t.Helper()
	if r.Status != "charged" || len(r.Charges) != 1 {
		t.Fatalf("result %+v: want charged with one charge", r)
	}
	var out []string
	for _, p := range r.Charges[0].Buckets {
		out = append(out, apiStrOr(p.BucketID, "<debt>")+":"+p.Amount)
	}
	return out
}

// TestAPISeedScenario: a promotional bucket (expiring in 7 days), a plan
// bucket (expiring at month end) and a top-up (never expiring) are drained
// in exactly that order; an event spanning two buckets produces two ledger
// parts; once drained, the reject policy answers insufficient_funds and
// changes nothing.
func TestAPISeedScenario(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(`{"assets":` + apiAssets + `,"prices":[{"event_type":"api_call","account":"default:CREDITS","unit_price":"2"}]}`)
	const c = "cust_seed"
	e.newCustomer(c, `{"insufficient_funds":"reject"}`)

	now := time.Now().UTC()
	promoExp := now.Add(7 * 24 * time.Hour)
	planExp := time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC) // end of the current month
	if planExp.Sub(now) < 7*24*time.Hour {
		planExp = now.Add(30 * 24 * time.Hour)
	}
	e.must(201, "POST", "/v1/customers/"+c+"/adjustments", fmt.Sprintf(
		`{"transaction_id":"promo_1","asset":"CREDITS","amount":"3","reason":"promo","kind":"promotional","expires_at":%q}`, apiTime(promoExp)))
	e.must(201, "POST", "/v1/customers/"+c+"/adjustments", fmt.Sprintf(
		`{"transaction_id":"plan_1","asset":"CREDITS","amount":5,"reason":"plan","kind":"plan","expires_at":%q}`, apiTime(planExp)))
	tu := e.topUp(c, `{"id":"top_1","account":"default","asset":"CREDITS","amount":"4","price":{"amount":"15.00","currency":"USD"},"expires_at":null}`)
	if tu.Status != "completed" || tu.BucketID == "" || tu.ExpiresAt != nil {
		t.Fatalf("top-up answer %+v: want completed with a bucket id and no expiry", tu)
	}

	w, _ := e.wallet(c)
	a := w.account("default:CREDITS")
	if a == nil || len(a.Buckets) != 3 {
		t.Fatalf("wallet %+v: want default:CREDITS with 3 buckets", w)
	}
	apiWantDec(t, "available after grants", a.Available, "12")
	// The wallet lists buckets in consumption order: promotional, plan, recharge.
	kinds := []string{a.Buckets[0].Kind, a.Buckets[1].Kind, a.Buckets[2].Kind}
	if !slices.Equal(kinds, []string{"promotional", "plan", "recharge"}) {
		t.Errorf("bucket kinds in wallet order = %v, want promotional, plan, recharge", kinds)
	}
	ids := map[string]string{}
	for _, b := range a.Buckets {
		ids[b.Kind] = b.ID
		wantPrio := map[string]string{"promotional": "10", "plan": "20", "recharge": "30"}[b.Kind]
		if b.Priority.String() != wantPrio {
			t.Errorf("bucket %s (%s) priority %s, want %s", b.ID, b.Kind, b.Priority, wantPrio)
		}
	}
	promo, plan, top := ids["promotional"], ids["plan"], ids["recharge"]
	if top != tu.BucketID {
		t.Errorf("recharge bucket %q, top-up answered bucket_id %q", top, tu.BucketID)
	}
	if b := a.Buckets[0]; apiStrOr(b.ExpiresAt, "") != apiTime(promoExp) {
		t.Errorf("promotional bucket expires_at %v, want %s", apiStrOr(b.ExpiresAt, "null"), apiTime(promoExp))
	}
	if b := a.Buckets[2]; b.ExpiresAt != nil {
		t.Errorf("top-up bucket expires_at %s, want null", *b.ExpiresAt)
	}

	steps := []struct {
		parts     []string
		remaining map[string]string // per bucket id after the event; "0": drained (absent or 0)
		available string
	}{
		{[]string{promo + ":2"}, map[string]string{promo: "1", plan: "5", top: "4"}, "10"},
		{[]string{promo + ":1", plan + ":1"}, map[string]string{promo: "0", plan: "4", top: "4"}, "8"},
		{[]string{plan + ":2"}, map[string]string{promo: "0", plan: "2", top: "4"}, "6"},
		{[]string{plan + ":2"}, map[string]string{promo: "0", plan: "0", top: "4"}, "4"},
		{[]string{top + ":2"}, map[string]string{promo: "0", plan: "0", top: "2"}, "2"},
		{[]string{top + ":2"}, map[string]string{promo: "0", plan: "0", top: "0"}, "0"},
	}
	for i, st := range steps {
		id := fmt.Sprintf("evt_%d", i+1)
		r := e.event1(fmt.Sprintf(`{"id":%q,"customer_id":%q,"event_type":"api_call","subject":"s1"}`, id, c))
		if got := partsOf(t, r); !slices.Equal(got, st.parts) {
			t.Errorf("%s: charge parts %v, want %v", id, got, st.parts)
		}
		apiWantDec(t, id+" charge amount", r.Charges[0].Amount, "2")
		if r.Charges[0].Account != "default:CREDITS" {
			t.Errorf("%s: charge account %q", id, r.Charges[0].Account)
		}
		apiWantDec(t, id+" balances[default:CREDITS]", r.Balances["default:CREDITS"], st.available)
		w, _ := e.wallet(c)
		a := w.account("default:CREDITS")
		apiWantDec(t, id+" wallet available", a.Available, st.available)
		for bid, want := range st.remaining {
			got := "0"
			for _, b := range a.Buckets {
				if b.ID == bid {
					got = b.Remaining
				}
			}
			apiWantDec(t, fmt.Sprintf("%s: bucket %s remaining", id, bid), got, want)
		}
	}

	// The event that spanned promotional -> plan has two usage entries.
	ledger := e.ledgerAll(c, "")
	var spanning []apiEntry
	usage := 0
	for _, en := range ledger {
		if en.Type == "usage" {
			usage++
		}
		if apiStrOr(en.EventID, "") == "evt_2" {
			spanning = append(spanning, en)
		}
	}
	if usage != 7 {
		t.Errorf("ledger has %d usage entries, want 7 (6 events, one of them in two parts)", usage)
	}
	if len(spanning) != 2 {
		t.Fatalf("ledger entries of evt_2: %+v, want 2", spanning)
	}
	// Newest first: the plan part was written after the promotional part.
	got := []string{apiStrOr(spanning[1].BucketID, "") + ":" + spanning[1].Amount, apiStrOr(spanning[0].BucketID, "") + ":" + spanning[0].Amount}
	if !slices.Equal(got, []string{promo + ":-1", plan + ":-1"}) {
		t.Errorf("evt_2 ledger parts (oldest first) %v, want [%s:-1 %s:-1]", got, promo, plan)
	}
	for _, en := range spanning {
		if en.Type != "usage" || en.Account != "default:CREDITS" {
			t.Errorf("evt_2 entry %+v: want a usage entry of default:CREDITS", en)
		}
	}
	// The ledger sums to available (12 granted - 12 used).
	sum := new(big.Rat)
	for _, en := range ledger {
		sum.Add(sum, apiRat(t, en.Amount))
	}
	if sum.Sign() != 0 {
		t.Errorf("ledger sums to %s, want 0 (= available)", sum.RatString())
	}
	if len(ledger) > 0 {
		apiWantDec(t, "newest entry balance_after", ledger[0].BalanceAfter, "0")
	}

	// Drained: reject policy refuses and changes nothing.
	_, walletBefore := e.wallet(c)
	ledgerBefore := e.must(200, "GET", "/v1/customers/"+c+"/ledger", "").Body
	r := e.event1(fmt.Sprintf(`{"id":"evt_7","customer_id":%q,"event_type":"api_call"}`, c))
	apiWantRejected(t, "evt_7 on a drained wallet", r, "insufficient_funds", "", "")
	_, walletAfter := e.wallet(c)
	ledgerAfter := e.must(200, "GET", "/v1/customers/"+c+"/ledger", "").Body
	if string(walletBefore) != string(walletAfter) {
		t.Errorf("a rejected event changed the wallet:\nbefore %s\nafter  %s", walletBefore, walletAfter)
	}
	if string(ledgerBefore) != string(ledgerAfter) {
		t.Errorf("a rejected event changed the ledger:\nbefore %s\nafter  %s", apiTrunc(string(ledgerBefore), 600), apiTrunc(string(ledgerAfter), 600))
	}
	e.checkInvariants(c)

	// The rest of the order: an explicit priority overrides the kind's;
	// within a priority, expires_at ascending, never-expiring last, then
	// effective_at. One event drawing on five buckets has five parts.
	const o = "cust_order"
	e.putPricing(`{"assets":` + apiAssets + `,"prices":[{"event_type":"api_call","account":"default:CREDITS","unit_price":"2"},
	 {"event_type":"tokens_used","account":"default:CREDITS","components":[{"field":"tokens","package_size":"1","unit_price":"1"}]}]}`)
	e.newCustomer(o, `{}`)
	adj := func(id, extra string) {
		e.must(201, "POST", "/v1/customers/"+o+"/adjustments", `{"transaction_id":"`+id+`","asset":"CREDITS","amount":"1","kind":"recharge"`+extra+`}`)
	}
	adj("r_never", ``)
	adj("r_late", `,"expires_at":"`+apiTime(now.Add(10*24*time.Hour))+`"`)
	adj("r_early", `,"expires_at":"`+apiTime(now.Add(5*24*time.Hour).In(time.FixedZone("", 2*3600)))+`"`)
	adj("p5", `,"priority":5`)
	e.topUp(o, `{"id":"t_last","asset":"CREDITS","amount":"1"}`)
	w, _ = e.wallet(o)
	ref := map[string]string{}
	var refs []string
	for _, b := range w.account("default:CREDITS").Buckets {
		ref[b.ID] = b.Reference
		refs = append(refs, b.Reference)
	}
	want := []string{"p5", "r_early", "r_late", "r_never", "t_last"}
	if !slices.Equal(refs, want) {
		t.Errorf("wallet bucket order (by reference) %v, want %v", refs, want)
	}
	r = e.event1(`{"id":"all5","customer_id":"` + o + `","event_type":"tokens_used","data":{"tokens":5}}`)
	var drawn []string
	for _, p := range partsOf(t, r) {
		id, amount, _ := strings.Cut(p, ":")
		drawn = append(drawn, ref[id]+":"+amount)
	}
	if !slices.Equal(drawn, []string{"p5:1", "r_early:1", "r_late:1", "r_never:1", "t_last:1"}) {
		t.Errorf("parts of an event drawing on five buckets %v, want one unit from each of %v in that order", drawn, want)
	}
	var parts int
	for _, en := range e.ledgerAll(o, "") {
		if apiStrOr(en.EventID, "") == "all5" {
			parts++
		}
	}
	if parts != 5 {
		t.Errorf("ledger entries of the five-part event: %d, want 5", parts)
	}
	e.checkInvariants(o)
}

// TestAPIIdempotency: duplicates, conflicts, a mixed batch, and idempotent
// top-ups and adjustments.
func TestAPIIdempotency(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(apiCreditsPricing)
	const c = "cust_idem"
	e.newCustomer(c, `{}`)

	// Top-ups: first 201, repeat 200 with the same body, other content 409.
	const topBody = `{"id":"top_1","asset":"CREDITS","amount":"10","price":{"amount":"15.00","currency":"USD"},"source":"custom_credits","metadata":{"k":"v","z":1}}`
	first := e.must(201, "POST", "/v1/customers/"+c+"/topups", topBody)
	again := e.must(200, "POST", "/v1/customers/"+c+"/topups", topBody)
	if apiCanon(t, first.Body) != apiCanon(t, again.Body) {
		t.Errorf("repeated top-up: body\n%s\nwant the original\n%s", again.Body, first.Body)
	}
	var tu apiTopUp
	apiDecode(t, first.Body, &tu)
	apiWantTime(t, "top-up created_at", tu.CreatedAt)
	// The same content written otherwise (key order, spacing, an integer
	// amount) is the same top-up...
	const topBody2 = `{ "metadata" : {"k":"v","z":1}, "source":"custom_credits", "amount": 10, "price":{"currency":"USD","amount":"15.00"}, "asset":"CREDITS", "id":"top_1" }`
	again = e.call("POST", "/v1/customers/"+c+"/topups", topBody2)
	if again.Status != 200 || apiCanon(t, again.Body) != apiCanon(t, first.Body) {
		t.Errorf("top-up repeated with other key order and spacing: %s, want 200 and the original body %s", again, first.Body)
	}
	// ...and so is one whose metadata lists the same members in another order
	// (a JSON object is unordered; events already treat data this way).
	const topBody3 = `{"id":"top_1","asset":"CREDITS","amount":"10","price":{"amount":"15.00","currency":"USD"},"source":"custom_credits","metadata":{"z":1,"k":"v"}}`
	again = e.call("POST", "/v1/customers/"+c+"/topups", topBody3)
	if again.Status != 200 || apiCanon(t, again.Body) != apiCanon(t, first.Body) {
		t.Errorf("top-up repeated with its metadata members in another order: %s, want 200 and the original body %s", again, first.Body)
	}
	r := e.call("POST", "/v1/customers/"+c+"/topups", strings.Replace(topBody, `"10"`, `"11"`, 1))
	apiWantErr(t, "top-up id reused with another amount", r, 409, "idempotency_conflict", "")
	w, _ := e.wallet(c)
	apiWantDec(t, "available after the top-up and its repeats", w.available("default:CREDITS"), "10")
	if n := len(w.account("default:CREDITS").Buckets); n != 1 {
		t.Errorf("the repeated top-up left %d buckets, want 1", n)
	}

	// Adjustments likewise.
	const adjBody = `{"transaction_id":"adj_1","account_name":"default","asset":"USD","amount":"25","description":"Ad-hoc usage","reason":"external_topup","kind":"recharge","metadata":{"psp":"stripe","ref":"ch_1"}}`
	first = e.must(201, "POST", "/v1/customers/"+c+"/adjustments", adjBody)
	again = e.must(200, "POST", "/v1/customers/"+c+"/adjustments", adjBody)
	if apiCanon(t, first.Body) != apiCanon(t, again.Body) {
		t.Errorf("repeated adjustment: body\n%s\nwant the original\n%s", again.Body, first.Body)
	}
	var adj struct {
		ID        string `json:"id"`
		CreatedAt string `json:"created_at"`
	}
	apiDecode(t, first.Body, &adj)
	if adj.ID != "adj_1" || adj.CreatedAt == "" {
		t.Errorf("adjustment answer %s: want id adj_1 and created_at", first.Body)
	}
	again = e.call("POST", "/v1/customers/"+c+"/adjustments", strings.Replace(adjBody, `{"psp":"stripe","ref":"ch_1"}`, `{"ref":"ch_1","psp":"stripe"}`, 1))
	if again.Status != 200 || apiCanon(t, again.Body) != apiCanon(t, first.Body) {
		t.Errorf("adjustment repeated with its metadata members in another order: %s, want 200 and the original body %s", again, first.Body)
	}
	r = e.call("POST", "/v1/customers/"+c+"/adjustments", strings.Replace(adjBody, `"25"`, `"26"`, 1))
	apiWantErr(t, "adjustment id reused with another amount", r, 409, "idempotency_conflict", "")
	w, _ = e.wallet(c)
	apiWantDec(t, "USD available after the adjustment and its repeats", w.available("default:USD"), "25")

	// The same batch twice: duplicates with the original charges.
	batch := fmt.Sprintf(`{"customer_id":%q,"events":[
	 {"id":"e1","event_type":"api_call","subject":"chat_1","data":{"a":1,"b":"x"}},
	 {"id":"e2","event_type":"api_call","data":{"a":2,"b":"y","nested":{"p":[1,2],"q":true}}},
	 {"id":"e3","event_type":"tokens_used","data":{"tokens":2}}]}`, c)
	res1 := e.postEvents(batch, 3)
	for i, r := range res1 {
		if r.Status != "charged" {
			t.Fatalf("first send, event %d: %+v, want charged", i, r)
		}
	}
	res2 := e.postEvents(batch, 3)
	for i, r := range res2 {
		if r.Status != "duplicate" {
			t.Errorf("second send, event %d: status %q, want duplicate", i, r.Status)
		}
		if apiStrOr(r.ID, "") != apiStrOr(res1[i].ID, "") {
			t.Errorf("second send, event %d: id %v, want %v", i, apiStrOr(r.ID, "null"), apiStrOr(res1[i].ID, ""))
		}
		g, _ := json.Marshal(r.Charges)
		o, _ := json.Marshal(res1[i].Charges)
		if string(g) != string(o) {
			t.Errorf("second send, event %d: charges %s, want the original %s", i, g, o)
		}
	}
	w, _ = e.wallet(c)
	apiWantDec(t, "available after the batch and its resend", w.available("default:CREDITS"), "4") // 10 - 2 - 2 - 2

	// Same content, other whitespace and key order (top level and in data): a duplicate.
	r1 := e.event1(fmt.Sprintf("{ \"data\" : {\"nested\":{\"q\":true, \"p\":[1, 2]},\n \"b\":\"y\",\"a\":2},\t\"event_type\":\"api_call\", \"customer_id\":%q, \"id\":\"e2\" }", c))
	if r1.Status != "duplicate" {
		t.Errorf("e2 resent with other whitespace and key order: %+v, want duplicate", r1)
	}
	// Same id, other content: a conflict.
	r1 = e.event1(fmt.Sprintf(`{"id":"e1","customer_id":%q,"event_type":"api_call","subject":"chat_2","data":{"a":1,"b":"x"}}`, c))
	apiWantRejected(t, "e1 resent with another subject", r1, "idempotency_conflict", "", "")
	r1 = e.event1(fmt.Sprintf(`{"id":"e3","customer_id":%q,"event_type":"tokens_used","data":{"tokens":3}}`, c))
	apiWantRejected(t, "e3 resent with other data", r1, "idempotency_conflict", "", "")
	w, _ = e.wallet(c)
	apiWantDec(t, "available after conflicts", w.available("default:CREDITS"), "4")

	// Event ids are unique per customer: another customer may use e1.
	e.newCustomer("cust_idem_2", `{}`)
	e.topUp("cust_idem_2", `{"id":"top_1","asset":"CREDITS","amount":"5"}`)
	if r := e.event1(`{"id":"e1","customer_id":"cust_idem_2","event_type":"api_call"}`); r.Status != "charged" {
		t.Errorf("e1 for another customer: %+v, want charged", r)
	}
	// An empty batch is a batch with no results.
	if rs := e.postEvents(`{"events":[]}`, 0); len(rs) != 0 {
		t.Errorf("empty batch: %+v", rs)
	}

	// A mixed batch: one precise result per event, in order; only the valid ones apply.
	ledgerBefore := e.ledgerAll(c, "default:CREDITS")
	mixed := fmt.Sprintf(`{"customer_id":%q,"events":[
	 {"id":"m1","event_type":"api_call"},
	 {"id":"m2","data":{"a":1}},
	 {"id":"bad id!","event_type":"api_call"},
	 {"id":"m4","event_type":"tokens_used","data":{"tokens":-5}},
	 {"id":"e1","event_type":"api_call","subject":"chat_1","data":{"b":"x","a":1}},
	 {"id":"m5","event_type":"big_job"},
	 {"id":"m6","event_type":"tokens_used","data":{"tokens":1}},
	 {"id":"m1","event_type":"api_call"},
	 {"id":"m7","customer_id":"nobody","event_type":"api_call"},
	 {"id":"m6","event_type":"tokens_used","data":{"tokens":2}}]}`, c)
	res := e.postEvents(mixed, 10)
	wantID := []string{"m1", "m2", "bad id!", "m4", "e1", "m5", "m6", "m1", "m7", "m6"}
	for i, r := range res {
		if apiStrOr(r.ID, "") != wantID[i] {
			t.Errorf("mixed batch result %d: id %v, want %q", i, apiStrOr(r.ID, "null"), wantID[i])
		}
	}
	if res[0].Status != "charged" || len(res[0].Charges) != 1 || res[0].Charges[0].Amount != "2" {
		t.Errorf("m1: %+v, want charged 2", res[0])
	}
	apiWantRejected(t, "m2 (no event_type)", res[1], "invalid_event", ReasonMissingEventType, "events[1].event_type")
	apiWantRejected(t, "bad id!", res[2], "invalid_event", ReasonInvalidID, "events[2].id")
	apiWantRejected(t, "m4 (negative tokens)", res[3], "invalid_event", "", "")
	if res[4].Status != "duplicate" {
		t.Errorf("e1 in the mixed batch: %+v, want duplicate", res[4])
	} else if g, o := apiJSON(res[4].Charges), apiJSON(res1[0].Charges); g != o {
		t.Errorf("e1 duplicate charges %s, want the original %s", g, o)
	}
	apiWantRejected(t, "m5 (unaffordable)", res[5], "insufficient_funds", "", "")
	if res[6].Status != "charged" || len(res[6].Charges) != 1 || res[6].Charges[0].Amount != "1" {
		t.Errorf("m6: %+v, want charged 1", res[6])
	} else {
		apiWantDec(t, "m6 balance after", res[6].Balances["default:CREDITS"], "1")
	}
	if res[7].Status != "duplicate" {
		t.Errorf("m1 repeated in the same batch: %+v, want duplicate", res[7])
	}
	apiWantRejected(t, "m7 (unknown customer)", res[8], "unknown_customer", "", "")
	apiWantRejected(t, "m6 again in the same batch with other data", res[9], "idempotency_conflict", "", "")

	w, _ = e.wallet(c)
	apiWantDec(t, "available after the mixed batch", w.available("default:CREDITS"), "1") // 4 - 2 (m1) - 1 (m6)
	ledgerAfter := e.ledgerAll(c, "default:CREDITS")
	var added []string
	for _, en := range ledgerAfter[:len(ledgerAfter)-len(ledgerBefore)] {
		added = append(added, en.Type+":"+apiStrOr(en.EventID, "")+":"+en.Amount)
	}
	if !slices.Equal(added, []string{"usage:m6:-1", "usage:m1:-2"}) {
		t.Errorf("ledger entries added by the mixed batch (newest first) %v, want [usage:m6:-1 usage:m1:-2]", added)
	}
	// A rejected event left no idempotency record behind: m5, now affordable, is charged.
	e.topUp(c, `{"id":"top_2","asset":"CREDITS","amount":"1000000"}`)
	if r := e.event1(fmt.Sprintf(`{"id":"m5","customer_id":%q,"event_type":"big_job"}`, c)); r.Status != "charged" {
		t.Errorf("m5 resent once affordable: %+v, want charged", r)
	}
	e.checkInvariants(c)
	e.checkInvariants("cust_idem_2")
}

// TestAPIPricingExact: exact pricing, simulation, pricing versions and the
// carry of sub-unit remainders through HTTP.
func TestAPIPricingExact(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	v1 := e.putPricing(apiContractPricing)
	const c = "cust_price"
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"usd_1","asset":"USD","amount":"100"}`)

	occurred := apiTime(time.Now().Add(-time.Minute))
	gpt := func(id string) string {
		return fmt.Sprintf(`{"id":%q,"customer_id":%q,"event_type":"message_completed","occurred_at":%q,"subject":"chat_5f53","data":{"model":"gpt-4-1","input_tokens":2353,"output_tokens":34697},"hold_id":null}`,
			id, c, occurred)
	}
	other := func(id string) string {
		return fmt.Sprintf(`{"id":%q,"customer_id":%q,"event_type":"message_completed","data":{"model":"claude-x","input_tokens":2353,"output_tokens":34697}}`, id, c)
	}

	// Simulate first: the same prices, nothing applied.
	walletBefore := e.must(200, "GET", "/v1/customers/"+c+"/wallet", "").Body
	sim := e.must(200, "POST", "/v1/pricing/simulate", `{"events":[`+gpt("evt_1")+`,`+other("evt_2")+`]}`)
	var simRes apiResults
	apiDecode(t, sim.Body, &simRes)
	if len(simRes.Results) != 2 {
		t.Fatalf("simulate: %s, want 2 results", sim.Body)
	}
	for i, want := range []string{"0.282282", "0.176426"} {
		r := simRes.Results[i]
		if len(r.Charges) != 1 || r.Charges[0].Amount != want || r.Charges[0].Account != "default:USD" {
			t.Errorf("simulate result %d: %+v, want one default:USD charge of %s", i, r, want)
		}
	}
	if len(simRes.Results[1].Charges) == 1 && simRes.Results[1].Charges[0].Exact != "" {
		apiWantDec(t, "simulated exact amount for the * model", simRes.Results[1].Charges[0].Exact, "0.17642625")
	}
	if walletAfter := e.must(200, "GET", "/v1/customers/"+c+"/wallet", "").Body; string(walletAfter) != string(walletBefore) {
		t.Errorf("simulate changed the wallet:\nbefore %s\nafter  %s", walletBefore, walletAfter)
	}

	// The real charge: exactly 0.282282 USD, recording the pricing version.
	r := e.event1(gpt("evt_1"))
	if r.Status != "charged" {
		t.Fatalf("evt_1 after simulate: %+v, want charged (simulate must not record the event)", r)
	}
	if len(r.Charges) != 1 || r.Charges[0].Amount != "0.282282" || r.Charges[0].Account != "default:USD" {
		t.Errorf("evt_1 charges %+v, want exactly 0.282282 on default:USD", r.Charges)
	}
	apiWantDec(t, "evt_1 balance after", r.Balances["default:USD"], "99.717718")
	if r.PricingVersion.String() != v1 {
		t.Errorf("evt_1 pricing_version %q, want %s (the PUT's version)", r.PricingVersion, v1)
	}
	r = e.event1(other("evt_2"))
	if len(r.Charges) != 1 || r.Charges[0].Amount != "0.176426" {
		t.Errorf("evt_2 (model * ) charges %+v, want 0.176426", r.Charges)
	}
	entryVersion := func(eventID string) string {
		for _, en := range e.ledgerAll(c, "") {
			if apiStrOr(en.EventID, "") == eventID {
				return en.PricingVersion.String()
			}
		}
		t.Errorf("no ledger entry for %s", eventID)
		return ""
	}
	if got := entryVersion("evt_1"); got != v1 {
		t.Errorf("ledger entry of evt_1: pricing_version %q, want %s", got, v1)
	}

	// A second PUT: the next charge records the new version; GET returns the new document.
	doc2 := strings.Replace(apiContractPricing, `"gpt-4-1":"2.00"`, `"gpt-4-1":"3.00"`, 1)
	v2 := e.putPricing(doc2)
	n1, _ := strconv.Atoi(v1)
	if n2, _ := strconv.Atoi(v2); n2 <= n1 {
		t.Errorf("second PUT returned version %s, want above %s", v2, v1)
	}
	r = e.event1(gpt("evt_3"))
	if len(r.Charges) != 1 || r.Charges[0].Amount != "0.284635" { // 2353*3/1e6 + 34697*8/1e6
		t.Errorf("evt_3 under the new pricing: %+v, want 0.284635", r.Charges)
	}
	if r.PricingVersion.String() != v2 {
		t.Errorf("evt_3 pricing_version %q, want %s", r.PricingVersion, v2)
	}
	if got := entryVersion("evt_3"); got != v2 {
		t.Errorf("ledger entry of evt_3: pricing_version %q, want %s", got, v2)
	}
	var got struct {
		Version  json.Number `json:"version"`
		Document struct {
			Prices []struct {
				EventType  string `json:"event_type"`
				Components []struct {
					UnitPrice map[string]string `json:"unit_price"`
				} `json:"components"`
			} `json:"prices"`
		} `json:"document"`
	}
	apiDecode(t, e.must(200, "GET", "/v1/pricing", "").Body, &got)
	if got.Version.String() != v2 {
		t.Errorf("GET /v1/pricing version %s, want %s", got.Version, v2)
	}
	if len(got.Document.Prices) == 0 || len(got.Document.Prices[0].Components) == 0 {
		t.Fatalf("GET /v1/pricing: no prices in the document")
	}
	apiWantDec(t, "GET /v1/pricing gpt-4-1 input price", got.Document.Prices[0].Components[0].UnitPrice["gpt-4-1"], "3")
	// The old version stays readable.
	apiDecode(t, e.must(200, "GET", "/v1/pricing?version="+v1, "").Body, &got)
	if got.Version.String() != v1 || len(got.Document.Prices) == 0 || len(got.Document.Prices[0].Components) == 0 {
		t.Fatalf("GET /v1/pricing?version=%s: version %s", v1, got.Version)
	}
	apiWantDec(t, "version 1 gpt-4-1 input price", got.Document.Prices[0].Components[0].UnitPrice["gpt-4-1"], "2")
	// A resend of an event priced under v1 is a duplicate with its original charge and version.
	r = e.event1(gpt("evt_1"))
	if r.Status != "duplicate" || len(r.Charges) != 1 || r.Charges[0].Amount != "0.282282" || r.PricingVersion.String() != v1 {
		t.Errorf("evt_1 resent after the pricing change: %+v, want duplicate 0.282282 at version %s", r, v1)
	}
	// An invalid document is refused and changes nothing.
	apiWantErr(t, "PUT an invalid pricing", e.call("PUT", "/v1/pricing", `{"assets":`+apiAssets+`,"prices":[{"event_type":"x","account":"default:GOLD","unit_price":"1"}]}`), 422, "invalid_pricing", "")
	apiWantErr(t, "PUT a pricing that drops an asset", e.call("PUT", "/v1/pricing", `{"assets":[{"code":"USD","scale":6}],"prices":[]}`), 422, "asset_immutable", "")
	apiDecode(t, e.must(200, "GET", "/v1/pricing", "").Body, &got)
	if got.Version.String() != v2 {
		t.Errorf("GET /v1/pricing after refused PUTs: version %s, want %s", got.Version, v2)
	}

	// Sub-unit prices carry per account: 20 x 0.0000003 USD = exactly 0.000006.
	doc3 := strings.Replace(doc2, `"prices":[`, `"prices":[{"event_type":"token_used","account":"default:USD","components":[{"field":"tokens","package_size":"1","unit_price":"0.0000003"}]},`, 1)
	e.putPricing(doc3)
	const c2 = "cust_carry"
	e.newCustomer(c2, `{}`)
	e.topUp(c2, `{"id":"usd_1","asset":"USD","amount":"1"}`)
	w0, _ := e.wallet(c2)
	total := new(big.Rat)
	for i := range 20 {
		r := e.event1(fmt.Sprintf(`{"id":"tok_%d","customer_id":%q,"event_type":"token_used","data":{"tokens":1}}`, i, c2))
		if r.Status != "charged" || len(r.Charges) != 1 {
			t.Fatalf("tok_%d: %+v, want charged", i, r)
		}
		total.Add(total, apiRat(t, r.Charges[0].Amount))
	}
	if total.Cmp(apiRat(t, "0.000006")) != 0 {
		t.Errorf("20 charges of 0.0000003 sum to %s, want exactly 0.000006", total.FloatString(9))
	}
	w1, _ := e.wallet(c2)
	if d := apiRatSub(t, w0.available("default:USD"), w1.available("default:USD")); d.Cmp(apiRat(t, "0.000006")) != 0 {
		t.Errorf("available dropped by %s, want exactly 0.000006 (%s -> %s)", d.FloatString(9), w0.available("default:USD"), w1.available("default:USD"))
	}
	e.checkInvariants(c)
	e.checkInvariants(c2)
}

// TestAPIBadInput: each bad request gets its documented status and code, and
// the server keeps serving.
func TestAPIBadInput(t *testing.T) {
	const bodyMax = 64 << 10
	e := newAPIEnv(t, apiEnvOpts{Limits: Limits{BodyBytesMax: bodyMax, EventsMax: 10}})
	e.putPricing(apiCreditsPricing)
	const c = "cust_bad"
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"top_1","asset":"CREDITS","amount":"100"}`)
	evt := func(members string) string {
		return `{"customer_id":"` + c + `","events":[{` + members + `}]}`
	}

	// Whole-request refusals.
	apiWantErr(t, "malformed JSON", e.call("POST", "/v1/events", `{"events":[{"id":"x",}]}`), 400, "malformed_json", "")
	apiWantErr(t, "events not an array", e.call("POST", "/v1/events", `{"events":{"id":"x"}}`), 400, "invalid_request", "events")
	apiWantErr(t, "unknown top-level field", e.call("POST", "/v1/events", `{"events":[],"bogus":1}`), 400, "invalid_request", "bogus")
	oversize := `{"customer_id":"` + c + `","events":[{"id":"big","event_type":"api_call","subject":"` + strings.Repeat("x", bodyMax) + `"}]}`
	apiWantErr(t, "oversize body", e.send("POST", "/v1/events", "application/json", "", []byte(oversize)), 413, "body_too_large", "")
	var many []string
	for i := range 11 {
		many = append(many, fmt.Sprintf(`{"id":"m%d","event_type":"api_call"}`, i))
	}
	ndMany := strings.Repeat(`{"id":"x","customer_id":"`+c+`","event_type":"api_call"}`+"\n", 11)
	apiWantErr(t, "too many NDJSON events", e.send("POST", "/v1/events", "application/x-ndjson", "", []byte(ndMany)), 413, "too_many_events", "")
	apiWantErr(t, "too many events", e.call("POST", "/v1/events", `{"customer_id":"`+c+`","events":[`+strings.Join(many, ",")+`]}`), 413, "too_many_events", "")
	if r := e.send("POST", "/v1/events", "application/json; charset=utf-8", "", []byte(evt(`"id":"cs1","event_type":"api_call"`))); r.Status != 200 || !strings.Contains(string(r.Body), `"charged"`) {
		t.Errorf("Content-Type application/json; charset=utf-8: %s, want 200 charged", r)
	}
	apiWantErr(t, "wrong content type", e.send("POST", "/v1/events", "text/plain", "", []byte(evt(`"id":"ct","event_type":"api_call"`))), 415, "unsupported_media_type", "")
	r := e.call("GET", "/v1/events", "")
	apiWantErr(t, "GET /v1/events", r, 405, "method_not_allowed", "")
	if r.Header.Get("Allow") != "POST" {
		t.Errorf("405 without Allow: POST (%q)", r.Header.Get("Allow"))
	}
	apiWantErr(t, "DELETE wallet", e.call("DELETE", "/v1/customers/"+c+"/wallet", ""), 405, "method_not_allowed", "")
	// RFC 9110: a 405 lists every method the resource supports.
	r = e.call("DELETE", "/v1/pricing", "")
	apiWantErr(t, "DELETE /v1/pricing", r, 405, "method_not_allowed", "")
	if allow := r.Header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "PUT") {
		t.Errorf("DELETE /v1/pricing: 405 with Allow %q, want both GET and PUT listed", allow)
	}
	apiWantErr(t, "events missing", e.call("POST", "/v1/events", `{"customer_id":"`+c+`"}`), 400, "invalid_request", "events")
	apiWantErr(t, "body not an object", e.call("POST", "/v1/events", `[{"id":"x"}]`), 400, "invalid_request", "")
	apiWantErr(t, "empty body", e.call("POST", "/v1/events", ` `), 400, "malformed_json", "")

	// Per-event rejections.
	type evCase struct {
		name, members, code, reason, field string
	}
	deep := `{"a":`
	for range 8 {
		deep += `{"a":`
	}
	deep += `1` + strings.Repeat(`}`, 9)
	for _, tc := range []evCase{
		{"unknown event field", `"id":"u1","event_type":"api_call","colour":"red"`, "invalid_event", ReasonUnknownField, "events[0].colour"},
		{"wrong type", `"id":"u2","event_type":42`, "invalid_event", ReasonWrongType, "events[0].event_type"},
		{"id longer than 128", `"id":"` + strings.Repeat("i", 129) + `","event_type":"api_call"`, "invalid_event", ReasonIDTooLong, "events[0].id"},
		{"data too deep", `"id":"u4","event_type":"api_call","data":` + deep, "invalid_event", ReasonDataTooDeep, ""},
		{"occurred_at 10 minutes ahead", `"id":"u5","event_type":"api_call","occurred_at":"` + apiTime(time.Now().Add(10*time.Minute)) + `"`, "out_of_window", ReasonOccurredAtInFuture, "events[0].occurred_at"},
		{"occurred_at 40 days ago", `"id":"u6","event_type":"api_call","occurred_at":"` + apiTime(time.Now().Add(-40*24*time.Hour)) + `"`, "out_of_window", ReasonOccurredAtTooOld, "events[0].occurred_at"},
	} {
		rs := e.postEvents(evt(tc.members), 1)
		apiWantRejected(t, tc.name, rs[0], tc.code, tc.reason, tc.field)
	}
	rs := e.postEvents(`{"events":[{"id":"u7","customer_id":"nobody_here","event_type":"api_call"}]}`, 1)
	apiWantRejected(t, "unknown customer", rs[0], "unknown_customer", "", "")
	// The limits' edges are accepted: a 128-character id, occurred_at 4 minutes
	// ahead and 34 days back.
	rs = e.postEvents(evt(`"id":"`+strings.Repeat("i", 128)+`","event_type":"api_call"`), 1)
	if rs[0].Status != "charged" {
		t.Errorf("id of 128 characters: %+v, want charged", rs[0])
	}
	rs = e.postEvents(evt(`"id":"w1","event_type":"api_call","occurred_at":"`+apiTime(time.Now().Add(4*time.Minute))+`"`), 1)
	if rs[0].Status != "charged" {
		t.Errorf("occurred_at 4 minutes ahead: %+v, want charged", rs[0])
	}
	rs = e.postEvents(evt(`"id":"w2","event_type":"api_call","occurred_at":"`+time.Now().Add(-34*24*time.Hour).In(time.FixedZone("", -5*3600)).Format(time.RFC3339Nano)+`"`), 1)
	if rs[0].Status != "charged" {
		t.Errorf("occurred_at 34 days back (offset -05:00, nanoseconds): %+v, want charged", rs[0])
	}

	// NDJSON: one malformed line among good ones.
	nd := fmt.Sprintf("{\"id\":\"n1\",\"customer_id\":%q,\"event_type\":\"api_call\"}\n{\"id\":\"n2\",\"customer_id\":\n{\"id\":\"n3\",\"customer_id\":%q,\"event_type\":\"api_call\"}\n", c, c)
	r = e.send("POST", "/v1/events", "application/x-ndjson", "", []byte(nd))
	if r.Status != 200 {
		t.Errorf("NDJSON with one malformed line: %s, want 200", r)
	} else {
		var nres apiResults
		apiDecode(t, r.Body, &nres)
		if len(nres.Results) != 3 {
			t.Errorf("NDJSON: %d results, want 3: %s", len(nres.Results), r.Body)
		} else {
			if nres.Results[0].Status != "charged" || nres.Results[2].Status != "charged" {
				t.Errorf("NDJSON good lines: %s, want charged", r.Body)
			}
			apiWantRejected(t, "NDJSON malformed line", nres.Results[1], "invalid_event", ReasonMalformedJSON, "")
		}
	}

	// Top-ups and wallet reads.
	tp := "/v1/customers/" + c + "/topups"
	apiWantErr(t, "negative top-up", e.call("POST", tp, `{"id":"t1","asset":"CREDITS","amount":"-5"}`), 400, "invalid_amount", "amount")
	apiWantErr(t, "over-scale top-up", e.call("POST", tp, `{"id":"t2","asset":"CREDITS","amount":"1.5"}`), 400, "invalid_amount", "amount")
	apiWantErr(t, "JSON float top-up", e.call("POST", tp, `{"id":"t3","asset":"USD","amount":1.5}`), 400, "invalid_amount", "amount")
	apiWantErr(t, "unknown asset", e.call("POST", tp, `{"id":"t4","asset":"GOLD","amount":"5"}`), 422, "unknown_asset", "asset")
	// A far-future expiry (beyond 2262, where int64 nanoseconds end) is in the
	// future: accepted, or refused for its range, never "not in the future".
	r = e.call("POST", tp, `{"id":"t7","asset":"CREDITS","amount":"1","expires_at":"2999-01-01T00:00:00Z"}`)
	farFuture := r.Status == 201
	if r.Status != 201 && (r.Status != 400 || strings.Contains(string(r.Body), "must be in the future")) {
		t.Errorf("top-up expiring 2999-01-01: %s, want 201 (or a 400 naming the supported range, not \"must be in the future\")", r)
	}
	apiWantErr(t, "unknown top-up field", e.call("POST", tp, `{"id":"t5","asset":"CREDITS","amount":"5","colour":"red"}`), 400, "invalid_request", "colour")
	apiWantErr(t, "top-up of an unknown customer", e.call("POST", "/v1/customers/nobody_here/topups", `{"id":"t6","asset":"CREDITS","amount":"5"}`), 404, "unknown_customer", "")
	apiWantErr(t, "unknown customer wallet", e.call("GET", "/v1/customers/nobody_here/wallet", ""), 404, "unknown_customer", "")
	apiWantErr(t, "invalid customer id in the path", e.call("GET", "/v1/customers/bad!id/wallet", ""), 400, "invalid_id", "")
	apiWantErr(t, "customer id longer than 128 in the path", e.call("GET", "/v1/customers/"+strings.Repeat("c", 129)+"/wallet", ""), 400, "invalid_id", "")

	// Only the valid writes above changed the balance: 100 - (charset + 3 edge +
	// 2 NDJSON events) x 2, + 1 if the far-future top-up was accepted.
	w, _ := e.wallet(c)
	want := "88"
	if farFuture {
		want = "89"
	}
	apiWantDec(t, "available after the bad requests", w.available("default:CREDITS"), want)

	// Still serving.
	if r := e.call("GET", "/healthz", ""); r.Status != 200 {
		t.Errorf("GET /healthz after the bad requests: %s", r)
	}
	if r := e.event1(fmt.Sprintf(`{"id":"ok_1","customer_id":%q,"event_type":"api_call"}`, c)); r.Status != "charged" {
		t.Errorf("a valid event after the bad requests: %+v, want charged", r)
	}
	e.checkInvariants(c)
}

// TestAPIReversal: reversing a top-up, idempotently; a spent top-up and an
// unknown one cannot be reversed.
func TestAPIReversal(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(apiCreditsPricing)
	const c = "cust_rev"
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"base","asset":"CREDITS","amount":"10"}`)
	before, _ := e.wallet(c)
	tu := e.topUp(c, `{"id":"top_r","asset":"CREDITS","amount":"50"}`)
	mid, _ := e.wallet(c)
	apiWantDec(t, "available after the top-up", mid.available("default:CREDITS"), "60")

	r := e.must(200, "POST", "/v1/customers/"+c+"/topups/top_r/reverse", "")
	var rev struct {
		Status string `json:"status"`
	}
	apiDecode(t, r.Body, &rev)
	if rev.Status != "reversed" {
		t.Errorf("reverse: %s, want status reversed", r.Body)
	}
	after, _ := e.wallet(c)
	apiWantDec(t, "available after the reversal", after.available("default:CREDITS"), before.available("default:CREDITS"))
	for _, b := range after.account("default:CREDITS").Buckets {
		if b.ID == tu.BucketID && !apiDecEq(t, b.Remaining, "0") {
			t.Errorf("reversed top-up bucket %s still has %s remaining", b.ID, b.Remaining)
		}
	}
	var found bool
	for _, en := range e.ledgerAll(c, "") {
		if en.Type == "topup_reversal" {
			found = true
			apiWantDec(t, "topup_reversal amount", en.Amount, "-50")
			apiWantDec(t, "topup_reversal balance_after", en.BalanceAfter, "10")
		}
	}
	if !found {
		t.Errorf("ledger has no topup_reversal entry")
	}

	// Again: still reversed, nothing more taken.
	r = e.must(200, "POST", "/v1/customers/"+c+"/topups/top_r/reverse", "")
	apiDecode(t, r.Body, &rev)
	if rev.Status != "reversed" {
		t.Errorf("second reverse: %s, want status reversed", r.Body)
	}
	again, _ := e.wallet(c)
	apiWantDec(t, "available after the second reversal", again.available("default:CREDITS"), "10")
	// Replaying the reversed top-up does not credit it again.
	r = e.call("POST", "/v1/customers/"+c+"/topups", `{"id":"top_r","asset":"CREDITS","amount":"50"}`)
	if r.Status != 200 {
		t.Errorf("replay of a reversed top-up: %s, want 200", r)
	}
	again, _ = e.wallet(c)
	apiWantDec(t, "available after replaying the reversed top-up", again.available("default:CREDITS"), "10")

	// A partly spent top-up cannot be reversed. Both buckets are never-expiring
	// recharges, so the older one (base, 10) is drawn first: spending 15 takes 5
	// from top_s.
	e.topUp(c, `{"id":"top_s","asset":"CREDITS","amount":"20"}`)
	res := e.postEvents(fmt.Sprintf(`{"customer_id":%q,"events":[{"id":"s1","event_type":"tokens_used","data":{"tokens":15}}]}`, c), 1)
	if res[0].Status != "charged" {
		t.Fatalf("spending: %+v", res[0])
	}
	apiWantErr(t, "reverse a partly spent top-up", e.call("POST", "/v1/customers/"+c+"/topups/top_s/reverse", ""), 409, "topup_spent", "")
	w, _ := e.wallet(c)
	apiWantDec(t, "available after the refused reversal", w.available("default:CREDITS"), "15")

	// A fully spent top-up cannot be reversed either.
	e.topUp(c, `{"id":"top_f","asset":"CREDITS","amount":"3"}`)
	res = e.postEvents(fmt.Sprintf(`{"customer_id":%q,"events":[{"id":"s2","event_type":"tokens_used","data":{"tokens":18}}]}`, c), 1)
	if res[0].Status != "charged" {
		t.Fatalf("spending all: %+v", res[0])
	}
	apiWantErr(t, "reverse a fully spent top-up", e.call("POST", "/v1/customers/"+c+"/topups/top_f/reverse", ""), 409, "topup_spent", "")
	apiWantErr(t, "reverse an unknown top-up", e.call("POST", "/v1/customers/"+c+"/topups/no_such/reverse", ""), 404, "not_found", "")
	apiWantErr(t, "reverse a top-up of an unknown customer", e.call("POST", "/v1/customers/nobody_here/topups/top_r/reverse", ""), 404, "unknown_customer", "")
	e.checkInvariants(c)
}

// TestAPIAuth: scopes of API keys.
func TestAPIAuth(t *testing.T) {
	keys := threeKeys(t)
	e := newAPIEnv(t, apiEnvOpts{Keys: keys})
	const c = "cust_auth"
	j := "application/json"

	// /healthz needs no key.
	if r := e.send("GET", "/healthz", "", "-", nil); r.Status != 200 {
		t.Errorf("GET /healthz without a key: %s", r)
	}
	// No header, a wrong key, a malformed header: 401.
	apiWantErr(t, "no Authorization", e.send("PUT", "/v1/pricing", j, "-", []byte(apiCreditsPricing)), 401, "unauthorized", "")
	apiWantErr(t, "unknown key", e.send("GET", "/v1/pricing", "", "not-a-known-key-000", nil), 401, "unauthorized", "")
	// Admin writes.
	if r := e.send("PUT", "/v1/pricing", j, adminKey, []byte(apiCreditsPricing)); r.Status != 200 {
		t.Fatalf("admin PUT /v1/pricing: %s", r)
	}
	if r := e.send("PUT", "/v1/customers/"+c, j, adminKey, []byte(`{}`)); r.Status != 201 {
		t.Fatalf("admin PUT customer: %s", r)
	}
	if r := e.send("POST", "/v1/customers/"+c+"/topups", j, adminKey, []byte(`{"id":"t1","asset":"CREDITS","amount":"10"}`)); r.Status != 201 {
		t.Fatalf("admin top-up: %s", r)
	}
	// No key on a read: 401.
	apiWantErr(t, "GET wallet without a key", e.send("GET", "/v1/customers/"+c+"/wallet", "", "-", nil), 401, "unauthorized", "")
	// Ingest key: events yes, reads and admin writes no.
	apiWantErr(t, "ingest key GET wallet", e.send("GET", "/v1/customers/"+c+"/wallet", "", ingestKey, nil), 403, "forbidden", "")
	apiWantErr(t, "ingest key top-up", e.send("POST", "/v1/customers/"+c+"/topups", j, ingestKey, []byte(`{"id":"t2","asset":"CREDITS","amount":"10"}`)), 403, "forbidden", "")
	if r := e.send("POST", "/v1/events", j, ingestKey, []byte(`{"events":[{"id":"e1","customer_id":"`+c+`","event_type":"api_call"}]}`)); r.Status != 200 || !strings.Contains(string(r.Body), `"charged"`) {
		t.Errorf("ingest key POST /v1/events: %s, want 200 charged", r)
	}
	// Read key: reads yes, writes no.
	for _, p := range []string{"/v1/customers/" + c + "/wallet", "/v1/customers/" + c, "/v1/customers/" + c + "/ledger", "/v1/pricing"} {
		if r := e.send("GET", p, "", readKey, nil); r.Status != 200 {
			t.Errorf("read key GET %s: %s", p, r)
		}
	}
	apiWantErr(t, "read key top-up", e.send("POST", "/v1/customers/"+c+"/topups", j, readKey, []byte(`{"id":"t3","asset":"CREDITS","amount":"10"}`)), 403, "forbidden", "")
	apiWantErr(t, "read key PUT pricing", e.send("PUT", "/v1/pricing", j, readKey, []byte(apiCreditsPricing)), 403, "forbidden", "")
	apiWantErr(t, "read key events", e.send("POST", "/v1/events", j, readKey, []byte(`{"events":[{"id":"e2","customer_id":"`+c+`","event_type":"api_call"}]}`)), 403, "forbidden", "")
	// Admin reads too (admin implies read).
	r := e.send("GET", "/v1/customers/"+c+"/wallet", "", adminKey, nil)
	if r.Status != 200 {
		t.Fatalf("admin GET wallet: %s", r)
	}
	var w apiWallet
	apiDecode(t, r.Body, &w)
	apiWantDec(t, "available (10 - 2; the refused writes applied nothing)", w.available("default:CREDITS"), "8")
}

// TestAPILedgerPaging: 250 entries in pages of 100, newest first.
func TestAPILedgerPaging(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(apiCreditsPricing)
	const c = "cust_page"
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"credits","asset":"CREDITS","amount":"1000"}`)
	var evs []string
	for i := range 248 {
		evs = append(evs, fmt.Sprintf(`{"id":"p%03d","event_type":"tokens_used","data":{"tokens":1}}`, i))
	}
	res := e.postEvents(fmt.Sprintf(`{"customer_id":%q,"events":[%s]}`, c, strings.Join(evs, ",")), 248)
	for i, r := range res {
		if r.Status != "charged" {
			t.Fatalf("event %d: %+v", i, r)
		}
	}
	e.topUp(c, `{"id":"usd","asset":"USD","amount":"5"}`) // entry 250, another account

	seen := map[string]bool{}
	var sizes []int
	lastSeq := uint64(1<<64 - 1)
	before := ""
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatalf("more pages than expected")
		}
		p := "/v1/customers/" + c + "/ledger?limit=100"
		if before != "" {
			p += "&before=" + before
		}
		var lp apiLedgerPage
		apiDecode(t, e.must(200, "GET", p, "").Body, &lp)
		sizes = append(sizes, len(lp.Entries))
		for _, en := range lp.Entries {
			if seen[en.ID] {
				t.Errorf("entry %s listed twice", en.ID)
			}
			seen[en.ID] = true
			seq, err := strconv.ParseUint(en.Seq.String(), 10, 64)
			if err != nil || seq >= lastSeq {
				t.Errorf("entry %s seq %s after seq %d: want strictly decreasing (newest first)", en.ID, en.Seq, lastSeq)
			}
			lastSeq = seq
		}
		if lp.Next == nil {
			break
		}
		if *lp.Next == "" {
			t.Fatalf("empty next cursor")
		}
		before = *lp.Next
	}
	if !slices.Equal(sizes, []int{100, 100, 50}) {
		t.Errorf("page sizes %v, want [100 100 50]", sizes)
	}
	if len(seen) != 250 {
		t.Errorf("%d distinct entries, want 250", len(seen))
	}

	// The newest entry is the USD top-up.
	var first apiLedgerPage
	apiDecode(t, e.must(200, "GET", "/v1/customers/"+c+"/ledger?limit=1", "").Body, &first)
	if len(first.Entries) != 1 || first.Entries[0].Type != "topup" || first.Entries[0].Account != "default:USD" || first.Next == nil {
		t.Errorf("limit=1: %+v, want the USD top-up and a next cursor", first)
	}

	// The account filter.
	usd := e.ledgerAll(c, "default:USD")
	if len(usd) != 1 || usd[0].Account != "default:USD" {
		t.Errorf("account=default:USD: %+v, want the one USD entry", usd)
	}
	credits := e.ledgerAll(c, "default:CREDITS")
	if len(credits) != 249 {
		t.Errorf("account=default:CREDITS: %d entries, want 249", len(credits))
	}
	for _, en := range credits {
		if en.Account != "default:CREDITS" {
			t.Errorf("account filter let through %+v", en)
			break
		}
	}
	var fp apiLedgerPage
	apiDecode(t, e.must(200, "GET", "/v1/customers/"+c+"/ledger?account=default:CREDITS&limit=100", "").Body, &fp)
	if len(fp.Entries) != 100 || fp.Next == nil {
		t.Errorf("account=default:CREDITS&limit=100: %d entries, next %v; want 100 and a cursor", len(fp.Entries), fp.Next)
	}
	apiWantDec(t, "newest CREDITS balance_after", credits[0].BalanceAfter, "752")

	// Pages that end exactly at the oldest entry have no next cursor, with and
	// without the account filter.
	pageSizes := func(q string, limit int) []int {
		var sizes []int
		before := ""
		for range 10 {
			p := fmt.Sprintf("/v1/customers/%s/ledger?limit=%d%s", c, limit, q)
			if before != "" {
				p += "&before=" + before
			}
			var lp apiLedgerPage
			apiDecode(t, e.must(200, "GET", p, "").Body, &lp)
			sizes = append(sizes, len(lp.Entries))
			if lp.Next == nil {
				return sizes
			}
			before = *lp.Next
		}
		t.Fatalf("ledger %s: no end", q)
		return nil
	}
	if got := pageSizes("", 125); !slices.Equal(got, []int{125, 125}) {
		t.Errorf("limit=125: page sizes %v, want [125 125]", got)
	}
	if got := pageSizes("&account=default:CREDITS", 100); !slices.Equal(got, []int{100, 100, 49}) {
		t.Errorf("account=default:CREDITS&limit=100: page sizes %v, want [100 100 49]", got)
	}
	if got := pageSizes("&account=default:CREDITS", 249); !slices.Equal(got, []int{249}) {
		t.Errorf("account=default:CREDITS&limit=249: page sizes %v, want [249]", got)
	}
	apiWantErr(t, "invalid cursor", e.call("GET", "/v1/customers/"+c+"/ledger?before=xyz", ""), 400, "invalid_cursor", "before")
	apiWantErr(t, "ledger of an unknown customer", e.call("GET", "/v1/customers/nobody_here/ledger", ""), 404, "unknown_customer", "")

	for _, bad := range []string{"0", "-1", "abc", "1001", "1.5"} {
		apiWantErr(t, "limit="+bad, e.call("GET", "/v1/customers/"+c+"/ledger?limit="+bad, ""), 400, "invalid_limit", "limit")
	}
	e.checkInvariants(c)
}

// TestAPIRestartRecovery: what the API acknowledged survives closing the
// server and the engine and reopening the directory.
func TestAPIRestartRecovery(t *testing.T) {
	dir := t.TempDir()
	e := newAPIEnv(t, apiEnvOpts{Dir: dir})
	e.putPricing(apiCreditsPricing)
	doc := strings.Replace(apiCreditsPricing, `"unit_price":"2"`, `"unit_price":"3"`, 1)
	doc = strings.Replace(doc, `"prices":[`, `"prices":[{"event_type":"token_used","account":"default:USD","components":[{"field":"tokens","package_size":"1","unit_price":"0.0000003"}]},`, 1)
	v := e.putPricing(doc)
	const c = "cust_restart"
	e.newCustomer(c, `{"metadata":{"tier":"gold"}}`)
	e.topUp(c, `{"id":"usd_1","asset":"USD","amount":"1"}`)
	// The pricing carry must survive the restart: 5 events before (1.5 units:
	// 1 charged, 0.5 carried), 15 after; 20 x 0.3 = 6 units in all.
	carried := new(big.Rat)
	tokenEvent := func(e *apiEnv, i int) {
		r := e.event1(fmt.Sprintf(`{"id":"tok_%d","customer_id":%q,"event_type":"token_used","data":{"tokens":1}}`, i, c))
		if r.Status != "charged" || len(r.Charges) != 1 {
			t.Fatalf("tok_%d: %+v", i, r)
		}
		carried.Add(carried, apiRat(t, r.Charges[0].Amount))
	}
	for i := range 5 {
		tokenEvent(e, i)
	}
	// A reversal must survive too.
	e.topUp(c, `{"id":"rev_1","asset":"CREDITS","amount":"10"}`)
	e.must(200, "POST", "/v1/customers/"+c+"/topups/rev_1/reverse", "")
	const adjBody = `{"transaction_id":"adj_1","asset":"CREDITS","amount":"7","kind":"promotional","expires_at":"2099-01-01T00:00:00Z"}`
	const topBody = `{"id":"top_1","asset":"CREDITS","amount":"100"}`
	topFirst := e.must(201, "POST", "/v1/customers/"+c+"/topups", topBody)
	adjFirst := e.must(201, "POST", "/v1/customers/"+c+"/adjustments", adjBody)
	batch := fmt.Sprintf(`{"customer_id":%q,"events":[{"id":"e1","event_type":"api_call"},{"id":"e2","event_type":"tokens_used","data":{"tokens":5}}]}`, c)
	res1 := e.postEvents(batch, 2)
	for i, r := range res1 {
		if r.Status != "charged" {
			t.Fatalf("event %d: %+v", i, r)
		}
	}
	_, wallet1 := e.wallet(c)
	ledger1 := e.must(200, "GET", "/v1/customers/"+c+"/ledger?limit=1000", "").Body
	pricing1 := e.must(200, "GET", "/v1/pricing", "").Body
	e.close()

	e2 := newAPIEnv(t, apiEnvOpts{Dir: dir})
	_, wallet2 := e2.wallet(c)
	if string(wallet1) != string(wallet2) {
		t.Errorf("wallet after restart:\n%s\nbefore:\n%s", wallet2, wallet1)
	}
	if ledger2 := e2.must(200, "GET", "/v1/customers/"+c+"/ledger?limit=1000", "").Body; string(ledger2) != string(ledger1) {
		t.Errorf("ledger after restart:\n%s\nbefore:\n%s", apiTrunc(string(ledger2), 800), apiTrunc(string(ledger1), 800))
	}
	if pricing2 := e2.must(200, "GET", "/v1/pricing", "").Body; string(pricing2) != string(pricing1) {
		t.Errorf("pricing after restart:\n%s\nbefore:\n%s", pricing2, pricing1)
	}
	var pv struct {
		Version json.Number `json:"version"`
	}
	apiDecode(t, e2.must(200, "GET", "/v1/pricing", "").Body, &pv)
	if pv.Version.String() != v {
		t.Errorf("pricing version after restart %s, want %s", pv.Version, v)
	}
	// Idempotency survives: the batch is a duplicate, the top-up a replay.
	res2 := e2.postEvents(batch, 2)
	for i, r := range res2 {
		g, _ := json.Marshal(r.Charges)
		o, _ := json.Marshal(res1[i].Charges)
		if r.Status != "duplicate" || string(g) != string(o) {
			t.Errorf("event %d resent after restart: %s %s, want duplicate %s", i, r.Status, g, o)
		}
	}
	topAgain := e2.must(200, "POST", "/v1/customers/"+c+"/topups", topBody)
	if apiCanon(t, topAgain.Body) != apiCanon(t, topFirst.Body) {
		t.Errorf("top-up replayed after restart: %s, want %s", topAgain.Body, topFirst.Body)
	}
	if r := e2.must(200, "POST", "/v1/customers/"+c+"/adjustments", adjBody); apiCanon(t, r.Body) != apiCanon(t, adjFirst.Body) {
		t.Errorf("adjustment replayed after restart: %s, want %s", r.Body, adjFirst.Body)
	}
	r := e2.must(200, "POST", "/v1/customers/"+c+"/topups/rev_1/reverse", "")
	if !strings.Contains(string(r.Body), `"reversed"`) {
		t.Errorf("reverse after restart: %s, want reversed", r.Body)
	}
	r = e2.must(200, "POST", "/v1/customers/"+c+"/topups", `{"id":"rev_1","asset":"CREDITS","amount":"10"}`)
	var tu apiTopUp
	apiDecode(t, r.Body, &tu)
	if tu.Status != "reversed" {
		t.Errorf("replay of a reversed top-up after restart: %s, want status reversed", r.Body)
	}
	for i := 5; i < 20; i++ {
		tokenEvent(e2, i)
	}
	if carried.Cmp(apiRat(t, "0.000006")) != 0 {
		t.Errorf("20 charges of 0.0000003 USD across a restart sum to %s, want exactly 0.000006 (the carry must be durable)", carried.FloatString(9))
	}
	apiWantErr(t, "top-up conflict after restart", e2.call("POST", "/v1/customers/"+c+"/topups", strings.Replace(topBody, "100", "101", 1)), 409, "idempotency_conflict", "")
	// And it keeps working: the new pricing version still prices.
	r2 := e2.event1(fmt.Sprintf(`{"id":"e3","customer_id":%q,"event_type":"api_call"}`, c))
	if r2.Status != "charged" || len(r2.Charges) != 1 || r2.Charges[0].Amount != "3" || r2.PricingVersion.String() != v {
		t.Errorf("event after restart: %+v, want charged 3 at version %s", r2, v)
	}
	w, _ := e2.wallet(c)
	apiWantDec(t, "available after restart and one more event", w.available("default:CREDITS"), "96") // 107 - 3 - 5 - 3
	apiWantDec(t, "USD available after 20 token events", w.available("default:USD"), "0.999994")
}
