package bench

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// A command with spaces and a ')' of its own; utime 150, stime 50,
	// cutime 7, cstime 3 ticks.
	line := []byte("4242 (post gres: a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 50 7 3 20 0 1 0 100 1000 10 18446744073709551615\n")
	got, err := parseStatCPU(line)
	if err != nil || got != 2100*time.Millisecond {
		t.Errorf("got %v %v, want 2.1s", got, err)
	}
	for _, bad := range []string{"no parens", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 -1 2 3 4 5"} {
		if _, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestCPUMeter burns CPU in this process and sees it measured.
func TestCPUMeter(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	m := StartCPU(SelfPIDs)
	x := 0
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
		x++
	}
	used, err := m.Stop()
	if err != nil || used < 100*time.Millisecond || used > 5*time.Second {
		t.Errorf("burned 300 ms of CPU, measured %v %v (%d)", used, err, x)
	}
	if _, err := StartCPU(func() []int { return []int{-1} }).Stop(); err == nil {
		t.Error("no process readable: no error")
	}
}
