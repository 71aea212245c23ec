package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// checkSystemRun applies requests of random events (some ids repeated, some
// customers too poor to pay) to sys from several goroutines, acknowledging
// every answer, then runs Check: a correct system passes.
func checkSystemRun(t *testing.T, sys System) {
	t.Helper()
	ctx := context.Background()
	customers := []string{"c0", "c1", "c2", "c3", "c4"}
	const initial = 200_000 // micro-USD: some events are rejected before the end
	if err := sys.Setup(ctx, customers, initial); err != nil {
		t.Fatal(err)
	}
	acks := NewAcks(64)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for r := range 15 {
				evs := make([]Event, 10)
				for i := range evs {
					m := Models[rng.IntN(len(Models))]
					e := Event{ID: fmt.Sprintf("w%d-%d", rng.IntN(4), rng.IntN(40)), Customer: customers[rng.IntN(len(customers))],
						Model: m.Model, InputTokens: int64(rng.IntN(2000)), OutputTokens: int64(rng.IntN(500))}
					// An id's content is fixed by the id, so a repeat is a duplicate, not a conflict.
					h := rand.New(rand.NewPCG(uint64(len(e.ID)), uint64(e.ID[len(e.ID)-1])))
					e.Model = Models[h.IntN(len(Models))].Model
					e.InputTokens, e.OutputTokens = int64(h.IntN(2000)), int64(h.IntN(500))
					e.Charge = ChargeOf(e.Model, e.InputTokens, e.OutputTokens)
					evs[i] = e
				}
				res := make([]Result, len(evs))
				if err := sys.Apply(ctx, evs, res); err != nil {
					t.Errorf("%s: request %d of worker %d: %v", sys.Name(), r, w, err)
					acks.Unanswered(evs)
					continue
				}
				acks.Ack(evs, res)
			}
		}()
	}
	wg.Wait()
	if rep := Check(ctx, sys, acks, customers, initial); !rep.OK() {
		t.Fatalf("%s: %s", sys.Name(), rep.String())
	}
	// A control: a charge the run never acknowledged must be found.
	if err := sys.Setup(ctx, []string{"ctl"}, initial); err != nil {
		t.Fatal(err)
	}
	extra := []Event{{ID: "not-acked", Customer: "ctl", Model: "gpt-4-1-mini", InputTokens: 1, Charge: 1}}
	res := make([]Result, 1)
	if err := sys.Apply(ctx, extra, res); err != nil || res[0].Status != StatusCharged {
		t.Fatalf("%s: the control charge: %+v %v", sys.Name(), res[0], err)
	}
	if rep := Check(ctx, sys, acks, append(customers, "ctl"), initial); rep.OK() || !strings.Contains(rep.String(), "not-acked") {
		t.Fatalf("%s: a charge nobody acknowledged went unnoticed: %s", sys.Name(), rep.String())
	}
}

func TestCheckMeterd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs meterd")
	}
	checkSystemRun(t, startMeterd(t))
}

func TestCheckRedis(t *testing.T) {
	s := startRedisT(t, t.TempDir(), "always")
	checkSystemRun(t, newRedisWalletT(t, s, 8))
}

func TestCheckPostgres(t *testing.T) {
	s := startPostgresT(t)
	for _, mode := range []string{"plain", "strong"} {
		t.Run(mode, func(t *testing.T) {
			w, _ := newPostgresWalletT(t, s, mode, 8)
			checkSystemRun(t, w)
		})
	}
}
