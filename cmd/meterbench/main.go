// Command meterbench is meterd's benchmark: the same usage events applied to
// meterd and to the wallets a team would build instead (PostgreSQL and
// Redis, each durable before it answers), one system at a time on this
// machine, each run ending with a correctness check. It is the command line
// of package bench, which holds the systems, the load loops and the checker.
//
//	meterbench                        the standard suite (make bench)
//	meterbench --suite quick          the same in about two minutes (make bench-quick)
//	meterbench --modes zipf,ndjson    other modes; --systems picks the systems
//	meterbench --target URL ...       one custom mode against a meterd already running
//	meterbench compare A.json B.json  each meterd/X ratio of two suites, side by side
//	meterbench report [--publish] DIR/suite.json  the table and plots again, from a suite's JSON
//	meterbench noop-server --listen A the no-op endpoint (meterbench starts it itself)
//
// A suite writes --out (default bench/results/<date>[-quick]): suite.json
// (every run, its per-second series, CPU and check), runs/<mode>-<system>.json
// (one run each), table.md (the same-run table with ratios), suite.png and
// suite.svg (throughput and p50/p99 over time). --publish puts the table at
// the top of BENCHMARKS.md and the plot at bench/results/standard.{png,svg},
// which the README shows.
//
// meterbench only talks to loopback: it starts its own servers on
// 127.0.0.1, and --target must be a loopback URL.
//
// It exits 1 when a run failed or its check found a problem, 2 on bad flags.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/meterd/meterd/bench"
)

// Limits of the flags: past them a value is a typo, not a benchmark.
const (
	customersMax   = 10_000_000
	batchMax       = 1000 // bench's events per request
	concurrencyMax = 4096
	durationMax    = 24 * time.Hour
	runIDLenMax    = 32
	rateMax        = 10_000_000
	roundsMax      = 100
	// quickCustomersMax bounds the customers of a quick suite's modes: set
	// up and checked in a second or two, not ten.
	quickCustomersMax = 1000
)

type config struct {
	suite      bench.SuiteConfig
	out        string
	publish    bool
	benchMD    string // BENCHMARKS.md
	publishDir string // where the published plot goes
	jsonOut    bool
	cpuProfile string
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "noop-server":
			os.Exit(noopServer(os.Args[2:]))
		case "compare":
			os.Exit(compare(os.Args[2:], os.Stdout, os.Stderr))
		case "report":
			os.Exit(report(os.Args[2:], os.Stderr))
		}
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meterbench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := runSuite(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "meterbench:", err)
	}
	os.Exit(code)
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("meterbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{}
	suite := fs.String("suite", "standard", "standard (20 s per run) or quick (3 s per run, 1,000 customers)")
	systems := fs.String("systems", "", "systems to run, comma-separated (default every one): "+strings.Join(bench.AllSystems, ", "))
	modes := fs.String("modes", "", "modes to run, comma-separated (default the suite's: batch,single,hot,open; more: zipf,ndjson,kafka)")
	duration := fs.Duration("duration", 0, "measured time of each run (default: the suite's)")
	warmup := fs.Duration("warmup", -1, "load before each run's measurement, not counted (default: the suite's)")
	rounds := fs.Int("rounds", 0, "turns each system takes per mode, each of duration/rounds on a fresh start, the systems alternating (default: the suite's: standard 2, quick 1)")
	fs.StringVar(&cfg.out, "out", "", "results directory (default bench/results/<date>, or <date>-quick)")
	fs.BoolVar(&cfg.publish, "publish", false, "put the table at the top of --benchmarks-md and the plot in bench/results/standard.{png,svg}")
	fs.StringVar(&cfg.benchMD, "benchmarks-md", "BENCHMARKS.md", "the file --publish updates")
	meterdBin := fs.String("meterd-bin", "", "the meterd binary to start (default: meterd next to this binary, then in PATH)")
	fs.BoolVar(&cfg.jsonOut, "json", false, "print suite.json to stdout too")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write the generator's CPU profile of the whole suite to this file")
	// One custom mode (any of these set): the old single-run interface.
	target := fs.String("target", "", "a running meterd to drive (loopback http URL) instead of starting one; runs meterd only")
	apiKey := fs.String("api-key", "", "API key for --target (ingest and admin scopes)")
	customers := fs.Int("customers", 10_000, "custom mode: customers")
	batch := fs.Int("batch", 100, "custom mode: events per request")
	concurrency := fs.Int("concurrency", 16, "custom mode: clients")
	rate := fs.Float64("rate", 0, "custom mode: events/s offered, open loop (0: closed loop)")
	dist := fs.String("dist", bench.DistUniform, "custom mode: uniform, zipf or hot")
	ndjson := fs.Bool("ndjson", false, "custom mode: send NDJSON bodies to meterd")
	runID := fs.String("run-id", "", "prefix of event and customer ids (default: random, so runs against one server never collide)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	s := &cfg.suite
	s.Name = *suite
	s.Command = "meterbench " + strings.Join(args, " ")
	switch *suite {
	case "standard":
		s.Duration, s.Warmup, s.Rounds, s.Modes = 20*time.Second, 3*time.Second, 2, slices.Clone(bench.StandardModes)
	case "quick":
		s.Duration, s.Warmup, s.Modes = 3*time.Second, time.Second, slices.Clone(bench.StandardModes)
	default:
		return nil, fmt.Errorf("--suite %q: want standard or quick", *suite)
	}
	if *duration != 0 {
		s.Duration = *duration
	}
	if *warmup >= 0 {
		s.Warmup = *warmup
	}
	if *rounds != 0 {
		s.Rounds = *rounds
	}
	if s.Rounds < 0 || s.Rounds > roundsMax || (s.Rounds > 0 && s.Duration/time.Duration(s.Rounds) < time.Second) {
		return nil, fmt.Errorf("--rounds must be 1..%d, with at least 1s of --duration each", roundsMax)
	}
	if s.Duration <= 0 || s.Duration > durationMax || s.Warmup > durationMax {
		return nil, fmt.Errorf("--duration must be in (0, %v] and --warmup at most that", durationMax)
	}
	if *modes != "" {
		s.Modes = nil
		for _, name := range strings.Split(*modes, ",") {
			m, ok := bench.ModeByName(name)
			if !ok {
				return nil, fmt.Errorf("--modes: unknown mode %q", name)
			}
			s.Modes = append(s.Modes, m)
		}
	}
	if *suite == "quick" {
		for i := range s.Modes {
			s.Modes[i].Customers = min(s.Modes[i].Customers, quickCustomersMax)
		}
	}
	s.Systems = slices.Clone(bench.AllSystems)
	if *systems != "" {
		s.Systems = strings.Split(*systems, ",")
	}
	custom := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "customers", "batch", "concurrency", "rate", "dist", "ndjson", "target":
			custom = true
		}
	})
	if custom {
		m, err := customMode(*customers, *batch, *concurrency, *rate, *dist, *ndjson)
		if err != nil {
			return nil, err
		}
		s.Modes, s.Name = []bench.Mode{m}, "custom"
	}
	if *runID == "" {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		*runID = "mb" + hex.EncodeToString(b[:])
	}
	if !validRunID(*runID) {
		return nil, fmt.Errorf("--run-id must be 1..%d characters of [A-Za-z0-9]", runIDLenMax)
	}
	s.RunID = *runID
	if *target != "" {
		u, err := loopbackTarget(*target)
		if err != nil {
			return nil, err
		}
		s.MeterdTarget, s.MeterdKey = u, *apiKey
		s.Systems = []string{bench.SysMeterd}
		s.CustomerPrefix = *runID + "-c"
	}
	if slices.Contains(s.Systems, bench.SysMeterd) && s.MeterdTarget == "" {
		bin, err := findMeterd(*meterdBin)
		if err != nil {
			return nil, err
		}
		s.MeterdBin = bin
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	s.NoopCommand = []string{self, "noop-server"}
	if cfg.out == "" {
		day := time.Now().UTC().Format("2006-01-02")
		if s.Name != "standard" {
			day += "-" + s.Name
		}
		cfg.out = filepath.Join("bench", "results", day)
	}
	cfg.publishDir = filepath.Join(filepath.Dir(cfg.benchMD), "bench", "results")
	return cfg, nil
}

// customMode is the mode the custom flags describe.
func customMode(customers, batch, concurrency int, rate float64, dist string, ndjson bool) (bench.Mode, error) {
	m := bench.Mode{Name: "custom", Customers: customers, Dist: dist, Batch: batch, Clients: concurrency,
		Rate: rate, EventsPerSecondMax: 200_000}
	if ndjson {
		m.Transport = bench.TransportNDJSON
	}
	switch {
	case m.Customers < 1 || m.Customers > customersMax:
		return m, fmt.Errorf("--customers must be 1..%d", customersMax)
	case m.Batch < 1 || m.Batch > batchMax:
		return m, fmt.Errorf("--batch must be 1..%d", batchMax)
	case m.Clients < 1 || m.Clients > concurrencyMax:
		return m, fmt.Errorf("--concurrency must be 1..%d", concurrencyMax)
	case rate < 0 || rate > rateMax:
		return m, fmt.Errorf("--rate must be 0..%d", rateMax)
	case m.Dist != bench.DistUniform && m.Dist != bench.DistZipf && m.Dist != bench.DistHot:
		return m, fmt.Errorf("--dist %q: want uniform, zipf or hot", m.Dist)
	}
	return m, nil
}

// findMeterd returns the meterd binary: the flag's, else the one next to
// this binary (make builds both into bin/), else meterd in PATH.
func findMeterd(flagged string) (string, error) {
	if flagged != "" {
		return filepath.Abs(flagged)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "meterd")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("meterd"); err == nil {
		return filepath.Abs(p)
	}
	return "", errors.New("no meterd binary: build one (make build puts it in bin/, next to meterbench) or pass --meterd-bin")
}

// loopbackTarget parses --target and refuses any host that is not loopback:
// meterbench must never load another machine.
func loopbackTarget(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("--target: %w", err)
	}
	if u.Scheme != "http" {
		return "", fmt.Errorf("--target %q: only http:// is supported", s)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("--target %q: give only scheme, host and port", s)
	}
	host := u.Hostname()
	if !isLoopback(host) {
		return "", fmt.Errorf("--target %q: host %q is not loopback (127.0.0.0/8, ::1, localhost); meterbench only loads this machine", s, host)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return "http://" + net.JoinHostPort(host, port), nil
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
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// runSuite runs the suite and writes its results; the exit code is 1 when a
// run failed or a check found a problem.
func runSuite(ctx context.Context, cfg *config, stdout io.Writer) (int, error) {
	work, err := os.MkdirTemp("", "meterbench-")
	if err != nil {
		return 2, err
	}
	defer os.RemoveAll(work)
	// Searchable by others: PostgreSQL runs as its own user when this runs
	// as root, and its cluster lives under work.
	if err := os.Chmod(work, 0o755); err != nil {
		return 2, err
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return 2, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 2, err
		}
		defer pprof.StopCPUProfile()
	}
	cfg.suite.Dir = work
	cfg.suite.Progress = os.Stderr
	cfg.suite.Log = os.Stderr
	rep, err := bench.RunSuite(ctx, cfg.suite)
	if rep == nil {
		return 2, err
	}
	if werr := writeResults(cfg, rep); werr != nil {
		return 2, errors.Join(err, werr)
	}
	fmt.Fprintf(os.Stderr, "meterbench: results in %s\n", cfg.out)
	if err := bench.WriteMarkdown(stdout, rep, ""); err != nil {
		return 2, err
	}
	if cfg.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return 2, err
		}
	}
	if err != nil {
		return 1, err
	}
	for _, r := range rep.Runs {
		if r.Failed != "" || !r.Check.OK {
			return 1, fmt.Errorf("%s/%s failed or did not check out: see %s", r.Mode, r.System, filepath.Join(cfg.out, "table.md"))
		}
	}
	return 0, nil
}
