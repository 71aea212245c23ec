package balance

import (
	"reflect"
	"testing"

	"github.com/meterd/meterd/balance/wallet"
)

func TestRecordRoundTrip(t *testing.T) {
	recs := []*record{
		{Kind: idemEvent, Hash: [16]byte{1, 2, 3}, RecordedAt: 10, ExpireAt: 20, Status: EventCharged, PricingVersion: 7,
			OccurredAt: 5, EventType: "message_completed", Subject: "chat_1", Data: []byte(`{"model":"x"}`),
			Charges: []wallet.ChargeResult{{Account: "default:USD", Scale: 6, Amount: 282282, BalanceAfter: -5,
				Parts: []wallet.Part{{BucketID: "b_1", Amount: 282280}, {BucketID: "", Amount: 2}}}}},
		{Kind: idemEvent, Hash: [16]byte{9}, RecordedAt: 1, ExpireAt: 2, Status: EventRecorded, Charges: []wallet.ChargeResult{}},
		{Kind: idemTopUp, Hash: [16]byte{4}, RecordedAt: 3, ExpireAt: 4, BucketID: "b_9", TopUpStatus: TopUpReversed, ReversedAt: 5},
		{Kind: idemAdjustment, Hash: [16]byte{5}, RecordedAt: 6, ExpireAt: 7},
	}
	for _, r := range recs {
		got, err := decodeRecord(r.append(nil))
		if err != nil {
			t.Fatalf("%c: %v", r.Kind, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%c: round trip\n got %+v\nwant %+v", r.Kind, got, r)
		}
	}
	// Every truncation and a trailing byte are errors, never a panic.
	full := recs[0].append(nil)
	for n := 0; n < len(full); n++ {
		if _, err := decodeRecord(full[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
	if _, err := decodeRecord(append(full, 0)); err == nil {
		t.Fatal("a trailing byte: no error")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add((&record{Kind: idemEvent, Charges: []wallet.ChargeResult{{Account: "a:B", Parts: []wallet.Part{{BucketID: "b_1", Amount: 1}}}}}).append(nil))
	f.Add((&record{Kind: idemTopUp, BucketID: "b_2"}).append(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		if _, err := decodeRecord(r.append(nil)); err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
	})
}
