package balance

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

// The binary formats of wallets and ledger entries, as stored. Each record
// starts with a format version byte; integers are uvarints (unsigned) and
// zigzag varints (signed); strings are a uvarint length then the bytes; a
// byte slice that may be nil is a uvarint of len+1, 0 meaning nil. There is
// no reflection. A decoder never panics and never allocates more than a
// small multiple of its input, whatever the input.
//
// Wallet, version 1:
//
//	version=1 customer status policy
//	n_limits {account units}  n_alerts {alert}  metadata
//	seq bucket_seq created_at updated_at
//	n_accounts {name asset scale held debt carry ledger
//	            n_buckets {id kind priority amount remaining effective_at expires_at source reference metadata}}
//
// A bucket id "b_<n>" is stored as the uvarint n (n > 0); any other id as 0
// then the string.
//
// Entry, version 1:
//
//	version=1 seq type account scale amount balance_after bucket_id event_id
//	reference occurred_at recorded_at pricing_version metadata
const (
	walletFormatV1 = 1
	entryFormatV1  = 1
)

// Bounds of what a decoder accepts, beyond the state machine's own limits.
const (
	codecStringLenMax   = 4096    // ids, names, sources, references, alerts
	codecMetadataLenMax = 1 << 20 // raw JSON metadata
	codecAlertsMax      = 64
)

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendOptBytes(b, s []byte) []byte {
	if s == nil {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(s))+1)
	return append(b, s...)
}

// appendOptStr is appendOptBytes for a string, "" being absent.
func appendOptStr(b []byte, s string) []byte {
	if s == "" {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(s))+1)
	return append(b, s...)
}

// AppendWallet appends the binary form of w to dst and returns the extended
// slice. It does not allocate beyond growing dst.
func AppendWallet(dst []byte, w *Wallet) []byte {
	b := append(dst, walletFormatV2)
	b = appendStr(b, w.Customer)
	s := w.Settings
	b = append(b, byte(s.Status), byte(s.Policy))
	b = binary.AppendUvarint(b, uint64(len(s.CreditLimits)))
	for i := range s.CreditLimits {
		b = appendStr(b, s.CreditLimits[i].Account)
		b = binary.AppendVarint(b, s.CreditLimits[i].Units)
	}
	b = binary.AppendUvarint(b, uint64(len(s.BalanceAlerts)))
	for _, a := range s.BalanceAlerts {
		b = appendStr(b, a)
	}
	b = appendOptBytes(b, s.Metadata)
	b = appendPlanSettings(b, s)
	b = binary.AppendUvarint(b, w.Seq)
	b = binary.AppendUvarint(b, w.BucketSeq)
	b = binary.AppendVarint(b, w.CreatedAt)
	b = binary.AppendVarint(b, w.UpdatedAt)
	b = binary.AppendUvarint(b, uint64(len(w.Accounts)))
	for _, a := range w.Accounts {
		b = appendStr(b, a.Name())
		b = appendStr(b, a.Asset())
		b = append(b, a.Scale)
		b = binary.AppendVarint(b, a.Held)
		b = binary.AppendVarint(b, a.Debt)
		b = binary.AppendUvarint(b, a.Carry)
		b = binary.AppendVarint(b, a.Ledger)
		b = appendFlag(b, a.Depleted)
		b = binary.AppendUvarint(b, uint64(len(a.Buckets)))
		for i := range a.Buckets {
			k := &a.Buckets[i]
			if n, ok := parseBucketID(k.ID); ok && n > 0 {
				b = binary.AppendUvarint(b, n)
			} else {
				b = append(b, 0)
				b = appendStr(b, k.ID)
			}
			b = append(b, byte(k.Kind), k.Priority)
			b = binary.AppendVarint(b, k.Amount)
			b = binary.AppendVarint(b, k.Remaining)
			b = binary.AppendVarint(b, k.EffectiveAt)
			b = binary.AppendVarint(b, k.ExpiresAt)
			b = appendStr(b, k.Source)
			b = appendStr(b, k.Reference)
			b = appendOptStr(b, k.Metadata)
			b = append(b, k.Alloc)
		}
	}
	return appendLife(b, w.Life)
}

// AppendEntry appends the binary form of e to dst and returns the extended
// slice. It does not allocate beyond growing dst.
func AppendEntry(dst []byte, e *Entry) []byte {
	b := append(dst, entryFormatV1)
	b = binary.AppendUvarint(b, e.Seq)
	b = append(b, byte(e.Type))
	b = appendStr(b, e.Account)
	b = append(b, e.Scale)
	b = binary.AppendVarint(b, e.Amount)
	b = binary.AppendVarint(b, e.BalanceAfter)
	b = appendStr(b, e.BucketID)
	b = append(b, byte(e.BucketKind))
	b = appendStr(b, e.EventID)
	b = appendStr(b, e.Reference)
	b = binary.AppendVarint(b, e.OccurredAt)
	b = binary.AppendVarint(b, e.RecordedAt)
	b = binary.AppendUvarint(b, uint64(e.PricingVersion))
	b = appendOptBytes(b, e.Metadata)
	return b
}

// errShort is the sticky error of a decoder that ran out of input.
var errShort = errors.New("truncated or malformed integer")

// decoder reads what the append functions wrote. The first error sticks:
// every read after it returns a zero value.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) u() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) v() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.fail(errShort)
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

// raw returns the next n bytes, aliasing the input.
func (d *decoder) raw(n uint64, max int) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(max) || n > uint64(len(d.b)-d.off) {
		d.fail(fmt.Errorf("length %d at byte %d is above %d or past the end", n, d.off, max))
		return nil
	}
	s := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return s
}

func (d *decoder) str() string { return string(d.raw(d.u(), codecStringLenMax)) }

// internStr reads a string and returns its shared copy.
func (d *decoder) internStr() string { return internBytes(d.raw(d.u(), codecStringLenMax)) }

// view reads a string that aliases the decoder's input (logReader.next).
func (d *decoder) view() string {
	b := d.raw(d.u(), codecStringLenMax)
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func (d *decoder) optBytes() []byte {
	n := d.u()
	if n == 0 || d.err != nil {
		return nil
	}
	return append([]byte{}, d.raw(n-1, codecMetadataLenMax)...)
}

// optStr reads what appendOptStr or appendOptBytes wrote, absent or empty
// being "".
func (d *decoder) optStr() string {
	n := d.u()
	if n == 0 || d.err != nil {
		return ""
	}
	return string(d.raw(n-1, codecMetadataLenMax))
}

// count reads a number of items, each taking at least minBytes, and checks
// it against max and against what is left of the input, so that a hostile
// count cannot make the decoder allocate much more than its input.
func (d *decoder) count(max, minBytes int) int {
	n := d.u()
	if d.err != nil {
		return 0
	}
	if n > uint64(max) || n > uint64((len(d.b)-d.off)/minBytes) {
		d.fail(fmt.Errorf("count %d at byte %d is above %d or past the end", n, d.off, max))
		return 0
	}
	return int(n)
}

// bucketIDFrom reads a bucket id (see the format).
func (d *decoder) bucketID() string {
	n := d.u()
	if n != 0 {
		return bucketID(n)
	}
	s := d.raw(d.u(), codecStringLenMax)
	if n, ok := parseBucketID(string(s)); ok && n > 0 {
		return bucketID(n)
	}
	return string(s)
}

// appendWalletAt is AppendWallet for the store: version 3 adds the seq of
// the last log record the snapshot reflects (cmdlog.go) after the body.
func appendWalletAt(dst []byte, w *Wallet, seq uint64) []byte {
	start := len(dst)
	dst = AppendWallet(dst, w)
	dst[start] = walletFormatV3
	return binary.AppendUvarint(dst, seq)
}

// DecodeWallet decodes a wallet written by AppendWallet, and checks every
// invariant (Check) so that a corrupt record is an error, never a wallet
// that breaks later. Names, assets, account ids, sources and bucket ids are
// shared with every other wallet that uses them, to keep wallets small in
// memory. The result does not alias b.
func DecodeWallet(b []byte) (*Wallet, error) {
	w, _, err := decodeWalletAt(b)
	return w, err
}

// decodeWalletAt is DecodeWallet that also returns the log seq of a
// snapshot written by appendWalletAt (0 for the older versions).
func decodeWalletAt(b []byte) (*Wallet, uint64, error) {
	d := decoder{b: b}
	version := d.byte1()
	if d.err == nil && (version < walletFormatV1 || version > walletFormatV3) {
		return nil, 0, fmt.Errorf("balance: wallet record: unknown format version %d", version)
	}
	w := &Wallet{}
	w.Customer = d.str()
	s := &Settings{}
	s.Status = Status(d.byte1())
	s.Policy = Policy(d.byte1())
	if s.Status > StatusPaused || s.Policy > PolicyOverdraft {
		// normalizeSettings panics on these: from a record they are corruption.
		d.fail(fmt.Errorf("settings: status %d, policy %d out of range", s.Status, s.Policy))
	}
	if n := d.count(WalletAccountsMax, 2); n > 0 {
		s.CreditLimits = make([]Limit, n)
		for i := range s.CreditLimits {
			s.CreditLimits[i] = Limit{Account: d.internStr(), Units: d.v()}
		}
	}
	if n := d.count(codecAlertsMax, 1); n > 0 {
		s.BalanceAlerts = make([]string, n)
		for i := range s.BalanceAlerts {
			s.BalanceAlerts[i] = d.str()
		}
	}
	s.Metadata = d.optBytes()
	if version >= walletFormatV2 {
		d.planSettings(s)
	}
	if d.err == nil {
		w.Settings = normalizeSettings(*s)
	} else {
		w.Settings = &plainSettings[0][0]
	}
	w.Seq = d.u()
	w.BucketSeq = d.u()
	w.CreatedAt = d.v()
	w.UpdatedAt = d.v()
	n := d.count(WalletAccountsMax, 8)
	if n <= len(w.accounts0) {
		w.Accounts = w.accounts0[:n:len(w.accounts0)]
	} else {
		w.Accounts = make([]*Account, n)
	}
	var idBuf [64]byte
	for i := range w.Accounts {
		name := d.raw(d.u(), codecStringLenMax)
		asset := d.raw(d.u(), codecStringLenMax)
		var a *Account
		if d.err == nil {
			key := append(append(append(idBuf[:0], name...), ':'), asset...)
			id := internBytes(key)
			if len(name) > 64 {
				d.fail(errors.New("balance: wallet record: account name longer than 64 bytes"))
			}
			a = &Account{id: id, nameLen: uint8(len(name))}
		} else {
			a = &Account{}
		}
		a.Scale = d.byte1()
		a.Held = d.v()
		a.Debt = d.v()
		a.Carry = d.u()
		a.Ledger = d.v()
		if version >= walletFormatV2 {
			a.Depleted = d.flag()
		}
		if nb := d.count(AccountBucketsMax, 10); nb > 0 {
			a.Buckets = make([]Bucket, nb)
			for j := range a.Buckets {
				k := &a.Buckets[j]
				k.ID = d.bucketID()
				k.Kind = Kind(d.byte1())
				k.Priority = d.byte1()
				k.Amount = d.v()
				k.Remaining = d.v()
				k.EffectiveAt = d.v()
				k.ExpiresAt = d.v()
				k.Source = d.internStr()
				k.Reference = d.str()
				k.Metadata = d.optStr()
				if version >= walletFormatV2 {
					k.Alloc = d.byte1()
				}
			}
		}
		w.Accounts[i] = a
	}
	if version >= walletFormatV2 {
		w.Life = d.life()
	}
	var seq uint64
	if version >= walletFormatV3 {
		seq = d.u()
	}
	if d.err != nil {
		return nil, 0, fmt.Errorf("balance: wallet record: %w", d.err)
	}
	if d.off != len(b) {
		return nil, 0, fmt.Errorf("balance: wallet record: %d bytes after the end", len(b)-d.off)
	}
	if err := w.Check(); err != nil {
		return nil, 0, fmt.Errorf("balance: wallet record: %w", err)
	}
	return w, seq, nil
}

// DecodeEntry decodes an entry written by AppendEntry into e. The account
// id and the bucket id are shared strings; e does not alias b. On error, e
// is zeroed.
func DecodeEntry(b []byte, e *Entry) error {
	d := decoder{b: b}
	if v := d.byte1(); d.err == nil && v != entryFormatV1 {
		*e = Entry{}
		return fmt.Errorf("balance: entry record: unknown format version %d", v)
	}
	*e = Entry{
		Seq:          d.u(),
		Type:         EntryType(d.byte1()),
		Account:      d.internStr(),
		Scale:        d.byte1(),
		Amount:       d.v(),
		BalanceAfter: d.v(),
	}
	id := d.raw(d.u(), codecStringLenMax)
	if n, ok := parseBucketID(string(id)); ok && n > 0 {
		e.BucketID = bucketID(n)
	} else {
		e.BucketID = string(id)
	}
	e.BucketKind = Kind(d.byte1())
	if d.err == nil && e.BucketKind > KindRecharge {
		d.fail(fmt.Errorf("unknown bucket kind %d", e.BucketKind))
	}
	e.EventID = d.str()
	e.Reference = d.str()
	e.OccurredAt = d.v()
	e.RecordedAt = d.v()
	pv := d.u()
	e.Metadata = d.optBytes()
	if d.err == nil && pv > 1<<32-1 {
		d.fail(fmt.Errorf("pricing version %d is above 2^32-1", pv))
	}
	e.PricingVersion = uint32(pv)
	if d.err == nil && d.off != len(b) {
		d.fail(fmt.Errorf("%d bytes after the end", len(b)-d.off))
	}
	if d.err != nil {
		*e = Entry{}
		return fmt.Errorf("balance: entry record: %w", d.err)
	}
	return nil
}
