package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// The load loops: prepared requests (Scenario.Requests) applied to a System
// by Clients goroutines, each answer recorded in Acks for the check, each
// latency in an HDR histogram.
//
// Closed loop (Rate 0): each client takes the next request as soon as its
// last one is answered; latency is Apply's duration. It measures the most a
// system does with Clients requests in flight.
//
// Open loop (Rate > 0): request i has an intended send time, start +
// (events of requests 0..i-1) / Rate, fixed before the run whatever the
// system does. Clients take requests in order, sleep until the intended time
// if early, and latency is answer time - intended time. When the system
// falls behind, every client is busy and the next request waits for one:
// that wait is in its latency, as it would be for a real caller whose
// request was due then. So a slow answer cannot hide the requests it held
// up (no coordinated omission), and an offered rate above what the system
// sustains shows as latency that grows through the run. The offered rate
// is only reached if Clients is at least rate x latency / batch; a client
// that wakes late from its sleep also counts against the system (tens of
// microseconds).
//
// A run has a warmup, then a measured part of Duration: requests sent
// (closed) or due (open) during the warmup are applied and acknowledged,
// but neither counted nor measured. No request is sent after the measured
// part ends, nor is any request sent twice: the run also ends when the
// requests run out.

// Bounds of a run.
const (
	loopClientsMax      = 4096
	latencyUsMin        = 1                      // the histograms' range, in microseconds
	latencyUsMax        = 60_000_000             // 60 s: a longer latency is recorded as 60 s
	latencyDigits       = 3                      // significant digits of RunResult.Latency
	secondLatencyDigits = 2                      // of the per-second histograms (20 KiB each, one per second of the run)
	loopErrorsKeptMax   = 8                      // error messages a RunResult keeps
	loopProgressLag     = 250 * time.Millisecond // a progress line is printed this long after its second ends
	loopDurationMax     = 24 * time.Hour         // Warmup + Duration
	loopSecondsMax      = int(loopDurationMax/time.Second) + 1
)

// Loop is how a run applies its requests.
type Loop struct {
	Clients  int           // requests in flight at most
	Duration time.Duration // the measured part; 0: until the requests run out
	Warmup   time.Duration // before the measured part: applied and acknowledged, not measured
	Rate     float64       // events per second offered; 0: closed loop, as fast as it goes
	Progress io.Writer     // one line per measured second; nil: none
	// Cycle (closed loop only) sends the requests again from the first when
	// they run out, and records no answer in the acks: for a system that
	// keeps nothing (the no-op floor), which no event ceiling keeps busy
	// for a whole run.
	Cycle bool
}

func (l Loop) validate() error {
	switch {
	case l.Clients < 1 || l.Clients > loopClientsMax:
		return fmt.Errorf("loop: %d clients, want 1..%d", l.Clients, loopClientsMax)
	case l.Duration < 0 || l.Warmup < 0 || l.Duration+l.Warmup > loopDurationMax:
		return fmt.Errorf("loop: warmup %v and duration %v, want each at least 0 and together at most %v", l.Warmup, l.Duration, loopDurationMax)
	case l.Rate < 0 || math.IsNaN(l.Rate) || math.IsInf(l.Rate, 0):
		return fmt.Errorf("loop: rate %v events/s, want 0 (closed loop) or more", l.Rate)
	case l.Cycle && (l.Rate > 0 || l.Duration == 0):
		return errors.New("loop: cycling is for a closed loop with a duration")
	}
	return nil
}

// Second is one second of the measured run, by answer time. The last one
// may be partial, or past Duration: requests in flight at the end are
// answered after it.
type Second struct {
	At       time.Duration // the end of the second, from the start of the measured run
	Events   int64         // events answered in it
	P50, P99 time.Duration // of the requests answered in it
}

// RunResult is what the measured part of a run did. Warmup requests are in
// none of its counts.
type RunResult struct {
	System         string
	Requests       int64 // requests sent: answered, or failed
	Events         int64 // events in answered requests
	ByStatus       [StatusRejected + 1]int64
	Errors         int64    // requests that got no answer (Apply returned an error)
	ErrorsKept     []string // the first loopErrorsKeptMax messages
	WarmupRequests int64
	Elapsed        time.Duration           // from the start of the measured part to the last answer
	Latency        *hdrhistogram.Histogram // of answered requests, in microseconds
	PerSecond      []Second
}

// Quantile returns the latency below which a fraction q (0..1) of the answered
// requests fell; 0 if none was answered.
func (r *RunResult) Quantile(q float64) time.Duration {
	return time.Duration(r.Latency.ValueAtQuantile(q*100)) * time.Microsecond
}

// EventsPerSecond is the answered events' throughput over Elapsed.
func (r *RunResult) EventsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Events) / r.Elapsed.Seconds()
}

// Run applies reqs to sys as loop says, recording every answer in acks, and
// returns the measurement. A request is one Apply call; it is never
// resent. On a cancelled ctx, the run stops taking requests and returns
// what it measured with ctx's error.
func Run(ctx context.Context, sys System, reqs [][]Event, loop Loop, acks *Acks) (*RunResult, error) {
	p, err := Prepare(sys, reqs)
	if err != nil {
		return nil, err
	}
	return p.Run(ctx, loop, acks)
}

// Prepared is a run's requests, checked, and encoded when the system is a
// Preparer: what is left to do is to send them.
type Prepared struct {
	sys      System
	reqs     [][]Event
	batchMax int
	apply    func(ctx context.Context, i int, results []Result) error
}

// Prepare checks reqs and encodes them for sys (Preparer), so that a
// caller can measure the run alone (Prepared.Run).
func Prepare(sys System, reqs [][]Event) (*Prepared, error) {
	p := &Prepared{sys: sys, reqs: reqs}
	for i, r := range reqs {
		if len(r) == 0 || len(r) > batchEventsMax {
			return nil, fmt.Errorf("run: request %d has %d events, want 1..%d", i, len(r), batchEventsMax)
		}
		p.batchMax = max(p.batchMax, len(r))
	}
	p.apply = func(ctx context.Context, i int, results []Result) error { return sys.Apply(ctx, reqs[i], results) }
	if pr, ok := sys.(Preparer); ok {
		apply, err := pr.Prepare(reqs)
		if err != nil {
			return nil, fmt.Errorf("run: prepare: %w", err)
		}
		p.apply = apply
	}
	return p, nil
}

// Run is Run of the prepared requests.
func (p *Prepared) Run(ctx context.Context, loop Loop, acks *Acks) (*RunResult, error) {
	if err := loop.validate(); err != nil {
		return nil, err
	}
	if acks == nil {
		return nil, errors.New("run: acks is nil")
	}
	r := newRunner(p.sys, p.reqs, loop, acks, p.batchMax)
	r.apply = p.apply
	stopProgress := r.progress()
	var wg sync.WaitGroup
	clients := make([]*client, loop.Clients)
	for i := range clients {
		clients[i] = r.newClient()
		wg.Add(1)
		go func() { defer wg.Done(); clients[i].run(ctx) }()
	}
	wg.Wait()
	stopProgress()
	return r.result(clients, time.Since(r.measureStart)), ctx.Err()
}

// runner is the state clients share: the requests and their schedule, the
// next request's index, and the per-second histograms.
type runner struct {
	sys          System
	reqs         [][]Event
	loop         Loop
	acks         *Acks
	batchMax     int
	start        time.Time
	measureStart time.Time
	end          time.Time       // no request is sent at or after it; zero: none
	due          []time.Duration // open loop: request i's intended send time from start
	next         atomic.Int64
	// apply sends request i (Prepared.apply).
	apply func(ctx context.Context, i int, results []Result) error

	mu      sync.Mutex
	seconds []*secondStats // by second of the measured part, filled as clients flush
}

type secondStats struct {
	events int64
	lat    *hdrhistogram.Histogram
}

func newRunner(sys System, reqs [][]Event, loop Loop, acks *Acks, batchMax int) *runner {
	r := &runner{sys: sys, reqs: reqs, loop: loop, acks: acks, batchMax: batchMax}
	if loop.Rate > 0 {
		r.due = make([]time.Duration, len(reqs))
		events := 0
		for i, req := range reqs {
			r.due[i] = time.Duration(float64(events) / loop.Rate * float64(time.Second))
			events += len(req)
		}
	}
	r.start = time.Now()
	r.measureStart = r.start.Add(loop.Warmup)
	if loop.Duration > 0 {
		r.end = r.measureStart.Add(loop.Duration)
	}
	return r
}

// take returns the next request's index and its intended send time, or
// false when the run is over.
func (r *runner) take(ctx context.Context) (int, time.Time, bool) {
	if ctx.Err() != nil {
		return 0, time.Time{}, false
	}
	i := r.next.Add(1) - 1
	if r.loop.Cycle {
		i %= int64(len(r.reqs))
	}
	if i >= int64(len(r.reqs)) {
		return 0, time.Time{}, false
	}
	at := time.Now()
	if r.due != nil {
		at = r.start.Add(r.due[i])
	}
	if !r.end.IsZero() && !at.Before(r.end) {
		return 0, time.Time{}, false
	}
	return int(i), at, true
}

// flush adds one client's counts for second s.
func (r *runner) flush(s int, events int64, lat *hdrhistogram.Histogram) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.seconds) <= s {
		r.seconds = append(r.seconds, nil)
	}
	if r.seconds[s] == nil {
		r.seconds[s] = &secondStats{lat: newSecondHistogram()}
	}
	r.seconds[s].events += events
	r.seconds[s].lat.Merge(lat)
}

// second returns second s as measured so far.
func (r *runner) second(s int) Second {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := Second{At: time.Duration(s+1) * time.Second}
	if s < len(r.seconds) && r.seconds[s] != nil {
		st := r.seconds[s]
		out.Events = st.events
		out.P50 = time.Duration(st.lat.ValueAtQuantile(50)) * time.Microsecond
		out.P99 = time.Duration(st.lat.ValueAtQuantile(99)) * time.Microsecond
	}
	return out
}

// progress prints each measured second's line loopProgressLag after it
// ends (a client flushes a second when its next answer comes: a request
// still in flight then is missing from the line, never from PerSecond),
// until the returned stop is called.
func (r *runner) progress() (stop func()) {
	if r.loop.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for s := 0; ; s++ {
			wait := time.Until(r.measureStart.Add(time.Duration(s+1)*time.Second + loopProgressLag))
			select {
			case <-done:
				return
			case <-time.After(wait):
			}
			sec := r.second(s)
			fmt.Fprintf(r.loop.Progress, "t=%ds %d events/s p50 %v p99 %v\n", s+1, sec.Events, sec.P50, sec.P99)
		}
	}()
	return func() { close(done); <-finished }
}

func (r *runner) result(clients []*client, elapsed time.Duration) *RunResult {
	res := &RunResult{System: r.sys.Name(), Latency: newLatencyHistogram(), Elapsed: max(0, elapsed)}
	for _, c := range clients {
		res.Requests += c.requests
		res.Events += c.events
		for i, n := range c.byStatus {
			res.ByStatus[i] += n
		}
		res.Errors += c.errors
		res.WarmupRequests += c.warmup
		for _, e := range c.errorsKept {
			if len(res.ErrorsKept) < loopErrorsKeptMax {
				res.ErrorsKept = append(res.ErrorsKept, e)
			}
		}
		res.Latency.Merge(c.lat)
	}
	res.PerSecond = make([]Second, len(r.seconds))
	for s := range r.seconds {
		res.PerSecond[s] = r.second(s)
	}
	return res
}

func newLatencyHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(latencyUsMin, latencyUsMax, latencyDigits)
}

func newSecondHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(latencyUsMin, latencyUsMax, secondLatencyDigits)
}

// client is one request in flight at a time. Only its goroutine writes it
// until Run merges it.
type client struct {
	r       *runner
	results []Result

	requests, events, errors, warmup int64
	byStatus                         [StatusRejected + 1]int64
	errorsKept                       []string
	lat                              *hdrhistogram.Histogram

	second      int // the second secLat and secEvents are of; -1: none yet
	secLat      *hdrhistogram.Histogram
	secEvents   int64
	secRecorded bool
}

func (r *runner) newClient() *client {
	return &client{r: r, results: make([]Result, r.batchMax), lat: newLatencyHistogram(),
		secLat: newSecondHistogram(), second: -1}
}

func (c *client) run(ctx context.Context) {
	defer c.flushSecond()
	for {
		i, at, ok := c.r.take(ctx)
		if !ok {
			return
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		c.apply(ctx, i, at)
	}
}

// apply sends request i, intended at at, acknowledges its answer and,
// past the warmup, measures it.
func (c *client) apply(ctx context.Context, i int, at time.Time) {
	events := c.r.reqs[i]
	results := c.results[:len(events)]
	clear(results)
	err := c.r.apply(ctx, i, results)
	done := time.Now()
	switch {
	case c.r.loop.Cycle:
	case err != nil:
		c.r.acks.Unanswered(events)
	default:
		c.r.acks.Ack(events, results)
	}
	if at.Before(c.r.measureStart) {
		c.warmup++
		return
	}
	c.requests++
	if err != nil {
		c.errors++
		if len(c.errorsKept) < loopErrorsKeptMax {
			c.errorsKept = append(c.errorsKept, err.Error())
		}
		return
	}
	c.events += int64(len(events))
	for _, res := range results {
		st := res.Status
		if int(st) >= len(c.byStatus) {
			st = StatusUnknown
		}
		c.byStatus[st]++
	}
	us := min(max(done.Sub(at).Microseconds(), latencyUsMin), latencyUsMax)
	c.lat.RecordValue(us)
	c.recordSecond(int(done.Sub(c.r.measureStart)/time.Second), us, int64(len(events)))
}

// recordSecond counts one answer in second s, handing the last second's
// counts to the runner when s is a new one (one lock per client per second,
// not per request).
func (c *client) recordSecond(s int, us, events int64) {
	s = min(s, loopSecondsMax) // a run's last answers may come after its end
	if s != c.second {
		c.flushSecond()
		c.second = s
	}
	c.secLat.RecordValue(us)
	c.secEvents += events
	c.secRecorded = true
}

func (c *client) flushSecond() {
	if !c.secRecorded {
		return
	}
	c.r.flush(c.second, c.secEvents, c.secLat)
	c.secLat.Reset()
	c.secEvents, c.secRecorded = 0, false
}
