package wallet

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"

	"github.com/meterd/meterd/balance/internal/enc"
	"github.com/meterd/meterd/meter"
)

// Limits of the state machine (TIGER_STYLE: a limit on everything). Crossing
// one is a refusal with a clear code, never a slowdown or an overflow.
const (
	// CommandUnitsMax is the largest amount, in an asset's smallest unit, of
	// one top-up, one adjustment, one charge or one credit limit.
	CommandUnitsMax int64 = 1_000_000_000_000_000_000
	// AccountUnitsMax bounds the sum of the remaining amounts of one
	// account's buckets, so that no sum in this package can overflow int64.
	AccountUnitsMax int64 = 4 * CommandUnitsMax
	// AccountBucketsMax is the most buckets one account may hold.
	AccountBucketsMax = 1000
	// WalletAccountsMax is the most accounts one wallet may hold.
	WalletAccountsMax = 64
	// EventChargesMax is the most charges one usage event may carry.
	EventChargesMax = 16
	// PriorityMax is the largest bucket priority.
	PriorityMax = 100
)

var (
	errInsufficientFunds = &Error{Code: CodeInsufficientFunds, Message: "the debit is larger than what the account may spend"}
	errAccountPaused     = &Error{Code: CodeAccountPaused, Message: "the customer is paused: usage events are rejected"}
)

// DefaultPriority returns the default priority of a bucket kind:
// promotional 10, plan 20, recharge 30. Unknown kinds get 30, like recharge.
func DefaultPriority(k Kind) uint8 {
	switch k {
	case KindPromotional:
		return 10
	case KindPlan:
		return 20
	default:
		return 30
	}
}

// ParseKind parses the contract name of a kind: "promotional", "plan" or "recharge".
func ParseKind(s string) (Kind, bool) {
	switch s {
	case "promotional":
		return KindPromotional, true
	case "plan":
		return KindPlan, true
	case "recharge":
		return KindRecharge, true
	}
	return 0, false
}

// String returns the contract name of the kind.
func (k Kind) String() string {
	switch k {
	case KindPromotional:
		return "promotional"
	case KindPlan:
		return "plan"
	case KindRecharge:
		return "recharge"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

var entryTypeNames = [...]string{
	EntryUsage:         "usage",
	EntryTopUp:         "topup",
	EntryTopUpReversal: "topup_reversal",
	EntryAdjustment:    "adjustment",
	EntryGrant:         "grant",
	EntryExpiry:        "expiry",
	EntryHold:          "hold",
	EntryHoldRelease:   "hold_release",
	EntryAutoReload:    "auto_reload",
}

// String returns the contract name of the entry type, e.g. "topup_reversal".
func (t EntryType) String() string {
	if t != 0 && int(t) < len(entryTypeNames) {
		return entryTypeNames[t]
	}
	return "entry_type(" + strconv.Itoa(int(t)) + ")"
}

// String returns the contract name of the status: "active" or "paused".
func (s Status) String() string {
	switch s {
	case StatusActive:
		return "active"
	case StatusPaused:
		return "paused"
	}
	return "status(" + strconv.Itoa(int(s)) + ")"
}

// String returns the contract name of the policy: "reject" or "overdraft".
func (p Policy) String() string {
	switch p {
	case PolicyReject:
		return "reject"
	case PolicyOverdraft:
		return "overdraft"
	}
	return "policy(" + strconv.Itoa(int(p)) + ")"
}

// bucketIDsCached bucket ids are preallocated: every wallet's "b_1", "b_2"...
// share the same memory.
const bucketIDsCached = 4096

var bucketIDs = func() *[bucketIDsCached]string {
	var ids [bucketIDsCached]string
	for i := range ids {
		ids[i] = "b_" + strconv.Itoa(i)
	}
	return &ids
}()

// bucketID returns "b_<n>" without allocating for small n.
func bucketID(n uint64) string {
	if n < bucketIDsCached {
		return bucketIDs[n]
	}
	return "b_" + strconv.FormatUint(n, 10)
}

// parseBucketID returns n of a canonical "b_<n>" (no sign, no leading zero).
func parseBucketID(id string) (uint64, bool) {
	if len(id) < 3 || len(id) > 22 || id[0] != 'b' || id[1] != '_' || (id[2] == '0' && len(id) > 3) {
		return 0, false
	}
	n, err := strconv.ParseUint(id[2:], 10, 64)
	if err != nil || id[2] == '+' {
		return 0, false
	}
	return n, true
}

// NewWallet returns an empty wallet of a customer with a copy of settings s.
// Zero Status and Policy in s mean StatusActive and PolicyReject; other
// values must be valid (the caller validates settings): an unknown one is a
// bug and panics, rather than store a wallet that DecodeWallet would refuse.
func NewWallet(customer string, s Settings, now int64) *Wallet {
	w := &Wallet{Customer: customer, CreatedAt: now, UpdatedAt: now}
	w.Accounts = w.accounts0[:0:1]
	w.Settings = normalizeSettings(s)
	w.syncPlan(now)
	return w
}

// plainSettings are the shared settings of wallets without credit limits,
// balance alerts or metadata, indexed by [Status-1][Policy-1].
var plainSettings = [2][2]Settings{
	{{Status: StatusActive, Policy: PolicyReject}, {Status: StatusActive, Policy: PolicyOverdraft}},
	{{Status: StatusPaused, Policy: PolicyReject}, {Status: StatusPaused, Policy: PolicyOverdraft}},
}

// shareSettings returns s itself when it has extras, else the shared plain value.
func shareSettings(s *Settings) *Settings {
	if len(s.CreditLimits) == 0 && len(s.BalanceAlerts) == 0 && len(s.Metadata) == 0 && s.Plan == nil && s.AutoReload == nil && s.PausedUntil == 0 && s.PlanChange == nil && len(s.HoldLimits) == 0 &&
		s.Status >= StatusActive && s.Status <= StatusPaused && s.Policy >= PolicyReject && s.Policy <= PolicyOverdraft {
		return &plainSettings[s.Status-1][s.Policy-1]
	}
	return s
}

func normalizeSettings(s Settings) *Settings {
	if s.Status == 0 {
		s.Status = StatusActive
	}
	if s.Policy == 0 {
		s.Policy = PolicyReject
	}
	if s.Status > StatusPaused || s.Policy > PolicyOverdraft {
		panic(fmt.Sprintf("wallet: invalid settings: status %d, policy %d", s.Status, s.Policy))
	}
	if s.Status != StatusPaused || s.PausedUntil < 0 {
		s.PausedUntil = 0
	}
	if len(s.CreditLimits) == 0 {
		s.CreditLimits = nil
	} else {
		s.CreditLimits = append([]Limit(nil), s.CreditLimits...)
	}
	s.alerts = nil
	if len(s.BalanceAlerts) == 0 {
		s.BalanceAlerts = nil
	} else {
		s.BalanceAlerts = append([]string(nil), s.BalanceAlerts...)
		for _, t := range s.BalanceAlerts {
			// The caller validated the thresholds; one that does not parse
			// is ignored rather than fire on garbage.
			if d, err := meter.ParseDec(t); err == nil && len(s.alerts) < AlertsMax {
				s.alerts = append(s.alerts, d)
			}
		}
	}
	s.Plan = clonePlan(s.Plan)
	s.HoldLimits = slices.Clone(s.HoldLimits)
	if len(s.HoldLimits) == 0 {
		s.HoldLimits = nil
	}
	if s.PlanChange != nil {
		pc := *s.PlanChange
		pc.Plan = clonePlan(pc.Plan)
		s.PlanChange = &pc
	}
	if s.AutoReload != nil {
		r := *s.AutoReload
		s.AutoReload = &r
	}
	s.Metadata = bytes.Clone(s.Metadata)
	return shareSettings(&s)
}

func clonePlan(p *Plan) *Plan {
	if p == nil {
		return nil
	}
	c := *p
	c.Allocations = append([]Allocation(nil), p.Allocations...)
	c.HoldLimits = slices.Clone(p.HoldLimits)
	return &c
}

// Configure replaces the customer's settings with a copy of s, under the
// rules of NewWallet. It changes no balance: a lowered credit limit keeps
// existing debt and only refuses further debits. Credit limits are clamped
// to [0, CommandUnitsMax] when used.
//
// A new plan (another plan id) starts its grant schedules afresh: the
// period holding now is granted by the next operation (every operation
// runs Advance first). The same plan saved again keeps its schedules.
func (w *Wallet) Configure(s Settings, now int64) {
	w.Settings = normalizeSettings(s)
	w.syncPlan(now)
	w.UpdatedAt = now
}

// creditLimit returns the overdraft limit of an account, clamped to
// [0, CommandUnitsMax].
func (w *Wallet) creditLimit(id string) int64 {
	for i := range w.Settings.CreditLimits {
		if l := &w.Settings.CreditLimits[i]; l.Account == id {
			return min(max(l.Units, 0), CommandUnitsMax)
		}
	}
	return 0
}

// fits reports whether units may be debited from an account whose
// available balance is avail, under the customer's policy. A debit of 0
// always fits: it takes nothing.
func (w *Wallet) fits(id string, avail, units int64) bool {
	if units == 0 {
		return true
	}
	if w.Settings.Policy == PolicyOverdraft {
		return avail-units >= -w.creditLimit(id)
	}
	return units <= avail
}

// Account returns the account "name:ASSET", or nil.
func (w *Wallet) Account(id string) *Account {
	for _, a := range w.Accounts {
		if a.ID() == id {
			return a
		}
	}
	return nil
}

// accountOf returns the account of a name and an asset, or nil, without
// building its id.
func (w *Wallet) accountOf(name, asset string) *Account {
	for _, a := range w.Accounts {
		if a.Name() == name && a.Asset() == asset {
			return a
		}
	}
	return nil
}

// newAccount returns an empty account; name is at most 64 bytes (the caller checked).
func newAccount(name, asset string, scale uint8) *Account {
	return &Account{id: enc.Intern(name + ":" + asset), nameLen: uint8(len(name)), Scale: scale}
}

// ID returns the account's id "name:ASSET".
func (a *Account) ID() string { return a.id }

// Name returns the account's name ("default").
func (a *Account) Name() string { return a.id[:a.nameLen] }

// Asset returns the account's asset code ("CREDITS").
func (a *Account) Asset() string {
	if len(a.id) <= int(a.nameLen) {
		return ""
	}
	return a.id[a.nameLen+1:]
}

// Available returns the sum of the remaining amounts of the account's
// buckets, minus what holds reserve and minus debt. It is negative when the
// account is in debt.
func (a *Account) Available() int64 {
	var sum int64
	for i := range a.Buckets {
		sum += a.Buckets[i].Remaining
	}
	return sum - a.Held - a.Debt
}

// addAccount inserts a new account, in id order. The caller has checked
// that it does not exist and that WalletAccountsMax allows it.
func (w *Wallet) addAccount(name, asset string, scale uint8) *Account {
	a := newAccount(name, asset, scale)
	id := a.ID()
	i := 0
	for i < len(w.Accounts) && w.Accounts[i].ID() < id {
		i++
	}
	w.Accounts = append(w.Accounts, nil)
	copy(w.Accounts[i+1:], w.Accounts[i:])
	w.Accounts[i] = a
	if cap(w.Accounts) > len(w.accounts0) {
		w.accounts0 = [len(w.accounts0)]*Account{} // no longer the backing array
	}
	return a
}

// bucketLess is the consumption order: priority ascending, then ExpiresAt
// ascending with 0 (never) last, then EffectiveAt ascending, then ID.
func bucketLess(a, b *Bucket) bool {
	if a.Priority != b.Priority {
		return a.Priority < b.Priority
	}
	if a.ExpiresAt != b.ExpiresAt {
		if a.ExpiresAt == 0 {
			return false
		}
		if b.ExpiresAt == 0 {
			return true
		}
		return a.ExpiresAt < b.ExpiresAt
	}
	if a.EffectiveAt != b.EffectiveAt {
		return a.EffectiveAt < b.EffectiveAt
	}
	return a.ID < b.ID
}

// insertBucket inserts b in consumption order.
func (a *Account) insertBucket(b Bucket) {
	i := len(a.Buckets)
	for i > 0 && bucketLess(&b, &a.Buckets[i-1]) {
		i--
	}
	a.Buckets = append(a.Buckets, Bucket{})
	copy(a.Buckets[i+1:], a.Buckets[i:])
	a.Buckets[i] = b
}

// removeBucket removes the bucket at i, keeping the order, and clears the
// freed slot so that its strings can be collected.
func (a *Account) removeBucket(i int) {
	n := len(a.Buckets)
	copy(a.Buckets[i:], a.Buckets[i+1:])
	a.Buckets[n-1] = Bucket{}
	a.Buckets = a.Buckets[:n-1]
}

// post records one ledger entry of amount on account a: it adds amount to
// a.Ledger, asserts that the ledger still equals Available(), and appends
// the entry built from template t, for the bucket bucketID of kind and
// source ("" for none: a debt part, a hold).
func (w *Wallet) post(out []Entry, a *Account, t *Entry, amount int64, bucketID string, kind Kind, source string, now int64) []Entry {
	a.Ledger += amount
	avail := a.Available()
	if a.Ledger != avail {
		panic(fmt.Sprintf("wallet: invariant violated: customer %q account %q: ledger sum %d != available %d after a %s entry of %d",
			w.Customer, a.ID(), a.Ledger, avail, t.Type, amount))
	}
	w.Seq++
	out = append(out, *t)
	e := &out[len(out)-1]
	e.Seq = w.Seq
	e.Account = a.ID()
	e.Scale = a.Scale
	e.Amount = amount
	e.BalanceAfter = avail
	e.BucketID = bucketID
	e.BucketKind = kind
	e.Source = source
	e.RecordedAt = now
	return out
}

// Expire removes every bucket with 0 < ExpiresAt <= now, in time order:
// it is Advance (which also applies hold expiries and plan grants). Each
// bucket with a remaining amount produces an expiry entry (Amount =
// -Remaining, OccurredAt = the bucket's ExpiresAt, Reference = the bucket's
// Reference); buckets due at the same instant go in account order, then
// consumption order. Expiry is exact: a bucket whose ExpiresAt equals now
// is expired.
func (w *Wallet) Expire(now int64, out []Entry) []Entry {
	return w.Advance(now, out)
}

// expireBuckets removes every bucket due by now, in account order then
// consumption order; each one that leaves with a remaining amount makes an
// expiry entry and a bucket.expired notification.
func (w *Wallet) expireBuckets(now int64, out []Entry) []Entry {
	for _, a := range w.Accounts {
		for i := 0; i < len(a.Buckets); {
			b := &a.Buckets[i]
			if b.ExpiresAt <= 0 || b.ExpiresAt > now {
				i++
				continue
			}
			out = w.endBucket(a, i, &Entry{Type: EntryExpiry, Reference: b.Reference, OccurredAt: b.ExpiresAt}, now, out)
		}
	}
	return out
}

// endBucket removes bucket i of a; what it had left goes out with entry t
// (its type, reference, time and metadata) and a bucket.expired
// notification.
func (w *Wallet) endBucket(a *Account, i int, t *Entry, now int64, out []Entry) []Entry {
	b := &a.Buckets[i]
	rem, id, kind, src := b.Remaining, b.ID, b.Kind, b.Source
	a.removeBucket(i)
	w.UpdatedAt = now
	if rem > 0 {
		out = w.post(out, a, t, -rem, id, kind, src, now)
		w.note(NoteBucketExpired, a.ID(), t.OccurredAt, noteField{key: "bucket_id", str: id},
			noteField{key: "kind", str: kind.String()}, noteField{key: "amount", str: units(rem, a.Scale)},
			noteField{key: "reference", str: t.Reference})
	}
	return out
}

// NextExpiry returns the earliest ExpiresAt of any bucket, or 0 if no
// bucket expires. The owner of the wallet runs Expire at that time.
func (w *Wallet) NextExpiry() int64 {
	var next int64
	for _, a := range w.Accounts {
		for i := range a.Buckets {
			if e := a.Buckets[i].ExpiresAt; e > 0 && (next == 0 || e < next) {
				next = e
			}
		}
	}
	return next
}

// grant is a new bucket as TopUp and a positive Adjust create it.
type grant struct {
	name, asset string
	scale       uint8
	amount      int64
	kind        Kind
	priority    uint8
	expiresAt   int64
	source      string
	reference   string
	metadata    []byte
	entryType   EntryType
	alloc       uint8 // plan grants: 1 + allocation index
	// Kept on the grant's entries: the client's description, and for a
	// purchase what was paid and the offer bought.
	description, price, currency, offer string
}

// checkGrant validates a grant against the wallet without changing it.
func (w *Wallet) checkGrant(g *grant) *Error {
	if g.amount <= 0 || g.amount > CommandUnitsMax {
		return FieldErrorf("amount", CodeInvalidAmount, "amount %d is not in [1, %d]", g.amount, CommandUnitsMax)
	}
	if g.name == "" || g.asset == "" {
		return Errorf(CodeInvalidRequest, "account name and asset must not be empty")
	}
	if g.expiresAt < 0 {
		return Errorf(CodeInvalidRequest, "expires_at %d is negative", g.expiresAt)
	}
	a := w.accountOf(g.name, g.asset)
	if a == nil {
		if len(w.Accounts) >= WalletAccountsMax {
			return Errorf(CodeLimitExceeded, "a wallet holds at most %d accounts", WalletAccountsMax)
		}
		return nil
	}
	if len(a.Buckets) >= AccountBucketsMax {
		return Errorf(CodeLimitExceeded, "account %s holds %d buckets, the most allowed", a.ID(), len(a.Buckets))
	}
	if a.Available()+a.Held+a.Debt > AccountUnitsMax-g.amount {
		return FieldErrorf("amount", CodeInvalidAmount, "account %s would hold more than %d", a.ID(), AccountUnitsMax)
	}
	return nil
}

// applyGrant creates the bucket of a checked grant. Debt is settled first:
// an entry without a bucket of +settled, then one of +(amount - settled)
// into the bucket, so that a bucket's entries sum to its remaining amount
// and the entries without a bucket to -(held + debt). A bucket whose
// remaining amount is 0 is not kept (and has no entry); a bucket that is
// already expired at now expires at once. It returns the new bucket's id.
func (w *Wallet) applyGrant(g *grant, now int64, out []Entry) (string, []Entry) {
	a := w.accountOf(g.name, g.asset)
	if a == nil {
		a = w.addAccount(g.name, g.asset, g.scale)
	}
	md := bytes.Clone(g.metadata)
	t := Entry{Type: g.entryType, Reference: g.reference, OccurredAt: now, Metadata: md,
		Description: g.description, Price: g.price, Currency: g.currency, Offer: g.offer}
	d := min(a.Debt, g.amount)
	if d > 0 {
		a.Debt -= d
		out = w.post(out, a, &t, d, "", 0, "", now)
	}
	rem := g.amount - d
	// An accumulating allocation grows its one bucket rather than adding
	// one per period, so that years of periods never fill the account.
	// Only a bucket of the grant's kind: a bucket's entries carry its kind
	// (the usage view sums them by kind), so a plan saved with another
	// kind for the allocation starts a new bucket.
	var id string
	if g.alloc != 0 && g.expiresAt == 0 {
		for i := range a.Buckets {
			if b := &a.Buckets[i]; b.Alloc == g.alloc && b.Reference == g.reference && b.Kind == g.kind && b.ExpiresAt == 0 && b.Amount <= CommandUnitsMax-g.amount {
				id = b.ID
				b.Amount += g.amount
				b.Remaining += rem
				break
			}
		}
	}
	if id == "" {
		w.BucketSeq++
		id = bucketID(w.BucketSeq)
		if rem > 0 {
			a.insertBucket(Bucket{
				ID: id, Kind: g.kind, Priority: g.priority, Amount: g.amount, Remaining: rem,
				EffectiveAt: now, ExpiresAt: g.expiresAt, Source: enc.Intern(g.source), Reference: g.reference, Metadata: string(md),
				Alloc: g.alloc,
			})
		}
	}
	w.UpdatedAt = now
	if rem > 0 {
		out = w.post(out, a, &t, rem, id, g.kind, enc.Intern(g.source), now)
	}
	if g.expiresAt > 0 && g.expiresAt <= now {
		out = w.expireBuckets(now, out)
	}
	return id, out
}

// ExpiresPeriodEnd as a command's ExpiresAt is the contract's "period_end":
// the end of the plan period holding now (CodeNoPlanPeriod without one).
const ExpiresPeriodEnd int64 = -1

func (w *Wallet) resolveExpiry(at, now int64) (int64, *Error) {
	if at == ExpiresPeriodEnd {
		return w.PeriodEnd(now)
	}
	return at, nil
}

// TopUp applies a one-time purchase: a new recharge bucket (priority 30,
// effective now, Reference = c.ID) and topup entries summing to +Amount.
// Debt is settled first (applyGrant). It returns the new bucket's id (also
// when debt absorbed the whole amount and no bucket was kept).
func (w *Wallet) TopUp(c *TopUpCmd, now int64, out []Entry) (bucketID string, entries []Entry, err *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out)
	expires, e := w.resolveExpiry(c.ExpiresAt, now)
	if e != nil {
		return "", out, e
	}
	g := grant{
		name: c.Account, asset: c.Asset, scale: c.Scale, amount: c.Amount,
		kind: KindRecharge, priority: DefaultPriority(KindRecharge), expiresAt: expires,
		source: c.Source, reference: c.ID, metadata: c.Metadata, entryType: EntryTopUp,
		description: c.Description, price: c.Price, currency: c.Currency,
	}
	if c.Bought != nil {
		g.offer = c.Bought.OfferID
	}
	if e := w.checkGrant(&g); e != nil {
		return "", out, e
	}
	id, out := w.applyGrant(&g, now, out)
	return id, out, nil
}

// ReverseTopUp is ReversePurchase of a top-up under the rule of the
// release before refund rules: within window, and only while none of it
// was spent.
func (w *Wallet) ReverseTopUp(bucketID, topUpID string, window, now int64, out []Entry) ([]Entry, *Error) {
	_, out, err := w.ReversePurchase(bucketID, topUpID, RefundRule{Window: window, MaxUsed: &zeroDec}, now, out)
	return out, err
}

var zeroDec meter.Dec

// RefundRule says when a purchase (a top-up, a plan grant) may be taken
// back: within Window of it, and while at most MaxUsed of its credits were
// used (nil: any amount). What was used is kept; the rest is taken back.
type RefundRule struct {
	Window  int64      // ns after the purchase
	MaxUsed *meter.Dec // in the asset's unit; nil = no bound, 0 = none spent
}

// Reversal is what a reversal took back and what the customer keeps, in
// the account's smallest unit.
type Reversal struct {
	Account        string
	Scale          uint8
	Reversed, Kept int64
}

// ReversePurchase takes back what is left of a purchase's bucket: a top-up
// (reference = its id; a topup_reversal entry) or, with reference "", a
// plan grant (a negative grant entry). The checks run in this order:
//  1. the bucket must exist in the wallet and come from that top-up (or a
//     plan allocation), else CodeUnknownBucket — except that a bucket id
//     this wallet issued which is gone (spent, absorbed by debt, expired or
//     already reversed) is CodeTopUpSpent;
//  2. what was used of it (Amount - Remaining) must be within the rule's
//     MaxUsed, else CodeTopUpSpent when the rule allows none, and
//     CodeRefundAllowanceExceeded otherwise;
//  3. now - EffectiveAt <= Window, else CodeReversalWindowElapsed;
//  4. what is left must not be reserved by holds, else CodeTopUpSpent.
//
// The entry takes back Remaining; when some was used its metadata says
// {"reversed","kept"}.
func (w *Wallet) ReversePurchase(bucketID, reference string, rule RefundRule, now int64, out []Entry) (Reversal, []Entry, *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out)
	what := "top-up " + reference
	if reference == "" {
		what = "plan grant " + bucketID
	}
	for _, a := range w.Accounts {
		for i := range a.Buckets {
			b := &a.Buckets[i]
			if b.ID != bucketID {
				continue
			}
			if reference != "" && (b.Reference != reference || b.Alloc != 0) || reference == "" && b.Alloc == 0 {
				return Reversal{}, out, Errorf(CodeUnknownBucket, "bucket %s does not come from %s", bucketID, what)
			}
			used := b.Amount - b.Remaining
			if used > 0 && rule.MaxUsed != nil {
				if u, err := meter.ParseDec(units(used, a.Scale)); err == nil && u.Cmp(*rule.MaxUsed) > 0 {
					if rule.MaxUsed.Sign() == 0 {
						return Reversal{}, out, Errorf(CodeTopUpSpent, "%s of %s is already spent", units(used, a.Scale), what)
					}
					return Reversal{}, out, Errorf(CodeRefundAllowanceExceeded, "%s of %s was used: the refund rule allows at most %s",
						units(used, a.Scale), what, rule.MaxUsed.String())
				}
			}
			if now-b.EffectiveAt > rule.Window {
				return Reversal{}, out, Errorf(CodeReversalWindowElapsed, "%s is older than the reversal window", what)
			}
			if b.Remaining > a.Available() {
				return Reversal{}, out, Errorf(CodeTopUpSpent, "%s is reserved by a hold", what)
			}
			rev := Reversal{Account: a.ID(), Scale: a.Scale, Reversed: b.Remaining, Kept: used}
			kind, ref, src := b.Kind, b.Reference, b.Source
			a.removeBucket(i)
			w.UpdatedAt = now
			t := Entry{Type: EntryTopUpReversal, Reference: ref, OccurredAt: now}
			if reference == "" {
				t.Type = EntryGrant
			}
			if used > 0 || reference == "" {
				t.Metadata = []byte(`{"reversed":"` + units(rev.Reversed, a.Scale) + `","kept":"` + units(used, a.Scale) + `"}`)
			}
			return rev, w.post(out, a, &t, -rev.Reversed, bucketID, kind, src, now), nil
		}
	}
	if n, ok := parseBucketID(bucketID); ok && n >= 1 && n <= w.BucketSeq {
		return Reversal{}, out, Errorf(CodeTopUpSpent, "bucket %s of %s no longer holds credit", bucketID, what)
	}
	return Reversal{}, out, Errorf(CodeUnknownBucket, "no bucket %s in this wallet", bucketID)
}

// Adjust applies an adjustment. A positive amount creates a bucket of c.Kind
// (0 = recharge) with priority c.Priority (-1 = the kind's default), source
// c.Source or "adjustment", Reference = c.TransactionID, settling debt first.
// A negative amount debits in consumption order under the same funds rule as
// Charge, one adjustment entry per bucket part (and one with BucketID "" for
// the part that goes into debt under the overdraft policy). Paused customers
// may be adjusted. A negative adjustment of an account that does not exist
// creates it when the overdraft policy lets the debit through.
func (w *Wallet) Adjust(c *AdjustCmd, now int64, out []Entry) ([]Entry, *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out)
	if c.Amount > 0 {
		kind := c.Kind
		if kind == 0 {
			kind = KindRecharge
		}
		if kind > KindRecharge {
			return out, Errorf(CodeInvalidRequest, "unknown bucket kind %d", c.Kind)
		}
		prio := DefaultPriority(kind)
		if c.Priority >= 0 {
			if c.Priority > PriorityMax {
				return out, FieldErrorf("priority", CodeInvalidRequest, "priority %d is not in [0, %d]", c.Priority, PriorityMax)
			}
			prio = uint8(c.Priority)
		}
		src := c.Source
		if src == "" {
			src = "adjustment"
		}
		expires, e := w.resolveExpiry(c.ExpiresAt, now)
		if e != nil {
			return out, e
		}
		g := grant{
			name: c.Account, asset: c.Asset, scale: c.Scale, amount: c.Amount,
			kind: kind, priority: prio, expiresAt: expires,
			source: src, reference: c.TransactionID, metadata: c.Metadata, entryType: EntryAdjustment,
			description: c.Description,
		}
		if e := w.checkGrant(&g); e != nil {
			return out, e
		}
		_, out = w.applyGrant(&g, now, out)
		return out, nil
	}
	if c.Amount == 0 || c.Amount < -CommandUnitsMax {
		return out, FieldErrorf("amount", CodeInvalidAmount, "adjustment amount %d is 0 or below -%d", c.Amount, CommandUnitsMax)
	}
	if c.Account == "" || c.Asset == "" {
		return out, Errorf(CodeInvalidRequest, "account name and asset must not be empty")
	}
	units := -c.Amount
	a := w.accountOf(c.Account, c.Asset)
	var avail int64
	if a != nil {
		avail = a.Available()
	}
	id := ""
	if a != nil {
		id = a.ID()
	} else if w.Settings.Policy == PolicyOverdraft {
		id = c.Account + ":" + c.Asset
	}
	if !w.fits(id, avail, units) {
		return out, errInsufficientFunds
	}
	if a == nil {
		if len(w.Accounts) >= WalletAccountsMax {
			return out, Errorf(CodeLimitExceeded, "a wallet holds at most %d accounts", WalletAccountsMax)
		}
		a = w.addAccount(c.Account, c.Asset, c.Scale)
	}
	w.UpdatedAt = now
	t := Entry{Type: EntryAdjustment, Reference: c.TransactionID, OccurredAt: now, Metadata: bytes.Clone(c.Metadata),
		Description: c.Description}
	out, _ = w.debit(a, units, &t, now, out, nil)
	return out, nil
}

// debit takes units from a's buckets in consumption order, one entry per
// bucket part, and puts what the buckets cannot cover into debt (one entry
// with BucketID ""). The caller has checked the funds rule. Drained buckets
// are dropped. The parts are appended to parts.
func (w *Wallet) debit(a *Account, units int64, t *Entry, now int64, out []Entry, parts []Part) ([]Entry, []Part) {
	// Buckets give at most what active holds do not reserve: the rest of
	// a settled hold's excess is debt, and the other holds stay covered.
	var free int64
	for i := range a.Buckets {
		free += a.Buckets[i].Remaining
	}
	free = max(free-a.Held, 0)
	need := min(units, free)
	debt := units - need
	for i := 0; i < len(a.Buckets) && need > 0; i++ {
		b := &a.Buckets[i]
		take := min(b.Remaining, need)
		if take <= 0 {
			continue
		}
		b.Remaining -= take
		need -= take
		out = w.post(out, a, t, -take, b.ID, b.Kind, b.Source, now)
		parts = append(parts, Part{BucketID: b.ID, Amount: take})
	}
	// Drop the empty buckets (the drained ones are a prefix of the
	// consumption order), keeping the order and the slice's capacity.
	j := 0
	for i := range a.Buckets {
		if a.Buckets[i].Remaining != 0 {
			if i != j {
				a.Buckets[j] = a.Buckets[i]
			}
			j++
		}
	}
	if j < len(a.Buckets) {
		clear(a.Buckets[j:])
		a.Buckets = a.Buckets[:j]
	}
	if debt += need; debt > 0 {
		a.Debt += debt
		out = w.post(out, a, t, -debt, "", 0, "", now)
		parts = append(parts, Part{Amount: debt})
	}
	return out, parts
}

// SplitAccountID returns the name and asset of "name:ASSET", split at the
// last colon (names may contain colons, asset codes do not).
func SplitAccountID(id string) (name, asset string, ok bool) {
	for i := len(id) - 1; i >= 0; i-- {
		if id[i] == ':' {
			return id[:i], id[i+1:], i > 0 && i < len(id)-1
		}
	}
	return "", "", false
}

// Charge applies the charges of one rated usage event. Each charge's whole
// units are Amount.Units plus what the account's carry and Amount.Sub add up
// to; the rest below one unit becomes the new carry. The event is
// all-or-nothing: if any charge breaks the funds rule (reject: units <=
// Available(); overdraft: Available() - units >= -credit limit; a charge of
// 0 units always passes), the result is CodeInsufficientFunds and nothing
// changes, not even a carry. A paused customer gets CodeAccountPaused.
//
// Otherwise each charge is taken in consumption order, one usage entry per
// bucket part, then into debt under the overdraft policy (one more part with
// BucketID ""), and one ChargeResult per charge is appended to res. Accounts
// are created as needed (a 0-unit charge creates its account, to hold the
// carry). To avoid allocating, the Parts slices of res's spare capacity
// (res[len(res):cap(res)]) are reused: a caller that reuses res must not keep
// Parts of earlier results. The insufficient_funds and account_paused
// errors are shared values: do not modify them.
func (w *Wallet) Charge(c *UsageCmd, now int64, res []ChargeResult, out []Entry) ([]ChargeResult, []Entry, *Error) {
	var snap availSnap
	w.snapshot(&snap)
	defer w.alertsSince(&snap, now)
	out = w.advance(now, out)
	if w.Settings.Status == StatusPaused {
		return res, out, errAccountPaused
	}
	cs := c.Charges
	if len(cs) > EventChargesMax {
		return res, out, Errorf(CodeInvalidRequest, "an event carries at most %d charges, not %d", EventChargesMax, len(cs))
	}
	hold := -1
	holdAccount := ""
	var holdAmount int64
	if c.HoldID != "" {
		if hold = w.findHold(c.HoldID); hold >= 0 {
			holdAccount, holdAmount = w.Life.Holds[hold].Account, w.Life.Holds[hold].Amount
		}
	}
	var units [EventChargesMax]int64
	var carry [EventChargesMax]uint64
	var newAccounts int
	for attempt := 0; ; attempt++ {
		n, failed, err := w.chargeUnits(cs, holdAccount, holdAmount, &units, &carry)
		if err != nil {
			return res, out, err
		}
		newAccounts = n
		if failed < 0 {
			break
		}
		// An event that could not otherwise be covered asks for a reload;
		// in grant_immediately mode its credits may cover it at once.
		name, asset := cs[failed].Name, cs[failed].Asset
		if name == "" || asset == "" {
			name, asset, _ = SplitAccountID(cs[failed].Account)
		}
		if attempt == 0 && w.reloadAllowed(name, asset, now) {
			var granted bool
			if out, granted = w.requestReload(now, out); granted {
				continue
			}
		}
		return res, out, errInsufficientFunds
	}
	if len(w.Accounts)+newAccounts > WalletAccountsMax {
		return res, out, Errorf(CodeLimitExceeded, "a wallet holds at most %d accounts", WalletAccountsMax)
	}
	if len(cs) > 0 {
		w.UpdatedAt = now
	}
	if hold >= 0 {
		// The event settles the hold: the reservation goes back to the
		// account, then the charge is taken as usual; what exceeds the
		// account's means goes into debt, whatever the policy (the work
		// the hold covered already happened).
		var settled int64
		for i := range cs {
			if cs[i].Account == holdAccount {
				settled += units[i]
			}
		}
		out = w.endHold(hold, HoldSettled, now, c.EventID, settled, out)
		w.UpdatedAt = now
	}
	t := Entry{Type: EntryUsage, EventID: c.EventID, OccurredAt: c.OccurredAt, PricingVersion: c.PricingVersion,
		Description: c.Description}
	reload := false
	for i := range cs {
		ch := &cs[i]
		a := w.Account(ch.Account)
		if a == nil {
			name, asset := ch.Name, ch.Asset
			if name == "" || asset == "" {
				name, asset, _ = SplitAccountID(ch.Account)
			}
			a = w.addAccount(name, asset, ch.Scale)
		}
		a.Carry = carry[i]
		n := len(res)
		if n < cap(res) {
			res = res[:n+1]
		} else {
			res = append(res, ChargeResult{})
		}
		r := &res[n]
		parts := r.Parts[:0]
		if units[i] > 0 {
			out, parts = w.debit(a, units[i], &t, now, out, parts)
			if r := w.Settings.AutoReload; r != nil && a.Available() < r.Threshold && a.Name() == r.Account && a.Asset() == r.Asset {
				reload = true
			}
		}
		*r = ChargeResult{Account: a.ID(), Scale: a.Scale, Amount: units[i], Parts: parts, BalanceAfter: a.Available()}
	}
	if reload {
		r := w.Settings.AutoReload
		if w.reloadAllowed(r.Account, r.Asset, now) {
			out, _ = w.requestReload(now, out)
		}
	}
	return res, out, nil
}

// CheckCharge is Charge on a copy of the wallet: what charging c at now would
// answer (the charges, the buckets they draw on, the balances after, or
// the refusal), with nothing changed. Whatever Charge would do first (what
// came due, an auto-reload granted at once) is in the answer as it would
// be, and happens to the copy only.
func (w *Wallet) CheckCharge(c *UsageCmd, now int64) ([]ChargeResult, *Error) {
	res, _, err := w.Clone().Charge(c, now, nil, nil)
	return res, err
}

// chargeUnits computes the whole units and the new carry of each charge
// and checks the funds rule, without changing anything. failed is the
// index of the first charge that does not fit, or -1. Charges to
// holdAccount are not checked: they settle a hold.
func (w *Wallet) chargeUnits(cs []meter.Charge, holdAccount string, holdAmount int64, units *[EventChargesMax]int64, carry *[EventChargesMax]uint64) (newAccounts, failed int, err *Error) {
	for i := range cs {
		ch := &cs[i]
		if ch.Amount.Units < 0 || ch.Amount.Units > CommandUnitsMax || ch.Amount.Sub >= meter.SubUnitsPerUnit {
			return 0, -1, Errorf(CodeInvalidAmount, "charge %d: amount %d+%d/1e18 is out of range", i, ch.Amount.Units, ch.Amount.Sub)
		}
		if !validChargeAccount(ch) {
			return 0, -1, Errorf(CodeInvalidRequest, "charge %d: account %q does not match name %q and asset %q", i, ch.Account, ch.Name, ch.Asset)
		}
		a := w.Account(ch.Account)
		var c0 uint64
		var avail, spent int64
		seen := false
		if a != nil {
			c0, avail = a.Carry, a.Available()
		}
		for j := 0; j < i; j++ {
			if cs[j].Account == ch.Account {
				c0 = carry[j]
				spent += units[j]
				seen = true
			}
		}
		if a == nil && !seen {
			newAccounts++
		}
		sum := c0 + ch.Amount.Sub // both < 1e18: no overflow in uint64
		units[i] = ch.Amount.Units + int64(sum/meter.SubUnitsPerUnit)
		carry[i] = sum % meter.SubUnitsPerUnit
		if ch.Account == holdAccount {
			// A settlement may go into debt whatever the policy, but debt
			// stays within CommandUnitsMax, like every amount.
			if avail-spent+holdAmount-units[i] < -CommandUnitsMax {
				return newAccounts, i, nil
			}
		} else if !w.fits(ch.Account, avail-spent, units[i]) {
			return newAccounts, i, nil
		}
	}
	return newAccounts, -1, nil
}

// validChargeAccount reports whether a charge names a well-formed account:
// Account is "Name:Asset", or Name and Asset are empty and Account splits.
func validChargeAccount(ch *meter.Charge) bool {
	if ch.Name == "" && ch.Asset == "" {
		_, _, ok := SplitAccountID(ch.Account)
		return ok
	}
	n := len(ch.Name)
	return n > 0 && len(ch.Asset) > 0 && len(ch.Account) == n+1+len(ch.Asset) &&
		ch.Account[:n] == ch.Name && ch.Account[n] == ':' && ch.Account[n+1:] == ch.Asset
}

// Check verifies every invariant of the wallet and describes the first one
// that does not hold: status and policy are known; there are at most
// WalletAccountsMax accounts, non-nil, unique, in id order, each with id
// Name:Asset; per account 0 <= Held <= AccountUnitsMax, 0 <= Debt <=
// CommandUnitsMax, Carry < meter.SubUnitsPerUnit, at most AccountBucketsMax
// buckets holding at most AccountUnitsMax, and Ledger == Available(); per
// bucket: consumption order, a known kind, priority <= 100, 0 <= Remaining
// <= Amount <= CommandUnitsMax, ExpiresAt >= 0, and an id "b_<n>", unique in
// the wallet, with 0 < n <= BucketSeq.
func (w *Wallet) Check() error {
	if w.Settings.Status != StatusActive && w.Settings.Status != StatusPaused {
		return fmt.Errorf("wallet %q: unknown status %d", w.Customer, w.Settings.Status)
	}
	if w.Settings.Policy != PolicyReject && w.Settings.Policy != PolicyOverdraft {
		return fmt.Errorf("wallet %q: unknown policy %d", w.Customer, w.Settings.Policy)
	}
	if len(w.Accounts) > WalletAccountsMax {
		return fmt.Errorf("wallet %q: %d accounts, more than %d", w.Customer, len(w.Accounts), WalletAccountsMax)
	}
	var small [64]uint64
	ids := small[:0]
	for i, a := range w.Accounts {
		if a == nil {
			return fmt.Errorf("wallet %q: account %d is nil", w.Customer, i)
		}
		id := a.ID()
		if a.Name() == "" || a.Asset() == "" || id != a.Name()+":"+a.Asset() {
			return fmt.Errorf("wallet %q: account %d: id %q does not match name %q and asset %q", w.Customer, i, id, a.Name(), a.Asset())
		}
		if i > 0 && w.Accounts[i-1].ID() >= id {
			return fmt.Errorf("wallet %q: accounts %q and %q are not in strict id order", w.Customer, w.Accounts[i-1].ID(), id)
		}
		if a.Held < 0 || a.Debt < 0 || a.Held > AccountUnitsMax || a.Debt > CommandUnitsMax {
			return fmt.Errorf("wallet %q: account %s: held %d or debt %d is negative or above its limit", w.Customer, id, a.Held, a.Debt)
		}
		if a.Carry >= meter.SubUnitsPerUnit {
			return fmt.Errorf("wallet %q: account %s: carry %d is not below one unit", w.Customer, id, a.Carry)
		}
		if len(a.Buckets) > AccountBucketsMax {
			return fmt.Errorf("wallet %q: account %s: %d buckets, more than %d", w.Customer, id, len(a.Buckets), AccountBucketsMax)
		}
		var sum int64
		for j := range a.Buckets {
			b := &a.Buckets[j]
			if b.Kind < KindPromotional || b.Kind > KindRecharge || b.Priority > PriorityMax {
				return fmt.Errorf("wallet %q: account %s: bucket %s: kind %d or priority %d is invalid", w.Customer, id, b.ID, b.Kind, b.Priority)
			}
			if b.Remaining < 0 || b.Remaining > b.Amount || b.Amount > CommandUnitsMax {
				return fmt.Errorf("wallet %q: account %s: bucket %s: remaining %d is not in [0, amount %d]", w.Customer, id, b.ID, b.Remaining, b.Amount)
			}
			if b.ExpiresAt < 0 {
				return fmt.Errorf("wallet %q: account %s: bucket %s: negative expires_at %d", w.Customer, id, b.ID, b.ExpiresAt)
			}
			if j > 0 && !bucketLess(&a.Buckets[j-1], b) {
				return fmt.Errorf("wallet %q: account %s: buckets %s and %s are not in consumption order", w.Customer, id, a.Buckets[j-1].ID, b.ID)
			}
			n, ok := parseBucketID(b.ID)
			if !ok || n == 0 || n > w.BucketSeq {
				return fmt.Errorf("wallet %q: account %s: bucket id %q is not b_<n> with 0 < n <= %d", w.Customer, id, b.ID, w.BucketSeq)
			}
			ids = append(ids, n)
			if sum += b.Remaining; sum > AccountUnitsMax { // each <= CommandUnitsMax: no overflow
				return fmt.Errorf("wallet %q: account %s: buckets hold more than %d", w.Customer, id, AccountUnitsMax)
			}
		}
		if a.Ledger != a.Available() {
			return fmt.Errorf("wallet %q: account %s: ledger sum %d != available %d", w.Customer, id, a.Ledger, a.Available())
		}
		var held int64
		if w.Life != nil {
			for _, h := range w.Life.Holds {
				if h.Account == id {
					held += h.Amount
				}
			}
		}
		if held != a.Held {
			return fmt.Errorf("wallet %q: account %s: held %d != %d, the sum of its active holds", w.Customer, id, a.Held, held)
		}
	}
	if l := w.Life; l != nil {
		if len(l.Holds) > WalletHoldsMax {
			return fmt.Errorf("wallet %q: %d active holds, more than %d", w.Customer, len(l.Holds), WalletHoldsMax)
		}
		for i, h := range l.Holds {
			if h.Amount <= 0 || h.Amount > CommandUnitsMax || w.Account(h.Account) == nil {
				return fmt.Errorf("wallet %q: hold %q: amount %d or account %q is invalid", w.Customer, h.ID, h.Amount, h.Account)
			}
			for j := 0; j < i; j++ {
				if l.Holds[j].ID == h.ID {
					return fmt.Errorf("wallet %q: hold %q is active twice", w.Customer, h.ID)
				}
			}
		}
		for i, r := range l.Pending {
			if r.Status != ReloadPending {
				return fmt.Errorf("wallet %q: pending auto-reload request %s has status %s", w.Customer, r.ID, r.Status)
			}
			for _, o := range l.Pending[:i] {
				if o.ID == r.ID {
					return fmt.Errorf("wallet %q: auto-reload request %s is pending twice", w.Customer, r.ID)
				}
			}
		}
	}
	slices.Sort(ids)
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			return fmt.Errorf("wallet %q: bucket id b_%d is used twice", w.Customer, ids[i])
		}
	}
	return nil
}
