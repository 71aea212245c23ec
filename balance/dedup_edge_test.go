package balance

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// TestDedupWindowNeverChargesAResend is the property behind the dedup
// window (issue 9, defect 1): over random windows, occurred_at offsets and
// clock positions, a resend of an acknowledged (charged) event is never
// charged again. The caller's clock is modelled apart from the shard's: a
// decoder reads its clock some time before the shard applies the event (or,
// when the event joins a commit group that started before it was decoded,
// slightly after) and lets the event through iff
// reading-window <= occurred_at <= reading+futureSkew. Whenever the shard's
// own instant is still inside the event's window, the resend must answer
// duplicate with its original charges; past it, duplicate or out_of_window.
// The clock positions are drawn near the edges: the event's last instant in
// the window and the record's end, give or take a few nanoseconds or
// seconds. The janitor runs at random points.
func TestDedupWindowNeverChargesAResend(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			dedupEdgeRun(t, seed)
		})
	}
}

func dedupEdgeRun(t *testing.T, seed uint64) {
	const (
		windows      = 4  // engines, each with its own random window
		trials       = 30 // events per engine
		resends      = 6  // resends per event
		eventCredits = 40 // enginePricing's price of image_generated
		funds        = 1_000_000
	)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	// near returns at + d for a d drawn close to 0: a few ns or a few seconds.
	near := func(at int64) int64 {
		if rng.IntN(2) == 0 {
			return at + rng.Int64N(7) - 3
		}
		return at + rng.Int64N(int64(4*time.Second)) - int64(2*time.Second)
	}
	// lag is how long before the shard's instant the decoder read its clock;
	// now and then negative (it read it after the group started).
	lag := func() int64 {
		switch rng.IntN(4) {
		case 0:
			return 0
		case 1:
			return -rng.Int64N(int64(3 * time.Second))
		case 2:
			return rng.Int64N(int64(3 * time.Second))
		default:
			return rng.Int64N(int64(time.Hour))
		}
	}
	accepts := func(occurred, reading int64, window time.Duration) bool {
		return occurred >= reading-int64(window) && occurred <= reading+int64(futureSkew)
	}

	for wi := 0; wi < windows; wi++ {
		window := time.Duration(int64(time.Hour) + rng.Int64N(int64(40*24*time.Hour)))
		clock := &testClock{}
		clock.ns.Store(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC).UnixNano() + rng.Int64N(int64(365*24*time.Hour)))
		e := openTestEngine(t, clock, window)
		if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t1", Account: "default", Asset: "CREDITS", Amount: funds}, [16]byte{9}); err != nil {
			t.Fatal(err)
		}
		charged := 0
		send := func(id string, occurred, at int64) EventResult {
			t.Helper()
			clock.ns.Store(at)
			in := &EventIn{Event: &meter.Event{ID: id, CustomerID: "c1", EventType: "image_generated", OccurredAt: occurred}, Hash: [16]byte{1}}
			if err := e.Events([]*EventIn{in}); err != nil {
				t.Fatal(err)
			}
			return in.Result
		}
		for tr := 0; tr < trials; tr++ {
			id := "e" + strconv.Itoa(tr)
			// First send: recorded at r, let through by a decoder that read
			// its clock at r-lag, with occurred_at anywhere it accepts,
			// often at one of its ends.
			r := clock.Now() + rng.Int64N(int64(time.Hour))
			reading := r - lag()
			var occurred int64
			switch rng.IntN(3) {
			case 0:
				occurred = reading + int64(futureSkew)
			case 1:
				occurred = reading - int64(window)
			default:
				occurred = reading - rng.Int64N(int64(window+futureSkew)) + int64(futureSkew)
			}
			first := send(id, occurred, r)
			if first.Status != EventCharged {
				if first.Status != EventRejected || first.Code != "out_of_window" {
					t.Fatalf("seed %d window %v: first send of %s (occurred %d, at %d): %+v, want charged or out_of_window", seed, window, id, occurred, r, first)
				}
				continue // the shard's clock is past the window: nothing acknowledged
			}
			charged++
			last := occurred + int64(window) // the event's last instant in the window
			recordEnd := r + int64(window) + int64(futureSkew)
			ats := make([]int64, resends)
			for i := range ats {
				switch rng.IntN(4) {
				case 0, 1:
					ats[i] = near(last)
				case 2:
					ats[i] = near(recordEnd)
				default:
					ats[i] = r + rng.Int64N(recordEnd-r+int64(time.Hour))
				}
				ats[i] = max(ats[i], r)
			}
			slices.Sort(ats)
			for _, at := range ats {
				if rng.IntN(3) == 0 {
					clock.ns.Store(at)
					if err := e.DropExpired(); err != nil {
						t.Fatal(err)
					}
				}
				if reading := at - lag(); !accepts(occurred, reading, window) {
					continue // the decoder refuses it: the engine never sees it
				}
				res := send(id, occurred, at)
				ok := res.Status == EventDuplicate && len(res.Charges) == 1 && res.Charges[0].Amount == eventCredits
				if !ok && at > last {
					ok = res.Status == EventRejected && res.Code == "out_of_window"
				}
				if !ok {
					t.Fatalf("seed %d window %v: %s occurred %s, charged at %s; resend at %s (%v after its last instant in the window): %s %q %+v, want duplicate%s",
						seed, window, id, stamp(occurred), stamp(r), stamp(at), time.Duration(at-last), statusName(res.Status), res.Code, res.Charges,
						map[bool]string{true: " or out_of_window", false: " with the original charges"}[at > last])
				}
			}
		}
		w, err := e.Wallet("c1")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := w.Account("default:CREDITS").Available(), int64(funds-eventCredits*charged); got != want {
			t.Fatalf("seed %d window %v: available %d, want %d: %d events charged once each", seed, window, got, want, charged)
		}
	}
}

func stamp(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }

func statusName(s uint8) string {
	switch s {
	case EventCharged:
		return "charged"
	case EventRecorded:
		return "recorded"
	case EventDuplicate:
		return "duplicate"
	case EventRejected:
		return "rejected"
	}
	return "status " + strconv.Itoa(int(s))
}
