package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// checkSystemRun races 8 goroutines on the same customers, with ids drawn
// from a shared set (so the same id arrives concurrently), requests that
// touch several customers in every order (so a careless lock order would
// deadlock), and balances too small for every event (so some are rejected).
// No request may fail, every charge answered is the event's price, and
// Check passes: each (customer, id) charged at most once, each balance its
// start less the charges, which are exactly its ledger.
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
	var mu sync.Mutex
	byStatus := map[Status]int{}
	for w := range 8 {
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
				mu.Lock()
				for i, r := range res {
					byStatus[r.Status]++
					if (r.Status == StatusCharged || r.Status == StatusDuplicate) && r.Charge != evs[i].Charge {
						t.Errorf("%s: %s/%s answered %v %d, its price is %d", sys.Name(), evs[i].Customer, evs[i].ID, r.Status, r.Charge, evs[i].Charge)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if byStatus[StatusRejected] == 0 || byStatus[StatusDuplicate] == 0 {
		t.Errorf("%s: answers %v: the run wants rejections and duplicates to happen", sys.Name(), byStatus)
	}
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

// checkWallet checks a customer's balance and ledger.
func checkWallet(t *testing.T, w System, customer string, balance int64, ledger []LedgerRow) {
	t.Helper()
	ctx := context.Background()
	if b, err := w.Balance(ctx, customer); err != nil || b != balance {
		t.Errorf("balance of %s: %d %v, want %d", customer, b, err, balance)
	}
	rows, err := w.Ledger(ctx, customer)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rows) != fmt.Sprint(ledger) {
		t.Errorf("ledger of %s: %v, want %v", customer, rows, ledger)
	}
}

// benchApply applies requests of eventsPer events of 6000 micro-USD each,
// spread over customers, from parallel goroutines per GOMAXPROCS, and reports
// events/s; next numbers the events across rounds.
func benchApply(b *testing.B, w System, customers []string, eventsPer, parallel int, next *atomic.Int64) {
	first := next.Load()
	b.SetParallelism(parallel)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		evs := make([]Event, eventsPer)
		res := make([]Result, eventsPer)
		for pb.Next() {
			base := next.Add(int64(eventsPer)) - int64(eventsPer)
			for i := range evs {
				k := base + int64(i)
				evs[i] = Event{ID: "e" + strconv.FormatInt(k, 10), Customer: customers[k%int64(len(customers))], Charge: 6000}
			}
			if err := w.Apply(context.Background(), evs, res); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(next.Load()-first)/b.Elapsed().Seconds(), "events/s")
}
