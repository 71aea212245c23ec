package ingest

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkDoorHTTP compares the throughput of the OpenMeter door with
// POST /v1/events over HTTP on loopback: the same 100 events a request,
// the same engine, concurrent clients. events/s is reported; compare the
// two sub-benchmarks of one run.
func BenchmarkDoorHTTP(b *testing.B) {
	const batch, customers = 100, 10_000
	eng := openBenchEngine(b, b.TempDir(), customers)
	defer eng.Close()
	srv := NewServer(Config{Engine: eng, RequestTimeout: 30 * time.Second, Doors: AllDoors})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown()
	base := "http://" + ln.Addr().String()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var seq atomic.Int64
	for _, c := range []struct {
		name, path, ctype string
		body              func(now time.Time) []byte
		want              int
	}{
		{"events", "/v1/events", "application/json", func(now time.Time) []byte { return benchBatch(&seq, batch, customers, now) }, 200},
		{"openmeter", "/api/v1/events", "application/cloudevents-batch+json", func(now time.Time) []byte {
			return benchCloudEvents(&seq, batch, customers, now)
		}, 204},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetParallelism(16)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(base+c.path, c.ctype, bytes.NewReader(c.body(time.Now())))
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != c.want {
						b.Errorf("%s: status %d", c.name, resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// benchCloudEvents is benchBatch's events as a batch of CloudEvents.
func benchCloudEvents(seq *atomic.Int64, n, customers int, now time.Time) []byte {
	at := now.UTC().Format(time.RFC3339Nano)
	b := make([]byte, 0, 16+n*(240+len(at)))
	b = append(b, '[')
	for i := 0; i < n; i++ {
		id := seq.Add(1)
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"specversion":"1.0","id":"`...)
		b = strconv.AppendInt(b, id, 10)
		b = append(b, `","source":"bench","subject":"bench-`...)
		b = strconv.AppendInt(b, id%int64(customers), 10)
		b = append(b, `","type":"message_completed","time":"`...)
		b = append(b, at...)
		b = appendBenchData(append(b, `",`...), id)
	}
	return append(b, ']')
}
