package main

// The ClickHouse sink's integration and fault tests. They build the real
// meterd binary, run it with --clickhouse-addr against a private ClickHouse
// server (sink/chtest) and compare what lands in ledger_entries and
// usage_events with what the HTTP API says:
//
//   - TestClickHouseSinkEndToEnd: grants, a reversal and events of every kind
//     through the HTTP API appear in ClickHouse within chShipWithin of the
//     last write, every column right, and per customer and account
//     sum(amount) equals the wallet's available.
//   - TestClickHouseSinkExactlyOnceUnderFaults: kill -9s meterd in the middle
//     of small sink batches and kills or stops ClickHouse under load, many
//     times; afterwards every ledger entry and usage row is in ClickHouse
//     exactly once, without FINAL, and nothing is missing.
//
// The process harness is crash_test.go's (crashHarness, crashProc, postEvents,
// newCrashEvent, ...), started with the sink's flags.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/meterd/meterd/sink/chtest"
)

const (
	chShipWithin       = 2 * time.Second  // from the last write to every row in ClickHouse (default batch settings)
	chCatchUpTimeout   = 60 * time.Second // from the final restart to shipped == watermark
	chPollInterval     = 50 * time.Millisecond
	chQueryTimeout     = 30 * time.Second
	chFaultWorkers     = 4
	chFaultBatchRows   = "500"
	chFaultBatchAge    = "50ms"
	chFaultResendPar   = 4
	chFaultLoadPause   = 40 * time.Millisecond // between a worker's batches: bounds the volume on 2 cores
	chFaultCustomers   = crashCustomers        // newCrashEvent picks c0..c15
	chDuplicatesShown  = 10
	chFaultMeterdKills = 9 // kill -9 meterd under load
	chFaultCHKills     = 3 // kill -9 ClickHouse under load, restart it under load
	chFaultCHStops     = 3 // SIGTERM ClickHouse under load, restart it under load
	chFaultBothKills   = 2 // kill -9 ClickHouse, then meterd while it is down
)

// chPricing: USD per million tokens by model at prices that leave sub-unit
// remainders, CREDITS per image, nothing for page_viewed (recorded).
const chPricing = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],
 "prices":[
  {"event_type":"message_completed","account":"default:USD","dimensions":["model"],
   "components":[
     {"field":"input_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"2.00","*":"0.37"}},
     {"field":"output_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"8.00","*":"1.13"}}]},
  {"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"}]}`

// chMeterd is crashHarness started with the sink's flags.
type chMeterd struct {
	*crashHarness
}

// cleanup kills a meterd still running when the test ends.
func (m *chMeterd) cleanup() {
	if p := m.proc; p != nil && p.running() {
		p.cmd.Process.Kill()
		<-p.done
	}
}

// chSinkStatus is one sink of /readyz.
type chSinkStatus struct {
	Name           string `json:"name"`
	Shipped        uint64 `json:"shipped"`
	Watermark      uint64 `json:"watermark"`
	LastError      string `json:"last_error"`
	ConsecutiveErr int    `json:"consecutive_errors"`
}

// readyz reads the ClickHouse sink's status from /readyz.
func (m *chMeterd) readyz() (chSinkStatus, string, error) {
	status, body, err := m.do("GET", "/readyz", nil)
	if err != nil {
		return chSinkStatus{}, "", err
	}
	var r struct {
		Status string         `json:"status"`
		Sinks  []chSinkStatus `json:"sinks"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return chSinkStatus{}, string(body), fmt.Errorf("/readyz status %d: %v", status, err)
	}
	for _, s := range r.Sinks {
		if s.Name == "clickhouse" {
			return s, string(body), nil
		}
	}
	return chSinkStatus{}, string(body), fmt.Errorf("/readyz status %d: no clickhouse sink", status)
}

// waitCaughtUp waits until the sink has shipped everything durable.
func (m *chMeterd) waitCaughtUp(within time.Duration) time.Duration {
	t := m.t
	t.Helper()
	start := time.Now()
	for {
		s, body, err := m.readyz()
		if err == nil && s.Watermark > 0 && s.Shipped == s.Watermark {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("the ClickHouse sink did not catch up within %v: /readyz %s (%v); meterd's output:\n%s",
				within, body, err, m.proc.log.tail())
		}
		time.Sleep(chPollInterval)
	}
}

// chEntry is a ledger entry as GET /v1/customers/{id}/ledger shows it.
type chEntry struct {
	ID             string          `json:"id"`
	Seq            uint64          `json:"seq"`
	Type           string          `json:"type"`
	Account        string          `json:"account"`
	Amount         string          `json:"amount"`
	BalanceAfter   string          `json:"balance_after"`
	BucketID       *string         `json:"bucket_id"`
	EventID        *string         `json:"event_id"`
	Reference      *string         `json:"reference"`
	OccurredAt     string          `json:"occurred_at"`
	RecordedAt     string          `json:"recorded_at"`
	PricingVersion uint32          `json:"pricing_version"`
	Metadata       json.RawMessage `json:"metadata"`
}

// ledger reads a customer's whole ledger, oldest first.
func (m *chMeterd) ledger(c string) []chEntry {
	m.t.Helper()
	entries := readLedger[chEntry](m.crashHarness, c)
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].Seq < entries[j].Seq })
	return entries
}

type chWallet struct {
	Accounts []struct {
		ID        string `json:"id"`
		Available string `json:"available"`
		Buckets   []struct {
			ID   string `json:"id"`
			Kind string `json:"kind"`
		} `json:"buckets"`
	} `json:"accounts"`
}

func (m *chMeterd) wallet(c string) chWallet {
	m.t.Helper()
	var w chWallet
	if err := json.Unmarshal(m.mustDo("GET", "/v1/customers/"+c+"/wallet", nil, 200), &w); err != nil {
		m.t.Fatalf("wallet of %s: %v", c, err)
	}
	return w
}

// buildMeterd builds the meterd binary of this package into a temporary directory.
func buildMeterd(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "meterd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// chDatabaseName is a database name of its own for one test run.
func chDatabaseName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "meterd_" + prefix + "_" + hex.EncodeToString(b)
}

// chRows runs q, whose columns must all be String (use toString), and
// returns its rows.
func chRows(conn driver.Conn, q string) ([][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), chQueryTimeout)
	defer cancel()
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	n := len(rows.Columns())
	var out [][]string
	for rows.Next() {
		rec := make([]string, n)
		ptrs := make([]any, n)
		for i := range rec {
			ptrs[i] = &rec[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, rows.Err()
}

func mustRows(t *testing.T, conn driver.Conn, q string) [][]string {
	t.Helper()
	rows, err := chRows(conn, q)
	if err != nil {
		t.Fatalf("clickhouse: %s: %v", q, err)
	}
	return rows
}

// decEqual compares two exact decimals ("40" and "40.000000000" are equal);
// it never goes through a float.
func decEqual(a, b string) bool {
	x, ok1 := crashDec(a)
	y, ok2 := crashDec(b)
	return ok1 && ok2 && x.Cmp(y) == 0
}

// jsonEqual compares two JSON texts as values; numbers compare as exact
// decimals, "" and null count as {}.
func jsonEqual(a, b string) bool {
	parse := func(s string) (any, bool) {
		s = strings.TrimSpace(s)
		if s == "" || s == "null" {
			s = "{}"
		}
		d := json.NewDecoder(strings.NewReader(s))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil || d.More() {
			return nil, false
		}
		return v, true
	}
	x, ok1 := parse(a)
	y, ok2 := parse(b)
	return ok1 && ok2 && jsonValueEqual(x, y)
}

func jsonValueEqual(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !jsonValueEqual(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonValueEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		p, ok1 := new(big.Rat).SetString(string(x))
		q, ok2 := new(big.Rat).SetString(string(y))
		return ok1 && ok2 && p.Cmp(q) == 0
	default:
		return a == b
	}
}

// chSecond and chMilli are how an API timestamp reads in a DateTime('UTC')
// column (toString) and in a *_ms column.
func chSecond(ts time.Time) string { return ts.UTC().Format("2006-01-02 15:04:05") }
func chMilli(ts time.Time) string  { return strconv.FormatInt(ts.UnixMilli(), 10) }

func optString(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// chEvent is one event the end-to-end test sends, with what it expects.
type chEvent struct {
	ID, Customer, Type, Subject string
	OccurredAt                  time.Time
	Data                        string // "" = no data member
	Want                        string // charged | recorded | rejected | duplicate
	WantCode                    string // for rejected
}

func (e *chEvent) json() string {
	s := fmt.Sprintf(`{"id":%q,"customer_id":%q,"event_type":%q,"occurred_at":%q,"subject":%q`,
		e.ID, e.Customer, e.Type, e.OccurredAt.Format(time.RFC3339Nano), e.Subject)
	if e.Data != "" {
		s += `,"data":` + e.Data
	}
	return s + "}"
}

type chEventResult struct {
	ID             string        `json:"id"`
	Status         string        `json:"status"`
	PricingVersion uint32        `json:"pricing_version"`
	Charges        []crashCharge `json:"charges"`
	Error          *struct {
		Code string `json:"code"`
	} `json:"error"`
}

func TestClickHouseSinkEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meterd and starts a ClickHouse server: skipped with -short")
	}
	testStart := time.Now()
	srv := chtest.StartInDir(t, t.TempDir())
	t.Logf("ClickHouse %s at %s", srv.Version, srv.Addr)
	db := chDatabaseName("e2e")
	bin := buildMeterd(t)
	m := &chMeterd{crashHarness: &crashHarness{t: t, bin: bin, dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--clickhouse-addr", srv.Addr, "--clickhouse-database", db}}}
	t.Cleanup(m.cleanup)
	m.start()
	conn := srv.Conn(t)

	var lastWrite time.Time
	write := func(method, path, body string, want ...int) []byte {
		t.Helper()
		b := m.mustDo(method, path, []byte(body), want...)
		lastWrite = time.Now()
		return b
	}
	var pv struct {
		Version uint32 `json:"version"`
	}
	if err := json.Unmarshal(write("PUT", "/v1/pricing", chPricing, 200), &pv); err != nil || pv.Version == 0 {
		t.Fatalf("PUT /v1/pricing: version %d, %v", pv.Version, err)
	}

	// Grants. bucketKinds collects the kind of every bucket that ever held
	// credits, by customer/bucket_id (bucket ids are per customer): from
	// top-up answers and from wallets read before the buckets could be used
	// up.
	bucketKinds := map[string]string{}
	topUp := func(c, body string) {
		t.Helper()
		var r struct {
			BucketID string `json:"bucket_id"`
		}
		if err := json.Unmarshal(write("POST", "/v1/customers/"+c+"/topups", body, 201), &r); err != nil || r.BucketID == "" {
			t.Fatalf("top-up of %s: bucket_id %q, %v", c, r.BucketID, err)
		}
		bucketKinds[c+"/"+r.BucketID] = "recharge"
	}
	promoExpiry := time.Now().Add(30 * 24 * time.Hour).UTC().Truncate(time.Millisecond)
	write("PUT", "/v1/customers/alice", `{"insufficient_funds":"reject"}`, 200, 201)
	write("POST", "/v1/customers/alice/adjustments", fmt.Sprintf(`{"transaction_id":"adj-promo-1","account_name":"default",
		"asset":"CREDITS","amount":"100","kind":"promotional","reason":"gift","description":"welcome",
		"expires_at":%q,"metadata":{"campaign":"spring","n":1}}`, promoExpiry.Format(time.RFC3339Nano)), 201)
	topUp("alice", `{"id":"top-cr-1","account":"default","asset":"CREDITS","amount":"1000",
		"price":{"amount":"15.00","currency":"USD"},"source":"custom_credits","metadata":{"order":"o-1"}}`)
	topUp("alice", `{"id":"top-usd-1","asset":"USD","amount":"5.5"}`)
	topUp("alice", `{"id":"top-usd-2","asset":"USD","amount":"2.000001"}`)
	write("POST", "/v1/customers/alice/topups/top-usd-2/reverse", "", 200)

	write("PUT", "/v1/customers/bob", `{"insufficient_funds":"reject"}`, 200, 201)
	topUp("bob", `{"id":"top-cr-b","asset":"CREDITS","amount":"50"}`)
	write("POST", "/v1/customers/bob/adjustments", `{"transaction_id":"adj-usd-b","asset":"USD","amount":"1.5",
		"kind":"recharge","reason":"external_topup","metadata":{"psp":"stripe"}}`, 201)
	write("POST", "/v1/customers/bob/adjustments", `{"transaction_id":"adj-corr-b","asset":"CREDITS","amount":"-5",
		"reason":"correction"}`, 201)

	write("PUT", "/v1/customers/carol", `{"insufficient_funds":"reject"}`, 200, 201)
	topUp("carol", `{"id":"top-cr-c","asset":"CREDITS","amount":"100"}`)
	write("PUT", "/v1/customers/carol", `{"status":"paused","insufficient_funds":"reject"}`, 200, 201)

	customers := []string{"alice", "bob", "carol"}
	for _, c := range customers {
		for _, a := range m.wallet(c).Accounts {
			for _, b := range a.Buckets {
				bucketKinds[c+"/"+b.ID] = b.Kind
			}
		}
	}

	// Events: alice's three images take 40, 40, then 20 from the promotional
	// bucket and 20 from the top-up; messages in USD leave remainders.
	base := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	at := func(ms int, ns int) time.Time {
		return base.Add(time.Duration(ms)*time.Millisecond + time.Duration(ns))
	}
	events := []*chEvent{
		{ID: "a-img-1", Customer: "alice", Type: "image_generated", Subject: "img_1", OccurredAt: at(71, 0),
			Data: `{"size":"1024x1024"}`, Want: "charged"},
		{ID: "a-img-2", Customer: "alice", Type: "image_generated", Subject: "img_2", OccurredAt: at(1999, 999_999),
			Data: `{"size":"512x512","seed":42}`, Want: "charged"},
		{ID: "a-img-3", Customer: "alice", Type: "image_generated", Subject: "img_3", OccurredAt: at(2500, 0),
			Data: `{"size":"256x256"}`, Want: "charged"},
		{ID: "a-msg-1", Customer: "alice", Type: "message_completed", Subject: "chat_5f53", OccurredAt: at(3001, 234_567),
			Data: `{"model":"gpt-4-1","input_tokens":2353,"output_tokens":34697}`, Want: "charged"},
		{ID: "a-msg-2", Customer: "alice", Type: "message_completed", Subject: "chat_5f53", OccurredAt: at(4000, 0),
			Data: `{"model":"claude-x","input_tokens":12345,"output_tokens":678,"meta":{"tags":["a","b\"c"],"ok":true,"x":null,"f":1.50}}`, Want: "charged"},
		{ID: "a-view-1", Customer: "alice", Type: "page_viewed", Subject: "/pricing", OccurredAt: at(5123, 0),
			Data: `{"page":"/p/ü\t1","n":-3}`, Want: "recorded"},
		{ID: "a-msg-bad", Customer: "alice", Type: "message_completed", Subject: "chat_x", OccurredAt: at(6000, 0),
			Data: `{"model":"gpt-4-1","input_tokens":-5,"output_tokens":1}`, Want: "rejected", WantCode: "invalid_event"},
		{ID: "b-img-1", Customer: "bob", Type: "image_generated", Subject: "img_b1", OccurredAt: at(7000, 0),
			Data: `{"size":"1024x1024"}`, Want: "charged"},
		{ID: "b-img-2", Customer: "bob", Type: "image_generated", Subject: "img_b2", OccurredAt: at(7001, 0),
			Data: `{"size":"1024x1024"}`, Want: "rejected", WantCode: "insufficient_funds"},
		{ID: "b-msg-1", Customer: "bob", Type: "message_completed", Subject: "chat_b", OccurredAt: at(8000, 0),
			Data: `{"model":"gpt-4o-mini","input_tokens":100000,"output_tokens":3333}`, Want: "charged"},
		{ID: "c-img-1", Customer: "carol", Type: "image_generated", Subject: "img_c1", OccurredAt: at(9000, 0),
			Data: `{"size":"1024x1024"}`, Want: "rejected", WantCode: "account_paused"},
		{ID: "x-img-1", Customer: "nobody", Type: "image_generated", Subject: "img_x", OccurredAt: at(9500, 0),
			Data: `{"size":"1024x1024"}`, Want: "rejected", WantCode: "unknown_customer"},
	}
	second := []*chEvent{
		events[0], // the same event again: a duplicate, no new rows
		{ID: "a-view-2", Customer: "alice", Type: "page_viewed", Subject: "/home", OccurredAt: at(10_000, 0),
			Want: "recorded"},
		{ID: "b-view-1", Customer: "bob", Type: "page_viewed", Subject: "/docs", OccurredAt: at(10_500, 0),
			Data: `{}`, Want: "recorded"},
	}
	type sent struct {
		ev         *chEvent
		res        chEventResult
		start, end time.Time
	}
	results := map[string]*sent{} // by event id, first send
	post := func(evs []*chEvent, dup bool) {
		t.Helper()
		var parts []string
		for _, e := range evs {
			parts = append(parts, e.json())
		}
		start := time.Now()
		body := write("POST", "/v1/events", `{"events":[`+strings.Join(parts, ",")+`]}`, 200)
		end := time.Now()
		var out struct {
			Results []chEventResult `json:"results"`
		}
		if err := json.Unmarshal(body, &out); err != nil || len(out.Results) != len(evs) {
			t.Fatalf("POST /v1/events: %d results for %d events, %v: %s", len(out.Results), len(evs), err, body)
		}
		for i, r := range out.Results {
			e := evs[i]
			want := e.Want
			if dup && results[e.ID] != nil {
				want = "duplicate"
			}
			code := ""
			if r.Error != nil {
				code = r.Error.Code
			}
			if r.ID != e.ID || r.Status != want || code != e.WantCode && want == "rejected" {
				t.Fatalf("event %s: result %s %s %s, want %s %s: %s", e.ID, r.ID, r.Status, code, want, e.WantCode, body)
			}
			if want != "duplicate" {
				results[e.ID] = &sent{ev: e, res: r, start: start, end: end}
			}
		}
	}
	post(events, false)
	post(second, true)
	if parts := results["a-img-3"].res.Charges; len(parts) != 1 || len(parts[0].Buckets) != 2 {
		t.Fatalf("a-img-3 should span two buckets: charges %s", chargesKey(parts))
	}

	// What the API says, read after the last write.
	ledgers := map[string][]chEntry{}
	nLedger := 0
	for _, c := range customers {
		ledgers[c] = m.ledger(c)
		nLedger += len(ledgers[c])
	}
	types := map[string]bool{}
	for _, c := range customers {
		for _, en := range ledgers[c] {
			types[en.Type] = true
		}
	}
	for _, want := range []string{"usage", "topup", "topup_reversal", "adjustment"} {
		if !types[want] {
			t.Errorf("the ledgers have no %s entry: the scenario did not do what it should", want)
		}
	}
	nUsage := 0
	for _, s := range results {
		switch s.res.Status {
		case "charged":
			nUsage += len(s.res.Charges)
		case "recorded":
			nUsage++
		}
	}

	// Poll ClickHouse until the rows are there, at most chShipWithin after
	// the last write (the tables may not exist before the first batch).
	deadline := lastWrite.Add(chShipWithin)
	var gotLedger, gotUsage string
	for {
		l, err1 := chRows(conn, "SELECT toString(count()) FROM "+db+".ledger_entries")
		u, err2 := chRows(conn, "SELECT toString(count()) FROM "+db+".usage_events")
		if err1 == nil && err2 == nil {
			gotLedger, gotUsage = l[0][0], u[0][0]
			if gotLedger == strconv.Itoa(nLedger) && gotUsage == strconv.Itoa(nUsage) {
				break
			}
		}
		if time.Now().After(deadline) {
			_, rz, _ := m.readyz()
			t.Fatalf("%v after the last write ClickHouse has %q ledger rows (want %d) and %q usage rows (want %d) (%v, %v); /readyz %s; meterd's output:\n%s",
				time.Since(lastWrite).Round(time.Millisecond), gotLedger, nLedger, gotUsage, nUsage, err1, err2, rz, m.proc.log.tail())
		}
		time.Sleep(chPollInterval)
	}
	shippedIn := time.Since(lastWrite)
	t.Logf("%d ledger rows and %d usage rows in ClickHouse %v after the last write", nLedger, nUsage, shippedIn.Round(time.Millisecond))

	// Ledger rows, column by column.
	lrows := mustRows(t, conn, `SELECT entry_id, toString(seq), customer_id, account, asset, type, toString(amount),
		toString(balance_after), bucket_id, bucket_kind, event_id, reference, toString(occurred_at), toString(occurred_at_ms),
		toString(recorded_at), toString(recorded_at_ms), toString(pricing_version), metadata FROM `+db+`.ledger_entries`)
	byEntry := map[string][][]string{}
	for _, r := range lrows {
		byEntry[r[0]] = append(byEntry[r[0]], r)
	}
	cols := []string{"entry_id", "seq", "customer_id", "account", "asset", "type", "amount", "balance_after", "bucket_id",
		"bucket_kind", "event_id", "reference", "occurred_at", "occurred_at_ms", "recorded_at", "recorded_at_ms", "pricing_version", "metadata"}
	usageRecordedAt := map[string]string{} // event id -> recorded_at_ms of its usage entries
	kindsChecked := 0
	for _, c := range customers {
		for _, en := range ledgers[c] {
			rows := byEntry[en.ID]
			if len(rows) != 1 {
				t.Errorf("entry %s (%s %s %s): %d rows in ClickHouse, want 1", en.ID, en.Type, en.Account, en.Amount, len(rows))
				continue
			}
			r := rows[0]
			occ, err1 := time.Parse(time.RFC3339Nano, en.OccurredAt)
			rec, err2 := time.Parse(time.RFC3339Nano, en.RecordedAt)
			if err1 != nil || err2 != nil {
				t.Fatalf("entry %s: occurred_at %q, recorded_at %q: %v %v", en.ID, en.OccurredAt, en.RecordedAt, err1, err2)
			}
			_, asset, _ := strings.Cut(en.Account, ":")
			want := []string{en.ID, strconv.FormatUint(en.Seq, 10), c, en.Account, asset, en.Type, en.Amount, en.BalanceAfter,
				optString(en.BucketID), "", optString(en.EventID), optString(en.Reference), chSecond(occ), chMilli(occ),
				chSecond(rec), chMilli(rec), strconv.FormatUint(uint64(en.PricingVersion), 10), string(en.Metadata)}
			for i := range cols {
				var ok bool
				switch cols[i] {
				case "amount", "balance_after":
					ok = decEqual(r[i], want[i])
				case "bucket_kind":
					k, known := bucketKinds[c+"/"+optString(en.BucketID)]
					switch {
					case en.BucketID == nil:
						ok = r[i] == ""
					case known:
						want[i], ok = k, r[i] == k
						kindsChecked++
					default:
						want[i], ok = "(unknown)", true
					}
				case "metadata":
					ok = jsonEqual(r[i], want[i])
				default:
					ok = r[i] == want[i]
				}
				if !ok {
					t.Errorf("entry %s (%s %s %s): ClickHouse %s = %q, want %q", en.ID, en.Type, en.Account, en.Amount, cols[i], r[i], want[i])
				}
			}
			if en.Type == "usage" && en.EventID != nil {
				if en.PricingVersion != pv.Version {
					t.Errorf("entry %s: pricing_version %d, want %d", en.ID, en.PricingVersion, pv.Version)
				}
				usageRecordedAt[*en.EventID] = chMilli(rec)
			}
		}
	}
	if len(lrows) != nLedger {
		t.Errorf("ClickHouse has %d ledger rows, the API %d entries", len(lrows), nLedger)
	}
	if kindsChecked < 8 {
		t.Errorf("bucket_kind checked on %d entries only", kindsChecked)
	}

	// Usage rows: one per charged account, one for a recorded event.
	urows := mustRows(t, conn, `SELECT event_id, customer_id, event_type, subject, toString(occurred_at), toString(occurred_at_ms),
		toString(recorded_at), toString(recorded_at_ms), status, toString(charge), account, asset, toString(pricing_version), data
		FROM `+db+`.usage_events`)
	type ukey struct{ event, account string }
	byUsage := map[ukey][][]string{}
	for _, r := range urows {
		byUsage[ukey{r[0], r[10]}] = append(byUsage[ukey{r[0], r[10]}], r)
	}
	ucols := []string{"event_id", "customer_id", "event_type", "subject", "occurred_at", "occurred_at_ms", "recorded_at",
		"recorded_at_ms", "status", "charge", "account", "asset", "pricing_version", "data"}
	wantUsage := 0
	for id, s := range results {
		e := s.ev
		type charge struct{ account, amount string }
		var want []charge
		switch s.res.Status {
		case "charged":
			for _, ch := range s.res.Charges {
				want = append(want, charge{ch.Account, ch.Amount})
			}
		case "recorded":
			want = []charge{{"", "0"}}
		default:
			for k, rows := range byUsage {
				if k.event == id {
					t.Errorf("event %s was %s, but ClickHouse has %d usage rows of it (account %q)", id, s.res.Status, len(rows), k.account)
				}
			}
			continue
		}
		for _, ch := range want {
			wantUsage++
			rows := byUsage[ukey{id, ch.account}]
			if len(rows) != 1 {
				t.Errorf("event %s account %q: %d usage rows in ClickHouse, want 1", id, ch.account, len(rows))
				continue
			}
			r := rows[0]
			_, asset, _ := strings.Cut(ch.account, ":")
			occ := e.OccurredAt
			wantRow := []string{id, e.Customer, e.Type, e.Subject, chSecond(occ), chMilli(occ), "", "", s.res.Status, ch.amount,
				ch.account, asset, strconv.FormatUint(uint64(s.res.PricingVersion), 10), e.Data}
			if s.res.PricingVersion != pv.Version {
				t.Errorf("event %s: pricing_version %d in the answer, want %d", id, s.res.PricingVersion, pv.Version)
			}
			for i := range ucols {
				var ok bool
				switch ucols[i] {
				case "charge":
					ok = decEqual(r[i], wantRow[i])
				case "data":
					ok = jsonEqual(r[i], wantRow[i])
				case "recorded_at":
					ms, err := strconv.ParseInt(r[i+1], 10, 64)
					wantRow[i] = "recorded_at_ms truncated to the second"
					ok = err == nil && r[i] == chSecond(time.UnixMilli(ms))
				case "recorded_at_ms":
					if v, ok2 := usageRecordedAt[id]; ok2 {
						wantRow[i], ok = v+" (its ledger entries')", r[i] == v
					} else {
						ms, err := strconv.ParseInt(r[i], 10, 64)
						wantRow[i] = fmt.Sprintf("within %d..%d (the request)", s.start.UnixMilli(), s.end.UnixMilli())
						ok = err == nil && ms >= s.start.UnixMilli() && ms <= s.end.UnixMilli()
					}
				default:
					ok = r[i] == wantRow[i]
				}
				if !ok {
					t.Errorf("usage row %s %q: ClickHouse %s = %q, want %q", id, ch.account, ucols[i], r[i], wantRow[i])
				}
			}
		}
	}
	if len(urows) != wantUsage {
		t.Errorf("ClickHouse has %d usage rows, want %d", len(urows), wantUsage)
	}

	// Per customer and account: sum(amount) in ClickHouse == available.
	sums := map[string]string{}
	for _, r := range mustRows(t, conn, "SELECT customer_id, account, toString(sum(amount)) FROM "+db+".ledger_entries GROUP BY customer_id, account") {
		sums[r[0]+" "+r[1]] = r[2]
	}
	checked := 0
	for _, c := range customers {
		for _, a := range m.wallet(c).Accounts {
			got, ok := sums[c+" "+a.ID]
			if !ok {
				got = "0"
			}
			delete(sums, c+" "+a.ID)
			checked++
			if !decEqual(got, a.Available) {
				t.Errorf("customer %s account %s: sum(amount) in ClickHouse %s, available %s", c, a.ID, got, a.Available)
			}
		}
	}
	for k, v := range sums {
		t.Errorf("ClickHouse has entries of %s (sum %s), which no wallet shows", k, v)
	}
	if final := mustRows(t, conn, "SELECT toString(count()) FROM "+db+".ledger_entries FINAL"); final[0][0] != strconv.Itoa(len(lrows)) {
		t.Errorf("ledger_entries: count() FINAL %s, count() %d", final[0][0], len(lrows))
	}
	if final := mustRows(t, conn, "SELECT toString(count()) FROM "+db+".usage_events FINAL"); final[0][0] != strconv.Itoa(len(urows)) {
		t.Errorf("usage_events: count() FINAL %s, count() %d", final[0][0], len(urows))
	}
	t.Logf("checked %d ledger entries, %d usage rows, %d account sums; runtime %v",
		nLedger, wantUsage, checked, time.Since(testStart).Round(time.Millisecond))
	m.stop()
}

// chFault is one fault of the fault test.
type chFault int

const (
	faultKillMeterd         chFault = iota // kill -9 meterd under load
	faultKillClickHouse                    // kill -9 ClickHouse under load, restart it
	faultStopClickHouse                    // SIGTERM ClickHouse under load, restart it
	faultKillBothClickHouse                // kill -9 ClickHouse, then kill -9 meterd while it is down
)

func (f chFault) String() string {
	return [...]string{"kill meterd", "kill clickhouse", "stop clickhouse", "kill clickhouse, then meterd"}[f]
}

// chWorkerOut is what one load worker did.
type chWorkerOut struct {
	attempted []*crashEvent
	died      error // the request error that ended it, nil when stopped
}

// chLoad is the load of one meterd process: workers sending event batches
// until stopped or until meterd stops answering.
type chLoad struct {
	stop atomic.Bool
	wg   sync.WaitGroup
	outs []chWorkerOut
}

// chCounters counts acknowledgements across the test.
type chCounters struct {
	acked     atomic.Int64 // events with a result in a 200 answer
	ackedDown atomic.Int64 // of which sent and answered while ClickHouse was down
	down      atomic.Int64 // != 0: ClickHouse is down (an epoch number)
}

func (m *chMeterd) startLoad(run int, seed uint64, cnt *chCounters, errs *errLimiter) *chLoad {
	l := &chLoad{outs: make([]chWorkerOut, chFaultWorkers)}
	client, url := m.client, m.url("/v1/events")
	for w := range chFaultWorkers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.outs[w] = chLoadWorker(client, url, run, w, seed, &l.stop, cnt, errs)
		}()
	}
	return l
}

func (l *chLoad) finish() []chWorkerOut {
	l.stop.Store(true)
	l.wg.Wait()
	return l.outs
}

// chLoadWorker is crash_test.go's loadWorker, counting acknowledgements as
// they come and those answered while ClickHouse was down.
func chLoadWorker(c *http.Client, url string, run, w int, seed uint64, stop *atomic.Bool, cnt *chCounters, errs *errLimiter) chWorkerOut {
	var out chWorkerOut
	rng := mrand.New(mrand.NewPCG(seed, uint64(run)<<8|uint64(w)))
	for b := 0; !stop.Load(); b++ {
		n := 1 + rng.IntN(crashBatchMax)
		evs := make([]*crashEvent, n)
		for i := range evs {
			evs[i] = newCrashEvent(rng, fmt.Sprintf("r%d-w%d-b%d-e%d", run, w, b, i))
		}
		out.attempted = append(out.attempted, evs...)
		epoch := cnt.down.Load()
		results, status, body, err := postEvents(c, url, evs)
		if err != nil && status == 200 {
			errs.Errorf("worker %d: batch %d: a 200 answer that does not fit the batch: %v: %s", w, b, err, body)
			return out
		}
		if err != nil {
			out.died = err
			return out
		}
		switch {
		case status == 429 || status == 503:
			time.Sleep(5 * time.Millisecond)
			continue
		case status != 200:
			errs.Errorf("worker %d: batch %d: status %d: %s", w, b, status, body)
			out.died = fmt.Errorf("status %d", status)
			return out
		}
		acknowledge(errs, evs, results)
		cnt.acked.Add(int64(n))
		if epoch != 0 && cnt.down.Load() == epoch {
			cnt.ackedDown.Add(int64(n))
		}
		time.Sleep(chFaultLoadPause)
	}
	return out
}

func TestClickHouseSinkExactlyOnceUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meterd, starts a ClickHouse server and kills both: skipped with -short")
	}
	testStart := time.Now()
	srv := chtest.StartInDir(t, t.TempDir())
	t.Logf("ClickHouse %s at %s", srv.Version, srv.Addr)
	db := chDatabaseName("faults")
	bin := buildMeterd(t)
	m := &chMeterd{crashHarness: &crashHarness{t: t, bin: bin, dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--clickhouse-addr", srv.Addr, "--clickhouse-database", db,
			"--sink-batch-rows", chFaultBatchRows, "--sink-batch-age", chFaultBatchAge}}}
	t.Cleanup(m.cleanup)
	errs := &errLimiter{t: t}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 1))
	sleepRand := func(minMs, maxMs int) { time.Sleep(time.Duration(minMs+rng.IntN(maxMs-minMs+1)) * time.Millisecond) }

	m.start()
	m.mustDo("PUT", "/v1/pricing", []byte(crashPricing), 200)
	customers := make([]string, chFaultCustomers)
	for i := range customers {
		c := "c" + strconv.Itoa(i)
		customers[i] = c
		m.mustDo("PUT", "/v1/customers/"+c, []byte(`{"insufficient_funds":"reject"}`), 200, 201)
		for _, s := range crashSeeds(i) {
			if s.kind == "topup" {
				m.mustDo("POST", "/v1/customers/"+c+"/topups",
					[]byte(fmt.Sprintf(`{"id":%q,"asset":%q,"amount":%q}`, s.id, s.asset, s.amount)), 201)
			} else {
				m.mustDo("POST", "/v1/customers/"+c+"/adjustments",
					[]byte(fmt.Sprintf(`{"transaction_id":%q,"asset":%q,"amount":%q,"kind":"promotional","reason":"gift"}`, s.id, s.asset, s.amount)), 201)
			}
		}
	}

	var faults []chFault
	for f, n := range map[chFault]int{faultKillMeterd: chFaultMeterdKills, faultKillClickHouse: chFaultCHKills,
		faultStopClickHouse: chFaultCHStops, faultKillBothClickHouse: chFaultBothKills} {
		for range n {
			faults = append(faults, f)
		}
	}
	slices.Sort(faults) // map order is random; the shuffle below is seeded
	rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })

	var cnt chCounters
	var all []*crashEvent
	run := 0
	collect := func(outs []chWorkerOut, meterdKilled bool) {
		for w, o := range outs {
			all = append(all, o.attempted...)
			if o.died != nil && !meterdKilled {
				errs.Errorf("run %d worker %d: a request failed while meterd was up (only ClickHouse was down): %v", run, w, o.died)
			}
		}
	}
	var meterdKills, meterdKillsBehind, meterdKillsCHDown, chKills, chStops, epoch int
	// What meterd logged: batches found (partly) in ClickHouse already (an
	// INSERT landed but its process died or its answer was lost before the
	// cursor moved) and failed sink attempts.
	var logPresent, logFailed int
	harvest := func() {
		l := m.proc.log
		l.mu.Lock()
		logPresent += bytes.Count(l.buf.Bytes(), []byte("batch already (partly) present"))
		logFailed += bytes.Count(l.buf.Bytes(), []byte("sink failed; retrying"))
		l.mu.Unlock()
	}
	restartMeterd := func() {
		harvest()
		m.start()
	}
	killMeterd := func() {
		if s, _, err := m.readyz(); err == nil && s.Shipped < s.Watermark {
			meterdKillsBehind++
		}
		m.kill()
		meterdKills++
	}
	loadStart := time.Now()
	for i, f := range faults {
		load := m.startLoad(run, seed, &cnt, errs)
		switch f {
		case faultKillMeterd:
			sleepRand(200, 1200)
			killMeterd()
			collect(load.finish(), true)
			restartMeterd()
		case faultKillClickHouse, faultStopClickHouse, faultKillBothClickHouse:
			sleepRand(100, 600)
			var err error
			if f == faultStopClickHouse {
				err = srv.Stop()
				chStops++
			} else {
				err = srv.Kill()
				chKills++
			}
			if err != nil {
				t.Fatalf("fault %d (%v): %v", i, f, err)
			}
			epoch++
			ackedBefore := cnt.ackedDown.Load()
			cnt.down.Store(int64(epoch))
			sleepRand(400, 1200)
			if f == faultKillBothClickHouse {
				killMeterd()
				meterdKillsCHDown++
				collect(load.finish(), true)
				run++
				restartMeterd() // ClickHouse is down: meterd must start and take events anyway
				load = m.startLoad(run, seed, &cnt, errs)
				sleepRand(300, 800)
			}
			cnt.down.Store(0)
			if cnt.ackedDown.Load() == ackedBefore {
				errs.Errorf("fault %d (%v): no event was acknowledged while ClickHouse was down: meterd must keep taking events without its sink", i, f)
			}
			srv.Restart(t) // under load
			sleepRand(200, 800)
			collect(load.finish(), false)
		}
		run++
		if errs.count() > 0 {
			t.FailNow()
		}
	}
	loadTime := time.Since(loadStart)

	var nAck, nCharged, nRecorded, nRejected int
	for _, e := range all {
		switch e.ack {
		case "charged":
			nCharged++
		case "recorded":
			nRecorded++
		case "rejected":
			nRejected++
		}
		if e.ack != "" {
			nAck++
		}
	}
	var order []string
	for _, f := range faults {
		order = append(order, f.String())
	}
	t.Logf("faults in order: %s", strings.Join(order, "; "))
	t.Logf("%v of load: %d meterd kill -9s (%d with the sink behind its watermark, %d while ClickHouse was down), %d ClickHouse kill -9s, %d ClickHouse stops",
		loadTime.Round(time.Millisecond), meterdKills, meterdKillsBehind, meterdKillsCHDown, chKills, chStops)
	t.Logf("%d events attempted, %d acknowledged (%d charged, %d recorded, %d rejected), %d acknowledged while ClickHouse was down",
		len(all), nAck, nCharged, nRecorded, nRejected, cnt.ackedDown.Load())
	if cnt.ackedDown.Load() == 0 {
		t.Errorf("no event was acknowledged while ClickHouse was down: meterd must keep taking events without its sink")
	}
	if nCharged == 0 || nRecorded == 0 {
		t.Errorf("the load should have had charged and recorded events")
	}

	resendStart := time.Now()
	// Settle every event: resend all of them; acknowledged ones must be
	// duplicates with their charges, the others settle one way or the other.
	type final struct {
		applied bool
		charges []crashCharge
	}
	finals := make([]final, len(all))
	var wg sync.WaitGroup
	chunks := make(chan int)
	for range chFaultResendPar {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := range chunks {
				part := all[from:min(len(all), from+crashResendBatch)]
				results, status, body, err := postEvents(m.client, m.url("/v1/events"), part)
				if err != nil || status != 200 {
					errs.Errorf("resending %d events: status %d, %v: %s", len(part), status, err, body)
					continue
				}
				for i, r := range results {
					e := part[i]
					switch {
					case e.ack == "charged" || e.ack == "recorded":
						if r.Status != "duplicate" || chargesKey(r.Charges) != chargesKey(e.ackCharges) {
							errs.Errorf("acknowledged event %s (%s, charges %s) resent: status %s %s, charges %s",
								e.id, e.ack, chargesKey(e.ackCharges), r.Status, r.code(), chargesKey(r.Charges))
						}
						finals[from+i] = final{true, e.ackCharges}
					case r.Status == "duplicate" || r.Status == "charged" || r.Status == "recorded":
						finals[from+i] = final{true, r.Charges}
					case r.Status == "rejected" && r.code() == "insufficient_funds":
					default:
						errs.Errorf("event %s (ack %q) resent: status %s %s", e.id, e.ack, r.Status, r.code())
					}
				}
			}
		}()
	}
	for from := 0; from < len(all); from += crashResendBatch {
		chunks <- from
	}
	close(chunks)
	wg.Wait()
	if errs.count() > 0 {
		t.FailNow()
	}
	type ukey struct{ event, account string }
	wantUsage := map[ukey]string{} // -> charge
	for i, e := range all {
		f := finals[i]
		if !f.applied {
			continue
		}
		if len(f.charges) == 0 {
			wantUsage[ukey{e.id, ""}] = "0"
		}
		for _, ch := range f.charges {
			wantUsage[ukey{e.id, ch.Account}] = ch.Amount
		}
	}

	resendTime := time.Since(resendStart)
	// Restart both cleanly, then wait until the sink has caught up.
	m.stop()
	srv.Restart(t)
	restartMeterd()
	caughtUp := m.waitCaughtUp(chCatchUpTimeout)
	conn := srv.Conn(t)
	checkStart := time.Now()

	// Promptly, before ReplacingMergeTree merges hide duplicates: without FINAL.
	one := func(q string) []string {
		t.Helper()
		rows := mustRows(t, conn, q)
		if len(rows) != 1 {
			t.Fatalf("%s: %d rows", q, len(rows))
		}
		return rows[0]
	}
	ledgerCount := one("SELECT toString(count()), toString(uniqExact(entry_id)) FROM " + db + ".ledger_entries")
	usageCount := one("SELECT toString(count()), toString(uniqExact(event_id, account)) FROM " + db + ".usage_events")
	ledgerDups := mustRows(t, conn, fmt.Sprintf("SELECT entry_id, toString(count()) AS c FROM %s.ledger_entries GROUP BY entry_id HAVING count() > 1 ORDER BY entry_id LIMIT %d", db, chDuplicatesShown))
	usageDups := mustRows(t, conn, fmt.Sprintf("SELECT event_id, account, toString(count()) AS c FROM %s.usage_events GROUP BY event_id, account HAVING count() > 1 ORDER BY event_id LIMIT %d", db, chDuplicatesShown))
	if ledgerCount[0] != ledgerCount[1] || len(ledgerDups) > 0 {
		t.Errorf("ledger_entries: count() %s, uniqExact(entry_id) %s; duplicated (entry_id, count): %v", ledgerCount[0], ledgerCount[1], ledgerDups)
	}
	if usageCount[0] != usageCount[1] || len(usageDups) > 0 {
		t.Errorf("usage_events: count() %s, uniqExact(event_id, account) %s; duplicated (event_id, account, count): %v", usageCount[0], usageCount[1], usageDups)
	}
	// The analyst views count every row each INSERT delivered, and merges of
	// the base tables do not take that back: more there than distinct rows
	// in the base table means a row was inserted twice at some point (and
	// perhaps collapsed by a merge since). Fewer is the documented gap of a
	// ClickHouse crash between the base part and the views' parts.
	viewUsage := one("SELECT toString(sum(events)) FROM " + db + ".usage_daily")
	viewEntries := one("SELECT toString(sum(entries)) FROM " + db + ".bucket_consumption_daily")
	viewFlows := one("SELECT toString(sum(entries)) FROM " + db + ".credit_flows_daily")
	baseEntries := one("SELECT toString(uniqExact(entry_id)) FROM " + db + ".ledger_entries WHERE type = 'usage'")
	cmpCount := func(view, base string) int {
		v, _ := strconv.ParseInt(view, 10, 64)
		b, _ := strconv.ParseInt(base, 10, 64)
		return int(v - b)
	}
	t.Logf("ClickHouse: ledger_entries count %s uniq %s; usage_events count %s uniq %s; views saw %s usage rows, %s usage entries (of %s) and %s ledger entries",
		ledgerCount[0], ledgerCount[1], usageCount[0], usageCount[1], viewUsage[0], viewEntries[0], baseEntries[0], viewFlows[0])
	if d := cmpCount(viewUsage[0], usageCount[1]); d > 0 {
		t.Errorf("usage_daily counted %s inserted usage rows, usage_events holds %s distinct: %d rows were inserted twice", viewUsage[0], usageCount[1], d)
	}
	if d := cmpCount(viewEntries[0], baseEntries[0]); d > 0 {
		t.Errorf("bucket_consumption_daily counted %s inserted usage entries, ledger_entries holds %s distinct: %d entries were inserted twice", viewEntries[0], baseEntries[0], d)
	}
	if d := cmpCount(viewFlows[0], ledgerCount[1]); d > 0 {
		t.Errorf("credit_flows_daily counted %s inserted ledger entries, ledger_entries holds %s distinct: %d entries were inserted twice", viewFlows[0], ledgerCount[1], d)
	}
	// Every view equals the aggregate of its base table, although kills of
	// ClickHouse may have cut an INSERT between the base part and the
	// views' parts: the sink repairs the views of every batch it finds
	// already there (sink/repair.go).
	for _, v := range []struct{ name, view, base string }{
		{"usage_daily", "SELECT toString(sum(events)), toString(sum(charge)) FROM DB.usage_daily",
			"SELECT toString(count()), toString(sum(charge)) FROM DB.usage_events FINAL"},
		{"usage_hourly", "SELECT toString(sum(events)), toString(sum(charge)) FROM DB.usage_hourly",
			"SELECT toString(count()), toString(sum(charge)) FROM DB.usage_events FINAL"},
		{"bucket_consumption_daily", "SELECT toString(sum(entries)), toString(sum(consumed)) FROM DB.bucket_consumption_daily",
			"SELECT toString(count()), toString(sum(-amount)) FROM DB.ledger_entries FINAL WHERE type = 'usage'"},
		{"credit_flows_daily", "SELECT toString(sum(entries)), toString(sum(net)), toString(sum(used)), toString(sum(topped_up) + sum(adjusted)) FROM DB.credit_flows_daily",
			"SELECT toString(count()), toString(sum(amount)), toString(-sumIf(amount, type = 'usage')), toString(sumIf(amount, type IN ('topup', 'adjustment'))) FROM DB.ledger_entries FINAL"},
		{"usage_dimension_hourly", "SELECT toString(sum(events)), toString(sum(charge)) FROM DB.usage_dimension_hourly",
			"SELECT toString(count()), toString(sum(charge)) FROM DB.usage_events FINAL"},
		{"usage_dimension_daily", "SELECT toString(sum(events)), toString(sum(charge)) FROM DB.usage_dimension_daily",
			"SELECT toString(count()), toString(sum(charge)) FROM DB.usage_events FINAL"},
	} {
		view, base := one(strings.ReplaceAll(v.view, "DB", db)), one(strings.ReplaceAll(v.base, "DB", db))
		if !slices.Equal(view, base) {
			t.Errorf("%s totals %v, its base table's %v", v.name, view, base)
		}
	}
	// Usage per model: every charged message_completed row carries its
	// event's model, and the daily view sums the same per model.
	if bad := one("SELECT toString(count()) FROM " + db + ".usage_events FINAL WHERE event_type = 'message_completed' AND status = 'charged' AND dimension != visitParamExtractString(data, 'model')"); bad[0] != "0" {
		t.Errorf("%s charged message_completed rows have a dimension other than their model", bad[0])
	}
	perModel := "SELECT dimension, toString(sum(events)), toString(sum(charge)) FROM DB.usage_dimension_daily GROUP BY dimension ORDER BY dimension"
	perModelBase := "SELECT dimension, toString(count()), toString(sum(charge)) FROM DB.usage_events FINAL GROUP BY dimension ORDER BY dimension"
	view, base := mustRows(t, conn, strings.ReplaceAll(perModel, "DB", db)), mustRows(t, conn, strings.ReplaceAll(perModelBase, "DB", db))
	t.Logf("usage_dimension_daily per dimension (value, events, charge): %v", view)
	if !slices.EqualFunc(view, base, slices.Equal) || len(base) < 3 {
		t.Errorf("usage_dimension_daily per model %v, its base table's %v (want 3 or more)", view, base)
	}

	// Every ledger entry of every customer, nothing missing, nothing extra.
	chLedger := map[string]string{} // entry_id -> amount
	for _, r := range mustRows(t, conn, "SELECT entry_id, toString(amount) FROM "+db+".ledger_entries") {
		chLedger[r[0]] = r[1]
	}
	sums := map[string]string{}
	for _, r := range mustRows(t, conn, "SELECT customer_id, account, toString(sum(amount)) FROM "+db+".ledger_entries GROUP BY customer_id, account") {
		sums[r[0]+" "+r[1]] = r[2]
	}
	chUsage := map[ukey]string{}
	for _, r := range mustRows(t, conn, "SELECT event_id, account, toString(charge) FROM "+db+".usage_events") {
		chUsage[ukey{r[0], r[1]}] = r[2]
	}
	apiEntries := 0
	var missing, wrong []string
	seen := map[string]bool{}
	for _, c := range customers {
		for _, en := range m.ledger(c) {
			apiEntries++
			seen[en.ID] = true
			got, ok := chLedger[en.ID]
			switch {
			case !ok:
				missing = append(missing, en.ID)
			case !decEqual(got, en.Amount):
				wrong = append(wrong, fmt.Sprintf("%s: %s in ClickHouse, %s in the API", en.ID, got, en.Amount))
			}
		}
		for _, a := range m.wallet(c).Accounts {
			got, ok := sums[c+" "+a.ID]
			if !ok {
				got = "0"
			}
			delete(sums, c+" "+a.ID)
			if !decEqual(got, a.Available) {
				errs.Errorf("customer %s account %s: sum(amount) in ClickHouse %s, available %s", c, a.ID, got, a.Available)
			}
		}
	}
	var extra []string
	for id := range chLedger {
		if !seen[id] {
			extra = append(extra, id)
		}
	}
	for k, v := range sums {
		errs.Errorf("ClickHouse has entries of %s (sum %s), which no wallet shows", k, v)
	}
	report := func(what string, ids []string) {
		if len(ids) > 0 {
			slices.Sort(ids)
			errs.Errorf("%d ledger entries %s; the first: %v", len(ids), what, ids[:min(len(ids), chDuplicatesShown)])
		}
	}
	report("of the API are missing in ClickHouse", missing)
	report("in ClickHouse are not in the API's ledgers", extra)
	report("differ in amount", wrong)

	var umissing, uextra, uwrong []string
	for k, want := range wantUsage {
		got, ok := chUsage[k]
		switch {
		case !ok:
			umissing = append(umissing, k.event+" "+k.account)
		case !decEqual(got, want):
			uwrong = append(uwrong, fmt.Sprintf("%s %s: %s in ClickHouse, %s charged", k.event, k.account, got, want))
		}
	}
	for k := range chUsage {
		if _, ok := wantUsage[k]; !ok {
			uextra = append(uextra, k.event+" "+k.account)
		}
	}
	for _, x := range []struct {
		what string
		ids  []string
	}{{"applied events' usage rows missing in ClickHouse", umissing},
		{"usage rows in ClickHouse of no applied event", uextra}, {"usage rows with a wrong charge", uwrong}} {
		if len(x.ids) > 0 {
			slices.Sort(x.ids)
			errs.Errorf("%d %s; the first: %v", len(x.ids), x.what, x.ids[:min(len(x.ids), chDuplicatesShown)])
		}
	}
	harvest()
	t.Logf("meterd logged %d batches found (partly) in ClickHouse already and %d failed sink attempts", logPresent, logFailed)
	t.Logf("checked %d ledger entries and %d usage rows; runtime %v (load %v, resend %v, caught up %v after the final start, checks %v)",
		apiEntries, len(wantUsage), time.Since(testStart).Round(time.Millisecond), loadTime.Round(time.Millisecond),
		resendTime.Round(time.Millisecond), caughtUp.Round(time.Millisecond), time.Since(checkStart).Round(time.Millisecond))
	if errs.count() > 0 {
		t.Logf("meterd's output (tail):\n%s", m.proc.log.tail())
	}
	m.stop()
}

// TestClickHouseTLSAndPassword runs meterd against a ClickHouse server that
// takes TLS and a user with a password, the password in a file: the rows of
// what the API took land. Then with a wrong password: meterd stops at
// start, within seconds, with a message that names the server, and the
// password shows nowhere in its output.
func TestClickHouseTLSAndPassword(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meterd and starts a ClickHouse server: skipped with -short")
	}
	const password = "s3cret-Pa55phrase"
	srv := chtest.StartWith(t, t.TempDir(), chtest.Options{TLS: true, User: "meterd", Password: password})
	db := chDatabaseName("tls")
	dir := t.TempDir()
	pwFile, wrongFile := writeFile(t, password+"\n"), writeFile(t, "not-"+password+"\n")
	args := func(pw string) []string {
		return []string{"--clickhouse-addr", srv.SecureAddr, "--clickhouse-tls-ca", srv.CAFile, "--clickhouse-user", "meterd",
			"--clickhouse-password-file", pw, "--clickhouse-database", db}
	}
	bin := buildMeterd(t)
	m := &chMeterd{crashHarness: &crashHarness{t: t, bin: bin, dir: filepath.Join(dir, "data"), args: args(pwFile)}}
	t.Cleanup(m.cleanup)
	m.start()
	m.mustDo("PUT", "/v1/pricing", []byte(chPricing), 200)
	m.mustDo("PUT", "/v1/customers/alice", []byte(`{}`), 201)
	m.mustDo("POST", "/v1/customers/alice/topups", []byte(`{"id":"t-1","asset":"CREDITS","amount":"1000"}`), 201)
	var events []string
	for i := range 20 {
		events = append(events, fmt.Sprintf(`{"id":"img-%d","customer_id":"alice","event_type":"image_generated"}`, i))
	}
	m.mustDo("POST", "/v1/events", []byte(`{"events":[`+strings.Join(events, ",")+`]}`), 200)
	m.waitCaughtUp(chCatchUpTimeout)
	if got := srv.Query(t, "SELECT count() FROM "+db+".usage_events"); got != "20" {
		t.Errorf("usage_events over TLS: %s rows, want 20", got)
	}
	if got := srv.Query(t, "SELECT count(), toInt64(sum(amount)) FROM "+db+".ledger_entries"); got != "21\t200" {
		t.Errorf("ledger_entries over TLS: count, toInt64(sum(amount)) = %q, want 21 entries summing to 200", got)
	}
	m.stop()
	if out := m.proc.log.tail(); strings.Contains(out, password) {
		t.Errorf("the password is in meterd's output:\n%s", out)
	}

	m.args = args(wrongFile)
	p := m.launch()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("a wrong password: meterd still running after 15s; output:\n%s", p.log.tail())
	}
	out := p.log.tail()
	t.Logf("a wrong password: %v: %s", p.err, out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
	if p.err == nil || !strings.Contains(out, srv.SecureAddr) || !strings.Contains(out, "refused the login") ||
		strings.Contains(out, "meterd ready") {
		t.Errorf("a wrong password: exit %v; want a failed start naming %s; output:\n%s", p.err, srv.SecureAddr, out)
	}
	if strings.Contains(out, password) {
		t.Errorf("a password is in meterd's output:\n%s", out)
	}
}
