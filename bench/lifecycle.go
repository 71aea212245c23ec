package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fastjson"

	"github.com/meterd/meterd/meter"
)

// The lifecycle mix (mode "lifecycle", meterd only): the same token-priced
// events, on wallets that live the way products sell credits. Every
// customer has a daily plan of USD (expire_and_replace) next to its top-up;
// meterd runs with --test-clock and a driver moves its clock a day forward
// every LifecycleDayEvery, so every plan expires and refills, for every
// customer, again and again under load; every event the scenario marks
// (Event.Hold: one in Scenario.HoldEvery) settles a hold placed for it just
// before its request is sent (reserve, do the work, settle: the pattern of
// long-running work); and every LifecycleTopupEvery-th request buys a
// top-up for its first customer first. The extra calls are part of the
// request, and of its latency.
//
// The check is the standard one (Check) on a view that accounts for the
// credits: Ledger sums each event's usage entries (an event may draw from
// the plan bucket and the top-up bucket: two entries), and Balance is the
// available balance less every entry that is not usage (top-ups, grants,
// expiries, holds and their releases), so that with an initial balance of 0
// the rule "the balance dropped by the acknowledged charges" reads
// "available == every credit and debit of the ledger, and its usage part is
// exactly the acknowledged charges". meterd guarantees that the sum of an
// account's entries equals its available balance; a charge applied twice,
// lost, or a credit without its entry fails the check as it would fail a
// standard run. An event applied twice now shows as "amount differs" (its
// entries summed) where a standard run says "recorded twice".

// The lifecycle mix's parameters.
const (
	LifecycleDayEvery   = 2 * time.Second // real time per day of meterd's test clock
	LifecycleTopupEvery = 10              // requests per top-up
	lifecyclePlanUSD    = "1000"          // each customer's daily plan allocation
	lifecycleTopupUSD   = "50"
	lifecycleHoldFactor = 2  // a hold reserves this many times its event's charge
	lifecycleHoldDays   = 20 // a hold expires this many test-clock days ahead (meterd allows 31)
)

// MeterdLifecycle is meterd under the lifecycle mix (see above).
type MeterdLifecycle struct {
	*Meterd
	clockStart time.Time    // meterd's test clock at Setup
	days       atomic.Int64 // days Drive has moved it since
}

// NewMeterdLifecycle wraps a Meterd of a server started with --test-clock.
func NewMeterdLifecycle(m *Meterd) *MeterdLifecycle { return &MeterdLifecycle{Meterd: m} }

// Setup sets up the customers as Meterd does, each with a daily plan too.
func (l *MeterdLifecycle) Setup(ctx context.Context, customers []string, balance int64) error {
	st, body, err := l.call(ctx, "GET", "/v1/test-clock", nil)
	if err != nil || st != 200 {
		return fmt.Errorf("lifecycle: meterd without --test-clock? GET /v1/test-clock: %d %s %v", st, body, err)
	}
	now, err := time.Parse(time.RFC3339Nano, fastjson.GetString(body, "now"))
	if err != nil {
		return fmt.Errorf("lifecycle: test clock: %w", err)
	}
	l.clockStart = now
	anchor := now.UTC().Truncate(24 * time.Hour).Format(time.RFC3339)
	settings := []byte(`{"insufficient_funds":"reject","plan":{"id":"daily","allocations":[{"account":"default","asset":"USD",` +
		`"amount":"` + lifecyclePlanUSD + `","period":"day","anchor":"` + anchor + `","strategy":"expire_and_replace"}]}}`)
	if err := l.must(ctx, "PUT", "/v1/pricing", []byte(PricingDocument()), 200); err != nil {
		return err
	}
	amount := meter.FormatUnits(balance, usdScale)
	return forEachParallel(ctx, customers, setupWorkers, func(c string) error {
		if err := l.must(ctx, "PUT", "/v1/customers/"+c, settings, 200, 201); err != nil {
			return err
		}
		top := `{"id":"bench-` + c + `","asset":"USD","amount":"` + amount + `"}`
		return l.must(ctx, "POST", "/v1/customers/"+c+"/topups", []byte(top), 200, 201)
	})
}

// Prepare encodes every request (Meterd's), and returns the apply that
// places each of its events' holds, buys its top-up when one is due, then
// posts it.
func (l *MeterdLifecycle) Prepare(reqs [][]Event) (func(ctx context.Context, i int, results []Result) error, error) {
	post, err := l.Meterd.Prepare(reqs)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, i int, results []Result) error {
		if err := l.before(ctx, i, reqs[i]); err != nil {
			return err
		}
		return post(ctx, i, results)
	}, nil
}

// before places the holds the request's events settle, and buys its
// top-up when it is due. A request sent again (Check's resend, through
// Apply) does neither: its holds are settled, its top-up bought.
func (l *MeterdLifecycle) before(ctx context.Context, i int, events []Event) error {
	for k := range events {
		e := &events[k]
		if !e.Hold {
			continue
		}
		// An explicit expiry, lifecycleHoldDays ahead of the clock as Drive
		// last moved it: the default (an hour from the engine's now when
		// the request is read) may be in the past by the time the request
		// is applied, if the clock jumps a day in between.
		expires := l.clockStart.Add(time.Duration(l.days.Load()+lifecycleHoldDays) * 24 * time.Hour).UTC().Format(time.RFC3339)
		hold := `{"id":"` + HoldID(e) + `","customer_id":"` + e.Customer + `","account":"default:USD","amount":"` +
			meter.FormatUnits(max(1, e.Charge*lifecycleHoldFactor), usdScale) + `","expires_at":"` + expires + `"}`
		if err := l.must(ctx, "POST", "/v1/holds", []byte(hold), 201); err != nil {
			return fmt.Errorf("lifecycle: hold: %w", err)
		}
	}
	if i%LifecycleTopupEvery == 0 {
		e := &events[0]
		top := `{"id":"t-` + e.ID + `","asset":"USD","amount":"` + lifecycleTopupUSD + `"}`
		if err := l.must(ctx, "POST", "/v1/customers/"+e.Customer+"/topups", []byte(top), 201); err != nil {
			return fmt.Errorf("lifecycle: top-up: %w", err)
		}
	}
	return nil
}

// Drive moves meterd's test clock a day forward every LifecycleDayEvery
// until the returned stop is called; it returns how many days it moved.
func (l *MeterdLifecycle) Drive(ctx context.Context) (stop func() (int, error)) {
	done := make(chan struct{})
	var days int
	var firstErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(LifecycleDayEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := l.must(ctx, "POST", "/v1/test-clock", []byte(`{"advance":"24h"}`), 200); err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			days++
			l.days.Add(1)
		}
	})
	return func() (int, error) { close(done); wg.Wait(); return days, firstErr }
}

// Balance is the available USD less every entry that is not usage (see
// the file's comment).
func (l *MeterdLifecycle) Balance(ctx context.Context, customer string) (int64, error) {
	avail, err := l.Meterd.Balance(ctx, customer)
	if err != nil {
		return 0, err
	}
	var credits int64
	err = l.entries(ctx, customer, func(typ, _ string, amount int64) {
		if typ != "usage" {
			credits += amount
		}
	})
	return avail - credits, err
}

// Ledger returns one row per event: the sum of its usage entries.
func (l *MeterdLifecycle) Ledger(ctx context.Context, customer string) ([]LedgerRow, error) {
	var rows []LedgerRow
	at := map[string]int{}
	err := l.entries(ctx, customer, func(typ, event string, amount int64) {
		if typ != "usage" {
			return
		}
		if i, ok := at[event]; ok {
			rows[i].Amount -= amount
			return
		}
		at[event] = len(rows)
		rows = append(rows, LedgerRow{EventID: event, Amount: -amount})
	})
	return rows, err
}
