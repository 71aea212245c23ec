package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var postgresModes = []string{PostgresPlain, PostgresStrong}

// startPostgresT starts a private cluster in a fresh directory for the test,
// stopped at cleanup; it skips the test when PostgreSQL is not installed.
func startPostgresT(t testing.TB) *PostgresServer {
	t.Helper()
	if testing.Short() {
		t.Skip("starts postgres: skipped with -short")
	}
	if _, err := findPostgresBin(postgresBinGlob); err != nil {
		t.Skipf("%v; run `make test-deps` (installs Debian's postgresql)", err)
	}
	return restartPostgresT(t, postgresTempDir(t))
}

// restartPostgresT starts a cluster on dir (a new one, or the one a killed
// server left), stopped at cleanup.
func restartPostgresT(t testing.TB, dir string) *PostgresServer {
	t.Helper()
	s, err := StartPostgres(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping postgres: %v", err)
		}
	})
	return s
}

// postgresTempDir returns a directory for a cluster under the test's
// temporary directory. Run as root, the server runs as the user postgres,
// which must pass through the test's directories: they get search
// permission for everyone (0711; listing stays the owner's).
func postgresTempDir(t testing.TB) string {
	t.Helper()
	base := t.TempDir()
	if os.Geteuid() == 0 {
		for _, d := range []string{filepath.Dir(base), base} {
			if err := os.Chmod(d, 0o711); err != nil {
				t.Fatal(err)
			}
		}
	}
	return filepath.Join(base, "pg")
}

var postgresDatabases atomic.Int64

// newPostgresWalletT creates a fresh database on s and connects a wallet to
// it, closed at cleanup. It returns the database's name too.
func newPostgresWalletT(t testing.TB, s *PostgresServer, mode string, conns int) (*PostgresWallet, string) {
	t.Helper()
	name := "bench_" + mode + "_" + strconv.FormatInt(postgresDatabases.Add(1), 10)
	dsn, err := s.CreateDatabase(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return connectPostgresWalletT(t, dsn, s, mode, conns), name
}

func connectPostgresWalletT(t testing.TB, dsn string, s *PostgresServer, mode string, conns int) *PostgresWallet {
	t.Helper()
	w, err := NewPostgresWallet(dsn, mode, PostgresServerOf(s), PostgresConns(conns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// TestPostgres runs every test of the baselines on one cluster, started
// once (initdb and start take about 2 s); the last kills it.
func TestPostgres(t *testing.T) {
	s := startPostgresT(t)
	for _, mode := range postgresModes {
		t.Run("semantics/"+mode, func(t *testing.T) { testPostgresSemantics(t, s, mode) })
	}
	t.Run("bounds", func(t *testing.T) { testPostgresRefusesOutOfBounds(t, s) })
	for _, mode := range postgresModes {
		t.Run("concurrent/"+mode, func(t *testing.T) {
			w, _ := newPostgresWalletT(t, s, mode, 8)
			checkSystemRun(t, w)
		})
	}
	t.Run("kill", func(t *testing.T) { testPostgresKillKeepsAnsweredCharges(t, s) })
}

func testPostgresSemantics(t *testing.T, s *PostgresServer, mode string) {
	w, _ := newPostgresWalletT(t, s, mode, 2)
	ctx := context.Background()
	if w.Name() != "postgres-"+mode {
		t.Errorf("Name %q, want postgres-%s", w.Name(), mode)
	}
	if pids := w.PIDs(); len(pids) < 2 || pids[0] != s.PID() {
		t.Errorf("PIDs %v: want the postmaster %d first, then its children", pids, s.PID())
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
		{ID: "id with spaces, é", Customer: "c1", Charge: 4000},
		{ID: "e4", Customer: "c1", Charge: 2_000_000}, // more than c1 has: rejected
		{ID: "e5", Customer: "c1", Charge: 990_000},   // exactly what c1 has left: charged
		{ID: "e4", Customer: "c1", Charge: 1},         // a rejected id is not recorded: judged again
		{ID: "e6", Customer: "c1", Charge: 0},         // free, on an empty wallet
	}
	want := []Result{{StatusCharged, 6000}, {StatusCharged, 1_000_000}, {StatusRejected, 0},
		{StatusDuplicate, 6000}, {StatusCharged, 0}, {StatusCharged, 4000},
		{StatusRejected, 0}, {StatusCharged, 990_000}, {StatusRejected, 0}, {StatusCharged, 0}}
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
	c1Ledger := []LedgerRow{{"e1", 6000}, {"id with spaces, é", 4000}, {"e5", 990_000}, {"e6", 0}}
	checkWallet(t, w, "c1", 0, c1Ledger)
	checkWallet(t, w, "c2", 0, []LedgerRow{{"e2", 1_000_000}, {"e1", 0}})

	// Setup again leaves existing wallets alone.
	if err := w.Setup(ctx, []string{"c1", "c3"}, 5); err != nil {
		t.Fatal(err)
	}
	checkWallet(t, w, "c1", 0, c1Ledger)
	checkWallet(t, w, "c3", 5, nil)

	// A customer without a wallet is the request's error, and the request
	// is one transaction: its other events are not applied either.
	noWallet := []Event{{ID: "x", Customer: "c3", Charge: 1}, {ID: "x", Customer: "nobody", Charge: 1}}
	if err := w.Apply(ctx, noWallet, make([]Result, 2)); err == nil || !strings.Contains(err.Error(), "no wallet") {
		t.Errorf("an event of a customer without a wallet: %v, want a \"no wallet\" error", err)
	}
	checkWallet(t, w, "c3", 5, nil)
	if _, err := w.Balance(ctx, "nobody"); err == nil {
		t.Error("Balance of a customer without a wallet: no error")
	}
	// The connection that request left is usable again.
	if err := w.Apply(ctx, noWallet[:1], res[:1]); err != nil || res[0] != (Result{StatusCharged, 1}) {
		t.Errorf("after a failed request: %+v %v, want charged 1", res[0], err)
	}
}

func testPostgresRefusesOutOfBounds(t *testing.T, s *PostgresServer) {
	w, _ := newPostgresWalletT(t, s, PostgresStrong, 1)
	ctx := context.Background()
	if err := w.Setup(ctx, []string{"c"}, -1); err == nil {
		t.Error("Setup of a negative balance: no error")
	}
	for _, id := range []string{"", strings.Repeat("c", postgresIDBytesMax+1), "nul\x00", "bad\xff"} {
		if err := w.Setup(ctx, []string{id}, 1); err == nil {
			t.Errorf("Setup of customer %q: no error", id)
		}
	}
	if err := w.Setup(ctx, []string{"c"}, 100); err != nil {
		t.Fatal(err)
	}
	for name, evs := range map[string][]Event{
		"negative charge": {{ID: "e", Customer: "c", Charge: -1}},
		"empty id":        {{ID: "", Customer: "c", Charge: 1}},
		"long id":         {{ID: strings.Repeat("e", postgresIDBytesMax+1), Customer: "c", Charge: 1}},
		"NUL in id":       {{ID: "e\x00", Customer: "c", Charge: 1}},
		"id not UTF-8":    {{ID: "e\xff", Customer: "c", Charge: 1}},
		"empty customer":  {{ID: "e", Customer: "", Charge: 1}},
		"too many events": make([]Event, postgresRequestEventsMax+1),
	} {
		if err := w.Apply(ctx, evs, make([]Result, len(evs))); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if err := w.Apply(ctx, []Event{{ID: "e", Customer: "c", Charge: 1}}, nil); err == nil {
		t.Error("no room for the results: no error")
	}
	checkWallet(t, w, "c", 100, nil) // nothing was sent
	for _, mode := range []string{"", "fast"} {
		if _, err := NewPostgresWallet(s.DSN(), mode); err == nil {
			t.Errorf("mode %q: no error", mode)
		}
	}
	if _, err := NewPostgresWallet(s.DSN(), PostgresPlain, PostgresConns(postgresConnsMax+1)); err == nil {
		t.Error("too many connections: no error")
	}
}

func TestStartPostgresRefuses(t *testing.T) {
	if _, err := findPostgresBin("/nonexistent/postgresql/*/bin"); err == nil ||
		!strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("missing binaries: %v, want a message naming apt-get install postgresql", err)
	}
	if os.Geteuid() != 0 {
		return
	}
	// As root, a directory the user postgres cannot pass through is named.
	if _, err := findPostgresBin(postgresBinGlob); err != nil {
		t.Skip(err)
	}
	closed := t.TempDir() // 0700, root's
	if _, err := StartPostgres(filepath.Join(closed, "pg")); err == nil || !strings.Contains(err.Error(), closed) {
		t.Errorf("a cluster under a directory the server cannot reach: %v, want an error naming %s", err, closed)
	}
}

// testPostgresKillKeepsAnsweredCharges kills the cluster (SIGKILL to the
// postmaster and its children) while requests of both modes are in flight,
// restarts it on the same directory (crash recovery replays the WAL), and
// finds every answered charge there; balances still equal their start less
// their ledgers (requests that got no answer may or may not be in). A kill
// leaves the kernel's page cache alone, so this proves that the commit is in
// the WAL before the answer, not that it is fsynced: the fsync is argued
// from PostgreSQL's sources in postgres.go.
func testPostgresKillKeepsAnsweredCharges(t *testing.T, s *PostgresServer) {
	const (
		senders     = 4 // per mode
		eventsPer   = 20
		customers   = 8
		startingBal = 1_000_000_000
		answeredMin = 40 // requests answered per mode before the kill
	)
	ctx := context.Background()
	names := make([]string, customers)
	for i := range names {
		names[i] = "c" + strconv.Itoa(i)
	}
	type run struct {
		mode     string
		db       string
		n        atomic.Int64 // requests answered
		answered [senders][]Event
	}
	runs := make([]*run, len(postgresModes))
	var wg sync.WaitGroup
	for m, mode := range postgresModes {
		w, db := newPostgresWalletT(t, s, mode, senders)
		if err := w.Setup(ctx, names, startingBal); err != nil {
			t.Fatal(err)
		}
		r := &run{mode: mode, db: db}
		runs[m] = r
		for g := range senders {
			wg.Go(func() {
				evs := make([]Event, eventsPer)
				res := make([]Result, eventsPer)
				for q := 0; ; q++ {
					for i := range evs {
						// A request touches every customer, starting at a
						// different one each time.
						evs[i] = Event{ID: fmt.Sprintf("g%d-r%d-%d", g, q, i), Customer: names[(q+i)%customers], Charge: int64(1 + i)}
					}
					if err := w.Apply(ctx, evs, res); err != nil {
						return // the kill: this request got no answer
					}
					for i := range res {
						if res[i] != (Result{StatusCharged, evs[i].Charge}) {
							t.Errorf("%s %s: %+v, want charged", mode, evs[i].ID, res[i])
							return
						}
					}
					r.answered[g] = append(r.answered[g], evs...)
					r.n.Add(1)
				}
			})
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && slices.ContainsFunc(runs, func(r *run) bool { return r.n.Load() < answeredMin }) {
		time.Sleep(time.Millisecond)
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, r := range runs {
		if n := r.n.Load(); n < answeredMin {
			t.Fatalf("%s: only %d requests answered within 10 s before the kill", r.mode, n)
		}
	}

	s2 := restartPostgresT(t, s.Dir())
	for _, r := range runs {
		w := connectPostgresWalletT(t, s2.dsnOf(r.db), s2, r.mode, 1)
		ledgers := map[string]map[string]int64{}
		for _, c := range names {
			rows, err := w.Ledger(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			ledgers[c] = map[string]int64{}
			var sum int64
			for _, row := range rows {
				if _, dup := ledgers[c][row.EventID]; dup {
					t.Errorf("%s: ledger of %s: %s twice", r.mode, c, row.EventID)
				}
				ledgers[c][row.EventID] = row.Amount
				sum += row.Amount
			}
			if b, err := w.Balance(ctx, c); err != nil || b != startingBal-sum {
				t.Errorf("%s: balance of %s after the restart: %d %v, want %d less its ledger's %d", r.mode, c, b, err, startingBal, sum)
			}
		}
		var lost, kept int
		for _, evs := range r.answered {
			for _, e := range evs {
				if amount, ok := ledgers[e.Customer][e.ID]; !ok || amount != e.Charge {
					lost++
					if lost <= 5 {
						t.Errorf("%s: answered charge %s of %s (%d) is not in the ledger after the restart", r.mode, e.ID, e.Customer, e.Charge)
					}
					continue
				}
				kept++
			}
		}
		if lost > 0 {
			t.Errorf("%s: %d answered charges lost", r.mode, lost)
		}
		// A resent answered event is a duplicate with its charge.
		e := r.answered[0][0]
		res := make([]Result, 1)
		if err := w.Apply(ctx, []Event{e}, res); err != nil || res[0] != (Result{StatusDuplicate, e.Charge}) {
			t.Errorf("%s: %s resent after the restart: %+v %v, want duplicate %d", r.mode, e.ID, res[0], err, e.Charge)
		}
		t.Logf("%s: %d requests answered before the kill; %d answered charges all kept", r.mode, r.n.Load(), kept)
	}
}

// BenchmarkPostgresApply measures both baselines on this machine: requests
// of 100 events over 1000 customers, from 4×GOMAXPROCS goroutines (commits
// of concurrent requests share a WAL flush), against a private cluster on a
// temporary directory (its disk decides the fsync's cost), one database per
// mode. One op is one request.
func BenchmarkPostgresApply(b *testing.B) {
	const (
		eventsPer = 100
		customers = 1000
		parallel  = 4 // goroutines per GOMAXPROCS
	)
	names := make([]string, customers)
	for i := range names {
		names[i] = "c" + strconv.Itoa(i)
	}
	s := startPostgresT(b)
	for _, mode := range postgresModes {
		w, _ := newPostgresWalletT(b, s, mode, 64)
		if err := w.Setup(context.Background(), names, 1<<62); err != nil {
			b.Fatal(err)
		}
		var next atomic.Int64 // event ids, unique across rounds
		b.Run(mode, func(b *testing.B) { benchApply(b, w, names, eventsPer, parallel, &next) })
	}
}
