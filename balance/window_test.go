package balance

import (
	"math"
	"testing"
	"time"
)

// TestWindowRule pins the rule of window.go at its edges: the window is
// closed at both ends, a record outlives its event's last acceptable
// instant by DedupMargin, and nothing overflows at the ends of int64.
func TestWindowRule(t *testing.T) {
	const w = 24 * time.Hour
	now := time.Date(2026, 6, 2, 0, 5, 0, 0, time.UTC).UnixNano()
	if OccurredTooOld(now-int64(w), now, w) || !OccurredTooOld(now-int64(w)-1, now, w) {
		t.Error("an event exactly window old must be inside it, one 1 ns older outside")
	}
	if OccurredInFuture(now+int64(FutureSkewMax), now, FutureSkewMax) || !OccurredInFuture(now+int64(FutureSkewMax)+1, now, FutureSkewMax) {
		t.Error("an event exactly FutureSkewMax ahead must be inside the window, one 1 ns further outside")
	}

	// The case: recorded at 00:00, occurred at 00:05 (the skew's
	// end); accepted up to and including 00:05 the next day.
	rec := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	occ := rec + int64(FutureSkewMax)
	exp := RecordExpireAt(rec, occ, w)
	if exp != occ+int64(w)+int64(DedupMargin) || RecordExpired(exp, occ+int64(w)) || !RecordExpired(exp, exp) {
		t.Errorf("expire at %d: want the record kept through %d and gone at %d", exp, occ+int64(w), occ+int64(w)+int64(DedupMargin))
	}
	// A clock ahead of the shard's let in an event further ahead than the
	// skew: its record is kept for its whole window.
	if late := rec + int64(FutureSkewMax) + int64(time.Minute); RecordExpireAt(rec, late, w) <= late+int64(w) {
		t.Error("the record of an event let in by a clock ahead of the shard's expires inside its window")
	}
	// Top-ups and adjustments have no occurred_at.
	if got := RecordExpireAt(rec, 0, w); got != rec+int64(FutureSkewMax)+int64(w)+int64(DedupMargin) {
		t.Errorf("record without occurred_at expires at %d", got)
	}

	// Saturation.
	if OccurredTooOld(math.MinInt64, math.MinInt64+5, w) {
		t.Error("now-window underflowed")
	}
	if OccurredInFuture(math.MaxInt64, math.MaxInt64-5, FutureSkewMax) {
		t.Error("now+skew overflowed")
	}
	if got := RecordExpireAt(rec, math.MaxInt64-5, w); got != math.MaxInt64 {
		t.Errorf("RecordExpireAt near the end of int64 = %d, want it saturated", got)
	}
}
