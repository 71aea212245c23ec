package balance

import (
	"math"
	"time"
)

// The dedup window, stated once. Both the decoder (ingest) and the shard
// applying an event use these functions, so that no instant can accept an
// event whose idempotency record may be gone:
//
//  1. An event is inside the window at now iff
//     now-window <= occurred_at <= now+FutureSkewMax (both ends closed).
//     The shard re-checks the lower end with its own clock when it applies
//     the event, after its idempotency look-up: whatever clock the caller
//     decoded with, an event older than the window at apply time is
//     refused out_of_window, never charged.
//  2. So the last instant an event can be accepted is occurred_at+window.
//     Its record is kept until RecordExpireAt: at least DedupMargin past
//     that instant, and never before recorded_at+window+FutureSkewMax+
//     DedupMargin. A record counts as absent from its ExpireAt on
//     (RecordExpired).
//
// The proof is one line: the shard accepts at t only if t <= occurred_at+
// window < occurred_at+window+DedupMargin <= ExpireAt, and looks the record
// up at that same t, so it finds the record. It rests on nothing about
// clocks: neither the decoder's clock nor how far the shard's moved between
// the record and the resend.

// FutureSkewMax is how far ahead of the engine's clock an event's
// occurred_at may be.
const FutureSkewMax = 5 * time.Minute

// DedupMargin is how long a record outlives the last instant its event can
// be accepted. One nanosecond would make the rule sound (the window is
// closed, expiry is not); a second more lets a resend that the decoder
// accepted in the last second of its window, and that the shard applies
// within a second (queue and commit lag), be answered duplicate with its
// original charges rather than out_of_window.
const DedupMargin = time.Second

// OccurredTooOld reports whether an event that occurred at occurred (unix
// ns) is older than the dedup window at now: occurred < now-window. An event
// exactly window old is inside it.
func OccurredTooOld(occurred, now int64, window time.Duration) bool {
	return occurred < subSat(now, int64(window))
}

// OccurredInFuture reports whether occurred is further ahead of now than
// skew allows: occurred > now+skew.
func OccurredInFuture(occurred, now int64, skew time.Duration) bool {
	return occurred > addSat(now, int64(skew))
}

// RecordExpireAt returns when the idempotency record of an event that
// occurred at occurred, recorded at recordedAt, may be dropped: the later of
// occurred+window and recordedAt+FutureSkewMax+window, plus DedupMargin.
// The first term keeps the record for as long as its event is accepted even
// when the clock that let the event in was ahead of the shard's (or allowed
// more skew); the second covers records without an occurred_at (top-ups,
// adjustments: occurred is 0).
func RecordExpireAt(recordedAt, occurred int64, window time.Duration) int64 {
	last := max(addSat(recordedAt, int64(FutureSkewMax)), occurred)
	return addSat(addSat(last, int64(window)), int64(DedupMargin))
}

// RecordExpired reports whether a record that expires at expireAt counts as
// absent at now.
func RecordExpired(expireAt, now int64) bool { return expireAt <= now }

// addSat is a+b for b >= 0, saturated at math.MaxInt64.
func addSat(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
}

// subSat is a-b for b >= 0, saturated at math.MinInt64.
func subSat(a, b int64) int64 {
	if d := a - b; d <= a {
		return d
	}
	return math.MinInt64
}
