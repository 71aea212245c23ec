package wallet

import "github.com/meterd/meterd/meter"

// Kind is a bucket's kind. Its default priority is given by DefaultPriority.
type Kind uint8

// Bucket kinds.
const (
	KindPromotional Kind = iota + 1 // limited-time credits, priority 10
	KindPlan                        // periodic allocation, priority 20
	KindRecharge                    // top-ups, priority 30
)

// EntryType is the type of a ledger entry.
type EntryType uint8

// Ledger entry types of the contract.
const (
	EntryUsage EntryType = iota + 1
	EntryTopUp
	EntryTopUpReversal
	EntryAdjustment
	EntryGrant
	EntryExpiry
	EntryHold
	EntryHoldRelease
	EntryAutoReload
)

// Status is a customer's status.
type Status uint8

// Customer statuses.
const (
	StatusActive Status = iota + 1
	StatusPaused        // usage events are rejected account_paused
)

// Policy says what happens when a debit is larger than what is available.
type Policy uint8

// Insufficient-funds policies.
const (
	PolicyReject    Policy = iota + 1 // the debit is refused: insufficient_funds
	PolicyOverdraft                   // available may fall to -credit_limit; the negative part is debt
)

// Bucket is one grant of credit inside an account.
type Bucket struct {
	ID       string // "b_<n>", unique within the wallet
	Kind     Kind
	Priority uint8 // 0-100, lower is consumed first
	// Alloc is 1 + the index of the plan allocation that granted the
	// bucket, 0 for any other bucket: an accumulating allocation's cap
	// counts the remaining amounts of its own buckets.
	Alloc       uint8
	Amount      int64 // granted, in the asset's smallest unit
	Remaining   int64 // never below zero
	EffectiveAt int64 // unix ns
	ExpiresAt   int64 // unix ns; 0 = never
	Source      string
	Reference   string // top-up id, adjustment transaction id, plan id, reload request id
	// Metadata is a raw JSON object, or "". A string rather than a []byte
	// keeps Bucket at 104 bytes, so that a two-bucket slice fits the
	// 208-byte size class (memory per wallet, DESIGN.md).
	Metadata string
}

// Account is one NAME:ASSET account of a wallet.
type Account struct {
	id      string // "name:ASSET", interned: Name and Asset are substrings of it
	nameLen uint8  // len(Name()); names are at most 64 bytes
	Scale   uint8
	// Depleted is set when balance.depleted fired (available went from
	// above zero to zero or less) and cleared when balance.recovered fires.
	Depleted bool
	Buckets  []Bucket // always in consumption order
	Held     int64    // reserved by active holds
	Debt     int64    // overdraft: how far below zero the account is
	Carry    uint64   // pricing remainder below one unit, in meter sub-units (< meter.SubUnitsPerUnit)
	Ledger   int64    // running sum of this account's ledger amounts; always == Available()
}

// Limit is the credit limit of one account under the overdraft policy.
type Limit struct {
	Account string // "name:ASSET"
	Units   int64  // non-negative
}

// Settings are a customer's settings.
type Settings struct {
	Status        Status
	Policy        Policy
	CreditLimits  []Limit
	BalanceAlerts []string    // decimal thresholds as given, at most AlertsMax
	Metadata      []byte      // raw JSON object, or nil
	Plan          *Plan       // nil = no plan
	AutoReload    *AutoReload // nil = none
	// PausedUntil, with StatusPaused, is when the customer resumes by
	// itself (unix ns; 0 = until resumed). The wallet resumes at that exact
	// instant, whether or not anything ran then: every operation advances
	// the wallet to its time first.
	PausedUntil int64
	// PlanChange is a change of plan scheduled for the end of a plan
	// period (nil = none).
	PlanChange *PlanChange
	// HoldLimits bound the active holds per account (APOB's concurrent
	// tasks); they override the plan's for the same account.
	HoldLimits []HoldLimit

	alerts []meter.Dec // BalanceAlerts parsed, by normalizeSettings
}

// PlanChange is a plan change that applies at an instant: the current
// plan's buckets end then, and Plan applies from then on (its period
// holding At is granted at At).
type PlanChange struct {
	At   int64 // unix ns: the end of the plan period the change was made in
	Plan *Plan // nil: the plan ends
}

// PlanChangeMode says when a new plan applies (Wallet.Reconfigure).
type PlanChangeMode uint8

// Plan change modes.
const (
	// PlanChangeNow: the current plan's buckets end now and the new plan's
	// period holding now is granted in full now.
	PlanChangeNow PlanChangeMode = iota
	// PlanChangeNowProrated is PlanChangeNow with the new plan's first
	// grant of each allocation prorated by the time left in its period.
	PlanChangeNowProrated
	// PlanChangeAtPeriodEnd: the current plan runs to the end of its
	// period; the new one applies from there.
	PlanChangeAtPeriodEnd
)

// Strategy says what an allocation's unused credits do at a period boundary.
type Strategy uint8

// Allocation strategies.
const (
	StrategyExpireAndReplace Strategy = iota + 1 // the allocation expires at the period's end
	StrategyAccumulate                           // unused credits carry over, the allocation's total capped at Cap
)

// Plan is a customer's plan: allocations granted at every period boundary.
type Plan struct {
	ID          string
	Allocations []Allocation // at most PlanAllocationsMax; the first one's period is "the plan period"
	// GrantWhilePaused grants the allocations of periods that start while
	// the customer is paused. By default they are skipped, and not caught
	// up on resume.
	GrantWhilePaused bool
	// HoldLimits bound the active holds per account for the plan's
	// customers (APOB: 3, 6 or 20 concurrent tasks by plan).
	HoldLimits []HoldLimit
}

// HoldLimit is the most holds that may be active at once on an account.
type HoldLimit struct {
	Account string // "name:ASSET"
	Max     int    // >= 1
}

// Allocation is one periodic grant of a plan.
type Allocation struct {
	Account  string // account name
	Asset    string
	Scale    uint8
	Amount   int64 // > 0, per period
	Period   PeriodUnit
	Anchor   int64 // unix ns: periods start at Anchor + k*Period
	Strategy Strategy
	Cap      int64 // accumulate: the most the allocation's buckets may hold; 0 = no cap
	Kind     Kind  // the buckets' kind; 0 = KindPlan
}

// ReloadMode is how an auto-reload request grants its credits.
type ReloadMode uint8

// Auto-reload modes.
const (
	ReloadGrantImmediately ReloadMode = iota + 1 // granted at the request; billing confirms or fails later
	ReloadAwaitPayment                           // granted on confirm
)

// AutoReload configures automatic purchases of credits.
type AutoReload struct {
	Enabled      bool
	Account      string // account name
	Asset        string
	Scale        uint8
	Threshold    int64  // reload when available drops below this
	Amount       int64  // credits per reload, > 0
	Price        string // decimal as given, e.g. "9.00"
	Currency     string
	SurchargePct string // decimal as given, "" = none
	Charge       string // what is billed: Price plus the surcharge, exact (computed by the caller)
	MaxPerPeriod int    // reloads per plan period; 0 = no limit
	// MaxUnpaid bounds the requests pending at once in grant_immediately
	// mode (0 = ReloadPendingMax); await_payment has one at a time.
	MaxUnpaid int
	Mode      ReloadMode // 0 = ReloadGrantImmediately
	PeriodEnd bool       // reloaded credits expire at the end of the plan period
	// OfferID is the offer each reload buys (its auto-reload discount
	// included), "" for none: Amount and Price were computed from it when
	// the settings were written.
	OfferID string
}

// Wallet is one customer's state.
type Wallet struct {
	Customer string
	// Settings is immutable once set: Configure replaces the pointer, and
	// wallets whose settings have no limits, alerts or metadata share one of
	// four static values (most wallets), which keeps a wallet small.
	Settings  *Settings
	Accounts  []*Account
	Seq       uint64 // last ledger entry sequence number of this customer
	BucketSeq uint64 // last bucket number
	CreatedAt int64  // unix ns
	UpdatedAt int64  // unix ns
	// Life is the state of the credit lifecycle (plan grants, holds, alerts,
	// auto-reload, notifications); nil until the wallet needs it.
	Life *Lifecycle

	// accounts0 is the inline backing array of Accounts while the wallet has
	// one account (the common case): it saves an allocation and fits in the
	// Wallet's size class. A Wallet must therefore not be copied by value.
	accounts0 [1]*Account
	// QueuedAt belongs to the engine that holds the wallet: the earliest
	// due instant its shard has queued for it (balance's
	// lifecycle_engine.go), 0 = none. The state machine never reads it,
	// and it is not stored.
	QueuedAt int64
}

// Entry is one ledger entry. Its id is Customer + "/" + Seq.
type Entry struct {
	Seq            uint64
	Type           EntryType
	Account        string // "name:ASSET"
	Scale          uint8
	Amount         int64 // signed, in the asset's smallest unit
	BalanceAfter   int64 // the account's Available() after this entry
	BucketID       string
	BucketKind     Kind // the kind of BucketID's bucket; 0 for a debt part
	EventID        string
	Reference      string
	OccurredAt     int64 // unix ns
	RecordedAt     int64 // unix ns
	PricingVersion uint32
	Metadata       []byte // raw JSON object, or nil
	// Since entry format 2: the source of BucketID's bucket ("" without a
	// bucket), the description of what made the entry (a top-up's, an
	// adjustment's, a usage event's), and for a purchase (a top-up, an
	// auto-reload) what was paid and the offer bought ("" for none).
	Source, Description    string
	Price, Currency, Offer string
}

// TopUpCmd is a one-time purchase: a new recharge bucket.
type TopUpCmd struct {
	ID        string // the client's top-up id; becomes the bucket's Reference
	Account   string // account name, e.g. "default"
	Asset     string
	Scale     uint8
	Amount    int64 // > 0
	Source    string
	ExpiresAt int64 // unix ns; 0 = never; ExpiresPeriodEnd = the plan period's end
	Metadata  []byte
	// Price and Currency are what the customer paid, as given ("" without
	// a price): the engine keeps them on the top-up's record; the wallet
	// does not use them.
	Price, Currency string
	// Description is the client's text for the top-up, kept on its record.
	Description string
	// ExchangeRate is the units of Asset that one unit of Currency bought
	// (a top-up paid in one currency crediting another asset), as given;
	// "" when none.
	ExchangeRate string
	// Offer, when set, is the offer the top-up buys: the engine prices it
	// (meter.Pricing.Buy, under the customer's plan) and sets Account,
	// Asset, Scale, Amount, Price and Currency, and Bought.
	Offer  *meter.Purchase
	Bought *meter.OfferQuote
}

// AdjustCmd is an adjustment: positive creates a bucket, negative debits in consumption order.
type AdjustCmd struct {
	TransactionID string
	Account       string // account name
	Asset         string
	Scale         uint8
	Amount        int64 // != 0
	Kind          Kind  // for positive amounts; 0 means KindRecharge
	Priority      int   // -1 means the kind's default
	ExpiresAt     int64 // unix ns; 0 = never; ExpiresPeriodEnd = the plan period's end
	Source        string
	Description   string // kept on the adjustment's entries
	Metadata      []byte
}

// UsageCmd charges one rated event.
type UsageCmd struct {
	EventID        string
	OccurredAt     int64
	PricingVersion uint32
	Charges        []meter.Charge
	HoldID         string // the active hold this event settles, or "" (an unknown or ended hold is ignored)
	Description    string // the event's, kept on its usage entries
}

// Part is the share of one charge drawn from one bucket. BucketID "" is the
// part that went into debt under the overdraft policy.
type Part struct {
	BucketID string
	Amount   int64 // > 0
}

// ChargeResult is what one charge of an event took from one account.
type ChargeResult struct {
	Account      string // "name:ASSET"
	Scale        uint8
	Amount       int64 // whole units charged after the carry (may be 0)
	Parts        []Part
	BalanceAfter int64 // the account's Available() after the charge
}
