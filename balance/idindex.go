package balance

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
)

// idIndex is a shard's in-memory index of the idempotency records it holds:
// a 64-bit fingerprint of each record's key, when the record expires, and
// where it is: the seq of the command-log record that holds it (a usage
// event's), or 0 for a record under its own key in the store (top-ups,
// adjustments, and events recorded before the log held them). It answers
// "certainly not stored" for a new id without a store read: a key whose
// fingerprint is absent has no record, and one whose entry says it expired
// counts as absent (RecordExpired). A present fingerprint only says
// "maybe": the record is then read where the entry says, so a collision
// (about n/2^64 per look-up) costs a read, never a wrong answer.
//
// The table is open addressing with linear probing over a power-of-two
// array, at most 3/4 full; growing rehashes and drops what has expired.
// A dropped record (the janitor's) keeps its entry until then: a stale
// entry is only a "maybe". Each slot is 20 bytes (fingerprint, expiry in
// seconds, log seq), so an id costs 27-53 bytes of memory.
//
// The ids in the command log are added before the shards start (Open's
// replay reads every record kept). Until ready, the keys stored under their
// own key before the engine started are not in it (Engine.buildIndexes scans
// them in the background), and every look-up the log does not answer reads
// the store.
type idIndex struct {
	seed  maphash.Seed
	fps   []uint64 // 0 is an empty slot
	exp   []uint32 // the record's ExpireAt in unix seconds, rounded up
	seq   []uint64 // the log record holding it; 0: its own key in the store
	n     int
	ready bool
}

const idIndexMinSlots = 1 << 10

func newIDIndex(seed maphash.Seed) idIndex {
	return idIndex{seed: seed, fps: make([]uint64, idIndexMinSlots), exp: make([]uint32, idIndexMinSlots), seq: make([]uint64, idIndexMinSlots)}
}

func (x *idIndex) fingerprint(key []byte) uint64 {
	h := maphash.Bytes(x.seed, key)
	if h == 0 {
		h = 1
	}
	return h
}

// expSeconds is expireAt (unix ns) in seconds, rounded up, saturated.
func expSeconds(expireAt int64) uint32 {
	if expireAt <= 0 {
		return 0
	}
	s := (expireAt + 1e9 - 1) / 1e9
	if expireAt > (1<<62) || s > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(s)
}

// find appends to dst where the live records with key's fingerprint are
// (log seqs; 0: the record's own key in the store) at now (unix ns). An
// empty answer from a ready index means the store holds no live record at
// key; from one not ready, only that the log holds none.
func (x *idIndex) find(key []byte, now int64, dst []uint64) []uint64 {
	fp := x.fingerprint(key)
	mask := uint64(len(x.fps) - 1)
	for i := fp & mask; x.fps[i] != 0; i = (i + 1) & mask {
		// Rounded up: a record whose entry has passed has expired.
		if x.fps[i] == fp && int64(x.exp[i])*1e9 > now {
			dst = append(dst, x.seq[i])
		}
	}
	return dst
}

// absent reports whether the store certainly holds no live record at key
// at now (unix ns).
func (x *idIndex) absent(key []byte, now int64) bool {
	var buf [4]uint64
	return x.ready && len(x.find(key, now, buf[:0])) == 0
}

// add records that the store holds a record at key until expireAt (unix
// ns), in the log record seq (0: under key itself); growing drops what
// expired at now.
func (x *idIndex) add(key []byte, expireAt int64, seq uint64, now int64) {
	x.put(x.fingerprint(key), expSeconds(expireAt), seq, nowSeconds(now))
}

func nowSeconds(now int64) uint32 { return uint32(min(max(now/1e9, 0), 1<<32-1)) }

// put inserts a fingerprint, or updates the entry of the same fingerprint
// and place. Growing drops entries expired at nowSec (0: none).
func (x *idIndex) put(fp uint64, exp uint32, seq uint64, nowSec uint32) {
	if (x.n+1)*4 > len(x.fps)*3 {
		x.rehash(nowSec, 1)
	}
	mask := uint64(len(x.fps) - 1)
	for i := fp & mask; ; i = (i + 1) & mask {
		switch {
		case x.fps[i] == 0:
			x.fps[i], x.exp[i], x.seq[i] = fp, exp, seq
			x.n++
			return
		case x.fps[i] == fp && x.seq[i] == seq:
			x.exp[i] = max(x.exp[i], exp)
			return
		}
	}
}

// rehash rebuilds the table without the entries expired at nowSec, at the
// smallest size that leaves it at most half full with extra more.
func (x *idIndex) rehash(nowSec uint32, extra int) {
	oldFps, oldExp, oldSeq := x.fps, x.exp, x.seq
	live := 0
	for i, fp := range oldFps {
		if fp != 0 && oldExp[i] > nowSec {
			live++
		}
	}
	size := idIndexMinSlots
	for (live+extra)*2 > size {
		size *= 2
	}
	x.fps, x.exp, x.seq, x.n = make([]uint64, size), make([]uint32, size), make([]uint64, size), 0
	mask := uint64(size - 1)
	for j, fp := range oldFps {
		if fp == 0 || oldExp[j] <= nowSec {
			continue
		}
		i := fp & mask
		for x.fps[i] != 0 {
			i = (i + 1) & mask
		}
		x.fps[i], x.exp[i], x.seq[i] = fp, oldExp[j], oldSeq[j]
		x.n++
	}
}

// sweep drops what expired at now (unix ns) when it is at least a quarter
// of the table's entries, so that a shard that stopped receiving new ids
// gives its memory back.
func (x *idIndex) sweep(now int64) {
	nowSec := nowSeconds(now)
	dead := 0
	for i, fp := range x.fps {
		if fp != 0 && x.exp[i] <= nowSec {
			dead++
		}
	}
	if dead*4 < x.n || dead == 0 {
		return
	}
	x.rehash(nowSec, 1)
}

// idEntry is an entry of an idIndex on its way in (idLoad).
type idEntry struct {
	fp, seq uint64
	exp     uint32
}

// idLoad gathers the ids read from the log at start, per shard, then puts
// them in the shards' indexes: each table grown once to its final size
// rather than doubled again and again, the shards' tables in parallel. The
// entries wait in chunks, so that gathering millions never copies them.
type idLoad []idChunks

type idChunks struct {
	chunks [][]idEntry
	n      int
}

const idLoadChunk = 1 << 14

func (l idLoad) add(shard int, x *idIndex, key []byte, expireAt int64, seq uint64) {
	c := &l[shard]
	if k := len(c.chunks); k == 0 || len(c.chunks[k-1]) == idLoadChunk {
		c.chunks = append(c.chunks, make([]idEntry, 0, idLoadChunk))
	}
	last := &c.chunks[len(c.chunks)-1]
	*last = append(*last, idEntry{fp: x.fingerprint(key), seq: seq, exp: expSeconds(expireAt)})
	c.n++
}

// build puts the entries gathered for shard i into idx[i], dropping what
// expired at now.
func (l idLoad) build(idx []*idIndex, now int64) {
	nowSec := nowSeconds(now)
	var wg sync.WaitGroup
	for i := range l {
		c, x := &l[i], idx[i]
		if c.n == 0 {
			continue
		}
		wg.Go(func() {
			if (x.n+c.n)*4 > len(x.fps)*3 {
				x.rehash(nowSec, c.n)
			}
			for _, es := range c.chunks {
				for _, e := range es {
					if e.exp > nowSec {
						x.put(e.fp, e.exp, e.seq, nowSec)
					}
				}
			}
			c.chunks = nil
		})
	}
	wg.Wait()
}

// merge adds every entry of built (the keys stored before start) and makes
// the index ready.
func (x *idIndex) merge(built *idIndex) {
	for i, fp := range built.fps {
		if fp != 0 {
			x.put(fp, built.exp[i], built.seq[i], 0)
		}
	}
	x.ready = true
}

// bytes is the index's memory, for the metrics.
func (x *idIndex) bytes() int { return len(x.fps) * 20 }

// recordExpireAt reads a stored record's ExpireAt without decoding the
// rest: version, kind, hash, RecordedAt (varint), ExpireAt (varint).
func recordExpireAt(v []byte) (int64, bool) {
	if len(v) < 18 || (v[0] != recordVersion && v[0] != recordVersion1) {
		return 0, false
	}
	_, n := binary.Varint(v[18:])
	if n <= 0 {
		return 0, false
	}
	exp, m := binary.Varint(v[18+n:])
	if m <= 0 {
		return 0, false
	}
	return exp, true
}
