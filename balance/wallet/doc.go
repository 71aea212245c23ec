// Package wallet is meterd's wallet state machine: a customer's accounts,
// their buckets in consumption order, plans and their periods, holds,
// overdraft and debt, auto-reload, and the notifications these make.
//
// It is pure and deterministic. Time is an argument, and so are ids and
// pricing versions (they come with the commands); there is no I/O, no
// goroutine, no clock and no lock inside. Every change returns the ledger
// entries it produced, and every method keeps the invariants: no bucket
// below zero, buckets in consumption order, and for every account the
// running sum of its ledger amounts equals Available() (Wallet.Check).
//
// The engine (package balance) calls it from the shard that owns a wallet,
// and recovery replays the command log through the same methods, so that
// replay gives the state the acknowledged commands gave. The binary forms
// of a wallet, an entry, a notification and a hold record (AppendWallet,
// DecodeWallet ...) are here with the types they encode. Every error code
// of the engine and of the wallet is defined once, in errors.go.
package wallet
