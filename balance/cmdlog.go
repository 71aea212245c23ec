package balance

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/meter"
)

// The command log and wallet checkpoints.
//
// A usage event changes its wallet through Wallet.Charge alone, a pure
// function of the wallet, the rated command and the group's time. So a
// commit group does not rewrite the wallets its events changed: it writes
// one log record holding those commands (the customer, the event id, its
// occurred_at, pricing version, hold id and rated charges) in its batch.
// The wallets are checkpointed later, each at most once per
// Options.CheckpointInterval, in the batch of some later group. A snapshot
// says which group it reflects (its log seq); recovery loads the snapshots
// and replays the records after each wallet's seq through Wallet.Charge.
// Every other write to a wallet (top-ups, grants, holds, settings, expiries
// found by timers or reads) still snapshots it in its own group, so the log
// holds usage only. Records every wallet's snapshot has passed are deleted.
//
//	'g' seq(8, BE) -> log record (appendLogRecord)
//
// Seqs are engine-wide: every group takes the next one when it starts, so
// one customer's records are in seq order whichever shard held it.
const prefixLog = 'g'

const logFormatV1 = 1

func logKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixLog}, seq)
}

// logKeySeq returns the seq of a log key.
func logKeySeq(key []byte) (uint64, error) {
	if len(key) != 9 {
		return 0, fmt.Errorf("log key %x: not a seq", key)
	}
	return binary.BigEndian.Uint64(key[1:]), nil
}

// appendLogCmd appends one usage command of customer to a group's log
// record body (the header is logHeader's).
func appendLogCmd(b []byte, customer string, c *UsageCmd) []byte {
	b = appendStr(b, customer)
	b = appendStr(b, c.EventID)
	b = binary.AppendVarint(b, c.OccurredAt)
	b = binary.AppendUvarint(b, uint64(c.PricingVersion))
	b = appendStr(b, c.HoldID)
	b = binary.AppendUvarint(b, uint64(len(c.Charges)))
	for i := range c.Charges {
		ch := &c.Charges[i]
		b = appendStr(b, ch.Account)
		b = append(b, ch.Scale)
		b = binary.AppendVarint(b, ch.Amount.Units)
		b = binary.AppendUvarint(b, ch.Amount.Sub)
	}
	return b
}

// logHeader is a log record's header: format, the group's time and the
// number of commands that follow.
func logHeader(dst []byte, now int64, cmds int) []byte {
	dst = append(dst, logFormatV1)
	dst = binary.AppendVarint(dst, now)
	return binary.AppendUvarint(dst, uint64(cmds))
}

// logReader decodes a log record's commands one at a time.
type logReader struct {
	d    decoder
	now  int64
	left int
	cmd  UsageCmd
	last meter.Charge // the last charge's account, name and asset: most commands repeat them
}

func newLogReader(b []byte) (*logReader, error) {
	r := &logReader{d: decoder{b: b}}
	if v := r.d.byte1(); r.d.err == nil && v != logFormatV1 {
		return nil, fmt.Errorf("balance: log record: unknown format version %d", v)
	}
	r.now = r.d.v()
	// A command takes at least 7 bytes (six lengths or numbers and a count).
	r.left = r.d.count(len(b), 7)
	if r.d.err != nil {
		return nil, fmt.Errorf("balance: log record: %w", r.d.err)
	}
	return r, nil
}

// next decodes the next command into r.cmd (its Charges reused across
// calls) and returns its customer; ok is false at the end or on an error
// (err). The customer, event and hold ids alias the record: they are
// valid until the record's memory is reused, for look-ups and for what
// Wallet.Charge returns (entries and effects, which replay drops), never
// for keeping.
func (r *logReader) next() (customer string, ok bool, err error) {
	if r.left == 0 {
		if r.d.off != len(r.d.b) {
			return "", false, fmt.Errorf("balance: log record: %d bytes after the end", len(r.d.b)-r.d.off)
		}
		return "", false, nil
	}
	r.left--
	d := &r.d
	customer = d.view()
	c := &r.cmd
	c.EventID = d.view()
	c.OccurredAt = d.v()
	pv := d.u()
	c.HoldID = d.view()
	n := d.count(EventChargesMax, 4)
	c.Charges = c.Charges[:0]
	for range n {
		var ch meter.Charge
		if account := d.raw(d.u(), codecStringLenMax); string(account) == r.last.Account {
			ch.Account, ch.Name, ch.Asset = r.last.Account, r.last.Name, r.last.Asset
		} else {
			ch.Account = internBytes(account)
			ch.Name, ch.Asset, _ = splitAccountID(ch.Account)
			r.last = ch
		}
		ch.Scale = d.byte1()
		ch.Amount.Units = d.v()
		ch.Amount.Sub = d.u()
		c.Charges = append(c.Charges, ch)
	}
	if d.err == nil && pv > 1<<32-1 {
		d.fail(fmt.Errorf("pricing version %d is above 2^32-1", pv))
	}
	c.PricingVersion = uint32(pv)
	if d.err != nil {
		return "", false, fmt.Errorf("balance: log record: %w", d.err)
	}
	return customer, true, nil
}

// ---- Checkpoints ----

// checkpoints is a shard's record of the wallets changed by logged commands
// since their last snapshot, oldest first.
type checkpoints struct {
	first map[*Wallet]uint64 // wallet -> seq of the first group that changed it since its snapshot
	queue []ckItem           // in first-change order; an item whose seq is not first[w] is stale
	head  int
}

type ckItem struct {
	w   *Wallet
	seq uint64
	at  time.Time // when that group started
}

// changed notes that a logged command of group g changed w.
func (c *checkpoints) changed(g *group, w *Wallet) {
	if _, ok := c.first[w]; ok {
		return
	}
	if _, ok := g.dirty[w]; ok {
		return // snapshotted at the end of g
	}
	c.first[w] = g.seq
	c.queue = append(c.queue, ckItem{w: w, seq: g.seq, at: g.started})
}

// live skips stale items at the head of the queue and returns the first
// live one.
func (c *checkpoints) live() (ckItem, bool) {
	for c.head < len(c.queue) {
		it := c.queue[c.head]
		if seq, ok := c.first[it.w]; ok && seq == it.seq {
			return it, true
		}
		c.queue[c.head] = ckItem{}
		c.head++
	}
	c.queue, c.head = c.queue[:0], 0
	return ckItem{}, false
}

// checkpointsPerGroupMax bounds the snapshots one group adds for checkpoints.
const checkpointsPerGroupMax = 4096

// checkpoint snapshots into g the wallets whose first change not yet
// snapshotted is at least interval old (all of them when all is set, at
// most checkpointsPerGroupMax; none unless write), and sets g.floor: every
// log record below it is covered by snapshots once g is durable.
func (s *shard) checkpoint(g *group, all, write bool) {
	c := &s.ck
	interval := s.e.opts.CheckpointInterval
	n := 0
	for write {
		it, ok := c.live()
		if !ok {
			break
		}
		if n == checkpointsPerGroupMax || !all && g.started.Sub(it.at) < interval {
			break
		}
		delete(c.first, it.w)
		c.queue[c.head] = ckItem{}
		c.head++
		if _, ok := g.dirty[it.w]; !ok {
			g.dirty[it.w] = struct{}{}
			n++
		}
	}
	if c.head > 1024 && c.head > len(c.queue)/2 {
		c.queue = append(c.queue[:0], c.queue[c.head:]...)
		c.head = 0
	}
	g.floor = g.seq + 1
	if it, ok := c.live(); ok {
		g.floor = it.seq
		s.ckOldest.Store(it.at.UnixNano())
	} else {
		s.ckOldest.Store(0)
	}
	if n > 0 {
		s.e.metrics.checkpointed.Add(float64(n))
	}
}

// truncateLog deletes the log records every shard's snapshots have passed.
// Losing the deletion in a crash only leaves records that replay skips.
//
// A shard with no group in flight and no wallet waiting for a snapshot
// needs no record below the next seq to be issued: read before its
// counters, that seq is below any group the shard opens after the read (a
// shard counts a group in flight before it takes its seq).
func (e *Engine) truncateLog() error {
	next := e.logSeq.Load() + 1
	floor := next
	for _, s := range e.shards {
		f := s.floor.Load()
		if s.inflight.Load() == 0 && s.ckOldest.Load() == 0 {
			f = next
		}
		floor = min(floor, f)
	}
	if floor <= e.logDropped {
		return nil
	}
	if err := e.st.db.DeleteRange(logKey(0), logKey(floor), pebble.NoSync); err != nil {
		return err
	}
	e.logDropped = floor
	return nil
}

// pokeCheckpoints sends an empty op to each shard whose oldest wallet not
// yet snapshotted is past the interval, so that an idle shard checkpoints
// too and the log can be truncated.
func (e *Engine) pokeCheckpoints() {
	now := time.Now().UnixNano()
	for _, s := range e.shards {
		if at := s.ckOldest.Load(); at != 0 && now-at >= int64(e.opts.CheckpointInterval) {
			_ = e.doShard(s, func(*shard, *group) {})
		}
	}
}

// replayLog applies the log records of db after each wallet's snapshot to
// the loaded wallets (walletOf finds them; the shards have not started),
// and returns the wallets it changed; made gets the ledger entries each
// command made (nil: dropped). snapSeq holds the snapshot seq of every
// wallet whose snapshot is at or after the first record; a wallet absent
// from it is older.
func replayLog(db *pebble.DB, walletOf func(string) *Wallet, snapSeq map[string]uint64, made func(*Wallet, []Entry)) (changed map[*Wallet]struct{}, records, events int, err error) {
	it, err := db.NewIter(prefixRange(prefixLog))
	if err != nil {
		return nil, 0, 0, err
	}
	defer it.Close()
	changed = make(map[*Wallet]struct{})
	var res []ChargeResult
	var entries []Entry
	for ok := it.First(); ok; ok = it.Next() {
		seq, err := logKeySeq(it.Key())
		if err != nil {
			return nil, 0, 0, err
		}
		records++
		r, err := newLogReader(it.Value())
		if err != nil {
			return nil, 0, 0, fmt.Errorf("log record %d: %w", seq, err)
		}
		for {
			customer, ok, err := r.next()
			if err != nil {
				return nil, 0, 0, fmt.Errorf("log record %d: %w", seq, err)
			}
			if !ok {
				break
			}
			if snap, ok := snapSeq[customer]; ok && seq <= snap {
				continue
			}
			w := walletOf(customer)
			if w == nil {
				return nil, 0, 0, fmt.Errorf("log record %d: customer %q has no wallet", seq, customer)
			}
			res, entries, _ = w.Charge(&r.cmd, r.now, res[:0], entries[:0])
			if made != nil && len(entries) > 0 {
				made(w, entries)
			}
			if w.Life != nil {
				w.TakeEffects() // written with the record
			}
			changed[w] = struct{}{}
			events++
		}
	}
	return changed, records, events, it.Error()
}

// recoverLog replays the log into the loaded wallets, then writes every
// wallet it changed with the ledger entries the replay made again, and
// deletes the log, in one synced batch.
func (e *Engine) recoverLog(snapSeq map[string]uint64) error {
	start := time.Now()
	walletOf := func(c string) *Wallet { return e.shardOf(c).wallets[c] }
	scratch := &group{dirty: map[*Wallet]struct{}{}} // writeEntries' outbox copy and early flush mark are not used here
	made := func(w *Wallet, entries []Entry) {
		e.shardOf(w.Customer).writeEntries(scratch, w, entries)
		scratch.outbox = outboxGroup{}
		clear(scratch.dirty)
	}
	changed, records, events, err := replayLog(e.st.db, walletOf, snapSeq, made)
	if err != nil {
		return err
	}
	if e.opts.replayed != nil {
		e.opts.replayed(events)
	}
	if records == 0 {
		return nil
	}
	b := e.st.db.NewBatch()
	defer b.Close()
	var key, val []byte
	for w := range changed {
		s := e.shardOf(w.Customer)
		g := &group{batch: b}
		s.flushLedger(g, w)
		key = walletKey(key[:0], w.Customer)
		val = appendWalletAt(val[:0], w, e.logSeq.Load())
		if err := b.Set(key, val, nil); err != nil {
			return err
		}
		s.schedule(w)
	}
	if err := b.DeleteRange(logKey(0), logKey(e.logSeq.Load()+1), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return err
	}
	e.metrics.replayed.Add(float64(events))
	e.log.Info("command log replayed", "records", records, "events", events, "wallets", len(changed), "seconds", time.Since(start).Seconds())
	return nil
}
