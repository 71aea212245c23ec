package balance

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// store is the Pebble database behind the engine. Every write goes through
// a batch committed with pebble.Sync.
type store struct {
	db *pebble.DB
}

// openStore opens the Pebble store in dir. With a guard (disk.go), Pebble
// writes through it, its background errors and log lines are rate-limited,
// and opening gives up on a full disk instead of retrying without end.
func openStore(dir string, cacheBytes int64, filesOpenMax int, log *slog.Logger, guard *diskGuard) (*store, error) {
	// Look-ups of ids the in-memory index cannot rule out (duplicates, and
	// every new id until the index is built after a start: idindex.go) and
	// of wallets and ledgers need the index and bloom-filter blocks of every
	// table cached, or each reads and decompresses blocks again. Pebble's
	// default cache is 8 MiB.
	cache := pebble.NewCache(cacheBytes)
	defer cache.Unref()
	opts := &pebble.Options{
		Cache: cache,
		// 64 MiB memtables: a commit group is at most a few MiB; fewer flushes.
		MemTableSize: 64 << 20,
		// Sync is asked for explicitly on every commit; WAL syncs are never
		// delayed to batch more (group commit comes from concurrent commits).
		WALMinSyncInterval:    nil,
		L0CompactionThreshold: 4,
		Logger:                pebbleLogger{log: log},
		// A soft bound on the tables kept open (the file cache holds
		// filesOpenMax-10, at least 64); meterd derives it from RLIMIT_NOFILE
		// with the HTTP connection bounds, so that the two cannot together
		// exhaust the descriptors.
		MaxOpenFiles: filesOpenMax,
	}
	for i := range opts.Levels {
		// Bloom filters make the idempotency look-up of a new event id (a
		// miss) cheap at every level.
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	open := func() (*pebble.DB, error) { return pebble.Open(dir, opts) }
	if guard != nil {
		opts.FS = guard.fs()
		opts.Logger = pebbleLogger{log: log, limit: &guard.pebbleLog, fatal: guard.fatal}
		opts.EventListener = &pebble.EventListener{BackgroundError: guard.backgroundError}
		open = func() (*pebble.DB, error) {
			return guard.open(func() (*pebble.DB, error) { return pebble.Open(dir, opts) })
		}
	}
	db, err := open()
	var full *DiskFullError
	if errors.As(err, &full) {
		return nil, err
	}
	// Another process holds the lock: flock's EWOULDBLOCK. This process
	// (a second engine on one directory) is Pebble's own message.
	if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) ||
		err != nil && strings.Contains(err.Error(), "lock held by current process") {
		// Pebble locks the directory (its LOCK file) while a store is open.
		return nil, fmt.Errorf("%w: %s is held by another process (a meterd running on it): stop it, or give this one another --data-dir (%v)",
			ErrDataDirInUse, filepath.Join(dir, "LOCK"), err)
	}
	if err != nil {
		return nil, fmt.Errorf("open pebble store in %s: %w", dir, err)
	}
	return &store{db: db}, nil
}

// ErrDataDirInUse is Open's error when another process has the data
// directory open.
var ErrDataDirInUse = errors.New("the data directory is in use")

func (s *store) close() error { return s.db.Close() }

// get returns a copy of the value at key, or nil when there is none.
func (s *store) get(key []byte) ([]byte, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, nil
}

// loadPricing returns the newest stored pricing version, or meter.Empty().
func (s *store) loadPricing() (*meter.Pricing, error) {
	it, err := s.db.NewIter(prefixRange(prefixPricing))
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if !it.Last() {
		return meter.Empty(), it.Error()
	}
	key := it.Key()
	if len(key) != 5 {
		return nil, fmt.Errorf("pricing key %x: not a version number", key)
	}
	version := uint32(key[1])<<24 | uint32(key[2])<<16 | uint32(key[3])<<8 | uint32(key[4])
	doc, err := meter.ParseDocument(it.Value())
	if err != nil {
		return nil, fmt.Errorf("stored pricing version %d: %w", version, err)
	}
	return meter.Compile(doc, version, nil)
}

// loadWallets calls fn for every stored wallet, with the log seq its
// snapshot reflects.
func (s *store) loadWallets(fn func(*wallet.Wallet, uint64)) error {
	it, err := s.db.NewIter(prefixRange(prefixWallet))
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		w, seq, err := wallet.DecodeWalletAt(it.Value())
		if err != nil {
			return fmt.Errorf("wallet %q: %w", it.Key()[1:], err)
		}
		fn(w, seq)
	}
	return it.Error()
}

// logBounds returns the seqs of the first and last command-log records,
// or zeros when there are none.
func (s *store) logBounds() (first, last uint64, err error) {
	it, err := s.db.NewIter(prefixRange(prefixLog))
	if err != nil {
		return 0, 0, err
	}
	defer it.Close()
	if !it.First() {
		return 0, 0, it.Error()
	}
	if first, err = logKeySeq(it.Key()); err != nil {
		return 0, 0, err
	}
	it.Last()
	if last, err = logKeySeq(it.Key()); err != nil {
		return 0, 0, err
	}
	return first, last, it.Error()
}

// logFloor returns the persisted replay floor (cmdlog.go), 0 if none.
func (s *store) logFloor() (uint64, error) {
	v, err := s.get(logFloorKey)
	if err != nil || v == nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("log floor %x: not a seq", v)
	}
	return binary.BigEndian.Uint64(v), nil
}

// pebbleLogger is Pebble's logger. Its errors are rate-limited when limit
// is set (a condition Pebble retries without end repeats its line); Fatalf,
// which Pebble calls on what it cannot survive (a failed commit or MANIFEST
// write), goes to fatal when set: a clean exit, not a panic.
type pebbleLogger struct {
	log   *slog.Logger
	limit *LogLimiter
	fatal func(error)
}

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l pebbleLogger) Errorf(format string, args ...any) {
	skipped := 0
	if l.limit != nil {
		var ok bool
		if skipped, ok = l.limit.Allow(time.Now()); !ok {
			return
		}
	}
	if skipped > 0 {
		l.log.Error(fmt.Sprintf(format, args...), "component", "pebble", "held_back", skipped)
		return
	}
	l.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if l.fatal != nil {
		err := errors.New(msg)
		for _, a := range args {
			if e, ok := a.(error); ok {
				err = fmt.Errorf("%s: %w", msg, e) // keeps ENOSPC visible to errors.Is
				break
			}
		}
		l.fatal(err)
	}
	l.log.Error(msg, "component", "pebble")
	panic(msg)
}

// instanceKey holds the data directory's instance id.
var instanceKey = []byte("minstance_id")

// instanceID returns the data directory's id, making one on first use.
func (s *store) instanceID() (string, error) {
	v, err := s.get(instanceKey)
	if err != nil {
		return "", err
	}
	if v != nil {
		return string(v), nil
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b[:])
	return id, s.db.Set(instanceKey, []byte(id), pebble.Sync)
}
