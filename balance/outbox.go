package balance

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/meterd/meterd/balance/internal/enc"
	"github.com/meterd/meterd/balance/wallet"
)

// The outbox: when sinks are configured (Options.Sinks), every commit group
// that changed a ledger or applied a usage event writes one outbox record,
// in the same Pebble batch as the change, holding a copy of its ledger
// entries and usage records. Sinks read records in sequence order up to the
// durability watermark and keep a durable cursor each; records every sink
// has shipped are deleted by the janitor.
//
//	'o' seq(8, BE)   -> outbox record
//	'c' sink name    -> the sink's cursor: the last outbox seq it shipped (8, BE)
const (
	prefixOutbox = 'o'
	prefixCursor = 'c'
)

const outboxFormatV1 = 1

func outboxKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixOutbox}, seq)
}

func cursorKey(name string) []byte { return append([]byte{prefixCursor}, name...) }

// OutboxRecord is what one commit group settled.
type OutboxRecord struct {
	Seq        uint64
	RecordedAt int64 // the group's time, unix ns: every entry and usage record of it was recorded then
	Entries    []OutboxEntry
	Usage      []OutboxUsage
	Notes      []wallet.Notification
}

// OutboxEntry is one ledger entry of a customer.
type OutboxEntry struct {
	Customer string
	wallet.Entry
}

// OutboxUsage is one applied usage event (charged or recorded).
type OutboxUsage struct {
	Customer       string
	EventID        string
	EventType      string
	Subject        string
	OccurredAt     int64
	RecordedAt     int64
	Status         uint8 // EventCharged or EventRecorded
	PricingVersion uint32
	Charges        []wallet.ChargeResult
	Data           []byte
	Description    string
}

// outboxGroup accumulates a group's outbox record while the group is applied.
type outboxGroup struct {
	buf     []byte
	entries int
	usage   int
	notes   int
	scratch []byte
	seq     uint64 // assigned when the group closes; 0 = no record
}

func (o *outboxGroup) addEntry(customer string, entry []byte) {
	o.buf = append(o.buf, 'e')
	o.buf = enc.AppendStr(o.buf, customer)
	o.buf = binary.AppendUvarint(o.buf, uint64(len(entry)))
	o.buf = append(o.buf, entry...)
	o.entries++
}

func (o *outboxGroup) addUsage(customer, eventID string, rec []byte) {
	o.buf = append(o.buf, 'u')
	o.buf = enc.AppendStr(o.buf, customer)
	o.buf = enc.AppendStr(o.buf, eventID)
	o.buf = binary.AppendUvarint(o.buf, uint64(len(rec)))
	o.buf = append(o.buf, rec...)
	o.usage++
}

func (o *outboxGroup) addNote(n *wallet.Notification) {
	o.buf = append(o.buf, 'n')
	o.buf = enc.AppendStr(o.buf, n.Customer)
	o.scratch = wallet.AppendNote(o.scratch[:0], n)
	o.buf = binary.AppendUvarint(o.buf, uint64(len(o.scratch)))
	o.buf = append(o.buf, o.scratch...)
	o.notes++
}

// value returns the outbox record of the group.
func (o *outboxGroup) value(dst []byte, recordedAt int64) []byte {
	dst = append(dst, outboxFormatV1)
	dst = binary.AppendVarint(dst, recordedAt)
	dst = binary.AppendUvarint(dst, uint64(o.entries+o.usage+o.notes))
	return append(dst, o.buf...)
}

func decodeOutbox(seq uint64, b []byte) (*OutboxRecord, error) {
	d := enc.Decoder{B: b}
	if v := d.Byte1(); d.Err == nil && v != outboxFormatV1 {
		return nil, fmt.Errorf("balance: outbox record %d: unknown format version %d", seq, v)
	}
	r := &OutboxRecord{Seq: seq, RecordedAt: d.V()}
	n := d.Count(1<<24, 3)
	for i := 0; i < n && d.Err == nil; i++ {
		switch d.Byte1() {
		case 'e':
			oe := OutboxEntry{Customer: d.Str()}
			raw := d.Raw(d.U(), 1<<20)
			if d.Err == nil {
				if err := wallet.DecodeEntry(raw, &oe.Entry); err != nil {
					d.Fail(err)
				}
			}
			r.Entries = append(r.Entries, oe)
		case 'u':
			customer, id := d.Str(), d.Str()
			raw := d.Raw(d.U(), 1<<20)
			if d.Err != nil {
				break
			}
			rec, err := decodeRecord(raw)
			if err != nil {
				d.Fail(err)
				break
			}
			r.Usage = append(r.Usage, OutboxUsage{Customer: customer, EventID: id, EventType: rec.EventType, Subject: rec.Subject,
				OccurredAt: rec.OccurredAt, RecordedAt: rec.RecordedAt, Status: rec.Status, PricingVersion: rec.PricingVersion,
				Charges: rec.Charges, Data: rec.Data, Description: rec.Description})
		case 'n':
			customer := d.Str()
			raw := d.Raw(d.U(), 1<<21)
			if d.Err != nil {
				break
			}
			n, err := wallet.DecodeNote(customer, raw)
			if err != nil {
				d.Fail(err)
				break
			}
			r.Notes = append(r.Notes, n)
		default:
			d.Fail(fmt.Errorf("unknown item kind"))
		}
	}
	if d.End() != nil {
		return nil, fmt.Errorf("balance: outbox record %d: %w", seq, d.Err)
	}
	return r, nil
}

// watermark is the highest outbox seq s such that every record up to s is
// durable. Groups of different shards become durable out of seq order.
type watermark struct {
	mu     sync.Mutex
	w      uint64
	done   map[uint64]struct{}
	notify chan struct{} // gets a token when w advances
}

func newWatermark(start uint64) *watermark {
	return &watermark{w: start, done: make(map[uint64]struct{}), notify: make(chan struct{}, 1)}
}

func (m *watermark) mark(seq uint64) {
	m.mu.Lock()
	if seq != m.w+1 {
		m.done[seq] = struct{}{}
		m.mu.Unlock()
		return
	}
	m.w = seq
	for {
		if _, ok := m.done[m.w+1]; !ok {
			break
		}
		delete(m.done, m.w+1)
		m.w++
	}
	m.mu.Unlock()
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

func (m *watermark) get() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.w
}

// OutboxWatermark returns the highest outbox seq up to which every record is durable.
func (e *Engine) OutboxWatermark() uint64 { return e.wm.get() }

// OutboxNotify returns a channel that receives a token when the watermark advances.
func (e *Engine) OutboxNotify() <-chan struct{} { return e.wm.notify }

// ReadOutbox calls fn for each durable outbox record after seq `after`, in
// order, until fn returns false or there are no more.
func (e *Engine) ReadOutbox(after uint64, fn func(*OutboxRecord) bool) error {
	upto := e.wm.get()
	if upto <= after {
		return nil
	}
	it, err := e.st.db.NewIter(&pebble.IterOptions{LowerBound: outboxKey(after + 1), UpperBound: outboxKey(upto + 1)})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != 9 {
			return fmt.Errorf("balance: outbox key %x", k)
		}
		rec, err := decodeOutbox(binary.BigEndian.Uint64(k[1:]), it.Value())
		if err != nil {
			return err
		}
		if !fn(rec) {
			return nil
		}
	}
	return it.Error()
}

// Cursor returns the last outbox seq the named sink shipped (0: none).
func (e *Engine) Cursor(name string) (uint64, error) {
	v, err := e.st.get(cursorKey(name))
	if err != nil || v == nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("balance: cursor %q: %d bytes", name, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// SetCursor durably records that the named sink shipped every outbox record
// up to seq. It is refused with ErrStorageFull while the disk is full (the
// sink retries; what it ships again is deduplicated downstream).
func (e *Engine) SetCursor(name string, seq uint64) error {
	if !e.disk.writable() {
		return ErrStorageFull
	}
	return e.st.db.Set(cursorKey(name), binary.BigEndian.AppendUint64(nil, seq), pebble.Sync)
}

// dropShipped deletes the outbox records every configured sink has shipped.
func (e *Engine) dropShipped() error {
	if len(e.opts.Sinks) == 0 {
		return nil
	}
	shipped := uint64(1<<64 - 1)
	for _, name := range e.opts.Sinks {
		c, err := e.Cursor(name)
		if err != nil {
			return err
		}
		shipped = min(shipped, c)
	}
	if shipped == 0 || shipped <= e.outboxDropped || !e.disk.writable() {
		return nil
	}
	if err := e.st.db.DeleteRange(outboxKey(0), outboxKey(shipped+1), pebble.NoSync); err != nil {
		return err
	}
	e.outboxDropped = shipped
	return nil
}

// loadOutboxSeq returns the highest outbox seq ever issued: the last record
// in the store, or the highest sink cursor when shipped records were dropped.
func (s *store) loadOutboxSeq() (uint64, error) {
	var seq uint64
	for _, p := range []byte{prefixOutbox, prefixCursor} {
		it, err := s.db.NewIter(prefixRange(p))
		if err != nil {
			return 0, err
		}
		for ok := it.First(); ok; ok = it.Next() {
			var v uint64
			switch {
			case p == prefixOutbox && len(it.Key()) == 9:
				v = binary.BigEndian.Uint64(it.Key()[1:])
			case p == prefixCursor && len(it.Value()) == 8:
				v = binary.BigEndian.Uint64(it.Value())
			default:
				it.Close()
				return 0, fmt.Errorf("balance: outbox key %x", it.Key())
			}
			seq = max(seq, v)
			if p == prefixOutbox {
				it.Last()
				seq = max(seq, binary.BigEndian.Uint64(it.Key()[1:]))
				break
			}
		}
		err = it.Error()
		it.Close()
		if err != nil {
			return 0, err
		}
	}
	return seq, nil
}

// OutboxBytes estimates the disk space of the outbox records after seq
// (those not yet shipped by the slowest sink), from Pebble's table sizes.
func (e *Engine) OutboxBytes(after uint64) (uint64, error) {
	return e.st.db.EstimateDiskUsage(outboxKey(after+1), outboxKey(1<<64-1))
}

// Flush writes the memtables to tables on disk (OutboxBytes counts only
// those): for tests and for operators before a file-level backup.
// Refused with ErrStorageFull while the disk is full.
func (e *Engine) Flush() error {
	if !e.disk.writable() {
		return ErrStorageFull
	}
	return e.st.db.Flush()
}
