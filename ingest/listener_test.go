package ingest

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

const listenerTestWait = 5 * time.Second

// listenerUnderTest is a Listener on a loopback port whose admitted
// connections arrive on accepted.
type listenerUnderTest struct {
	t        *testing.T
	l        *Listener
	reg      *prometheus.Registry
	accepted chan net.Conn
	acceptFn chan error // Accept's final error
}

func newListenerUnderTest(t *testing.T, connsMax, perIPMax int) *listenerUnderTest {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	l, err := NewListener(ln, ListenerConfig{ConnsMax: connsMax, ConnsPerIPMax: perIPMax, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	u := &listenerUnderTest{t: t, l: l, reg: reg, accepted: make(chan net.Conn, 64), acceptFn: make(chan error, 1)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				u.acceptFn <- err
				return
			}
			u.accepted <- c
		}
	}()
	t.Cleanup(func() { l.Close() })
	return u
}

// dialFrom connects to the listener from the loopback address src.
func (u *listenerUnderTest) dialFrom(src string) net.Conn {
	u.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: listenerTestWait}
	c, err := d.Dial("tcp", u.l.Addr().String())
	if err != nil {
		u.t.Skipf("dialing from %s (needs 127.0.0.0/8 routed to loopback, as on Linux): %v", src, err)
	}
	u.t.Cleanup(func() { c.Close() })
	return c
}

// admitted waits for the next admitted connection.
func (u *listenerUnderTest) admitted() net.Conn {
	u.t.Helper()
	select {
	case c := <-u.accepted:
		return c
	case <-time.After(listenerTestWait):
		u.t.Fatal("no connection admitted")
		return nil
	}
}

// refused reads what the server sent on client connection c: a 503
// overloaded, then the end of the connection.
func (u *listenerUnderTest) refused(c net.Conn) {
	u.t.Helper()
	c.SetReadDeadline(time.Now().Add(listenerTestWait))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		u.t.Fatalf("refused connection: reading its answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"code":"overloaded"`) || resp.Header.Get("Retry-After") == "" {
		u.t.Fatalf("refused connection: answer %d %s %s, want 503 overloaded with Retry-After", resp.StatusCode, resp.Header, body)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		u.t.Fatalf("refused connection: still open after its answer (read %d, %v)", n, err)
	}
	select {
	case sc := <-u.accepted:
		u.t.Fatalf("connection from %v was handed to the server although refused", sc.RemoteAddr())
	default:
	}
}

func (u *listenerUnderTest) metric(name, reason string) float64 {
	u.t.Helper()
	return gatheredValue(u.t, u.reg, name, reason)
}

// gatheredValue returns the value of the metric name (with label
// reason=reason when reason is not empty) in reg.
func gatheredValue(t *testing.T, reg prometheus.Gatherer, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := reason == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					match = true
				}
			}
			if !match {
				continue
			}
			switch {
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Counter != nil:
				return m.Counter.GetValue()
			}
		}
	}
	t.Fatalf("metric %s{reason=%q} not found", name, reason)
	return 0
}

func (u *listenerUnderTest) wantOpen(total int) {
	u.t.Helper()
	if got, _ := u.l.openConns(nil); got != total {
		u.t.Fatalf("open connections %d, want %d", got, total)
	}
	if got := u.metric("meterd_http_connections_open", ""); got != float64(total) {
		u.t.Fatalf("meterd_http_connections_open %v, want %d", got, total)
	}
}

func TestListenerBoundsPerIPAndTotal(t *testing.T) {
	u := newListenerUnderTest(t, 4, 2)

	// Two from 127.0.0.1 are admitted, the third is refused (limit_ip).
	var server []net.Conn
	for range 2 {
		u.dialFrom("127.0.0.1")
		server = append(server, u.admitted())
	}
	u.refused(u.dialFrom("127.0.0.1"))
	if got := u.metric("meterd_http_connections_refused_total", refusedLimitIP); got != 1 {
		t.Fatalf("refused limit_ip = %v, want 1", got)
	}

	// Another address still gets its own two: the bound is per address.
	for range 2 {
		u.dialFrom("127.0.0.2")
		server = append(server, u.admitted())
	}
	u.wantOpen(4)
	if _, from := u.l.openConns(server[2].RemoteAddr()); from != 2 {
		t.Fatalf("open from 127.0.0.2 = %d, want 2", from)
	}

	// A third address is within its own bound, but the total is reached.
	u.refused(u.dialFrom("127.0.0.3"))
	if got := u.metric("meterd_http_connections_refused_total", refusedLimitTotal); got != 1 {
		t.Fatalf("refused limit_total = %v, want 1", got)
	}

	// Each connection is counted out exactly once, however often it is closed.
	for _, c := range server {
		c.Close()
		c.Close()
	}
	u.wantOpen(0)
	u.l.mu.Lock()
	left := len(u.l.perIP)
	u.l.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d addresses still counted after every connection closed", left)
	}

	// The room is back: 127.0.0.1 is admitted again.
	u.dialFrom("127.0.0.1")
	u.admitted().Close()
	u.wantOpen(0)
	if got := u.metric("meterd_http_accept_errors_total", ""); got != 0 {
		t.Fatalf("accept errors %v, want 0", got)
	}
}

// failingListener fails its first failures accepts with EMFILE (as accept4
// does when the process is out of descriptors), then accepts from ln.
type failingListener struct {
	net.Listener
	failures atomic.Int32
}

func emfile() error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
}

func (f *failingListener) Accept() (net.Conn, error) {
	if f.failures.Add(-1) >= 0 {
		return nil, emfile()
	}
	return f.Listener.Accept()
}

func TestListenerRetriesAcceptErrors(t *testing.T) {
	serve := func(ln net.Listener) (addr string, served chan error) {
		srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") }}
		served = make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		return ln.Addr().String(), served
	}
	newFailing := func(n int32) *failingListener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f := &failingListener{Listener: ln}
		f.failures.Store(n)
		return f
	}

	// The defect: fasthttp's Serve returns on the first EMFILE.
	bare := newFailing(1)
	defer bare.Close()
	_, served := serve(bare)
	select {
	case err := <-served:
		if !errors.Is(err, syscall.EMFILE) {
			t.Fatalf("bare fasthttp Serve returned %v, want the EMFILE", err)
		}
	case <-time.After(listenerTestWait):
		t.Fatal("bare fasthttp Serve did not return on EMFILE: the defect this Listener works around is gone")
	}

	// Through the Listener, the errors are retried and serving goes on.
	const failures = 4
	reg := prometheus.NewRegistry()
	l, err := NewListener(newFailing(failures), ListenerConfig{ConnsMax: 8, ConnsPerIPMax: 8, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	addr, served := serve(l)
	client := &http.Client{Timeout: listenerTestWait}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET after %d accept errors: %v", failures, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("GET after accept errors: %d %q", resp.StatusCode, body)
	}
	if got := gatheredValue(t, reg, "meterd_http_accept_errors_total", ""); got != failures {
		t.Fatalf("meterd_http_accept_errors_total %v, want %d", got, failures)
	}

	// Close ends Serve, cleanly.
	client.CloseIdleConnections()
	l.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Close returned %v, want nil", err)
		}
	case <-time.After(listenerTestWait):
		t.Fatal("Serve did not return after Close")
	}
}

func TestListenerCloseEndsAccept(t *testing.T) {
	// Close wakes an Accept that waits for a connection ...
	u := newListenerUnderTest(t, 1, 1)
	time.Sleep(10 * time.Millisecond)
	u.l.Close()
	select {
	case err := <-u.acceptFn:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close returned %v, want net.ErrClosed", err)
		}
	case <-time.After(listenerTestWait):
		t.Fatal("Accept did not return after Close")
	}

	// ... and one that waits to retry after an error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &failingListener{Listener: ln}
	f.failures.Store(1 << 30)
	l, err := NewListener(f, ListenerConfig{ConnsMax: 1, ConnsPerIPMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // several failures: the backoff is at tens of ms
	start := time.Now()
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close returned %v, want net.ErrClosed", err)
		}
		if d := time.Since(start); d > acceptBackoffMax/2 {
			t.Fatalf("Accept took %v to notice Close", d)
		}
	case <-time.After(listenerTestWait):
		t.Fatal("Accept waiting to retry did not return after Close")
	}
}

func TestClientKey(t *testing.T) {
	for _, tc := range []struct{ addr, key string }{
		{"127.0.0.1:80", "127.0.0.1"},
		{"[::ffff:10.1.2.3]:80", "10.1.2.3"},             // IPv4-mapped counts as IPv4
		{"[2001:db8:1:2:aaaa::1]:80", "2001:db8:1:2::"},  // an IPv6 /64
		{"[2001:db8:1:2:bbbb::9]:443", "2001:db8:1:2::"}, // the same /64
		{"[2001:db8:1:3::1]:80", "2001:db8:1:3::"},       // another /64
		{"[fe80::1%eth0]:80", "fe80::"},                  // zone dropped
		{"[::1]:80", "::"},                               // loopback's /64
	} {
		ap := netip.MustParseAddrPort(tc.addr)
		got := clientKey(net.TCPAddrFromAddrPort(ap))
		if got.String() != tc.key {
			t.Errorf("clientKey(%s) = %s, want %s", tc.addr, got, tc.key)
		}
	}
	if got := clientKey(&net.UnixAddr{Name: "/tmp/s", Net: "unix"}); got.IsValid() {
		t.Errorf("clientKey(unix) = %s, want the zero Addr", got)
	}
	if got := clientKey(nil); got.IsValid() {
		t.Errorf("clientKey(nil) = %s, want the zero Addr", got)
	}
}

func TestNewListenerRefusesBadBounds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, c := range []ListenerConfig{
		{ConnsMax: 0, ConnsPerIPMax: 1},
		{ConnsMax: 4, ConnsPerIPMax: 0},
		{ConnsMax: 4, ConnsPerIPMax: 5},
		{ConnsMax: -1, ConnsPerIPMax: -1},
	} {
		if _, err := NewListener(ln, c); err == nil {
			t.Errorf("NewListener(%+v): no error", c)
		}
	}
	if _, err := NewListener(nil, ListenerConfig{ConnsMax: 1, ConnsPerIPMax: 1}); err == nil {
		t.Error("NewListener(nil): no error")
	}
}
