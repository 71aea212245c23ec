// Package balance holds customers' wallets and applies every change to them.
//
// It has three layers:
//
//   - the wallet state machine, package balance/wallet: pure and
//     deterministic, with time, ids and pricing versions as arguments.
//     Every change returns the ledger entries it produced.
//   - shards: each owns a disjoint set of customers (hash of the customer id)
//     and runs one goroutine that applies commands to their wallets in
//     batches without locks.
//   - the Pebble store: one write batch per commit group, committed with
//     pebble.Sync before any caller sees an answer, holding the group's
//     command log record and the checkpoints of its wallets; recovery on
//     start loads the checkpoints and replays the log through the state
//     machine.
package balance
