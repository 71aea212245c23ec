package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/prometheus/client_golang/prometheus"
)

// Listener is the HTTP server's way to take connections. It guarantees two
// things fasthttp does not:
//
//  1. Accept returns only once the listener is closed. Any other accept
//     error (EMFILE, ENFILE, ENOBUFS, ECONNABORTED, ...) is counted, logged
//     at most once per acceptLogEvery, and retried after a backoff that
//     doubles from acceptBackoffMin to acceptBackoffMax. fasthttp's Serve
//     returns on the first non-timeout accept error, and meterd would exit:
//     one client holding idle connections up to the descriptor limit could
//     stop the server.
//  2. At most ConnsMax connections are open at once, and at most
//     ConnsPerIPMax from one client address (an IPv4 address, or an IPv6
//     /64, the block one subscriber or host is given). Kept below the
//     descriptor limit, these bounds mean accept does not fail for lack of
//     descriptors in the first place, and one client cannot take the room
//     of all others. A connection past a bound is answered a best-effort
//     503 overloaded (written without waiting: a fresh socket's send
//     buffer takes it, and a tiny write deadline bounds the rest) and
//     closed at once; Accept goes on to the next one.
//
// Each admitted connection is counted once and released exactly once, by
// its first Close.
type Listener struct {
	ln            net.Listener
	connsMax      int
	connsPerIPMax int
	log           *slog.Logger
	metrics       *listenerMetrics

	mu    sync.Mutex
	open  int                   // connections admitted and not yet closed
	perIP map[netip.Addr]uint32 // clientKey -> its open connections; no zero entries, so at most connsMax of them

	done      chan struct{} // closed by Close
	closeOnce sync.Once

	acceptLog balance.LogLimiter
	refuseLog balance.LogLimiter
}

// ListenerConfig configures a Listener.
type ListenerConfig struct {
	ConnsMax      int // open connections overall, at least 1
	ConnsPerIPMax int // open connections from one client address, 1..ConnsMax
	Log           *slog.Logger
	Registerer    prometheus.Registerer // nil: metrics are kept but not registered
}

// Bounds of the accept retry and of its log.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	acceptLogEvery   = 10 * time.Second
	// refuseWriteMax bounds the write of the 503 to a refused connection.
	refuseWriteMax = 5 * time.Millisecond
)

// Reasons of meterd_http_connections_refused_total.
const (
	refusedLimitTotal = "limit_total"
	refusedLimitIP    = "limit_ip"
)

// The answers written to a refused connection before it is closed.
var (
	refusedTotalAnswer = refusalAnswer("meterd has too many open connections; retry later")
	refusedIPAnswer    = refusalAnswer("too many open connections from this address; reuse connections, or retry later")
)

// refusalAnswer is the whole HTTP response to a connection refused for a
// bound: the contract's error body with code overloaded.
func refusalAnswer(msg string) []byte {
	body := []byte(`{"error":{"code":`)
	body = appendString(body, wallet.CodeOverloaded)
	body = append(body, `,"message":`...)
	body = appendString(body, msg)
	body = append(body, "}}"...)
	status := statusOf(wallet.CodeOverloaded)
	head := fmt.Sprintf("HTTP/1.1 %d Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"+
		"Connection: close\r\nContent-Length: %d\r\n\r\n", status, len(body))
	return append([]byte(head), body...)
}

// NewListener wraps ln. It refuses bounds that would make it refuse every
// connection or let one client take them all.
func NewListener(ln net.Listener, c ListenerConfig) (*Listener, error) {
	if ln == nil {
		return nil, errors.New("ingest: NewListener: nil listener")
	}
	if c.ConnsMax < 1 {
		return nil, fmt.Errorf("ingest: ConnsMax %d: want at least 1", c.ConnsMax)
	}
	if c.ConnsPerIPMax < 1 || c.ConnsPerIPMax > c.ConnsMax {
		return nil, fmt.Errorf("ingest: ConnsPerIPMax %d: want 1..ConnsMax (%d)", c.ConnsPerIPMax, c.ConnsMax)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	l := &Listener{
		ln:            ln,
		connsMax:      c.ConnsMax,
		connsPerIPMax: c.ConnsPerIPMax,
		acceptLog:     balance.LogLimiter{Every: acceptLogEvery},
		refuseLog:     balance.LogLimiter{Every: acceptLogEvery},
		log:           c.Log,
		metrics:       newListenerMetrics(c.Registerer),
		perIP:         make(map[netip.Addr]uint32),
		done:          make(chan struct{}),
	}
	l.metrics.connsMax.Set(float64(c.ConnsMax))
	l.metrics.connsPerIPMax.Set(float64(c.ConnsPerIPMax))
	return l, nil
}

// Accept returns the next connection within the bounds. It returns an error
// only once the listener is closed: net.ErrClosed, or the underlying
// listener's own error of being closed.
func (l *Listener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			if l.closed() {
				return nil, net.ErrClosed
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			l.metrics.acceptErrors.Inc()
			if n, ok := l.acceptLog.Allow(time.Now()); ok {
				l.log.Warn("accepting a connection failed; retrying", "component", "http", "err", err,
					"retry_in", backoff.String(), "errors_since_last_log", n)
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return nil, net.ErrClosed
			}
			continue
		}
		backoff = 0
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
	}
}

// admit counts c in, or refuses and closes it when a bound is reached.
func (l *Listener) admit(c net.Conn) net.Conn {
	key := clientKey(c.RemoteAddr())
	reason := ""
	l.mu.Lock()
	switch {
	case l.open >= l.connsMax:
		reason = refusedLimitTotal
	case l.perIP[key] >= uint32(l.connsPerIPMax):
		reason = refusedLimitIP
	default:
		l.open++
		l.perIP[key]++
	}
	l.mu.Unlock()
	if reason == "" {
		l.metrics.open.Inc()
		return &limitedConn{Conn: c, l: l, key: key}
	}
	l.refuse(c, reason, key)
	return nil
}

// refuse answers 503 without waiting and closes c.
func (l *Listener) refuse(c net.Conn, reason string, key netip.Addr) {
	answer := refusedTotalAnswer
	if reason == refusedLimitIP {
		answer = refusedIPAnswer
	}
	l.metrics.refused.WithLabelValues(reason).Inc() // counted before the client can see the close
	if c.SetWriteDeadline(time.Now().Add(refuseWriteMax)) == nil {
		c.Write(answer) // best effort: a client that is gone or slow misses it
	}
	c.Close()
	if n, ok := l.refuseLog.Allow(time.Now()); ok {
		limit := l.connsMax
		if reason == refusedLimitIP {
			limit = l.connsPerIPMax
		}
		l.log.Warn("connection refused: bound reached", "component", "http", "reason", reason, "limit", limit,
			"client", key.String(), "refused_since_last_log", n)
	}
}

// release counts out one connection of key.
func (l *Listener) release(key netip.Addr) {
	l.mu.Lock()
	l.open--
	if n := l.perIP[key]; n <= 1 {
		delete(l.perIP, key)
	} else {
		l.perIP[key] = n - 1
	}
	if l.open < 0 {
		l.mu.Unlock()
		panic("ingest: Listener: more connections released than admitted")
	}
	l.mu.Unlock()
	l.metrics.open.Dec()
}

// openConns returns the connections admitted and not yet closed, overall
// and from the client address of addr.
func (l *Listener) openConns(addr net.Addr) (total, fromAddr int) {
	key := clientKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, int(l.perIP[key])
}

// Close stops Accept, including one waiting to retry. Connections already
// admitted stay open until their own Close.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.ln.Close()
}

// Addr returns the underlying listener's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

func (l *Listener) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// limitedConn is an admitted connection; its first Close releases its count.
type limitedConn struct {
	net.Conn
	l        *Listener
	key      netip.Addr
	released atomic.Bool
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	if c.released.CompareAndSwap(false, true) {
		c.l.release(c.key)
	}
	return err
}

// CloseWrite shuts the sending side, for a connection that lingers on close
// (linger.go).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// clientKey is the address a connection is counted under: the IPv4 address
// (an IPv4-mapped IPv6 address counts as IPv4), or the /64 of an IPv6
// address, since one host or subscriber is routinely given a whole /64 and
// could otherwise open ConnsPerIPMax connections from each of its addresses.
// An address that is not IP (a Unix socket) counts under the zero Addr.
func clientKey(a net.Addr) netip.Addr {
	var ip netip.Addr
	switch t := a.(type) {
	case *net.TCPAddr:
		ip = t.AddrPort().Addr()
	default:
		if a == nil {
			return netip.Addr{}
		}
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	if ip.Is6() {
		if p, err := ip.WithZone("").Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return ip
}

// listenerMetrics are the Listener's Prometheus metrics.
type listenerMetrics struct {
	open          prometheus.Gauge
	connsMax      prometheus.Gauge
	connsPerIPMax prometheus.Gauge
	refused       *prometheus.CounterVec
	acceptErrors  prometheus.Counter
}

func newListenerMetrics(reg prometheus.Registerer) *listenerMetrics {
	m := &listenerMetrics{
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_http_connections_open",
			Help: "HTTP connections admitted and not yet closed.",
		}),
		connsMax: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_http_connections_max",
			Help: "Bound on open HTTP connections (--http-conns-max, or derived from RLIMIT_NOFILE).",
		}),
		connsPerIPMax: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_http_connections_per_ip_max",
			Help: "Bound on open HTTP connections from one client address (--http-conns-per-ip-max).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_http_connections_refused_total",
			Help: "HTTP connections closed at accept because a bound was reached, by bound (limit_total, limit_ip).",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterd_http_accept_errors_total",
			Help: "Failed accepts of HTTP connections (such as EMFILE: out of descriptors), each retried after a backoff.",
		}),
	}
	// Both reasons are reported from the start, at 0.
	m.refused.WithLabelValues(refusedLimitTotal)
	m.refused.WithLabelValues(refusedLimitIP)
	if reg != nil {
		reg.MustRegister(m.open, m.connsMax, m.connsPerIPMax, m.refused, m.acceptErrors)
	}
	return m
}
