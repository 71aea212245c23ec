package wallet

import (
	"math/bits"
	"strconv"
	"time"
)

// PeriodUnit is the length of a plan period.
type PeriodUnit uint8

// Period units. Days and weeks are fixed lengths of UTC time; months and
// years are calendar-aware: a period starts on the anchor's day of the month
// (clamped to the month's last day: an anchor on the 31st starts February's
// period on the 28th or 29th) at the anchor's time of day, in UTC.
const (
	PeriodDay PeriodUnit = iota + 1
	PeriodWeek
	PeriodMonth
	PeriodYear
)

// ParsePeriodUnit parses "day", "week", "month" or "year".
func ParsePeriodUnit(s string) (PeriodUnit, bool) {
	switch s {
	case "day":
		return PeriodDay, true
	case "week":
		return PeriodWeek, true
	case "month":
		return PeriodMonth, true
	case "year":
		return PeriodYear, true
	}
	return 0, false
}

// String returns the contract name of the unit.
func (p PeriodUnit) String() string {
	switch p {
	case PeriodDay:
		return "day"
	case PeriodWeek:
		return "week"
	case PeriodMonth:
		return "month"
	case PeriodYear:
		return "year"
	}
	return "period(" + strconv.Itoa(int(p)) + ")"
}

// Anchors and period starts are kept within these years, where unix
// nanoseconds fit in an int64 with room to spare.
var (
	periodTimeMin = time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	periodTimeMax = time.Date(2261, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
)

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// periodStart returns the start of period k (anchor + k periods), clamped to
// [periodTimeMin, periodTimeMax].
func periodStart(anchor int64, unit PeriodUnit, k int64) int64 {
	switch unit {
	case PeriodDay, PeriodWeek:
		d := int64(24 * time.Hour)
		if unit == PeriodWeek {
			d *= 7
		}
		lo, hi := floorDiv(periodTimeMin-anchor, d), floorDiv(periodTimeMax-anchor, d)
		if k < lo {
			return periodTimeMin
		}
		if k > hi {
			return periodTimeMax
		}
		return anchor + k*d
	}
	step := int64(1)
	if unit == PeriodYear {
		step = 12
	}
	if k > 12*400 || k < -12*400 {
		if k < 0 {
			return periodTimeMin
		}
		return periodTimeMax
	}
	a := time.Unix(0, anchor).UTC()
	months := int64(a.Month()-1) + k*step
	y := int64(a.Year()) + floorDiv(months, 12)
	m := time.Month(months-floorDiv(months, 12)*12) + 1
	day := a.Day()
	if last := daysIn(int(y), m); day > last {
		day = last
	}
	t := time.Date(int(y), m, day, a.Hour(), a.Minute(), a.Second(), a.Nanosecond(), time.UTC).UnixNano()
	return min(max(t, periodTimeMin), periodTimeMax)
}

func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// periodIndex returns the k of the period holding t: the largest k with
// periodStart(k) <= t.
func periodIndex(anchor int64, unit PeriodUnit, t int64) int64 {
	var k int64
	switch unit {
	case PeriodDay, PeriodWeek:
		d := int64(24 * time.Hour)
		if unit == PeriodWeek {
			d *= 7
		}
		return floorDiv(t-anchor, d)
	case PeriodMonth:
		a, b := time.Unix(0, anchor).UTC(), time.Unix(0, t).UTC()
		k = int64(b.Year()-a.Year())*12 + int64(b.Month()-a.Month())
	default:
		a, b := time.Unix(0, anchor).UTC(), time.Unix(0, t).UTC()
		k = int64(b.Year() - a.Year())
	}
	for i := 0; i < 4 && periodStart(anchor, unit, k) > t; i++ {
		k--
	}
	for i := 0; i < 4 && periodStart(anchor, unit, k+1) <= t; i++ {
		k++
	}
	return k
}

// prorated is amount * part / whole, rounded down; 0 <= part <= whole,
// whole > 0, amount >= 0. It is exact for any int64 amount (128-bit).
func prorated(amount, part, whole int64) int64 {
	hi, lo := bits.Mul64(uint64(amount), uint64(part))
	q, _ := bits.Div64(hi, lo, uint64(whole))
	return int64(q)
}
