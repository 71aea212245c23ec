package balance

import (
	"encoding/binary"
	"fmt"
)

// Status of an applied usage event, as stored in its idempotency record.
const (
	EventCharged  uint8 = 1 // priced and charged
	EventRecorded uint8 = 2 // no price matched: stored with zero charge
)

// Status of a top-up.
const (
	TopUpCompleted uint8 = 1
	TopUpReversed  uint8 = 2
)

const recordVersion = 1

// record is the idempotency record of one applied write. For usage events it
// is also the durable usage record (what happened to the event).
type record struct {
	Kind       byte
	Hash       [16]byte
	RecordedAt int64 // unix ns
	ExpireAt   int64 // unix ns: dropped after this

	// Usage events.
	Status         uint8
	PricingVersion uint32
	OccurredAt     int64
	EventType      string
	Subject        string
	Data           []byte
	Charges        []ChargeResult

	// Top-ups.
	BucketID    string
	TopUpStatus uint8
	ReversedAt  int64
}

func (r *record) append(b []byte) []byte {
	b = append(b, recordVersion, r.Kind)
	b = append(b, r.Hash[:]...)
	b = binary.AppendVarint(b, r.RecordedAt)
	b = binary.AppendVarint(b, r.ExpireAt)
	switch r.Kind {
	case idemEvent:
		b = append(b, r.Status)
		b = binary.AppendUvarint(b, uint64(r.PricingVersion))
		b = binary.AppendVarint(b, r.OccurredAt)
		b = appendStr(b, r.EventType)
		b = appendStr(b, r.Subject)
		b = appendOptBytes(b, r.Data)
		b = binary.AppendUvarint(b, uint64(len(r.Charges)))
		for i := range r.Charges {
			b = appendChargeResult(b, r.Charges[i].Account, &r.Charges[i])
		}
	case idemTopUp:
		b = appendStr(b, r.BucketID)
		b = append(b, r.TopUpStatus)
		b = binary.AppendVarint(b, r.ReversedAt)
	}
	return b
}

// appendChargeResult appends what one charge took, under account: the
// record's and the log command's encoding (the log writes "" for the
// account its command's charge names).
func appendChargeResult(b []byte, account string, c *ChargeResult) []byte {
	b = appendStr(b, account)
	b = append(b, c.Scale)
	b = binary.AppendVarint(b, c.Amount)
	b = binary.AppendVarint(b, c.BalanceAfter)
	b = binary.AppendUvarint(b, uint64(len(c.Parts)))
	for _, p := range c.Parts {
		b = appendStr(b, p.BucketID)
		b = binary.AppendVarint(b, p.Amount)
	}
	return b
}

func decodeRecord(b []byte) (*record, error) {
	d := decoder{b: b}
	if v := d.byte1(); d.err == nil && v != recordVersion {
		return nil, fmt.Errorf("balance: idempotency record: unknown format version %d", v)
	}
	r := &record{Kind: d.byte1()}
	copy(r.Hash[:], d.raw(16, 16))
	r.RecordedAt = d.v()
	r.ExpireAt = d.v()
	switch r.Kind {
	case idemEvent:
		r.Status = d.byte1()
		r.PricingVersion = uint32(d.u())
		r.OccurredAt = d.v()
		r.EventType = d.str()
		r.Subject = d.str()
		r.Data = d.optBytes()
		r.Charges = make([]ChargeResult, d.count(EventChargesMax, 5))
		for i := range r.Charges {
			c := &r.Charges[i]
			c.Account = d.internStr()
			c.Scale = d.byte1()
			c.Amount = d.v()
			c.BalanceAfter = d.v()
			c.Parts = make([]Part, d.count(AccountBucketsMax+1, 2))
			for j := range c.Parts {
				c.Parts[j].BucketID = d.str()
				c.Parts[j].Amount = d.v()
			}
		}
	case idemTopUp:
		r.BucketID = d.str()
		r.TopUpStatus = d.byte1()
		r.ReversedAt = d.v()
	case idemAdjustment:
	default:
		d.fail(fmt.Errorf("unknown kind %q", r.Kind))
	}
	if d.err == nil && d.off != len(d.b) {
		d.fail(fmt.Errorf("%d bytes after the end", len(d.b)-d.off))
	}
	if d.err != nil {
		return nil, fmt.Errorf("balance: idempotency record: %w", d.err)
	}
	return r, nil
}
