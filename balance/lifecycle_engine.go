package balance

import (
	"container/heap"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/wallet"
)

// Keys of the lifecycle's records (see keys.go):
//
//	'n' customer 0x00 seq(8, BE)   -> notification (wallet.AppendNote)
//	'r' customer 0x00 seq(8, BE)   -> auto-reload request (AppendReload)
//	'h' hold id                    -> hold record (wallet.AppendHoldRecord); hold ids are global
const (
	prefixNote   = 'n'
	prefixReload = 'r'
	prefixHold   = 'h'
)

func customerSeqKey(dst []byte, prefix byte, customer string, seq uint64) []byte {
	dst = append(dst, prefix)
	dst = append(dst, customer...)
	dst = append(dst, 0)
	return binary.BigEndian.AppendUint64(dst, seq)
}

func holdKey(id string) []byte { return append([]byte{prefixHold}, id...) }

// effects stores what the last operations on w made beside ledger entries,
// in the group's batch (and its outbox record), and schedules w's next due
// instant. Its caller has marked w changed (dirty, or changed by a logged
// command).
func (s *shard) effects(g *group, w *wallet.Wallet) {
	s.schedule(w)
	if !w.HasEffects() {
		return
	}
	fx := w.TakeEffects()
	for i := range fx.Notes {
		n := &fx.Notes[i]
		s.key = customerSeqKey(s.key[:0], prefixNote, w.Customer, n.Seq)
		s.val = wallet.AppendNote(s.val[:0], n)
		s.set(g, s.key, s.val)
		if s.outboxOn {
			g.outbox.addNote(n)
		}
		s.e.metrics.notifications.WithLabelValues(n.Type).Inc()
	}
	for i := range fx.Holds {
		h := &fx.Holds[i]
		s.val = wallet.AppendHoldRecord(s.val[:0], h)
		s.set(g, holdKey(h.ID), s.val)
	}
	for i := range fx.Reloads {
		r := &fx.Reloads[i]
		s.key = customerSeqKey(s.key[:0], prefixReload, w.Customer, reloadSeq(r.ID))
		s.val = wallet.AppendReload(s.val[:0], r)
		s.set(g, s.key, s.val)
	}
}

// reloadSeq returns n of "r_<n>".
func reloadSeq(id string) uint64 {
	var n uint64
	for i := 2; i < len(id); i++ {
		n = n*10 + uint64(id[i]-'0')
	}
	return n
}

// ---- Timers ----

// dueItem is a wallet's next due instant in a shard's timer heap.
type dueItem struct {
	at       int64
	customer string
}

type dueHeap []dueItem

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueItem)) }
func (h *dueHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// timers is a shard's schedule of wallets with something due: each wallet is
// in the heap at most once per distinct instant (Wallet.queuedAt remembers
// the earliest queued one); stale items are skipped when popped.
type timers struct {
	heap    dueHeap
	loading bool         // wallets are being loaded: items are appended, and heapify makes the heap once
	next    atomic.Int64 // the heap's earliest instant, 0 = none; read by the engine's ticker
}

// schedule queues w's next due instant, if it has one earlier than what is queued.
func (s *shard) schedule(w *wallet.Wallet) {
	at := w.NextDue()
	if at == 0 {
		return
	}
	if w.QueuedAt != 0 && w.QueuedAt <= at {
		return
	}
	w.QueuedAt = at
	if s.timers.loading {
		s.timers.heap = append(s.timers.heap, dueItem{at: at, customer: w.Customer})
		return
	}
	heap.Push(&s.timers.heap, dueItem{at: at, customer: w.Customer})
	s.timers.next.Store(s.timers.heap[0].at)
}

// heapify ends loading: it makes the heap of what was appended, in one pass
// instead of a sift per wallet.
func (s *shard) heapify() {
	s.timers.loading = false
	heap.Init(&s.timers.heap)
	if len(s.timers.heap) > 0 {
		s.timers.next.Store(s.timers.heap[0].at)
	}
}

// dueWalletsMax bounds the wallets one timer op advances; the rest waits for the next op.
const dueWalletsMax = 4096

// runDue advances every wallet due by the group's time, at most
// dueWalletsMax of them, and reports whether more are due.
func (s *shard) runDue(g *group) (more bool) {
	for n := 0; len(s.timers.heap) > 0 && s.timers.heap[0].at <= g.now; n++ {
		if n == dueWalletsMax {
			return true
		}
		it := heap.Pop(&s.timers.heap).(dueItem)
		w := s.wallets[it.customer]
		if w == nil {
			continue
		}
		if w.QueuedAt == it.at {
			w.QueuedAt = 0
		}
		if next := w.NextDue(); next != 0 && next <= g.now {
			s.written(g, w, w.Advance(g.now, s.entries[:0]))
		} else {
			s.schedule(w)
		}
	}
	if len(s.timers.heap) > 0 {
		s.timers.next.Store(s.timers.heap[0].at)
	} else {
		s.timers.next.Store(0)
	}
	return false
}

// runTimers sends a timer op to each shard whose earliest due instant has
// come, every TimerInterval. Reads and charges do not wait for it: every
// operation advances its wallet first. Timers make expiries, grants and
// their notifications happen (and reach the sinks) without any traffic.
func (e *Engine) runTimers() {
	defer e.janitor.Done()
	t := time.NewTicker(e.opts.TimerInterval)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			now := e.clock.Now()
			for _, s := range e.shards {
				if next := s.timers.next.Load(); next != 0 && next <= now {
					s := s
					_ = e.doShard(s, func(sh *shard, g *group) { sh.runDue(g) })
				}
			}
			e.pokeCheckpoints()
			if e.disk.writable() {
				if err := e.truncateLog(); err != nil {
					e.log.Error("truncating the command log", "err", err)
				}
			}
		}
	}
}

// doShard runs fn on shard s and returns once its group is durable; a full
// queue is ErrOverloaded. fn may write: it is refused with ErrStorageFull,
// before it runs, while the disk is full.
func (e *Engine) doShard(s *shard, fn func(s *shard, g *group)) error {
	if !e.disk.writable() && !e.closed.Load() {
		return ErrStorageFull
	}
	return e.readShard(s, fn)
}

// readShard is doShard for a read: it runs while the disk is full, and fn
// writes only when s.writable() says so (checked on the shard, so that a
// write it decides on is in a group handed to the WAL with the reserve
// still there to take it).
func (e *Engine) readShard(s *shard, fn func(s *shard, g *group)) error {
	var wg sync.WaitGroup
	o := &op{fn: fn, wg: &wg}
	if !e.send(func(send func(*shard, *op) bool) bool { return send(s, o) }) {
		return ErrOverloaded
	}
	wg.Wait()
	return nil
}

// ---- Test clock ----

// ManualClock is a clock that moves only when told (the test clock).
type ManualClock struct{ now atomic.Int64 }

// NewManualClock returns a clock at start (unix ns).
func NewManualClock(start int64) *ManualClock {
	c := &ManualClock{}
	c.now.Store(start)
	return c
}

// Now returns the clock's time.
func (c *ManualClock) Now() int64 { return c.now.Load() }

// Set moves the clock to t without running anything that came due: reads
// and writes still see exact state (every operation advances its wallet
// first). Tests use it to show that no timer is needed; Engine.SetClock is
// the way to move time and run what came due.
func (c *ManualClock) Set(t int64) { c.now.Store(t) }

// SetClock moves the engine's test clock forward to t and runs everything
// that came due (plan grants, expiries, hold expiries) before returning,
// durably. Only for an engine opened with a *ManualClock.
func (e *Engine) SetClock(t int64) error {
	c, ok := e.clock.(*ManualClock)
	if !ok {
		return &wallet.Error{Code: wallet.CodeNotFound, Message: "the engine does not run on a test clock"}
	}
	e.clockMu.Lock()
	defer e.clockMu.Unlock()
	if t < c.Now() {
		return &wallet.Error{Code: wallet.CodeClockBackwards, Message: "the test clock only moves forward"}
	}
	c.now.Store(t)
	for _, s := range e.shards {
		for more := true; more; {
			more = false
			for {
				err := e.doShard(s, func(sh *shard, g *group) { more = sh.runDue(g) })
				if err != ErrOverloaded || e.closed.Load() {
					if err != nil {
						return err
					}
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	return nil
}

// ---- Holds ----

// PlaceHold places a hold once per hold id (hold ids are global: the same id
// for another customer or with other content is idempotency_conflict).
// replayed reports a hold seen before; the record is then its current state.
func (e *Engine) PlaceHold(customer string, c *wallet.HoldCmd) (rec wallet.HoldRecord, replayed bool, err error) {
	e.holdMu.Lock()
	if e.holdClaims[c.ID] {
		e.holdMu.Unlock()
		return rec, false, &wallet.Error{Code: wallet.CodeIdempotencyConflict, Message: "hold " + c.ID + " is being placed by another request"}
	}
	e.holdClaims[c.ID] = true
	e.holdMu.Unlock()
	defer func() {
		e.holdMu.Lock()
		delete(e.holdClaims, c.ID)
		e.holdMu.Unlock()
	}()
	if old, ok, err := e.holdRecord(c.ID); err != nil {
		return rec, false, err
	} else if ok {
		if old.Customer != customer || old.Hash != c.Hash {
			return rec, false, &wallet.Error{Code: wallet.CodeIdempotencyConflict, Message: "hold id " + c.ID + " was already used with different content"}
		}
		rec, err = e.Hold(c.ID)
		return rec, true, err
	}
	err = e.customerOp(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		entries, berr := w.PlaceHold(c, g.now, sh.entries[:0])
		sh.written(g, w, entries)
		if berr != nil {
			return berr
		}
		h, _ := w.ActiveHold(c.ID)
		rec = wallet.HoldRecord{Hold: h, Customer: customer, Scale: w.Account(h.Account).Scale, Status: wallet.HoldActive, UpdatedAt: g.now}
		return nil
	})
	return rec, false, err
}

// holdRecord reads a hold's durable record.
func (e *Engine) holdRecord(id string) (wallet.HoldRecord, bool, error) {
	v, err := e.st.get(holdKey(id))
	if err != nil || v == nil {
		return wallet.HoldRecord{}, false, err
	}
	h, err := wallet.DecodeHoldRecord(v)
	if err != nil {
		return wallet.HoldRecord{}, false, err
	}
	return h, true, nil
}

// Hold returns a hold as of now: an active hold past its expiry is expired
// first (durably), so a read never shows a hold that no longer holds.
func (e *Engine) Hold(id string) (wallet.HoldRecord, error) {
	h, ok, err := e.holdRecord(id)
	if err != nil {
		return h, err
	}
	if !ok {
		return h, &wallet.Error{Code: wallet.CodeNotFound, Message: "hold " + id + " does not exist"}
	}
	if h.Status == wallet.HoldActive && h.ExpiresAt <= e.clock.Now() {
		if err := e.customerOp(h.Customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
			sh.written(g, w, w.Advance(g.now, sh.entries[:0]))
			return nil
		}); err != nil {
			return h, err
		}
		if h, _, err = e.holdRecord(id); err != nil {
			return h, err
		}
	}
	return h, nil
}

// ReleaseHold releases an active hold. Releasing a released hold again
// returns it; a settled or expired hold is hold_not_active.
func (e *Engine) ReleaseHold(id string) (wallet.HoldRecord, error) {
	h, ok, err := e.holdRecord(id)
	if err != nil {
		return h, err
	}
	if !ok {
		return h, &wallet.Error{Code: wallet.CodeNotFound, Message: "hold " + id + " does not exist"}
	}
	err = e.customerOp(h.Customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		entries, berr := w.ReleaseHold(id, g.now, sh.entries[:0])
		sh.written(g, w, entries)
		return berr
	})
	if err != nil {
		if be, ok := err.(*wallet.Error); !ok || be.Code != wallet.CodeHoldNotActive {
			return h, err
		}
	}
	// Durable now: this group committed after any earlier one.
	if h, _, err = e.holdRecord(id); err != nil {
		return h, err
	}
	if h.Status != wallet.HoldReleased {
		return h, &wallet.Error{Code: wallet.CodeHoldNotActive, Message: "hold " + id + " is " + h.Status.String()}
	}
	return h, nil
}

// ---- Auto-reload requests ----

// ReloadRequests lists a customer's auto-reload requests, newest first,
// with sequence numbers below before (0 = from the newest).
func (e *Engine) ReloadRequests(customer string, before uint64, limit int) ([]wallet.ReloadRequest, uint64, error) {
	var out []wallet.ReloadRequest
	next, err := e.scanCustomer(prefixReload, customer, before, limit, func(v []byte) error {
		r, err := wallet.DecodeReload(v)
		out = append(out, r)
		return err
	})
	return out, next, err
}

// ReloadRequest returns one auto-reload request.
func (e *Engine) ReloadRequest(customer, id string) (wallet.ReloadRequest, error) {
	if len(id) < 3 || id[:2] != "r_" {
		return wallet.ReloadRequest{}, &wallet.Error{Code: wallet.CodeNotFound, Message: "auto-reload request " + id + " does not exist"}
	}
	for i := 2; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' || i > 20 {
			return wallet.ReloadRequest{}, &wallet.Error{Code: wallet.CodeNotFound, Message: "auto-reload request " + id + " does not exist"}
		}
	}
	v, err := e.st.get(customerSeqKey(nil, prefixReload, customer, reloadSeq(id)))
	if err != nil {
		return wallet.ReloadRequest{}, err
	}
	if v == nil {
		return wallet.ReloadRequest{}, &wallet.Error{Code: wallet.CodeNotFound, Message: "auto-reload request " + id + " does not exist"}
	}
	return wallet.DecodeReload(v)
}

// ResolveReload confirms (ok) or fails a pending auto-reload request.
// Repeating the same outcome returns the request; the other outcome on a
// finished request is reload_not_pending.
func (e *Engine) ResolveReload(customer, id string, ok bool) (wallet.ReloadRequest, error) {
	var res wallet.ReloadRequest
	err := e.customerOp(customer, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
		var entries []wallet.Entry
		var berr *wallet.Error
		if ok {
			res, entries, berr = w.ConfirmReload(id, g.now, sh.entries[:0])
		} else {
			res, entries, berr = w.FailReload(id, g.now, sh.entries[:0])
		}
		sh.written(g, w, entries)
		return berr
	})
	if err == nil {
		return res, nil
	}
	if be, isErr := err.(*wallet.Error); !isErr || be.Code != wallet.CodeReloadNotPending {
		return res, err
	}
	// Durable now: this group committed after any earlier one.
	r, rerr := e.ReloadRequest(customer, id)
	if rerr != nil {
		return r, rerr
	}
	if (ok && r.Status == wallet.ReloadCompleted) || (!ok && r.Status == wallet.ReloadFailed) {
		return r, nil
	}
	return r, &wallet.Error{Code: wallet.CodeReloadNotPending, Message: "auto-reload request " + id + " is " + r.Status.String()}
}

// ---- Notifications ----

// Notifications lists a customer's notifications, newest first, with
// sequence numbers below before (0 = from the newest). next is the cursor
// of the following page, 0 at the end.
func (e *Engine) Notifications(customer string, before uint64, limit int) ([]wallet.Notification, uint64, error) {
	var out []wallet.Notification
	next, err := e.scanCustomer(prefixNote, customer, before, limit, func(v []byte) error {
		n, err := wallet.DecodeNote(customer, v)
		out = append(out, n)
		return err
	})
	return out, next, err
}

// scanCustomer reads a customer's records of a prefix newest first.
func (e *Engine) scanCustomer(prefix byte, customer string, before uint64, limit int, fn func(v []byte) error) (uint64, error) {
	if err := e.advanceCustomer(customer, false); err != nil {
		return 0, err
	}
	lower := customerSeqKey(nil, prefix, customer, 0)
	upper := customerSeqKey(nil, prefix, customer, ^uint64(0))
	if before > 0 {
		upper = customerSeqKey(nil, prefix, customer, before)
	}
	it, err := e.st.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	n := 0
	for ok := it.Last(); ok; ok = it.Prev() {
		k := it.Key()
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		if n == limit {
			return seq + 1, it.Error()
		}
		if err := fn(it.Value()); err != nil {
			return 0, fmt.Errorf("record %x: %w", k, err)
		}
		n++
	}
	return 0, it.Error()
}
