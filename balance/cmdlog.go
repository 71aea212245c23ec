package balance

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/internal/enc"
	"github.com/meterd/meterd/balance/wallet"
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
// holds usage only.
//
// The log is also where an accepted event's idempotency record lives: its
// command carries the content hash, the status and the charges answered, so
// a duplicate is answered from the one log record the shard's id index
// points at (idindex.go). Records are kept while replay may need them (the
// replay floor: every wallet's snapshot has passed them) or while an id
// they hold is inside the dedup window (idSegments), and deleted past both.
//
//	'g' seq(8, BE) -> log record (appendLogRecord)
//	'm' "log_floor" -> seq(8, BE): replay starts there (truncateLog)
//
// Seqs are engine-wide: every group takes the next one when it starts, so
// one customer's records are in seq order whichever shard held it.
const prefixLog = 'g'

// Log record formats. V1 (the release before ids were logged) holds
// applied usage commands only; V2 adds to each command whether it was
// applied and, for an accepted event, its idempotency record.
const (
	logFormatV1 = 1
	logFormatV2 = 2
)

// Flags of a V2 command.
const (
	logApplied = 1 << 0 // Wallet.Charge ran for it: replay runs it again
	logID      = 1 << 1 // the event was accepted: status, hash and charges follow
	// logDescription: the event's description follows, last (it is on
	// the usage entries replay makes again).
	logDescription = 1 << 2
)

var logFloorKey = []byte("mlog_floor")

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
// record body (the header is logHeader's): applied when Wallet.Charge ran
// for it, and r the event's idempotency record when it was accepted (nil:
// refused).
func appendLogCmd(b []byte, customer string, c *wallet.UsageCmd, applied bool, r *record) []byte {
	b = enc.AppendStr(b, customer)
	b = enc.AppendStr(b, c.EventID)
	b = binary.AppendVarint(b, c.OccurredAt)
	b = binary.AppendUvarint(b, uint64(c.PricingVersion))
	b = enc.AppendStr(b, c.HoldID)
	b = binary.AppendUvarint(b, uint64(len(c.Charges)))
	for i := range c.Charges {
		ch := &c.Charges[i]
		b = enc.AppendStr(b, ch.Account)
		b = append(b, ch.Scale)
		b = binary.AppendVarint(b, ch.Amount.Units)
		b = binary.AppendUvarint(b, ch.Amount.Sub)
	}
	var flags byte
	if applied {
		flags |= logApplied
	}
	if c.Description != "" {
		flags |= logDescription
	}
	if r == nil {
		return appendLogDescription(append(b, flags), c)
	}
	b = append(b, flags|logID, r.Status)
	b = append(b, r.Hash[:]...)
	b = binary.AppendUvarint(b, uint64(len(r.Charges)))
	for i := range r.Charges {
		res := &r.Charges[i]
		// The account charged is the command's charge's, but for a charge
		// that named another spelling of it: written out then.
		account := res.Account
		if i < len(c.Charges) && c.Charges[i].Account == res.Account {
			account = ""
		}
		b = appendChargeResult(b, account, res)
	}
	return appendLogDescription(b, c)
}

// appendLogDescription appends the description of a command that has one.
func appendLogDescription(b []byte, c *wallet.UsageCmd) []byte {
	if c.Description == "" {
		return b
	}
	return enc.AppendStr(b, c.Description)
}

// logHeader is a log record's header: format, the group's time and the
// number of commands that follow.
func logHeader(dst []byte, now int64, cmds int) []byte {
	dst = append(dst, logFormatV2)
	dst = binary.AppendVarint(dst, now)
	return binary.AppendUvarint(dst, uint64(cmds))
}

// logReader decodes a log record's commands one at a time.
type logReader struct {
	d       enc.Decoder
	version byte
	now     int64
	left    int
	cmd     wallet.UsageCmd
	last    meter.Charge // the last charge's account, name and asset: most commands repeat them

	// The command's flags and, with logID, its idempotency record: status,
	// hash and the charges answered (their Parts carved from parts; strings
	// alias the record, like the command's).
	flags  byte
	status uint8
	hash   [16]byte
	res    []wallet.ChargeResult
	parts  []wallet.Part
}

func newLogReader(b []byte) (*logReader, error) {
	r := &logReader{d: enc.Decoder{B: b}}
	if r.version = r.d.Byte1(); r.d.Err == nil && r.version != logFormatV1 && r.version != logFormatV2 {
		return nil, fmt.Errorf("balance: log record: unknown format version %d", r.version)
	}
	r.now = r.d.V()
	// A command takes at least 7 bytes (six lengths or numbers and a count).
	r.left = r.d.Count(len(b), 7)
	if r.d.Err != nil {
		return nil, fmt.Errorf("balance: log record: %w", r.d.Err)
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
		if r.d.Off != len(r.d.B) {
			return "", false, fmt.Errorf("balance: log record: %d bytes after the end", len(r.d.B)-r.d.Off)
		}
		return "", false, nil
	}
	r.left--
	d := &r.d
	customer = d.View()
	c := &r.cmd
	c.EventID = d.View()
	c.OccurredAt = d.V()
	pv := d.U()
	c.HoldID = d.View()
	n := d.Count(wallet.EventChargesMax, 4)
	c.Charges = c.Charges[:0]
	for range n {
		var ch meter.Charge
		if account := d.Raw(d.U(), enc.StringLenMax); string(account) == r.last.Account {
			ch.Account, ch.Name, ch.Asset = r.last.Account, r.last.Name, r.last.Asset
		} else {
			ch.Account = enc.InternBytes(account)
			ch.Name, ch.Asset, _ = wallet.SplitAccountID(ch.Account)
			r.last = ch
		}
		ch.Scale = d.Byte1()
		ch.Amount.Units = d.V()
		ch.Amount.Sub = d.U()
		c.Charges = append(c.Charges, ch)
	}
	if d.Err == nil && pv > 1<<32-1 {
		d.Fail(fmt.Errorf("pricing version %d is above 2^32-1", pv))
	}
	c.PricingVersion = uint32(pv)
	r.flags, r.status, r.res, r.parts = logApplied, 0, r.res[:0], r.parts[:0]
	if r.version >= logFormatV2 {
		r.flags = d.Byte1()
		if r.flags&logID != 0 {
			r.decodeID(len(c.Charges))
		}
	}
	c.Description = ""
	if r.flags&logDescription != 0 {
		c.Description = d.View()
	}
	if d.Err != nil {
		return "", false, fmt.Errorf("balance: log record: %w", d.Err)
	}
	return customer, true, nil
}

// decodeID decodes the idempotency record of a command with n charges.
func (r *logReader) decodeID(n int) {
	d := &r.d
	r.status = d.Byte1()
	copy(r.hash[:], d.Raw(16, 16))
	k := d.Count(wallet.EventChargesMax, 4)
	for i := range k {
		res := wallet.ChargeResult{Account: d.View()}
		if res.Account == "" && i < n {
			res.Account = r.cmd.Charges[i].Account
		}
		res.Scale = d.Byte1()
		res.Amount = d.V()
		res.BalanceAfter = d.V()
		np := d.Count(wallet.AccountBucketsMax+1, 2)
		start := len(r.parts)
		for range np {
			r.parts = append(r.parts, wallet.Part{BucketID: d.View(), Amount: d.V()})
		}
		res.Parts = r.parts[start:len(r.parts):len(r.parts)]
		r.res = append(r.res, res)
	}
	if d.Err == nil && r.status != EventCharged && r.status != EventRecorded {
		d.Fail(fmt.Errorf("event status %d", r.status))
	}
}

// record returns the idempotency record of the command just decoded (which
// must have logID), its strings copied out of the log record; ExpireAt is
// the caller's to set.
func (r *logReader) record() *record {
	rec := &record{Kind: idemEvent, Hash: r.hash, RecordedAt: r.now, Status: r.status,
		PricingVersion: r.cmd.PricingVersion, OccurredAt: r.cmd.OccurredAt}
	if len(r.res) == 0 {
		return rec
	}
	rec.Charges = make([]wallet.ChargeResult, len(r.res))
	parts := make([]wallet.Part, len(r.parts))
	for i, res := range r.res {
		res.Account = enc.InternBytes([]byte(res.Account))
		if len(res.Parts) == 0 {
			res.Parts = nil
		} else {
			ps := parts[:len(res.Parts):len(res.Parts)]
			parts = parts[len(res.Parts):]
			for j, p := range res.Parts {
				ps[j] = wallet.Part{BucketID: strings.Clone(p.BucketID), Amount: p.Amount}
			}
			res.Parts = ps
		}
		rec.Charges[i] = res
	}
	return rec
}

// findLogID returns the idempotency record of event id of customer in log
// record v, or nil when v holds none (another id with the same
// fingerprint).
func findLogID(v []byte, customer, id string) (*record, error) {
	r, err := newLogReader(v)
	if err != nil {
		return nil, err
	}
	for {
		c, ok, err := r.next()
		if err != nil || !ok {
			return nil, err
		}
		if r.flags&logID != 0 && c == customer && r.cmd.EventID == id {
			return r.record(), nil
		}
	}
}

// ---- Checkpoints ----

// checkpoints is a shard's record of the wallets changed by logged commands
// since their last snapshot, oldest first.
type checkpoints struct {
	first map[*wallet.Wallet]uint64 // wallet -> seq of the first group that changed it since its snapshot
	queue []ckItem                  // in first-change order; an item whose seq is not first[w] is stale
	head  int
}

type ckItem struct {
	w   *wallet.Wallet
	seq uint64
	at  time.Time // when that group started
}

// changed notes that a logged command of group g changed w.
func (c *checkpoints) changed(g *group, w *wallet.Wallet) {
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

// truncateLog persists the replay floor (the lowest seq every shard's
// snapshots have not passed) and deletes the log records below both it and
// every shard's oldest id segment still inside the dedup window. Losing
// either write in a crash only leaves records that replay skips or reads
// for nothing.
//
// A shard with no group in flight and no wallet waiting for a snapshot
// needs no record below the next seq to be issued: read before its
// counters, that seq is below any group the shard opens after the read (a
// shard counts a group in flight before it takes its seq, and publishes
// its id floor before the group is no longer in flight).
func (e *Engine) truncateLog() error {
	e.truncMu.Lock()
	defer e.truncMu.Unlock()
	next := e.logSeq.Load() + 1
	replay, keep := next, next
	for _, s := range e.shards {
		f := s.floor.Load()
		if s.inflight.Load() == 0 && s.ckOldest.Load() == 0 {
			f = next
		}
		replay = min(replay, f)
		keep = min(keep, f, s.idFloor.Load())
	}
	if replay <= e.logFloor && keep <= e.logDropped {
		return nil
	}
	b := e.st.db.NewBatch()
	defer b.Close()
	if replay > e.logFloor {
		if err := b.Set(logFloorKey, binary.BigEndian.AppendUint64(nil, replay), nil); err != nil {
			return err
		}
	}
	if keep > e.logDropped {
		if err := b.DeleteRange(logKey(0), logKey(keep), nil); err != nil {
			return err
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return err
	}
	e.logFloor, e.logDropped = max(e.logFloor, replay), max(e.logDropped, keep)
	return nil
}

// pokeCheckpoints sends an empty op to each shard whose oldest wallet not
// yet snapshotted is past the interval, or whose oldest id segment has left
// the dedup window, so that an idle shard checkpoints and drops segments
// too and the log can be truncated.
func (e *Engine) pokeCheckpoints() {
	now, clock := time.Now().UnixNano(), e.clock.Now()
	for _, s := range e.shards {
		at, exp := s.ckOldest.Load(), s.idExpireAt.Load()
		if at != 0 && now-at >= int64(e.opts.CheckpointInterval) || exp != 0 && exp <= clock {
			_ = e.doShard(s, func(*shard, *group) {})
		}
	}
}

// ---- Id segments ----

// idSegments are a shard's spans of log records holding the ids it
// accepted, oldest first: each the records of the groups that started
// within segmentSpan of its first, and the latest ExpireAt of its ids. A
// segment leaves once that has passed, and with it the shard's hold on its
// records: the log is deleted up to the oldest segment any shard keeps.
type idSegments struct {
	segs []idSegment
	head int
}

type idSegment struct {
	first  uint64 // seq of its first record
	start  int64  // its first group's time
	expMax int64
}

// segmentSpan is how long a segment takes in new records: a 256th of the
// dedup window, between a second and an hour, so that a shard keeps a few
// hundred segments whatever the window.
func segmentSpan(window time.Duration) int64 {
	return int64(min(max(window/256, time.Second), time.Hour))
}

// add notes that record seq, of a group at now, holds an id expiring at exp.
// The segment keeps it to the second the index rounds exp up to: while the
// index says "maybe", the record it points at is there.
func (x *idSegments) add(seq uint64, now, exp, span int64) {
	exp = int64(expSeconds(exp)) * 1e9
	if n := len(x.segs); n > x.head {
		last := &x.segs[n-1]
		if now-last.start < span && now >= last.start {
			last.expMax = max(last.expMax, exp)
			return
		}
	}
	x.segs = append(x.segs, idSegment{first: seq, start: now, expMax: exp})
}

// expire drops the segments whose ids have all expired at now and returns
// the oldest kept: its first seq (math.MaxUint64: none) and ExpireAt (0:
// none). A segment behind one that is kept stays until that one goes.
func (x *idSegments) expire(now int64) (floor uint64, expireAt int64) {
	for x.head < len(x.segs) && RecordExpired(x.segs[x.head].expMax, now) {
		x.segs[x.head] = idSegment{}
		x.head++
	}
	if x.head > 64 && x.head > len(x.segs)/2 {
		x.segs = append(x.segs[:0], x.segs[x.head:]...)
		x.head = 0
	}
	if x.head == len(x.segs) {
		return math.MaxUint64, 0
	}
	return x.segs[x.head].first, x.segs[x.head].expMax
}

// replayLog reads every log record of db: it hands each accepted event's
// id to id, and applies the commands of the records at or after from that
// come after their wallet's snapshot to the loaded wallets (walletOf finds
// them; the shards have not started). It returns the wallets it changed;
// made gets the ledger entries each command made (nil: dropped). snapSeq
// holds the snapshot seq of every wallet whose snapshot is at or after
// from; a wallet absent from it is older.
func replayLog(db *pebble.DB, from uint64, walletOf func(string) *wallet.Wallet, snapSeq map[string]uint64, made func(*wallet.Wallet, []wallet.Entry), id func(seq uint64, customer string, r *logReader)) (changed map[*wallet.Wallet]struct{}, records, events int, err error) {
	it, err := db.NewIter(prefixRange(prefixLog))
	if err != nil {
		return nil, 0, 0, err
	}
	defer it.Close()
	changed = make(map[*wallet.Wallet]struct{})
	var res []wallet.ChargeResult
	var entries []wallet.Entry
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
			if id != nil && r.flags&logID != 0 {
				id(seq, customer, r)
			}
			if seq < from || r.flags&logApplied == 0 {
				continue
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

// recoverLog reads the log kept: it puts the ids still inside the dedup
// window into the shards' indexes and segments, and replays the records at
// or after from into the loaded wallets. It then writes every wallet it
// changed, with the ledger entries the replay made again, and the replay
// floor past the last record, in one synced batch.
func (e *Engine) recoverLog(from uint64, snapSeq map[string]uint64) error {
	start := time.Now()
	walletOf := func(c string) *wallet.Wallet { return e.shardOf(c).wallets[c] }
	scratch := &group{dirty: map[*wallet.Wallet]struct{}{}} // writeEntries' outbox copy and early flush mark are not used here
	made := func(w *wallet.Wallet, entries []wallet.Entry) {
		e.shardOf(w.Customer).writeEntries(scratch, w, entries)
		scratch.outbox = outboxGroup{}
		clear(scratch.dirty)
	}
	now := e.clock.Now()
	window := e.opts.DedupWindow
	span := segmentSpan(window)
	var key []byte
	ids := 0
	load := make(idLoad, len(e.shards))
	id := func(seq uint64, customer string, r *logReader) {
		exp := RecordExpireAt(r.now, r.cmd.OccurredAt, window)
		if RecordExpired(exp, now) {
			return
		}
		s := e.shardOf(customer)
		key = idemKey(key[:0], idemEvent, customer, r.cmd.EventID)
		load.add(s.id, &s.ids, key, exp, seq)
		s.segs.add(seq, r.now, exp, span)
		ids++
	}
	changed, records, events, err := replayLog(e.st.db, from, walletOf, snapSeq, made, id)
	if err != nil {
		return err
	}
	idx := make([]*idIndex, len(e.shards))
	for i, s := range e.shards {
		idx[i] = &s.ids
	}
	load.build(idx, now)
	for _, s := range e.shards {
		floor, exp := s.segs.expire(now)
		s.idFloor.Store(floor)
		s.idExpireAt.Store(exp)
	}
	if e.opts.replayed != nil {
		e.opts.replayed(events)
	}
	if len(changed) == 0 {
		if records > 0 {
			e.log.Info("command log read", "records", records, "ids", ids, "seconds", time.Since(start).Seconds())
		}
		return nil
	}
	b := e.st.db.NewBatch()
	defer b.Close()
	var val []byte
	last := e.logSeq.Load()
	for w := range changed {
		s := e.shardOf(w.Customer)
		g := &group{batch: b}
		s.flushLedger(g, w)
		key = walletKey(key[:0], w.Customer)
		val = wallet.AppendWalletAt(val[:0], w, last)
		if err := b.Set(key, val, nil); err != nil {
			return err
		}
		s.schedule(w)
	}
	if err := b.Set(logFloorKey, binary.BigEndian.AppendUint64(nil, last+1), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return err
	}
	e.logFloor = last + 1
	e.metrics.replayed.Add(float64(events))
	e.log.Info("command log replayed", "records", records, "events", events, "wallets", len(changed), "ids", ids, "seconds", time.Since(start).Seconds())
	return nil
}
