package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// A suite runs a list of modes (a workload and a load loop each) against a
// list of systems, one system at a time: for each mode, each system is
// started fresh in a directory of its own, set up, loaded, checked and
// stopped before the next one starts, so no system ever shares the machine
// with another. Modes are the outer loop, so that the systems a ratio
// compares ran minutes apart, not the whole suite apart.

// The systems a suite knows, by their report names.
const (
	SysMeterd         = "meterd"
	SysNoop           = "noop" // the generator's floor: an endpoint that does nothing
	SysRedisAlways    = "redis-always"
	SysRedisEverysec  = "redis-everysec" // not durable per event: labelled so in every report
	SysPostgresPlain  = "postgres-plain"
	SysPostgresStrong = "postgres-strong"
)

// AllSystems is every system, in report order.
var AllSystems = []string{SysMeterd, SysNoop, SysRedisAlways, SysRedisEverysec, SysPostgresPlain, SysPostgresStrong}

// Transports of meterd (the baselines have one each, their own protocol).
const (
	TransportJSON   = "json"   // a JSON batch per request (POST /v1/events)
	TransportNDJSON = "ndjson" // an NDJSON body per request
	TransportKafka  = "kafka"  // one message per event on the input topic, answered when its ledger entry is published
)

// Mode is one workload of a suite.
type Mode struct {
	Name      string
	Customers int
	Dist      string  // DistUniform, DistZipf or DistHot
	Batch     int     // events per request
	Clients   int     // requests in flight at most
	Rate      float64 // events/s offered; 0: closed loop
	Transport string  // meterd's: TransportJSON (default), TransportNDJSON or TransportKafka
	// Lifecycle runs meterd under the lifecycle mix (MeterdLifecycle): a
	// daily plan per customer, the test clock moved a day every
	// LifecycleDayEvery, holds settled by one event in HoldEvery, top-ups.
	Lifecycle bool
	HoldEvery int
	// Only lists the systems the mode runs on (nil: every system of the
	// suite); a mode about meterd's own transports compares nothing else.
	Only []string
	// EventsPerSecondMax sizes the events generated before a closed-loop
	// run: (Warmup + Duration) x this. A system faster than that runs out
	// of events and its run ends early (its throughput is still right: it
	// is measured over the time it ran).
	EventsPerSecondMax float64
}

// The standard modes: the suite.
var (
	ModeBatch  = Mode{Name: "batch", Customers: 10_000, Dist: DistUniform, Batch: 100, Clients: 16, EventsPerSecondMax: 200_000}
	ModeSingle = Mode{Name: "single", Customers: 10_000, Dist: DistUniform, Batch: 1, Clients: 64, EventsPerSecondMax: 80_000}
	ModeHot    = Mode{Name: "hot", Customers: 1, Dist: DistHot, Batch: 100, Clients: 16, EventsPerSecondMax: 200_000}
	ModeOpen   = Mode{Name: "open", Customers: 10_000, Dist: DistUniform, Batch: 1, Clients: 256, Rate: 5000}
	ModeZipf   = Mode{Name: "zipf", Customers: 10_000, Dist: DistZipf, Batch: 100, Clients: 16, EventsPerSecondMax: 200_000}
	ModeNDJSON = Mode{Name: "ndjson", Customers: 10_000, Dist: DistUniform, Batch: 100, Clients: 16, Transport: TransportNDJSON,
		Only: []string{SysMeterd}, EventsPerSecondMax: 200_000}
	ModeLifecycle = Mode{Name: "lifecycle", Customers: 10_000, Dist: DistUniform, Batch: 100, Clients: 16, Lifecycle: true,
		HoldEvery: 100, Only: []string{SysMeterd}, EventsPerSecondMax: 200_000}
	ModeKafka = Mode{Name: "kafka", Customers: 10_000, Dist: DistUniform, Batch: 100, Clients: 16, Transport: TransportKafka,
		Only: []string{SysMeterd}, EventsPerSecondMax: 200_000}

	StandardModes = []Mode{ModeBatch, ModeSingle, ModeHot, ModeOpen}
	// ExtraModes are the modes outside the standard suite, by name.
	ExtraModes = []Mode{ModeZipf, ModeNDJSON, ModeKafka, ModeLifecycle}
)

// ModeByName returns a known mode.
func ModeByName(name string) (Mode, bool) {
	for _, m := range append(slices.Clone(StandardModes), ExtraModes...) {
		if m.Name == name {
			return m, true
		}
	}
	return Mode{}, false
}

// Bounds of a suite.
const (
	suiteBalance         = 1_000_000_000_000 // micro-USD each customer starts with (1M USD): nothing is refused for funds
	suiteSetupTimeout    = 10 * time.Minute
	suiteCheckTimeout    = 10 * time.Minute
	suiteEventsMin       = 10_000 // a closed-loop run generates at least this many events
	kafkaBenchPartitions = 8      // of the input topic, as meterd's Kafka tests use
	kafkaSinkBatchAge    = "20ms" // meterd's --sink-batch-age in the kafka mode
)

// SuiteConfig is what RunSuite runs, and with what.
type SuiteConfig struct {
	Name     string // the report's Suite
	Command  string // the command line, for the report
	Systems  []string
	Modes    []Mode
	Duration time.Duration // each run's measured part, all rounds together
	// Rounds splits each system's run in a mode into this many runs of
	// Duration/Rounds, the systems taking turns (A B C, A B C), each round
	// on a system started fresh; a system's rounds are reported as one run.
	// Taking turns spreads every system over the same stretch of time, so
	// that a machine that slows down for a minute (a shared one does)
	// slows all of them, not the one whose turn it was. 0 is 1.
	Rounds int
	Warmup time.Duration
	Dir    string // the servers' directories go under it (one per run, removed after it)

	MeterdBin  string   // the meterd binary to start
	MeterdArgs []string // more flags for it
	// MeterdTarget is a running meterd to drive instead of starting one
	// (http://127.0.0.1:PORT); MeterdKey its API key. Its CPU is not
	// measured, and its state outlives the run: give each suite its own
	// RunID and CustomerPrefix (each run of a suite adds its number to
	// both).
	MeterdTarget, MeterdKey string
	RunID                   string // prefix of every event id (with the mode and run number)
	CustomerPrefix          string // of every customer id; "" is "bc-"
	// NoopCommand starts the no-op endpoint: argv, to which RunSuite adds
	// "--listen 127.0.0.1:PORT" (cmd/meterbench: itself, "noop-server").
	NoopCommand []string

	Progress io.Writer // per-second lines of each run; nil: none
	Log      io.Writer // a line per phase of each run; nil: none
}

// RunSuite runs every mode against every system and returns the report. A
// run that fails (a server that does not start, a setup error) is reported
// with Failed set and the suite goes on; the error returned is only for a
// cancelled ctx or a bad config.
func RunSuite(ctx context.Context, cfg SuiteConfig) (*SuiteReport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	rep := &SuiteReport{Suite: cfg.Name, Started: time.Now().UTC(), Command: cfg.Command, Machine: ThisMachine(),
		Rounds: cfg.rounds()}
	slice := cfg.Duration / time.Duration(cfg.rounds())
	seq := 0
	for _, mode := range cfg.Modes {
		var systems []string
		for _, sys := range cfg.Systems {
			if mode.Only == nil || slices.Contains(mode.Only, sys) {
				systems = append(systems, sys)
			}
		}
		turns := make([][]RunReport, len(systems))
		for range cfg.rounds() {
			for i, sys := range systems {
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				turns[i] = append(turns[i], cfg.runOne(ctx, mode, sys, seq, slice))
				seq++
			}
		}
		for i := range systems {
			rep.Runs = append(rep.Runs, mergeRounds(turns[i], cfg.Duration))
		}
	}
	return rep, ctx.Err()
}

func (cfg *SuiteConfig) rounds() int { return max(1, cfg.Rounds) }

// mergeRounds makes one run of a system's rounds in a mode: their counts,
// CPU and checks added up, their latencies merged (the histograms), their
// seconds one after the other.
func mergeRounds(rounds []RunReport, duration time.Duration) RunReport {
	m := rounds[0]
	if len(rounds) == 1 {
		return m
	}
	m.DurationS = duration.Seconds()
	m.PerSecond = slices.Clone(m.PerSecond)
	m.ErrorsKept = slices.Clone(m.ErrorsKept)
	m.Check.Problems = slices.Clone(m.Check.Problems)
	hist := newLatencyHistogram()
	if m.hist != nil {
		hist.Merge(m.hist)
	}
	offset := 0.0
	for _, sec := range m.PerSecond {
		offset = max(offset, sec.T)
	}
	for _, r := range rounds[1:] {
		m.Requests += r.Requests
		m.Events += r.Events
		m.Charged += r.Charged
		m.Duplicate += r.Duplicate
		m.Rejected += r.Rejected
		m.Errors += r.Errors
		m.ErrorsKept = append(m.ErrorsKept, r.ErrorsKept...)
		m.ElapsedS += r.ElapsedS
		m.ServerCPUS += r.ServerCPUS
		m.GeneratorCPUS += r.GeneratorCPUS
		if r.hist != nil {
			hist.Merge(r.hist)
		}
		last := offset
		for _, sec := range r.PerSecond {
			sec.T += offset
			last = max(last, sec.T)
			m.PerSecond = append(m.PerSecond, sec)
		}
		offset = last
		c := &m.Check
		c.OK = c.OK && r.Check.OK
		c.Customers = max(c.Customers, r.Check.Customers)
		c.EventsApplied += r.Check.EventsApplied
		c.EventsRejected += r.Check.EventsRejected
		c.EventsUnanswered += r.Check.EventsUnanswered
		c.UnansweredApplied += r.Check.UnansweredApplied
		c.EventsResent += r.Check.EventsResent
		c.ProblemsTotal += r.Check.ProblemsTotal
		c.Problems = append(c.Problems, r.Check.Problems...)
		if m.Failed == "" {
			m.Failed = r.Failed
		}
	}
	m.Rounds = len(rounds)
	if m.ElapsedS > 0 {
		m.EventsPerSecond = float64(m.Events) / m.ElapsedS
	}
	m.Latency = latencyOf(hist)
	m.ServerCPUPerMillion, m.GeneratorCPUPerMillion = 0, 0
	if m.Events > 0 {
		m.ServerCPUPerMillion = m.ServerCPUS / float64(m.Events) * 1e6
		m.GeneratorCPUPerMillion = m.GeneratorCPUS / float64(m.Events) * 1e6
	}
	return m
}

func (cfg *SuiteConfig) validate() error {
	if len(cfg.Systems) == 0 || len(cfg.Modes) == 0 {
		return errors.New("suite: no systems or no modes")
	}
	for _, s := range cfg.Systems {
		if !slices.Contains(AllSystems, s) {
			return fmt.Errorf("suite: unknown system %q: want one of %s", s, strings.Join(AllSystems, ", "))
		}
	}
	for _, m := range cfg.Modes {
		if err := (Scenario{Name: m.Name, Customers: m.Customers, Dist: m.Dist, Batch: m.Batch}).Validate(0); err != nil {
			return err
		}
		if err := (Loop{Clients: m.Clients, Duration: cfg.Duration, Warmup: cfg.Warmup, Rate: m.Rate}).validate(); err != nil {
			return fmt.Errorf("mode %s: %w", m.Name, err)
		}
	}
	if cfg.Duration <= 0 {
		return errors.New("suite: duration must be positive")
	}
	if slices.Contains(cfg.Systems, SysMeterd) && cfg.MeterdBin == "" && cfg.MeterdTarget == "" {
		return errors.New("suite: no meterd binary")
	}
	if cfg.MeterdTarget != "" {
		for _, m := range cfg.Modes {
			if m.Lifecycle || m.Transport == TransportKafka {
				return fmt.Errorf("suite: mode %s starts meterd with its own flags: not with a meterd already running", m.Name)
			}
		}
	}
	if slices.Contains(cfg.Systems, SysNoop) && len(cfg.NoopCommand) == 0 {
		return errors.New("suite: no no-op server command")
	}
	return nil
}

func (cfg *SuiteConfig) logf(format string, args ...any) {
	if cfg.Log != nil {
		fmt.Fprintf(cfg.Log, format+"\n", args...)
	}
}

// runOne runs one system in one mode, from start to stop.
func (cfg *SuiteConfig) runOne(ctx context.Context, mode Mode, sysName string, seq int, duration time.Duration) RunReport {
	rr := RunReport{Mode: mode.Name, System: sysName, Transport: transportOf(sysName, mode), Customers: mode.Customers,
		Dist: mode.Dist, Batch: mode.Batch, Clients: mode.Clients, RateOffered: mode.Rate,
		DurationS: duration.Seconds(), WarmupS: cfg.Warmup.Seconds(), Workload: workloadOf(mode), Rounds: 1}
	dir := filepath.Join(cfg.Dir, fmt.Sprintf("%02d-%s-%s", seq, mode.Name, sysName))
	defer os.RemoveAll(dir)
	fail := func(format string, args ...any) RunReport {
		rr.Failed = fmt.Sprintf(format, args...)
		cfg.logf("%s/%s: FAILED: %s", mode.Name, sysName, rr.Failed)
		return rr
	}

	cfg.logf("%s/%s: starting", mode.Name, sysName)
	sys, stop, err := cfg.start(sysName, mode, dir)
	if err != nil {
		return fail("start: %v", err)
	}
	defer func() {
		_ = sys.Close()
		if err := stop(); err != nil {
			cfg.logf("%s/%s: stop: %v", mode.Name, sysName, err)
		}
	}()

	prefix := cfg.CustomerPrefix
	if cfg.MeterdTarget != "" {
		// The server outlives the run: a run on customers an earlier
		// run charged would find that run's entries in their ledgers.
		prefix += runIDOf(mode, seq) + "-"
	}
	sc := Scenario{Name: mode.Name, Customers: mode.Customers, Dist: mode.Dist, Batch: mode.Batch, Seed: uint64(seq) + 1,
		HoldEvery: mode.HoldEvery, Prefix: prefix}
	initial := int64(suiteBalance)
	if mode.Lifecycle {
		initial = 0 // MeterdLifecycle's Balance counts the top-up as a credit
	}
	customers := sc.CustomerIDs()
	setupCtx, cancel := context.WithTimeout(ctx, suiteSetupTimeout)
	err = sys.Setup(setupCtx, customers, suiteBalance)
	cancel()
	if err != nil {
		return fail("setup: %v", err)
	}

	reqs := sc.Requests(cfg.RunID+runIDOf(mode, seq), cfg.requestsFor(mode, duration))
	acks := NewAcks(ResendRequestsDefault)
	loop := Loop{Clients: mode.Clients, Duration: duration, Warmup: cfg.Warmup, Rate: mode.Rate, Progress: cfg.Progress,
		Cycle: sysName == SysNoop && mode.Rate == 0}
	cfg.logf("%s/%s: %d customers set up; running %v (+%v warmup) with %d requests of %d events ready",
		mode.Name, sysName, len(customers), duration, cfg.Warmup, len(reqs), mode.Batch)

	prepared, err := Prepare(sys, reqs)
	if err != nil {
		return fail("%v", err)
	}
	runtime.GC() // the generation's garbage is not the run's
	server := StartCPU(sys.PIDs)
	gen := StartCPU(SelfPIDs)
	stopClock := func() (int, error) { return 0, nil }
	if l, ok := sys.(*MeterdLifecycle); ok {
		stopClock = l.Drive(ctx)
	}
	res, err := prepared.Run(ctx, loop, acks)
	days, clockErr := stopClock()
	if clockErr != nil {
		return fail("test clock: %v", clockErr)
	}
	if mode.Lifecycle {
		cfg.logf("%s/%s: the test clock moved %d days during the run", mode.Name, sysName, days)
	}
	genCPU, genErr := gen.Stop()
	serverCPU, serverErr := server.Stop()
	if err != nil {
		if res != nil {
			rr.fill(res)
		}
		return fail("run: %v", err)
	}
	rr.fill(res)
	rr.setCPU(serverCPU, serverErr, genCPU, genErr)

	if sysName == SysNoop {
		rr.Check = CheckSummary{OK: true}
		cfg.logf("%s/%s: %.0f events/s; no check (the no-op endpoint keeps nothing)", mode.Name, sysName, rr.EventsPerSecond)
		return rr
	}
	checkCtx, cancel := context.WithTimeout(ctx, suiteCheckTimeout)
	report := Check(checkCtx, sys, acks, customers, initial)
	cancel()
	rr.Check = summarize(&report)
	cfg.logf("%s/%s: %.0f events/s, p50 %.2f ms, p99 %.2f ms; check: %s", mode.Name, sysName,
		rr.EventsPerSecond, rr.Latency.P50, rr.Latency.P99, report.String())
	return rr
}

// requestsFor sizes a run's generated requests: what the open loop offers
// over the whole run, or the mode's ceiling for a closed loop.
func (cfg *SuiteConfig) requestsFor(m Mode, duration time.Duration) int {
	secs := (cfg.Warmup + duration).Seconds()
	rate := m.EventsPerSecondMax
	if m.Rate > 0 {
		rate = m.Rate
	}
	events := max(suiteEventsMin, int(math.Ceil(rate*secs)))
	if m.Rate > 0 {
		events = int(math.Ceil(rate*secs)) + m.Batch
	}
	return min(events/m.Batch+1, scenarioEventsMax/m.Batch)
}

// runIDOf makes event ids unique per run of a suite.
func runIDOf(m Mode, seq int) string { return "r" + strconv.Itoa(seq) + m.Name }

// workloadOf says what a mode does besides its events, for the report.
func workloadOf(m Mode) string {
	switch {
	case m.Lifecycle:
		return fmt.Sprintf("lifecycle mix: a daily plan per customer, meterd's test clock moved a day every %v (every plan expires and refills), "+
			"one event in %d settles a hold placed just before, a top-up every %d requests", LifecycleDayEvery, m.HoldEvery, LifecycleTopupEvery)
	case m.Transport == TransportKafka:
		return "meterd over Kafka: one message per event on the input topic; a request is answered when its events' ledger entries are published (produce-to-durable)"
	case m.Transport == TransportNDJSON:
		return "meterd over HTTP with NDJSON bodies"
	}
	return ""
}

func transportOf(sys string, m Mode) string {
	switch sys {
	case SysMeterd:
		if m.Transport == "" {
			return TransportJSON
		}
		return m.Transport
	case SysNoop:
		return TransportJSON
	case SysRedisAlways, SysRedisEverysec:
		return "redis"
	}
	return "postgres"
}

// start starts one system fresh in dir, and returns it with the stop of its
// servers.
func (cfg *SuiteConfig) start(name string, m Mode, dir string) (System, func() error, error) {
	conns := m.Clients
	switch name {
	case SysMeterd, SysNoop:
		if name == SysMeterd && cfg.MeterdTarget != "" {
			md, err := NewMeterd(cfg.MeterdTarget, cfg.MeterdKey, 0, max(conns, setupWorkers), meterdOptions(name, m)...)
			return md, func() error { return nil }, err
		}
		bin, args := cfg.MeterdBin, append([]string{"--data-dir", filepath.Join(dir, "data")}, cfg.MeterdArgs...)
		if name == SysNoop {
			bin, args = cfg.NoopCommand[0], cfg.NoopCommand[1:]
		}
		var kafka *KafkaBroker
		if name == SysMeterd && m.Lifecycle {
			args = append(args, "--test-clock")
		}
		if name == SysMeterd && m.Transport == TransportKafka {
			var err error
			if kafka, err = StartKafka(kafkaBenchPartitions); err != nil {
				return nil, nil, err
			}
			// A ledger entry is published by the outbox tailer, which batches
			// for --sink-batch-age (1 s by default): the answer a Kafka
			// producer gets waits for it, so the mode runs it short.
			args = append(args, "--kafka-brokers", strings.Join(kafka.Addrs(), ","), "--kafka-publish",
				"--sink-batch-age", kafkaSinkBatchAge)
		}
		srv, err := StartHTTPServer(name, dir, bin, args...)
		if err != nil {
			if kafka != nil {
				kafka.Close()
			}
			return nil, nil, err
		}
		stop := func() error {
			err := srv.Stop()
			if kafka != nil {
				kafka.Close()
			}
			return err
		}
		md, err := NewMeterd(srv.Base(), "", srv.PID(), max(conns, setupWorkers), meterdOptions(name, m)...)
		if err != nil {
			return nil, nil, errors.Join(err, stop())
		}
		if m.Lifecycle {
			return NewMeterdLifecycle(md), stop, nil
		}
		if kafka == nil {
			return md, stop, nil
		}
		mk, err := NewMeterdKafka(kafka.Addrs(), md)
		if err != nil {
			return nil, nil, errors.Join(err, stop())
		}
		return mk, stop, nil
	case SysRedisAlways, SysRedisEverysec:
		fsync := RedisFsyncAlways
		if name == SysRedisEverysec {
			fsync = RedisFsyncEverysec
		}
		srv, err := StartRedis(dir, fsync)
		if err != nil {
			return nil, nil, err
		}
		w, err := NewRedisWallet(srv.Addr(), name, RedisPID(srv.PID()), RedisConns(min(conns, redisConnsMax)))
		if err != nil {
			return nil, nil, errors.Join(err, srv.Stop())
		}
		return w, srv.Stop, nil
	default:
		srv, err := StartPostgres(dir)
		if err != nil {
			return nil, nil, err
		}
		mode := strings.TrimPrefix(name, "postgres-")
		dsn, err := srv.CreateDatabase(context.Background(), "bench")
		if err != nil {
			return nil, nil, errors.Join(err, srv.Stop())
		}
		w, err := NewPostgresWallet(dsn, mode, PostgresServerOf(srv), PostgresConns(min(conns, postgresConnsMax)))
		if err != nil {
			return nil, nil, errors.Join(err, srv.Stop())
		}
		return w, srv.Stop, nil
	}
}

func meterdOptions(name string, m Mode) []MeterdOption {
	var opts []MeterdOption
	if m.Transport == TransportNDJSON {
		opts = append(opts, MeterdNDJSON())
	}
	if name == SysNoop {
		opts = append(opts, MeterdName(SysNoop))
	}
	return opts
}

func (rr *RunReport) fill(res *RunResult) {
	rr.Requests, rr.Events, rr.Errors, rr.ErrorsKept = res.Requests, res.Events, res.Errors, res.ErrorsKept
	rr.Charged, rr.Duplicate, rr.Rejected = res.ByStatus[StatusCharged], res.ByStatus[StatusDuplicate], res.ByStatus[StatusRejected]
	rr.ElapsedS = res.Elapsed.Seconds()
	rr.EventsPerSecond = res.EventsPerSecond()
	rr.Latency, rr.hist = latencyOf(res.Latency), res.Latency
	rr.PerSecond = make([]SecondMs, 0, len(res.PerSecond))
	for _, s := range res.PerSecond {
		if rr.RateOffered == 0 && s.At.Seconds() > rr.DurationS {
			// A closed loop's answers after its end are the requests in
			// flight then: a partial second, not a drop in throughput.
			// (An open loop's go on while it drains its backlog: kept.)
			break
		}
		rr.PerSecond = append(rr.PerSecond, SecondMs{T: s.At.Seconds(), EventsPerSecond: float64(s.Events), P50: ms(s.P50), P99: ms(s.P99)})
	}
}

func (rr *RunReport) setCPU(server time.Duration, serverErr error, gen time.Duration, genErr error) {
	rr.ServerCPUS, rr.GeneratorCPUS = server.Seconds(), gen.Seconds()
	if rr.Events > 0 {
		rr.ServerCPUPerMillion = rr.ServerCPUS / float64(rr.Events) * 1e6
		rr.GeneratorCPUPerMillion = rr.GeneratorCPUS / float64(rr.Events) * 1e6
	}
	if serverErr != nil {
		rr.ErrorsKept = append(rr.ErrorsKept, "server cpu: "+serverErr.Error())
	}
	if genErr != nil {
		rr.ErrorsKept = append(rr.ErrorsKept, "generator cpu: "+genErr.Error())
	}
}

// latencyOf reads a latency histogram (microseconds) in milliseconds.
func latencyOf(h *hdrhistogram.Histogram) LatencyMs {
	q := func(p float64) float64 { return float64(h.ValueAtQuantile(p)) / 1e3 }
	return LatencyMs{P50: q(50), P90: q(90), P99: q(99), P999: q(99.9), Max: float64(h.Max()) / 1e3, Mean: h.Mean() / 1e3}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// checkProblemsKept is how many of a check's problems a RunReport names.
const checkProblemsKept = 20

func summarize(r *Report) CheckSummary {
	s := CheckSummary{OK: r.OK(), Customers: r.Customers, EventsApplied: r.EventsApplied, EventsRejected: r.EventsRejected,
		EventsUnanswered: r.EventsUnanswered, UnansweredApplied: r.UnansweredApplied, EventsResent: r.EventsResent,
		ProblemsTotal: r.ProblemsTotal}
	for _, p := range r.Problems[:min(len(r.Problems), checkProblemsKept)] {
		s.Problems = append(s.Problems, p.String())
	}
	return s
}
