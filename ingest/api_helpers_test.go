package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
)

// This file holds the harness of the HTTP acceptance tests (api_test.go): a
// real engine on a temporary directory, a real server on a loopback
// listener, and a plain net/http client. Amounts are never floats: they are
// decoded as strings and compared as decimal strings or as big.Rat.

// apiEnvOpts configure newAPIEnv.
type apiEnvOpts struct {
	Dir    string // engine directory; default t.TempDir()
	Limits Limits // zero: DefaultLimits
	Keys   *Keys  // nil: no auth
	// BodyMemoryMax is Config.BodyMemoryMax (0: its default).
	BodyMemoryMax int64
	// Clock, when set, is the engine's test clock: /v1/test-clock is
	// served (Config.TestClock) and the background timer is slowed to an
	// hour, so that time moves only when a test moves it.
	Clock *balance.ManualClock
	// RejectUnpriced is balance.Options.RejectUnpriced (--unpriced-events reject).
	RejectUnpriced bool
	// Doors and LagoIdempotent are Config's.
	Doors          Door
	LagoIdempotent bool
	// DefaultPricing is balance.Options.DefaultPricing.
	DefaultPricing []byte
	// Log is Config.Log (nil: slog's default).
	Log *slog.Logger
}

// apiEnv is one engine and one server serving on loopback.
type apiEnv struct {
	t      *testing.T
	dir    string
	base   string
	eng    *balance.Engine
	srv    *Server
	client *http.Client
	auth   string // default Authorization header value ("" = none)
	served chan error
	closed bool
}

func newAPIEnv(t *testing.T, o apiEnvOpts) *apiEnv {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	opts := balance.Options{Dir: o.Dir, Shards: 2, QueueMax: 1024, IdemCacheMax: 1 << 17, CommitEventsMax: 1024, RejectUnpriced: o.RejectUnpriced,
		DefaultPricing: o.DefaultPricing}
	if o.Clock != nil {
		opts.Clock = o.Clock
		opts.TimerInterval = time.Hour
	}
	eng, err := balance.Open(opts)
	if err != nil {
		t.Fatalf("balance.Open: %v", err)
	}
	srv := NewServer(Config{Engine: eng, Keys: o.Keys, Limits: o.Limits, RequestTimeout: 10 * time.Second, TestClock: o.Clock != nil,
		BodyMemoryMax: o.BodyMemoryMax, Doors: o.Doors, LagoIdempotent: o.LagoIdempotent, Log: o.Log})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		eng.Close()
		t.Fatalf("listen: %v", err)
	}
	e := &apiEnv{
		t: t, dir: o.Dir, base: "http://" + ln.Addr().String(), eng: eng, srv: srv,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
		served: make(chan error, 1),
	}
	go func() { e.served <- srv.Serve(ln) }()
	t.Cleanup(e.close)
	return e
}

// close shuts the server and then the engine down; it may be called twice.
func (e *apiEnv) close() {
	if e.closed {
		return
	}
	e.closed = true
	e.client.CloseIdleConnections()
	if err := e.srv.Shutdown(); err != nil {
		e.t.Errorf("server shutdown: %v", err)
	}
	select {
	case <-e.served:
	case <-time.After(5 * time.Second):
		e.t.Errorf("Serve did not return after Shutdown")
	}
	if err := e.eng.Close(); err != nil {
		e.t.Errorf("engine close: %v", err)
	}
}

// apiResp is one HTTP answer.
type apiResp struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r apiResp) String() string { return fmt.Sprintf("%d %s", r.Status, r.Body) }

// send sends one request. ctype "" sends no Content-Type; auth "" uses the
// env's default; auth "-" sends no Authorization header.
func (e *apiEnv) send(method, path, ctype, auth string, body []byte) apiResp {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if auth == "" {
		auth = e.auth
	}
	if auth != "" && auth != "-" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return apiResp{Status: res.StatusCode, Header: res.Header, Body: b}
}

// try sends a JSON request (body "" sends none) and returns transport
// errors instead of failing the test: it is safe on any goroutine.
func (e *apiEnv) try(method, path, body string) (apiResp, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		return apiResp{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.auth != "" {
		req.Header.Set("Authorization", "Bearer "+e.auth)
	}
	res, err := e.client.Do(req)
	if err != nil {
		return apiResp{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return apiResp{}, fmt.Errorf("%s %s: reading the body: %w", method, path, err)
	}
	return apiResp{Status: res.StatusCode, Header: res.Header, Body: b}, nil
}

// call sends a JSON request (body "" sends none).
func (e *apiEnv) call(method, path, body string) apiResp {
	e.t.Helper()
	if body == "" {
		return e.send(method, path, "", "", nil)
	}
	return e.send(method, path, "application/json", "", []byte(body))
}

// must sends a JSON request and fails unless the status is want.
func (e *apiEnv) must(want int, method, path, body string) apiResp {
	e.t.Helper()
	r := e.call(method, path, body)
	if r.Status != want {
		e.t.Fatalf("%s %s %s: got %s, want status %d", method, path, apiTrunc(body, 300), apiTrunc(string(r.Body), 500), want)
	}
	return r
}

func apiTrunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// decodeInto decodes a JSON body into v with UseNumber, failing the test on error.
func apiDecode(t *testing.T, body []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decoding %s: %v", apiTrunc(string(body), 500), err)
	}
	if dec.More() {
		t.Fatalf("decoding %s: trailing data", apiTrunc(string(body), 500))
	}
}

// canonJSON re-encodes a JSON body (decoded with UseNumber) so that two
// bodies can be compared whatever their key order and spacing.
func apiCanon(t *testing.T, body []byte) string {
	t.Helper()
	var v any
	apiDecode(t, body, &v)
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The contract's response shapes. Amounts are strings: a JSON number in
// their place fails the decoding.

type apiErrorBody struct {
	Code    string `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Field   string `json:"field"`
}

type apiErrorResp struct {
	Error *apiErrorBody `json:"error"`
}

type apiPart struct {
	BucketID *string `json:"bucket_id"`
	Amount   string  `json:"amount"`
	Debt     bool    `json:"debt"`
}

type apiCharge struct {
	Account string    `json:"account"`
	Amount  string    `json:"amount"`
	Exact   string    `json:"exact"`
	Buckets []apiPart `json:"buckets"`
}

type apiResult struct {
	ID             *string           `json:"id"`
	Status         string            `json:"status"`
	PricingVersion json.Number       `json:"pricing_version"`
	Charges        []apiCharge       `json:"charges"`
	Balances       map[string]string `json:"balances"`
	Error          *apiErrorBody     `json:"error"`
}

// String makes %v and %+v print the result as JSON.
func (r apiResult) String() string { return apiJSON(r) }

type apiResults struct {
	PricingVersion json.Number `json:"pricing_version"`
	Results        []apiResult `json:"results"`
}

type apiBucket struct {
	ID          string          `json:"id"`
	Kind        string          `json:"kind"`
	Priority    json.Number     `json:"priority"`
	Amount      string          `json:"amount"`
	Remaining   string          `json:"remaining"`
	EffectiveAt *string         `json:"effective_at"`
	ExpiresAt   *string         `json:"expires_at"`
	Source      string          `json:"source"`
	Reference   string          `json:"reference"`
	Metadata    json.RawMessage `json:"metadata"`
}

type apiAccount struct {
	ID        string      `json:"id"`
	Name      string      `json:"name"`
	Asset     string      `json:"asset"`
	Available string      `json:"available"`
	Held      string      `json:"held"`
	Debt      string      `json:"debt"`
	Buckets   []apiBucket `json:"buckets"`
}

type apiWallet struct {
	CustomerID string       `json:"customer_id"`
	Accounts   []apiAccount `json:"accounts"`
}

func (w *apiWallet) account(id string) *apiAccount {
	for i := range w.Accounts {
		if w.Accounts[i].ID == id {
			return &w.Accounts[i]
		}
	}
	return nil
}

// available is the account's available amount, "0" when it has no account.
func (w *apiWallet) available(id string) string {
	if a := w.account(id); a != nil {
		return a.Available
	}
	return "0"
}

type apiEntry struct {
	ID             string          `json:"id"`
	Seq            json.Number     `json:"seq"`
	Type           string          `json:"type"`
	Account        string          `json:"account"`
	Amount         string          `json:"amount"`
	BalanceAfter   string          `json:"balance_after"`
	BucketID       *string         `json:"bucket_id"`
	EventID        *string         `json:"event_id"`
	Reference      *string         `json:"reference"`
	OccurredAt     string          `json:"occurred_at"`
	RecordedAt     string          `json:"recorded_at"`
	PricingVersion json.Number     `json:"pricing_version"`
	Metadata       json.RawMessage `json:"metadata"`
}

type apiLedgerPage struct {
	Entries []apiEntry `json:"entries"`
	Next    *string    `json:"next"`
}

type apiTopUp struct {
	ID        string  `json:"id"`
	BucketID  string  `json:"bucket_id"`
	Status    string  `json:"status"`
	Amount    string  `json:"amount"`
	CreatedAt string  `json:"created_at"`
	ExpiresAt *string `json:"expires_at"`
}

func apiStrOr(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

// putPricing PUTs a pricing document and returns its version.
func (e *apiEnv) putPricing(doc string) string {
	e.t.Helper()
	r := e.must(200, "PUT", "/v1/pricing", doc)
	var v struct {
		Version json.Number `json:"version"`
	}
	apiDecode(e.t, r.Body, &v)
	if v.Version == "" {
		e.t.Fatalf("PUT /v1/pricing: no version in %s", r.Body)
	}
	return v.Version.String()
}

// newCustomer creates a customer with the given settings body.
func (e *apiEnv) newCustomer(id, body string) {
	e.t.Helper()
	e.must(201, "PUT", "/v1/customers/"+id, body)
}

func (e *apiEnv) topUp(customer, body string) apiTopUp {
	e.t.Helper()
	r := e.must(201, "POST", "/v1/customers/"+customer+"/topups", body)
	var tu apiTopUp
	apiDecode(e.t, r.Body, &tu)
	return tu
}

// postEvents POSTs a JSON batch and returns the results, requiring 200 and
// one result per event.
func (e *apiEnv) postEvents(body string, n int) []apiResult {
	e.t.Helper()
	r := e.must(200, "POST", "/v1/events", body)
	var rs apiResults
	apiDecode(e.t, r.Body, &rs)
	if len(rs.Results) != n {
		e.t.Fatalf("POST /v1/events: %d results, want %d: %s", len(rs.Results), n, apiTrunc(string(r.Body), 800))
	}
	return rs.Results
}

// event1 posts one event and returns its result.
func (e *apiEnv) event1(ev string) apiResult {
	e.t.Helper()
	return e.postEvents(`{"events":[`+ev+`]}`, 1)[0]
}

func (e *apiEnv) wallet(customer string) (apiWallet, []byte) {
	e.t.Helper()
	r := e.must(200, "GET", "/v1/customers/"+customer+"/wallet", "")
	var w apiWallet
	apiDecode(e.t, r.Body, &w)
	return w, r.Body
}

// ledgerAll reads a customer's whole ledger (newest first) page by page.
func (e *apiEnv) ledgerAll(customer, account string) []apiEntry {
	e.t.Helper()
	var all []apiEntry
	before := ""
	for range 1000 {
		q := "?limit=1000"
		if account != "" {
			q += "&account=" + account
		}
		if before != "" {
			q += "&before=" + before
		}
		r := e.must(200, "GET", "/v1/customers/"+customer+"/ledger"+q, "")
		var p apiLedgerPage
		apiDecode(e.t, r.Body, &p)
		all = append(all, p.Entries...)
		if p.Next == nil {
			return all
		}
		before = *p.Next
	}
	e.t.Fatalf("ledger of %s: no end", customer)
	return nil
}

// wantErr checks a non-2xx answer: status, error code and (when not "") field.
func apiWantErr(t *testing.T, what string, r apiResp, status int, code, field string) {
	t.Helper()
	if r.Status != status {
		t.Errorf("%s: got %s, want status %d %s", what, apiTrunc(string(r.Body), 400), status, code)
		return
	}
	var e apiErrorResp
	if err := json.Unmarshal(r.Body, &e); err != nil || e.Error == nil {
		t.Errorf("%s: body is not the contract's error object: %s", what, apiTrunc(string(r.Body), 400))
		return
	}
	if e.Error.Code != code {
		t.Errorf("%s: error code %q, want %q (%s)", what, e.Error.Code, code, r.Body)
	}
	if e.Error.Message == "" {
		t.Errorf("%s: error without a message: %s", what, r.Body)
	}
	if field != "" && e.Error.Field != field {
		t.Errorf("%s: error field %q, want %q (%s)", what, e.Error.Field, field, r.Body)
	}
}

// wantRejected checks one event result: rejected with code (and reason and
// field when not "").
func apiWantRejected(t *testing.T, what string, r apiResult, code, reason, field string) {
	t.Helper()
	if r.Status != "rejected" || r.Error == nil {
		t.Errorf("%s: status %q error %+v, want rejected %s", what, r.Status, r.Error, code)
		return
	}
	if r.Error.Code != code {
		t.Errorf("%s: error code %q, want %q (%+v)", what, r.Error.Code, code, *r.Error)
	}
	if reason != "" && r.Error.Reason != reason {
		t.Errorf("%s: reason %q, want %q (%+v)", what, r.Error.Reason, reason, *r.Error)
	}
	if field != "" && r.Error.Field != field {
		t.Errorf("%s: field %q, want %q (%+v)", what, r.Error.Field, field, *r.Error)
	}
	if len(r.Charges) != 0 {
		t.Errorf("%s: a rejected event has charges %+v", what, r.Charges)
	}
}

// rat parses a decimal string exactly; it fails the test on anything else
// (including exponents, which the contract's output never uses).
func apiRat(t *testing.T, s string) *big.Rat {
	t.Helper()
	if s == "" || strings.ContainsAny(s, "eE/") {
		t.Fatalf("%q is not a plain decimal", s)
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		t.Fatalf("%q is not a decimal", s)
	}
	return r
}

// decEq reports whether two decimal strings are the same number.
func apiDecEq(t *testing.T, a, b string) bool {
	t.Helper()
	return apiRat(t, a).Cmp(apiRat(t, b)) == 0
}

func apiWantDec(t *testing.T, what, got, want string) {
	t.Helper()
	if !apiDecEq(t, got, want) {
		t.Errorf("%s = %s, want %s", what, got, want)
	}
}

func apiRatSub(t *testing.T, a, b string) *big.Rat {
	t.Helper()
	return new(big.Rat).Sub(apiRat(t, a), apiRat(t, b))
}

// rfc3339ms formats a time as the contract's input/output format.
func apiTime(tm time.Time) string { return tm.UTC().Format("2006-01-02T15:04:05.000Z") }

// apiJSON is v as JSON, for comparing decoded values.
func apiJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// apiTimeRE is the contract's output format for timestamps: UTC, milliseconds.
var apiTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// apiWantTime checks that s is a timestamp in the contract's output format.
func apiWantTime(t *testing.T, what, s string) {
	t.Helper()
	if !apiTimeRE.MatchString(s) {
		t.Errorf("%s = %q, want UTC with milliseconds such as 2026-11-21T10:00:00.000Z", what, s)
	}
}

// checkInvariants checks, for every account of the customer's wallet, that
// the sum of its ledger amounts equals available (the contract's invariant),
// that the newest entry's balance_after is available, and that every
// timestamp is in the output format.
func (e *apiEnv) checkInvariants(customer string) {
	t := e.t
	t.Helper()
	w, _ := e.wallet(customer)
	entries := e.ledgerAll(customer, "")
	for _, a := range w.Accounts {
		sum := new(big.Rat)
		var newest *apiEntry
		for i := range entries {
			if entries[i].Account == a.ID {
				sum.Add(sum, apiRat(t, entries[i].Amount))
				if newest == nil {
					newest = &entries[i]
				}
			}
		}
		// Oldest to newest, each balance_after is the previous one plus the amount.
		run := new(big.Rat)
		for i := len(entries) - 1; i >= 0; i-- {
			en := &entries[i]
			if en.Account != a.ID {
				continue
			}
			run.Add(run, apiRat(t, en.Amount))
			if run.Cmp(apiRat(t, en.BalanceAfter)) != 0 {
				t.Errorf("%s %s: entry %s (%s %s) has balance_after %s, the running sum is %s",
					customer, a.ID, en.ID, en.Type, en.Amount, en.BalanceAfter, run.FloatString(9))
				break
			}
		}
		if sum.Cmp(apiRat(t, a.Available)) != 0 {
			t.Errorf("%s %s: ledger amounts sum to %s, available is %s", customer, a.ID, sum.FloatString(9), a.Available)
		}
		if newest != nil && !apiDecEq(t, newest.BalanceAfter, a.Available) {
			t.Errorf("%s %s: newest entry balance_after %s, available is %s", customer, a.ID, newest.BalanceAfter, a.Available)
		}
		for _, b := range a.Buckets {
			apiWantTime(t, "bucket effective_at", apiStrOr(b.EffectiveAt, ""))
			if b.ExpiresAt != nil {
				apiWantTime(t, "bucket expires_at", *b.ExpiresAt)
			}
		}
	}
	for _, en := range entries {
		apiWantTime(t, "ledger occurred_at", en.OccurredAt)
		apiWantTime(t, "ledger recorded_at", en.RecordedAt)
		if w.account(en.Account) == nil {
			t.Errorf("%s: ledger entry %s of account %s, which the wallet does not list", customer, en.ID, en.Account)
		}
	}
}

// threeKeys loads a keys file with ingestKey, readKey and adminKey (auth_test.go), each with its one scope.
func threeKeys(t *testing.T) *Keys {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.yaml")
	yaml := "keys:\n" +
		"  - name: ingest\n    key: \"" + ingestKey + "\"\n    scopes: [ingest]\n" +
		"  - name: reader\n    key: \"" + readKey + "\"\n    scopes: [read]\n" +
		"  - name: admin\n    key: \"" + adminKey + "\"\n    scopes: [admin]\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := LoadKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}
