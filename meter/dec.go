package meter

import (
	"math/bits"
	"strconv"
)

// Bounds of a Dec. They keep every decimal small enough for exact integer
// arithmetic and every literal cheap to parse.
const (
	decTextBytesMax = 128  // longest accepted number literal
	decDigitsMax    = 19   // significant digits: the coefficient fits in a uint64
	decExpMax       = 64   // |exponent| of the normalized coefficient
	decExpTextMax   = 9999 // |exponent| as written, even for zero
)

// Dec is an exact decimal: coef * 10^exp, negative when neg. It is always
// normalized (the coefficient has no trailing zeros; zero is 0e0 and never
// negative), so equal values are equal structs and can be compared with ==.
// The zero value is 0.
//
// A Dec has at most 19 significant digits and an exponent within ±64, which
// is ample for prices, package sizes and usage quantities, and lets rating
// use 128-bit integer arithmetic.
type Dec struct {
	coef uint64
	exp  int16
	neg  bool
}

// ParseDec parses a number literal in JSON syntax: an optional '-', an
// integer part without leading zeros, an optional fraction and an optional
// exponent ("2353", "-1.5", "1e3", "2.5E-7"). The value is kept exactly.
// Literals longer than 128 bytes, with more than 19 significant digits or an
// exponent beyond ±64 (after normalization) are rejected with an *Error of
// code "invalid_number".
func ParseDec(literal string) (Dec, error) {
	coef, exp, neg, msg := parseNumber(literal)
	if msg != "" {
		return Dec{}, errf("invalid_number", "", msg)
	}
	return Dec{coef: coef, exp: int16(exp), neg: neg}, nil
}

// parseNumber parses a JSON number literal into a normalized coefficient and
// exponent. It does not allocate; msg is empty on success and otherwise says
// what is wrong.
func parseNumber(s string) (coef uint64, exp int, neg bool, msg string) {
	if len(s) == 0 {
		return 0, 0, false, "number is empty"
	}
	if len(s) > decTextBytesMax {
		return 0, 0, false, "number is longer than 128 characters"
	}
	i := 0
	if s[0] == '-' {
		neg = true
		i++
	}
	var acc digitAcc
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		if !acc.add(s[i]) {
			return 0, 0, false, "number has more than 19 significant digits"
		}
		i++
	}
	switch {
	case i == start:
		return 0, 0, false, "number must start with a digit or '-'"
	case s[start] == '0' && i-start > 1:
		return 0, 0, false, "number must not have leading zeros"
	}
	if i < len(s) && s[i] == '.' {
		i++
		fstart := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			if !acc.add(s[i]) {
				return 0, 0, false, "number has more than 19 significant digits"
			}
			exp--
			i++
		}
		if i == fstart {
			return 0, 0, false, "number needs digits after the decimal point"
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		eneg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			eneg = s[i] == '-'
			i++
		}
		estart := i
		e := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			if e <= decExpTextMax {
				e = e*10 + int(s[i]-'0')
			}
			i++
		}
		if i == estart {
			return 0, 0, false, "number needs digits in its exponent"
		}
		if e > decExpTextMax {
			return 0, 0, false, "number is out of range: its exponent exceeds ±9999"
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	if i != len(s) {
		return 0, 0, false, "number contains an unexpected character " + strconv.QuoteRune(rune(s[i]))
	}
	if acc.coef == 0 {
		return 0, 0, false, ""
	}
	coef = acc.coef
	exp += acc.pend
	if exp > decExpMax || exp < -decExpMax {
		return 0, 0, false, "number is out of range: its exponent exceeds ±64"
	}
	return coef, exp, neg, ""
}

// digitAcc accumulates the significant digits of a literal. Zeros after the
// last non-zero digit are only counted (pend) until another non-zero digit
// arrives, so trailing zeros end up in the exponent, not the coefficient.
type digitAcc struct {
	coef   uint64
	digits int // significant digits in coef
	pend   int // zeros seen after the last non-zero digit
}

func (a *digitAcc) add(d byte) bool {
	if d == '0' {
		if a.coef != 0 {
			a.pend++
		}
		return true
	}
	if a.digits+a.pend+1 > decDigitsMax {
		return false
	}
	a.coef = a.coef*pow10[a.pend+1] + uint64(d-'0')
	a.digits += a.pend + 1
	a.pend = 0
	return true
}

// String returns the plain decimal form of d, without exponent and without
// trailing fractional zeros: "2", "1000", "0.00000025", "-1.5".
func (d Dec) String() string {
	return string(d.appendTo(nil))
}

func (d Dec) appendTo(dst []byte) []byte {
	if d.neg {
		dst = append(dst, '-')
	}
	var buf [20]byte
	digits := strconv.AppendUint(buf[:0], d.coef, 10)
	if d.exp >= 0 {
		dst = append(dst, digits...)
		if d.coef != 0 {
			for range d.exp {
				dst = append(dst, '0')
			}
		}
		return dst
	}
	frac := int(-d.exp)
	if frac >= len(digits) {
		dst = append(dst, '0', '.')
		for range frac - len(digits) {
			dst = append(dst, '0')
		}
		return append(dst, digits...)
	}
	dst = append(dst, digits[:len(digits)-frac]...)
	dst = append(dst, '.')
	return append(dst, digits[len(digits)-frac:]...)
}

// Sign returns -1, 0 or +1.
func (d Dec) Sign() int {
	switch {
	case d.coef == 0:
		return 0
	case d.neg:
		return -1
	}
	return 1
}

// Cmp compares d and e and returns -1, 0 or +1.
func (d Dec) Cmp(e Dec) int {
	ds, es := d.Sign(), e.Sign()
	if ds != es || ds == 0 {
		return cmpInt(ds, es)
	}
	c := cmpMagnitude(d, e)
	if ds < 0 {
		return -c
	}
	return c
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// cmpMagnitude compares |d| and |e|, both non-zero.
func cmpMagnitude(d, e Dec) int {
	dn, en := numDigits(d.coef), numDigits(e.coef)
	// The adjusted exponent (position of the leading digit) decides first.
	if c := cmpInt(dn+int(d.exp), en+int(e.exp)); c != 0 {
		return c
	}
	// Same leading position: widen the shorter coefficient (at most 19 digits).
	dc, ec := d.coef, e.coef
	if dn < en {
		dc *= pow10[en-dn]
	} else {
		ec *= pow10[dn-en]
	}
	switch {
	case dc < ec:
		return -1
	case dc > ec:
		return 1
	}
	return 0
}

func numDigits(x uint64) int {
	n := 1
	for n < len(pow10) && x >= pow10[n] {
		n++
	}
	return n
}

// Units returns d as a count of smallest units of an asset of the given scale
// (d * 10^scale), and false when that is not a whole number or its absolute
// value exceeds MaxUnits.
func (d Dec) Units(scale uint8) (int64, bool) {
	if d.coef == 0 {
		return 0, true
	}
	e := int(d.exp) + int(scale)
	var u uint64
	if e < 0 {
		if -e > pow10Max || d.coef%pow10[-e] != 0 {
			return 0, false
		}
		u = d.coef / pow10[-e]
	} else {
		if e > pow10Max {
			return 0, false
		}
		hi, lo := bits.Mul64(d.coef, pow10[e])
		if hi != 0 {
			return 0, false
		}
		u = lo
	}
	if u > uint64(MaxUnits) {
		return 0, false
	}
	if d.neg {
		return -int64(u), true
	}
	return int64(u), true
}

// MarshalJSON encodes d as a JSON string, as the contract outputs decimals.
func (d Dec) MarshalJSON() ([]byte, error) {
	b := append([]byte{'"'}, d.appendTo(nil)...)
	return append(b, '"'), nil
}

// UnmarshalJSON accepts a JSON string holding a number literal or a JSON
// integer. JSON numbers with a fraction or an exponent are rejected: binary
// floating point must not touch decimals on their way in.
func (d *Dec) UnmarshalJSON(b []byte) error {
	s := string(b)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	} else if !isJSONInteger(s) {
		return errf("invalid_number", "", "use a string for decimals")
	}
	v, err := ParseDec(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// isJSONInteger reports whether s is a JSON number without fraction or exponent.
func isJSONInteger(s string) bool {
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if len(s) == 0 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// UnitsDec returns u smallest units of an asset of the given scale as a
// Dec (u * 10^-scale), exactly. It does not allocate.
func UnitsDec(u int64, scale uint8) Dec {
	if u == 0 {
		return Dec{}
	}
	d := Dec{exp: -int16(scale), neg: u < 0}
	if u < 0 {
		d.coef = uint64(-(u + 1)) + 1 // |MinInt64| fits in a uint64
	} else {
		d.coef = uint64(u)
	}
	for d.coef%10 == 0 {
		d.coef /= 10
		d.exp++
	}
	return d
}
