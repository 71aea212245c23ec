package bench

import (
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// The correctness check every run ends with, for meterd and every baseline
// alike: the system's own state, read back after the run, against what the
// system answered during it. A system that answers fast but loses, doubles or
// invents a charge fails the run, whatever its throughput.
//
// What is recorded during the run (Acks): for every (customer, event id),
// every answer the system gave for it, whichever request carried it. One
// event can be answered more than once (a client resends a request that got
// no answer; a scenario repeats a batch on purpose). The answers fold into
// one of three classes:
//
//   - applied: at least one answer was charged or duplicate. Every such
//     answer must give the same charge ("answers differ"), and at most one
//     may be charged (a second charged answer is the system charging the
//     wallet twice, by its own word: "charged twice"). The event's charge
//     is the charged answer's (the one that moved the balance), else a
//     duplicate's; the log keeps no order between requests, and none is
//     needed.
//   - rejected: every answer was rejected. Nothing was applied.
//   - unanswered: no applied answer, and at least one request carrying it
//     got no answer at all (Apply returned an error). The system may have
//     applied it before the failure or not: both are correct.
//
// What is read after the run (Observe): each customer's balance and ledger.
//
// What must hold (Verify), per customer:
//
//  1. Every applied event has exactly one ledger row, of the amount the
//     system answered ("missing from the ledger", "recorded twice",
//     "amount differs"); one answered with a charge of 0 may have none.
//  2. A rejected event has no ledger row, nor has an event the run never
//     sent ("in the ledger, not acknowledged").
//  3. An unanswered event has at most one ledger row, of any amount.
//  4. initial - balance == the applied events' charges + the amounts of
//     the unanswered events' rows ("balance differs").
//
// Rules 3 and 4 together are how an unanswered event is accounted for
// without a false alarm either way: the system's own ledger row says whether
// it was applied, and by how much, and the balance must then agree with that
// row to the unit. So the only freedom an unanswered event gives a system is
// the one the System contract grants (all of the event, or none of it): a
// drop with no row, or a row with no drop, still fails rule 4. The row's
// amount is not compared with Event.Charge, because meterd prices events
// itself and the check judges each system by its own answers.
//
// The resend check (Resend) then takes a bounded sample of answered requests
// (Acks keeps at most requestsMax, spread evenly over the run: every k-th
// request, k doubling whenever the sample fills, so resending stays a
// few seconds however long the run was), resends each request's applied
// events, and requires each to answer duplicate with its original charge,
// and every balance the sample touches to stay as it was. Rejected events
// are left out of the resend: a system keeps no record of a rejection
// (meterd does not), so a resent rejected event may rightly be charged now,
// which proves nothing and moves the balance. And Check runs Resend after
// Verify, so that what Verify judges is the state the run left, not one the
// check itself changed (a wrong system may charge a resent event again).
//
// ClickHouse: the same Verify applies to any ledger view. With ClickHouse
// configured, an Observed whose ledgers are read from ClickHouse's
// ledger_entries (one row per event id, as LedgerRow) and whose balances are
// those meterd reported checks that ClickHouse's totals match; reading it is
// the caller's part.

// Bounds of the check.
const (
	ackShardCount         = 64 // lock shards of Acks
	ackChunkBits          = 13
	ackChunkRecords       = 1 << ackChunkBits // records per chunk of the answer log (384 KiB)
	problemsReportedMax   = 100               // problems a Report keeps in full; all are counted
	observeWorkersMax     = 8                 // customers read at once by Observe
	ResendRequestsDefault = 512               // a good NewAcks sample: resent one request at a time
)

// ProblemKind says what a Problem is.
type ProblemKind uint8

// The kinds of problem. The names are the words a report prints.
const (
	KindBalance        ProblemKind = iota + 1 // the wallet's drop is not its acknowledged charges
	KindMissing                               // an applied event has no ledger row
	KindRecordedTwice                         // an event has more than one ledger row
	KindAmount                                // the ledger row's amount is not the answered charge
	KindUnacknowledged                        // a ledger row for a rejected or never-sent event
	KindChargedTwice                          // answered charged more than once (in the run or on resend)
	KindAnswersDiffer                         // two applied answers gave different charges
	KindNotDuplicate                          // a resent applied event was not answered duplicate
	KindBalanceMoved                          // a balance changed when acknowledged events were resent
	KindUnobserved                            // a customer with acknowledged events was not read back
	KindCheckFailed                           // the check could not read or resend
)

var problemKindNames = [...]string{
	KindBalance:        "balance differs",
	KindMissing:        "missing from the ledger",
	KindRecordedTwice:  "recorded twice",
	KindAmount:         "amount differs",
	KindUnacknowledged: "in the ledger, not acknowledged",
	KindChargedTwice:   "charged twice",
	KindAnswersDiffer:  "answers differ",
	KindNotDuplicate:   "resend not answered duplicate",
	KindBalanceMoved:   "balance moved on resend",
	KindUnobserved:     "not observed",
	KindCheckFailed:    "check failed",
}

func (k ProblemKind) String() string {
	if int(k) < len(problemKindNames) && problemKindNames[k] != "" {
		return problemKindNames[k]
	}
	return fmt.Sprintf("ProblemKind(%d)", uint8(k))
}

// Problem is one way a run was not correct.
type Problem struct {
	Customer string // "" when the problem is the check's own
	EventID  string // "" when the problem is the customer's wallet as a whole
	Kind     ProblemKind
	Detail   string // the amounts involved
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Customer != "" {
		b.WriteString("customer " + p.Customer)
		if p.EventID != "" {
			b.WriteString(", event " + p.EventID)
		}
		b.WriteString(": ")
	}
	b.WriteString(p.Kind.String())
	if p.Detail != "" {
		b.WriteString(" (" + p.Detail + ")")
	}
	return b.String()
}

// problemList collects problems, keeping the first max (all when max < 0)
// and counting every one.
type problemList struct {
	max   int
	list  []Problem
	total int
}

func (l *problemList) add(p ...Problem) {
	for _, q := range p {
		l.total++
		if l.max < 0 || len(l.list) < l.max {
			l.list = append(l.list, q)
		}
	}
}

// sortProblems orders one customer's problems: the wallet's first, then by
// event id.
func sortProblems(ps []Problem) {
	slices.SortFunc(ps, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Customer, b.Customer), cmp.Compare(a.EventID, b.EventID),
			cmp.Compare(a.Kind, b.Kind))
	})
}

// ackEntry folds every answer given for one event, whatever order the log
// holds them in (the order of requests in different shards is not kept).
// 32 bytes.
type ackEntry struct {
	chargedCharge int64 // a charged answer's charge; valid when charged > 0
	dupCharge     int64 // a duplicate answer's charge; valid when duplicate > 0
	otherCharge   int64 // another answer's, of the same status, that differs; valid when differs
	charged       uint8 // answers of each status, saturating at 255
	duplicate     uint8
	rejected      uint8
	unknown       uint8
	differs       bool // two charged, or two duplicate, answers gave different charges
}

func saturatingInc(n uint8) uint8 {
	if n < 255 {
		n++
	}
	return n
}

func (e *ackEntry) add(r Result) {
	switch r.Status {
	case StatusCharged:
		e.addCharge(&e.chargedCharge, e.charged, r.Charge)
		e.charged = saturatingInc(e.charged)
	case StatusDuplicate:
		e.addCharge(&e.dupCharge, e.duplicate, r.Charge)
		e.duplicate = saturatingInc(e.duplicate)
	case StatusRejected:
		e.rejected = saturatingInc(e.rejected)
	default:
		e.unknown = saturatingInc(e.unknown)
	}
}

func (e *ackEntry) addCharge(first *int64, seen uint8, charge int64) {
	switch {
	case seen == 0:
		*first = charge
	case charge != *first && !e.differs:
		e.differs, e.otherCharge = true, charge
	}
}

// charge is the applied event's charge: the charged answer's, which is the
// one that moved the balance, else a duplicate answer's.
func (e *ackEntry) charge() int64 {
	if e.charged > 0 {
		return e.chargedCharge
	}
	return e.dupCharge
}

// answersDiffer reports two applied answers that gave different charges.
func (e *ackEntry) answersDiffer() (a, b int64, ok bool) {
	switch {
	case e.differs:
		return e.charge(), e.otherCharge, true
	case e.charged > 0 && e.duplicate > 0 && e.chargedCharge != e.dupCharge:
		return e.chargedCharge, e.dupCharge, true
	}
	return 0, 0, false
}

func (e *ackEntry) applied() bool    { return e.charged > 0 || e.duplicate > 0 }
func (e *ackEntry) unanswered() bool { return !e.applied() && e.unknown > 0 }

// ackRecord is one answer to one event, as Ack logs it. 48 bytes.
type ackRecord struct {
	customer, id string // shared with the Event, not copied
	result       Result
}

// ackShard is one lock's share of the answer log: chunks of
// ackChunkRecords records, the last one being filled.
type ackShard struct {
	mu     sync.Mutex
	chunks [][]ackRecord
	_      [32]byte // one shard per cache line
}

// Acks is what a run acknowledged: every answer to every event, and a
// bounded sample of answered requests for the resend check. The load
// generator's clients call Ack (or Unanswered) as answers arrive, from any
// number of goroutines.
//
// Ack only appends to a log (one lock per request, 48 bytes per event: the
// id and customer strings are shared with the Event, not copied), so that
// the client's cost stays flat however long the run; the answers are folded
// per event, one customer at a time, when Verify reads them.
type Acks struct {
	seed   maphash.Seed
	shards [ackShardCount]ackShard
	sample ackSample
}

// NewAcks returns an empty record that samples up to requestsMax answered
// requests for Resend (ResendRequestsDefault is a good value; 0 keeps none,
// and Resend then checks nothing).
func NewAcks(requestsMax int) *Acks {
	a := &Acks{seed: maphash.MakeSeed()}
	a.sample.requestsMax = max(0, requestsMax)
	a.sample.stride.Store(1)
	return a
}

// Ack records the answers to one request: results[i] answers events[i].
// An event without a result (results shorter than events) counts as
// unanswered. Ack copies what it keeps; the caller may reuse both slices.
func (a *Acks) Ack(events []Event, results []Result) {
	a.log(events, results)
	applied := 0
	for i := range min(len(events), len(results)) {
		if st := results[i].Status; st == StatusCharged || st == StatusDuplicate {
			applied++
		}
	}
	if applied > 0 {
		a.sample.offer(events, results, applied)
	}
}

// Unanswered records a request that got no answer (Apply returned an
// error): each of its events may or may not have been applied.
func (a *Acks) Unanswered(events []Event) {
	a.log(events, nil)
}

func (a *Acks) log(events []Event, results []Result) {
	if len(events) == 0 {
		return
	}
	s := &a.shards[maphash.String(a.seed, events[0].ID)%ackShardCount]
	s.mu.Lock()
	for i := range events {
		var r Result // StatusUnknown
		if i < len(results) {
			r = results[i]
		}
		n := len(s.chunks)
		if n == 0 || len(s.chunks[n-1]) == ackChunkRecords {
			s.chunks = append(s.chunks, make([]ackRecord, 0, ackChunkRecords))
			n++
		}
		s.chunks[n-1] = append(s.chunks[n-1], ackRecord{events[i].Customer, events[i].ID, r})
	}
	s.mu.Unlock()
}

// ackIndex is the answer log grouped by customer (a counting sort of
// references to the records), built once per Verify.
type ackIndex struct {
	chunks    [][]ackRecord
	customers map[string]int // customer -> its span in spans
	spans     []ackSpan
	refs      []uint32 // chunk<<ackChunkBits | record, grouped by customer
}

type ackSpan struct{ start, end int }

func (a *Acks) index() *ackIndex {
	x := &ackIndex{customers: make(map[string]int)}
	for i := range a.shards {
		s := &a.shards[i]
		s.mu.Lock()
		x.chunks = append(x.chunks, s.chunks...) // the headers: a later Ack does not show
		s.mu.Unlock()
	}
	if len(x.chunks) > 1<<(32-ackChunkBits) {
		panic("bench: more acknowledged events than the check can index") // 2^32: memory runs out first
	}
	for _, ch := range x.chunks {
		for _, r := range ch {
			k, ok := x.customers[r.customer]
			if !ok {
				k = len(x.spans)
				x.customers[r.customer] = k
				x.spans = append(x.spans, ackSpan{})
			}
			x.spans[k].end++ // a count, for now
		}
	}
	total := 0
	for k, sp := range x.spans {
		x.spans[k] = ackSpan{start: total, end: total} // end: where the next ref goes
		total += sp.end
	}
	x.refs = make([]uint32, total)
	for ci, ch := range x.chunks {
		for ri, r := range ch {
			sp := &x.spans[x.customers[r.customer]]
			x.refs[sp.end] = uint32(ci<<ackChunkBits | ri)
			sp.end++
		}
	}
	return x
}

// fold returns the customer's events, each with its answers folded.
func (x *ackIndex) fold(customer string) map[string]ackEntry {
	k, ok := x.customers[customer]
	if !ok {
		return nil
	}
	sp := x.spans[k]
	events := make(map[string]ackEntry, sp.end-sp.start)
	for _, ref := range x.refs[sp.start:sp.end] {
		r := &x.chunks[ref>>ackChunkBits][ref&(ackChunkRecords-1)]
		e := events[r.id]
		e.add(r.result)
		events[r.id] = e
	}
	return events
}

// ackSample keeps every stride-th answered request with an applied event,
// stride doubling (and every other kept request dropped) whenever the sample
// would exceed requestsMax: between requestsMax/2 and requestsMax requests,
// evenly spread over the run.
type ackSample struct {
	requestsMax int
	seq         atomic.Uint64 // requests offered so far
	stride      atomic.Uint64 // a power of two
	mu          sync.Mutex
	requests    []sampledRequest
}

// sampledRequest is one request's applied events and their answers.
type sampledRequest struct {
	seq     uint64
	events  []Event
	results []Result
}

func (s *ackSample) offer(events []Event, results []Result, applied int) {
	if s.requestsMax == 0 {
		return
	}
	n := s.seq.Add(1) - 1
	if n%s.stride.Load() != 0 {
		return // the common case: no lock taken
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	stride := s.stride.Load()
	if n%stride != 0 {
		return // the stride grew meanwhile
	}
	req := sampledRequest{seq: n, events: make([]Event, 0, applied), results: make([]Result, 0, applied)}
	for i := range min(len(events), len(results)) {
		if st := results[i].Status; st == StatusCharged || st == StatusDuplicate {
			req.events = append(req.events, events[i])
			req.results = append(req.results, results[i])
		}
	}
	s.requests = append(s.requests, req)
	for len(s.requests) > s.requestsMax {
		stride *= 2
		s.requests = slices.DeleteFunc(s.requests, func(r sampledRequest) bool { return r.seq%stride != 0 })
	}
	s.stride.Store(stride)
}

// taken returns a copy of the sample in the order the requests were offered.
func (s *ackSample) taken() []sampledRequest {
	s.mu.Lock()
	reqs := slices.Clone(s.requests)
	s.mu.Unlock()
	slices.SortFunc(reqs, func(a, b sampledRequest) int { return cmp.Compare(a.seq, b.seq) })
	return reqs
}

// ObservedCustomer is one customer's wallet as the system holds it.
type ObservedCustomer struct {
	Balance int64 // micro-USD
	Ledger  []LedgerRow
}

// Observed is what a system holds after a run, per customer.
type Observed struct {
	Customers map[string]ObservedCustomer
}

// Observe reads every customer's balance and ledger, a few customers at a
// time (the System's methods are called from several goroutines, as the
// load generator's clients do). It fails on the first error, naming the
// customer.
func Observe(ctx context.Context, sys System, customers []string) (Observed, error) {
	views := make([]ObservedCustomer, len(customers))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(observeWorkersMax, len(customers)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(customers) {
					return
				}
				v, err := observeCustomer(ctx, sys, customers[i])
				if err != nil {
					cancel(err)
					return
				}
				views[i] = v
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return Observed{}, err
	}
	obs := Observed{Customers: make(map[string]ObservedCustomer, len(customers))}
	for i, c := range customers {
		obs.Customers[c] = views[i]
	}
	return obs, nil
}

func observeCustomer(ctx context.Context, sys System, customer string) (ObservedCustomer, error) {
	bal, err := sys.Balance(ctx, customer)
	if err != nil {
		return ObservedCustomer{}, fmt.Errorf("%s: balance of customer %s: %w", sys.Name(), customer, err)
	}
	rows, err := sys.Ledger(ctx, customer)
	if err != nil {
		return ObservedCustomer{}, fmt.Errorf("%s: ledger of customer %s: %w", sys.Name(), customer, err)
	}
	return ObservedCustomer{Balance: bal, Ledger: rows}, nil
}

// Verify checks what a system holds against what it acknowledged (the rules
// are in this file's opening comment); every customer started with initial
// micro-USD. It returns every problem, ordered by customer then event.
func Verify(acks *Acks, initial int64, obs Observed) []Problem {
	l := problemList{max: -1}
	verify(acks, initial, obs, &l)
	return l.list
}

// verifyCounts is what verify saw, for the report.
type verifyCounts struct {
	customers, applied, rejected, unanswered, unansweredApplied int
}

func verify(acks *Acks, initial int64, obs Observed, out *problemList) verifyCounts {
	var n verifyCounts
	idx := acks.index()
	customers := make([]string, 0, len(idx.customers)+len(obs.Customers))
	for c := range idx.customers {
		customers = append(customers, c)
	}
	for c := range obs.Customers {
		if _, ok := idx.customers[c]; !ok {
			customers = append(customers, c)
		}
	}
	slices.Sort(customers)
	n.customers = len(customers)
	for _, c := range customers {
		view, ok := obs.Customers[c]
		if !ok {
			out.add(Problem{Customer: c, Kind: KindUnobserved, Detail: "acknowledged events, but no balance or ledger read"})
			continue
		}
		ps := verifyCustomer(idx.fold(c), c, initial, view, &n)
		sortProblems(ps)
		out.add(ps...)
	}
	return n
}

// ledgerEntry is what one customer's ledger holds for one event id.
type ledgerEntry struct {
	rows          int
	first, second int64 // the first two rows' amounts
}

func indexLedger(rows []LedgerRow) map[string]ledgerEntry {
	idx := make(map[string]ledgerEntry, len(rows))
	for _, r := range rows {
		e := idx[r.EventID]
		switch e.rows {
		case 0:
			e.first = r.Amount
		case 1:
			e.second = r.Amount
		}
		e.rows++
		idx[r.EventID] = e
	}
	return idx
}

// verifyCustomer checks one customer: events are its acknowledged events,
// view what the system holds.
func verifyCustomer(events map[string]ackEntry, c string, initial int64, view ObservedCustomer, n *verifyCounts) []Problem {
	var ps []Problem
	ledger := indexLedger(view.Ledger)
	var appliedSum, unansweredSum int64
	for id, e := range events {
		ps = appendAnswerProblems(ps, c, id, &e)
		row := ledger[id]
		switch {
		case e.applied():
			n.applied++
			appliedSum += e.charge()
			ps = appendAppliedRowProblems(ps, c, id, e.charge(), row)
		case e.unanswered():
			n.unanswered++
			if row.rows > 0 {
				n.unansweredApplied++
				unansweredSum += row.first
			}
			if row.rows > 1 {
				ps = append(ps, Problem{c, id, KindRecordedTwice, rowsDetail(row) + "; unanswered"})
			}
		default:
			n.rejected++
			if row.rows > 0 {
				ps = append(ps, Problem{c, id, KindUnacknowledged, rowsDetail(row) + "; answered rejected"})
			}
		}
	}
	for id, row := range ledger {
		if _, ok := events[id]; !ok {
			ps = append(ps, Problem{c, id, KindUnacknowledged, rowsDetail(row) + "; never answered"})
		}
	}
	if drop, want := initial-view.Balance, appliedSum+unansweredSum; drop != want {
		detail := fmt.Sprintf("dropped %d, acknowledged charges %d", drop, appliedSum)
		if unansweredSum != 0 {
			detail += fmt.Sprintf(" + unanswered events in the ledger %d", unansweredSum)
		}
		ps = append(ps, Problem{c, "", KindBalance, detail + fmt.Sprintf(": %+d", drop-want)})
	}
	return ps
}

// appendAnswerProblems names an event the system itself answered
// inconsistently.
func appendAnswerProblems(ps []Problem, c, id string, e *ackEntry) []Problem {
	if e.charged > 1 {
		ps = append(ps, Problem{c, id, KindChargedTwice, fmt.Sprintf("answered charged %d times", e.charged)})
	}
	if a, b, ok := e.answersDiffer(); ok {
		ps = append(ps, Problem{c, id, KindAnswersDiffer, fmt.Sprintf("answered %d and %d", a, b)})
	}
	return ps
}

func appendAppliedRowProblems(ps []Problem, c, id string, charge int64, row ledgerEntry) []Problem {
	switch {
	case row.rows == 0 && charge == 0:
		return ps // nothing moved: a system need not record it
	case row.rows == 0:
		return append(ps, Problem{c, id, KindMissing, fmt.Sprintf("answered %d", charge)})
	case row.rows > 1:
		return append(ps, Problem{c, id, KindRecordedTwice, rowsDetail(row) + fmt.Sprintf("; answered %d", charge)})
	case row.first != charge:
		return append(ps, Problem{c, id, KindAmount, fmt.Sprintf("ledger %d, answered %d", row.first, charge)})
	}
	return ps
}

func rowsDetail(row ledgerEntry) string {
	switch row.rows {
	case 1:
		return fmt.Sprintf("ledger %d", row.first)
	case 2:
		return fmt.Sprintf("2 ledger rows: %d, %d", row.first, row.second)
	}
	return fmt.Sprintf("%d ledger rows: %d, %d, ...", row.rows, row.first, row.second)
}

// Resend resends the sampled requests' applied events, one request at a
// time, and requires each event to answer duplicate with its original
// charge, and the balances of the customers involved to stay as they were.
// Run it after Verify (Check does): a wrong system may charge again.
func Resend(ctx context.Context, sys System, acks *Acks) []Problem {
	l := problemList{max: -1}
	resend(ctx, sys, acks, &l)
	return l.list
}

// resend returns the number of events resent.
func resend(ctx context.Context, sys System, acks *Acks, out *problemList) int {
	reqs := acks.sample.taken()
	before, err := sampleBalances(ctx, sys, reqs)
	if err != nil {
		out.add(Problem{Kind: KindCheckFailed, Detail: "resend: " + err.Error()})
		return 0
	}
	resent := 0
	var results []Result
	for _, req := range reqs {
		if ctx.Err() != nil {
			out.add(Problem{Kind: KindCheckFailed, Detail: "resend: " + context.Cause(ctx).Error()})
			return resent
		}
		results = slices.Grow(results[:0], len(req.events))[:len(req.events)]
		clear(results)
		err := sys.Apply(ctx, req.events, results)
		resent += len(req.events)
		out.add(resendProblems(req.events, req.results, results, err)...)
	}
	after, err := sampleBalances(ctx, sys, reqs)
	if err != nil {
		out.add(Problem{Kind: KindCheckFailed, Detail: "resend: " + err.Error()})
		return resent
	}
	out.add(balanceMoves(before, after)...)
	return resent
}

// sampleBalances reads the balance of every customer in the sample.
func sampleBalances(ctx context.Context, sys System, reqs []sampledRequest) (map[string]int64, error) {
	bal := make(map[string]int64)
	for _, r := range reqs {
		for _, ev := range r.events {
			if _, ok := bal[ev.Customer]; ok {
				continue
			}
			b, err := sys.Balance(ctx, ev.Customer)
			if err != nil {
				return nil, fmt.Errorf("%s: balance of customer %s: %w", sys.Name(), ev.Customer, err)
			}
			bal[ev.Customer] = b
		}
	}
	return bal, nil
}

// balanceMoves names each customer whose balance differs between the two
// readings, in customer order.
func balanceMoves(before, after map[string]int64) []Problem {
	var ps []Problem
	for c, b := range before {
		if a := after[c]; a != b {
			ps = append(ps, Problem{c, "", KindBalanceMoved, fmt.Sprintf("%d before, %d after: %+d", b, a, a-b)})
		}
	}
	sortProblems(ps)
	return ps
}

// resendProblems compares the answers to a resent request (got, err) with
// the original answers: each event must be answered duplicate with the
// original charge.
func resendProblems(events []Event, original, got []Result, err error) []Problem {
	var ps []Problem
	for i, ev := range events {
		p := Problem{Customer: ev.Customer, EventID: ev.ID}
		want := original[i].Charge
		switch g := got[i]; {
		case err != nil:
			p.Kind, p.Detail = KindCheckFailed, "resend got no answer: "+err.Error()
		case g.Status == StatusDuplicate && g.Charge == want:
			continue
		case g.Status == StatusDuplicate:
			p.Kind, p.Detail = KindAnswersDiffer, fmt.Sprintf("answered %d, on resend duplicate of %d", want, g.Charge)
		case g.Status == StatusCharged:
			p.Kind, p.Detail = KindChargedTwice, fmt.Sprintf("answered %d, charged again on resend: %d", want, g.Charge)
		default:
			p.Kind, p.Detail = KindNotDuplicate, fmt.Sprintf("answered %d, on resend %s", want, g.Status)
		}
		ps = append(ps, p)
	}
	return ps
}

// Report is the outcome of one system's check.
type Report struct {
	System            string
	Customers         int // customers checked
	EventsApplied     int // events acknowledged charged (or duplicate)
	EventsRejected    int
	EventsUnanswered  int // events whose every request failed
	UnansweredApplied int // of those, found applied in the ledger
	EventsResent      int
	Problems          []Problem // the first problemsReportedMax: Verify's by customer then event, then Resend's
	ProblemsTotal     int
}

// OK reports whether the run was correct.
func (r *Report) OK() bool { return r.ProblemsTotal == 0 }

func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d customers, %d events applied, %d rejected, %d unanswered (%d of them applied), %d resent: ",
		r.System, r.Customers, r.EventsApplied, r.EventsRejected, r.EventsUnanswered, r.UnansweredApplied, r.EventsResent)
	if r.OK() {
		b.WriteString("correct")
		return b.String()
	}
	fmt.Fprintf(&b, "%d problems", r.ProblemsTotal)
	for _, p := range r.Problems {
		b.WriteString("\n  " + p.String())
	}
	if more := r.ProblemsTotal - len(r.Problems); more > 0 {
		fmt.Fprintf(&b, "\n  ... and %d more", more)
	}
	return b.String()
}

// Check is the end of every run: Observe, Verify, then Resend (in that
// order, see Resend). customers are the run's customers, each set up with
// initial micro-USD.
func Check(ctx context.Context, sys System, acks *Acks, customers []string, initial int64) Report {
	r := Report{System: sys.Name()}
	l := problemList{max: problemsReportedMax}
	if obs, err := Observe(ctx, sys, customers); err != nil {
		l.add(Problem{Kind: KindCheckFailed, Detail: "observe: " + err.Error()})
	} else {
		n := verify(acks, initial, obs, &l)
		r.Customers, r.EventsApplied, r.EventsRejected = n.customers, n.applied, n.rejected
		r.EventsUnanswered, r.UnansweredApplied = n.unanswered, n.unansweredApplied
		r.EventsResent = resend(ctx, sys, acks, &l)
	}
	r.Problems, r.ProblemsTotal = l.list, l.total
	return r
}
