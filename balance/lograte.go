package balance

import (
	"sync"
	"time"
)

// LogLimiter lets one log line through per interval and counts the ones it
// held back, so that a condition that repeats without end (a disk that stays
// full, a Pebble flush retried at once after each failure) logs at a bounded
// rate: at most one line per interval and per limiter, however often it is
// asked. The line that gets through says how many were held back.
type LogLimiter struct {
	Every   time.Duration // 0: logEvery
	mu      sync.Mutex
	last    time.Time
	skipped int
}

// logEvery is the interval of the limiters of the storage paths.
const logEvery = 5 * time.Second

// Allow reports whether to log now, and how many lines were held back since
// the last one logged.
func (l *LogLimiter) Allow(now time.Time) (skipped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	every := l.Every
	if every == 0 {
		every = logEvery
	}
	if !l.last.IsZero() && now.Sub(l.last) < every {
		l.skipped++
		return 0, false
	}
	skipped, l.skipped, l.last = l.skipped, 0, now
	return skipped, true
}
