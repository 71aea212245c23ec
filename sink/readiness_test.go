package sink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

func TestGateBacklogPolicies(t *testing.T) {
	e, err := balance.Open(balance.Options{Dir: t.TempDir(), Shards: 1, Sinks: []string{"clickhouse"},
		DefaultPricing: []byte(benchTailerPricing), Log: testLog})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1 << 40}, [16]byte{1}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2000; i++ {
		in := &balance.EventIn{Event: &meter.Event{ID: fmt.Sprintf("e%d", i), CustomerID: "c1", EventType: "image_generated"}, Hash: [16]byte{1}}
		if err := e.Events([]*balance.EventIn{in}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	// ClickHouse is down: the real writer, on a port where nothing listens.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dest := Lazy("clickhouse", func(ctx context.Context) (Destination, error) {
		return OpenClickHouse(ctx, ClickHouseConfig{Addr: addr, DialTimeout: 200 * time.Millisecond, Log: testLog})
	})
	tailer := NewTailer(e, dest, TailerConfig{BatchAge: time.Millisecond, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond, Log: testLog})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tailer.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for tailer.Status().ConsecutiveErr < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the tailer never reported its failing destination")
		}
		time.Sleep(time.Millisecond)
	}

	alert := NewGate(e, []*Tailer{tailer}, 1, BacklogAlert, testLog, NewMetrics(nil))
	ready, body := alert.Readiness()
	if !ready || alert.Admit() != nil {
		t.Fatalf("alert policy over the bound: ready %v, admit %v; want ready and admitting", ready, alert.Admit())
	}
	for _, want := range []string{`"backlog_over_bound":true`, `"last_error":"`, `"shipped":0`} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("readiness body %s lacks %s", body, want)
		}
	}

	refuse := NewGate(e, []*Tailer{tailer}, 1, BacklogRefuse, testLog, nil)
	if ready, _ := refuse.Readiness(); ready {
		t.Fatal("refuse policy over the bound: ready")
	}
	var be *wallet.Error
	if err := refuse.Admit(); !errors.As(err, &be) || be.Code != "sink_backlog" {
		t.Fatalf("refuse policy over the bound: admit %v, want sink_backlog", err)
	}

	roomy := NewGate(e, []*Tailer{tailer}, 1<<40, BacklogRefuse, testLog, nil)
	if ready, _ := roomy.Readiness(); !ready || roomy.Admit() != nil {
		t.Fatal("refuse policy under the bound: not ready or not admitting")
	}
}
