//go:build linux

// Package chtest runs real ClickHouse servers for tests.
//
// Start gives a test a server: a private clickhouse-server process with its
// own loopback ports and data directory, or the server named by
// METERD_TEST_CLICKHOUSE=host:port (native protocol), or, in a package whose
// TestMain calls Main, one server shared by every test of the test binary.
// Tests that may share a server keep their tables in Database(t). Tests that
// stop, kill or restart a server take a private one: StartInDir(t, t.TempDir()).
//
// Guarantees:
//   - A private server listens on 127.0.0.1 only, on ports that were free, with
//     its data, logs and configuration under one directory; Start does not
//     return until that very server (not another one that took the port)
//     answers on both ports, and fails within startWaitMax otherwise, with the
//     server's error log in the message.
//   - No server outlives the test binary: each one is stopped at t.Cleanup (or
//     by Main), and the kernel kills it (SIGKILL, via PR_SET_PDEATHSIG) if the
//     test binary dies first: a panic, a -timeout, a signal.
//   - Nothing is installed here: a missing clickhouse-server fails the test
//     with the command that installs it (make test-deps).
//
// StartWith starts a private server with more than the defaults: the native
// protocol over TLS too (SecureAddr, with a certificate for 127.0.0.1 that
// CAFile trusts), and a user of its own with a password. The user default
// stays passwordless on loopback: Query, Conn and the readiness probes use it.
//
// The configuration is written for ClickHouse 18.16 (Debian's package; root
// element <yandex>, which current releases still accept).
package chtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// EnvAddr names the environment variable that points tests at a running
// server (host:port of its native protocol) instead of starting one.
const EnvAddr = "METERD_TEST_CLICKHOUSE"

// The bounds of this package. A crossed bound is an error naming it.
const (
	startWaitMax      = 60 * time.Second      // from exec to a server that answers
	startAttemptsMax  = 3                     // fresh ports tried when a port was taken under us
	stopWaitMax       = 20 * time.Second      // from SIGTERM to exit, before SIGKILL
	killWaitMax       = 10 * time.Second      // from SIGKILL to exit
	probeTimeout      = 2 * time.Second       // one readiness probe
	probeInterval     = 50 * time.Millisecond // between readiness probes
	queryTimeout      = 60 * time.Second      // one Query (clickhouse-client run)
	logTailBytesMax   = 4 << 10               // of each log quoted in a failure message
	dbNameTestBytes   = 32                    // of the test name kept in a Database name
	httpBodyBytesMax  = 1 << 20               // of a readiness probe's answer
	connDialTimeout   = 5 * time.Second       // Conn
	connReadTimeout   = 60 * time.Second      // Conn
	connOpenMax       = 8                     // Conn's pool
	connLifetime      = 10 * time.Minute      // Conn's pool
	serverBinary      = "clickhouse-server"   // looked up in PATH, then /usr/sbin, /usr/bin
	clientBinary      = "clickhouse-client"   // idem
	missingServerHelp = "run `make test-deps` (installs Debian's clickhouse-server)"
	certValidFor      = 24 * time.Hour // of the certificate of a TLS server
)

// Server is a ClickHouse server for tests.
type Server struct {
	Addr     string // host:port of the native protocol (clickhouse-go, clickhouse-client)
	HTTPAddr string // host:port of the HTTP interface; "" for a server given by EnvAddr
	Version  string // as SELECT version() reports it, e.g. "18.16.1"
	Dir      string // data, logs and configuration; "" for a server given by EnvAddr

	// With Options.TLS: host:port of the native protocol over TLS, and a
	// PEM file of the CA that signed the server's certificate (for
	// 127.0.0.1). "" otherwise.
	SecureAddr string
	CAFile     string

	opts   Options
	shared bool // used by many tests: never stopped by one

	mu   sync.Mutex
	proc *process // nil when not running or not ours
}

// PID returns the server's process id, or 0 when it is not ours or not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// process is a running clickhouse-server and the result of waiting for it.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process is reaped
	err  error         // of cmd.Wait, valid after done
}

// Start returns a server for the test. With METERD_TEST_CLICKHOUSE=host:port
// set, it is that server; in a package whose TestMain calls Main, it is the
// package's shared server; otherwise it is a private server in a new
// t.TempDir(), stopped at cleanup. Keep tables in Database(t) unless the
// server is known to be private.
func Start(t testing.TB) *Server {
	t.Helper()
	if addr := os.Getenv(EnvAddr); addr != "" {
		return external(t, addr)
	}
	if s, ok, err := mainServer(); ok {
		if err != nil {
			t.Fatalf("chtest: the shared server: %v", err)
		}
		return s
	}
	return StartInDir(t, t.TempDir())
}

// Options asks StartWith for more than a plain server.
type Options struct {
	// TLS: the server also serves the native protocol over TLS on
	// SecureAddr, with a certificate for 127.0.0.1 signed by the CA of
	// CAFile. The plain port stays open for the harness.
	TLS bool
	// User and Password: a user besides default who must give Password
	// (stored as its SHA-256), from loopback only. Both or neither.
	User, Password string
}

// StartInDir starts a private server on dir, on free loopback ports, and
// stops it at cleanup. dir keeps the data across servers: after Stop or Kill,
// StartInDir on the same dir serves what the earlier server had written.
func StartInDir(t testing.TB, dir string) *Server {
	t.Helper()
	return StartWith(t, dir, Options{})
}

// StartWith is StartInDir with opts: TLS, a user with a password, or both.
func StartWith(t testing.TB, dir string, opts Options) *Server {
	t.Helper()
	if (opts.User == "") != (opts.Password == "") {
		t.Fatal("chtest: Options.User and Options.Password go together")
	}
	s, err := startPrivate(dir, opts)
	if err != nil {
		t.Fatalf("chtest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("chtest: stopping the server in %s: %v", s.Dir, err)
		}
	})
	return s
}

// Stop stops the server: SIGTERM, then SIGKILL to its process group if it has
// not exited within stopWaitMax. Stopping a stopped server does nothing. A
// shared server cannot be stopped by a test.
func (s *Server) Stop() error {
	if s.shared {
		return errors.New("chtest: Stop on a shared server; use StartInDir(t, t.TempDir()) for a private one")
	}
	return s.stop()
}

// Kill kills the server with SIGKILL, as a crash would, and waits until it is
// gone. A shared server cannot be killed by a test.
func (s *Server) Kill() error {
	if s.shared {
		return errors.New("chtest: Kill on a shared server; use StartInDir(t, t.TempDir()) for a private one")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	return p.kill()
}

// Restart stops the server and starts it again on the same directory and
// ports; Addr and HTTPAddr stay valid (connections made before do not).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.shared {
		t.Fatal("chtest: Restart on a shared server; use StartInDir(t, t.TempDir()) for a private one")
	}
	if err := s.stop(); err != nil {
		t.Fatalf("chtest: restart: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.launch(); err != nil {
		t.Fatalf("chtest: restart: %v", err)
	}
}

// Conn opens a native-protocol connection pool to the server, checks it with
// Ping, and closes it at cleanup.
func (s *Server) Conn(t testing.TB) driver.Conn {
	t.Helper()
	conn, err := open(s.Addr)
	if err != nil {
		t.Fatalf("chtest: connecting to %s: %v", s.Addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// Query runs one statement with clickhouse-client and returns its output as
// TabSeparated text without the final newline ("" for DDL and INSERT). An
// error of the server fails the test with the server's message.
func (s *Server) Query(t testing.TB, q string) string {
	t.Helper()
	out, err := query(s.Addr, q)
	if err != nil {
		t.Fatalf("chtest: %v", err)
	}
	return out
}

// Database creates a database with a name of its own for the test (so tests
// can share a server) and drops it at cleanup. Name tables "db.table".
func (s *Server) Database(t testing.TB) string {
	t.Helper()
	name := "chtest_" + identifier(t.Name(), dbNameTestBytes) + "_" + randomHex(4)
	s.Query(t, "CREATE DATABASE "+name)
	t.Cleanup(func() {
		if !s.shared && !s.running() {
			return // killed or stopped by the test: its directory goes with it
		}
		if _, err := query(s.Addr, "DROP DATABASE IF EXISTS "+name); err != nil {
			t.Logf("chtest: dropping database %s: %v", name, err)
		}
	})
	return name
}

// Main runs a package's tests with one server shared by all of them, started
// by the first Start and stopped when the tests are done. Call it from
// TestMain:
//
//	func TestMain(m *testing.M) { chtest.Main(m) }
//
// With METERD_TEST_CLICKHOUSE set, Start uses that server instead.
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.enabled = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	s := shared.server
	shared.server, shared.enabled = nil, false
	shared.mu.Unlock()
	if s != nil {
		if err := s.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "chtest: stopping the shared server: %v\n", err)
			code = 1
		}
		if err := os.RemoveAll(s.Dir); err != nil {
			fmt.Fprintf(os.Stderr, "chtest: removing %s: %v\n", s.Dir, err)
		}
	}
	os.Exit(code)
}

// shared is the server of Main: started once, on first use.
var shared struct {
	mu      sync.Mutex
	enabled bool // Main is running the tests
	server  *Server
	err     error // of the one attempt to start it
}

// mainServer returns the shared server of Main, starting it on first use;
// ok is false outside Main.
func mainServer() (s *Server, ok bool, err error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.enabled {
		return nil, false, nil
	}
	if shared.server == nil && shared.err == nil {
		dir, err := os.MkdirTemp("", "chtest-")
		if err != nil {
			shared.err = err
			return nil, true, err
		}
		s, err := startPrivate(dir, Options{})
		if err != nil {
			_ = os.RemoveAll(dir)
			shared.err = err
			return nil, true, err
		}
		s.shared = true
		shared.server = s
	}
	return shared.server, true, shared.err
}

// external returns the server of EnvAddr, after checking that it answers.
func external(t testing.TB, addr string) *Server {
	t.Helper()
	version, err := query(addr, "SELECT version()")
	if err != nil {
		t.Fatalf("chtest: the server of %s=%s: %v", EnvAddr, addr, err)
	}
	return &Server{Addr: addr, Version: version, shared: true}
}

// startPrivate starts a server on dir, trying fresh ports again when one was
// taken between choosing it and the server binding it.
func startPrivate(dir string, opts Options) (*Server, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < startAttemptsMax; attempt++ {
		ports, err := freePorts(3)
		if err != nil {
			return nil, err
		}
		s := &Server{
			Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
			HTTPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
			Dir:      dir,
			opts:     opts,
		}
		if opts.TLS {
			s.SecureAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2]))
			s.CAFile = filepath.Join(dir, "tls", "ca.pem")
		}
		s.mu.Lock()
		err = s.launch()
		s.mu.Unlock()
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	return nil, lastErr
}

var errPortTaken = errors.New("a port was taken by another process")

// launch writes the configuration, starts the server on s.Dir and s's ports,
// and waits until it answers. It needs s.mu.
func (s *Server) launch() error {
	bin, err := lookBinary(serverBinary)
	if err != nil {
		return fmt.Errorf("%s not found: %s", serverBinary, missingServerHelp)
	}
	token := randomHex(16)
	configPath, err := s.writeConfig(token)
	if err != nil {
		return err
	}
	stderrPath := filepath.Join(s.Dir, "log", "stderr.log")
	stderr, err := os.OpenFile(stderrPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer stderr.Close()
	errLogPath := filepath.Join(s.Dir, "log", "server.err.log")
	_ = os.Remove(errLogPath) // so a failure quotes this run's errors only

	cmd := exec.Command(bin, "--config-file="+configPath)
	cmd.Dir = s.Dir
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // its own group: a terminal's ^C reaches the tests, which stop it
		Pdeathsig: syscall.SIGKILL, // the test binary died: so does the server
	}
	p, err := spawn(cmd)
	if err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	version, err := s.waitReady(p, token)
	if err != nil {
		_ = p.kill()
		logs := logTail("stderr", stderrPath) + logTail("error log", errLogPath)
		if strings.Contains(logs, "Address already in use") {
			err = fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return fmt.Errorf("clickhouse-server in %s (native %s, http %s): %w%s",
			s.Dir, s.Addr, s.HTTPAddr, err, logs)
	}
	s.Version = version
	s.proc = p
	return nil
}

// spawn starts cmd from a goroutine locked to its OS thread, which stays
// locked until the process is reaped: PR_SET_PDEATHSIG fires when the thread
// that forked the child exits, not only when the process does.
func spawn(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			runtime.UnlockOSThread()
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		runtime.UnlockOSThread()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// waitReady waits until the server answers on every port with this run's
// token (a server of someone else on one of the ports does not count), and
// returns its version.
func (s *Server) waitReady(p *process, token string) (string, error) {
	addr, httpAddr := s.Addr, s.HTTPAddr
	client := &http.Client{
		Timeout:   probeTimeout,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
	defer client.CloseIdleConnections()
	probe := "SELECT substitution FROM system.macros WHERE macro = 'chtest_token'"
	deadline := time.Now().Add(startWaitMax)
	var lastErr error = errors.New("no answer yet")
	for {
		select {
		case <-p.done:
			return "", fmt.Errorf("exited before it answered (%v)", p.err)
		default:
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no answer within %v (startWaitMax): %v", startWaitMax, lastErr)
		}
		got, err := httpQuery(client, httpAddr, probe)
		if err == nil && got != token {
			err = fmt.Errorf("http %s is another server", httpAddr)
		}
		if err == nil {
			break
		}
		lastErr = err
		time.Sleep(probeInterval)
	}
	// HTTP answers only once every listener is bound; check that the native
	// port is ours too, and read the version through it.
	conn, err := open(addr)
	if err != nil {
		return "", fmt.Errorf("native %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	var got, version string
	if err := conn.QueryRow(ctx, probe).Scan(&got); err != nil {
		return "", fmt.Errorf("native %s: %w", addr, err)
	}
	if got != token {
		return "", fmt.Errorf("native %s is another server", addr)
	}
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		return "", fmt.Errorf("native %s: %w", addr, err)
	}
	if s.SecureAddr != "" {
		if err := s.probeSecure(ctx, probe, token); err != nil {
			return "", fmt.Errorf("native TLS %s: %w", s.SecureAddr, err)
		}
	}
	return version, nil
}

// probeSecure checks that the TLS port is this run's, through the CA of
// CAFile and as the user of Options when there is one.
func (s *Server) probeSecure(ctx context.Context, probe, token string) error {
	tc, err := s.ClientTLS()
	if err != nil {
		return err
	}
	user, password := "default", ""
	if s.opts.User != "" {
		user, password = s.opts.User, s.opts.Password
	}
	conn, err := openAs(s.SecureAddr, tc, user, password)
	if err != nil {
		return err
	}
	defer conn.Close()
	var got string
	if err := conn.QueryRow(ctx, probe).Scan(&got); err != nil {
		return err
	}
	if got != token {
		return errors.New("another server")
	}
	return nil
}

// ClientTLS returns a client configuration that trusts the server's
// certificate (CAFile), for a server started with Options.TLS.
func (s *Server) ClientTLS() (*tls.Config, error) {
	if s.CAFile == "" {
		return nil, errors.New("chtest: not a TLS server (Options.TLS)")
	}
	b, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("chtest: no certificate in %s", s.CAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// httpQuery runs q on the HTTP interface and returns the answer without the
// final newline.
func httpQuery(client *http.Client, httpAddr, q string) (string, error) {
	resp, err := client.Get("http://" + httpAddr + "/?query=" + url.QueryEscape(q))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, httpBodyBytesMax))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("http %s: %s: %s", httpAddr, resp.Status, strings.TrimSpace(string(body)))
	}
	return strings.TrimSuffix(string(body), "\n"), nil
}

// stop stops the running process, if any: SIGTERM, then SIGKILL.
func (s *Server) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	select {
	case <-p.done:
		return nil // exited on its own
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return p.kill()
	}
	select {
	case <-p.done:
		return nil // its exit status after SIGTERM carries no news
	case <-time.After(stopWaitMax):
		if err := p.kill(); err != nil {
			return err
		}
		return fmt.Errorf("did not exit within %v of SIGTERM (stopWaitMax); killed", stopWaitMax)
	}
}

// kill sends SIGKILL to the process group and waits until the process is
// reaped.
func (p *process) kill() error {
	select {
	case <-p.done:
		return nil // reaped: its pid may be someone else's now
	default:
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGKILL) // the group: anything it started
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(killWaitMax):
		return fmt.Errorf("pid %d still running %v after SIGKILL (killWaitMax)", pid, killWaitMax)
	}
}

func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// open opens and pings a native-protocol pool as default, in plain TCP.
func open(addr string) (driver.Conn, error) {
	return openAs(addr, nil, "default", "")
}

// openAs opens and pings a native-protocol pool, every option stated; tc
// nil is plain TCP.
func openAs(addr string, tc *tls.Config, user, password string) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Protocol:         clickhouse.Native,
		Addr:             []string{addr},
		TLS:              tc,
		Auth:             clickhouse.Auth{Database: "default", Username: user, Password: password},
		Compression:      &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
		DialTimeout:      connDialTimeout,
		ReadTimeout:      connReadTimeout,
		MaxOpenConns:     connOpenMax,
		MaxIdleConns:     connOpenMax,
		ConnMaxLifetime:  connLifetime,
		ConnOpenStrategy: clickhouse.ConnOpenInOrder,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), connDialTimeout)
	defer cancel()
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return conn, nil
}

// query runs one statement with clickhouse-client.
func query(addr, q string) (string, error) {
	bin, err := lookBinary(clientBinary)
	if err != nil {
		return "", fmt.Errorf("%s not found: run `make test-deps` (installs Debian's clickhouse-client)", clientBinary)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--host", host, "--port", port, "--query", q)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no answer within %v (queryTimeout)", queryTimeout)
		}
		return "", fmt.Errorf("%s: %v: %s", q, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSuffix(stdout.String(), "\n"), nil
}

// lookBinary finds name in PATH, then in /usr/sbin and /usr/bin (a user's
// PATH often lacks /usr/sbin, where Debian puts clickhouse-server).
func lookBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// writeConfig writes config.xml and users.xml into s.Dir and returns the
// path of config.xml. Data goes to dir/db, logs to dir/log, the TLS
// certificate, its key and its CA to dir/tls. users.xml is ours, not
// /etc/clickhouse-server's: user default, no password, loopback only, and
// the user of Options.
func (s *Server) writeConfig(token string) (string, error) {
	dir, addr, httpAddr := s.Dir, s.Addr, s.HTTPAddr
	_, tcpPort, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	_, httpPort, err := net.SplitHostPort(httpAddr)
	if err != nil {
		return "", err
	}
	for _, sub := range []string{"db", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return "", err
		}
	}
	for _, c := range dir {
		if strings.ContainsRune(`<>&"'`, c) {
			return "", fmt.Errorf("directory %q: characters that XML would need escaped", dir)
		}
	}
	db, logDir := filepath.Join(dir, "db"), filepath.Join(dir, "log")
	secure, err := s.secureConfig()
	if err != nil {
		return "", err
	}
	users := userXML("default", "<password></password>")
	if o := s.opts; o.User != "" {
		if identifier(o.User, len(o.User)) != o.User {
			return "", fmt.Errorf("user %q: want [a-z0-9_]", o.User)
		}
		sum := sha256.Sum256([]byte(o.Password))
		users += userXML(o.User, "<password_sha256_hex>"+hex.EncodeToString(sum[:])+"</password_sha256_hex>")
	}
	config := `<?xml version="1.0"?>
<!-- Written by meterd's chtest for one test server; rewritten at each start. -->
<yandex>
    <logger>
        <level>warning</level>
        <log>` + logDir + `/server.log</log>
        <errorlog>` + logDir + `/server.err.log</errorlog>
        <size>10M</size>
        <count>2</count>
    </logger>
    <http_port>` + httpPort + `</http_port>
    <tcp_port>` + tcpPort + `</tcp_port>` + secure + `
    <listen_host>127.0.0.1</listen_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>` + db + `/</path>
    <tmp_path>` + db + `/tmp/</tmp_path>
    <user_files_path>` + db + `/user_files/</user_files_path>
    <format_schema_path>` + db + `/format_schemas/</format_schema_path>
    <users_config>` + dir + `/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <macros><chtest_token>` + token + `</chtest_token></macros>
</yandex>
`
	users = `<?xml version="1.0"?>
<!-- Written by meterd's chtest. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>
    </profiles>
    <users>` + users + `
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
`
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), []byte(users), 0o644); err != nil {
		return "", err
	}
	configPath := filepath.Join(dir, "config.xml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return "", err
	}
	return configPath, nil
}

// userXML is users.xml's entry of a user who may connect from loopback
// only, with its password element.
func userXML(name, password string) string {
	return `
        <` + name + `>
            ` + password + `
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </` + name + `>`
}

// secureConfig writes the TLS certificate, its key and its CA into
// s.Dir/tls (once: a restart keeps them) and returns the configuration that
// serves the native protocol over TLS on SecureAddr; "" without Options.TLS.
func (s *Server) secureConfig() (string, error) {
	if !s.opts.TLS {
		return "", nil
	}
	_, port, err := net.SplitHostPort(s.SecureAddr)
	if err != nil {
		return "", err
	}
	tlsDir := filepath.Join(s.Dir, "tls")
	certPath, keyPath := filepath.Join(tlsDir, "server.pem"), filepath.Join(tlsDir, "server.key")
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := writeCertificate(tlsDir, certPath, keyPath, s.CAFile); err != nil {
			return "", fmt.Errorf("TLS certificate: %w", err)
		}
	}
	return `
    <tcp_port_secure>` + port + `</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>` + certPath + `</certificateFile>
            <privateKeyFile>` + keyPath + `</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>`, nil
}

// writeCertificate writes a CA, and a server certificate for 127.0.0.1 that
// it signed, with the server's key (ECDSA P-256).
func writeCertificate(dir, certPath, keyPath, caPath string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	ca, caKey, err := issue(&x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(certValidFor), Subject: pkix.Name{CommonName: "chtest CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, nil, nil)
	if err != nil {
		return err
	}
	leaf, key, err := issue(&x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(certValidFor), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		path, kind string
		der        []byte
	}{{caPath, "CERTIFICATE", ca.Raw}, {certPath, "CERTIFICATE", leaf.Raw}, {keyPath, "PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.kind, Bytes: f.der}), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("choosing a free port: %w", err)
		}
		defer l.Close() // held until all are chosen, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// logTail returns the last logTailBytesMax of a log, as a labelled block
// for an error message, or "" when it is empty or missing.
func logTail(label, path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return ""
	}
	offset := max(st.Size()-logTailBytesMax, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, offset, st.Size()-offset))
	if err != nil {
		return ""
	}
	return fmt.Sprintf("\n--- %s %s (last %d bytes) ---\n%s", label, path, len(b), strings.TrimSpace(string(b)))
}

// issue makes a P-256 key and a certificate of tmpl for it, signed by
// parentKey as parent (self-signed when parent is nil).
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// identifier makes a ClickHouse identifier fragment of s, at most n bytes.
func identifier(s string, n int) string {
	b := make([]byte, 0, n)
	for i := 0; i < len(s) && len(b) < n; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b = append(b, c)
		case c >= 'A' && c <= 'Z':
			b = append(b, c+'a'-'A')
		default:
			b = append(b, '_')
		}
	}
	return string(b)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b)
}
