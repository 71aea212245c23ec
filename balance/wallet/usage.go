package wallet

import (
	"cmp"
	"slices"
)

// The usage view: per plan period and account, what was granted, used and
// expired, and what remained, by bucket kind (Wanclouds' Total / Used /
// Remaining). It is derived from the ledger: an entry counts in the period
// its recorded_at falls in, and what remained at a period's end is the
// ledger's balance then.

// KindUsage is one bucket kind's flows in a period. Kind 0 is what no
// bucket holds: debt and holds (its Remaining is -(held + debt)).
type KindUsage struct {
	Kind      Kind
	Granted   int64 // credit in: plan grants, top-ups, auto-reloads, positive adjustments
	Used      int64 // usage, as a positive amount
	Expired   int64 // expired unused, positive
	Other     int64 // the net of everything else: reversals, negative adjustments, holds and their releases
	Remaining int64 // at the period's end (or now, for a period not over)
}

// AccountUsage is one account's flows in a period, by kind.
type AccountUsage struct {
	Account string
	Scale   uint8
	Kinds   []KindUsage // by Kind, ascending
}

// PeriodUsage is the usage view of one period [Start, End).
type PeriodUsage struct {
	Start, End int64
	Accounts   []AccountUsage // by account id
}

// UsagePeriods returns the n periods up to the one holding at, newest
// first: the plan periods of the plan's first allocation, or UTC calendar
// months without a plan.
func (w *Wallet) UsagePeriods(at int64, n int) [][2]int64 {
	anchor, unit := periodStart(0, PeriodYear, 0), PeriodMonth
	if p := w.Settings.Plan; p != nil && len(p.Allocations) > 0 && periodIndex(p.Allocations[0].Anchor, p.Allocations[0].Period, at) >= 0 {
		anchor, unit = p.Allocations[0].Anchor, p.Allocations[0].Period
	}
	k := periodIndex(anchor, unit, at)
	out := make([][2]int64, 0, n)
	for i := int64(0); i < int64(n) && k-i >= 0; i++ {
		out = append(out, [2]int64{periodStart(anchor, unit, k-i), periodStart(anchor, unit, k-i+1)})
	}
	return out
}

// Usage computes the usage view of periods (newest first, as UsagePeriods
// returns them) from the wallet and its ledger entries recorded since the
// oldest period's start, newest first, none after the wallet's last entry
// (Seq <= w.Seq): what remained at a period's end is what the wallet holds
// now less what the entries recorded since then added.
func (w *Wallet) Usage(periods [][2]int64, entries []Entry) []PeriodUsage {
	type key struct {
		account string
		kind    Kind
	}
	// Now, by account and kind: buckets' remaining; kind 0: -(held + debt).
	rem := map[key]int64{}
	scales := map[string]uint8{}
	for _, a := range w.Accounts {
		id := a.ID()
		scales[id] = a.Scale
		rem[key{id, 0}] = -(a.Held + a.Debt)
		for _, b := range a.Buckets {
			rem[key{id, b.Kind}] += b.Remaining
		}
	}
	out := make([]PeriodUsage, len(periods))
	next := 0 // entries[:next] are recorded at or after the current period's end
	for pi, p := range periods {
		flows := map[key]*KindUsage{}
		get := func(k key) *KindUsage {
			f := flows[k]
			if f == nil {
				f = &KindUsage{Kind: k.kind}
				flows[k] = f
			}
			return f
		}
		// Take back what was recorded at or after the period's end.
		for ; next < len(entries) && entries[next].RecordedAt >= p[1]; next++ {
			e := &entries[next]
			rem[key{e.Account, e.BucketKind}] -= e.Amount
		}
		for k, v := range rem {
			get(k).Remaining = v
		}
		for i := next; i < len(entries) && entries[i].RecordedAt >= p[0]; i++ {
			e := &entries[i]
			get(key{e.Account, e.BucketKind}).add(e)
		}
		pu := PeriodUsage{Start: p[0], End: p[1]}
		byAccount := map[string]int{}
		for k, f := range flows {
			if *f == (KindUsage{Kind: k.kind}) {
				continue // nothing held, nothing moved
			}
			i, ok := byAccount[k.account]
			if !ok {
				i = len(pu.Accounts)
				byAccount[k.account] = i
				pu.Accounts = append(pu.Accounts, AccountUsage{Account: k.account, Scale: scales[k.account]})
			}
			pu.Accounts[i].Kinds = append(pu.Accounts[i].Kinds, *f)
		}
		sortUsage(pu.Accounts)
		out[pi] = pu
	}
	return out
}

func sortUsage(as []AccountUsage) {
	slices.SortFunc(as, func(a, b AccountUsage) int { return cmp.Compare(a.Account, b.Account) })
	for i := range as {
		slices.SortFunc(as[i].Kinds, func(a, b KindUsage) int { return cmp.Compare(a.Kind, b.Kind) })
	}
}

// add counts entry e in the flow it belongs to: credit granted (a grant,
// top-up, auto-reload or positive adjustment), used, expired, or other
// (holds, reversals, negative adjustments, debt).
func (f *KindUsage) add(e *Entry) {
	switch {
	case e.Amount > 0 && (e.Type == EntryGrant || e.Type == EntryTopUp || e.Type == EntryAutoReload || e.Type == EntryAdjustment):
		f.Granted += e.Amount
	case e.Type == EntryUsage:
		f.Used -= e.Amount
	case e.Type == EntryExpiry:
		f.Expired -= e.Amount
	default:
		f.Other += e.Amount
	}
}
