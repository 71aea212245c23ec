package bench

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// serverProc is a server process a benchmark starts and owns (redis-server,
// the postmaster): reaped in the background, and stopped, gracefully or
// as a crash would, once.
type serverProc struct {
	name string        // for messages
	cmd  *exec.Cmd     // started
	done chan struct{} // closed once the process is reaped

	mu      sync.Mutex
	stopped bool
}

// startReaping begins to wait for the started process, closing done when it
// is reaped.
func (p *serverProc) startReaping(name string, cmd *exec.Cmd) {
	p.name, p.cmd, p.done = name, cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.done) }()
}

// PID returns the process id.
func (p *serverProc) PID() int { return p.cmd.Process.Pid }

// markStopped reports whether this call is the one that stops the server.
func (p *serverProc) markStopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	was := p.stopped
	p.stopped = true
	return !was
}

// stopOnce sends sig (the server's graceful shutdown) and waits for the
// process to exit, at most wait; then it kills it with kill. Stopping a
// stopped server does nothing.
func (p *serverProc) stopOnce(sig syscall.Signal, wait time.Duration, kill func() error) error {
	if !p.markStopped() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return kill()
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(wait):
		if err := kill(); err != nil {
			return err
		}
		return fmt.Errorf("%s pid %d did not exit within %v of %v; killed", p.name, p.PID(), wait, sig)
	}
}

// killOnce runs kill unless the server was already stopped.
func (p *serverProc) killOnce(kill func() error) error {
	if !p.markStopped() {
		return nil
	}
	return kill()
}

// logTail returns the last n bytes of what a server logged to path from
// offset on, trimmed, as text (an error's text if it cannot be read).
func logTail(path string, offset int64, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if offset >= 0 && offset <= int64(len(b)) {
		b = b[offset:]
	}
	return textTail(b, n)
}

// textTail returns the last n bytes of b, trimmed, as text.
func textTail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
