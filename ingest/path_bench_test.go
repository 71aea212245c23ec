package ingest

import (
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
)

const benchPricing = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6}],
 "prices":[{"event_type":"message_completed","account":"default:USD","dimensions":["model"],
   "components":[
     {"field":"input_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"2.00","*":"1.25"}},
     {"field":"output_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"8.00","*":"5.00"}}]}]}`

// openBenchEngine opens an engine with customers bench-0..n-1, each holding a large USD top-up.
func openBenchEngine(b *testing.B, dir string, customers int) *balance.Engine {
	b.Helper()
	shards := 0
	if v := os.Getenv("METERD_BENCH_SHARDS"); v != "" {
		shards, _ = strconv.Atoi(v)
	}
	eng, err := balance.Open(balance.Options{Dir: dir, Shards: shards, DefaultPricing: []byte(benchPricing)})
	if err != nil {
		b.Fatal(err)
	}
	// Concurrent set-up: the ops share commit groups instead of one fsync each.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < customers; i += 64 {
				id := "bench-" + strconv.Itoa(i)
				if _, err := eng.PutCustomer(id, wallet.Settings{Status: wallet.StatusActive, Policy: wallet.PolicyReject}); err != nil {
					errs <- err
					return
				}
				cmd := &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "USD", Scale: 6, Amount: 1_000_000_000_000_000, Source: "bench"}
				if _, err := eng.TopUp(id, cmd, [16]byte{1}); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	return eng
}

// benchBatch returns a JSON events request of n message_completed events
// with unique ids. It is built with appends into one sized buffer: the
// benchmark makes fresh bodies while it is timed, and their cost is the
// generator's, not the server's.
func benchBatch(seq *atomic.Int64, n, customers int, now time.Time) []byte {
	at := now.UTC().Format(time.RFC3339Nano)
	b := make([]byte, 0, 16+n*(200+len(at)))
	b = append(b, `{"events":[`...)
	for i := 0; i < n; i++ {
		id := seq.Add(1)
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":"evt_`...)
		b = strconv.AppendInt(b, id, 10)
		b = append(b, `","customer_id":"bench-`...)
		b = strconv.AppendInt(b, id%int64(customers), 10)
		b = append(b, `","event_type":"message_completed","occurred_at":"`...)
		b = append(b, at...)
		b = appendBenchData(append(b, `",`...), id)
	}
	return append(b, "]}"...)
}

// appendBenchData appends the data member of bench event id and closes the
// event.
func appendBenchData(b []byte, id int64) []byte {
	b = append(b, `"data":{"model":"gpt-4-1","input_tokens":`...)
	b = strconv.AppendInt(b, 1000+id%5000, 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, 200+id%3000, 10)
	return append(b, "}}"...)
}

// BenchmarkPath measures the whole write path of an events request: decode,
// route to shards, rate, apply, one Pebble batch per commit group with fsync,
// results back. Each op is one request of 100 events (METERD_BENCH_BATCH
// sets another count); many concurrent requests share commit groups. ns/op
// is per request: events/s is reported.
func BenchmarkPath(b *testing.B) {
	batch, customers := 100, 10_000
	if v := os.Getenv("METERD_BENCH_BATCH"); v != "" {
		batch, _ = strconv.Atoi(v)
	}
	dir := b.TempDir()
	eng := openBenchEngine(b, dir, customers)
	defer eng.Close()
	diskBefore := dirBytes(b, dir)
	var seq atomic.Int64
	now := time.Now()
	// Bodies are prepared before timing: a real client sends them.
	bodies := make([][]byte, 256)
	for i := range bodies {
		bodies[i] = benchBatch(&seq, batch, customers, now)
	}
	var next atomic.Int64
	lim := DefaultLimits()
	par := 32
	if v := os.Getenv("METERD_BENCH_PARALLELISM"); v != "" {
		par, _ = strconv.Atoi(v)
	}
	b.SetParallelism(par)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var dec Decoder
		var decoded []Decoded
		ins := make([]balance.EventIn, batch)
		ptrs := make([]*balance.EventIn, batch)
		for pb.Next() {
			i := next.Add(1)
			body := bodies[i%int64(len(bodies))]
			if i >= int64(len(bodies)) {
				// Fresh ids: a body reused as-is would only measure duplicates.
				body = benchBatch(&seq, batch, customers, now)
			}
			var rerr *RequestError
			decoded, rerr = dec.DecodeJSON(body, now, &lim, decoded[:0])
			if rerr != nil {
				b.Error(rerr)
				return
			}
			for j := range decoded {
				ins[j] = balance.EventIn{Event: &decoded[j].Event, Hash: decoded[j].ContentHash}
				ptrs[j] = &ins[j]
			}
			if err := eng.Events(ptrs[:len(decoded)]); err != nil {
				b.Error(err)
				return
			}
			if ins[0].Result.Status != balance.EventCharged {
				b.Errorf("status %d %s %s", ins[0].Result.Status, ins[0].Result.Code, ins[0].Result.Message)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "events/s")
	// What the events left on disk: tables and the WAL of what is not yet
	// flushed, as du would count it.
	b.ReportMetric(float64(dirBytes(b, dir)-diskBefore)/float64(b.N*batch), "disk-B/event")
	if os.Getenv("METERD_BENCH_STORE_METRICS") != "" {
		os.WriteFile(os.Getenv("METERD_BENCH_STORE_METRICS"), []byte(eng.StoreMetrics()), 0o644)
	}
}

// dirBytes is the size of the files under dir.
func dirBytes(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}
