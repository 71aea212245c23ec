package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/meterd/meterd/meter"
)

// Meterd is meterd under test, over its HTTP API: a request is one JSON
// batch (or NDJSON body) to POST /v1/events, answered once durable.
type Meterd struct {
	base   string // http://host:port
	hc     *fasthttp.HostClient
	key    string // API key ("" when the server runs without auth)
	pid    int
	name   string
	ndjson bool
}

// MeterdOption configures a Meterd.
type MeterdOption func(*Meterd)

// MeterdNDJSON sends each request as NDJSON (one event object per line)
// instead of a JSON batch.
func MeterdNDJSON() MeterdOption { return func(m *Meterd) { m.ndjson = true } }

// MeterdName names the system in reports (default "meterd").
func MeterdName(name string) MeterdOption { return func(m *Meterd) { m.name = name } }

// setupWorkers is how many customers Setup creates at once: meterd commits
// concurrent requests in one group, so this is what makes setting up 10,000
// customers take seconds, not one fsync each.
const setupWorkers = 16

// usdScale is the scale of the pricing's USD.
const usdScale = 6

// NewMeterd returns a System for the meterd serving at base
// ("http://127.0.0.1:8080"), with key as its API key (ingest and admin
// scopes; "" for none), pid its process (0: unknown) and conns the
// connections it opens at most.
func NewMeterd(base, key string, pid int, conns int, opts ...MeterdOption) (*Meterd, error) {
	addr, ok := strings.CutPrefix(base, "http://")
	if !ok || addr == "" {
		return nil, fmt.Errorf("meterd base %q: want http://host:port", base)
	}
	m := &Meterd{base: base, key: key, pid: pid, name: "meterd", hc: &fasthttp.HostClient{Addr: addr, MaxConns: conns,
		MaxConnWaitTimeout: time.Minute, ReadTimeout: time.Minute, WriteTimeout: time.Minute, MaxIdemponentCallAttempts: 1}}
	for _, o := range opts {
		o(m)
	}
	return m, nil
}

func (m *Meterd) Name() string { return m.name }
func (m *Meterd) PIDs() []int {
	if m.pid == 0 {
		return nil
	}
	return []int{m.pid}
}
func (m *Meterd) Close() error { m.hc.CloseIdleConnections(); return nil }

// call sends one request and returns the status and a copy of the body.
func (m *Meterd) call(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	req, res := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(res)
	req.Header.SetMethod(method)
	req.SetRequestURI(m.base + path)
	if m.ndjson && path == eventsPath {
		req.Header.SetContentType("application/x-ndjson")
	} else {
		req.Header.SetContentType("application/json")
	}
	if m.key != "" {
		req.Header.Set("Authorization", "Bearer "+m.key)
	}
	req.SetBody(body)
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Minute)
	}
	if err := m.hc.DoDeadline(req, res, deadline); err != nil {
		return 0, nil, err
	}
	return res.StatusCode(), append([]byte(nil), res.Body()...), nil
}

func (m *Meterd) must(ctx context.Context, method, path string, body []byte, want ...int) error {
	st, b, err := m.call(ctx, method, path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	for _, w := range want {
		if st == w {
			return nil
		}
	}
	return fmt.Errorf("%s %s: %d %s", method, path, st, b)
}

// Setup puts the benchmark's pricing and each customer with a top-up of
// balance micro-USD (its id is the customer's, so a repeated Setup is
// idempotent).
func (m *Meterd) Setup(ctx context.Context, customers []string, balance int64) error {
	if err := m.must(ctx, "PUT", "/v1/pricing", []byte(PricingDocument()), 200); err != nil {
		return err
	}
	amount := meter.FormatUnits(balance, usdScale)
	return forEachParallel(ctx, customers, setupWorkers, func(c string) error {
		if err := m.must(ctx, "PUT", "/v1/customers/"+c, []byte(`{"insufficient_funds":"reject"}`), 200, 201); err != nil {
			return err
		}
		top := `{"id":"bench-` + c + `","asset":"USD","amount":"` + amount + `"}`
		return m.must(ctx, "POST", "/v1/customers/"+c+"/topups", []byte(top), 200, 201)
	})
}

// forEachParallel calls f for every item from workers goroutines, and
// returns the first error (the others stop taking items then).
func forEachParallel(ctx context.Context, items []string, workers int, f func(string) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range min(workers, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() && ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(items)) {
					return
				}
				if err := f(items[i]); err != nil {
					once.Do(func() { first = err })
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// AppendBatch appends the JSON batch of events, as POST /v1/events takes it.
func AppendBatch(b []byte, events []Event) []byte {
	b = append(b, `{"events":[`...)
	for i := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendEvent(b, &events[i])
	}
	return append(b, "]}"...)
}

// AppendNDJSON appends events as an NDJSON body: one event object per line.
func AppendNDJSON(b []byte, events []Event) []byte {
	for i := range events {
		b = AppendEvent(b, &events[i])
		b = append(b, '\n')
	}
	return b
}

// AppendEvent appends one event's JSON object, as an element of a batch's
// "events", a line of NDJSON, or a Kafka message takes it. Ids, customers
// and models of a scenario need no escaping.
func AppendEvent(b []byte, e *Event) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, e.ID...)
	b = append(b, `","customer_id":"`...)
	b = append(b, e.Customer...)
	b = append(b, `","event_type":"message_completed","data":{"model":"`...)
	b = append(b, e.Model...)
	b = append(b, `","input_tokens":`...)
	b = strconv.AppendInt(b, e.InputTokens, 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, e.OutputTokens, 10)
	if e.Hold {
		b = append(b, `},"hold_id":"`...)
		b = append(b, HoldID(e)...)
		return append(b, `"}`...)
	}
	return append(b, `}}`...)
}

// HoldID is the id of the hold an event with Hold settles: "h-<event id>".
func HoldID(e *Event) string { return "h-" + e.ID }

// parsers reuse fastjson's parsers, whose value caches are what parsing a
// response allocates (a fresh parser per response costs the generator more
// than the rest of its work).
var parsers fastjson.ParserPool

const (
	eventsPath         = "/v1/events"
	preparedEventBytes = 192 // room for one encoded event of a scenario (about 150 bytes)
)

// body encodes one request as this Meterd sends it.
func (m *Meterd) body(b []byte, events []Event) []byte {
	if m.ndjson {
		return AppendNDJSON(b, events)
	}
	return AppendBatch(b, events)
}

// Apply sends the events as one request.
func (m *Meterd) Apply(ctx context.Context, events []Event, results []Result) error {
	return m.post(ctx, m.body(nil, events), results)
}

// Prepare encodes every request before the run (Preparer), each into a
// buffer of its own: one growing buffer for a whole run is copied again at
// every growth, which costs more than the run's encoding itself.
func (m *Meterd) Prepare(reqs [][]Event) (func(ctx context.Context, i int, results []Result) error, error) {
	bodies := make([][]byte, len(reqs))
	for i, r := range reqs {
		bodies[i] = m.body(make([]byte, 0, len(r)*preparedEventBytes), r)
	}
	return func(ctx context.Context, i int, results []Result) error {
		return m.post(ctx, bodies[i], results)
	}, nil
}

func (m *Meterd) post(ctx context.Context, body []byte, results []Result) error {
	st, resp, err := m.call(ctx, "POST", eventsPath, body)
	if err != nil {
		return err
	}
	if st != 200 {
		return fmt.Errorf("POST %s: %d %s", eventsPath, st, resp)
	}
	return ParseResults(resp, results)
}

// ParseResults reads the results of an events response into results.
func ParseResults(body []byte, results []Result) error {
	p := parsers.Get()
	defer parsers.Put(p)
	v, err := p.ParseBytes(body)
	if err != nil {
		return fmt.Errorf("events response: %w", err)
	}
	rs := v.GetArray("results")
	if len(rs) != len(results) {
		return fmt.Errorf("events response: %d results for %d events", len(rs), len(results))
	}
	for i, r := range rs {
		var res Result
		switch string(r.GetStringBytes("status")) {
		case "charged":
			res.Status = StatusCharged
		case "duplicate":
			res.Status = StatusDuplicate
		case "rejected":
			res.Status = StatusRejected
		default:
			return fmt.Errorf("events response: result %d: status %q", i, r.GetStringBytes("status"))
		}
		for _, c := range r.GetArray("charges") {
			u, err := meter.ParseUnits(string(c.GetStringBytes("amount")), usdScale)
			if err != nil {
				return fmt.Errorf("events response: result %d: %w", i, err)
			}
			res.Charge += u
		}
		results[i] = res
	}
	return nil
}

// Balance reads the available USD of the customer's wallet.
func (m *Meterd) Balance(ctx context.Context, customer string) (int64, error) {
	st, body, err := m.call(ctx, "GET", "/v1/customers/"+customer+"/wallet", nil)
	if err != nil || st != 200 {
		return 0, fmt.Errorf("wallet of %s: %d %s %v", customer, st, body, err)
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(body)
	if err != nil {
		return 0, err
	}
	for _, a := range v.GetArray("accounts") {
		if string(a.GetStringBytes("id")) == "default:USD" {
			return meter.ParseUnits(string(a.GetStringBytes("available")), usdScale)
		}
	}
	return 0, errors.New("wallet of " + customer + ": no default:USD account")
}

// Ledger reads every usage entry of the customer's USD account, page by
// page. meterd writes one entry per bucket a charge draws from; Setup gives
// each customer one bucket, so each charged event has exactly one entry, and
// an event with two is an event applied twice.
func (m *Meterd) Ledger(ctx context.Context, customer string) ([]LedgerRow, error) {
	var rows []LedgerRow
	err := m.entries(ctx, customer, func(typ, event string, amount int64) {
		if typ == "usage" {
			rows = append(rows, LedgerRow{EventID: event, Amount: -amount})
		}
	})
	return rows, err
}

// entries calls f for every entry of the customer's USD account, newest
// first, page by page.
func (m *Meterd) entries(ctx context.Context, customer string, f func(typ, event string, amount int64)) error {
	before := ""
	p := parsers.Get()
	defer parsers.Put(p)
	for {
		path := "/v1/customers/" + customer + "/ledger?account=default:USD&limit=1000"
		if before != "" {
			path += "&before=" + before
		}
		st, body, err := m.call(ctx, "GET", path, nil)
		if err != nil || st != 200 {
			return fmt.Errorf("ledger of %s: %d %s %v", customer, st, body, err)
		}
		v, err := p.ParseBytes(body)
		if err != nil {
			return err
		}
		for _, e := range v.GetArray("entries") {
			u, err := meter.ParseUnits(string(e.GetStringBytes("amount")), usdScale)
			if err != nil {
				return err
			}
			f(string(e.GetStringBytes("type")), string(e.GetStringBytes("event_id")), u)
		}
		next := v.Get("next")
		if next == nil || next.Type() != fastjson.TypeString {
			return nil
		}
		before = string(next.GetStringBytes())
	}
}
