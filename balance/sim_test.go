package balance

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/meterd/meterd/meter"
)

// TestSimulatedCrashes drives the whole engine (shards, group commit, the
// idempotency index and its background build, recovery) on Pebble's
// in-memory file system that keeps only what was synced when it "crashes"
// (vfs.NewCrashableMem, CrashClone), from one seed. The seed picks what
// each worker does (batch sizes, customers, when to resend an earlier id or
// top up), when each crash happens (in events sent), how much unsynced data
// survives it, and the shard count of each restart. The goroutines'
// interleaving is not the seed's, and with it which ids the workers draw and
// which earlier command a resend repeats: a failure prints the seed, and a
// rerun with it replays the same shape of run, not the same schedule.
//
// After every crash and recovery:
//   - every command acknowledged before the crash is there: its resend is a
//     duplicate with its original charge;
//   - every command in doubt (sent, not acknowledged before the crash) is
//     resent, and applied then if it was not;
//   - so every command ever sent is applied exactly once, and each wallet's
//     available balance is its top-ups less 40 credits per distinct event;
//   - the ledger of every account sums to its available balance.
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
	t.Logf("seed %d: %d events (%d resends), %d top-ups, %d crashes (%d during a replay), %d commands in doubt resolved, %d log commands replayed",
		seed, sim.nEvents, sim.nResends, sim.nTopUps, sim.crashes, sim.replayCrashes, sim.inDoubt, sim.replayed)
	if sim.crashes >= 10 && sim.replayed == 0 {
		t.Errorf("seed %d: %d crashes and no recovery replayed the command log: the test does not reach replay", seed, sim.crashes)
	}
}

const (
	simCustomers   = 64
	simEventCost   = 40 // enginePricing: image_generated costs 40 CREDITS
	simWorkers     = 4
	simTopUpAmount = 1 << 40
)

// simCmd is one command the simulation sent: an event or a top-up.
type simCmd struct {
	customer int
	id       string
	topUp    int64  // the amount, for a top-up; 0 for an event
	sends    int    // times put in a request
	charged  int    // answers that applied it, since the last recovery resolved it
	acked    uint64 // the ackSeq of its first acknowledgement; 0 = none yet
}

type sim struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand // the main goroutine's; each worker has its own, from it
	fs    *vfs.MemFS
	dir   string
	clock *testClock

	mu      sync.Mutex
	cmds    []*simCmd               // every command sent, in the order sent
	ackSeq  uint64                  // acknowledgements recorded so far; simCmd.acked is its value at the command's
	recent  [simCustomers][]*simCmd // a few commands of each customer, for resends
	nextID  atomic.Int64
	stopped atomic.Bool

	nEvents, nResends, nTopUps, crashes, inDoubt int
	replayed, replayCrashes                      int        // log commands replayed at recoveries; crashes in the middle of one
	midReplay                                    *vfs.MemFS // the file system as a crash during the last open's replay would leave it
}

func newSim(t *testing.T, seed uint64) *sim {
	s := &sim{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), fs: vfs.NewCrashableMem(),
		dir: t.TempDir(), clock: &testClock{}}
	s.clock.ns.Store(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano())
	return s
}

func (s *sim) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("seed %d: "+format, append([]any{s.seed}, args...)...)
}

func (s *sim) open() *Engine {
	s.t.Helper()
	// Checkpoints from every group to none before Close, and the ticker
	// that truncates the log and pokes idle shards, from often to never.
	checkpoint := []time.Duration{time.Millisecond, 20 * time.Millisecond, time.Second, time.Hour}[s.rng.IntN(4)]
	ticker := []time.Duration{2 * time.Millisecond, 50 * time.Millisecond, time.Hour}[s.rng.IntN(3)]
	midReplay := s.rng.IntN(4) == 0
	cloneSeed := s.rng.Uint64()
	s.midReplay = nil
	e, err := Open(Options{Dir: s.dir, Shards: 1 + s.rng.IntN(4), QueueMax: 64, JanitorInterval: time.Hour, TimerInterval: ticker,
		CheckpointInterval: checkpoint,
		ReserveBytes:       1 << 20, DefaultPricing: []byte(enginePricing), Clock: s.clock,
		Log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		fs:        s.fs,
		diskAvail: func() (uint64, error) { return 1 << 40, nil },
		exit: func(code int) {
			panic(fmt.Sprintf("seed %d: the engine stopped the process (exit %d); see its log", s.seed, code))
		},
		replayed: func(events int) {
			s.replayed += events
			if midReplay && events > 0 {
				// What a crash in the middle of recovery leaves: the log
				// replayed in memory, nothing of it written.
				s.midReplay = s.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(cloneSeed, 3))})
			}
		},
	})
	if err != nil {
		s.fatalf("open: %v", err)
	}
	return e
}

func simCustomer(i int) string { return "sim-" + strconv.Itoa(i) }

// event is an event command as the engine takes it; every send is the same.
func (c *simCmd) event() EventIn {
	return EventIn{Event: &meter.Event{ID: c.id, CustomerID: simCustomer(c.customer), EventType: "image_generated"}, Hash: simHash(c.id)}
}

// sendTopUp sends a top-up command; every send is the same.
func (c *simCmd) sendTopUp(e *Engine) (TopUpResult, error) {
	return e.TopUp(simCustomer(c.customer), &TopUpCmd{ID: c.id, Account: "default", Asset: "CREDITS", Amount: c.topUp}, simHash(c.id))
}

// simHash is a command's content hash: the same for every send of an id.
func simHash(id string) (h [16]byte) {
	binary.LittleEndian.PutUint64(h[:], uint64(len(id)))
	copy(h[8:], id)
	return h
}

func (s *sim) run(events int) {
	e := s.open()
	for c := range simCustomers {
		if _, err := e.PutCustomer(simCustomer(c), Settings{}); err != nil {
			s.fatalf("put customer: %v", err)
		}
		cmd := &simCmd{customer: c, id: "top-start", topUp: simTopUpAmount, sends: 1, charged: 1}
		s.remember(cmd)
		if _, err := cmd.sendTopUp(e); err != nil {
			s.fatalf("top-up: %v", err)
		}
		s.ackSeq++
		cmd.acked = s.ackSeq
	}
	for s.nEvents < events {
		// One epoch: workers send commands until the crash.
		budget := 1 + s.rng.IntN(max(1, min(events-s.nEvents, 100_000)))
		seeds := make([]uint64, simWorkers)
		for i := range seeds {
			seeds[i] = s.rng.Uint64()
		}
		s.stopped.Store(false)
		var sent atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, simWorkers)
		for w := range simWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.work(e, rand.New(rand.NewPCG(seeds[w], uint64(w))), &sent, int64(budget)); err != nil {
					errs <- err
				}
			}()
		}
		workersDone := make(chan struct{})
		go func() { wg.Wait(); close(workersDone) }()
		// The crash: at a point the seed picks, while the workers run.
		crashAt := int64(s.rng.IntN(budget + 1))
	wait:
		for sent.Load() < crashAt {
			select {
			case <-workersDone:
				break wait
			case <-time.After(50 * time.Microsecond):
			}
		}
		s.mu.Lock()
		durable := s.ackSeq // every acknowledgement recorded so far came after its fsync
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
		s.crashes++
		s.nEvents += int(sent.Load())
		s.fs = clone
		s.clock.advance(time.Second)
		e = s.open()
		if s.midReplay != nil {
			// A crash while the log was being replayed: recover from that.
			e.Close()
			s.fs = s.midReplay
			s.replayCrashes++
			e = s.open()
		}
		if s.rng.IntN(4) == 0 {
			// A crash right after recovery, while the index may still be building.
			clone := s.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: s.rng.IntN(101), RNG: rand.New(rand.NewPCG(s.rng.Uint64(), 2))})
			e.Close()
			s.fs = clone
			e = s.open()
		}
		s.check(e, durable, s.nEvents >= events)
	}
	e.Close()
}

// work sends commands until the crash or the epoch's budget: batches of
// events of random customers, a tenth of them resends, and now and then a
// top-up or its resend.
func (s *sim) work(e *Engine, rng *rand.Rand, sent *atomic.Int64, budget int64) error {
	for !s.stopped.Load() && sent.Load() < budget {
		if rng.IntN(20) == 0 {
			if err := s.topUp(e, rng); err != nil {
				return err
			}
			continue
		}
		n := 1 + rng.IntN(40)
		ins := make([]EventIn, n)
		ptrs := make([]*EventIn, n)
		cmds := make([]*simCmd, n)
		s.mu.Lock()
		for i := range ins {
			c := rng.IntN(simCustomers)
			var cmd *simCmd
			if r := s.recent[c]; len(r) > 0 && rng.IntN(10) == 0 {
				if old := r[rng.IntN(len(r))]; old.topUp == 0 {
					cmd = old
					s.nResends++
				}
			}
			if cmd == nil {
				cmd = &simCmd{customer: c, id: "evt-" + strconv.FormatInt(s.nextID.Add(1), 10)}
				s.remember(cmd)
			}
			cmd.sends++
			cmds[i] = cmd
			ins[i] = cmd.event()
			ptrs[i] = &ins[i]
		}
		s.mu.Unlock()
		sent.Add(int64(n))
		if err := e.Events(ptrs); err != nil {
			if s.stopped.Load() || err == ErrOverloaded {
				continue // in doubt: resolved after the crash
			}
			return fmt.Errorf("events: %w", err)
		}
		s.mu.Lock()
		for i, in := range ins {
			cmd := cmds[i]
			if err := simAnswer(in.Result, cmd); err != nil {
				s.mu.Unlock()
				return err
			}
			if cmd.acked == 0 {
				s.ackSeq++
				cmd.acked = s.ackSeq
			}
		}
		s.mu.Unlock()
	}
	return nil
}

// simAnswer checks an event's answer (s.mu held): charged 40 once, or a
// duplicate answering the same charge when it was sent more than once.
func simAnswer(r EventResult, cmd *simCmd) error {
	switch {
	case r.Status == EventCharged:
		if cmd.charged++; cmd.charged > 1 {
			return fmt.Errorf("event %s was charged twice", cmd.id)
		}
	case r.Status == EventDuplicate && cmd.sends > 1:
	default:
		return fmt.Errorf("event %s (sent %d times, charged %d): %s %s %s", cmd.id, cmd.sends, cmd.charged,
			statusName(r.Status), r.Code, r.Message)
	}
	if len(r.Charges) != 1 || r.Charges[0].Amount != simEventCost {
		return fmt.Errorf("event %s (%s) answered charges %+v, want one of %d", cmd.id, statusName(r.Status), r.Charges, simEventCost)
	}
	return nil
}

func (s *sim) topUp(e *Engine, rng *rand.Rand) error {
	c := rng.IntN(simCustomers)
	s.mu.Lock()
	var cmd *simCmd
	for _, old := range s.recent[c] {
		if old.topUp != 0 && rng.IntN(2) == 0 {
			cmd = old
			break
		}
	}
	if cmd == nil {
		cmd = &simCmd{customer: c, id: "top-" + strconv.FormatInt(s.nextID.Add(1), 10), topUp: simTopUpAmount + rng.Int64N(1000)}
		s.remember(cmd)
	}
	cmd.sends++
	s.mu.Unlock()
	res, err := cmd.sendTopUp(e)
	if err != nil {
		if s.stopped.Load() || err == ErrOverloaded {
			return nil
		}
		return fmt.Errorf("top-up %s: %w", cmd.id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !res.Replayed {
		if cmd.charged++; cmd.charged > 1 {
			return fmt.Errorf("top-up %s was applied twice", cmd.id)
		}
	}
	if cmd.acked == 0 {
		s.ackSeq++
		cmd.acked = s.ackSeq
	}
	return nil
}

// remember records a new command (s.mu held).
func (s *sim) remember(cmd *simCmd) {
	s.cmds = append(s.cmds, cmd)
	r := append(s.recent[cmd.customer], cmd)
	if len(r) > 32 {
		r = r[len(r)-32:]
	}
	s.recent[cmd.customer] = r
	if cmd.topUp != 0 {
		s.nTopUps++
	}
}

// check runs after a recovery: commands acknowledged at or before durable
// are there, those in doubt are resolved by resending them, and then every
// wallet agrees with every command applied exactly once. The ledgers of
// eight customers are summed (of all of them, when last), since reading
// every ledger after every crash would make the run quadratic.
func (s *sim) check(e *Engine, durable uint64, last bool) {
	s.t.Helper()
	var sure, doubt []*simCmd
	for _, cmd := range s.cmds {
		if cmd.acked != 0 && cmd.acked <= durable {
			sure = append(sure, cmd)
		} else {
			doubt = append(doubt, cmd)
		}
	}
	// Acknowledged before the crash: a sample each time (all of the last
	// epoch's, and some older), everything at the end is covered by the
	// balance check below.
	sample := sure
	if len(sample) > 2000 {
		sample = make([]*simCmd, 0, 2000)
		for range 2000 {
			sample = append(sample, sure[s.rng.IntN(len(sure))])
		}
	}
	for _, cmd := range sample {
		s.resend(e, cmd, true)
	}
	for _, cmd := range doubt {
		s.resend(e, cmd, false)
		s.ackSeq++
		cmd.acked = s.ackSeq
	}
	// Every command is now applied exactly once (the balances below say
	// so): a later answer that applies one again is a double charge.
	for _, cmd := range s.cmds {
		cmd.charged = 1
	}
	s.inDoubt += len(doubt)

	want := make([]int64, simCustomers)
	for _, cmd := range s.cmds {
		if cmd.topUp != 0 {
			want[cmd.customer] += cmd.topUp
		} else {
			want[cmd.customer] -= simEventCost
		}
	}
	for c := range simCustomers {
		w, err := e.Wallet(simCustomer(c))
		if err != nil {
			s.fatalf("after crash %d: wallet %d: %v", s.crashes, c, err)
		}
		a := w.Account("default:CREDITS")
		got := int64(0)
		if a != nil {
			got = a.Available()
		}
		if got != want[c] {
			s.fatalf("after crash %d: %s available %d, want %d (every command applied once)", s.crashes, simCustomer(c), got, want[c])
		}
		if !last && s.rng.IntN(simCustomers/8) != 0 {
			continue
		}
		if sum := s.ledgerSum(e, simCustomer(c)); sum != got {
			s.fatalf("after crash %d: %s ledger sums to %d, available %d", s.crashes, simCustomer(c), sum, got)
		}
	}
}

// resend sends cmd again; one acknowledged before the crash must be a
// duplicate (a replayed top-up), one in doubt may be either.
func (s *sim) resend(e *Engine, cmd *simCmd, acked bool) {
	s.t.Helper()
	if cmd.topUp != 0 {
		res, err := cmd.sendTopUp(e)
		if err != nil {
			s.fatalf("after crash %d: resending top-up %s: %v", s.crashes, cmd.id, err)
		}
		if acked && !res.Replayed {
			s.fatalf("after crash %d: top-up %s, acknowledged before the crash, was lost and applied again", s.crashes, cmd.id)
		}
		return
	}
	ev := cmd.event()
	in := &ev
	if err := e.Events([]*EventIn{in}); err != nil {
		s.fatalf("after crash %d: resending %s: %v", s.crashes, cmd.id, err)
	}
	r := in.Result
	switch {
	case r.Status == EventDuplicate:
	case r.Status == EventCharged && !acked:
	case r.Status == EventCharged:
		s.fatalf("after crash %d: event %s, acknowledged before the crash, was lost and charged again", s.crashes, cmd.id)
	default:
		s.fatalf("after crash %d: resending %s: %s %s %s", s.crashes, cmd.id, statusName(r.Status), r.Code, r.Message)
	}
	if len(r.Charges) != 1 || r.Charges[0].Amount != simEventCost {
		s.fatalf("after crash %d: resending %s answered charges %+v, want one of %d", s.crashes, cmd.id, r.Charges, simEventCost)
	}
}

// ledgerSum adds up a customer's ledger entries of default:CREDITS.
func (s *sim) ledgerSum(e *Engine, customer string) int64 {
	var sum int64
	before := uint64(0)
	for {
		page, err := e.Ledger(customer, "default:CREDITS", before, 1000)
		if err != nil {
			s.fatalf("ledger of %s: %v", customer, err)
		}
		for _, en := range page.Entries {
			sum += en.Amount
		}
		if page.Next == 0 {
			return sum
		}
		before = page.Next
	}
}
