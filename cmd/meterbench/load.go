package main

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// Bounds of the load loop.
const (
	retryBackoffMin = 5 * time.Millisecond   // first pause after a 503 or 429
	retryBackoffMax = 200 * time.Millisecond // longest pause between retries of one body
	errorPause      = 50 * time.Millisecond  // pause after a transport error, so a dead server is not spun on
	errorsKeptMax   = 8                      // distinct error messages kept for the report
)

// models is the small set of dimension values the generated events use:
// one priced explicitly by the contract's example, the others by "*".
var models = [...]string{"gpt-4-1", "gpt-4-1-mini", "o3", "claude-sonnet"}

// clientStats is what one client measured. Only the client writes it until
// it returns; the runner merges them afterwards.
type clientStats struct {
	lat       hist // each HTTP request (attempt), send to full response, any status
	latE2E    hist // each body, first send to its 200, retries and pauses included
	requests  uint64
	events    uint64 // events in bodies answered 200
	retries   uint64 // 503/429 answers that were retried with the same body
	byStatus  map[int]uint64
	byResult  map[string]uint64 // "charged", "recorded", "duplicate", "rejected:<code>"
	transport uint64            // requests that got no HTTP answer
	malformed uint64            // 200 answers whose body did not match the request
	errs      []string
}

func (s *clientStats) noteErr(msg string) {
	for _, e := range s.errs {
		if e == msg {
			return
		}
	}
	if len(s.errs) < errorsKeptMax {
		s.errs = append(s.errs, msg)
	}
}

// runState is shared by all clients of one run.
type runState struct {
	measureStartNs atomic.Int64 // requests sent at or after this (unix ns) are counted
	stopNs         int64        // no request is started after this; 0 = no time bound
	requestsLeft   atomic.Int64 // counted requests still to send; unused when requestsMax == 0
	requestsMax    int64
	stopped        atomic.Bool
}

// claim reports whether the client may send one more body, and whether it
// is counted (sent after the warm-up).
func (r *runState) claim(now time.Time) (ok, counted bool) {
	if r.stopped.Load() {
		return false, false
	}
	ns := now.UnixNano()
	if r.stopNs != 0 && ns >= r.stopNs {
		r.stopped.Store(true)
		return false, false
	}
	if ns < r.measureStartNs.Load() {
		return true, false
	}
	if r.requestsMax > 0 && r.requestsLeft.Add(-1) < 0 {
		r.stopped.Store(true)
		return false, false
	}
	return true, true
}

// client is one load-generating connection: it builds a body, posts it,
// waits for the answer and checks it, in a loop.
type client struct {
	id        int
	cfg       *config
	hc        *fasthttp.HostClient
	rng       *rand.Rand
	body      []byte
	stamp     []byte
	seq       uint64
	parser    fastjson.Parser
	customers []string
	st        clientStats
}

func newClient(id int, cfg *config, hc *fasthttp.HostClient, customers []string) *client {
	return &client{
		id:        id,
		cfg:       cfg,
		hc:        hc,
		rng:       rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(id)+1)),
		customers: customers,
		st:        clientStats{byStatus: map[int]uint64{}, byResult: map[string]uint64{}},
	}
}

// buildBody fills c.body with the next batch of events. It appends into a
// reused buffer: no encoding/json, no allocation once the buffer has grown.
func (c *client) buildBody(now time.Time) {
	c.stamp = now.UTC().AppendFormat(c.stamp[:0], "2006-01-02T15:04:05.000Z07:00")
	b := c.body[:0]
	if !c.cfg.ndjson {
		b = append(b, `{"events":[`...)
	}
	for i := 0; i < c.cfg.batch; i++ {
		if i > 0 && !c.cfg.ndjson {
			b = append(b, ',')
		}
		b = append(b, `{"id":"`...)
		b = append(b, c.cfg.runID...)
		b = append(b, '-')
		b = strconv.AppendInt(b, int64(c.id), 10)
		b = append(b, '-')
		b = strconv.AppendUint(b, c.seq, 10)
		c.seq++
		b = append(b, `","customer_id":"`...)
		b = append(b, c.customers[c.rng.IntN(len(c.customers))]...)
		b = append(b, `","event_type":"message_completed","occurred_at":"`...)
		b = append(b, c.stamp...)
		b = append(b, `","data":{"model":"`...)
		b = append(b, models[c.rng.IntN(len(models))]...)
		b = append(b, `","input_tokens":`...)
		b = strconv.AppendInt(b, int64(1+c.rng.IntN(8000)), 10)
		b = append(b, `,"output_tokens":`...)
		b = strconv.AppendInt(b, int64(1+c.rng.IntN(2000)), 10)
		b = append(b, "}}"...)
		if c.cfg.ndjson {
			b = append(b, '\n')
		}
	}
	if !c.cfg.ndjson {
		b = append(b, "]}"...)
	}
	c.body = b
}

// run loops until the run is over.
func (c *client) run(rs *runState) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(c.cfg.target.String() + "/v1/events")
	if c.cfg.ndjson {
		req.Header.SetContentType("application/x-ndjson")
	} else {
		req.Header.SetContentType("application/json")
	}
	if c.cfg.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.apiKey)
	}
	for {
		now := time.Now()
		ok, counted := rs.claim(now)
		if !ok {
			return
		}
		c.buildBody(now)
		req.SetBodyRaw(c.body)
		first := now
		backoff := retryBackoffMin
		for {
			sent := time.Now()
			err := c.hc.Do(req, resp)
			lat := time.Since(sent)
			if err != nil {
				if counted {
					c.st.transport++
					c.st.noteErr("transport: " + err.Error())
				}
				// Not retried: the answer may have been lost after the
				// write was applied; the next body has new ids.
				time.Sleep(errorPause)
				break
			}
			code := resp.StatusCode()
			if counted {
				c.st.requests++
				c.st.byStatus[code]++
				c.st.lat.record(lat)
			}
			if code == fasthttp.StatusServiceUnavailable || code == fasthttp.StatusTooManyRequests {
				if counted {
					c.st.retries++
				}
				time.Sleep(backoff)
				backoff = min(2*backoff, retryBackoffMax)
				continue
			}
			if code != fasthttp.StatusOK {
				if counted {
					c.st.noteErr(fmt.Sprintf("HTTP %d: %.200s", code, resp.Body()))
				}
				break
			}
			if counted {
				c.st.latE2E.record(time.Since(first))
				c.st.events += uint64(c.cfg.batch)
				c.count(resp.Body())
			}
			break
		}
	}
}

// count tallies the per-event results of a 200 answer.
func (c *client) count(body []byte) {
	v, err := c.parser.ParseBytes(body)
	if err != nil {
		c.st.malformed++
		c.st.noteErr("unreadable 200 answer: " + err.Error())
		return
	}
	results := v.GetArray("results")
	if len(results) != c.cfg.batch {
		c.st.malformed++
		c.st.noteErr(fmt.Sprintf("200 answer with %d results for %d events", len(results), c.cfg.batch))
	}
	for _, r := range results {
		status := r.GetStringBytes("status")
		switch string(status) {
		case "charged":
			c.st.byResult["charged"]++
		case "recorded":
			c.st.byResult["recorded"]++
		case "duplicate":
			c.st.byResult["duplicate"]++
		case "rejected":
			c.st.byResult["rejected:"+string(r.GetStringBytes("error", "code"))]++
		default:
			c.st.byResult["unknown:"+string(status)]++
		}
	}
}
