package balance

import (
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/prometheus/client_golang/prometheus"
)

// Clock gives the engine's time in unix nanoseconds.
type Clock interface{ Now() int64 }

// monotonic is a clock that never goes back: when the clock it reads is
// stepped back (NTP, an operator, a VM restored), it keeps answering the
// latest time it gave until the clock catches up. Group times, and so
// every wallet's time and every ledger entry's, never move backwards, and
// nothing that came due (an expiry, a refill) comes due twice.
type monotonic struct {
	c    Clock
	last atomic.Int64
}

func (m *monotonic) Now() int64 {
	n := m.c.Now()
	for {
		l := m.last.Load()
		if n <= l {
			return l
		}
		if m.last.CompareAndSwap(l, n) {
			return n
		}
	}
}

// WallClock is the real time.
type WallClock struct{}

// Now returns the current time in unix nanoseconds.
func (WallClock) Now() int64 { return time.Now().UnixNano() }

// Options configure an Engine. Zero values take the documented defaults.
type Options struct {
	Dir             string        // Pebble directory (required)
	Shards          int           // default: number of CPUs
	QueueMax        int           // ops waiting per shard before ErrOverloaded; default 4096
	CommitEventsMax int           // usage events per commit group; default 8192
	IdemCacheMax    int           // idempotency records cached per shard; default 262144
	CacheBytes      int64         // Pebble block cache; default 256 MiB
	FilesOpenMax    int           // Pebble's MaxOpenFiles, a soft bound on its open files; default 1000
	ReserveBytes    int64         // disk space kept in reserve in Dir for a full disk, and the free space below which writes are refused (disk.go); default 64 MiB
	DedupWindow     time.Duration // how long idempotency records are kept; default 35 days
	ReversalWindow  time.Duration // how long a top-up can be reversed; default 24h
	// RejectUnpriced refuses a usage event whose event type has no price
	// (unpriced_event) instead of recording it with no charge.
	RejectUnpriced  bool
	JanitorInterval time.Duration // how often expired idempotency records are dropped; default 1 minute
	TimerInterval   time.Duration // how often due expiries and plan grants are looked for; default 100ms
	// CheckpointInterval is how long a wallet changed only by usage events
	// may go without a new snapshot (cmdlog.go): the log records after it
	// are replayed at start. Default 1s.
	CheckpointInterval time.Duration
	DefaultPricing     []byte       // pricing document stored as version 1 when the store has none
	Sinks              []string     // names of the sinks that read the outbox; none = no outbox is written
	Clock              Clock        // default WallClock
	Log                *slog.Logger // default slog.Default()
	Registerer         prometheus.Registerer

	// Test hooks: the file system under Pebble's, the free space of Dir's
	// disk, os.Exit, and the point of recovery after the command log was
	// replayed in memory, before anything of it is written.
	fs        vfs.FS
	diskAvail func() (uint64, error)
	exit      func(int)
	replayed  func(events int)
}

func (o *Options) setDefaults() error {
	if o.Dir == "" {
		return errors.New("balance: Options.Dir is required")
	}
	if o.Shards <= 0 {
		o.Shards = runtime.NumCPU()
	}
	if o.QueueMax <= 0 {
		o.QueueMax = 4096
	}
	if o.CommitEventsMax <= 0 {
		o.CommitEventsMax = 8192
	}
	if o.IdemCacheMax <= 0 {
		o.IdemCacheMax = 262144
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 256 << 20
	}
	if o.FilesOpenMax <= 0 {
		o.FilesOpenMax = 1000
	}
	if o.ReserveBytes <= 0 {
		o.ReserveBytes = reserveBytesDefault
	}
	if o.DedupWindow <= 0 {
		o.DedupWindow = 35 * 24 * time.Hour
	}
	if o.ReversalWindow <= 0 {
		o.ReversalWindow = 24 * time.Hour
	}
	if o.JanitorInterval <= 0 {
		o.JanitorInterval = time.Minute
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = time.Second
	}
	if o.TimerInterval <= 0 {
		o.TimerInterval = 100 * time.Millisecond
	}
	if o.Clock == nil {
		o.Clock = WallClock{}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	// Records of the two groups a shard may have in flight (one committing,
	// one being applied) must stay cached: the store cannot see them yet.
	// Records of the groups a shard may have in flight (commitQueueMax
	// queued, one being applied) must stay cached: the store cannot see them
	// yet. A record stays cached for at least IdemCacheMax/2 insertions.
	if inflight := (commitQueueMax + 2) * (o.CommitEventsMax + opsPerGroupMax); o.IdemCacheMax/2 < inflight {
		return fmt.Errorf("balance: IdemCacheMax %d is too small for CommitEventsMax %d: needs at least %d",
			o.IdemCacheMax, o.CommitEventsMax, 2*inflight)
	}
	return nil
}

// Engine is the balance engine: the shards, their store, and the pricing in force.
type Engine struct {
	opts      Options
	log       *slog.Logger
	clock     Clock
	st        *store
	shards    []*shard
	pricing   atomic.Pointer[meter.Pricing]
	pricingMu sync.Mutex
	metrics   *metrics
	disk      *diskGuard
	closed    atomic.Bool
	sendMu    sync.RWMutex // held to read closed and send to a shard; Close takes it to close the inputs
	stop      chan struct{}
	janitor   sync.WaitGroup

	idSeed        maphash.Seed  // the shards' idempotency-index fingerprints
	instance      string        // this data directory's id (see InstanceID)
	outboxSeq     atomic.Uint64 // last outbox seq issued
	wm            *watermark
	outboxDropped uint64        // the janitor's: outbox records up to this seq are deleted
	logSeq        atomic.Uint64 // last command-log seq issued (cmdlog.go)
	truncMu       sync.Mutex    // held by truncateLog, which owns the next two
	logDropped    uint64        // log records below this seq are deleted
	logFloor      uint64        // the replay floor persisted last

	clockMu    sync.Mutex      // one SetClock at a time
	holdMu     sync.Mutex      // guards holdClaims
	holdClaims map[string]bool // hold ids being placed: ids are global, customers are on different shards
}

// ErrOverloaded is returned when a shard's queue is full: retry with the same ids.
var ErrOverloaded = &wallet.Error{Code: wallet.CodeOverloaded, Message: "meterd is overloaded; retry with the same ids"}

// Open opens the store in opts.Dir, recovers every wallet and starts the shards.
func Open(opts Options) (*Engine, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	disk := newDiskGuard(&opts)
	if err := disk.prepare(); err != nil {
		return nil, err
	}
	st, err := openStore(opts.Dir, opts.CacheBytes, opts.FilesOpenMax, opts.Log, disk)
	if err != nil {
		return nil, err
	}
	disk.begin()
	clock := opts.Clock
	if _, manual := clock.(*ManualClock); !manual {
		clock = &monotonic{c: clock} // the test clock only moves forward already
	}
	e := &Engine{opts: opts, log: opts.Log, clock: clock, st: st, metrics: newMetrics(opts.Registerer), disk: disk,
		stop: make(chan struct{}), holdClaims: make(map[string]bool)}
	p, err := st.loadPricing()
	if err != nil {
		st.close()
		return nil, err
	}
	e.pricing.Store(p)
	seq, err := st.loadOutboxSeq()
	if err != nil {
		st.close()
		return nil, fmt.Errorf("recover outbox: %w", err)
	}
	e.outboxSeq.Store(seq)
	e.wm = newWatermark(seq)
	if e.instance, err = st.instanceID(); err != nil {
		st.close()
		return nil, fmt.Errorf("instance id: %w", err)
	}
	if p.Version == 0 && len(opts.DefaultPricing) > 0 {
		if !disk.writable() {
			st.close()
			avail, _ := disk.avail()
			return nil, &DiskFullError{Dir: opts.Dir, NeedBytes: disk.resumeNeeds(), AvailBytes: avail}
		}
		if _, err := e.SetPricing(opts.DefaultPricing); err != nil {
			st.close()
			return nil, fmt.Errorf("default pricing: %w", err)
		}
	}
	e.idSeed = maphash.MakeSeed()
	e.shards = make([]*shard, opts.Shards)
	for i := range e.shards {
		e.shards[i] = newShard(i, e)
	}
	n := 0
	for _, s := range e.shards {
		s.timers.loading = true
	}
	// Wallets are gathered per shard first and put in maps made at their
	// final size: growing a map of a million wallets rehashes it again
	// and again.
	loaded := make([][]*wallet.Wallet, len(e.shards))
	// Snapshot seqs matter to the replay only for wallets snapshotted at or
	// after the first log record (cmdlog.go): after a clean stop, none.
	logFirst, logLast, err := st.logBounds()
	if err != nil {
		st.close()
		return nil, fmt.Errorf("command log: %w", err)
	}
	floor, err := st.logFloor()
	if err != nil {
		st.close()
		return nil, fmt.Errorf("command log: %w", err)
	}
	// Replay starts at the floor persisted last (records below it are kept
	// for their ids only), or at the first record (a log written before the
	// floor was persisted).
	replayFrom := max(logFirst, floor)
	e.logFloor, e.logDropped = floor, logFirst
	snapSeq := make(map[string]uint64)
	maxSeq := logLast
	if err := st.loadWallets(func(w *wallet.Wallet, seq uint64) {
		s := e.shardOf(w.Customer)
		loaded[s.id] = append(loaded[s.id], w)
		// Scheduled while the wallet just decoded is in the CPU's cache,
		// rather than in a second pass over every wallet in map order. The
		// shards have not started: this goroutine may touch their timers.
		s.schedule(w)
		if replayFrom <= logLast && seq >= replayFrom {
			snapSeq[w.Customer] = seq
		}
		maxSeq = max(maxSeq, seq)
		n++
	}); err != nil {
		st.close()
		return nil, fmt.Errorf("recover wallets: %w", err)
	}
	for i, s := range e.shards {
		s.wallets = make(map[string]*wallet.Wallet, len(loaded[i]))
		for _, w := range loaded[i] {
			s.wallets[w.Customer] = w
		}
		loaded[i] = nil
	}
	e.logSeq.Store(maxSeq)
	if err := e.recoverLog(replayFrom, snapSeq); err != nil {
		st.close()
		return nil, fmt.Errorf("replay the command log: %w", err)
	}
	for _, s := range e.shards {
		s.heapify()
		s.floor.Store(maxSeq + 1)
	}
	e.metrics.wallets.Set(float64(n))
	// The idempotency keys stored so far, as of now: the shards add every
	// later one to their indexes themselves.
	ids, err := st.db.NewIter(prefixRange(prefixIdem))
	if err != nil {
		st.close()
		return nil, fmt.Errorf("idempotency index: %w", err)
	}
	for _, s := range e.shards {
		go s.run()
		go s.commit()
	}
	e.janitor.Add(3)
	go e.runJanitor()
	go e.runTimers()
	go e.buildIndexes(ids)
	disk.run()
	return e, nil
}

// Close stops the shards after they finish what they accepted, and closes the store.
func (e *Engine) Close() error {
	if e.closed.Swap(true) {
		return nil
	}
	close(e.stop)
	e.janitor.Wait()
	// No send is under way once the lock is held, and none starts after:
	// senders read closed under the read lock.
	e.sendMu.Lock()
	for _, s := range e.shards {
		close(s.in)
	}
	e.sendMu.Unlock()
	for _, s := range e.shards {
		<-s.done
	}
	if e.disk.writable() {
		// Every wallet was snapshotted by its shard's last group.
		if err := e.truncateLog(); err != nil {
			e.log.Error("truncating the command log", "err", err)
		}
	}
	e.disk.halt()
	return e.st.close()
}

// Storage reports the state of the store, for /readyz: StorageOpen, or
// StorageDiskFull while writes are refused (ErrStorageFull) for lack of disk
// space; reads are served in both. Writes resume by themselves when space is
// freed (disk.go).
func (e *Engine) Storage() (state string, writable bool) {
	if e.disk.writable() {
		return StorageOpen, true
	}
	return StorageDiskFull, false
}

// InstanceID is a random id made once per data directory. Sinks store it
// with every row, so that outbox sequence numbers of two meterd instances
// writing to one destination are never confused.
func (e *Engine) InstanceID() string { return e.instance }

// Now is the engine's clock.
func (e *Engine) Now() int64 { return e.clock.Now() }

// Shards returns the number of shards.
func (e *Engine) Shards() int { return len(e.shards) }

func (e *Engine) shardOf(customer string) *shard {
	// FNV-1a: stable across processes and versions, no allocation.
	h := uint32(2166136261)
	for i := 0; i < len(customer); i++ {
		h ^= uint32(customer[i])
		h *= 16777619
	}
	return e.shards[h%uint32(len(e.shards))]
}

// do runs fn on the customer's shard and returns once its group is durable.
func (e *Engine) do(customer string, fn func(s *shard, g *group)) error {
	return e.doShard(e.shardOf(customer), fn)
}

// customerOp runs fn with the customer's wallet on its shard and returns
// once the group is durable; a customer that does not exist is
// unknown_customer. fn's refusal is returned as the error. It is a write:
// refused with ErrStorageFull while the disk is full.
func (e *Engine) customerOp(customer string, fn func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error) error {
	return e.onCustomer(customer, e.doShard, fn)
}

// customerRead is customerOp for a read: it runs while the disk is full, and
// fn writes only when sh.writable() says so.
func (e *Engine) customerRead(customer string, fn func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error) error {
	return e.onCustomer(customer, e.readShard, fn)
}

func (e *Engine) onCustomer(customer string, run func(*shard, func(*shard, *group)) error, fn func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error) error {
	var ferr *wallet.Error
	err := run(e.shardOf(customer), func(sh *shard, g *group) {
		w := sh.wallets[customer]
		if w == nil {
			ferr = &wallet.Error{Code: wallet.CodeUnknownCustomer, Message: "customer " + customer + " does not exist"}
			return
		}
		ferr = fn(sh, g, w)
	})
	if err != nil {
		return err
	}
	if ferr != nil {
		return ferr
	}
	return nil
}

// Pricing returns the pricing in force.
func (e *Engine) Pricing() *meter.Pricing { return e.pricing.Load() }

// SetPricing validates a pricing document and makes it the next version, durably.
func (e *Engine) SetPricing(doc []byte) (*meter.Pricing, error) {
	if !e.disk.writable() {
		return nil, ErrStorageFull
	}
	e.pricingMu.Lock()
	defer e.pricingMu.Unlock()
	d, err := meter.ParseDocument(doc)
	if err != nil {
		return nil, err
	}
	cur := e.pricing.Load()
	p, err := meter.Compile(d, cur.Version+1, cur)
	if err != nil {
		return nil, err
	}
	if err := e.st.db.Set(pricingKey(p.Version), p.JSON(), pebble.Sync); err != nil {
		return nil, fmt.Errorf("store pricing: %w", err)
	}
	e.pricing.Store(p)
	return p, nil
}

// PricingVersion returns a stored pricing version's document.
func (e *Engine) PricingVersion(v uint32) ([]byte, error) {
	return e.st.get(pricingKey(v))
}

// EventIn is one decoded usage event handed to the engine, with the slot
// its result is written into.
type EventIn struct {
	Event  *meter.Event
	Hash   [16]byte // content hash: same id with another hash is an idempotency conflict
	Result EventResult
	// Notify makes a refusal of the valid event for the customer's funds
	// or state (insufficient_funds, account_paused) a usage.rejected
	// notification of the customer: for callers whose own answer may not
	// reach whoever acts on it (the ingest doors of other systems).
	Notify bool
}

// Statuses of an event's result beside EventCharged and EventRecorded.
const (
	EventDuplicate uint8 = 3
	EventRejected  uint8 = 4
)

// EventResult is what happened to one event.
type EventResult struct {
	Status         uint8
	Code           string // for EventRejected
	Message        string
	Field          string
	Charges        []wallet.ChargeResult
	PricingVersion uint32
}

func (r *EventResult) reject(code, msg, field string) {
	r.Status, r.Code, r.Message, r.Field = EventRejected, code, msg, field
}

// Events applies usage events and returns once every applied one is durable.
// Results are written into each EventIn. The whole call fails with
// ErrOverloaded (and applies nothing) when a shard's queue is full or the
// engine is closed; it never blocks on a full queue.
func (e *Engine) Events(evs []*EventIn) error {
	if len(evs) == 0 {
		return nil
	}
	if !e.disk.writable() && !e.closed.Load() {
		return ErrStorageFull
	}
	per := make([][]*EventIn, len(e.shards))
	for _, in := range evs {
		s := e.shardOf(in.Event.CustomerID)
		per[s.id] = append(per[s.id], in)
	}
	var wg sync.WaitGroup
	ops := make([]op, len(e.shards))
	if !e.send(func(send func(*shard, *op) bool) bool {
		for i, part := range per {
			if len(part) == 0 {
				continue
			}
			ops[i] = op{events: part, wg: &wg}
			if !send(e.shards[i], &ops[i]) {
				return false
			}
		}
		return true
	}) {
		return ErrOverloaded
	}
	wg.Wait()
	return nil
}

// send hands ops to shards, all or none: fill calls send for each op, and
// send takes a slot in the shard's queue for it (false when the queue is
// full). The ops are sent only when fill returns true with every slot
// taken; otherwise the slots are given back and send reports false. A
// closed engine refuses everything. Sending never blocks: a taken slot is
// room in the channel.
func (e *Engine) send(fill func(send func(*shard, *op) bool) bool) bool {
	e.sendMu.RLock()
	defer e.sendMu.RUnlock()
	if e.closed.Load() {
		return false
	}
	type pending struct {
		s *shard
		o *op
	}
	var buf [8]pending
	taken := buf[:0]
	ok := fill(func(s *shard, o *op) bool {
		if !s.take() {
			return false
		}
		taken = append(taken, pending{s, o})
		return true
	})
	if !ok {
		for _, p := range taken {
			p.s.slots.Add(-1)
		}
		return false
	}
	for _, p := range taken {
		p.o.wg.Add(1)
		p.s.in <- p.o
	}
	return true
}

// PutCustomer creates a customer or replaces its settings. It reports whether it created it.
func (e *Engine) PutCustomer(customer string, s wallet.Settings) (created bool, err error) {
	return e.PutCustomerChange(customer, s, wallet.PlanChangeNow)
}

// PutCustomerChange is PutCustomer with the way a new plan takes over
// (wallet.Reconfigure): now, now prorated, or at the end of the plan
// period. A new customer's plan starts now (prorated if asked); it has no
// period to end, so PlanChangeAtPeriodEnd is no_plan_period.
func (e *Engine) PutCustomerChange(customer string, s wallet.Settings, mode wallet.PlanChangeMode) (created bool, err error) {
	var werr *wallet.Error
	err = e.do(customer, func(sh *shard, g *group) {
		w := sh.wallets[customer]
		if w == nil {
			if mode == wallet.PlanChangeAtPeriodEnd {
				werr = wallet.FieldErrorf("plan_change.at", wallet.CodeNoPlanPeriod, "customer %s has no plan period yet: a new customer's plan starts now", customer)
				return
			}
			w = wallet.NewWallet(customer, s, g.now)
			if mode == wallet.PlanChangeNowProrated {
				w.ProrateFirstGrants()
			}
			sh.wallets[customer] = w
			e.metrics.wallets.Inc()
			created = true
		} else {
			// What came due before the change happens under the old
			// settings; a refused change still writes that.
			out, rerr := w.Reconfigure(s, mode, g.now, sh.entries[:0])
			sh.written(g, w, out)
			if rerr != nil {
				werr = rerr
				return
			}
		}
		g.dirty[w] = struct{}{}
		// A new plan's current period is granted now.
		sh.written(g, w, w.Advance(g.now, sh.entries[:0]))
	})
	if err == nil && werr != nil {
		err = werr
	}
	return created, err
}

// UpdateCustomer changes an existing customer's settings atomically:
// change gets the wallet as of now (do not keep or modify it) and returns
// the new settings and how a new plan takes over (PutCustomerChange). Its
// error is returned as is, and nothing changes but what came due.
func (e *Engine) UpdateCustomer(customer string, change func(w *wallet.Wallet, now int64) (wallet.Settings, wallet.PlanChangeMode, error)) error {
	var cerr error
	err := e.customerOp(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		sh.written(g, w, w.Advance(g.now, sh.entries[:0]))
		s, mode, err := change(w, g.now)
		if err != nil {
			cerr = err
			return nil
		}
		out, rerr := w.Reconfigure(s, mode, g.now, sh.entries[:0])
		sh.written(g, w, out)
		if rerr != nil {
			return rerr
		}
		// A new plan's current period is granted now.
		sh.written(g, w, w.Advance(g.now, sh.entries[:0]))
		return nil
	})
	if err == nil {
		err = cerr
	}
	return err
}

// Wallet returns a copy of the customer's wallet as of now (expiring what is
// due, durably). While the disk is full, what came due is applied to the copy
// only: the answer is as exact, and nothing is written.
func (e *Engine) Wallet(customer string) (*wallet.Wallet, error) {
	var out *wallet.Wallet
	err := e.customerRead(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		if sh.writable() {
			sh.expire(g, w)
			out = w.Clone()
			return nil
		}
		out = w.Clone()
		out.Advance(g.now, nil)
		return nil
	})
	return out, err
}

// advanceCustomer applies what came due to a customer's wallet, durably, so
// that a read of its stored records (ledger, notifications) is exact as of
// now without waiting for the timers. While the disk is full it writes
// nothing: the read shows what is stored.
// With ledger set, the customer's pending ledger entries are written too
// (ledger.go), so that a read of the store sees every one acknowledged.
func (e *Engine) advanceCustomer(customer string, ledger bool) error {
	return e.customerRead(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		if sh.writable() {
			sh.expire(g, w)
			if ledger && sh.ledger[w] != nil {
				g.dirty[w] = struct{}{}
			}
		}
		return nil
	})
}

func (s *shard) expire(g *group, w *wallet.Wallet) {
	if next := w.NextDue(); next == 0 || next > g.now {
		return
	}
	s.written(g, w, w.Advance(g.now, s.entries[:0]))
}

// TopUpResult is the outcome of a top-up or of its reversal.
type TopUpResult struct {
	BucketID   string
	Status     uint8 // TopUpCompleted or TopUpReversed
	CreatedAt  int64
	ReversedAt int64
	ExpiresAt  int64 // the bucket's expiry ("period_end" resolved); 0 = never
	Replayed   bool  // the same top-up was seen before: nothing was applied now
	// Reversal is what a reversal took back and kept (a replayed reversal
	// has none: its ledger entry says).
	Reversal *wallet.Reversal
	// Record is a new top-up's record, as GET answers it; nil for a
	// replay (TopUpByID reads it).
	Record *TopUpRecord
}

// refundRule is the pricing's refund rule of a kind of purchase, or the
// deployment's: within --reversal-window, and only while none was spent.
func (e *Engine) refundRule(kind string) wallet.RefundRule {
	if r, ok := e.Pricing().RefundRule(kind); ok {
		return wallet.RefundRule{Window: int64(r.Window), MaxUsed: r.MaxUsed}
	}
	var none meter.Dec
	return wallet.RefundRule{Window: int64(e.opts.ReversalWindow), MaxUsed: &none}
}

// checkFuture refuses an expiry at or before now; replays are answered before it is checked.
func checkFuture(expiresAt, now int64) *wallet.Error {
	if expiresAt > 0 && expiresAt <= now {
		return &wallet.Error{Code: wallet.CodeInvalidTimestamp, Message: "expires_at must be in the future", Field: "expires_at"}
	}
	return nil
}

// resolvedExpiry returns a command's expiry as applied at instant at.
func resolvedExpiry(w *wallet.Wallet, expiresAt, at int64) int64 {
	if expiresAt == wallet.ExpiresPeriodEnd {
		end, _ := w.PeriodEnd(at)
		return end
	}
	return expiresAt
}

// TopUp applies a top-up once per id; hash identifies its content.
func (e *Engine) TopUp(customer string, c *wallet.TopUpCmd, hash [16]byte) (TopUpResult, error) {
	var res TopUpResult
	err := e.customerOp(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		key := idemKey(nil, idemTopUp, customer, c.ID)
		rec, ferr := sh.lookupWrite(g, key)
		if ferr != nil {
			return ferr
		}
		if rec != nil {
			if rec.Hash != hash {
				return &wallet.Error{Code: wallet.CodeIdempotencyConflict, Message: "top-up id " + c.ID + " was already used with different content"}
			}
			res = TopUpResult{BucketID: rec.BucketID, Status: rec.TopUpStatus, CreatedAt: rec.RecordedAt, ReversedAt: rec.ReversedAt,
				ExpiresAt: resolvedExpiry(w, c.ExpiresAt, rec.RecordedAt), Replayed: true}
			return nil
		}
		if ferr := checkFuture(c.ExpiresAt, g.now); ferr != nil {
			return ferr
		}
		if c.Offer != nil {
			if ferr := buyOffer(e.Pricing(), c, w); ferr != nil {
				return ferr
			}
		}
		bucket, entries, berr := w.TopUp(c, g.now, sh.entries[:0])
		sh.written(g, w, entries)
		if berr != nil {
			return berr
		}
		sh.remember(g, key, &record{Kind: idemTopUp, Hash: hash, BucketID: bucket, TopUpStatus: TopUpCompleted})
		res = TopUpResult{BucketID: bucket, Status: TopUpCompleted, CreatedAt: g.now, ExpiresAt: resolvedExpiry(w, c.ExpiresAt, g.now)}
		tr := &TopUpRecord{ID: c.ID, BucketID: bucket, Account: c.Account + ":" + c.Asset, Scale: c.Scale,
			Amount: c.Amount, Price: c.Price, Currency: c.Currency, Source: c.Source, ExpiresAt: res.ExpiresAt, CreatedAt: g.now,
			Metadata: c.Metadata, Description: c.Description, ExchangeRate: c.ExchangeRate}
		if q := c.Bought; q != nil {
			tr.OfferID, tr.Tier, tr.RatePrice, tr.RateCredits = q.OfferID, q.Tier, q.RatePrice.String(), q.RateCredits.String()
		}
		sh.recordTopUp(g, customer, tr)
		res.Record = tr
		return nil
	})
	return res, err
}

// buyOffer prices the offer a top-up buys under the customer's plan, and
// sets what the top-up credits and what it costs.
func buyOffer(p *meter.Pricing, c *wallet.TopUpCmd, w *wallet.Wallet) *wallet.Error {
	b := *c.Offer
	if pl := w.Settings.Plan; pl != nil {
		b.Plan = pl.ID
	}
	q, err := p.Buy(b)
	if err != nil {
		// Field is the purchase's (meter.Buy): "offer.amount" (money),
		// "offer.credits" or "offer.offer_id"; the caller names it by its
		// request.
		me := err.(*meter.Error)
		return &wallet.Error{Code: me.Code, Message: me.Message, Field: "offer." + me.Field}
	}
	name, code, _ := strings.Cut(q.Account, ":")
	a, _ := p.Asset(code)
	c.Account, c.Asset, c.Scale, c.Amount = name, a.Code, a.Scale, q.CreditUnits
	c.Price, c.Currency, c.Bought = q.Price.String(), q.Currency, &q
	return nil
}

// ReverseTopUp takes back what is left of a top-up, under the refund rule
// (refundRule): inside its window, and while no more of it was used than
// the rule allows.
func (e *Engine) ReverseTopUp(customer, id string) (TopUpResult, error) {
	var res TopUpResult
	err := e.customerOp(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		key := idemKey(nil, idemTopUp, customer, id)
		rec, ferr := sh.lookupWrite(g, key)
		if ferr != nil {
			return ferr
		}
		if rec == nil {
			return &wallet.Error{Code: wallet.CodeNotFound, Message: "top-up " + id + " does not exist"}
		}
		if rec.TopUpStatus == TopUpReversed {
			res = TopUpResult{BucketID: rec.BucketID, Status: TopUpReversed, CreatedAt: rec.RecordedAt, ReversedAt: rec.ReversedAt, Replayed: true}
			return nil
		}
		rev, entries, berr := w.ReversePurchase(rec.BucketID, id, e.refundRule("topup"), g.now, sh.entries[:0])
		sh.written(g, w, entries)
		if berr != nil {
			return berr
		}
		upd := *rec
		upd.TopUpStatus = TopUpReversed
		upd.ReversedAt = g.now
		// Keep the original window: rewrite the record in place.
		sh.val = upd.append(sh.val[:0])
		sh.set(g, key, sh.val)
		sh.cache.put(string(key), &upd)
		res = TopUpResult{BucketID: rec.BucketID, Status: TopUpReversed, CreatedAt: rec.RecordedAt, ReversedAt: g.now, Reversal: &rev}
		sh.recordReversal(g, customer, rec.BucketID, &TopUpReversal{At: g.now, Reversed: rev.Reversed, Kept: rev.Kept})
		return nil
	})
	return res, err
}

// ReverseGrant takes back what is left of a plan grant's bucket (APOB's
// yearly plan bought by mistake) under the pricing's plan_grant refund rule
// (refundRule). A grant is reversed once: its bucket is gone after, and a
// second reversal is topup_spent.
func (e *Engine) ReverseGrant(customer, bucketID string) (wallet.Reversal, error) {
	var rev wallet.Reversal
	err := e.customerOp(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		var berr *wallet.Error
		var entries []wallet.Entry
		rev, entries, berr = w.ReversePurchase(bucketID, "", e.refundRule("plan_grant"), g.now, sh.entries[:0])
		sh.written(g, w, entries)
		return berr
	})
	return rev, err
}

// AdjustResult is the outcome of an adjustment.
type AdjustResult struct {
	CreatedAt int64
	Replayed  bool
}

// Adjust applies an adjustment once per transaction id; hash identifies its content.
func (e *Engine) Adjust(customer string, c *wallet.AdjustCmd, hash [16]byte) (AdjustResult, error) {
	var res AdjustResult
	err := e.customerOp(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		key := idemKey(nil, idemAdjustment, customer, c.TransactionID)
		rec, ferr := sh.lookupWrite(g, key)
		if ferr != nil {
			return ferr
		}
		if rec != nil {
			if rec.Hash != hash {
				return &wallet.Error{Code: wallet.CodeIdempotencyConflict, Message: "transaction id " + c.TransactionID + " was already used with different content"}
			}
			res = AdjustResult{CreatedAt: rec.RecordedAt, Replayed: true}
			return nil
		}
		if ferr := checkFuture(c.ExpiresAt, g.now); ferr != nil {
			return ferr
		}
		entries, berr := w.Adjust(c, g.now, sh.entries[:0])
		sh.written(g, w, entries)
		if berr != nil {
			return berr
		}
		sh.remember(g, key, &record{Kind: idemAdjustment, Hash: hash})
		res = AdjustResult{CreatedAt: g.now}
		return nil
	})
	return res, err
}

// LedgerPage is one page of a customer's ledger, newest first.
type LedgerPage struct {
	Entries []wallet.Entry
	Next    uint64 // the cursor for the next page (entries with Seq < Next), 0 when there is none
}

// Ledger reads durable ledger entries of a customer, newest first, with
// Seq < before (0 = from the newest), optionally of one account only.
func (e *Engine) Ledger(customer, account string, before uint64, limit int) (LedgerPage, error) {
	if limit < 1 {
		return LedgerPage{}, &wallet.Error{Code: wallet.CodeInvalidRequest, Message: "limit must be at least 1", Field: "limit"}
	}
	var page LedgerPage
	// An unknown customer is refused by the shard.
	if err := e.advanceCustomer(customer, true); err != nil {
		return page, err
	}
	var err error
	page.Entries, page.Next, err = e.st.readLedger(customer, account, before, limit)
	return page, err
}

// runJanitor drops idempotency records whose window has passed.
func (e *Engine) runJanitor() {
	defer e.janitor.Done()
	t := time.NewTicker(e.opts.JanitorInterval)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			if !e.disk.writable() {
				continue // writes are refused: the next pass drops what this one would have
			}
			if err := e.DropExpired(); err != nil {
				e.log.Error("dropping expired idempotency records", "err", err)
			}
			if err := e.dropShipped(); err != nil {
				e.log.Error("dropping shipped outbox records", "err", err)
			}
			e.sweepIndexes()
		}
	}
}

// buildIndexes puts the idempotency keys stored before the engine started
// (it, an iterator over them made before the shards ran) into the shards'
// indexes, in the background: until a shard's index is ready, its look-ups
// of new ids read the store, as they would without it.
func (e *Engine) buildIndexes(it *pebble.Iterator) {
	defer e.janitor.Done()
	defer it.Close()
	start := time.Now()
	built := make([]idIndex, len(e.shards))
	for i := range built {
		built[i] = newIDIndex(e.idSeed)
	}
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		if n++; n%4096 == 0 {
			select {
			case <-e.stop:
				return
			default:
			}
		}
		key := it.Key()
		cust, ok := idemKeyCustomer(key)
		if !ok {
			continue
		}
		exp, ok := recordExpireAt(it.Value())
		if !ok {
			exp = math.MaxInt64 // unreadable here: a look-up reads it and says why
		}
		built[e.shardOf(cust).id].add(key, exp, 0, 0)
	}
	if err := it.Error(); err != nil {
		e.log.Error("idempotency index: reading the stored keys failed; new ids are looked up in the store", "err", err)
		return
	}
	for i, s := range e.shards {
		b := &built[i]
		for {
			err := e.readShard(s, func(sh *shard, g *group) { sh.ids.merge(b) })
			if err == nil {
				break
			}
			select {
			case <-e.stop:
				return
			case <-time.After(10 * time.Millisecond): // overloaded: try again
			}
		}
		built[i] = idIndex{}
	}
	e.log.Info("idempotency index ready", "ids", n, "seconds", time.Since(start).Seconds())
}

// sweepIndexes drops expired entries from the shards' indexes and samples
// their memory.
func (e *Engine) sweepIndexes() {
	now := e.clock.Now()
	for _, s := range e.shards {
		var bytes int
		if e.readShard(s, func(sh *shard, g *group) {
			sh.ids.sweep(now)
			bytes = sh.ids.bytes()
		}) == nil {
			e.metrics.idIndexBytes.WithLabelValues(strconv.Itoa(s.id)).Set(float64(bytes))
		}
	}
}

// dropBatchMax bounds the idempotency records examined per janitor pass and shard op.
const dropBatchMax = 4096

// DropExpired drops idempotency records whose dedup window has passed:
// those under their own keys, and the log records that hold only ids past
// it and that replay no longer needs.
func (e *Engine) DropExpired() error {
	if err := e.dropExpiredRecords(); err != nil {
		return err
	}
	now := e.clock.Now()
	for _, s := range e.shards {
		if exp := s.idExpireAt.Load(); exp != 0 && exp <= now {
			// Its next group drops the segments (shard.close).
			if err := e.doShard(s, func(*shard, *group) {}); err != nil {
				return err
			}
		}
	}
	return e.truncateLog()
}

// dropExpiredRecords drops the idempotency records under their own keys
// whose window has passed. Each record is checked and deleted on its
// customer's shard, so a record rewritten since it was indexed is kept.
func (e *Engine) dropExpiredRecords() error {
	now := e.clock.Now()
	type expiring struct {
		xkey []byte
		keys [][]byte
	}
	for {
		upper := expiryKey(nil, now+1, nil)
		it, err := e.st.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixExpiry}, UpperBound: upper})
		if err != nil {
			return err
		}
		per := make(map[*shard][]expiring)
		n := 0
		for ok := it.First(); ok && n < dropBatchMax; ok = it.Next() {
			x := expiring{xkey: bytes.Clone(it.Key())}
			x.keys = expiringKeys(x.xkey, bytes.Clone(it.Value()))
			cust := ""
			if len(x.keys) > 0 {
				cust, _ = idemKeyCustomer(x.keys[0])
			}
			if cust == "" {
				// Not a list this version writes: nothing to check, and the
				// key itself is dropped on shard 0.
				per[e.shards[0]] = append(per[e.shards[0]], expiring{xkey: x.xkey})
				n++
				continue
			}
			// A group's records are all of one shard.
			s := e.shardOf(cust)
			per[s] = append(per[s], x)
			n += len(x.keys) + 1
		}
		err = it.Error()
		it.Close()
		if err != nil || n == 0 {
			return err
		}
		for s, xs := range per {
			if err := e.doShard(s, func(sh *shard, g *group) {
				for _, x := range xs {
					for _, ik := range x.keys {
						rec, err := sh.lookup(g, ik)
						if err == nil && rec == nil {
							sh.del(g, ik)
							sh.cache.del(ik)
							e.metrics.idemDropped.Inc()
						}
					}
					sh.del(g, x.xkey)
				}
			}); err != nil {
				return err
			}
		}
		if n < dropBatchMax {
			return nil
		}
	}
}

// Resume sets a paused customer back to active.
func (e *Engine) Resume(customer string) error {
	return e.customerOp(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		sh.written(g, w, w.Advance(g.now, sh.entries[:0]))
		if w.Settings.Status != wallet.StatusActive {
			s := *w.Settings
			s.Status = wallet.StatusActive
			w.Configure(s, g.now)
			g.dirty[w] = struct{}{}
		}
		sh.written(g, w, w.Advance(g.now, sh.entries[:0]))
		return nil
	})
}

// StoreMetrics returns Pebble's metrics report (levels, compactions, caches), for diagnosis.
func (e *Engine) StoreMetrics() string { return e.st.db.Metrics().String() }
