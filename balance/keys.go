package balance

import (
	"encoding/binary"

	"github.com/cockroachdb/pebble/v2"
)

// Key layout of the Pebble store. Customer ids never contain 0x00 (they are
// 1-128 chars of [A-Za-z0-9._:-]), so 0x00 separates a customer id from
// what follows it.
//
//	'w' customer                       -> wallet snapshot (AppendWallet)
//	'l' customer 0x00 seq(8, BE)       -> ledger entry (AppendEntry)
//	'i' kind customer 0x00 id          -> idempotency record (record.append)
//	'x' expireAt(8, BE) <idem key>     -> empty: when that idempotency record may be dropped
//	'p' version(4, BE)                 -> pricing document (canonical JSON)
//	'm' name                           -> engine metadata
const (
	prefixWallet  = 'w'
	prefixLedger  = 'l'
	prefixIdem    = 'i'
	prefixExpiry  = 'x'
	prefixPricing = 'p'
)

// Kinds of idempotency records: one namespace per kind of write.
const (
	idemEvent      byte = 'e'
	idemTopUp      byte = 't'
	idemAdjustment byte = 'a'
)

func walletKey(dst []byte, customer string) []byte {
	dst = append(dst, prefixWallet)
	return append(dst, customer...)
}

func ledgerPrefix(dst []byte, customer string) []byte {
	dst = append(dst, prefixLedger)
	dst = append(dst, customer...)
	return append(dst, 0)
}

func ledgerKey(dst []byte, customer string, seq uint64) []byte {
	dst = ledgerPrefix(dst, customer)
	return binary.BigEndian.AppendUint64(dst, seq)
}

func idemKey(dst []byte, kind byte, customer, id string) []byte {
	dst = append(dst, prefixIdem, kind)
	dst = append(dst, customer...)
	dst = append(dst, 0)
	return append(dst, id...)
}

// idemKeyCustomer returns the customer id inside an idempotency key.
func idemKeyCustomer(key []byte) (string, bool) {
	if len(key) < 3 || key[0] != prefixIdem {
		return "", false
	}
	for i := 2; i < len(key); i++ {
		if key[i] == 0 {
			return string(key[2:i]), true
		}
	}
	return "", false
}

func expiryKey(dst []byte, expireAt int64, idem []byte) []byte {
	dst = append(dst, prefixExpiry)
	dst = binary.BigEndian.AppendUint64(dst, uint64(expireAt))
	return append(dst, idem...)
}

// prefixRange is the iterator bounds of every key that starts with prefix.
func prefixRange(prefix byte) *pebble.IterOptions {
	return &pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}}
}

func pricingKey(version uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixPricing}, version)
}

// The value of an expiry-index key lists the idempotency keys it covers,
// each as uvarint length and bytes: one key per commit group, under the
// latest ExpireAt of its records, after the group's first key. An empty
// value (the format before lists) covers the one key after the time.
func appendExpiring(dst, idem []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(idem)))
	return append(dst, idem...)
}

// nextExpiring splits the first key off a list and returns it with the
// rest; ok is false at its end or when the list is malformed.
func nextExpiring(list []byte) (key, rest []byte, ok bool) {
	n, w := binary.Uvarint(list)
	if w <= 0 || n == 0 || uint64(len(list)-w) < n {
		return nil, nil, false
	}
	end := w + int(n)
	return list[w:end], list[end:], true
}

// expiringKeys returns the idempotency keys an expiry-index entry covers.
func expiringKeys(xkey, val []byte) [][]byte {
	if len(val) == 0 {
		if len(xkey) <= 9 {
			return nil
		}
		return [][]byte{xkey[9:]}
	}
	var out [][]byte
	for k, rest, ok := nextExpiring(val); ok; k, rest, ok = nextExpiring(rest) {
		out = append(out, k)
	}
	return out
}
