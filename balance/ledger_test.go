package balance

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/wallet"
)

// TestLedgerChunksReadAsEntries writes a customer's entries as chunks of
// random sizes (single entries among them, as the format before chunks
// wrote every entry) through the shard's writer, and checks every page the
// reader returns, for every cursor, account filter and limit, against the
// plain list; and that following the cursors returns the whole ledger.
func TestLedgerChunksReadAsEntries(t *testing.T) {
	st, err := openStore(t.TempDir(), 8<<20, 100, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	rng := rand.New(rand.NewPCG(7, 7))
	w := &wallet.Wallet{Customer: "c1"}
	s := &shard{ledger: make(map[*wallet.Wallet]*pendingLedger)}
	var all []wallet.Entry // oldest first
	const n = 400
	for seq := uint64(1); seq <= n; {
		g := &group{batch: st.db.NewBatch(), dirty: make(map[*wallet.Wallet]struct{})}
		size := 1 + rng.IntN(30)
		if rng.IntN(3) == 0 {
			size = 1
		}
		var chunk []wallet.Entry
		for ; size > 0 && seq <= n; size-- {
			en := wallet.Entry{Seq: seq, Type: wallet.EntryUsage, Account: []string{"a:CREDITS", "b:CREDITS"}[rng.IntN(2)], Amount: -int64(seq), BucketID: "b_1", EventID: "e"}
			chunk = append(chunk, en)
			seq++
		}
		s.writeEntries(g, w, chunk)
		s.flushLedger(g, w)
		if err := g.batch.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		all = append(all, chunk...)
	}
	want := func(before uint64, account string, limit int) ([]wallet.Entry, uint64) {
		var out []wallet.Entry
		for i := len(all) - 1; i >= 0; i-- {
			en := all[i]
			if before > 0 && en.Seq >= before || account != "" && en.Account != account {
				continue
			}
			if len(out) == limit {
				return out, out[len(out)-1].Seq
			}
			out = append(out, en)
		}
		return out, 0
	}
	for before := uint64(0); before <= n+2; before++ {
		for _, account := range []string{"", "a:CREDITS", "b:CREDITS"} {
			for _, limit := range []int{1, 7, 1000} {
				got, next, err := st.readLedger("c1", account, before, limit)
				if err != nil {
					t.Fatal(err)
				}
				exp, expNext := want(before, account, limit)
				if next != expNext || !reflect.DeepEqual(got, exp) {
					t.Fatalf("before %d, account %q, limit %d: got %d entries (next %d), want %d (next %d)",
						before, account, limit, len(got), next, len(exp), expNext)
				}
			}
		}
	}
	var walked []wallet.Entry
	for before := uint64(0); ; {
		page, next, err := st.readLedger("c1", "", before, 13)
		if err != nil {
			t.Fatal(err)
		}
		walked = append(walked, page...)
		if next == 0 {
			break
		}
		before = next
	}
	if len(walked) != n || walked[0].Seq != n || walked[n-1].Seq != 1 {
		t.Fatalf("following the cursors: %d entries, want %d, newest first", len(walked), n)
	}
}

func FuzzDecodeLedgerValue(f *testing.F) {
	en := wallet.AppendEntry(nil, &wallet.Entry{Seq: 3, Type: wallet.EntryUsage, Account: "default:CREDITS", Amount: -5, BucketID: "b_1"})
	chunk := append([]byte{ledgerChunkV1, 2}, byte(len(en)))
	chunk = append(chunk, en...)
	chunk = append(chunk, byte(len(en)))
	chunk = append(chunk, en...)
	f.Add(en)
	f.Add(chunk)
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = appendLedgerValue(nil, b)
	})
}
