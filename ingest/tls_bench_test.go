package ingest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkTLSHTTP compares POST /v1/events over HTTPS with plain HTTP:
// the same engine and server, 100 events a request, 16 concurrent clients
// on kept-alive connections. events/s is reported; compare the two
// sub-benchmarks of one run.
func BenchmarkTLSHTTP(b *testing.B) {
	const batch, customers = 100, 10_000
	eng := openBenchEngine(b, b.TempDir(), customers)
	defer eng.Close()
	ca := newTestCA(b)
	certs, err := NewCertReloader(serverCertFiles(b, ca, b.TempDir(), 1), nil)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	var seq atomic.Int64
	for _, c := range []struct {
		name string
		tls  bool
	}{{"http", false}, {"https", true}} {
		// One server and client per protocol for all of b.Run's rounds.
		srv := NewServer(Config{Engine: eng, RequestTimeout: 30 * time.Second})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		base := "http://" + ln.Addr().String()
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		if c.tls {
			ln = tls.NewListener(ln, certs.Config())
			base = "https://" + ln.Addr().String()
			tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		}
		go srv.Serve(ln)
		client := &http.Client{Transport: tr}
		b.Run(c.name, func(b *testing.B) {
			b.SetParallelism(8) // 16 clients on 2 cores
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(base+"/v1/events", "application/json", bytes.NewReader(benchBatch(&seq, batch, customers, time.Now())))
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "events/s")
		})
		tr.CloseIdleConnections()
		srv.Shutdown()
	}
}
