package main

// The credit lifecycle against the real binary, on the test clock.
//
// TestLifecycleCrash is the crash test of crash_test.go extended to the
// lifecycle. 50 customers have a daily accumulate allocation with a cap on
// default:CREDITS, half of them a daily expire_and_replace allocation on
// bonus:CREDITS too, auto-reload (grant_immediately, max_per_period 3,
// max_unpaid 2: a purchase does not wait for the last one's payment),
// balance alerts (half), overdraft (a quarter), a top-up that never expires
// and top-ups that expire within hours. Rounds of concurrent load (usage
// events, some settling holds; holds placed and released; pending
// auto-reload requests confirmed or failed; the clock moved by minutes to
// two days) each end with a kill -9 at a random moment. A notification
// receiver (a real HTTP server) verifies every signature and refuses one
// request in five. At the end, from the API alone: (i) every account's
// ledger sums to its available balance, and held, debt and every bucket's
// remaining are what the ledger implies; (ii) plan grants: at most one per
// allocation and period, each at its period's due instant, accumulate ones
// exactly min(amount, cap - what the allocation holds), one for every
// period unless the cap left nothing, expire_and_replace ones only for the
// period holding the time they were made, and one for the period holding
// every time the wallet was advanced to; (iii) a bucket due by the final
// clock is gone, with one expiry entry at its exact expires_at if anything
// was left of it; (iv) every acknowledged event, top-up, hold and reload
// outcome replayed returns its original result; (v) auto-reload: never
// more than max_unpaid pending, never more than max_per_period per period,
// each request granted and marked once; (vi) notifications: seqs 1..N, one per expiry, expired
// hold and reload step, every one delivered to the webhook with the listed
// body, first attempts in each customer's seq order.
//
// Choices the test rests on:
//   - The clock restarts at the latest time ever asked for, not the latest
//     acknowledged: the engine moves its clock before it runs what came due,
//     so writes can be acknowledged at the time of an unacknowledged move.
//   - The test clock runs weeks behind the wall clock (TestWebhookTestClockAhead
//     covers a clock ahead of it).
//   - The webhook delivers one notification at a time and backs off for
//     250 ms to a minute after a refusal, so the load is kept to about a
//     hundred notifications and the receiver never refuses a notification
//     more than twice in a row: everything is delivered within seconds of
//     the final restart.
//
// TestWebhookEndToEnd checks the webhook's delivery contract without
// crashes: a receiver that refuses the first deliveries gets every
// notification exactly once after its first success, signed, with the
// body the API lists, in order.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterd/meterd/sink"
)

const (
	lcCustomers      = 50
	lcKills          = 6 // kill -9s, one per round of load
	lcEventWorkers   = 2
	lcEventBatchMax  = 8
	lcHeavy          = 5                      // customers lc0..lc4 get most of the load: they run out, reload, go into debt
	lcRoundMin       = 700 * time.Millisecond // a round of load is killed after a random time in this range
	lcRoundMax       = 1800 * time.Millisecond
	lcSpanBudget     = 6 * time.Hour    // beyond it (and one jump of more than a day), the clock only moves by minutes
	lcWebhookWait    = 30 * time.Second // after the final restart, for every notification to be delivered
	lcWebhookFailPct = 20               // the receiver answers 500 to this share of requests
	lcResendSample   = 400              // acknowledged events resent after each restart
	lcTopUpsPerRound = 2                // customers given an expiring top-up after each restart

	lcGrantA       = 300 // daily accumulate allocation on default:CREDITS ...
	lcCapA         = 700 // ... under this cap
	lcGrantB       = 60  // daily expire_and_replace allocation on bonus:CREDITS
	lcReloadAmount = 250
	lcReloadMax    = 3 // auto_reload max_per_period
	lcReloadUnpaid = 2 // auto_reload max_unpaid
	lcDay          = 24 * time.Hour

	lcWebhookSecret = "lifecycle-test-webhook-secret-0123456789"
)

// lcPricing charges images to default:CREDITS (the account of the
// accumulate allocation, the top-ups, holds and auto-reload), bonus usage
// to bonus:CREDITS (the expire_and_replace allocation), and records page
// views.
const lcPricing = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],
 "prices":[
  {"event_type":"image_generated","account":"default:CREDITS","unit_price":"9"},
  {"event_type":"bonus_used","account":"bonus:CREDITS","unit_price":"3"}],
 "refund_rules":{"topup":{"window":"48h","max_used":"100"}}}`

// lcCustomer is one customer of the test and its settings.
type lcCustomer struct {
	id        string
	anchor    time.Time // of both allocations (and so of the plan period)
	overdraft bool      // with a credit limit of 150 on default:CREDITS
	alerts    bool      // balance_alerts ["150"]
	replace   bool      // the plan has the expire_and_replace allocation too
}

// settings is the customer's settings as created: active, plan "daily".
func (c *lcCustomer) settings() []byte { return c.settingsFor(`"status":"active"`, "daily", false) }

// lcPlans are the plans a customer switches between: the same allocations
// under two ids, so that a switch ends the old plan's buckets and starts
// the new plan's schedules, and the checks of plan grants (ii) still know
// every period's amount.
var lcPlans = []string{"daily", "daily2"}

// settingsFor is the customer's settings with the given status members and
// plan id; with periodEnd the plan takes over at the end of the period
// holding now (a change scheduled for the boundary, or none when it is
// the plan in force), so a save never grants a period a second time.
// Plan periods are granted while paused: the checks of plan grants (ii)
// know the plan, not when the customer was paused.
func (c *lcCustomer) settingsFor(status, plan string, periodEnd bool) []byte {
	if periodEnd {
		status += `,"plan_change":{"at":"period_end"}`
	}
	policy := `"insufficient_funds":"reject"`
	if c.overdraft {
		policy = `"insufficient_funds":"overdraft","credit_limit":{"default:CREDITS":"150"}`
	}
	alerts := `[]`
	if c.alerts {
		alerts = `["150"]`
	}
	anchor := c.anchor.Format(time.RFC3339)
	replace := ""
	if c.replace {
		replace = fmt.Sprintf(`,
  {"account":"bonus","asset":"CREDITS","amount":"%d","period":"day","anchor":%q,"strategy":"expire_and_replace"}`, lcGrantB, anchor)
	}
	return fmt.Appendf(nil, `{%s,%s,
 "plan":{"id":%q,"grant_while_paused":true,"allocations":[
  {"account":"default","asset":"CREDITS","amount":"%d","period":"day","anchor":%q,"strategy":"accumulate","cap":"%d"}%s]},
 "auto_reload":{"enabled":true,"account":"default","asset":"CREDITS","threshold":"100","amount":"%d",
  "price":{"amount":"9.00","currency":"USD"},"surcharge_pct":"30","max_per_period":%d,"max_unpaid":%d,"mode":"grant_immediately"},
 "balance_alerts":%s}`, status, policy, plan, lcGrantA, anchor, lcCapA, replace, lcReloadAmount, lcReloadMax, lcReloadUnpaid, alerts)
}

// lcPick picks a customer, a heavy one more often than not. The load is
// kept small: the webhook delivers one notification at a time and backs off
// for at least 250 ms after each refusal, so it delivers about 8
// notifications a second when one request in five is refused.
func lcPick(rng *rand.Rand, custs []*lcCustomer) *lcCustomer {
	if rng.IntN(100) < 70 {
		return custs[rng.IntN(lcHeavy)]
	}
	return custs[rng.IntN(len(custs))]
}

// lcPeriod returns the index of the day period of anchor holding t.
func lcPeriod(anchor, t time.Time) int64 {
	d, day := t.UnixNano()-anchor.UnixNano(), int64(lcDay)
	k := d / day
	if d%day != 0 && d < 0 {
		k--
	}
	return k
}

func lcPeriodStart(anchor time.Time, k int64) time.Time { return anchor.Add(time.Duration(k) * lcDay) }

// lcHold is an acknowledged hold.
type lcHold struct {
	id, customer string
	amount       int64
	expires      time.Time
}

// lcWrite is a write to replay: its request and what answered it.
type lcWrite struct {
	path, customer, id string
	body               []byte
	acked              bool
	answer             []byte // of the acknowledgement
}

// lcState is what the test knows, shared by the load's goroutines.
type lcState struct {
	start       time.Time // where the test clock starts; customers are created then
	mu          sync.Mutex
	clockAcked  time.Time   // the latest time a POST /v1/test-clock answered
	clockSent   time.Time   // the latest time one asked for: the engine never saw a later one
	ackedClocks []time.Time // every answer of POST /v1/test-clock
	bigJumps    int
	events      []*crashEvent
	holds       map[string]*lcHold              // acknowledged holds by id
	holdList    []string                        // their ids, candidates for release
	holdPool    map[string][]string             // customer -> acknowledged hold ids no event used yet
	topups      map[string]map[string]time.Time // customer -> top-up id -> expires_at (zero: never)
	topupLog    []lcWrite                       // every top-up, acknowledged
	topupAmount map[string]int                  // customer/id -> amount
	// reversals are the acknowledged reversals of top-ups (refund rule: 48
	// hours, at most 100 credits used), by customer/id.
	reversals        map[string]lcReversal
	reversalsRefused map[string]int // by code
	holdLog          []lcWrite      // every hold placement attempted

	// lastStatus is, per customer, the last write that set its status in
	// the current round (afterRestart makes every customer active).
	lastStatus map[string]lcStatusWrite
	// pausesEnded and pausesRunning count the pauses with an end that
	// checkStatus found over and not yet over.
	pausesEnded, pausesRunning int
	// changesPending counts the scheduled plan changes checkStatus found
	// still waiting for their boundary.
	changesPending int

	holdEvents, holdsRefused, holdsReleased, reloadsConfirmed, reloadsFailed, clockMoves int
	maxPendingSeen                                                                       int // auto-reload requests pending at once, as the reload worker saw them
}

// lcStatusWrite is a write that set a customer's status: "active" (its
// settings saved), "paused_until" (saved paused until a time) or "failed"
// (a failed auto purchase paused it until resumed).
type lcStatusWrite struct {
	kind  string
	until time.Time
	acked bool
}

func newLCState(start time.Time) *lcState {
	return &lcState{start: start, clockAcked: start, clockSent: start, ackedClocks: []time.Time{start},
		holds: map[string]*lcHold{}, holdPool: map[string][]string{}, topups: map[string]map[string]time.Time{},
		lastStatus: map[string]lcStatusWrite{}, topupAmount: map[string]int{}, reversals: map[string]lcReversal{},
		reversalsRefused: map[string]int{}}
}

// keptSome counts the reversals that left the customer credits it used.
func keptSome(rs map[string]lcReversal) (n int) {
	for _, r := range rs {
		if r.Kept != "0" {
			n++
		}
	}
	return n
}

// lcReversal is what an acknowledged top-up reversal took back and kept.
type lcReversal struct {
	Reversed string `json:"reversed"`
	Kept     string `json:"kept"`
}

// reverseSome asks for the reversal of up to n random top-ups not reversed
// yet: some partly used (kept), some past the allowance or the window.
func (s *lcState) reverseSome(h *crashHarness, errs *errLimiter, rng *rand.Rand, n int) {
	var ids []string
	for c, m := range s.topups {
		for id := range m {
			if _, done := s.reversals[c+"/"+id]; !done {
				ids = append(ids, c+"/"+id)
			}
		}
	}
	slices.Sort(ids)
	// First a top-up partly used within the allowance, when one is there
	// (the load draws on top-ups last): the reversal keeps what was used.
	var partly []string
	for _, key := range ids {
		c, id, _ := strings.Cut(key, "/")
		var w lcWallet
		if json.Unmarshal(h.mustDo("GET", "/v1/customers/"+c+"/wallet", nil, 200), &w) != nil {
			continue
		}
		for _, a := range w.Accounts {
			for _, b := range a.Buckets {
				amount, _ := strconv.Atoi(b.Amount)
				rem, _ := strconv.Atoi(b.Remaining)
				if b.Reference == id && b.Source != "plan" && rem > 0 && rem < amount && amount-rem <= 100 {
					partly = append(partly, key)
				}
			}
		}
	}
	for i := range n {
		if len(ids) == 0 {
			return
		}
		key := ids[rng.IntN(len(ids))]
		if i == 0 && len(partly) > 0 {
			key = partly[rng.IntN(len(partly))]
		}
		if _, done := s.reversals[key]; done {
			continue // picked again in this call: reversed already
		}
		c, id, _ := strings.Cut(key, "/")
		status, b, err := h.do("POST", "/v1/customers/"+c+"/topups/"+id+"/reverse", nil)
		if err != nil {
			errs.Errorf("reversal of %s: %v", key, err)
			return
		}
		switch code := apiCode(b); {
		case status == 200:
			var r lcReversal
			if json.Unmarshal(b, &r) != nil {
				errs.Errorf("reversal of %s: %s", key, b)
				continue
			}
			rev, _ := strconv.Atoi(r.Reversed)
			kept, _ := strconv.Atoi(r.Kept)
			if rev+kept != s.topupAmount[key] || kept > 100 || rev <= 0 {
				errs.Errorf("reversal of %s (%d credits, at most 100 used): %s", key, s.topupAmount[key], b)
			}
			s.reversals[key] = r
		case status == 409 && (code == "topup_spent" || code == "refund_allowance_exceeded" || code == "reversal_window_elapsed"):
			s.reversalsRefused[code]++
		default:
			errs.Errorf("reversal of %s: status %d: %s", key, status, b)
		}
	}
}

// setStatus records a status write of customer c, before it is sent
// (acked false) and once it is answered (acked true).
func (s *lcState) setStatus(c string, w lcStatusWrite) {
	s.mu.Lock()
	s.lastStatus[c] = w
	s.mu.Unlock()
}

// args are meterd's flags beyond --data-dir and --listen: the test clock
// restarts at the latest time ever asked for. Writes may have been
// acknowledged at that time while the POST that moved the clock there was
// not (the engine moves its clock before it runs what came due), so
// restarting at the last acknowledged time could move time backwards
// under acknowledged state.
func (s *lcState) args(webhookURL string) []string {
	return []string{"--test-clock", "--test-clock-start", s.clockSent.Format(time.RFC3339Nano),
		"--webhook-url", webhookURL, "--webhook-secret", lcWebhookSecret,
		"--dedup-window", "8760h"}
}

// apiCode returns the error code of an error answer.
func apiCode(body []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Error.Code
}

// lcAcknowledge records the answers to events sent for the first time.
func lcAcknowledge(errs *errLimiter, evs []*crashEvent, results []crashResult) {
	for i, r := range results {
		e := evs[i]
		switch r.Status {
		case "charged", "recorded":
			e.ack, e.ackCharges = r.Status, r.Charges
		case "rejected":
			switch r.code() {
			case "insufficient_funds", "account_paused":
			default:
				errs.Errorf("event %s (%s): rejected %s: %+v", e.id, e.raw, r.code(), r.Error)
			}
			e.ack, e.ackCode = "rejected", r.code()
		default:
			errs.Errorf("event %s sent once: status %q, want charged, recorded or rejected", e.id, r.Status)
		}
	}
}

// eventWorker sends batches of events, some settling holds, until stop or
// until the process dies.
func (s *lcState) eventWorker(c *http.Client, base string, round, w int, rng *rand.Rand, custs []*lcCustomer, stop *atomic.Bool, errs *errLimiter) {
	for b := 0; !stop.Load(); b++ {
		evs := make([]*crashEvent, 1+rng.IntN(lcEventBatchMax))
		s.mu.Lock()
		occurred := s.clockAcked.Format(time.RFC3339Nano)
		for i := range evs {
			cu := lcPick(rng, custs)
			typ, hold := "image_generated", "null"
			switch r := rng.IntN(100); {
			case r < 12:
				typ = "bonus_used"
			case r < 18:
				typ = "page_viewed"
			case r < 40:
				if pool := s.holdPool[cu.id]; len(pool) > 0 {
					j := rng.IntN(len(pool))
					hold = strconv.Quote(pool[j])
					s.holdPool[cu.id] = slices.Delete(pool, j, j+1)
					s.holdEvents++
				}
			}
			id := fmt.Sprintf("r%d-w%d-b%d-e%d", round, w, b, i)
			raw := fmt.Sprintf(`{"id":%q,"customer_id":%q,"event_type":%q,"occurred_at":%q,"subject":"s-%d","data":{"n":%d},"hold_id":%s}`,
				id, cu.id, typ, occurred, rng.IntN(10), rng.IntN(1000), hold)
			evs[i] = &crashEvent{id: id, customer: cu.id, raw: []byte(raw)}
		}
		s.events = append(s.events, evs...)
		s.mu.Unlock()
		results, status, body, err := postEvents(c, base+"/v1/events", evs)
		if err != nil && status == 200 {
			errs.Errorf("events worker %d: a 200 answer that does not fit the batch: %v: %s", w, err, body)
			return
		}
		if err != nil {
			return // the process died: nothing acknowledged
		}
		switch {
		case status == 429 || status == 503:
			time.Sleep(5 * time.Millisecond)
			continue
		case status != 200:
			errs.Errorf("events worker %d: status %d: %s", w, status, body)
			return
		}
		lcAcknowledge(errs, evs, results)
		time.Sleep(time.Duration(10+rng.IntN(20)) * time.Millisecond)
	}
}

// holdWorker places holds and releases some.
func (s *lcState) holdWorker(c *http.Client, base string, round int, rng *rand.Rand, custs []*lcCustomer, stop *atomic.Bool, errs *errLimiter) {
	for n := 0; !stop.Load(); n++ {
		time.Sleep(time.Duration(20+rng.IntN(30)) * time.Millisecond)
		if rng.IntN(100) < 65 {
			cu := lcPick(rng, custs)
			id := fmt.Sprintf("h%d-%d", round, n)
			amount := int64(10 + rng.IntN(51))
			s.mu.Lock()
			expires := s.clockAcked.Add(time.Duration(10+rng.IntN(230)) * time.Minute)
			s.mu.Unlock()
			body := fmt.Sprintf(`{"id":%q,"customer_id":%q,"account":"default:CREDITS","amount":"%d","expires_at":%q}`,
				id, cu.id, amount, expires.Format(time.RFC3339Nano))
			s.mu.Lock()
			s.holdLog = append(s.holdLog, lcWrite{path: "/v1/holds", customer: cu.id, id: id, body: []byte(body)})
			attempt := len(s.holdLog) - 1
			s.mu.Unlock()
			status, b, err := crashDo(c, "POST", base+"/v1/holds", []byte(body))
			if err != nil {
				return
			}
			switch code := apiCode(b); {
			case status == 201:
				var rec struct{ ID, Status, Amount string }
				if json.Unmarshal(b, &rec) != nil || rec.ID != id || rec.Status != "active" || rec.Amount != strconv.FormatInt(amount, 10) {
					errs.Errorf("hold %s placed: %s", id, b)
				}
				s.mu.Lock()
				s.holdLog[attempt].acked, s.holdLog[attempt].answer = true, b
				s.holds[id] = &lcHold{id: id, customer: cu.id, amount: amount, expires: expires}
				s.holdList = append(s.holdList, id)
				s.holdPool[cu.id] = append(s.holdPool[cu.id], id)
				s.mu.Unlock()
			case (status == 402 || status == 409) && code == "insufficient_funds":
				// 409 is a contract deviation, reported by TestHoldInsufficientFundsStatus.
				s.mu.Lock()
				s.holdsRefused++
				s.mu.Unlock()
			case status == 400 && code == "invalid_timestamp":
				// The clock passed expires_at in between.
			case status == 429 || status == 503:
			default:
				errs.Errorf("POST /v1/holds %s: status %d: %s", body, status, b)
				return
			}
			continue
		}
		s.mu.Lock()
		if len(s.holdList) == 0 {
			s.mu.Unlock()
			continue
		}
		id := s.holdList[rng.IntN(len(s.holdList))]
		s.mu.Unlock()
		status, b, err := crashDo(c, "POST", base+"/v1/holds/"+id+"/release", nil)
		if err != nil {
			return
		}
		switch {
		case status == 200:
			var rec struct{ Status string }
			if json.Unmarshal(b, &rec) != nil || rec.Status != "released" {
				errs.Errorf("hold %s released: %s", id, b)
			}
			s.mu.Lock()
			s.holdsReleased++
			s.mu.Unlock()
		case status == 409 && apiCode(b) == "hold_not_active": // settled or expired
		case status == 429 || status == 503:
		default:
			errs.Errorf("POST /v1/holds/%s/release: status %d: %s", id, status, b)
			return
		}
	}
}

// lcReload is an auto-reload request as the API shows it.
type lcReload struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	Account   string `json:"account"`
	Amount    string `json:"amount"`
	Mode      string `json:"mode"`
	BucketID  string `json:"bucket_id"`
	CreatedAt string `json:"created_at"`
	Charge    struct {
		Amount   string `json:"amount"`
		Currency string `json:"currency"`
	} `json:"charge"`
}

// reloadWorker confirms pending auto-reload requests, or fails some (and
// then saves the customer's settings again, saveSettings), and now and then
// saves a customer's settings on its own.
func (s *lcState) reloadWorker(c *http.Client, base string, rng *rand.Rand, custs []*lcCustomer, stop *atomic.Bool, errs *errLimiter) {
	for !stop.Load() {
		time.Sleep(time.Duration(10+rng.IntN(25)) * time.Millisecond)
		cu := custs[rng.IntN(len(custs))]
		if rng.IntN(6) == 0 {
			// Settings saved on their own: pauses with an end and plan
			// changes at period end, among the load.
			if !s.saveSettings(c, base, cu, rng, errs) {
				return
			}
			continue
		}
		status, b, err := crashDo(c, "GET", base+"/v1/customers/"+cu.id+"/auto-reload/requests?limit=10", nil)
		if err != nil {
			return
		}
		if status == 429 || status == 503 {
			continue
		}
		var page struct{ Requests []lcReload }
		if status != 200 || json.Unmarshal(b, &page) != nil {
			errs.Errorf("GET auto-reload requests of %s: status %d: %s", cu.id, status, b)
			return
		}
		var pending []string
		for _, r := range page.Requests {
			if r.Status == "pending" {
				pending = append(pending, r.ID)
			}
		}
		if len(pending) > lcReloadUnpaid {
			errs.Errorf("customer %s: %d pending auto-reload requests %v: never more than %d", cu.id, len(pending), pending, lcReloadUnpaid)
		}
		if len(pending) == 0 {
			continue
		}
		// Any pending request, not only the oldest: payments settle in any
		// order.
		id := pending[rng.IntN(len(pending))]
		s.mu.Lock()
		s.maxPendingSeen = max(s.maxPendingSeen, len(pending))
		s.mu.Unlock()
		action, want := "confirm", "completed"
		if rng.IntN(100) < 15 {
			action, want = "fail", "failed"
		}
		if action == "fail" {
			s.setStatus(cu.id, lcStatusWrite{kind: "failed"})
		}
		status, b, err = crashDo(c, "POST", base+"/v1/customers/"+cu.id+"/auto-reload/requests/"+id+"/"+action, nil)
		if err != nil {
			return
		}
		if action == "fail" && status == 200 {
			s.setStatus(cu.id, lcStatusWrite{kind: "failed", acked: true})
		}
		switch {
		case status == 200:
			var r lcReload
			if json.Unmarshal(b, &r) != nil || r.Status != want {
				errs.Errorf("%s of %s %s: %s", action, cu.id, id, b)
			}
			s.mu.Lock()
			if action == "fail" {
				s.reloadsFailed++
			} else {
				s.reloadsConfirmed++
			}
			s.mu.Unlock()
		case status == 429 || status == 503:
			continue
		default:
			errs.Errorf("%s of %s %s: status %d: %s", action, cu.id, id, status, b)
			return
		}
		if action == "fail" && !s.saveSettings(c, base, cu, rng, errs) {
			return
		}
	}
}

// saveSettings saves a customer's settings again (which resumes it and
// enables auto-reload again), active or paused until a time 1 to 90
// minutes ahead of the clock (it resumes by itself then), with one of the
// two plans taking over at the end of the period: a switch waits in
// scheduled_plan for the boundary, where the old plan's buckets end and the
// new plan grants the period starting there, never skipping nor repeating
// a grant (ii). It returns false when the process is gone.
func (s *lcState) saveSettings(c *http.Client, base string, cu *lcCustomer, rng *rand.Rand, errs *errLimiter) bool {
	plan := lcPlans[rng.IntN(len(lcPlans))]
	w, settings := lcStatusWrite{kind: "active"}, cu.settingsFor(`"status":"active"`, plan, true)
	if rng.IntN(2) == 0 {
		s.mu.Lock()
		w = lcStatusWrite{kind: "paused_until", until: s.clockAcked.Add(time.Duration(1+rng.IntN(90)) * time.Minute)}
		s.mu.Unlock()
		settings = cu.settingsFor(`"status":"paused","paused_until":"`+w.until.Format(time.RFC3339Nano)+`"`, plan, true)
	}
	s.setStatus(cu.id, w)
	status, b, err := crashDo(c, "PUT", base+"/v1/customers/"+cu.id, settings)
	if err != nil {
		return false
	}
	if status != 200 {
		errs.Errorf("PUT customer %s: status %d: %s", cu.id, status, b)
		return false
	}
	w.acked = true
	s.setStatus(cu.id, w)
	return true
}

// nextStep picks the clock's next move: one jump of more than a day (so
// that accumulate catches up missed periods and expire_and_replace skips
// them), minutes to hours otherwise, minutes once the span budget is spent.
func (s *lcState) nextStep(rng *rand.Rand, round int) time.Duration {
	sec := time.Duration(rng.IntN(60)) * time.Second
	if s.bigJumps == 0 && round >= 1 {
		s.bigJumps++
		return 30*time.Hour + time.Duration(rng.IntN(17*60))*time.Minute + sec
	}
	if s.clockSent.Sub(s.start) > lcSpanBudget {
		return time.Duration(2+rng.IntN(29))*time.Minute + sec
	}
	switch r := rng.IntN(100); {
	case r < 55:
		return time.Duration(2+rng.IntN(89))*time.Minute + sec
	case r < 90:
		return time.Duration(60+rng.IntN(7*60))*time.Minute + sec
	default:
		return time.Duration(8*60+rng.IntN(12*60))*time.Minute + sec
	}
}

// clockWorker moves the test clock forward, as {"advance"} or {"now"}.
func (s *lcState) clockWorker(c *http.Client, base string, round int, rng *rand.Rand, stop *atomic.Bool, errs *errLimiter) {
	for {
		time.Sleep(time.Duration(120+rng.IntN(230)) * time.Millisecond)
		if stop.Load() {
			return
		}
		s.mu.Lock()
		// Within a round the engine's clock is clockAcked == clockSent: this
		// goroutine alone moves it, and a round starts with both equal.
		step := s.nextStep(rng, round)
		target := s.clockSent.Add(step)
		s.clockSent = target
		s.mu.Unlock()
		body := fmt.Sprintf(`{"advance":%q}`, step.String())
		if rng.IntN(2) == 0 {
			body = fmt.Sprintf(`{"now":%q}`, target.Format(time.RFC3339))
		}
		status, b, err := crashDo(c, "POST", base+"/v1/test-clock", []byte(body))
		if err != nil {
			return
		}
		var ans struct{ Now string }
		if status != 200 || json.Unmarshal(b, &ans) != nil {
			errs.Errorf("POST /v1/test-clock %s: status %d: %s", body, status, b)
			return
		}
		if now, err := time.Parse(time.RFC3339Nano, ans.Now); err != nil || !now.Equal(target) {
			errs.Errorf("POST /v1/test-clock %s: now %s, want %s", body, ans.Now, target.Format(time.RFC3339Nano))
			return
		}
		s.mu.Lock()
		s.clockAcked = target
		s.ackedClocks = append(s.ackedClocks, target)
		s.clockMoves++
		s.mu.Unlock()
	}
}

// whDelivery is one request the webhook receiver got.
type whDelivery struct {
	id, customer string
	seq          uint64
	body         []byte
	status       int // what the receiver answered
	at           time.Time
}

// whReceiver is a webhook endpoint: it verifies every request, records it,
// and answers 500 to the first failFirst requests and to failPct percent
// of the others, at random, but (when streakMax > 0) to no more than
// streakMax attempts in a row of one notification: meterd's back-off
// doubles from 250-500 ms after each refusal, so long streaks would spend
// the test's time waiting.
type whReceiver struct {
	secret    []byte
	failFirst int
	failPct   int
	streakMax int

	mu         sync.Mutex
	rng        *rand.Rand
	deliveries []whDelivery
	problems   []string
	streak     map[string]int // notification id -> refusals in a row
}

func (r *whReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	id := req.Header.Get(sink.WebhookHeaderID)
	typ := req.Header.Get(sink.WebhookHeaderType)
	sig := req.Header.Get(sink.WebhookHeaderSignature)
	var problems []string
	if err != nil {
		problems = append(problems, "reading the body: "+err.Error())
	}
	if req.Method != "POST" || req.Header.Get("Content-Type") != "application/json" {
		problems = append(problems, fmt.Sprintf("%s with Content-Type %q", req.Method, req.Header.Get("Content-Type")))
	}
	if err := sink.VerifyWebhookSignature(r.secret, sig, body, time.Now(), 0); err != nil {
		problems = append(problems, fmt.Sprintf("signature %q: %v", sig, err))
	}
	if sink.VerifyWebhookSignature([]byte("another-secret-of-32-bytes-length"), sig, body, time.Now(), 0) == nil {
		problems = append(problems, "the signature verifies under another secret too")
	}
	var note struct{ ID, Type string }
	if err := json.Unmarshal(body, &note); err != nil || note.ID != id || note.Type != typ {
		problems = append(problems, fmt.Sprintf("headers id %q type %q, body %s", id, typ, body))
	}
	customer, seqText, _ := strings.Cut(id, "/n")
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if err != nil || customer == "" || seq == 0 {
		problems = append(problems, fmt.Sprintf("notification id %q is not <customer>/n<seq>", id))
	}

	r.mu.Lock()
	status := http.StatusOK
	if len(r.deliveries) < r.failFirst || r.rng.IntN(100) < r.failPct && (r.streakMax == 0 || r.streak[id] < r.streakMax) {
		status = http.StatusInternalServerError
	}
	if r.streak == nil {
		r.streak = make(map[string]int)
	}
	if status == http.StatusOK {
		delete(r.streak, id)
	} else {
		r.streak[id]++
	}
	r.deliveries = append(r.deliveries, whDelivery{id: id, customer: customer, seq: seq, body: body, status: status, at: time.Now()})
	for _, p := range problems {
		r.problems = append(r.problems, id+": "+p)
	}
	r.mu.Unlock()
	w.WriteHeader(status)
}

func (r *whReceiver) snapshot() ([]whDelivery, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.deliveries), slices.Clone(r.problems)
}

// delivered returns the ids answered 2xx at least once.
func whDelivered(ds []whDelivery) map[string]int {
	ok := make(map[string]int)
	for _, d := range ds {
		if d.status/100 == 2 {
			ok[d.id]++
		}
	}
	return ok
}

// whCheckOrder checks the webhook's ordering guarantee on a delivery log:
// a customer's notification is first attempted only once all its earlier
// ones were delivered (answered 2xx). Every notification is sent (no type
// filter) and seqs have no gaps, so the first attempts of a customer's
// notifications are seq 1, 2, 3, ... in this order.
func whCheckOrder(errs *errLimiter, ds []whDelivery) {
	attempted := make(map[string]bool)
	prefix := make(map[string]uint64)             // customer -> n: 1..n delivered
	delivered := make(map[string]map[uint64]bool) // customer -> seqs delivered
	for i, d := range ds {
		if !attempted[d.id] {
			attempted[d.id] = true
			if d.seq != prefix[d.customer]+1 {
				errs.Errorf("webhook delivery %d: first attempt of %s while %s/n1..n%d were delivered: out of order",
					i, d.id, d.customer, prefix[d.customer])
			}
		}
		if d.status/100 == 2 {
			m := delivered[d.customer]
			if m == nil {
				m = make(map[uint64]bool)
				delivered[d.customer] = m
			}
			m[d.seq] = true
			for m[prefix[d.customer]+1] {
				prefix[d.customer]++
			}
		}
	}
}

type lcWallet struct {
	Accounts []struct {
		ID        string `json:"id"`
		Available string `json:"available"`
		Held      string `json:"held"`
		Debt      string `json:"debt"`
		Buckets   []struct {
			ID        string  `json:"id"`
			Kind      string  `json:"kind"`
			Amount    string  `json:"amount"`
			Remaining string  `json:"remaining"`
			ExpiresAt *string `json:"expires_at"`
			Source    string  `json:"source"`
			Reference string  `json:"reference"`
		} `json:"buckets"`
	} `json:"accounts"`
}

// lcNote is a notification as GET .../notifications lists it.
type lcNote struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	CustomerID string `json:"customer_id"`
	Account    string `json:"account"`
	CreatedAt  string `json:"created_at"`
	Data       struct {
		BucketID  string `json:"bucket_id"`
		HoldID    string `json:"hold_id"`
		RequestID string `json:"request_id"`
		Amount    string `json:"amount"`
	} `json:"data"`
	raw []byte
}

// lcPages reads every item of a paged list (newest first, "next" cursors).
func lcPages(h *crashHarness, path, key string) []json.RawMessage {
	t := h.t
	t.Helper()
	var out []json.RawMessage
	p := path + "?limit=1000"
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatalf("%s: more than 1000 pages", path)
		}
		var page map[string]json.RawMessage
		if err := json.Unmarshal(h.mustDo("GET", p, nil, 200), &page); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		var items []json.RawMessage
		var next *string
		if err := json.Unmarshal(page[key], &items); err != nil {
			t.Fatalf("%s: %q: %v", p, key, err)
		}
		if err := json.Unmarshal(page["next"], &next); err != nil {
			t.Fatalf("%s: next: %v", p, err)
		}
		out = append(out, items...)
		if next == nil {
			return out
		}
		if len(items) == 0 {
			t.Fatalf("%s: an empty page with a next cursor", p)
		}
		p = path + "?limit=1000&before=" + *next
	}
}

// lcNotes reads a customer's notifications, oldest first, and checks their
// seqs are 1..N with no gap and no duplicate.
func lcNotes(h *crashHarness, errs *errLimiter, c string) []lcNote {
	raws := lcPages(h, "/v1/customers/"+c+"/notifications", "notifications")
	notes := make([]lcNote, len(raws))
	for i, raw := range raws {
		n := &notes[len(raws)-1-i]
		if err := json.Unmarshal(raw, n); err != nil {
			errs.Errorf("notification of %s: %v: %s", c, err, raw)
		}
		n.raw = raw
	}
	for i, n := range notes {
		if want := fmt.Sprintf("%s/n%d", c, i+1); n.ID != want || n.CustomerID != c {
			errs.Errorf("notifications of %s: item %d (oldest first) is %s of customer %s, want %s: a gap, a duplicate or disorder",
				c, i, n.ID, n.CustomerID, want)
		}
	}
	return notes
}

func lcUnits(errs *errLimiter, what, s string) int64 {
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		errs.Errorf("%s: %q is not a whole number of CREDITS", what, s)
	}
	return v
}

func lcTime(errs *errLimiter, what, s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		errs.Errorf("%s: %q is not a timestamp", what, s)
	}
	return t
}

func lcStr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// lcBucket is a bucket as reconstructed from the ledger.
type lcBucket struct {
	id, account string
	alloc       int       // plan allocation index, -1 for other grants
	expires     time.Time // zero: never
	rem         int64     // remaining
	expiries    int       // expiry entries
	expiredSeq  uint64
	switchedAt  time.Time // when a switch of plan ended it; zero: never
}

// lcGrant is one plan grant entry.
type lcGrant struct {
	seq       uint64
	recorded  time.Time
	heldAfter int64 // the allocation's buckets' remaining right after it
}

type lcAccount struct {
	sum, debt, held int64
}

type lcHoldEntries struct {
	placed   []chEntry
	released []chEntry
}

// lcCounts are totals over all customers, for the log.
type lcCounts struct {
	entries, grants, expiries, reloads, holds int
	skippedAccumulate, skippedReplace         int // periods without a grant
	drainedBeforeExpiry, debtSettled          int
	holdDebtPairs                             int
	severalPending                            int // customers left with more than one request pending
	planSwitches                              int // plan buckets ended by a switch of plan
	holdsByStatus, notesByType                map[string]int
}

// checkStatus checks a customer's status against the last write that set
// it, when that write was acknowledged: a pause with an end that passed
// by the final clock has ended by itself (across kill -9s and restarts, no
// call resumed it), one that has not is still there, a failed auto
// purchase paused it until resumed, and saved settings made it active.
func (s *lcState) checkStatus(h *crashHarness, errs *errLimiter, c string, final time.Time) {
	w, ok := s.lastStatus[c]
	if !ok || !w.acked {
		return
	}
	status, b, err := h.do("GET", "/v1/customers/"+c, nil)
	var cu struct {
		Status      string  `json:"status"`
		PausedUntil *string `json:"paused_until"`
	}
	if err != nil || status != 200 || json.Unmarshal(b, &cu) != nil {
		errs.Errorf("GET customer %s: status %d, %v: %s", c, status, err, b)
		return
	}
	var sched struct {
		Scheduled *struct {
			StartsAt string `json:"starts_at"`
		} `json:"scheduled_plan"`
	}
	_ = json.Unmarshal(b, &sched)
	if sc := sched.Scheduled; sc != nil {
		// A change due by the final clock has been made.
		if at := lcTime(errs, "starts_at", sc.StartsAt); !at.After(final) {
			errs.Errorf("customer %s: scheduled_plan at %s after %+v at %s", c, sc.StartsAt, w, final.Format(time.RFC3339))
		}
		s.changesPending++
	}
	want, wantUntil := "active", ""
	switch {
	case w.kind == "failed":
		want = "paused"
	case w.kind == "paused_until" && w.until.After(final):
		want, wantUntil = "paused", w.until.Format("2006-01-02T15:04:05.000Z")
		s.pausesRunning++
	case w.kind == "paused_until":
		s.pausesEnded++
	}
	if cu.Status != want || lcStr(cu.PausedUntil) != wantUntil {
		errs.Errorf("customer %s: status %s paused_until %q after %+v at final clock %s, want %s %q",
			c, cu.Status, lcStr(cu.PausedUntil), w, final.Format(time.RFC3339), want, wantUntil)
	}
}

// lcBucketPart reports whether next is the bucket part of the grant whose
// debt part is d: the same type, reference and time, with a bucket.
func lcBucketPart(next, d *chEntry) bool {
	return next.Type == d.Type && lcStr(next.Reference) == lcStr(d.Reference) &&
		lcStr(next.BucketID) != "" && next.RecordedAt == d.RecordedAt
}

// checkCustomer checks one customer's ledger, wallet, grants, expiries,
// holds, auto-reload requests, events and notifications against the rules
// and the acknowledged history; it returns the notifications.
func (s *lcState) checkCustomer(h *crashHarness, errs *errLimiter, cu *lcCustomer, final time.Time, events map[string]*crashEvent, cnt *lcCounts) []lcNote {
	c := cu.id
	s.checkStatus(h, errs, c, final)
	entries := readLedger[chEntry](h, c)
	for i := 1; i < len(entries); i++ {
		if entries[i].Seq >= entries[i-1].Seq {
			errs.Errorf("ledger of %s: seq %d follows seq %d: not strictly newest first", c, entries[i].Seq, entries[i-1].Seq)
		}
	}
	slices.Reverse(entries)
	cnt.entries += len(entries)

	since := s.start // when the plan was saved: its schedules start then
	kFirst, kFinal := lcPeriod(cu.anchor, since), lcPeriod(cu.anchor, final)
	due := func(k int64) time.Time { // the instant period k is granted
		if t := lcPeriodStart(cu.anchor, k); t.After(since) {
			return t
		}
		return since
	}

	accts := map[string]*lcAccount{}
	buckets := map[string]*lcBucket{}
	grants := [2]map[int64]*lcGrant{{}, {}}
	type need struct {
		at  time.Time
		why string
	}
	var needReplace []need // times by which the expire_and_replace period holding them was granted
	type use struct {
		seq      uint64
		recorded time.Time
	}
	var allocUses []use // draws on the accumulate allocation's buckets
	usage := map[string]map[string][]string{}
	reloadGrants := map[string][]int64{}
	reloadMarks := map[string][]string{}
	holdEntries := map[string]*lcHoldEntries{}
	var lastRecorded time.Time
	allocRem := func(alloc int) int64 {
		var n int64
		for _, b := range buckets {
			if b.alloc == alloc {
				n += b.rem
			}
		}
		return n
	}
	topups := s.topups[c]

	pairs := map[string]int{}    // hold -> debt-settling pairs at its end
	reversed := map[string]int{} // top-up id -> its reversal entries
	var debtPair *chEntry        // the entry before, when it opened such a pair
	var settled int64            // a grant's debt part, read with its bucket part next
	for i, e := range entries {
		pending := debtPair
		debtPair = nil
		where := fmt.Sprintf("ledger of %s: entry %d (%s %s %s)", c, e.Seq, e.Type, e.Account, e.Amount)
		amt := lcUnits(errs, where+" amount", e.Amount)
		a := accts[e.Account]
		if a == nil {
			a = &lcAccount{}
			accts[e.Account] = a
		}
		a.sum += amt
		if after := lcUnits(errs, where+" balance_after", e.BalanceAfter); after != a.sum {
			errs.Errorf("%s: balance_after %d, but the entries up to it sum to %d", where, after, a.sum)
		}
		occurred := lcTime(errs, where+" occurred_at", e.OccurredAt)
		recorded := lcTime(errs, where+" recorded_at", e.RecordedAt)
		if recorded.Before(lastRecorded) {
			errs.Errorf("%s: recorded_at %s before the previous entry's %s: time went backwards", where, e.RecordedAt, lastRecorded.Format(time.RFC3339Nano))
		}
		lastRecorded = recorded
		if recorded.After(final) {
			errs.Errorf("%s: recorded_at %s is after the final clock %s", where, e.RecordedAt, final.Format(time.RFC3339))
		}
		// Every operation advances the wallet to its time first: the
		// expire_and_replace period holding that time was granted by then.
		needReplace = append(needReplace, need{recorded, "entry " + strconv.FormatUint(e.Seq, 10) + " recorded at " + e.RecordedAt})
		bid := lcStr(e.BucketID)
		ref := lcStr(e.Reference)

		switch {
		case amt > 0 && (e.Type == "topup" || e.Type == "grant" || e.Type == "auto_reload" || e.Type == "adjustment"):
			// A grant settles debt first: its debt part (no bucket_id),
			// then the rest into its bucket, the next entry of its type and
			// reference. The checks read the two as one grant; one that
			// went wholly to debt has no bucket part and reads as a grant
			// into a bucket that was never kept.
			if bid == "" {
				if i+1 < len(entries) && lcBucketPart(&entries[i+1], &e) {
					settled = amt
					continue
				}
				bid = "(debt of " + strconv.FormatUint(e.Seq, 10) + ")"
			} else if settled > 0 {
				amt += settled
			}
			d := min(a.debt, amt)
			part := settled // what the ledger says the grant settled
			if lcStr(e.BucketID) == "" {
				part = amt
			}
			if d != part {
				errs.Errorf("%s: the grant settled %d of debt, the account owed %d of it", where, part, d)
			}
			settled = 0
			a.debt -= d
			if d > 0 {
				cnt.debtSettled++
			}
			b := buckets[bid]
			if b == nil {
				b = &lcBucket{id: bid, account: e.Account, alloc: -1}
				buckets[bid] = b
			} else if b.account != e.Account || b.expiries > 0 {
				errs.Errorf("%s: grant into bucket %s of %s (expiry entries %d)", where, bid, b.account, b.expiries)
			}
			switch e.Type {
			case "topup":
				exp, ok := topups[ref]
				if !ok {
					errs.Errorf("%s: top-up %q was never made", where, ref)
				}
				b.expires = exp
			case "auto_reload":
				reloadGrants[ref] = append(reloadGrants[ref], amt)
			case "adjustment":
				errs.Errorf("%s: no adjustment was made", where)
			case "grant":
				cnt.grants++
				var md struct {
					Allocation  *int   `json:"allocation"`
					PeriodStart string `json:"period_start"`
					PeriodEnd   string `json:"period_end"`
				}
				if err := json.Unmarshal(e.Metadata, &md); err != nil || md.Allocation == nil || *md.Allocation < 0 || *md.Allocation > 1 {
					errs.Errorf("%s: metadata %s: want {\"allocation\":0|1,\"period_start\",\"period_end\"}", where, e.Metadata)
					continue
				}
				al := *md.Allocation
				if al == 1 && !cu.replace {
					errs.Errorf("%s: allocation 1 granted, the plan has one allocation", where)
					continue
				}
				ps := lcTime(errs, where+" period_start", md.PeriodStart)
				k := lcPeriod(cu.anchor, ps)
				if !ps.Equal(lcPeriodStart(cu.anchor, k)) || !lcTime(errs, where+" period_end", md.PeriodEnd).Equal(lcPeriodStart(cu.anchor, k+1)) {
					errs.Errorf("%s: period %s..%s is not a day period of anchor %s", where, md.PeriodStart, md.PeriodEnd, cu.anchor.Format(time.RFC3339))
				}
				if grants[al][k] != nil {
					errs.Errorf("%s: allocation %d, period %s granted twice (entries %d and %d)", where, al, md.PeriodStart, grants[al][k].seq, e.Seq)
				}
				for k2 := range grants[al] {
					if k2 > k {
						errs.Errorf("%s: allocation %d: period %s granted after a later period", where, al, md.PeriodStart)
					}
				}
				if k < kFirst || k > kFinal {
					errs.Errorf("%s: period %s is outside the periods from the plan's start to the final clock", where, md.PeriodStart)
				}
				if !occurred.Equal(due(k)) {
					errs.Errorf("%s: occurred_at %s, want the period's due instant %s", where, e.OccurredAt, due(k).Format(time.RFC3339Nano))
				}
				b.alloc = al
				wantAccount := "default:CREDITS"
				if al == 1 {
					wantAccount = "bonus:CREDITS"
				}
				if e.Account != wantAccount || !slices.Contains(lcPlans, ref) {
					errs.Errorf("%s: allocation %d granted to %s with reference %q, want %s and one of %v", where, al, e.Account, ref, wantAccount, lcPlans)
				}
				if al == 0 {
					held := allocRem(0)
					if want := min(int64(lcGrantA), int64(lcCapA)-held); amt != want {
						errs.Errorf("%s: accumulate grant of %d with %d of the allocation left: want min(%d, cap %d - %d) = %d",
							where, amt, held, lcGrantA, lcCapA, held, want)
					}
				} else {
					b.expires = lcPeriodStart(cu.anchor, k+1)
					if amt != lcGrantB {
						errs.Errorf("%s: expire_and_replace grant of %d, want %d", where, amt, lcGrantB)
					}
					// It is granted only by an advance to a time inside it:
					// one later skips it.
					if recorded.Before(ps) || !recorded.Before(lcPeriodStart(cu.anchor, k+1)) {
						errs.Errorf("%s: expire_and_replace period %s..%s granted at %s, outside the period (it should have been skipped)",
							where, md.PeriodStart, md.PeriodEnd, e.RecordedAt)
					}
				}
				b.rem += amt - d
				g := &lcGrant{seq: e.Seq, recorded: recorded}
				if al == 0 {
					g.heldAfter = allocRem(0)
				}
				grants[al][k] = g
				continue
			}
			b.rem += amt - d
		case e.Type == "auto_reload" && amt == 0:
			var m struct {
				RequestID string `json:"request_id"`
				Status    string `json:"status"`
			}
			if err := json.Unmarshal(e.Metadata, &m); err != nil || m.RequestID != ref {
				errs.Errorf("%s: metadata %s for reference %s", where, e.Metadata, ref)
			}
			reloadMarks[ref] = append(reloadMarks[ref], m.Status)
		case amt <= 0 && (e.Type == "usage" || e.Type == "adjustment") ||
			amt < 0 && e.Type == "hold_release" && bid != "":
			// A draw on a bucket, or (bucket_id null) debt. A hold_release
			// entry drawing on a bucket is the first of a zero-sum pair:
			// the credits a hold kept from settling debt settle it when
			// the hold ends.
			if e.Type == "adjustment" {
				errs.Errorf("%s: no adjustment was made", where)
			}
			if e.Type == "usage" {
				id := lcStr(e.EventID)
				if usage[id] == nil {
					usage[id] = map[string][]string{}
				}
				usage[id][e.Account] = append(usage[id][e.Account], fmt.Sprintf("%s:%d", orDebt(bid), -amt))
			}
			if e.Type == "hold_release" {
				pairs[ref]++
				debtPair = &e
			}
			if bid == "" {
				a.debt -= amt
				continue
			}
			b := buckets[bid]
			if b == nil || b.account != e.Account {
				errs.Errorf("%s: drawn from bucket %s, which this account never got", where, bid)
				continue
			}
			b.rem += amt
			if b.rem < 0 {
				errs.Errorf("%s: bucket %s drawn below zero (%d)", where, bid, b.rem)
			}
			if b.expiries > 0 || !b.expires.IsZero() && !recorded.Before(b.expires) {
				errs.Errorf("%s: drawn from bucket %s at %s, at or after its expiry %s", where, bid, e.RecordedAt, b.expires.Format(time.RFC3339Nano))
			}
			if b.alloc == 0 {
				allocUses = append(allocUses, use{e.Seq, recorded})
			}
			continue
		case e.Type == "hold_release" && amt > 0 && bid == "" && pending != nil:
			// The second of the pair: the debt takes what the bucket gave.
			if p := pending; lcStr(p.Reference) != ref || p.Account != e.Account || p.Amount != "-"+e.Amount || p.Seq+1 != e.Seq {
				errs.Errorf("%s: does not pair with entry %d (%s %s)", where, p.Seq, p.Type, p.Amount)
			}
			if a.debt < amt {
				errs.Errorf("%s: settles %d of debt, the account owes %d", where, amt, a.debt)
			}
			a.debt -= amt
		case e.Type == "expiry" && string(e.Metadata) == `{"reason":"plan_change"}`:
			// A switch of plan at a period boundary: what the old plan's
			// bucket had left ends there.
			b := buckets[bid]
			switch {
			case b == nil || b.account != e.Account || b.alloc < 0 || !slices.Contains(lcPlans, ref):
				errs.Errorf("%s: plan change ending bucket %q of %q, which is not a plan's", where, bid, ref)
				continue
			case !occurred.Equal(lcPeriodStart(cu.anchor, lcPeriod(cu.anchor, occurred))) || recorded.Before(occurred):
				errs.Errorf("%s: plan change at %s (recorded %s), not at a period boundary", where, e.OccurredAt, e.RecordedAt)
			case -amt != b.rem || amt >= 0:
				errs.Errorf("%s: bucket %s had %d left", where, bid, b.rem)
			}
			b.rem = 0
			b.expiries++
			b.switchedAt = occurred
			cnt.planSwitches++
		case e.Type == "expiry":
			cnt.expiries++
			b := buckets[bid]
			if b == nil || b.account != e.Account {
				errs.Errorf("%s: expiry of bucket %q, which this account never got", where, bid)
				continue
			}
			b.expiries++
			b.expiredSeq = e.Seq
			if b.expiries > 1 {
				errs.Errorf("%s: bucket %s expired %d times", where, bid, b.expiries)
			}
			if b.expires.IsZero() {
				errs.Errorf("%s: bucket %s never expires", where, bid)
			} else if !occurred.Equal(b.expires) || recorded.Before(b.expires) {
				errs.Errorf("%s: bucket %s expiring at %s: occurred_at %s, recorded_at %s", where, bid, b.expires.Format(time.RFC3339Nano), e.OccurredAt, e.RecordedAt)
			}
			if -amt != b.rem || amt >= 0 {
				errs.Errorf("%s: bucket %s had %d left", where, bid, b.rem)
			}
			b.rem = 0
		case e.Type == "topup_reversal":
			// What was left of an acknowledged reversal's top-up, taken
			// back at once; what was used is kept (the metadata says).
			b := buckets[bid]
			rev, acked := s.reversals[c+"/"+ref]
			var md lcReversal
			if e.Metadata != nil {
				_ = json.Unmarshal(e.Metadata, &md)
			}
			switch {
			case b == nil || b.account != e.Account || b.alloc != -1:
				errs.Errorf("%s: reversal of bucket %q, which is not a top-up's of this account", where, bid)
				continue
			case amt >= 0 || -amt != b.rem:
				errs.Errorf("%s: reversal of bucket %s with %d left", where, bid, b.rem)
			case !acked || rev.Reversed != strconv.FormatInt(-amt, 10) || md.Kept != "" && md.Kept != rev.Kept:
				errs.Errorf("%s: reversal of top-up %s (metadata %s), acknowledged as %+v (acknowledged: %v)", where, ref, e.Metadata, rev, acked)
			}
			b.rem = 0
			reversed[ref]++
		case e.Type == "hold" && amt < 0:
			a.held -= amt
			if holdEntries[ref] == nil {
				holdEntries[ref] = &lcHoldEntries{}
			}
			holdEntries[ref].placed = append(holdEntries[ref].placed, e)
		case e.Type == "hold_release" && amt > 0:
			a.held -= amt
			if a.held < 0 {
				errs.Errorf("%s: held below zero", where)
			}
			if holdEntries[ref] == nil {
				holdEntries[ref] = &lcHoldEntries{}
			}
			holdEntries[ref].released = append(holdEntries[ref].released, e)
		default:
			errs.Errorf("%s: unexpected entry", where)
		}
		if bid != "" && e.Type != "hold" && e.Type != "hold_release" && buckets[bid] == nil {
			errs.Errorf("%s: unknown bucket %s", where, bid)
		}
	}

	for _, n := range pairs {
		cnt.holdDebtPairs += n
	}
	// Every acknowledged reversal has exactly one entry.
	for key := range s.reversals {
		if cust, id, _ := strings.Cut(key, "/"); cust == c && reversed[id] != 1 {
			errs.Errorf("customer %s: acknowledged reversal of %s has %d entries", c, id, reversed[id])
		}
	}

	// (i) The wallet: available = the ledger's sum; held, debt and every
	// bucket's remaining as the ledger implies.
	var w lcWallet
	if err := json.Unmarshal(h.mustDo("GET", "/v1/customers/"+c+"/wallet", nil, 200), &w); err != nil {
		h.t.Fatalf("wallet of %s: %v", c, err)
	}
	inWallet := map[string]bool{}
	for _, wa := range w.Accounts {
		a := accts[wa.ID]
		if a == nil {
			a = &lcAccount{}
		}
		if v := lcUnits(errs, "available", wa.Available); v != a.sum {
			errs.Errorf("customer %s account %s: available %d, the ledger sums to %d", c, wa.ID, v, a.sum)
		}
		if v := lcUnits(errs, "held", wa.Held); v != a.held {
			errs.Errorf("customer %s account %s: held %d, the hold entries say %d", c, wa.ID, v, a.held)
		}
		if v := lcUnits(errs, "debt", wa.Debt); v != a.debt {
			errs.Errorf("customer %s account %s: debt %d, the ledger says %d", c, wa.ID, v, a.debt)
		}
		for _, wb := range wa.Buckets {
			inWallet[wb.ID] = true
			b := buckets[wb.ID]
			if b == nil || b.account != wa.ID {
				errs.Errorf("customer %s account %s: bucket %s is not in the ledger", c, wa.ID, wb.ID)
				continue
			}
			if v := lcUnits(errs, "remaining", wb.Remaining); v != b.rem {
				errs.Errorf("customer %s bucket %s: remaining %d, the ledger says %d", c, wb.ID, v, b.rem)
			}
			wantExp := ""
			if !b.expires.IsZero() {
				wantExp = b.expires.Format("2006-01-02T15:04:05.000Z")
			}
			if lcStr(wb.ExpiresAt) != wantExp {
				errs.Errorf("customer %s bucket %s: expires_at %s, want %q", c, wb.ID, lcStr(wb.ExpiresAt), wantExp)
			}
			if b.alloc == 0 && b.rem > lcCapA {
				errs.Errorf("customer %s bucket %s: the accumulate allocation holds %d, over its cap %d", c, wb.ID, b.rem, lcCapA)
			}
		}
	}
	for acct, a := range accts {
		found := false
		for _, wa := range w.Accounts {
			found = found || wa.ID == acct
		}
		if !found && a.sum != 0 {
			errs.Errorf("customer %s: the ledger has account %s, the wallet does not", c, acct)
		}
	}

	// (iii) Expiry at the exact instant: a bucket due by the final clock is
	// gone, with one expiry entry if anything was left of it (none if it was
	// drained before); a later one has none.
	for _, b := range buckets {
		switch {
		case b.expires.IsZero():
		case !b.expires.After(final):
			if inWallet[b.id] {
				errs.Errorf("customer %s: bucket %s expired at %s, still in the wallet at %s", c, b.id, b.expires.Format(time.RFC3339), final.Format(time.RFC3339))
			}
			if b.expiries == 0 && b.rem != 0 {
				errs.Errorf("customer %s: bucket %s expired at %s with %d left, and has no expiry entry", c, b.id, b.expires.Format(time.RFC3339), b.rem)
			}
			if b.expiries == 0 {
				cnt.drainedBeforeExpiry++
			}
		default:
			if b.expiries > 0 {
				errs.Errorf("customer %s: bucket %s expiring at %s has an expiry entry before the final clock %s", c, b.id, b.expires.Format(time.RFC3339), final.Format(time.RFC3339))
			}
			if b.rem > 0 && !inWallet[b.id] {
				errs.Errorf("customer %s: bucket %s with %d left is not in the wallet", c, b.id, b.rem)
			}
		}
		if b.expires.IsZero() && b.rem > 0 && !inWallet[b.id] {
			errs.Errorf("customer %s: bucket %s with %d left is not in the wallet", c, b.id, b.rem)
		}
	}

	// (ii) Plan grants. Accumulate: every period from the plan's start to
	// the final clock, at its own instant, unless the cap left nothing to
	// grant: then the allocation was full (at the cap) since its last grant
	// and nothing drew on it before the skipped period began.
	for k := kFirst; k <= kFinal; k++ {
		if grants[0][k] != nil {
			continue
		}
		cnt.skippedAccumulate++
		var prev *lcGrant
		for k2 := k - 1; k2 >= kFirst && prev == nil; k2-- {
			prev = grants[0][k2]
		}
		start := lcPeriodStart(cu.anchor, k)
		if prev == nil {
			errs.Errorf("customer %s: accumulate period %s not granted, and no earlier one was", c, start.Format(time.RFC3339))
			continue
		}
		if prev.heldAfter != lcCapA {
			errs.Errorf("customer %s: accumulate period %s not granted, though the last grant left the allocation at %d, below its cap %d",
				c, start.Format(time.RFC3339), prev.heldAfter, lcCapA)
		}
		for _, u := range allocUses {
			if u.seq > prev.seq && u.recorded.Before(start) {
				errs.Errorf("customer %s: accumulate period %s not granted, though entry %d drew on the allocation at %s, after its last grant (entry %d)",
					c, start.Format(time.RFC3339), u.seq, u.recorded.Format(time.RFC3339), prev.seq)
				break
			}
		}
	}
	// Expire_and_replace: the period holding any time the wallet was
	// advanced to (every entry's recorded_at, every acknowledged clock move,
	// the final clock) was granted by then; the others were skipped by a
	// jump over them (their grant would have expired already).
	for _, t := range append(slices.Clone(s.ackedClocks), final) {
		needReplace = append(needReplace, need{t, "the clock's move to " + t.Format(time.RFC3339)})
	}
	if !cu.replace {
		needReplace = nil
	}
	for _, n := range needReplace {
		k := lcPeriod(cu.anchor, n.at)
		if g := grants[1][k]; g == nil || g.recorded.After(n.at) {
			errs.Errorf("customer %s: expire_and_replace period %s not granted by %s",
				c, lcPeriodStart(cu.anchor, k).Format(time.RFC3339), n.why)
		}
	}
	for k := kFirst; k <= kFinal && cu.replace; k++ {
		if grants[1][k] == nil {
			cnt.skippedReplace++
		}
	}

	// (v) Auto-reload requests: never more than max_unpaid pending, never more than
	// max_per_period per plan period; each granted once, at once, and
	// marked once when resolved.
	var reloads []lcReload
	for _, raw := range lcPages(h, "/v1/customers/"+c+"/auto-reload/requests", "requests") {
		var r lcReload
		if err := json.Unmarshal(raw, &r); err != nil {
			errs.Errorf("auto-reload request of %s: %v: %s", c, err, raw)
		}
		reloads = append(reloads, r)
	}
	cnt.reloads += len(reloads)
	pending := 0
	perPeriod := map[int64]int{}
	reloadStatus := map[string]string{}
	for _, r := range reloads {
		reloadStatus[r.ID] = r.Status
		if r.Status == "pending" {
			pending++
		}
		k := lcPeriod(cu.anchor, lcTime(errs, "created_at", r.CreatedAt))
		if perPeriod[k]++; perPeriod[k] > lcReloadMax {
			errs.Errorf("customer %s: %d auto-reload requests in the period from %s, max_per_period is %d",
				c, perPeriod[k], lcPeriodStart(cu.anchor, k).Format(time.RFC3339), lcReloadMax)
		}
		if r.Amount != strconv.Itoa(lcReloadAmount) || r.Mode != "grant_immediately" || r.Account != "default:CREDITS" ||
			r.Charge.Amount != "11.70" || r.Charge.Currency != "USD" || r.BucketID == "" {
			errs.Errorf("customer %s: auto-reload request %+v", c, r)
		}
		if g := reloadGrants[r.ID]; len(g) != 1 || g[0] != lcReloadAmount {
			errs.Errorf("customer %s: auto-reload request %s granted %v, want once %d", c, r.ID, g, lcReloadAmount)
		}
		marks := reloadMarks[r.ID]
		if r.Status == "pending" && len(marks) != 0 || r.Status != "pending" && !slices.Equal(marks, []string{r.Status}) {
			errs.Errorf("customer %s: auto-reload request %s is %s, its ledger marks are %v", c, r.ID, r.Status, marks)
		}
	}
	if pending > lcReloadUnpaid {
		errs.Errorf("customer %s: %d pending auto-reload requests, max_unpaid is %d", c, pending, lcReloadUnpaid)
	}
	if pending > 1 {
		cnt.severalPending++
	}
	for id := range reloadGrants {
		if reloadStatus[id] == "" {
			errs.Errorf("customer %s: auto_reload entries of request %s, which is not listed", c, id)
		}
	}
	for id := range reloadMarks {
		if reloadStatus[id] == "" {
			errs.Errorf("customer %s: auto_reload entries of request %s, which is not listed", c, id)
		}
	}

	// Holds: each placed once and ended once, at its expiry when it
	// expired; an active one has not expired; the acknowledged ones exist.
	holdStatus := map[string]string{}
	for id, he := range holdEntries {
		cnt.holds++
		var rec struct {
			ID         string  `json:"id"`
			CustomerID string  `json:"customer_id"`
			Amount     string  `json:"amount"`
			Status     string  `json:"status"`
			ExpiresAt  string  `json:"expires_at"`
			SettledBy  *string `json:"settled_by"`
		}
		if err := json.Unmarshal(h.mustDo("GET", "/v1/holds/"+id, nil, 200), &rec); err != nil {
			h.t.Fatalf("hold %s: %v", id, err)
		}
		holdStatus[id] = rec.Status
		cnt.holdsByStatus[rec.Status]++
		if len(he.placed) != 1 || rec.CustomerID != c || "-"+rec.Amount != he.placed[0].Amount {
			errs.Errorf("customer %s: hold %s (%+v) placed by %d entries", c, id, rec, len(he.placed))
			continue
		}
		expires := lcTime(errs, "hold expires_at", rec.ExpiresAt)
		switch rec.Status {
		case "active":
			if len(he.released) != 0 || !expires.After(final) {
				errs.Errorf("customer %s: hold %s is active at %s, expires %s, release entries %d",
					c, id, final.Format(time.RFC3339), rec.ExpiresAt, len(he.released))
			}
		case "expired", "released", "settled":
			if len(he.released) != 1 || he.released[0].Amount != rec.Amount {
				errs.Errorf("customer %s: hold %s is %s with %d release entries", c, id, rec.Status, len(he.released))
				continue
			}
			r := he.released[0]
			switch rec.Status {
			case "expired":
				if r.OccurredAt != rec.ExpiresAt || lcTime(errs, "recorded_at", r.RecordedAt).Before(expires) {
					errs.Errorf("customer %s: hold %s expiring at %s released at occurred_at %s, recorded_at %s", c, id, rec.ExpiresAt, r.OccurredAt, r.RecordedAt)
				}
			case "settled":
				if rec.SettledBy == nil || lcStr(r.EventID) != *rec.SettledBy || events[*rec.SettledBy] == nil ||
					!bytes.Contains(events[*rec.SettledBy].raw, []byte(`"hold_id":"`+id+`"`)) {
					errs.Errorf("customer %s: hold %s settled by %v, release entry by event %q", c, id, rec.SettledBy, lcStr(r.EventID))
				}
			}
			if rec.Status != "expired" && !lcTime(errs, "recorded_at", r.RecordedAt).Before(expires) {
				errs.Errorf("customer %s: hold %s %s at %s, at or after its expiry %s", c, id, rec.Status, r.RecordedAt, rec.ExpiresAt)
			}
		default:
			errs.Errorf("customer %s: hold %s has status %q", c, id, rec.Status)
		}
	}
	for _, hd := range s.holds {
		if hd.customer == c && holdEntries[hd.id] == nil {
			errs.Errorf("customer %s: acknowledged hold %s has no hold entry", c, hd.id)
		}
	}

	// Events: each acknowledged one charged exactly as acknowledged, each
	// rejected one not at all, and nothing else.
	for id := range usage {
		if e := events[id]; e == nil {
			errs.Errorf("ledger of %s: usage entries of event %q, never sent for this customer", c, id)
		} else if e.ack == "rejected" {
			errs.Errorf("ledger of %s: usage entries of event %s, acknowledged as rejected (%s)", c, id, e.ackCode)
		}
	}
	for id, e := range events {
		if e.ack != "charged" && e.ack != "recorded" {
			continue
		}
		want := map[string][]string{}
		for _, ch := range e.ackCharges {
			for _, p := range ch.Buckets {
				if p.Amount == "0" {
					continue
				}
				want[ch.Account] = append(want[ch.Account], fmt.Sprintf("%s:%s", orDebt(lcStr(p.BucketID)), p.Amount))
			}
		}
		if fmt.Sprint(want) != fmt.Sprint(usage[id]) && !(len(want) == 0 && len(usage[id]) == 0) {
			errs.Errorf("ledger of %s: event %s: usage entries %v, acknowledged charges %s", c, id, usage[id], chargesKey(e.ackCharges))
		}
	}

	// (vi) Notifications: seqs 1..N; the expiries, holds and reload
	// requests of the ledger each notified once.
	notes := lcNotes(h, errs, c)
	expiredNotes := map[string]int{}
	holdNotes := map[string]int{}
	reloadNotes := map[string]int{}
	for _, n := range notes {
		cnt.notesByType[n.Type]++
		switch n.Type {
		case "bucket.expired":
			expiredNotes[n.Data.BucketID]++
			b := buckets[n.Data.BucketID]
			at := time.Time{}
			if b != nil {
				at = b.expires
				if !b.switchedAt.IsZero() {
					at = b.switchedAt
				}
			}
			if b == nil || n.CreatedAt != at.Format("2006-01-02T15:04:05.000Z") {
				errs.Errorf("customer %s: notification %s: bucket %s expired at %s", c, n.ID, n.Data.BucketID, n.CreatedAt)
			}
		case "hold.expired":
			holdNotes[n.Data.HoldID]++
		case "auto_reload.requested", "auto_reload.completed", "auto_reload.failed":
			reloadNotes[n.Type+" "+n.Data.RequestID]++
		case "balance.low", "balance.depleted", "balance.recovered":
		default:
			errs.Errorf("customer %s: notification %s of unknown type %q", c, n.ID, n.Type)
		}
	}
	for _, b := range buckets {
		if b.expiries != expiredNotes[b.id] {
			errs.Errorf("customer %s: bucket %s: %d expiry entries, %d bucket.expired notifications", c, b.id, b.expiries, expiredNotes[b.id])
		}
	}
	for id, st := range holdStatus {
		if want := map[bool]int{true: 1}[st == "expired"]; holdNotes[id] != want {
			errs.Errorf("customer %s: hold %s is %s, %d hold.expired notifications", c, id, st, holdNotes[id])
		}
	}
	for _, r := range reloads {
		want := map[string]int{"auto_reload.requested " + r.ID: 1}
		if r.Status != "pending" {
			want["auto_reload."+r.Status+" "+r.ID] = 1
		}
		for k, v := range want {
			if reloadNotes[k] != v {
				errs.Errorf("customer %s: request %s is %s: %d %q notifications", c, r.ID, r.Status, reloadNotes[k], k)
			}
		}
	}
	if len(reloadNotes) > 2*len(reloads) {
		errs.Errorf("customer %s: %d auto-reload notifications for %d requests", c, len(reloadNotes), len(reloads))
	}
	return notes
}

func orDebt(bucket string) string {
	if bucket == "" {
		return "<debt>"
	}
	return bucket
}

// afterRestart brings a restarted meterd back to the test's state: the
// clock where it was (running what came due), every customer's settings
// saved again (active, auto-reload enabled, schedules kept), fresh expiring
// top-ups for some, and a sample of acknowledged events resent.
func (s *lcState) afterRestart(h *crashHarness, errs *errLimiter, rng *rand.Rand, round int, custs []*lcCustomer) {
	t := h.t
	var ans struct{ Now string }
	if err := json.Unmarshal(h.mustDo("POST", "/v1/test-clock", []byte(`{"advance":"0s"}`), 200), &ans); err != nil {
		t.Fatalf("test clock: %v", err)
	}
	if now, err := time.Parse(time.RFC3339Nano, ans.Now); err != nil || !now.Equal(s.clockSent) {
		t.Fatalf("after restart %d the test clock is at %s, want --test-clock-start %s", round, ans.Now, s.clockSent.Format(time.RFC3339))
	}
	s.clockAcked = s.clockSent
	s.ackedClocks = append(s.ackedClocks, s.clockSent)
	for _, cu := range custs {
		// What the last round left, through the kill -9: pauses that
		// ended by the clock now are over, the others still run.
		s.checkStatus(h, errs, cu.id, s.clockSent)
		h.mustDo("PUT", "/v1/customers/"+cu.id, cu.settingsFor(`"status":"active"`, lcPlans[rng.IntN(len(lcPlans))], true), 200)
		s.lastStatus[cu.id] = lcStatusWrite{kind: "active", acked: true}
	}
	for _, i := range rng.Perm(len(custs))[:lcTopUpsPerRound] {
		s.topUp(h, custs[i], fmt.Sprintf("tu-r%d", round), 120, s.clockAcked.Add(time.Duration(60+rng.IntN(5*60))*time.Minute))
	}
	s.reverseSome(h, errs, rng, 3)

	var sample []*crashEvent
	for _, e := range s.events {
		if e.ack == "charged" || e.ack == "recorded" {
			sample = append(sample, e)
		}
	}
	rng.Shuffle(len(sample), func(i, j int) { sample[i], sample[j] = sample[j], sample[i] })
	sample = sample[:min(len(sample), lcResendSample)]
	for len(sample) > 0 {
		part := sample[:min(len(sample), 200)]
		sample = sample[len(part):]
		results, status, body, err := postEvents(h.client, h.url("/v1/events"), part)
		if err != nil || status != 200 {
			t.Fatalf("resending acknowledged events after restart %d: status %d, %v: %s", round, status, err, body)
		}
		for i, r := range results {
			if e := part[i]; r.Status != "duplicate" || chargesKey(r.Charges) != chargesKey(e.ackCharges) {
				errs.Errorf("after restart %d: acknowledged event %s (%s, charges %s) resent: %s %s, charges %s",
					round, e.id, e.ack, chargesKey(e.ackCharges), r.Status, r.code(), chargesKey(r.Charges))
			}
		}
	}
}

// replay repeats acknowledged writes, which must return their original
// result and change nothing (the checks that follow would see it), and
// unacknowledged hold placements, which were applied or not.
func (s *lcState) replay(h *crashHarness, errs *errLimiter) {
	for _, w := range s.topupLog {
		status, b, err := h.do("POST", w.path, w.body)
		var was, is struct{ ID, BucketID, Status, ExpiresAt string }
		_ = json.Unmarshal(w.answer, &was)
		if _, reversed := s.reversals[w.customer+"/"+w.id]; reversed {
			was.Status = "reversed" // the top-up as it is now
			if st, rb, err := h.do("POST", "/v1/customers/"+w.customer+"/topups/"+w.id+"/reverse", nil); err != nil || st != 200 || !bytes.Contains(rb, []byte(`"status":"reversed"`)) {
				errs.Errorf("reversal of %s/%s asked again: status %d, %v: %s", w.customer, w.id, st, err, rb)
			}
		}
		if err != nil || status != 200 || json.Unmarshal(b, &is) != nil || is != was {
			errs.Errorf("top-up %s of %s replayed: status %d, %v: %s; first answer %s", w.id, w.customer, status, err, b, w.answer)
		}
	}
	type holdRec struct {
		ID         string `json:"id"`
		CustomerID string `json:"customer_id"`
		Account    string `json:"account"`
		Amount     string `json:"amount"`
		ExpiresAt  string `json:"expires_at"`
		CreatedAt  string `json:"created_at"`
		Status     string `json:"status"`
	}
	for _, w := range s.holdLog {
		status, b, err := h.do("POST", w.path, w.body)
		var was, is holdRec
		_ = json.Unmarshal(w.answer, &was)
		if err != nil || json.Unmarshal(b, &is) != nil {
			errs.Errorf("hold %s replayed: %v: %s", w.id, err, b)
			continue
		}
		switch {
		case w.acked && status == 200:
			is.Status, was.Status = "", "" // the hold's current state
			if is != was {
				errs.Errorf("hold %s replayed: %s; first answer %s", w.id, b, w.answer)
			}
		case w.acked:
			errs.Errorf("acknowledged hold %s replayed: status %d: %s", w.id, status, b)
		case status == 200: // placed before the crash, unacknowledged
		case status == 201: // placed now
			var body struct{ Amount string }
			_ = json.Unmarshal(w.body, &body)
			amount, _ := strconv.ParseInt(body.Amount, 10, 64)
			s.holds[w.id] = &lcHold{id: w.id, customer: w.customer, amount: amount, expires: lcTime(errs, "expires_at", is.ExpiresAt)}
		case status == 402 && apiCode(b) == "insufficient_funds", status == 400 && apiCode(b) == "invalid_timestamp":
		default:
			errs.Errorf("unacknowledged hold %s replayed: status %d: %s", w.id, status, b)
		}
	}
	// Holds that ended: releasing a released one again returns it; the
	// others are not active.
	for id := range s.holds {
		var rec holdRec
		if err := json.Unmarshal(h.mustDo("GET", "/v1/holds/"+id, nil, 200), &rec); err != nil {
			errs.Errorf("hold %s: %v", id, err)
			continue
		}
		if rec.Status == "active" {
			continue
		}
		status, b, err := h.do("POST", "/v1/holds/"+id+"/release", nil)
		switch {
		case err != nil:
			errs.Errorf("releasing hold %s again: %v", id, err)
		case rec.Status == "released" && status != 200, rec.Status != "released" && (status != 409 || apiCode(b) != "hold_not_active"):
			errs.Errorf("hold %s is %s; releasing it: status %d: %s", id, rec.Status, status, b)
		}
	}
	// Resolved auto-reload requests: the same outcome again returns the
	// request, the other one is reload_not_pending.
	for c := range s.topups {
		for _, raw := range lcPages(h, "/v1/customers/"+c+"/auto-reload/requests", "requests") {
			var r lcReload
			if err := json.Unmarshal(raw, &r); err != nil || r.Status == "pending" {
				continue
			}
			same, other := "confirm", "fail"
			if r.Status == "failed" {
				same, other = other, same
			}
			path := "/v1/customers/" + c + "/auto-reload/requests/" + r.ID + "/"
			if status, b, err := h.do("POST", path+same, nil); err != nil || status != 200 || !bytes.Equal(b, raw) {
				errs.Errorf("%s of %s request %s again: status %d, %v: %s, listed as %s", same, c, r.ID, status, err, b, raw)
			}
			if status, b, err := h.do("POST", path+other, nil); err != nil || status != 409 || apiCode(b) != "reload_not_pending" {
				errs.Errorf("%s of %s request %s (%s): status %d, %v: %s", other, c, r.ID, r.Status, status, err, b)
			}
		}
	}
}

// topUp makes a top-up that must be acknowledged, and records its expiry.
func (s *lcState) topUp(h *crashHarness, cu *lcCustomer, id string, amount int, expires time.Time) {
	exp := "null"
	if !expires.IsZero() {
		exp = strconv.Quote(expires.Format(time.RFC3339))
	}
	body := fmt.Appendf(nil, `{"id":%q,"account":"default","asset":"CREDITS","amount":"%d","expires_at":%s}`, id, amount, exp)
	answer := h.mustDo("POST", "/v1/customers/"+cu.id+"/topups", body, 201)
	s.topupLog = append(s.topupLog, lcWrite{path: "/v1/customers/" + cu.id + "/topups", customer: cu.id, id: id, body: body, acked: true, answer: answer})
	s.topupAmount[cu.id+"/"+id] = amount
	if s.topups[cu.id] == nil {
		s.topups[cu.id] = map[string]time.Time{}
	}
	s.topups[cu.id][id] = expires
}

func TestLifecycleCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the meterd binary: skipped with -short")
	}
	t.Parallel()
	testStart := time.Now()
	bin := buildMeterd(t)
	buildTime := time.Since(testStart)
	errs := &errLimiter{t: t}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	recv := &whReceiver{secret: []byte(lcWebhookSecret), failPct: lcWebhookFailPct, streakMax: 2, rng: rand.New(rand.NewPCG(seed, 1))}
	srv := httptest.NewServer(recv)
	defer srv.Close()

	// The test clock runs weeks behind the wall clock (see
	// TestWebhookTestClockAhead for why not ahead of it).
	s := newLCState(time.Now().UTC().Add(-40 * lcDay).Truncate(time.Hour))
	h := &crashHarness{t: t, bin: bin, dir: filepath.Join(t.TempDir(), "data"), args: s.args(srv.URL + "/hooks/meterd")}
	t.Cleanup(func() {
		if h.proc != nil && h.proc.running() {
			h.proc.cmd.Process.Kill()
			<-h.proc.done
		}
	})

	// Set-up at the clock's start: pricing, customers with their plans,
	// auto-reload, alerts and policies, a top-up that never expires and
	// one that expires within hours.
	h.start()
	h.mustDo("PUT", "/v1/pricing", []byte(lcPricing), 200)
	custs := make([]*lcCustomer, lcCustomers)
	for i := range custs {
		cu := &lcCustomer{id: "lc" + strconv.Itoa(i), overdraft: i%4 == 0, alerts: i%2 == 1, replace: i%2 == 0,
			anchor: s.start.Truncate(lcDay).Add(-20*lcDay + time.Duration(i%24)*time.Hour + time.Duration(i*7%60)*time.Minute)}
		custs[i] = cu
		h.mustDo("PUT", "/v1/customers/"+cu.id, cu.settings(), 201)
		s.topUp(h, cu, "seed", 200, time.Time{})
		if i%5 == 0 {
			s.topUp(h, cu, "tu-r0", 120, s.start.Add(time.Duration(60+rng.IntN(5*60))*time.Minute))
		}
	}
	setupTime := time.Since(testStart) - buildTime

	// Rounds of concurrent load, each ended by a kill -9 at a random moment.
	var loadTime time.Duration
	for round := 0; round < lcKills; round++ {
		if round > 0 {
			s.afterRestart(h, errs, rng, round, custs)
		}
		if errs.count() > 0 {
			t.FailNow()
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		base := "http://" + h.proc.addr
		run := func(f func(rng *rand.Rand)) {
			r := rand.New(rand.NewPCG(seed, uint64(round)<<8|uint64(rng.IntN(1<<8))))
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(r)
			}()
		}
		for w := range lcEventWorkers {
			run(func(r *rand.Rand) { s.eventWorker(h.client, base, round, w, r, custs, &stop, errs) })
		}
		run(func(r *rand.Rand) { s.holdWorker(h.client, base, round, r, custs, &stop, errs) })
		run(func(r *rand.Rand) { s.reloadWorker(h.client, base, r, custs, &stop, errs) })
		run(func(r *rand.Rand) { s.clockWorker(h.client, base, round, r, &stop, errs) })
		loadStart := time.Now()
		time.Sleep(lcRoundMin + time.Duration(rng.Int64N(int64(lcRoundMax-lcRoundMin))))
		h.kill()
		stop.Store(true)
		wg.Wait()
		loadTime += time.Since(loadStart)
		if errs.count() > 0 {
			t.FailNow()
		}
		h.args = s.args(srv.URL + "/hooks/meterd")
		h.start()
	}
	finalStart := time.Now()

	// The clean run: the clock back where it was, everything due applied.
	var ans struct{ Now string }
	if err := json.Unmarshal(h.mustDo("POST", "/v1/test-clock", []byte(`{"advance":"0s"}`), 200), &ans); err != nil {
		t.Fatal(err)
	}
	final := lcTime(errs, "final clock", ans.Now)
	if !final.Equal(s.clockSent) {
		t.Fatalf("after the last restart the clock is at %s, want %s", ans.Now, s.clockSent.Format(time.RFC3339))
	}

	var nAck, nCharged, nRecorded, nRejected, nPaused int
	byCustomer := map[string]map[string]*crashEvent{}
	for _, e := range s.events {
		if byCustomer[e.customer] == nil {
			byCustomer[e.customer] = map[string]*crashEvent{}
		}
		byCustomer[e.customer][e.id] = e
		switch e.ack {
		case "charged":
			nCharged++
		case "recorded":
			nRecorded++
		case "rejected":
			nRejected++
			if e.ackCode == "account_paused" {
				nPaused++
			}
		}
		if e.ack != "" {
			nAck++
		}
	}

	// (iv) Every acknowledged event resent is a duplicate with its charges.
	{
		var acked []*crashEvent
		for _, e := range s.events {
			if e.ack == "charged" || e.ack == "recorded" {
				acked = append(acked, e)
			}
		}
		chunks := make(chan []*crashEvent)
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for part := range chunks {
					results, status, body, err := postEvents(h.client, h.url("/v1/events"), part)
					if err != nil || status != 200 {
						errs.Errorf("resending %d events: status %d, %v: %s", len(part), status, err, body)
						continue
					}
					for i, r := range results {
						if e := part[i]; r.Status != "duplicate" || chargesKey(r.Charges) != chargesKey(e.ackCharges) {
							errs.Errorf("acknowledged event %s (%s, charges %s) resent: %s %s, charges %s",
								e.id, e.ack, chargesKey(e.ackCharges), r.Status, r.code(), chargesKey(r.Charges))
						}
					}
				}
			}()
		}
		for i := 0; i < len(acked); i += crashResendBatch {
			chunks <- acked[i:min(len(acked), i+crashResendBatch)]
		}
		close(chunks)
		wg.Wait()
	}
	if errs.count() > 0 {
		t.FailNow()
	}

	s.replay(h, errs)
	if errs.count() > 0 {
		t.FailNow()
	}

	// (i)-(iii), (v), (vi): every customer.
	cnt := &lcCounts{holdsByStatus: map[string]int{}, notesByType: map[string]int{}}
	notes := map[string][]lcNote{}
	nNotes := 0
	for _, cu := range custs {
		notes[cu.id] = s.checkCustomer(h, errs, cu, final, byCustomer[cu.id], cnt)
		nNotes += len(notes[cu.id])
	}
	checkTime := time.Since(finalStart)
	if errs.count() > 0 {
		t.FailNow()
	}

	// (vi) The webhook: every notification delivered at least once, signed,
	// with the body the API lists, first attempts in per-customer order.
	var ds []whDelivery
	var problems []string
	for {
		ds, problems = recv.snapshot()
		ok := whDelivered(ds)
		missing := 0
		for _, ns := range notes {
			for _, n := range ns {
				if ok[n.ID] == 0 {
					missing++
				}
			}
		}
		if missing == 0 {
			break
		}
		if time.Since(finalStart) > lcWebhookWait {
			errs.Errorf("%d of %d notifications not delivered to the webhook %v after the final restart (%d deliveries so far)",
				missing, nNotes, lcWebhookWait, len(ds))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	webhookWait := time.Since(finalStart) - checkTime
	for i, p := range problems {
		if i == 10 {
			errs.Errorf("... %d webhook problems in all", len(problems))
			break
		}
		errs.Errorf("webhook receiver: %s", p)
	}
	byID := map[string]*lcNote{}
	for _, ns := range notes {
		for i := range ns {
			byID[ns[i].ID] = &ns[i]
		}
	}
	failed, redelivered := 0, 0
	for id, k := range whDelivered(ds) {
		if k > 1 {
			redelivered++
		}
		if byID[id] == nil {
			errs.Errorf("webhook: notification %s delivered, but the API does not list it", id)
		}
	}
	for _, d := range ds {
		if d.status/100 != 2 {
			failed++
		}
		if n := byID[d.id]; n != nil && !bytes.Equal(d.body, n.raw) {
			errs.Errorf("webhook: notification %s delivered as %s, listed as %s", d.id, d.body, n.raw)
		}
	}
	whCheckOrder(errs, ds)
	var backoff time.Duration // what the webhook spent waiting after refusals
	for i := 1; i < len(ds); i++ {
		if ds[i-1].status/100 != 2 {
			backoff += ds[i].at.Sub(ds[i-1].at)
		}
	}

	types := make([]string, 0, len(cnt.notesByType))
	for k, v := range cnt.notesByType {
		types = append(types, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(types)
	t.Logf("%d kill -9s in %v of load; clock moved %d times over %v (one jump of more than a day: %v); events: %d sent, %d acknowledged (%d charged, %d recorded, %d rejected of which %d paused), %d settling holds",
		lcKills, loadTime.Round(time.Millisecond), s.clockMoves, final.Sub(s.start), s.bigJumps > 0,
		len(s.events), nAck, nCharged, nRecorded, nRejected, nPaused, s.holdEvents)
	t.Logf("holds: %d acknowledged, %d refused, %d releases acknowledged, by final status %v; auto-reload: %d requests, %d confirmed, %d failed, at most %d seen pending at once, %d customers left with several pending; pauses with an end: %d over by themselves, %d still running when checked",
		len(s.holds), s.holdsRefused, s.holdsReleased, cnt.holdsByStatus, cnt.reloads, s.reloadsConfirmed, s.reloadsFailed, s.maxPendingSeen, cnt.severalPending, s.pausesEnded, s.pausesRunning)
	t.Logf("top-up reversals: %d acknowledged (%d keeping used credits), refused %v; plan changes at period end: %d plan buckets ended by a switch, %d changes still waiting when checked",
		len(s.reversals), keptSome(s.reversals), s.reversalsRefused, cnt.planSwitches, s.changesPending)
	t.Logf("ledger: %d entries, %d plan grants (%d accumulate periods skipped at the cap, %d expire_and_replace periods skipped by jumps), %d expiries, %d expiring buckets drained before expiry, %d grants and %d hold ends settling debt",
		cnt.entries, cnt.grants, cnt.skippedAccumulate, cnt.skippedReplace, cnt.expiries, cnt.drainedBeforeExpiry, cnt.debtSettled, cnt.holdDebtPairs)
	t.Logf("notifications: %d (%s); webhook: %d requests, %d answered 500 (%v spent backing off), %d notifications delivered more than once",
		nNotes, strings.Join(types, ", "), len(ds), failed, backoff.Round(time.Millisecond), redelivered)
	if s.bigJumps == 0 || cnt.skippedReplace == 0 || nCharged == 0 || nRejected == 0 || cnt.reloads == 0 ||
		cnt.holdsByStatus["expired"] == 0 || cnt.holdsByStatus["settled"] == 0 || cnt.expiries == 0 || cnt.notesByType["balance.low"] == 0 {
		errs.Errorf("the load should have had a jump of more than a day, skipped periods, charged and rejected events, reloads, expired and settled holds, expiries and balance alerts")
	}

	h.stop()
	t.Logf("runtime %v (build %v, set-up %v, load and restarts %v, final checks %v, then waiting for the webhook %v)",
		time.Since(testStart).Round(time.Millisecond), buildTime.Round(time.Millisecond), setupTime.Round(time.Millisecond),
		finalStart.Sub(testStart.Add(buildTime+setupTime)).Round(time.Millisecond), checkTime.Round(time.Millisecond),
		webhookWait.Round(time.Millisecond))
}

func TestWebhookEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the meterd binary: skipped with -short")
	}
	t.Parallel()
	const failFirst = 5
	recv := &whReceiver{secret: []byte(lcWebhookSecret), failFirst: failFirst, rng: rand.New(rand.NewPCG(1, 2))}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	start := time.Now().UTC().Add(-30 * lcDay).Truncate(time.Minute) // behind the wall clock: see TestWebhookTestClockAhead
	h := &crashHarness{t: t, bin: buildMeterd(t), dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--test-clock", "--test-clock-start", start.Format(time.RFC3339),
			"--webhook-url", srv.URL, "--webhook-secret", lcWebhookSecret}}
	t.Cleanup(func() {
		if h.proc != nil && h.proc.running() {
			h.proc.cmd.Process.Kill()
			<-h.proc.done
		}
	})
	h.start()
	h.mustDo("PUT", "/v1/pricing", []byte(lcPricing), 200)
	customers := []string{"wh1", "wh2"}
	for _, c := range customers {
		h.mustDo("PUT", "/v1/customers/"+c, []byte(`{"insufficient_funds":"reject","balance_alerts":["100","50"]}`), 201)
		h.mustDo("POST", "/v1/customers/"+c+"/topups", []byte(`{"id":"main","asset":"CREDITS","amount":"200"}`), 201)
		// On an account no event charges: it expires whole.
		h.mustDo("POST", "/v1/customers/"+c+"/topups", fmt.Appendf(nil,
			`{"id":"promo","account":"promo","asset":"CREDITS","amount":"30","expires_at":%q}`, start.Add(2*time.Hour).Format(time.RFC3339)), 201)
	}
	// balance.low at 7 credits an image: wh1 200 -> 46 crosses 100 and 50,
	// wh2 200 -> 95 crosses 100 only.
	for i := range 22 + 15 {
		c := customers[0]
		if i >= 22 {
			c = customers[1]
		}
		ev := &crashEvent{id: "e" + strconv.Itoa(i), customer: c, raw: fmt.Appendf(nil,
			`{"id":"e%d","customer_id":%q,"event_type":"image_generated","occurred_at":%q,"data":{}}`, i, c, start.Format(time.RFC3339))}
		results, status, body, err := postEvents(h.client, h.url("/v1/events"), []*crashEvent{ev})
		if err != nil || status != 200 || results[0].Status != "charged" {
			t.Fatalf("event %s: status %d, %v: %s", ev.id, status, err, body)
		}
	}
	// bucket.expired (and balance.depleted of the promo account): the clock
	// passes the promo top-ups' expiry.
	h.mustDo("POST", "/v1/test-clock", []byte(`{"advance":"3h"}`), 200)
	if b := h.mustDo("POST", "/v1/test-clock", fmt.Appendf(nil, `{"now":%q}`, start.Add(time.Hour).Format(time.RFC3339)), 409); apiCode(b) != "clock_backwards" {
		t.Errorf("moving the test clock back: %s, want clock_backwards", b)
	}

	want := map[string][]lcNote{}
	errs := &errLimiter{t: t}
	types := map[string]int{}
	for _, c := range customers {
		want[c] = lcNotes(h, errs, c)
		for _, n := range want[c] {
			types[n.Type]++
		}
	}
	if types["balance.low"] != 3 || types["bucket.expired"] != 2 {
		t.Fatalf("notifications by type %v, want 3 balance.low and 2 bucket.expired", types)
	}
	n := 0
	for _, ns := range want {
		n += len(ns)
	}

	deadline := time.Now().Add(45 * time.Second) // the first failures back off for 8-16 s
	var ds []whDelivery
	for {
		ds, _ = recv.snapshot()
		if len(whDelivered(ds)) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // anything sent twice comes now
	ds, problems := recv.snapshot()
	for _, p := range problems {
		errs.Errorf("webhook receiver: %s", p)
	}
	ok := whDelivered(ds)
	for _, ns := range want {
		for _, note := range ns {
			if ok[note.ID] != 1 {
				errs.Errorf("notification %s answered 2xx %d times, want exactly once", note.ID, ok[note.ID])
			}
		}
	}
	if len(ok) != n {
		errs.Errorf("%d notification ids delivered, the API lists %d", len(ok), n)
	}
	if len(ds) != n+failFirst {
		errs.Errorf("%d webhook requests, want %d notifications + %d refused attempts", len(ds), n, failFirst)
	}
	for i, d := range ds {
		if (i < failFirst) != (d.status == 500) {
			errs.Errorf("delivery %d answered %d", i, d.status)
		}
		byID := map[string][]byte{}
		for _, note := range want[d.customer] {
			byID[note.ID] = note.raw
		}
		if !bytes.Equal(d.body, byID[d.id]) {
			errs.Errorf("webhook: %s delivered as %s, the API lists %s", d.id, d.body, byID[d.id])
		}
	}
	whCheckOrder(errs, ds)
	h.stop()
	t.Logf("%d notifications (%v) delivered after %d refused attempts", n, types, failFirst)
}

// TestWebhookTestClockAhead: a notification made while the test clock is
// ahead of the wall clock reaches the webhook like any other.
func TestWebhookTestClockAhead(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the meterd binary: skipped with -short")
	}
	t.Parallel()
	recv := &whReceiver{secret: []byte(lcWebhookSecret), rng: rand.New(rand.NewPCG(1, 3))}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	start := time.Now().UTC().Add(10 * lcDay).Truncate(time.Minute)
	h := &crashHarness{t: t, bin: buildMeterd(t), dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--test-clock", "--test-clock-start", start.Format(time.RFC3339),
			"--webhook-url", srv.URL, "--webhook-secret", lcWebhookSecret}}
	t.Cleanup(func() {
		if h.proc != nil && h.proc.running() {
			h.proc.cmd.Process.Kill()
			<-h.proc.done
		}
	})
	h.start()
	h.mustDo("PUT", "/v1/pricing", []byte(lcPricing), 200)
	h.mustDo("PUT", "/v1/customers/ahead", []byte(`{"balance_alerts":["100"]}`), 201)
	h.mustDo("POST", "/v1/customers/ahead/topups", []byte(`{"id":"t1","asset":"CREDITS","amount":"105"}`), 201)
	ev := &crashEvent{id: "e1", customer: "ahead", raw: fmt.Appendf(nil,
		`{"id":"e1","customer_id":"ahead","event_type":"image_generated","occurred_at":%q,"data":{}}`, start.Format(time.RFC3339))}
	if results, status, body, err := postEvents(h.client, h.url("/v1/events"), []*crashEvent{ev}); err != nil || status != 200 || results[0].Status != "charged" {
		t.Fatalf("event: status %d, %v: %s", status, err, body)
	}
	errs := &errLimiter{t: t}
	notes := lcNotes(h, errs, "ahead")
	if len(notes) != 1 || notes[0].Type != "balance.low" {
		t.Fatalf("notifications %+v, want one balance.low", notes)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ds, _ := recv.snapshot()
		if whDelivered(ds)[notes[0].ID] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("notification %s (test clock at %s, ten days ahead of the wall clock) not delivered to the webhook within 10 s; %d requests received",
				notes[0].ID, start.Format(time.RFC3339), len(ds))
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.stop()
}
