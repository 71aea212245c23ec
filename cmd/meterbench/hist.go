package main

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, in the manner of HdrHistogram: values below
// histLinearMax are counted exactly; above, each power of two is cut into
// histSubBuckets equal sub-buckets, so a reported value is never more than
// 1/histSubBuckets (1.6 %) above the true one. Values are nanoseconds.
const (
	histSubBits    = 6
	histSubBuckets = 1 << histSubBits       // 64 linear sub-buckets per power of two
	histLinearMax  = 2 * histSubBuckets     // values 0..127 have a bucket each
	histExpMax     = 63 - (histSubBits + 1) // the highest shift of a non-negative int64
	histBuckets    = histLinearMax + histExpMax*histSubBuckets
)

// hist records latencies. It is not safe for concurrent use: each client
// owns one and they are merged at the end.
type hist struct {
	counts [histBuckets]uint64
	n      uint64
	sumNs  float64
	minNs  int64
	maxNs  int64
}

// histIndex returns the bucket of v (v >= 0).
func histIndex(v int64) int {
	if v < histLinearMax {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - (histSubBits + 1) // >= 1
	sub := int(v >> shift)                             // in [histSubBuckets, 2*histSubBuckets)
	return histLinearMax + (shift-1)*histSubBuckets + sub - histSubBuckets
}

// histUpper returns the highest value that falls in bucket i.
func histUpper(i int) int64 {
	if i < histLinearMax {
		return int64(i)
	}
	shift := (i-histLinearMax)/histSubBuckets + 1
	sub := int64((i-histLinearMax)%histSubBuckets + histSubBuckets)
	return (sub+1)<<shift - 1
}

func (h *hist) record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[histIndex(v)]++
	if h.n == 0 || v < h.minNs {
		h.minNs = v
	}
	if v > h.maxNs {
		h.maxNs = v
	}
	h.n++
	h.sumNs += float64(v)
}

func (h *hist) merge(o *hist) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.minNs < h.minNs {
		h.minNs = o.minNs
	}
	if o.maxNs > h.maxNs {
		h.maxNs = o.maxNs
	}
	h.n += o.n
	h.sumNs += o.sumNs
}

// quantile returns the value at quantile q (0..1]: the upper bound of the
// bucket holding the ceil(q*n)-th smallest value, capped at the maximum.
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	rank = min(rank, h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(histUpper(i), h.maxNs))
		}
	}
	return time.Duration(h.maxNs)
}

func (h *hist) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sumNs / float64(h.n))
}
