package balance

import (
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func testCounter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestIDIndexAgainstAMap: across adds, growth and sweeps, the index never
// says "absent" for a key that a plain map holds unexpired, and says it for
// every key never added (bar fingerprint collisions, which 64 bits make
// unseen here).
func TestIDIndexAgainstAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	x := newIDIndex(maphash.MakeSeed())
	x.ready = true
	live := map[string]int64{}
	now := int64(1_000_000) * 1e9
	for step := 0; step < 200_000; step++ {
		now += int64(rng.IntN(2_000_000))
		key := []byte(fmt.Sprintf("ie c%d\x00e%d", rng.IntN(50), rng.IntN(20_000)))
		switch rng.IntN(10) {
		case 0:
			x.sweep(now)
		case 1, 2, 3:
			exp := now + int64(rng.IntN(300))*1e9
			x.add(key, exp, 0, now)
			if exp > live[string(key)] {
				live[string(key)] = exp
			}
		default:
			exp, ok := live[string(key)]
			stored := ok && exp > now
			if stored && x.absent(key, now) {
				t.Fatalf("step %d: %q expires at %d, after now %d, but the index says absent", step, key, exp, now)
			}
			if !ok && !x.absent(key, now) {
				t.Fatalf("step %d: %q was never added, but the index says maybe", step, key)
			}
		}
	}
	if x.n > 4*len(live) || len(x.fps) < x.n {
		t.Fatalf("%d entries in %d slots for %d keys", x.n, len(x.fps), len(live))
	}
}

// TestIDIndexNotReadyReadsTheStore: before the stored keys are merged, the
// index answers nothing.
func TestIDIndexNotReadyReadsTheStore(t *testing.T) {
	x := newIDIndex(maphash.MakeSeed())
	if x.absent([]byte("ie c\x00new"), 1) {
		t.Fatal("an index that is not ready said absent")
	}
	built := newIDIndex(x.seed)
	built.add([]byte("ie c\x00old"), 100e9, 0, 0)
	x.merge(&built)
	if x.absent([]byte("ie c\x00old"), 1) || !x.absent([]byte("ie c\x00new"), 1) {
		t.Fatal("after the merge: old must be maybe, new absent")
	}
	if !x.absent([]byte("ie c\x00old"), 100e9) {
		t.Fatal("a record at its ExpireAt counts as absent")
	}
}

func TestRecordExpireAtReadsThePrefix(t *testing.T) {
	r := &record{Kind: idemEvent, Hash: [16]byte{1}, RecordedAt: 123456789, ExpireAt: 987654321012, EventType: "x", Data: []byte(`{"a":1}`)}
	exp, ok := recordExpireAt(r.append(nil))
	if !ok || exp != r.ExpireAt {
		t.Fatalf("got %d %v, want %d", exp, ok, r.ExpireAt)
	}
	if _, ok := recordExpireAt([]byte{recordVersion, 'e', 1}); ok {
		t.Fatal("a short record was read")
	}
}

// TestIndexAfterRestart: events stored before a restart are found by the
// index built in the background (duplicate, and a changed resend is still
// a conflict), new ids skip the store, and the janitor still drops records
// listed in the expiry-index keys of the format before lists.
func TestIndexAfterRestart(t *testing.T) {
	dir := t.TempDir()
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	open := func() *Engine {
		e, err := Open(Options{Dir: dir, Shards: 2, DedupWindow: 24 * time.Hour, JanitorInterval: time.Hour,
			DefaultPricing: []byte(enginePricing), Clock: clock, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := open()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t1", Account: "default", Asset: "CREDITS", Amount: 1000}, [16]byte{9}); err != nil {
		t.Fatal(err)
	}
	if err := e.Events([]*EventIn{imageEvent("e1", 1), imageEvent("e2", 1)}); err != nil {
		t.Fatal(err)
	}
	// A record written the way the format before lists wrote it: its own
	// expiry-index key with an empty value.
	legacy := idemKey(nil, idemEvent, "c1", "legacy")
	r := &record{Kind: idemEvent, Hash: [16]byte{3}, Status: EventRecorded, RecordedAt: clock.Now(), ExpireAt: clock.Now() + int64(time.Hour)}
	if err := e.st.db.Set(legacy, r.append(nil), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := e.st.db.Set(expiryKey(nil, r.ExpireAt, legacy), nil, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	e.Close()

	e = open()
	defer e.Close()
	waitIndexesReady(t, e)
	again := []*EventIn{imageEvent("e1", 1), imageEvent("e2", 2), imageEvent("legacy", 3), imageEvent("e3", 1)}
	if err := e.Events(again); err != nil {
		t.Fatal(err)
	}
	want := []string{"duplicate", "rejected idempotency_conflict", "duplicate", "charged"}
	for i, in := range again {
		got := statusName(in.Result.Status)
		if in.Result.Status == EventRejected {
			got += " " + in.Result.Code
		}
		if got != want[i] {
			t.Fatalf("event %s: %s, want %s", in.Event.ID, got, want[i])
		}
	}
	if again[0].Result.Charges[0].Amount != 40 {
		t.Fatalf("duplicate answered %+v, want the original charge of 40", again[0].Result.Charges)
	}
	if testCounter(t, e.metrics.idemLookups.WithLabelValues("index")) < 1 {
		t.Fatal("the new id e3 was not answered by the index")
	}

	clock.advance(2 * time.Hour)
	if err := e.DropExpired(); err != nil {
		t.Fatal(err)
	}
	if v, err := e.st.get(legacy); err != nil || v != nil {
		t.Fatalf("the legacy record was not dropped: %v %x", err, v)
	}
}

func waitIndexesReady(t *testing.T, e *Engine) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ready := true
		for _, s := range e.shards {
			var r bool
			if err := e.readShard(s, func(sh *shard, g *group) { r = sh.ids.ready }); err != nil {
				t.Fatal(err)
			}
			ready = ready && r
		}
		if ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the idempotency indexes were not ready after 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEngineAPIDefends: the engine's exported calls answer instead of
// panicking or blocking, whatever the caller does.
func TestEngineAPIDefends(t *testing.T) {
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	e := openTestEngine(t, clock, 24*time.Hour)
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{0, -1} {
		if _, err := e.Ledger("c1", "", 0, limit); err == nil || err.(*wallet.Error).Code != wallet.CodeInvalidRequest {
			t.Fatalf("Ledger with limit %d: %v, want invalid_request", limit, err)
		}
	}

	// Calls racing Close get an answer (applied, or overloaded), never a
	// send on a closed channel.
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; ; j++ {
				err := e.Events([]*EventIn{imageEvent(fmt.Sprintf("r%d-%d", i, j), 1)})
				if err == ErrOverloaded {
					if _, werr := e.Wallet("c1"); werr != ErrOverloaded {
						t.Errorf("a read after close: %v, want overloaded", werr)
					}
					return
				}
				if err != nil {
					t.Errorf("events: %v", err)
					return
				}
			}
		}(i)
	}
	time.Sleep(20 * time.Millisecond)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// TestEventsNeverBlockOnAFullQueue: a full shard queue refuses the whole
// call at once.
func TestEventsNeverBlockOnAFullQueue(t *testing.T) {
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	e, err := Open(Options{Dir: t.TempDir(), Shards: 1, QueueMax: 2, DefaultPricing: []byte(enginePricing), Clock: clock,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	// Hold the shard in an op, then fill its queue.
	hold, release := make(chan struct{}), make(chan struct{})
	go e.readShard(e.shards[0], func(*shard, *group) { close(hold); <-release })
	<-hold
	for i := 0; i < 2; i++ {
		go e.readShard(e.shards[0], func(*shard, *group) {})
	}
	for e.shards[0].slots.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- e.Events([]*EventIn{imageEvent("x", 1)}) }()
	select {
	case err := <-done:
		if err != ErrOverloaded {
			t.Fatalf("events on a full queue: %v, want overloaded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Events blocked on a full queue")
	}
	close(release)
}

// BenchmarkIDIndex: the cost of recording an id and of answering "absent"
// for a new one, and the memory per million ids held.
func BenchmarkIDIndex(b *testing.B) {
	const held = 1_000_000
	x := newIDIndex(maphash.MakeSeed())
	x.ready = true
	key := make([]byte, 0, 64)
	for i := 0; i < held; i++ {
		x.add(benchIDKey(key, i, "evt_"), 1<<40, uint64(i), 0)
	}
	b.Run("absent", func(b *testing.B) {
		b.ReportMetric(float64(x.bytes())/held*1e6/(1<<20), "MiB/Mids")
		for i := 0; i < b.N; i++ {
			if !x.absent(benchIDKey(key, i, "new_"), 1) {
				b.Fatal("a new id was not absent")
			}
		}
	})
	b.Run("add", func(b *testing.B) {
		y := newIDIndex(maphash.MakeSeed())
		for i := 0; i < b.N; i++ {
			y.add(benchIDKey(key, i, "evt_"), 1<<40, uint64(i), 0)
		}
	})
}

func benchIDKey(dst []byte, i int, prefix string) []byte {
	dst = append(dst[:0], "ie bench-"...)
	dst = strconv.AppendInt(dst, int64(i%10_000), 10)
	dst = append(dst, 0)
	dst = append(dst, prefix...)
	return strconv.AppendInt(dst, int64(i), 10)
}
