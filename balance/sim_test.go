package balance

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// TestSimulatedCrashes drives the whole engine (shards, group commit,
// checkpoints, log truncation, the idempotency index and its background
// build, timers, recovery) on Pebble's in-memory file system that keeps only
// what was synced when it "crashes" (vfs.NewCrashableMem, CrashClone), from
// one seed. Workers send every kind of command a wallet takes: usage events
// (some settling holds, some resent), top-ups (some expiring, some resent),
// top-up reversals, credit and debit adjustments, holds placed and released,
// and settings changes (overdraft with a credit limit, a daily plan with
// auto-reload, a pause); the clock moves, so buckets and holds expire and
// plan periods turn. Balances are small, so funds run out, overdraft makes
// debt, and auto-reload refills.
//
// The seed picks what each worker sends (its commands, ids and resends are
// its own, from its own generator), each crash's point (in events sent),
// how much unsynced data survives it, the shard count, the checkpoint and
// timer intervals of each restart, and crashes in the middle of a replay
// and right after recovery. The goroutines' interleaving is not the seed's,
// and with it which answers came before a crash: a failure prints the seed,
// and a rerun with it sends the same commands through the same crashes, but
// not the same schedule.
//
// After every crash and recovery:
//   - recovery is deterministic: a second copy of the crashed file system,
//     opened on its own, recovers every wallet byte for byte the same;
//   - every command an answer applied before the crash is there: resent, it
//     is a replay (a duplicate with its original charge);
//   - every command in doubt (no answer before the crash, or an answer the
//     crash may have lost) is resent, and then applied at most once;
//   - the state equals the ledger replayed from zero: in every account each
//     entry's balance_after is the running sum of the entries before it and
//     the last one is the account's available balance, every bucket's
//     remaining amount is the sum of its entries, the entries without a
//     bucket sum to -(held + debt), and the holds the ledger leaves open
//     are the wallet's active holds;
//   - each command's entries say it was applied exactly once when it was,
//     and not at all when it was not: an event's usage entries sum to minus
//     its charge, a top-up's to its amount (its reversal's to minus it), an
//     adjustment's to its amount, a hold's to minus its amount; and no
//     entry belongs to a command nobody sent.
//
// The ledgers of eight customers are read after each crash, all of them
// after the last, since reading every ledger every time would make the run
// quadratic.
//
// METERD_SIM_SEED replays a seed; METERD_SIM_EVENTS sets the events sent
// (default 1,000,000, or 30,000 with -short or -race; make sim runs 100
// seeds of the default).
func TestSimulatedCrashes(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("METERD_SIM_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("METERD_SIM_SEED=%q", v)
		}
	}
	events := 1_000_000
	if testing.Short() || raceEnabled {
		events = 30_000
	}
	if v := os.Getenv("METERD_SIM_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("METERD_SIM_EVENTS=%q", v)
		}
		events = n
	}
	sim := newSim(t, seed)
	defer func() {
		if t.Failed() {
			t.Logf("replay with METERD_SIM_SEED=%d METERD_SIM_EVENTS=%d go test ./balance -run TestSimulatedCrashes", seed, events)
		}
	}()
	sim.run(events)
	t.Logf("seed %d: %d crashes (%d during a replay), %d log commands replayed, %d commands in doubt resolved; sent %s",
		seed, sim.crashes, sim.replayCrashes, sim.replayed, sim.inDoubt, sim.counts())
	t.Logf("refusals %v; ledger entries at the end %v", sim.refused, sim.entries)
	if sim.crashes >= 10 && sim.replayed == 0 {
		t.Errorf("seed %d: %d crashes and no recovery replayed the command log: the test does not reach replay", seed, sim.crashes)
	}
}

const (
	simCustomers = 64
	simEventCost = 40 // enginePricing: image_generated costs 40 CREDITS
	simWorkers   = 4
	simAccount   = "default:CREDITS"
	// simWindow is the engines' idempotency window: the clock passes it
	// during a run, so ids are forgotten; a command is resent only while
	// well inside it.
	simWindow = 6 * time.Hour
)

// simKind is the kind of a command the simulation sends.
type simKind uint8

const (
	simEvent simKind = iota
	simTopUp
	simReverse // reverses the top-up target
	simAdjust
	simHold
	simRelease // releases the hold target
	simSettings
	simKinds
)

var simKindNames = [simKinds]string{"events", "top-ups", "reversals", "adjustments", "holds", "releases", "settings changes"}

// simCmd is one command the simulation sent.
type simCmd struct {
	kind     simKind
	customer int
	id       string  // event id, top-up id, transaction id or hold id; "" for a reversal or release
	target   *simCmd // the top-up a reversal reverses, the hold a release ends or an event settles
	amount   int64   // a top-up's or hold's amount, an adjustment's signed one
	expires  int64   // a top-up's (0 = never) or hold's expiry
	sentAt   int64   // the clock at the first send

	// What the answers said. done: an answer said it took effect (applied
	// now or a replay of when it was); doneAck is the ackSeq of the first
	// such answer. pending: a send has no answer yet. took counts the
	// answers that applied it afresh since the last recovery resolved it.
	done     bool
	doneAck  uint64
	pending  bool
	took     int
	reversed bool // a top-up some reversal took back
	released bool // a hold some release ended
}

// simWorker is what one worker keeps across epochs: its ids and the
// commands it may resend or act on, per customer. Only its goroutine
// touches them while the workers run.
type simWorker struct {
	id      int
	n       int
	recent  [simCustomers][]*simCmd
	topUps  [simCustomers][]*simCmd
	holds   [simCustomers][]*simCmd
	nextRun *rand.Rand
}

type sim struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand // the main goroutine's; each worker's comes from it
	fs    *vfs.MemFS
	dir   string
	clock *testClock

	mu      sync.Mutex
	cmds    []*simCmd // every command sent but settings, in the order first sent
	ackSeq  uint64    // answers recorded so far
	workers [simWorkers]*simWorker
	sent    [simKinds]atomic.Int64
	stopped atomic.Bool

	crashes, inDoubt        int
	refused                 map[string]int           // refusals by code (s.mu)
	entries                 map[wallet.EntryType]int // ledger entries by type, at the last check
	replayed, replayCrashes int                      // log commands replayed at recoveries; crashes in the middle of one
	midReplay               *vfs.MemFS               // the file system as a crash during the last open's replay would leave it
}

func newSim(t *testing.T, seed uint64) *sim {
	s := &sim{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), fs: vfs.NewCrashableMem(),
		dir: t.TempDir(), clock: &testClock{}, refused: map[string]int{}, entries: map[wallet.EntryType]int{}}
	s.clock.ns.Store(simEpoch)
	for w := range s.workers {
		s.workers[w] = &simWorker{id: w}
	}
	return s
}

var simEpoch = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano()

func (s *sim) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("seed %d: "+format, append([]any{s.seed}, args...)...)
}

func (s *sim) counts() string {
	var b bytes.Buffer
	for k := range simKinds {
		if k > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d %s", s.sent[k].Load(), simKindNames[k])
	}
	return b.String()
}

// simOpen is how one restart opens the engine.
type simOpen struct {
	shards             int
	checkpoint, ticker time.Duration
	janitor            time.Duration
	midReplay          bool // take a clone of the file system after the replay, before it is written
	cloneSeed          uint64
}

// draw picks a restart's options from the seed: checkpoints from every
// group to none before Close, the ticker that truncates the log and pokes
// idle shards from often to never, the janitor that drops what left the
// idempotency window now and then, and now and then a crash mid-replay.
func (s *sim) draw() simOpen {
	return simOpen{
		shards:     1 + s.rng.IntN(4),
		checkpoint: []time.Duration{time.Millisecond, 20 * time.Millisecond, time.Second, time.Hour}[s.rng.IntN(4)],
		ticker:     []time.Duration{2 * time.Millisecond, 50 * time.Millisecond, time.Hour}[s.rng.IntN(3)],
		janitor:    []time.Duration{5 * time.Millisecond, time.Hour}[s.rng.IntN(2)],
		midReplay:  s.rng.IntN(4) == 0,
		cloneSeed:  s.rng.Uint64(),
	}
}

func (s *sim) open(fs *vfs.MemFS, o simOpen) *Engine {
	s.t.Helper()
	s.midReplay = nil
	e, err := Open(Options{Dir: s.dir, Shards: o.shards, QueueMax: 64, JanitorInterval: o.janitor, TimerInterval: o.ticker,
		CheckpointInterval: o.checkpoint, DedupWindow: simWindow,
		ReserveBytes: 1 << 20, DefaultPricing: []byte(enginePricing), Clock: s.clock,
		Log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		fs:        fs,
		diskAvail: func() (uint64, error) { return 1 << 40, nil },
		exit: func(code int) {
			panic(fmt.Sprintf("seed %d: the engine stopped the process (exit %d); see its log", s.seed, code))
		},
		replayed: func(events int) {
			if fs != s.fs {
				return // the twin
			}
			s.replayed += events
			if o.midReplay && events > 0 {
				// What a crash in the middle of recovery leaves: the log
				// replayed in memory, nothing of it written.
				s.midReplay = fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(o.cloneSeed, 3))})
			}
		},
	})
	if err != nil {
		s.fatalf("open: %v", err)
	}
	return e
}

func simCustomer(i int) string { return "sim-" + strconv.Itoa(i) }

// simHash is a command's content hash: the same for every send of an id.
func simHash(id string) (h [16]byte) {
	binary.LittleEndian.PutUint64(h[:], uint64(len(id)))
	copy(h[8:], id)
	return h
}

// simSettings are the settings a customer may be given.
func simPreset(i int) wallet.Settings {
	switch i {
	case 1: // overdraft down to -300
		return wallet.Settings{Policy: wallet.PolicyOverdraft, CreditLimits: []wallet.Limit{{Account: simAccount, Units: 300}}, BalanceAlerts: []string{"100"}}
	case 2: // a daily plan of 1,500 and auto-reload of 800 below 120
		return wallet.Settings{
			Plan: &wallet.Plan{ID: "daily", Allocations: []wallet.Allocation{{Account: "default", Asset: "CREDITS", Amount: 1500,
				Period: wallet.PeriodDay, Anchor: simEpoch + int64(2*time.Hour), Strategy: wallet.StrategyExpireAndReplace}}},
			AutoReload: &wallet.AutoReload{Enabled: true, Account: "default", Asset: "CREDITS", Threshold: 120, Amount: 800,
				Price: "8.00", Currency: "USD", Charge: "8.00", MaxPerPeriod: 3},
		}
	case 3:
		return wallet.Settings{Status: wallet.StatusPaused}
	}
	return wallet.Settings{}
}

func (s *sim) run(events int) {
	e := s.open(s.fs, s.draw())
	for c := range simCustomers {
		if _, err := e.PutCustomer(simCustomer(c), simPreset(c%3)); err != nil {
			s.fatalf("put customer: %v", err)
		}
		cmd := &simCmd{kind: simTopUp, customer: c, id: "top-start-" + strconv.Itoa(c), amount: 5000, sentAt: s.clock.Now()}
		s.cmds = append(s.cmds, cmd)
		s.send(e, cmd)
		if !cmd.done {
			s.fatalf("the first top-up of %s was not applied", simCustomer(c))
		}
	}
	for int(s.sent[simEvent].Load()) < events {
		// One epoch: workers send commands until the crash.
		left := events - int(s.sent[simEvent].Load())
		budget := int64(1 + s.rng.IntN(max(1, min(left, 100_000))))
		base := s.sent[simEvent].Load()
		for _, w := range s.workers {
			w.nextRun = rand.New(rand.NewPCG(s.rng.Uint64(), uint64(w.id)))
		}
		s.stopped.Store(false)
		var wg sync.WaitGroup
		errs := make(chan error, simWorkers)
		for _, w := range s.workers {
			wg.Go(func() {
				if err := s.work(e, w, base+budget); err != nil {
					errs <- err
				}
			})
		}
		workersDone := make(chan struct{})
		go func() { wg.Wait(); close(workersDone) }()
		// The crash: at a point the seed picks, while the workers run.
		crashAt := base + int64(s.rng.IntN(int(budget)+1))
	wait:
		for s.sent[simEvent].Load() < crashAt {
			select {
			case <-workersDone:
				break wait
			case <-time.After(50 * time.Microsecond):
			}
		}
		s.mu.Lock()
		durable := s.ackSeq // every answer recorded so far came after its fsync
		s.mu.Unlock()
		unsynced := s.rng.IntN(101)
		clone := s.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsynced, RNG: rand.New(rand.NewPCG(s.rng.Uint64(), 1))})
		s.stopped.Store(true)
		<-workersDone
		close(errs)
		for err := range errs {
			s.fatalf("epoch %d: %v", s.crashes, err)
		}
		e.Close()
		s.stopped.Store(false) // from here on every answer counts
		s.crashes++
		s.fs = clone
		s.clock.advance(10 * time.Minute)
		twin := s.recoverTwin()
		e = s.open(s.fs, s.draw())
		if s.midReplay != nil {
			// A crash while the log was being replayed: recover from that.
			e.Close()
			s.fs = s.midReplay
			s.replayCrashes++
			e = s.open(s.fs, s.draw())
		}
		s.sameWallets(e, twin)
		if s.rng.IntN(4) == 0 {
			// A crash right after recovery, while the index may still be building.
			clone := s.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: s.rng.IntN(101), RNG: rand.New(rand.NewPCG(s.rng.Uint64(), 2))})
			e.Close()
			s.fs = clone
			e = s.open(s.fs, s.draw())
		}
		s.check(e, durable, int(s.sent[simEvent].Load()) >= events)
	}
	e.Close()
}

// recoverTwin opens a copy of the crashed file system on its own (one
// shard, no timers) and returns every wallet's encoding as it recovered it.
func (s *sim) recoverTwin() [][]byte {
	fs := s.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(1, 1))})
	e := s.open(fs, simOpen{shards: 1, checkpoint: time.Hour, ticker: time.Hour, janitor: time.Hour})
	defer e.Close()
	return s.walletBytes(e)
}

func (s *sim) walletBytes(e *Engine) [][]byte {
	out := make([][]byte, simCustomers)
	for c := range simCustomers {
		w, err := e.Wallet(simCustomer(c))
		if err != nil {
			s.fatalf("after crash %d: wallet %d: %v", s.crashes, c, err)
		}
		out[c] = wallet.AppendWalletAt(nil, w, 0)
	}
	return out
}

// sameWallets fails unless e recovered every wallet as the twin did.
func (s *sim) sameWallets(e *Engine, twin [][]byte) {
	s.t.Helper()
	for c, b := range s.walletBytes(e) {
		if !bytes.Equal(b, twin[c]) {
			a, _ := wallet.DecodeWallet(b)
			t, _ := wallet.DecodeWallet(twin[c])
			s.fatalf("after crash %d: two recoveries of the same files differ on %s:\n%+v\n%+v", s.crashes, simCustomer(c), a, t)
		}
	}
}

// work sends commands until the crash or the epoch's event budget.
func (s *sim) work(e *Engine, w *simWorker, budget int64) error {
	rng := w.nextRun
	for !s.stopped.Load() && s.sent[simEvent].Load() < budget {
		c := rng.IntN(simCustomers)
		var err error
		switch r := rng.IntN(100); {
		case r < 70:
			err = s.events(e, w, rng)
		case r < 79:
			err = s.sendNew(e, w, rng, simTopUp, c)
		case r < 82:
			err = s.sendNew(e, w, rng, simReverse, c)
		case r < 88:
			err = s.sendNew(e, w, rng, simAdjust, c)
		case r < 93:
			err = s.sendNew(e, w, rng, simHold, c)
		case r < 97:
			err = s.sendNew(e, w, rng, simRelease, c)
		case r < 99:
			s.sent[simSettings].Add(1)
			preset := rng.IntN(3)
			if rng.IntN(16) == 0 {
				preset = 3 // paused, until the next change
			}
			if _, err := e.PutCustomer(simCustomer(c), simPreset(preset)); err != nil && !s.stopped.Load() && !errors.Is(err, ErrOverloaded) {
				return fmt.Errorf("settings of %s: %w", simCustomer(c), err)
			}
		default:
			s.clock.advance(time.Duration(1+rng.IntN(120)) * time.Second)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// fresh reports whether cmd may be resent: well inside the window.
func (s *sim) fresh(cmd *simCmd) bool {
	return s.clock.Now()-cmd.sentAt < int64(simWindow/2)
}

// pick returns one of list that is fresh and done, or nil.
func (s *sim) pick(rng *rand.Rand, list []*simCmd, ok func(*simCmd) bool) *simCmd {
	if len(list) == 0 {
		return nil
	}
	c := list[rng.IntN(len(list))]
	if !s.fresh(c) || !ok(c) {
		return nil
	}
	return c
}

func simKept(list []*simCmd, cmd *simCmd) []*simCmd {
	list = append(list, cmd)
	if len(list) > 16 {
		list = list[len(list)-16:]
	}
	return list
}

// sendNew makes a command of kind for customer c (or resends an earlier
// one) and sends it.
func (s *sim) sendNew(e *Engine, w *simWorker, rng *rand.Rand, kind simKind, c int) error {
	now := s.clock.Now()
	var cmd *simCmd
	switch kind {
	case simTopUp:
		if old := s.pick(rng, w.topUps[c], func(*simCmd) bool { return true }); old != nil && rng.IntN(3) == 0 {
			cmd = old
			break
		}
		cmd = &simCmd{amount: 500 + rng.Int64N(9500)}
		if rng.IntN(3) == 0 {
			cmd.expires = now + int64(10*time.Minute) + rng.Int64N(int64(3*time.Hour))
		}
	case simReverse:
		t := s.pick(rng, w.topUps[c], func(t *simCmd) bool { return t.done })
		if t == nil {
			return nil
		}
		cmd = &simCmd{target: t}
	case simAdjust:
		cmd = &simCmd{amount: 1 + rng.Int64N(2000)}
		if rng.IntN(2) == 0 {
			cmd.amount = -1 - rng.Int64N(150)
		}
	case simHold:
		if old := s.pick(rng, w.holds[c], func(*simCmd) bool { return true }); old != nil && rng.IntN(4) == 0 {
			cmd = old
			break
		}
		cmd = &simCmd{amount: 1 + rng.Int64N(300), expires: now + int64(time.Minute) + rng.Int64N(int64(2*time.Hour))}
	case simRelease:
		h := s.pick(rng, w.holds[c], func(h *simCmd) bool { return h.done })
		if h == nil {
			return nil
		}
		cmd = &simCmd{target: h}
	}
	if cmd.sentAt == 0 {
		cmd.kind, cmd.customer, cmd.sentAt = kind, c, now
		if kind == simTopUp || kind == simAdjust || kind == simHold {
			cmd.id = w.newID()
		}
		switch kind {
		case simTopUp:
			w.topUps[c] = simKept(w.topUps[c], cmd)
		case simHold:
			w.holds[c] = simKept(w.holds[c], cmd)
		}
		s.mu.Lock()
		s.cmds = append(s.cmds, cmd)
		s.mu.Unlock()
	}
	s.sent[kind].Add(1)
	if err := s.send(e, cmd); err != nil {
		if s.stopped.Load() {
			return nil // in doubt: resolved after the crash
		}
		return err
	}
	return nil
}

// send sends a command other than an event and records its answer; an
// answer it cannot take is an error.
func (s *sim) send(e *Engine, cmd *simCmd) error {
	customer := simCustomer(cmd.customer)
	cmd.pending = true
	var err error
	var replayed bool
	switch cmd.kind {
	case simTopUp:
		var res TopUpResult
		res, err = e.TopUp(customer, &wallet.TopUpCmd{ID: cmd.id, Account: "default", Asset: "CREDITS", Amount: cmd.amount, ExpiresAt: cmd.expires}, simHash(cmd.id))
		replayed = res.Replayed
	case simReverse:
		var res TopUpResult
		res, err = e.ReverseTopUp(customer, cmd.target.id)
		replayed = res.Replayed
	case simAdjust:
		var res AdjustResult
		res, err = e.Adjust(customer, &wallet.AdjustCmd{TransactionID: cmd.id, Account: "default", Asset: "CREDITS", Amount: cmd.amount, Priority: -1}, simHash(cmd.id))
		replayed = res.Replayed
	case simHold:
		_, replayed, err = e.PlaceHold(customer, &wallet.HoldCmd{ID: cmd.id, Account: simAccount, Amount: cmd.amount, ExpiresAt: cmd.expires, Hash: simHash(cmd.id)})
	case simRelease:
		var h wallet.HoldRecord
		h, err = e.ReleaseHold(cmd.target.id)
		// A release answers the hold's record either way: one updated
		// before now was released before (a release is never counted as
		// applied twice within an epoch: the clock may not have moved).
		replayed = err == nil && h.UpdatedAt < s.clock.Now()
	}
	if errors.Is(err, ErrOverloaded) {
		cmd.pending = false // nothing was applied
		return nil
	}
	if err != nil && s.stopped.Load() {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd.pending = false
	s.ackSeq++
	if err != nil {
		var be *wallet.Error
		if !errors.As(err, &be) || !simRefusal(cmd, be.Code) {
			return fmt.Errorf("%s %s of %s: %w", simKindNames[cmd.kind], cmd.name(), customer, err)
		}
		s.refused[be.Code]++
		return nil
	}
	return s.took(cmd, !replayed)
}

// took records an answer that says cmd took effect (s.mu held); afresh
// says it was applied now.
func (s *sim) took(cmd *simCmd, afresh bool) error {
	if afresh {
		if cmd.took++; cmd.took > 1 && cmd.kind != simRelease {
			return fmt.Errorf("%s %s of %s was applied twice", simKindNames[cmd.kind], cmd.name(), simCustomer(cmd.customer))
		}
	}
	if !cmd.done {
		cmd.done, cmd.doneAck = true, s.ackSeq
	}
	switch cmd.kind {
	case simReverse:
		cmd.target.reversed = true
	case simRelease:
		cmd.target.released = true
	}
	return nil
}

// name names a command in a failure: its id, or for a reversal or a
// release its target's.
func (c *simCmd) name() string {
	if c.id == "" {
		return "of " + c.target.id
	}
	return c.id
}

// newID draws the worker's next command id.
func (w *simWorker) newID() string {
	w.n++
	return "w" + strconv.Itoa(w.id) + "-" + strconv.Itoa(w.n)
}

// simRefusal reports whether code is an answer cmd may get: one the
// wallet's state explains, never one a lost or doubled command would.
func simRefusal(cmd *simCmd, code string) bool {
	switch cmd.kind {
	case simEvent:
		return code == wallet.CodeInsufficientFunds || code == wallet.CodeAccountPaused ||
			code == "invalid_event" && cmd.target != nil && !cmd.target.done
	case simTopUp:
		return code == wallet.CodeInvalidTimestamp // its expiry passed before it was first applied
	case simReverse:
		return code == wallet.CodeTopUpSpent || code == wallet.CodeReversalWindowElapsed || code == wallet.CodeNotFound && !cmd.target.done
	case simAdjust:
		return code == wallet.CodeInsufficientFunds
	case simHold:
		return code == wallet.CodeInsufficientFunds || code == wallet.CodeInvalidTimestamp
	case simRelease:
		return code == wallet.CodeHoldNotActive || code == wallet.CodeNotFound && !cmd.target.done
	}
	return false
}

// events sends a batch of events of random customers: a tenth of them
// resends, some settling a hold.
func (s *sim) events(e *Engine, w *simWorker, rng *rand.Rand) error {
	n := 1 + rng.IntN(40)
	cmds := make([]*simCmd, n)
	now := s.clock.Now()
	var fresh []*simCmd
	for i := range cmds {
		c := rng.IntN(simCustomers)
		cmd := s.pick(rng, w.recent[c], func(*simCmd) bool { return true })
		if cmd == nil || rng.IntN(10) != 0 || slices.Contains(cmds[:i], cmd) {
			cmd = &simCmd{kind: simEvent, customer: c, id: w.newID(), sentAt: now}
			if rng.IntN(20) == 0 {
				cmd.target = s.pick(rng, w.holds[c], func(h *simCmd) bool { return h.done })
			}
			w.recent[c] = simKept(w.recent[c], cmd)
			fresh = append(fresh, cmd)
		}
		cmds[i] = cmd
	}
	s.mu.Lock()
	s.cmds = append(s.cmds, fresh...)
	s.mu.Unlock()
	s.sent[simEvent].Add(int64(n))
	ins, ptrs := simEvents(cmds)
	for _, cmd := range cmds {
		cmd.pending = true
	}
	if err := e.Events(ptrs); err != nil {
		if errors.Is(err, ErrOverloaded) {
			for _, cmd := range cmds {
				cmd.pending = false
			}
			return nil
		}
		if s.stopped.Load() {
			return nil // in doubt: resolved after the crash
		}
		return fmt.Errorf("events: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, in := range ins {
		cmd := cmds[i]
		cmd.pending = false
		s.ackSeq++
		if err := s.eventAnswer(in.Result, cmd); err != nil {
			return err
		}
	}
	return nil
}

func simEvents(cmds []*simCmd) ([]EventIn, []*EventIn) {
	ins := make([]EventIn, len(cmds))
	ptrs := make([]*EventIn, len(cmds))
	for i, cmd := range cmds {
		ev := &meter.Event{ID: cmd.id, CustomerID: simCustomer(cmd.customer), EventType: "image_generated"}
		if cmd.target != nil {
			ev.HoldID = cmd.target.id
		}
		ins[i] = EventIn{Event: ev, Hash: simHash(cmd.id)}
		ptrs[i] = &ins[i]
	}
	return ins, ptrs
}

// eventAnswer records an event's answer (s.mu held): charged its cost once,
// a duplicate answering the same charge, or a refusal the wallet explains.
func (s *sim) eventAnswer(r EventResult, cmd *simCmd) error {
	switch r.Status {
	case EventCharged, EventDuplicate:
		if len(r.Charges) != 1 || r.Charges[0].Amount != simEventCost {
			return fmt.Errorf("event %s (%s) answered charges %+v, want one of %d", cmd.id, statusName(r.Status), r.Charges, simEventCost)
		}
		return s.took(cmd, r.Status == EventCharged)
	case EventRejected:
		if simRefusal(cmd, r.Code) {
			s.refused[r.Code]++
			return nil
		}
	}
	return fmt.Errorf("event %s of %s (done %v): %s %s %s", cmd.id, simCustomer(cmd.customer), cmd.done, statusName(r.Status), r.Code, r.Message)
}

// check runs after a recovery: commands applied at or before durable are
// there, those in doubt are resolved by resending them, and then every
// wallet equals its ledger and the ledger holds every applied command once.
func (s *sim) check(e *Engine, durable uint64, last bool) {
	s.t.Helper()
	var sure, doubt []*simCmd
	for _, cmd := range s.cmds {
		switch {
		case cmd.done && cmd.doneAck <= durable:
			if s.fresh(cmd) {
				sure = append(sure, cmd)
			}
		case cmd.pending || cmd.done:
			doubt = append(doubt, cmd)
		}
	}
	// Applied before the crash: a sample of them is resent and must be a
	// replay; the ledger check below covers every one.
	if len(sure) > 2000 {
		sample := make([]*simCmd, 0, 2000)
		for range 2000 {
			sample = append(sample, sure[s.rng.IntN(len(sure))])
		}
		sure = sample
	}
	for _, cmd := range sure {
		cmd.took = 1
		if err := s.resend(e, cmd); err != nil {
			s.fatalf("after crash %d: %v", s.crashes, err)
		}
		if cmd.took > 1 {
			s.fatalf("after crash %d: %s %s, applied before the crash, was lost and applied again", s.crashes, simKindNames[cmd.kind], cmd.name())
		}
	}
	for _, cmd := range doubt {
		cmd.done, cmd.took, cmd.pending = false, 0, false
	}
	for _, cmd := range doubt {
		if err := s.resend(e, cmd); err != nil {
			s.fatalf("after crash %d: in doubt: %v", s.crashes, err)
		}
	}
	s.inDoubt += len(doubt)
	// Every command is resolved now: a top-up is reversed, a hold released,
	// when a command that did so is done.
	for _, cmd := range s.cmds {
		cmd.reversed, cmd.released = false, false
	}
	for _, cmd := range s.cmds {
		cmd.took = 0
		if cmd.done {
			cmd.took = 1
			switch cmd.kind {
			case simReverse:
				cmd.target.reversed = true
			case simRelease:
				cmd.target.released = true
			}
		}
	}
	s.checkLedgers(e, last)
}

// resend sends cmd once more and records the answer.
func (s *sim) resend(e *Engine, cmd *simCmd) error {
	if cmd.kind != simEvent {
		return s.send(e, cmd)
	}
	ins, ptrs := simEvents([]*simCmd{cmd})
	if err := e.Events(ptrs); err != nil {
		return fmt.Errorf("resending event %s: %w", cmd.id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ackSeq++
	return s.eventAnswer(ins[0].Result, cmd)
}

// checkLedgers compares wallets with their ledgers (eight customers, or all
// of them when last).
func (s *sim) checkLedgers(e *Engine, last bool) {
	s.t.Helper()
	byCustomer := make([][]*simCmd, simCustomers)
	for _, cmd := range s.cmds {
		byCustomer[cmd.customer] = append(byCustomer[cmd.customer], cmd)
	}
	for c := range simCustomers {
		if !last && s.rng.IntN(simCustomers/8) != 0 {
			continue
		}
		w, err := e.Wallet(simCustomer(c))
		if err != nil {
			s.fatalf("after crash %d: wallet %d: %v", s.crashes, c, err)
		}
		entries := s.ledger(e, simCustomer(c))
		if last {
			for _, en := range entries {
				s.entries[en.Type]++
			}
		}
		if err := simReplayLedger(w, entries); err != nil {
			s.fatalf("after crash %d: %s: the wallet is not its ledger replayed: %v", s.crashes, simCustomer(c), err)
		}
		if err := simAppliedOnce(byCustomer[c], entries); err != nil {
			s.fatalf("after crash %d: %s: %v", s.crashes, simCustomer(c), err)
		}
	}
}

// ledger reads a customer's whole ledger, oldest first.
func (s *sim) ledger(e *Engine, customer string) []wallet.Entry {
	var all []wallet.Entry
	before := uint64(0)
	for {
		page, err := e.Ledger(customer, "", before, 1000)
		if err != nil {
			s.fatalf("ledger of %s: %v", customer, err)
		}
		all = append(all, page.Entries...)
		if page.Next == 0 {
			slices.Reverse(all)
			return all
		}
		before = page.Next
	}
}

// simReplayLedger replays a wallet's ledger from zero and compares what it
// gives with the wallet: each entry's balance_after, every account's
// available balance, every bucket's remaining amount, held plus debt, and
// the active holds.
func simReplayLedger(w *wallet.Wallet, entries []wallet.Entry) error {
	type key struct{ account, bucket string }
	running := map[string]int64{}
	buckets := map[key]int64{}
	holds := map[string]int64{}
	for i, en := range entries {
		if i > 0 && en.Seq <= entries[i-1].Seq {
			return fmt.Errorf("entry seq %d after %d", en.Seq, entries[i-1].Seq)
		}
		running[en.Account] += en.Amount
		if running[en.Account] != en.BalanceAfter {
			return fmt.Errorf("entry %d (%s of %s): balance_after %d, the entries so far sum to %d",
				en.Seq, en.Type, en.Account, en.BalanceAfter, running[en.Account])
		}
		buckets[key{en.Account, en.BucketID}] += en.Amount
		if en.Type == wallet.EntryHold || en.Type == wallet.EntryHoldRelease {
			holds[en.Reference] += en.Amount
		}
	}
	for _, a := range w.Accounts {
		id := a.ID()
		if running[id] != a.Available() {
			return fmt.Errorf("account %s: available %d, its entries sum to %d", id, a.Available(), running[id])
		}
		delete(running, id)
		for _, b := range a.Buckets {
			k := key{id, b.ID}
			if buckets[k] != b.Remaining {
				return fmt.Errorf("bucket %s of %s: remaining %d, its entries sum to %d", b.ID, id, b.Remaining, buckets[k])
			}
			delete(buckets, k)
		}
		k := key{id, ""}
		if buckets[k] != -(a.Held + a.Debt) {
			return fmt.Errorf("account %s: held %d and debt %d, the entries without a bucket sum to %d", id, a.Held, a.Debt, buckets[k])
		}
		delete(buckets, k)
	}
	for id, sum := range running {
		if sum != 0 {
			return fmt.Errorf("account %s is not in the wallet, its entries sum to %d", id, sum)
		}
	}
	for k, sum := range buckets {
		if sum != 0 {
			return fmt.Errorf("bucket %s of %s is not in the wallet, its entries sum to %d", k.bucket, k.account, sum)
		}
	}
	active := map[string]bool{}
	if w.Life != nil {
		for _, h := range w.Life.Holds {
			active[h.ID] = true
			if holds[h.ID] != -h.Amount {
				return fmt.Errorf("active hold %s of %d: its entries sum to %d", h.ID, h.Amount, holds[h.ID])
			}
		}
	}
	for id, sum := range holds {
		if sum != 0 && !active[id] {
			return fmt.Errorf("hold %s is not active, its entries sum to %d", id, sum)
		}
	}
	return nil
}

// simAppliedOnce checks that the ledger holds each of a customer's commands
// exactly once when it was applied and not at all when it was not, and
// nothing of a command nobody sent.
func simAppliedOnce(cmds []*simCmd, entries []wallet.Entry) error {
	type key struct {
		t  wallet.EntryType
		id string
	}
	sums := map[key]int64{}
	for _, en := range entries {
		switch en.Type {
		case wallet.EntryUsage:
			sums[key{en.Type, en.EventID}] += en.Amount
		case wallet.EntryTopUp, wallet.EntryTopUpReversal, wallet.EntryAdjustment, wallet.EntryHold, wallet.EntryHoldRelease:
			sums[key{en.Type, en.Reference}] += en.Amount
		}
	}
	want := func(t wallet.EntryType, id string, amount int64, what string) error {
		k := key{t, id}
		got := sums[k]
		delete(sums, k)
		if got != amount {
			return fmt.Errorf("%s %s: its %s entries sum to %d, want %d", what, id, t, got, amount)
		}
		return nil
	}
	if0 := func(ok bool, v int64) int64 {
		if ok {
			return v
		}
		return 0
	}
	for _, cmd := range cmds {
		var err error
		switch cmd.kind {
		case simEvent:
			err = want(wallet.EntryUsage, cmd.id, if0(cmd.done, -simEventCost), "event")
		case simTopUp:
			if err = want(wallet.EntryTopUp, cmd.id, if0(cmd.done, cmd.amount), "top-up"); err == nil {
				err = want(wallet.EntryTopUpReversal, cmd.id, if0(cmd.reversed, -cmd.amount), "top-up")
			}
		case simAdjust:
			err = want(wallet.EntryAdjustment, cmd.id, if0(cmd.done, cmd.amount), "adjustment")
		case simHold:
			if err = want(wallet.EntryHold, cmd.id, if0(cmd.done, -cmd.amount), "hold"); err == nil && cmd.released {
				err = want(wallet.EntryHoldRelease, cmd.id, cmd.amount, "released hold")
			}
			delete(sums, key{wallet.EntryHoldRelease, cmd.id}) // ended by an event or its expiry, or still active
		}
		if err != nil {
			return fmt.Errorf("%w (sent %s)", err, time.Duration(cmd.sentAt-simEpoch))
		}
	}
	for k, sum := range sums {
		if sum != 0 && k.t != wallet.EntryHoldRelease {
			return fmt.Errorf("%s entries of %s, which nobody sent or which was not applied, sum to %d", k.t, k.id, sum)
		}
	}
	return nil
}
