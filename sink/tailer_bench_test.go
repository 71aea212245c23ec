package sink

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/sink/chtest"
)

// cpuSeconds returns the user+system CPU time of process pid (0: this process).
func cpuSeconds(pid int) float64 {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0
		}
		return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64) // utime, field 14
	st, _ := strconv.ParseFloat(f[12], 64) // stime, field 15
	return (ut + st) / 100                 // USER_HZ
}

// benchTailerPricing prices images by size: each usage row's dimension
// value is read from its event's data (sink/dimension.go).
const benchTailerPricing = `{"assets":[{"code":"CREDITS","scale":0}],
 "prices":[{"event_type":"image_generated","account":"default:CREDITS","dimensions":["size"],"unit_price":{"*":"1"}}]}`

// BenchmarkTailer measures the whole sink: reading the durable outbox,
// cutting batches, building rows, and inserting them into a local ClickHouse
// server (views attached). The outbox is filled before timing: each event is
// one ledger row and one usage row. It reports ledger rows/s and the CPU
// seconds meterd's side and the ClickHouse server spent per 100,000 ledger rows.
func BenchmarkTailer(b *testing.B) {
	events := 200_000
	if v := os.Getenv("METERD_BENCH_EVENTS"); v != "" {
		events, _ = strconv.Atoi(v)
	}
	srv := chtest.Start(b)
	var shipped, meterdCPU, chCPU float64
	var elapsed time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		eng, err := balance.Open(balance.Options{Dir: b.TempDir(), Shards: 2, Sinks: []string{"clickhouse"},
			DefaultPricing: []byte(benchTailerPricing), Log: testLog})
		if err != nil {
			b.Fatal(err)
		}
		const customers = 1000
		for c := 0; c < customers; c++ {
			id := "c" + strconv.Itoa(c)
			if _, err := eng.PutCustomer(id, wallet.Settings{}); err != nil {
				b.Fatal(err)
			}
			if _, err := eng.TopUp(id, &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1 << 40}, [16]byte{1}); err != nil {
				b.Fatal(err)
			}
		}
		batch := make([]*balance.EventIn, 0, 1000)
		for n := 0; n < events; n++ {
			batch = append(batch, &balance.EventIn{Event: &meter.Event{ID: fmt.Sprintf("e%d", n), CustomerID: "c" + strconv.Itoa(n%customers),
				EventType: "image_generated", OccurredAt: time.Now().UnixNano(), DataJSON: []byte(`{"size":"1024x1024"}`)}, Hash: [16]byte{1}})
			if len(batch) == cap(batch) || n == events-1 {
				if err := eng.Events(batch); err != nil {
					b.Fatal(err)
				}
				batch = batch[:0]
			}
		}
		ch := openCH(b, srv, srv.Database(b))
		tailer := NewTailer(eng, ch, TailerConfig{BatchRowsMax: 100_000, BatchAge: time.Millisecond, Dimensions: true, Log: testLog})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		cpu0, ch0 := cpuSeconds(0), cpuSeconds(srv.PID())
		start := time.Now()
		b.StartTimer()
		go func() { defer close(done); tailer.Run(ctx) }()
		for tailer.Status().Shipped < eng.OutboxWatermark() {
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		elapsed += time.Since(start)
		meterdCPU += cpuSeconds(0) - cpu0
		chCPU += cpuSeconds(srv.PID()) - ch0
		cancel()
		<-done
		shipped += float64(events + customers) // one ledger row per event and per top-up
		eng.Close()
	}
	b.ReportMetric(shipped/elapsed.Seconds(), "ledger-rows/s")
	b.ReportMetric(meterdCPU/shipped*1e5, "meterd-cpu-s/100k-rows")
	if srv.PID() != 0 {
		b.ReportMetric(chCPU/shipped*1e5, "clickhouse-cpu-s/100k-rows")
	}
}
