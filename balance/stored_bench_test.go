package balance

import (
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// BenchmarkStoredBytes applies events of 1,000 customers in requests of
// 100 and reports what each event leaves in the store, by kind of key (key
// and value bytes, before Pebble's compression): its share of the command
// log (g, with no checkpoint during the run), and after a clean stop its
// idempotency record (i), its share of the commit group's expiry list (x),
// its ledger entry inside its wallet's chunk (l), and the in-memory
// idempotency index per id. DESIGN.md quotes it for the disk and memory
// cost of the window.
//
//	go test ./balance -run '^$' -bench StoredBytes -benchtime 10000x
func BenchmarkStoredBytes(b *testing.B) {
	const customers, batch = 1000, 100
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	dir := b.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := Open(Options{Dir: dir, Shards: 4, JanitorInterval: time.Hour, DefaultPricing: []byte(enginePricing),
		CheckpointInterval: time.Hour, Clock: clock, Log: log})
	if err != nil {
		b.Fatal(err)
	}
	customer := func(i int) string { return "cust_" + strconv.Itoa(100_000+i%customers) }
	for i := range customers {
		if _, err := e.PutCustomer(customer(i), wallet.Settings{}); err != nil {
			b.Fatal(err)
		}
		if _, err := e.TopUp(customer(i), &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1 << 50}, [16]byte{1}); err != nil {
			b.Fatal(err)
		}
	}
	before := storedBytes(b, e.st)
	ins := make([]EventIn, batch)
	ptrs := make([]*EventIn, batch)
	evs := make([]meter.Event, batch)
	n := 0
	b.ResetTimer()
	for range b.N {
		for j := range batch {
			n++
			evs[j] = meter.Event{ID: "evt_" + strconv.Itoa(10_000_000+n), CustomerID: customer(n), EventType: "image_generated"}
			ins[j] = EventIn{Event: &evs[j], Hash: [16]byte{byte(n)}}
			ptrs[j] = &ins[j]
		}
		if err := e.Events(ptrs); err != nil {
			b.Fatal(err)
		}
		if ins[0].Result.Status != EventCharged {
			b.Fatalf("status %s %s", statusName(ins[0].Result.Status), ins[0].Result.Code)
		}
		clock.advance(time.Millisecond)
	}
	b.StopTimer()
	logged := storedBytes(b, e.st)[prefixLog]
	index := 0
	for _, s := range e.shards {
		if e.readShard(s, func(sh *shard, g *group) { index += sh.ids.bytes() }) != nil {
			b.Fatal("reading a shard's index")
		}
	}
	if err := e.Close(); err != nil {
		b.Fatal(err)
	}
	st, err := openStore(dir, 8<<20, 100, log, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer st.close()
	after := storedBytes(b, st)
	b.ReportMetric(float64(logged)/float64(n), "g-B/event")
	for _, p := range []byte{prefixIdem, prefixExpiry, prefixLedger} {
		b.ReportMetric(float64(after[p]-before[p])/float64(n), string(p)+"-B/event")
	}
	b.ReportMetric(float64(index)/float64(n), "index-B/id")
}

// storedBytes sums key and value bytes in the store by the key's first byte.
func storedBytes(b *testing.B, st *store) map[byte]int {
	it, err := st.db.NewIter(&pebble.IterOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer it.Close()
	sums := make(map[byte]int)
	for ok := it.First(); ok; ok = it.Next() {
		sums[it.Key()[0]] += len(it.Key()) + len(it.Value())
	}
	if err := it.Error(); err != nil {
		b.Fatal(err)
	}
	return sums
}
