package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

const checkInitial = 1_000_000 // micro-USD each test customer starts with

// checkRun is a run as the checker sees it: what was acknowledged and what
// the system holds. cleanCheckRun builds a correct one; each test then breaks
// it the way the bug under test would.
type checkRun struct {
	acks    *Acks
	events  []Event
	ledgers map[string][]LedgerRow
	drops   map[string]int64 // initial - balance, per customer
}

// cleanCheckRun: customers c1 and c2, five events each (charge 100, 200,
// ... 500), sent in requests of two, all charged, all in the ledger.
func cleanCheckRun() *checkRun {
	r := &checkRun{acks: NewAcks(ResendRequestsDefault), ledgers: map[string][]LedgerRow{}, drops: map[string]int64{}}
	for _, c := range []string{"c1", "c2"} {
		for i := 1; i <= 5; i++ {
			ev := Event{ID: fmt.Sprintf("%s-e%d", c, i), Customer: c, Model: "o3", Charge: int64(100 * i)}
			r.events = append(r.events, ev)
			r.ledgers[c] = append(r.ledgers[c], LedgerRow{EventID: ev.ID, Amount: ev.Charge})
			r.drops[c] += ev.Charge
		}
	}
	for i := 0; i < len(r.events); i += 2 {
		evs := r.events[i:min(i+2, len(r.events))]
		res := make([]Result, len(evs))
		for j, ev := range evs {
			res[j] = Result{Status: StatusCharged, Charge: ev.Charge}
		}
		r.acks.Ack(evs, res)
	}
	return r
}

func (r *checkRun) observed() Observed {
	obs := Observed{Customers: map[string]ObservedCustomer{}}
	for c, rows := range r.ledgers {
		obs.Customers[c] = ObservedCustomer{Balance: checkInitial - r.drops[c], Ledger: rows}
	}
	return obs
}

// removeRow takes the event's row out of the ledger; refund says whether
// the balance loses the charge too.
func (r *checkRun) removeRow(c, id string, refund bool) {
	i := slices.IndexFunc(r.ledgers[c], func(row LedgerRow) bool { return row.EventID == id })
	if refund {
		r.drops[c] -= r.ledgers[c][i].Amount
	}
	r.ledgers[c] = slices.Delete(r.ledgers[c], i, i+1)
}

// addRow adds a row to the ledger; charge says whether the balance drops
// by it too.
func (r *checkRun) addRow(c, id string, amount int64, charge bool) {
	r.ledgers[c] = append(r.ledgers[c], LedgerRow{EventID: id, Amount: amount})
	if charge {
		r.drops[c] += amount
	}
}

// problemKey is what a test requires of a problem: whom it names, and what.
type problemKey struct {
	customer, event string
	kind            ProblemKind
}

// requireProblems fails unless got names exactly want, each problem's
// String naming its customer and event.
func requireProblems(t *testing.T, got []Problem, want ...problemKey) {
	t.Helper()
	var keys []problemKey
	for _, p := range got {
		keys = append(keys, problemKey{p.Customer, p.EventID, p.Kind})
		s := p.String()
		if !strings.Contains(s, p.Kind.String()) || !strings.Contains(s, "customer "+p.Customer) ||
			(p.EventID != "" && !strings.Contains(s, "event "+p.EventID)) {
			t.Errorf("%q does not name its customer, event and kind", s)
		}
	}
	slices.SortFunc(keys, compareProblemKeys)
	want = slices.Clone(want)
	slices.SortFunc(want, compareProblemKeys)
	if !slices.Equal(keys, want) {
		t.Errorf("problems:\n%s\nwant %v", problemLines(got), want)
	}
}

func compareProblemKeys(a, b problemKey) int {
	return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
}

func problemLines(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString("  " + p.String() + "\n")
	}
	return b.String()
}

func TestVerifyClean(t *testing.T) {
	r := cleanCheckRun()
	requireProblems(t, Verify(r.acks, checkInitial, r.observed()))
}

// The first case: one acknowledged charge is missing from the
// ledger (and was never deducted: the system lost it).
func TestVerifyMissingCharge(t *testing.T) {
	r := cleanCheckRun()
	r.removeRow("c2", "c2-e3", true)
	ps := Verify(r.acks, checkInitial, r.observed())
	requireProblems(t, ps, problemKey{"c2", "c2-e3", KindMissing}, problemKey{"c2", "", KindBalance})
	if s := ps[0].String(); s != "customer c2: balance differs (dropped 1200, acknowledged charges 1500: -300)" {
		t.Errorf("balance problem: %s", s)
	}
	if s := ps[1].String(); s != "customer c2, event c2-e3: missing from the ledger (answered 300)" {
		t.Errorf("missing problem: %s", s)
	}
}

// The second case: the wallet was charged twice for one event.
func TestVerifyChargedTwice(t *testing.T) {
	r := cleanCheckRun()
	r.addRow("c1", "c1-e4", 400, true)
	ps := Verify(r.acks, checkInitial, r.observed())
	requireProblems(t, ps, problemKey{"c1", "c1-e4", KindRecordedTwice}, problemKey{"c1", "", KindBalance})
	if !strings.Contains(ps[0].String(), ": +400)") || !strings.Contains(ps[1].String(), "2 ledger rows: 400, 400") {
		t.Errorf("details:\n%s", problemLines(ps))
	}
}

func TestVerifyAmountDiffers(t *testing.T) {
	r := cleanCheckRun()
	r.removeRow("c1", "c1-e2", true)
	r.addRow("c1", "c1-e2", 250, true)
	requireProblems(t, Verify(r.acks, checkInitial, r.observed()),
		problemKey{"c1", "c1-e2", KindAmount}, problemKey{"c1", "", KindBalance})
}

// An event whose request got no answer may be applied or not; only a
// partial application (a drop without a row, a row without a drop) or a
// double one is a problem.
func TestVerifyUnanswered(t *testing.T) {
	unanswered := Event{ID: "c1-lost", Customer: "c1", Charge: 700}
	for _, tc := range []struct {
		name  string
		apply func(r *checkRun)
		want  []problemKey
	}{
		{"not applied", func(r *checkRun) {}, nil},
		{"applied", func(r *checkRun) { r.addRow("c1", "c1-lost", 700, true) }, nil},
		{"applied at another price", func(r *checkRun) { r.addRow("c1", "c1-lost", 650, true) }, nil},
		{"deducted, no row", func(r *checkRun) { r.drops["c1"] += 700 },
			[]problemKey{{"c1", "", KindBalance}}},
		{"row, not deducted", func(r *checkRun) { r.addRow("c1", "c1-lost", 700, false) },
			[]problemKey{{"c1", "", KindBalance}}},
		{"applied twice", func(r *checkRun) {
			r.addRow("c1", "c1-lost", 700, true)
			r.addRow("c1", "c1-lost", 700, true)
		}, []problemKey{{"c1", "c1-lost", KindRecordedTwice}, {"c1", "", KindBalance}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cleanCheckRun()
			r.acks.Unanswered([]Event{unanswered})
			tc.apply(r)
			requireProblems(t, Verify(r.acks, checkInitial, r.observed()), tc.want...)
		})
	}
}

// A client that resends an unanswered request: the later answer decides.
func TestVerifyRetriedEvents(t *testing.T) {
	r := cleanCheckRun()
	late := []Event{{ID: "c1-late", Customer: "c1", Charge: 50}, {ID: "c1-poor", Customer: "c1", Charge: 9e6}}
	r.acks.Unanswered(late)
	// The first attempt was applied after all: the resend answers duplicate.
	r.acks.Ack(late, []Result{{StatusDuplicate, 50}, {StatusRejected, 0}})
	r.addRow("c1", "c1-late", 50, true)
	requireProblems(t, Verify(r.acks, checkInitial, r.observed()))

	// The same, but the system lost the first attempt's ledger row.
	r.removeRow("c1", "c1-late", false)
	requireProblems(t, Verify(r.acks, checkInitial, r.observed()), problemKey{"c1", "c1-late", KindMissing})
}

func TestVerifyUnacknowledged(t *testing.T) {
	r := cleanCheckRun()
	r.acks.Ack([]Event{{ID: "c2-poor", Customer: "c2", Charge: 9e6}}, []Result{{Status: StatusRejected}})
	r.addRow("c2", "c2-poor", 9e5, true)
	r.addRow("c2", "c2-ghost", 10, true)
	requireProblems(t, Verify(r.acks, checkInitial, r.observed()),
		problemKey{"c2", "c2-poor", KindUnacknowledged}, problemKey{"c2", "c2-ghost", KindUnacknowledged},
		problemKey{"c2", "", KindBalance})
}

// The system's own answers contradict each other.
func TestVerifyAnswers(t *testing.T) {
	r := cleanCheckRun()
	r.acks.Ack(r.events[:1], []Result{{StatusCharged, 100}}) // c1-e1 charged again
	r.acks.Ack(r.events[1:2], []Result{{StatusDuplicate, 999}})
	requireProblems(t, Verify(r.acks, checkInitial, r.observed()),
		problemKey{"c1", "c1-e1", KindChargedTwice}, problemKey{"c1", "c1-e2", KindAnswersDiffer})
}

// The log keeps no order between requests: a duplicate answer logged before
// the charged one is no problem.
func TestVerifyAnswerOrder(t *testing.T) {
	r := cleanCheckRun()
	ev := []Event{{ID: "c2-x", Customer: "c2", Charge: 80}}
	r.acks.Ack(ev, []Result{{StatusDuplicate, 80}})
	r.acks.Ack(ev, []Result{{StatusCharged, 80}})
	r.addRow("c2", "c2-x", 80, true)
	// A free event need not be in the ledger.
	r.acks.Ack([]Event{{ID: "c2-free", Customer: "c2"}}, []Result{{StatusCharged, 0}})
	requireProblems(t, Verify(r.acks, checkInitial, r.observed()))
}

func TestVerifyUnobserved(t *testing.T) {
	r := cleanCheckRun()
	obs := r.observed()
	delete(obs.Customers, "c2")
	obs.Customers["c3"] = ObservedCustomer{Balance: checkInitial} // set up, never used
	requireProblems(t, Verify(r.acks, checkInitial, obs), problemKey{"c2", "", KindUnobserved})
}

func TestResendProblems(t *testing.T) {
	events := []Event{
		{ID: "a", Customer: "c"}, {ID: "b", Customer: "c"}, {ID: "d", Customer: "c"},
		{ID: "e", Customer: "c"}, {ID: "f", Customer: "c"},
	}
	original := []Result{{StatusCharged, 10}, {StatusDuplicate, 20}, {StatusCharged, 30}, {StatusCharged, 40}, {StatusCharged, 50}}
	got := []Result{{StatusDuplicate, 10}, {StatusDuplicate, 20}, {StatusDuplicate, 31}, {StatusCharged, 40}, {StatusRejected, 0}}
	requireProblems(t, resendProblems(events, original, got, nil),
		problemKey{"c", "d", KindAnswersDiffer}, problemKey{"c", "e", KindChargedTwice}, problemKey{"c", "f", KindNotDuplicate})
	requireProblems(t, resendProblems(events[:2], original, make([]Result, 2), errors.New("connection reset")),
		problemKey{"c", "a", KindCheckFailed}, problemKey{"c", "b", KindCheckFailed})
	requireProblems(t, balanceMoves(map[string]int64{"c": 5, "x": 7}, map[string]int64{"c": 5, "x": 3}),
		problemKey{"x", "", KindBalanceMoved})
}

// The sample stays within its bound, spread evenly over the run, and holds
// only applied events.
func TestAcksSample(t *testing.T) {
	a := NewAcks(64)
	const requests = 10_000
	for i := range requests {
		evs := []Event{{ID: strconv.Itoa(i), Customer: "c"}, {ID: strconv.Itoa(i) + "r", Customer: "c"}}
		a.Ack(evs, []Result{{StatusCharged, 1}, {StatusRejected, 0}})
	}
	a.Ack([]Event{{ID: "only-rejected", Customer: "c"}}, []Result{{StatusRejected, 0}}) // not offered
	reqs := a.sample.taken()
	if len(reqs) < 32 || len(reqs) > 64 {
		t.Fatalf("sample of %d requests, want 32..64", len(reqs))
	}
	stride := a.sample.stride.Load()
	for i, r := range reqs {
		if r.seq != uint64(i)*stride {
			t.Fatalf("request %d has seq %d, want %d (stride %d)", i, r.seq, uint64(i)*stride, stride)
		}
		if len(r.events) != 1 || r.events[0].ID != strconv.FormatUint(r.seq, 10) || r.results[0].Status != StatusCharged {
			t.Fatalf("request %d holds %v %v", i, r.events, r.results)
		}
	}
	if last := reqs[len(reqs)-1].seq; last+stride < requests {
		t.Errorf("sample ends at request %d of %d", last, requests)
	}
	if NewAcks(0).sample.taken() != nil {
		t.Error("NewAcks(0) sampled")
	}
}

// checkTestWallet is a System whose behaviour the test scripts: the
// System contract in memory, plus the one fault a test switches on. It is
// the checker's own input, not a stand-in for a real component.
type checkTestWallet struct {
	forgetIDs bool // a resend of a charged event is charged again
	mu        sync.Mutex
	balance   map[string]int64
	charged   map[[2]string]int64
	ledger    map[string][]LedgerRow
}

func (w *checkTestWallet) Name() string { return "test-wallet" }
func (w *checkTestWallet) PIDs() []int  { return nil }
func (w *checkTestWallet) Close() error { return nil }

func (w *checkTestWallet) Setup(_ context.Context, customers []string, balance int64) error {
	w.balance, w.charged, w.ledger = map[string]int64{}, map[[2]string]int64{}, map[string][]LedgerRow{}
	for _, c := range customers {
		w.balance[c] = balance
	}
	return nil
}

func (w *checkTestWallet) Apply(_ context.Context, events []Event, results []Result) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, ev := range events {
		key := [2]string{ev.Customer, ev.ID}
		if charge, ok := w.charged[key]; ok && !w.forgetIDs {
			results[i] = Result{StatusDuplicate, charge}
			continue
		}
		if w.balance[ev.Customer] < ev.Charge {
			results[i] = Result{Status: StatusRejected}
			continue
		}
		w.balance[ev.Customer] -= ev.Charge
		w.charged[key] = ev.Charge
		w.ledger[ev.Customer] = append(w.ledger[ev.Customer], LedgerRow{ev.ID, ev.Charge})
		results[i] = Result{StatusCharged, ev.Charge}
	}
	return nil
}

func (w *checkTestWallet) Balance(_ context.Context, customer string) (int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, ok := w.balance[customer]
	if !ok {
		return 0, fmt.Errorf("no customer %s", customer)
	}
	return b, nil
}

func (w *checkTestWallet) Ledger(_ context.Context, customer string) ([]LedgerRow, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ledger[customer]), nil
}

// runCheckTestWallet drives the wallet from several goroutines, as the
// load generator does, and checks it.
func runCheckTestWallet(t *testing.T, w *checkTestWallet, initial int64) Report {
	ctx := context.Background()
	customers := []string{"c1", "c2", "c3"}
	if err := w.Setup(ctx, customers, initial); err != nil {
		t.Fatal(err)
	}
	acks := NewAcks(8)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				c := customers[(g+i)%len(customers)]
				evs := []Event{
					{ID: fmt.Sprintf("g%d-%d-a", g, i), Customer: c, Charge: int64(10 + i)},
					{ID: fmt.Sprintf("g%d-%d-b", g, i), Customer: c, Charge: 60},
				}
				res := make([]Result, len(evs))
				if err := w.Apply(ctx, evs, res); err != nil {
					acks.Unanswered(evs)
					continue
				}
				acks.Ack(evs, res)
			}
		})
	}
	wg.Wait()
	return Check(ctx, w, acks, customers, initial)
}

func TestCheck(t *testing.T) {
	r := runCheckTestWallet(t, &checkTestWallet{}, 5_000) // some events rejected
	if !r.OK() || r.EventsApplied == 0 || r.EventsRejected == 0 || r.EventsResent == 0 {
		t.Fatalf("correct wallet: %s", r.String())
	}
	t.Log(r.String())

	// A wallet that forgets event ids passes the run (every id is sent
	// once) and fails the resend: each resent event is charged again.
	r = runCheckTestWallet(t, &checkTestWallet{forgetIDs: true}, 1_000_000)
	if r.OK() || r.Problems[0].Kind != KindChargedTwice || !strings.Contains(r.String(), "balance moved on resend") {
		t.Fatalf("wallet that forgets ids: %s", r.String())
	}
	t.Log(r.String())
}

func TestCheckObserveFails(t *testing.T) {
	r := Check(context.Background(), &checkTestWallet{balance: map[string]int64{}}, NewAcks(0), []string{"nobody"}, 0)
	if r.OK() || r.ProblemsTotal != 1 || r.Problems[0].Kind != KindCheckFailed ||
		!strings.Contains(r.Problems[0].Detail, "customer nobody") {
		t.Fatalf("%s", r.String())
	}
}

func TestReportCapsProblems(t *testing.T) {
	r := cleanCheckRun()
	for i := range 150 {
		r.addRow("c1", fmt.Sprintf("ghost-%03d", i), 1, false)
	}
	l := problemList{max: problemsReportedMax}
	verify(r.acks, checkInitial, r.observed(), &l)
	if len(l.list) != problemsReportedMax || l.total != 150 {
		t.Fatalf("kept %d of %d problems", len(l.list), l.total)
	}
}

// BenchmarkAcksAck is the cost a load-generator client pays per answered
// request of 100 events (one customer's), reported per event; run with
// -cpu 1,2,8 for the contention.
func BenchmarkAcksAck(b *testing.B) {
	const (
		eventsPerRequest = 100
		customerCount    = 4096
		idCount          = 1 << 20
	)
	ids := make([]string, idCount)
	for i := range ids {
		ids[i] = "evt-" + strconv.Itoa(i)
	}
	customers := make([]string, customerCount)
	for i := range customers {
		customers[i] = "cust-" + strconv.Itoa(i)
	}
	results := make([]Result, eventsPerRequest)
	for i := range results {
		results[i] = Result{StatusCharged, 1234}
	}
	acks := NewAcks(ResendRequestsDefault)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		events := make([]Event, eventsPerRequest)
		for pb.Next() {
			r := int(next.Add(1) - 1)
			c := customers[r%customerCount]
			first := (r / customerCount * eventsPerRequest) % idCount
			for i := range events {
				events[i] = Event{ID: ids[(first+i)%idCount], Customer: c}
			}
			acks.Ack(events, results)
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*eventsPerRequest), "ns/event")
}

// BenchmarkVerify is the check's own cost after a run of 1M events over
// 1,000 customers, all charged and in the ledger, reported per event
// (Observe's reads are the system's, and not in it).
func BenchmarkVerify(b *testing.B) {
	const (
		eventsPerRequest = 100
		customerCount    = 1000
		requestCount     = 10_000
	)
	acks := NewAcks(ResendRequestsDefault)
	obs := Observed{Customers: map[string]ObservedCustomer{}}
	events := make([]Event, eventsPerRequest)
	results := make([]Result, eventsPerRequest)
	for r := range requestCount {
		c := "cust-" + strconv.Itoa(r%customerCount)
		v := obs.Customers[c]
		for i := range events {
			events[i] = Event{ID: "evt-" + strconv.Itoa(r*eventsPerRequest+i), Customer: c}
			results[i] = Result{StatusCharged, 7}
			v.Ledger = append(v.Ledger, LedgerRow{events[i].ID, 7})
		}
		v.Balance = checkInitial - int64(len(v.Ledger))*7
		obs.Customers[c] = v
		acks.Ack(events, results)
	}
	b.ReportAllocs()
	for b.Loop() {
		if ps := Verify(acks, checkInitial, obs); len(ps) != 0 {
			b.Fatal(ps[0])
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*requestCount*eventsPerRequest), "ns/event")
}
