package balance

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

func TestLogRecordRoundTrip(t *testing.T) {
	cmds := []struct {
		customer string
		cmd      wallet.UsageCmd
	}{
		{"c1", wallet.UsageCmd{EventID: "e1", OccurredAt: 1_700_000_000_000_000_000, PricingVersion: 3, Description: "chat",
			Charges: []meter.Charge{{Account: "default:CREDITS", Name: "default", Asset: "CREDITS", Amount: meter.Fine{Units: 40, Sub: 7}}}}},
		{"c-2", wallet.UsageCmd{EventID: "e2", HoldID: "h1", PricingVersion: 1 << 31, Description: "refused, described"}},
		{"c3", wallet.UsageCmd{EventID: "e3", OccurredAt: -5, Charges: []meter.Charge{
			{Account: "a:USD", Name: "a", Asset: "USD", Scale: 2, Amount: meter.Fine{Units: 1}},
			{Account: "b:USD", Name: "b", Asset: "USD", Scale: 2, Amount: meter.Fine{Sub: meter.SubUnitsPerUnit - 1}},
		}}},
	}
	// The first command was charged, the second refused, the third
	// recorded with no charge.
	recs := []*record{
		{Kind: idemEvent, Hash: [16]byte{1, 2}, Status: EventCharged, Charges: []wallet.ChargeResult{
			{Account: "default:CREDITS", Amount: 41, BalanceAfter: -3, Parts: []wallet.Part{{BucketID: "b1", Amount: 40}, {BucketID: "b2", Amount: 1}}}}},
		nil,
		{Kind: idemEvent, Hash: [16]byte{3}, Status: EventRecorded, Charges: []wallet.ChargeResult{{Account: "other:USD", Scale: 2}}},
	}
	var body []byte
	for i := range cmds {
		body = appendLogCmd(body, cmds[i].customer, &cmds[i].cmd, i != 1, recs[i])
	}
	rec := append(logHeader(nil, 42, len(cmds)), body...)
	r, err := newLogReader(rec)
	if err != nil {
		t.Fatal(err)
	}
	if r.now != 42 {
		t.Fatalf("now %d, want 42", r.now)
	}
	for i := range cmds {
		customer, ok, err := r.next()
		if err != nil || !ok {
			t.Fatalf("command %d: ok %v, err %v", i, ok, err)
		}
		got := r.cmd
		if len(got.Charges) == 0 {
			got.Charges = nil
		}
		if customer != cmds[i].customer || !reflect.DeepEqual(got, cmds[i].cmd) {
			t.Fatalf("command %d: got %q %+v, want %q %+v", i, customer, got, cmds[i].customer, cmds[i].cmd)
		}
		if applied := r.flags&logApplied != 0; applied != (i != 1) {
			t.Fatalf("command %d: applied %v", i, applied)
		}
		if (r.flags&logID != 0) != (recs[i] != nil) {
			t.Fatalf("command %d: flags %b, record %v", i, r.flags, recs[i])
		}
		if recs[i] != nil {
			want := *recs[i]
			want.RecordedAt, want.PricingVersion, want.OccurredAt = 42, cmds[i].cmd.PricingVersion, cmds[i].cmd.OccurredAt
			if got := r.record(); !reflect.DeepEqual(got, &want) {
				t.Fatalf("command %d: record %+v, want %+v", i, got, &want)
			}
		}
	}
	for i, c := range cmds {
		got, err := findLogID(rec, c.customer, c.cmd.EventID)
		if err != nil || (got != nil) != (recs[i] != nil) {
			t.Fatalf("findLogID %s: %+v %v", c.cmd.EventID, got, err)
		}
	}
	if got, err := findLogID(rec, "c1", "e2"); got != nil || err != nil {
		t.Fatalf("findLogID of another customer's id: %+v %v", got, err)
	}
	if _, ok, err := r.next(); ok || err != nil {
		t.Fatalf("after the last command: ok %v, err %v", ok, err)
	}
	// Cut anywhere, the record is an error, never a panic or a short read.
	for n := 0; n < len(rec); n++ {
		if logRecordErr(rec[:n]) == nil {
			t.Fatalf("a record cut to %d of %d bytes decoded without an error", n, len(rec))
		}
	}
}

// logRecordErr decodes every command of a record and returns the first error.
func logRecordErr(b []byte) error {
	r, err := newLogReader(b)
	if err != nil {
		return err
	}
	for {
		_, ok, err := r.next()
		if err != nil || !ok {
			return err
		}
	}
}

func FuzzDecodeLogRecord(f *testing.F) {
	cmd := wallet.UsageCmd{EventID: "e1", HoldID: "h", Charges: []meter.Charge{{Account: "default:CREDITS", Amount: meter.Fine{Units: 3}}}}
	r := &record{Kind: idemEvent, Status: EventCharged, Charges: []wallet.ChargeResult{{Account: "default:CREDITS", Amount: 3, Parts: []wallet.Part{{BucketID: "b", Amount: 3}}}}}
	f.Add(append(logHeader(nil, 1, 1), appendLogCmd(nil, "c1", &cmd, true, r)...))
	f.Add(append(logHeader(nil, 1, 1), appendLogCmd(nil, "c1", &cmd, true, nil)...))
	f.Add([]byte{logFormatV1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = logRecordErr(b)
	})
}

// openCrashable opens an engine on fs, which keeps only what was synced
// when cloned with CrashClone.
func openCrashable(t testing.TB, fs *vfs.MemFS, dir string, clock Clock, checkpoint time.Duration, replayed func(int)) *Engine {
	t.Helper()
	e, err := Open(Options{Dir: dir, Shards: 3, JanitorInterval: time.Hour, TimerInterval: 2 * time.Millisecond,
		CheckpointInterval: checkpoint, ReserveBytes: 1 << 20, DefaultPricing: []byte(replayPricing), Clock: clock,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), fs: fs,
		diskAvail: func() (uint64, error) { return 1 << 40, nil },
		replayed:  replayed,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// replayPricing charges whole credits for images and a third of a credit
// per token, so that the carry of sub-unit remainders moves.
const replayPricing = `{"assets":[{"code":"CREDITS","scale":0}],
 "prices":[{"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"},
           {"event_type":"tokens","account":"default:CREDITS","components":[{"field":"n","unit_price":"0.333333333333333333"}]}]}`

// TestReplayRestoresWhatCheckpointsMissed crashes an engine whose wallets
// were changed only by usage events since their last snapshot (charges,
// carries, refusals, holds settled by events) and checks that recovery
// replays the log into exactly the wallets acknowledged before the crash,
// then snapshots them and moves the replay floor past the log, which stays
// for its ids: a second crash replays nothing, and a resend is a duplicate.
func TestReplayRestoresWhatCheckpointsMissed(t *testing.T) {
	fs := vfs.NewCrashableMem()
	dir := "/data"
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC).UnixNano())
	e := openCrashable(t, fs, dir, clock, time.Hour, nil)
	const customers = 20
	for i := range customers {
		c := "r" + strconv.Itoa(i)
		if _, err := e.PutCustomer(c, wallet.Settings{}); err != nil {
			t.Fatal(err)
		}
		// Customer r0 can pay for three images only: later ones are refused.
		amount := int64(100_000)
		if i == 0 {
			amount = 120
		}
		if _, err := e.TopUp(c, &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: amount, Source: "topup"}, [16]byte{1}); err != nil {
			t.Fatal(err)
		}
		if i%4 == 1 {
			if _, _, err := e.PlaceHold(c, &wallet.HoldCmd{ID: "hold-" + c, Account: "default:CREDITS", Amount: 500, ExpiresAt: clock.Now() + int64(time.Hour)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var charged *EventIn
	for n := range 200 {
		var evs []*EventIn
		for k := range 1 + rng.IntN(30) {
			i := rng.IntN(customers)
			c := "r" + strconv.Itoa(i)
			ev := &meter.Event{ID: fmt.Sprintf("e%d-%d", n, k), CustomerID: c, EventType: "image_generated"}
			if rng.IntN(2) == 0 {
				ev.EventType = "tokens"
				n := strconv.Itoa(1 + rng.IntN(1000))
				ev.Data = []meter.Field{{Key: "n", Kind: meter.FieldNumber, Text: n}}
				ev.DataJSON = []byte(`{"n":` + n + `}`)
			}
			if i%4 == 1 && rng.IntN(50) == 0 {
				ev.HoldID = "hold-" + c
			}
			if k%3 == 0 { // on its usage entries, which replay makes again
				ev.Description = "image " + ev.ID
			}
			evs = append(evs, &EventIn{Event: ev, Hash: [16]byte{byte(n), byte(k)}})
		}
		if err := e.Events(evs); err != nil {
			t.Fatal(err)
		}
		for _, in := range evs {
			if charged == nil && in.Result.Status == EventCharged {
				charged = in
			}
		}
		clock.advance(time.Millisecond)
	}
	if countKeys(t, e, prefixLog) == 0 {
		t.Fatal("no log record before the crash")
	}
	want := make(map[string][]byte)
	for i := range customers {
		c := "r" + strconv.Itoa(i)
		w, err := e.Wallet(c)
		if err != nil {
			t.Fatal(err)
		}
		want[c] = wallet.AppendWallet(nil, w)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	e.Close()

	replayed := 0
	e = openCrashable(t, crashed, dir, clock, time.Hour, func(n int) { replayed += n })
	defer e.Close()
	if replayed < 1000 {
		t.Fatalf("recovery replayed %d commands, want the 200 batches' (over 1,000)", replayed)
	}
	for c, enc := range want {
		w, err := e.Wallet(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := wallet.AppendWallet(nil, w); !bytes.Equal(got, enc) {
			t.Errorf("customer %s after replay differs:\n got  %+v\n want %+v", c, w, mustDecodeWallet(t, enc))
		}
		if sum, avail := ledgerSum(t, e, c), w.Accounts[0].Available(); sum != avail {
			t.Errorf("customer %s: ledger sums to %d, available is %d", c, sum, avail)
		}
		// The usage entries replay made again carry their event's
		// description, and their bucket's source.
		for _, en := range ledgerOf(t, e, c) {
			if en.Type != wallet.EntryUsage {
				continue
			}
			if k, _ := strconv.Atoi(en.EventID[strings.IndexByte(en.EventID, '-')+1:]); (en.Description != "") != (k%3 == 0) ||
				en.Description != "" && en.Description != "image "+en.EventID {
				t.Errorf("customer %s: entry %d of %s has the description %q", c, en.Seq, en.EventID, en.Description)
			}
			if en.BucketID != "" && en.Source != "topup" {
				t.Errorf("customer %s: entry %d of bucket %s has the source %q", c, en.Seq, en.BucketID, en.Source)
			}
		}
	}
	if countKeys(t, e, prefixLog) == 0 {
		t.Error("recovery deleted the log records that hold the events' ids")
	}
	again := fs2Crash(t, e, crashed, dir, clock, &replayed)
	defer again.Close()
	if replayed != 0 {
		t.Errorf("a second recovery replayed %d commands, want none: the first moved the floor past them", replayed)
	}
	dup := &EventIn{Event: charged.Event, Hash: charged.Hash}
	if err := again.Events([]*EventIn{dup}); err != nil {
		t.Fatal(err)
	}
	if dup.Result.Status != EventDuplicate || !reflect.DeepEqual(dup.Result.Charges, charged.Result.Charges) {
		t.Errorf("resend of %s after two recoveries: %+v, want duplicate with %+v", charged.Event.ID, dup.Result, charged.Result.Charges)
	}
}

// fs2Crash crashes the engine e running on fs (keeping only what was
// synced), closes it, and opens the crashed copy, counting into replayed
// what its recovery replays.
func fs2Crash(t *testing.T, e *Engine, fs *vfs.MemFS, dir string, clock Clock, replayed *int) *Engine {
	t.Helper()
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	e.Close()
	*replayed = 0
	return openCrashable(t, crashed, dir, clock, time.Hour, func(n int) { *replayed += n })
}

func mustDecodeWallet(t *testing.T, b []byte) *wallet.Wallet {
	w, err := wallet.DecodeWallet(b)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// ledgerOf reads every ledger entry of a customer, newest first.
func ledgerOf(t *testing.T, e *Engine, customer string) []wallet.Entry {
	t.Helper()
	var out []wallet.Entry
	var before uint64
	for {
		page, err := e.Ledger(customer, "", before, 1000)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Entries...)
		if page.Next == 0 {
			return out
		}
		before = page.Next
	}
}

// ledgerSum sums every ledger entry of a customer.
func ledgerSum(t *testing.T, e *Engine, customer string) int64 {
	t.Helper()
	var sum int64
	var before uint64
	for {
		page, err := e.Ledger(customer, "", before, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range page.Entries {
			sum += en.Amount
		}
		if page.Next == 0 {
			return sum
		}
		before = page.Next
	}
}

// TestCheckpointsTruncateTheLog: with a short interval, wallets changed by
// events are snapshotted by later groups (or by the ticker's poke of an
// idle shard), every log record is then deleted, and a clean stop leaves
// nothing to replay.
func TestCheckpointsTruncateTheLog(t *testing.T) {
	fs := vfs.NewCrashableMem()
	clock := &testClock{}
	clock.ns.Store(time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC).UnixNano())
	e := openCrashable(t, fs, "/data", clock, 5*time.Millisecond, nil)
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1_000_000}, [16]byte{1}); err != nil {
		t.Fatal(err)
	}
	for n := range 50 {
		ev := &meter.Event{ID: "e" + strconv.Itoa(n), CustomerID: "c1", EventType: "image_generated"}
		if err := e.Events([]*EventIn{{Event: ev, Hash: [16]byte{byte(n)}}}); err != nil {
			t.Fatal(err)
		}
	}
	waitReplayFloor(t, e)
	if countKeys(t, e, prefixLog) == 0 {
		t.Fatal("the records holding the events' ids were deleted inside the dedup window")
	}
	// The snapshot is the truth now: a crash replays nothing.
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	e.Close()
	replayed := -1
	e = openCrashable(t, crashed, "/data", clock, time.Hour, func(n int) { replayed = n })
	w, err := e.Wallet("c1")
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Accounts[0].Available(); replayed != 0 || got != 1_000_000-50*40 {
		t.Fatalf("after a crash past the checkpoint: %d replayed, available %d; want 0 and %d", replayed, got, 1_000_000-50*40)
	}
	// A clean stop snapshots what the log alone held.
	for n := range 10 {
		ev := &meter.Event{ID: "f" + strconv.Itoa(n), CustomerID: "c1", EventType: "image_generated"}
		if err := e.Events([]*EventIn{{Event: ev, Hash: [16]byte{byte(n)}}}); err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	e = openCrashable(t, crashed, "/data", clock, time.Hour, func(n int) { replayed = n })
	defer e.Close()
	if replayed != 0 {
		t.Fatalf("a start after a clean stop replayed %d commands", replayed)
	}
	// Past the dedup window (and the skew an event may have), no record
	// holds an id anyone can resend: the janitor's pass deletes them all.
	clock.advance(35*24*time.Hour + FutureSkewMax + DedupMargin) // the default window
	if err := e.DropExpired(); err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, e, prefixLog); n != 0 {
		t.Fatalf("%d log records left past the dedup window", n)
	}
	ev := &meter.Event{ID: "f1", CustomerID: "c1", EventType: "image_generated"}
	in := &EventIn{Event: ev, Hash: [16]byte{1}}
	if err := e.Events([]*EventIn{in}); err != nil || in.Result.Status != EventCharged {
		t.Fatalf("an id past its window: %v %+v, want charged again", err, in.Result)
	}
}

// replayFloor is the replay floor the engine persisted last.
func replayFloor(e *Engine) uint64 {
	e.truncMu.Lock()
	defer e.truncMu.Unlock()
	return e.logFloor
}

// benchShards is the shard count BenchmarkReplay spreads ids over.
const benchShards = 2

// BenchmarkReplay measures replaying the command log into loaded wallets:
// 1,000,000 token-priced events of 10,000 customers (a carry on every
// charge), as recovery after a crash does, their ids put in an index.
func BenchmarkReplay(b *testing.B) {
	const customers, events, perGroup = 10_000, 1_000_000, 100
	st, err := openStore(b.TempDir(), 64<<20, 1000, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer st.close()
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC).UnixNano()
	base := make([]*wallet.Wallet, customers)
	for i := range base {
		w := wallet.NewWallet("customer-"+strconv.Itoa(i), wallet.Settings{}, now)
		if _, _, berr := w.TopUp(&wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1 << 40}, now, nil); berr != nil {
			b.Fatal(berr)
		}
		base[i] = w
	}
	charge := []meter.Charge{{Account: "default:CREDITS", Name: "default", Asset: "CREDITS", Amount: meter.Fine{Units: 3, Sub: meter.SubUnitsPerUnit / 3}}}
	rec := &record{Kind: idemEvent, Hash: [16]byte{7}, Status: EventCharged, Charges: []wallet.ChargeResult{
		{Account: "default:CREDITS", Amount: 3, BalanceAfter: 1 << 39, Parts: []wallet.Part{{BucketID: "t", Amount: 3}}}}}
	batch := st.db.NewBatch()
	var body, val []byte
	rng := rand.New(rand.NewPCG(1, 1))
	for g := range events / perGroup {
		body = body[:0]
		for k := range perGroup {
			cmd := wallet.UsageCmd{EventID: "e" + strconv.Itoa(g*perGroup+k), OccurredAt: now, PricingVersion: 1, Charges: charge}
			body = appendLogCmd(body, base[rng.IntN(customers)].Customer, &cmd, true, rec)
		}
		val = append(logHeader(val[:0], now+int64(g), perGroup), body...)
		if err := batch.Set(logKey(uint64(g+1)), val, nil); err != nil {
			b.Fatal(err)
		}
	}
	if err := batch.Commit(pebble.Sync); err != nil {
		b.Fatal(err)
	}
	// commands: the replay after a crash (the commands since the floor);
	// ids: what every start pays for the log kept for the dedup window
	// (each id into its shard's index, nothing replayed); both: a crash
	// whose whole log is past the floor.
	for _, mode := range []struct {
		name        string
		replay, ids bool
	}{{"commands", true, false}, {"ids", false, true}, {"both", true, true}} {
		b.Run(mode.name, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				wallets := make(map[string]*wallet.Wallet, customers)
				for _, w := range base {
					wallets[w.Customer] = w.Clone()
				}
				seed := maphash.MakeSeed()
				idx := make([]*idIndex, benchShards)
				for i := range idx {
					x := newIDIndex(seed)
					idx[i] = &x
				}
				load := make(idLoad, benchShards)
				var key []byte
				var id func(uint64, string, *logReader)
				if mode.ids {
					id = func(seq uint64, customer string, r *logReader) {
						key = idemKey(key[:0], idemEvent, customer, r.cmd.EventID)
						shard := int(maphash.String(seed, customer) % benchShards)
						load.add(shard, idx[shard], key, RecordExpireAt(r.now, r.cmd.OccurredAt, 35*24*time.Hour), seq)
					}
				}
				from := uint64(0)
				if !mode.replay {
					from = math.MaxUint64
				}
				b.StartTimer()
				start := time.Now()
				_, _, n, err := replayLog(st.db, from, func(c string) *wallet.Wallet { return wallets[c] }, nil, nil, id)
				load.build(idx, now)
				total += time.Since(start)
				if want := map[bool]int{true: events}[mode.replay]; err != nil || n != want {
					b.Fatalf("replayed %d of %d: %v", n, want, err)
				}
			}
			b.ReportMetric(float64(events)*float64(b.N)/total.Seconds(), "events/s")
		})
	}
}

// TestIDSegments: groups within a span share a segment; a segment leaves
// once its latest id has expired (to the whole second the index rounds up
// to), and one that has not holds back those behind it.
func TestIDSegments(t *testing.T) {
	const s = int64(time.Second)
	var x idSegments
	span := segmentSpan(256 * time.Second) // 1 s
	x.add(1, 0, 10*s+1, span)              // expires at 11 s, rounded up
	x.add(2, s/2, 5*s, span)               // same segment
	x.add(5, s, 20*s, span)                // a new one
	x.add(7, 2*s, 8*s, span)               // another, expiring before the one ahead of it
	if floor, exp := x.expire(10 * s); floor != 1 || exp != 11*s {
		t.Fatalf("at 10 s: floor %d, expiry %d; want 1 and 11 s", floor, exp)
	}
	if floor, exp := x.expire(11 * s); floor != 5 || exp != 20*s {
		t.Fatalf("at 11 s: floor %d, expiry %d; want 5 and 20 s", floor, exp)
	}
	if floor, exp := x.expire(20 * s); floor != math.MaxUint64 || exp != 0 {
		t.Fatalf("at 20 s: floor %d, expiry %d; want none", floor, exp)
	}
}

// TestResendInItsOwnGroupKeepsItsAnswer resends events inside the commit
// group that applied them, where their records are found in the group's
// commands in memory, and then again in later groups, where the records
// read then are cached: every answer, first and later, names the original
// account, bucket and amount. The rounds' ids shrink, so each group's log
// record overwrites the scratch of the one before with other bytes.
func TestResendInItsOwnGroupKeepsItsAnswer(t *testing.T) {
	e := openTestEngine(t, &testClock{}, 0)
	defer e.Close()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t1", Account: "default", Asset: "CREDITS", Amount: 1000}, [16]byte{9}); err != nil {
		t.Fatal(err)
	}
	ev := func(id string) *EventIn {
		return &EventIn{Event: &meter.Event{ID: id, CustomerID: "c1", EventType: "image_generated"}, Hash: [16]byte{byte(len(id))}}
	}
	want := func(in *EventIn, status uint8) {
		t.Helper()
		r := in.Result
		if r.Status != status || len(r.Charges) != 1 || r.Charges[0].Account != "default:CREDITS" || r.Charges[0].Amount != 40 ||
			len(r.Charges[0].Parts) != 1 || r.Charges[0].Parts[0].BucketID != "b_1" || r.Charges[0].Parts[0].Amount != 40 {
			t.Fatalf("event %s: %s %+v", in.Event.ID, statusName(r.Status), r)
		}
	}
	ids := []string{"e" + strings.Repeat("x", 10), "e"}
	// One op is one group: each id is applied, then resent in the same group.
	for _, id := range ids {
		batch := []*EventIn{ev(id), ev(id + "-2"), ev(id), ev(id + "-2")}
		if err := e.Events(batch); err != nil {
			t.Fatal(err)
		}
		want(batch[0], EventCharged)
		want(batch[1], EventCharged)
		want(batch[2], EventDuplicate)
		want(batch[3], EventDuplicate)
	}
	// Later groups: the records found in memory before answer again.
	for _, id := range ids {
		batch := []*EventIn{ev(id), ev(id + "-2")}
		if err := e.Events(batch); err != nil {
			t.Fatal(err)
		}
		want(batch[0], EventDuplicate)
		want(batch[1], EventDuplicate)
	}
}
