package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// report is what one run measured. It is printed as text, and as JSON with --json.
type report struct {
	Target          string            `json:"target"`
	RunID           string            `json:"run_id"`
	Flags           map[string]string `json:"flags"`
	GOMAXPROCS      int               `json:"gomaxprocs"`
	NumCPU          int               `json:"num_cpu"`
	GoVersion       string            `json:"go_version"`
	SetupSeconds    float64           `json:"setup_seconds,omitempty"`
	DurationSeconds float64           `json:"duration_seconds"`
	Requests        uint64            `json:"requests"`
	Events          uint64            `json:"events"` // events in requests answered 200
	RequestsPerSec  float64           `json:"requests_per_sec"`
	EventsPerSec    float64           `json:"events_per_sec"`
	HTTPStatus      map[string]uint64 `json:"http_status"`
	Results         map[string]uint64 `json:"results"` // charged, recorded, duplicate, rejected:<code>
	Retries         uint64            `json:"retries"`
	TransportErrors uint64            `json:"transport_errors"`
	Malformed       uint64            `json:"malformed_answers"`
	LatencyMs       latencyReport     `json:"latency_ms"`     // every request, any status
	LatencyE2EMs    latencyReport     `json:"latency_e2e_ms"` // every body to its 200, retries included
	Server          serverReport      `json:"server"`
	Errors          []string          `json:"errors,omitempty"`
	Failed          bool              `json:"failed"`
	FailReasons     []string          `json:"fail_reasons,omitempty"`
}

type latencyReport struct {
	Count uint64  `json:"count"`
	Min   float64 `json:"min"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

// serverReport is the delta of the server's commit histograms over the run.
type serverReport struct {
	Error              string  `json:"error,omitempty"`
	CommitGroups       uint64  `json:"commit_groups"`
	CommitGroupsPerSec float64 `json:"commit_groups_per_sec"`
	GroupEventsAvg     float64 `json:"group_events_avg"` // meterd_commit_group_events sum/count
	CommitMsAvg        float64 `json:"commit_ms_avg"`    // meterd_commit_fsync_seconds sum/count
}

func newReport(cfg *config) *report {
	gmp, ncpu := procs()
	return &report{
		Target:     cfg.target.String(),
		RunID:      cfg.runID,
		Flags:      cfg.flags,
		GOMAXPROCS: gmp,
		NumCPU:     ncpu,
		GoVersion:  runtime.Version(),
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func latencyOf(h *hist) latencyReport {
	if h.n == 0 {
		return latencyReport{}
	}
	return latencyReport{
		Count: h.n,
		Min:   ms(time.Duration(h.minNs)),
		Mean:  ms(h.mean()),
		P50:   ms(h.quantile(0.50)),
		P90:   ms(h.quantile(0.90)),
		P99:   ms(h.quantile(0.99)),
		P999:  ms(h.quantile(0.999)),
		Max:   ms(time.Duration(h.maxNs)),
	}
}

// fill sets the client-side numbers and decides whether the run failed.
func (r *report) fill(st *clientStats, elapsed time.Duration) {
	sec := elapsed.Seconds()
	r.DurationSeconds = sec
	r.Requests = st.requests
	r.Events = st.events
	r.RequestsPerSec = float64(st.requests) / sec
	r.EventsPerSec = float64(st.events) / sec
	r.HTTPStatus = map[string]uint64{}
	for code, n := range st.byStatus {
		r.HTTPStatus[strconv.Itoa(code)] = n
		if code != 200 && code != 503 && code != 429 {
			r.failf("%d requests answered HTTP %d", n, code)
		}
	}
	r.Results = st.byResult
	for k, n := range st.byResult {
		switch k {
		case "charged", "recorded", "duplicate", "rejected:insufficient_funds":
		default:
			r.failf("%d events answered %s", n, k)
		}
	}
	r.Retries = st.retries
	r.TransportErrors = st.transport
	if st.transport > 0 {
		r.failf("%d requests got no HTTP answer", st.transport)
	}
	r.Malformed = st.malformed
	if st.malformed > 0 {
		r.failf("%d answers 200 did not match their request", st.malformed)
	}
	if st.requests == 0 {
		r.failf("no request was measured")
	}
	r.LatencyMs = latencyOf(&st.lat)
	r.LatencyE2EMs = latencyOf(&st.latE2E)
	r.Errors = st.errs
}

func (r *report) failf(format string, args ...any) {
	r.Failed = true
	r.FailReasons = append(r.FailReasons, fmt.Sprintf(format, args...))
	slices.Sort(r.FailReasons)
}

// server sets the delta of the commit histograms between two scrapes.
func (r *report) server(before, after commitStats, err error, elapsed time.Duration) {
	switch {
	case err != nil:
		r.Server.Error = err.Error()
		return
	case after.found < 4:
		r.Server.Error = "/metrics has no meterd_commit_group_events or meterd_commit_fsync_seconds"
		return
	}
	groups := after.groupEventsCount - before.groupEventsCount
	r.Server.CommitGroups = uint64(groups)
	r.Server.CommitGroupsPerSec = groups / elapsed.Seconds()
	if groups > 0 {
		r.Server.GroupEventsAvg = (after.groupEventsSum - before.groupEventsSum) / groups
	}
	if n := after.fsyncCount - before.fsyncCount; n > 0 {
		r.Server.CommitMsAvg = (after.fsyncSecondsSum - before.fsyncSecondsSum) / n * 1e3
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (r *report) writeText(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "meterbench %s -> %s\n", r.RunID, r.Target)
	flags := make([]string, 0, len(r.Flags))
	for _, k := range sortedKeys(r.Flags) {
		flags = append(flags, "--"+k+"="+r.Flags[k])
	}
	fmt.Fprintf(&b, "flags       %s\n", strings.Join(flags, " "))
	fmt.Fprintf(&b, "machine     GOMAXPROCS=%d NumCPU=%d %s (generator's view; the server shares the machine)\n",
		r.GOMAXPROCS, r.NumCPU, r.GoVersion)
	if r.SetupSeconds > 0 {
		fmt.Fprintf(&b, "setup       %.2fs\n", r.SetupSeconds)
	}
	fmt.Fprintf(&b, "duration    %.2fs measured\n", r.DurationSeconds)
	fmt.Fprintf(&b, "throughput  %.0f requests/s, %.0f events/s (%d requests, %d events answered 200)\n",
		r.RequestsPerSec, r.EventsPerSec, r.Requests, r.Events)
	var parts []string
	for _, k := range sortedKeys(r.HTTPStatus) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.HTTPStatus[k]))
	}
	fmt.Fprintf(&b, "http        %s; retried %d, no answer %d, malformed %d\n",
		strings.Join(parts, " "), r.Retries, r.TransportErrors, r.Malformed)
	parts = parts[:0]
	for _, k := range sortedKeys(r.Results) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Results[k]))
	}
	fmt.Fprintf(&b, "events      %s\n", strings.Join(parts, " "))
	l := r.LatencyMs
	fmt.Fprintf(&b, "latency ms  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (mean %.3f, min %.3f, n=%d)\n",
		l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean, l.Min, l.Count)
	if r.Retries > 0 {
		l := r.LatencyE2EMs
		fmt.Fprintf(&b, "to 200 ms   p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (retries and back-off included)\n",
			l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	if r.Server.Error != "" {
		fmt.Fprintf(&b, "server      metrics unavailable: %s\n", r.Server.Error)
	} else {
		fmt.Fprintf(&b, "server      %d commit groups (%.0f/s), %.1f events/group avg, %.3f ms/commit avg (fsync included)\n",
			r.Server.CommitGroups, r.Server.CommitGroupsPerSec, r.Server.GroupEventsAvg, r.Server.CommitMsAvg)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "error       %s\n", e)
	}
	if r.Failed {
		fmt.Fprintf(&b, "FAILED      %s\n", strings.Join(r.FailReasons, "; "))
	} else {
		fmt.Fprintf(&b, "result      ok\n")
	}
	io.WriteString(w, b.String())
}

func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
