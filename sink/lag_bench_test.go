package sink

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/sink/chtest"
)

// lagRecorder is a Destination that writes through to ClickHouse and, once
// a batch is acknowledged, records each ledger row's lag: from the moment
// the engine recorded it (its answer was durable then) to the moment
// ClickHouse acknowledged it.
type lagRecorder struct {
	*ClickHouse
	mu   sync.Mutex
	lags []time.Duration
	rows atomic.Int64 // ledger and usage rows acknowledged
}

func (l *lagRecorder) Write(ctx context.Context, b *Batch) error {
	if err := l.ClickHouse.Write(ctx, b); err != nil {
		return err
	}
	now := time.Now().UnixNano()
	l.mu.Lock()
	for i := range b.Ledger {
		l.lags = append(l.lags, time.Duration(now-b.Ledger[i].RecordedAt))
	}
	l.mu.Unlock()
	l.rows.Add(int64(len(b.Ledger) + len(b.Usage)))
	return nil
}

// quantile is the q-quantile of the sorted ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

// BenchmarkSinkUnderLoad measures the ClickHouse sink while the engine
// takes events, all on this machine: first the sustained rate, 16 clients
// sending 100-event batches as fast as the engine answers them while the
// sink ships (events/s, and sink rows/s meanwhile); then an open loop at
// 80% of that rate, and the lag of every ledger row from its durable answer
// to ClickHouse's acknowledgement (p50, p99). Each event is one ledger row
// and one usage row. The engine runs in process (no HTTP); run it with
// -benchtime 1x. METERD_BENCH_SECONDS sets each phase's length (default 10),
// METERD_BENCH_BATCH_AGE the sink's batch age (default 1s, meterd's),
// METERD_BENCH_BATCH_ROWS its batch rows (default 100,000, meterd's), and
// METERD_BENCH_RATE the open loop's events/s instead of 80% (to compare two
// builds at one rate).
func BenchmarkSinkUnderLoad(b *testing.B) {
	seconds := 10
	if v := os.Getenv("METERD_BENCH_SECONDS"); v != "" {
		seconds, _ = strconv.Atoi(v)
	}
	batchAge := time.Second
	if v := os.Getenv("METERD_BENCH_BATCH_AGE"); v != "" {
		batchAge, _ = time.ParseDuration(v)
	}
	batchRows, _ := strconv.Atoi(os.Getenv("METERD_BENCH_BATCH_ROWS")) // 0: the default
	phase := time.Duration(seconds) * time.Second
	srv := chtest.Start(b)
	for i := 0; i < b.N; i++ {
		eng, err := balance.Open(balance.Options{Dir: b.TempDir(), Sinks: []string{"clickhouse"},
			DefaultPricing: []byte(benchTailerPricing), Log: testLog})
		if err != nil {
			b.Fatal(err)
		}
		const customers = 10_000
		for c := range customers {
			id := "c" + strconv.Itoa(c)
			if _, err := eng.PutCustomer(id, wallet.Settings{}); err != nil {
				b.Fatal(err)
			}
			if _, err := eng.TopUp(id, &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1 << 40}, [16]byte{1}); err != nil {
				b.Fatal(err)
			}
		}
		dest := &lagRecorder{ClickHouse: openCH(b, srv, srv.Database(b))}
		tailer := NewTailer(eng, dest, TailerConfig{BatchAge: batchAge, BatchRowsMax: batchRows, Dimensions: true, Log: testLog})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); tailer.Run(ctx) }()
		for tailer.Status().Shipped < eng.OutboxWatermark() {
			time.Sleep(10 * time.Millisecond)
		}

		var seq atomic.Int64
		send := func() {
			batch := make([]*balance.EventIn, 100)
			for j := range batch {
				n := seq.Add(1)
				batch[j] = &balance.EventIn{Event: &meter.Event{ID: "e" + strconv.FormatInt(n, 10), CustomerID: "c" + strconv.FormatInt(n%customers, 10),
					EventType: "image_generated", OccurredAt: time.Now().UnixNano(), DataJSON: []byte(`{"size":"1024x1024"}`)}, Hash: [16]byte{1}}
			}
			for {
				err := eng.Events(batch)
				if !errors.Is(err, balance.ErrOverloaded) {
					if err != nil {
						b.Error(err)
					}
					return
				}
				time.Sleep(time.Millisecond)
			}
		}

		// Phase 1: the sustained rate, the sink shipping meanwhile.
		rows0, seq0 := dest.rows.Load(), seq.Load()
		start := time.Now()
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for time.Since(start) < phase {
					send()
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		sustained := float64(seq.Load()-seq0) / elapsed.Seconds()
		sinkRows := float64(dest.rows.Load()-rows0) / elapsed.Seconds()
		for tailer.Status().Shipped < eng.OutboxWatermark() {
			time.Sleep(10 * time.Millisecond)
		}

		// Phase 2: an open loop at 80% of it, 100-event batches on a
		// schedule; the lag of every row shipped meanwhile.
		rate := 0.8 * sustained
		if v := os.Getenv("METERD_BENCH_RATE"); v != "" {
			rate, _ = strconv.ParseFloat(v, 64)
		}
		dest.mu.Lock()
		dest.lags = dest.lags[:0]
		dest.mu.Unlock()
		interval := time.Duration(float64(time.Second) * 100 / rate)
		start = time.Now()
		sem := make(chan struct{}, 64)
		for k := 0; ; k++ {
			at := start.Add(time.Duration(k) * interval)
			if at.Sub(start) >= phase {
				break
			}
			time.Sleep(time.Until(at))
			sem <- struct{}{}
			wg.Go(func() { send(); <-sem })
		}
		wg.Wait()
		for tailer.Status().Shipped < eng.OutboxWatermark() {
			time.Sleep(10 * time.Millisecond)
		}
		dest.mu.Lock()
		lags := slices.Clone(dest.lags)
		dest.mu.Unlock()
		slices.Sort(lags)
		cancel()
		<-done
		eng.Close()

		b.ReportMetric(sustained, "events/s")
		b.ReportMetric(sinkRows, "sink-rows/s")
		b.ReportMetric(rate, "open-loop-events/s")
		b.ReportMetric(float64(quantile(lags, 0.5))/1e6, "lag-p50-ms")
		b.ReportMetric(float64(quantile(lags, 0.99))/1e6, "lag-p99-ms")
	}
}
