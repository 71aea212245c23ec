package balance

import (
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/internal/enc"
	"github.com/meterd/meterd/balance/wallet"
)

// Ledger chunks. A wallet's ledger entries are not written one key each as
// they are made: they wait in memory with the wallet's other unsnapshotted
// changes and go to the store as one chunk, in the batch that next
// snapshots the wallet (its checkpoint, or the group of any op other than
// usage). Until then the command log holds them: replay makes them again
// (cmdlog.go). A ledger read first has the shard write the customer's
// pending chunk, so it sees every entry acknowledged before it.
//
//	'l' customer 0x00 last-seq(8, BE) -> one entry (AppendEntry: its first
//	                                     byte is 1 or 3, never 2),
//	                                     or a chunk of consecutive entries:
//	                                     version=2 count {uvarint length, entry}
//
// The key is the seq of the chunk's last entry: chunks never overlap, and
// the entries of the keys before a key are all older than its own.
const ledgerChunkV1 = 2

// ledgerChunkBytesMax bounds a wallet's pending entries: beyond it the
// group that made them snapshots the wallet and writes them.
const ledgerChunkBytesMax = 64 << 10

// pendingLedger is a wallet's entries not yet written.
type pendingLedger struct {
	buf  []byte // uvarint length and AppendEntry bytes of each entry
	n    int
	last uint64
}

// writeEntries adds ledger entries to the wallet's pending chunk and to
// the group's outbox record. The caller marks the wallet dirty or changed.
func (s *shard) writeEntries(g *group, w *wallet.Wallet, entries []wallet.Entry) {
	if len(entries) == 0 {
		return
	}
	p := s.ledger[w]
	if p == nil {
		if n := len(s.ledgerFree); n > 0 {
			p, s.ledgerFree = s.ledgerFree[n-1], s.ledgerFree[:n-1]
		} else {
			p = &pendingLedger{}
		}
		s.ledger[w] = p
	}
	for i := range entries {
		s.val = wallet.AppendEntry(s.val[:0], &entries[i])
		p.buf = binary.AppendUvarint(p.buf, uint64(len(s.val)))
		p.buf = append(p.buf, s.val...)
		p.n++
		p.last = entries[i].Seq
		if s.outboxOn {
			g.outbox.addEntry(w.Customer, s.val)
		}
	}
	if len(p.buf) >= ledgerChunkBytesMax {
		g.dirty[w] = struct{}{}
	}
}

// flushLedger writes w's pending entries into g, as one entry or a chunk.
func (s *shard) flushLedger(g *group, w *wallet.Wallet) {
	p := s.ledger[w]
	if p == nil {
		return
	}
	s.key = ledgerKey(s.key[:0], w.Customer, p.last)
	if p.n == 1 {
		_, n := binary.Uvarint(p.buf)
		s.set(g, s.key, p.buf[n:])
	} else {
		s.val = append(s.val[:0], ledgerChunkV1)
		s.val = binary.AppendUvarint(s.val, uint64(p.n))
		s.val = append(s.val, p.buf...)
		s.set(g, s.key, s.val)
	}
	delete(s.ledger, w)
	p.buf, p.n, p.last = p.buf[:0], 0, 0
	if cap(p.buf) <= ledgerChunkBytesMax+4096 {
		s.ledgerFree = append(s.ledgerFree, p)
	}
}

// appendLedgerValue appends the entries of one stored ledger value (an
// entry or a chunk) to out, oldest first.
func appendLedgerValue(out []wallet.Entry, v []byte) ([]wallet.Entry, error) {
	if len(v) == 0 {
		return out, fmt.Errorf("balance: ledger value: empty")
	}
	if v[0] != ledgerChunkV1 {
		var en wallet.Entry
		if err := wallet.DecodeEntry(v, &en); err != nil {
			return out, err
		}
		return append(out, en), nil
	}
	d := enc.Decoder{B: v, Off: 1}
	// An entry takes at least 16 bytes, with its length.
	n := d.Count(len(v), 16)
	for range n {
		raw := d.Raw(d.U(), enc.MetadataLenMax+4*enc.StringLenMax)
		if d.Err != nil {
			break
		}
		var en wallet.Entry
		if err := wallet.DecodeEntry(raw, &en); err != nil {
			return out, fmt.Errorf("balance: ledger chunk: %w", err)
		}
		out = append(out, en)
	}
	if d.End() != nil {
		return out, fmt.Errorf("balance: ledger chunk: %w", d.Err)
	}
	return out, nil
}

// readLedger reads the stored entries of a customer with Seq < before (0 =
// all), newest first, of one account or all (""), at most limit of them;
// next is the cursor of the next page, 0 when there is none.
func (s *store) readLedger(customer, account string, before uint64, limit int) (entries []wallet.Entry, next uint64, err error) {
	lower := ledgerPrefix(nil, customer)
	upper := ledgerPrefix(nil, customer)
	upper[len(upper)-1] = 1
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, 0, err
	}
	defer it.Close()
	var ok bool
	if before > 0 {
		// The chunk holding before-1 is the first whose last seq is >= it.
		if ok = it.SeekGE(ledgerKey(nil, customer, before-1)); !ok {
			ok = it.Last()
		}
	} else {
		ok = it.Last()
	}
	var chunk []wallet.Entry
	for ; ok; ok = it.Prev() {
		if chunk, err = appendLedgerValue(chunk[:0], it.Value()); err != nil {
			return nil, 0, fmt.Errorf("ledger key %x: %w", it.Key(), err)
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			en := &chunk[i]
			if before > 0 && en.Seq >= before || account != "" && en.Account != account {
				continue
			}
			if len(entries) == limit {
				return entries, entries[len(entries)-1].Seq, nil
			}
			entries = append(entries, *en)
		}
	}
	return entries, 0, it.Error()
}
