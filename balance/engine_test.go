package balance

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// testClock is a clock the test moves by hand.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) Now() int64              { return c.ns.Load() }
func (c *testClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

const enginePricing = `{"assets":[{"code":"CREDITS","scale":0}],
 "prices":[{"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"}]}`

func openTestEngine(t *testing.T, clock Clock, window time.Duration) *Engine {
	t.Helper()
	e, err := Open(Options{
		Dir: t.TempDir(), Shards: 2, DedupWindow: window, JanitorInterval: time.Hour,
		DefaultPricing: []byte(enginePricing), Clock: clock,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func imageEvent(id string, hash byte) *EventIn {
	return &EventIn{Event: &meter.Event{ID: id, CustomerID: "c1", EventType: "image_generated"}, Hash: [16]byte{hash}}
}

// countKeys counts the stored keys that start with prefix.
// storedIDs counts the idempotency records in the store: under their own
// keys, and in the command log's records.
func storedIDs(t *testing.T, e *Engine) int {
	t.Helper()
	n := countKeys(t, e, prefixIdem)
	it, err := e.st.db.NewIter(prefixRange(prefixLog))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		r, err := newLogReader(it.Value())
		if err != nil {
			t.Fatal(err)
		}
		for {
			_, ok, err := r.next()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if r.flags&logID != 0 {
				n++
			}
		}
	}
	return n
}

// waitReplayFloor waits until checkpoints have passed every log record
// written so far, so that only the dedup window keeps them.
func waitReplayFloor(t *testing.T, e *Engine) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for last := e.logSeq.Load(); replayFloor(e) <= last; {
		if time.Now().After(deadline) {
			t.Fatalf("replay floor %d, not past record %d after 10 s", replayFloor(e), last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func countKeys(t *testing.T, e *Engine, prefix byte) int {
	t.Helper()
	return countPrefix(t, e.st.db, prefix)
}

// countPrefix counts the keys of db that start with prefix.
func countPrefix(t *testing.T, db *pebble.DB, prefix byte) int {
	t.Helper()
	it, err := db.NewIter(prefixRange(prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n
}

func TestEngineDuplicateInOneBatch(t *testing.T) {
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	e := openTestEngine(t, clock, 35*24*time.Hour)
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t1", Account: "default", Asset: "CREDITS", Amount: 1000}, [16]byte{9}); err != nil {
		t.Fatal(err)
	}
	a, b, c := imageEvent("e1", 1), imageEvent("e1", 1), imageEvent("e1", 2)
	if err := e.Events([]*EventIn{a, b, c}); err != nil {
		t.Fatal(err)
	}
	if a.Result.Status != EventCharged || b.Result.Status != EventDuplicate || c.Result.Code != wallet.CodeIdempotencyConflict {
		t.Fatalf("statuses %d %d %q, want charged, duplicate, idempotency_conflict", a.Result.Status, b.Result.Status, c.Result.Code)
	}
	if b.Result.Charges[0].Amount != 40 || b.Result.Charges[0].Parts[0].BucketID != a.Result.Charges[0].Parts[0].BucketID {
		t.Fatalf("duplicate charges %+v, want the original %+v", b.Result.Charges, a.Result.Charges)
	}
	w, err := e.Wallet("c1")
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Account("default:CREDITS").Available(); got != 960 {
		t.Fatalf("available %d, want 960: the event was applied once", got)
	}
}

// TestEngineDropsExpiredIdempotencyRecords: records live for the dedup
// window (plus the 5 minutes an event may be ahead), then the janitor drops
// them and their index keys, and leaves younger records alone.
func TestEngineDropsExpiredIdempotencyRecords(t *testing.T) {
	const window = 24 * time.Hour
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	e := openTestEngine(t, clock, window)
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t1", Account: "default", Asset: "CREDITS", Amount: 1000}, [16]byte{9}); err != nil {
		t.Fatal(err)
	}
	if err := e.Events([]*EventIn{imageEvent("old", 1)}); err != nil {
		t.Fatal(err)
	}
	clock.advance(12 * time.Hour)
	young := imageEvent("young", 1)
	if err := e.Events([]*EventIn{young}); err != nil || young.Result.Status != EventCharged {
		t.Fatalf("young: %v %+v", err, young.Result)
	}
	if n := storedIDs(t, e); n != 3 {
		t.Fatalf("%d idempotency records, want 3 (top-up and two events)", n)
	}

	// Just inside the window of the old records: nothing is dropped.
	clock.advance(12*time.Hour + futureSkew - time.Second)
	if err := e.DropExpired(); err != nil {
		t.Fatal(err)
	}
	if n := storedIDs(t, e); n != 3 {
		t.Fatalf("%d records one second before the window ends, want 3", n)
	}
	again := imageEvent("old", 1)
	if err := e.Events([]*EventIn{again}); err != nil || again.Result.Status != EventDuplicate {
		t.Fatalf("resend inside the window: %v %+v, want duplicate", err, again.Result)
	}

	// Past it: the top-up's and the old event's records and index keys go
	// (the event's log record once checkpoints no longer need it either).
	waitReplayFloor(t, e)
	clock.advance(2 * time.Second)
	if err := e.DropExpired(); err != nil {
		t.Fatal(err)
	}
	if n := storedIDs(t, e); n != 1 {
		t.Fatalf("%d records after the window, want 1 (the young event)", n)
	}
	// The top-up's went with it; the events' records are in log records,
	// which list no expiry-index key.
	if n := countKeys(t, e, prefixExpiry); n != 0 {
		t.Fatalf("%d expiry index keys after the window, want 0", n)
	}
	y := imageEvent("young", 1)
	if err := e.Events([]*EventIn{y}); err != nil || y.Result.Status != EventDuplicate {
		t.Fatalf("young resend: %v %+v, want duplicate", err, y.Result)
	}
}

// TestEntryBucketKind: every ledger entry drawn from or granting a bucket
// names the bucket's kind, so consumption can be split by kind downstream.
func TestEntryBucketKind(t *testing.T) {
	w := wallet.NewWallet("c1", wallet.Settings{Policy: wallet.PolicyOverdraft, CreditLimits: []wallet.Limit{{Account: "default:CREDITS", Units: 100}}}, 1)
	var out []wallet.Entry
	var err *wallet.Error
	out, err = w.Adjust(&wallet.AdjustCmd{TransactionID: "p", Account: "default", Asset: "CREDITS", Amount: 10, Kind: wallet.KindPromotional, Priority: -1}, 1, out)
	if err != nil {
		t.Fatal(err)
	}
	_, out, err = w.TopUp(&wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 10}, 1, out)
	if err != nil {
		t.Fatal(err)
	}
	_, out, err = w.Charge(&wallet.UsageCmd{EventID: "e", Charges: []meter.Charge{{Account: "default:CREDITS", Name: "default", Asset: "CREDITS", Amount: meter.Fine{Units: 25}}}}, 2, nil, out)
	if err != nil {
		t.Fatal(err)
	}
	want := []wallet.Kind{wallet.KindPromotional, wallet.KindRecharge, wallet.KindPromotional, wallet.KindRecharge, 0}
	if len(out) != len(want) {
		t.Fatalf("%d entries, want %d: %+v", len(out), len(want), out)
	}
	for i, e := range out {
		if e.BucketKind != want[i] {
			t.Fatalf("entry %d (%s, bucket %q): kind %d, want %d", i, e.Type, e.BucketID, e.BucketKind, want[i])
		}
		var back wallet.Entry
		if err := wallet.DecodeEntry(wallet.AppendEntry(nil, &e), &back); err != nil || back.BucketKind != e.BucketKind {
			t.Fatalf("entry %d: codec lost the kind: %v %d", i, err, back.BucketKind)
		}
	}
}

// A second engine on a data directory in use is refused, saying so: the
// directory, its lock, and what to do.
func TestOpenDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Shards: 1, DefaultPricing: []byte(enginePricing), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(opts)
	if !errors.Is(err, ErrDataDirInUse) || !strings.Contains(err.Error(), filepath.Join(dir, "LOCK")) || !strings.Contains(err.Error(), "another --data-dir") {
		t.Fatalf("a second Open: %v", err)
	}
	e.Close()
	// Once the first is closed, the directory opens again.
	e, err = Open(opts)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	e.Close()
}

// Recorded unpriced events are counted per event type, under "(other)"
// past the first 256 types.
func TestUnpricedEventsCounted(t *testing.T) {
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	e := openTestEngine(t, clock, 35*24*time.Hour)
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	var ins []*EventIn
	for i := range 300 {
		ins = append(ins, &EventIn{Event: &meter.Event{ID: fmt.Sprintf("e%d", i), CustomerID: "c1", EventType: fmt.Sprintf("view_%d", i%260)}, Hash: [16]byte{1}})
	}
	if err := e.Events(ins); err != nil {
		t.Fatal(err)
	}
	for _, in := range ins {
		if in.Result.Status != EventRecorded {
			t.Fatalf("%s: %+v", in.Event.ID, in.Result)
		}
	}
	if n := testCounter(t, e.metrics.unpricedVec.WithLabelValues("view_0")); n != 2 {
		t.Errorf("view_0 counted %v, want 2", n)
	}
	if n := testCounter(t, e.metrics.unpricedVec.WithLabelValues("(other)")); n != 4 {
		t.Errorf("(other) counted %v, want 4 (the events of types 257-260)", n)
	}
}

// BenchmarkCheck is the synchronous check of one event: rating, the
// customer's shard, a copy of the wallet charged (POST /v1/check less HTTP).
func BenchmarkCheck(b *testing.B) {
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	e, err := Open(Options{Dir: b.TempDir(), Shards: 2, DefaultPricing: []byte(enginePricing), Clock: clock,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		b.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1 << 40}, [16]byte{1}); err != nil {
		b.Fatal(err)
	}
	in := imageEvent("e1", 1)
	ins := []*EventIn{in}
	b.ReportAllocs()
	for b.Loop() {
		if err := e.Check(ins); err != nil || in.Result.Status != EventCharged {
			b.Fatalf("%v %+v", err, in.Result)
		}
	}
}
