package main

// BenchmarkAttackedClient measures what an attack costs a normal client of
// the real binary: the latency of its single-event POST /v1/events, sent
// one after another on one kept-alive connection from 127.0.0.1, with the
// server unloaded and under each attack. Every sub-benchmark starts its own
// meterd (fdlimit_test.go's harness: ulimit -n 1024, API keys, the normal
// client holding the admin key) and its attack, waits until the attack is
// at full strength, then times the requests:
//
//   - unloaded: no attacker.
//   - descriptors: 1,100 idle connections from 127.0.0.2 (80 held, the
//     per-address bound under ulimit -n 1024; the rest refused), and two
//     goroutines reconnecting from 127.0.0.2 in a loop, each refused at once.
//   - slow_bodies_keyless: 100 connections from 127.0.0.3 without a key, each
//     declaring a 7.9 MB body and trickling it (64 KiB every 100 ms); the
//     server answers 401 and closes, and the attacker reconnects. (fasthttp
//     reads the first 8 KiB of a body before the handler runs, so the 401
//     comes with the first chunk, 100 ms after the headers.)
//   - slow_bodies_keyed: the same with a valid ingest key. The body budget
//     (--http-body-memory-max, 256 MiB) takes 33 bodies of 7.9 MB and answers
//     the others 503 before reading them; each attacker reconnects when
//     answered. The timing starts once the first admitted bodies have been
//     read to their end (about 12 s), so the server holds them all.
//
// For the slow-body attacks the per-address bound is raised to 640 (the
// overall one), so all 100 connections get in: from one address, 80 would.
// Each sub-benchmark reports p50-µs, p99-µs and max-µs of the requests, and
// rss-MiB: process_resident_memory_bytes from /metrics right after them,
// with the attack still on. The attacker runs in the benchmark's process,
// on the same CPUs as the server.
//
//	go test -run '^$' -bench BenchmarkAttackedClient -benchtime 2000x ./cmd/meterd/

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	attackRequestsMin = 1000 // timed requests per run whatever b.N: a p99 needs them
	slowBodyConns     = 100
	slowBodyBytes     = 7_900_000
	slowBodyChunk     = 64 << 10
	slowBodyEvery     = 100 * time.Millisecond
	slowBodyWarmupMax = 30 * time.Second // the server's read timeout: every body is answered within it
)

func BenchmarkAttackedClient(b *testing.B) {
	if testing.Short() {
		b.Skip("runs the binary under attack")
	}
	bin := buildMeterd(b)
	keys := probeKeys(b)
	allIn := []string{"--http-conns-per-ip-max", "640"}
	for _, bc := range []struct {
		name   string
		args   []string
		attack func(a *fdAttack) (stop func() string)
	}{
		{"unloaded", nil, nil},
		{"descriptors", nil, (*fdAttack).descriptorStorm},
		{"slow_bodies_keyless", allIn, func(a *fdAttack) func() string { return a.slowBodies("") }},
		{"slow_bodies_keyed", allIn, func(a *fdAttack) func() string { return a.slowBodies(probeIngestKey) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			a := startFDAttackWith(b, bin, probeAdminKey, append([]string{"--api-keys", keys}, bc.args...)...)
			stop := func() string { return "" }
			if bc.attack != nil {
				stop = bc.attack(a)
			}
			a.measure(b)
			b.ReportMetric(a.metrics()["process_resident_memory_bytes"]/(1<<20), "rss-MiB")
			if s := stop(); s != "" {
				b.Log(s)
			}
			a.alive("after the attack")
		})
	}
}

// measure times max(b.N, attackRequestsMin) sequential single-event POST
// /v1/events on the normal client's kept-alive connection and reports
// their percentiles; ns/op is their mean.
func (a *fdAttack) measure(b *testing.B) {
	n := max(b.N, attackRequestsMin)
	took := make([]time.Duration, n)
	b.ResetTimer()
	start := time.Now()
	for i := range took {
		t0 := time.Now()
		a.event(a.normal, "n"+strconv.Itoa(i))
		took[i] = time.Since(t0)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(took)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(n), "ns/op")
	b.ReportMetric(us(took[n/2]), "p50-µs")
	b.ReportMetric(us(took[n*99/100]), "p99-µs")
	b.ReportMetric(us(took[n-1]), "max-µs")
}

// descriptorStorm opens fdAttackConns idle connections from 127.0.0.2, waits
// until the server has taken them all, then reconnects from 127.0.0.2 in a
// loop on two goroutines. stop ends the storm and says how fast it was.
func (a *fdAttack) descriptorStorm() (stop func() string) {
	a.t.Helper()
	a.dial("127.0.0.2", fdAttackConns)
	a.settle()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var redials atomic.Int64
	for range 2 {
		wg.Go(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: time.Second}
			buf := make([]byte, 256)
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", a.h.proc.addr)
				if err != nil {
					continue
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				c.Read(buf) // the 503, then the end
				c.Close()
				redials.Add(1)
			}
		})
	}
	start := time.Now()
	return func() string {
		cancel()
		wg.Wait()
		took := time.Since(start)
		return fmt.Sprintf("reconnect storm: %d refused connections in %v, %.0f/s",
			redials.Load(), took.Round(time.Millisecond), float64(redials.Load())/took.Seconds())
	}
}

// slowBodies starts slowBodyConns attackers from 127.0.0.3, each sending
// POST /v1/events with key ("": none), a declared slowBodyBytes body
// trickled slowBodyChunk every slowBodyEvery, and reconnecting once
// answered. It returns when the attack is at full strength: every attacker
// answered once without a key; with one, the budget full (a 503) and the
// first admitted bodies read to their end (a 400: the body is not JSON).
// stop ends the attack and counts the answers by status (0: none, the
// connection closed or reset before an answer).
func (a *fdAttack) slowBodies(key string) (stop func() string) {
	a.t.Helper()
	auth := ""
	if key != "" {
		auth = "Authorization: Bearer " + key + "\r\n"
	}
	head := "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
		"Content-Length: " + strconv.Itoa(slowBodyBytes) + "\r\n\r\n"
	chunk := make([]byte, slowBodyChunk)
	for i := range chunk {
		chunk[i] = 'x'
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	answers := map[int]int{}
	changed := make(chan struct{}, 1)
	for range slowBodyConns {
		wg.Go(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: time.Second}
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", a.h.proc.addr)
				if err != nil {
					continue
				}
				unhook := context.AfterFunc(ctx, func() { c.Close() })
				wg.Go(func() { trickle(ctx, c, head, chunk) })
				status := 0
				if res, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
					status = res.StatusCode
				}
				c.Close()
				unhook()
				if ctx.Err() != nil {
					return // closed by stop: no answer to count
				}
				mu.Lock()
				answers[status]++
				mu.Unlock()
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		})
	}
	stop = func() string {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("slow-body attackers' answers by status: %v", answers)
	}
	strong := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if key == "" {
			return answers[401] >= slowBodyConns
		}
		return answers[503] > 0 && answers[400] > 0
	}
	deadline := time.After(slowBodyWarmupMax)
	for !strong() {
		select {
		case <-changed:
		case <-time.After(time.Second):
			a.alive("under the slow-body attack")
		case <-deadline:
			s := stop()
			a.t.Fatalf("the slow-body attack did not reach full strength within %v: %s", slowBodyWarmupMax, s)
		}
	}
	return stop
}

// trickle writes head, then slowBodyBytes of chunk, one chunk every
// slowBodyEvery, until done, the body is sent, or c fails.
func trickle(ctx context.Context, c net.Conn, head string, chunk []byte) {
	if _, err := io.WriteString(c, head); err != nil {
		return
	}
	tick := time.NewTicker(slowBodyEvery)
	defer tick.Stop()
	for sent := 0; sent < slowBodyBytes; {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, err := c.Write(chunk[:min(len(chunk), slowBodyBytes-sent)])
		if err != nil {
			return
		}
		sent += n
	}
}
