package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var testWebhookSecret = []byte("whsec_0123456789abcdef0123456789abcdef")

// testNote returns a notification as the engine makes it (balance.newNote).
func testNote(customer string, seq, outbox uint64, typ string) NoteRow {
	at := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Minute)
	id := customer + "/n" + strconv.FormatUint(seq, 10)
	data := `{"threshold":"1000","available":"` + strconv.FormatUint(2000-seq, 10) + `"}`
	if typ == "auto_reload.requested" {
		data = `{"request_id":"rr_` + strconv.FormatUint(seq, 10) + `","amount":"10000","charge":{"amount":"11.70","currency":"USD"}}`
	}
	body := `{"id":"` + id + `","type":"` + typ + `","customer_id":"` + customer +
		`","account":"default:CREDITS","created_at":"` + at.Format("2006-01-02T15:04:05.000Z07:00") + `","data":` + data + `}`
	return NoteRow{OutboxSeq: outbox, ID: id, CustomerID: customer, Seq: seq, Type: typ, At: at.UnixNano(),
		Body: []byte(body)}
}

// testNoteBatch returns perCustomer notes of each customer, interleaved as
// the outbox holds them: one outbox record per round of customers.
func testNoteBatch(customers []string, first, perCustomer uint64) *Batch {
	types := []string{"balance.low", "auto_reload.requested", "balance.depleted"}
	b := &Batch{From: first, To: first + perCustomer - 1}
	for seq := first; seq < first+perCustomer; seq++ {
		for _, c := range customers {
			b.Notes = append(b.Notes, testNote(c, seq, seq, types[seq%uint64(len(types))]))
		}
	}
	// Rows that are not the webhook's.
	b.Ledger = append(b.Ledger, testEntry(customers[0], first, first))
	b.Usage = append(b.Usage, UsageRow{OutboxSeq: first, EventID: "u1", CustomerID: customers[0]})
	return b
}

// webhookCall is one request the receiver got, and its answer.
type webhookCall struct {
	id, typ, sig, contentType string
	body                      []byte
	status                    int // 0: no answer (connection dropped or timed out)
	sigErr                    error
}

// receiver is a real HTTP endpoint that records every request. answer
// decides what the n-th request (from 1) gets: a status, or 0 to drop the
// connection, or -1 to hang until the client gives up.
type receiver struct {
	srv    *httptest.Server
	answer func(n int, id string) int

	mu    sync.Mutex
	calls []webhookCall
	other []string // requests to any other path
}

func newReceiver(t *testing.T, answer func(n int, id string) int) *receiver {
	t.Helper()
	rc := &receiver{answer: answer}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) url() string { return rc.srv.URL + "/hooks/meterd" }

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/hooks/meterd" || r.Method != http.MethodPost {
		rc.mu.Lock()
		rc.other = append(rc.other, r.Method+" "+r.URL.Path)
		rc.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		return
	}
	body, _ := io.ReadAll(r.Body)
	c := webhookCall{id: r.Header.Get(WebhookHeaderID), typ: r.Header.Get(WebhookHeaderType),
		sig: r.Header.Get(WebhookHeaderSignature), contentType: r.Header.Get("Content-Type"), body: body}
	c.sigErr = VerifyWebhookSignature(testWebhookSecret, c.sig, body, time.Now(), time.Minute)
	rc.mu.Lock()
	n := len(rc.calls) + 1
	rc.calls = append(rc.calls, c)
	rc.mu.Unlock()
	status := http.StatusOK
	if rc.answer != nil {
		status = rc.answer(n, c.id)
	}
	switch {
	case status == 0:
		// Drop the connection without an answer.
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	case status < 0:
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		status = http.StatusInternalServerError // too late to count
	case status >= 300 && status < 400:
		w.Header().Set("Location", "/elsewhere")
	case status == http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1") // more than RetryMax: RetryMax it is
	}
	rc.mu.Lock()
	rc.calls[n-1].status = status
	rc.mu.Unlock()
	w.WriteHeader(status)
	// A large answer: the webhook reads a bounded part of it.
	w.Write([]byte(strings.Repeat("x", 100<<10)))
}

func (rc *receiver) snapshot() ([]webhookCall, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]webhookCall(nil), rc.calls...), append([]string(nil), rc.other...)
}

func newTestWebhook(t *testing.T, cfg WebhookConfig) *Webhook {
	t.Helper()
	if cfg.Secret == nil {
		cfg.Secret = testWebhookSecret
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = 5 * time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 20 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = testLog
	}
	w, err := NewWebhook(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// checkDeliveries checks the receiver's calls against the notes of b it
// should get (want, in batch order): every call correctly signed and
// headed; each id answered 2xx exactly once and never sent after that; the
// successes in batch order (hence in seq order per customer); nothing else
// sent.
func checkDeliveries(t *testing.T, calls []webhookCall, want []NoteRow) {
	t.Helper()
	byID := map[string]*NoteRow{}
	for i := range want {
		byID[want[i].ID] = &want[i]
	}
	delivered := map[string]bool{}
	var order []string
	for i, c := range calls {
		n := byID[c.id]
		if n == nil {
			t.Fatalf("call %d: unexpected id %q", i, c.id)
		}
		if c.sigErr != nil {
			t.Fatalf("call %d (%s): signature: %v", i, c.id, c.sigErr)
		}
		if c.typ != n.Type || c.contentType != "application/json" || string(c.body) != string(n.Body) {
			t.Fatalf("call %d (%s): type %q content type %q body %s", i, c.id, c.typ, c.contentType, c.body)
		}
		if delivered[c.id] {
			t.Fatalf("call %d: %s sent again after it was delivered", i, c.id)
		}
		if c.status >= 200 && c.status < 300 {
			delivered[c.id] = true
			order = append(order, c.id)
		}
	}
	if len(order) != len(want) {
		t.Fatalf("%d delivered, want %d", len(order), len(want))
	}
	for i := range want {
		if order[i] != want[i].ID {
			t.Fatalf("delivery %d is %s, want %s (order %v)", i, order[i], want[i].ID, order)
		}
	}
	lastSeq := map[string]uint64{}
	for _, id := range order {
		n := byID[id]
		if n.Seq <= lastSeq[n.CustomerID] {
			t.Fatalf("customer %s: %s delivered after seq %d", n.CustomerID, id, lastSeq[n.CustomerID])
		}
		lastSeq[n.CustomerID] = n.Seq
	}
}

func TestWebhookSignature(t *testing.T) {
	rc := newReceiver(t, nil)
	w := newTestWebhook(t, WebhookConfig{URL: rc.url()})
	if w.Name() != "webhook" {
		t.Fatalf("name %q", w.Name())
	}
	b := &Batch{From: 7, To: 7, Notes: []NoteRow{testNote("acme", 1, 7, "balance.low")}}
	before := time.Now()
	if err := w.Write(testCtx(t), b); err != nil {
		t.Fatal(err)
	}
	calls, _ := rc.snapshot()
	if len(calls) != 1 {
		t.Fatalf("%d calls", len(calls))
	}
	c := calls[0]
	if c.sigErr != nil || c.id != "acme/n1" || c.typ != "balance.low" || c.contentType != "application/json" ||
		string(c.body) != string(b.Notes[0].Body) {
		t.Fatalf("call %+v", c)
	}
	// The header's shape: t=<unix seconds>,v1=<64 hex digits>.
	ts, v1, ok := strings.Cut(c.sig, ",v1=")
	sec, err := strconv.ParseInt(strings.TrimPrefix(ts, "t="), 10, 64)
	if !ok || err != nil || len(v1) != 64 || sec < before.Unix() || sec > time.Now().Unix() {
		t.Fatalf("signature header %q", c.sig)
	}
	now := time.Unix(sec, 0)
	if err := VerifyWebhookSignature(testWebhookSecret, c.sig, c.body, now, 0); err != nil {
		t.Fatal(err)
	}

	fails := []struct {
		name   string
		secret []byte
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		{"wrong secret", []byte("whsec_another_secret_of_enough_bytes"), c.sig, c.body, now, ErrWebhookSignature},
		{"modified body", testWebhookSecret, c.sig, []byte(strings.Replace(string(c.body), "1000", "9000", 1)), now, ErrWebhookSignature},
		{"one byte more", testWebhookSecret, c.sig, append(append([]byte(nil), c.body...), ' '), now, ErrWebhookSignature},
		{"other timestamp", testWebhookSecret, "t=" + strconv.FormatInt(sec+1, 10) + ",v1=" + v1, c.body, now, ErrWebhookSignature},
		{"replayed late", testWebhookSecret, c.sig, c.body, now.Add(WebhookToleranceDefault + time.Second), ErrWebhookTimestamp},
		{"from the future", testWebhookSecret, c.sig, c.body, now.Add(-WebhookToleranceDefault - time.Second), ErrWebhookTimestamp},
		{"no v1", testWebhookSecret, ts, c.body, now, ErrWebhookHeader},
		{"no t", testWebhookSecret, "v1=" + v1, c.body, now, ErrWebhookHeader},
		{"short v1", testWebhookSecret, ts + ",v1=" + v1[:62], c.body, now, ErrWebhookHeader},
		{"not hex", testWebhookSecret, ts + ",v1=" + strings.Repeat("z", 64), c.body, now, ErrWebhookHeader},
		{"two t", testWebhookSecret, ts + "," + c.sig, c.body, now, ErrWebhookHeader},
		{"empty", testWebhookSecret, "", c.body, now, ErrWebhookHeader},
		{"huge", testWebhookSecret, c.sig + strings.Repeat(",v0=x", 1000), c.body, now, ErrWebhookHeader},
	}
	for _, f := range fails {
		if err := VerifyWebhookSignature(f.secret, f.header, f.body, f.now, 0); !errors.Is(err, f.want) {
			t.Errorf("%s: %v, want %v", f.name, err, f.want)
		}
	}
	// A rotation: several v1, one of them right; unknown schemes ignored.
	other := signWebhook([]byte("whsec_the_old_secret_0123456789"), now, c.body)
	_, oldV1, _ := strings.Cut(other, ",v1=")
	for _, h := range []string{ts + ",v1=" + oldV1 + ",v1=" + v1, ts + ", v0=abc, v1=" + v1} {
		if err := VerifyWebhookSignature(testWebhookSecret, h, c.body, now, 0); err != nil {
			t.Errorf("%q: %v", h, err)
		}
	}
	// The tolerance given is used.
	if err := VerifyWebhookSignature(testWebhookSecret, c.sig, c.body, now.Add(10*time.Second), 5*time.Second); !errors.Is(err, ErrWebhookTimestamp) {
		t.Errorf("tolerance 5s, 10s late: %v", err)
	}
	if err := VerifyWebhookSignature(nil, c.sig, c.body, now, 0); err == nil {
		t.Error("empty secret verified")
	}
}

// TestWebhookRetriesDeliverOnce: a receiver that fails the first five
// attempts, then succeeds, gets every notification delivered exactly once,
// in order. "500": five 500s; "mixed": a 500, a timeout, a dropped
// connection, a redirect (not followed), a 429 with Retry-After.
func TestWebhookRetriesDeliverOnce(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failures []int // the answers to the first five requests (see receiver)
		timeouts float64
	}{
		{"500", []int{500, 500, 500, 500, 500}, 0},
		{"mixed", []int{500, -1, 0, http.StatusFound, http.StatusTooManyRequests}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) { testWebhookRetries(t, tc.failures, tc.timeouts) })
	}
}

func testWebhookRetries(t *testing.T, failures []int, timeouts float64) {
	rc := newReceiver(t, func(n int, id string) int {
		if n <= len(failures) {
			return failures[n-1]
		}
		return http.StatusNoContent
	})
	reg := prometheus.NewRegistry()
	m := NewWebhookMetrics(reg)
	w := newTestWebhook(t, WebhookConfig{URL: rc.url(), Timeout: 300 * time.Millisecond, Metrics: m})
	b := testNoteBatch([]string{"acme", "globex", "initech"}, 1, 4)
	if err := w.Write(testCtx(t), b); err != nil {
		t.Fatal(err)
	}
	calls, other := rc.snapshot()
	if len(other) != 0 {
		t.Fatalf("requests elsewhere: %v", other)
	}
	if len(calls) != len(b.Notes)+5 {
		t.Fatalf("%d calls for %d notes and 5 failures", len(calls), len(b.Notes))
	}
	for _, c := range calls[:5] {
		if c.id != "acme/n1" {
			t.Fatalf("the failures were not retries of the first note: %s", c.id)
		}
	}
	checkDeliveries(t, calls, b.Notes)
	if got := metricValue(t, m.attempts.WithLabelValues("webhook", "delivered")); got != float64(len(b.Notes)) {
		t.Fatalf("delivered metric %v", got)
	}
	if got := metricValue(t, m.attempts.WithLabelValues("webhook", "timeout")); got != timeouts {
		t.Fatalf("timeout metric %v", got)
	}
	if got := metricValue(t, m.retrying.WithLabelValues("webhook")); got != 0 {
		t.Fatalf("retrying metric %v", got)
	}

	// The tailer sends the batch again (its cursor could not be stored):
	// nothing is delivered twice.
	if err := w.Write(testCtx(t), b); err != nil {
		t.Fatal(err)
	}
	if again, _ := rc.snapshot(); len(again) != len(calls) {
		t.Fatalf("the batch sent again made %d more calls", len(again)-len(calls))
	}
	// The next batch: only its notes; what was acknowledged is forgotten.
	next := testNoteBatch([]string{"acme", "globex", "initech"}, 5, 2)
	if err := w.Write(testCtx(t), next); err != nil {
		t.Fatal(err)
	}
	all, _ := rc.snapshot()
	checkDeliveries(t, all, append(append([]NoteRow(nil), b.Notes...), next.Notes...))
	if len(w.delivered) != len(next.Notes) {
		t.Fatalf("%d ids remembered, want the %d of the last batch", len(w.delivered), len(next.Notes))
	}
}

// TestWebhookResendAfterError: Write gives up when its context ends; the
// tailer sends the batch again, cut differently, and what was delivered is
// not delivered again.
func TestWebhookResendAfterError(t *testing.T) {
	var mu sync.Mutex
	down := true
	rc := newReceiver(t, func(n int, id string) int {
		mu.Lock()
		defer mu.Unlock()
		if down && id == "globex/n2" {
			return http.StatusBadGateway
		}
		return http.StatusOK
	})
	w := newTestWebhook(t, WebhookConfig{URL: rc.url()})
	b := testNoteBatch([]string{"acme", "globex", "initech"}, 1, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := w.Write(ctx, b)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "globex/n2") {
		t.Fatalf("Write: %v", err)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	// Cut differently: the first two records only, then the rest.
	first := &Batch{From: 1, To: 2, Notes: b.Notes[:6]}
	rest := &Batch{From: 3, To: 3, Notes: b.Notes[6:]}
	for _, bb := range []*Batch{first, rest} {
		if err := w.Write(testCtx(t), bb); err != nil {
			t.Fatal(err)
		}
	}
	calls, _ := rc.snapshot()
	checkDeliveries(t, calls, b.Notes)
}

// TestWebhookPerCustomerOrder: several customers' notes, a receiver that
// fails often, and a type filter: each customer's notes arrive in seq
// order, the filtered type never.
func TestWebhookPerCustomerOrder(t *testing.T) {
	rc := newReceiver(t, func(n int, id string) int {
		switch n % 4 {
		case 1:
			return http.StatusServiceUnavailable
		case 2:
			if n%8 == 2 {
				return http.StatusBadRequest
			}
		}
		return http.StatusAccepted
	})
	w := newTestWebhook(t, WebhookConfig{URL: rc.url(), Types: []string{"balance.low", "balance.depleted"}})
	customers := []string{"acme", "globex", "initech", "umbrella", "hooli", "c.7:x-y_z"}
	b := testNoteBatch(customers, 1, 6)
	// Interleave differently from one record to the next, as commit groups do.
	for i := 0; i+len(customers) <= len(b.Notes); i += len(customers) {
		r := b.Notes[i : i+len(customers)]
		for j := range r {
			k := (j*7 + i) % len(r)
			r[j], r[k] = r[k], r[j]
		}
	}
	if err := w.Write(testCtx(t), b); err != nil {
		t.Fatal(err)
	}
	var want []NoteRow
	for _, n := range b.Notes {
		if n.Type != "auto_reload.requested" {
			want = append(want, n)
		}
	}
	if len(want) == len(b.Notes) || len(want) == 0 {
		t.Fatalf("the filter has nothing to do: %d of %d", len(want), len(b.Notes))
	}
	calls, _ := rc.snapshot()
	checkDeliveries(t, calls, want)
}

// TestWebhookCancelStopsRetries: with a receiver that always fails, Write
// returns soon after its context is cancelled, and no attempt follows.
func TestWebhookCancelStopsRetries(t *testing.T) {
	rc := newReceiver(t, func(int, string) int { return http.StatusInternalServerError })
	w := newTestWebhook(t, WebhookConfig{URL: rc.url(), RetryMin: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	b := testNoteBatch([]string{"acme", "globex"}, 1, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Write(ctx, b) }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	start := time.Now()
	var err error
	select {
	case err = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Write did not return after cancel")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Write: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Write returned %v after cancel", took)
	}
	calls, _ := rc.snapshot()
	if len(calls) < 3 {
		t.Fatalf("only %d attempts before cancel", len(calls))
	}
	for _, c := range calls {
		if c.id != "acme/n1" {
			t.Fatalf("%s sent before acme/n1 was delivered", c.id)
		}
	}
	time.Sleep(150 * time.Millisecond)
	if later, _ := rc.snapshot(); len(later) != len(calls) {
		t.Fatalf("%d attempts after Write returned", len(later)-len(calls))
	}
	// A context already done: nothing is sent.
	if err := w.Write(ctx, b); !errors.Is(err, context.Canceled) {
		t.Fatalf("Write with a done context: %v", err)
	}
	if later, _ := rc.snapshot(); len(later) != len(calls) {
		t.Fatal("sent with a done context")
	}
}

func TestWebhookConfigAndBadBatches(t *testing.T) {
	for _, cfg := range []WebhookConfig{
		{URL: "ftp://example.com/x", Secret: testWebhookSecret},
		{URL: "example.com/x", Secret: testWebhookSecret},
		{URL: "https:///x", Secret: testWebhookSecret},
		{URL: "https://example.com/x", Secret: []byte("short")},
		{URL: "https://example.com/x"},
		{URL: "https://example.com/x", Secret: testWebhookSecret, RetryMin: time.Minute, RetryMax: time.Second},
		{URL: "https://example.com/x", Secret: testWebhookSecret, Timeout: -1},
		{URL: "https://example.com/x", Secret: testWebhookSecret, Types: []string{""}},
		{URL: "https://example.com/" + strings.Repeat("x", 3000), Secret: testWebhookSecret},
	} {
		if _, err := NewWebhook(cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	w, err := NewWebhook(WebhookConfig{Name: "hooks-a", URL: "HTTPS://user:pw@example.com/x#frag", Secret: testWebhookSecret})
	if err != nil {
		t.Fatal(err)
	}
	if w.Name() != "hooks-a" || w.cfg.Timeout != 10*time.Second || w.cfg.RetryMin != 500*time.Millisecond ||
		w.cfg.RetryMax != time.Minute || strings.Contains(w.url, "frag") {
		t.Fatalf("defaults: %+v %s", w.cfg, w.url)
	}

	rc := newReceiver(t, nil)
	w = newTestWebhook(t, WebhookConfig{URL: rc.url()})
	bad := []func(b *Batch){
		func(b *Batch) { b.Notes[1], b.Notes[3] = b.Notes[3], b.Notes[1] }, // acme/n2 before acme/n1
		func(b *Batch) { b.Notes[2].Body = []byte(`[1]`) },
		func(b *Batch) { b.Notes[2].Body = []byte(`{"a":`) },
		func(b *Batch) { b.Notes[2].Body = make([]byte, webhookBodyBytesMax+1) },
		func(b *Batch) { b.Notes[2].ID = "acme/n1\r\nX-Evil: 1" },
		func(b *Batch) { b.Notes[2].Type = "" },
		func(b *Batch) { b.Notes[2].CustomerID = "" },
	}
	for i, f := range bad {
		b := testNoteBatch([]string{"acme", "globex"}, 1, 3)
		f(b)
		if err := w.Write(testCtx(t), b); err == nil {
			t.Errorf("bad batch %d accepted", i)
		}
	}
	if calls, _ := rc.snapshot(); len(calls) != 0 {
		t.Fatalf("a bad batch was partly sent: %d calls", len(calls))
	}
	// Nothing to send: no call.
	if err := w.Write(testCtx(t), &Batch{From: 1, To: 1, Ledger: []LedgerRow{testEntry("a", 1, 1)}}); err != nil {
		t.Fatal(err)
	}
	if calls, _ := rc.snapshot(); len(calls) != 0 {
		t.Fatal(fmt.Sprint("calls for a batch without notes: ", len(calls)))
	}
}

// metricValue reads a counter's or gauge's value.
func metricValue(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
