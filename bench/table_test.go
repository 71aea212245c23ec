package bench

import (
	"math"
	"strings"
	"testing"
)

func TestRatiosAndLosses(t *testing.T) {
	run := func(mode, sys string, eps, p99, rate float64) RunReport {
		return RunReport{Mode: mode, System: sys, EventsPerSecond: eps, RateOffered: rate, Latency: LatencyMs{P99: p99},
			Batch: 1, Clients: 1, Customers: 1, Dist: DistUniform, Check: CheckSummary{OK: true}}
	}
	s := &SuiteReport{Suite: "standard", Runs: []RunReport{
		run("batch", SysMeterd, 200, 5, 0), run("batch", SysNoop, 900, 1, 0), run("batch", SysRedisAlways, 100, 10, 0),
		run("batch", SysPostgresPlain, 0, 0, 0),
		run("single", SysMeterd, 100, 5, 0), run("single", SysRedisAlways, 150, 4, 0), run("single", SysRedisEverysec, 300, 1, 0),
		run("open", SysMeterd, 5000, 3, 5000), run("open", SysRedisAlways, 5000, 2, 5000), run("open", SysPostgresPlain, 1200, 30000, 5000),
		run("open2", SysMeterd, 3000, 900, 5000), run("open2", SysRedisAlways, 5000, 2, 5000),
	}}
	s.Runs[3].Failed = "start: no initdb"
	rs := Ratios(s)
	if len(rs) != 6 || rs[4].Behind != SysPostgresPlain || !math.IsNaN(rs[4].P99) || rs[5].Behind != SysMeterd {
		t.Fatalf("open-loop ratios %+v", rs[4:])
	}
	if rs[0] != (Ratio{"batch", SysRedisAlways, 2, 0.5, ""}) || rs[1].System != SysRedisAlways || rs[1].Throughput != 100.0/150 {
		t.Fatalf("ratios %+v", rs)
	}
	if !math.IsNaN(div(1, 0)) {
		t.Error("div by zero is not NaN")
	}
	losses := strings.Join(Losses(s), "\n")
	for _, want := range []string{
		"batch: meterd wins against every baseline.",
		"**single: meterd loses** to redis-always (150 events/s against meterd's 100).",
		"single: redis-everysec (300 events/s against meterd's 100) beats meterd, without being durable per event",
		"**open: meterd loses** to redis-always (p99 2.00 ms against meterd's 3.00 ms).",
		"**open2: meterd loses** to redis-always (5,000 events/s of the 5,000 offered, against meterd's 3,000).",
	} {
		if !strings.Contains(losses, want) {
			t.Errorf("losses lack %q:\n%s", want, losses)
		}
	}
	var b strings.Builder
	if err := WriteMarkdown(&b, s, "plot.svg"); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{"| batch | redis-always | 100 | ", "| 2.00x | 0.50x |", "noop (floor)", "failed: start: no initdb",
		"redis-everysec (not durable per event)", "![throughput and latency over time, each system](plot.svg)", "open loop at 5,000 events/s", "| postgres-plain fell behind |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if fmtCount(1234567.4) != "1,234,567" || fmtCount(999) != "999" || fmtCount(-1000) != "-1,000" {
		t.Errorf("fmtCount: %s %s %s", fmtCount(1234567.4), fmtCount(999), fmtCount(-1000))
	}
}

// TestMergeRounds adds up a system's turns: counts, CPU, checks, seconds
// one after the other, and latency from the merged histograms.
func TestMergeRounds(t *testing.T) {
	turn := func(events int64, elapsed float64, us []int64, ok bool) RunReport {
		h := newLatencyHistogram()
		for _, v := range us {
			h.RecordValue(v)
		}
		r := RunReport{Mode: "batch", System: SysMeterd, Events: events, Charged: events, ElapsedS: elapsed, ServerCPUS: 1, GeneratorCPUS: 0.5,
			Latency: latencyOf(h), hist: h, Rounds: 1, PerSecond: []SecondMs{{T: 1, EventsPerSecond: float64(events) / 2}, {T: 2}},
			Check: CheckSummary{OK: ok, Customers: 3, EventsApplied: int(events)}}
		if !ok {
			r.Check.ProblemsTotal, r.Check.Problems = 1, []string{"customer c1, event e1: missing from the ledger"}
		}
		return r
	}
	m := mergeRounds([]RunReport{turn(1000, 1, []int64{1000, 1000, 1000}, true), turn(3000, 2, []int64{9000}, false)}, 4e9)
	if m.Events != 4000 || m.EventsPerSecond != 4000.0/3 || m.Rounds != 2 || m.DurationS != 4 || m.ServerCPUS != 2 ||
		m.ServerCPUPerMillion != 500 || m.GeneratorCPUPerMillion != 250 {
		t.Errorf("merged: %+v", m)
	}
	if m.Latency.P50 != 1 || m.Latency.Max < 8.99 || len(m.PerSecond) != 4 || m.PerSecond[2].T != 3 || m.PerSecond[3].T != 4 {
		t.Errorf("latency %+v, seconds %+v", m.Latency, m.PerSecond)
	}
	if m.Check.OK || m.Check.EventsApplied != 4000 || m.Check.ProblemsTotal != 1 || len(m.Check.Problems) != 1 {
		t.Errorf("check %+v", m.Check)
	}
}
