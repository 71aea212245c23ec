package balance

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/meterd/meterd/balance/wallet"
)

func openOutboxEngine(t *testing.T, dir string, sinks []string) *Engine {
	t.Helper()
	e, err := Open(Options{Dir: dir, Shards: 2, JanitorInterval: time.Hour, DefaultPricing: []byte(enginePricing),
		Sinks: sinks, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// readAll returns every durable outbox record after seq.
func readAll(t *testing.T, e *Engine, after uint64) []*OutboxRecord {
	t.Helper()
	var out []*OutboxRecord
	if err := e.ReadOutbox(after, func(r *OutboxRecord) bool { out = append(out, r); return true }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestOutboxCarriesEveryEntryAndUsageRecord(t *testing.T) {
	dir := t.TempDir()
	e := openOutboxEngine(t, dir, []string{"test"})
	const customers, perCustomer = 8, 50
	var wg sync.WaitGroup
	for c := 0; c < customers; c++ {
		id := fmt.Sprintf("c%d", c)
		if _, err := e.PutCustomer(id, wallet.Settings{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.TopUp(id, &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 40 * perCustomer / 2}, [16]byte{1}); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perCustomer; i++ {
				in := &EventIn{Event: imageEvent(fmt.Sprintf("e%d", i), 1).Event, Hash: [16]byte{1}}
				in.Event.CustomerID = id
				if err := e.Events([]*EventIn{in}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if wm, issued := e.OutboxWatermark(), e.outboxSeq.Load(); wm != issued {
		t.Fatalf("watermark %d after every answer, want every issued seq %d", wm, issued)
	}
	recs := readAll(t, e, 0)
	entries, usage := map[string]int{}, map[string]int{}
	var last uint64
	for _, r := range recs {
		if r.Seq <= last {
			t.Fatalf("seq %d after %d", r.Seq, last)
		}
		last = r.Seq
		for _, en := range r.Entries {
			if en.RecordedAt != r.RecordedAt {
				t.Fatalf("entry recorded at %d in a record of %d", en.RecordedAt, r.RecordedAt)
			}
			entries[en.Customer]++
		}
		for _, u := range r.Usage {
			if u.Status != EventCharged || len(u.Charges) != 1 || u.Charges[0].Amount != 40 || u.EventType != "image_generated" {
				t.Fatalf("usage record %+v", u)
			}
			usage[u.Customer]++
		}
	}
	for c := 0; c < customers; c++ {
		id := fmt.Sprintf("c%d", c)
		page, err := e.Ledger(id, "", 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		// Half the events are charged (the top-up covers half); the rest are
		// rejected, which writes nothing.
		if entries[id] != len(page.Entries) || entries[id] != 1+perCustomer/2 || usage[id] != perCustomer/2 {
			t.Fatalf("%s: outbox has %d entries and %d usage records, ledger %d entries; want %d and %d",
				id, entries[id], usage[id], len(page.Entries), 1+perCustomer/2, perCustomer/2)
		}
	}
	e.Close()

	// Cursors survive, shipped records go, and after a restart with every
	// record dropped the sequence goes on rather than starting over.
	e = openOutboxEngine(t, dir, []string{"test"})
	defer e.Close()
	if err := e.SetCursor("test", last); err != nil {
		t.Fatal(err)
	}
	if c, err := e.Cursor("test"); err != nil || c != last {
		t.Fatalf("cursor %d %v, want %d", c, err, last)
	}
	if err := e.dropShipped(); err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, e, prefixOutbox); n != 0 {
		t.Fatalf("%d outbox records after every one was shipped", n)
	}
	e.Close()
	e = openOutboxEngine(t, dir, []string{"test"})
	defer e.Close()
	if _, err := e.TopUp("c0", &wallet.TopUpCmd{ID: "t2", Account: "default", Asset: "CREDITS", Amount: 1}, [16]byte{2}); err != nil {
		t.Fatal(err)
	}
	recs = readAll(t, e, last)
	if len(recs) != 1 || recs[0].Seq != last+1 || len(recs[0].Entries) != 1 {
		t.Fatalf("after a restart: %d records, first seq %v; want one record with seq %d", len(recs), recs, last+1)
	}
}

func TestOutboxNotWrittenWithoutSinks(t *testing.T) {
	e := openOutboxEngine(t, t.TempDir(), nil)
	defer e.Close()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 100}, [16]byte{1}); err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, e, prefixOutbox); n != 0 || e.OutboxWatermark() != 0 {
		t.Fatalf("%d outbox records, watermark %d, without sinks", n, e.OutboxWatermark())
	}
}

func TestWatermarkOutOfOrder(t *testing.T) {
	m := newWatermark(10)
	for _, s := range []uint64{12, 14, 13} {
		m.mark(s)
		if m.get() != 10 {
			t.Fatalf("watermark moved to %d with 11 missing", m.get())
		}
	}
	m.mark(11)
	if m.get() != 14 {
		t.Fatalf("watermark %d, want 14", m.get())
	}
	select {
	case <-m.notify:
	default:
		t.Fatal("no notification when the watermark advanced")
	}
}

func TestInstanceIDIsStable(t *testing.T) {
	dir := t.TempDir()
	e := openOutboxEngine(t, dir, nil)
	id := e.InstanceID()
	e.Close()
	if len(id) != 16 {
		t.Fatalf("instance id %q", id)
	}
	e = openOutboxEngine(t, dir, nil)
	defer e.Close()
	if e.InstanceID() != id {
		t.Fatalf("instance id changed across a restart: %q -> %q", id, e.InstanceID())
	}
	other := openOutboxEngine(t, t.TempDir(), nil)
	defer other.Close()
	if other.InstanceID() == id {
		t.Fatal("two data directories share an instance id")
	}
}
