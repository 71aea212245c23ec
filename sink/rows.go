package sink

// Batch is a deterministic cut of the outbox: every row of the outbox
// records From..To (inclusive). Retrying a batch sends exactly the same rows.
type Batch struct {
	From, To uint64
	Ledger   []LedgerRow
	Usage    []UsageRow
	Notes    []NoteRow
}

// NoteRow is one customer notification as shipped (balance alerts,
// auto-reload requests and outcomes, expired buckets and holds).
type NoteRow struct {
	OutboxSeq  uint64
	ID         string // "<customer>/n<seq>": stable, receivers dedupe by it
	CustomerID string
	Seq        uint64 // per customer, in the order they were made
	Type       string // balance.low, auto_reload.requested, ...
	At         int64  // unix ns
	Body       []byte // the JSON object (id, type, customer_id, account, created_at, data)
}

// LedgerRow is one ledger entry as shipped.
type LedgerRow struct {
	OutboxSeq      uint64 // the outbox record that carried it
	EntryID        string // customer_id + "/" + seq
	Seq            uint64 // the customer's ledger sequence number
	CustomerID     string
	Account        string // "name:ASSET"
	Asset          string
	Type           string // usage, topup, topup_reversal, adjustment, grant, expiry, hold, hold_release, auto_reload
	Scale          uint8  // the asset's scale: Amount and BalanceAfter are in units of 10^-Scale
	Amount         int64
	BalanceAfter   int64
	BucketID       string
	BucketKind     string // promotional, plan, recharge, or "" (debt, or unknown)
	EventID        string
	Reference      string
	OccurredAt     int64 // unix ns
	RecordedAt     int64 // unix ns
	PricingVersion uint32
	Metadata       string // raw JSON object, "" when none
	Source         string // the source of BucketID's bucket, "" without one
	Description    string // of the top-up, adjustment or usage event
	// Price and Currency are what a purchase (a top-up, an auto-reload)
	// was paid, the price as written ("" when none); Offer the offer it
	// bought.
	Price, Currency, Offer string
}

// UsageRow is one usage event as shipped: one row per charged account, or one
// row with an empty Account and a zero Charge for an event that was recorded
// without a price.
type UsageRow struct {
	OutboxSeq      uint64
	EventID        string
	CustomerID     string
	EventType      string
	Subject        string
	OccurredAt     int64  // unix ns
	RecordedAt     int64  // unix ns
	Status         string // charged or recorded
	Account        string // "name:ASSET", "" when recorded
	Asset          string
	Scale          uint8
	Charge         int64 // whole units charged to Account (after the carry)
	PricingVersion uint32
	Data           string // the event's data object as JSON
	// Dimension is the event's value of the charging price's dimensions,
	// joined with "/" ("" without dimensions); see meter.DimensionReader.
	// Only destinations that use it get it (ClickHouse).
	Dimension   string
	Description string // the event's description, "" when none
}
