// Package balance holds customers' wallets and applies every change to them.
//
// It has three layers:
//
//   - the wallet state machine (Wallet and its methods): pure and
//     deterministic. Time is an argument, there is no I/O, no goroutine and no
//     lock inside. Every change returns the ledger entries it produced, and
//     every method keeps the invariants: no bucket below zero, buckets in
//     consumption order, and for every account the running sum of its ledger
//     amounts equals Available().
//   - shards: each owns a disjoint set of customers (hash of the customer id)
//     and runs one goroutine that applies commands in batches without locks.
//   - the Pebble store: one write batch per commit group, committed with
//     pebble.Sync before any caller sees an answer; recovery on start.
package balance
