package wallet

import (
	"slices"
	"strconv"

	"github.com/meterd/meterd/meter"
)

// The credit lifecycle: plan grants at period boundaries, exact-time expiry
// of buckets and holds, balance alerts, auto-reload. Everything here is part
// of the pure state machine: time is an argument, and what happened is
// returned as ledger entries and as effects (notifications, hold and reload
// records) that the caller stores in the same batch.
//
// Every operation first runs Advance(now): whatever came due since the
// wallet last moved (expiries, hold expiries, plan boundaries) is applied in
// time order, each at its own instant, so a read or a charge at any moment
// sees exactly the state of that moment, whether or not a timer ran.

// Limits of the lifecycle.
const (
	PlanAllocationsMax = 16   // allocations per plan
	AlertsMax          = 16   // balance alert thresholds
	WalletHoldsMax     = 1000 // active holds per wallet
	// ReloadPendingMax bounds the auto-reload requests pending at once
	// (grant_immediately mode, when max_unpaid does not bound them lower).
	ReloadPendingMax = 64
	// advanceStepsMax bounds the due instants one Advance applies; the rest
	// is applied by the next one (NextDue stays in the past).
	advanceStepsMax = 4096
)

// Lifecycle is a wallet's lifecycle state. Wallets that never used any of it
// have none (Wallet.Life == nil), which keeps them small.
type Lifecycle struct {
	NoteSeq uint64 // last notification seq

	PlanID string       // the plan Allocs follow
	Allocs []AllocState // one per allocation of the plan in force

	Holds []Hold // active holds, in creation order

	ReloadSeq    uint64          // last auto-reload request number
	Pending      []ReloadRequest // requests pending, oldest first
	ReloadPeriod int64           // the period ReloadCount counts (its start, unix ns)
	ReloadCount  uint32          // requests made in ReloadPeriod

	fx Effects // made by the current operation; taken by TakeEffects
}

// AllocState is the grant schedule of one allocation.
type AllocState struct {
	Anchor int64
	Period PeriodUnit
	Last   int64 // the last period index granted (or skipped)
	Since  int64 // when the schedule started: its first grant happens then, not before
	// Prorate: the next grant is prorated by the time left in its period
	// at the grant (a plan changed mid-period with proration).
	Prorate bool
}

// due returns when the allocation's next period is granted.
func (st *AllocState) due() int64 {
	return max(periodStart(st.Anchor, st.Period, st.Last+1), st.Since)
}

// Hold is an active reservation of part of an account's available balance.
type Hold struct {
	ID        string
	Account   string // "name:ASSET"
	Amount    int64  // > 0
	CreatedAt int64
	ExpiresAt int64    // > CreatedAt
	Hash      [16]byte // content hash of the request that placed it (idempotency)
}

// HoldStatus is where a hold is in its life.
type HoldStatus uint8

// Hold statuses.
const (
	HoldActive HoldStatus = iota + 1
	HoldSettled
	HoldReleased
	HoldExpired
)

// String returns the contract name of the status.
func (s HoldStatus) String() string {
	switch s {
	case HoldActive:
		return "active"
	case HoldSettled:
		return "settled"
	case HoldReleased:
		return "released"
	case HoldExpired:
		return "expired"
	}
	return "hold_status(" + strconv.Itoa(int(s)) + ")"
}

// HoldRecord is a hold with its outcome, as the API shows it.
type HoldRecord struct {
	Hold
	Customer  string
	Scale     uint8
	Status    HoldStatus
	UpdatedAt int64
	EventID   string // the event that settled it
	Settled   int64  // what that event charged to the hold's account
}

// ReloadStatus is where an auto-reload request is.
type ReloadStatus uint8

// Auto-reload request statuses.
const (
	ReloadPending ReloadStatus = iota + 1
	ReloadCompleted
	ReloadFailed
)

// String returns the contract name of the status.
func (s ReloadStatus) String() string {
	switch s {
	case ReloadPending:
		return "pending"
	case ReloadCompleted:
		return "completed"
	case ReloadFailed:
		return "failed"
	}
	return "reload_status(" + strconv.Itoa(int(s)) + ")"
}

// ReloadRequest is one auto-reload request.
type ReloadRequest struct {
	ID        string // "r_<n>"
	Account   string // "name:ASSET"
	Scale     uint8
	Amount    int64
	Charge    string // billed, surcharge included
	Currency  string
	Mode      ReloadMode
	Status    ReloadStatus
	CreatedAt int64
	UpdatedAt int64
	BucketID  string // the granted bucket, once granted
	ExpiresAt int64  // the granted credits' expiry, 0 = never
}

// Effects are what an operation made beside ledger entries.
type Effects struct {
	Notes   []Notification
	Holds   []HoldRecord    // holds created or ended
	Reloads []ReloadRequest // requests created or changed
}

// Empty reports whether there is nothing to store.
func (f *Effects) Empty() bool { return len(f.Notes)+len(f.Holds)+len(f.Reloads) == 0 }

// TakeEffects returns the effects made since the last call and forgets them.
func (w *Wallet) TakeEffects() Effects {
	if w.Life == nil {
		return Effects{}
	}
	f := w.Life.fx
	w.Life.fx = Effects{}
	return f
}

func (w *Wallet) life() *Lifecycle {
	if w.Life == nil {
		w.Life = &Lifecycle{}
	}
	return w.Life
}

// note makes a notification.
func (w *Wallet) note(typ, account string, at int64, data ...noteField) {
	l := w.life()
	l.NoteSeq++
	l.fx.Notes = append(l.fx.Notes, newNote(w.Customer, l.NoteSeq, typ, account, at, data))
}

// ---- Plans ----

// PlanPeriod returns the plan period holding now: that of the plan's first
// allocation. ok is false without a plan or before its anchor.
func (w *Wallet) PlanPeriod(now int64) (start, end int64, ok bool) {
	p := w.Settings.Plan
	if p == nil || len(p.Allocations) == 0 {
		return 0, 0, false
	}
	al := &p.Allocations[0]
	k := periodIndex(al.Anchor, al.Period, now)
	if k < 0 {
		return 0, 0, false
	}
	return periodStart(al.Anchor, al.Period, k), periodStart(al.Anchor, al.Period, k+1), true
}

// PeriodEnd resolves expires_at "period_end": the end of the plan period holding now.
func (w *Wallet) PeriodEnd(now int64) (int64, *Error) {
	_, end, ok := w.PlanPeriod(now)
	if !ok {
		return 0, FieldErrorf("expires_at", CodeNoPlanPeriod, "expires_at \"period_end\" needs a plan period, and customer %s has none now", w.Customer)
	}
	return end, nil
}

// syncPlan aligns the grant schedules with the plan in force. A new plan id
// starts every schedule afresh: the period holding now is granted by the
// next Advance. Under the same plan id an allocation keeps its schedule
// while its anchor and period stay the same, so that saving the same
// settings again never grants twice.
func (w *Wallet) syncPlan(now int64) {
	p := w.Settings.Plan
	if p == nil {
		if w.Life != nil {
			w.Life.PlanID, w.Life.Allocs = "", nil
		}
		return
	}
	l := w.life()
	fresh := l.PlanID != p.ID
	allocs := make([]AllocState, len(p.Allocations))
	for i := range p.Allocations {
		al := &p.Allocations[i]
		st := AllocState{Anchor: al.Anchor, Period: al.Period, Since: now}
		if !fresh && i < len(l.Allocs) && l.Allocs[i].Anchor == al.Anchor && l.Allocs[i].Period == al.Period {
			st = l.Allocs[i]
		} else {
			st.Last = max(periodIndex(al.Anchor, al.Period, now), 0) - 1
		}
		allocs[i] = st
	}
	l.PlanID, l.Allocs = p.ID, allocs
}

// NextDue returns the earliest instant at which something of the wallet
// comes due (a bucket or hold expiry, a plan boundary), or 0 if nothing
// will. The owner of the wallet runs Advance then.
func (w *Wallet) NextDue() int64 {
	next := w.NextExpiry()
	earlier := func(t int64) {
		if t > 0 && (next == 0 || t < next) {
			next = t
		}
	}
	if s := w.Settings; s.Status == StatusPaused {
		earlier(s.PausedUntil)
	}
	if pc := w.Settings.PlanChange; pc != nil {
		earlier(pc.At)
	}
	if l := w.Life; l != nil {
		for i := range l.Holds {
			earlier(l.Holds[i].ExpiresAt)
		}
		for i := range l.Allocs {
			if t := l.Allocs[i].due(); t < periodTimeMax {
				earlier(t)
			}
		}
	}
	return next
}

// Advance applies everything that came due up to now, in time order, each
// at its own instant (entries carry it as OccurredAt): bucket expiries,
// hold expiries, plan grants. Missed plan periods are caught up as the
// strategy says: expire_and_replace grants only the period holding now
// (earlier ones would have expired already); accumulate grants each missed
// period, under its cap. Then balance alerts are checked.
func (w *Wallet) Advance(now int64, out []Entry) []Entry {
	var snap availSnap
	w.snapshot(&snap)
	out = w.advance(now, out)
	w.alertsSince(&snap, now)
	return out
}

// advance is Advance without the alerts: the operation that calls it checks
// them at its end.
func (w *Wallet) advance(now int64, out []Entry) []Entry {
	first := len(out)
	for range advanceStepsMax {
		t := w.NextDue()
		if t == 0 || t > now {
			break
		}
		out = w.runDue(t, now, out)
	}
	for i := first; i < len(out); i++ {
		out[i].RecordedAt = now
	}
	if len(out) > first {
		w.UpdatedAt = now
	}
	return out
}

// runDue applies what is due at t. A pause that ends at t ends first: the
// customer is active at t, and a plan period starting at t is granted.
func (w *Wallet) runDue(t, now int64, out []Entry) []Entry {
	if s := w.Settings; s.Status == StatusPaused && s.PausedUntil != 0 && s.PausedUntil <= t {
		r := *s
		r.Status, r.PausedUntil = StatusActive, 0
		w.Settings = normalizeSettings(r)
		w.UpdatedAt = t
	}
	if pc := w.Settings.PlanChange; pc != nil && pc.At <= t {
		// A scheduled change, at the boundary: before that instant's grants,
		// so the old plan's next period is never granted.
		out = w.applyPlanChange(pc.Plan, pc.At, out)
	}
	out = w.expireBuckets(t, out)
	l := w.Life
	if l == nil {
		return out
	}
	for i := 0; i < len(l.Holds); {
		h := l.Holds[i]
		if h.ExpiresAt > t {
			i++
			continue
		}
		out = w.endHold(i, HoldExpired, h.ExpiresAt, "", 0, out)
		w.note(NoteHoldExpired, h.Account, h.ExpiresAt,
			noteField{key: "hold_id", str: h.ID}, noteField{key: "amount", str: units(h.Amount, w.accountScale(h.Account))})
	}
	p := w.Settings.Plan
	for i := range l.Allocs {
		st := &l.Allocs[i]
		k := st.Last + 1
		at := st.due()
		if at > t || p == nil || i >= len(p.Allocations) {
			continue
		}
		al := &p.Allocations[i]
		if w.Settings.Status == StatusPaused && !p.GrantWhilePaused {
			st.Last = k // a period that starts while paused is skipped for good
			continue
		}
		if al.Strategy == StrategyExpireAndReplace {
			if kNow := periodIndex(st.Anchor, st.Period, now); k < kNow {
				st.Last = kNow - 1 // periods that ended before now would have expired already
				continue
			}
		}
		st.Last = k
		out = w.grantAllocation(i, al, k, at, st.Prorate, out)
		st.Prorate = false
	}
	return out
}

// GrantPreview is the next grant of one plan allocation, as it would be
// made if nothing else changed before it.
type GrantPreview struct {
	PlanID     string
	Allocation int // index in the plan's allocations
	Account    string
	Scale      uint8
	At         int64 // unix ns
	Amount     int64 // what would really be granted: 0 at an accumulation cap or while paused
}

// NextGrants previews the next grant of every allocation of the plan in
// force at now (advanced to now): when, and how much the wallet's state
// makes it. A plan change scheduled before an allocation's next grant
// previews the new plan's first grants at the change instead. While
// paused until after a grant (and not granting while paused) its amount
// is 0.
func (w *Wallet) NextGrants(now int64) []GrantPreview {
	c := w.Clone()
	c.advance(now, nil)
	return c.nextGrants()
}

// nextGrants is NextGrants of a wallet already advanced (a clone: a
// scheduled change is applied to it).
func (w *Wallet) nextGrants() []GrantPreview {
	p, l := w.Settings.Plan, w.Life
	if pc := w.Settings.PlanChange; pc != nil {
		// The change comes first unless a grant of the current plan is due
		// before it: preview the current plan's grants before the change,
		// then the new plan's at the change.
		var out []GrantPreview
		if p != nil && l != nil {
			for i := range l.Allocs {
				if at := l.Allocs[i].due(); at < pc.At && i < len(p.Allocations) {
					out = append(out, w.preview(p, i, &l.Allocs[i], at))
				}
			}
		}
		w.applyPlanChange(pc.Plan, pc.At, nil)
		return append(out, w.nextGrants()...)
	}
	if p == nil || l == nil {
		return nil
	}
	out := make([]GrantPreview, 0, len(l.Allocs))
	for i := range l.Allocs {
		if at := l.Allocs[i].due(); at < periodTimeMax && i < len(p.Allocations) {
			out = append(out, w.preview(p, i, &l.Allocs[i], at))
		}
	}
	return out
}

// preview is the grant allocation i of p would make at at.
func (w *Wallet) preview(p *Plan, i int, st *AllocState, at int64) GrantPreview {
	al := &p.Allocations[i]
	g := GrantPreview{PlanID: p.ID, Allocation: i, Account: al.Account + ":" + al.Asset, Scale: al.Scale, At: at}
	s := w.Settings
	if s.Status == StatusPaused && (s.PausedUntil == 0 || s.PausedUntil > at) && !p.GrantWhilePaused {
		return g
	}
	k := st.Last + 1
	amount := al.Amount
	if start, end := periodStart(al.Anchor, al.Period, k), periodStart(al.Anchor, al.Period, k+1); st.Prorate && at > start && end > start {
		amount = prorated(amount, end-at, end-start)
	}
	if a := w.accountOf(al.Account, al.Asset); al.Strategy == StrategyAccumulate && al.Cap > 0 && a != nil {
		var held int64
		for j := range a.Buckets {
			if b := &a.Buckets[j]; b.Alloc == uint8(i+1) && b.Reference == p.ID {
				held += b.Remaining
			}
		}
		amount = min(amount, max(al.Cap-held, 0))
	}
	g.Amount = max(amount, 0)
	return g
}

// Reconfigure applies what came due by now, then replaces the customer's
// settings with s (Configure), the plan changing as mode says:
//
//   - PlanChangeNow and PlanChangeNowProrated: when s names another plan
//     (another id, or none), the current plan's buckets end now, each with
//     an expiry entry, and the new plan's period holding now is granted by
//     the next Advance, in full or prorated by the time left in it;
//   - PlanChangeAtPeriodEnd: the current plan stays to the end of the plan
//     period holding now; s.Plan applies from there (nil: the plan ends
//     there). Without a plan period it is CodeNoPlanPeriod.
//
// Settings saved again change nothing: the same plan keeps its schedules,
// and a change scheduled before is replaced by what s says (saving the
// current plan cancels it).
func (w *Wallet) Reconfigure(s Settings, mode PlanChangeMode, now int64, out []Entry) ([]Entry, *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out) // what came due before the change happens under the old settings
	s.PlanChange = nil
	if mode == PlanChangeAtPeriodEnd {
		_, end, ok := w.PlanPeriod(now)
		if !ok {
			return out, FieldErrorf("plan_change.at", CodeNoPlanPeriod, "a plan change at period_end needs a plan period, and customer %s has none now", w.Customer)
		}
		if cur := w.Settings.Plan; !samePlan(cur, s.Plan) {
			s.PlanChange = &PlanChange{At: end, Plan: s.Plan}
		}
		// The plan in force stays; saving it again schedules nothing (and
		// cancels a change scheduled before).
		s.Plan = w.Settings.Plan
		w.Configure(s, now)
		return out, nil
	}
	out = w.endPlanBuckets(s.Plan, now, out)
	fresh := w.Life == nil || w.Life.PlanID == "" || s.Plan == nil || w.Life.PlanID != s.Plan.ID
	w.Configure(s, now)
	if mode == PlanChangeNowProrated && fresh {
		w.ProrateFirstGrants()
	}
	return out, nil
}

// samePlan reports whether a and b are the same plan, allocations and all.
func samePlan(a, b *Plan) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.ID == b.ID && a.GrantWhilePaused == b.GrantWhilePaused && slices.Equal(a.Allocations, b.Allocations) && slices.Equal(a.HoldLimits, b.HoldLimits)
}

// ProrateFirstGrants makes the next grant of every allocation prorated by
// the time left in its period (a plan that starts mid-period).
func (w *Wallet) ProrateFirstGrants() {
	if w.Life == nil {
		return
	}
	for i := range w.Life.Allocs {
		w.Life.Allocs[i].Prorate = true
	}
}

// applyPlanChange makes next the plan from at on: the current plan's
// buckets end at at (when next is another plan), and next's schedules
// start at at.
func (w *Wallet) applyPlanChange(next *Plan, at int64, out []Entry) []Entry {
	out = w.endPlanBuckets(next, at, out)
	s := *w.Settings
	s.Plan, s.PlanChange = next, nil
	w.Settings = normalizeSettings(s)
	w.syncPlan(at)
	w.UpdatedAt = at
	return out
}

// endPlanBuckets ends, at at, the buckets the current plan granted, unless
// next is the same plan (same id): each with credit left makes an expiry
// entry (metadata {"reason":"plan_change"}) and a bucket.expired
// notification.
func (w *Wallet) endPlanBuckets(next *Plan, at int64, out []Entry) []Entry {
	cur := w.Settings.Plan
	if cur == nil || next != nil && next.ID == cur.ID {
		return out
	}
	for _, a := range w.Accounts {
		for i := 0; i < len(a.Buckets); {
			b := &a.Buckets[i]
			if b.Alloc == 0 || b.Reference != cur.ID {
				i++
				continue
			}
			out = w.endBucket(a, i, &Entry{Type: EntryExpiry, Reference: b.Reference, OccurredAt: at, Metadata: planChangeMetadata}, at, out)
		}
	}
	return out
}

var planChangeMetadata = []byte(`{"reason":"plan_change"}`)

// accountScale returns the scale of an account, 0 if it does not exist.
func (w *Wallet) accountScale(id string) uint8 {
	if a := w.Account(id); a != nil {
		return a.Scale
	}
	return 0
}

// grantAllocation grants period k of allocation i at instant at; with
// prorate, the amount times the part of the period left at at, rounded
// down to whole units.
func (w *Wallet) grantAllocation(i int, al *Allocation, k, at int64, prorate bool, out []Entry) []Entry {
	kind := al.Kind
	if kind == 0 {
		kind = KindPlan
	}
	amount := al.Amount
	if start, end := periodStart(al.Anchor, al.Period, k), periodStart(al.Anchor, al.Period, k+1); prorate && at > start && end > start {
		amount = prorated(amount, end-at, end-start)
	}
	a := w.accountOf(al.Account, al.Asset)
	if al.Strategy == StrategyAccumulate && al.Cap > 0 && a != nil {
		var held int64
		for j := range a.Buckets {
			if b := &a.Buckets[j]; b.Alloc == uint8(i+1) && b.Reference == w.Settings.Plan.ID {
				held += b.Remaining
			}
		}
		amount = min(amount, max(al.Cap-held, 0))
	}
	if amount <= 0 {
		return out
	}
	var expires int64
	if al.Strategy == StrategyExpireAndReplace {
		expires = periodStart(al.Anchor, al.Period, k+1)
	}
	md := make([]byte, 0, 96)
	md = append(md, `{"allocation":`...)
	md = strconv.AppendInt(md, int64(i), 10)
	md = append(md, `,"period_start":"`...)
	md = appendTime(md, periodStart(al.Anchor, al.Period, k))
	md = append(md, `","period_end":"`...)
	md = appendTime(md, periodStart(al.Anchor, al.Period, k+1))
	md = append(md, `"}`...)
	g := grant{
		name: al.Account, asset: al.Asset, scale: al.Scale, amount: amount,
		kind: kind, priority: DefaultPriority(kind), expiresAt: expires,
		source: "plan", reference: w.Settings.Plan.ID, metadata: md, entryType: EntryGrant, alloc: uint8(i + 1),
	}
	if e := w.checkGrant(&g); e != nil {
		// A full account or a limit: the grant is skipped, not retried,
		// so that a bad plan never blocks the wallet's other work.
		return out
	}
	_, out = w.applyGrant(&g, at, out)
	return out
}

// ---- Alerts ----

// availSnap is the available balance of each account at the start of an
// operation: alerts fire on crossings between it and the end state.
type availSnap struct {
	n     int
	acct  [WalletAccountsMax]*Account
	avail [WalletAccountsMax]int64
}

func (w *Wallet) snapshot(s *availSnap) {
	s.n = len(w.Accounts)
	for i, a := range w.Accounts {
		s.acct[i], s.avail[i] = a, a.Available()
	}
}

// alertsSince fires, for each account whose available balance crossed one
// since the snapshot: balance.low for each threshold it went below,
// balance.depleted when it went from above zero to zero or less, and
// balance.recovered when it rose above zero after a balance.depleted. A
// balance that stays below a threshold fires nothing more: each downward
// crossing fires once.
func (w *Wallet) alertsSince(s *availSnap, now int64) {
	th := w.Settings.alerts
	for _, a := range w.Accounts {
		var before int64
		for i := 0; i < s.n; i++ {
			if s.acct[i] == a {
				before = s.avail[i]
				break
			}
		}
		after := a.Available()
		if after == before {
			continue
		}
		if after < before && len(th) > 0 {
			vb, va := meter.UnitsDec(before, a.Scale), meter.UnitsDec(after, a.Scale)
			for i := range th {
				if va.Cmp(th[i]) < 0 && vb.Cmp(th[i]) >= 0 {
					w.note(NoteBalanceLow, a.ID(), now,
						noteField{key: "threshold", str: th[i].String()}, noteField{key: "available", str: units(after, a.Scale)})
				}
			}
		}
		if before > 0 && after <= 0 && !a.Depleted {
			a.Depleted = true
			w.note(NoteBalanceDepleted, a.ID(), now, noteField{key: "available", str: units(after, a.Scale)})
		}
		if after > 0 && a.Depleted {
			a.Depleted = false
			w.note(NoteBalanceRecovered, a.ID(), now, noteField{key: "available", str: units(after, a.Scale)})
		}
	}
}

// ---- Holds ----

// HoldCmd reserves part of an account's available balance.
type HoldCmd struct {
	ID        string
	Account   string // "name:ASSET"
	Amount    int64  // > 0
	ExpiresAt int64  // > now
	Hash      [16]byte
}

// findHold returns the index of an active hold, or -1.
func (w *Wallet) findHold(id string) int {
	if w.Life == nil {
		return -1
	}
	for i := range w.Life.Holds {
		if w.Life.Holds[i].ID == id {
			return i
		}
	}
	return -1
}

// ActiveHold returns an active hold by id.
func (w *Wallet) ActiveHold(id string) (Hold, bool) {
	if i := w.findHold(id); i >= 0 {
		return w.Life.Holds[i], true
	}
	return Hold{}, false
}

// PlaceHold reserves c.Amount of an account: it must not be more than the
// account's available balance (a hold never creates debt). The account's
// Held grows and a hold entry of -Amount is posted.
func (w *Wallet) PlaceHold(c *HoldCmd, now int64, out []Entry) ([]Entry, *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out)
	if c.Amount <= 0 || c.Amount > CommandUnitsMax {
		return out, FieldErrorf("amount", CodeInvalidAmount, "hold amount %d is not in [1, %d]", c.Amount, CommandUnitsMax)
	}
	if c.ExpiresAt <= now {
		return out, FieldErrorf("expires_at", CodeInvalidTimestamp, "a hold's expires_at must be in the future")
	}
	if w.findHold(c.ID) >= 0 {
		return out, Errorf(CodeIdempotencyConflict, "hold %s is already active", c.ID)
	}
	if w.Life != nil && len(w.Life.Holds) >= WalletHoldsMax {
		return out, Errorf(CodeLimitExceeded, "a wallet holds at most %d active holds", WalletHoldsMax)
	}
	if max, ok := w.holdLimit(c.Account); ok && w.activeHolds(c.Account) >= max {
		return out, Errorf(CodeHoldLimitReached, "account %s has %d active holds, its limit", c.Account, max)
	}
	a := w.Account(c.Account)
	if a == nil || c.Amount > a.Available() {
		return out, errInsufficientFunds
	}
	l := w.life()
	h := Hold{ID: c.ID, Account: a.ID(), Amount: c.Amount, CreatedAt: now, ExpiresAt: c.ExpiresAt, Hash: c.Hash}
	l.Holds = append(l.Holds, h)
	a.Held += c.Amount
	w.UpdatedAt = now
	t := Entry{Type: EntryHold, Reference: c.ID, OccurredAt: now}
	out = w.post(out, a, &t, -c.Amount, "", 0, "", now)
	l.fx.Holds = append(l.fx.Holds, HoldRecord{Hold: h, Customer: w.Customer, Scale: a.Scale, Status: HoldActive, UpdatedAt: now})
	return out, nil
}

// holdLimit is the most active holds account may have: the customer's
// limit for it, else its plan's; ok is false without one.
func (w *Wallet) holdLimit(account string) (max int, ok bool) {
	for _, l := range w.Settings.HoldLimits {
		if l.Account == account {
			return l.Max, true
		}
	}
	if p := w.Settings.Plan; p != nil {
		for _, l := range p.HoldLimits {
			if l.Account == account {
				return l.Max, true
			}
		}
	}
	return 0, false
}

// activeHolds counts the active holds on account.
func (w *Wallet) activeHolds(account string) int {
	n := 0
	if w.Life != nil {
		for i := range w.Life.Holds {
			if w.Life.Holds[i].Account == account {
				n++
			}
		}
	}
	return n
}

// endHold removes active hold i with a hold_release entry of +Amount at
// instant at, and records its outcome.
func (w *Wallet) endHold(i int, st HoldStatus, at int64, eventID string, settled int64, out []Entry) []Entry {
	l := w.Life
	h := l.Holds[i]
	l.Holds = slices.Delete(l.Holds, i, i+1)
	if len(l.Holds) == 0 {
		l.Holds = nil
	}
	a := w.Account(h.Account)
	a.Held -= h.Amount
	t := Entry{Type: EntryHoldRelease, Reference: h.ID, EventID: eventID, OccurredAt: at}
	out = w.post(out, a, &t, h.Amount, "", 0, "", at)
	// Credits the hold kept from settling debt settle it now: debt is
	// always settled first. Each part is a pair of entries (the bucket
	// gives, the debt takes) whose sum is zero.
	if a.Debt > 0 {
		var free int64
		for i := range a.Buckets {
			free += a.Buckets[i].Remaining
		}
		if x := min(a.Debt, free-a.Held); x > 0 {
			need := x
			for i := 0; i < len(a.Buckets) && need > 0; i++ {
				b := &a.Buckets[i]
				take := min(b.Remaining, need)
				if take <= 0 {
					continue
				}
				b.Remaining -= take
				need -= take
				out = w.post(out, a, &t, -take, b.ID, b.Kind, b.Source, at)
				a.Debt -= take
				out = w.post(out, a, &t, take, "", 0, "", at)
			}
			a.Buckets = slices.DeleteFunc(a.Buckets, func(b Bucket) bool { return b.Remaining == 0 })
		}
	}
	l.fx.Holds = append(l.fx.Holds, HoldRecord{Hold: h, Customer: w.Customer, Scale: a.Scale, Status: st, UpdatedAt: at, EventID: eventID, Settled: settled})
	return out
}

// ReleaseHold ends an active hold without a charge.
func (w *Wallet) ReleaseHold(id string, now int64, out []Entry) ([]Entry, *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out)
	i := w.findHold(id)
	if i < 0 {
		return out, Errorf(CodeHoldNotActive, "hold %s is not active", id)
	}
	out = w.endHold(i, HoldReleased, now, "", 0, out)
	w.UpdatedAt = now
	return out, nil
}

// ---- Auto-reload ----

// reloadPeriodStart returns the start of the period that max_per_period
// counts: the plan period holding now, or the calendar month (UTC) without one.
func (w *Wallet) reloadPeriodStart(now int64) int64 {
	if start, _, ok := w.PlanPeriod(now); ok {
		return start
	}
	m := PeriodMonth
	anchor := periodStart(0, PeriodYear, 0) // 1970-01-01, clamped: any month start works as anchor
	return periodStart(anchor, m, periodIndex(anchor, m, now))
}

// UnpaidMax is how many requests may be pending at once: in await_payment
// mode one (each waits for its payment), in grant_immediately mode
// MaxUnpaid (0: ReloadPendingMax), the next purchase not waiting for the
// last one's payment.
func (r *AutoReload) UnpaidMax() int {
	switch {
	case r.Mode == ReloadAwaitPayment:
		return 1
	case r.MaxUnpaid > 0:
		return r.MaxUnpaid
	}
	return ReloadPendingMax
}

// reloadAllowed reports whether a new auto-reload request may be made for
// account name:asset now.
func (w *Wallet) reloadAllowed(name, asset string, now int64) bool {
	r := w.Settings.AutoReload
	if r == nil || !r.Enabled || w.Settings.Status != StatusActive || name != r.Account || asset != r.Asset {
		return false
	}
	l := w.Life
	if l == nil {
		return true
	}
	if len(l.Pending) >= r.UnpaidMax() {
		return false
	}
	if r.MaxPerPeriod > 0 && l.ReloadPeriod == w.reloadPeriodStart(now) && int(l.ReloadCount) >= r.MaxPerPeriod {
		return false
	}
	return true
}

// requestReload makes an auto-reload request for the reload account (the
// caller checked reloadAllowed). In grant_immediately mode the credits are
// granted at once. It returns whether credits were granted.
func (w *Wallet) requestReload(now int64, out []Entry) ([]Entry, bool) {
	r := w.Settings.AutoReload
	l := w.life()
	if p := w.reloadPeriodStart(now); l.ReloadPeriod != p {
		l.ReloadPeriod, l.ReloadCount = p, 0
	}
	l.ReloadCount++
	l.ReloadSeq++
	mode := r.Mode
	if mode == 0 {
		mode = ReloadGrantImmediately
	}
	req := &ReloadRequest{
		ID: "r_" + strconv.FormatUint(l.ReloadSeq, 10), Account: r.Account + ":" + r.Asset, Scale: r.Scale,
		Amount: r.Amount, Charge: r.Charge, Currency: r.Currency, Mode: mode, Status: ReloadPending,
		CreatedAt: now, UpdatedAt: now,
	}
	if a := w.accountOf(r.Account, r.Asset); a != nil {
		req.Account = a.ID()
	}
	granted := false
	if mode == ReloadGrantImmediately {
		out, granted = w.grantReload(req, now, out)
	} else {
		out = w.reloadMark(req, now, out)
	}
	l.Pending = append(l.Pending, *req)
	l.fx.Reloads = append(l.fx.Reloads, *req)
	w.note(NoteAutoReloadRequested, req.Account, now, reloadFields(req)...)
	return out, granted
}

func reloadFields(req *ReloadRequest) []noteField {
	mode := "grant_immediately"
	if req.Mode == ReloadAwaitPayment {
		mode = "await_payment"
	}
	return []noteField{
		{key: "request_id", str: req.ID},
		{key: "status", str: req.Status.String()},
		{key: "mode", str: mode},
		{key: "amount", str: units(req.Amount, req.Scale)},
		{key: "charge", raw: `{"amount":"` + req.Charge + `","currency":"` + req.Currency + `"}`},
	}
}

// grantReload grants a request's credits with an auto_reload entry.
func (w *Wallet) grantReload(req *ReloadRequest, now int64, out []Entry) ([]Entry, bool) {
	r := w.Settings.AutoReload
	name, asset, _ := SplitAccountID(req.Account)
	var expires int64
	if r != nil && r.PeriodEnd {
		if end, err := w.PeriodEnd(now); err == nil {
			expires = end
		}
	}
	g := grant{
		name: name, asset: asset, scale: req.Scale, amount: req.Amount,
		kind: KindRecharge, priority: DefaultPriority(KindRecharge), expiresAt: expires,
		source: "auto_reload", reference: req.ID, entryType: EntryAutoReload,
		price: req.Charge, currency: req.Currency,
	}
	if r != nil {
		g.offer = r.OfferID
	}
	if e := w.checkGrant(&g); e != nil {
		return w.reloadMark(req, now, out), false
	}
	var id string
	id, out = w.applyGrant(&g, now, out)
	req.BucketID, req.ExpiresAt = id, expires
	return out, true
}

// reloadMark posts a zero auto_reload entry: a request or an outcome that
// moves no credit still shows in the ledger.
func (w *Wallet) reloadMark(req *ReloadRequest, now int64, out []Entry) []Entry {
	name, asset, _ := SplitAccountID(req.Account)
	a := w.accountOf(name, asset)
	if a == nil {
		if len(w.Accounts) >= WalletAccountsMax {
			return out
		}
		a = w.addAccount(name, asset, req.Scale)
	}
	md := []byte(`{"request_id":"` + req.ID + `","status":"` + req.Status.String() + `"}`)
	t := Entry{Type: EntryAutoReload, Reference: req.ID, OccurredAt: now, Metadata: md}
	return w.post(out, a, &t, 0, "", 0, "", now)
}

// takePending ends the pending request id with status st.
func (w *Wallet) takePending(id string, st ReloadStatus, now int64) (*ReloadRequest, *Error) {
	l := w.Life
	i := -1
	if l != nil {
		i = slices.IndexFunc(l.Pending, func(r ReloadRequest) bool { return r.ID == id })
	}
	if i < 0 {
		return nil, Errorf(CodeReloadNotPending, "auto-reload request %s is not pending", id)
	}
	req := l.Pending[i]
	l.Pending = slices.Delete(l.Pending, i, i+1)
	if len(l.Pending) == 0 {
		l.Pending = nil
	}
	req.Status, req.UpdatedAt = st, now
	return &req, nil
}

// ConfirmReload records that billing collected the pending request id. In
// await_payment mode its credits are granted now. It returns the request as
// it now is.
func (w *Wallet) ConfirmReload(id string, now int64, out []Entry) (ReloadRequest, []Entry, *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out)
	req, err := w.takePending(id, ReloadCompleted, now)
	if err != nil {
		return ReloadRequest{}, out, err
	}
	l := w.Life
	if req.Mode == ReloadAwaitPayment {
		out, _ = w.grantReload(req, now, out)
	} else {
		out = w.reloadMark(req, now, out)
	}
	w.UpdatedAt = now
	l.fx.Reloads = append(l.fx.Reloads, *req)
	w.note(NoteAutoReloadCompleted, req.Account, now, reloadFields(req)...)
	return *req, out, nil
}

// FailReload records that billing could not collect the pending request id:
// auto-reload is disabled, and in grant_immediately mode the customer is
// paused too (the credits already granted stay; resume or adjust them).
func (w *Wallet) FailReload(id string, now int64, out []Entry) (ReloadRequest, []Entry, *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out)
	req, err := w.takePending(id, ReloadFailed, now)
	if err != nil {
		return ReloadRequest{}, out, err
	}
	l := w.Life
	out = w.reloadMark(req, now, out)
	s := *w.Settings
	if s.AutoReload != nil {
		r := *s.AutoReload
		r.Enabled = false
		s.AutoReload = &r
	}
	if req.Mode == ReloadGrantImmediately {
		s.Status, s.PausedUntil = StatusPaused, 0 // until resumed, even if it was paused until a time
	}
	w.Configure(s, now)
	l.fx.Reloads = append(l.fx.Reloads, *req)
	// What the product tells its customer depends on whether credits are
	// left (APOB shows one message when the balance is depleted, another
	// when it is only low): the account's available balance and whether it
	// is depleted (zero or below) go with the notification.
	var avail int64
	scale := req.Scale
	if a := w.Account(req.Account); a != nil {
		avail, scale = a.Available(), a.Scale
	}
	depleted := "false"
	if avail <= 0 {
		depleted = "true"
	}
	w.note(NoteAutoReloadFailed, req.Account, now, append(reloadFields(req),
		noteField{key: "available", str: units(avail, scale)}, noteField{key: "depleted", raw: depleted})...)
	return *req, out, nil
}

// cloneLife returns a deep copy of l without its effects.
// Clone returns a deep copy of the wallet, safe to read on another goroutine.
func (w *Wallet) Clone() *Wallet {
	c := *w
	c.Accounts = make([]*Account, len(w.Accounts))
	for i, a := range w.Accounts {
		ac := *a
		ac.Buckets = append([]Bucket(nil), a.Buckets...)
		c.Accounts[i] = &ac
	}
	c.Life = cloneLife(w.Life)
	return &c
}

// HasEffects reports whether operations made effects not taken yet
// (TakeEffects).
func (w *Wallet) HasEffects() bool { return w.Life != nil && !w.Life.fx.Empty() }

func cloneLife(l *Lifecycle) *Lifecycle {
	if l == nil {
		return nil
	}
	c := *l
	c.fx = Effects{}
	c.Allocs = slices.Clone(l.Allocs)
	c.Holds = slices.Clone(l.Holds)
	c.Pending = slices.Clone(l.Pending)
	return &c
}
