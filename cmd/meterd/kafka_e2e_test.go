package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestKafkaEndToEnd runs the real binary against an in-process
// Kafka-protocol broker: events produced by a separate producer are charged,
// their ledger entries appear on meterd.ledger, malformed and invalid
// messages land in the DLQ with their error headers, and the committed
// offsets reach the end of every partition.
func TestKafkaEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the meterd binary")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(8, "usage-events", "usage-events.dlq", "meterd.ledger", "meterd.notifications"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	m := &chMeterd{crashHarness: &crashHarness{t: t, bin: buildMeterd(t), dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--kafka-brokers", brokers[0], "--kafka-publish", "--sink-batch-age", "50ms"}}}
	t.Cleanup(m.cleanup)
	m.start()
	m.mustDo("PUT", "/v1/pricing", []byte(crashPricing), 200)
	const customers, perCustomer = 5, 20
	for c := 0; c < customers; c++ {
		id := fmt.Sprintf("k%d", c)
		m.mustDo("PUT", "/v1/customers/"+id, []byte(`{}`), 201)
		m.mustDo("POST", "/v1/customers/"+id+"/topups", []byte(`{"id":"t","asset":"CREDITS","amount":"1000"}`), 201)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "usage-events", RequiredAcks: kafka.RequireAll,
		Balancer: &kafka.Hash{}, BatchTimeout: 5 * time.Millisecond}
	defer w.Close()
	var msgs []kafka.Message
	for c := 0; c < customers; c++ {
		for i := 0; i < perCustomer; i++ {
			msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprintf("k%d", c)),
				Value: []byte(fmt.Sprintf(`{"id":"e%d","event_type":"image_generated"}`, i))})
		}
	}
	bad := []kafka.Message{
		{Key: []byte("k0"), Value: []byte(`{"id":"bad1",`)},                                     // malformed
		{Key: []byte("k1"), Value: []byte(`{"id":"bad2"}`)},                                     // no event_type
		{Key: []byte("k2"), Value: []byte(`{"id":"bad3","customer_id":"k3","event_type":"x"}`)}, // key mismatch
	}
	if err := w.WriteMessages(ctx, append(msgs, bad...)...); err != nil {
		t.Fatal(err)
	}

	// Charged: each customer's 20 images of 3 credits.
	deadline := time.Now().Add(20 * time.Second)
	for c := 0; c < customers; c++ {
		id := fmt.Sprintf("k%d", c)
		for {
			var wallet struct {
				Accounts []struct{ Available string } `json:"accounts"`
			}
			if err := json.Unmarshal(m.mustDo("GET", "/v1/customers/"+id+"/wallet", nil, 200), &wallet); err != nil {
				t.Fatal(err)
			}
			if len(wallet.Accounts) == 1 && wallet.Accounts[0].Available == "940" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: wallet %+v, want 940 available after 20 images", id, wallet)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// meterd.ledger: one message per ledger entry (a top-up and 20 usages per
	// customer), keyed by customer, with the entry id in the id header.
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: "meterd.ledger", GroupID: "e2e-check", StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond})
	defer r.Close()
	seen := map[string]bool{}
	for len(seen) < customers*(perCustomer+1) {
		msg, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("reading meterd.ledger after %d entries: %v", len(seen), err)
		}
		var e struct {
			ID         string `json:"id"`
			CustomerID string `json:"customer_id"`
			Type       string `json:"type"`
			Amount     string `json:"amount"`
		}
		if err := json.Unmarshal(msg.Value, &e); err != nil {
			t.Fatal(err)
		}
		if string(msg.Key) != e.CustomerID || header(msg, "id") != e.ID || (e.Type == "usage" && e.Amount != "-3") {
			t.Fatalf("ledger message key %q headers %v value %s", msg.Key, msg.Headers, msg.Value)
		}
		seen[e.ID] = true
	}

	// The DLQ: the three bad messages, with their key, value and error headers.
	dlq := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: "usage-events.dlq", GroupID: "e2e-dlq", StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond})
	defer dlq.Close()
	reasons := map[string]string{}
	for len(reasons) < len(bad) {
		msg, err := dlq.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("reading the DLQ after %d messages: %v", len(reasons), err)
		}
		if header(msg, "error_code") != "invalid_event" || header(msg, "error") == "" {
			t.Fatalf("DLQ message %s without its error headers: %v", msg.Value, msg.Headers)
		}
		reasons[string(msg.Value)] = header(msg, "error_reason")
	}
	for b, want := range map[string]string{string(bad[0].Value): "malformed_json", string(bad[1].Value): "missing_event_type", string(bad[2].Value): "key_mismatch"} {
		if reasons[b] != want {
			t.Fatalf("DLQ reason of %s: %q, want %q (all: %v)", b, reasons[b], want, reasons)
		}
	}

	// Committed offsets reach the end of every partition.
	client := &kafka.Client{Addr: kafka.TCP(brokers...)}
	for {
		off, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: "meterd", Topics: map[string][]int{"usage-events": {0, 1, 2, 3, 4, 5, 6, 7}}})
		if err != nil {
			t.Fatal(err)
		}
		var committed int64
		for _, p := range off.Topics["usage-events"] {
			committed += max(p.CommittedOffset, 0) // -1: nothing committed (an empty partition)
		}
		if committed == int64(len(msgs)+len(bad)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed offsets sum to %d, want %d (%v); meterd:\n%s", committed, len(msgs)+len(bad), off.Topics["usage-events"], m.proc.log.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.stop()
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
