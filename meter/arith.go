package meter

import (
	"math/big"
	"math/bits"
)

// u128 is an unsigned 128-bit integer. Rating works in sub-units
// (10^-18 of an asset's smallest unit); MaxUnits*SubUnitsPerUnit = 10^36
// needs 120 bits, so every in-bounds charge fits.
type u128 struct{ hi, lo uint64 }

// fineMax is MaxUnits expressed in sub-units: the largest charge rating
// produces.
var fineMax = func() u128 {
	hi, lo := bits.Mul64(uint64(MaxUnits), SubUnitsPerUnit)
	return u128{hi, lo}
}()

// pow10 holds 10^0 .. 10^19, every power of ten that fits in a uint64.
var pow10 = func() (t [20]uint64) {
	t[0] = 1
	for i := 1; i < len(t); i++ {
		t[i] = t[i-1] * 10
	}
	return t
}()

const pow10Max = len(pow10) - 1 // 19

func mul64(a, b uint64) u128 {
	hi, lo := bits.Mul64(a, b)
	return u128{hi, lo}
}

func (x u128) isZero() bool { return x.hi == 0 && x.lo == 0 }

func (x u128) greater(y u128) bool { return x.hi > y.hi || (x.hi == y.hi && x.lo > y.lo) }

// mul returns x*m and false when the product does not fit in 128 bits.
func (x u128) mul(m uint64) (u128, bool) {
	hi1, lo := bits.Mul64(x.lo, m)
	hi2, mid := bits.Mul64(x.hi, m)
	hi, carry := bits.Add64(hi1, mid, 0)
	if hi2 != 0 || carry != 0 {
		return u128{}, false
	}
	return u128{hi, lo}, true
}

// add returns x+y and false on overflow.
func (x u128) add(y u128) (u128, bool) {
	lo, c := bits.Add64(x.lo, y.lo, 0)
	hi, c := bits.Add64(x.hi, y.hi, c)
	return u128{hi, lo}, c == 0
}

// div returns floor(x/d); d must not be zero.
func (x u128) div(d uint64) u128 {
	if d == 1 {
		return x
	}
	qhi := x.hi / d
	r := x.hi % d
	qlo, _ := bits.Div64(r, x.lo, d)
	return u128{qhi, qlo}
}

// mulPow10 returns x*10^n and false on overflow.
func (x u128) mulPow10(n int) (u128, bool) {
	ok := true
	for n > 0 && ok {
		c := min(n, pow10Max)
		x, ok = x.mul(pow10[c])
		n -= c
	}
	return x, ok
}

// divPow10 returns floor(x/10^n). Floor division composes
// (floor(floor(x/a)/b) == floor(x/(a*b)) for positive integers), so the
// divisor is applied in uint64-sized steps.
func (x u128) divPow10(n int) u128 {
	for n > 0 && !x.isZero() {
		c := min(n, pow10Max)
		x = x.div(pow10[c])
		n -= c
	}
	return x
}

// fine splits a sub-unit count (at most fineMax) into units and sub-units.
func (x u128) fine() Fine {
	// x <= 10^36 so x.hi < 10^18 = SubUnitsPerUnit: Div64 cannot overflow.
	q, r := bits.Div64(x.hi, x.lo, SubUnitsPerUnit)
	return Fine{Units: int64(q), Sub: r}
}

// scaledFloor returns floor(a * b * 10^e / d) in sub-units, and false when
// the result exceeds fineMax. a, b and d are plain integers; d > 0. It uses
// 128-bit arithmetic and falls back to math/big only when an intermediate
// product does not fit in 128 bits.
func scaledFloor(a, b uint64, e int, d uint64) (u128, bool) {
	if a == 0 || b == 0 {
		return u128{}, true
	}
	x := mul64(a, b)
	if e >= 0 {
		y, ok := x.mulPow10(e)
		if !ok {
			return scaledFloorBig(a, b, e, d)
		}
		x = y.div(d)
	} else {
		x = x.div(d).divPow10(-e)
	}
	if x.greater(fineMax) {
		return u128{}, false
	}
	return x, true
}

var (
	bigTen     = big.NewInt(10)
	bigFineMax = new(big.Int).Exp(bigTen, big.NewInt(36), nil)
)

// scaledFloorBig is the slow, exact fallback of scaledFloor for e >= 0.
func scaledFloorBig(a, b uint64, e int, d uint64) (u128, bool) {
	n := new(big.Int).SetUint64(a)
	n.Mul(n, new(big.Int).SetUint64(b))
	n.Mul(n, new(big.Int).Exp(bigTen, big.NewInt(int64(e)), nil))
	n.Quo(n, new(big.Int).SetUint64(d))
	if n.Cmp(bigFineMax) > 0 {
		return u128{}, false
	}
	lo := n.Uint64()
	n.Rsh(n, 64)
	return u128{n.Uint64(), lo}, true
}
