package sink

import (
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter/jsonw"
)

// Backlog policies: what happens when the outbox not yet shipped by the
// slowest sink grows past its bound.
const (
	// BacklogAlert keeps accepting writes and reports the backlog (/readyz
	// body, meterd_sink_backlog_bytes, a warning in the log). The default:
	// an analytics outage must not stop billing.
	BacklogAlert = "alert"
	// BacklogRefuse answers 503 on /readyz and refuses new usage events
	// (503 sink_backlog, retry with the same ids) until the sinks catch up.
	BacklogRefuse = "refuse"
)

// Gate watches the tailers' backlog against a bound and applies the policy.
type Gate struct {
	e        *balance.Engine
	tailers  []*Tailer
	bytesMax uint64
	policy   string
	log      *slog.Logger
	metrics  *Metrics

	mu      sync.Mutex
	checked time.Time
	over    bool
	bytes   uint64
}

// NewGate returns a gate for the tailers; bytesMax 0 means no bound.
// metrics may be nil.
func NewGate(e *balance.Engine, tailers []*Tailer, bytesMax uint64, policy string, log *slog.Logger, metrics *Metrics) *Gate {
	if log == nil {
		log = slog.Default()
	}
	return &Gate{e: e, tailers: tailers, bytesMax: bytesMax, policy: policy, log: log, metrics: metrics}
}

// Watch refreshes the backlog (and its metric, and the warning past the
// bound) every interval until done is closed, so that it is watched even
// when nobody asks /readyz.
func (g *Gate) Watch(done <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			g.check()
		}
	}
}

// check refreshes the backlog size at most once a second.
func (g *Gate) check() (over bool, bytes uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.checked) < time.Second {
		return g.over, g.bytes
	}
	g.checked = time.Now()
	low := uint64(1<<64 - 1)
	for _, t := range g.tailers {
		low = min(low, t.shipped())
	}
	if len(g.tailers) == 0 {
		return false, 0
	}
	b, err := g.e.OutboxBytes(low)
	if err != nil {
		g.log.Error("outbox size", "err", err)
		return g.over, g.bytes
	}
	was := g.over
	g.bytes = b
	if g.metrics != nil {
		g.metrics.backlog.Set(float64(b))
	}
	g.over = g.bytesMax > 0 && b > g.bytesMax
	if g.over && !was {
		g.log.Warn("sink backlog over its bound", "bytes", b, "bound", g.bytesMax, "policy", g.policy)
	}
	return g.over, g.bytes
}

// Admit returns an error when new usage events must be refused.
func (g *Gate) Admit() error {
	if g.policy != BacklogRefuse {
		return nil
	}
	if over, _ := g.check(); over {
		return &wallet.Error{Code: "sink_backlog", Message: "the sinks are too far behind; retry with the same ids"}
	}
	return nil
}

type sinkReport struct {
	Name           string  `json:"name"`
	Shipped        uint64  `json:"shipped"`
	Watermark      uint64  `json:"watermark"`
	LagSeconds     float64 `json:"lag_seconds"`
	LastError      string  `json:"last_error,omitempty"`
	LastErrorAt    string  `json:"last_error_at,omitempty"`
	ConsecutiveErr int     `json:"consecutive_errors,omitempty"`
	BacklogBytes   uint64  `json:"backlog_bytes"`
	BacklogOver    bool    `json:"backlog_over_bound"`
}

// Readiness reports every tailer for /readyz; it is not ready only when the
// backlog is over its bound under the refuse policy.
func (g *Gate) Readiness() (bool, []byte) {
	over, bytes := g.check()
	reports := make([]sinkReport, 0, len(g.tailers))
	for _, t := range g.tailers {
		s := t.Status()
		r := sinkReport{Name: s.Name, Shipped: s.Shipped, Watermark: s.Watermark, LagSeconds: s.LagSeconds,
			LastError: s.LastError, ConsecutiveErr: s.ConsecutiveErr, BacklogBytes: bytes, BacklogOver: over}
		if !s.LastErrorAt.IsZero() && s.LastError != "" {
			r.LastErrorAt = s.LastErrorAt.UTC().Format(jsonw.TimeLayout)
		}
		reports = append(reports, r)
	}
	b, _ := json.Marshal(reports)
	return !(over && g.policy == BacklogRefuse), b
}
