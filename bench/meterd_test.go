package bench

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
)

// startMeterd builds cmd/meterd and runs it with args on a fresh data
// directory on a free loopback port (StartHTTPServer), for the life of the
// test.
func startMeterd(t testing.TB, args ...string) *Meterd {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "meterd")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/meterd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	srv, err := StartHTTPServer("meterd", dir, bin, append([]string{"--data-dir", filepath.Join(dir, "data")}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Kill(); err != nil {
			t.Error(err)
		}
	})
	m, err := NewMeterd(srv.Base(), "", srv.PID(), 8)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMeterdSemantics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meterd")
	}
	m := startMeterd(t)
	ctx := context.Background()
	if err := m.Setup(ctx, []string{"c1", "c2"}, 1_000_000); err != nil { // 1 USD each
		t.Fatal(err)
	}
	evs := []Event{
		{ID: "e1", Customer: "c1", Model: "gpt-4-1", InputTokens: 1000, OutputTokens: 500}, // 2*1000 + 8*500 = 6000
		{ID: "e2", Customer: "c2", Model: "o3", InputTokens: 100_000, OutputTokens: 0},     // 10*100000 = 1,000,000: all of c2
		{ID: "e3", Customer: "c2", Model: "gpt-4-1-mini", InputTokens: 1, OutputTokens: 0}, // c2 is empty now
		{ID: "e1", Customer: "c1", Model: "gpt-4-1", InputTokens: 1000, OutputTokens: 500}, // the same id again
	}
	for i := range evs {
		evs[i].Charge = ChargeOf(evs[i].Model, evs[i].InputTokens, evs[i].OutputTokens)
	}
	res := make([]Result, len(evs))
	if err := m.Apply(ctx, evs, res); err != nil {
		t.Fatal(err)
	}
	want := []Result{{StatusCharged, 6000}, {StatusCharged, 1_000_000}, {StatusRejected, 0}, {StatusDuplicate, 6000}}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("event %d (%s): %+v, want %+v", i, evs[i].ID, res[i], want[i])
		}
		if want[i].Status == StatusCharged && res[i].Charge != evs[i].Charge {
			t.Errorf("event %s: meterd charged %d, ChargeOf says %d", evs[i].ID, res[i].Charge, evs[i].Charge)
		}
	}
	if b, err := m.Balance(ctx, "c1"); err != nil || b != 994_000 {
		t.Errorf("balance of c1: %d %v, want 994000", b, err)
	}
	rows, err := m.Ledger(ctx, "c1")
	if err != nil || len(rows) != 1 || rows[0] != (LedgerRow{"e1", 6000}) {
		t.Errorf("ledger of c1: %+v %v", rows, err)
	}
}

// TestMeterdPrepared runs a short closed loop of prepared requests against
// meterd, as JSON batches and as NDJSON, and checks both.
func TestMeterdPrepared(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meterd")
	}
	m := startMeterd(t)
	ctx := context.Background()
	for i, opts := range [][]MeterdOption{nil, {MeterdNDJSON()}} {
		sys, err := NewMeterd(m.base, "", m.pid, 4, opts...)
		if err != nil {
			t.Fatal(err)
		}
		sc := Scenario{Name: "p", Customers: 20, Dist: DistZipf, Batch: 10, Seed: uint64(i), Prefix: fmt.Sprintf("p%d-", i)}
		customers := sc.CustomerIDs()
		if err := sys.Setup(ctx, customers, 1_000_000_000); err != nil {
			t.Fatal(err)
		}
		acks := NewAcks(16)
		res, err := Run(ctx, sys, sc.Requests(fmt.Sprintf("p%d", i), 30), Loop{Clients: 4}, acks)
		if err != nil || res.Requests != 30 || res.Errors != 0 || res.ByStatus[StatusCharged] != 300 {
			t.Fatalf("run %d: %+v %v", i, res, err)
		}
		if rep := Check(ctx, sys, acks, customers, 1_000_000_000); !rep.OK() || rep.EventsApplied != 300 {
			t.Errorf("check %d: %s", i, rep.String())
		}
	}
}
