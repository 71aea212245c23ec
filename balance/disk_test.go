package balance

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/meterd/meterd/balance/wallet"
)

// faultFS fails writes to WAL files with ENOSPC on demand.
type faultFS struct {
	vfs.FS
	walFails atomic.Int64 // WAL writes still to fail; -1: all of them
}

func (f *faultFS) fail() bool {
	for {
		n := f.walFails.Load()
		switch {
		case n < 0:
			return true
		case n == 0:
			return false
		case f.walFails.CompareAndSwap(n, n-1):
			return true
		}
	}
}

func (f *faultFS) wrap(name string, file vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return file, err
	}
	return faultFile{File: file, fs: f, name: name}, nil
}

func (f *faultFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.Create(name, c)
	return f.wrap(name, file, err)
}

func (f *faultFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.ReuseForWrite(oldname, newname, c)
	return f.wrap(newname, file, err)
}

type faultFile struct {
	vfs.File
	fs   *faultFS
	name string
}

func (f faultFile) Write(p []byte) (int, error) {
	if f.fs.fail() {
		return 0, &os.PathError{Op: "write", Path: f.name, Err: syscall.ENOSPC}
	}
	return f.File.Write(p)
}

// syncBuffer is a log destination safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// diskRig opens engines on one directory with a fault-injecting file
// system, a free-space reading the test sets, and a recorded exit.
type diskRig struct {
	t      *testing.T
	dir    string
	fs     *faultFS
	free   atomic.Uint64
	logs   syncBuffer
	exited chan int
}

const rigReserveBytes = 1 << 20

func newDiskRig(t *testing.T) *diskRig {
	r := &diskRig{t: t, dir: t.TempDir(), fs: &faultFS{FS: vfs.Default}, exited: make(chan int, 1)}
	r.free.Store(1 << 30)
	return r
}

func (r *diskRig) options() Options {
	return Options{
		Dir: r.dir, Shards: 2, JanitorInterval: time.Hour, DefaultPricing: []byte(enginePricing),
		ReserveBytes: rigReserveBytes,
		Log:          slog.New(slog.NewTextHandler(&r.logs, nil)),
		fs:           r.fs,
		diskAvail:    func() (uint64, error) { return r.free.Load(), nil },
		exit: func(code int) {
			select {
			case r.exited <- code:
			default:
			}
		},
	}
}

func (r *diskRig) open() *Engine {
	r.t.Helper()
	e, err := Open(r.options())
	if err != nil {
		r.t.Fatal(err)
	}
	return e
}

func (r *diskRig) reserveExists() bool {
	_, err := os.Stat(filepath.Join(r.dir, diskReserveFile))
	return err == nil
}

func waitStorage(t *testing.T, e *Engine, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		state, _ := e.Storage()
		if state == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("storage %q after 5s, want %q", state, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rigTopUp(e *Engine, id string, amount int64) (TopUpResult, error) {
	return e.TopUp("c1", &wallet.TopUpCmd{ID: id, Account: "default", Asset: "CREDITS", Amount: amount}, [16]byte{byte(amount)})
}

func available(t *testing.T, e *Engine) int64 {
	t.Helper()
	w, err := e.Wallet("c1")
	if err != nil {
		t.Fatalf("wallet read: %v", err)
	}
	return w.Account("default:CREDITS").Available()
}

// TestDiskFullRefusesWritesKeepsReadsAndResumes: a WAL write that meets
// ENOSPC takes the reserve and is acknowledged; later writes are refused
// whole with storage_full and leave nothing behind (a retry after the disk
// has room is applied as new); reads are answered; writes resume by
// themselves; and a restart recovers exactly what was acknowledged.
func TestDiskFullRefusesWritesKeepsReadsAndResumes(t *testing.T) {
	r := newDiskRig(t)
	e := r.open()
	defer func() { e.Close() }()
	if state, ok := e.Storage(); state != StorageOpen || !ok || !r.reserveExists() {
		t.Fatalf("fresh engine: storage %q, reserve in place %v", state, r.reserveExists())
	}
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rigTopUp(e, "t1", 100); err != nil {
		t.Fatal(err)
	}

	r.fs.walFails.Store(1) // the disk fills: the next WAL write meets ENOSPC
	if _, err := rigTopUp(e, "t2", 200); err != nil {
		t.Fatalf("the write in flight when the disk filled: %v (the reserve should have taken it)", err)
	}
	if r.reserveExists() {
		t.Fatal("the reserve is still in place after an ENOSPC")
	}
	if state, ok := e.Storage(); state != StorageDiskFull || ok {
		t.Fatalf("storage %q after ENOSPC, want %q", state, StorageDiskFull)
	}
	r.free.Store(0) // and stays full

	if _, err := rigTopUp(e, "t3", 50); err != ErrStorageFull {
		t.Fatalf("top-up on a full disk: %v, want storage_full", err)
	}
	ev := imageEvent("e1", 1)
	if err := e.Events([]*EventIn{ev}); err != ErrStorageFull {
		t.Fatalf("events on a full disk: %v, want storage_full", err)
	}
	if _, err := e.PutCustomer("c2", wallet.Settings{}); err != ErrStorageFull {
		t.Fatalf("new customer on a full disk: %v, want storage_full", err)
	}
	if err := e.SetCursor("x", 1); err != ErrStorageFull {
		t.Fatalf("sink cursor on a full disk: %v, want storage_full", err)
	}
	if got := available(t, e); got != 300 {
		t.Fatalf("available %d on a full disk, want 300 (both acknowledged top-ups)", got)
	}
	page, err := e.Ledger("c1", "", 0, 10)
	if err != nil || len(page.Entries) != 2 {
		t.Fatalf("ledger on a full disk: %d entries, %v; want 2", len(page.Entries), err)
	}

	time.Sleep(3 * diskPollInterval)
	if state, _ := e.Storage(); state != StorageDiskFull {
		t.Fatalf("storage %q while the disk stays full", state)
	}
	r.free.Store(1 << 30) // space is freed
	waitStorage(t, e, StorageOpen)
	if !r.reserveExists() {
		t.Fatal("writes resumed without the reserve in place")
	}
	res, err := rigTopUp(e, "t3", 50)
	if err != nil || res.Replayed {
		t.Fatalf("the refused top-up retried: %+v, %v; want applied as new", res, err)
	}
	if err := e.Events([]*EventIn{ev}); err != nil || ev.Result.Status != EventCharged {
		t.Fatalf("the refused event retried: status %d %q, %v; want charged", ev.Result.Status, ev.Result.Code, err)
	}
	if got := available(t, e); got != 310 {
		t.Fatalf("available %d, want 310", got)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	e = r.open()
	if got := available(t, e); got != 310 {
		t.Fatalf("available %d after a restart, want 310", got)
	}
	if page, err := e.Ledger("c1", "", 0, 10); err != nil || len(page.Entries) != 4 {
		t.Fatalf("ledger after a restart: %d entries, %v; want 4", len(page.Entries), err)
	}
	if res, err := rigTopUp(e, "t2", 200); err != nil || !res.Replayed {
		t.Fatalf("the top-up acknowledged on the reserve, resent: %+v, %v; want replayed", res, err)
	}
}

// TestDiskNearlyFullRefusesBeforeENOSPC: free space below the reserve refuses
// writes before anything fails, keeps the reserve, and accepts them again as
// soon as the space is back.
func TestDiskNearlyFullRefusesBeforeENOSPC(t *testing.T) {
	r := newDiskRig(t)
	e := r.open()
	defer e.Close()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	r.free.Store(rigReserveBytes - 1)
	waitStorage(t, e, StorageDiskFull)
	if _, err := rigTopUp(e, "t1", 10); err != ErrStorageFull {
		t.Fatalf("top-up: %v, want storage_full", err)
	}
	if !r.reserveExists() {
		t.Fatal("the reserve was given up without an ENOSPC")
	}
	if _, err := e.Wallet("c1"); err != nil {
		t.Fatalf("wallet read: %v", err)
	}
	r.free.Store(2 * rigReserveBytes)
	waitStorage(t, e, StorageOpen)
	if _, err := rigTopUp(e, "t1", 10); err != nil {
		t.Fatal(err)
	}
}

// TestCommitFailureStopsWithSpaceNeeded: when what is in flight outgrows the
// reserve, the commit fails, nothing is acknowledged, and the process is
// stopped with a message saying how much free space recovery needs.
func TestCommitFailureStopsWithSpaceNeeded(t *testing.T) {
	r := newDiskRig(t)
	e := r.open() // not closed: its Pebble instance is wedged by design
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	r.fs.walFails.Store(-1) // every WAL write fails, even after the reserve is given up
	done := make(chan error, 1)
	go func() {
		_, err := rigTopUp(e, "t1", 100)
		done <- err
	}()
	select {
	case code := <-r.exited:
		if code != 1 {
			t.Fatalf("exit status %d, want 1", code)
		}
	case err := <-done:
		t.Fatalf("the failed commit was answered (%v); want the process stopped", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no exit 10s after a failed commit")
	}
	select {
	case err := <-done:
		t.Fatalf("the failed commit was answered (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	logs := r.logs.String()
	if !strings.Contains(logs, "storage failed") || !strings.Contains(logs, "needs about") || strings.Contains(logs, "panic") {
		t.Fatalf("log does not say how much space recovery needs:\n%s", logs)
	}
}

// TestOpenOnFullDisk: opening gives up the reserve when recovery needs the
// room, fails with the space it needs when even that is short (instead of
// retrying a flush without end), and opens refusing writes, serving reads,
// when there is room to recover but not to accept writes.
func TestOpenOnFullDisk(t *testing.T) {
	r := newDiskRig(t)
	e := r.open()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rigTopUp(e, "t1", 100); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	r.free.Store(0)
	_, err := Open(r.options())
	var full *DiskFullError
	if !errors.As(err, &full) || full.NeedBytes < recoveryMarginBytes || !strings.Contains(err.Error(), "needs about") {
		t.Fatalf("open on a full disk: %v; want a DiskFullError saying how much is needed", err)
	}
	if r.reserveExists() {
		t.Fatal("the reserve was kept although recovery needed the room")
	}

	r.free.Store(full.NeedBytes) // enough to recover, not to accept writes
	e = r.open()
	defer e.Close()
	if state, _ := e.Storage(); state != StorageDiskFull {
		t.Fatalf("storage %q, want %q", state, StorageDiskFull)
	}
	if got := available(t, e); got != 100 {
		t.Fatalf("available %d, want 100", got)
	}
	if _, err := rigTopUp(e, "t2", 5); err != ErrStorageFull {
		t.Fatalf("top-up: %v, want storage_full", err)
	}
	r.free.Store(1 << 30)
	waitStorage(t, e, StorageOpen)
	if _, err := rigTopUp(e, "t2", 5); err != nil {
		t.Fatal(err)
	}
}

// TestStorageLogsAreRateLimited: a condition repeated without end (Pebble
// retries a failed flush at once) logs at most one line per interval.
func TestStorageLogsAreRateLimited(t *testing.T) {
	r := newDiskRig(t)
	o := r.options()
	g := newDiskGuard(&o)
	g.started.Store(true)
	err := fmt.Errorf("write 000005.sst: %w", syscall.ENOSPC)
	for range 10000 {
		g.backgroundError(err)
	}
	pl := pebbleLogger{log: o.Log, limit: &g.pebbleLog}
	for range 10000 {
		pl.Errorf("background error: %s", err)
	}
	if n := strings.Count(r.logs.String(), "\n"); n > 3 {
		t.Fatalf("%d log lines for 20000 errors, want at most 3 (one per limiter, one state change):\n%s", n, r.logs.String())
	}
	if g.writable() {
		t.Fatal("writes are accepted after ENOSPC")
	}

	l := LogLimiter{Every: 10 * time.Millisecond}
	now := time.Now()
	if _, ok := l.Allow(now); !ok {
		t.Fatal("the first line is held back")
	}
	for range 5 {
		if _, ok := l.Allow(now.Add(time.Millisecond)); ok {
			t.Fatal("a line within the interval got through")
		}
	}
	if skipped, ok := l.Allow(now.Add(20 * time.Millisecond)); !ok || skipped != 5 {
		t.Fatalf("after the interval: ok %v, held back %d; want true, 5", ok, skipped)
	}
}

var _ io.Writer = (*syncBuffer)(nil)
