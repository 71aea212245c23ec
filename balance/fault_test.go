package balance

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// TestFsyncFailureStops: when an fsync fails (injected with Pebble's
// errorfs) the engine stops the process rather than carrying on — a
// failed fsync cannot be retried safely — answering nothing that was not
// durable; a restart on what the disk kept has every acknowledged event,
// each once.
func TestFsyncFailureStops(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var failing atomic.Bool
	fs := errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failing.Load() && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData || op.Kind == errorfs.OpFileSyncTo) {
			return errorfs.ErrInjected
		}
		return nil
	}))
	exited := make(chan int, 1)
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC).UnixNano())
	open := func(fs vfs.FS, exit func(int)) *Engine {
		e, err := Open(Options{Dir: "/data", Shards: 2, JanitorInterval: time.Hour, TimerInterval: time.Hour,
			CheckpointInterval: time.Hour, ReserveBytes: 1 << 20, DefaultPricing: []byte(replayPricing), Clock: clock,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)), fs: fs, exit: exit,
			diskAvail: func() (uint64, error) { return 1 << 40, nil }})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := open(fs, func(code int) { exited <- code })
	const customers = 8
	for i := range customers {
		c := fmt.Sprintf("f%d", i)
		if _, err := e.PutCustomer(c, wallet.Settings{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.TopUp(c, &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1_000_000}, [16]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	// Writers send events; those acknowledged are remembered.
	var mu sync.Mutex
	acked := map[string]*EventIn{}
	var seq atomic.Int64
	stop := make(chan struct{})
	for w := range 4 {
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := seq.Add(1)
				in := loadEvent(fmt.Sprintf("e%d", n), fmt.Sprintf("f%d", (int(n)+w)%customers), n, clock.Now())
				if err := e.Events([]*EventIn{in}); err == nil && in.Result.Status == EventCharged {
					mu.Lock()
					acked[in.Event.ID] = in
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	failing.Store(true)
	select {
	case code := <-exited:
		if code == 0 {
			t.Fatalf("stopped with status 0")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the engine carried on after a failed fsync")
	}
	mu.Lock()
	got := make(map[string]*EventIn, len(acked))
	for k, v := range acked {
		got[k] = v
	}
	mu.Unlock()
	close(stop)
	if len(got) < 10 {
		t.Fatalf("only %d events acknowledged before the failure", len(got))
	}
	// What the disk kept: only what was synced.
	crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	again := open(crashed, nil)
	defer again.Close()
	spent := map[string]int64{}
	for id, in := range got {
		dup := &EventIn{Event: in.Event, Hash: in.Hash}
		if err := again.Events([]*EventIn{dup}); err != nil {
			t.Fatal(err)
		}
		if dup.Result.Status != EventDuplicate {
			t.Fatalf("acknowledged event %s after the restart: %+v (lost)", id, dup.Result)
		}
		spent[in.Event.CustomerID] += 40
	}
	// Each once: a customer's balance is at most what its acknowledged
	// events left (others may have landed unacknowledged, never twice).
	for i := range customers {
		c := fmt.Sprintf("f%d", i)
		w, err := again.Wallet(c)
		if err != nil {
			t.Fatal(err)
		}
		if avail := w.Accounts[0].Available(); avail > 1_000_000-spent[c] || (1_000_000-avail)%40 != 0 {
			t.Errorf("customer %s: %d available, acknowledged spending %d", c, avail, spent[c])
		}
	}
}

// TestClockSteppedBack: the wall clock the engine reads is stepped back by
// an hour under load, across a day boundary of daily plans: no ledger
// entry's time goes backwards, and each period's grant and each bucket's
// expiry happens once.
func TestClockSteppedBack(t *testing.T) {
	clock := &testClock{}
	start := time.Date(2026, 12, 5, 23, 50, 0, 0, time.UTC)
	clock.ns.Store(start.UnixNano())
	e, err := Open(Options{Dir: t.TempDir(), Shards: 2, JanitorInterval: time.Hour, TimerInterval: time.Millisecond,
		DefaultPricing: []byte(enginePricing), Clock: clock, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const customers = 6
	plan := &wallet.Plan{ID: "daily", Allocations: []wallet.Allocation{{Account: "default", Asset: "CREDITS", Amount: 1000,
		Period: wallet.PeriodDay, Anchor: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano(), Strategy: wallet.StrategyExpireAndReplace}}}
	for i := range customers {
		if _, err := e.PutCustomer(fmt.Sprintf("k%d", i), wallet.Settings{Plan: plan}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seq atomic.Int64
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := seq.Add(1)
				in := loadEvent(fmt.Sprintf("c%d", n), fmt.Sprintf("k%d", (int(n)+w)%customers), n, e.Now())
				if err := e.Events([]*EventIn{in}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// Time runs a minute per 2 ms: past midnight, then back an hour, then
	// past midnight again.
	for i := 0; i < 40; i++ {
		clock.advance(time.Minute)
		time.Sleep(2 * time.Millisecond)
		if i == 20 {
			clock.advance(-time.Hour)
		}
	}
	for i := 0; i < 90; i++ {
		clock.advance(time.Minute)
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	for i := range customers {
		c := fmt.Sprintf("k%d", i)
		var all []wallet.Entry
		var before uint64
		for {
			page, err := e.Ledger(c, "", before, 1000)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, page.Entries...)
			if page.Next == 0 {
				break
			}
			before = page.Next
		}
		grants := map[int64]int{}
		expired := map[string]int{}
		for j := len(all) - 1; j >= 0; j-- { // oldest first
			en := &all[j]
			if j < len(all)-1 && en.RecordedAt < all[j+1].RecordedAt {
				t.Fatalf("customer %s: entry %d recorded at %d, before entry %d at %d", c, en.Seq, en.RecordedAt, all[j+1].Seq, all[j+1].RecordedAt)
			}
			switch en.Type {
			case wallet.EntryGrant:
				grants[en.OccurredAt]++
			case wallet.EntryExpiry:
				expired[en.BucketID]++
			}
		}
		for at, n := range grants {
			if n != 1 {
				t.Errorf("customer %s: %d grants for the period at %s", c, n, time.Unix(0, at).UTC())
			}
		}
		for b, n := range expired {
			if n != 1 {
				t.Errorf("customer %s: bucket %s expired %d times", c, b, n)
			}
		}
		if len(grants) != 2 {
			t.Errorf("customer %s: %d periods granted, want 2 (Dec 5 and Dec 6): %v", c, len(grants), grants)
		}
	}
}

// loadEvent is the n-th image_generated event of a test's writers, with a
// content hash of its own.
func loadEvent(id, customer string, n, at int64) *EventIn {
	return &EventIn{Event: &meter.Event{ID: id, CustomerID: customer, EventType: "image_generated", OccurredAt: at},
		Hash: [16]byte{byte(n), byte(n >> 8), byte(n >> 16)}}
}
