package wallet

import (
	"bytes"
	"reflect"
	"slices"
	"testing"
	"unsafe"

	"github.com/meterd/meterd/meter"
)

// fullWallet returns a wallet with every field set.
func fullWallet(t testing.TB) *Wallet {
	w := NewWallet("cust_42", Settings{
		Status:        StatusPaused,
		Policy:        PolicyOverdraft,
		CreditLimits:  []Limit{{Account: "default:CREDITS", Units: 500}, {Account: "default:USD", Units: 0}},
		BalanceAlerts: []string{"5000", "1000"},
		Metadata:      []byte(`{"tier":"gold"}`),
	}, t0)
	_, _, err := w.TopUp(&TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: 5000, Source: "custom_credits", ExpiresAt: t0 + 30*day, Metadata: []byte(`{"psp":"stripe"}`)}, t0, nil)
	must(t, err)
	_, err = w.Adjust(&AdjustCmd{TransactionID: "tx_1", Account: "default", Asset: "CREDITS", Amount: 700, Kind: KindPromotional, Priority: 5, ExpiresAt: t0 + 7*day, Source: "gift", Metadata: []byte(`{}`)}, t0+1, nil)
	must(t, err)
	_, err = w.Adjust(&AdjustCmd{TransactionID: "tx_2", Account: "default", Asset: "USD", Scale: 6, Amount: 25_000_000, Kind: KindPlan, Priority: -1}, t0+2, nil)
	must(t, err)
	w.Configure(Settings{Status: StatusActive, Policy: PolicyOverdraft, CreditLimits: []Limit{{Account: "default:USD", Units: 10}}, BalanceAlerts: []string{"5"}, Metadata: []byte(`{"a":[1]}`)}, t0+3)
	_, _, err = w.Charge(&UsageCmd{EventID: "e1", OccurredAt: t0, PricingVersion: 2, Charges: []meter.Charge{
		{Account: "default:CREDITS", Name: "default", Asset: "CREDITS", Amount: meter.Fine{Units: 10, Sub: 123}},
		{Account: "default:USD", Name: "default", Asset: "USD", Scale: 6, Amount: meter.Fine{Units: 25_000_005, Sub: 999_999_999_999_999_999}},
	}}, t0+4, nil, nil)
	must(t, err)
	_, err = w.PlaceHold(&HoldCmd{ID: "h1", Account: "default:CREDITS", Amount: 40, ExpiresAt: t0 + 10*day}, t0+5, nil)
	must(t, err)
	w.Configure(Settings{Status: StatusPaused, PausedUntil: t0 + 100*day, Policy: PolicyOverdraft, CreditLimits: []Limit{{Account: "default:USD", Units: 10}}, BalanceAlerts: []string{"5"}, Metadata: []byte(`{"a":[1]}`),
		Plan: &Plan{ID: "macro", GrantWhilePaused: true, Allocations: []Allocation{
			{Account: "default", Asset: "CREDITS", Amount: 80, Period: PeriodDay, Anchor: t0, Strategy: StrategyAccumulate, Cap: 400, Kind: KindPlan},
			{Account: "default", Asset: "USD", Scale: 6, Amount: 1_000_000, Period: PeriodMonth, Anchor: t0 + 400*day, Strategy: StrategyExpireAndReplace}}},
		AutoReload: &AutoReload{Enabled: true, Account: "default", Asset: "CREDITS", Threshold: 100, Amount: 1000, Price: "9.00", Currency: "USD",
			SurchargePct: "30", Charge: "11.70", MaxPerPeriod: 8, Mode: ReloadAwaitPayment, PeriodEnd: true, MaxUnpaid: 3},
	}, t0+5)
	w.Advance(t0+6, nil)
	w.Life.ReloadSeq, w.Life.ReloadPeriod, w.Life.ReloadCount = 3, t0, 2
	w.Life.Allocs[1].Prorate = true
	s := *w.Settings
	s.PlanChange = &PlanChange{At: t0 + 30*day, Plan: &Plan{ID: "micro", GrantWhilePaused: true, Allocations: []Allocation{
		{Account: "default", Asset: "CREDITS", Amount: 40, Period: PeriodMonth, Anchor: t0, Strategy: StrategyExpireAndReplace, Kind: KindPlan}}}}
	w.Settings = normalizeSettings(s)
	w.Life.Pending = []ReloadRequest{
		{ID: "r_2", Account: "default:CREDITS", Amount: 1000, Charge: "11.70", Currency: "USD", Mode: ReloadGrantImmediately, Status: ReloadPending, CreatedAt: t0, UpdatedAt: t0, BucketID: "b_9"},
		{ID: "r_3", Account: "default:CREDITS", Amount: 1000, Charge: "11.70", Currency: "USD", Mode: ReloadAwaitPayment, Status: ReloadPending, CreatedAt: t0, UpdatedAt: t0}}
	w.TakeEffects()
	a := w.Account("default:CREDITS")
	mustCheck(t, w)
	if w.Life.NoteSeq == 0 || len(w.Life.Allocs) != 2 || len(w.Life.Holds) != 1 || !slices.ContainsFunc(a.Buckets, func(b Bucket) bool { return b.Alloc != 0 }) {
		t.Fatalf("fullWallet does not set every lifecycle field: %+v", w.Life)
	}
	if a.Carry == 0 || w.Account("default:USD").Debt == 0 || w.Account("default:USD").Carry == 0 {
		t.Fatal("fullWallet does not set every field")
	}
	return w
}

func TestCodecWalletRoundTrip(t *testing.T) {
	wallets := map[string]*Wallet{
		"empty":    NewWallet("c", Settings{}, 0),
		"negative": NewWallet("c", Settings{}, -5),
		"full":     fullWallet(t),
	}
	big := NewWallet("big", Settings{}, t0)
	for i := 0; i < 5000; i++ { // bucket ids beyond the shared table
		_, _, err := big.TopUp(&TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1}, t0, nil)
		must(t, err)
		_, _, err = big.Charge(usage("e", 1, 0), t0, nil, nil)
		must(t, err)
	}
	_, _, err := big.TopUp(&TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1}, t0, nil)
	must(t, err)
	big.TakeEffects()
	wallets["big"] = big
	for name, w := range wallets {
		t.Run(name, func(t *testing.T) {
			b := AppendWallet([]byte("prefix"), w)
			if !bytes.Equal(b[:6], []byte("prefix")) {
				t.Fatal("dst overwritten")
			}
			b = b[6:]
			got, err := DecodeWallet(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(w)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, w)
			}
			if b2 := AppendWallet(nil, got); !bytes.Equal(b, b2) {
				t.Fatal("re-encoding differs")
			}
			// The decoded wallet works like the original.
			out1, e1 := w.Adjust(adjust("tx_x", 3, KindPlan, 0), t0+10*day, nil)
			out2, e2 := got.Adjust(adjust("tx_x", 3, KindPlan, 0), t0+10*day, nil)
			if !reflect.DeepEqual(out1, out2) || code(e1) != code(e2) || !bytes.Equal(AppendWallet(nil, w), AppendWallet(nil, got)) {
				t.Fatal("decoded wallet behaves differently")
			}
		})
	}
	// Shared strings.
	w1, _ := DecodeWallet(AppendWallet(nil, wallets["full"]))
	w2, _ := DecodeWallet(AppendWallet(nil, wallets["full"]))
	a1, a2 := w1.Accounts[0], w2.Accounts[0]
	if a1.ID() != "default:CREDITS" || a1.Name() != "default" || a1.Asset() != "CREDITS" ||
		!sameString(a1.ID(), a2.ID()) || !sameString(a1.Name(), a2.Name()) || !sameString(a1.Buckets[0].Source, a2.Buckets[0].Source) ||
		!sameString(a1.Buckets[0].ID, a2.Buckets[0].ID) {
		t.Fatal("strings not shared between decoded wallets")
	}
}

// normalize makes empty bucket slices nil (a drained account keeps its
// slice for reuse; a decoded one has none), for reflect.DeepEqual.
func normalize(w *Wallet) *Wallet {
	for _, a := range w.Accounts {
		if len(a.Buckets) == 0 {
			a.Buckets = nil
		}
	}
	return w
}

// sameString reports whether a and b are the same memory, not just equal.
func sameString(a, b string) bool {
	return a == b && unsafe.StringData(a) == unsafe.StringData(b)
}

func TestCodecWalletErrors(t *testing.T) {
	good := AppendWallet(nil, fullWallet(t))
	if _, err := DecodeWallet(nil); err == nil {
		t.Error("empty input decoded")
	}
	bad := append([]byte{}, good...)
	bad[0] = 3
	if _, err := DecodeWallet(bad); err == nil {
		t.Error("unknown version decoded")
	}
	if _, err := DecodeWallet(append(append([]byte{}, good...), 0)); err == nil {
		t.Error("trailing byte decoded")
	}
	for i := 0; i < len(good); i++ {
		if _, err := DecodeWallet(good[:i]); err == nil {
			t.Fatalf("truncated at %d decoded", i)
		}
	}
	// A record that decodes but breaks an invariant is refused.
	w := fullWallet(t)
	w.Accounts[0].Ledger++
	if _, err := DecodeWallet(AppendWallet(nil, w)); err == nil {
		t.Error("broken ledger decoded")
	}
}

func TestCodecEntryRoundTrip(t *testing.T) {
	entries := []Entry{
		{},
		{Seq: 1<<64 - 1, Type: EntryAutoReload, Account: "default:USD", Scale: 9, Amount: -1 << 63, BalanceAfter: 1<<63 - 1,
			BucketID: "b_77", EventID: "evt_1", Reference: "top_1", OccurredAt: -1, RecordedAt: t0, PricingVersion: 1<<32 - 1, Metadata: []byte(`{"k":"v"}`)},
		{Seq: 2, Type: EntryUsage, Account: "default:CREDITS", Amount: -5, BucketID: "b_123456789", Metadata: []byte{}},
		{Seq: 3, Type: EntryExpiry, Account: "x:Y", BucketID: "custom"},
	}
	for i := range entries {
		b := AppendEntry(nil, &entries[i])
		got := Entry{Account: "garbage"}
		if err := DecodeEntry(b, &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, entries[i]) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, entries[i])
		}
		for j := 0; j < len(b); j++ {
			if err := DecodeEntry(b[:j], &got); err == nil {
				t.Fatalf("entry %d truncated at %d decoded", i, j)
			}
		}
		if err := DecodeEntry(append(b, 0), &got); err == nil || !reflect.DeepEqual(got, Entry{}) {
			t.Fatalf("trailing byte: %v %+v", err, got)
		}
	}
}

func FuzzDecodeWallet(f *testing.F) {
	f.Add(AppendWallet(nil, fullWallet(f)))
	f.Add(AppendWallet(nil, NewWallet("c", Settings{}, 0)))
	f.Add([]byte{1})
	f.Add([]byte{1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 'a', 1, 'B', 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := DecodeWallet(b)
		if err != nil {
			return
		}
		if err := w.Check(); err != nil {
			t.Fatalf("decoded a wallet that fails Check: %v", err)
		}
		b2 := AppendWallet(nil, w)
		w2, err := DecodeWallet(b2)
		if err != nil || !bytes.Equal(AppendWallet(nil, w2), b2) {
			t.Fatalf("re-encoded wallet does not round trip: %v", err)
		}
		// A wallet that passes Check must survive every command without
		// breaking an assertion.
		now := max(w.UpdatedAt, 0) + 1
		for _, a := range w.Accounts {
			_, _, _ = w.TopUp(&TopUpCmd{ID: "t", Account: a.Name(), Asset: a.Asset(), Amount: 3}, now, nil)
			_, _, _ = w.Charge(&UsageCmd{Charges: []meter.Charge{{Account: a.ID(), Amount: meter.Fine{Units: 2, Sub: 5}}}}, now, nil, nil)
			_, _ = w.Adjust(&AdjustCmd{TransactionID: "x", Account: a.Name(), Asset: a.Asset(), Amount: -1, Priority: -1}, now, nil)
		}
		_ = w.Expire(1<<62, nil)
		if err := w.Check(); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(AppendEntry(nil, &Entry{Seq: 1, Type: EntryUsage, Account: "default:CREDITS", Amount: -5, BucketID: "b_1", Metadata: []byte("{}")}))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Entry
		if err := DecodeEntry(b, &e); err != nil {
			return
		}
		var e2 Entry
		if err := DecodeEntry(AppendEntry(nil, &e), &e2); err != nil || !reflect.DeepEqual(e, e2) {
			t.Fatalf("re-encoded entry does not round trip: %v", err)
		}
	})
}

// A snapshot of the release before version 4 (one optional pending
// auto-reload request: a flag byte, then the request) reads as a list of
// that one request. Without plan and auto-reload settings, a version 3
// snapshot is a version 4 one less its paused_until byte (found as the one
// byte two encodings differing only in paused_until differ in), the
// plan_change flag and the count of hold limits after it, with its version
// byte changed: the flag 1 and the count 1 are the same byte.
func TestCodecWalletV3PendingReload(t *testing.T) {
	w := reloadWallet(t, ReloadGrantImmediately, 0)
	if _, _, err := w.Charge(usage("e1", 600, 0), t0+1, nil, nil); err != nil {
		t.Fatal(err)
	}
	w.Configure(Settings{Status: StatusPaused}, t0+2)
	w.TakeEffects()
	if len(w.Life.Pending) != 1 {
		t.Fatalf("pending %+v, want one", w.Life.Pending)
	}
	v3 := func() []byte {
		t.Helper()
		b := AppendWalletAt(nil, w, 7)
		w.Configure(Settings{Status: StatusPaused, PausedUntil: 1}, t0+2)
		b1 := AppendWalletAt(nil, w, 7)
		w.Configure(Settings{Status: StatusPaused}, t0+2)
		if len(b1) != len(b) {
			t.Fatalf("paused_until 1 takes %d bytes more", len(b1)-len(b))
		}
		i := 0
		for b[i] == b1[i] {
			i++
		}
		b = slices.Delete(b, i, i+3)
		b[0] = walletFormatV3
		return b
	}
	d, seq, err := DecodeWalletAt(v3())
	if err != nil {
		t.Fatal(err)
	}
	if seq != 7 || len(d.Life.Pending) != 1 || d.Life.Pending[0] != w.Life.Pending[0] || d.Settings.Status != StatusPaused {
		t.Fatalf("decoded seq %d, pending %+v, settings %+v; want 7 and %+v", seq, d.Life.Pending, d.Settings, w.Life.Pending)
	}
	// A version 3 record cannot hold two.
	w.Life.Pending = append(w.Life.Pending, w.Life.Pending[0])
	w.Life.Pending[1].ID = "r_2"
	if _, _, err := DecodeWalletAt(v3()); err == nil {
		t.Fatal("a version 3 record with a count of 2 decoded")
	}
}
