package bench

import (
	"fmt"
	"os/exec"
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
