package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMeterdKafka runs the real binary against kfake and applies requests
// through MeterdKafka: charges as ChargeOf prices them, a rejection for a
// balance too small, duplicates (resent, and twice in one request) answered
// duplicate with the original charge, and a clean Check, resends included.
func TestMeterdKafka(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meterd against an in-process Kafka")
	}
	kb, err := StartKafka(4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kb.Close)
	m := startMeterd(t, "--kafka-brokers", kb.Addrs()[0], "--kafka-publish", "--sink-batch-age", "20ms")
	k, err := NewMeterdKafka(kb.Addrs(), m, KafkaTimeout(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	customers := []string{"kc1", "kc2", "kc3"}
	const initial = 1_000_000 // 1 USD each
	if err := k.Setup(ctx, customers, initial); err != nil {
		t.Fatal(err)
	}
	ev := func(id, c, model string, in, out int64) Event {
		return Event{ID: id, Customer: c, Model: model, InputTokens: in, OutputTokens: out, Charge: ChargeOf(model, in, out)}
	}
	var reqs [][]Event
	for r := range 6 {
		var req []Event
		for i, c := range customers {
			model := Models[(r+i)%len(Models)].Model
			req = append(req, ev(fmt.Sprintf("r%d-%d", r, i), c, model, int64(100*(r+1)), int64(10*(i+1))))
			req = append(req, ev(fmt.Sprintf("r%d-%d-b", r, i), c, "gpt-4-1-mini", 50, 5))
		}
		reqs = append(reqs, req)
	}
	// kc3 cannot pay 1 USD after the requests above; kc1's small event in
	// the same request is charged.
	tooBig := ev("big", "kc3", "o3", 100_000, 0)
	reqs = append(reqs, []Event{tooBig, ev("after-big", "kc1", "gpt-4-1", 10, 10)})
	// One id twice in one request: the first is charged, the second its duplicate.
	twice := ev("twice", "kc2", "claude-sonnet", 1000, 100)
	reqs = append(reqs, []Event{twice, twice})

	acks := NewAcks(ResendRequestsDefault)
	var lat []time.Duration
	for n, req := range reqs {
		res := make([]Result, len(req))
		start := time.Now()
		if err := k.Apply(ctx, req, res); err != nil {
			t.Fatalf("request %d: %v", n, err)
		}
		lat = append(lat, time.Since(start))
		acks.Ack(req, res)
		for i, e := range req {
			want := Result{Status: StatusCharged, Charge: e.Charge}
			switch {
			case e.ID == tooBig.ID:
				want = Result{Status: StatusRejected}
			case e.ID == twice.ID && i == 1:
				want.Status = StatusDuplicate
			}
			if res[i] != want {
				t.Errorf("request %d, event %s of %s: %+v, want %+v", n, e.ID, e.Customer, res[i], want)
			}
		}
	}
	t.Logf("produce-to-durable per request (%d requests): %v (the first may wait for meterd's consumer to join its group)", len(lat), lat)

	// A resent request: every event is a duplicate of its original charge.
	var dupLat []time.Duration
	for _, n := range []int{0, len(reqs) - 1} {
		req := reqs[n]
		res := make([]Result, len(req))
		start := time.Now()
		if err := k.Apply(ctx, req, res); err != nil {
			t.Fatalf("resend of request %d: %v", n, err)
		}
		dupLat = append(dupLat, time.Since(start))
		acks.Ack(req, res)
		for i, e := range req {
			if want := (Result{Status: StatusDuplicate, Charge: e.Charge}); res[i] != want {
				t.Errorf("resend of request %d, event %s of %s: %+v, want %+v", n, e.ID, e.Customer, res[i], want)
			}
		}
	}
	t.Logf("resent requests (all duplicates): %v", dupLat)

	// An id meterd cannot read: the message goes to the DLQ, and the request
	// fails with its error (unanswered: nothing was applied).
	bad := []Event{ev("bad id", "kc1", "gpt-4-1", 1, 1)}
	if err := k.Apply(ctx, bad, make([]Result, 1)); err == nil || !strings.Contains(err.Error(), "DLQ") {
		t.Errorf("an invalid id: %v, want the DLQ's error", err)
	} else {
		t.Logf("an invalid id: %v", err)
	}
	acks.Unanswered(bad)

	want := int64(initial)
	for _, req := range reqs[:6] {
		for _, e := range req {
			if e.Customer == "kc3" {
				want -= e.Charge
			}
		}
	}
	if b, err := k.Balance(ctx, "kc3"); err != nil || b != want {
		t.Errorf("balance of kc3: %d %v, want %d", b, err, want)
	}
	rows, err := k.Ledger(ctx, "kc2")
	if err != nil || !slices.ContainsFunc(rows, func(r LedgerRow) bool { return r == LedgerRow{twice.ID, twice.Charge} }) {
		t.Errorf("ledger of kc2: %+v %v", rows, err)
	}

	start := time.Now()
	report := Check(ctx, k, acks, customers, initial)
	t.Logf("check in %v: %s", time.Since(start).Round(time.Millisecond), report.String())
	t.Logf("stats: %+v", k.Stats())
	if !report.OK() || report.EventsResent == 0 || report.EventsRejected != 1 {
		t.Fatalf("check: %s", report.String())
	}
}

// TestMeterdKafkaRun drives MeterdKafka with the benchmark's own closed loop
// (concurrent clients, a scenario's requests), then checks it: the latency
// the loop records is Apply's, produce to durable.
func TestMeterdKafkaRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meterd against an in-process Kafka")
	}
	kb, err := StartKafka(8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kb.Close)
	m := startMeterd(t, "--kafka-brokers", kb.Addrs()[0], "--kafka-publish", "--sink-batch-age", "20ms")
	k, err := NewMeterdKafka(kb.Addrs(), m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sc := Scenario{Name: "k", Customers: 50, Dist: DistZipf, Batch: 20, Seed: 7, Prefix: "kr-"}
	customers := sc.CustomerIDs()
	if err := k.Setup(ctx, customers, 1_000_000_000); err != nil {
		t.Fatal(err)
	}
	const requests = 200
	acks := NewAcks(32)
	res, err := Run(ctx, k, sc.Requests("kr", requests), Loop{Clients: 8}, acks)
	if err != nil || res.Requests != requests || res.Errors != 0 || res.ByStatus[StatusCharged] != requests*20 {
		t.Fatalf("run: %+v %v", res, err)
	}
	q := func(p float64) time.Duration { return time.Duration(res.Latency.ValueAtQuantile(p)) * time.Microsecond }
	t.Logf("%d requests of 20 events, 8 clients: %.0f events/s; produce-to-durable p50 %v p99 %v max %v",
		res.Requests, float64(res.Events)/res.Elapsed.Seconds(), q(50), q(99), time.Duration(res.Latency.Max())*time.Microsecond)
	start := time.Now()
	rep := Check(ctx, k, acks, customers, 1_000_000_000)
	t.Logf("check in %v: %s; stats %+v", time.Since(start).Round(time.Millisecond), rep.String(), k.Stats())
	if !rep.OK() || rep.EventsApplied != requests*20 {
		t.Fatalf("check: %s", rep.String())
	}
}
