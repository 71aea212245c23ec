package main

// The descriptor attack, through the real binary: meterd runs under
// ulimit -n 1024 and one unauthenticated client opens more idle connections
// than that. Before ingest.Listener, the accept that failed with EMFILE ended
// fasthttp's Serve, and meterd exited with status 1.
//
//   - TestDescriptorAttack: 1,100 idle connections from 127.0.0.2 leave meterd
//     running, a normal client on 127.0.0.1 keeps getting answers on new
//     connections, every attacker connection past the per-address bound is
//     refused at once; then 800 from ten more addresses fill the overall
//     bound, which refuses new connections (503) but not the kept-alive one;
//     the process never comes near its descriptor limit (no accept error),
//     and once the attackers close, the open count is back to the normal
//     client's one connection, and meterd stops cleanly.
//   - BenchmarkAttackedClient (attack_bench_test.go) measures the normal
//     client's latency unloaded and under the attack.
//   - TestPlanDescriptors: how the limit is shared out, and what is refused.
//
// The process harness is crash_test.go's, started through a /bin/sh wrapper
// that lowers RLIMIT_NOFILE (soft and hard, so the Go runtime cannot raise
// it again) before it execs meterd.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	fdAttackNofile   = 1024
	fdAttackConns    = 1100 // from one address: more than the limit
	fdAttackAddrs    = 10   // then this many more addresses ...
	fdAttackPerAddr  = 80   // ... with this many each (the derived per-address bound under 1024)
	fdAttackWait     = 10 * time.Second
	fdAttackHeldWait = 1500 * time.Millisecond // a connection still open this long after the server took all is held
)

// nofileWrapper writes a script that runs bin under ulimit -n nofile.
func nofileWrapper(t testing.TB, bin string, nofile int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meterd-nofile")
	script := fmt.Sprintf("#!/bin/sh\nulimit -n %d || exit 97\nexec '%s' \"$@\"\n", nofile, bin)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// fdAttack is one meterd under a lowered descriptor limit, its normal
// client, and the attacker's connections.
type fdAttack struct {
	t        testing.TB
	h        *crashHarness
	normal   *http.Client // keeps one connection alive from 127.0.0.1
	fresh    *http.Client // a new connection from 127.0.0.1 per request
	attacker []net.Conn
	fdsPeak  int
}

func startFDAttack(t testing.TB) *fdAttack {
	t.Helper()
	return startFDAttackWith(t, buildMeterd(t), "")
}

// startFDAttackWith starts bin (meterd) with args under the lowered limit;
// the normal client sends key as its bearer token ("": none).
func startFDAttackWith(t testing.TB, bin, key string, args ...string) *fdAttack {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < 4*fdAttackConns {
		t.Skipf("the test itself needs %d descriptors (limit %d, %v)", 4*fdAttackConns, rl.Cur, err)
	}
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs /proc (Linux)")
	}
	h := &crashHarness{t: t, bin: nofileWrapper(t, bin, fdAttackNofile), dir: t.TempDir(), args: args}
	h.start()
	t.Cleanup(func() {
		if h.proc.running() {
			h.proc.cmd.Process.Kill()
			<-h.proc.done
		}
	})
	h.tr.CloseIdleConnections()
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", h.proc.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`Max open files\s+` + strconv.Itoa(fdAttackNofile) + `\s`).Match(limits) {
		t.Fatalf("meterd does not run under ulimit -n %d:\n%s", fdAttackNofile, limits)
	}
	a := &fdAttack{t: t, h: h,
		normal: &http.Client{Timeout: crashRequestTimeout, Transport: withBearer(key, &http.Transport{MaxConnsPerHost: 1, IdleConnTimeout: time.Minute})},
		fresh:  &http.Client{Timeout: crashRequestTimeout, Transport: withBearer(key, &http.Transport{DisableKeepAlives: true})},
	}
	t.Cleanup(a.closeAttacker)
	a.mustAnswer(a.normal, "PUT", "/v1/customers/c1", `{"insufficient_funds":"reject"}`, 200, 201)
	return a
}

// bearer adds an API key to every request it carries.
type bearer struct {
	key  string
	next http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return b.next.RoundTrip(r)
}

// withBearer is tr sending key, or tr itself when key is "".
func withBearer(key string, tr http.RoundTripper) http.RoundTripper {
	if key == "" {
		return tr
	}
	return bearer{key: key, next: tr}
}

// dial opens n idle connections from the loopback address src.
func (a *fdAttack) dial(src string, n int) {
	a.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	for i := 0; i < n; i++ {
		c, err := d.Dial("tcp", a.h.proc.addr)
		if err != nil {
			if i == 0 {
				a.t.Skipf("dialing from %s (needs 127.0.0.0/8 routed to loopback, as on Linux): %v", src, err)
			}
			a.aliveAfterFailure(fmt.Sprintf("dialing connection %d from %s: %v", i, src, err))
			a.t.Fatalf("dialing connection %d from %s: %v", i, src, err)
		}
		a.attacker = append(a.attacker, c)
		if i%100 == 0 {
			a.countFDs()
		}
	}
}

func (a *fdAttack) closeAttacker() {
	for _, c := range a.attacker {
		c.Close()
	}
	a.attacker = nil
}

// alive fails the test when meterd has exited.
func (a *fdAttack) alive(during string) {
	a.t.Helper()
	if !a.h.proc.running() {
		a.t.Fatalf("meterd exited (%v) %s; its output:\n%s", a.h.proc.err, during, a.h.proc.log.tail())
	}
}

// aliveAfterFailure is alive after a failed request: a process on its way
// out (its listener closed, its store closing) is given a moment to exit.
func (a *fdAttack) aliveAfterFailure(during string) {
	a.t.Helper()
	select {
	case <-a.h.proc.done:
	case <-time.After(2 * time.Second):
	}
	a.alive(during)
}

// countFDs records the most descriptors meterd was seen to hold.
func (a *fdAttack) countFDs() {
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", a.h.proc.cmd.Process.Pid)); err == nil {
		a.fdsPeak = max(a.fdsPeak, len(ents))
	}
}

// classify waits until every attacker connection is either closed by the
// server (it reads the 503 or the end) or still open after fdAttackHeldWait,
// and returns how many are held.
func (a *fdAttack) classify() (held, refused int) {
	var nHeld, nRefused atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(fdAttackHeldWait)
	for _, c := range a.attacker {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(deadline)
			line, err := bufio.NewReader(c).ReadString('\n')
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				nHeld.Add(1)
			case strings.HasPrefix(line, "HTTP/1.1 503 "), err != nil:
				nRefused.Add(1)
			default:
				a.t.Errorf("attacker connection: unexpected %q before any request", line)
			}
		}()
	}
	wg.Wait()
	return int(nHeld.Load()), int(nRefused.Load())
}

// answer sends one request through c.
func (a *fdAttack) answer(c *http.Client, method, path, body string) (int, string, error) {
	status, b, err := crashDo(c, method, a.h.url(path), []byte(body))
	return status, string(b), err
}

func (a *fdAttack) mustAnswer(c *http.Client, method, path, body string, want ...int) string {
	a.t.Helper()
	a.alive("before " + method + " " + path)
	status, b, err := a.answer(c, method, path, body)
	if err != nil || !slices.Contains(want, status) {
		a.aliveAfterFailure("answering " + method + " " + path)
		a.t.Fatalf("%s %s: status %d, %v, want %v: %s", method, path, status, err, want, b)
	}
	return b
}

// event sends one usage event of c1; it is recorded (no price).
func (a *fdAttack) event(c *http.Client, id string) {
	a.t.Helper()
	b := a.mustAnswer(c, "POST", "/v1/events", `{"customer_id":"c1","events":[{"id":"`+id+`","event_type":"page_viewed"}]}`, 200)
	if !strings.Contains(b, `"recorded"`) {
		a.t.Fatalf("POST /v1/events: %s, want the event recorded", b)
	}
}

// metrics scrapes /metrics on the normal client's connection.
func (a *fdAttack) metrics() map[string]float64 {
	a.t.Helper()
	body := a.mustAnswer(a.normal, "GET", "/metrics", "", 200)
	out := make(map[string]float64)
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "meterd_http_connections") && !strings.HasPrefix(line, "meterd_http_accept") &&
			!strings.HasPrefix(line, "process_resident_memory_bytes") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			a.t.Fatalf("/metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

const (
	mOpen      = "meterd_http_connections_open"
	mMax       = "meterd_http_connections_max"
	mPerIPMax  = "meterd_http_connections_per_ip_max"
	mRefusedIP = `meterd_http_connections_refused_total{reason="limit_ip"}`
	mRefusedT  = `meterd_http_connections_refused_total{reason="limit_total"}`
	mAcceptErr = "meterd_http_accept_errors_total"
)

// settle polls /metrics until the server has taken every attacker
// connection (each is open or refused), checking that meterd still runs.
func (a *fdAttack) settle() map[string]float64 {
	a.t.Helper()
	end := time.Now().Add(fdAttackWait)
	for {
		a.alive("under the attack")
		a.countFDs()
		m := a.metrics()
		if m[mOpen]+m[mRefusedIP]+m[mRefusedT] >= float64(len(a.attacker)) {
			return m
		}
		if time.Now().After(end) {
			a.t.Fatalf("the server took only %v of %d attacker connections within %v", m[mOpen]+m[mRefusedIP]+m[mRefusedT], len(a.attacker), fdAttackWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDescriptorAttack(t *testing.T) {
	a := startFDAttack(t)
	a.event(a.normal, "before")

	// One address opens more connections than the descriptor limit.
	a.dial("127.0.0.2", fdAttackConns)
	a.settle()
	held, refused := a.classify()
	a.alive("after the attack")
	m := a.metrics()
	perIP := int(m[mPerIPMax])
	t.Logf("one address, %d connections: %d held, %d refused; bounds %v total, %d per address; meterd's descriptors at most %d",
		fdAttackConns, held, refused, m[mMax], perIP, a.fdsPeak)
	if perIP != fdAttackPerAddr || m[mMax] != 640 {
		t.Fatalf("bounds %v total, %d per address; want those derived from ulimit -n %d: 640, %d", m[mMax], perIP, fdAttackNofile, fdAttackPerAddr)
	}
	if held != perIP || refused != fdAttackConns-perIP || m[mRefusedIP] != float64(fdAttackConns-perIP) {
		t.Fatalf("%d held, %d refused (metric %v); want %d held and the other %d refused",
			held, refused, m[mRefusedIP], perIP, fdAttackConns-perIP)
	}
	// The normal client keeps getting answers, on new connections too.
	a.mustAnswer(a.fresh, "GET", "/healthz", "", 200)
	a.event(a.fresh, "attacked-fresh")
	a.event(a.normal, "attacked-kept")

	// Ten more addresses fill the overall bound: new connections are then
	// refused with a 503, the kept-alive one is still served.
	for i := range fdAttackAddrs {
		a.dial("127.0.0."+strconv.Itoa(10+i), fdAttackPerAddr)
	}
	a.settle()
	held, refused = a.classify()
	a.alive("after the wide attack")
	m = a.metrics()
	t.Logf("then %d more addresses, %d connections each; of all %d: %d held, %d refused; open %v; meterd's descriptors at most %d",
		fdAttackAddrs, fdAttackPerAddr, len(a.attacker), held, refused, m[mOpen], a.fdsPeak)
	if m[mOpen] != m[mMax] || m[mRefusedT] == 0 || held+1 > int(m[mMax]) {
		t.Fatalf("open %v, refused at the total bound %v, held %d; want the bound %v reached and the rest refused", m[mOpen], m[mRefusedT], held, m[mMax])
	}
	if status, body, err := a.answer(a.fresh, "GET", "/healthz", ""); err == nil && (status != 503 || !strings.Contains(body, `"overloaded"`)) {
		t.Fatalf("a new connection past the overall bound: %d %s, want 503 overloaded (or a reset)", status, body)
	}
	a.event(a.normal, "full-kept")
	if m[mAcceptErr] != 0 || a.fdsPeak >= fdAttackNofile-fdReserved {
		t.Fatalf("%v accept errors, %d descriptors at most: the bounds should keep meterd well below its limit %d", m[mAcceptErr], a.fdsPeak, fdAttackNofile)
	}

	// The attackers go: the counts come back down to the normal client's one.
	a.closeAttacker()
	end := time.Now().Add(fdAttackWait)
	for m = a.metrics(); m[mOpen] != 1; m = a.metrics() {
		if time.Now().After(end) {
			t.Fatalf("open connections %v %v after the attackers closed, want 1 (the normal client's)", m[mOpen], fdAttackWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.mustAnswer(a.fresh, "GET", "/healthz", "", 200)
	a.event(a.fresh, "after")
	a.h.stop()
}

func TestPlanDescriptors(t *testing.T) {
	for _, tc := range []struct {
		nofile                       uint64
		conns, perIP                 int
		pebble, wantConns, wantPerIP int
		derivedConns, derivedPerIP   bool
		errWant                      string
	}{
		{nofile: 1024, pebble: 256, wantConns: 640, wantPerIP: 80, derivedConns: true, derivedPerIP: true},
		{nofile: 4096, pebble: 1000, wantConns: 2968, wantPerIP: 371, derivedConns: true, derivedPerIP: true},
		{nofile: 1 << 20, pebble: 1000, wantConns: httpConnsDerivedMax, wantPerIP: httpConnsDerivedMax / 8, derivedConns: true, derivedPerIP: true},
		{nofile: ^uint64(0), pebble: 1000, wantConns: httpConnsDerivedMax, wantPerIP: httpConnsDerivedMax / 8, derivedConns: true, derivedPerIP: true}, // RLIM_INFINITY
		{nofile: 260, pebble: 100, wantConns: 32, wantPerIP: 4, derivedConns: true, derivedPerIP: true},                                                // the least meterd runs with
		{nofile: 1024, conns: 640, perIP: 640, pebble: 256, wantConns: 640, wantPerIP: 640},                                                            // behind a proxy
		{nofile: 1024, conns: 10, pebble: 256, wantConns: 10, wantPerIP: 1, derivedPerIP: true},
		{nofile: 1 << 20, conns: 100000, pebble: 1000, wantConns: 100000, wantPerIP: 12500, derivedPerIP: true}, // above the derived cap when asked
		{nofile: 259, errWant: "the open-files limit (RLIMIT_NOFILE) is 259: meterd needs at least 260"},
		{nofile: 1024, conns: 641, errWant: "http-conns-max: 641 connections do not fit the open-files limit (RLIMIT_NOFILE) 1024, which leaves room for at most 640"},
		{nofile: 1024, perIP: 641, errWant: "http-conns-per-ip-max: 641 is more than the 640 connections"},
		{nofile: 1024, conns: 100, perIP: 101, errWant: "http-conns-per-ip-max: 101 is more than the 100"},
	} {
		name := fmt.Sprintf("nofile=%d conns=%d perIP=%d", tc.nofile, tc.conns, tc.perIP)
		p, err := planDescriptors(tc.nofile, tc.conns, tc.perIP)
		if tc.errWant != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errWant) {
				t.Errorf("%s: error %v, want one containing %q", name, err, tc.errWant)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if p.pebbleFilesMax != tc.pebble || p.httpConnsMax != tc.wantConns || p.httpConnsPerIPMax != tc.wantPerIP ||
			p.connsDerived != tc.derivedConns || p.connsPerIPDerived != tc.derivedPerIP {
			t.Errorf("%s: %+v, want pebble %d, conns %d (derived %v), per IP %d (derived %v)", name, p,
				tc.pebble, tc.wantConns, tc.derivedConns, tc.wantPerIP, tc.derivedPerIP)
		}
		if used := fdReserved + p.pebbleFilesMax + p.httpConnsMax; used > p.nofile {
			t.Errorf("%s: %d reserved + %d Pebble + %d connections exceed the limit %d", name, fdReserved, p.pebbleFilesMax, p.httpConnsMax, p.nofile)
		}
	}
}

func TestConnBoundSettings(t *testing.T) {
	getenv := func(k string) string {
		return map[string]string{"METERD_HTTP_CONNS_PER_IP_MAX": "50"}[k]
	}
	c, err := LoadConfig([]string{"--http-conns-max", "500"}, getenv, io.Discard)
	if err != nil || c.HTTPConnsMax != 500 || c.HTTPConnsPerIPMax != 50 {
		t.Fatalf("flag and environment: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--http-conns-max", "-1"}, "http-conns-max (flag --http-conns-max): -1 is outside 0..1048576"},
		{[]string{"--http-conns-per-ip-max", "2000000"}, "http-conns-per-ip-max (flag --http-conns-per-ip-max): 2000000 is outside"},
		{[]string{"--http-conns-max", "100", "--http-conns-per-ip-max", "101"}, "101 is more than --http-conns-max 100"},
	} {
		_, err := LoadConfig(tc.args, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoadConfig(%q): %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
