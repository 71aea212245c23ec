package main

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Bounds of the setup phase.
const (
	setupWorkersMax  = 32 // customers set up in parallel
	setupAttemptsMax = 20 // tries of one setup request answered 503/429
	metricsBytesMax  = 16 << 20
)

// benchPricing is the contract's example pricing document: message_completed
// priced per million tokens by model in USD, image_generated in credits.
const benchPricing = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],
 "prices":[
  {"event_type":"message_completed","account":"default:USD",
   "dimensions":["model"],
   "components":[
     {"field":"input_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"2.00","*":"1.25"}},
     {"field":"output_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"8.00","*":"5.00"}}]},
  {"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"}],
 "topup_offers":[{"currency":"USD","account":"default:CREDITS","min":"10","max":"10000",
   "tiers":[{"from":"10","credits_per_unit":"100"},{"from":"300","credits_per_unit":"125"}]}]}`

// The top-ups every customer gets. Their ids and contents are fixed, so a
// second setup on the same data directory replays them (200) instead of
// granting again. An event costs at most 0.032 USD (8000 input and 2000
// output tokens of gpt-4-1): a million USD covers 31 million events a customer.
const (
	topUpUSD     = `{"id":"meterbench-usd","account":"default","asset":"USD","amount":"1000000","source":"meterbench"}`
	topUpCredits = `{"id":"meterbench-credits","account":"default","asset":"CREDITS","amount":"1000000000","source":"meterbench"}`
	customerBody = `{"status":"active","insufficient_funds":"reject"}`
)

// customerIDs returns the ids of the benchmark's customers.
func customerIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "mb-c" + strconv.Itoa(i)
	}
	return ids
}

// call sends one request and returns its status and a copy of its body,
// retrying answers 503 and 429 with the same body.
func call(cfg *config, hc *fasthttp.HostClient, method, path, body string) (int, []byte, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(cfg.target.String() + path)
	if body != "" {
		req.Header.SetContentType("application/json")
		req.SetBodyString(body)
	}
	if cfg.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.apiKey)
	}
	backoff := retryBackoffMin
	for attempt := 1; ; attempt++ {
		if err := hc.Do(req, resp); err != nil {
			return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
		code := resp.StatusCode()
		if (code == fasthttp.StatusServiceUnavailable || code == fasthttp.StatusTooManyRequests) && attempt < setupAttemptsMax {
			time.Sleep(backoff)
			backoff = min(2*backoff, retryBackoffMax)
			continue
		}
		return code, append([]byte(nil), resp.Body()...), nil
	}
}

func expect(code int, body []byte, err error, want ...int) error {
	if err != nil {
		return err
	}
	for _, w := range want {
		if code == w {
			return nil
		}
	}
	return fmt.Errorf("HTTP %d: %.300s", code, body)
}

// setup puts the pricing, then creates and funds every customer with
// bounded parallelism. It stops at the first failure.
func setup(cfg *config, hc *fasthttp.HostClient, customers []string) error {
	code, body, err := call(cfg, hc, fasthttp.MethodPut, "/v1/pricing", benchPricing)
	if err := expect(code, body, err, fasthttp.StatusOK, fasthttp.StatusCreated); err != nil {
		return fmt.Errorf("PUT /v1/pricing: %w", err)
	}
	workers := min(setupWorkersMax, cfg.concurrency, len(customers))
	var (
		next    atomic.Int64
		failed  atomic.Bool
		errOnce sync.Once
		first   error
		wg      sync.WaitGroup
	)
	fail := func(err error) {
		errOnce.Do(func() { first = err })
		failed.Store(true)
	}
	for range workers {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(customers) {
					return
				}
				base := "/v1/customers/" + customers[i]
				code, body, err := call(cfg, hc, fasthttp.MethodPut, base, customerBody)
				if err := expect(code, body, err, fasthttp.StatusOK, fasthttp.StatusCreated); err != nil {
					fail(fmt.Errorf("PUT %s: %w", base, err))
					return
				}
				for _, t := range [...]string{topUpUSD, topUpCredits} {
					code, body, err := call(cfg, hc, fasthttp.MethodPost, base+"/topups", t)
					if err := expect(code, body, err, fasthttp.StatusOK, fasthttp.StatusCreated); err != nil {
						fail(fmt.Errorf("POST %s/topups: %w", base, err))
						return
					}
				}
			}
		})
	}
	wg.Wait()
	return first
}

// commitStats holds the _sum and _count of the server's commit histograms.
type commitStats struct {
	groupEventsSum, groupEventsCount float64
	fsyncSecondsSum, fsyncCount      float64
	found                            int
}

// scrapeMetrics reads the server's /metrics and picks the commit histograms.
func scrapeMetrics(cfg *config, hc *fasthttp.HostClient) (commitStats, error) {
	code, body, err := call(cfg, hc, fasthttp.MethodGet, "/metrics", "")
	if err := expect(code, body, err, fasthttp.StatusOK); err != nil {
		return commitStats{}, err
	}
	if len(body) > metricsBytesMax {
		return commitStats{}, fmt.Errorf("/metrics answer of %d bytes is over %d", len(body), metricsBytesMax)
	}
	return parseMetrics(body), nil
}

// parseMetrics reads the Prometheus text format simply: a sample line is
// "name value" (the histograms read here carry no labels); comments and
// every other name are skipped.
func parseMetrics(text []byte) commitStats {
	var s commitStats
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		name, rest, ok := bytes.Cut(line, []byte{' '})
		if !ok {
			continue
		}
		var dst *float64
		switch string(name) {
		case "meterd_commit_group_events_sum":
			dst = &s.groupEventsSum
		case "meterd_commit_group_events_count":
			dst = &s.groupEventsCount
		case "meterd_commit_fsync_seconds_sum":
			dst = &s.fsyncSecondsSum
		case "meterd_commit_fsync_seconds_count":
			dst = &s.fsyncCount
		default:
			continue
		}
		val, _, _ := bytes.Cut(bytes.TrimSpace(rest), []byte{' '}) // drop an optional timestamp
		f, err := strconv.ParseFloat(string(val), 64)
		if err != nil {
			continue
		}
		*dst = f
		s.found++
	}
	return s
}
