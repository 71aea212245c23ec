package wallet

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/meterd/meterd/balance/internal/enc"
)

// The binary formats of wallets and ledger entries, as stored. Each record
// starts with a format version byte; the rest is in package enc's encoding
// (uvarints, zigzag varints, length-prefixed strings), read by its Decoder,
// which never panics and never allocates much more than its input.
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
//
// Version 2, written with the version byte 3 (the store's ledger chunks
// begin with 2, which tells them from a single entry), adds a flags byte
// and, for each flag set, its strings:
//
//	flags [source] [description] [price currency offer]
//
// (entrySource, entryDescription, entryPurchase). Entries are written in
// version 2; version 1 is read.
const (
	walletFormatV1 = 1
	entryFormatV1  = 1
	entryFormatV2  = 3
)

// Flags of an entry, version 2.
const (
	entrySource      = 1 << 0
	entryDescription = 1 << 1
	entryPurchase    = 1 << 2
)

// Bounds of what a decoder accepts, beyond the state machine's own limits.
const (
	codecAlertsMax = 64
)

// AppendWallet appends the binary form of w to dst and returns the extended
// slice. It does not allocate beyond growing dst. It is AppendWalletAt with
// seq 0.
func AppendWallet(dst []byte, w *Wallet) []byte { return AppendWalletAt(dst, w, 0) }

// AppendWalletAt is AppendWallet for the store, with the seq of the last
// log record the snapshot reflects (balance/cmdlog.go) after the body.
func AppendWalletAt(dst []byte, w *Wallet, seq uint64) []byte {
	b := append(dst, walletFormatV5)
	b = enc.AppendStr(b, w.Customer)
	s := w.Settings
	b = append(b, byte(s.Status), byte(s.Policy))
	b = binary.AppendUvarint(b, uint64(len(s.CreditLimits)))
	for i := range s.CreditLimits {
		b = enc.AppendStr(b, s.CreditLimits[i].Account)
		b = binary.AppendVarint(b, s.CreditLimits[i].Units)
	}
	b = binary.AppendUvarint(b, uint64(len(s.BalanceAlerts)))
	for _, a := range s.BalanceAlerts {
		b = enc.AppendStr(b, a)
	}
	b = enc.AppendOptBytes(b, s.Metadata)
	b = appendPlanSettings(b, s)
	b = binary.AppendUvarint(b, w.Seq)
	b = binary.AppendUvarint(b, w.BucketSeq)
	b = binary.AppendVarint(b, w.CreatedAt)
	b = binary.AppendVarint(b, w.UpdatedAt)
	b = binary.AppendUvarint(b, uint64(len(w.Accounts)))
	for _, a := range w.Accounts {
		b = enc.AppendStr(b, a.Name())
		b = enc.AppendStr(b, a.Asset())
		b = append(b, a.Scale)
		b = binary.AppendVarint(b, a.Held)
		b = binary.AppendVarint(b, a.Debt)
		b = binary.AppendUvarint(b, a.Carry)
		b = binary.AppendVarint(b, a.Ledger)
		b = enc.AppendFlag(b, a.Depleted)
		b = binary.AppendUvarint(b, uint64(len(a.Buckets)))
		for i := range a.Buckets {
			k := &a.Buckets[i]
			if n, ok := parseBucketID(k.ID); ok && n > 0 {
				b = binary.AppendUvarint(b, n)
			} else {
				b = append(b, 0)
				b = enc.AppendStr(b, k.ID)
			}
			b = append(b, byte(k.Kind), k.Priority)
			b = binary.AppendVarint(b, k.Amount)
			b = binary.AppendVarint(b, k.Remaining)
			b = binary.AppendVarint(b, k.EffectiveAt)
			b = binary.AppendVarint(b, k.ExpiresAt)
			b = enc.AppendStr(b, k.Source)
			b = enc.AppendStr(b, k.Reference)
			b = enc.AppendOptStr(b, k.Metadata)
			b = append(b, k.Alloc)
		}
	}
	b = appendLife(b, w.Life)
	return binary.AppendUvarint(b, seq)
}

// AppendEntry appends the binary form of e to dst and returns the extended
// slice. It does not allocate beyond growing dst.
func AppendEntry(dst []byte, e *Entry) []byte {
	b := append(dst, entryFormatV2)
	b = binary.AppendUvarint(b, e.Seq)
	b = append(b, byte(e.Type))
	b = enc.AppendStr(b, e.Account)
	b = append(b, e.Scale)
	b = binary.AppendVarint(b, e.Amount)
	b = binary.AppendVarint(b, e.BalanceAfter)
	b = enc.AppendStr(b, e.BucketID)
	b = append(b, byte(e.BucketKind))
	b = enc.AppendStr(b, e.EventID)
	b = enc.AppendStr(b, e.Reference)
	b = binary.AppendVarint(b, e.OccurredAt)
	b = binary.AppendVarint(b, e.RecordedAt)
	b = binary.AppendUvarint(b, uint64(e.PricingVersion))
	b = enc.AppendOptBytes(b, e.Metadata)
	var flags byte
	if e.Source != "" {
		flags |= entrySource
	}
	if e.Description != "" {
		flags |= entryDescription
	}
	if e.Price != "" || e.Currency != "" || e.Offer != "" {
		flags |= entryPurchase
	}
	b = append(b, flags)
	if flags&entrySource != 0 {
		b = enc.AppendStr(b, e.Source)
	}
	if flags&entryDescription != 0 {
		b = enc.AppendStr(b, e.Description)
	}
	if flags&entryPurchase != 0 {
		b = enc.AppendStr(b, e.Price)
		b = enc.AppendStr(b, e.Currency)
		b = enc.AppendStr(b, e.Offer)
	}
	return b
}

// readBucketID reads a bucket id (see the format).
func readBucketID(d *enc.Decoder) string {
	n := d.U()
	if n != 0 {
		return bucketID(n)
	}
	s := d.Raw(d.U(), enc.StringLenMax)
	if n, ok := parseBucketID(string(s)); ok && n > 0 {
		return bucketID(n)
	}
	return string(s)
}

// DecodeWallet decodes a wallet written by AppendWallet, and checks every
// invariant (Check) so that a corrupt record is an error, never a wallet
// that breaks later. Names, assets, account ids, sources and bucket ids are
// shared with every other wallet that uses them, to keep wallets small in
// memory. The result does not alias b.
func DecodeWallet(b []byte) (*Wallet, error) {
	w, _, err := DecodeWalletAt(b)
	return w, err
}

// DecodeWalletAt is DecodeWallet that also returns the log seq of a
// snapshot written by AppendWalletAt (0 for the older versions).
func DecodeWalletAt(b []byte) (*Wallet, uint64, error) {
	d := enc.Decoder{B: b}
	version := d.Byte1()
	if d.Err == nil && (version < walletFormatV1 || version > walletFormatV5) {
		return nil, 0, fmt.Errorf("wallet: wallet record: unknown format version %d", version)
	}
	w := &Wallet{}
	w.Customer = d.Str()
	s := &Settings{}
	s.Status = Status(d.Byte1())
	s.Policy = Policy(d.Byte1())
	if s.Status > StatusPaused || s.Policy > PolicyOverdraft {
		// normalizeSettings panics on these: from a record they are corruption.
		d.Fail(fmt.Errorf("settings: status %d, policy %d out of range", s.Status, s.Policy))
	}
	if n := d.Count(WalletAccountsMax, 2); n > 0 {
		s.CreditLimits = make([]Limit, n)
		for i := range s.CreditLimits {
			s.CreditLimits[i] = Limit{Account: d.InternStr(), Units: d.V()}
		}
	}
	if n := d.Count(codecAlertsMax, 1); n > 0 {
		s.BalanceAlerts = make([]string, n)
		for i := range s.BalanceAlerts {
			s.BalanceAlerts[i] = d.Str()
		}
	}
	s.Metadata = d.OptBytes()
	if version >= walletFormatV2 {
		readPlanSettings(&d, s, version)
	}
	if d.Err == nil {
		w.Settings = normalizeSettings(*s)
	} else {
		w.Settings = &plainSettings[0][0]
	}
	w.Seq = d.U()
	w.BucketSeq = d.U()
	w.CreatedAt = d.V()
	w.UpdatedAt = d.V()
	n := d.Count(WalletAccountsMax, 8)
	if n <= len(w.accounts0) {
		w.Accounts = w.accounts0[:n:len(w.accounts0)]
	} else {
		w.Accounts = make([]*Account, n)
	}
	var idBuf [64]byte
	for i := range w.Accounts {
		name := d.Raw(d.U(), enc.StringLenMax)
		asset := d.Raw(d.U(), enc.StringLenMax)
		var a *Account
		if d.Err == nil {
			key := append(append(append(idBuf[:0], name...), ':'), asset...)
			id := enc.InternBytes(key)
			if len(name) > 64 {
				d.Fail(errors.New("wallet: wallet record: account name longer than 64 bytes"))
			}
			a = &Account{id: id, nameLen: uint8(len(name))}
		} else {
			a = &Account{}
		}
		a.Scale = d.Byte1()
		a.Held = d.V()
		a.Debt = d.V()
		a.Carry = d.U()
		a.Ledger = d.V()
		if version >= walletFormatV2 {
			a.Depleted = d.Flag()
		}
		if nb := d.Count(AccountBucketsMax, 10); nb > 0 {
			a.Buckets = make([]Bucket, nb)
			for j := range a.Buckets {
				k := &a.Buckets[j]
				k.ID = readBucketID(&d)
				k.Kind = Kind(d.Byte1())
				k.Priority = d.Byte1()
				k.Amount = d.V()
				k.Remaining = d.V()
				k.EffectiveAt = d.V()
				k.ExpiresAt = d.V()
				k.Source = d.InternStr()
				k.Reference = d.Str()
				k.Metadata = d.OptStr()
				if version >= walletFormatV2 {
					k.Alloc = d.Byte1()
				}
			}
		}
		w.Accounts[i] = a
	}
	if version >= walletFormatV2 {
		w.Life = readLife(&d, version)
	}
	var seq uint64
	if version >= walletFormatV3 {
		seq = d.U()
	}
	if d.Err != nil {
		return nil, 0, fmt.Errorf("wallet: wallet record: %w", d.Err)
	}
	if d.Off != len(b) {
		return nil, 0, fmt.Errorf("wallet: wallet record: %d bytes after the end", len(b)-d.Off)
	}
	if err := w.Check(); err != nil {
		return nil, 0, fmt.Errorf("wallet: wallet record: %w", err)
	}
	return w, seq, nil
}

// DecodeEntry decodes an entry written by AppendEntry into e. The account
// id and the bucket id are shared strings; e does not alias b. On error, e
// is zeroed.
func DecodeEntry(b []byte, e *Entry) error {
	d := enc.Decoder{B: b}
	v := d.Byte1()
	if d.Err == nil && v != entryFormatV1 && v != entryFormatV2 {
		*e = Entry{}
		return fmt.Errorf("wallet: entry record: unknown format version %d", v)
	}
	*e = Entry{
		Seq:          d.U(),
		Type:         EntryType(d.Byte1()),
		Account:      d.InternStr(),
		Scale:        d.Byte1(),
		Amount:       d.V(),
		BalanceAfter: d.V(),
	}
	id := d.Raw(d.U(), enc.StringLenMax)
	if n, ok := parseBucketID(string(id)); ok && n > 0 {
		e.BucketID = bucketID(n)
	} else {
		e.BucketID = string(id)
	}
	e.BucketKind = Kind(d.Byte1())
	if d.Err == nil && e.BucketKind > KindRecharge {
		d.Fail(fmt.Errorf("unknown bucket kind %d", e.BucketKind))
	}
	e.EventID = d.Str()
	e.Reference = d.Str()
	e.OccurredAt = d.V()
	e.RecordedAt = d.V()
	pv := d.U()
	e.Metadata = d.OptBytes()
	if v >= entryFormatV2 {
		flags := d.Byte1()
		if flags&entrySource != 0 {
			e.Source = d.InternStr()
		}
		if flags&entryDescription != 0 {
			e.Description = d.Str()
		}
		if flags&entryPurchase != 0 {
			e.Price, e.Currency, e.Offer = d.Str(), d.InternStr(), d.InternStr()
		}
		if d.Err == nil && flags > entrySource|entryDescription|entryPurchase {
			d.Fail(fmt.Errorf("unknown entry flags %#x", flags))
		}
	}
	if d.Err == nil && pv > 1<<32-1 {
		d.Fail(fmt.Errorf("pricing version %d is above 2^32-1", pv))
	}
	e.PricingVersion = uint32(pv)
	if d.End() != nil {
		*e = Entry{}
		return fmt.Errorf("wallet: entry record: %w", d.Err)
	}
	return nil
}
