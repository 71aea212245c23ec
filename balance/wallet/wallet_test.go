package wallet

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/meter"
)

// t0 is 2026-11-21T10:00:00Z in unix ns.
var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano()

const (
	hour = int64(time.Hour)
	day  = 24 * hour
)

func code(e *Error) string {
	if e == nil {
		return ""
	}
	return e.Code
}

func must(t testing.TB, e *Error) {
	t.Helper()
	if e != nil {
		t.Fatalf("unexpected error: %v", e)
	}
}

func mustCheck(t testing.TB, w *Wallet) {
	t.Helper()
	if err := w.Check(); err != nil {
		t.Fatal(err)
	}
}

func topUp(id string, amount int64) *TopUpCmd {
	return &TopUpCmd{ID: id, Account: "default", Asset: "CREDITS", Amount: amount, Source: "custom_credits"}
}

func adjust(tx string, amount int64, kind Kind, expiresAt int64) *AdjustCmd {
	return &AdjustCmd{TransactionID: tx, Account: "default", Asset: "CREDITS", Amount: amount, Kind: kind, Priority: -1, ExpiresAt: expiresAt}
}

func usage(id string, units int64, sub uint64) *UsageCmd {
	return &UsageCmd{EventID: id, OccurredAt: t0, PricingVersion: 3, Charges: []meter.Charge{
		{Account: "default:CREDITS", Name: "default", Asset: "CREDITS", Amount: meter.Fine{Units: units, Sub: sub}},
	}}
}

func avail(w *Wallet, id string) int64 {
	if a := w.Account(id); a != nil {
		return a.Available()
	}
	return 0
}

// sumEntries checks that entries are numbered in sequence and that each
// BalanceAfter is the running sum, starting from the given sums (updated).
func sumEntries(t testing.TB, w *Wallet, sums map[string]int64, entries []Entry) {
	t.Helper()
	for i := range entries {
		e := &entries[i]
		sums[e.Account] += e.Amount
		if e.BalanceAfter != sums[e.Account] {
			t.Fatalf("entry %d (%s %d): balance_after %d != running sum %d", e.Seq, e.Type, e.Amount, e.BalanceAfter, sums[e.Account])
		}
	}
	for _, a := range w.Accounts {
		if sums[a.ID()] != a.Available() {
			t.Fatalf("account %s: sum of entries %d != available %d", a.ID(), sums[a.ID()], a.Available())
		}
	}
}

func TestWalletStrings(t *testing.T) {
	for k, want := range map[Kind]string{KindPromotional: "promotional", KindPlan: "plan", KindRecharge: "recharge"} {
		if k.String() != want {
			t.Errorf("%d: %q", k, k.String())
		}
		if p, ok := ParseKind(want); !ok || p != k {
			t.Errorf("ParseKind(%q) = %v %v", want, p, ok)
		}
	}
	if _, ok := ParseKind("gift"); ok {
		t.Error("ParseKind(gift) ok")
	}
	if DefaultPriority(KindPromotional) != 10 || DefaultPriority(KindPlan) != 20 || DefaultPriority(KindRecharge) != 30 {
		t.Error("default priorities")
	}
	names := []string{"usage", "topup", "topup_reversal", "adjustment", "grant", "expiry", "hold", "hold_release", "auto_reload"}
	for i, n := range names {
		if s := EntryType(i + 1).String(); s != n {
			t.Errorf("EntryType(%d) = %q, want %q", i+1, s, n)
		}
	}
	if EntryType(0).String() != "entry_type(0)" || Kind(9).String() != "kind(9)" {
		t.Error("unknown values")
	}
	if StatusActive.String() != "active" || StatusPaused.String() != "paused" || PolicyReject.String() != "reject" || PolicyOverdraft.String() != "overdraft" {
		t.Error("status or policy names")
	}
}

// TestSeedScenario is the contract's example: a promotional bucket expiring
// in 7 days, a plan bucket expiring at month end and a never-expiring
// top-up are drained in exactly that order.
func TestSeedScenario(t *testing.T) {
	w := NewWallet("c1", Settings{}, t0)
	sums := map[string]int64{}
	var out []Entry
	monthEnd := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano()

	// Inserted in the reverse of consumption order on purpose.
	id3, out, err := w.TopUp(topUp("top_1", 5000), t0, out[:0])
	must(t, err)
	sumEntries(t, w, sums, out)
	out, err = w.Adjust(adjust("tx_plan", 20000, KindPlan, monthEnd), t0, out[:0])
	must(t, err)
	sumEntries(t, w, sums, out)
	out, err = w.Adjust(adjust("tx_promo", 1000, KindPromotional, t0+7*day), t0, out[:0])
	must(t, err)
	sumEntries(t, w, sums, out)
	mustCheck(t, w)

	a := w.Account("default:CREDITS")
	if a == nil || len(a.Buckets) != 3 || a.Available() != 26000 {
		t.Fatalf("account %+v", a)
	}
	if a.Buckets[0].Kind != KindPromotional || a.Buckets[0].Priority != 10 || a.Buckets[1].Kind != KindPlan || a.Buckets[1].Priority != 20 ||
		a.Buckets[2].ID != id3 || a.Buckets[2].Kind != KindRecharge || a.Buckets[2].Priority != 30 {
		t.Fatalf("order %+v", a.Buckets)
	}
	promo, plan := a.Buckets[0].ID, a.Buckets[1].ID

	type part struct {
		bucket string
		amount int64
	}
	steps := []struct {
		units int64
		parts []part
		avail int64
	}{
		{600, []part{{promo, 600}}, 25400},
		{600, []part{{promo, 400}, {plan, 200}}, 24800}, // one charge spanning two buckets
		{19800, []part{{plan, 19800}}, 5000},
		{4999, []part{{id3, 4999}}, 1},
		{1, []part{{id3, 1}}, 0},
	}
	var res []ChargeResult
	for i, s := range steps {
		res, out, err = w.Charge(usage("evt_"+string(rune('a'+i)), s.units, 0), t0+hour, res[:0], out[:0])
		must(t, err)
		sumEntries(t, w, sums, out)
		mustCheck(t, w)
		if len(out) != len(s.parts) || len(res) != 1 || len(res[0].Parts) != len(s.parts) {
			t.Fatalf("step %d: %d entries, %d results", i, len(out), len(res))
		}
		for j, p := range s.parts {
			e := &out[j]
			if e.Type != EntryUsage || e.BucketID != p.bucket || e.Amount != -p.amount || e.EventID == "" || e.PricingVersion != 3 || e.OccurredAt != t0 || e.RecordedAt != t0+hour {
				t.Fatalf("step %d entry %d: %+v, want %+v", i, j, e, p)
			}
			if res[0].Parts[j] != (Part{BucketID: p.bucket, Amount: p.amount}) {
				t.Fatalf("step %d part %d: %+v", i, j, res[0].Parts[j])
			}
		}
		if res[0].Amount != s.units || res[0].BalanceAfter != s.avail || avail(w, "default:CREDITS") != s.avail {
			t.Fatalf("step %d: result %+v, available %d", i, res[0], avail(w, "default:CREDITS"))
		}
	}
	if n := len(w.Account("default:CREDITS").Buckets); n != 0 {
		t.Fatalf("drained buckets kept: %d", n)
	}

	// Drained: the reject policy refuses and nothing changes.
	before := AppendWallet(nil, w)
	res, out, err = w.Charge(usage("evt_z", 1, 0), t0+2*hour, res[:0], out[:0])
	if code(err) != CodeInsufficientFunds || len(out) != 0 || len(res) != 0 {
		t.Fatalf("drained charge: %v, %d entries, %d results", err, len(out), len(res))
	}
	if after := AppendWallet(nil, w); !bytes.Equal(before, after) {
		t.Fatal("a refused charge changed the wallet")
	}
}

func TestWalletExpiryExactTime(t *testing.T) {
	w := NewWallet("c1", Settings{}, t0)
	exp := t0 + 7*day
	out, err := w.Adjust(&AdjustCmd{TransactionID: "tx1", Account: "default", Asset: "CREDITS", Amount: 700, Kind: KindPromotional, Priority: -1, ExpiresAt: exp}, t0, nil)
	must(t, err)
	if w.NextExpiry() != exp {
		t.Fatalf("next expiry %d", w.NextExpiry())
	}
	out = w.Expire(exp-1, out[:0])
	if len(out) != 0 || avail(w, "default:CREDITS") != 700 {
		t.Fatalf("expired 1 ns early: %+v", out)
	}
	out = w.Expire(exp, out[:0])
	if len(out) != 1 {
		t.Fatalf("not expired at expires_at: %+v", out)
	}
	e := out[0]
	if e.Type != EntryExpiry || e.Amount != -700 || e.BalanceAfter != 0 || e.BucketID != "b_1" || e.Reference != "tx1" || e.OccurredAt != exp || e.RecordedAt != exp || e.Seq != 2 {
		t.Fatalf("expiry entry %+v", e)
	}
	if w.NextExpiry() != 0 || len(w.Account("default:CREDITS").Buckets) != 0 {
		t.Fatal("bucket still there")
	}
	mustCheck(t, w)

	// Every mutating method expires first, even when it then fails.
	w = NewWallet("c1", Settings{}, t0)
	_, err = w.Adjust(&AdjustCmd{TransactionID: "tx1", Account: "default", Asset: "CREDITS", Amount: 5, Priority: -1, ExpiresAt: t0 + hour}, t0, nil)
	must(t, err)
	_, out, err = w.Charge(usage("e1", 1, 0), t0+hour, nil, out[:0])
	if code(err) != CodeInsufficientFunds || len(out) != 1 || out[0].Type != EntryExpiry || out[0].Amount != -5 {
		t.Fatalf("charge after expiry: %v %+v", err, out)
	}
	mustCheck(t, w)

	// A grant that is already expired when made expires at once.
	w = NewWallet("c1", Settings{}, t0)
	_, out, err = w.TopUp(&TopUpCmd{ID: "top", Account: "default", Asset: "CREDITS", Amount: 9, ExpiresAt: t0}, t0, out[:0])
	must(t, err)
	if len(out) != 2 || out[0].Type != EntryTopUp || out[1].Type != EntryExpiry || out[1].Amount != -9 || avail(w, "default:CREDITS") != 0 {
		t.Fatalf("expired top-up: %+v", out)
	}
	mustCheck(t, w)
}

func TestWalletTopUp(t *testing.T) {
	tests := []struct {
		name string
		cmd  TopUpCmd
		code string
	}{
		{"ok", TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: 5000, Source: "custom_credits", Metadata: []byte(`{"a":1}`)}, ""},
		{"expiring", TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: 5, ExpiresAt: t0 + day}, ""},
		{"zero", TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: 0}, CodeInvalidAmount},
		{"negative", TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: -1}, CodeInvalidAmount},
		{"huge", TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: CommandUnitsMax + 1}, CodeInvalidAmount},
		{"no asset", TopUpCmd{ID: "top_1", Account: "default", Amount: 5}, CodeInvalidRequest},
		{"negative expiry", TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: 5, ExpiresAt: -2}, CodeInvalidRequest},
		{"period_end without a plan", TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: 5, ExpiresAt: ExpiresPeriodEnd}, CodeNoPlanPeriod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWallet("c1", Settings{}, t0)
			before := AppendWallet(nil, w)
			id, out, err := w.TopUp(&tt.cmd, t0+1, nil)
			if code(err) != tt.code {
				t.Fatalf("code %q, want %q", code(err), tt.code)
			}
			mustCheck(t, w)
			if tt.code != "" {
				if !bytes.Equal(before, AppendWallet(nil, w)) || len(out) != 0 || id != "" {
					t.Fatal("a refused top-up changed the wallet")
				}
				return
			}
			a := w.Account("default:CREDITS")
			b := a.Buckets[0]
			if id != "b_1" || b.ID != id || b.Kind != KindRecharge || b.Priority != 30 || b.Amount != tt.cmd.Amount || b.Remaining != tt.cmd.Amount ||
				b.EffectiveAt != t0+1 || b.ExpiresAt != tt.cmd.ExpiresAt || b.Source != tt.cmd.Source || b.Reference != "top_1" || b.Metadata != string(tt.cmd.Metadata) {
				t.Fatalf("bucket %+v", b)
			}
			e := out[0]
			if len(out) != 1 || e.Type != EntryTopUp || e.Amount != tt.cmd.Amount || e.BalanceAfter != tt.cmd.Amount || e.BucketID != id || e.Reference != "top_1" ||
				e.OccurredAt != t0+1 || e.Account != "default:CREDITS" || e.Seq != 1 || w.Seq != 1 || w.UpdatedAt != t0+1 {
				t.Fatalf("entry %+v", e)
			}
		})
	}
}

func TestWalletReverseTopUp(t *testing.T) {
	const window = 24 * hour
	setup := func(t *testing.T) *Wallet {
		w := NewWallet("c1", Settings{}, t0)
		_, _, err := w.TopUp(topUp("top_1", 100), t0, nil) // b_1
		must(t, err)
		_, _, err = w.TopUp(topUp("top_2", 50), t0, nil) // b_2, consumed after b_1 (same priority, expiry, time; id order)
		must(t, err)
		return w
	}
	tests := []struct {
		name    string
		prepare func(t *testing.T, w *Wallet)
		bucket  string
		topUp   string
		at      int64
		code    string
	}{
		{"ok", nil, "b_2", "top_2", t0 + window, ""},
		{"window elapsed", nil, "b_2", "top_2", t0 + window + 1, CodeReversalWindowElapsed},
		{"unknown bucket", nil, "b_9", "top_2", t0, CodeUnknownBucket},
		{"not this top-up", nil, "b_1", "top_2", t0, CodeUnknownBucket},
		{"partly spent", func(t *testing.T, w *Wallet) {
			_, _, err := w.Charge(usage("e", 1, 0), t0, nil, nil)
			must(t, err)
		}, "b_1", "top_1", t0, CodeTopUpSpent},
		{"spent is checked before the window", func(t *testing.T, w *Wallet) {
			_, _, err := w.Charge(usage("e", 1, 0), t0, nil, nil)
			must(t, err)
		}, "b_1", "top_1", t0 + 2*window, CodeTopUpSpent},
		{"fully spent and dropped", func(t *testing.T, w *Wallet) {
			_, _, err := w.Charge(usage("e", 100, 0), t0, nil, nil)
			must(t, err)
		}, "b_1", "top_1", t0, CodeTopUpSpent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := setup(t)
			if tt.prepare != nil {
				tt.prepare(t, w)
			}
			before := AppendWallet(nil, w)
			availBefore := avail(w, "default:CREDITS")
			out, err := w.ReverseTopUp(tt.bucket, tt.topUp, window, tt.at, nil)
			if code(err) != tt.code {
				t.Fatalf("code %q (%v), want %q", code(err), err, tt.code)
			}
			mustCheck(t, w)
			if tt.code != "" {
				if !bytes.Equal(before, AppendWallet(nil, w)) || len(out) != 0 {
					t.Fatal("a refused reversal changed the wallet")
				}
				return
			}
			if len(out) != 1 || out[0].Type != EntryTopUpReversal || out[0].Amount != -50 || out[0].BucketID != "b_2" || out[0].Reference != "top_2" ||
				out[0].BalanceAfter != availBefore-50 || avail(w, "default:CREDITS") != availBefore-50 {
				t.Fatalf("entries %+v", out)
			}
			if _, err := w.ReverseTopUp("b_2", "top_2", window, tt.at, nil); code(err) != CodeTopUpSpent {
				t.Fatalf("second reversal: %v", err)
			}
		})
	}

	// A top-up whose amount settled debt is not reversible.
	w := NewWallet("c1", Settings{Policy: PolicyOverdraft, CreditLimits: []Limit{{Account: "default:CREDITS", Units: 10}}}, t0)
	_, _, err := w.Charge(usage("e", 3, 0), t0, nil, nil)
	must(t, err)
	id, _, err := w.TopUp(topUp("top_1", 100), t0, nil)
	must(t, err)
	if _, err := w.ReverseTopUp(id, "top_1", window, t0, nil); code(err) != CodeTopUpSpent {
		t.Fatalf("reversal of a top-up that settled debt: %v", err)
	}
}

func TestWalletAdjust(t *testing.T) {
	tests := []struct {
		name     string
		settings Settings
		cmd      AdjustCmd
		code     string
		kind     Kind
		priority uint8
		source   string
		avail    int64
		debt     int64
	}{
		{"recharge by default", Settings{}, AdjustCmd{Amount: 10, Priority: -1}, "", KindRecharge, 30, "adjustment", 110, 0},
		{"promotional", Settings{}, AdjustCmd{Amount: 10, Kind: KindPromotional, Priority: -1, ExpiresAt: t0 + day, Source: "gift"}, "", KindPromotional, 10, "gift", 110, 0},
		{"plan", Settings{}, AdjustCmd{Amount: 10, Kind: KindPlan, Priority: -1}, "", KindPlan, 20, "adjustment", 110, 0},
		{"explicit priority", Settings{}, AdjustCmd{Amount: 10, Kind: KindPlan, Priority: 0}, "", KindPlan, 0, "adjustment", 110, 0},
		{"priority 100", Settings{}, AdjustCmd{Amount: 10, Priority: 100}, "", KindRecharge, 100, "adjustment", 110, 0},
		{"priority 101", Settings{}, AdjustCmd{Amount: 10, Priority: 101}, CodeInvalidRequest, 0, 0, "", 100, 0},
		{"unknown kind", Settings{}, AdjustCmd{Amount: 10, Kind: 4, Priority: -1}, CodeInvalidRequest, 0, 0, "", 100, 0},
		{"zero", Settings{}, AdjustCmd{Amount: 0, Priority: -1}, CodeInvalidAmount, 0, 0, "", 100, 0},
		{"below the limit", Settings{}, AdjustCmd{Amount: -CommandUnitsMax - 1, Priority: -1}, CodeInvalidAmount, 0, 0, "", 100, 0},
		{"debit", Settings{}, AdjustCmd{Amount: -60, Priority: -1}, "", 0, 0, "", 40, 0},
		{"debit all", Settings{}, AdjustCmd{Amount: -100, Priority: -1}, "", 0, 0, "", 0, 0},
		{"debit too much", Settings{}, AdjustCmd{Amount: -101, Priority: -1}, CodeInsufficientFunds, 0, 0, "", 100, 0},
		{"debit a paused customer", Settings{Status: StatusPaused}, AdjustCmd{Amount: -1, Priority: -1}, "", 0, 0, "", 99, 0},
		{"debit into debt", Settings{Policy: PolicyOverdraft, CreditLimits: []Limit{{Account: "default:CREDITS", Units: 50}}},
			AdjustCmd{Amount: -150, Priority: -1}, "", 0, 0, "", -50, 50},
		{"debit past the limit", Settings{Policy: PolicyOverdraft, CreditLimits: []Limit{{Account: "default:CREDITS", Units: 50}}},
			AdjustCmd{Amount: -151, Priority: -1}, CodeInsufficientFunds, 0, 0, "", 100, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWallet("c1", tt.settings, t0)
			_, _, err := w.TopUp(topUp("top_1", 100), t0, nil)
			must(t, err)
			before := AppendWallet(nil, w)
			c := tt.cmd
			c.TransactionID, c.Account, c.Asset = "tx_1", "default", "CREDITS"
			out, err := w.Adjust(&c, t0+1, nil)
			if code(err) != tt.code {
				t.Fatalf("code %q (%v), want %q", code(err), err, tt.code)
			}
			mustCheck(t, w)
			a := w.Account("default:CREDITS")
			if a.Available() != tt.avail || a.Debt != tt.debt {
				t.Fatalf("available %d debt %d, want %d %d", a.Available(), a.Debt, tt.avail, tt.debt)
			}
			if tt.code != "" {
				if !bytes.Equal(before, AppendWallet(nil, w)) || len(out) != 0 {
					t.Fatal("a refused adjustment changed the wallet")
				}
				return
			}
			var sum int64
			for _, e := range out {
				if e.Type != EntryAdjustment || e.Reference != "tx_1" {
					t.Fatalf("entry %+v", e)
				}
				sum += e.Amount
			}
			if sum != c.Amount {
				t.Fatalf("entries sum to %d, want %d", sum, c.Amount)
			}
			if c.Amount > 0 {
				var b *Bucket
				for i := range a.Buckets {
					if a.Buckets[i].Reference == "tx_1" {
						b = &a.Buckets[i]
					}
				}
				if b == nil || b.Kind != tt.kind || b.Priority != tt.priority || b.Source != tt.source || b.ExpiresAt != c.ExpiresAt || out[0].BucketID != b.ID {
					t.Fatalf("bucket %+v", b)
				}
			}
			if tt.debt > 0 && (len(out) != 2 || out[1].BucketID != "" || out[1].Amount != -tt.debt) {
				t.Fatalf("debt part: %+v", out)
			}
		})
	}
}

func TestWalletCharge(t *testing.T) {
	overdraft := Settings{Policy: PolicyOverdraft, CreditLimits: []Limit{{Account: "default:CREDITS", Units: 5}}}
	twoAccounts := func(u1, u2 int64) *UsageCmd {
		c := usage("e", u1, 0)
		c.Charges = append(c.Charges, meter.Charge{Account: "default:USD", Name: "default", Asset: "USD", Scale: 6, Amount: meter.Fine{Units: u2}})
		return c
	}
	tests := []struct {
		name     string
		settings Settings
		cmd      *UsageCmd
		code     string
		avail    int64 // of default:CREDITS after
		results  int
	}{
		{"ok", Settings{}, usage("e", 30, 0), "", 70, 1},
		{"everything", Settings{}, usage("e", 100, 0), "", 0, 1},
		{"too much", Settings{}, usage("e", 101, 0), CodeInsufficientFunds, 100, 0},
		{"paused", Settings{Status: StatusPaused}, usage("e", 1, 0), CodeAccountPaused, 100, 0},
		{"paused zero", Settings{Status: StatusPaused}, usage("e", 0, 0), CodeAccountPaused, 100, 0},
		{"negative units", Settings{}, usage("e", -1, 0), CodeInvalidAmount, 100, 0},
		{"sub out of range", Settings{}, usage("e", 0, meter.SubUnitsPerUnit), CodeInvalidAmount, 100, 0},
		{"overdraft", overdraft, usage("e", 105, 0), "", -5, 1},
		{"overdraft past the limit", overdraft, usage("e", 106, 0), CodeInsufficientFunds, 100, 0},
		{"two accounts, the second has nothing", Settings{}, twoAccounts(1, 1), CodeInsufficientFunds, 100, 0},
		{"two accounts, zero on the second", Settings{}, twoAccounts(1, 0), "", 99, 2},
		{"two charges on one account add up", Settings{}, &UsageCmd{EventID: "e", Charges: []meter.Charge{
			{Account: "default:CREDITS", Amount: meter.Fine{Units: 60}}, {Account: "default:CREDITS", Amount: meter.Fine{Units: 41}}}}, CodeInsufficientFunds, 100, 0},
		{"two charges on one account fit", Settings{}, &UsageCmd{EventID: "e", Charges: []meter.Charge{
			{Account: "default:CREDITS", Amount: meter.Fine{Units: 60}}, {Account: "default:CREDITS", Amount: meter.Fine{Units: 40}}}}, "", 0, 2},
		{"malformed account", Settings{}, &UsageCmd{EventID: "e", Charges: []meter.Charge{{Account: "CREDITS", Amount: meter.Fine{Units: 1}}}}, CodeInvalidRequest, 100, 0},
		{"account and name disagree", Settings{}, &UsageCmd{EventID: "e", Charges: []meter.Charge{{Account: "default:CREDITS", Name: "other", Asset: "CREDITS"}}}, CodeInvalidRequest, 100, 0},
		{"too many charges", Settings{}, &UsageCmd{EventID: "e", Charges: make([]meter.Charge, EventChargesMax+1)}, CodeInvalidRequest, 100, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWallet("c1", Settings{}, t0)
			_, _, err := w.TopUp(topUp("top_1", 100), t0, nil)
			must(t, err)
			w.Configure(tt.settings, t0)
			before := AppendWallet(nil, w)
			res, out, err := w.Charge(tt.cmd, t0+1, nil, nil)
			if code(err) != tt.code {
				t.Fatalf("code %q (%v), want %q", code(err), err, tt.code)
			}
			mustCheck(t, w)
			if got := avail(w, "default:CREDITS"); got != tt.avail {
				t.Fatalf("available %d, want %d", got, tt.avail)
			}
			if len(res) != tt.results {
				t.Fatalf("%d results, want %d", len(res), tt.results)
			}
			if tt.code != "" {
				if !bytes.Equal(before, AppendWallet(nil, w)) || len(out) != 0 {
					t.Fatal("a refused charge changed the wallet")
				}
				return
			}
			sums := map[string]int64{"default:CREDITS": 100}
			sumEntries(t, w, sums, out)
			for _, r := range res {
				var sum int64
				for _, p := range r.Parts {
					sum += p.Amount
				}
				if sum != r.Amount || r.BalanceAfter != avail(w, r.Account) && r.Account != "default:CREDITS" {
					t.Fatalf("result %+v", r)
				}
			}
		})
	}
}

func TestWalletChargeZeroUnitsCreatesAccount(t *testing.T) {
	w := NewWallet("c1", Settings{}, t0)
	c := &UsageCmd{EventID: "e", Charges: []meter.Charge{{Account: "default:TOK", Amount: meter.Fine{Sub: meter.SubUnitsPerUnit / 2}}}}
	res, out, err := w.Charge(c, t0, nil, nil)
	must(t, err)
	a := w.Account("default:TOK")
	if a == nil || a.Name() != "default" || a.Asset() != "TOK" || a.Carry != meter.SubUnitsPerUnit/2 || len(out) != 0 || len(res) != 1 || res[0].Amount != 0 || res[0].Account != "default:TOK" {
		t.Fatalf("account %+v, results %+v, entries %+v", a, res, out)
	}
	// The second half makes a unit, which the empty account cannot pay: nothing changes, not even the carry.
	_, _, err = w.Charge(c, t0, nil, nil)
	if code(err) != CodeInsufficientFunds || a.Carry != meter.SubUnitsPerUnit/2 {
		t.Fatalf("%v, carry %d", err, a.Carry)
	}
	// Accounts stay sorted by id.
	_, _, err = w.TopUp(&TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1}, t0, nil)
	must(t, err)
	_, _, err = w.TopUp(&TopUpCmd{ID: "t", Account: "zeta", Asset: "CREDITS", Amount: 1}, t0, nil)
	must(t, err)
	_, _, err = w.TopUp(&TopUpCmd{ID: "t", Account: "alpha", Asset: "USD", Amount: 1}, t0, nil)
	must(t, err)
	var ids []string
	for _, a := range w.Accounts {
		ids = append(ids, a.ID())
	}
	if strings.Join(ids, ",") != "alpha:USD,default:CREDITS,default:TOK,zeta:CREDITS" {
		t.Fatal(ids)
	}
	mustCheck(t, w)
}

func TestWalletOverdraftAndDebt(t *testing.T) {
	w := NewWallet("c1", Settings{Policy: PolicyOverdraft, CreditLimits: []Limit{{Account: "default:CREDITS", Units: 500}}}, t0)
	_, _, err := w.TopUp(topUp("top_1", 100), t0, nil)
	must(t, err)
	sums := map[string]int64{"default:CREDITS": 100}
	// 100 from the bucket, then 50 into debt.
	res, out, err := w.Charge(usage("e1", 150, 0), t0, nil, nil)
	must(t, err)
	sumEntries(t, w, sums, out)
	if len(out) != 2 || out[0].BucketID != "b_1" || out[0].Amount != -100 || out[1].BucketID != "" || out[1].Amount != -50 ||
		len(res[0].Parts) != 2 || res[0].Parts[1] != (Part{Amount: 50}) || res[0].BalanceAfter != -50 {
		t.Fatalf("entries %+v results %+v", out, res)
	}
	// Down to exactly -limit.
	res, out, err = w.Charge(usage("e2", 450, 0), t0, res[:0], out[:0])
	must(t, err)
	sumEntries(t, w, sums, out)
	a := w.Account("default:CREDITS")
	if a.Available() != -500 || a.Debt != 500 {
		t.Fatalf("available %d debt %d", a.Available(), a.Debt)
	}
	// Then refused.
	before := AppendWallet(nil, w)
	if _, _, err = w.Charge(usage("e3", 1, 0), t0, res[:0], out[:0]); code(err) != CodeInsufficientFunds {
		t.Fatalf("past the limit: %v", err)
	}
	if !bytes.Equal(before, AppendWallet(nil, w)) {
		t.Fatal("changed")
	}
	// A lowered limit keeps the debt and refuses further debits; 0-unit charges still pass.
	w.Configure(Settings{Policy: PolicyOverdraft}, t0)
	if _, _, err = w.Charge(usage("e4", 1, 0), t0, nil, nil); code(err) != CodeInsufficientFunds {
		t.Fatalf("after lowering the limit: %v", err)
	}
	if _, _, err = w.Charge(usage("e5", 0, 1), t0, nil, nil); err != nil {
		t.Fatalf("0-unit charge in debt: %v", err)
	}
	// The next top-up settles the debt first: 600 - 500 = 100 remain in the bucket.
	id, out, err := w.TopUp(topUp("top_2", 600), t0+day, out[:0])
	must(t, err)
	sumEntries(t, w, sums, out)
	if a.Debt != 0 || a.Available() != 100 || len(a.Buckets) != 1 || a.Buckets[0].ID != id || a.Buckets[0].Remaining != 100 || a.Buckets[0].Amount != 600 {
		t.Fatalf("after the top-up: %+v", a)
	}
	// Its entries: the debt part without a bucket, then the rest into the bucket.
	if len(out) != 2 || out[0].Amount != 500 || out[0].BucketID != "" || out[0].BalanceAfter != 0 ||
		out[1].Amount != 100 || out[1].BucketID != id || out[1].BalanceAfter != 100 {
		t.Fatalf("top-up entry %+v", out)
	}
	// A grant smaller than the debt keeps no bucket.
	_, err = w.Adjust(&AdjustCmd{TransactionID: "tx", Account: "default", Asset: "CREDITS", Amount: -300, Priority: -1}, t0+day, nil)
	if code(err) != CodeInsufficientFunds {
		t.Fatalf("debit beyond a zero limit: %v", err)
	}
	w.Configure(Settings{Policy: PolicyOverdraft, CreditLimits: []Limit{{Account: "default:CREDITS", Units: 500}}}, t0)
	_, err = w.Adjust(&AdjustCmd{TransactionID: "tx", Account: "default", Asset: "CREDITS", Amount: -300, Priority: -1}, t0+day, nil)
	must(t, err)
	_, out, err = w.TopUp(topUp("top_3", 150), t0+day, out[:0])
	must(t, err)
	if a.Debt != 50 || a.Available() != -50 || len(a.Buckets) != 0 || out[0].Amount != 150 || out[0].BalanceAfter != -50 {
		t.Fatalf("partial settlement: %+v %+v", a, out)
	}
	mustCheck(t, w)
}

func TestWalletCarry(t *testing.T) {
	const n = 1_000_000
	w := NewWallet("c1", Settings{}, t0)
	_, _, err := w.TopUp(topUp("top_1", 300_000), t0, nil)
	must(t, err)
	c := usage("e", 0, 300_000_000_000_000_000) // 0.3 of a unit
	var res []ChargeResult
	var out []Entry
	var total int64
	for i := 0; i < n; i++ {
		res, out, err = w.Charge(c, t0, res[:0], out[:0])
		if err != nil {
			t.Fatalf("charge %d: %v", i, err)
		}
		total += res[0].Amount
		if res[0].Amount > 1 {
			t.Fatalf("charge %d: %d units", i, res[0].Amount)
		}
	}
	a := w.Account("default:CREDITS")
	if total != 300_000 || a.Carry != 0 || a.Available() != 0 {
		t.Fatalf("charged %d units, carry %d, available %d", total, a.Carry, a.Available())
	}
	mustCheck(t, w)
}

func TestWalletLedgerAssertion(t *testing.T) {
	w := NewWallet("c1", Settings{}, t0)
	_, _, err := w.TopUp(topUp("top_1", 100), t0, nil)
	must(t, err)
	w.Account("default:CREDITS").Ledger++ // a bug elsewhere
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "ledger sum 100 != available 99") {
			t.Fatalf("recovered %v", r)
		}
	}()
	w.Charge(usage("e", 1, 0), t0, nil, nil)
	t.Fatal("no panic")
}

func TestWalletLimits(t *testing.T) {
	w := NewWallet("c1", Settings{}, t0)
	for i := 0; i < AccountBucketsMax; i++ {
		_, _, err := w.TopUp(&TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1}, t0, nil)
		must(t, err)
	}
	if _, _, err := w.TopUp(&TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1}, t0, nil); code(err) != CodeLimitExceeded {
		t.Fatalf("bucket limit: %v", err)
	}
	w = NewWallet("c1", Settings{}, t0)
	for i := 0; i < 4; i++ {
		_, _, err := w.TopUp(&TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: CommandUnitsMax}, t0, nil)
		must(t, err)
	}
	if _, _, err := w.TopUp(&TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1}, t0, nil); code(err) != CodeInvalidAmount {
		t.Fatalf("balance limit: %v", err)
	}
	w = NewWallet("c1", Settings{}, t0)
	for i := 0; i < WalletAccountsMax; i++ {
		_, _, err := w.TopUp(&TopUpCmd{ID: "t", Account: "a" + string(rune('A'+i)), Asset: "CREDITS", Amount: 1}, t0, nil)
		must(t, err)
	}
	if _, _, err := w.TopUp(&TopUpCmd{ID: "t", Account: "zz", Asset: "CREDITS", Amount: 1}, t0, nil); code(err) != CodeLimitExceeded {
		t.Fatalf("account limit: %v", err)
	}
	if _, _, err := w.Charge(&UsageCmd{Charges: []meter.Charge{{Account: "zz:CREDITS"}}}, t0, nil, nil); code(err) != CodeLimitExceeded {
		t.Fatalf("account limit on charge: %v", err)
	}
	mustCheck(t, w)
}

func TestWalletCheck(t *testing.T) {
	build := func() *Wallet {
		w := NewWallet("c1", Settings{}, t0)
		_, _, err := w.TopUp(topUp("top_1", 100), t0, nil)
		must(t, err)
		_, err = w.Adjust(adjust("tx", 50, KindPromotional, t0+day), t0, nil)
		must(t, err)
		_, _, err = w.TopUp(&TopUpCmd{ID: "t", Account: "default", Asset: "USD", Amount: 7}, t0, nil)
		must(t, err)
		mustCheck(t, w)
		return w
	}
	tests := []struct {
		name    string
		corrupt func(w *Wallet)
		want    string
	}{
		{"status", func(w *Wallet) { w.Settings = &Settings{Status: 9, Policy: w.Settings.Policy} }, "unknown status"},
		{"policy", func(w *Wallet) { w.Settings = &Settings{Status: w.Settings.Status} }, "unknown policy"},
		{"nil account", func(w *Wallet) { w.Accounts[0] = nil }, "is nil"},
		{"order of accounts", func(w *Wallet) { w.Accounts[0], w.Accounts[1] = w.Accounts[1], w.Accounts[0] }, "strict id order"},
		{"duplicate account", func(w *Wallet) { w.Accounts[1] = w.Accounts[0] }, "strict id order"},
		{"negative debt", func(w *Wallet) { w.Accounts[0].Debt = -1 }, "negative"},
		{"carry", func(w *Wallet) { w.Accounts[0].Carry = meter.SubUnitsPerUnit }, "carry"},
		{"ledger", func(w *Wallet) { w.Accounts[0].Ledger++ }, "ledger sum"},
		{"remaining above amount", func(w *Wallet) { w.Accounts[0].Buckets[0].Remaining = 51 }, "remaining"},
		{"negative remaining", func(w *Wallet) { w.Accounts[0].Buckets[0].Remaining = -1 }, "remaining"},
		{"order of buckets", func(w *Wallet) { b := w.Accounts[0].Buckets; b[0], b[1] = b[1], b[0] }, "consumption order"},
		{"bucket id", func(w *Wallet) { w.Accounts[0].Buckets[0].ID = "b_99" }, "bucket id"},
		{"duplicate bucket id", func(w *Wallet) { w.Accounts[1].Buckets[0].ID = "b_1" }, "used twice"},
		{"kind", func(w *Wallet) { w.Accounts[0].Buckets[0].Kind = 0 }, "kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := build()
			tt.corrupt(w)
			err := w.Check()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Check() = %v, want %q", err, tt.want)
			}
		})
	}
}
