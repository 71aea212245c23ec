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
		run("open", SysMeterd, 5000, 3, 5000), run("open", SysRedisAlways, 5000, 2, 5000),
	}}
	s.Runs[3].Failed = "start: no initdb"
	rs := Ratios(s)
	if len(rs) != 4 || rs[0] != (Ratio{"batch", SysRedisAlways, 2, 0.5}) || rs[1].System != SysRedisAlways || rs[1].Throughput != 100.0/150 {
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
		"redis-everysec (not durable per event)", "![throughput and latency over time, each system](plot.svg)", "open loop at 5,000 events/s"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if fmtCount(1234567.4) != "1,234,567" || fmtCount(999) != "999" || fmtCount(-1000) != "-1,000" {
		t.Errorf("fmtCount: %s %s %s", fmtCount(1234567.4), fmtCount(999), fmtCount(-1000))
	}
}
