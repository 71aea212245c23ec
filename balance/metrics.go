package balance

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	groupEvents   prometheus.Histogram
	groupOps      prometheus.Histogram
	commitSeconds prometheus.Histogram
	queueDepth    *prometheus.GaugeVec
	wallets       prometheus.Gauge
	checkpointed  prometheus.Counter
	replayed      prometheus.Counter
	idemLookups   *prometheus.CounterVec
	idIndexBytes  *prometheus.GaugeVec
	idemDropped   prometheus.Counter
	notifications *prometheus.CounterVec
	unpricedVec   *prometheus.CounterVec

	unpricedMu    sync.Mutex
	unpricedTypes map[string]prometheus.Counter // the labels made so far, at most unpricedTypesMax
}

// unpricedTypesMax bounds the event_type labels of
// meterd_unpriced_events_total: event types come from clients.
const unpricedTypesMax = 256

// unpriced counts an event recorded without a charge because its type
// has no price; past unpricedTypesMax types, under event_type "(other)".
func (m *metrics) unpriced(eventType string) {
	m.unpricedMu.Lock()
	c, ok := m.unpricedTypes[eventType]
	if !ok {
		label := eventType
		if len(m.unpricedTypes) >= unpricedTypesMax {
			label = "(other)"
		}
		c = m.unpricedVec.WithLabelValues(label)
		if label == eventType {
			m.unpricedTypes[eventType] = c
		}
	}
	m.unpricedMu.Unlock()
	c.Inc()
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		groupEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_commit_group_events",
			Help:    "Usage events applied per commit group (one Pebble batch, one fsync).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		groupOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_commit_group_ops",
			Help:    "Operations (event requests and other writes and reads) per commit group.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 7),
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_commit_fsync_seconds",
			Help:    "Time to commit one group to Pebble with fsync.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14),
		}),
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meterd_shard_queue_depth",
			Help: "Operations waiting in a shard's queue, sampled at the start of each commit group.",
		}, []string{"shard"}),
		wallets: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_wallets",
			Help: "Customer wallets held in memory.",
		}),
		idemLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_idempotency_lookups_total",
			Help: "Idempotency look-ups by where they were answered: cache, log (a usage event's record, read from the log record the index points at), store (a record under its own key), index (a new id known absent without a read), or miss (a new id, after a store read).",
		}, []string{"result"}),
		idIndexBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meterd_idempotency_index_bytes",
			Help: "Memory of each shard's in-memory index of its idempotency keys, sampled by the janitor.",
		}, []string{"shard"}),
		checkpointed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterd_checkpoint_wallets_total",
			Help: "Wallet snapshots written by checkpoints: wallets changed only by usage events, written at most once per --checkpoint-interval.",
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterd_log_replayed_events_total",
			Help: "Usage commands replayed from the command log at start (those after their wallets' snapshots).",
		}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_notifications_total",
			Help: "Customer notifications made, by type.",
		}, []string{"type"}),
		idemDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterd_idempotency_records_dropped_total",
			Help: "Idempotency records dropped after the dedup window.",
		}),
		unpricedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_unpriced_events_total",
			Help: "Usage events recorded without a charge because their event type has no price in the pricing in force, by event type (the first 256 types; the rest under \"(other)\").",
		}, []string{"event_type"}),
		unpricedTypes: map[string]prometheus.Counter{},
	}
	if reg != nil {
		reg.MustRegister(m.groupEvents, m.groupOps, m.commitSeconds, m.queueDepth, m.wallets, m.idemLookups, m.idIndexBytes, m.idemDropped, m.notifications, m.checkpointed, m.replayed, m.unpricedVec)
	}
	return m
}
