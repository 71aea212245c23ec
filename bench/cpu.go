package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// CPU accounting from /proc/<pid>/stat: user and system time of a process
// (all its threads), plus that of its children it has waited for (cutime,
// cstime), so that PostgreSQL backends that exit during a run still count
// through the postmaster. Linux only; elsewhere the numbers are reported as
// zero with an error.

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every
// Linux architecture Go supports (sysconf(_SC_CLK_TCK) has returned 100
// since 2.6 for user space, whatever the kernel's HZ).
const clockTicks = 100

// ProcCPU returns the CPU time pid and its waited-for children have used.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// parseStatCPU reads fields 14-17 (utime, stime, cutime, cstime) of a
// /proc/<pid>/stat line. The second field, the command, is in parentheses
// and may hold spaces and parentheses itself: fields are counted from the
// last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, fmt.Errorf("proc stat: no command field in %q", b)
	}
	fields := bytes.Fields(b[end+1:])
	// fields[0] is field 3 (state): utime is field 14, so fields[11].
	const utime = 14 - 3
	if len(fields) < utime+4 {
		return 0, fmt.Errorf("proc stat: %d fields after the command, want at least %d", len(fields), utime+4)
	}
	var ticks int64
	for _, f := range fields[utime : utime+4] {
		n, err := strconv.ParseInt(string(f), 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("proc stat: time field %q", f)
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / clockTicks), nil
}

// CPUMeter measures the CPU a set of processes uses between Start and Stop.
// The set is asked for again at Stop, so that processes started during the
// run (a connection's backend) count from zero; one that exits during the run
// is counted through its parent's cutime and cstime once reaped, and is
// otherwise lost (a few ticks at most for the servers here).
type CPUMeter struct {
	pids   func() []int
	before map[int]time.Duration
}

// StartCPU starts measuring the processes pids returns.
func StartCPU(pids func() []int) *CPUMeter {
	m := &CPUMeter{pids: pids, before: map[int]time.Duration{}}
	for _, pid := range pids() {
		if t, err := ProcCPU(pid); err == nil {
			m.before[pid] = t
		}
	}
	return m
}

// Stop returns the CPU used since StartCPU, and an error when no process of
// the set could be read (no /proc, or none alive).
func (m *CPUMeter) Stop() (time.Duration, error) {
	var used time.Duration
	var lastErr error
	read := 0
	for _, pid := range m.pids() {
		t, err := ProcCPU(pid)
		if err != nil {
			lastErr = err
			continue
		}
		read++
		used += max(0, t-m.before[pid])
	}
	if read == 0 {
		if lastErr == nil {
			lastErr = fmt.Errorf("cpu: no process to measure")
		}
		return 0, lastErr
	}
	return used, nil
}

// SelfPIDs is the process set of the generator: this process.
func SelfPIDs() []int { return []int{os.Getpid()} }
