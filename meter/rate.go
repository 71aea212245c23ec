package meter

import "strings"

// Rate prices one event. Every price whose event_type equals ev.EventType
// applies, in document order, and appends one Charge to dst (append
// semantics: pass dst[:0] to reuse a buffer; Rate does not allocate when dst
// has room). matched is false, with no charges and no error, when no price
// has the event's type: the event is recorded with zero charge.
//
// A per-event unit price charges the price itself. A component with a field
// charges value / package_size * unit_price, where value is the data member
// of that name: a JSON number, not negative. A unit_price map is looked up by
// the dimension key built from the event's data (strings as they are,
// numbers and booleans as written), then by "*". A dimension member that is
// absent (or null, an object or an array) can only match "*".
//
// Precision: the amount is exact to 10^-18 of the asset's smallest unit (a
// Fine); anything below that is truncated (rounded toward zero), separately
// for each component before the components of a price are summed. The balance
// engine then rounds to whole units and carries the sub-unit remainder.
//
// Errors are *Error with code "invalid_event" and Field "data.<member>" for a
// missing, non-numeric or negative quantity, for a dimension value without a
// price, and for a charge above MaxUnits units ("charge too large"). On
// error, Rate returns dst unchanged and matched is true.
func (p *Pricing) Rate(ev *Event, dst []Charge) (charges []Charge, matched bool, err error) {
	prices := p.byType[ev.EventType]
	if len(prices) == 0 {
		return dst, false, nil
	}
	n := len(dst)
	for _, pr := range prices {
		amount, err := pr.charge(ev)
		if err != nil {
			return dst[:n], true, err
		}
		dst = append(dst, Charge{Account: pr.account, Name: pr.name, Asset: pr.asset, Scale: pr.scale, Amount: amount.fine()})
	}
	return dst, true, nil
}

// charge computes one price's amount for ev, in sub-units.
func (pr *price) charge(ev *Event) (u128, *Error) {
	key := int32(-1) // index of the event's dimension key in pr.keys; -1: none
	if pr.hasMap {
		key = pr.keyIndex(ev)
	}
	var total u128
	for i := range pr.comps {
		c := &pr.comps[i]
		r := &c.flat
		if c.isMap {
			r = nil
			if key >= 0 {
				r = c.keyed[key]
			}
			if r == nil {
				if !c.hasStar {
					return u128{}, pr.noPrice(ev)
				}
				r = &c.star
			}
		}
		x := r.perEvent
		if c.field != "" {
			f, ok := ev.Lookup(c.field)
			if !ok {
				return u128{}, errf("invalid_event", c.dataPath, c.dataPath+" is missing: "+c.path+" charges by it")
			}
			if f.Kind != FieldNumber {
				return u128{}, errf("invalid_event", c.dataPath, c.dataPath+" must be a number")
			}
			cv, vexp, neg, msg := parseQuantity(f.Text)
			if msg != "" {
				return u128{}, errf("invalid_event", c.dataPath, c.dataPath+" is not a supported number: "+msg)
			}
			if neg {
				return u128{}, errf("invalid_event", c.dataPath, c.dataPath+" must not be negative")
			}
			if x, ok = scaledFloor(cv, r.coef, vexp+int(r.exp), r.div); !ok {
				return u128{}, errf("invalid_event", c.dataPath, "charge too large: it exceeds 10^18 smallest units")
			}
		}
		var ok bool
		if total, ok = total.add(x); !ok || total.greater(fineMax) {
			return u128{}, errf("invalid_event", "", "charge too large: it exceeds 10^18 smallest units")
		}
	}
	return total, nil
}

// keyIndex returns the index in pr.keys of the dimension key of ev, or -1
// when the event has no concrete key (a dimension member is absent, null,
// an object or an array; with several dimensions, a value contains "/")
// or the key has no price.
func (pr *price) keyIndex(ev *Event) int32 {
	if len(pr.dims) == 1 {
		f, ok := ev.Lookup(pr.dims[0])
		if !ok || !isDimensionKind(f.Kind) {
			return -1
		}
		if i, ok := pr.keys[f.Text]; ok {
			return i
		}
		return -1
	}
	var buf [dimensionKeyBytesMax]byte
	key := buf[:0]
	for i, dim := range pr.dims {
		f, ok := ev.Lookup(dim)
		if !ok || !isDimensionKind(f.Kind) || strings.IndexByte(f.Text, '/') >= 0 ||
			len(key)+1+len(f.Text) > len(buf) {
			return -1
		}
		if i > 0 {
			key = append(key, '/')
		}
		key = append(key, f.Text...)
	}
	if i, ok := pr.keys[string(key)]; ok {
		return i
	}
	return -1
}

// parseQuantity is parseNumber with a fast path for the common case, a
// plain non-negative integer of at most 19 digits. The coefficient it
// returns is not necessarily normalized, which rating does not need.
func parseQuantity(s string) (coef uint64, exp int, neg bool, msg string) {
	if len(s) == 0 || len(s) > pow10Max || (s[0] == '0' && len(s) > 1) {
		return parseNumber(s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return parseNumber(s)
		}
		coef = coef*10 + uint64(c-'0')
	}
	return coef, 0, false, ""
}

func isDimensionKind(k FieldKind) bool {
	return k == FieldString || k == FieldNumber || k == FieldBool
}

// noPrice builds the error for an event whose dimension values have no
// price and no "*" fallback.
func (pr *price) noPrice(ev *Event) *Error {
	var b strings.Builder
	b.WriteString("no price for ")
	field := ""
	for i, dim := range pr.dims {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(dim)
		f, ok := ev.Lookup(dim)
		switch {
		case !ok:
			b.WriteString(" (missing)")
			if field == "" {
				field = "data." + dim
			}
		case !isDimensionKind(f.Kind):
			b.WriteString(" (not a string, number or boolean)")
			if field == "" {
				field = "data." + dim
			}
		default:
			b.WriteString("=")
			b.WriteString(f.Text)
		}
	}
	if field == "" {
		field = "data." + pr.dims[0]
	}
	b.WriteString(" in the price of " + ev.EventType + " for " + pr.account + ", and no \"*\" entry")
	return errf("invalid_event", field, b.String())
}
