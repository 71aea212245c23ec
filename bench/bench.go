// Package bench is meterd's yardstick: the same usage-event workload applied
// to meterd and to the wallets a team would build instead (PostgreSQL,
// Redis), each durable before it answers, each checked for correctness after
// the run. cmd/meterbench is its command line.
//
// A System is one wallet under test. Every system applies the same
// semantics per event, durably before Apply returns:
//
//  1. a repeated event id (per customer) is a duplicate: nothing is applied,
//     and the original charge is answered;
//  2. otherwise the customer's balance is read, and an event it cannot pay
//     is rejected (insufficient funds), nothing applied;
//  3. otherwise the charge is deducted and one ledger row is written.
//
// meterd prices each event itself from its pricing document; the baselines
// take Event.Charge, which the scenario computes with the same prices
// (bench/pricing.go), so every system moves the same amounts.
//
// This file holds the types every part shares: the events, the results, the
// System interface and the ledger view the checker reads.
package bench

import "context"

// Event is one usage event of a scenario: a token-priced
// message_completed of one model.
type Event struct {
	ID           string // unique per customer within a run
	Customer     string
	Model        string
	InputTokens  int64
	OutputTokens int64
	// Charge is what the event costs in the account's smallest unit
	// (micro-USD: the pricing's USD has scale 6), rounded down.
	Charge int64
	// Hold: the event settles the hold HoldID(event), placed before its
	// request is sent (meterd's lifecycle mix only; see MeterdLifecycle).
	Hold bool
}

// Status is what a system answered for one event.
type Status uint8

const (
	StatusUnknown   Status = iota // no answer (the request failed)
	StatusCharged                 // applied: the charge was deducted and a ledger row written
	StatusDuplicate               // the id was seen before: nothing applied
	StatusRejected                // the balance could not pay: nothing applied
)

func (s Status) String() string {
	switch s {
	case StatusCharged:
		return "charged"
	case StatusDuplicate:
		return "duplicate"
	case StatusRejected:
		return "rejected"
	}
	return "unknown"
}

// Result is the answer for one event.
type Result struct {
	Status Status
	Charge int64 // charged or duplicate: the amount the event's charge took, in micro-USD
}

// LedgerRow is one charge as a system recorded it.
type LedgerRow struct {
	EventID string
	Amount  int64 // micro-USD taken, positive
}

// System is one wallet under test.
type System interface {
	// Name labels the system in reports ("meterd", "redis-always",
	// "postgres-plain", ...).
	Name() string
	// Setup creates the customers, each with balance micro-USD, durably.
	Setup(ctx context.Context, customers []string, balance int64) error
	// Apply applies one request's events, durably before it returns, and
	// writes one result per event into results (len(results) ==
	// len(events)). An error means the request got no answer: its events
	// may or may not have been applied, and resending them is safe.
	Apply(ctx context.Context, events []Event, results []Result) error
	// Balance returns the customer's balance in micro-USD.
	Balance(ctx context.Context, customer string) (int64, error)
	// Ledger returns every charge recorded for the customer.
	Ledger(ctx context.Context, customer string) ([]LedgerRow, error)
	// PIDs returns the processes whose CPU counts as the system's.
	PIDs() []int
	// Close releases the client side; servers are stopped by their owner.
	Close() error
}

// Preparer is a System that encodes a run's requests before the run, so that
// the load loop sends ready bytes and the generator's encoding is not what
// it measures. Prepare returns the apply of request i of reqs, with Apply's
// contract; Run calls it instead of Apply.
type Preparer interface {
	System
	Prepare(reqs [][]Event) (apply func(ctx context.Context, i int, results []Result) error, err error)
}
