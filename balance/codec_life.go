package balance

import (
	"encoding/binary"
	"fmt"
)

// Binary forms of the credit lifecycle (see codec.go for the conventions).
// Wallet version 2 is version 1 plus, after the settings' metadata:
//
//	plan?       (0 | 1 id n {account asset scale amount period anchor strategy cap kind})
//	auto_reload? (0 | 1 enabled account asset scale threshold amount price currency
//	              surcharge charge max_per_period mode period_end)
//
// plus each bucket's alloc byte after its metadata, and after the accounts:
//
//	life? (0 | 1 note_seq plan_id n {anchor period last since}
//	       n {id account amount created_at expires_at}
//	       reload_seq pending? reload_period reload_count)

const walletFormatV2 = 2

// Version 3 (the store's snapshots, appendWalletAt) is version 2 followed
// by the uvarint seq of the last command-log record it reflects.
const walletFormatV3 = 3

func appendFlag(b []byte, on bool) []byte {
	if on {
		return append(b, 1)
	}
	return append(b, 0)
}

func (d *decoder) flag() bool {
	switch d.byte1() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail(fmt.Errorf("flag is neither 0 nor 1"))
	return false
}

func appendPlanSettings(b []byte, s *Settings) []byte {
	b = appendFlag(b, s.Plan != nil)
	if p := s.Plan; p != nil {
		b = appendStr(b, p.ID)
		b = binary.AppendUvarint(b, uint64(len(p.Allocations)))
		for i := range p.Allocations {
			al := &p.Allocations[i]
			b = appendStr(b, al.Account)
			b = appendStr(b, al.Asset)
			b = append(b, al.Scale)
			b = binary.AppendVarint(b, al.Amount)
			b = append(b, byte(al.Period))
			b = binary.AppendVarint(b, al.Anchor)
			b = append(b, byte(al.Strategy))
			b = binary.AppendVarint(b, al.Cap)
			b = append(b, byte(al.Kind))
		}
	}
	b = appendFlag(b, s.AutoReload != nil)
	if r := s.AutoReload; r != nil {
		b = appendFlag(b, r.Enabled)
		b = appendStr(b, r.Account)
		b = appendStr(b, r.Asset)
		b = append(b, r.Scale)
		b = binary.AppendVarint(b, r.Threshold)
		b = binary.AppendVarint(b, r.Amount)
		b = appendStr(b, r.Price)
		b = appendStr(b, r.Currency)
		b = appendStr(b, r.SurchargePct)
		b = appendStr(b, r.Charge)
		b = binary.AppendUvarint(b, uint64(r.MaxPerPeriod))
		b = append(b, byte(r.Mode))
		b = appendFlag(b, r.PeriodEnd)
	}
	return b
}

func (d *decoder) planSettings(s *Settings) {
	if d.flag() {
		p := &Plan{ID: d.str()}
		if n := d.count(PlanAllocationsMax, 12); n > 0 {
			p.Allocations = make([]Allocation, n)
			for i := range p.Allocations {
				al := &p.Allocations[i]
				al.Account = d.internStr()
				al.Asset = d.internStr()
				al.Scale = d.byte1()
				al.Amount = d.v()
				al.Period = PeriodUnit(d.byte1())
				al.Anchor = d.v()
				al.Strategy = Strategy(d.byte1())
				al.Cap = d.v()
				al.Kind = Kind(d.byte1())
			}
		}
		s.Plan = p
	}
	if d.flag() {
		r := &AutoReload{}
		r.Enabled = d.flag()
		r.Account = d.internStr()
		r.Asset = d.internStr()
		r.Scale = d.byte1()
		r.Threshold = d.v()
		r.Amount = d.v()
		r.Price = d.str()
		r.Currency = d.internStr()
		r.SurchargePct = d.str()
		r.Charge = d.str()
		r.MaxPerPeriod = int(d.u())
		r.Mode = ReloadMode(d.byte1())
		r.PeriodEnd = d.flag()
		s.AutoReload = r
	}
}

func appendLife(b []byte, l *Lifecycle) []byte {
	b = appendFlag(b, l != nil)
	if l == nil {
		return b
	}
	b = binary.AppendUvarint(b, l.NoteSeq)
	b = appendStr(b, l.PlanID)
	b = binary.AppendUvarint(b, uint64(len(l.Allocs)))
	for _, st := range l.Allocs {
		b = binary.AppendVarint(b, st.Anchor)
		b = append(b, byte(st.Period))
		b = binary.AppendVarint(b, st.Last)
		b = binary.AppendVarint(b, st.Since)
	}
	b = binary.AppendUvarint(b, uint64(len(l.Holds)))
	for _, h := range l.Holds {
		b = appendStr(b, h.ID)
		b = appendStr(b, h.Account)
		b = binary.AppendVarint(b, h.Amount)
		b = binary.AppendVarint(b, h.CreatedAt)
		b = binary.AppendVarint(b, h.ExpiresAt)
		b = append(b, h.Hash[:]...)
	}
	b = binary.AppendUvarint(b, l.ReloadSeq)
	b = appendFlag(b, l.Pending != nil)
	if l.Pending != nil {
		b = AppendReload(b, l.Pending)
	}
	b = binary.AppendVarint(b, l.ReloadPeriod)
	b = binary.AppendUvarint(b, uint64(l.ReloadCount))
	return b
}

func (d *decoder) life() *Lifecycle {
	if !d.flag() {
		return nil
	}
	l := &Lifecycle{NoteSeq: d.u(), PlanID: d.str()}
	if n := d.count(PlanAllocationsMax, 3); n > 0 {
		l.Allocs = make([]AllocState, n)
		for i := range l.Allocs {
			l.Allocs[i] = AllocState{Anchor: d.v(), Period: PeriodUnit(d.byte1()), Last: d.v(), Since: d.v()}
		}
	}
	if n := d.count(WalletHoldsMax, 5); n > 0 {
		l.Holds = make([]Hold, n)
		for i := range l.Holds {
			l.Holds[i] = Hold{ID: d.str(), Account: d.internStr(), Amount: d.v(), CreatedAt: d.v(), ExpiresAt: d.v()}
			copy(l.Holds[i].Hash[:], d.raw(16, 16))
		}
	}
	l.ReloadSeq = d.u()
	if d.flag() {
		r := d.reload()
		l.Pending = &r
	}
	l.ReloadPeriod = d.v()
	l.ReloadCount = uint32(d.u())
	return l
}

// AppendReload appends the binary form of an auto-reload request.
func AppendReload(b []byte, r *ReloadRequest) []byte {
	b = append(b, 1)
	b = appendStr(b, r.ID)
	b = appendStr(b, r.Account)
	b = append(b, r.Scale)
	b = binary.AppendVarint(b, r.Amount)
	b = appendStr(b, r.Charge)
	b = appendStr(b, r.Currency)
	b = append(b, byte(r.Mode), byte(r.Status))
	b = binary.AppendVarint(b, r.CreatedAt)
	b = binary.AppendVarint(b, r.UpdatedAt)
	b = appendStr(b, r.BucketID)
	b = binary.AppendVarint(b, r.ExpiresAt)
	return b
}

func (d *decoder) reload() ReloadRequest {
	if v := d.byte1(); d.err == nil && v != 1 {
		d.fail(fmt.Errorf("unknown reload request format %d", v))
	}
	r := ReloadRequest{ID: d.str(), Account: d.internStr(), Scale: d.byte1(), Amount: d.v(), Charge: d.str(), Currency: d.internStr()}
	r.Mode = ReloadMode(d.byte1())
	r.Status = ReloadStatus(d.byte1())
	r.CreatedAt = d.v()
	r.UpdatedAt = d.v()
	r.BucketID = d.str()
	r.ExpiresAt = d.v()
	return r
}

// DecodeReload decodes a request written by AppendReload.
func DecodeReload(b []byte) (ReloadRequest, error) {
	d := decoder{b: b}
	r := d.reload()
	if d.err == nil && d.off != len(b) {
		d.fail(fmt.Errorf("%d bytes after the end", len(b)-d.off))
	}
	if d.err != nil {
		return ReloadRequest{}, fmt.Errorf("balance: reload request: %w", d.err)
	}
	return r, nil
}

// appendHoldRecord appends the stored form of a hold with its outcome; hash
// is the content hash of the request that created it (idempotency).
func appendHoldRecord(b []byte, h *HoldRecord) []byte {
	b = append(b, 1)
	b = append(b, h.Hash[:]...)
	b = appendStr(b, h.Customer)
	b = appendStr(b, h.ID)
	b = appendStr(b, h.Account)
	b = append(b, h.Scale, byte(h.Status))
	b = binary.AppendVarint(b, h.Amount)
	b = binary.AppendVarint(b, h.CreatedAt)
	b = binary.AppendVarint(b, h.ExpiresAt)
	b = binary.AppendVarint(b, h.UpdatedAt)
	b = appendStr(b, h.EventID)
	b = binary.AppendVarint(b, h.Settled)
	return b
}

func decodeHoldRecord(b []byte) (HoldRecord, error) {
	d := decoder{b: b}
	if v := d.byte1(); d.err == nil && v != 1 {
		d.fail(fmt.Errorf("unknown hold record format %d", v))
	}
	var h HoldRecord
	copy(h.Hash[:], d.raw(16, 16))
	h.Customer = d.str()
	h.ID = d.str()
	h.Account = d.internStr()
	h.Scale = d.byte1()
	h.Status = HoldStatus(d.byte1())
	h.Amount = d.v()
	h.CreatedAt = d.v()
	h.ExpiresAt = d.v()
	h.UpdatedAt = d.v()
	h.EventID = d.str()
	h.Settled = d.v()
	if d.err == nil && d.off != len(b) {
		d.fail(fmt.Errorf("%d bytes after the end", len(b)-d.off))
	}
	if d.err != nil {
		return HoldRecord{}, fmt.Errorf("balance: hold record: %w", d.err)
	}
	return h, nil
}
