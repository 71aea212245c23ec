package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/bench"
)

func TestLoopbackTarget(t *testing.T) {
	for s, want := range map[string]string{"http://127.0.0.1:8080": "http://127.0.0.1:8080", "http://127.9.9.9:1": "http://127.9.9.9:1",
		"http://[::1]:8080": "http://[::1]:8080", "http://localhost/": "http://localhost:80"} {
		if got, err := loopbackTarget(s); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", s, got, err, want)
		}
	}
	for _, s := range []string{"http://10.0.0.1:8080", "http://example.com", "http://[::2]:1", "https://127.0.0.1",
		"http://0.0.0.0:8080", "http://127.0.0.1.example.com", "http://127.0.0.1:8080/v1"} {
		if _, err := loopbackTarget(s); err == nil {
			t.Errorf("%s: accepted", s)
		}
	}
}

func TestParseFlags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "meterd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseFlags([]string{"--meterd-bin", bin}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.suite
	var modes []string
	for _, m := range s.Modes {
		modes = append(modes, m.Name)
	}
	if s.Name != "standard" || s.Duration != 20*time.Second || s.Rounds != 2 || !slices.Equal(modes, []string{"batch", "single", "hot", "open"}) ||
		!slices.Equal(s.Systems, bench.AllSystems) || s.MeterdBin != bin || !strings.HasPrefix(cfg.out, filepath.Join("bench", "results")) {
		t.Errorf("defaults: %+v modes %v out %s", s, modes, cfg.out)
	}
	cfg, err = parseFlags([]string{"--suite", "quick", "--meterd-bin", bin, "--systems", "meterd,noop"}, &bytes.Buffer{})
	if err != nil || cfg.suite.Duration != 3*time.Second || cfg.suite.Modes[0].Customers != 1000 || !strings.HasSuffix(cfg.out, "-quick") {
		t.Errorf("quick: %+v %v", cfg, err)
	}
	cfg, err = parseFlags([]string{"--target", "http://127.0.0.1:9", "--batch", "7", "--concurrency", "3", "--ndjson", "--run-id", "r1"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.suite.Modes
	if len(m) != 1 || m[0].Batch != 7 || m[0].Clients != 3 || m[0].Transport != bench.TransportNDJSON ||
		!slices.Equal(cfg.suite.Systems, []string{bench.SysMeterd}) || cfg.suite.MeterdTarget != "http://127.0.0.1:9" ||
		cfg.suite.CustomerPrefix != "r1-c" {
		t.Errorf("custom: %+v", cfg.suite)
	}
	for _, bad := range [][]string{{"--suite", "long"}, {"--modes", "nosuch"}, {"--batch", "0", "--target", "http://127.0.0.1:1"},
		{"--target", "http://10.1.1.1:1"}, {"--run-id", "a-b", "--meterd-bin", bin}, {"--duration", "-1s"}, {"extra"},
		{"--dist", "normal", "--meterd-bin", bin}, {"--rate", "-5", "--meterd-bin", bin}, {"--rounds", "30", "--meterd-bin", bin}} {
		if _, err := parseFlags(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestSpliceSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "B.md")
	if err := os.WriteFile(path, []byte("# Benchmarks\n\nOld text.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, section := range []string{"first table\n", "second table\n"} {
		if err := spliceSection(path, section); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(path)
	want := "# Benchmarks\n\n" + mdBegin + "\n\nsecond table\n\n" + mdEnd + "\n\nOld text.\n"
	if string(b) != want {
		t.Errorf("got:\n%s\nwant:\n%s", b, want)
	}
}

// suiteOf is a two-mode suite: meterd at m events/s and p99 1 ms against
// redis-always at r events/s and p99 2 ms.
func suiteOf(m, r float64) *bench.SuiteReport {
	run := func(mode, sys string, eps, p99 float64) bench.RunReport {
		return bench.RunReport{Mode: mode, System: sys, EventsPerSecond: eps, Latency: bench.LatencyMs{P99: p99}, Check: bench.CheckSummary{OK: true}}
	}
	return &bench.SuiteReport{Runs: []bench.RunReport{run("batch", "meterd", m, 1), run("batch", "redis-always", r, 2),
		run("single", "meterd", m, 1), run("single", "redis-always", r, 2)}}
}

func TestCompare(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, s *bench.SuiteReport) string {
		p := filepath.Join(dir, name)
		if err := writeJSON(p, s); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b, c := write("a.json", suiteOf(100, 50)), write("b.json", suiteOf(110, 50)), write("c.json", suiteOf(150, 50))
	var out bytes.Buffer
	if code := compare([]string{a, b}, &out, &out); code != 0 {
		t.Errorf("2.0 against 2.2 (10%%): exit %d\n%s", code, out.String())
	}
	out.Reset()
	if code := compare([]string{a, c}, &out, &out); code != 1 || !strings.Contains(out.String(), "50.0%") {
		t.Errorf("2.0 against 3.0 (50%%): exit %d\n%s", code, out.String())
	}
	if code := compare([]string{a}, &out, &out); code != 2 {
		t.Errorf("one file: exit %d", code)
	}
	// report remakes the table next to the JSON it reads.
	if code := report([]string{a}, &out); code != 0 {
		t.Fatalf("report: exit %d\n%s", code, out.String())
	}
	if b, err := os.ReadFile(filepath.Join(dir, "table.md")); err != nil || !strings.Contains(string(b), "| 2.00x | 0.50x |") {
		t.Errorf("report's table.md: %v\n%s", err, b)
	}
}

// TestQuickSuite builds meterd and meterbench and runs a short suite of two
// modes against meterd, the no-op floor and one baseline of each kind, the
// way make bench-quick does, then reads what it wrote.
func TestQuickSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binaries and servers")
	}
	dir := t.TempDir()
	for _, b := range [][2]string{{"meterd", "../meterd"}, {"meterbench", "."}} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b[0]), b[1]).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	md := filepath.Join(dir, "BENCHMARKS.md")
	if err := os.WriteFile(md, []byte("# Benchmarks\n\nolder sections\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "results")
	cmd := exec.Command(filepath.Join(dir, "meterbench"), "--suite", "quick", "--modes", "batch,open",
		"--systems", "meterd,noop,redis-always,postgres-strong", "--duration", "2s", "--rounds", "2", "--warmup", "0s",
		"--out", out, "--publish", "--benchmarks-md", md)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("meterbench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("stderr:\n%s", stderr.String())
	var rep bench.SuiteReport
	b, err := os.ReadFile(filepath.Join(out, "suite.json"))
	if err != nil || json.Unmarshal(b, &rep) != nil {
		t.Fatalf("suite.json: %v\n%s", err, b)
	}
	if len(rep.Runs) != 8 {
		t.Fatalf("%d runs, want 2 modes x 4 systems", len(rep.Runs))
	}
	for _, r := range rep.Runs {
		if r.Failed != "" || !r.Check.OK || r.Events == 0 || r.EventsPerSecond <= 0 || r.Latency.P99 <= 0 || len(r.PerSecond) == 0 {
			t.Errorf("%s/%s: %+v", r.Mode, r.System, r)
		}
		if r.GeneratorCPUS <= 0 || r.ServerCPUS <= 0 {
			t.Errorf("%s/%s: server CPU %v s, generator CPU %v s: want both measured", r.Mode, r.System, r.ServerCPUS, r.GeneratorCPUS)
		}
		if r.System != bench.SysNoop && r.Check.EventsApplied == 0 {
			t.Errorf("%s/%s: the check saw no applied event: %+v", r.Mode, r.System, r.Check)
		}
		if r.Rounds != 2 || r.DurationS != 2 {
			t.Errorf("%s/%s: %d rounds, %v s: want 2 turns making 2 s", r.Mode, r.System, r.Rounds, r.DurationS)
		}
		if r.Mode == "open" && r.RateOffered != 5000 {
			t.Errorf("open: offered %v", r.RateOffered)
		}
		if _, err := os.Stat(filepath.Join(out, "runs", r.Mode+"-"+r.System+".json")); err != nil {
			t.Error(err)
		}
	}
	for _, f := range []string{"table.md", "suite.png", "suite.svg"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	for _, f := range []string{"standard.png", "standard.svg"} {
		if _, err := os.Stat(filepath.Join(dir, "bench", "results", f)); err != nil {
			t.Errorf("published plot: %v", err)
		}
	}
	pub, _ := os.ReadFile(md)
	if !strings.HasPrefix(string(pub), "# Benchmarks\n\n"+mdBegin) || !strings.Contains(string(pub), "| batch | redis-always |") ||
		!strings.Contains(string(pub), "bench/results/standard.svg") || !strings.HasSuffix(string(pub), "older sections\n") {
		t.Errorf("BENCHMARKS.md:\n%s", pub)
	}
	if !strings.Contains(stdout.String(), "meterd/X") {
		t.Errorf("stdout lacks the table:\n%s", stdout.String())
	}
	targetRounds(t, dir)
}

// targetRounds runs two turns of a mode against one meterd that outlives
// them (--target): each turn's check must see its own customers only.
func targetRounds(t *testing.T, dir string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	srv := exec.Command(filepath.Join(dir, "meterd"), "--data-dir", filepath.Join(dir, "target-data"), "--listen", addr)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if r, err := http.Get("http://" + addr + "/healthz"); err == nil {
			r.Body.Close()
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("meterd did not come up")
		}
	}
	out := filepath.Join(dir, "target-results")
	b, err := exec.Command(filepath.Join(dir, "meterbench"), "--target", "http://"+addr, "--suite", "quick", "--modes", "batch",
		"--duration", "2s", "--rounds", "2", "--warmup", "0s", "--out", out).CombinedOutput()
	if err != nil {
		t.Fatalf("meterbench --target: %v\n%s", err, b)
	}
	var rep bench.SuiteReport
	if b, err := os.ReadFile(filepath.Join(out, "suite.json")); err != nil || json.Unmarshal(b, &rep) != nil {
		t.Fatalf("suite.json: %v\n%s", err, b)
	}
	if len(rep.Runs) != 1 || !rep.Runs[0].Check.OK || rep.Runs[0].Check.EventsApplied == 0 || rep.Runs[0].Rounds != 2 {
		t.Fatalf("--target, 2 rounds: %+v", rep.Runs)
	}
}
