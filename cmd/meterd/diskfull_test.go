//go:build linux

package main

// The full disk, through the real binary (issue 9, defect 7). meterd runs on
// a 24 MiB tmpfs the test mounts (as root; otherwise the test is skipped and
// says why), with a 4 MiB disk reserve, and a filler file takes the rest.
// Before the disk guard, the WAL write that met ENOSPC panicked the process
// (exit 2, clients saw connection resets), and a restart on the still-full
// disk retried the flush of its WAL without end, logging thousands of lines
// a second, never ready and never exiting.
//
// TestDiskFull checks, in order:
//   - writes sent while the disk fills are answered 201 (made durable on the
//     reserve) or 503 storage_full, never a reset, and the process lives;
//   - then /readyz is 503 with "storage":"disk_full", every write is 503
//     storage_full, and the wallet and the ledger are still read (200), with
//     every write acknowledged before;
//   - once the filler is removed, /readyz is 200 again by itself, the writes
//     refused before are applied as new (nothing of them was kept), and the
//     acknowledged ones are replays;
//   - killed on a full disk with the reserve in place, meterd restarts ready,
//     serving reads and refusing writes, and logs at a bounded rate;
//   - killed on a full disk with no room to recover, it exits (status 1)
//     with a message saying how much free space it needs, without hanging;
//   - with space freed, it restarts with every acknowledged write.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	diskFullTmpfsSize    = "24m"
	diskFullReserveBytes = 4 << 20
	diskFullWait         = 5 * time.Second // for /readyz to change
	diskFullLogWindow    = 3 * time.Second
	diskFullLogLinesMax  = 10 // in diskFullLogWindow on a full disk
)

// diskFull is meterd on a small tmpfs.
type diskFull struct {
	t     *testing.T
	h     *crashHarness
	mnt   string
	acked map[string]int // amounts of the top-ups answered 201, by id
}

func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a tmpfs and runs the meterd binary: skipped with -short")
	}
	if euid := os.Geteuid(); euid != 0 {
		t.Skipf("needs root to mount a small tmpfs and fill it (running as euid %d): the full-disk test is skipped", euid)
	}
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size="+diskFullTmpfsSize); err != nil {
		t.Skipf("mounting a %s tmpfs on %s failed (%v): the full-disk test is skipped", diskFullTmpfsSize, mnt, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", mnt, err)
		}
	})
	bin := buildMeterd(t)
	d := &diskFull{t: t, mnt: mnt, acked: map[string]int{}, h: &crashHarness{t: t, bin: bin, dir: filepath.Join(mnt, "data"),
		args: []string{"--shards", "2", "--disk-reserve-bytes", fmt.Sprint(diskFullReserveBytes)}}}
	t.Cleanup(func() { // before the unmount
		if p := d.h.proc; p != nil && p.running() {
			p.cmd.Process.Kill()
			<-p.done
		}
	})

	d.h.start()
	d.h.mustDo("PUT", "/v1/customers/c1", []byte(`{}`), 201)
	d.topUp("t0", 1000, 201)
	d.event("e0", "recorded")

	// The disk fills while writes come in: each is answered, 201 or 503.
	d.fill("filler1")
	before := len(d.acked)
	for i := range 20 {
		d.topUp(fmt.Sprintf("b%d", i), 1, 201, 503)
	}
	t.Logf("%d of 20 top-ups sent as the disk filled were acknowledged (made durable on the reserve)", len(d.acked)-before)
	d.waitReady(false)
	d.topUp("r1", 1, 503)
	d.event("r2", "")
	if status, code := d.write("PUT", "/v1/customers/c2", `{}`); status != 503 || code != "storage_full" {
		d.fatalf("PUT a customer on a full disk: %d %s, want 503 storage_full", status, code)
	}
	d.checkReads()

	// Space is freed: writes resume by themselves.
	d.unfill("filler1")
	d.waitReady(true)
	d.topUp("r1", 1, 201) // refused before, so new now
	d.event("r2", "recorded")
	d.event("e0", "duplicate")
	for id, amount := range d.acked {
		d.topUp(id, amount, 200) // acknowledged: replayed
	}
	d.checkReads()

	// Killed on a full disk, reserve in place: restarts ready to read.
	d.fill("filler2")
	d.waitReady(false)
	d.h.kill()
	d.h.start()
	d.waitReady(false)
	d.checkReads()
	d.topUp("r3", 1, 503)
	d.checkLogRate()

	// Killed on a full disk with no room left to recover: a clean exit.
	d.h.kill()
	d.fill("filler3")
	d.startExpectingExit()

	// Space freed: everything acknowledged is there.
	d.unfill("filler2")
	d.unfill("filler3")
	d.h.start()
	d.waitReady(true)
	d.checkReads()
	d.topUp("r3", 1, 201)
	d.h.stop()
}

func (d *diskFull) fatalf(format string, args ...any) {
	d.t.Helper()
	out := ""
	if d.h.proc != nil {
		out = d.h.proc.log.tail()
	}
	d.t.Fatalf(format+"; meterd's output:\n%s", append(args, out)...)
}

// write sends a request that must be answered (a connection reset or a dead
// process fails the test) and returns the status and the error code.
func (d *diskFull) write(method, path, body string) (int, string) {
	d.t.Helper()
	status, b, err := d.h.do(method, path, []byte(body))
	if err != nil {
		d.fatalf("%s %s: no answer (%v); process running: %v", method, path, err, d.h.proc.running())
	}
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	json.Unmarshal(b, &e)
	return status, e.Error.Code
}

// topUp sends a top-up of amount CREDITS and requires one of the statuses;
// a 503 must be storage_full. 201s are remembered as acknowledged.
func (d *diskFull) topUp(id string, amount int, want ...int) {
	d.t.Helper()
	status, code := d.write("POST", "/v1/customers/c1/topups", fmt.Sprintf(`{"id":%q,"asset":"CREDITS","amount":"%d"}`, id, amount))
	ok := false
	for _, w := range want {
		ok = ok || status == w
	}
	switch {
	case !ok:
		d.fatalf("top-up %s: status %d (%s), want one of %v", id, status, code, want)
	case status == 503 && code != "storage_full":
		d.fatalf("top-up %s: 503 %s, want storage_full", id, code)
	case status == 201:
		d.acked[id] = amount
	}
}

// event sends one usage event (no price: recorded). want "" means refused:
// the whole request answered 503 storage_full.
func (d *diskFull) event(id, want string) {
	d.t.Helper()
	body := fmt.Sprintf(`{"events":[{"id":%q,"customer_id":"c1","event_type":"page_viewed"}]}`, id)
	status, b, err := d.h.do("POST", "/v1/events", []byte(body))
	if err != nil {
		d.fatalf("event %s: no answer (%v)", id, err)
	}
	if want == "" {
		var e struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		json.Unmarshal(b, &e)
		if status != 503 || e.Error.Code != "storage_full" {
			d.fatalf("event %s on a full disk: %d %s, want 503 storage_full", id, status, b)
		}
		return
	}
	var out struct {
		Results []struct {
			Status string `json:"status"`
		} `json:"results"`
	}
	if status != 200 || json.Unmarshal(b, &out) != nil || len(out.Results) != 1 || out.Results[0].Status != want {
		d.fatalf("event %s: %d %s, want 200 %s", id, status, b, want)
	}
}

// checkReads reads the wallet and the ledger (200 whatever the disk) and
// checks that they hold exactly the acknowledged top-ups.
func (d *diskFull) checkReads() {
	d.t.Helper()
	want := 0
	for _, amount := range d.acked {
		want += amount
	}
	if got := d.h.available("c1")["default:CREDITS"]; got != fmt.Sprint(want) {
		d.fatalf("available %s, want %d (the acknowledged top-ups %v)", got, want, d.acked)
	}
	topups := map[string]bool{}
	for _, e := range readLedger[struct {
		Type      string `json:"type"`
		Reference string `json:"reference"`
	}](d.h, "c1") {
		if e.Type == "topup" {
			topups[e.Reference] = true
		}
	}
	if len(topups) != len(d.acked) {
		d.fatalf("ledger top-ups %v, want the acknowledged %v", topups, d.acked)
	}
	for id := range d.acked {
		if !topups[id] {
			d.fatalf("acknowledged top-up %s is not in the ledger %v", id, topups)
		}
	}
}

// waitReady waits for /readyz to say ready (200, storage open) or not
// (503, storage disk_full).
func (d *diskFull) waitReady(ready bool) {
	d.t.Helper()
	deadline := time.Now().Add(diskFullWait)
	for {
		status, b, err := d.h.do("GET", "/readyz", nil)
		if err != nil {
			d.fatalf("/readyz: no answer (%v)", err)
		}
		switch {
		case ready && status == 200 && strings.Contains(string(b), `"storage":"open"`):
			return
		case !ready && status == 503 && strings.Contains(string(b), `"storage":"disk_full"`):
			return
		}
		if time.Now().After(deadline) {
			d.fatalf("/readyz still %d %s after %v (want ready=%v)", status, b, diskFullWait, ready)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkLogRate counts the log lines of diskFullLogWindow on the full disk.
func (d *diskFull) checkLogRate() {
	d.t.Helper()
	before := d.logLines()
	time.Sleep(diskFullLogWindow)
	n := d.logLines() - before
	if n > diskFullLogLinesMax {
		d.fatalf("%d log lines in %v on a full disk, want at most %d", n, diskFullLogWindow, diskFullLogLinesMax)
	}
	d.t.Logf("%d log lines in %v after a restart on a full disk", n, diskFullLogWindow)
}

func (d *diskFull) logLines() int {
	l := d.h.proc.log
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), "\n")
}

// startExpectingExit starts meterd on a disk without room to recover: it
// must exit with status 1 and say how much space it needs, neither becoming
// ready nor hanging, and log at a bounded rate meanwhile.
func (d *diskFull) startExpectingExit() {
	d.t.Helper()
	h := d.h
	p := &crashProc{addr: freeLoopbackAddr(d.t), log: &crashLog{ready: make(chan struct{})}, done: make(chan struct{})}
	p.cmd = exec.Command(h.bin, append([]string{"--data-dir", h.dir, "--listen", p.addr}, h.args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "METERD_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		d.t.Fatalf("starting meterd: %v", err)
	}
	h.proc = p
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	select {
	case <-p.done:
	case <-p.log.ready:
		d.fatalf("meterd became ready on a full disk with no room to recover")
	case <-time.After(crashStartTimeout):
		p.cmd.Process.Kill()
		<-p.done
		d.t.Fatalf("meterd neither became ready nor exited in %v on a full disk (%d log lines); its output ends:\n%s",
			crashStartTimeout, strings.Count(p.log.tail(), "\n"), p.log.tail())
	}
	var exit *exec.ExitError
	if !errors.As(p.err, &exit) || exit.ExitCode() != 1 {
		d.fatalf("meterd on a full disk: %v, want exit status 1", p.err)
	}
	if out := p.log.tail(); !strings.Contains(out, "needs about") || strings.Count(out, "\n") > diskFullLogLinesMax {
		d.fatalf("meterd on a full disk exited without saying how much space it needs, or logged too much")
	}
}

// fill writes a file on the tmpfs until it is full.
func (d *diskFull) fill(name string) {
	d.t.Helper()
	f, err := os.OpenFile(filepath.Join(d.mnt, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for _, size := range []int{64 << 10, 4 << 10, 512} { // smaller writes fill the last pages
		for {
			if _, err := f.Write(buf[:size]); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					d.t.Fatal(err)
				}
				break
			}
		}
	}
}

func (d *diskFull) unfill(name string) {
	d.t.Helper()
	if err := os.Remove(filepath.Join(d.mnt, name)); err != nil {
		d.t.Fatal(err)
	}
}
