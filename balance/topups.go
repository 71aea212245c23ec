package balance

import (
	"encoding/binary"
	"fmt"

	"github.com/meterd/meterd/balance/internal/enc"
	"github.com/meterd/meterd/balance/wallet"
)

// Top-up records: what GET /v1/customers/{id}/topups lists, kept for good
// (the idempotency record of a top-up goes with the dedup window).
//
//	'u' customer 0x00 seq(8, BE) -> top-up record (TopUpRecord.append)
//	'U' customer 0x00 seq(8, BE) -> its reversal (TopUpReversal.append)
//	'v' customer 0x00 id         -> seq(8, BE)
//
// seq is the number of the top-up's bucket (b_<seq>), which a wallet
// issues in order: the list is newest first by it. A reversal has a key of
// its own so that it never reads the top-up's record: the two may be
// written by one commit group.
const (
	prefixTopUp         = 'u'
	prefixTopUpReversal = 'U'
	prefixTopUpID       = 'v'
)

// TopUpRecord is one top-up as it was made.
type TopUpRecord struct {
	ID        string
	BucketID  string
	Account   string // "name:ASSET"
	Scale     uint8
	Amount    int64
	Price     string // as given, "" without a price
	Currency  string
	Source    string
	ExpiresAt int64 // resolved; 0 = never
	CreatedAt int64
	Metadata  []byte
	Reversal  *TopUpReversal // nil: not reversed
	// Since format 2: the description, the exchange rate of a top-up paid
	// in another currency, and the offer bought (OfferID "" for none) with
	// its tier (0 unless tiered) and rate, RateCredits for RatePrice.
	Description            string
	ExchangeRate           string
	OfferID                string
	Tier                   int
	RatePrice, RateCredits string
}

// TopUpReversal is what a top-up's reversal took back and kept.
type TopUpReversal struct {
	At             int64
	Reversed, Kept int64
}

func (r *TopUpRecord) append(b []byte) []byte {
	b = append(b, 2)
	b = enc.AppendStr(b, r.ID)
	b = enc.AppendStr(b, r.BucketID)
	b = enc.AppendStr(b, r.Account)
	b = append(b, r.Scale)
	b = binary.AppendVarint(b, r.Amount)
	b = enc.AppendStr(b, r.Price)
	b = enc.AppendStr(b, r.Currency)
	b = enc.AppendStr(b, r.Source)
	b = binary.AppendVarint(b, r.ExpiresAt)
	b = binary.AppendVarint(b, r.CreatedAt)
	b = enc.AppendOptBytes(b, r.Metadata)
	b = enc.AppendStr(b, r.Description)
	b = enc.AppendStr(b, r.ExchangeRate)
	b = enc.AppendStr(b, r.OfferID)
	b = binary.AppendUvarint(b, uint64(r.Tier))
	b = enc.AppendStr(b, r.RatePrice)
	return enc.AppendStr(b, r.RateCredits)
}

func decodeTopUpRecord(v []byte) (TopUpRecord, error) {
	d := enc.Decoder{B: v}
	ver := d.Byte1()
	if d.Err == nil && ver != 1 && ver != 2 {
		return TopUpRecord{}, fmt.Errorf("top-up record: unknown format %d", ver)
	}
	r := TopUpRecord{ID: d.Str(), BucketID: d.Str(), Account: d.Str(), Scale: d.Byte1(), Amount: d.V(),
		Price: d.Str(), Currency: d.Str(), Source: d.Str(), ExpiresAt: d.V(), CreatedAt: d.V(), Metadata: d.OptBytes()}
	if ver >= 2 {
		r.Description, r.ExchangeRate, r.OfferID = d.Str(), d.Str(), d.Str()
		if t := d.U(); t > 1<<16 {
			d.Fail(fmt.Errorf("tier %d", t))
		} else {
			r.Tier = int(t)
		}
		r.RatePrice, r.RateCredits = d.Str(), d.Str()
	}
	if d.End() != nil {
		return TopUpRecord{}, fmt.Errorf("top-up record: %w", d.Err)
	}
	return r, nil
}

func (r *TopUpReversal) append(b []byte) []byte {
	b = append(b, 1)
	b = binary.AppendVarint(b, r.At)
	b = binary.AppendVarint(b, r.Reversed)
	return binary.AppendVarint(b, r.Kept)
}

func decodeTopUpReversal(v []byte) (TopUpReversal, error) {
	d := enc.Decoder{B: v}
	if ver := d.Byte1(); d.Err == nil && ver != 1 {
		return TopUpReversal{}, fmt.Errorf("top-up reversal: unknown format %d", ver)
	}
	r := TopUpReversal{At: d.V(), Reversed: d.V(), Kept: d.V()}
	if d.End() != nil {
		return TopUpReversal{}, fmt.Errorf("top-up reversal: %w", d.Err)
	}
	return r, nil
}

func topUpIDKey(customer, id string) []byte {
	b := append([]byte{prefixTopUpID}, customer...)
	b = append(b, 0)
	return append(b, id...)
}

// bucketSeq is the number of a bucket id b_<n>.
func bucketSeq(id string) (uint64, bool) {
	var n uint64
	if len(id) < 3 || id[:2] != "b_" {
		return 0, false
	}
	for i := 2; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' || i > 21 {
			return 0, false
		}
		n = n*10 + uint64(id[i]-'0')
	}
	return n, true
}

// recordTopUp writes a new top-up's record in g.
func (s *shard) recordTopUp(g *group, customer string, r *TopUpRecord) {
	seq, ok := bucketSeq(r.BucketID)
	if !ok {
		return
	}
	s.set(g, customerSeqKey(nil, prefixTopUp, customer, seq), r.append(nil))
	s.set(g, topUpIDKey(customer, r.ID), binary.BigEndian.AppendUint64(nil, seq))
}

// recordReversal writes a top-up's reversal in g.
func (s *shard) recordReversal(g *group, customer, bucketID string, r *TopUpReversal) {
	if seq, ok := bucketSeq(bucketID); ok {
		s.set(g, customerSeqKey(nil, prefixTopUpReversal, customer, seq), r.append(nil))
	}
}

// withReversal reads the reversal of the top-up of seq, if any.
func (e *Engine) withReversal(customer string, seq uint64, r *TopUpRecord) error {
	v, err := e.st.get(customerSeqKey(nil, prefixTopUpReversal, customer, seq))
	if err != nil || v == nil {
		return err
	}
	rev, err := decodeTopUpReversal(v)
	if err != nil {
		return err
	}
	r.Reversal = &rev
	return nil
}

// TopUps lists a customer's top-ups, newest first, with seq < before (0:
// from the newest); next is the cursor of the next page (0: none). Top-ups
// made before this record existed (the release of issue 14) are not listed.
func (e *Engine) TopUps(customer string, before uint64, limit int) (out []TopUpRecord, next uint64, err error) {
	next, err = e.scanCustomer(prefixTopUp, customer, before, limit, func(v []byte) error {
		r, err := decodeTopUpRecord(v)
		out = append(out, r)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	for i := range out {
		seq, _ := bucketSeq(out[i].BucketID)
		if err := e.withReversal(customer, seq, &out[i]); err != nil {
			return nil, 0, err
		}
	}
	return out, next, nil
}

// TopUpByID returns one top-up of a customer.
func (e *Engine) TopUpByID(customer, id string) (TopUpRecord, error) {
	if err := e.advanceCustomer(customer, false); err != nil {
		return TopUpRecord{}, err
	}
	v, err := e.st.get(topUpIDKey(customer, id))
	if err != nil {
		return TopUpRecord{}, err
	}
	if len(v) != 8 {
		return TopUpRecord{}, &wallet.Error{Code: wallet.CodeNotFound, Message: "top-up " + id + " does not exist"}
	}
	seq := binary.BigEndian.Uint64(v)
	rv, err := e.st.get(customerSeqKey(nil, prefixTopUp, customer, seq))
	if err != nil {
		return TopUpRecord{}, err
	}
	r, err := decodeTopUpRecord(rv)
	if err != nil {
		return TopUpRecord{}, err
	}
	return r, e.withReversal(customer, seq, &r)
}
