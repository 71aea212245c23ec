package ingest

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The consumer's retry causes, the values of meterd_kafka_retries_total's label.
const (
	retryOverloaded = iota // the engine was overloaded: the round is retried
	retryDLQ               // a DLQ write failed: its failed messages are retried
	retryCommit            // a commit failed: the round will be redelivered
	retryFetch             // fetching failed: Run backs off
	retryCauses
)

var retryCauseNames = [retryCauses]string{"overloaded", "dlq_write", "commit", "fetch"}

// kafkaMetrics are the consumer's metrics. Labels have small fixed sets:
// outcomes, contract codes and reasons, partitions; never a customer.
type kafkaMetrics struct {
	messages      [kafkaOutcomes]prometheus.Counter
	retries       [retryCauses]prometheus.Counter
	dlq           *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	commitSeconds prometheus.Histogram
	roundEvents   prometheus.Histogram
	lagVec        *prometheus.GaugeVec

	mu   sync.Mutex
	lags map[int]prometheus.Gauge
}

func newKafkaMetrics(reg prometheus.Registerer) *kafkaMetrics {
	messages := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meterd_kafka_messages_total",
		Help: "Kafka messages consumed, by outcome: charged, recorded, duplicate, rejected (a valid event the engine refused, or out_of_window), dlq (unreadable or invalid, written to the DLQ topic).",
	}, []string{"outcome"})
	retries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meterd_kafka_retries_total",
		Help: "Kafka consumer retries by cause: overloaded (engine backpressure, the round is retried), dlq_write, commit (the round will be redelivered), fetch.",
	}, []string{"cause"})
	m := &kafkaMetrics{
		dlq: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_kafka_dlq_total",
			Help: "Kafka messages written to the DLQ topic, by contract code and decoder reason.",
		}, []string{"code", "reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_kafka_rejected_total",
			Help: "Kafka events rejected (committed, not dead-lettered), by contract code.",
		}, []string{"code"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_kafka_commit_seconds",
			Help:    "Time to commit one round's offsets to the consumer group.",
			Buckets: prometheus.ExponentialBuckets(250e-6, 2, 16),
		}),
		roundEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_kafka_round_events",
			Help:    "Messages per consumer round (one engine call, one commit).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		lagVec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meterd_kafka_consumer_lag",
			Help: "Messages behind the high-water mark of each partition, as of the last committed round.",
		}, []string{"partition"}),
		lags: make(map[int]prometheus.Gauge),
	}
	for o, name := range kafkaOutcomeNames {
		m.messages[o] = messages.WithLabelValues(name)
	}
	for r, name := range retryCauseNames {
		m.retries[r] = retries.WithLabelValues(name)
	}
	if reg != nil {
		reg.MustRegister(messages, retries, m.dlq, m.rejected, m.commitSeconds, m.roundEvents, m.lagVec)
	}
	return m
}

// lag returns the lag gauge of a partition.
func (m *kafkaMetrics) lag(partition int) prometheus.Gauge {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.lags[partition]
	if !ok {
		g = m.lagVec.WithLabelValues(strconv.Itoa(partition))
		m.lags[partition] = g
	}
	return g
}
