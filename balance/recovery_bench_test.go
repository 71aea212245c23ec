package balance

import (
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/wallet"
)

// benchWallets is the wallet count of BenchmarkRecovery; METERD_BENCH_WALLETS overrides it.
func benchWallets(b *testing.B) int {
	if v := os.Getenv("METERD_BENCH_WALLETS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("METERD_BENCH_WALLETS=%q", v)
		}
		return n
	}
	return 1_000_000
}

// BenchmarkRecovery measures a restart: opening the store, loading every
// wallet (one account, two buckets: a plan grant and a top-up) into the
// shards, until every shard answers. It also reports the heap held per
// loaded wallet.
func BenchmarkRecovery(b *testing.B) {
	n := benchWallets(b)
	dir := b.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := openStore(dir, 64<<20, 1000, log, nil)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC).UnixNano()
	monthEnd := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	batch := st.db.NewBatch()
	var key, val []byte
	var out []wallet.Entry
	for i := 0; i < n; i++ {
		w := wallet.NewWallet("customer-"+strconv.Itoa(i), wallet.Settings{}, now)
		var berr *wallet.Error
		if _, out, berr = w.TopUp(&wallet.TopUpCmd{ID: "top_1", Account: "default", Asset: "CREDITS", Amount: 5000, Source: "custom_credits"}, now, out[:0]); berr != nil {
			b.Fatal(berr)
		}
		if out, berr = w.Adjust(&wallet.AdjustCmd{TransactionID: "grant_1", Account: "default", Asset: "CREDITS", Amount: 20000, Kind: wallet.KindPlan, Priority: -1, ExpiresAt: monthEnd}, now, out[:0]); berr != nil {
			b.Fatal(berr)
		}
		key = walletKey(key[:0], w.Customer)
		val = wallet.AppendWallet(val[:0], w)
		if err := batch.Set(key, val, nil); err != nil {
			b.Fatal(err)
		}
		if batch.Len() > 4<<20 {
			if err := batch.Commit(pebble.NoSync); err != nil {
				b.Fatal(err)
			}
			batch = st.db.NewBatch()
		}
	}
	if err := batch.Commit(pebble.Sync); err != nil {
		b.Fatal(err)
	}
	if err := st.close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var total time.Duration
	var perWallet float64
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		e, err := Open(Options{Dir: dir, Log: log})
		if err != nil {
			b.Fatal(err)
		}
		// Restarted means answering: every shard has taken an op.
		for _, s := range e.shards {
			if err := e.readShard(s, func(*shard, *group) {}); err != nil {
				b.Fatal(err)
			}
		}
		total += time.Since(start)
		runtime.GC()
		runtime.ReadMemStats(&after)
		perWallet = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/restart")
	b.ReportMetric(perWallet, "heapB/wallet")
	b.ReportMetric(float64(n), "wallets")
}
