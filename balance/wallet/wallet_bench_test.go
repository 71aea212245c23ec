package wallet

import (
	"runtime"
	"strconv"
	"testing"

	"github.com/meterd/meterd/meter"
)

// benchWallet returns a typical wallet: one account with a plan bucket
// expiring at the end of the month and a never-expiring top-up.
func benchWallet(tb testing.TB, customer, topUpID string) *Wallet {
	w := NewWallet(customer, Settings{}, t0)
	_, err := w.Adjust(&AdjustCmd{TransactionID: "macro", Account: "default", Asset: "CREDITS", Amount: 20000, Kind: KindPlan, Priority: -1,
		ExpiresAt: t0 + 30*day, Source: "plan"}, t0, nil)
	must(tb, err)
	_, _, err = w.TopUp(&TopUpCmd{ID: topUpID, Account: "default", Asset: "CREDITS", Amount: 5000, Source: "custom_credits"}, t0, nil)
	must(tb, err)
	return w
}

// BenchmarkCharge measures the state machine alone applying pre-rated
// events: one charge of a few units and a fraction, on a wallet with two
// buckets that is refilled when low, with reused result and entry slices.
//
//	go test ./balance/ -run '^$' -bench 'Charge$' -benchmem
func BenchmarkCharge(b *testing.B) {
	w := benchWallet(b, "cust_0000001", "top_1")
	c := &UsageCmd{EventID: "evt_1", OccurredAt: t0, PricingVersion: 1, Charges: []meter.Charge{
		{Account: "default:CREDITS", Name: "default", Asset: "CREDITS", Amount: meter.Fine{Units: 3, Sub: 141_592_653_589_793_238}},
	}}
	refill := &AdjustCmd{TransactionID: "macro", Account: "default", Asset: "CREDITS", Amount: 20000, Kind: KindPlan, Priority: -1, Source: "plan"}
	res := make([]ChargeResult, 0, 4)
	out := make([]Entry, 0, 16)
	now := t0
	var err *Error
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now++
		res, out, err = w.Charge(c, now, res[:0], out[:0])
		if err != nil {
			b.Fatal(err)
		}
		if res[0].BalanceAfter < 100 {
			refill.ExpiresAt = now + 30*day
			if out, err = w.Adjust(refill, now, out[:0]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "charges/s")
	if err := w.Check(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkAppendWallet(b *testing.B) {
	w := benchWallet(b, "cust_0000001", "top_1")
	buf := AppendWallet(nil, w)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendWallet(buf[:0], w)
	}
}

func BenchmarkDecodeWallet(b *testing.B) {
	buf := AppendWallet(nil, benchWallet(b, "cust_0000001", "top_1"))
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeWallet(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// walletsMemory builds n typical wallets (one account, two buckets) in a
// map keyed by customer id, the way a shard holds them, and returns the
// live heap they take per wallet, map included.
func walletsMemory(tb testing.TB, n int, decoded bool) float64 {
	var buf []byte
	build := func(i int) *Wallet {
		customer := "cust_" + strconv.Itoa(10_000_000+i)
		w := benchWallet(tb, customer, "top_"+strconv.Itoa(10_000_000+i))
		if !decoded {
			return w
		}
		buf = AppendWallet(buf[:0], w)
		d, err := DecodeWallet(buf)
		if err != nil {
			tb.Fatal(err)
		}
		return d
	}
	_ = build(0) // warm the shared strings and tables
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m := make(map[string]*Wallet) // grown as a shard grows it
	for i := 0; i < n; i++ {
		w := build(i)
		m[w.Customer] = w
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(m)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

// BenchmarkWalletMemory reports the heap bytes per wallet of 1,000,000
// typical wallets held in a map[string]*Wallet. It builds them once,
// whatever b.N:
//
//	go test ./balance/ -run '^$' -bench WalletMemory -benchtime 1x
func BenchmarkWalletMemory(b *testing.B) {
	for _, decoded := range []bool{false, true} {
		name := "commands"
		if decoded {
			name = "decoded"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportMetric(walletsMemory(b, 1_000_000, decoded), "B/wallet")
		})
	}
}

// TestWalletMemory guards the memory per wallet against regressions, on
// 200,000 wallets (BenchmarkWalletMemory measures 1,000,000). Issue 11's
// target, 512 bytes, is the budget: the structs take 400 of it in their
// size classes (Wallet 104 in 112, Account 80, two 104-byte Buckets in
// 208), the map and the wallet's unique strings the rest.
func TestWalletMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 400,000 wallets")
	}
	const budget = 512 // bytes per wallet, map and strings included
	for _, decoded := range []bool{false, true} {
		got := walletsMemory(t, 200_000, decoded)
		t.Logf("decoded=%v: %.0f B/wallet", decoded, got)
		if got > budget {
			t.Errorf("decoded=%v: %.0f bytes per wallet, budget %d", decoded, got, budget)
		}
	}
}

// TestWalletChargeAllocs checks that the hot path does not allocate.
func TestWalletChargeAllocs(t *testing.T) {
	w := benchWallet(t, "cust_0000001", "top_1")
	c := usage("evt_1", 0, 300_000_000_000_000_000)
	res := make([]ChargeResult, 0, 4)
	out := make([]Entry, 0, 16)
	res, out, _ = w.Charge(c, t0, res[:0], out[:0]) // warm the Parts slices
	allocs := testing.AllocsPerRun(1000, func() {
		var err *Error
		res, out, err = w.Charge(c, t0, res[:0], out[:0])
		if err != nil {
			panic(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per charge", allocs)
	}
	if len(res) != 1 {
		t.Fatal(res, out)
	}
}
