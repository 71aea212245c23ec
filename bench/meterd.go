package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/meterd/meterd/meter"
)

// Meterd is meterd under test, over its HTTP API: a request is one JSON
// batch to POST /v1/events, answered once durable.
type Meterd struct {
	base string // http://host:port
	hc   *fasthttp.HostClient
	key  string // API key ("" when the server runs without auth)
	pid  int
}

// usdScale is the scale of the pricing's USD.
const usdScale = 6

// NewMeterd returns a System for the meterd serving at base
// ("http://127.0.0.1:8080"), with key as its API key (ingest and admin
// scopes; "" for none) and pid its process (0: unknown).
func NewMeterd(base, key string, pid int, conns int) (*Meterd, error) {
	addr, ok := strings.CutPrefix(base, "http://")
	if !ok || addr == "" {
		return nil, fmt.Errorf("meterd base %q: want http://host:port", base)
	}
	return &Meterd{base: base, key: key, pid: pid, hc: &fasthttp.HostClient{Addr: addr, MaxConns: conns,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute, MaxIdemponentCallAttempts: 1}}, nil
}

func (m *Meterd) Name() string { return "meterd" }
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
	req.Header.SetContentType("application/json")
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
	for _, c := range customers {
		if err := m.must(ctx, "PUT", "/v1/customers/"+c, []byte(`{"insufficient_funds":"reject"}`), 200, 201); err != nil {
			return err
		}
		top := `{"id":"bench-` + c + `","asset":"USD","amount":"` + amount + `"}`
		if err := m.must(ctx, "POST", "/v1/customers/"+c+"/topups", []byte(top), 200, 201); err != nil {
			return err
		}
	}
	return nil
}

// AppendBatch appends the JSON batch of events, as POST /v1/events takes it.
func AppendBatch(b []byte, events []Event) []byte {
	b = append(b, `{"events":[`...)
	for i := range events {
		e := &events[i]
		if i > 0 {
			b = append(b, ',')
		}
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
		b = append(b, `}}`...)
	}
	return append(b, "]}"...)
}

// Apply sends the events as one JSON batch.
func (m *Meterd) Apply(ctx context.Context, events []Event, results []Result) error {
	st, body, err := m.call(ctx, "POST", "/v1/events", AppendBatch(nil, events))
	if err != nil {
		return err
	}
	if st != 200 {
		return fmt.Errorf("POST /v1/events: %d %s", st, body)
	}
	return ParseResults(body, results)
}

// ParseResults reads the results of an events response into results.
func ParseResults(body []byte, results []Result) error {
	var p fastjson.Parser
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
	before := ""
	for {
		path := "/v1/customers/" + customer + "/ledger?account=default:USD&limit=1000"
		if before != "" {
			path += "&before=" + before
		}
		st, body, err := m.call(ctx, "GET", path, nil)
		if err != nil || st != 200 {
			return nil, fmt.Errorf("ledger of %s: %d %s %v", customer, st, body, err)
		}
		var p fastjson.Parser
		v, err := p.ParseBytes(body)
		if err != nil {
			return nil, err
		}
		for _, e := range v.GetArray("entries") {
			if string(e.GetStringBytes("type")) != "usage" {
				continue
			}
			u, err := meter.ParseUnits(string(e.GetStringBytes("amount")), usdScale)
			if err != nil {
				return nil, err
			}
			rows = append(rows, LedgerRow{EventID: string(e.GetStringBytes("event_id")), Amount: -u})
		}
		next := v.Get("next")
		if next == nil || next.Type() != fastjson.TypeString {
			return rows, nil
		}
		before = string(next.GetStringBytes())
	}
}
