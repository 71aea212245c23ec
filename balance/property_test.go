package balance

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"testing"

	"github.com/meterd/meterd/meter"
)

// The reference model: a flat list of buckets of every account, sorted
// naively whenever an order is needed, with plain int64 arithmetic. It is
// written independently of wallet.go and shares none of its code.

type mBucket struct {
	id          string
	acct        string
	kind        Kind
	prio        int
	amount, rem int64
	eff, exp    int64
	ref         string
}

type mAcct struct {
	debt  int64
	carry uint64
}

type model struct {
	status    Status
	policy    Policy
	limits    map[string]int64
	buckets   []mBucket
	accts     map[string]*mAcct
	bucketSeq uint64
	exp       []mEntry // expected entries of the current step
}

// mEntry is what the model expects of one ledger entry.
type mEntry struct {
	typ    EntryType
	acct   string
	amount int64
	bucket string
}

func newModel() *model {
	return &model{status: StatusActive, policy: PolicyReject, limits: map[string]int64{}, accts: map[string]*mAcct{}}
}

// order returns the indices of an account's buckets in consumption order.
func (m *model) order(acct string) []int {
	var idx []int
	for i := range m.buckets {
		if m.buckets[i].acct == acct {
			idx = append(idx, i)
		}
	}
	key := func(b *mBucket) (int, int64, int64, string) {
		exp := b.exp
		if exp == 0 {
			exp = math.MaxInt64
		}
		return b.prio, exp, b.eff, b.id
	}
	sort.Slice(idx, func(x, y int) bool {
		p1, e1, f1, i1 := key(&m.buckets[idx[x]])
		p2, e2, f2, i2 := key(&m.buckets[idx[y]])
		switch {
		case p1 != p2:
			return p1 < p2
		case e1 != e2:
			return e1 < e2
		case f1 != f2:
			return f1 < f2
		}
		return i1 < i2
	})
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
		s -= a.debt
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

// expire applies expiries in time order: at each instant, every bucket due
// by then, in account order then consumption order.
func (m *model) expire(now int64) {
	var due []int64
	for _, b := range m.buckets {
		if b.exp != 0 && b.exp <= now {
			due = append(due, b.exp)
		}
	}
	slices.Sort(due)
	for _, t := range slices.Compact(due) {
		m.expireAt(t)
	}
}

func (m *model) expireAt(now int64) {
	for _, acct := range m.acctIDs() {
		gone := map[string]bool{}
		for _, i := range m.order(acct) {
			b := m.buckets[i]
			if b.exp != 0 && b.exp <= now {
				gone[b.id] = true
				if b.rem != 0 {
					m.exp = append(m.exp, mEntry{EntryExpiry, acct, -b.rem, b.id})
				}
			}
		}
		m.remove(gone)
	}
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

// debit takes units in consumption order, the rest into debt.
func (m *model) debit(acct string, units int64, typ EntryType) {
	left := units
	gone := map[string]bool{}
	for _, i := range m.order(acct) {
		if left == 0 {
			break
		}
		b := &m.buckets[i]
		take := b.rem
		if take > left {
			take = left
		}
		if take == 0 {
			continue
		}
		b.rem -= take
		left -= take
		if b.rem == 0 {
			gone[b.id] = true
		}
		m.exp = append(m.exp, mEntry{typ, acct, -take, b.id})
	}
	m.remove(gone)
	if left > 0 {
		m.accts[acct].debt += left
		m.exp = append(m.exp, mEntry{typ, acct, -left, ""})
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
	m.bucketSeq++
	id := "b_" + strconv.FormatUint(m.bucketSeq, 10)
	settle := min(a.debt, amount)
	a.debt -= settle
	if amount-settle > 0 {
		m.buckets = append(m.buckets, mBucket{id: id, acct: acct, kind: kind, prio: prio, amount: amount, rem: amount - settle, eff: now, exp: exp, ref: ref})
	}
	m.exp = append(m.exp, mEntry{typ, acct, amount, id})
	if exp != 0 && exp <= now {
		m.expire(now)
	}
	return id, ""
}

func (m *model) topUp(c *TopUpCmd, now int64) (string, string) {
	m.expire(now)
	return m.grant(c.Account+":"+c.Asset, c.Amount, KindRecharge, 30, c.ExpiresAt, now, c.ID, EntryTopUp)
}

func (m *model) adjust(c *AdjustCmd, now int64) string {
	m.expire(now)
	acct := c.Account + ":" + c.Asset
	if c.Amount > 0 {
		kind := c.Kind
		if kind == 0 {
			kind = KindRecharge
		}
		if kind > 3 {
			return CodeInvalidRequest
		}
		prio := map[Kind]int{KindPromotional: 10, KindPlan: 20, KindRecharge: 30}[kind]
		if c.Priority > 100 {
			return CodeInvalidRequest
		}
		if c.Priority >= 0 {
			prio = c.Priority
		}
		_, code := m.grant(acct, c.Amount, kind, prio, c.ExpiresAt, now, c.TransactionID, EntryAdjustment)
		return code
	}
	if c.Amount == 0 {
		return CodeInvalidAmount
	}
	if !m.mayDebit(acct, m.avail(acct), -c.Amount) {
		return CodeInsufficientFunds
	}
	m.ensure(acct)
	m.debit(acct, -c.Amount, EntryAdjustment)
	return ""
}

func (m *model) reverse(bucket, topUp string, window, now int64) string {
	m.expire(now)
	for _, b := range m.buckets {
		if b.id != bucket {
			continue
		}
		switch {
		case b.ref != topUp:
			return CodeUnknownBucket
		case b.rem < b.amount:
			return CodeTopUpSpent
		case now > b.eff+window:
			return CodeReversalWindowElapsed
		}
		m.remove(map[string]bool{b.id: true})
		m.exp = append(m.exp, mEntry{EntryTopUpReversal, b.acct, -b.amount, b.id})
		return ""
	}
	if n, err := strconv.ParseUint(bucket[2:], 10, 64); err == nil && n > 0 && n <= m.bucketSeq {
		return CodeTopUpSpent
	}
	return CodeUnknownBucket
}

func (m *model) charge(c *UsageCmd, now int64) ([]int64, string) {
	m.expire(now)
	if m.status == StatusPaused {
		return nil, CodeAccountPaused
	}
	const S = meter.SubUnitsPerUnit
	units := make([]int64, len(c.Charges))
	carries := map[string]uint64{}
	spent := map[string]int64{}
	for i, ch := range c.Charges {
		if ch.Amount.Units < 0 || ch.Amount.Sub >= S {
			return nil, CodeInvalidAmount
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
		if !m.mayDebit(ch.Account, m.avail(ch.Account)-spent[ch.Account], u) {
			return nil, CodeInsufficientFunds
		}
		spent[ch.Account] += u
	}
	for i, ch := range c.Charges {
		m.ensure(ch.Account)
		if units[i] > 0 {
			m.debit(ch.Account, units[i], EntryUsage)
		}
	}
	for acct, carry := range carries {
		m.accts[acct].carry = carry
	}
	return units, ""
}

// propertyRun drives a wallet and the model with the same random commands
// and compares them after every step.
func propertyRun(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	now := t0
	w := NewWallet("c_prop", Settings{}, now)
	m := newModel()
	sums := map[string]int64{}
	var seq uint64
	var out []Entry
	var res []ChargeResult
	accounts := [][2]string{{"default", "CREDITS"}, {"default", "USD"}, {"team:eu", "CREDITS"}}
	type topUpRec struct{ bucket, id string }
	var topUps []topUpRec
	counts := map[string]int{}

	pickAcct := func() (string, string) {
		a := accounts[rng.IntN(len(accounts))]
		return a[0], a[1]
	}
	pickExpiry := func() int64 {
		switch r := rng.IntN(10); {
		case r < 4:
			return 0
		case r == 4:
			return now // expires at once
		case r == 5 && len(m.buckets) > 0: // ties with an existing bucket
			if e := m.buckets[rng.IntN(len(m.buckets))].exp; e > now {
				return e
			}
			return 0
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

	for step := 0; step < steps; step++ {
		// Time moves forward: not at all, a little, a lot, or exactly to
		// (or just before) the next expiry.
		switch r := rng.IntN(10); {
		case r < 3:
		case r < 6:
			now += rng.Int64N(1000)
		case r < 8:
			now += rng.Int64N(6 * hour)
		default:
			if next := w.NextExpiry(); next > now {
				now = next - rng.Int64N(2)
			}
		}
		m.exp = m.exp[:0]
		out = out[:0]
		var gotCode, wantCode string
		var op string
		var charges []int64
		snapshot := m.snapshotOrder()
		switch r := rng.IntN(100); {
		case r < 22:
			op = "topup"
			name, asset := pickAcct()
			id := "top_" + strconv.Itoa(step)
			c := &TopUpCmd{ID: id, Account: name, Asset: asset, Amount: pickAmount(), Source: "custom_credits", ExpiresAt: pickExpiry()}
			var bid, wantID string
			var err *Error
			bid, out, err = w.TopUp(c, now, out)
			wantID, wantCode = m.topUp(c, now)
			gotCode = code(err)
			if bid != wantID {
				t.Fatalf("seed %d step %d: top-up bucket %q, model %q", seed, step, bid, wantID)
			}
			if err == nil {
				topUps = append(topUps, topUpRec{bid, id})
			}
		case r < 42:
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
			}
			var err *Error
			out, err = w.Adjust(c, now, out)
			wantCode = m.adjust(c, now)
			gotCode = code(err)
		case r < 80:
			op = "charge"
			c := &UsageCmd{EventID: "evt_" + strconv.Itoa(step), OccurredAt: now - 5, PricingVersion: 7}
			for n := 1 + rng.IntN(2); n > 0; n-- {
				name, asset := pickAcct()
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
			var err *Error
			res, out, err = w.Charge(c, now, res[:0], out)
			charges, wantCode = m.charge(c, now)
			gotCode = code(err)
			if err == nil {
				if len(res) != len(c.Charges) {
					t.Fatalf("seed %d step %d: %d results for %d charges", seed, step, len(res), len(c.Charges))
				}
				for i := range res {
					var sum int64
					for _, p := range res[i].Parts {
						sum += p.Amount
					}
					if res[i].Amount != charges[i] || sum != charges[i] || res[i].Account != c.Charges[i].Account {
						t.Fatalf("seed %d step %d: result %+v, model units %d", seed, step, res[i], charges[i])
					}
				}
			}
		case r < 90:
			op = "reverse"
			bucket, id := "b_"+strconv.Itoa(rng.IntN(int(m.bucketSeq)+3)), "top_x"
			if len(topUps) > 0 && rng.IntN(4) != 0 {
				rec := topUps[len(topUps)-1-rng.IntN(min(len(topUps), 5))]
				bucket, id = rec.bucket, rec.id
			}
			var err *Error
			out, err = w.ReverseTopUp(bucket, id, day, now, out)
			wantCode = m.reverse(bucket, id, day, now)
			gotCode = code(err)
		case r < 95:
			op = "configure"
			s := Settings{Status: StatusActive, Policy: PolicyReject}
			if rng.IntN(5) == 0 {
				s.Status = StatusPaused
			}
			if rng.IntN(2) == 0 {
				s.Policy = PolicyOverdraft
			}
			m.limits = map[string]int64{}
			for _, a := range accounts {
				if rng.IntN(2) == 0 {
					l := rng.Int64N(500)
					s.CreditLimits = append(s.CreditLimits, Limit{Account: a[0] + ":" + a[1], Units: l})
					m.limits[a[0]+":"+a[1]] = l
				}
			}
			w.Configure(s, now)
			m.status, m.policy = s.Status, s.Policy
		default:
			op = "expire"
			out = w.Expire(now, out)
			m.expire(now)
		}
		counts[op+" "+gotCode]++
		if gotCode != wantCode {
			t.Fatalf("seed %d step %d %s: code %q, model %q", seed, step, op, gotCode, wantCode)
		}

		// The entries are the model's, numbered in sequence, each with the
		// running sum as its balance, and they respect consumption order.
		if len(out) != len(m.exp) {
			t.Fatalf("seed %d step %d %s: entries %+v, model %+v", seed, step, op, out, m.exp)
		}
		for i := range out {
			e, x := &out[i], m.exp[i]
			seq++
			if e.Type != x.typ || e.Account != x.acct || e.Amount != x.amount || e.BucketID != x.bucket || e.Seq != seq || e.RecordedAt != now {
				t.Fatalf("seed %d step %d %s: entry %d %+v, model %+v", seed, step, op, i, e, x)
			}
			if e.BucketID == "" {
				counts["(debt parts)"]++
			} else if e.Amount < 0 && e.Type != EntryExpiry && i > 0 && out[i-1].Type == e.Type && out[i-1].Amount < 0 && out[i-1].Account == e.Account {
				counts["(multi-bucket debits)"]++
			}
			sums[e.Account] += e.Amount
			if e.BalanceAfter != sums[e.Account] {
				t.Fatalf("seed %d step %d: balance_after %d != sum of entries %d", seed, step, e.BalanceAfter, sums[e.Account])
			}
		}
		checkConsumptionOrder(t, snapshot, out)

		if err := w.Check(); err != nil {
			t.Fatalf("seed %d step %d %s: %v", seed, step, op, err)
		}
		compareModel(t, seed, step, w, m, sums)

		if rng.IntN(50) == 0 { // continue on a decoded copy
			d, err := DecodeWallet(AppendWallet(nil, w))
			if err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			w = d
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

// snapshotOrder returns each account's buckets (id, remaining) in
// consumption order, as the model has them before a step.
func (m *model) snapshotOrder() map[string][]mBucket {
	s := map[string][]mBucket{}
	for id := range m.accts {
		for _, i := range m.order(id) {
			s[id] = append(s[id], m.buckets[i])
		}
	}
	return s
}

// checkConsumptionOrder verifies, from the entries alone, that no debit drew
// from a bucket while a bucket earlier in consumption order still had
// something left, and that debt was only taken once every bucket was empty.
func checkConsumptionOrder(t *testing.T, before map[string][]mBucket, out []Entry) {
	t.Helper()
	left := map[string]int64{}
	for _, bs := range before {
		for _, b := range bs {
			left[b.id] = b.rem
		}
	}
	for _, e := range out {
		if e.Type == EntryExpiry || e.Type == EntryTopUpReversal {
			left[e.BucketID] = 0
			continue
		}
		if e.Amount >= 0 {
			continue
		}
		for _, b := range before[e.Account] {
			if b.id == e.BucketID {
				break
			}
			if left[b.id] > 0 {
				t.Fatalf("entry %d draws %d from %q while %q, earlier in consumption order, still has %d", e.Seq, -e.Amount, e.BucketID, b.id, left[b.id])
			}
		}
		if e.BucketID != "" {
			left[e.BucketID] += e.Amount
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
		if a.ID() != id || a.Available() != m.avail(id) || a.Debt != ma.debt || a.Carry != ma.carry || sums[id] != a.Available() {
			t.Fatalf("seed %d step %d: account %s available %d debt %d carry %d (entries sum %d); model %s %d %d %d",
				seed, step, a.ID(), a.Available(), a.Debt, a.Carry, sums[id], id, m.avail(id), ma.debt, ma.carry)
		}
		order := m.order(id)
		if len(order) != len(a.Buckets) {
			t.Fatalf("seed %d step %d: account %s has %d buckets, model %d", seed, step, id, len(a.Buckets), len(order))
		}
		for j, k := range order {
			b, mb := &a.Buckets[j], &m.buckets[k]
			if b.ID != mb.id || b.Remaining != mb.rem || b.Amount != mb.amount || int(b.Priority) != mb.prio || b.Kind != mb.kind ||
				b.ExpiresAt != mb.exp || b.EffectiveAt != mb.eff || b.Reference != mb.ref {
				t.Fatalf("seed %d step %d: account %s bucket %d: %+v, model %+v", seed, step, id, j, *b, *mb)
			}
		}
	}
	if w.BucketSeq != m.bucketSeq {
		t.Fatalf("seed %d step %d: bucket seq %d, model %d", seed, step, w.BucketSeq, m.bucketSeq)
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
