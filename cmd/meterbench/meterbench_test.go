package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHistQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h hist
	vals := make([]int64, 0, 200_000)
	for range cap(vals) {
		// Log-uniform from 1 ns to ~17 s, plus exact small values.
		v := int64(math.Exp(rng.Float64() * math.Log(17e9)))
		if rng.IntN(10) == 0 {
			v = int64(rng.IntN(200))
		}
		vals = append(vals, v)
		h.record(time.Duration(v))
	}
	slices.Sort(vals)
	for _, q := range []float64{0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := int64(h.quantile(q))
		limit := exact + exact/histSubBuckets
		if got < exact || got > limit {
			t.Errorf("q=%v: got %d, exact %d (allowed up to %d)", q, got, exact, limit)
		}
	}
	if int64(h.quantile(1)) != vals[len(vals)-1] || h.maxNs != vals[len(vals)-1] || h.minNs != vals[0] {
		t.Errorf("max/min: q1 %d max %d min %d, want %d and %d", h.quantile(1), h.maxNs, h.minNs, vals[len(vals)-1], vals[0])
	}
	// Every bucket index round-trips through its upper bound.
	for i := range histBuckets {
		if got := histIndex(histUpper(i)); got != i {
			t.Fatalf("histIndex(histUpper(%d)) = %d", i, got)
		}
	}
	if histIndex(math.MaxInt64) != histBuckets-1 {
		t.Errorf("histIndex(MaxInt64) = %d, want %d", histIndex(math.MaxInt64), histBuckets-1)
	}
}

func TestLoopbackTarget(t *testing.T) {
	for _, s := range []string{"http://127.0.0.1:8080", "http://127.9.9.9:1", "http://[::1]:8080", "http://localhost:8080/"} {
		if _, _, err := loopbackTarget(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"http://10.0.0.1:8080", "http://example.com", "http://[::2]:1", "https://127.0.0.1",
		"http://0.0.0.0:8080", "http://127.0.0.1.example.com", "http://127.0.0.1:8080/v1"} {
		if _, _, err := loopbackTarget(s); err == nil {
			t.Errorf("%s: accepted", s)
		}
	}
}

func TestBuildBody(t *testing.T) {
	for _, ndjson := range []bool{false, true} {
		cfg := &config{batch: 5, runID: "r1", ndjson: ndjson}
		c := newClient(3, cfg, nil, customerIDs(4))
		c.buildBody(time.Date(2026, 11, 21, 10, 0, 0, 71e6, time.UTC))
		lines := [][]byte{c.body}
		if ndjson {
			lines = bytes.Split(bytes.TrimSuffix(c.body, []byte("\n")), []byte("\n"))
			if len(lines) != 5 {
				t.Fatalf("ndjson: %d lines", len(lines))
			}
		}
		for _, l := range lines {
			if !json.Valid(l) {
				t.Fatalf("invalid JSON: %s", l)
			}
		}
		if !bytes.Contains(c.body, []byte(`"id":"r1-3-4","customer_id":"mb-c`)) ||
			!bytes.Contains(c.body, []byte(`"occurred_at":"2026-11-21T10:00:00.071Z"`)) {
			t.Fatalf("unexpected body: %s", c.body)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	s := parseMetrics([]byte(`# HELP meterd_commit_group_events x
# TYPE meterd_commit_group_events histogram
meterd_commit_group_events_bucket{le="1"} 3
meterd_commit_group_events_sum 120
meterd_commit_group_events_count 4
meterd_commit_fsync_seconds_sum 0.5 1700000000000
meterd_commit_fsync_seconds_count 4
`))
	if s.found != 4 || s.groupEventsSum != 120 || s.groupEventsCount != 4 || s.fsyncSecondsSum != 0.5 || s.fsyncCount != 4 {
		t.Fatalf("parsed %+v", s)
	}
}

// TestRun builds meterd and meterbench, runs a short benchmark against a
// fresh server and checks the report.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binaries")
	}
	dir := t.TempDir()
	for _, b := range [][2]string{{"meterd", "../meterd"}, {"meterbench", "."}} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b[0]), b[1]).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var serverLog bytes.Buffer
	srv := exec.Command(filepath.Join(dir, "meterd"), "--data-dir", filepath.Join(dir, "data"), "--listen", addr)
	srv.Stdout, srv.Stderr = &serverLog, &serverLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			srv.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("meterd log:\n%s", serverLog.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("meterd not healthy on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "meterbench"), "--target", "http://"+addr,
		"--customers", "50", "--batch", "10", "--concurrency", "4", "--duration", "2s", "--warmup", "0s", "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("meterbench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	i := strings.Index(out, "\n{")
	if i < 0 {
		t.Fatalf("no JSON report in:\n%s", out)
	}
	var rep report
	if err := json.Unmarshal([]byte(out[i+1:]), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	t.Logf("\n%s", out[:i])
	if rep.Failed || rep.EventsPerSec <= 0 || rep.Events == 0 {
		t.Fatalf("failed=%v events/s=%v events=%d:\n%s", rep.Failed, rep.EventsPerSec, rep.Events, out)
	}
	if rep.Results["charged"] != rep.Events || len(rep.Results) != 1 {
		t.Errorf("results %v, want all %d events charged", rep.Results, rep.Events)
	}
	if rep.HTTPStatus["200"] != rep.Requests || rep.Events != rep.Requests*10 {
		t.Errorf("http %v for %d requests, %d events", rep.HTTPStatus, rep.Requests, rep.Events)
	}
	if !strings.Contains(out, "events/s") || !strings.Contains(out, "p99.9") {
		t.Errorf("text report lacks throughput or percentiles:\n%s", out[:i])
	}
	if rep.Server.Error != "" || rep.Server.CommitGroups == 0 || rep.Server.GroupEventsAvg <= 0 {
		t.Errorf("server metrics: %+v", rep.Server)
	}
}
