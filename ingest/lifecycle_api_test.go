package ingest

// HTTP acceptance tests of the credit lifecycle (plans, expiry, holds,
// auto-reload, notifications), against /work/shared/API.md. Each runs a real
// engine on a test clock (balance.ManualClock, moved with POST
// /v1/test-clock) and a real server on loopback; the background timer is
// slowed to an hour, so everything that happens is caused by the test.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
)

// newLifecycleEnv starts an engine whose test clock reads start (RFC 3339)
// and installs apiCreditsPricing (tokens_used: 1 CREDIT per token).
func newLifecycleEnv(t *testing.T, start string) (*apiEnv, *balance.ManualClock) {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, start)
	if err != nil {
		t.Fatal(err)
	}
	clk := balance.NewManualClock(ts.UnixNano())
	e := newAPIEnv(t, apiEnvOpts{Clock: clk})
	e.putPricing(apiCreditsPricing)
	return e, clk
}

// lcMs is an RFC 3339 time as the contract outputs it (UTC, milliseconds).
func lcMs(t *testing.T, s string) string {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return apiTime(ts)
}

// clockTo moves the test clock to now (RFC 3339) through the API and checks its answer.
func (e *apiEnv) clockTo(now string) {
	e.t.Helper()
	r := e.must(200, "POST", "/v1/test-clock", `{"now":"`+now+`"}`)
	var v struct {
		Now string `json:"now"`
	}
	apiDecode(e.t, r.Body, &v)
	if want := lcMs(e.t, now); v.Now != want {
		e.t.Fatalf("POST /v1/test-clock now %s: answered now %q, want %q", now, v.Now, want)
	}
}

// clockAdvance moves the test clock by d (a Go duration) and returns the new time.
func (e *apiEnv) clockAdvance(d string) string {
	e.t.Helper()
	r := e.must(200, "POST", "/v1/test-clock", `{"advance":"`+d+`"}`)
	var v struct {
		Now string `json:"now"`
	}
	apiDecode(e.t, r.Body, &v)
	return v.Now
}

// use posts one tokens_used event of n CREDITS (hold "" = none).
func (e *apiEnv) use(customer, id string, n int, hold string) apiResult {
	e.t.Helper()
	h := "null"
	if hold != "" {
		h = `"` + hold + `"`
	}
	return e.event1(fmt.Sprintf(`{"id":%q,"customer_id":%q,"event_type":"tokens_used","data":{"tokens":%d},"hold_id":%s}`, id, customer, n, h))
}

type lcMoney struct {
	Amount   string `json:"amount"`
	Currency string `json:"currency"`
}

type lcAutoReload struct {
	Enabled      bool        `json:"enabled"`
	Account      string      `json:"account"`
	Asset        string      `json:"asset"`
	Threshold    string      `json:"threshold"`
	Amount       string      `json:"amount"`
	Price        lcMoney     `json:"price"`
	SurchargePct string      `json:"surcharge_pct"`
	Charge       lcMoney     `json:"charge"`
	MaxPerPeriod json.Number `json:"max_per_period"`
	MaxUnpaid    *int        `json:"max_unpaid"`
	Mode         string      `json:"mode"`
	ExpiresAt    *string     `json:"expires_at"`
}

type lcCustomer struct {
	CustomerID  string  `json:"customer_id"`
	Status      string  `json:"status"`
	PausedUntil *string `json:"paused_until"`
	NextRefills []struct {
		PlanID  string `json:"plan_id"`
		Account string `json:"account"`
		Amount  string `json:"amount"`
		At      string `json:"at"`
	} `json:"next_refills"`
	Scheduled *struct {
		StartsAt string          `json:"starts_at"`
		Plan     json.RawMessage `json:"plan"`
	} `json:"scheduled_plan"`
	Plan       json.RawMessage `json:"plan"`
	AutoReload *lcAutoReload   `json:"auto_reload"`
	Period     *struct {
		Start string `json:"start"`
		End   string `json:"end"`
	} `json:"period"`
	BalanceAlerts []string  `json:"balance_alerts"`
	Wallet        apiWallet `json:"wallet"`
}

func (e *apiEnv) customer(id string) lcCustomer {
	e.t.Helper()
	r := e.must(200, "GET", "/v1/customers/"+id, "")
	var c lcCustomer
	apiDecode(e.t, r.Body, &c)
	return c
}

type lcHold struct {
	ID            string  `json:"id"`
	CustomerID    string  `json:"customer_id"`
	Account       string  `json:"account"`
	Amount        string  `json:"amount"`
	Status        string  `json:"status"`
	CreatedAt     string  `json:"created_at"`
	ExpiresAt     string  `json:"expires_at"`
	UpdatedAt     string  `json:"updated_at"`
	SettledBy     *string `json:"settled_by"`
	SettledAmount *string `json:"settled_amount"`
}

func (e *apiEnv) hold(id string) lcHold {
	e.t.Helper()
	r := e.must(200, "GET", "/v1/holds/"+id, "")
	var h lcHold
	apiDecode(e.t, r.Body, &h)
	return h
}

type lcReload struct {
	ID        string  `json:"id"`
	Status    string  `json:"status"`
	Account   string  `json:"account"`
	Amount    string  `json:"amount"`
	Charge    lcMoney `json:"charge"`
	Mode      string  `json:"mode"`
	BucketID  *string `json:"bucket_id"`
	CreatedAt string  `json:"created_at"`
	UpdatedAt string  `json:"updated_at"`
}

type lcReloadPage struct {
	Requests []lcReload `json:"requests"`
	Next     *string    `json:"next"`
}

// reloads lists a customer's auto-reload requests, newest first (one page of 1000).
func (e *apiEnv) reloads(customer string) []lcReload {
	e.t.Helper()
	r := e.must(200, "GET", "/v1/customers/"+customer+"/auto-reload/requests?limit=1000", "")
	var p lcReloadPage
	apiDecode(e.t, r.Body, &p)
	return p.Requests
}

func (e *apiEnv) resolve(customer, id, outcome string) lcReload {
	e.t.Helper()
	r := e.must(200, "POST", "/v1/customers/"+customer+"/auto-reload/requests/"+id+"/"+outcome, "")
	var rq lcReload
	apiDecode(e.t, r.Body, &rq)
	return rq
}

type lcNote struct {
	ID         string         `json:"id"`
	Type       string         `json:"type"`
	CustomerID string         `json:"customer_id"`
	Account    string         `json:"account"`
	CreatedAt  string         `json:"created_at"`
	Data       map[string]any `json:"data"`
}

type lcNotePage struct {
	Notifications []lcNote `json:"notifications"`
	Next          *string  `json:"next"`
}

// notes lists every notification of a customer, newest first.
func (e *apiEnv) notes(customer string) []lcNote {
	e.t.Helper()
	r := e.must(200, "GET", "/v1/customers/"+customer+"/notifications?limit=1000", "")
	var p lcNotePage
	apiDecode(e.t, r.Body, &p)
	if p.Next != nil {
		e.t.Fatalf("notifications of %s: more than 1000", customer)
	}
	return p.Notifications
}

// lcEntries summarizes ledger entries (as the API lists them, newest first)
// oldest first, one "type amount bucket occurred_at" line each ("-" for no bucket).
func lcEntries(es []apiEntry) []string {
	out := make([]string, 0, len(es))
	for i := len(es) - 1; i >= 0; i-- {
		en := &es[i]
		out = append(out, en.Type+" "+en.Amount+" "+apiStrOr(en.BucketID, "-")+" "+en.OccurredAt)
	}
	return out
}

// lcBuckets summarizes an account's buckets in wallet (consumption) order,
// one "id kind remaining/amount expires_at source reference" line each.
func lcBuckets(a *apiAccount) []string {
	if a == nil {
		return nil
	}
	var out []string
	for _, b := range a.Buckets {
		out = append(out, fmt.Sprintf("%s %s %s/%s %s %s %s", b.ID, b.Kind, b.Remaining, b.Amount, apiStrOr(b.ExpiresAt, "never"), b.Source, b.Reference))
	}
	return out
}

// wantLines compares two summaries line by line.
func wantLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot\n\t%s\nwant\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

// credits returns the customer's default:CREDITS account (failing if absent).
func (e *apiEnv) credits(customer string) *apiAccount {
	e.t.Helper()
	w, body := e.wallet(customer)
	a := w.account("default:CREDITS")
	if a == nil {
		e.t.Fatalf("wallet of %s has no default:CREDITS: %s", customer, body)
	}
	return a
}

// wantParts checks the bucket parts of an event's single charge.
func wantParts(t *testing.T, what string, r apiResult, want ...string) {
	t.Helper()
	if r.Status != "charged" || len(r.Charges) != 1 {
		t.Errorf("%s: result %v, want charged with one charge", what, r)
		return
	}
	var got []string
	for _, p := range r.Charges[0].Buckets {
		s := apiStrOr(p.BucketID, "debt") + ":" + p.Amount
		if p.BucketID == nil && !p.Debt {
			s += "(debt flag missing)"
		}
		got = append(got, s)
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: parts %v, want %v", what, got, want)
	}
}

// TestLifecycleTestClock: the test clock's endpoints: GET reads it, POST
// moves it forward by a duration or to a time, never back; without
// --test-clock both answer 404.
func TestLifecycleTestClock(t *testing.T) {
	e, clk := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	r := e.must(200, "GET", "/v1/test-clock", "")
	if got := apiCanon(t, r.Body); got != `{"now":"2026-11-05T12:00:00.000Z"}` {
		t.Errorf("GET /v1/test-clock = %s", got)
	}
	if now := e.clockAdvance("36h"); now != "2026-11-07T00:00:00.000Z" {
		t.Errorf("advance 36h: now %s", now)
	}
	e.clockTo("2026-11-08T00:00:00.5Z")
	if got := clk.Now(); got != time.Date(2026, 11, 8, 0, 0, 0, 5e8, time.UTC).UnixNano() {
		t.Errorf("engine clock %d after POST now", got)
	}
	apiWantErr(t, "moving back", e.call("POST", "/v1/test-clock", `{"now":"2026-11-01T00:00:00Z"}`), 409, "clock_backwards", "")
	apiWantErr(t, "negative advance", e.call("POST", "/v1/test-clock", `{"advance":"-1h"}`), 400, "invalid_request", "advance")
	apiWantErr(t, "both", e.call("POST", "/v1/test-clock", `{"advance":"1h","now":"2027-01-01T00:00:00Z"}`), 400, "invalid_request", "")
	apiWantErr(t, "unknown field", e.call("POST", "/v1/test-clock", `{"later":"1h"}`), 400, "invalid_request", "later")

	off := newAPIEnv(t, apiEnvOpts{})
	apiWantErr(t, "GET without --test-clock", off.call("GET", "/v1/test-clock", ""), 404, "not_found", "")
	apiWantErr(t, "POST without --test-clock", off.call("POST", "/v1/test-clock", `{"advance":"1h"}`), 404, "not_found", "")
}

const lcPlanMacro = `{"plan":{"id":"macro","allocations":[{"account":"default","asset":"CREDITS","amount":"20000","period":"month",
 "anchor":"2026-11-01T00:00:00Z","strategy":"expire_and_replace","cap":null,"kind":"plan"}]}}`

// TestLifecycleAlphioOrder: a monthly expire_and_replace plan, a
// promotional adjustment and a top-up are consumed promotional -> plan ->
// recharge; at the period boundary the plan bucket's remainder expires at
// exactly 2026-12-01T00:00:00.000Z and a new 20000 is granted, while the
// recharge bucket is untouched.
func TestLifecycleAlphioOrder(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "alphio"
	const t0 = "2026-11-05T12:00:00.000Z"
	e.newCustomer(c, lcPlanMacro)

	cu := e.customer(c)
	if cu.Period == nil || cu.Period.Start != "2026-11-01T00:00:00.000Z" || cu.Period.End != "2026-12-01T00:00:00.000Z" {
		t.Errorf("period %+v, want {2026-11-01T00:00:00.000Z 2026-12-01T00:00:00.000Z}", cu.Period)
	}
	wantLines(t, "buckets after PUT", lcBuckets(cu.Wallet.account("default:CREDITS")),
		[]string{"b_1 plan 20000/20000 2026-12-01T00:00:00.000Z plan macro"})

	e.must(201, "POST", "/v1/customers/"+c+"/adjustments",
		`{"transaction_id":"promo_1","asset":"CREDITS","amount":"500","reason":"promo","kind":"promotional","expires_at":"2027-01-15T00:00:00Z"}`)
	e.topUp(c, `{"id":"top_1","asset":"CREDITS","amount":"3000","price":{"amount":"30.00","currency":"USD"}}`)
	a := e.credits(c)
	apiWantDec(t, "available", a.Available, "23500")
	wantLines(t, "buckets before usage", lcBuckets(a), []string{
		"b_2 promotional 500/500 2027-01-15T00:00:00.000Z promo promo_1",
		"b_1 plan 20000/20000 2026-12-01T00:00:00.000Z plan macro",
		"b_3 recharge 3000/3000 never topup top_1",
	})

	wantParts(t, "u1", e.use(c, "u1", 300, ""), "b_2:300")
	wantParts(t, "u2", e.use(c, "u2", 1000, ""), "b_2:200", "b_1:800")
	wantParts(t, "u3", e.use(c, "u3", 1200, ""), "b_1:1200")
	a = e.credits(c)
	apiWantDec(t, "available after usage", a.Available, "21000")
	wantLines(t, "buckets after usage", lcBuckets(a), []string{
		"b_1 plan 18000/20000 2026-12-01T00:00:00.000Z plan macro",
		"b_3 recharge 3000/3000 never topup top_1",
	})

	// One millisecond before the boundary nothing happens.
	e.clockTo("2026-11-30T23:59:59.999Z")
	apiWantDec(t, "available at 23:59:59.999", e.credits(c).Available, "21000")

	e.clockTo("2026-12-01T00:00:00Z")
	cu = e.customer(c)
	if cu.Period == nil || cu.Period.Start != "2026-12-01T00:00:00.000Z" || cu.Period.End != "2027-01-01T00:00:00.000Z" {
		t.Errorf("period after the boundary %+v, want {2026-12-01T00:00:00.000Z 2027-01-01T00:00:00.000Z}", cu.Period)
	}
	a = cu.Wallet.account("default:CREDITS")
	apiWantDec(t, "available after the boundary", a.Available, "23000")
	wantLines(t, "buckets after the boundary", lcBuckets(a), []string{
		"b_4 plan 20000/20000 2027-01-01T00:00:00.000Z plan macro",
		"b_3 recharge 3000/3000 never topup top_1",
	})
	if b := a.Buckets[0]; apiStrOr(b.EffectiveAt, "") != "2026-12-01T00:00:00.000Z" {
		t.Errorf("new plan bucket effective_at %s, want 2026-12-01T00:00:00.000Z", apiStrOr(b.EffectiveAt, "null"))
	}

	// After the boundary: plan first, then recharge.
	wantParts(t, "u4", e.use(c, "u4", 20500, ""), "b_4:20000", "b_3:500")

	ledger := e.ledgerAll(c, "default:CREDITS")
	wantLines(t, "ledger", lcEntries(ledger), []string{
		"grant 20000 b_1 " + t0,
		"adjustment 500 b_2 " + t0,
		"topup 3000 b_3 " + t0,
		"usage -300 b_2 " + t0,
		"usage -200 b_2 " + t0,
		"usage -800 b_1 " + t0,
		"usage -1200 b_1 " + t0,
		"expiry -18000 b_1 2026-12-01T00:00:00.000Z",
		"grant 20000 b_4 2026-12-01T00:00:00.000Z",
		"usage -20000 b_4 2026-12-01T00:00:00.000Z",
		"usage -500 b_3 2026-12-01T00:00:00.000Z",
	})
	if len(ledger) == 11 {
		exp, grant := ledger[3], ledger[2] // newest first
		if apiStrOr(exp.Reference, "") != "macro" || exp.RecordedAt != "2026-12-01T00:00:00.000Z" {
			t.Errorf("expiry entry %+v: want reference macro, recorded at the boundary", exp)
		}
		if got := apiCanon(t, grant.Metadata); got != `{"allocation":0,"period_end":"2027-01-01T00:00:00.000Z","period_start":"2026-12-01T00:00:00.000Z"}` {
			t.Errorf("grant metadata %s", got)
		}
	}
	apiWantDec(t, "available at the end", e.credits(c).Available, "2500")
	e.checkInvariants(c)
}

// TestLifecycleAPOBAccumulate: 80 CREDITS a day, accumulating under a cap
// of 400: day by day the balance grows to 400 and stays there; spent
// credits are refilled up to the cap only; a 10-day jump catches up period
// by period, each grant at its own instant, under the cap; saving the same
// settings again never grants twice.
func TestLifecycleAPOBAccumulate(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T00:00:00Z")
	const c = "apob"
	const settings = `{"plan":{"id":"apob_daily","allocations":[{"asset":"CREDITS","amount":"80","period":"day",
 "anchor":"2026-11-01T00:00:00Z","strategy":"accumulate","cap":"400"}]}}`
	e.newCustomer(c, settings)
	day := func(d int) string { return fmt.Sprintf("2026-11-%02dT00:00:00.000Z", d) }

	apiWantDec(t, "available on day 5", e.credits(c).Available, "80")
	for d := 6; d <= 11; d++ {
		if now := e.clockAdvance("24h"); now != day(d) {
			t.Fatalf("clock %s, want %s", now, day(d))
		}
		want := fmt.Sprint(min(80*(d-4), 400))
		apiWantDec(t, "available on "+day(d), e.credits(c).Available, want)
	}
	cu := e.customer(c)
	if cu.Period == nil || cu.Period.Start != day(11) || cu.Period.End != day(12) {
		t.Errorf("period on day 11 %+v", cu.Period)
	}

	// Spend 30: the next day refills 30, not 80.
	wantParts(t, "s1", e.use(c, "s1", 30, ""), "b_1:30")
	e.clockAdvance("24h") // day 12
	apiWantDec(t, "available on day 12", e.credits(c).Available, "400")

	// Spend 250, then 10 days at once: +80 +80 +80 +10, then nothing.
	wantParts(t, "s2", e.use(c, "s2", 250, ""), "b_1:250")
	apiWantDec(t, "available after s2", e.credits(c).Available, "150")
	if now := e.clockAdvance("240h"); now != day(22) {
		t.Fatalf("clock %s, want %s", now, day(22))
	}
	a := e.credits(c)
	apiWantDec(t, "available on day 22", a.Available, "400")
	// One bucket accumulates every grant.
	wantLines(t, "buckets on day 22", lcBuckets(a), []string{"b_1 plan 400/680 never plan apob_daily"})

	// Saving the same settings again, at a boundary and in the middle of a
	// day, grants nothing; the schedule goes on.
	wantParts(t, "s3", e.use(c, "s3", 100, ""), "b_1:100")
	e.must(200, "PUT", "/v1/customers/"+c, settings)
	apiWantDec(t, "available after re-PUT", e.credits(c).Available, "300")
	e.clockAdvance("12h")
	e.must(200, "PUT", "/v1/customers/"+c, settings)
	apiWantDec(t, "available after re-PUT at noon", e.credits(c).Available, "300")
	e.clockAdvance("12h") // day 23
	apiWantDec(t, "available on day 23", e.credits(c).Available, "380")

	wantLines(t, "ledger", lcEntries(e.ledgerAll(c, "default:CREDITS")), []string{
		"grant 80 b_1 " + day(5),
		"grant 80 b_1 " + day(6),
		"grant 80 b_1 " + day(7),
		"grant 80 b_1 " + day(8),
		"grant 80 b_1 " + day(9),
		"usage -30 b_1 " + day(11),
		"grant 30 b_1 " + day(12),
		"usage -250 b_1 " + day(12),
		"grant 80 b_1 " + day(13),
		"grant 80 b_1 " + day(14),
		"grant 80 b_1 " + day(15),
		"grant 10 b_1 " + day(16),
		"usage -100 b_1 " + day(22),
		"grant 80 b_1 " + day(23),
	})
	e.checkInvariants(c)
}

const lcMakeReload = `"auto_reload":{"enabled":true,"account":"default","asset":"CREDITS","threshold":"2000","amount":"10000",
 "price":{"amount":"9.00","currency":"USD"},"surcharge_pct":"30","max_per_period":8,"mode":"grant_immediately","expires_at":null}`

const lcMakeSettings = `{"plan":{"id":"make","allocations":[{"asset":"CREDITS","amount":"80000","period":"month",
 "anchor":"2026-11-01T00:00:00Z"}]},` + lcMakeReload + `}`

// TestLifecycleMakeAutoReload: a monthly plan of 80000 with auto-reload of
// 10000 (9.00 USD + 30% = 11.70 USD) at most 8 times a period: draining the
// wallet makes exactly 8 requests, one pending at a time, and then
// insufficient_funds, 160000 CREDITS spent in all; the next period allows
// reloads again.
func TestLifecycleMakeAutoReload(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "make"
	e.newCustomer(c, lcMakeSettings)
	cu := e.customer(c)
	if r := cu.AutoReload; r == nil || !r.Enabled || r.Charge != (lcMoney{"11.70", "USD"}) || r.Price != (lcMoney{"9.00", "USD"}) ||
		r.MaxPerPeriod != "8" || r.Mode != "grant_immediately" || r.Threshold != "2000" || r.Amount != "10000" {
		t.Errorf("auto_reload %+v", cu.AutoReload)
	}

	charged, spent := 0, new(big.Rat)
	var rejected *apiResult
	for i := 1; i <= 200 && rejected == nil; i++ {
		r := e.use(c, fmt.Sprintf("m%d", i), 1000, "")
		switch r.Status {
		case "charged":
			charged++
			spent.Add(spent, apiRat(t, r.Charges[0].Amount))
		default:
			rejected = &r
		}
		reqs := e.reloads(c)
		pending := 0
		for _, rq := range reqs {
			if rq.Status == "pending" {
				pending++
			}
		}
		if pending > 1 {
			t.Fatalf("after m%d: %d pending requests: %+v", i, pending, reqs)
		}
		if pending == 1 {
			rq := e.resolve(c, reqs[0].ID, "confirm")
			if rq.Status != "completed" || rq.Charge != (lcMoney{"11.70", "USD"}) || rq.Amount != "10000" {
				t.Errorf("confirmed request %+v", rq)
			}
		}
	}
	if rejected == nil {
		t.Fatalf("200 events of 1000 were all charged")
	}
	apiWantRejected(t, "the event after the 8th reload drained", *rejected, "insufficient_funds", "", "")
	if charged != 160 || spent.Cmp(big.NewRat(160000, 1)) != 0 {
		t.Errorf("charged %d events, %s CREDITS; want 160 events, 160000 (80000 plan + 8 x 10000)", charged, spent.RatString())
	}
	reqs := e.reloads(c)
	if len(reqs) != 8 {
		t.Fatalf("%d requests, want 8: %+v", len(reqs), reqs)
	}
	for i, rq := range reqs {
		if want := fmt.Sprintf("r_%d", 8-i); rq.ID != want || rq.Status != "completed" || rq.Amount != "10000" ||
			rq.Charge != (lcMoney{"11.70", "USD"}) || rq.Mode != "grant_immediately" || rq.BucketID == nil || rq.Account != "default:CREDITS" {
			t.Errorf("request %d: %+v, want %s completed 10000 for 11.70 USD with a bucket", i, rq, want)
		}
	}
	apiWantDec(t, "available once drained", e.credits(c).Available, "0")
	var reloadIn, reloadZero, usage int
	for _, en := range e.ledgerAll(c, "default:CREDITS") {
		switch {
		case en.Type == "auto_reload" && en.Amount == "10000":
			reloadIn++
		case en.Type == "auto_reload" && en.Amount == "0":
			reloadZero++
		case en.Type == "usage":
			usage++
		}
	}
	if reloadIn != 8 || reloadZero != 8 {
		t.Errorf("ledger: %d auto_reload entries of 10000 and %d of 0 (confirmations), want 8 and 8", reloadIn, reloadZero)
	}
	e.checkInvariants(c)

	// The next period: a new plan grant, and reloads are allowed again.
	e.clockTo("2026-12-01T00:00:00Z")
	apiWantDec(t, "available in December", e.credits(c).Available, "80000")
	if r := e.use(c, "dec1", 79000, ""); r.Status != "charged" {
		t.Fatalf("dec1: %v", r)
	}
	reqs = e.reloads(c)
	if len(reqs) != 9 || reqs[0].ID != "r_9" || reqs[0].Status != "pending" || reqs[0].CreatedAt != "2026-12-01T00:00:00.000Z" {
		t.Fatalf("requests in December: %+v, want r_9 pending first of 9", reqs)
	}
	apiWantDec(t, "available after r_9", e.credits(c).Available, "11000")
	e.checkInvariants(c)
}

// TestLifecycleMakeBurstUnconfirmed: Make's auto purchase does not wait
// for payment. On an 80,000-credit plan with purchases of 10,000 credits at
// 9.00 USD + 30%, at most 8 per period, a burst of 4,000 events of 40
// credits with no confirmation sent is charged in full by exactly 8
// purchases of 11.70 USD, all pending, and the next event is refused
// insufficient_funds. With max_unpaid 2 the third purchase waits for a
// confirmation.
func TestLifecycleMakeBurstUnconfirmed(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	burst := func(c string, n int) (charged int, refused *apiResult) {
		t.Helper()
		for i := 1; i <= n; i++ {
			r := e.use(c, fmt.Sprintf("%s_%d", c, i), 40, "")
			if r.Status != "charged" {
				return charged, &r
			}
			charged++
		}
		return charged, nil
	}
	pending := func(c string) (ids []string) {
		for _, rq := range e.reloads(c) {
			if rq.Status == "pending" {
				ids = append(ids, rq.ID)
			}
		}
		return ids
	}
	settings := func(maxUnpaid string) string {
		return `{"plan":{"id":"make","allocations":[{"asset":"CREDITS","amount":"80000","period":"month","anchor":"2026-11-01T00:00:00Z"}]},
		 "auto_reload":{"asset":"CREDITS","threshold":"1","amount":"10000","price":{"amount":"9.00","currency":"USD"},
		  "surcharge_pct":"30","max_per_period":8,"mode":"grant_immediately","max_unpaid":` + maxUnpaid + `}}`
	}

	e.newCustomer("make_burst", settings("null"))
	if charged, refused := burst("make_burst", 4000); charged != 4000 || refused != nil {
		t.Fatalf("%d of 4000 events charged, then %v", charged, refused)
	}
	reqs := e.reloads("make_burst")
	if len(reqs) != 8 {
		t.Fatalf("%d purchases, want 8: %+v", len(reqs), reqs)
	}
	for _, rq := range reqs {
		if rq.Status != "pending" || rq.Amount != "10000" || rq.Charge != (lcMoney{"11.70", "USD"}) || rq.BucketID == nil {
			t.Errorf("purchase %+v, want pending, 10000 credits granted, 11.70 USD", rq)
		}
	}
	r := e.use("make_burst", "make_burst_next", 40, "")
	apiWantRejected(t, "the event after 8 purchases", r, "insufficient_funds", "", "")
	apiWantDec(t, "available", e.credits("make_burst").Available, "0")
	e.checkInvariants("make_burst")

	e.newCustomer("make_unpaid", settings("2"))
	if mu := e.customer("make_unpaid").AutoReload.MaxUnpaid; mu == nil || *mu != 2 {
		t.Fatalf("max_unpaid shows %v, want 2", mu)
	}
	// 80,000 of the plan and two purchases of 10,000: 2,500 events, then
	// the third purchase waits.
	charged, refused := burst("make_unpaid", 4000)
	if charged != 2500 || refused == nil {
		t.Fatalf("%d events charged before the third purchase, want 2500", charged)
	}
	apiWantRejected(t, "the event that needs a third unpaid purchase", *refused, "insufficient_funds", "", "")
	if got := pending("make_unpaid"); len(got) != 2 {
		t.Fatalf("pending %v, want 2", got)
	}
	rq := e.resolve("make_unpaid", "r_1", "confirm")
	if rq.Status != "completed" {
		t.Fatalf("confirm r_1: %+v", rq)
	}
	if r := e.use("make_unpaid", "make_unpaid_after", 40, ""); r.Status != "charged" {
		t.Fatalf("after a confirmation: %v", r)
	}
	if got := pending("make_unpaid"); !slices.Equal(got, []string{"r_3", "r_2"}) {
		t.Fatalf("pending %v, want r_3 and r_2 (newest first)", got)
	}
	e.checkInvariants("make_unpaid")

	// Bad values, each refused with the field named.
	for _, v := range []string{"0", "65", `"2"`} {
		r := e.must(400, "PUT", "/v1/customers/make_bad", settings(v))
		if !strings.Contains(string(r.Body), `"field":"auto_reload.max_unpaid"`) {
			t.Errorf("max_unpaid %s: %s", v, r.Body)
		}
	}
	r2 := e.must(400, "PUT", "/v1/customers/make_bad", strings.Replace(settings("3"), "grant_immediately", "await_payment", 1))
	if !strings.Contains(string(r2.Body), `"field":"auto_reload.max_unpaid"`) {
		t.Errorf("max_unpaid 3 with await_payment: %s", r2.Body)
	}
}

// TestLifecyclePausedUntil: APOB's "Paused until". The customer resumes by
// itself at that exact instant: an event 1 ms before is refused
// account_paused, 1 ms after it is charged, with the clock set directly
// (no timer, no test-clock move ran anything in between). A plan period
// that starts while paused is not granted, nor caught up on resume, unless
// the plan says grant_while_paused.
func TestLifecyclePausedUntil(t *testing.T) {
	e, clk := newLifecycleEnv(t, "2026-11-20T12:00:00Z")
	settings := func(pause string, whilePaused bool) string {
		return fmt.Sprintf(`{%s"plan":{"id":"apob","allocations":[{"asset":"CREDITS","amount":"1000","period":"month",
		 "anchor":"2026-11-01T00:00:00Z","strategy":"accumulate"}],"grant_while_paused":%v}}`, pause, whilePaused)
	}
	const c = "apob_pause"
	e.newCustomer(c, settings("", false))
	apiWantDec(t, "November's grant", e.credits(c).Available, "1000")
	e.must(200, "PUT", "/v1/customers/"+c, settings(`"status":"paused","paused_until":"2026-11-25T08:30:00Z",`, false))
	if cu := e.customer(c); cu.Status != "paused" || cu.PausedUntil == nil || *cu.PausedUntil != "2026-11-25T08:30:00.000Z" {
		t.Fatalf("customer %+v", cu)
	}
	until := time.Date(2026, 11, 25, 8, 30, 0, 0, time.UTC)
	clk.Set(until.Add(-time.Millisecond).UnixNano())
	apiWantRejected(t, "1 ms before the end of the pause", e.use(c, "p1", 10, ""), "account_paused", "", "")
	clk.Set(until.Add(time.Millisecond).UnixNano())
	if r := e.use(c, "p2", 10, ""); r.Status != "charged" {
		t.Fatalf("1 ms after the end of the pause: %v", r)
	}
	if cu := e.customer(c); cu.Status != "active" || cu.PausedUntil != nil {
		t.Fatalf("after the pause: %+v", cu)
	}

	// Paused across December 1 (until December 5): December's 1,000 are not
	// granted, then or on resume; January's are.
	e.must(200, "PUT", "/v1/customers/"+c, settings(`"status":"paused","paused_until":"2026-12-05T00:00:00Z",`, false))
	if r := e.customer(c).NextRefills; len(r) != 1 || r[0].Amount != "0" || r[0].At != "2026-12-01T00:00:00.000Z" {
		t.Errorf("next refills while paused past December 1: %+v, want 0 then", r)
	}
	e.clockTo("2026-12-10T00:00:00Z")
	if cu := e.customer(c); cu.Status != "active" {
		t.Fatalf("on December 10: %+v", cu)
	}
	apiWantDec(t, "after a paused December 1", e.credits(c).Available, "990")
	e.clockTo("2027-01-01T00:00:00Z")
	apiWantDec(t, "January", e.credits(c).Available, "1990")
	grants := 0
	for _, en := range e.ledgerAll(c, "default:CREDITS") {
		if en.Type == "grant" {
			grants++
		}
	}
	if grants != 2 {
		t.Errorf("%d plan grants, want 2 (November and January)", grants)
	}

	// With grant_while_paused, February is granted while paused.
	e.must(200, "PUT", "/v1/customers/"+c, settings(`"status":"paused","paused_until":"2027-02-05T00:00:00Z",`, true))
	e.clockTo("2027-02-02T00:00:00Z")
	apiWantDec(t, "February, paused, granting while paused", e.credits(c).Available, "2990")
	e.checkInvariants(c)

	// paused_until needs status paused, and a timestamp.
	for body, field := range map[string]string{
		settings(`"paused_until":"2027-03-01T00:00:00Z",`, false):                        "paused_until",
		settings(`"status":"active","paused_until":"2027-03-01T00:00:00Z",`, false):      "paused_until",
		settings(`"status":"paused","paused_until":"next tuesday",`, false):              "paused_until",
		settings(`"status":"paused","paused_until":"2027-03-01T00:00:00Z",`, false)[:20]: "",
	} {
		r := e.must(400, "PUT", "/v1/customers/"+c, body)
		if field != "" && !strings.Contains(string(r.Body), `"field":"`+field+`"`) {
			t.Errorf("%s: %s", body, r.Body)
		}
	}
}

// TestLifecycleAPOBPlanChanges: APOB's Micro (8,000 credits a month) to
// Macro (20,000) mid-month now: Micro's remainder ends with an expiry entry
// and 20,000 are granted, or 10,000 prorated for the half month left; a
// scheduled downgrade at period end changes nothing until December 1 and
// grants Micro once there (GET shows it with its start, APOB's "Start at");
// cancelling it grants Macro once at the boundary; identical settings sent
// again grant nothing.
func TestLifecycleAPOBPlanChanges(t *testing.T) {
	var e *apiEnv
	plan := func(id, amount, change string) string {
		return fmt.Sprintf(`{"plan":{"id":%q,"allocations":[{"asset":"CREDITS","amount":%q,"period":"month",
		 "anchor":"2026-11-01T00:00:00Z","strategy":"expire_and_replace"}]}%s}`, id, amount, change)
	}
	micro, macro := func(change string) string { return plan("micro", "8000", change) }, func(change string) string { return plan("macro", "20000", change) }
	entries := func(c string) (grants, ends []string) {
		all := e.ledgerAll(c, "default:CREDITS")
		slices.Reverse(all) // oldest first
		for _, en := range all {
			switch {
			case en.Type == "grant":
				grants = append(grants, *en.Reference+" "+en.Amount+" "+en.OccurredAt)
			case en.Type == "expiry" && string(en.Metadata) == `{"reason":"plan_change"}`:
				ends = append(ends, *en.Reference+" "+en.Amount+" "+en.OccurredAt)
			}
		}
		return grants, ends
	}
	const nov1, nov16, dec1 = "2026-11-01T00:00:00.000Z", "2026-11-16T00:00:00.000Z", "2026-12-01T00:00:00.000Z"

	// Upgrade now, prorated and in full (each on its own clock).
	for _, c := range []string{"apob_prorated", "apob_full"} {
		grant := `"full"`
		if c == "apob_prorated" {
			grant = `"prorated"`
		}
		e, _ = newLifecycleEnv(t, "2026-11-01T00:00:00Z")
		e.newCustomer(c, micro(""))
		if r := e.use(c, c+"_1", 3000, ""); r.Status != "charged" {
			t.Fatalf("%s: %v", c, r)
		}
		e.clockTo("2026-11-16T00:00:00Z")
		e.must(200, "PUT", "/v1/customers/"+c, macro(`,"plan_change":{"at":"now","grant":`+grant+`}`))
		want := "20000"
		if c == "apob_prorated" {
			want = "10000"
		}
		grants, ends := entries(c)
		if !slices.Equal(grants, []string{"micro 8000 " + nov1, "macro " + want + " " + nov16}) || !slices.Equal(ends, []string{"micro -5000 " + nov16}) {
			t.Errorf("%s: grants %v, plan ends %v", c, grants, ends)
		}
		apiWantDec(t, c+" available", e.credits(c).Available, want)
		e.checkInvariants(c)
	}
	// Go on with apob_full from November 16.
	const c = "apob_full"
	e.must(200, "PUT", "/v1/customers/"+c, micro(`,"plan_change":{"at":"period_end"}`))
	cu := e.customer(c)
	if cu.Scheduled == nil || cu.Scheduled.StartsAt != dec1 || !strings.Contains(string(cu.Scheduled.Plan), `"id":"micro"`) ||
		!strings.Contains(string(cu.Plan), `"id":"macro"`) {
		t.Fatalf("after scheduling a downgrade: plan %s, scheduled %+v", cu.Plan, cu.Scheduled)
	}
	if r := cu.NextRefills; len(r) != 1 || r[0].PlanID != "micro" || r[0].Amount != "8000" || r[0].At != dec1 {
		t.Errorf("next refills after scheduling a downgrade: %+v, want micro's 8000 on December 1", r)
	}
	e.must(200, "PUT", "/v1/customers/"+c, micro(`,"plan_change":{"at":"period_end"}`)) // the same request again
	e.clockTo("2026-11-30T23:59:59Z")
	if grants, _ := entries(c); len(grants) != 2 {
		t.Fatalf("before the boundary: grants %v", grants)
	}
	e.clockTo("2026-12-01T00:00:00Z")
	grants, _ := entries(c)
	if !slices.Equal(grants[2:], []string{"micro 8000 " + dec1}) {
		t.Errorf("at the boundary: grants %v, want one of micro", grants)
	}
	if cu := e.customer(c); cu.Scheduled != nil || !strings.Contains(string(cu.Plan), `"id":"micro"`) {
		t.Errorf("after the boundary: plan %s, scheduled %+v", cu.Plan, cu.Scheduled)
	}

	// Cancelling a scheduled change: save the current plan.
	e.must(200, "PUT", "/v1/customers/"+c, macro(`,"plan_change":{"at":"period_end"}`))
	e.must(200, "PUT", "/v1/customers/"+c, micro(""))
	e.must(200, "PUT", "/v1/customers/"+c, micro("")) // identical settings again
	if cu := e.customer(c); cu.Scheduled != nil {
		t.Errorf("after cancelling: scheduled %+v", cu.Scheduled)
	}
	e.clockTo("2027-01-01T00:00:00Z")
	grants, _ = entries(c)
	if !slices.Equal(grants[3:], []string{"micro 8000 2027-01-01T00:00:00.000Z"}) {
		t.Errorf("after cancelling: grants %v, want one more of micro", grants)
	}
	e.checkInvariants(c)

	// Refusals, each with the field or the code.
	apiWantErr(t, "at", e.call("PUT", "/v1/customers/"+c, micro(`,"plan_change":{"at":"tomorrow"}`)), 400, "invalid_request", "plan_change.at")
	apiWantErr(t, "grant", e.call("PUT", "/v1/customers/"+c, micro(`,"plan_change":{"at":"period_end","grant":"prorated"}`)), 400, "invalid_request", "plan_change.grant")
	apiWantErr(t, "new customer at period_end", e.call("PUT", "/v1/customers/apob_new", micro(`,"plan_change":{"at":"period_end"}`)), 422, "no_plan_period", "")
}

// TestLifecycleReloadThresholdBounds: APOB's auto-reload threshold is
// 1,000 to 9,999 credits, 2,000 when omitted, set in the pricing document
// (auto_reload_limits): 999 and 10,000 are refused, each with its own code
// and the field named; omitting it gives 2,000; accounts the pricing does
// not bound keep any threshold.
func TestLifecycleReloadThresholdBounds(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	e.putPricing(strings.TrimSuffix(apiCreditsPricing, "}") +
		`,"auto_reload_limits":[{"account":"default:CREDITS","threshold_min":"1000","threshold_max":"9999","threshold_default":"2000"}]}`)
	reload := func(account, threshold string) string {
		return `{"auto_reload":{"account":"` + account + `","asset":"CREDITS",` + threshold + `"amount":"10000","price":{"amount":"12.00","currency":"USD"}}}`
	}
	apiWantErr(t, "999", e.call("PUT", "/v1/customers/apob_t", reload("default", `"threshold":"999",`)), 422, "threshold_below_minimum", "auto_reload.threshold")
	apiWantErr(t, "10000", e.call("PUT", "/v1/customers/apob_t", reload("default", `"threshold":"10000",`)), 422, "threshold_above_maximum", "auto_reload.threshold")
	for _, v := range []string{"1000", "9999"} {
		e.must(201, "PUT", "/v1/customers/apob_"+v, reload("default", `"threshold":"`+v+`",`))
	}
	e.must(201, "PUT", "/v1/customers/apob_t", reload("default", ""))
	if r := e.customer("apob_t").AutoReload; r == nil || r.Threshold != "2000" {
		t.Errorf("an omitted threshold: %+v, want 2000", r)
	}
	// Another account: no bounds, and a threshold is required.
	e.must(201, "PUT", "/v1/customers/other_t", reload("team", `"threshold":"5",`))
	apiWantErr(t, "omitted, unbounded", e.call("PUT", "/v1/customers/other_u", reload("team", "")), 400, "invalid_amount", "auto_reload.threshold")
}

// TestLifecycleUsageView: Wanclouds' Total / Used / Remaining per period,
// by bucket kind, from GET /v1/customers/{id}/usage: November (plan 1,000,
// a top-up of 500, 300 used) and December (the plan's 700 left expire at
// its start, 1,000 granted, 1,200 used: the plan's 1,000, then 200 of the
// top-up), each period's numbers adding up.
func TestLifecycleUsageView(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-01T00:00:00Z")
	const c = "wanclouds"
	e.newCustomer(c, `{"plan":{"id":"std","allocations":[{"asset":"CREDITS","amount":"1000","period":"month",
	 "anchor":"2026-11-01T00:00:00Z","strategy":"expire_and_replace"}]}}`)
	e.topUp(c, `{"id":"t1","asset":"CREDITS","amount":"500"}`)
	if r := e.use(c, "u1", 300, ""); r.Status != "charged" {
		t.Fatal(r)
	}
	e.clockTo("2026-12-10T00:00:00Z")
	if r := e.use(c, "u2", 1200, ""); r.Status != "charged" {
		t.Fatal(r)
	}
	type flows struct {
		Kind      string `json:"kind"`
		Granted   string `json:"granted"`
		Used      string `json:"used"`
		Expired   string `json:"expired"`
		Other     string `json:"other"`
		Remaining string `json:"remaining"`
	}
	var v struct {
		Periods []struct {
			Start, End string
			Accounts   []struct {
				Account string  `json:"account"`
				ByKind  []flows `json:"by_kind"`
				flows
			} `json:"accounts"`
		} `json:"periods"`
	}
	apiDecode(t, e.must(200, "GET", "/v1/customers/"+c+"/usage?periods=2", "").Body, &v)
	want := []struct {
		start, end string
		total      flows
		kinds      []flows
	}{
		{"2026-12-01T00:00:00.000Z", "2027-01-01T00:00:00.000Z", flows{"", "1000", "1200", "700", "0", "300"},
			[]flows{{"plan", "1000", "1000", "700", "0", "0"}, {"recharge", "0", "200", "0", "0", "300"}}},
		{"2026-11-01T00:00:00.000Z", "2026-12-01T00:00:00.000Z", flows{"", "1500", "300", "0", "0", "1200"},
			[]flows{{"plan", "1000", "300", "0", "0", "700"}, {"recharge", "500", "0", "0", "0", "500"}}},
	}
	if len(v.Periods) != 2 {
		t.Fatalf("periods %+v", v.Periods)
	}
	for i, w := range want {
		p := v.Periods[i]
		if p.Start != w.start || p.End != w.end || len(p.Accounts) != 1 || p.Accounts[0].Account != "default:CREDITS" {
			t.Fatalf("period %d: %+v", i, p)
		}
		a := p.Accounts[0]
		if a.flows != w.total || !slices.Equal(a.ByKind, w.kinds) {
			t.Errorf("period %s: total %+v by kind %+v, want %+v %+v", p.Start, a.flows, a.ByKind, w.total, w.kinds)
		}
	}
	apiWantErr(t, "periods", e.call("GET", "/v1/customers/"+c+"/usage?periods=13", ""), 400, "invalid_request", "periods")
	apiWantErr(t, "at", e.call("GET", "/v1/customers/"+c+"/usage?at=yesterday", ""), 400, "invalid_timestamp", "at")
	apiWantErr(t, "customer", e.call("GET", "/v1/customers/nobody/usage", ""), 404, "unknown_customer", "")
}

// TestLifecycleRefundRules: APOB refunds a purchase inside 48 hours while
// fewer than 1,000 of its credits were used: with 999 used it is reversed
// (the 4,001 left taken back, the 999 used kept, both in the answer and
// the ledger); with 1,000 used it is 409 refund_allowance_exceeded; after
// 48 hours reversal_window_elapsed. Alphio's partly spent top-up: the
// unspent part is reversed under a rule that allows it, refused
// topup_spent under one that allows none spent. APOB's yearly plan bought
// by mistake is reversed the same way.
func TestLifecycleRefundRules(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	pricing := func(rules string) {
		e.putPricing(strings.TrimSuffix(apiCreditsPricing, "}") + `,"refund_rules":` + rules + `}`)
	}
	pricing(`{"topup":{"window":"48h","max_used":"999"},"plan_grant":{"window":"48h","max_used":"999"}}`)
	type reversal struct {
		Status   string `json:"status"`
		Account  string `json:"account"`
		Reversed string `json:"reversed"`
		Kept     string `json:"kept"`
	}
	buy := func(c string, used int) {
		t.Helper()
		e.newCustomer(c, `{}`)
		e.topUp(c, `{"id":"t1","asset":"CREDITS","amount":"5000"}`)
		if used > 0 {
			if r := e.use(c, c+"_u", used, ""); r.Status != "charged" {
				t.Fatal(r)
			}
		}
	}
	buy("apob_999", 999)
	var r reversal
	apiDecode(t, e.must(200, "POST", "/v1/customers/apob_999/topups/t1/reverse", "").Body, &r)
	if r != (reversal{"reversed", "default:CREDITS", "4001", "999"}) {
		t.Errorf("999 used: %+v", r)
	}
	apiWantDec(t, "available after the refund", e.credits("apob_999").Available, "0")
	var md []string
	for _, en := range e.ledgerAll("apob_999", "default:CREDITS") {
		if en.Type == "topup_reversal" {
			md = append(md, en.Amount+" "+string(en.Metadata))
		}
	}
	if !slices.Equal(md, []string{`-4001 {"reversed":"4001","kept":"999"}`}) {
		t.Errorf("ledger: %v", md)
	}
	e.checkInvariants("apob_999")

	buy("apob_1000", 1000)
	apiWantErr(t, "1,000 used", e.call("POST", "/v1/customers/apob_1000/topups/t1/reverse", ""), 409, "refund_allowance_exceeded", "")
	buy("apob_late", 0)
	e.clockTo("2026-11-07T12:00:00.001Z")
	apiWantErr(t, "after 48 h", e.call("POST", "/v1/customers/apob_late/topups/t1/reverse", ""), 409, "reversal_window_elapsed", "")

	// Alphio: 24 h; a partly spent top-up.
	pricing(`{"topup":{"window":"24h"}}`)
	buy("alphio_any", 1200)
	apiDecode(t, e.must(200, "POST", "/v1/customers/alphio_any/topups/t1/reverse", "").Body, &r)
	if r != (reversal{"reversed", "default:CREDITS", "3800", "1200"}) {
		t.Errorf("Alphio, any used: %+v", r)
	}
	pricing(`{"topup":{"window":"24h","max_used":"0"}}`)
	buy("alphio_none", 1200)
	apiWantErr(t, "Alphio, none spent", e.call("POST", "/v1/customers/alphio_none/topups/t1/reverse", ""), 409, "topup_spent", "")

	// APOB's yearly plan bought by mistake: 500 used within 48 hours.
	pricing(`{"plan_grant":{"window":"48h","max_used":"999"}}`)
	e.newCustomer("apob_year", `{"plan":{"id":"yearly","allocations":[{"asset":"CREDITS","amount":"240000","period":"year"}]}}`)
	if r := e.use("apob_year", "y1", 500, ""); r.Status != "charged" {
		t.Fatal(r)
	}
	b := e.credits("apob_year").Buckets
	if len(b) != 1 || b[0].Kind != "plan" {
		t.Fatalf("buckets %+v", b)
	}
	apiDecode(t, e.must(200, "POST", "/v1/customers/apob_year/grants/"+b[0].ID+"/reverse", "").Body, &r)
	if r != (reversal{"reversed", "default:CREDITS", "239500", "500"}) {
		t.Errorf("the yearly plan: %+v", r)
	}
	apiWantDec(t, "after the plan's reversal", e.credits("apob_year").Available, "0")
	apiWantErr(t, "twice", e.call("POST", "/v1/customers/apob_year/grants/"+b[0].ID+"/reverse", ""), 409, "topup_spent", "")
	apiWantErr(t, "a top-up's bucket", e.call("POST", "/v1/customers/alphio_none/grants/"+e.credits("alphio_none").Buckets[0].ID+"/reverse", ""), 404, "unknown_bucket", "")
	e.checkInvariants("apob_year")
}

// An event type without a price is recorded with no charge (counted per
// type: TestUnpricedEventsCounted); with --unpriced-events reject it is
// refused unpriced_event on event_type, its neighbours in the batch charged.
func TestUnpricedEvents(t *testing.T) {
	for _, reject := range []bool{false, true} {
		e := newAPIEnv(t, apiEnvOpts{RejectUnpriced: reject})
		e.putPricing(apiCreditsPricing)
		e.newCustomer("u1", `{}`)
		e.topUp("u1", `{"id":"t1","asset":"CREDITS","amount":"100"}`)
		rs := e.postEvents(`{"events":[{"id":"a","customer_id":"u1","event_type":"page_viewed"},{"id":"b","customer_id":"u1","event_type":"api_call"}]}`, 2)
		if rs[1].Status != "charged" {
			t.Fatalf("reject %v: the priced neighbour: %+v", reject, rs[1])
		}
		if reject {
			apiWantRejected(t, "unpriced, rejected", rs[0], "unpriced_event", "", "event_type")
			continue
		}
		if rs[0].Status != "recorded" || len(rs[0].Charges) != 0 {
			t.Fatalf("unpriced, recorded: %+v", rs[0])
		}
	}
}

// TestHoldLimit: APOB's concurrent tasks. With max_active_holds 3 (from
// the plan), of 10 concurrent holds exactly 3 succeed and the others are
// 409 hold_limit_reached; settling one frees a slot; the customer's own
// limit overrides the plan's.
func TestHoldLimit(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "apob_tasks"
	plan := func(extra string) string {
		return `{"plan":{"id":"micro","allocations":[{"asset":"CREDITS","amount":"10000","period":"month","anchor":"2026-11-01T00:00:00Z"}],
		 "max_active_holds":{"default:CREDITS":3}}` + extra + `}`
	}
	e.newCustomer(c, plan(""))
	var wg sync.WaitGroup
	codes := make([]string, 10)
	for i := range codes {
		wg.Go(func() {
			r, err := e.try("POST", "/v1/holds", fmt.Sprintf(`{"id":"task_%d","customer_id":%q,"account":"default:CREDITS","amount":"100"}`, i, c))
			switch {
			case err != nil:
				codes[i] = err.Error()
			case r.Status == 201:
				codes[i] = "placed"
			default:
				var er apiErrorResp
				if json.Unmarshal(r.Body, &er) == nil && er.Error != nil {
					codes[i] = fmt.Sprintf("%d %s", r.Status, er.Error.Code)
				} else {
					codes[i] = fmt.Sprintf("%d %s", r.Status, r.Body)
				}
			}
		})
	}
	wg.Wait()
	placed, refused := 0, 0
	var first string
	for i, code := range codes {
		switch code {
		case "placed":
			placed++
			if first == "" {
				first = fmt.Sprintf("task_%d", i)
			}
		case "409 hold_limit_reached":
			refused++
		default:
			t.Errorf("hold %d: %s", i, code)
		}
	}
	if placed != 3 || refused != 7 {
		t.Fatalf("%d placed, %d refused, want 3 and 7: %v", placed, refused, codes)
	}
	// Settling one (its task's usage event) frees a slot.
	if r := e.use(c, "done_1", 40, first); r.Status != "charged" {
		t.Fatalf("settling %s: %v", first, r)
	}
	e.must(201, "POST", "/v1/holds", `{"id":"task_next","customer_id":"`+c+`","account":"default:CREDITS","amount":"100"}`)
	apiWantErr(t, "a fourth", e.call("POST", "/v1/holds", `{"id":"task_more","customer_id":"`+c+`","account":"default:CREDITS","amount":"100"}`), 409, "hold_limit_reached", "")
	// The customer's limit overrides the plan's.
	e.must(200, "PATCH", "/v1/customers/"+c, `{"max_active_holds":{"default:CREDITS":4}}`)
	e.must(201, "POST", "/v1/holds", `{"id":"task_more","customer_id":"`+c+`","account":"default:CREDITS","amount":"100"}`)
	apiWantErr(t, "a bad limit", e.call("PATCH", "/v1/customers/"+c, `{"max_active_holds":{"default:CREDITS":0}}`), 400, "invalid_request", "max_active_holds.default:CREDITS")
	e.checkInvariants(c)
}

// TestTopUpsListed: GET of one top-up and the list of a customer's
// top-ups, newest first and paged, with their price and, once reversed,
// what the reversal took back and kept.
func TestTopUpsListed(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	e.putPricing(strings.TrimSuffix(apiCreditsPricing, "}") + `,"refund_rules":{"topup":{"window":"48h"}}}`)
	const c = "buyer"
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"t1","asset":"CREDITS","amount":"5000","price":{"amount":"15.00","currency":"USD"},"source":"custom_credits"}`)
	e.topUp(c, `{"id":"t2","asset":"CREDITS","amount":"700"}`)
	if r := e.use(c, "u1", 5200, ""); r.Status != "charged" { // some of t2 is used: its reversal keeps it
		t.Fatal(r)
	}
	type topUp struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Amount string `json:"amount"`
		Price  *struct {
			Amount   string `json:"amount"`
			Currency string `json:"currency"`
		} `json:"price"`
		Source   string `json:"source"`
		Reversed string `json:"reversed"`
		Kept     string `json:"kept"`
	}
	var one topUp
	apiDecode(t, e.must(200, "GET", "/v1/customers/"+c+"/topups/t1", "").Body, &one)
	if one.ID != "t1" || one.Status != "completed" || one.Amount != "5000" || one.Price == nil || one.Price.Amount != "15.00" ||
		one.Price.Currency != "USD" || one.Source != "custom_credits" {
		t.Fatalf("t1: %+v", one)
	}
	var rev struct{ Reversed, Kept string }
	apiDecode(t, e.must(200, "POST", "/v1/customers/"+c+"/topups/t2/reverse", "").Body, &rev)
	apiDecode(t, e.must(200, "GET", "/v1/customers/"+c+"/topups/t2", "").Body, &one)
	if one.Status != "reversed" || one.Reversed != rev.Reversed || one.Kept != rev.Kept || one.Price != nil {
		t.Fatalf("t2 after its reversal (%+v): %+v", rev, one)
	}
	var page struct {
		TopUps []topUp `json:"topups"`
		Next   *string `json:"next"`
	}
	apiDecode(t, e.must(200, "GET", "/v1/customers/"+c+"/topups?limit=1", "").Body, &page)
	if len(page.TopUps) != 1 || page.TopUps[0].ID != "t2" || page.Next == nil {
		t.Fatalf("first page: %+v", page)
	}
	apiDecode(t, e.must(200, "GET", "/v1/customers/"+c+"/topups?limit=1&before="+*page.Next, "").Body, &page)
	if len(page.TopUps) != 1 || page.TopUps[0].ID != "t1" || page.Next != nil {
		t.Fatalf("second page: %+v", page)
	}
	apiWantErr(t, "unknown", e.call("GET", "/v1/customers/"+c+"/topups/t9", ""), 404, "not_found", "")
	apiWantErr(t, "unknown customer", e.call("GET", "/v1/customers/nobody/topups", ""), 404, "unknown_customer", "")
}

// TestCheck: POST /v1/check answers each event as POST /v1/events then
// does (the same JSON: charges, buckets, balances; insufficient_funds;
// recorded; an unknown customer), and changes nothing: the wallet and the
// ledger read the same before and after.
func TestCheck(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	e.newCustomer("chk", `{}`)
	e.topUp("chk", `{"id":"t1","asset":"CREDITS","amount":"100"}`)
	e.must(201, "POST", "/v1/customers/chk/adjustments", `{"transaction_id":"promo","asset":"CREDITS","amount":"5","kind":"promotional","reason":"promo"}`)
	body := `{"events":[
	 {"id":"c1","customer_id":"chk","event_type":"api_call"},
	 {"id":"c2","customer_id":"chk","event_type":"big_job"},
	 {"id":"c3","customer_id":"chk","event_type":"page_viewed"},
	 {"id":"c4","customer_id":"nobody","event_type":"api_call"}]}`
	results := func(r apiResp) []json.RawMessage {
		var v struct{ Results []json.RawMessage }
		apiDecode(t, r.Body, &v)
		return v.Results
	}
	wallet0, ledger0 := e.must(200, "GET", "/v1/customers/chk/wallet", "").Body, e.must(200, "GET", "/v1/customers/chk/ledger", "").Body
	checked := results(e.must(200, "POST", "/v1/check", body))
	if w, l := e.must(200, "GET", "/v1/customers/chk/wallet", "").Body, e.must(200, "GET", "/v1/customers/chk/ledger", "").Body; !bytes.Equal(w, wallet0) || !bytes.Equal(l, ledger0) {
		t.Fatalf("the check changed the customer:\n%s\n%s", w, l)
	}
	applied := results(e.must(200, "POST", "/v1/events", body))
	if len(checked) != 4 || len(applied) != 4 {
		t.Fatalf("results %s / %s", checked, applied)
	}
	for i := range checked {
		if !bytes.Equal(checked[i], applied[i]) {
			t.Errorf("event %d: checked %s, applied %s", i+1, checked[i], applied[i])
		}
	}
	if !strings.Contains(string(checked[0]), `"status":"charged"`) || !strings.Contains(string(checked[0]), `"bucket_id":"b_2"`) ||
		!strings.Contains(string(checked[1]), `"insufficient_funds"`) || !strings.Contains(string(checked[2]), `"recorded"`) ||
		!strings.Contains(string(checked[3]), `"unknown_customer"`) {
		t.Errorf("check results %s", checked)
	}
}

// A PATCH may name exactly the members a PUT body has.
func TestCustomerPatchMembers(t *testing.T) {
	tags := func(v any) (out []string) {
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			out = append(out, rt.Field(i).Tag.Get("json"))
		}
		slices.Sort(out)
		return out
	}
	if a, b := tags(customerBody{}), tags(customerPatch{}); !slices.Equal(a, b) {
		t.Fatalf("customerBody %v, customerPatch %v", a, b)
	}
}

// TestCustomerPatch: PATCH /v1/customers/{id} is a JSON merge patch of the
// settings: turning auto-reload off keeps the plan and grants nothing
// again; what the patch does not name is kept, objects merge, null removes;
// a bad patch is refused with the field named and changes nothing.
func TestCustomerPatch(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "patchy"
	e.newCustomer(c, `{"plan":{"id":"starter","allocations":[{"asset":"CREDITS","amount":"1000","period":"month","anchor":"2026-11-01T00:00:00Z"}]},
	 "auto_reload":{"asset":"CREDITS","threshold":"200","amount":"500","price":{"amount":"9.00","currency":"USD"},"max_per_period":2},
	 "balance_alerts":["500"],"metadata":{"team":"a"}}`)
	grants := func() int {
		n := 0
		for _, en := range e.ledgerAll(c, "default:CREDITS") {
			if en.Type == "grant" {
				n++
			}
		}
		return n
	}
	var got struct {
		Status      string          `json:"status"`
		Plan        json.RawMessage `json:"plan"`
		AutoReload  *lcAutoReload   `json:"auto_reload"`
		Alerts      []string        `json:"balance_alerts"`
		Metadata    json.RawMessage `json:"metadata"`
		PausedUntil *string         `json:"paused_until"`
	}
	apiDecode(t, e.must(200, "PATCH", "/v1/customers/"+c, `{"auto_reload":{"enabled":false}}`).Body, &got)
	if r := got.AutoReload; r == nil || r.Enabled || r.Threshold != "200" || r.Amount != "500" || r.MaxPerPeriod != "2" ||
		!strings.Contains(string(got.Plan), `"id":"starter"`) || grants() != 1 {
		t.Fatalf("auto-reload off: %+v, plan %s, %d grants", got.AutoReload, got.Plan, grants())
	}
	apiDecode(t, e.must(200, "PATCH", "/v1/customers/"+c, `{"balance_alerts":["100"],"metadata":{"tier":"gold"},"status":"paused","paused_until":"2026-11-06T00:00:00Z"}`).Body, &got)
	if !slices.Equal(got.Alerts, []string{"100"}) || string(got.Metadata) != `{"team":"a","tier":"gold"}` || got.Status != "paused" ||
		got.PausedUntil == nil || !strings.Contains(string(got.Plan), `"id":"starter"`) || got.AutoReload == nil || got.AutoReload.Enabled {
		t.Fatalf("after the second patch: %+v", got)
	}
	// A bad patch: refused with the field, nothing changed.
	apiWantErr(t, "bad threshold", e.call("PATCH", "/v1/customers/"+c, `{"auto_reload":{"threshold":"-5"}}`), 400, "invalid_amount", "auto_reload.threshold")
	apiWantErr(t, "unknown member", e.call("PATCH", "/v1/customers/"+c, `{"plann":null}`), 400, "invalid_request", "plann")
	apiWantErr(t, "not an object", e.call("PATCH", "/v1/customers/"+c, `[1]`), 400, "invalid_request", "")
	apiWantErr(t, "unknown customer", e.call("PATCH", "/v1/customers/nobody", `{}`), 404, "unknown_customer", "")
	if cu := e.customer(c); cu.AutoReload == nil || cu.AutoReload.Threshold != "200" {
		t.Fatalf("a refused patch changed the customer: %+v", cu.AutoReload)
	}
	// null removes: the auto-reload settings, then the plan (which ends now).
	apiDecode(t, e.must(200, "PATCH", "/v1/customers/"+c, `{"auto_reload":null,"status":"active","paused_until":null}`).Body, &got)
	if got.AutoReload != nil || got.Status != "active" || got.PausedUntil != nil || !strings.Contains(string(got.Plan), `"id":"starter"`) {
		t.Fatalf("auto_reload removed: %+v", got)
	}
	apiDecode(t, e.must(200, "PATCH", "/v1/customers/"+c, `{"plan":null}`).Body, &got)
	if string(got.Plan) != "null" || grants() != 1 {
		t.Fatalf("plan removed: %s, %d grants", got.Plan, grants())
	}
	e.checkInvariants(c)
}

// TestLifecycleMakeReloadFailure: in grant_immediately mode a failed payment
// disables auto-reload and pauses the customer (usage rejected
// account_paused; the granted credits stay) until POST .../resume.
func TestLifecycleMakeReloadFailure(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "make_fail"
	e.newCustomer(c, lcMakeSettings)
	if r := e.use(c, "f1", 78500, ""); r.Status != "charged" {
		t.Fatalf("f1: %v", r)
	}
	reqs := e.reloads(c)
	if len(reqs) != 1 || reqs[0].Status != "pending" {
		t.Fatalf("requests %+v, want one pending", reqs)
	}
	apiWantDec(t, "available with the reload granted", e.credits(c).Available, "11500")
	rq := e.resolve(c, "r_1", "fail")
	if rq.Status != "failed" || rq.Charge != (lcMoney{"11.70", "USD"}) {
		t.Errorf("failed request %+v", rq)
	}
	// The same outcome again returns the request; the other is refused.
	if again := e.resolve(c, "r_1", "fail"); again.Status != "failed" {
		t.Errorf("fail again: %+v", again)
	}
	apiWantErr(t, "confirm after fail", e.call("POST", "/v1/customers/"+c+"/auto-reload/requests/r_1/confirm", ""), 409, "reload_not_pending", "")
	apiWantErr(t, "unknown request", e.call("POST", "/v1/customers/"+c+"/auto-reload/requests/r_7/confirm", ""), 404, "not_found", "")

	cu := e.customer(c)
	if cu.Status != "paused" || cu.AutoReload == nil || cu.AutoReload.Enabled {
		t.Errorf("after the failure: status %q auto_reload %+v, want paused and disabled", cu.Status, cu.AutoReload)
	}
	apiWantDec(t, "available after the failure (credits stay)", cu.Wallet.available("default:CREDITS"), "11500")
	apiWantRejected(t, "usage while paused", e.use(c, "f2", 10, ""), "account_paused", "", "")

	cu2 := lcCustomer{}
	apiDecode(t, e.must(200, "POST", "/v1/customers/"+c+"/resume", "").Body, &cu2)
	if cu2.Status != "active" || cu2.AutoReload == nil || cu2.AutoReload.Enabled {
		t.Errorf("after resume: status %q auto_reload %+v, want active, auto-reload still disabled", cu2.Status, cu2.AutoReload)
	}
	// Below the threshold again: charged, and no new request (disabled).
	if r := e.use(c, "f3", 10000, ""); r.Status != "charged" {
		t.Fatalf("f3 after resume: %v", r)
	}
	if reqs := e.reloads(c); len(reqs) != 1 {
		t.Errorf("requests after resume %+v, want only r_1", reqs)
	}
	apiWantDec(t, "available at the end", e.credits(c).Available, "1500")
	var types []string
	for _, n := range e.notes(c) {
		if strings.HasPrefix(n.Type, "auto_reload.") {
			types = append(types, n.Type)
		}
	}
	if !slices.Equal(types, []string{"auto_reload.failed", "auto_reload.requested"}) {
		t.Errorf("auto_reload notifications (newest first) %v", types)
	}
	wantLines(t, "ledger", lcEntries(e.ledgerAll(c, "default:CREDITS")), []string{
		"grant 80000 b_1 2026-11-05T12:00:00.000Z",
		"usage -78500 b_1 2026-11-05T12:00:00.000Z",
		"auto_reload 10000 b_2 2026-11-05T12:00:00.000Z",
		"auto_reload 0 - 2026-11-05T12:00:00.000Z",
		"usage -1500 b_1 2026-11-05T12:00:00.000Z",
		"usage -8500 b_2 2026-11-05T12:00:00.000Z",
	})
	e.checkInvariants(c)
}

// TestLifecycleAPOBReloadFailure: in await_payment mode a request is made
// when a charge leaves the balance below the threshold, or when an event
// cannot be covered (that event is rejected insufficient_funds); credits
// land only on confirm (bucket source auto_reload); a failure disables
// auto-reload and leaves the customer active.
func TestLifecycleAPOBReloadFailure(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "apob_pay"
	const t0 = "2026-11-05T12:00:00.000Z"
	e.newCustomer(c, `{"auto_reload":{"asset":"CREDITS","threshold":"500","amount":"1000","price":{"amount":"5","currency":"USD"},"mode":"await_payment"}}`)
	e.topUp(c, `{"id":"t1","asset":"CREDITS","amount":"1000"}`)

	wantParts(t, "e1", e.use(c, "e1", 600, ""), "b_1:600")
	reqs := e.reloads(c)
	if len(reqs) != 1 || reqs[0].ID != "r_1" || reqs[0].Status != "pending" || reqs[0].BucketID != nil ||
		reqs[0].Mode != "await_payment" || reqs[0].Charge != (lcMoney{"5", "USD"}) || reqs[0].Amount != "1000" {
		t.Fatalf("requests after e1: %+v, want r_1 pending, no bucket", reqs)
	}
	apiWantDec(t, "available with r_1 pending", e.credits(c).Available, "400")
	wantParts(t, "e2", e.use(c, "e2", 300, ""), "b_1:300")
	if reqs := e.reloads(c); len(reqs) != 1 {
		t.Errorf("a second request while one is pending: %+v", reqs)
	}

	rq := e.resolve(c, "r_1", "confirm")
	if rq.Status != "completed" || apiStrOr(rq.BucketID, "") != "b_2" {
		t.Errorf("confirmed r_1 %+v, want completed with bucket b_2", rq)
	}
	a := e.credits(c)
	apiWantDec(t, "available after confirm", a.Available, "1100")
	wantLines(t, "buckets after confirm", lcBuckets(a), []string{
		"b_1 recharge 100/1000 never topup t1",
		"b_2 recharge 1000/1000 never auto_reload r_1",
	})

	// An event the balance cannot cover asks for a reload and is rejected.
	apiWantRejected(t, "e3 above the balance", e.use(c, "e3", 1500, ""), "insufficient_funds", "", "")
	reqs = e.reloads(c)
	if len(reqs) != 2 || reqs[0].ID != "r_2" || reqs[0].Status != "pending" {
		t.Fatalf("requests after e3: %+v, want r_2 pending", reqs)
	}
	apiWantDec(t, "available after e3 (no credits before confirm)", e.credits(c).Available, "1100")

	if rq := e.resolve(c, "r_2", "fail"); rq.Status != "failed" || rq.BucketID != nil {
		t.Errorf("failed r_2 %+v", rq)
	}
	cu := e.customer(c)
	if cu.Status != "active" || cu.AutoReload == nil || cu.AutoReload.Enabled {
		t.Errorf("after the failure: status %q auto_reload %+v, want active and disabled", cu.Status, cu.AutoReload)
	}
	wantParts(t, "e4", e.use(c, "e4", 100, ""), "b_1:100")
	wantParts(t, "e5", e.use(c, "e5", 600, ""), "b_2:600")
	reqs = e.reloads(c)
	if len(reqs) != 2 || reqs[0].Status != "failed" || reqs[1].Status != "completed" {
		t.Errorf("requests at the end %+v, want r_2 failed, r_1 completed", reqs)
	}
	apiWantDec(t, "available at the end", e.credits(c).Available, "400")

	ledger := e.ledgerAll(c, "default:CREDITS")
	wantLines(t, "ledger", lcEntries(ledger), []string{
		"topup 1000 b_1 " + t0,
		"usage -600 b_1 " + t0,
		"auto_reload 0 - " + t0, // r_1 requested
		"usage -300 b_1 " + t0,
		"auto_reload 1000 b_2 " + t0, // r_1 confirmed
		"auto_reload 0 - " + t0,      // r_2 requested by e3
		"auto_reload 0 - " + t0,      // r_2 failed
		"usage -100 b_1 " + t0,
		"usage -600 b_2 " + t0,
	})
	e.checkInvariants(c)
}

// TestLifecycleWanclouds: a top-up with "expires_at":"period_end" expires
// exactly at the end of the plan period; without a plan it is 422
// no_plan_period.
func TestLifecycleWanclouds(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "wanclouds"
	e.newCustomer(c, `{"plan":{"id":"w","allocations":[{"asset":"CREDITS","amount":"1000","period":"month","anchor":"2026-11-01T00:00:00Z"}]}}`)
	tu := e.topUp(c, `{"id":"pe_1","asset":"CREDITS","amount":"500","expires_at":"period_end"}`)
	if tu.BucketID != "b_2" {
		t.Errorf("top-up bucket %q, want b_2", tu.BucketID)
	}
	e.must(201, "POST", "/v1/customers/"+c+"/adjustments", `{"transaction_id":"adj_pe","asset":"CREDITS","amount":"70","expires_at":"period_end"}`)
	a := e.credits(c)
	wantLines(t, "buckets", lcBuckets(a), []string{
		"b_1 plan 1000/1000 2026-12-01T00:00:00.000Z plan w",
		"b_2 recharge 500/500 2026-12-01T00:00:00.000Z topup pe_1",
		"b_3 recharge 70/70 2026-12-01T00:00:00.000Z adjustment adj_pe",
	})
	wantParts(t, "u1", e.use(c, "u1", 1100, ""), "b_1:1000", "b_2:100")

	e.clockTo("2026-11-30T23:59:59.999Z")
	apiWantDec(t, "available 1 ms before the period end", e.credits(c).Available, "470")
	e.clockTo("2026-12-01T00:00:00.001Z")
	a = e.credits(c)
	apiWantDec(t, "available after the period end", a.Available, "1000")
	wantLines(t, "buckets after the period end", lcBuckets(a), []string{"b_4 plan 1000/1000 2027-01-01T00:00:00.000Z plan w"})
	const end = "2026-12-01T00:00:00.000Z"
	var exp []string
	for _, en := range e.ledgerAll(c, "default:CREDITS") {
		if en.Type == "expiry" {
			exp = append(exp, en.Amount+" "+apiStrOr(en.BucketID, "-")+" "+apiStrOr(en.Reference, "-")+" "+en.OccurredAt)
		}
	}
	slices.Sort(exp)
	wantLines(t, "expiry entries", exp, []string{"-400 b_2 pe_1 " + end, "-70 b_3 adj_pe " + end})

	// Reloaded credits with "expires_at":"period_end" expire at the period end too.
	const ar = "wanclouds_reload"
	e.newCustomer(ar, `{"plan":{"id":"w","allocations":[{"asset":"CREDITS","amount":"1000","period":"month","anchor":"2026-11-01T00:00:00Z"}]},
 "auto_reload":{"asset":"CREDITS","threshold":"500","amount":"300","price":{"amount":"3","currency":"USD"},"expires_at":"period_end"}}`)
	if cu := e.customer(ar); cu.AutoReload == nil || apiStrOr(cu.AutoReload.ExpiresAt, "null") != "period_end" {
		t.Errorf("auto_reload %+v, want expires_at period_end", cu.AutoReload)
	}
	wantParts(t, "ar1", e.use(ar, "ar1", 600, ""), "b_1:600")
	wantLines(t, "buckets with a period_end reload", lcBuckets(e.credits(ar)), []string{
		"b_1 plan 400/1000 2027-01-01T00:00:00.000Z plan w",
		"b_2 recharge 300/300 2027-01-01T00:00:00.000Z auto_reload r_1",
	})

	const np = "wanclouds_noplan"
	e.newCustomer(np, `{}`)
	apiWantErr(t, "period_end top-up without a plan",
		e.call("POST", "/v1/customers/"+np+"/topups", `{"id":"pe_2","asset":"CREDITS","amount":"500","expires_at":"period_end"}`), 422, "no_plan_period", "")
	apiWantErr(t, "period_end adjustment without a plan",
		e.call("POST", "/v1/customers/"+np+"/adjustments", `{"transaction_id":"adj_2","asset":"CREDITS","amount":"5","expires_at":"period_end"}`), 422, "no_plan_period", "")
	apiWantErr(t, "period_end auto-reload without a plan",
		e.call("PUT", "/v1/customers/"+np, `{"auto_reload":{"asset":"CREDITS","threshold":"1","amount":"5","price":{"amount":"1","currency":"USD"},"expires_at":"period_end"}}`),
		422, "no_plan_period", "auto_reload.expires_at")
	if w, _ := e.wallet(np); len(w.Accounts) != 0 {
		t.Errorf("refused top-ups left accounts %+v", w.Accounts)
	}
	e.checkInvariants(c)
}

// TestLifecycleTopUpPeriodEndAnswer: the top-up answer shows the resolved
// expiry of a "period_end" top-up.
func TestLifecycleTopUpPeriodEndAnswer(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "wanclouds_answer"
	e.newCustomer(c, `{"plan":{"id":"w","allocations":[{"asset":"CREDITS","amount":"1000","period":"month","anchor":"2026-11-01T00:00:00Z"}]}}`)
	const body = `{"id":"pe_1","asset":"CREDITS","amount":"500","expires_at":"period_end"}`
	tu := e.topUp(c, body)
	if apiStrOr(tu.ExpiresAt, "null") != "2026-12-01T00:00:00.000Z" {
		t.Errorf("top-up answer expires_at %s, want 2026-12-01T00:00:00.000Z", apiStrOr(tu.ExpiresAt, "null"))
	}
	var again apiTopUp
	apiDecode(t, e.must(200, "POST", "/v1/customers/"+c+"/topups", body).Body, &again)
	if apiStrOr(again.ExpiresAt, "null") != "2026-12-01T00:00:00.000Z" {
		t.Errorf("replayed top-up answer expires_at %s, want 2026-12-01T00:00:00.000Z", apiStrOr(again.ExpiresAt, "null"))
	}
}

// TestLifecycleAlphioReversal: a top-up can be reversed inside 24h when
// none of it was spent: 409 topup_spent otherwise, 409
// reversal_window_elapsed after the window (24h exactly is still inside).
func TestLifecycleAlphioReversal(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "alphio_rev"
	e.newCustomer(c, `{}`)
	rev := func(id string) apiResp { return e.call("POST", "/v1/customers/"+c+"/topups/"+id+"/reverse", "") }

	e.topUp(c, `{"id":"r1","asset":"CREDITS","amount":"100"}`)
	r := rev("r1")
	if r.Status != 200 {
		t.Fatalf("reverse r1: %s", r)
	}
	var body struct {
		Status     string `json:"status"`
		BucketID   string `json:"bucket_id"`
		ReversedAt string `json:"reversed_at"`
	}
	apiDecode(t, r.Body, &body)
	if body.Status != "reversed" || body.BucketID != "b_1" || body.ReversedAt != "2026-11-05T12:00:00.000Z" {
		t.Errorf("reverse r1 answer %s", r.Body)
	}
	if r := rev("r1"); r.Status != 200 {
		t.Errorf("reverse r1 again: %s, want 200 reversed", r)
	}

	e.topUp(c, `{"id":"r2","asset":"CREDITS","amount":"100"}`)
	wantParts(t, "spend r2", e.use(c, "x1", 1, ""), "b_2:1")
	apiWantErr(t, "reverse a spent top-up", rev("r2"), 409, "topup_spent", "")

	e.topUp(c, `{"id":"r3","asset":"CREDITS","amount":"100"}`)
	e.topUp(c, `{"id":"r4","asset":"CREDITS","amount":"100"}`)
	e.clockAdvance("24h")
	if r := rev("r4"); r.Status != 200 {
		t.Errorf("reverse r4 after exactly 24h: %s, want 200", r)
	}
	e.clockAdvance("1h")
	apiWantErr(t, "reverse after 25h", rev("r3"), 409, "reversal_window_elapsed", "")

	wantLines(t, "ledger", lcEntries(e.ledgerAll(c, "default:CREDITS")), []string{
		"topup 100 b_1 2026-11-05T12:00:00.000Z",
		"topup_reversal -100 b_1 2026-11-05T12:00:00.000Z",
		"topup 100 b_2 2026-11-05T12:00:00.000Z",
		"usage -1 b_2 2026-11-05T12:00:00.000Z",
		"topup 100 b_3 2026-11-05T12:00:00.000Z",
		"topup 100 b_4 2026-11-05T12:00:00.000Z",
		"topup_reversal -100 b_4 2026-11-06T12:00:00.000Z",
	})
	apiWantDec(t, "available", e.credits(c).Available, "199")
	e.checkInvariants(c)
}

// TestLifecycleExactExpiry: a bucket expiring at T is there at T-1ms and
// gone at T+1ms, with its expiry entry at exactly T, although no timer and
// no test-clock move ran in between: every operation brings its wallet to
// the present first (ManualClock.Set moves time without running anything).
func TestLifecycleExactExpiry(t *testing.T) {
	e, clk := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "exact"
	T := time.Date(2026, 11, 5, 22, 0, 0, 0, time.UTC)
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"exp","asset":"CREDITS","amount":"500","expires_at":"2026-11-05T22:00:00Z"}`)
	e.topUp(c, `{"id":"keep","asset":"CREDITS","amount":"1000"}`)

	clk.Set(T.Add(-time.Millisecond).UnixNano())
	a := e.credits(c)
	apiWantDec(t, "available at T-1ms", a.Available, "1500")
	wantLines(t, "buckets at T-1ms", lcBuckets(a), []string{
		"b_1 recharge 500/500 2026-11-05T22:00:00.000Z topup exp",
		"b_2 recharge 1000/1000 never topup keep",
	})
	// At T-1ms the expiring bucket is still spent first (it expires first).
	wantParts(t, "at T-1ms", e.use(c, "before", 100, ""), "b_1:100")

	clk.Set(T.Add(time.Millisecond).UnixNano())
	// A charge at T+1ms, with nothing read since: the expired bucket gives nothing.
	wantParts(t, "at T+1ms", e.use(c, "after", 100, ""), "b_2:100")
	a = e.credits(c)
	apiWantDec(t, "available at T+1ms", a.Available, "900")
	wantLines(t, "buckets at T+1ms", lcBuckets(a), []string{"b_2 recharge 900/1000 never topup keep"})

	ledger := e.ledgerAll(c, "default:CREDITS")
	wantLines(t, "ledger", lcEntries(ledger), []string{
		"topup 500 b_1 2026-11-05T12:00:00.000Z",
		"topup 1000 b_2 2026-11-05T12:00:00.000Z",
		"usage -100 b_1 2026-11-05T21:59:59.999Z",
		"expiry -400 b_1 2026-11-05T22:00:00.000Z",
		"usage -100 b_2 2026-11-05T22:00:00.001Z",
	})
	if len(ledger) == 5 && ledger[1].RecordedAt != "2026-11-05T22:00:00.001Z" {
		t.Errorf("expiry recorded_at %s, want 2026-11-05T22:00:00.001Z (when it was applied)", ledger[1].RecordedAt)
	}
	var expired []lcNote
	for _, n := range e.notes(c) {
		if n.Type == "bucket.expired" {
			expired = append(expired, n)
		}
	}
	if len(expired) != 1 || expired[0].CreatedAt != "2026-11-05T22:00:00.000Z" || expired[0].Data["bucket_id"] != "b_1" || expired[0].Data["amount"] != "400" {
		t.Errorf("bucket.expired notifications %+v, want one for b_1 (400) at T", expired)
	}
	e.checkInvariants(c)
}

// TestLifecycleExactExpiryReadsFirst: the ledger and the notifications
// read at T+1ms, before anything else touched the wallet, already show the
// expiry at T: "for every account, at every moment, the sum of its ledger
// amounts equals available".
func TestLifecycleExactExpiryReadsFirst(t *testing.T) {
	e, clk := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "exact_reads"
	T := time.Date(2026, 11, 5, 22, 0, 0, 0, time.UTC)
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"exp","asset":"CREDITS","amount":"500","expires_at":"2026-11-05T22:00:00Z"}`)
	clk.Set(T.Add(time.Millisecond).UnixNano())

	wantLines(t, "ledger read first at T+1ms", lcEntries(e.ledgerAll(c, "default:CREDITS")), []string{
		"topup 500 b_1 2026-11-05T12:00:00.000Z",
		"expiry -500 b_1 2026-11-05T22:00:00.000Z",
	})
	n := e.notes(c)
	if len(n) != 2 || n[1].Type != "bucket.expired" || n[1].CreatedAt != "2026-11-05T22:00:00.000Z" || n[0].Type != "balance.depleted" {
		t.Errorf("notifications read first at T+1ms: %+v, want bucket.expired at T, then balance.depleted", n)
	}
	apiWantDec(t, "available at T+1ms", e.credits(c).Available, "0")
}

// TestLifecycleHoldsConcurrent: 64 concurrent holds of 100 on 1000
// available: exactly 10 are placed, the others refused insufficient_funds.
func TestLifecycleHoldsConcurrent(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "holds_conc"
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"t","asset":"CREDITS","amount":"1000"}`)

	const n = 64
	var wg sync.WaitGroup
	resps := make([]apiResp, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resps[i], errs[i] = e.try("POST", "/v1/holds", fmt.Sprintf(`{"id":"hc_%02d","customer_id":%q,"account":"default:CREDITS","amount":"100"}`, i, c))
		}()
	}
	wg.Wait()
	placed := 0
	for i, r := range resps {
		if errs[i] != nil {
			t.Fatalf("hold %d: %v", i, errs[i])
		}
		switch r.Status {
		case 201:
			placed++
			var h lcHold
			apiDecode(t, r.Body, &h)
			if h.Status != "active" || h.Amount != "100" {
				t.Errorf("hold %d: %s", i, r.Body)
			}
		default:
			var er apiErrorResp
			apiDecode(t, r.Body, &er)
			if er.Error == nil || er.Error.Code != "insufficient_funds" || r.Status != 402 {
				t.Errorf("hold %d: %s, want 402 insufficient_funds", i, r)
			}
		}
	}
	if placed != 10 {
		t.Errorf("%d holds placed, want exactly 10", placed)
	}
	a := e.credits(c)
	apiWantDec(t, "available", a.Available, "0")
	apiWantDec(t, "held", a.Held, "1000")
	holds := 0
	for _, en := range e.ledgerAll(c, "default:CREDITS") {
		if en.Type == "hold" {
			holds++
			if en.Amount != "-100" || en.BucketID != nil {
				t.Errorf("hold entry %+v, want -100 without a bucket", en)
			}
		}
	}
	if holds != 10 {
		t.Errorf("%d hold entries, want 10", holds)
	}
	e.checkInvariants(c)
}

// TestLifecycleHoldInsufficientFundsStatus: the contract answers a hold
// larger than available with 402 insufficient_funds (negative adjustments
// keep 409).
func TestLifecycleHoldInsufficientFundsStatus(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "holds_402"
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"t","asset":"CREDITS","amount":"100"}`)
	apiWantErr(t, "hold above available", e.call("POST", "/v1/holds", `{"id":"h402","customer_id":"holds_402","account":"default:CREDITS","amount":"101"}`),
		402, "insufficient_funds", "")
	apiWantErr(t, "negative adjustment above available", e.call("POST", "/v1/customers/"+c+"/adjustments", `{"transaction_id":"neg","asset":"CREDITS","amount":"-101"}`),
		409, "insufficient_funds", "")
}

// TestLifecycleHolds: settling a hold below, at and above its amount;
// release; expiry by the test clock; reads and idempotent placement.
func TestLifecycleHolds(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "holds"
	const t0 = "2026-11-05T12:00:00.000Z"
	e.newCustomer(c, `{}`)
	e.topUp(c, `{"id":"t1","asset":"CREDITS","amount":"1000"}`)
	place := func(id string, amount int, extra string) lcHold {
		t.Helper()
		r := e.must(201, "POST", "/v1/holds", fmt.Sprintf(`{"id":%q,"customer_id":%q,"account":"default:CREDITS","amount":"%d"%s}`, id, c, amount, extra))
		var h lcHold
		apiDecode(t, r.Body, &h)
		if h.ID != id || h.CustomerID != c || h.Status != "active" || h.Amount != fmt.Sprint(amount) || h.Account != "default:CREDITS" {
			t.Errorf("placed hold %s", r.Body)
		}
		return h
	}
	avail := func(what, want string) {
		t.Helper()
		apiWantDec(t, what, e.credits(c).Available, want)
	}

	h := place("h_below", 300, "")
	if h.CreatedAt != t0 || h.ExpiresAt != "2026-11-05T13:00:00.000Z" || h.SettledBy != nil || h.SettledAmount != nil {
		t.Errorf("h_below %+v, want created now, expiring in 1h (the default)", h)
	}
	if got := e.hold("h_below"); got != h {
		t.Errorf("GET h_below %+v, want %+v", got, h)
	}
	a := e.credits(c)
	apiWantDec(t, "available with h_below", a.Available, "700")
	apiWantDec(t, "held with h_below", a.Held, "300")

	// Below: the reservation comes back, the charge is taken as usual.
	wantParts(t, "settle below", e.use(c, "ev_below", 200, "h_below"), "b_1:200")
	if h := e.hold("h_below"); h.Status != "settled" || apiStrOr(h.SettledBy, "") != "ev_below" || apiStrOr(h.SettledAmount, "") != "200" {
		t.Errorf("h_below after its event %+v", h)
	}
	avail("available after settling below", "800")

	place("h_equal", 300, "")
	wantParts(t, "settle equal", e.use(c, "ev_equal", 300, "h_equal"), "b_1:300")
	avail("available after settling equal", "500")

	// Above: the excess beyond the account's means goes into debt.
	place("h_above", 300, "")
	avail("available with h_above", "200")
	r := e.use(c, "ev_above", 700, "h_above")
	wantParts(t, "settle above", r, "b_1:500", "debt:200")
	apiWantDec(t, "ev_above balance", r.Balances["default:CREDITS"], "-200")
	a = e.credits(c)
	apiWantDec(t, "available after settling above", a.Available, "-200")
	apiWantDec(t, "debt after settling above", a.Debt, "200")
	if h := e.hold("h_above"); h.Status != "settled" || apiStrOr(h.SettledAmount, "") != "700" {
		t.Errorf("h_above %+v", h)
	}

	// A top-up settles the debt first.
	e.topUp(c, `{"id":"t2","asset":"CREDITS","amount":"1000"}`)
	avail("available after t2", "800")

	// Release: the reservation comes back; again is the same; a settled hold cannot be released.
	place("h_rel", 100, "")
	avail("available with h_rel", "700")
	var rel lcHold
	apiDecode(t, e.must(200, "POST", "/v1/holds/h_rel/release", "").Body, &rel)
	if rel.Status != "released" || rel.SettledBy != nil {
		t.Errorf("released %+v", rel)
	}
	if again := e.must(200, "POST", "/v1/holds/h_rel/release", ""); !strings.Contains(string(again.Body), `"status":"released"`) {
		t.Errorf("release again: %s", again)
	}
	apiWantErr(t, "release a settled hold", e.call("POST", "/v1/holds/h_below/release", ""), 409, "hold_not_active", "")
	apiWantErr(t, "release an unknown hold", e.call("POST", "/v1/holds/h_none/release", ""), 404, "not_found", "")
	apiWantErr(t, "read an unknown hold", e.call("GET", "/v1/holds/h_none", ""), 404, "not_found", "")
	avail("available after release", "800")
	if h := e.hold("h_rel"); h.Status != "released" {
		t.Errorf("GET h_rel %+v", h)
	}
	// An event naming an ended hold is charged as usual; one naming no hold of this customer is invalid.
	wantParts(t, "event with a released hold", e.use(c, "ev_rel", 10, "h_rel"), "b_2:10")
	apiWantRejected(t, "event with an unknown hold", e.use(c, "ev_none", 10, "h_none"), "invalid_event", "", "hold_id")
	avail("available after ev_rel", "790")

	// Idempotent placement: the same id and content is 200 with the same
	// hold; other content or another customer is 409.
	const idem = `{"id":"h_idem","customer_id":"holds","account":"default:CREDITS","amount":"50","expires_at":"2026-11-05T12:20:00Z"}`
	first := e.must(201, "POST", "/v1/holds", idem)
	second := e.must(200, "POST", "/v1/holds", idem)
	if apiCanon(t, first.Body) != apiCanon(t, second.Body) {
		t.Errorf("replayed hold:\nfirst  %s\nsecond %s", first.Body, second.Body)
	}
	apiWantErr(t, "same id, other amount", e.call("POST", "/v1/holds", strings.Replace(idem, `"50"`, `"60"`, 1)), 409, "idempotency_conflict", "")
	e.newCustomer("holds_other", `{}`)
	apiWantErr(t, "same id, other customer", e.call("POST", "/v1/holds", strings.Replace(idem, `"holds"`, `"holds_other"`, 1)), 409, "idempotency_conflict", "")
	avail("available with h_idem", "740")

	// Expiry: the test clock passes expires_at; the hold releases itself at that instant.
	place("h_exp", 250, `,"expires_at":"2026-11-05T12:30:00Z"`)
	avail("available with h_exp", "490")
	e.clockAdvance("1h")
	for _, id := range []string{"h_idem", "h_exp"} {
		h := e.hold(id)
		if h.Status != "expired" || h.UpdatedAt != h.ExpiresAt {
			t.Errorf("%s after its expiry: %+v, want expired, updated at expires_at", id, h)
		}
	}
	a = e.credits(c)
	apiWantDec(t, "available after the expiries", a.Available, "790")
	apiWantDec(t, "held after the expiries", a.Held, "0")
	var expired []string
	for _, n := range e.notes(c) {
		if n.Type == "hold.expired" {
			expired = append(expired, fmt.Sprintf("%v %v %s", n.Data["hold_id"], n.Data["amount"], n.CreatedAt))
		}
	}
	wantLines(t, "hold.expired notifications (newest first)", expired, []string{
		"h_exp 250 2026-11-05T12:30:00.000Z",
		"h_idem 50 2026-11-05T12:20:00.000Z",
	})

	ledger := e.ledgerAll(c, "default:CREDITS")
	wantLines(t, "ledger", lcEntries(ledger), []string{
		"topup 1000 b_1 " + t0,
		"hold -300 - " + t0,
		"hold_release 300 - " + t0,
		"usage -200 b_1 " + t0,
		"hold -300 - " + t0,
		"hold_release 300 - " + t0,
		"usage -300 b_1 " + t0,
		"hold -300 - " + t0,
		"hold_release 300 - " + t0,
		"usage -500 b_1 " + t0,
		"usage -200 - " + t0,
		"topup 200 - " + t0, // the top-up settles the debt first
		"topup 800 b_2 " + t0,
		"hold -100 - " + t0,
		"hold_release 100 - " + t0,
		"usage -10 b_2 " + t0,
		"hold -50 - " + t0,
		"hold -250 - " + t0,
		"hold_release 50 - 2026-11-05T12:20:00.000Z",
		"hold_release 250 - 2026-11-05T12:30:00.000Z",
	})
	// Hold entries name their hold; a settling release names its event.
	var refs []string
	for i := len(ledger) - 1; i >= 0; i-- {
		if en := ledger[i]; en.Type == "hold" || en.Type == "hold_release" {
			refs = append(refs, en.Type+" "+apiStrOr(en.Reference, "-")+" "+apiStrOr(en.EventID, "-"))
		}
	}
	wantLines(t, "hold entries' references and events", refs, []string{
		"hold h_below -", "hold_release h_below ev_below",
		"hold h_equal -", "hold_release h_equal ev_equal",
		"hold h_above -", "hold_release h_above ev_above",
		"hold h_rel -", "hold_release h_rel -",
		"hold h_idem -", "hold h_exp -",
		"hold_release h_idem -", "hold_release h_exp -",
	})
	e.checkInvariants(c)
}

// TestLifecycleReplayAfterExpiry: repeating a write with the same id and
// the same content returns the original result, also once its expires_at
// has passed.
func TestLifecycleReplayAfterExpiry(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "replay"
	e.newCustomer(c, `{}`)
	const hold = `{"id":"h_replay","customer_id":"replay","account":"default:CREDITS","amount":"50","expires_at":"2026-11-05T12:20:00Z"}`
	const top = `{"id":"t_replay","asset":"CREDITS","amount":"100","expires_at":"2026-11-05T12:10:00Z"}`
	e.topUp(c, top)
	e.must(201, "POST", "/v1/holds", hold)
	e.clockAdvance("1h")
	if r := e.call("POST", "/v1/holds", hold); r.Status != 200 || !strings.Contains(string(r.Body), `"status":"expired"`) {
		t.Errorf("replayed hold after its expiry: %s, want 200 with the hold (expired)", r)
	}
	if r := e.call("POST", "/v1/customers/"+c+"/topups", top); r.Status != 200 {
		t.Errorf("replayed top-up after its expiry: %s, want 200 with the original answer", r)
	}
}

// TestLifecycleAutoReloadConcurrency: 64 clients drain one customer in
// parallel while a confirmer confirms the pending requests: never more
// than max_unpaid (2) requests pending, at most max_per_period requests,
// every event charged or rejected insufficient_funds, and the ledger adds up.
func TestLifecycleAutoReloadConcurrency(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "reload_conc"
	const maxPerPeriod, maxUnpaid = 40, 2
	e.newCustomer(c, fmt.Sprintf(`{"auto_reload":{"asset":"CREDITS","threshold":"2000","amount":"2000","price":{"amount":"1.00","currency":"USD"},"max_per_period":%d,"max_unpaid":%d}}`,
		maxPerPeriod, maxUnpaid))
	e.topUp(c, `{"id":"t","asset":"CREDITS","amount":"4000"}`)

	const clients, perClient = 64, 25 // 64000 CREDITS asked, at most 4000 + 40 x 2000 = 84000 given
	var (
		charged, rejected atomic.Int64
		failures          = make(chan string, clients*perClient+100)
		done              = make(chan struct{})
		maxPending        atomic.Int64
		listings          atomic.Int64
	)
	// observe lists the requests and records how many are pending.
	observe := func() (pending []string, ok bool) {
		r, err := e.try("GET", "/v1/customers/"+c+"/auto-reload/requests?limit=1000", "")
		if err != nil || r.Status != 200 {
			failures <- fmt.Sprintf("listing: %v %s", err, r)
			return nil, false
		}
		var p lcReloadPage
		if err := json.Unmarshal(r.Body, &p); err != nil {
			failures <- fmt.Sprintf("listing %s: %v", r.Body, err)
			return nil, false
		}
		listings.Add(1)
		n := int64(0)
		for _, rq := range p.Requests {
			if rq.Status == "pending" {
				n++
				pending = append(pending, rq.ID)
			}
		}
		for {
			if m := maxPending.Load(); n <= m || maxPending.CompareAndSwap(m, n) {
				break
			}
		}
		return pending, true
	}
	var confirmer sync.WaitGroup
	confirmer.Add(2)
	go func() { // an observer that only lists
		defer confirmer.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, ok := observe(); !ok {
				return
			}
		}
	}()
	go func() {
		defer confirmer.Done()
		for last := false; !last; {
			select {
			case <-done:
				last = true // one more pass after the clients are done
			default:
			}
			pending, ok := observe()
			if !ok {
				return
			}
			for _, id := range pending {
				r, err := e.try("POST", "/v1/customers/"+c+"/auto-reload/requests/"+id+"/confirm", "")
				if err != nil || r.Status != 200 {
					failures <- fmt.Sprintf("confirm %s: %v %s", id, err, r)
					return
				}
			}
			if len(pending) == 0 {
				time.Sleep(200 * time.Microsecond)
			}
		}
	}()

	var wg sync.WaitGroup
	for g := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perClient {
				body := fmt.Sprintf(`{"events":[{"id":"g%d_%d","customer_id":%q,"event_type":"tokens_used","data":{"tokens":40}}]}`, g, i, c)
				r, err := e.try("POST", "/v1/events", body)
				if err != nil || r.Status != 200 {
					failures <- fmt.Sprintf("event g%d_%d: %v %s", g, i, err, r)
					return
				}
				var rs apiResults
				if err := json.Unmarshal(r.Body, &rs); err != nil || len(rs.Results) != 1 {
					failures <- fmt.Sprintf("event g%d_%d: %s", g, i, r.Body)
					return
				}
				switch res := rs.Results[0]; {
				case res.Status == "charged" && len(res.Charges) == 1 && res.Charges[0].Amount == "40":
					charged.Add(1)
				case res.Status == "rejected" && res.Error != nil && res.Error.Code == "insufficient_funds":
					rejected.Add(1)
				default:
					failures <- fmt.Sprintf("event g%d_%d: %v", g, i, res)
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	confirmer.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	if t.Failed() {
		return
	}

	if n := maxPending.Load(); n > maxUnpaid {
		t.Errorf("a listing showed %d pending requests, want at most %d", n, maxUnpaid)
	}
	if charged.Load()+rejected.Load() != clients*perClient {
		t.Errorf("%d charged + %d rejected, want %d", charged.Load(), rejected.Load(), clients*perClient)
	}
	reqs := e.reloads(c)
	if len(reqs) == 0 || len(reqs) > maxPerPeriod {
		t.Errorf("%d requests, want 1 to %d", len(reqs), maxPerPeriod)
	}
	for _, rq := range reqs {
		if rq.Status != "completed" {
			t.Errorf("request %+v left %s after the confirmer's last pass", rq, rq.Status)
		}
	}
	// available = 4000 + 2000 per request - 40 per charged event, and the ledger says the same.
	want := 4000 + 2000*int64(len(reqs)) - 40*charged.Load()
	a := e.credits(c)
	apiWantDec(t, "available", a.Available, fmt.Sprint(want))
	// The usage entries add up to the charged events (an event may span two buckets).
	used := new(big.Rat)
	for _, en := range e.ledgerAll(c, "default:CREDITS") {
		if en.Type == "usage" {
			used.Sub(used, apiRat(t, en.Amount))
		}
	}
	if used.Cmp(big.NewRat(40*charged.Load(), 1)) != 0 {
		t.Errorf("usage entries sum to -%s, want -%d (40 per charged event)", used.RatString(), 40*charged.Load())
	}
	t.Logf("%d charged, %d rejected, %d requests, %d listings, at most %d pending", charged.Load(), rejected.Load(), len(reqs), listings.Load(), maxPending.Load())
	e.checkInvariants(c)
}

// TestLifecycleNotifications: balance.low fires once per downward crossing
// of each threshold, balance.depleted at zero, balance.recovered after a
// top-up, bucket.expired and auto_reload.requested; the list is newest
// first with stable ids "<customer>/n<seq>" and pages through next.
func TestLifecycleNotifications(t *testing.T) {
	e, _ := newLifecycleEnv(t, "2026-11-05T12:00:00Z")
	const c = "notes"
	const t0 = "2026-11-05T12:00:00.000Z"
	e.newCustomer(c, `{"balance_alerts":["5000","1000"]}`)
	e.topUp(c, `{"id":"t1","asset":"CREDITS","amount":"6000"}`)
	charge := func(id string, n int) {
		t.Helper()
		if r := e.use(c, id, n, ""); r.Status != "charged" {
			t.Fatalf("%s: %v", id, r)
		}
	}
	charge("u1", 1500)                                          // 4500: below 5000
	charge("u2", 500)                                           // 4000: still below 5000, nothing
	charge("u3", 3500)                                          // 500: below 1000
	charge("u4", 500)                                           // 0: depleted
	e.topUp(c, `{"id":"t2","asset":"CREDITS","amount":"2000"}`) // 2000: recovered
	charge("u5", 1500)                                          // 500: below 1000 again
	e.must(201, "POST", "/v1/customers/"+c+"/adjustments",
		`{"transaction_id":"promo","asset":"CREDITS","amount":"300","kind":"promotional","expires_at":"2026-11-05T13:00:00Z"}`)
	e.clockAdvance("2h") // the promotion expires at 13:00: 500, still below 1000
	e.must(200, "PUT", "/v1/customers/"+c, `{"balance_alerts":["5000","1000"],"auto_reload":{"asset":"CREDITS","threshold":"1000","amount":"5000","price":{"amount":"50","currency":"USD"}}}`)
	charge("u6", 100) // 400: an auto-reload of 5000

	notes := e.notes(c)
	var got []string
	for _, n := range notes {
		if n.CustomerID != c || n.Account != "default:CREDITS" {
			t.Errorf("notification %+v: customer or account", n)
		}
		d, _ := json.Marshal(n.Data)
		got = append(got, n.ID+" "+n.Type+" "+n.CreatedAt+" "+string(d))
	}
	wantLines(t, "notifications (newest first)", got, []string{
		c + `/n7 auto_reload.requested 2026-11-05T14:00:00.000Z {"amount":"5000","charge":{"amount":"50","currency":"USD"},"mode":"grant_immediately","request_id":"r_1","status":"pending"}`,
		c + `/n6 bucket.expired 2026-11-05T13:00:00.000Z {"amount":"300","bucket_id":"b_3","kind":"promotional","reference":"promo"}`,
		c + `/n5 balance.low ` + t0 + ` {"available":"500","threshold":"1000"}`,
		c + `/n4 balance.recovered ` + t0 + ` {"available":"2000"}`,
		c + `/n3 balance.depleted ` + t0 + ` {"available":"0"}`,
		c + `/n2 balance.low ` + t0 + ` {"available":"500","threshold":"1000"}`,
		c + `/n1 balance.low ` + t0 + ` {"available":"4500","threshold":"5000"}`,
	})

	// Pages of 3: n7-n5, n4-n2, n1.
	var paged []string
	before := ""
	var cursors []string
	for range 10 {
		q := "?limit=3"
		if before != "" {
			q += "&before=" + before
		}
		var p lcNotePage
		apiDecode(t, e.must(200, "GET", "/v1/customers/"+c+"/notifications"+q, "").Body, &p)
		for _, n := range p.Notifications {
			paged = append(paged, n.ID)
		}
		if p.Next == nil {
			break
		}
		before = *p.Next
		cursors = append(cursors, before)
	}
	wantLines(t, "paged ids", paged, []string{c + "/n7", c + "/n6", c + "/n5", c + "/n4", c + "/n3", c + "/n2", c + "/n1"})
	if len(cursors) != 2 {
		t.Errorf("cursors %v, want 2 (3 pages)", cursors)
	}
	// The ids are stable: listing again gives the same.
	if again := e.notes(c); len(again) != len(notes) || again[0].ID != notes[0].ID || again[len(again)-1].ID != notes[len(notes)-1].ID {
		t.Errorf("listing again changed the ids")
	}
	apiWantErr(t, "notifications of an unknown customer", e.call("GET", "/v1/customers/nobody/notifications", ""), 404, "unknown_customer", "")
	apiWantErr(t, "bad cursor", e.call("GET", "/v1/customers/"+c+"/notifications?before=x", ""), 400, "invalid_cursor", "before")
	apiWantDec(t, "available at the end", e.credits(c).Available, "5400")
	e.checkInvariants(c)
}
