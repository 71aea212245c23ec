package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startRedisT starts a private redis-server on dir for the test, stopped at
// cleanup; it skips the test when redis-server is not installed.
func startRedisT(t testing.TB, dir, fsync string) *RedisServer {
	t.Helper()
	if testing.Short() {
		t.Skip("starts redis-server: skipped with -short")
	}
	if _, err := findRedisServer(redisServerBinary); err != nil {
		t.Skipf("%v; run `make test-deps` (installs Debian's redis-server)", err)
	}
	s, err := StartRedis(dir, fsync)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping redis-server: %v", err)
		}
	})
	return s
}

// newRedisWalletT connects a wallet to s for the test, closed at cleanup.
func newRedisWalletT(t testing.TB, s *RedisServer, conns int) *RedisWallet {
	t.Helper()
	w, err := NewRedisWallet(s.Addr(), "redis-"+s.Fsync(), RedisPID(s.PID()), RedisConns(conns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

func TestRedisSemantics(t *testing.T) {
	s := startRedisT(t, t.TempDir(), RedisFsyncAlways)
	w := newRedisWalletT(t, s, 2)
	ctx := context.Background()
	if w.Name() != "redis-always" || len(w.PIDs()) != 1 || w.PIDs()[0] != s.PID() {
		t.Fatalf("Name %q, PIDs %v; want redis-always, [%d]", w.Name(), w.PIDs(), s.PID())
	}
	if err := w.Setup(ctx, []string{"c1", "c2"}, 1_000_000); err != nil { // 1 USD each
		t.Fatal(err)
	}
	evs := []Event{
		{ID: "e1", Customer: "c1", Charge: 6000},
		{ID: "e2", Customer: "c2", Charge: 1_000_000}, // all of c2
		{ID: "e3", Customer: "c2", Charge: 1},         // c2 is empty now
		{ID: "e1", Customer: "c1", Charge: 6000},      // the same id again, in the same request
		{ID: "e1", Customer: "c2", Charge: 0},         // the same id, another customer: its own event
		{ID: "id with spaces", Customer: "c1", Charge: 4000},
	}
	want := []Result{{StatusCharged, 6000}, {StatusCharged, 1_000_000}, {StatusRejected, 0},
		{StatusDuplicate, 6000}, {StatusCharged, 0}, {StatusCharged, 4000}}
	res := make([]Result, len(evs))
	if err := w.Apply(ctx, evs, res); err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("event %d (%s of %s): %+v, want %+v", i, evs[i].ID, evs[i].Customer, res[i], want[i])
		}
	}

	// A later request: the duplicate answers the original charge, not its
	// own; the rejected event is judged again (and rejected again).
	again := []Event{{ID: "e1", Customer: "c1", Charge: 999}, {ID: "e3", Customer: "c2", Charge: 1}}
	res = res[:len(again)]
	if err := w.Apply(ctx, again, res); err != nil {
		t.Fatal(err)
	}
	if res[0] != (Result{StatusDuplicate, 6000}) || res[1] != (Result{StatusRejected, 0}) {
		t.Errorf("second request: %+v, want [{duplicate 6000} {rejected 0}]", res)
	}

	checkWallet(t, w, "c1", 990_000, []LedgerRow{{"e1", 6000}, {"id with spaces", 4000}})
	checkWallet(t, w, "c2", 0, []LedgerRow{{"e2", 1_000_000}, {"e1", 0}})

	// Setup again leaves existing wallets alone.
	if err := w.Setup(ctx, []string{"c1", "c3"}, 5); err != nil {
		t.Fatal(err)
	}
	checkWallet(t, w, "c1", 990_000, []LedgerRow{{"e1", 6000}, {"id with spaces", 4000}})
	checkWallet(t, w, "c3", 5, nil)

	// A customer without a wallet is the request's error.
	if err := w.Apply(ctx, []Event{{ID: "x", Customer: "nobody", Charge: 1}}, res[:1]); err == nil ||
		!strings.Contains(err.Error(), "no wallet") {
		t.Errorf("an event of a customer without a wallet: %v, want a \"no wallet\" error", err)
	}
	if _, err := w.Balance(ctx, "nobody"); err == nil {
		t.Error("Balance of a customer without a wallet: no error")
	}
}

func TestRedisRefusesOutOfBounds(t *testing.T) {
	s := startRedisT(t, t.TempDir(), RedisFsyncEverysec)
	w := newRedisWalletT(t, s, 1)
	ctx := context.Background()
	if err := w.Setup(ctx, []string{"c"}, redisAmountMicroMax+1); err == nil {
		t.Error("Setup above redisAmountMicroMax: no error")
	}
	if err := w.Setup(ctx, []string{strings.Repeat("c", redisIDBytesMax+1)}, 1); err == nil {
		t.Error("Setup of a too long customer id: no error")
	}
	if err := w.Setup(ctx, []string{"c"}, 100); err != nil {
		t.Fatal(err)
	}
	for name, evs := range map[string][]Event{
		"negative charge": {{ID: "e", Customer: "c", Charge: -1}},
		"charge too big":  {{ID: "e", Customer: "c", Charge: redisAmountMicroMax + 1}},
		"empty id":        {{ID: "", Customer: "c", Charge: 1}},
		"long id":         {{ID: strings.Repeat("e", redisIDBytesMax+1), Customer: "c", Charge: 1}},
		"empty customer":  {{ID: "e", Customer: "", Charge: 1}},
		"too many events": make([]Event, redisRequestEventsMax+1),
	} {
		if err := w.Apply(ctx, evs, make([]Result, len(evs))); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if err := w.Apply(ctx, []Event{{ID: "e", Customer: "c", Charge: 1}}, nil); err == nil {
		t.Error("no room for the results: no error")
	}
	checkWallet(t, w, "c", 100, nil) // nothing was sent
}

func TestStartRedisRefuses(t *testing.T) {
	if _, err := findRedisServer("redis-server-not-installed"); err == nil ||
		!strings.Contains(err.Error(), "apt-get install redis-server") {
		t.Errorf("a missing binary: %v, want a message naming apt-get install redis-server", err)
	}
	if _, err := StartRedis(t.TempDir(), "no"); err == nil {
		t.Error(`StartRedis with appendfsync "no": no error`)
	}
}

// TestRedisKillKeepsAnsweredCharges kills redis-server (SIGKILL) while
// requests are in flight, with appendfsync always, restarts it on the same
// directory, and finds every answered charge there; balances still equal
// their start less their ledgers (requests that got no answer may or may not
// be in). A kill leaves the kernel's page cache alone, so this proves that
// the AOF is written before the answer, not that it is fsynced: the fsync is
// argued from Redis's sources in redis.go.
func TestRedisKillKeepsAnsweredCharges(t *testing.T) {
	const (
		senders     = 4
		eventsPer   = 20
		customers   = 8
		startingBal = 1_000_000_000
		answeredMin = 40 // requests answered before the kill
	)
	dir := t.TempDir()
	s := startRedisT(t, dir, RedisFsyncAlways)
	w := newRedisWalletT(t, s, senders)
	ctx := context.Background()
	names := make([]string, customers)
	for i := range names {
		names[i] = "c" + strconv.Itoa(i)
	}
	if err := w.Setup(ctx, names, startingBal); err != nil {
		t.Fatal(err)
	}

	var answeredRequests atomic.Int64
	answered := make([][]Event, senders) // per sender: the events answered charged
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			evs := make([]Event, eventsPer)
			res := make([]Result, eventsPer)
			for r := 0; ; r++ {
				for i := range evs {
					evs[i] = Event{ID: fmt.Sprintf("g%d-r%d-%d", g, r, i), Customer: names[(r+i)%customers], Charge: int64(1 + i)}
				}
				if err := w.Apply(ctx, evs, res); err != nil {
					return // the kill: this request got no answer
				}
				for i := range res {
					if res[i] != (Result{StatusCharged, evs[i].Charge}) {
						t.Errorf("%s: %+v, want charged", evs[i].ID, res[i])
						return
					}
				}
				answered[g] = append(answered[g], evs...)
				answeredRequests.Add(1)
			}
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for answeredRequests.Load() < answeredMin && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	n := answeredRequests.Load()
	if n < answeredMin {
		t.Fatalf("only %d requests answered within 5 s before the kill", n)
	}

	s2 := startRedisT(t, dir, RedisFsyncAlways)
	w2 := newRedisWalletT(t, s2, 1)
	ledgers := map[string]map[string]int64{}
	for _, c := range names {
		rows, err := w2.Ledger(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		ledgers[c] = map[string]int64{}
		var sum int64
		for _, r := range rows {
			if _, dup := ledgers[c][r.EventID]; dup {
				t.Errorf("ledger of %s: %s twice", c, r.EventID)
			}
			ledgers[c][r.EventID] = r.Amount
			sum += r.Amount
		}
		if b, err := w2.Balance(ctx, c); err != nil || b != startingBal-sum {
			t.Errorf("balance of %s after the restart: %d %v, want %d less its ledger's %d", c, b, err, startingBal, sum)
		}
	}
	var lost, kept int
	for _, evs := range answered {
		for _, e := range evs {
			if amount, ok := ledgers[e.Customer][e.ID]; !ok || amount != e.Charge {
				lost++
				if lost <= 5 {
					t.Errorf("answered charge %s of %s (%d) is not in the ledger after the restart", e.ID, e.Customer, e.Charge)
				}
				continue
			}
			kept++
		}
	}
	if lost > 0 {
		t.Errorf("%d answered charges lost", lost)
	}
	// A resent answered event is a duplicate with its charge.
	e := answered[0][0]
	res := make([]Result, 1)
	if err := w2.Apply(ctx, []Event{e}, res); err != nil || res[0] != (Result{StatusDuplicate, e.Charge}) {
		t.Errorf("%s resent after the restart: %+v %v, want duplicate %d", e.ID, res[0], err, e.Charge)
	}
	t.Logf("%d requests answered before the kill; %d answered charges all kept", n, kept)
}

// BenchmarkRedisApply measures the Redis baseline on this machine: requests
// of 100 events, from 2×GOMAXPROCS goroutines, against a private server on a
// temporary directory (its disk decides "always"). One op is one request.
func BenchmarkRedisApply(b *testing.B) {
	const (
		eventsPer = 100
		customers = 1000
		parallel  = 2 // goroutines per GOMAXPROCS
	)
	names := make([]string, customers)
	for i := range names {
		names[i] = "c" + strconv.Itoa(i)
	}
	for _, fsync := range []string{RedisFsyncAlways, RedisFsyncEverysec} {
		// One server per policy, for every round of b.N.
		s := startRedisT(b, b.TempDir(), fsync)
		w := newRedisWalletT(b, s, 64)
		if err := w.Setup(context.Background(), names, redisAmountMicroMax); err != nil {
			b.Fatal(err)
		}
		var next atomic.Int64 // event ids, unique across rounds
		b.Run(fsync, func(b *testing.B) { benchApply(b, w, names, eventsPer, parallel, &next) })
	}
}
