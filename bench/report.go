package bench

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// The report of a suite: what cmd/meterbench writes as suite.json, and what
// the table (table.md) and the plots (suite.png, suite.svg) are drawn from.
// Times are in seconds or milliseconds as float64: they are measurements, not
// money (amounts never appear here, only counts of events).

// SuiteReport is one suite: every (mode, system) run, in the order run.
type SuiteReport struct {
	Suite   string      `json:"suite"`   // "standard", "quick", or "custom"
	Started time.Time   `json:"started"` // UTC
	Command string      `json:"command"` // the command line that made it
	Machine Machine     `json:"machine"`
	Rounds  int         `json:"rounds"` // turns each system took per mode (SuiteConfig.Rounds)
	Runs    []RunReport `json:"runs"`
}

// Machine is where a suite ran.
type Machine struct {
	CPUs        int    `json:"cpus"` // runtime.NumCPU
	CPUModel    string `json:"cpu_model"`
	MemoryBytes int64  `json:"memory_bytes"`
	Kernel      string `json:"kernel"`
	GoVersion   string `json:"go_version"`
	OS          string `json:"os"` // GOOS/GOARCH
}

// RunReport is one system in one mode.
type RunReport struct {
	Mode      string `json:"mode"`               // "batch", "single", "hot", "open", ...
	System    string `json:"system"`             // System.Name
	Transport string `json:"transport"`          // how requests travel: "json", "ndjson", "kafka", "redis", "postgres"
	Workload  string `json:"workload,omitempty"` // what the mode does besides its events (lifecycle, Kafka)

	// The workload.
	Customers   int     `json:"customers"`
	Dist        string  `json:"dist"`
	Batch       int     `json:"batch"` // events per request
	Clients     int     `json:"clients"`
	RateOffered float64 `json:"rate_offered"` // events/s; 0: closed loop
	DurationS   float64 `json:"duration_s"`   // the measured part, as asked
	WarmupS     float64 `json:"warmup_s"`

	// What the measured part did.
	Requests        int64      `json:"requests"`
	Events          int64      `json:"events"` // in answered requests
	Charged         int64      `json:"charged"`
	Duplicate       int64      `json:"duplicate"`
	Rejected        int64      `json:"rejected"`
	Errors          int64      `json:"errors"` // requests without an answer
	ErrorsKept      []string   `json:"errors_kept,omitempty"`
	ElapsedS        float64    `json:"elapsed_s"`
	EventsPerSecond float64    `json:"events_per_second"`
	Latency         LatencyMs  `json:"latency_ms"` // per request; open loop: from its intended send time
	PerSecond       []SecondMs `json:"per_second"`

	// CPU, from /proc: the system's processes (all of them), and the
	// generator's own (this process: clients, encoding, the check excluded).
	ServerCPUS             float64 `json:"server_cpu_s"`
	ServerCPUPerMillion    float64 `json:"server_cpu_s_per_million_events"`
	GeneratorCPUS          float64 `json:"generator_cpu_s"`
	GeneratorCPUPerMillion float64 `json:"generator_cpu_s_per_million_events"`

	Check  CheckSummary `json:"check"`
	Rounds int          `json:"rounds"` // runs of Duration/Rounds this one adds up (SuiteConfig.Rounds)
	hist   *hdrhistogram.Histogram

	// Failed says why the run did not complete (the system did not start,
	// set up, or the load loop failed); the numbers above are then partial.
	Failed string `json:"failed,omitempty"`
}

// LatencyMs is a latency distribution in milliseconds.
type LatencyMs struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// SecondMs is one second of a run (RunResult.PerSecond).
type SecondMs struct {
	T               float64 `json:"t_s"` // end of the second, from the start of the measured part
	EventsPerSecond float64 `json:"events_per_second"`
	P50             float64 `json:"p50_ms"`
	P99             float64 `json:"p99_ms"`
}

// CheckSummary is a run's correctness check (Report).
type CheckSummary struct {
	OK                bool     `json:"ok"`
	Customers         int      `json:"customers"`
	EventsApplied     int      `json:"events_applied"`
	EventsRejected    int      `json:"events_rejected"`
	EventsUnanswered  int      `json:"events_unanswered"`
	UnansweredApplied int      `json:"unanswered_applied"`
	EventsResent      int      `json:"events_resent"`
	ProblemsTotal     int      `json:"problems_total"`
	Problems          []string `json:"problems,omitempty"` // the first few, each naming its customer and event
}

// ThisMachine describes the machine it runs on, from /proc where there is
// one (fields it cannot read are left empty).
func ThisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = string(bytes.TrimSpace(b))
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseInt(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB"), 10, 64); err == nil {
		m.MemoryBytes = kb << 10
	}
	return m
}

// procField returns the value of the first "name: value" line of a /proc
// file, trimmed.
func procField(path, name string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
