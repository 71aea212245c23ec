package balance

// The disk guard: what the engine does when the disk of its data directory
// fills up. The guarantee: a full disk never makes meterd acknowledge a write
// that is not durable, never loses one it acknowledged, and never leaves it
// alive with a memory ahead of its disk. It refuses writes (503
// storage_full) while reads go on, and accepts them again by itself once
// space is freed; only when a commit fails anyway does it stop, with a
// message that says how much free space a restart needs. Step by step:
//
//   - Pebble cannot go on after a failed WAL write or fsync. Its log writer
//     keeps the first error and fails every later sync; the next record
//     written after it panics while holding the commit lock; a failed
//     MANIFEST write is fatal by design (Logger.Fatalf). A batch whose fsync
//     failed is already in the memtable and visible to reads. So after a
//     failed commit neither the shard's wallets nor Pebble's own reads can be
//     trusted, and retrying on the same instance is not safe. What is durable
//     is exactly what a restart recovers.
//   - So the WAL must not meet ENOSPC. A reserve file (Options.ReserveBytes,
//     64 MiB by default) is kept allocated in the data directory. Pebble writes through reserveFS: a write to a WAL, the
//     MANIFEST or another file Pebble cannot lose that fails with ENOSPC
//     deletes the reserve and is retried once. What was accepted before the
//     disk filled (the groups in flight) is made durable and answered.
//     Tables are not given the reserve: a flush or compaction that fails is
//     retried by Pebble later, and the WAL still holds its data.
//   - New writes are refused at the engine's door, before anything touches
//     memory, while the reserve is gone or less than ReserveBytes is free
//     beside it (the free space is polled every diskPollInterval; any ENOSPC
//     Pebble meets refuses at once). A refused write changed nothing: its id
//     is not recorded, and a retry is applied as new. Reads keep being
//     answered from memory and the store, which hold only what is durable or
//     in flight to the WAL. A read that would write (an expiry that came due)
//     applies it to a copy and writes nothing.
//   - Writes resume by themselves once ENOSPC has not been seen for
//     diskQuiet, the reserve is made again and 1.5 × ReserveBytes is free
//     beside it: the Pebble instance never saw an error, so it can go on.
//   - If a commit fails all the same (what was in flight outgrew the reserve,
//     or an fsync failed), the process stops at once with a message saying
//     how much free space recovery needs: no answer leaves for what was not
//     durable, and the restart recovers everything acknowledged.
//   - Opening replays the WALs and flushes them into a table before it
//     returns, and Pebble retries a failed flush at once, without end. So
//     Open first compares the free space with what recovery needs (the WALs
//     and the MANIFEST, plus a margin); when it is short it gives up the
//     reserve, and when even that is not enough it fails with a
//     DiskFullError that says how much is needed, instead of hanging.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// reserveBytesDefault is Options.ReserveBytes's default: about a
	// memtable, far more than the groups in flight at any moment.
	reserveBytesDefault = 64 << 20
	// diskReserveFile is the reserve's name in the data directory (Pebble
	// ignores files whose names it does not know).
	diskReserveFile = "meterd-disk-reserve"
	// diskPollInterval is how often the free space is read.
	diskPollInterval = 200 * time.Millisecond
	// diskQuiet is how long after the last ENOSPC writes stay refused.
	diskQuiet = time.Second
	// recoveryMarginBytes is what opening writes beyond the flush of its
	// WALs: a new WAL, OPTIONS, MANIFEST records, markers.
	recoveryMarginBytes = 1 << 20
)

// Storage states, for /readyz.
const (
	StorageOpen     = "open"      // writes are accepted
	StorageDiskFull = "disk_full" // writes are refused for lack of disk space; reads are served
)

// ErrStorageFull refuses a write, whole and before anything is applied, while
// the disk is full: retry with the same ids once space is freed.
var ErrStorageFull = &wallet.Error{Code: wallet.CodeStorageFull,
	Message: "the disk of meterd's data directory is full: writes are refused until space is freed (reads still work); nothing was applied: retry with the same ids"}

// DiskFullError is returned by Open when the disk of the data directory has
// too little free space to open the store.
type DiskFullError struct {
	Dir        string
	NeedBytes  uint64 // about how much free space opening needs
	AvailBytes uint64 // what was free
	Err        error  // what Pebble reported, if it got that far
}

func (e *DiskFullError) Error() string {
	s := fmt.Sprintf("disk full: opening the store in %s needs about %s free on its disk, %s is free: free space there and start again",
		e.Dir, sizeString(e.NeedBytes), sizeString(e.AvailBytes))
	if e.Err != nil {
		s += " (" + e.Err.Error() + ")"
	}
	return s
}

func (e *DiskFullError) Unwrap() error { return e.Err }

// diskGuard watches the disk of the data directory and decides whether
// writes are accepted. See the comment at the top of this file.
type diskGuard struct {
	dir          string
	reservePath  string
	reserveBytes uint64
	log          *slog.Logger
	avail        func() (uint64, error) // free bytes on the directory's disk
	exit         func(code int)         // os.Exit; tests replace it
	inner        vfs.FS                 // the file system under reserveFS; tests replace it
	reg          prometheus.Registerer

	refusing    atomic.Bool  // writes are refused (the hot path reads only this)
	reserved    atomic.Bool  // the reserve file is in place
	lastNoSpace atomic.Int64 // unix ns of the last ENOSPC seen
	opening     atomic.Bool
	started     atomic.Bool // the first check is done: state changes are logged
	running     atomic.Bool // run was called
	openNoSpace chan error  // an ENOSPC while opening: Open gives up

	mu         sync.Mutex // state changes and the reserve file
	stop, done chan struct{}
	stopOnce   sync.Once

	stateLog, errLog, pebbleLog LogLimiter
	availGauge, writableGauge   prometheus.Gauge
}

func newDiskGuard(o *Options) *diskGuard {
	g := &diskGuard{
		dir:          o.Dir,
		reservePath:  filepath.Join(o.Dir, diskReserveFile),
		reserveBytes: uint64(o.ReserveBytes),
		log:          o.Log,
		avail:        o.diskAvail,
		exit:         o.exit,
		inner:        o.fs,
		openNoSpace:  make(chan error, 1),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
		stateLog:     LogLimiter{Every: time.Second},
		availGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_disk_available_bytes",
			Help: "Free bytes on the disk of the data directory, besides the reserve file.",
		}),
		writableGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_storage_writable",
			Help: "1 while writes are accepted, 0 while they are refused for lack of disk space.",
		}),
	}
	if g.avail == nil {
		g.avail = func() (uint64, error) {
			u, err := vfs.Default.GetDiskUsage(g.dir)
			return u.AvailBytes, err
		}
	}
	if g.exit == nil {
		g.exit = os.Exit
	}
	g.reg = o.Registerer
	g.refusing.Store(true) // until the first check says otherwise
	return g
}

// writable reports whether writes are accepted now.
func (g *diskGuard) writable() bool { return !g.refusing.Load() }

// fs returns the file system Pebble writes through.
func (g *diskGuard) fs() vfs.FS {
	inner := g.inner
	if inner == nil {
		inner = vfs.Default
	}
	return reserveFS{FS: inner, g: g}
}

// prepare runs before Pebble opens: it finds the reserve, and makes sure
// the disk has room for the recovery (giving up the reserve for it if
// needed).
func (g *diskGuard) prepare() error {
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		return err
	}
	os.Remove(g.reservePath + ".tmp") // a reserve being made when the process stopped
	fi, err := os.Stat(g.reservePath)
	switch {
	case err == nil && uint64(fi.Size()) == g.reserveBytes:
		g.reserved.Store(true)
	case err == nil:
		os.Remove(g.reservePath) // another size was configured: made again at this one
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("disk reserve: %w", err)
	}
	need, err := g.recoveryBytes()
	if err != nil {
		return err
	}
	avail, err := g.avail()
	if err != nil {
		return fmt.Errorf("free space of %s: %w", g.dir, err)
	}
	if avail < need && g.reserved.Load() {
		g.releaseReserve("opening the store needs the room")
		if avail, err = g.avail(); err != nil {
			return fmt.Errorf("free space of %s: %w", g.dir, err)
		}
	}
	if avail < need {
		return &DiskFullError{Dir: g.dir, NeedBytes: need, AvailBytes: avail}
	}
	g.opening.Store(true)
	return nil
}

// open runs Pebble's Open, giving up when it meets ENOSPC: Pebble retries
// the flush of the WALs it replayed without end. The caller should then
// exit; should Pebble finish opening after all, the store is closed again.
func (g *diskGuard) open(open func() (*pebble.DB, error)) (*pebble.DB, error) {
	type result struct {
		db  *pebble.DB
		err error
	}
	ch := make(chan result, 1)
	go func() {
		db, err := open()
		ch <- result{db, err}
	}()
	var r result
	select {
	case r = <-ch:
	case err := <-g.openNoSpace:
		go func() {
			if r := <-ch; r.db != nil {
				r.db.Close()
			}
		}()
		r.err = err
	}
	g.opening.Store(false)
	if r.err != nil && isNoSpace(r.err) {
		need, _ := g.recoveryBytes()
		avail, _ := g.avail()
		return nil, &DiskFullError{Dir: g.dir, NeedBytes: need, AvailBytes: avail, Err: r.err}
	}
	return r.db, r.err
}

// begin checks the disk once, once the store is open, making the reserve if
// there is room: it decides whether the engine starts accepting writes.
func (g *diskGuard) begin() {
	if g.reg != nil {
		g.reg.MustRegister(g.availGauge, g.writableGauge)
	}
	g.check()
	g.started.Store(true)
	if g.refusing.Load() {
		avail, _ := g.avail()
		g.log.Warn("disk nearly full: writes are refused until space is freed; reads are served",
			"dir", g.dir, "available_bytes", avail, "reserve_bytes", g.reserveBytes, "reserve_in_place", g.reserved.Load(),
			"resume_needs_bytes", g.resumeNeeds())
	}
}

// run checks the disk every diskPollInterval until halt.
func (g *diskGuard) run() {
	g.running.Store(true)
	go func() {
		defer close(g.done)
		t := time.NewTicker(diskPollInterval)
		defer t.Stop()
		for {
			select {
			case <-g.stop:
				return
			case <-t.C:
				g.check()
			}
		}
	}()
}

// halt stops the polling started by run.
func (g *diskGuard) halt() {
	g.stopOnce.Do(func() {
		close(g.stop)
		if g.running.Load() {
			<-g.done
		}
	})
}

// check reads the free space and moves between accepting and refusing.
func (g *diskGuard) check() {
	avail, err := g.avail()
	if err != nil {
		g.logError("reading the free disk space", err)
		return
	}
	g.availGauge.Set(float64(avail))
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.reserveBytes
	if !g.refusing.Load() {
		if !g.reserved.Load() || avail < r {
			g.setRefusing(true, "less free disk space than the reserve", avail)
		}
		return
	}
	if time.Since(time.Unix(0, g.lastNoSpace.Load())) < diskQuiet {
		return
	}
	if !g.reserved.Load() {
		if avail < g.resumeNeeds() {
			return
		}
		if err := g.makeReserve(); err != nil {
			g.logError("making the disk reserve again", err)
			return
		}
		if avail, err = g.avail(); err != nil {
			return
		}
	}
	if avail >= r+r/2 {
		g.setRefusing(false, "free disk space is back", avail)
	}
}

// resumeNeeds is the free space (with the reserve gone) at which writes resume.
func (g *diskGuard) resumeNeeds() uint64 {
	r := g.reserveBytes
	if g.reserved.Load() {
		return r + r/2
	}
	return 2*r + r/2
}

// noSpace records an ENOSPC met by Pebble: writes are refused at once. With
// release, the reserve is deleted so that the failed write can be retried.
func (g *diskGuard) noSpace(release bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lastNoSpace.Store(time.Now().UnixNano())
	if !g.refusing.Load() {
		avail, _ := g.avail()
		g.setRefusing(true, "a write met ENOSPC", avail)
	}
	if release {
		g.releaseReserve("a write to the store met ENOSPC")
	}
}

// setRefusing changes the state; g.mu is held.
func (g *diskGuard) setRefusing(refuse bool, why string, avail uint64) {
	g.refusing.Store(refuse)
	if refuse {
		g.writableGauge.Set(0)
	} else {
		g.writableGauge.Set(1)
	}
	if !g.started.Load() {
		return // begin logs the state it starts in
	}
	skipped, ok := g.stateLog.Allow(time.Now())
	if !ok {
		return
	}
	if refuse {
		g.log.Warn("disk full: writes are refused until space is freed; reads are served", "why", why, "dir", g.dir,
			"available_bytes", avail, "reserve_in_place", g.reserved.Load(), "resume_needs_bytes", g.resumeNeeds(), "held_back", skipped)
	} else {
		g.log.Info("disk space is back: writes are accepted again", "dir", g.dir, "available_bytes", avail, "held_back", skipped)
	}
}

// releaseReserve deletes the reserve file; g.mu is held (or Open is running).
func (g *diskGuard) releaseReserve(why string) {
	if !g.reserved.Swap(false) {
		return
	}
	err := os.Remove(g.reservePath)
	g.log.Warn("disk reserve given up", "why", why, "bytes", g.reserveBytes, "err", err)
}

// makeReserve allocates the reserve file; g.mu is held.
func (g *diskGuard) makeReserve() (err error) {
	tmp := g.reservePath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = allocate(f, int64(g.reserveBytes)); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, g.reservePath); err != nil {
		return err
	}
	if d, derr := os.Open(g.dir); derr == nil {
		d.Sync()
		d.Close()
	}
	g.reserved.Store(true)
	return nil
}

// allocate gives f n bytes on disk: fallocate where the file system has it
// (no data written), else zeros.
func allocate(f *os.File, n int64) error {
	if err := fallocate(f, n); err == nil {
		return nil
	}
	zeros := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := f.Write(zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// recoveryBytes estimates the free space opening the store needs: its WALs
// flushed into tables (about their size), a new MANIFEST, and a margin.
func (g *diskGuard) recoveryBytes() (uint64, error) {
	ents, err := os.ReadDir(g.dir)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".log") && !strings.HasPrefix(name, "MANIFEST-") {
			continue
		}
		if fi, err := e.Info(); err == nil {
			n += uint64(fi.Size())
		}
	}
	return n + n/10 + recoveryMarginBytes, nil
}

// fatal stops the process after a commit failed: the memory is ahead of the
// disk, so nothing more may be answered. It does not return.
func (g *diskGuard) fatal(err error) {
	need, _ := g.recoveryBytes()
	avail, _ := g.avail()
	why := "a write to the store failed"
	if isNoSpace(err) {
		why = "the disk is full and what was in flight did not fit in the reserve"
	}
	g.log.Error(fmt.Sprintf("storage failed: %s; stopping without answering what was not durable. "+
		"A restart recovers every acknowledged write: it needs about %s free in %s (%s free now)",
		why, sizeString(need), g.dir, sizeString(avail)), "err", err)
	g.exit(1)
	select {} // a test's exit returns: this goroutine stops here
}

// backgroundError is Pebble's EventListener.BackgroundError: a failed flush
// or compaction, retried by Pebble (a failed flush at once). Logged at a
// bounded rate; ENOSPC refuses writes.
func (g *diskGuard) backgroundError(err error) {
	if isNoSpace(err) {
		g.noSpace(false)
		if g.opening.Load() {
			select {
			case g.openNoSpace <- err:
			default:
			}
		}
	}
	g.logError("pebble background error", err)
}

func (g *diskGuard) logError(msg string, err error) {
	if skipped, ok := g.errLog.Allow(time.Now()); ok {
		g.log.Error(msg, "err", err, "held_back", skipped, "component", "pebble")
	}
}

func isNoSpace(err error) bool { return errors.Is(err, syscall.ENOSPC) }

// sizeString formats a byte count for a message.
func sizeString(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// reserveFS is the file system Pebble writes through: a write to a file
// Pebble cannot survive failing (every file but tables and blob files) that
// meets ENOSPC gives up the reserve and is retried once.
type reserveFS struct {
	vfs.FS
	g *diskGuard
}

// critical reports whether a write failure of the named file is fatal to Pebble.
func critical(name string) bool {
	return !strings.HasSuffix(name, ".sst") && !strings.HasSuffix(name, ".blob")
}

func (f reserveFS) wrap(name string, file vfs.File) vfs.File {
	if file == nil || !critical(name) {
		return file
	}
	return reserveFile{File: file, g: f.g}
}

func (f reserveFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.Create(name, c)
	if err != nil && isNoSpace(err) {
		f.g.noSpace(critical(name))
		if critical(name) {
			file, err = f.FS.Create(name, c)
		}
	}
	return f.wrap(name, file), err
}

func (f reserveFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	file, err := f.FS.ReuseForWrite(oldname, newname, c)
	return f.wrap(newname, file), err
}

func (f reserveFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	file, err := f.FS.OpenReadWrite(name, c, opts...)
	return f.wrap(name, file), err
}

// Unwrap returns the file system underneath.
func (f reserveFS) Unwrap() vfs.FS { return f.FS }

type reserveFile struct {
	vfs.File
	g *diskGuard
}

func (f reserveFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	if err != nil && isNoSpace(err) {
		f.g.noSpace(true)
		var m int
		m, err = f.File.Write(p[n:])
		n += m
	}
	return n, err
}

var _ io.Writer = reserveFile{}
