package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// HTTPServer is an HTTP server process a benchmark starts and owns: meterd
// itself, or the no-op endpoint (cmd/meterbench's noop-server). It listens
// on a free port of 127.0.0.1 given with --listen, and is ready when GET
// /healthz answers 200.
type HTTPServer struct {
	addr string
	log  string
	serverProc
}

// Bounds of an HTTP server's life.
const (
	httpServerStartWaitMax = 60 * time.Second // from exec to /healthz 200 (meterd replays its data first)
	httpServerStopWaitMax  = 60 * time.Second // from SIGTERM to exit, before SIGKILL
	httpServerKillWaitMax  = 10 * time.Second
	httpServerProbe        = 20 * time.Millisecond
	httpServerLogTailMax   = 4 << 10
)

// StartHTTPServer runs bin with args, then "--listen 127.0.0.1:PORT", with
// its output in dir/<name>.log, and returns once it answers /healthz.
func StartHTTPServer(name, dir, bin string, args ...string) (*HTTPServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child keeps its own descriptor
	cmd := exec.Command(bin, append(args, "--listen", addr)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: starting %s: %w", name, bin, err)
	}
	s := &HTTPServer{addr: addr, log: logPath}
	s.startReaping(name, cmd)
	if err := s.waitReady(); err != nil {
		_ = s.Kill()
		return nil, fmt.Errorf("%s (%s): %w\n--- %s ---\n%s", name, addr, err, logPath, logTail(logPath, 0, httpServerLogTailMax))
	}
	return s, nil
}

func (s *HTTPServer) waitReady() error {
	deadline := time.Now().Add(httpServerStartWaitMax)
	for {
		select {
		case <-s.done:
			return fmt.Errorf("exited before it answered (%v)", s.cmd.ProcessState)
		default:
		}
		st, _, err := fasthttp.GetTimeout(nil, "http://"+s.addr+"/healthz", time.Second)
		if err == nil && st == 200 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no 200 from /healthz within %v: %d %v", httpServerStartWaitMax, st, err)
		}
		time.Sleep(httpServerProbe)
	}
}

// Base returns the server's URL, http://127.0.0.1:PORT.
func (s *HTTPServer) Base() string { return "http://" + s.addr }

// Stop sends SIGTERM (meterd finishes what it acknowledged, then exits) and
// kills the process if it has not exited within httpServerStopWaitMax.
func (s *HTTPServer) Stop() error {
	return s.stopOnce(syscall.SIGTERM, httpServerStopWaitMax, s.kill)
}

// Kill kills the process, as a crash would.
func (s *HTTPServer) Kill() error { return s.killOnce(s.kill) }

func (s *HTTPServer) kill() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.done:
		return nil
	case <-time.After(httpServerKillWaitMax):
		return fmt.Errorf("%s pid %d still running %v after SIGKILL", s.name, s.PID(), httpServerKillWaitMax)
	}
}
