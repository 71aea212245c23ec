package balance

import (
	"encoding/binary"
	"fmt"

	"github.com/meterd/meterd/balance/internal/enc"
	"github.com/meterd/meterd/balance/wallet"
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

// Record versions: 2 adds a usage event's description after its data.
const (
	recordVersion1 = 1
	recordVersion  = 2
)

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
	Description    string
	Charges        []wallet.ChargeResult

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
		b = enc.AppendStr(b, r.EventType)
		b = enc.AppendStr(b, r.Subject)
		b = enc.AppendOptBytes(b, r.Data)
		b = enc.AppendStr(b, r.Description)
		b = binary.AppendUvarint(b, uint64(len(r.Charges)))
		for i := range r.Charges {
			b = appendChargeResult(b, r.Charges[i].Account, &r.Charges[i])
		}
	case idemTopUp:
		b = enc.AppendStr(b, r.BucketID)
		b = append(b, r.TopUpStatus)
		b = binary.AppendVarint(b, r.ReversedAt)
	}
	return b
}

// appendChargeResult appends what one charge took, under account: the
// record's and the log command's encoding (the log writes "" for the
// account its command's charge names).
func appendChargeResult(b []byte, account string, c *wallet.ChargeResult) []byte {
	b = enc.AppendStr(b, account)
	b = append(b, c.Scale)
	b = binary.AppendVarint(b, c.Amount)
	b = binary.AppendVarint(b, c.BalanceAfter)
	b = binary.AppendUvarint(b, uint64(len(c.Parts)))
	for _, p := range c.Parts {
		b = enc.AppendStr(b, p.BucketID)
		b = binary.AppendVarint(b, p.Amount)
	}
	return b
}

func decodeRecord(b []byte) (*record, error) {
	d := enc.Decoder{B: b}
	v := d.Byte1()
	if d.Err == nil && v != recordVersion && v != recordVersion1 {
		return nil, fmt.Errorf("balance: idempotency record: unknown format version %d", v)
	}
	r := &record{Kind: d.Byte1()}
	copy(r.Hash[:], d.Raw(16, 16))
	r.RecordedAt = d.V()
	r.ExpireAt = d.V()
	switch r.Kind {
	case idemEvent:
		r.Status = d.Byte1()
		r.PricingVersion = uint32(d.U())
		r.OccurredAt = d.V()
		r.EventType = d.Str()
		r.Subject = d.Str()
		r.Data = d.OptBytes()
		if v >= recordVersion {
			r.Description = d.Str()
		}
		r.Charges = make([]wallet.ChargeResult, d.Count(wallet.EventChargesMax, 5))
		for i := range r.Charges {
			c := &r.Charges[i]
			c.Account = d.InternStr()
			c.Scale = d.Byte1()
			c.Amount = d.V()
			c.BalanceAfter = d.V()
			c.Parts = make([]wallet.Part, d.Count(wallet.AccountBucketsMax+1, 2))
			for j := range c.Parts {
				c.Parts[j].BucketID = d.Str()
				c.Parts[j].Amount = d.V()
			}
		}
	case idemTopUp:
		r.BucketID = d.Str()
		r.TopUpStatus = d.Byte1()
		r.ReversedAt = d.V()
	case idemAdjustment:
	default:
		d.Fail(fmt.Errorf("unknown kind %q", r.Kind))
	}
	if d.End() != nil {
		return nil, fmt.Errorf("balance: idempotency record: %w", d.Err)
	}
	return r, nil
}
