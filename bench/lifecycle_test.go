package bench

import (
	"context"
	"testing"
)

// TestMeterdLifecycle runs the lifecycle mix against meterd with its test
// clock: plans refilled by the clock moving under load, holds settled by
// events, top-ups; every event is charged its price, and the check (with the
// credits accounted for) passes, resends included.
func TestMeterdLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meterd")
	}
	l := NewMeterdLifecycle(startMeterd(t, "--test-clock"))
	ctx := context.Background()
	sc := Scenario{Name: "life", Customers: 5, Dist: DistUniform, Batch: 10, HoldEvery: 4, Seed: 3}
	customers := sc.CustomerIDs()
	if err := l.Setup(ctx, customers, 5_000_000); err != nil { // 5 USD top-up, and a 1000 USD daily plan
		t.Fatal(err)
	}
	reqs := sc.Requests("life", 40)
	acks := NewAcks(64)
	p, err := Prepare(l, reqs)
	if err != nil {
		t.Fatal(err)
	}
	stop := l.Drive(ctx)
	res, err := p.Run(ctx, Loop{Clients: 4}, acks)
	days, clockErr := stop()
	if err != nil || clockErr != nil || res.Errors != 0 || res.ByStatus[StatusCharged] != 400 {
		t.Fatalf("run: %+v %v %v", res, err, clockErr)
	}
	t.Logf("the clock moved %d days", days)
	// One more day under a finished run, so at least one refill happened
	// whatever the run's speed: the check must still hold.
	if err := l.must(ctx, "POST", "/v1/test-clock", []byte(`{"advance":"24h"}`), 200); err != nil {
		t.Fatal(err)
	}
	types := map[string]int{}
	for _, c := range customers {
		if err := l.entries(ctx, c, func(typ, _ string, _ int64) { types[typ]++ }); err != nil {
			t.Fatal(err)
		}
	}
	for _, typ := range []string{"usage", "topup", "grant", "expiry", "hold", "hold_release"} {
		if types[typ] == 0 {
			t.Errorf("no %s entry in any ledger: %v", typ, types)
		}
	}
	if rep := Check(ctx, l, acks, customers, 0); !rep.OK() || rep.EventsApplied != 400 || rep.EventsResent == 0 {
		t.Errorf("check: %s", rep.String())
	}
}
