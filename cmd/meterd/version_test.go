package main

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// freeAddr is a loopback address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// meterd --version prints the build and exits 0; a second meterd on a data
// directory in use exits saying so, with the lock and what to do.
func TestVersionAndDataDirInUse(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the meterd binary: skipped with -short")
	}
	bin := buildMeterd(t)
	out, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "meterd ") || !strings.Contains(string(out), runtime.Version()) {
		t.Fatalf("meterd --version: %v: %q", err, out)
	}
	if _, err := LoadConfig([]string{"--version"}, func(string) string { return "" }, nil); !errors.Is(err, ErrVersion) {
		t.Fatalf("LoadConfig --version: %v", err)
	}

	dir := filepath.Join(t.TempDir(), "data")
	addr := freeAddr(t)
	first := exec.Command(bin, "--data-dir", dir, "--listen", addr)
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { first.Process.Kill(); first.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if r, err := http.Get("http://" + addr + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the first meterd never became ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var stderr bytes.Buffer
	second := exec.Command(bin, "--data-dir", dir, "--listen", freeAddr(t))
	second.Stderr = &stderr
	err = second.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("the second meterd: %v, want exit status 1", err)
	}
	msg := stderr.String()
	if !strings.Contains(msg, "the data directory is in use") || !strings.Contains(msg, filepath.Join(dir, "LOCK")) || !strings.Contains(msg, "another --data-dir") {
		t.Fatalf("the second meterd said:\n%s", msg)
	}
}
