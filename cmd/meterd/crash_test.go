package main

// TestCrashDurability is the crash-durability acceptance test: it builds the
// real meterd binary, drives concurrent event batches against it, kill -9s it
// at random moments several times, restarts it on the same data directory,
// and proves that every acknowledged event is in the ledger exactly once and
// that every account's ledger sums to its available balance.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	crashCustomers      = 16 // c0..c15
	crashPoorFrom       = 12 // c12..c15 get little money: some of their events are rejected
	crashWorkers        = 16
	crashKillsMin       = 5
	crashKillsMax       = 7
	crashLoadBudget     = 6 * time.Second // beyond crashKillsMin kills, keep killing while under this much load time
	crashCycleEventsMin = 4000            // a cycle is killed after a random 200-1500 ms or a random
	crashCycleEventsMax = 16000           // number of events attempted in this range, whichever comes first
	crashBatchMax       = 50
	crashResendBatch    = 500
	crashStartTimeout   = 30 * time.Second
	crashStopTimeout    = 30 * time.Second
	crashRequestTimeout = 20 * time.Second
)

// crashPricing is the pricing document of the test: CREDITS per image, USD
// per million tokens at prices that leave sub-unit remainders (carried per
// account), and no price for page_viewed (recorded).
const crashPricing = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],
 "prices":[
  {"event_type":"message_completed","account":"default:USD","dimensions":["model"],
   "components":[
     {"field":"input_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"2.00","*":"0.37"}},
     {"field":"output_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"8.00","*":"1.13"}}]},
  {"event_type":"image_generated","account":"default:CREDITS","unit_price":"3"}]}`

// crashSeed is one seeded grant: a top-up or a (promotional) adjustment.
type crashSeed struct {
	kind   string // "topup" or "adjustment" (the ledger entry type)
	id     string
	asset  string
	amount string
	promo  bool
}

// crashSeeds returns the grants of customer i. Rich customers get a small
// promotional bucket (consumed first) and a large recharge bucket, so that
// some charges span two buckets; poor ones get two small top-ups.
func crashSeeds(i int) []crashSeed {
	if i >= crashPoorFrom {
		return []crashSeed{
			{kind: "topup", id: "seed-credits-1", asset: "CREDITS", amount: "31"},
			{kind: "topup", id: "seed-credits-2", asset: "CREDITS", amount: "29"},
			{kind: "topup", id: "seed-usd-1", asset: "USD", amount: "1.5"},
			{kind: "topup", id: "seed-usd-2", asset: "USD", amount: "1.234567"},
		}
	}
	return []crashSeed{
		{kind: "adjustment", id: "seed-promo-credits", asset: "CREDITS", amount: "100", promo: true},
		{kind: "adjustment", id: "seed-promo-usd", asset: "USD", amount: "2.5", promo: true},
		{kind: "topup", id: "seed-credits", asset: "CREDITS", amount: "100000000"},
		{kind: "topup", id: "seed-usd", asset: "USD", amount: "1000000"},
	}
}

// crashEvent is one event ever attempted, with what is known about it.
type crashEvent struct {
	id       string
	customer string
	raw      []byte // the exact JSON sent, resent byte for byte

	// The acknowledgement received during the load (ack == "" when none:
	// the request failed or the process died).
	ack        string // charged | recorded | rejected
	ackCode    string
	ackCharges []crashCharge

	// What the final resends established.
	final        string // applied | rejected
	finalCharges []crashCharge
}

type crashPart struct {
	BucketID *string `json:"bucket_id"`
	Amount   string  `json:"amount"`
	Debt     bool    `json:"debt"`
}

type crashCharge struct {
	Account string      `json:"account"`
	Amount  string      `json:"amount"`
	Buckets []crashPart `json:"buckets"`
}

type crashResult struct {
	ID      string        `json:"id"`
	Status  string        `json:"status"`
	Charges []crashCharge `json:"charges"`
	Error   *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (r *crashResult) code() string {
	if r.Error == nil {
		return ""
	}
	return r.Error.Code
}

// chargesKey is a canonical text of charges, for comparing a duplicate's
// charges with the original acknowledgement.
func chargesKey(cs []crashCharge) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "%s=%s[", c.Account, c.Amount)
		for _, p := range c.Buckets {
			id := "<debt>"
			if p.BucketID != nil {
				id = *p.BucketID
			}
			fmt.Fprintf(&b, "%s:%s,", id, p.Amount)
		}
		b.WriteString("];")
	}
	return b.String()
}

// crashDec parses an exact decimal; it never goes through a float.
func crashDec(s string) (*big.Rat, bool) {
	if s == "" || strings.ContainsAny(s, "eE/") {
		return nil, false
	}
	return new(big.Rat).SetString(s)
}

// crashLog collects one process's stderr and reports when it is ready.
type crashLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func (l *crashLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if bytes.Contains(l.buf.Bytes(), []byte("meterd ready")) {
		l.once.Do(func() { close(l.ready) })
	}
	return len(p), nil
}

func (l *crashLog) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buf.Bytes()
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// crashProc is one run of the meterd binary.
type crashProc struct {
	cmd  *exec.Cmd
	addr string
	log  *crashLog
	done chan struct{}
	err  error // of Wait, once done is closed
}

func (p *crashProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// crashHarness starts, kills and stops meterd on one data directory.
type crashHarness struct {
	t       testing.TB
	bin     string
	dir     string
	args    []string // flags beyond --data-dir and --listen
	proc    *crashProc
	starts  int
	replays int // starts that replayed the command log
	client  *http.Client
	tr      *http.Transport
}

func freeLoopbackAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// start starts meterd on a free loopback port and waits until it serves.
func (h *crashHarness) start() {
	t := h.t
	t.Helper()
	for attempt := 0; ; attempt++ {
		p := h.launch()
		timer := time.NewTimer(crashStartTimeout)
		select {
		case <-p.log.ready:
			timer.Stop()
			if strings.Contains(p.log.tail(), "command log replayed") {
				h.replays++
			}
		case <-p.done:
			timer.Stop()
			out := p.log.tail()
			if attempt < 3 && strings.Contains(out, "address already in use") {
				continue // the free port was taken in between: another one
			}
			t.Fatalf("meterd exited before it was ready (%v); its output:\n%s", p.err, out)
		case <-timer.C:
			p.cmd.Process.Kill()
			<-p.done
			t.Fatalf("meterd was not ready after %v; its output:\n%s", crashStartTimeout, p.log.tail())
		}
		// A fresh client per process: connections to a killed one are dead.
		if h.tr != nil {
			h.tr.CloseIdleConnections()
		}
		// Idle connections are closed well before the server's read timeout,
		// so that it never answers on a connection the client pooled unused.
		h.tr = &http.Transport{MaxIdleConnsPerHost: 2 * crashWorkers, DisableCompression: true, IdleConnTimeout: 10 * time.Second}
		h.client = &http.Client{Transport: h.tr, Timeout: crashRequestTimeout}
		status, body, err := h.do("GET", "/healthz", nil)
		if err != nil || status != 200 {
			t.Fatalf("GET /healthz after the ready line: status %d, %v, %s; output:\n%s", status, err, body, p.log.tail())
		}
		return
	}
}

// launch starts the binary and returns at once.
func (h *crashHarness) launch() *crashProc {
	t := h.t
	t.Helper()
	p := &crashProc{addr: freeLoopbackAddr(t), log: &crashLog{ready: make(chan struct{})}, done: make(chan struct{})}
	p.cmd = exec.Command(h.bin, append([]string{"--data-dir", h.dir, "--listen", p.addr}, h.args...)...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "METERD_") {
			env = append(env, kv)
		}
	}
	p.cmd.Env = env
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting meterd: %v", err)
	}
	h.starts++
	h.proc = p
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

// killStarting starts the binary and kills it after delay, ready or not:
// while it opens the store, replays the command log or checkpoints what it
// replayed. It reports whether the kill came before the process was ready.
func (h *crashHarness) killStarting(delay time.Duration) (early bool) {
	p := h.launch()
	time.Sleep(delay)
	select {
	case <-p.log.ready:
	default:
		early = true
	}
	p.cmd.Process.Kill()
	<-p.done
	return early
}

// crashArgs picks a start's checkpoint interval: from checkpoints in nearly
// every group (kills land in the middle of them) to none before the kill
// (the whole load is replayed from the command log).
func crashArgs(rng *rand.Rand) []string {
	iv := []string{"10ms", "100ms", "1s", "1h"}[rng.IntN(4)]
	return []string{"--checkpoint-interval", iv}
}

// kill sends SIGKILL and waits for the process to be gone.
func (h *crashHarness) kill() {
	p := h.proc
	if err := p.cmd.Process.Kill(); err != nil && p.running() {
		h.t.Fatalf("kill -9 meterd: %v", err)
	}
	<-p.done
	if p.err == nil {
		// It exited by itself before the kill: not a crash we caused.
		h.t.Errorf("meterd exited with status 0 before it was killed; output:\n%s", p.log.tail())
	}
}

// stop sends SIGTERM and requires a clean exit with status 0.
func (h *crashHarness) stop() {
	t := h.t
	p := h.proc
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM meterd: %v; output:\n%s", err, p.log.tail())
	}
	select {
	case <-p.done:
	case <-time.After(crashStopTimeout):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("meterd did not exit within %v of SIGTERM; output:\n%s", crashStopTimeout, p.log.tail())
	}
	if p.err != nil {
		t.Errorf("meterd did not exit cleanly on SIGTERM: %v; output:\n%s", p.err, p.log.tail())
	}
}

func (h *crashHarness) url(path string) string { return "http://" + h.proc.addr + path }

// do sends one request and reads the whole answer.
func (h *crashHarness) do(method, path string, body []byte) (int, []byte, error) {
	return crashDo(h.client, method, h.url(path), body)
}

func crashDo(c *http.Client, method, url string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		// A partial answer (the process died while writing it) is no answer.
		return 0, nil, fmt.Errorf("reading the answer (status %d): %w", resp.StatusCode, err)
	}
	return resp.StatusCode, b, nil
}

// mustDo sends a request that must answer one of the wanted statuses.
func (h *crashHarness) mustDo(method, path string, body []byte, want ...int) []byte {
	h.t.Helper()
	status, b, err := h.do(method, path, body)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	if !slices.Contains(want, status) {
		h.t.Fatalf("%s %s: status %d, want %v: %s", method, path, status, want, b)
	}
	return b
}

// postEvents sends events as one JSON batch and returns their results.
// err is set when no answer was received; status is the HTTP status.
func postEvents(c *http.Client, url string, evs []*crashEvent) (results []crashResult, status int, body []byte, err error) {
	var b bytes.Buffer
	b.WriteString(`{"events":[`)
	for i, e := range evs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(e.raw)
	}
	b.WriteString(`]}`)
	status, body, err = crashDo(c, "POST", url, b.Bytes())
	if err != nil || status != 200 {
		return nil, status, body, err
	}
	var out struct {
		Results []crashResult `json:"results"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, status, body, fmt.Errorf("decoding the answer: %v", err)
	}
	if len(out.Results) != len(evs) {
		return nil, status, body, fmt.Errorf("%d results for %d events", len(out.Results), len(evs))
	}
	for i := range evs {
		if out.Results[i].ID != evs[i].id {
			return nil, status, body, fmt.Errorf("result %d is for event %q, want %q", i, out.Results[i].ID, evs[i].id)
		}
	}
	return out.Results, status, body, nil
}

// errLimiter reports at most a bounded number of errors (from any goroutine).
type errLimiter struct {
	t *testing.T
	n atomic.Int64
}

func (l *errLimiter) Errorf(format string, args ...any) {
	n := l.n.Add(1)
	if n <= 40 {
		l.t.Errorf(format, args...)
	} else if n == 41 {
		l.t.Errorf("... more errors not shown")
	}
}

func (l *errLimiter) count() int64 { return l.n.Load() }

// newCrashEvent makes one random event with a unique id.
func newCrashEvent(rng *rand.Rand, id string) *crashEvent {
	cust := "c" + strconv.Itoa(rng.IntN(crashCustomers))
	now := time.Now().UTC().Format(time.RFC3339Nano)
	var data string
	var typ string
	switch r := rng.IntN(100); {
	case r < 45:
		typ = "image_generated"
		data = fmt.Sprintf(`{"size":"%dx%d"}`, 256<<rng.IntN(3), 256<<rng.IntN(3))
	case r < 90:
		typ = "message_completed"
		model := []string{"gpt-4-1", "gpt-4o-mini", "claude-x"}[rng.IntN(3)]
		data = fmt.Sprintf(`{"model":%q,"input_tokens":%d,"output_tokens":%d}`, model, rng.IntN(200_000), rng.IntN(50_000))
	default:
		typ = "page_viewed" // no price: recorded
		data = fmt.Sprintf(`{"page":"/p/%d"}`, rng.IntN(1000))
	}
	raw := fmt.Sprintf(`{"id":%q,"customer_id":%q,"event_type":%q,"occurred_at":%q,"subject":"s-%d","data":%s}`,
		id, cust, typ, now, rng.IntN(100), data)
	return &crashEvent{id: id, customer: cust, raw: []byte(raw)}
}

// crashWorkerOut is what one load worker did in one cycle.
type crashWorkerOut struct {
	attempted []*crashEvent
	acked     [][]*crashEvent // batches answered 200, in order
}

// loadWorker sends random batches as fast as it can until a request fails
// (the process died) or stop is set.
func loadWorker(c *http.Client, url string, cycle, w int, seed uint64, stop *atomic.Bool, sent *atomic.Int64, errs *errLimiter) crashWorkerOut {
	var out crashWorkerOut
	rng := rand.New(rand.NewPCG(seed, uint64(cycle)<<8|uint64(w)))
	for b := 0; !stop.Load(); b++ {
		n := 1 + rng.IntN(crashBatchMax)
		evs := make([]*crashEvent, n)
		for i := range evs {
			evs[i] = newCrashEvent(rng, fmt.Sprintf("k%d-w%d-b%d-e%d", cycle, w, b, i))
		}
		out.attempted = append(out.attempted, evs...)
		sent.Add(int64(n))
		results, status, body, err := postEvents(c, url, evs)
		if err != nil && status == 200 {
			errs.Errorf("worker %d: batch %d: a 200 answer that does not fit the batch: %v: %s", w, b, err, body)
			return out
		}
		if err != nil {
			return out // the process is dying or dead: nothing acknowledged
		}
		switch {
		case status == 429 || status == 503:
			time.Sleep(5 * time.Millisecond) // overloaded: not acknowledged, resolved by the final resends
			continue
		case status != 200:
			errs.Errorf("worker %d: batch %d: status %d: %s", w, b, status, body)
			return out
		}
		acknowledge(errs, evs, results)
		out.acked = append(out.acked, evs)
	}
	return out
}

func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the meterd binary: skipped with -short")
	}
	testStart := time.Now()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "meterd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	buildTime := time.Since(testStart)

	h := &crashHarness{t: t, bin: bin, dir: filepath.Join(tmp, "data")}
	t.Cleanup(func() {
		if h.proc != nil && h.proc.running() {
			h.proc.cmd.Process.Kill()
			<-h.proc.done
		}
	})
	errs := &errLimiter{t: t}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	// Setup, once.
	h.args = crashArgs(rng)
	h.start()
	h.mustDo("PUT", "/v1/pricing", []byte(crashPricing), 200)
	customers := make([]string, crashCustomers)
	for i := range customers {
		c := "c" + strconv.Itoa(i)
		customers[i] = c
		h.mustDo("PUT", "/v1/customers/"+c, []byte(`{"insufficient_funds":"reject"}`), 200, 201)
		for _, s := range crashSeeds(i) {
			if s.kind == "topup" {
				h.mustDo("POST", "/v1/customers/"+c+"/topups",
					[]byte(fmt.Sprintf(`{"id":%q,"asset":%q,"amount":%q}`, s.id, s.asset, s.amount)), 201)
			} else {
				h.mustDo("POST", "/v1/customers/"+c+"/adjustments",
					[]byte(fmt.Sprintf(`{"transaction_id":%q,"asset":%q,"amount":%q,"kind":"promotional","reason":"gift"}`, s.id, s.asset, s.amount)), 201)
			}
		}
	}

	// Load and kill -9, several times.
	var all []*crashEvent
	var acked [][]*crashEvent // every batch answered 200
	var lastAcked [][]*crashEvent
	kills, startKills, startKillsEarly := 0, 0, 0
	var loadTime time.Duration
	resendChecked := 0
	for cycle := 0; ; cycle++ {
		if cycle > 0 {
			// Batches acknowledged before the crash come back as duplicates
			// with their original charges: the last one of each worker
			// (acknowledged just before the kill) and some older ones.
			pick := append([][]*crashEvent(nil), lastAcked...)
			for range 4 {
				if len(acked) > 0 {
					pick = append(pick, acked[rng.IntN(len(acked))])
				}
			}
			var evs []*crashEvent
			for _, b := range pick {
				for _, e := range b {
					if e.ack == "charged" || e.ack == "recorded" {
						evs = append(evs, e)
					}
				}
			}
			for len(evs) > 0 {
				part := evs[:min(len(evs), crashResendBatch)]
				evs = evs[len(part):]
				results, status, body, err := postEvents(h.client, h.url("/v1/events"), part)
				if err != nil || status != 200 {
					t.Fatalf("resending acknowledged events after restart %d: status %d, %v: %s", kills, status, err, body)
				}
				for i, r := range results {
					e := part[i]
					resendChecked++
					if r.Status != "duplicate" || chargesKey(r.Charges) != chargesKey(e.ackCharges) {
						errs.Errorf("after kill %d: acknowledged event %s (%s, charges %s) resent: status %s %s, charges %s",
							kills, e.id, e.ack, chargesKey(e.ackCharges), r.Status, r.code(), chargesKey(r.Charges))
					}
				}
			}
			if errs.count() > 0 {
				t.FailNow()
			}
		}
		if kills >= crashKillsMax || kills >= crashKillsMin && loadTime >= crashLoadBudget {
			break
		}

		var stop atomic.Bool
		var sent atomic.Int64
		var wg sync.WaitGroup
		outs := make([]crashWorkerOut, crashWorkers)
		url := h.url("/v1/events")
		loadStart := time.Now()
		for w := range crashWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs[w] = loadWorker(h.client, url, cycle, w, seed, &stop, &sent, errs)
			}()
		}
		deadline := loadStart.Add(time.Duration(200+rng.IntN(1301)) * time.Millisecond)
		target := int64(crashCycleEventsMin + rng.IntN(crashCycleEventsMax-crashCycleEventsMin+1))
		for time.Now().Before(deadline) && sent.Load() < target {
			time.Sleep(2 * time.Millisecond)
		}
		h.kill()
		kills++
		stop.Store(true)
		wg.Wait()
		loadTime += time.Since(loadStart)
		lastAcked = lastAcked[:0]
		for _, o := range outs {
			all = append(all, o.attempted...)
			acked = append(acked, o.acked...)
			if len(o.acked) > 0 {
				lastAcked = append(lastAcked, o.acked[len(o.acked)-1])
			}
		}
		if errs.count() > 0 {
			t.FailNow()
		}
		h.args = crashArgs(rng)
		if rng.IntN(2) == 0 {
			// Killed again while starting: during recovery's replay of the
			// command log, or its checkpoint of what it replayed.
			startKills++
			if h.killStarting(time.Duration(rng.IntN(60)) * time.Millisecond) {
				startKillsEarly++
			}
		}
		h.start()
	}
	loadEnd := time.Now()

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
	t.Logf("%d kill -9s while starting (%d before ready); %d of %d starts replayed the command log", startKills, startKillsEarly, h.replays, h.starts)
	t.Logf("%d kill -9s in %v of load; %d events attempted, %d acknowledged (%d charged, %d recorded, %d rejected), %d unacknowledged; %d acknowledged events resent between kills",
		kills, loadTime.Round(time.Millisecond), len(all), nAck, nCharged, nRecorded, nRejected, len(all)-nAck, resendChecked)
	if nCharged == 0 || nRejected == 0 || nRecorded == 0 {
		t.Errorf("the load should have had charged, recorded and rejected events")
	}

	// Final check 1: resend every event ever attempted.
	var lostAck, neverApplied, lateRejected int
	resendAll := func(check func(e *crashEvent, r *crashResult)) {
		const par = 4
		var wg sync.WaitGroup
		chunks := make(chan []*crashEvent)
		for range par {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for part := range chunks {
					results, status, body, err := postEvents(h.client, h.url("/v1/events"), part)
					if err != nil || status != 200 {
						errs.Errorf("resending %d events: status %d, %v: %s", len(part), status, err, body)
						continue
					}
					for i := range results {
						check(part[i], &results[i])
					}
				}
			}()
		}
		for i := 0; i < len(all); i += crashResendBatch {
			chunks <- all[i:min(len(all), i+crashResendBatch)]
		}
		close(chunks)
		wg.Wait()
	}
	var mu sync.Mutex // guards the counters; each event is checked by one goroutine
	resendAll(func(e *crashEvent, r *crashResult) {
		switch e.ack {
		case "charged", "recorded":
			if r.Status != "duplicate" || chargesKey(r.Charges) != chargesKey(e.ackCharges) {
				errs.Errorf("acknowledged event %s (%s, charges %s) resent: status %s %s, charges %s",
					e.id, e.ack, chargesKey(e.ackCharges), r.Status, r.code(), chargesKey(r.Charges))
			}
			e.final, e.finalCharges = "applied", e.ackCharges
		case "rejected":
			switch {
			case r.Status == "rejected" && r.code() == "insufficient_funds":
				e.final = "rejected"
			case r.Status == "charged" || r.Status == "recorded":
				// Possible: the carry of sub-unit remainders may make it one unit cheaper now.
				e.final, e.finalCharges = "applied", r.Charges
			default:
				errs.Errorf("event %s rejected (%s) when acknowledged, resent: status %s %s: a rejected event must not be stored",
					e.id, e.ackCode, r.Status, r.code())
			}
		default:
			switch {
			case r.Status == "duplicate":
				e.final, e.finalCharges = "applied", r.Charges
				mu.Lock()
				lostAck++
				mu.Unlock()
			case r.Status == "charged" || r.Status == "recorded":
				e.final, e.finalCharges = "applied", r.Charges
				mu.Lock()
				neverApplied++
				mu.Unlock()
			case r.Status == "rejected" && r.code() == "insufficient_funds":
				e.final = "rejected"
				mu.Lock()
				lateRejected++
				mu.Unlock()
			default:
				errs.Errorf("unacknowledged event %s resent: status %s %s", e.id, r.Status, r.code())
			}
		}
	})
	if errs.count() > 0 {
		t.FailNow()
	}
	t.Logf("unacknowledged events on resend: %d had been applied (ack lost), %d applied now, %d rejected now",
		lostAck, neverApplied, lateRejected)

	// ... and once more: every applied event is now a duplicate with the same charges.
	for pass := 0; ; pass++ {
		changed := 0
		resendAll(func(e *crashEvent, r *crashResult) {
			switch e.final {
			case "applied":
				if r.Status != "duplicate" || chargesKey(r.Charges) != chargesKey(e.finalCharges) {
					errs.Errorf("applied event %s (charges %s) resent again: status %s %s, charges %s",
						e.id, chargesKey(e.finalCharges), r.Status, r.code(), chargesKey(r.Charges))
				}
			case "rejected":
				switch {
				case r.Status == "rejected" && r.code() == "insufficient_funds":
				case r.Status == "charged" && pass < 2:
					e.final, e.finalCharges = "applied", r.Charges
					mu.Lock()
					changed++
					mu.Unlock()
				default:
					errs.Errorf("rejected event %s resent again: status %s %s", e.id, r.Status, r.code())
				}
			}
		})
		if errs.count() > 0 {
			t.FailNow()
		}
		if changed == 0 {
			break
		}
	}

	// Final checks 2 and 3: the ledger of every customer against the events
	// and against the wallet.
	byCustomer := make(map[string]map[string]*crashEvent)
	for _, e := range all {
		m := byCustomer[e.customer]
		if m == nil {
			m = make(map[string]*crashEvent)
			byCustomer[e.customer] = m
		}
		m[e.id] = e
	}
	wallets := make(map[string]map[string]string) // customer -> account -> available
	for i, c := range customers {
		wallets[c] = h.checkCustomer(errs, c, crashSeeds(i), byCustomer[c])
	}
	if errs.count() > 0 {
		t.FailNow()
	}

	// A clean stop, then the same balances after one more start.
	h.stop()
	h.start()
	for _, c := range customers {
		got := h.available(c)
		if fmt.Sprint(got) != fmt.Sprint(wallets[c]) {
			errs.Errorf("customer %s after SIGTERM and restart: available %v, before %v", c, got, wallets[c])
		}
	}
	h.stop()
	t.Logf("runtime %v (build %v, load %v, final checks %v)", time.Since(testStart).Round(time.Millisecond),
		buildTime.Round(time.Millisecond), loadEnd.Sub(testStart.Add(buildTime)).Round(time.Millisecond),
		time.Since(loadEnd).Round(time.Millisecond))
}

type crashEntry struct {
	ID           string  `json:"id"`
	Seq          uint64  `json:"seq"`
	Type         string  `json:"type"`
	Account      string  `json:"account"`
	Amount       string  `json:"amount"`
	BalanceAfter string  `json:"balance_after"`
	BucketID     *string `json:"bucket_id"`
	EventID      *string `json:"event_id"`
}

type crashWallet struct {
	CustomerID string `json:"customer_id"`
	Accounts   []struct {
		ID        string `json:"id"`
		Available string `json:"available"`
		Held      string `json:"held"`
		Debt      string `json:"debt"`
	} `json:"accounts"`
}

// available reads a customer's available balance per account.
func (h *crashHarness) available(c string) map[string]string {
	var w crashWallet
	if err := json.Unmarshal(h.mustDo("GET", "/v1/customers/"+c+"/wallet", nil, 200), &w); err != nil {
		h.t.Fatalf("GET wallet of %s: %v", c, err)
	}
	out := make(map[string]string)
	for _, a := range w.Accounts {
		out[a.ID] = a.Available
	}
	return out
}

// acknowledge records the answers to events sent for the first time: charged
// or recorded (with their charges), or rejected for insufficient funds; any
// other answer is an error.
func acknowledge(errs *errLimiter, evs []*crashEvent, results []crashResult) {
	for i, r := range results {
		e := evs[i]
		switch r.Status {
		case "charged", "recorded":
			e.ack, e.ackCharges = r.Status, r.Charges
		case "rejected":
			if r.code() != "insufficient_funds" {
				errs.Errorf("event %s (%s): rejected %s: %+v", e.id, e.raw, r.code(), r.Error)
			}
			e.ack, e.ackCode = "rejected", r.code()
		default:
			errs.Errorf("event %s sent once: status %q, want charged, recorded or rejected", e.id, r.Status)
		}
	}
}

// readLedger reads a customer's whole ledger over HTTP, newest first,
// following the next cursors, into entries of type E.
func readLedger[E any](h *crashHarness, c string) []E {
	t := h.t
	t.Helper()
	var entries []E
	path := "/v1/customers/" + c + "/ledger?limit=1000"
	for pages := 0; ; pages++ {
		if pages > 10000 {
			t.Fatalf("ledger of %s: more than 10000 pages", c)
		}
		var page struct {
			Entries []E     `json:"entries"`
			Next    *string `json:"next"`
		}
		if err := json.Unmarshal(h.mustDo("GET", path, nil, 200), &page); err != nil {
			t.Fatalf("ledger of %s: %v", c, err)
		}
		entries = append(entries, page.Entries...)
		if page.Next == nil {
			return entries
		}
		if len(page.Entries) == 0 {
			t.Fatalf("ledger of %s: an empty page with a next cursor", c)
		}
		path = "/v1/customers/" + c + "/ledger?limit=1000&before=" + *page.Next
	}
}

// checkCustomer reads a customer's whole ledger and wallet and checks them
// against the events and grants; it returns the available balances.
func (h *crashHarness) checkCustomer(errs *errLimiter, c string, seeds []crashSeed, events map[string]*crashEvent) map[string]string {
	t := h.t
	entries := readLedger[crashEntry](h, c)

	// Newest first, seqs unique.
	for i := 1; i < len(entries); i++ {
		if entries[i].Seq >= entries[i-1].Seq {
			errs.Errorf("ledger of %s: entry seq %d follows seq %d: not strictly newest first (duplicate or out of order)",
				c, entries[i].Seq, entries[i-1].Seq)
		}
	}
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].Seq < entries[j].Seq })

	parse := func(what, s string) *big.Rat {
		r, ok := crashDec(s)
		if !ok {
			errs.Errorf("ledger of %s: %s %q is not a decimal", c, what, s)
			return new(big.Rat)
		}
		return r
	}

	sums := make(map[string]*big.Rat)   // account -> sum of amounts
	newest := make(map[string]*big.Rat) // account -> newest balance_after
	type partKey struct{ bucket, amount string }
	usage := make(map[string]map[string][]partKey) // event -> account -> parts (negated amounts)
	var grants []string
	for _, en := range entries {
		amt := parse("amount", en.Amount)
		s := sums[en.Account]
		if s == nil {
			s = new(big.Rat)
			sums[en.Account] = s
		}
		s.Add(s, amt)
		after := parse("balance_after", en.BalanceAfter)
		if s.Cmp(after) != 0 {
			errs.Errorf("ledger of %s: entry %d (%s %s %s): balance_after %s but the entries up to it sum to %s",
				c, en.Seq, en.Type, en.Account, en.Amount, en.BalanceAfter, s.FloatString(9))
		}
		newest[en.Account] = after
		switch en.Type {
		case "usage":
			if en.EventID == nil {
				errs.Errorf("ledger of %s: usage entry %d without event_id", c, en.Seq)
				continue
			}
			m := usage[*en.EventID]
			if m == nil {
				m = make(map[string][]partKey)
				usage[*en.EventID] = m
			}
			b := "<debt>"
			if en.BucketID != nil {
				b = *en.BucketID
			}
			m[en.Account] = append(m[en.Account], partKey{b, new(big.Rat).Neg(amt).RatString()})
		case "topup", "adjustment":
			grants = append(grants, en.Type+" "+en.Account+" "+amt.RatString())
		default:
			errs.Errorf("ledger of %s: unexpected entry type %q (seq %d)", c, en.Type, en.Seq)
		}
	}

	// Grants: exactly the seeded ones, once each.
	var want []string
	for _, s := range seeds {
		want = append(want, s.kind+" default:"+s.asset+" "+parse("seed", s.amount).RatString())
	}
	slices.Sort(grants)
	slices.Sort(want)
	if !slices.Equal(grants, want) {
		errs.Errorf("ledger of %s: grant entries %q, want %q", c, grants, want)
	}

	// Usage: every applied event's parts exactly once; nothing else.
	for id := range usage {
		e := events[id]
		if e == nil {
			errs.Errorf("ledger of %s: usage entries of event %s, which was never sent for this customer", c, id)
		} else if e.final != "applied" {
			errs.Errorf("ledger of %s: usage entries of event %s, which was rejected (ack %s %s)", c, id, e.ack, e.ackCode)
		}
	}
	charged := 0
	for id, e := range events {
		if e.final != "applied" {
			continue
		}
		wantParts := make(map[string][]partKey)
		for _, ch := range e.finalCharges {
			total := new(big.Rat)
			for _, p := range ch.Buckets {
				b := "<debt>"
				if p.BucketID != nil {
					b = *p.BucketID
				}
				pa := parse("part amount", p.Amount)
				total.Add(total, pa)
				wantParts[ch.Account] = append(wantParts[ch.Account], partKey{b, pa.RatString()})
			}
			if total.Cmp(parse("charge amount", ch.Amount)) != 0 {
				errs.Errorf("event %s of %s: charge %s %s but its buckets sum to %s", id, c, ch.Account, ch.Amount, total.RatString())
			}
		}
		got := usage[id]
		for acct, parts := range got {
			total := new(big.Rat)
			for _, p := range parts {
				pa, _ := new(big.Rat).SetString(p.amount) // a RatString made above
				total.Add(total, pa)
			}
			var chargedAmt *big.Rat
			for _, ch := range e.finalCharges {
				if ch.Account == acct {
					chargedAmt = parse("charge amount", ch.Amount)
				}
			}
			if chargedAmt == nil || total.Cmp(chargedAmt) != 0 {
				errs.Errorf("ledger of %s: event %s: entries of %s sum to -%s, acknowledged charges %s",
					c, id, acct, total.RatString(), chargesKey(e.finalCharges))
			}
		}
		for acct, parts := range wantParts {
			if fmt.Sprint(got[acct]) != fmt.Sprint(parts) {
				errs.Errorf("ledger of %s: event %s: entries of %s %v, acknowledged charges %s",
					c, id, acct, got[acct], chargesKey(e.finalCharges))
			}
		}
		if len(got) > 0 {
			charged++
		}
	}

	// The wallet: available = sum of the ledger = newest balance_after.
	var w crashWallet
	if err := json.Unmarshal(h.mustDo("GET", "/v1/customers/"+c+"/wallet", nil, 200), &w); err != nil {
		t.Fatalf("wallet of %s: %v", c, err)
	}
	out := make(map[string]string)
	seen := make(map[string]bool)
	for _, a := range w.Accounts {
		out[a.ID] = a.Available
		seen[a.ID] = true
		avail := parse("available", a.Available)
		sum := sums[a.ID]
		if sum == nil {
			sum = new(big.Rat)
		}
		if sum.Cmp(avail) != 0 {
			errs.Errorf("customer %s account %s: the ledger sums to %s, available is %s", c, a.ID, sum.FloatString(9), a.Available)
		}
		if nb := newest[a.ID]; nb != nil && nb.Cmp(avail) != 0 {
			errs.Errorf("customer %s account %s: the newest entry's balance_after is %s, available is %s", c, a.ID, nb.FloatString(9), a.Available)
		}
		if parse("held", a.Held).Sign() != 0 || parse("debt", a.Debt).Sign() != 0 {
			errs.Errorf("customer %s account %s: held %s, debt %s, want 0", c, a.ID, a.Held, a.Debt)
		}
	}
	for acct := range sums {
		if !seen[acct] {
			errs.Errorf("customer %s: the ledger has entries of account %s, which the wallet does not show", c, acct)
		}
	}
	if len(entries) == 0 || charged == 0 {
		errs.Errorf("customer %s: %d ledger entries, %d charged events: the load did not reach it", c, len(entries), charged)
	}
	return out
}
