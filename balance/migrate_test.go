package balance

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meterd/meterd/meter"
)

// testdata/datadir-before-lists, datadir-before-log and datadir-before-ids
// are data directories written by the engine before expiry-index keys
// listed a commit group's records (commit effba98), before the command log
// (bf5fcf5), and before events' idempotency records moved into the log
// (444b3da, left by a crash: its format-1 log is replayed), by the program
// in their READMEs: two customers, top-ups, eight charged events at 10:00
// and 10:30 on 2026-11-21, a 24-hour window. This release opens each as it
// is, answers its events as duplicates with their original charges,
// charges new ones, reads its ledger with the new entries, and drops its
// records once they expire.
func TestOpensADataDirOfTheReleaseBefore(t *testing.T) {
	for fixture, replays := range map[string]int{"datadir-before-lists": 0, "datadir-before-log": 0, "datadir-before-ids": 8} {
		t.Run(fixture, func(t *testing.T) { opensFixture(t, fixture, replays) })
	}
}

func opensFixture(t *testing.T, fixture string, replays int) {
	// A copy: opening writes to it. Its README goes along; the store
	// ignores a file it does not know.
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("testdata", fixture))); err != nil {
		t.Fatal(err)
	}
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 11, 21, 10, 31, 0, 0, time.UTC).UnixNano())
	replayed := 0
	// Another shard count than the writer's: routing is not stored.
	e, err := Open(Options{Dir: dir, Shards: 3, DedupWindow: 24 * time.Hour, JanitorInterval: time.Hour,
		ReserveBytes: 1 << 20, DefaultPricing: []byte(enginePricing), Clock: clock,
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		replayed: func(n int) { replayed += n }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if replayed != replays {
		t.Errorf("opening replayed %d commands, want %d", replayed, replays)
	}
	waitIndexesReady(t, e)

	for c, want := range map[string]int64{"c1": 1000 - 6*40, "c2": 500 - 2*40} {
		w, err := e.Wallet(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := w.Account("default:CREDITS").Available(); got != want {
			t.Errorf("%s available %d, want %d", c, got, want)
		}
	}
	ev := func(id, customer string) *EventIn {
		return &EventIn{Event: &meter.Event{ID: id, CustomerID: customer, EventType: "image_generated"}, Hash: [16]byte{1}}
	}
	again := []*EventIn{ev("e1", "c1"), ev("e6", "c1"), ev("f2", "c2"), ev("e7", "c1"), ev("f3", "c2")}
	if err := e.Events(again); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"duplicate", "duplicate", "duplicate", "charged", "charged"} {
		in := again[i]
		if got := statusName(in.Result.Status); got != want {
			t.Fatalf("event %s: %s %s, want %s", in.Event.ID, got, in.Result.Code, want)
		}
		if len(in.Result.Charges) != 1 || in.Result.Charges[0].Amount != 40 {
			t.Fatalf("event %s answered charges %+v, want one of 40", in.Event.ID, in.Result.Charges)
		}
	}
	if testCounter(t, e.metrics.idemLookups.WithLabelValues("index")) < 2 {
		t.Error("the new ids were not answered by the index")
	}
	// The ledger: the fixture's entries (one key each) and the new ones
	// (a chunk), newest first, summing to what is available.
	for c, want := range map[string]int64{"c1": 1000 - 7*40, "c2": 500 - 3*40} {
		page, err := e.Ledger(c, "", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		sum := int64(0)
		for i, en := range page.Entries {
			sum += en.Amount
			if i > 0 && en.Seq >= page.Entries[i-1].Seq {
				t.Fatalf("%s: ledger not newest first: %d after %d", c, en.Seq, page.Entries[i-1].Seq)
			}
		}
		if sum != want {
			t.Errorf("%s: ledger sums to %d, want %d", c, sum, want)
		}
	}
	// The fixture's records and expiry keys (one per record in that
	// format), and this release's, are all dropped once expired.
	if countKeys(t, e, prefixExpiry) == 0 || countKeys(t, e, prefixIdem) == 0 {
		t.Fatal("the fixture holds no idempotency records")
	}
	waitReplayFloor(t, e)
	clock.advance(26 * time.Hour)
	if err := e.DropExpired(); err != nil {
		t.Fatal(err)
	}
	if n, m, l := countKeys(t, e, prefixIdem), countKeys(t, e, prefixExpiry), countKeys(t, e, prefixLog); n != 0 || m != 0 || l != 0 {
		t.Errorf("after every record expired: %d idempotency records, %d expiry keys and %d log records left", n, m, l)
	}
}
