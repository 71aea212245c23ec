package ingest

import (
	"strconv"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/prometheus/client_golang/prometheus"
)

type httpMetrics struct {
	requests *prometheus.HistogramVec
	events   *prometheus.CounterVec
	rejected *prometheus.CounterVec // by code: a bounded set, the contract's
	// httpEvents are events' counters of the HTTP door by result status
	// (statusNames' index), resolved once: a label look-up per event costs
	// a hash and a lock.
	httpEvents [len(statusNames)]prometheus.Counter
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meterd_http_request_duration_seconds",
			Help:    "HTTP request latency by route and status class, from routing to the response body being ready.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 16),
		}, []string{"route", "status"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_events_total",
			Help: "Usage events by result status (charged, recorded, duplicate, rejected) and the door they came in by.",
		}, []string{"status", "source"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_events_rejected_total",
			Help: "Usage events rejected over HTTP (the native API and the doors), by contract error code. Kafka's are meterd_kafka_rejected_total.",
		}, []string{"code"}),
	}
	for st, name := range statusNames {
		if name != "" {
			m.httpEvents[st] = m.events.WithLabelValues(name, "http")
		}
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.events, m.rejected)
	}
	return m
}

// event counts one event's result: its status, and its code when rejected.
func (m *httpMetrics) event(status uint8, code string) {
	if c := m.httpEvents[status]; c != nil {
		c.Inc()
	}
	if status == balance.EventRejected {
		m.rejected.WithLabelValues(code).Inc()
	}
}

var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

func (m *httpMetrics) observe(route string, status int, d time.Duration) {
	class := strconv.Itoa(status)
	if i := status/100 - 1; i >= 0 && i < len(statusClasses) {
		class = statusClasses[i]
	}
	m.requests.WithLabelValues(route, class).Observe(d.Seconds())
}
