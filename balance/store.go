package balance

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/meterd/meterd/meter"
)

// store is the Pebble database behind the engine. Every write goes through
// a batch committed with pebble.Sync.
type store struct {
	db *pebble.DB
}

func openStore(dir string, cacheBytes int64, log *slog.Logger) (*store, error) {
	// Every new event id is looked up, and almost always missed: the index
	// and bloom-filter blocks of every table must stay cached, or each miss
	// reads and decompresses blocks again. Pebble's default cache is 8 MiB.
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
		Logger:                pebbleLogger{log},
	}
	for i := range opts.Levels {
		// Bloom filters make the idempotency look-up of a new event id (a
		// miss) cheap at every level.
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open pebble store in %s: %w", dir, err)
	}
	return &store{db: db}, nil
}

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
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixPricing}, UpperBound: []byte{prefixPricing + 1}})
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

// loadWallets calls fn for every stored wallet.
func (s *store) loadWallets(fn func(*Wallet)) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixWallet}, UpperBound: []byte{prefixWallet + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		w, err := DecodeWallet(it.Value())
		if err != nil {
			return fmt.Errorf("wallet %q: %w", it.Key()[1:], err)
		}
		fn(w)
	}
	return it.Error()
}

type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...))
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
