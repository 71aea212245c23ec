// Command meterbench is the load generator and benchmark runner of meterd.
//
// It drives a running meterd over HTTP: it sets up pricing and customers
// (unless --setup=false), then runs --concurrency clients that each post
// batches of --batch usage events to /v1/events in a loop for --duration
// (or --requests requests) after a --warmup that is not counted, and prints
// a report: throughput, per-event results, HTTP statuses, latency
// percentiles, and the server's commit-group size and commit time over the
// run, read from its /metrics.
//
// meterbench only talks to loopback (127.0.0.0/8, ::1, localhost): it is a
// benchmark of the engine, never a load test against someone else's host.
//
// It exits 1 when a request failed with a status other than 200 or 503/429
// (retried), when a request got no answer, or when an event was rejected for
// any reason but insufficient_funds; 2 on bad flags or a failed setup.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// Limits of the flags: past them a value is a typo, not a benchmark.
const (
	customersMax   = 10_000_000
	batchMax       = 10_000 // meterd's default --events-per-request-max
	concurrencyMax = 4096
	durationMax    = 24 * time.Hour
	warmupMax      = time.Hour
	runIDLenMax    = 64 // leaves room in the 128-char event id for "-<client>-<n>"
	requestTimeout = 30 * time.Second
	responseMax    = 64 << 20
)

type config struct {
	target      *url.URL
	addr        string // host:port for the HostClient
	apiKey      string
	customers   int
	setup       bool
	batch       int
	concurrency int
	duration    time.Duration
	requests    int64
	warmup      time.Duration
	ndjson      bool
	runID       string
	jsonOut     bool
	flags       map[string]string // every flag as used, for the report
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meterbench:", err)
		os.Exit(2)
	}
	rep, err := run(cfg, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "meterbench:", err)
		os.Exit(2)
	}
	rep.writeText(os.Stdout)
	if cfg.jsonOut {
		if err := rep.writeJSON(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "meterbench:", err)
			os.Exit(2)
		}
	}
	if rep.Failed {
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("meterbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{}
	target := fs.String("target", "http://127.0.0.1:8080", "meterd base URL (loopback only)")
	fs.StringVar(&cfg.apiKey, "api-key", "", "API key sent as Authorization: Bearer (needs ingest and admin scopes with --setup)")
	fs.IntVar(&cfg.customers, "customers", 10000, "customers the events are spread over (ids mb-c0..)")
	fs.BoolVar(&cfg.setup, "setup", true, "PUT the pricing and every customer, and top each up, before the run")
	fs.IntVar(&cfg.batch, "batch", 100, "events per request")
	fs.IntVar(&cfg.concurrency, "concurrency", 64, "concurrent clients, one connection each")
	fs.DurationVar(&cfg.duration, "duration", 20*time.Second, "measured run time after the warm-up (0 = bounded by --requests only)")
	fs.Int64Var(&cfg.requests, "requests", 0, "stop after this many measured requests (0 = bounded by --duration only)")
	fs.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "load before the measurement starts, not counted")
	fs.BoolVar(&cfg.ndjson, "ndjson", false, "send application/x-ndjson bodies instead of JSON batches")
	fs.StringVar(&cfg.runID, "run-id", "", "prefix of the event ids (default: random, so runs never collide)")
	fs.BoolVar(&cfg.jsonOut, "json", false, "print the report as JSON too, after the text")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	durationSet := false
	fs.Visit(func(f *flag.Flag) { durationSet = durationSet || f.Name == "duration" })
	if cfg.requests > 0 && !durationSet {
		cfg.duration = 0 // --requests alone bounds the run
	}

	u, addr, err := loopbackTarget(*target)
	if err != nil {
		return nil, err
	}
	cfg.target, cfg.addr = u, addr
	switch {
	case cfg.customers < 1 || cfg.customers > customersMax:
		return nil, fmt.Errorf("--customers must be 1..%d", customersMax)
	case cfg.batch < 1 || cfg.batch > batchMax:
		return nil, fmt.Errorf("--batch must be 1..%d", batchMax)
	case cfg.concurrency < 1 || cfg.concurrency > concurrencyMax:
		return nil, fmt.Errorf("--concurrency must be 1..%d", concurrencyMax)
	case cfg.duration < 0 || cfg.duration > durationMax:
		return nil, fmt.Errorf("--duration must be 0..%s", durationMax)
	case cfg.warmup < 0 || cfg.warmup > warmupMax:
		return nil, fmt.Errorf("--warmup must be 0..%s", warmupMax)
	case cfg.requests < 0:
		return nil, errors.New("--requests must not be negative")
	case cfg.duration == 0 && cfg.requests == 0:
		return nil, errors.New("the run needs a bound: --duration or --requests")
	}
	if cfg.runID == "" {
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		cfg.runID = "mb" + hex.EncodeToString(b[:])
	}
	if !validRunID(cfg.runID) {
		return nil, fmt.Errorf("--run-id must be 1..%d characters of [A-Za-z0-9._:-]", runIDLenMax)
	}
	cfg.flags = map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		v := f.Value.String()
		if f.Name == "api-key" && v != "" {
			v = "(set)"
		}
		cfg.flags[f.Name] = v
	})
	cfg.flags["run-id"] = cfg.runID
	cfg.flags["duration"] = cfg.duration.String()
	return cfg, nil
}

// loopbackTarget parses --target and refuses any host that is not loopback:
// meterbench must never load another machine.
func loopbackTarget(s string) (*url.URL, string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, "", fmt.Errorf("--target: %w", err)
	}
	if u.Scheme != "http" {
		return nil, "", fmt.Errorf("--target %q: only http:// is supported", s)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, "", fmt.Errorf("--target %q: give only scheme, host and port", s)
	}
	host := u.Hostname()
	if !isLoopback(host) {
		return nil, "", fmt.Errorf("--target %q: host %q is not loopback (127.0.0.0/8, ::1, localhost); meterbench only loads this machine", s, host)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	u.Path = ""
	return u, net.JoinHostPort(host, port), nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func validRunID(s string) bool {
	if len(s) < 1 || len(s) > runIDLenMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// run sets up (unless told not to), drives the load and builds the report.
// An error means the benchmark could not be run at all.
func run(cfg *config, progress io.Writer) (*report, error) {
	hc := &fasthttp.HostClient{
		Addr:                cfg.addr,
		Name:                "meterbench",
		MaxConns:            cfg.concurrency + setupWorkersMax + 1,
		MaxConnWaitTimeout:  requestTimeout,
		ReadTimeout:         requestTimeout,
		WriteTimeout:        requestTimeout,
		MaxIdleConnDuration: time.Minute,
		MaxResponseBodySize: responseMax,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
	}
	defer hc.CloseIdleConnections()
	customers := customerIDs(cfg.customers)
	rep := newReport(cfg)

	if cfg.setup {
		fmt.Fprintf(progress, "meterbench: setting up pricing and %d customers on %s\n", cfg.customers, cfg.target)
		t := time.Now()
		if err := setup(cfg, hc, customers); err != nil {
			return nil, fmt.Errorf("setup: %w", err)
		}
		rep.SetupSeconds = time.Since(t).Seconds()
	}

	rs := &runState{requestsMax: cfg.requests}
	rs.requestsLeft.Store(cfg.requests)
	start := time.Now()
	measureStart := start.Add(cfg.warmup)
	rs.measureStartNs.Store(measureStart.UnixNano())
	if cfg.duration > 0 {
		rs.stopNs = measureStart.Add(cfg.duration).UnixNano()
	}

	// SIGINT or SIGTERM ends the run early; the report still prints.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-sig:
			rs.stopped.Store(true)
		case <-done:
		}
	}()

	var before commitStats
	var beforeErr error
	if cfg.warmup == 0 {
		before, beforeErr = scrapeMetrics(cfg, hc)
	}
	fmt.Fprintf(progress, "meterbench: run %s: %d clients, %d events/request, warm-up %s, duration %s, requests %d\n",
		cfg.runID, cfg.concurrency, cfg.batch, cfg.warmup, cfg.duration, cfg.requests)
	clients := make([]*client, cfg.concurrency)
	var wg sync.WaitGroup
	for i := range clients {
		clients[i] = newClient(i, cfg, hc, customers)
		wg.Go(func() { clients[i].run(rs) })
	}
	if cfg.warmup > 0 {
		time.Sleep(time.Until(measureStart))
		before, beforeErr = scrapeMetrics(cfg, hc)
	}
	wg.Wait()
	end := time.Now()
	after, afterErr := scrapeMetrics(cfg, hc)

	elapsed := end.Sub(measureStart)
	if elapsed <= 0 { // interrupted during the warm-up
		elapsed = time.Nanosecond
	}
	var total clientStats
	total.byStatus = map[int]uint64{}
	total.byResult = map[string]uint64{}
	for _, c := range clients {
		total.merge(&c.st)
	}
	rep.fill(&total, elapsed)
	rep.server(before, after, errors.Join(beforeErr, afterErr), elapsed)
	return rep, nil
}

// merge adds o into s.
func (s *clientStats) merge(o *clientStats) {
	s.lat.merge(&o.lat)
	s.latE2E.merge(&o.latE2E)
	s.requests += o.requests
	s.events += o.events
	s.retries += o.retries
	s.transport += o.transport
	s.malformed += o.malformed
	for k, v := range o.byStatus {
		s.byStatus[k] += v
	}
	for k, v := range o.byResult {
		s.byResult[k] += v
	}
	for _, e := range o.errs {
		s.noteErr(e)
	}
}

// procs reports the generator's own CPU view, for the report.
func procs() (gomaxprocs, numCPU int) { return runtime.GOMAXPROCS(0), runtime.NumCPU() }
