package meter

import (
	"math/bits"
	"strconv"
)

// MaxUnits bounds the absolute value of any amount, in smallest units of its
// asset. 10^18 units keeps every sum of two amounts inside an int64 and every
// amount in sub-units (×10^18) inside 120 bits.
const MaxUnits int64 = 1_000_000_000_000_000_000

// unitsTextBytesMax bounds the length of an amount literal.
const unitsTextBytesMax = 64

// ParseUnits parses a decimal amount into a count of smallest units of an
// asset with the given scale (0-9): "14.566678" at scale 6 is 14566678.
//
// The accepted syntax is an optional '-', one or more digits, and optionally
// a '.' followed by 1 to scale digits; the text of a JSON integer is
// therefore accepted too. A '+' sign, an exponent, spaces, an empty string, a
// lone '.', and more fractional digits than the scale allows (even trailing
// zeros: "1.50" at scale 1) are rejected, as is an absolute value above
// MaxUnits units. Errors are *Error with code "invalid_amount". ParseUnits
// does not allocate unless it fails.
func ParseUnits(s string, scale uint8) (int64, error) {
	if scale > 9 {
		return 0, errf("invalid_amount", "", "asset scale must be 0 to 9")
	}
	if len(s) == 0 {
		return 0, errf("invalid_amount", "", "amount is empty")
	}
	if len(s) > unitsTextBytesMax {
		return 0, errf("invalid_amount", "", "amount is longer than 64 characters")
	}
	i := 0
	neg := false
	switch s[0] {
	case '-':
		neg = true
		i++
	case '+':
		return 0, errf("invalid_amount", "", "amount must not have a '+' sign")
	}
	intStart := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	intEnd := i
	if intEnd == intStart {
		if i < len(s) && s[i] == '.' {
			return 0, errf("invalid_amount", "", "amount needs a digit before the decimal point")
		}
		return 0, errf("invalid_amount", "", "amount must be digits with an optional '-' and decimal point")
	}
	fracStart, fracEnd := i, i
	if i < len(s) && s[i] == '.' {
		i++
		fracStart = i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		fracEnd = i
		if fracEnd == fracStart {
			return 0, errf("invalid_amount", "", "amount needs digits after the decimal point")
		}
	}
	if i < len(s) {
		switch s[i] {
		case 'e', 'E':
			return 0, errf("invalid_amount", "", "amount must be a plain decimal, without an exponent")
		case ' ', '\t', '\n', '\r':
			return 0, errf("invalid_amount", "", "amount must not contain spaces")
		}
		return 0, errf("invalid_amount", "", "amount contains an unexpected character "+strconv.QuoteRune(rune(s[i])))
	}
	if frac := fracEnd - fracStart; frac > int(scale) {
		if scale == 0 {
			return 0, errf("invalid_amount", "", "amount must be a whole number: the asset has no decimal places")
		}
		return 0, errf("invalid_amount", "", "amount has "+strconv.Itoa(frac)+" digits after the decimal point; the asset allows at most "+strconv.Itoa(int(scale)))
	}
	var whole uint64
	for j := intStart; j < intEnd; j++ {
		whole = whole*10 + uint64(s[j]-'0')
		if whole > uint64(MaxUnits) {
			return 0, errTooLarge()
		}
	}
	hi, u := bits.Mul64(whole, pow10[scale])
	if hi != 0 || u > uint64(MaxUnits) {
		return 0, errTooLarge()
	}
	var frac uint64
	for j := fracStart; j < fracEnd; j++ {
		frac = frac*10 + uint64(s[j]-'0')
	}
	u += frac * pow10[int(scale)-(fracEnd-fracStart)] // < 10^18 + 10^9: no wrap
	if u > uint64(MaxUnits) {
		return 0, errTooLarge()
	}
	if neg {
		return -int64(u), nil
	}
	return int64(u), nil
}

// errTooLarge is fresh on every call: callers may set its Field.
func errTooLarge() *Error {
	return errf("invalid_amount", "", "amount exceeds the largest amount of 10^18 smallest units")
}

// FormatUnits returns the minimal decimal form of u smallest units of an
// asset with the given scale: "14.566678", "0.31", "0", "-1.5", "40".
func FormatUnits(u int64, scale uint8) string {
	var buf [32]byte
	return string(AppendUnits(buf[:0], u, scale))
}

// AppendUnits appends FormatUnits(u, scale) to dst. It does not allocate when
// dst has room.
func AppendUnits(dst []byte, u int64, scale uint8) []byte {
	abs := uint64(u)
	if u < 0 {
		abs = -abs
	}
	var buf [20]byte
	digits := strconv.AppendUint(buf[:0], abs, 10)
	return appendPoint(dst, u < 0, digits, int(scale))
}

// FormatFine returns the exact decimal form of a fine amount of an asset with
// the given scale, with up to scale+18 fractional digits and no trailing
// zeros: Fine{Units: 0, Sub: 3e17} at scale 6 is "0.0000003".
func FormatFine(f Fine, scale uint8) string {
	// A Sub of a whole unit or more is not a valid Fine; normalize it rather
	// than drop it.
	f.Units += int64(f.Sub / SubUnitsPerUnit)
	neg := f.Units < 0
	abs := uint64(f.Units)
	sub := f.Sub % SubUnitsPerUnit
	if neg {
		// Units + Sub/10^18 is negative: its magnitude is
		// (-Units-1) + (10^18-Sub)/10^18, or -Units when Sub is zero.
		abs = -abs
		if sub != 0 {
			abs--
			sub = SubUnitsPerUnit - sub
		}
	}
	var buf [40]byte
	digits := buf[:0]
	if abs != 0 {
		digits = strconv.AppendUint(digits, abs, 10)
	}
	var subBuf [20]byte
	subDigits := strconv.AppendUint(subBuf[:0], sub, 10)
	for range 18 - len(subDigits) {
		digits = append(digits, '0')
	}
	digits = append(digits, subDigits...)
	// Strip leading zeros: appendPoint pads as needed.
	for len(digits) > 1 && digits[0] == '0' {
		digits = digits[1:]
	}
	if len(digits) == 1 && digits[0] == '0' {
		neg = false
	}
	return string(appendPoint(nil, neg, digits, int(scale)+18))
}

// appendPoint appends the integer written in digits (no leading zeros, or
// just "0") divided by 10^frac, in minimal form.
func appendPoint(dst []byte, neg bool, digits []byte, frac int) []byte {
	if neg {
		dst = append(dst, '-')
	}
	var intPart, fracPart []byte
	pad := 0
	if frac >= len(digits) {
		pad = frac - len(digits)
		fracPart = digits
	} else {
		intPart = digits[:len(digits)-frac]
		fracPart = digits[len(digits)-frac:]
	}
	for len(fracPart) > 0 && fracPart[len(fracPart)-1] == '0' {
		fracPart = fracPart[:len(fracPart)-1]
	}
	if len(intPart) == 0 {
		dst = append(dst, '0')
	} else {
		dst = append(dst, intPart...)
	}
	if len(fracPart) == 0 {
		return dst
	}
	dst = append(dst, '.')
	for range pad {
		dst = append(dst, '0')
	}
	return append(dst, fracPart...)
}
