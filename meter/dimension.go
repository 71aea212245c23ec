package meter

import (
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// Dimensions returns the dimensions of the price of eventType that charges
// account ("name:ASSET"), in the order the document lists them; nil when
// there is no such price or it has none. A pricing document has at most
// one price per event type and account, so a charge's dimensions are
// always those of one price. The slice is shared: do not modify it.
func (p *Pricing) Dimensions(eventType, account string) []string {
	for _, pr := range p.byType[eventType] {
		if pr.account == account {
			return pr.dims
		}
	}
	return nil
}

// DimensionReader reads the dimension value of stored events: what the
// analysts' rollups group usage by (for example the model of an AI call).
// It keeps a parser between calls, so it is not safe for concurrent use.
type DimensionReader struct {
	parser fastjson.Parser
	buf    []byte
	seen   map[string]string // values returned lately, so that a repeated value is one string
}

// dimensionValuesKept bounds DimensionReader.seen.
const dimensionValuesKept = 1024

// Value returns the dimension value of an event whose data object is the
// JSON data, under a price with dimensions dims: the value of each
// dimension member joined with "/", as a unit_price map key is written.
// Strings count as they are, numbers and booleans as written; a member
// that is absent, null, an object or an array counts as "". The value is
// cut to its first 256 bytes (at a character boundary), the longest a
// unit_price key may be. With no dimensions, or data that is not a JSON
// object, the value is "".
func (r *DimensionReader) Value(dims []string, data []byte) string {
	if len(dims) == 0 {
		return ""
	}
	v, err := r.parser.ParseBytes(data)
	if err != nil {
		return ""
	}
	o, err := v.Object()
	if err != nil {
		return ""
	}
	b := r.buf[:0]
	for i, dim := range dims {
		if i > 0 {
			b = append(b, '/')
		}
		f := o.Get(dim)
		if f == nil {
			continue
		}
		switch f.Type() {
		case fastjson.TypeString:
			b = append(b, f.GetStringBytes()...)
		case fastjson.TypeNumber, fastjson.TypeTrue, fastjson.TypeFalse:
			// fastjson keeps a number's literal as written.
			b = f.MarshalTo(b)
		}
	}
	if len(b) > dimensionKeyBytesMax {
		n := dimensionKeyBytesMax
		for n > 0 && !utf8.RuneStart(b[n]) {
			n--
		}
		b = b[:n]
	}
	r.buf = b
	if s, ok := r.seen[string(b)]; ok {
		return s
	}
	if r.seen == nil || len(r.seen) >= dimensionValuesKept {
		r.seen = make(map[string]string)
	}
	s := string(b)
	r.seen[s] = s
	return s
}
