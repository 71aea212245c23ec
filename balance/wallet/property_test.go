package wallet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/meter"
)

// The reference model: a flat list of buckets of every account, sorted
// naively whenever an order is needed, with plain int64 arithmetic, plus the
// credit lifecycle (holds, plan schedules of day and week periods, auto-reload,
// balance alerts) kept just as plainly. It is written independently of
// wallet.go and lifecycle.go and shares none of their code.

type mBucket struct {
	id          string
	acct        string
	kind        Kind
	prio        int
	amount, rem int64
	eff, exp    int64
	ref         string
	alloc       int // 1 + the index of the plan allocation that granted it, else 0
}

type mAcct struct {
	debt     int64
	carry    uint64
	held     int64
	depleted bool
}

type mHold struct {
	id, acct    string
	amount, exp int64
}

// mSched is the grant schedule of one plan allocation.
// mGrant is a plan grant the model made: the allocation and its schedule
// at the time (a step may grant under a plan it then replaces).
type mGrant struct {
	alloc int
	sched mSched
}

type mSched struct {
	serial  int // unique per schedule started: the key of the at-most-once check
	anchor  int64
	length  int64 // the period, in ns: a day or a week
	last    int64 // the last period index granted or skipped
	since   int64 // nothing is granted before this instant
	prorate bool  // the next grant is prorated by the time left in its period
}

func (s *mSched) due() int64 { return max(s.anchor+(s.last+1)*s.length, s.since) }

type mReload struct {
	id, acct string
	amount   int64
	await    bool
}

type model struct {
	status      Status
	pausedUntil int64 // with StatusPaused: when it resumes by itself; 0 = never
	holdLimits  []HoldLimit
	policy      Policy
	limits      map[string]int64
	alerts10    []int64 // balance alert thresholds, in tenths of a unit (the accounts have scale 0)
	buckets     []mBucket
	all         map[string]mBucket // every bucket ever made: their order keys never change
	accts       map[string]*mAcct
	bucketSeq   uint64

	holds []mHold // active, in creation order

	plan    *Plan
	planID  string
	change  *PlanChange // scheduled at a period end
	granted []mGrant    // the plan grants of the step, in order, with their schedules
	scheds  []mSched
	serials int

	reload       *AutoReload
	pending      []*mReload // oldest first
	reloadSeq    uint64
	reloadPeriod int64
	reloadCount  int

	// What the current step is expected to produce.
	exp      []mEntry
	notes    []string // "type account"
	holdFx   []string // "id status"
	reloadFx []string // "id status"
}

// mEntry is what the model expects of one ledger entry.
type mEntry struct {
	typ    EntryType
	acct   string
	amount int64
	bucket string
	at     int64 // OccurredAt
}

func newModel() *model {
	return &model{status: StatusActive, policy: PolicyReject, limits: map[string]int64{}, accts: map[string]*mAcct{}, all: map[string]mBucket{}}
}

func mFloorDiv(a, b int64) int64 {
	if a >= 0 {
		return a / b
	}
	return -((-a + b - 1) / b)
}

func mLength(u PeriodUnit) int64 {
	if u == PeriodWeek {
		return 7 * day
	}
	return day
}

func mPrio(k Kind) int {
	return map[Kind]int{KindPromotional: 10, KindPlan: 20, KindRecharge: 30}[k]
}

// mLess is the consumption order: priority, then expiry (never last), then
// effective time, then id.
func mLess(a, b *mBucket) bool {
	key := func(b *mBucket) (int, int64, int64, string) {
		exp := b.exp
		if exp == 0 {
			exp = math.MaxInt64
		}
		return b.prio, exp, b.eff, b.id
	}
	p1, e1, f1, i1 := key(a)
	p2, e2, f2, i2 := key(b)
	switch {
	case p1 != p2:
		return p1 < p2
	case e1 != e2:
		return e1 < e2
	case f1 != f2:
		return f1 < f2
	}
	return i1 < i2
}

// order returns the indices of an account's buckets in consumption order.
func (m *model) order(acct string) []int {
	var idx []int
	for i := range m.buckets {
		if m.buckets[i].acct == acct {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(x, y int) bool { return mLess(&m.buckets[idx[x]], &m.buckets[idx[y]]) })
	return idx
}

func (m *model) avail(acct string) int64 {
	var s int64
	for _, b := range m.buckets {
		if b.acct == acct {
			s += b.rem
		}
	}
	if a := m.accts[acct]; a != nil {
		s -= a.held + a.debt
	}
	return s
}

func (m *model) count(acct string) int {
	n := 0
	for _, b := range m.buckets {
		if b.acct == acct {
			n++
		}
	}
	return n
}

func (m *model) acctIDs() []string {
	var ids []string
	for id := range m.accts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (m *model) remove(ids map[string]bool) {
	m.buckets = slices.DeleteFunc(m.buckets, func(b mBucket) bool { return ids[b.id] })
}

func (m *model) note(typ, acct string) { m.notes = append(m.notes, typ+" "+acct) }

func (m *model) entry(typ EntryType, acct string, amount int64, bucket string, at int64) {
	m.exp = append(m.exp, mEntry{typ, acct, amount, bucket, at})
}

// grantEntries are a grant's entries: the debt it settles (no bucket),
// then the rest into its bucket.
func (m *model) grantEntries(typ EntryType, acct string, amount, settle int64, id string, at int64) {
	if settle > 0 {
		m.entry(typ, acct, settle, "", at)
	}
	if amount > settle {
		m.entry(typ, acct, amount-settle, id, at)
	}
}

func (m *model) addBucket(b mBucket) {
	m.buckets = append(m.buckets, b)
	m.all[b.id] = b
}

func (m *model) newBucketID() string {
	m.bucketSeq++
	return "b_" + strconv.FormatUint(m.bucketSeq, 10)
}

// advance applies everything due by now in time order, each at its own
// instant: the buckets due, then the holds due, then the plan grants due.
func (m *model) advance(now int64) {
	for {
		t := int64(math.MaxInt64)
		for _, b := range m.buckets {
			if b.exp != 0 {
				t = min(t, b.exp)
			}
		}
		for _, h := range m.holds {
			t = min(t, h.exp)
		}
		for i := range m.scheds {
			t = min(t, m.scheds[i].due())
		}
		if m.status == StatusPaused && m.pausedUntil != 0 {
			t = min(t, m.pausedUntil)
		}
		if m.change != nil {
			t = min(t, m.change.At)
		}
		if t > now {
			return
		}
		if m.status == StatusPaused && m.pausedUntil != 0 && m.pausedUntil <= t {
			m.status, m.pausedUntil = StatusActive, 0 // resumes first: a period starting then is granted
		}
		if c := m.change; c != nil && c.At <= t {
			// The scheduled plan, before that instant's grants.
			m.endPlan(c.Plan, c.At)
			m.change = nil
			m.setPlan(c.Plan, c.At)
		}
		m.expireAt(t)
		var keep []mHold
		for _, h := range m.holds {
			if h.exp > t {
				keep = append(keep, h)
				continue
			}
			m.endHold(h, "expired", h.exp)
			m.note(NoteHoldExpired, h.acct)
		}
		m.holds = keep
		for i := range m.scheds {
			s := &m.scheds[i]
			k, at := s.last+1, s.due()
			if at > t {
				continue
			}
			al := m.plan.Allocations[i]
			if m.status == StatusPaused && !m.plan.GrantWhilePaused {
				s.last = k // skipped while paused, and not caught up
				continue
			}
			if kNow := mFloorDiv(now-s.anchor, s.length); al.Strategy == StrategyExpireAndReplace && k < kNow {
				s.last = kNow - 1 // the periods before now's would have expired already
				continue
			}
			s.last = k
			m.grantAlloc(i, &al, k, at, s.prorate)
			s.prorate = false
		}
	}
}

// expireAt removes every bucket due by now, in account order then
// consumption order.
func (m *model) expireAt(now int64) {
	for _, acct := range m.acctIDs() {
		gone := map[string]bool{}
		for _, i := range m.order(acct) {
			b := m.buckets[i]
			if b.exp != 0 && b.exp <= now {
				gone[b.id] = true
				if b.rem != 0 {
					m.entry(EntryExpiry, acct, -b.rem, b.id, b.exp)
					m.note(NoteBucketExpired, acct)
				}
			}
		}
		m.remove(gone)
	}
}

func (m *model) endHold(h mHold, status string, at int64) {
	a := m.accts[h.acct]
	a.held -= h.amount
	m.entry(EntryHoldRelease, h.acct, h.amount, "", at)
	m.holdFx = append(m.holdFx, h.id+" "+status)
	// Freed credits settle debt: pairs of entries, bucket then debt.
	var rem int64
	for _, b := range m.buckets {
		if b.acct == h.acct {
			rem += b.rem
		}
	}
	need := min(a.debt, rem-a.held)
	if need <= 0 {
		return
	}
	gone := map[string]bool{}
	for _, i := range m.order(h.acct) {
		b := &m.buckets[i]
		take := min(b.rem, need)
		if take <= 0 {
			continue
		}
		b.rem -= take
		need -= take
		m.entry(EntryHoldRelease, h.acct, -take, b.id, at)
		a.debt -= take
		m.entry(EntryHoldRelease, h.acct, take, "", at)
		if b.rem == 0 {
			gone[b.id] = true
		}
		if need == 0 {
			break
		}
	}
	m.remove(gone)
}

// grantAlloc grants period k of allocation i at instant at.
func (m *model) grantAlloc(i int, al *Allocation, k, at int64, prorate bool) {
	acct := al.Account + ":" + al.Asset
	kind := al.Kind
	if kind == 0 {
		kind = KindPlan
	}
	amount := al.Amount
	m.granted = append(m.granted, mGrant{alloc: i, sched: m.scheds[i]})
	start, end := m.scheds[i].anchor+k*m.scheds[i].length, m.scheds[i].anchor+(k+1)*m.scheds[i].length
	if prorate && at > start {
		// amount * (time left) / (period), rounded down, in exact integers.
		x := new(big.Int).Mul(big.NewInt(amount), big.NewInt(end-at))
		amount = x.Quo(x, big.NewInt(end-start)).Int64()
	}
	if al.Strategy == StrategyAccumulate && al.Cap > 0 {
		// An allocation's buckets are those of its index and its plan.
		var held int64
		for _, b := range m.buckets {
			if b.acct == acct && b.alloc == i+1 && b.ref == m.plan.ID {
				held += b.rem
			}
		}
		amount = min(amount, max(al.Cap-held, 0))
	}
	if amount <= 0 || m.count(acct) >= AccountBucketsMax {
		return
	}
	var exp int64
	if al.Strategy == StrategyExpireAndReplace {
		exp = m.scheds[i].anchor + (k+1)*m.scheds[i].length
	}
	m.ensure(acct)
	a := m.accts[acct]
	settle := min(a.debt, amount)
	a.debt -= settle
	if exp == 0 { // an accumulating allocation grows its one bucket
		for j := range m.buckets {
			if b := &m.buckets[j]; b.acct == acct && b.alloc == i+1 && b.ref == m.plan.ID && b.kind == kind && b.exp == 0 && b.amount <= CommandUnitsMax-amount {
				b.amount += amount
				b.rem += amount - settle
				m.grantEntries(EntryGrant, acct, amount, settle, b.id, at)
				return
			}
		}
	}
	id := m.newBucketID()
	if amount-settle > 0 {
		m.addBucket(mBucket{id: id, acct: acct, kind: kind, prio: mPrio(kind), amount: amount, rem: amount - settle, eff: at, exp: exp, ref: m.plan.ID, alloc: i + 1})
	}
	m.grantEntries(EntryGrant, acct, amount, settle, id, at)
}

func (m *model) mayDebit(acct string, avail, units int64) bool {
	switch {
	case units == 0:
		return true
	case m.policy == PolicyReject:
		return avail >= units
	default:
		return avail-units >= -m.limits[acct]
	}
}

// debit takes units in consumption order from what the holds do not
// reserve, the rest into debt.
func (m *model) debit(acct string, units int64, typ EntryType, at int64) {
	var sum int64
	for _, b := range m.buckets {
		if b.acct == acct {
			sum += b.rem
		}
	}
	left := min(units, max(sum-m.accts[acct].held, 0))
	debt := units - left
	gone := map[string]bool{}
	for _, i := range m.order(acct) {
		if left == 0 {
			break
		}
		b := &m.buckets[i]
		take := min(b.rem, left)
		if take == 0 {
			continue
		}
		b.rem -= take
		left -= take
		if b.rem == 0 {
			gone[b.id] = true
		}
		m.entry(typ, acct, -take, b.id, at)
	}
	m.remove(gone)
	if debt > 0 {
		m.accts[acct].debt += debt
		m.entry(typ, acct, -debt, "", at)
	}
}

func (m *model) ensure(acct string) {
	if m.accts[acct] == nil {
		m.accts[acct] = &mAcct{}
	}
}

func (m *model) grant(acct string, amount int64, kind Kind, prio int, exp, now int64, ref string, typ EntryType) (string, string) {
	if amount <= 0 {
		return "", CodeInvalidAmount
	}
	if exp < 0 {
		return "", CodeInvalidRequest
	}
	if m.count(acct) >= AccountBucketsMax {
		return "", CodeLimitExceeded
	}
	m.ensure(acct)
	a := m.accts[acct]
	id := m.newBucketID()
	settle := min(a.debt, amount)
	a.debt -= settle
	if amount-settle > 0 {
		m.addBucket(mBucket{id: id, acct: acct, kind: kind, prio: prio, amount: amount, rem: amount - settle, eff: now, exp: exp, ref: ref})
	}
	m.grantEntries(typ, acct, amount, settle, id, now)
	if exp != 0 && exp <= now {
		m.expireAt(now)
	}
	return id, ""
}

// planPeriod returns the period of the plan's first allocation holding now.
func (m *model) planPeriod(now int64) (start, end int64, ok bool) {
	if m.plan == nil || len(m.plan.Allocations) == 0 {
		return 0, 0, false
	}
	al := m.plan.Allocations[0]
	d := mLength(al.Period)
	k := mFloorDiv(now-al.Anchor, d)
	if k < 0 {
		return 0, 0, false
	}
	return al.Anchor + k*d, al.Anchor + (k+1)*d, true
}

// resolve resolves ExpiresPeriodEnd.
func (m *model) resolve(exp, now int64) (int64, string) {
	if exp != ExpiresPeriodEnd {
		return exp, ""
	}
	if _, end, ok := m.planPeriod(now); ok {
		return end, ""
	}
	return 0, CodeNoPlanPeriod
}

func (m *model) topUp(c *TopUpCmd, now int64) (string, string) {
	m.advance(now)
	exp, code := m.resolve(c.ExpiresAt, now)
	if code != "" {
		return "", code
	}
	return m.grant(c.Account+":"+c.Asset, c.Amount, KindRecharge, 30, exp, now, c.ID, EntryTopUp)
}

func (m *model) adjust(c *AdjustCmd, now int64) string {
	m.advance(now)
	acct := c.Account + ":" + c.Asset
	if c.Amount > 0 {
		kind := c.Kind
		if kind == 0 {
			kind = KindRecharge
		}
		if kind > 3 {
			return CodeInvalidRequest
		}
		prio := mPrio(kind)
		if c.Priority > 100 {
			return CodeInvalidRequest
		}
		if c.Priority >= 0 {
			prio = c.Priority
		}
		exp, code := m.resolve(c.ExpiresAt, now)
		if code != "" {
			return code
		}
		_, code = m.grant(acct, c.Amount, kind, prio, exp, now, c.TransactionID, EntryAdjustment)
		return code
	}
	if c.Amount == 0 {
		return CodeInvalidAmount
	}
	if !m.mayDebit(acct, m.avail(acct), -c.Amount) {
		return CodeInsufficientFunds
	}
	m.ensure(acct)
	m.debit(acct, -c.Amount, EntryAdjustment, now)
	return ""
}

// reverse takes back what is left of a top-up's (topUp) or, with topUp
// "", a plan grant's bucket, while at most maxUsed of it was used (-1:
// any).
func (m *model) reverse(bucket, topUp string, window, maxUsed, now int64) string {
	m.advance(now)
	for _, b := range m.buckets {
		if b.id != bucket {
			continue
		}
		used := b.amount - b.rem
		switch {
		case topUp != "" && (b.ref != topUp || b.alloc != 0), topUp == "" && b.alloc == 0:
			return CodeUnknownBucket
		case used > 0 && maxUsed == 0:
			return CodeTopUpSpent
		case used > 0 && maxUsed > 0 && used > maxUsed:
			return CodeRefundAllowanceExceeded
		case now > b.eff+window:
			return CodeReversalWindowElapsed
		case b.rem > m.avail(b.acct):
			return CodeTopUpSpent // reserved by a hold
		}
		m.remove(map[string]bool{b.id: true})
		typ := EntryTopUpReversal
		if topUp == "" {
			typ = EntryGrant
		}
		m.entry(typ, b.acct, -b.rem, b.id, now)
		return ""
	}
	if n, err := strconv.ParseUint(bucket[2:], 10, 64); err == nil && n > 0 && n <= m.bucketSeq {
		return CodeTopUpSpent
	}
	return CodeUnknownBucket
}

// chargeUnits returns the whole units and the carries of an event's
// charges and the index of the first charge that breaks the funds rule
// (charges to the settled hold's account are not checked), or -1.
func (m *model) chargeUnits(c *UsageCmd, holdAcct string, holdAmt int64) ([]int64, map[string]uint64, int, string) {
	const S = meter.SubUnitsPerUnit
	units := make([]int64, len(c.Charges))
	carries := map[string]uint64{}
	spent := map[string]int64{}
	for i, ch := range c.Charges {
		if ch.Amount.Units < 0 || ch.Amount.Sub >= S {
			return nil, nil, -1, CodeInvalidAmount
		}
		carry, ok := carries[ch.Account]
		if !ok && m.accts[ch.Account] != nil {
			carry = m.accts[ch.Account].carry
		}
		// Whole units: Units + floor((carry + Sub) / S), computed in two
		// halves so that nothing overflows.
		u := ch.Amount.Units
		rest := ch.Amount.Sub
		if carry >= S-rest {
			u++
			rest = carry - (S - rest)
		} else {
			rest += carry
		}
		units[i] = u
		carries[ch.Account] = rest
		if ch.Account == holdAcct {
			if m.avail(ch.Account)-spent[ch.Account]+holdAmt-u < -CommandUnitsMax {
				return units, carries, i, ""
			}
		} else if !m.mayDebit(ch.Account, m.avail(ch.Account)-spent[ch.Account], u) {
			return units, carries, i, ""
		}
		spent[ch.Account] += u
	}
	return units, carries, -1, ""
}

func (m *model) charge(c *UsageCmd, now int64) ([]int64, string) {
	m.advance(now)
	if m.status == StatusPaused {
		return nil, CodeAccountPaused
	}
	hold, holdAcct, holdAmt := -1, "", int64(0)
	for i, h := range m.holds {
		if c.HoldID != "" && h.id == c.HoldID {
			hold, holdAcct, holdAmt = i, h.acct, h.amount
		}
	}
	var units []int64
	var carries map[string]uint64
	for attempt := 0; ; attempt++ {
		var failed int
		var code string
		units, carries, failed, code = m.chargeUnits(c, holdAcct, holdAmt)
		if code != "" {
			return nil, code
		}
		if failed < 0 {
			break
		}
		// An event that cannot be covered asks for a reload, which in
		// grant_immediately mode may cover it at once.
		if attempt == 0 && m.reloadAllowed(c.Charges[failed].Account, now) && m.requestReload(now) {
			continue
		}
		return nil, CodeInsufficientFunds
	}
	if hold >= 0 {
		h := m.holds[hold]
		m.holds = slices.Delete(m.holds, hold, hold+1)
		m.endHold(h, "settled", now)
	}
	reload := false
	for i, ch := range c.Charges {
		m.ensure(ch.Account)
		if units[i] > 0 {
			m.debit(ch.Account, units[i], EntryUsage, c.OccurredAt)
			if r := m.reload; r != nil && ch.Account == r.Account+":"+r.Asset && m.avail(ch.Account) < r.Threshold {
				reload = true
			}
		}
	}
	for acct, carry := range carries {
		m.accts[acct].carry = carry
	}
	if reload && m.reloadAllowed(m.reload.Account+":"+m.reload.Asset, now) {
		m.requestReload(now)
	}
	return units, ""
}

func (m *model) placeHold(c *HoldCmd, now int64) string {
	m.advance(now)
	switch {
	case c.Amount <= 0:
		return CodeInvalidAmount
	case c.ExpiresAt <= now:
		return CodeInvalidTimestamp
	case slices.ContainsFunc(m.holds, func(h mHold) bool { return h.id == c.ID }):
		return CodeIdempotencyConflict
	case len(m.holds) >= WalletHoldsMax:
		return CodeLimitExceeded
	case m.holdLimit(c.Account) > 0 && m.activeHolds(c.Account) >= m.holdLimit(c.Account):
		return CodeHoldLimitReached
	case m.accts[c.Account] == nil || c.Amount > m.avail(c.Account):
		return CodeInsufficientFunds
	}
	m.holds = append(m.holds, mHold{id: c.ID, acct: c.Account, amount: c.Amount, exp: c.ExpiresAt})
	m.accts[c.Account].held += c.Amount
	m.entry(EntryHold, c.Account, -c.Amount, "", now)
	m.holdFx = append(m.holdFx, c.ID+" active")
	return ""
}

// holdLimit is the customer's limit of active holds on acct, else its
// plan's; 0: none.
func (m *model) holdLimit(acct string) int {
	for _, l := range m.holdLimits {
		if l.Account == acct {
			return l.Max
		}
	}
	if m.plan != nil {
		for _, l := range m.plan.HoldLimits {
			if l.Account == acct {
				return l.Max
			}
		}
	}
	return 0
}

func (m *model) activeHolds(acct string) int {
	n := 0
	for _, h := range m.holds {
		if h.acct == acct {
			n++
		}
	}
	return n
}

func (m *model) releaseHold(id string, now int64) string {
	m.advance(now)
	for i, h := range m.holds {
		if h.id == id {
			m.holds = slices.Delete(m.holds, i, i+1)
			m.endHold(h, "released", now)
			return ""
		}
	}
	return CodeHoldNotActive
}

// reloadStart returns the start of the period max_per_period counts: the
// plan period, or the UTC calendar month.
func (m *model) reloadStart(now int64) int64 {
	if start, _, ok := m.planPeriod(now); ok {
		return start
	}
	tm := time.Unix(0, now).UTC()
	return time.Date(tm.Year(), tm.Month(), 1, 0, 0, 0, 0, time.UTC).UnixNano()
}

// mUnpaid is the model's rule for the requests pending at once:
// await_payment waits for each payment; grant_immediately does not, up to
// max_unpaid (else ReloadPendingMax).
func mUnpaid(r *AutoReload) int {
	if r.Mode == ReloadAwaitPayment {
		return 1
	}
	if r.MaxUnpaid > 0 {
		return r.MaxUnpaid
	}
	return ReloadPendingMax
}

func (m *model) reloadAllowed(acct string, now int64) bool {
	r := m.reload
	if r == nil || !r.Enabled || m.status != StatusActive || acct != r.Account+":"+r.Asset {
		return false
	}
	if len(m.pending) >= mUnpaid(r) {
		return false
	}
	return r.MaxPerPeriod == 0 || m.reloadPeriod != m.reloadStart(now) || m.reloadCount < r.MaxPerPeriod
}

// requestReload makes a request and reports whether its credits were granted.
func (m *model) requestReload(now int64) bool {
	r := m.reload
	if p := m.reloadStart(now); p != m.reloadPeriod {
		m.reloadPeriod, m.reloadCount = p, 0
	}
	m.reloadCount++
	m.reloadSeq++
	req := &mReload{id: "r_" + strconv.FormatUint(m.reloadSeq, 10), acct: r.Account + ":" + r.Asset, amount: r.Amount, await: r.Mode == ReloadAwaitPayment}
	m.pending = append(m.pending, req)
	granted := false
	if req.await {
		m.reloadMark(req, now)
	} else {
		granted = m.grantReload(req, now)
	}
	m.reloadFx = append(m.reloadFx, req.id+" pending")
	m.note(NoteAutoReloadRequested, req.acct)
	return granted
}

func (m *model) grantReload(req *mReload, now int64) bool {
	var exp int64
	if r := m.reload; r != nil && r.PeriodEnd {
		if _, end, ok := m.planPeriod(now); ok {
			exp = end
		}
	}
	if _, code := m.grant(req.acct, req.amount, KindRecharge, 30, exp, now, req.id, EntryAutoReload); code != "" {
		m.reloadMark(req, now)
		return false
	}
	return true
}

// reloadMark is the 0 auto_reload entry of a request or an outcome that moves no credit.
func (m *model) reloadMark(req *mReload, now int64) {
	m.ensure(req.acct)
	m.entry(EntryAutoReload, req.acct, 0, "", now)
}

func (m *model) resolveReload(id string, ok bool, now int64) string {
	m.advance(now)
	i := slices.IndexFunc(m.pending, func(r *mReload) bool { return r.id == id })
	if i < 0 {
		return CodeReloadNotPending
	}
	req := m.pending[i]
	m.pending = slices.Delete(m.pending, i, i+1)
	if ok {
		if req.await {
			m.grantReload(req, now)
		} else {
			m.reloadMark(req, now)
		}
		m.reloadFx = append(m.reloadFx, id+" completed")
		m.note(NoteAutoReloadCompleted, req.acct)
		return ""
	}
	m.reloadMark(req, now)
	if m.reload != nil {
		r := *m.reload
		r.Enabled = false
		m.reload = &r
	}
	if !req.await {
		m.status, m.pausedUntil = StatusPaused, 0 // until resumed, even if it was paused until a time
	}
	m.reloadFx = append(m.reloadFx, id+" failed")
	m.note(NoteAutoReloadFailed, req.acct)
	return ""
}

// configure takes settings whose alert thresholds are given in tenths by alerts10.
// nextBoundary is the start of the plan period after the one holding now
// (the plan's first allocation).
func nextBoundary(p *Plan, now int64) int64 {
	al := p.Allocations[0]
	d := mLength(al.Period)
	return al.Anchor + (mFloorDiv(now-al.Anchor, d)+1)*d
}

func (m *model) configure(s *Settings, alerts10 []int64, now int64) {
	m.status, m.policy, m.pausedUntil, m.holdLimits = s.Status, s.Policy, 0, slices.Clone(s.HoldLimits)
	if s.Status == StatusPaused && s.PausedUntil > 0 {
		m.pausedUntil = s.PausedUntil
	}
	m.limits = map[string]int64{}
	for _, l := range s.CreditLimits {
		m.limits[l.Account] = l.Units
	}
	m.alerts10 = alerts10
	m.reload = nil
	if s.AutoReload != nil {
		r := *s.AutoReload
		m.reload = &r
	}
	m.change = nil
	m.setPlan(s.Plan, now)
}

// reconfigure is Wallet.Reconfigure: what came due first, then the
// settings, the plan changing as mode says.
func (m *model) reconfigure(s *Settings, alerts10 []int64, mode PlanChangeMode, now int64) string {
	m.advance(now)
	if mode == PlanChangeAtPeriodEnd {
		if m.plan == nil || mFloorDiv(now-m.plan.Allocations[0].Anchor, mLength(m.plan.Allocations[0].Period)) < 0 {
			return CodeNoPlanPeriod
		}
		next := s.Plan
		cur := *s
		cur.Plan = m.plan
		m.configure(&cur, alerts10, now)
		if next == nil || next.ID != m.plan.ID || next.GrantWhilePaused != m.plan.GrantWhilePaused || !slices.Equal(next.Allocations, m.plan.Allocations) ||
			!slices.Equal(next.HoldLimits, m.plan.HoldLimits) {
			m.change = &PlanChange{At: nextBoundary(m.plan, now), Plan: next} // saving the plan in force schedules nothing
		}
		return ""
	}
	m.endPlan(s.Plan, now)
	fresh := m.planID == "" || s.Plan == nil || m.planID != s.Plan.ID
	m.configure(s, alerts10, now)
	if mode == PlanChangeNowProrated && fresh {
		for i := range m.scheds {
			m.scheds[i].prorate = true
		}
	}
	return ""
}

// endPlan ends the current plan's buckets at at, unless next is the same
// plan, as expireAt does.
func (m *model) endPlan(next *Plan, at int64) {
	if m.plan == nil || next != nil && next.ID == m.plan.ID {
		return
	}
	for _, acct := range m.acctIDs() {
		gone := map[string]bool{}
		for _, i := range m.order(acct) {
			b := m.buckets[i]
			if b.alloc != 0 && b.ref == m.plan.ID {
				gone[b.id] = true
				if b.rem != 0 {
					m.entry(EntryExpiry, acct, -b.rem, b.id, at)
					m.note(NoteBucketExpired, acct)
				}
			}
		}
		m.remove(gone)
	}
}

// setPlan makes p the plan from now on.
func (m *model) setPlan(p *Plan, now int64) {
	m.plan = nil
	if p != nil {
		c := Plan{ID: p.ID, Allocations: slices.Clone(p.Allocations), GrantWhilePaused: p.GrantWhilePaused, HoldLimits: slices.Clone(p.HoldLimits)}
		m.plan = &c
	}
	if m.plan == nil {
		m.planID, m.scheds = "", nil
		return
	}
	// A new plan id starts every schedule afresh; under the same id an
	// allocation keeps its schedule while its anchor and period stay.
	fresh := m.planID != m.plan.ID
	var scheds []mSched
	for i, al := range m.plan.Allocations {
		d := mLength(al.Period)
		if !fresh && i < len(m.scheds) && m.scheds[i].anchor == al.Anchor && m.scheds[i].length == d {
			scheds = append(scheds, m.scheds[i])
			continue
		}
		m.serials++
		scheds = append(scheds, mSched{serial: m.serials, anchor: al.Anchor, length: d, last: max(mFloorDiv(now-al.Anchor, d), 0) - 1, since: now})
	}
	m.planID, m.scheds = m.plan.ID, scheds
}

// begin starts a step: it forgets the expectations of the last one and
// returns the available balances the alerts compare with.
func (m *model) begin() map[string]int64 {
	m.exp, m.notes, m.holdFx, m.reloadFx, m.granted = m.exp[:0], m.notes[:0], m.holdFx[:0], m.reloadFx[:0], m.granted[:0]
	before := map[string]int64{}
	for id := range m.accts {
		before[id] = m.avail(id)
	}
	return before
}

// alerts fires, at the end of an operation, balance.low for each threshold
// crossed downwards, balance.depleted and balance.recovered.
func (m *model) alerts(before map[string]int64) {
	for _, id := range m.acctIDs() {
		a, b := m.avail(id), before[id]
		if a == b {
			continue
		}
		if a < b {
			for _, th := range m.alerts10 {
				if a*10 < th && b*10 >= th {
					m.note(NoteBalanceLow, id)
				}
			}
		}
		acct := m.accts[id]
		if b > 0 && a <= 0 && !acct.depleted {
			acct.depleted = true
			m.note(NoteBalanceDepleted, id)
		}
		if a > 0 && acct.depleted {
			acct.depleted = false
			m.note(NoteBalanceRecovered, id)
		}
	}
}

// stepOut is what one operation returned.
type stepOut struct {
	entries []Entry
	code    string
	bucket  string         // TopUp
	res     []ChargeResult // Charge
	req     ReloadRequest  // ConfirmReload, FailReload
	fx      Effects
}

// invariants are the checks that hold whatever the model says.
type invariants struct {
	sums     map[string]int64 // sum of every entry amount ever, by account
	seq      uint64           // last entry seq
	noteSeq  uint64           // last notification seq
	grants   map[string]bool  // schedule serial + period start of every grant
	pending  map[string]bool  // reload requests pending
	period   int64            // the reload period of the last request
	inPeriod int              // requests made in it
	negFree  map[string]bool  // accounts whose held credits expired or were reversed
	overDebt map[string]bool  // accounts whose debt is above their limit
}

var alertTable = []struct {
	s      string
	tenths int64
}{{"0", 0}, {"100", 1000}, {"250.5", 2505}, {"500", 5000}, {"1000", 10000}}

// propertyRun drives a wallet and the model with the same random commands
// and compares them after every step.
func propertyRun(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	now := t0
	w := NewWallet("c_prop", Settings{}, now)
	m := newModel()
	inv := &invariants{sums: map[string]int64{}, grants: map[string]bool{}, pending: map[string]bool{},
		negFree: map[string]bool{}, overDebt: map[string]bool{}}
	var out []Entry
	var res []ChargeResult
	accounts := [][2]string{{"default", "CREDITS"}, {"default", "USD"}, {"team:eu", "CREDITS"}}
	type topUpRec struct{ bucket, id string }
	var topUps []topUpRec
	var ended []string // ids of holds that ended
	var curPlan *Plan
	var curReload *AutoReload
	counts := map[string]int{}
	var ledger []Entry // every entry the wallet made, oldest first

	pickAcct := func() (string, string) {
		a := accounts[rng.IntN(len(accounts))]
		return a[0], a[1]
	}
	pickExpiry := func() int64 {
		switch r := rng.IntN(20); {
		case r < 8:
			return 0
		case r < 10:
			return now // expires at once
		case r < 12 && len(m.buckets) > 0: // ties with an existing bucket
			if e := m.buckets[rng.IntN(len(m.buckets))].exp; e > now {
				return e
			}
			return 0
		case r < 13:
			return ExpiresPeriodEnd
		default:
			return now + 1 + rng.Int64N(5*day)
		}
	}
	pickAmount := func() int64 {
		if rng.IntN(50) == 0 {
			return -rng.Int64N(2) // 0 or -1: invalid
		}
		return 1 + rng.Int64N(1000)
	}
	randomPlan := func() *Plan {
		p := &Plan{ID: "p" + strconv.Itoa(rng.IntN(3))}
		for n := 1 + rng.IntN(2); n > 0; n-- {
			name, asset := pickAcct()
			al := Allocation{Account: name, Asset: asset, Amount: 1 + rng.Int64N(300), Period: PeriodDay,
				Anchor: now - rng.Int64N(10*day) + rng.Int64N(3*day), Strategy: StrategyExpireAndReplace}
			if rng.IntN(3) == 0 {
				al.Period = PeriodWeek
			}
			if rng.IntN(2) == 0 {
				al.Strategy = StrategyAccumulate
				if rng.IntN(2) == 0 {
					al.Cap = al.Amount * (1 + rng.Int64N(5))
				}
			}
			if rng.IntN(4) == 0 {
				al.Kind = KindPromotional
			}
			p.Allocations = append(p.Allocations, al)
		}
		return p
	}

	for step := 0; step < steps; step++ {
		// Time moves forward: not at all, a little, a lot, or exactly to
		// (or just before) the next due instant.
		switch r := rng.IntN(10); {
		case r < 3:
		case r < 6:
			now += rng.Int64N(1000)
		case r < 8:
			now += rng.Int64N(6 * hour)
		default:
			if next := w.NextDue(); next > now {
				now = next - rng.Int64N(2)
			}
		}
		before := m.begin()
		snapshot, debtBefore, heldBefore := m.snapshotOrder()
		var run func(w *Wallet, out []Entry, res []ChargeResult) stepOut
		var wantCode, op string
		var check func(o *stepOut)
		debited := map[string]bool{} // accounts a successful debit must leave at or above their floor
		switch r := rng.IntN(100); {
		case r < 15:
			op = "topup"
			name, asset := pickAcct()
			id := "top_" + strconv.Itoa(step)
			c := &TopUpCmd{ID: id, Account: name, Asset: asset, Amount: pickAmount(), Source: "custom_credits", ExpiresAt: pickExpiry()}
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				bid, out, err := w.TopUp(c, now, out)
				return stepOut{entries: out, code: code(err), bucket: bid}
			}
			var wantID string
			wantID, wantCode = m.topUp(c, now)
			check = func(o *stepOut) {
				if o.bucket != wantID {
					t.Fatalf("seed %d step %d: top-up bucket %q, model %q", seed, step, o.bucket, wantID)
				}
				if o.code == "" {
					topUps = append(topUps, topUpRec{o.bucket, id})
				}
			}
		case r < 29:
			op = "adjust"
			name, asset := pickAcct()
			c := &AdjustCmd{TransactionID: "tx_" + strconv.Itoa(step), Account: name, Asset: asset, Kind: Kind(rng.IntN(4)), Priority: -1, ExpiresAt: pickExpiry()}
			if rng.IntN(2) == 0 {
				c.Priority = rng.IntN(101)
			}
			if rng.IntN(100) == 0 {
				c.Priority = 101
			}
			if rng.IntN(100) == 0 {
				c.Kind = 4
			}
			c.Amount = pickAmount()
			if rng.IntN(2) == 0 {
				c.Amount = -c.Amount
				if c.Amount < 0 {
					debited[name+":"+asset] = true
				}
			}
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				out, err := w.Adjust(c, now, out)
				return stepOut{entries: out, code: code(err)}
			}
			wantCode = m.adjust(c, now)
		case r < 56:
			op = "charge"
			c := &UsageCmd{EventID: "evt_" + strconv.Itoa(step), OccurredAt: now - 5, PricingVersion: 7}
			settle := ""
			if len(m.holds) > 0 && rng.IntN(3) == 0 {
				h := m.holds[rng.IntN(len(m.holds))]
				c.HoldID, settle = h.id, h.acct
				op = "charge+hold"
			} else if rng.IntN(20) == 0 {
				c.HoldID = "h_unknown"
				if len(ended) > 0 && rng.IntN(2) == 0 {
					c.HoldID = ended[rng.IntN(len(ended))]
				}
			}
			for n := 1 + rng.IntN(2); n > 0; n-- {
				name, asset := pickAcct()
				if settle != "" && len(c.Charges) == 0 && rng.IntN(5) != 0 {
					i := strings.LastIndexByte(settle, ':')
					name, asset = settle[:i], settle[i+1:]
				}
				f := meter.Fine{Units: rng.Int64N(1200)}
				switch rng.IntN(4) {
				case 0:
				case 1:
					f.Sub = meter.SubUnitsPerUnit - 1 - rng.Uint64N(10)
				default:
					f.Sub = rng.Uint64N(meter.SubUnitsPerUnit)
				}
				if rng.IntN(3) == 0 {
					f.Units = 0
				}
				if rng.IntN(200) == 0 {
					f.Units = -1
				}
				c.Charges = append(c.Charges, meter.Charge{Account: name + ":" + asset, Name: name, Asset: asset, Amount: f})
			}
			run = func(w *Wallet, out []Entry, res []ChargeResult) stepOut {
				// The check first: it answers what the charge will, and
				// changes nothing (the wallet's bytes are the same after).
				before := AppendWallet(nil, w)
				checked, checkErr := w.CheckCharge(c, now)
				if after := AppendWallet(nil, w); !bytes.Equal(before, after) {
					t.Fatalf("seed %d step %d: CheckCharge changed the wallet", seed, step)
				}
				res, out, err := w.Charge(c, now, res, out)
				if code(checkErr) != code(err) || fmt.Sprintf("%+v", checked) != fmt.Sprintf("%+v", res) {
					t.Fatalf("seed %d step %d: CheckCharge answered %+v %v, the charge %+v %v", seed, step, checked, checkErr, res, err)
				}
				return stepOut{entries: out, code: code(err), res: res}
			}
			var charges []int64
			charges, wantCode = m.charge(c, now)
			check = func(o *stepOut) {
				if o.code != "" {
					return
				}
				if len(o.res) != len(c.Charges) {
					t.Fatalf("seed %d step %d: %d results for %d charges", seed, step, len(o.res), len(c.Charges))
				}
				for i := range o.res {
					var sum int64
					for _, p := range o.res[i].Parts {
						sum += p.Amount
					}
					if o.res[i].Amount != charges[i] || sum != charges[i] || o.res[i].Account != c.Charges[i].Account {
						t.Fatalf("seed %d step %d: result %+v, model units %d", seed, step, o.res[i], charges[i])
					}
				}
			}
			// The settled hold's account may go into debt; the others
			// keep the funds rule.
			for i, ch := range c.Charges {
				if ch.Account != settle && charges != nil && charges[i] > 0 {
					debited[ch.Account] = true
				}
			}
		case r < 62:
			op = "reverse"
			bucket, id := "b_"+strconv.Itoa(rng.IntN(int(m.bucketSeq)+3)), "top_x"
			if len(topUps) > 0 && rng.IntN(4) != 0 {
				rec := topUps[len(topUps)-1-rng.IntN(min(len(topUps), 5))]
				bucket, id = rec.bucket, rec.id
			}
			if rng.IntN(4) == 0 {
				id = "" // a plan grant's bucket
				op = "reverse grant"
				var granted []string
				for _, b := range m.buckets {
					if b.alloc != 0 {
						granted = append(granted, b.id)
					}
				}
				if len(granted) > 0 && rng.IntN(4) != 0 {
					bucket = granted[rng.IntN(len(granted))]
				}
			}
			// The refund rule: none spent, any amount used, or up to some.
			rule := RefundRule{Window: day}
			maxUsed := int64(-1)
			switch rng.IntN(3) {
			case 0:
				maxUsed = 0
			case 1:
				maxUsed = rng.Int64N(300)
			}
			if maxUsed >= 0 {
				d, err := meter.ParseDec(strconv.FormatInt(maxUsed, 10))
				if err != nil {
					t.Fatal(err)
				}
				rule.MaxUsed = &d
			}
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				_, out, err := w.ReversePurchase(bucket, id, rule, now, out)
				return stepOut{entries: out, code: code(err)}
			}
			wantCode = m.reverse(bucket, id, day, maxUsed, now)
		case r < 68:
			op = "configure"
			s := Settings{Status: StatusActive, Policy: PolicyReject}
			if rng.IntN(10) == 0 {
				s.Status = StatusPaused
				if rng.IntN(2) == 0 {
					// Until an instant up to three days ahead, at any
					// nanosecond (a plan boundary included, now and then).
					s.PausedUntil = now + rng.Int64N(3*day)
					if rng.IntN(4) == 0 && curPlan != nil {
						s.PausedUntil = nextBoundary(curPlan, now)
					}
				}
			}
			if rng.IntN(2) == 0 {
				s.Policy = PolicyOverdraft
			}
			for _, a := range accounts {
				if rng.IntN(2) == 0 {
					s.CreditLimits = append(s.CreditLimits, Limit{Account: a[0] + ":" + a[1], Units: rng.Int64N(500)})
				}
			}
			var alerts10 []int64
			for _, a := range alertTable {
				if rng.IntN(3) == 0 {
					s.BalanceAlerts = append(s.BalanceAlerts, a.s)
					alerts10 = append(alerts10, a.tenths)
				}
			}
			switch r := rng.IntN(8); {
			case r == 0:
				curPlan = nil
			case r < 3 && curPlan != nil: // the same plan saved again
				op = "configure same plan"
			case r < 4 && curPlan != nil: // the same plan with other amounts
				p := &Plan{ID: curPlan.ID, Allocations: slices.Clone(curPlan.Allocations)}
				for i := range p.Allocations {
					p.Allocations[i].Amount = 1 + rng.Int64N(300)
				}
				curPlan = p
				op = "configure same plan"
			default:
				curPlan = randomPlan()
			}
			if curPlan != nil && rng.IntN(3) == 0 {
				p := *curPlan
				p.GrantWhilePaused = !p.GrantWhilePaused
				curPlan = &p
			}
			// Limits of active holds, the customer's over the plan's.
			if curPlan != nil && rng.IntN(3) == 0 {
				p := *curPlan
				name, asset := pickAcct()
				p.HoldLimits = []HoldLimit{{Account: name + ":" + asset, Max: 1 + rng.IntN(3)}}
				curPlan = &p
			}
			if rng.IntN(3) == 0 {
				name, asset := pickAcct()
				s.HoldLimits = []HoldLimit{{Account: name + ":" + asset, Max: 1 + rng.IntN(4)}}
			}
			s.Plan = curPlan
			switch rng.IntN(3) {
			case 0:
				curReload = nil
			case 1:
				if curReload != nil {
					break
				}
				fallthrough
			default:
				name, asset := pickAcct()
				curReload = &AutoReload{Enabled: rng.IntN(6) != 0, Account: name, Asset: asset, Threshold: rng.Int64N(800), Amount: 1 + rng.Int64N(1000),
					Price: "9.00", Currency: "USD", SurchargePct: "30", Charge: "11.70", MaxPerPeriod: rng.IntN(4),
					Mode: ReloadMode(rng.IntN(3)), PeriodEnd: rng.IntN(3) == 0, MaxUnpaid: rng.IntN(4)}
			}
			s.AutoReload = curReload
			mode := PlanChangeNow
			switch r := rng.IntN(10); {
			case r < 2:
				mode = PlanChangeNowProrated
				op += " prorated"
			case r < 4:
				mode = PlanChangeAtPeriodEnd
				op += " at period end"
			}
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				out, err := w.Reconfigure(s, mode, now, out)
				return stepOut{entries: out, code: code(err)}
			}
			wantCode = m.reconfigure(&s, alerts10, mode, now)
		case r < 78:
			op = "hold"
			name, asset := pickAcct()
			c := &HoldCmd{ID: "h_" + strconv.Itoa(step), Account: name + ":" + asset, Amount: 1 + rng.Int64N(max(m.avail(name+":"+asset), 0)+100),
				ExpiresAt: now + 1 + rng.Int64N(2*day)}
			switch rng.IntN(10) {
			case 0:
				c.ExpiresAt = now - rng.Int64N(2)
			case 1:
				if len(m.buckets) > 0 {
					if e := m.buckets[rng.IntN(len(m.buckets))].exp; e > now {
						c.ExpiresAt = e // ties with a bucket's expiry
					}
				}
			case 2:
				if len(m.holds) > 0 {
					c.ID = m.holds[rng.IntN(len(m.holds))].id
				} else if len(ended) > 0 {
					c.ID = ended[rng.IntN(len(ended))] // an ended hold's id may be used again
				}
			}
			if rng.IntN(40) == 0 {
				c.Amount = 0
			}
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				out, err := w.PlaceHold(c, now, out)
				return stepOut{entries: out, code: code(err)}
			}
			wantCode = m.placeHold(c, now)
		case r < 83:
			op = "release"
			id := "h_unknown"
			if len(m.holds) > 0 && rng.IntN(5) != 0 {
				id = m.holds[rng.IntN(len(m.holds))].id
			} else if len(ended) > 0 && rng.IntN(2) == 0 {
				id = ended[rng.IntN(len(ended))]
			}
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				out, err := w.ReleaseHold(id, now, out)
				return stepOut{entries: out, code: code(err)}
			}
			wantCode = m.releaseHold(id, now)
		case r < 89:
			confirm := rng.IntN(5) < 3
			op = "reload fail"
			if confirm {
				op = "reload confirm"
			}
			id := "r_" + strconv.Itoa(rng.IntN(int(m.reloadSeq)+2))
			if len(m.pending) > 0 && rng.IntN(5) != 0 {
				id = m.pending[rng.IntN(len(m.pending))].id
			}
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				var req ReloadRequest
				var err *Error
				if confirm {
					req, out, err = w.ConfirmReload(id, now, out)
				} else {
					req, out, err = w.FailReload(id, now, out)
				}
				return stepOut{entries: out, code: code(err), req: req}
			}
			wantCode = m.resolveReload(id, confirm, now)
			check = func(o *stepOut) {
				want := ReloadFailed
				if confirm {
					want = ReloadCompleted
				}
				if o.code == "" && (o.req.ID != id || o.req.Status != want || o.req.UpdatedAt != now) {
					t.Fatalf("seed %d step %d: resolved request %+v", seed, step, o.req)
				}
			}
		case r < 95:
			op = "advance"
			switch rng.IntN(4) {
			case 0:
				now += rng.Int64N(int64(time.Second))
			case 1:
				now += rng.Int64N(day)
			case 2:
				now += rng.Int64N(10 * day)
			default:
				now += rng.Int64N(60 * day) // many periods at once
			}
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				return stepOut{entries: w.Advance(now, out)}
			}
			m.advance(now)
		default:
			op = "expire"
			run = func(w *Wallet, out []Entry, _ []ChargeResult) stepOut {
				return stepOut{entries: w.Expire(now, out)}
			}
			m.advance(now)
		}
		m.alerts(before)

		var o stepOut
		if rng.IntN(40) == 0 {
			// A decoded copy behaves exactly as the wallet: run the step
			// on both and go on with the copy.
			enc := AppendWallet(nil, w)
			d, err := DecodeWallet(enc)
			if err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			if !bytes.Equal(AppendWallet(nil, d), enc) {
				t.Fatalf("seed %d step %d: a decoded wallet encodes differently", seed, step)
			}
			o = run(w, nil, nil)
			o.fx = w.TakeEffects()
			od := run(d, nil, nil)
			od.fx = d.TakeEffects()
			if !reflect.DeepEqual(o, od) {
				t.Fatalf("seed %d step %d %s: the decoded copy did otherwise:\n%+v\n%+v", seed, step, op, o, od)
			}
			if !bytes.Equal(AppendWallet(nil, w), AppendWallet(nil, d)) {
				t.Fatalf("seed %d step %d %s: the decoded copy ends in another state", seed, step, op)
			}
			w = d
			counts["(decoded)"]++
		} else {
			o = run(w, out[:0], res[:0])
			o.fx = w.TakeEffects()
			out, res = o.entries, o.res
		}
		counts[op+" "+o.code]++
		if o.code != wantCode {
			t.Fatalf("seed %d step %d %s: code %q, model %q", seed, step, op, o.code, wantCode)
		}
		if check != nil {
			check(&o)
		}

		// The entries are the model's, numbered in sequence, each with the
		// running sum as its balance, and they respect consumption order.
		if len(o.entries) != len(m.exp) {
			t.Fatalf("seed %d step %d %s: entries %s, model %+v", seed, step, op, fmtEntries(o.entries), m.exp)
		}
		for i := range o.entries {
			e, x := &o.entries[i], m.exp[i]
			inv.seq++
			if e.Type != x.typ || e.Account != x.acct || e.Amount != x.amount || e.BucketID != x.bucket || e.OccurredAt != x.at || e.Seq != inv.seq || e.RecordedAt != now {
				t.Fatalf("seed %d step %d %s: entry %d %s, model %+v", seed, step, op, i, fmtEntries(o.entries[i:i+1]), x)
			}
			if e.BucketID == "" && e.Amount < 0 && e.Type != EntryHold {
				counts["(debt parts)"]++
			} else if e.Amount < 0 && e.Type != EntryExpiry && i > 0 && o.entries[i-1].Type == e.Type && o.entries[i-1].Amount < 0 && o.entries[i-1].Account == e.Account {
				counts["(multi-bucket debits)"]++
			}
			counts["(entries "+e.Type.String()+")"]++
			if e.Type == EntryExpiry && string(e.Metadata) == `{"reason":"plan_change"}` {
				counts["(plan buckets ended by a change)"]++
			}
			inv.sums[e.Account] += e.Amount
			if e.BalanceAfter != inv.sums[e.Account] {
				t.Fatalf("seed %d step %d: balance_after %d != sum of entries %d", seed, step, e.BalanceAfter, inv.sums[e.Account])
			}
			if e.Type == EntryGrant && e.Amount > 0 && !(i > 0 && settledBy(&o.entries[i-1], e)) { // not a reversed grant
				inv.checkGrant(t, m, e)
			}
		}
		checkConsumptionOrder(t, m, snapshot, debtBefore, heldBefore, o.entries)
		checkEffects(t, seed, step, op, m, inv, &o.fx)
		for _, h := range o.fx.Holds {
			if h.Status != HoldActive {
				ended = append(ended, h.ID)
			}
			counts["(hold "+h.Status.String()+")"]++
		}
		for _, n := range o.fx.Notes {
			counts["(note "+n.Type+")"]++
		}
		if l := w.Life; l != nil && len(l.Pending) > 1 {
			counts["(several reloads pending)"]++
		}

		if err := w.Check(); err != nil {
			t.Fatalf("seed %d step %d %s: %v", seed, step, op, err)
		}
		compareModel(t, seed, step, w, m, inv.sums)
		if o.code != "" {
			clear(debited) // refused: nothing was debited
		}
		inv.check(t, seed, step, op, w, m, now, o.entries, &o.fx, debited)
		ledger = append(ledger, o.entries...)
		if step%97 == 0 {
			checkUsageView(t, seed, step, w, m, ledger, now)
			counts["(usage views checked)"]++
		}
	}
	if testing.Verbose() {
		keys := make([]string, 0, len(counts))
		for k := range counts {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			t.Logf("seed %d: %-40s %d", seed, k, counts[k])
		}
	}
}

// checkUsageView checks the usage view of the last three periods against
// the ledger (every entry the wallet made, oldest first) and the model:
// each period's granted, used, expired and other are the sums of its
// entries by type and bucket kind, what remained at its end is the ledger's
// balance then, and for the period not over yet it is what the model's
// buckets hold now.
func checkUsageView(t *testing.T, seed uint64, step int, w *Wallet, m *model, ledger []Entry, now int64) {
	t.Helper()
	periods := w.UsagePeriods(now, 3)
	var recent []Entry // newest first, since the oldest period's start
	for i := len(ledger) - 1; i >= 0 && ledger[i].RecordedAt >= periods[len(periods)-1][0]; i-- {
		recent = append(recent, ledger[i])
	}
	type key struct {
		acct string
		kind Kind
	}
	for _, pu := range w.Usage(periods, recent) {
		want := map[key]*KindUsage{}
		get := func(k key) *KindUsage {
			if want[k] == nil {
				want[k] = &KindUsage{Kind: k.kind}
			}
			return want[k]
		}
		for _, e := range ledger {
			k := key{e.Account, e.BucketKind}
			if e.RecordedAt < pu.End {
				get(k).Remaining += e.Amount
			}
			if e.RecordedAt < pu.Start || e.RecordedAt >= pu.End {
				continue
			}
			get(k).add(&e)
		}
		got := map[key]KindUsage{}
		for _, a := range pu.Accounts {
			for _, k := range a.Kinds {
				got[key{a.Account, k.Kind}] = k
			}
		}
		for k, f := range want {
			g, shown := got[k]
			if !shown && *f == (KindUsage{Kind: k.kind}) {
				continue // nothing held, nothing moved: the view leaves it out
			}
			if g != *f {
				t.Fatalf("seed %d step %d: usage view of [%d, %d) %s kind %d: %+v, the ledger says %+v", seed, step, pu.Start, pu.End, k.acct, k.kind, g, *f)
			}
		}
		if pu.End <= now {
			continue
		}
		// Not over yet: what remains is what the model holds.
		held := map[key]int64{}
		for _, b := range m.buckets {
			held[key{b.acct, b.kind}] += b.rem
		}
		for id, a := range m.accts {
			held[key{id, 0}] -= a.held + a.debt
		}
		for k, v := range held {
			if got[k].Remaining != v {
				t.Fatalf("seed %d step %d: usage view now, %s kind %d: remaining %d, the model holds %d", seed, step, k.acct, k.kind, got[k].Remaining, v)
			}
		}
	}
}

// checkGrant verifies that a plan grant names its allocation and period, and
// that no schedule grants a period twice.
// settledBy reports whether d is the debt part of grant e: a grant's
// entries are its debt part, then its bucket part.
func settledBy(d, e *Entry) bool {
	return d.Type == e.Type && d.BucketID == "" && d.Amount > 0 && e.BucketID != "" &&
		d.Reference == e.Reference && bytes.Equal(d.Metadata, e.Metadata)
}

func (inv *invariants) checkGrant(t *testing.T, m *model, e *Entry) {
	t.Helper()
	var md struct {
		Allocation  int    `json:"allocation"`
		PeriodStart string `json:"period_start"`
		PeriodEnd   string `json:"period_end"`
	}
	if err := json.Unmarshal(e.Metadata, &md); err != nil {
		t.Fatalf("grant metadata %s: %v", e.Metadata, err)
	}
	// The schedule the model granted it under (a step may grant under a
	// plan it then replaces): its period holding the grant's instant.
	ms := func(ns int64) string { return time.Unix(0, ns).UTC().Format("2006-01-02T15:04:05.000Z07:00") }
	i := slices.IndexFunc(m.granted, func(g mGrant) bool {
		start := g.sched.anchor + mFloorDiv(e.OccurredAt-g.sched.anchor, g.sched.length)*g.sched.length
		return g.alloc == md.Allocation && md.PeriodStart == ms(start) && md.PeriodEnd == ms(start+g.sched.length)
	})
	if i < 0 {
		t.Fatalf("grant at %d: metadata %s is not the period of an allocation the model granted %+v", e.OccurredAt, e.Metadata, m.granted)
	}
	s := m.granted[i].sched
	m.granted = slices.Delete(m.granted, i, i+1)
	key := strconv.Itoa(s.serial) + "/" + md.PeriodStart
	if inv.grants[key] {
		t.Fatalf("schedule %d granted period %s twice", s.serial, md.PeriodStart)
	}
	inv.grants[key] = true
}

// checkEffects compares a step's notifications, hold records and reload
// records with the model's, and checks their numbering.
func checkEffects(t *testing.T, seed uint64, step int, op string, m *model, inv *invariants, fx *Effects) {
	t.Helper()
	var notes, holds, reloads []string
	for _, n := range fx.Notes {
		inv.noteSeq++
		if n.Seq != inv.noteSeq || n.Customer != "c_prop" || n.ID() != NotificationID("c_prop", n.Seq) {
			t.Fatalf("seed %d step %d %s: notification seq %d, want %d", seed, step, op, n.Seq, inv.noteSeq)
		}
		notes = append(notes, n.Type+" "+noteAccount(&n))
	}
	for _, h := range fx.Holds {
		holds = append(holds, h.ID+" "+h.Status.String())
	}
	for _, r := range fx.Reloads {
		reloads = append(reloads, r.ID+" "+r.Status.String())
		switch r.Status {
		case ReloadPending:
			inv.pending[r.ID] = true
		default:
			if !inv.pending[r.ID] {
				t.Fatalf("seed %d step %d %s: request %s resolved while not pending", seed, step, op, r.ID)
			}
			delete(inv.pending, r.ID)
		}
	}
	if !slices.Equal(notes, m.notes) || !slices.Equal(holds, m.holdFx) || !slices.Equal(reloads, m.reloadFx) {
		t.Fatalf("seed %d step %d %s: effects\n notes %v\n holds %v\n reloads %v\nmodel\n notes %v\n holds %v\n reloads %v",
			seed, step, op, notes, holds, reloads, m.notes, m.holdFx, m.reloadFx)
	}
	if len(inv.pending) > ReloadPendingMax {
		t.Fatalf("seed %d step %d %s: %d reload requests pending", seed, step, op, len(inv.pending))
	}
}

// check verifies the invariants that need no model after a step at now.
func (inv *invariants) check(t *testing.T, seed uint64, step int, op string, w *Wallet, m *model, now int64, out []Entry, fx *Effects, debited map[string]bool) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d %s: %s", seed, step, op, fmt.Sprintf(format, args...))
	}
	// Nothing due survives an operation (Configure only sets settings: the
	// next operation applies what is due).
	configure := strings.HasPrefix(op, "configure")
	for _, a := range w.Accounts {
		if configure {
			break
		}
		for _, b := range a.Buckets {
			if b.ExpiresAt != 0 && b.ExpiresAt <= now {
				fail("bucket %s expiring at %d survives at %d", b.ID, b.ExpiresAt, now)
			}
		}
	}
	if l := w.Life; l != nil {
		for _, h := range l.Holds {
			if h.ExpiresAt <= now && !configure {
				fail("hold %s expiring at %d survives at %d", h.ID, h.ExpiresAt, now)
			}
		}
		if len(l.Pending) != len(inv.pending) || slices.ContainsFunc(l.Pending, func(r ReloadRequest) bool { return !inv.pending[r.ID] }) {
			fail("pending requests %+v, records say %v", l.Pending, inv.pending)
		}
		// await_payment waits for each payment; grant_immediately does not,
		// up to max_unpaid.
		if ar := w.Settings.AutoReload; ar != nil && len(fx.Reloads) > 0 && fx.Reloads[len(fx.Reloads)-1].Status == ReloadPending {
			if unpaid := mUnpaid(ar); len(l.Pending) > unpaid {
				fail("%d requests pending after a new one, settings %+v", len(l.Pending), ar)
			}
		}
	}
	if next := w.NextDue(); !configure && next != 0 && next <= now {
		fail("next due %d is not after now %d", next, now)
	}

	// Requests per reload period: a new request counts in the period it
	// was made in, at most max_per_period.
	made := false
	for _, r := range fx.Reloads {
		if r.Status != ReloadPending {
			continue
		}
		if r.CreatedAt != now || w.Life.ReloadPeriod > now {
			fail("request %+v made at %d in the period starting %d", r, now, w.Life.ReloadPeriod)
		}
		if w.Life.ReloadPeriod != inv.period {
			inv.period, inv.inPeriod = w.Life.ReloadPeriod, 0
		}
		inv.inPeriod++
		if ar := w.Settings.AutoReload; ar == nil || (ar.MaxPerPeriod > 0 && inv.inPeriod > ar.MaxPerPeriod) {
			fail("%d reload requests in the period starting %d, settings %+v", inv.inPeriod, inv.period, ar)
		}
		made = true
	}
	// One step may make two requests (grant_immediately: one for an event
	// it could not cover, one more when the charge leaves available below
	// the threshold).
	if made && int(w.Life.ReloadCount) != inv.inPeriod {
		fail("reload count %d, %d requests seen", w.Life.ReloadCount, inv.inPeriod)
	}

	// The funds rule. A debit that went through leaves its account at or
	// above its floor (0, or -credit limit under overdraft). Beyond that,
	// split available into the credits no hold reserves (free = available +
	// debt) and debt: free goes below zero only when credits a hold
	// reserves expire or are reversed (the hold keeps its amount,
	// docs/DESIGN.md; TestReverseTopUpOfHeldCredits), and debt goes above
	// the credit limit (0 under reject) only by a settled hold's excess or
	// by settings that lowered the limit. Each exception lasts until the
	// account is back within its bound.
	for _, a := range w.Accounts {
		id, av := a.ID(), a.Available()
		lim := int64(0)
		if w.Settings.Policy == PolicyOverdraft {
			lim = m.limits[id]
		}
		if debited[id] && av < -lim {
			fail("account %s at %d after a debit that went through, below its floor %d", id, av, -lim)
		}
		settled, expired := false, false
		for _, e := range out {
			settled = settled || (e.Account == id && e.Type == EntryHoldRelease && e.EventID != "")
			expired = expired || (e.Account == id && e.Type == EntryExpiry)
		}
		if free := av + a.Debt; free >= 0 {
			inv.negFree[id] = false
		} else if !inv.negFree[id] {
			heldCredits := (expired && a.Held+heldReleased(out, id) > 0) || (op == "reverse" && a.Held > 0)
			if !heldCredits {
				fail("account %s: free credits %d below zero (available %d, debt %d, held %d): %s", id, free, av, a.Debt, a.Held, fmtEntries(out))
			}
			inv.negFree[id] = true
		}
		if a.Debt <= lim {
			inv.overDebt[id] = false
		} else if !inv.overDebt[id] {
			if !(configure || settled) {
				fail("account %s: debt %d above its limit %d: %s", id, a.Debt, lim, fmtEntries(out))
			}
			inv.overDebt[id] = true
		}
	}
}

// heldReleased returns what hold_release entries of an account gave back.
func heldReleased(out []Entry, id string) int64 {
	var n int64
	for _, e := range out {
		if e.Account == id && e.Type == EntryHoldRelease {
			n += e.Amount
		}
	}
	return n
}

// snapshotOrder returns each account's buckets in consumption order, its
// debt and its held amount, as the model has them before a step.
func (m *model) snapshotOrder() (map[string][]mBucket, map[string]int64, map[string]int64) {
	s, debt, held := map[string][]mBucket{}, map[string]int64{}, map[string]int64{}
	for id, a := range m.accts {
		for _, i := range m.order(id) {
			s[id] = append(s[id], m.buckets[i])
		}
		debt[id], held[id] = a.debt, a.held
	}
	return s, debt, held
}

// checkConsumptionOrder verifies, from the entries alone and the order keys
// of the buckets, that no debit drew from a bucket while a bucket earlier in
// consumption order still had something left, and that debt was only taken
// once every bucket was empty (unless holds reserve some of them).
func checkConsumptionOrder(t *testing.T, m *model, before map[string][]mBucket, debt, held map[string]int64, out []Entry) {
	t.Helper()
	left := map[string]int64{}
	live := map[string][]string{}
	for acct, bs := range before {
		for _, b := range bs {
			left[b.id] = b.rem
			live[acct] = append(live[acct], b.id)
		}
	}
	holds := map[string]bool{}
	for acct, h := range held {
		holds[acct] = h > 0
	}
	for i, e := range out {
		switch {
		case e.Type == EntryHold || e.Type == EntryHoldRelease:
			holds[e.Account] = true
			// A hold's end settles debt with freed credits: a bucket part
			// (negative) then its debt part (positive, no bucket).
			if e.BucketID != "" {
				left[e.BucketID] += e.Amount
			} else if i > 0 && out[i-1].Type == EntryHoldRelease && out[i-1].BucketID != "" {
				debt[e.Account] -= e.Amount
			}
			continue
		case e.Type == EntryExpiry || e.Type == EntryTopUpReversal || e.Type == EntryGrant && e.Amount < 0: // a bucket taken away
			left[e.BucketID] = 0
			continue
		case e.Amount > 0 && e.BucketID == "": // a grant settling debt
			debt[e.Account] -= e.Amount
			continue
		case e.Amount > 0: // a grant
			if _, ok := left[e.BucketID]; !ok {
				live[e.Account] = append(live[e.Account], e.BucketID)
			}
			left[e.BucketID] += e.Amount
			continue
		case e.Amount == 0:
			continue
		}
		if e.BucketID == "" {
			debt[e.Account] -= e.Amount
			if holds[e.Account] {
				continue
			}
			for _, id := range live[e.Account] {
				if left[id] > 0 {
					t.Fatalf("entry %d puts %d into debt while %q still has %d", e.Seq, -e.Amount, id, left[id])
				}
			}
			continue
		}
		drawn := m.all[e.BucketID]
		for _, id := range live[e.Account] {
			if b := m.all[id]; id != e.BucketID && left[id] > 0 && mLess(&b, &drawn) {
				t.Fatalf("entry %d draws %d from %q while %q, earlier in consumption order, still has %d", e.Seq, -e.Amount, e.BucketID, id, left[id])
			}
		}
		left[e.BucketID] += e.Amount
		if left[e.BucketID] < 0 {
			t.Fatalf("entry %d draws %d from %q, more than it has", e.Seq, -e.Amount, e.BucketID)
		}
	}
}

func compareModel(t *testing.T, seed uint64, step int, w *Wallet, m *model, sums map[string]int64) {
	t.Helper()
	ids := m.acctIDs()
	if len(ids) != len(w.Accounts) {
		t.Fatalf("seed %d step %d: %d accounts, model %v", seed, step, len(w.Accounts), ids)
	}
	for i, id := range ids {
		a := w.Accounts[i]
		ma := m.accts[id]
		if a.ID() != id || a.Available() != m.avail(id) || a.Debt != ma.debt || a.Carry != ma.carry || a.Held != ma.held || a.Depleted != ma.depleted || sums[id] != a.Available() {
			t.Fatalf("seed %d step %d: account %s available %d debt %d carry %d held %d depleted %v (entries sum %d); model %s %d %+v",
				seed, step, a.ID(), a.Available(), a.Debt, a.Carry, a.Held, a.Depleted, sums[id], id, m.avail(id), *ma)
		}
		order := m.order(id)
		if len(order) != len(a.Buckets) {
			t.Fatalf("seed %d step %d: account %s has %d buckets, model %d", seed, step, id, len(a.Buckets), len(order))
		}
		for j, k := range order {
			b, mb := &a.Buckets[j], &m.buckets[k]
			if b.ID != mb.id || b.Remaining != mb.rem || b.Amount != mb.amount || int(b.Priority) != mb.prio || b.Kind != mb.kind ||
				b.ExpiresAt != mb.exp || b.EffectiveAt != mb.eff || b.Reference != mb.ref || int(b.Alloc) != mb.alloc {
				t.Fatalf("seed %d step %d: account %s bucket %d: %+v, model %+v", seed, step, id, j, *b, *mb)
			}
		}
	}
	if w.BucketSeq != m.bucketSeq {
		t.Fatalf("seed %d step %d: bucket seq %d, model %d", seed, step, w.BucketSeq, m.bucketSeq)
	}
	if w.Settings.Status != m.status || (w.Settings.AutoReload == nil) != (m.reload == nil) ||
		(m.reload != nil && w.Settings.AutoReload.Enabled != m.reload.Enabled) {
		t.Fatalf("seed %d step %d: settings %+v, model status %v reload %+v", seed, step, w.Settings, m.status, m.reload)
	}
	l := w.Life
	if l == nil {
		if len(m.holds) > 0 || len(m.pending) > 0 || m.reloadSeq > 0 || len(m.scheds) > 0 {
			t.Fatalf("seed %d step %d: no lifecycle state, model %+v %+v %d %+v", seed, step, m.holds, m.pending, m.reloadSeq, m.scheds)
		}
		return
	}
	var holds []mHold
	for _, h := range l.Holds {
		holds = append(holds, mHold{id: h.ID, acct: h.Account, amount: h.Amount, exp: h.ExpiresAt})
	}
	if !slices.Equal(holds, m.holds) {
		t.Fatalf("seed %d step %d: holds %+v, model %+v", seed, step, holds, m.holds)
	}
	samePending := slices.EqualFunc(l.Pending, m.pending, func(p ReloadRequest, q *mReload) bool {
		return p.ID == q.id && p.Account == q.acct && p.Amount == q.amount && (p.Mode == ReloadAwaitPayment) == q.await
	})
	if !samePending || l.ReloadSeq != m.reloadSeq || int(l.ReloadCount) != m.reloadCount || l.ReloadPeriod != m.reloadPeriod {
		t.Fatalf("seed %d step %d: reload state %+v seq %d count %d period %d, model %+v %d %d %d", seed, step, l.Pending, l.ReloadSeq, l.ReloadCount,
			l.ReloadPeriod, m.pending, m.reloadSeq, m.reloadCount, m.reloadPeriod)
	}
	if l.PlanID != m.planID || len(l.Allocs) != len(m.scheds) {
		t.Fatalf("seed %d step %d: plan %q schedules %+v, model %q %+v", seed, step, l.PlanID, l.Allocs, m.planID, m.scheds)
	}
	for i, st := range l.Allocs {
		s := m.scheds[i]
		if st.Anchor != s.anchor || mLength(st.Period) != s.length || st.Last != s.last || st.Since != s.since {
			t.Fatalf("seed %d step %d: schedule %d %+v, model %+v", seed, step, i, st, s)
		}
	}
}

func TestPropertyWalletAgainstModel(t *testing.T) {
	steps := 15000
	if testing.Short() {
		steps = 2000
	}
	for seed := uint64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			propertyRun(t, seed, steps)
		})
	}
}
