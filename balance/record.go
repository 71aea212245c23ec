package balance

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
	b = appendVarint(b, r.RecordedAt)
	b = appendVarint(b, r.ExpireAt)
	switch r.Kind {
	case idemEvent:
		b = append(b, r.Status)
		b = appendUvarint(b, uint64(r.PricingVersion))
		b = appendVarint(b, r.OccurredAt)
		b = appendString(b, r.EventType)
		b = appendString(b, r.Subject)
		b = appendBytes(b, r.Data)
		b = appendUvarint(b, uint64(len(r.Charges)))
		for i := range r.Charges {
			c := &r.Charges[i]
			b = appendString(b, c.Account)
			b = append(b, c.Scale)
			b = appendVarint(b, c.Amount)
			b = appendVarint(b, c.BalanceAfter)
			b = appendUvarint(b, uint64(len(c.Parts)))
			for _, p := range c.Parts {
				b = appendString(b, p.BucketID)
				b = appendVarint(b, p.Amount)
			}
		}
	case idemTopUp:
		b = appendString(b, r.BucketID)
		b = append(b, r.TopUpStatus)
		b = appendVarint(b, r.ReversedAt)
	}
	return b
}

func decodeRecord(b []byte) (*record, error) {
	rd := reader{b: b}
	if rd.byte1() != recordVersion {
		return nil, errCorrupt
	}
	r := &record{Kind: rd.byte1()}
	copy(r.Hash[:], rd.raw(16))
	r.RecordedAt = rd.varint()
	r.ExpireAt = rd.varint()
	switch r.Kind {
	case idemEvent:
		r.Status = rd.byte1()
		r.PricingVersion = uint32(rd.uvarint())
		r.OccurredAt = rd.varint()
		r.EventType = rd.string()
		r.Subject = rd.string()
		r.Data = rd.bytes()
		n := rd.uvarint()
		if n > 1024 {
			return nil, errCorrupt
		}
		r.Charges = make([]ChargeResult, n)
		for i := range r.Charges {
			c := &r.Charges[i]
			c.Account = rd.string()
			c.Scale = rd.byte1()
			c.Amount = rd.varint()
			c.BalanceAfter = rd.varint()
			np := rd.uvarint()
			if np > 1<<16 {
				return nil, errCorrupt
			}
			c.Parts = make([]Part, np)
			for j := range c.Parts {
				c.Parts[j].BucketID = rd.string()
				c.Parts[j].Amount = rd.varint()
			}
		}
	case idemTopUp:
		r.BucketID = rd.string()
		r.TopUpStatus = rd.byte1()
		r.ReversedAt = rd.varint()
	case idemAdjustment:
	default:
		return nil, errCorrupt
	}
	if rd.err != nil {
		return nil, rd.err
	}
	return r, nil
}
