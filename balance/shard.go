package balance

import (
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/prometheus/client_golang/prometheus"
)

// op is one unit of work for a shard: a slice of usage events, or a
// function run on the shard's goroutine. wg is released once the commit
// group holding the op is durable.
type op struct {
	events []*EventIn
	fn     func(s *shard, g *group)
	wg     *sync.WaitGroup
}

// group is one commit group: the ops applied together and the Pebble batch
// that makes them durable with one fsync.
type group struct {
	seq       uint64    // the group's place in the command log (cmdlog.go)
	started   time.Time // when the shard began applying it
	start     time.Time // when the batch was handed to the WAL
	floor     uint64    // once durable, the shard needs no log record below this seq (0: unchanged)
	cmds      int       // usage commands in the shard's log buffer
	now       int64
	batch     *pebble.Batch
	ops       []*op
	events    int
	dirty     map[*wallet.Wallet]struct{}
	pricing   *meter.Pricing
	outbox    outboxGroup
	expireMax int64 // the latest ExpireAt of the records the group stored under their own keys
	idExpMax  int64 // the latest ExpireAt of the ids its log record holds; 0: none
}

// shard owns a disjoint set of customers. Only its goroutine touches them.
type shard struct {
	id         int
	e          *Engine
	in         chan *op
	slots      atomic.Int64 // ops sent or being sent to in and not yet taken by run: at most cap(in)
	commitQ    chan *group
	wallets    map[string]*wallet.Wallet
	cache      idemCache
	ids        idIndex // every idempotency key this shard holds in the store
	timers     timers
	ck         checkpoints
	ledger     map[*wallet.Wallet]*pendingLedger // entries not yet written (ledger.go)
	ledgerFree []*pendingLedger
	floor      atomic.Uint64 // log records below it are covered by this shard's durable snapshots
	ckOldest   atomic.Int64  // unix ns when the oldest change not yet snapshotted began; 0 = none
	inflight   atomic.Int64  // groups opened and not yet durable (truncateLog)
	segs       idSegments    // the log records holding the ids it accepted (cmdlog.go)
	idFloor    atomic.Uint64 // seq of the oldest record holding an id still in the window; MaxUint64: none
	idExpireAt atomic.Int64  // when the oldest segment's ids have all expired (unix ns); 0: none
	done       chan struct{}
	outboxOn   bool // sinks are configured: groups write outbox records

	lookupCache, lookupIndex, lookupLog, lookupStore, lookupMiss prometheus.Counter

	// Buffers reused across ops (only the shard goroutine uses them).
	key      []byte // wallet and ledger keys
	idem     []byte // the idempotency key of the event being applied
	expiring []byte // the idempotency keys recorded by the group being applied (appendExpiring)
	logBody  []byte // the commands of the group being applied (appendLogCmd)
	logRead  []byte // scratch: that group's log record, for a look-up in it
	seqs     []uint64
	val      []byte
	entries  []wallet.Entry
	results  []wallet.ChargeResult
	charges  []meter.Charge
	slabs    slabs
}

func newShard(id int, e *Engine) *shard {
	lookups := e.metrics.idemLookups
	s := &shard{
		lookupCache: lookups.WithLabelValues("cache"),
		lookupIndex: lookups.WithLabelValues("index"),
		lookupLog:   lookups.WithLabelValues("log"),
		lookupStore: lookups.WithLabelValues("store"),
		lookupMiss:  lookups.WithLabelValues("miss"),
		id:          id,
		e:           e,
		in:          make(chan *op, e.opts.QueueMax),
		commitQ:     make(chan *group, commitQueueMax),
		wallets:     make(map[string]*wallet.Wallet),
		cache:       newIdemCache(e.opts.IdemCacheMax),
		ids:         newIDIndex(e.idSeed),
		ck:          checkpoints{first: make(map[*wallet.Wallet]uint64)},
		ledger:      make(map[*wallet.Wallet]*pendingLedger),
		outboxOn:    len(e.opts.Sinks) > 0,
		done:        make(chan struct{}),
	}
	s.idFloor.Store(math.MaxUint64)
	return s
}

// run applies ops in commit groups until the input channel is closed,
// then snapshots every wallet a logged command changed since its last
// snapshot, so that the next start replays nothing.
func (s *shard) run() {
	defer close(s.commitQ)
	label := strconv.Itoa(s.id)
	depth := s.e.metrics.queueDepth.WithLabelValues(label)
	for {
		first, ok := <-s.in
		if !ok {
			for len(s.ck.first) > 0 && s.writable() {
				s.close(s.open(), true)
			}
			return
		}
		s.slots.Add(-1)
		depth.Set(float64(len(s.in)))
		g := s.open()
		s.apply(g, first)
		open := true
	drain:
		for g.events < s.e.opts.CommitEventsMax && len(g.ops) < opsPerGroupMax {
			select {
			case o, more := <-s.in:
				if !more {
					open = false
					break drain
				}
				s.slots.Add(-1)
				s.apply(g, o)
			default:
				break drain
			}
		}
		s.close(g, !open)
		if !open {
			return
		}
	}
}

// open starts a commit group.
func (s *shard) open() *group {
	s.expiring = s.expiring[:0]
	s.logBody = s.logBody[:0]
	s.inflight.Add(1) // before the seq is taken: truncateLog relies on the order
	return &group{
		seq:     s.e.logSeq.Add(1),
		started: time.Now(),
		now:     s.e.clock.Now(),
		batch:   s.e.st.db.NewBatch(),
		dirty:   make(map[*wallet.Wallet]struct{}),
		pricing: s.e.pricing.Load(),
	}
}

// close writes what group g made that is not in its batch yet (its log
// record, the snapshots of its checkpoint and of the wallets its other ops
// changed, its expiry list and outbox record) and hands it to the WAL; with
// last set, its checkpoint takes every wallet.
func (s *shard) close(g *group, last bool) {
	s.checkpoint(g, last, s.writable())
	if g.cmds > 0 {
		s.val = logHeader(s.val[:0], g.now, g.cmds)
		s.val = append(s.val, s.logBody...)
		s.set(g, logKey(g.seq), s.val)
	}
	if g.idExpMax != 0 {
		s.segs.add(g.seq, g.now, g.idExpMax, segmentSpan(s.e.opts.DedupWindow))
	}
	// Published before the group stops counting as in flight (truncateLog).
	floor, exp := s.segs.expire(g.now)
	s.idFloor.Store(floor)
	s.idExpireAt.Store(exp)
	for w := range g.dirty {
		delete(s.ck.first, w)
		s.flushLedger(g, w)
		s.key = walletKey(s.key[:0], w.Customer)
		s.val = wallet.AppendWalletAt(s.val[:0], w, g.seq)
		s.set(g, s.key, s.val)
	}
	if len(s.expiring) > 0 {
		// One expiry-index key for the group's records: the janitor drops
		// them all once the latest has expired.
		first, _, _ := nextExpiring(s.expiring)
		s.key = expiryKey(s.key[:0], g.expireMax, first)
		s.set(g, s.key, s.expiring)
	}
	if g.outbox.entries+g.outbox.usage+g.outbox.notes > 0 {
		g.outbox.seq = s.e.outboxSeq.Add(1)
		s.val = g.outbox.value(s.val[:0], g.now)
		s.set(g, outboxKey(g.outbox.seq), s.val)
	}
	// Hand the batch to the WAL now and wait for its fsync on the
	// committer goroutine, so the next group can be applied and queued
	// behind it: one WAL fsync then covers every group queued meanwhile,
	// of this shard and of the others. The WAL keeps this shard's groups
	// in the order they were applied.
	g.start = time.Now()
	if err := s.handToWAL(g.batch); err != nil {
		s.commitFailed(err)
	}
	s.commitQ <- g
}

// take takes a slot in the shard's queue for an op about to be sent,
// reporting false when the queue is full.
func (s *shard) take() bool {
	if s.slots.Add(1) > int64(cap(s.in)) {
		s.slots.Add(-1)
		return false
	}
	return true
}

// commitQueueMax bounds the groups of one shard handed to the WAL and not
// yet known durable; the shard stops taking ops when it is reached.
const commitQueueMax = 8

// opsPerGroupMax bounds the ops (requests) in one commit group.
const opsPerGroupMax = 4096

func (s *shard) apply(g *group, o *op) {
	g.ops = append(g.ops, o)
	if o.fn != nil {
		o.fn(s, g)
		return
	}
	for _, in := range o.events {
		s.applyEvent(g, in)
	}
	g.events += len(o.events)
}

// commit makes each group durable in order, then releases its waiters.
func (s *shard) commit() {
	defer close(s.done)
	for g := range s.commitQ {
		if err := g.batch.SyncWait(); err != nil {
			s.commitFailed(err)
		}
		if g.outbox.seq != 0 {
			s.e.wm.mark(g.outbox.seq)
		}
		if g.floor != 0 {
			s.floor.Store(g.floor)
		}
		s.inflight.Add(-1)
		s.e.metrics.commitSeconds.Observe(time.Since(g.start).Seconds())
		s.e.metrics.groupEvents.Observe(float64(g.events))
		s.e.metrics.groupOps.Observe(float64(len(g.ops)))
		g.batch.Close()
		for _, o := range g.ops {
			o.wg.Done()
		}
	}
}

// handToWAL hands a group's batch to the WAL. Pebble panics when the WAL
// failed before (it holds its commit lock then): that is a failed commit too.
func (s *shard) handToWAL(b *pebble.Batch) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if rerr, ok := r.(error); ok {
				err = fmt.Errorf("pebble panicked: %w", rerr)
			} else {
				err = fmt.Errorf("pebble panicked: %v", r)
			}
		}
	}()
	return s.e.st.db.ApplyNoSyncWait(b, pebble.Sync)
}

// commitFailed stops the process (cleanly, with how much free space a
// restart needs: disk.go): the in-memory state is ahead of the disk and
// cannot be trusted, so no answer may come from it, and Pebble cannot take
// another write. Recovery on the next start rebuilds the state from what is
// durable. It does not return.
func (s *shard) commitFailed(err error) {
	s.e.disk.fatal(fmt.Errorf("shard %d: pebble commit: %w", s.id, err))
}

// writable reports whether an op that may write (an expiry found by a read)
// writes now: not while the disk is full (disk.go).
func (s *shard) writable() bool { return s.e.disk.writable() }

func (s *shard) set(g *group, key, val []byte) {
	if err := g.batch.Set(key, val, nil); err != nil {
		panic(fmt.Sprintf("meterd: batch set: %v", err))
	}
}

func (s *shard) del(g *group, key []byte) {
	if err := g.batch.Delete(key, nil); err != nil {
		panic(fmt.Sprintf("meterd: batch delete: %v", err))
	}
}

// lookup finds the idempotency record at key: in the cache (which holds
// the records of other ops than events of groups not yet durable, and
// records read before), else where the shard's index says it is: in a log
// record (g's own, not yet written, or one handed to the WAL, which Pebble
// shows once handed), or under its own key in the store. Records past their
// window count as absent (RecordExpired, window.go).
func (s *shard) lookup(g *group, key []byte) (*record, error) {
	if r := s.cache.get(key); r != nil {
		s.lookupCache.Inc()
		if RecordExpired(r.ExpireAt, g.now) {
			return nil, nil
		}
		return r, nil
	}
	s.seqs = s.ids.find(key, g.now, s.seqs[:0])
	store := !s.ids.ready
	for _, seq := range s.seqs {
		if seq == 0 {
			store = true
			continue
		}
		r, err := s.fromLog(g, seq, key)
		if err != nil {
			return nil, err
		}
		if r != nil {
			s.lookupLog.Inc()
			s.cache.put(string(key), r)
			if RecordExpired(r.ExpireAt, g.now) {
				return nil, nil
			}
			return r, nil
		}
	}
	if !store {
		s.lookupIndex.Inc()
		return nil, nil
	}
	v, err := s.e.st.get(key)
	if err != nil {
		return nil, err
	}
	if v == nil {
		s.lookupMiss.Inc()
		return nil, nil
	}
	s.lookupStore.Inc()
	r, err := decodeRecord(v)
	if err != nil {
		return nil, fmt.Errorf("idempotency record %q: %w", key, err)
	}
	r.Data = nil
	s.cache.put(string(key), r)
	if RecordExpired(r.ExpireAt, g.now) {
		return nil, nil
	}
	return r, nil
}

// fromLog reads the idempotency record at key (a usage event's) from log
// record seq; nil when that record holds another id with the same
// fingerprint. A record the index points at is kept as long as the id is
// inside its window, so a missing one is an error, never "absent": the
// event would be charged twice.
func (s *shard) fromLog(g *group, seq uint64, key []byte) (*record, error) {
	var v []byte
	if seq == g.seq {
		// The group being applied: its commands are in memory only.
		v = logHeader(s.logRead[:0], g.now, g.cmds)
		v = append(v, s.logBody...)
		s.logRead = v
	} else {
		var err error
		if v, err = s.e.st.get(logKey(seq)); err != nil {
			return nil, err
		}
	}
	if v == nil {
		return nil, fmt.Errorf("idempotency record %q: log record %d is gone", key, seq)
	}
	customer, _ := idemKeyCustomer(key)
	id := key[3+len(customer):]
	r, err := findLogID(v, customer, string(id))
	if err != nil {
		return nil, fmt.Errorf("idempotency record %q: log record %d: %w", key, seq, err)
	}
	if r != nil {
		r.ExpireAt = RecordExpireAt(r.RecordedAt, r.OccurredAt, s.e.opts.DedupWindow)
	}
	return r, nil
}

// lookupWrite is lookup for the writes of customerOp: a store error becomes
// a refusal the caller can retry.
func (s *shard) lookupWrite(g *group, key []byte) (*record, *wallet.Error) {
	rec, err := s.lookup(g, key)
	if err != nil {
		s.e.log.Error("idempotency look-up failed", "err", err)
		return nil, &wallet.Error{Code: wallet.CodeUnavailable, Message: "the idempotency record could not be read; retry with the same id"}
	}
	return rec, nil
}

// written records the ledger entries a wallet method returned (expiries
// included, even when the method then refused) and marks the wallet dirty.
func (s *shard) written(g *group, w *wallet.Wallet, entries []wallet.Entry) {
	s.entries = entries
	s.writeEntries(g, w, entries)
	g.dirty[w] = struct{}{}
	s.effects(g, w)
}

// remember keeps a new idempotency record: in the cache and the index, and
// durably in the group. It is kept until RecordExpireAt (window.go): past
// the last instant its event can be accepted. A usage event's record goes
// to the store in its log command (appendLogCmd, the caller's), so the
// index points at the group's log record; any other goes under its own key,
// listed in the group's expiry-index key. An event's data goes to the
// outbox's usage record only (sinks ship it): a duplicate's answer needs
// the hash and the charges, not the data.
func (s *shard) remember(g *group, key []byte, r *record) {
	r.RecordedAt = g.now
	r.ExpireAt = RecordExpireAt(g.now, r.OccurredAt, s.e.opts.DedupWindow)
	if r.Kind == idemEvent {
		if s.outboxOn {
			s.val = r.append(s.val[:0])
			customer, _ := idemKeyCustomer(key)
			g.outbox.addUsage(customer, string(key[3+len(customer):]), s.val)
		}
		r.Data = nil
		// Not cached: a resend finds it through the index, in this
		// group's commands or in its log record.
		s.ids.add(key, r.ExpireAt, g.seq, g.now)
		g.idExpMax = max(g.idExpMax, r.ExpireAt)
		return
	}
	s.val = r.append(s.val[:0])
	s.set(g, key, s.val)
	s.ids.add(key, r.ExpireAt, 0, g.now)
	s.expiring = appendExpiring(s.expiring, key)
	g.expireMax = max(g.expireMax, r.ExpireAt)
	s.cache.put(string(key), r)
}

// futureSkew is FutureSkewMax under its older, package-local name.
const futureSkew = FutureSkewMax

func (s *shard) applyEvent(g *group, in *EventIn) {
	ev := in.Event
	res := &in.Result
	w := s.wallets[ev.CustomerID]
	if w == nil {
		res.reject(wallet.CodeUnknownCustomer, "customer "+ev.CustomerID+" does not exist", "customer_id")
		return
	}
	s.idem = idemKey(s.idem[:0], idemEvent, ev.CustomerID, ev.ID)
	rec, err := s.lookup(g, s.idem)
	if err != nil {
		s.e.log.Error("idempotency look-up failed", "err", err)
		res.reject(wallet.CodeUnavailable, "the idempotency record could not be read; retry with the same id", "")
		return
	}
	if rec != nil {
		if rec.Hash != in.Hash {
			res.reject(wallet.CodeIdempotencyConflict, "event id "+ev.ID+" was already used with different content", "id")
			return
		}
		res.Status = EventDuplicate
		res.Charges = rec.Charges
		res.PricingVersion = rec.PricingVersion
		return
	}
	// The window again, on the shard's clock and after the look-up (a
	// resend whose record is still kept answers duplicate): the caller's
	// clock may be behind this one, and a record may be gone once its
	// event is older than the window. OccurredAt 0 is an event without an
	// occurred_at: it occurs now.
	if ev.OccurredAt != 0 && OccurredTooOld(ev.OccurredAt, g.now, s.e.opts.DedupWindow) {
		res.reject(wallet.CodeOutOfWindow, "occurred_at is older than the dedup window when the event is applied", "occurred_at")
		return
	}
	if ev.HoldID != "" {
		if _, active := w.ActiveHold(ev.HoldID); !active {
			// An ended hold leaves the event to be charged as usual; a hold
			// that never existed for this customer is a mistake.
			h, ok, err := s.e.holdRecord(ev.HoldID)
			if err != nil {
				res.reject(wallet.CodeUnavailable, "the hold could not be read; retry with the same id", "")
				return
			}
			if !ok || h.Customer != ev.CustomerID {
				res.reject("invalid_event", "hold "+ev.HoldID+" does not exist for customer "+ev.CustomerID, "hold_id")
				return
			}
		}
	}
	var merr error
	var matched bool
	s.charges, matched, merr = g.pricing.Rate(ev, s.charges[:0])
	if merr != nil {
		code, msg, field := "invalid_event", merr.Error(), ""
		if me, ok := merr.(*meter.Error); ok {
			msg, field = me.Message, me.Field
		}
		res.reject(code, msg, field)
		return
	}
	if !matched && ev.HoldID == "" {
		if s.e.opts.RejectUnpriced {
			res.reject("unpriced_event", "event type "+ev.EventType+" has no price in pricing version "+strconv.FormatUint(uint64(g.pricing.Version), 10)+
				" (meterd runs with --unpriced-events reject)", "event_type")
			return
		}
		s.e.metrics.unpriced(ev.EventType)
	}
	r := s.slabs.record()
	*r = record{
		Kind:           idemEvent,
		Hash:           in.Hash,
		PricingVersion: g.pricing.Version,
		OccurredAt:     ev.OccurredAt,
		EventType:      ev.EventType,
		Subject:        ev.Subject,
		Data:           ev.DataJSON,
		Description:    ev.Description,
	}
	cmd := wallet.UsageCmd{EventID: ev.ID, OccurredAt: ev.OccurredAt, PricingVersion: g.pricing.Version, HoldID: ev.HoldID,
		Description: ev.Description}
	applied := matched || ev.HoldID != ""
	if !applied {
		r.Status = EventRecorded
	} else {
		cmd.Charges = s.charges
		var berr *wallet.Error
		s.results, s.entries, berr = w.Charge(&cmd, g.now, s.results[:0], s.entries[:0])
		s.ck.changed(g, w)
		if len(s.entries) > 0 {
			s.writeEntries(g, w, s.entries)
		}
		if berr != nil && in.Notify {
			w.NoteRejected(g.now, ev.ID, ev.EventType, cmd.Charges, berr)
			g.dirty[w] = struct{}{} // replay does not make the note again: the group snapshots the wallet
		}
		s.effects(g, w)
		if berr != nil {
			// Logged even when refused: the refusal may have changed the
			// wallet (expiries, alerts, a reload request), and replay must
			// do the same.
			s.logCmd(g, ev.CustomerID, &cmd, true, nil)
			res.reject(berr.Code, berr.Message, "")
			return
		}
		r.Status = EventCharged
		if !matched {
			r.Status = EventRecorded // it only settled its hold
		}
		r.Charges = s.copyCharges(s.results)
	}
	s.remember(g, s.idem, r)
	s.logCmd(g, ev.CustomerID, &cmd, applied, r)
	res.Status = r.Status
	res.Charges = r.Charges
	res.PricingVersion = r.PricingVersion
}

// logCmd adds a usage command to the group's log record.
func (s *shard) logCmd(g *group, customer string, cmd *wallet.UsageCmd, applied bool, r *record) {
	s.logBody = appendLogCmd(s.logBody, customer, cmd, applied, r)
	g.cmds++
}

// copyCharges copies src (results and parts) out of the shard's slabs:
// they outlive the group in the idempotency cache and the caller's answer.
func (s *shard) copyCharges(src []wallet.ChargeResult) []wallet.ChargeResult {
	if len(src) == 0 {
		return nil
	}
	n := 0
	for i := range src {
		n += len(src[i].Parts)
	}
	parts := s.slabs.parts(n)[:0]
	out := s.slabs.results(len(src))
	for i := range src {
		out[i] = src[i]
		start := len(parts)
		parts = append(parts, src[i].Parts...)
		out[i].Parts = parts[start:len(parts):len(parts)]
	}
	return out
}

// slabs hands out the small slices and records each applied event keeps,
// carved from larger arrays: one allocation per slabLen of them instead of
// one each. An array lives while any piece of it is referenced.
type slabs struct {
	r []wallet.ChargeResult
	p []wallet.Part
	c []record
}

const slabLen = 512

func (b *slabs) results(n int) []wallet.ChargeResult { return carve(&b.r, n) }

func (b *slabs) parts(n int) []wallet.Part { return carve(&b.p, n) }

// carve cuts n elements off the front of *slab, first making a new slab
// when it has fewer.
func carve[T any](slab *[]T, n int) []T {
	if len(*slab) < n {
		*slab = make([]T, max(slabLen, n))
	}
	out := (*slab)[:n:n]
	*slab = (*slab)[n:]
	return out
}

func (b *slabs) record() *record {
	if len(b.c) == 0 {
		b.c = make([]record, slabLen)
	}
	r := &b.c[0]
	b.c = b.c[1:]
	return r
}

// idemCache holds recent idempotency records in two generations: when the
// current one is full it becomes the old one and the previous old one is
// dropped. A record stays at least max/2 insertions, far more than the
// records of the groups not yet durable (Options.validate checks this).
type idemCache struct {
	cur, old map[string]*record
	half     int
}

func newIdemCache(max int) idemCache {
	return idemCache{cur: make(map[string]*record), old: map[string]*record{}, half: max / 2}
}

func (c *idemCache) get(key []byte) *record {
	if r, ok := c.cur[string(key)]; ok {
		return r
	}
	return c.old[string(key)]
}

func (c *idemCache) put(key string, r *record) {
	if len(c.cur) >= c.half {
		c.old = c.cur
		c.cur = make(map[string]*record, c.half)
	}
	c.cur[key] = r
}

func (c *idemCache) del(key []byte) {
	delete(c.cur, string(key))
	delete(c.old, string(key))
}
