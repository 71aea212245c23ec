package ingest

import (
	"io"
	"net"
	"sync/atomic"
	"time"
)

// A request refused before its body was read (too large, unauthorized,
// overloaded) is answered with Connection: close while the client may still
// be sending the body. Closing the socket with unread bytes makes the kernel
// send a reset, and a reset can reach the client before it has read the
// answer: it then sees "connection reset by peer" instead of the 413 that
// says why. So such a connection closes the way net/http closes one: it
// shuts its sending side (the client reads the answer, then end of stream),
// discards what still arrives for a short while, and only then closes.
const (
	lingerMax      = 500 * time.Millisecond
	lingerBytesMax = 4 << 20
)

// lingerListener hands out connections that can be told to linger on close.
type lingerListener struct{ net.Listener }

func (l lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lingerConn{Conn: c}, nil
}

type lingerConn struct {
	net.Conn
	linger atomic.Bool
}

// lingerOnClose makes c's Close linger, when c is a lingerConn.
func lingerOnClose(c net.Conn) {
	if lc, ok := c.(*lingerConn); ok {
		lc.linger.Store(true)
	}
}

// Close closes at once, or, when told to linger, shuts the sending side and
// closes after the client has had time to read the answer. The wait runs on
// its own goroutine, so the server's worker is free at once; the connection
// keeps its place in the listener's bounds until it is really closed.
func (c *lingerConn) Close() error {
	if !c.linger.Load() {
		return c.Conn.Close()
	}
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return c.Conn.Close()
	}
	go func() {
		if c.Conn.SetReadDeadline(time.Now().Add(lingerMax)) == nil {
			io.Copy(io.Discard, io.LimitReader(c.Conn, lingerBytesMax))
		}
		c.Conn.Close()
	}()
	return nil
}
