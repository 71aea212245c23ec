package main

// TestDashboardAndAlertMetricsExist: every metric that the Grafana dashboard
// (k8s/grafana-dashboard.json) and the alert rules (k8s/monitoring.yaml)
// name exists in the /metrics of a real meterd, with every label they match
// on or group by. meterd runs with every part that has metrics on (the
// Kafka consumer and publisher against an in-process broker, the ClickHouse
// sink against a private server) and is driven until each part has
// reported: events charged and rejected over HTTP and Kafka, a dead letter,
// rows shipped. A metric renamed in the code, or misspelt in a panel or a
// rule, fails here instead of showing an empty panel or an alert that never
// fires.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/sink/chtest"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"gopkg.in/yaml.v3"
)

const (
	opsDashboard     = "../../k8s/grafana-dashboard.json"
	opsRules         = "../../k8s/monitoring.yaml"
	opsMetricsWithin = 60 * time.Second // from the last write to every metric reported
)

// opsRequired: what the dashboard must show and what the rules must alert
// on, as the metrics that carry it.
var (
	opsDashboardRequired = map[string]string{
		"throughput":          "meterd_events_total",
		"latency":             "meterd_http_request_duration_seconds_bucket",
		"commit groups":       "meterd_commit_group_events_count",
		"fsync":               "meterd_commit_fsync_seconds_bucket",
		"queue depths":        "meterd_shard_queue_depth",
		"sink lag":            "meterd_sink_lag_seconds",
		"sink backlog":        "meterd_sink_backlog_bytes",
		"Kafka lag":           "meterd_kafka_consumer_lag",
		"rejected by code":    "meterd_events_rejected_total",
		"Kafka rejected/code": "meterd_kafka_rejected_total",
	}
	opsRulesRequired = map[string]string{
		"sink lag":        "meterd_sink_lag_seconds",
		"fsync latency":   "meterd_commit_fsync_seconds_bucket",
		"disk free":       "meterd_disk_available_bytes",
		"consumer lag":    "meterd_kafka_consumer_lag",
		"refused writes":  "meterd_storage_writable",
		"refused answers": "meterd_http_request_duration_seconds_count",
	}
)

// opsTargetLabels are added by Prometheus when it scrapes (the
// ServiceMonitor's target labels), not exported by meterd.
var opsTargetLabels = map[string]bool{"pod": true, "namespace": true, "instance": true, "job": true, "service": true,
	"container": true, "endpoint": true}

// opsSelector is one metric named in an expression, with the labels it
// matches on, and the labels its expression groups by (by (...)), which
// one of the expression's metrics must have.
type opsSelector struct {
	name     string
	labels   []string
	grouping []string
	siblings []string // the metrics of the expression, this one included
	where    string   // the file
}

var (
	opsMetricRE = regexp.MustCompile(`\b(meterd_[a-z0-9_]+)(\{([^}]*)\})?`)
	opsLabelRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	opsByRE     = regexp.MustCompile(`\bby\s*\(([^)]*)\)`)
)

// opsSelectors returns the metrics that exprs name.
func opsSelectors(where string, exprs []string) []opsSelector {
	var out []opsSelector
	for _, e := range exprs {
		var grouping, siblings []string
		for _, m := range opsByRE.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(m[1], ",") {
				grouping = append(grouping, strings.TrimSpace(l))
			}
		}
		matches := opsMetricRE.FindAllStringSubmatch(e, -1)
		for _, m := range matches {
			siblings = append(siblings, m[1])
		}
		for _, m := range matches {
			s := opsSelector{name: m[1], grouping: grouping, siblings: siblings, where: where}
			for _, l := range opsLabelRE.FindAllStringSubmatch(m[3], -1) {
				s.labels = append(s.labels, l[1])
			}
			out = append(out, s)
		}
	}
	return out
}

// opsExprs collects every string under a key "expr", at any depth.
func opsExprs(v any, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "expr" {
				*out = append(*out, s)
				continue
			}
			opsExprs(x, out)
		}
	case []any:
		for _, x := range v {
			opsExprs(x, out)
		}
	}
}

// opsReadSelectors reads the dashboard's and the rules' expressions.
func opsReadSelectors(t *testing.T) (dashboard, rules []opsSelector) {
	t.Helper()
	b, err := os.ReadFile(opsDashboard)
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", opsDashboard, err)
	}
	var exprs []string
	opsExprs(dash, &exprs)
	dashboard = opsSelectors(opsDashboard, exprs)

	b, err = os.ReadFile(opsRules)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	exprs = nil
	for {
		var doc any
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: %v", opsRules, err)
		}
		opsExprs(doc, &exprs)
	}
	rules = opsSelectors(opsRules, exprs)
	return dashboard, rules
}

// opsCovers fails the test for each required part no selector names.
func opsCovers(t *testing.T, what string, sels []opsSelector, required map[string]string) {
	t.Helper()
	for part, metric := range required {
		if !slices.ContainsFunc(sels, func(s opsSelector) bool { return s.name == metric }) {
			t.Errorf("%s: nothing on %s (%s)", what, part, metric)
		}
	}
}

// opsExposition parses /metrics text: for each sample name, the labels seen
// on it.
func opsExposition(text string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			continue
		}
		name, labelText := line[:i], ""
		if line[i] == '{' {
			labelText = line[i+1 : strings.LastIndexByte(line, '}')]
		}
		set := out[name]
		if set == nil {
			set = map[string]bool{}
			out[name] = set
		}
		for _, l := range opsLabelRE.FindAllStringSubmatch(labelText, -1) {
			set[l[1]] = true
		}
	}
	return out
}

// opsMissing lists the selectors /metrics lacks: the metric, a label it
// matches on, or a label its expression groups by.
func opsMissing(sels []opsSelector, have map[string]map[string]bool) []string {
	var missing []string
	for _, s := range sels {
		labels, ok := have[s.name]
		if !ok {
			missing = append(missing, fmt.Sprintf("%s (%s)", s.name, filepath.Base(s.where)))
			continue
		}
		for _, l := range s.labels {
			if !labels[l] && !opsTargetLabels[l] {
				missing = append(missing, fmt.Sprintf("%s{%s} (%s)", s.name, l, filepath.Base(s.where)))
			}
		}
		for _, l := range s.grouping {
			if !opsTargetLabels[l] && !slices.ContainsFunc(s.siblings, func(n string) bool { return have[n][l] }) {
				missing = append(missing, fmt.Sprintf("by (%s) over %s (%s)", l, strings.Join(s.siblings, ", "), filepath.Base(s.where)))
			}
		}
	}
	slices.Sort(missing)
	return slices.Compact(missing)
}

func TestDashboardAndAlertMetricsExist(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meterd, starts a ClickHouse server and a Kafka broker: skipped with -short")
	}
	dashboard, rules := opsReadSelectors(t)
	opsCovers(t, "the dashboard", dashboard, opsDashboardRequired)
	opsCovers(t, "the alert rules", rules, opsRulesRequired)

	cluster, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(2, "usage-events", "usage-events.dlq", "meterd.ledger", "meterd.notifications"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	srv := chtest.StartInDir(t, t.TempDir())
	m := &chMeterd{crashHarness: &crashHarness{t: t, bin: buildMeterd(t), dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--kafka-brokers", brokers[0], "--kafka-publish", "--sink-batch-age", "50ms",
			"--clickhouse-addr", srv.Addr, "--clickhouse-database", chDatabaseName("ops")}}}
	t.Cleanup(m.cleanup)
	m.start()

	// Over HTTP: charged, recorded without a price, and rejected for two
	// codes (a customer who cannot pay, an event without a type).
	m.mustDo("PUT", "/v1/pricing", []byte(crashPricing), 200)
	for _, c := range []string{"ops-rich", "ops-poor"} {
		m.mustDo("PUT", "/v1/customers/"+c, []byte(`{"insufficient_funds":"reject"}`), 201)
	}
	m.mustDo("POST", "/v1/customers/ops-rich/topups", []byte(`{"id":"t-1","asset":"CREDITS","amount":"1000"}`), 201)
	m.mustDo("POST", "/v1/events", []byte(`{"events":[
		{"id":"h-1","customer_id":"ops-rich","event_type":"image_generated"},
		{"id":"h-2","customer_id":"ops-rich","event_type":"page_viewed"},
		{"id":"h-3","customer_id":"ops-poor","event_type":"image_generated"},
		{"id":"h-4","customer_id":"ops-rich"}]}`), 200)

	// Over Kafka: charged, rejected (cannot pay) and a dead letter.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "usage-events", RequiredAcks: kafka.RequireAll,
		Balancer: &kafka.Hash{}, BatchTimeout: 5 * time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx,
		kafka.Message{Key: []byte("ops-rich"), Value: []byte(`{"id":"k-1","event_type":"image_generated"}`)},
		kafka.Message{Key: []byte("ops-poor"), Value: []byte(`{"id":"k-2","event_type":"image_generated"}`)},
		kafka.Message{Key: []byte("ops-rich"), Value: []byte(`{"id":"k-3",`)},
	); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(opsMetricsWithin)
	for {
		status, body, err := m.do("GET", "/metrics", nil)
		if err != nil || status != 200 {
			t.Fatalf("GET /metrics: %d %v", status, err)
		}
		missing := opsMissing(append(dashboard, rules...), opsExposition(string(body)))
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, /metrics lacks what the dashboard or the rules name:\n  %s\nmeterd's output:\n%s",
				opsMetricsWithin, strings.Join(missing, "\n  "), m.proc.log.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d selectors of the dashboard and %d of the rules, all in /metrics", len(dashboard), len(rules))
	m.stop()
}
