package wallet

import (
	"encoding/binary"
	"fmt"

	"github.com/meterd/meterd/balance/internal/enc"
)

// Binary forms of the credit lifecycle (see codec.go for the conventions).
// Wallet version 2 is version 1 plus, after the settings' metadata:
//
//	plan?       (0 | 1 id n {account asset scale amount period anchor strategy cap kind})
//	auto_reload? (0 | 1 enabled account asset scale threshold amount price currency
//	              surcharge charge max_per_period mode period_end [max_unpaid, v4])
//
// plus each bucket's alloc byte after its metadata, and after the accounts:
//
//	life? (0 | 1 note_seq plan_id n {anchor period last since}
//	       n {id account amount created_at expires_at}
//	       reload_seq pending? reload_period reload_count)

const walletFormatV2 = 2

// Version 3 (the store's snapshots, AppendWalletAt) is version 2 followed
// by the uvarint seq of the last command-log record it reflects.
const walletFormatV3 = 3

// Version 4 is version 3 with grant_while_paused after a plan's
// allocations, max_unpaid after the auto-reload settings' period_end,
// then after the auto-reload settings
//
//	paused_until plan_change? (0 | 1 at plan?) n {account max}
//
// (a plan's hold limits, n {account max}, follow its grant_while_paused),
//
// a prorate flag after each allocation schedule's since, and the pending
// auto-reload requests as a list where version 3 had one optional request:
//
//	reload_seq n {request} reload_period reload_count
const walletFormatV4 = 4

// Version 5 is version 4 with the auto-reload settings' offer id after
// max_unpaid. Every wallet is written in version 5; the older ones are
// read.
const walletFormatV5 = 5

func appendPlanSettings(b []byte, s *Settings) []byte {
	b = appendPlan(b, s.Plan)
	b = enc.AppendFlag(b, s.AutoReload != nil)
	if r := s.AutoReload; r != nil {
		b = enc.AppendFlag(b, r.Enabled)
		b = enc.AppendStr(b, r.Account)
		b = enc.AppendStr(b, r.Asset)
		b = append(b, r.Scale)
		b = binary.AppendVarint(b, r.Threshold)
		b = binary.AppendVarint(b, r.Amount)
		b = enc.AppendStr(b, r.Price)
		b = enc.AppendStr(b, r.Currency)
		b = enc.AppendStr(b, r.SurchargePct)
		b = enc.AppendStr(b, r.Charge)
		b = binary.AppendUvarint(b, uint64(r.MaxPerPeriod))
		b = append(b, byte(r.Mode))
		b = enc.AppendFlag(b, r.PeriodEnd)
		b = binary.AppendUvarint(b, uint64(r.MaxUnpaid))
		b = enc.AppendStr(b, r.OfferID)
	}
	b = binary.AppendVarint(b, s.PausedUntil)
	b = enc.AppendFlag(b, s.PlanChange != nil)
	if pc := s.PlanChange; pc != nil {
		b = binary.AppendVarint(b, pc.At)
		b = appendPlan(b, pc.Plan)
	}
	return appendHoldLimits(b, s.HoldLimits)
}

// appendPlan appends an optional plan.
func appendPlan(b []byte, p *Plan) []byte {
	b = enc.AppendFlag(b, p != nil)
	if p != nil {
		b = enc.AppendStr(b, p.ID)
		b = binary.AppendUvarint(b, uint64(len(p.Allocations)))
		for i := range p.Allocations {
			al := &p.Allocations[i]
			b = enc.AppendStr(b, al.Account)
			b = enc.AppendStr(b, al.Asset)
			b = append(b, al.Scale)
			b = binary.AppendVarint(b, al.Amount)
			b = append(b, byte(al.Period))
			b = binary.AppendVarint(b, al.Anchor)
			b = append(b, byte(al.Strategy))
			b = binary.AppendVarint(b, al.Cap)
			b = append(b, byte(al.Kind))
		}
		b = enc.AppendFlag(b, p.GrantWhilePaused)
		b = appendHoldLimits(b, p.HoldLimits)
	}
	return b
}

func appendHoldLimits(b []byte, ls []HoldLimit) []byte {
	b = binary.AppendUvarint(b, uint64(len(ls)))
	for _, l := range ls {
		b = enc.AppendStr(b, l.Account)
		b = binary.AppendUvarint(b, uint64(l.Max))
	}
	return b
}

func readHoldLimits(d *enc.Decoder) []HoldLimit {
	n := d.Count(WalletAccountsMax, 2)
	if n == 0 {
		return nil
	}
	ls := make([]HoldLimit, n)
	for i := range ls {
		ls[i].Account = d.InternStr()
		if m := d.U(); m < 1 || m > WalletHoldsMax {
			d.Fail(fmt.Errorf("hold limit %d of %s is not in [1, %d]", m, ls[i].Account, WalletHoldsMax))
		} else {
			ls[i].Max = int(m)
		}
	}
	return ls
}

func readPlanSettings(d *enc.Decoder, s *Settings, version byte) {
	s.Plan = readPlan(d, version)
	readAutoReload(d, s, version)
	if version >= walletFormatV4 {
		s.PausedUntil = d.V()
		if d.Flag() {
			s.PlanChange = &PlanChange{At: d.V(), Plan: readPlan(d, version)}
		}
		s.HoldLimits = readHoldLimits(d)
	}
}

// readPlan reads an optional plan written by appendPlan.
func readPlan(d *enc.Decoder, version byte) *Plan {
	var plan *Plan
	if d.Flag() {
		p := &Plan{ID: d.Str()}
		if n := d.Count(PlanAllocationsMax, 12); n > 0 {
			p.Allocations = make([]Allocation, n)
			for i := range p.Allocations {
				al := &p.Allocations[i]
				al.Account = d.InternStr()
				al.Asset = d.InternStr()
				al.Scale = d.Byte1()
				al.Amount = d.V()
				al.Period = PeriodUnit(d.Byte1())
				al.Anchor = d.V()
				al.Strategy = Strategy(d.Byte1())
				al.Cap = d.V()
				al.Kind = Kind(d.Byte1())
			}
		}
		if version >= walletFormatV4 {
			p.GrantWhilePaused = d.Flag()
			p.HoldLimits = readHoldLimits(d)
		}
		plan = p
	}
	return plan
}

func readAutoReload(d *enc.Decoder, s *Settings, version byte) {
	if d.Flag() {
		r := &AutoReload{}
		r.Enabled = d.Flag()
		r.Account = d.InternStr()
		r.Asset = d.InternStr()
		r.Scale = d.Byte1()
		r.Threshold = d.V()
		r.Amount = d.V()
		r.Price = d.Str()
		r.Currency = d.InternStr()
		r.SurchargePct = d.Str()
		r.Charge = d.Str()
		r.MaxPerPeriod = int(d.U())
		r.Mode = ReloadMode(d.Byte1())
		r.PeriodEnd = d.Flag()
		if version >= walletFormatV4 {
			if u := d.U(); u > ReloadPendingMax {
				d.Fail(fmt.Errorf("max_unpaid %d is above %d", u, ReloadPendingMax))
			} else {
				r.MaxUnpaid = int(u)
			}
		}
		if version >= walletFormatV5 {
			r.OfferID = d.Str()
		}
		s.AutoReload = r
	}
}

func appendLife(b []byte, l *Lifecycle) []byte {
	b = enc.AppendFlag(b, l != nil)
	if l == nil {
		return b
	}
	b = binary.AppendUvarint(b, l.NoteSeq)
	b = enc.AppendStr(b, l.PlanID)
	b = binary.AppendUvarint(b, uint64(len(l.Allocs)))
	for _, st := range l.Allocs {
		b = binary.AppendVarint(b, st.Anchor)
		b = append(b, byte(st.Period))
		b = binary.AppendVarint(b, st.Last)
		b = binary.AppendVarint(b, st.Since)
		b = enc.AppendFlag(b, st.Prorate)
	}
	b = binary.AppendUvarint(b, uint64(len(l.Holds)))
	for _, h := range l.Holds {
		b = enc.AppendStr(b, h.ID)
		b = enc.AppendStr(b, h.Account)
		b = binary.AppendVarint(b, h.Amount)
		b = binary.AppendVarint(b, h.CreatedAt)
		b = binary.AppendVarint(b, h.ExpiresAt)
		b = append(b, h.Hash[:]...)
	}
	b = binary.AppendUvarint(b, l.ReloadSeq)
	b = binary.AppendUvarint(b, uint64(len(l.Pending)))
	for i := range l.Pending {
		b = AppendReload(b, &l.Pending[i])
	}
	b = binary.AppendVarint(b, l.ReloadPeriod)
	b = binary.AppendUvarint(b, uint64(l.ReloadCount))
	return b
}

func readLife(d *enc.Decoder, version byte) *Lifecycle {
	if !d.Flag() {
		return nil
	}
	l := &Lifecycle{NoteSeq: d.U(), PlanID: d.Str()}
	if n := d.Count(PlanAllocationsMax, 3); n > 0 {
		l.Allocs = make([]AllocState, n)
		for i := range l.Allocs {
			l.Allocs[i] = AllocState{Anchor: d.V(), Period: PeriodUnit(d.Byte1()), Last: d.V(), Since: d.V()}
			if version >= walletFormatV4 {
				l.Allocs[i].Prorate = d.Flag()
			}
		}
	}
	if n := d.Count(WalletHoldsMax, 5); n > 0 {
		l.Holds = make([]Hold, n)
		for i := range l.Holds {
			l.Holds[i] = Hold{ID: d.Str(), Account: d.InternStr(), Amount: d.V(), CreatedAt: d.V(), ExpiresAt: d.V()}
			copy(l.Holds[i].Hash[:], d.Raw(16, 16))
		}
	}
	l.ReloadSeq = d.U()
	n := 0
	if version >= walletFormatV4 {
		n = d.Count(ReloadPendingMax, 10)
	} else if d.Flag() {
		n = 1
	}
	if n > 0 {
		l.Pending = make([]ReloadRequest, n)
		for i := range l.Pending {
			l.Pending[i] = readReload(d)
		}
	}
	l.ReloadPeriod = d.V()
	l.ReloadCount = uint32(d.U())
	return l
}

// AppendReload appends the binary form of an auto-reload request.
func AppendReload(b []byte, r *ReloadRequest) []byte {
	b = append(b, 1)
	b = enc.AppendStr(b, r.ID)
	b = enc.AppendStr(b, r.Account)
	b = append(b, r.Scale)
	b = binary.AppendVarint(b, r.Amount)
	b = enc.AppendStr(b, r.Charge)
	b = enc.AppendStr(b, r.Currency)
	b = append(b, byte(r.Mode), byte(r.Status))
	b = binary.AppendVarint(b, r.CreatedAt)
	b = binary.AppendVarint(b, r.UpdatedAt)
	b = enc.AppendStr(b, r.BucketID)
	b = binary.AppendVarint(b, r.ExpiresAt)
	return b
}

func readReload(d *enc.Decoder) ReloadRequest {
	if v := d.Byte1(); d.Err == nil && v != 1 {
		d.Fail(fmt.Errorf("unknown reload request format %d", v))
	}
	r := ReloadRequest{ID: d.Str(), Account: d.InternStr(), Scale: d.Byte1(), Amount: d.V(), Charge: d.Str(), Currency: d.InternStr()}
	r.Mode = ReloadMode(d.Byte1())
	r.Status = ReloadStatus(d.Byte1())
	r.CreatedAt = d.V()
	r.UpdatedAt = d.V()
	r.BucketID = d.Str()
	r.ExpiresAt = d.V()
	return r
}

// DecodeReload decodes a request written by AppendReload.
func DecodeReload(b []byte) (ReloadRequest, error) {
	d := enc.Decoder{B: b}
	r := readReload(&d)
	if d.End() != nil {
		return ReloadRequest{}, fmt.Errorf("wallet: reload request: %w", d.Err)
	}
	return r, nil
}

// AppendHoldRecord appends the stored form of a hold with its outcome; hash
// is the content hash of the request that created it (idempotency).
func AppendHoldRecord(b []byte, h *HoldRecord) []byte {
	b = append(b, 1)
	b = append(b, h.Hash[:]...)
	b = enc.AppendStr(b, h.Customer)
	b = enc.AppendStr(b, h.ID)
	b = enc.AppendStr(b, h.Account)
	b = append(b, h.Scale, byte(h.Status))
	b = binary.AppendVarint(b, h.Amount)
	b = binary.AppendVarint(b, h.CreatedAt)
	b = binary.AppendVarint(b, h.ExpiresAt)
	b = binary.AppendVarint(b, h.UpdatedAt)
	b = enc.AppendStr(b, h.EventID)
	b = binary.AppendVarint(b, h.Settled)
	return b
}

func DecodeHoldRecord(b []byte) (HoldRecord, error) {
	d := enc.Decoder{B: b}
	if v := d.Byte1(); d.Err == nil && v != 1 {
		d.Fail(fmt.Errorf("unknown hold record format %d", v))
	}
	var h HoldRecord
	copy(h.Hash[:], d.Raw(16, 16))
	h.Customer = d.Str()
	h.ID = d.Str()
	h.Account = d.InternStr()
	h.Scale = d.Byte1()
	h.Status = HoldStatus(d.Byte1())
	h.Amount = d.V()
	h.CreatedAt = d.V()
	h.ExpiresAt = d.V()
	h.UpdatedAt = d.V()
	h.EventID = d.Str()
	h.Settled = d.V()
	if d.End() != nil {
		return HoldRecord{}, fmt.Errorf("wallet: hold record: %w", d.Err)
	}
	return h, nil
}
