// Package enc is the binary encoding shared by the wallet state machine's
// snapshots (package wallet) and the engine's records (package balance):
// integers are uvarints (unsigned) and zigzag varints (signed); strings are
// a uvarint length then the bytes; a byte slice that may be absent is a
// uvarint of len+1, 0 meaning absent. There is no reflection. A Decoder
// never panics and never allocates more than a small multiple of its input,
// whatever the input.
package enc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// Bounds of what a Decoder accepts, beyond the state machine's own limits.
const (
	StringLenMax   = 4096    // ids, names, sources, references, alerts
	MetadataLenMax = 1 << 20 // raw JSON metadata
)

// AppendStr appends a string: its uvarint length, then its bytes.
func AppendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// AppendOptBytes appends a byte slice that may be nil: a uvarint of len+1,
// 0 meaning nil, then the bytes.
func AppendOptBytes(b, s []byte) []byte {
	if s == nil {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(s))+1)
	return append(b, s...)
}

// AppendOptStr is AppendOptBytes for a string, "" being absent.
func AppendOptStr(b []byte, s string) []byte {
	if s == "" {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(s))+1)
	return append(b, s...)
}

// AppendFlag appends a boolean as one byte, 0 or 1.
func AppendFlag(b []byte, on bool) []byte {
	if on {
		return append(b, 1)
	}
	return append(b, 0)
}

// ErrShort is the sticky error of a Decoder that ran out of input.
var ErrShort = errors.New("truncated or malformed integer")

// Decoder reads what the append functions wrote, from B at Off. The first
// error sticks in Err: every read after it returns a zero value.
type Decoder struct {
	B   []byte
	Off int
	Err error
}

// Fail sets Err, unless it is already set.
func (d *Decoder) Fail(err error) {
	if d.Err == nil {
		d.Err = err
	}
}

// End fails the decoder when input is left after what was read, and
// returns its error.
func (d *Decoder) End() error {
	if d.Err == nil && d.Off != len(d.B) {
		d.Fail(fmt.Errorf("%d bytes after the end", len(d.B)-d.Off))
	}
	return d.Err
}

// U reads a uvarint.
func (d *Decoder) U() uint64 {
	if d.Err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.B[d.Off:])
	if n <= 0 {
		d.Fail(ErrShort)
		return 0
	}
	d.Off += n
	return v
}

// V reads a zigzag varint.
func (d *Decoder) V() int64 {
	if d.Err != nil {
		return 0
	}
	v, n := binary.Varint(d.B[d.Off:])
	if n <= 0 {
		d.Fail(ErrShort)
		return 0
	}
	d.Off += n
	return v
}

// Byte1 reads one byte.
func (d *Decoder) Byte1() byte {
	if d.Err != nil {
		return 0
	}
	if d.Off >= len(d.B) {
		d.Fail(ErrShort)
		return 0
	}
	c := d.B[d.Off]
	d.Off++
	return c
}

// Flag reads what AppendFlag wrote.
func (d *Decoder) Flag() bool {
	switch d.Byte1() {
	case 0:
		return false
	case 1:
		return true
	}
	d.Fail(fmt.Errorf("flag is neither 0 nor 1"))
	return false
}

// Raw returns the next n bytes, aliasing the input; n above max fails.
func (d *Decoder) Raw(n uint64, max int) []byte {
	if d.Err != nil {
		return nil
	}
	if n > uint64(max) || n > uint64(len(d.B)-d.Off) {
		d.Fail(fmt.Errorf("length %d at byte %d is above %d or past the end", n, d.Off, max))
		return nil
	}
	s := d.B[d.Off : d.Off+int(n)]
	d.Off += int(n)
	return s
}

// Str reads a string into a new copy.
func (d *Decoder) Str() string { return string(d.Raw(d.U(), StringLenMax)) }

// InternStr reads a string and returns its shared copy (Intern).
func (d *Decoder) InternStr() string { return InternBytes(d.Raw(d.U(), StringLenMax)) }

// View reads a string that aliases the decoder's input: valid only while
// the input is.
func (d *Decoder) View() string {
	b := d.Raw(d.U(), StringLenMax)
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// OptBytes reads what AppendOptBytes wrote, into a new copy.
func (d *Decoder) OptBytes() []byte {
	n := d.U()
	if n == 0 || d.Err != nil {
		return nil
	}
	return append([]byte{}, d.Raw(n-1, MetadataLenMax)...)
}

// OptStr reads what AppendOptStr or AppendOptBytes wrote, absent or empty
// being "".
func (d *Decoder) OptStr() string {
	n := d.U()
	if n == 0 || d.Err != nil {
		return ""
	}
	return string(d.Raw(n-1, MetadataLenMax))
}

// Count reads a number of items, each taking at least minBytes, and checks
// it against max and against what is left of the input, so that a hostile
// count cannot make the decoder allocate much more than its input.
func (d *Decoder) Count(max, minBytes int) int {
	n := d.U()
	if d.Err != nil {
		return 0
	}
	if n > uint64(max) || n > uint64((len(d.B)-d.Off)/minBytes) {
		d.Fail(fmt.Errorf("count %d at byte %d is above %d or past the end", n, d.Off, max))
		return 0
	}
	return int(n)
}

// internMax bounds the intern table. Past it, new strings are no longer
// shared: still correct, only larger in memory.
const internMax = 1 << 14

// internTable holds one copy of each low-cardinality string of wallets
// (account ids and so names and assets, sources), shared by every wallet
// that uses it so that a million wallets do not hold a million copies. It
// is a cache with no observable effect on any result. (unique.Make would
// forget a string at each GC once no Handle holds it; wallets hold strings.)
var internTable struct {
	sync.RWMutex
	m map[string]string
}

// Intern returns the shared copy of s.
func Intern(s string) string {
	if s == "" {
		return ""
	}
	internTable.RLock()
	t, ok := internTable.m[s]
	internTable.RUnlock()
	if ok {
		return t
	}
	return internInsert(s)
}

// InternBytes returns the shared copy of string(b), allocating only the
// first time.
func InternBytes(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	internTable.RLock()
	t, ok := internTable.m[string(b)]
	internTable.RUnlock()
	if ok {
		return t
	}
	return internInsert(string(b))
}

func internInsert(s string) string {
	internTable.Lock()
	defer internTable.Unlock()
	if t, ok := internTable.m[s]; ok {
		return t
	}
	if internTable.m == nil {
		internTable.m = make(map[string]string)
	}
	if len(internTable.m) < internMax {
		internTable.m[s] = s
	}
	return s
}
