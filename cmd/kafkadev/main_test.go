package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

const (
	e2eMessages       = 100
	e2eTopic          = "usage-events"
	e2eBuildTimeout   = 60 * time.Second // a cold build cache; the test budget below starts after it
	e2eBudget         = 15 * time.Second // ready line, produce, consume, stop
	e2eStopTimeout    = 5 * time.Second
	e2eOpTimeout      = 10 * time.Second
	e2eReadyLineBytes = 4096
)

func TestLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		listen string
		want   string // "" when refused
	}{
		{"127.0.0.1:9092", "127.0.0.1"},
		{"127.0.0.2:0", "127.0.0.2"},
		{"localhost:9092", "127.0.0.1"},
		{"[::1]:9092", "::1"},
		{":9092", ""},
		{"0.0.0.0:9092", ""},
		{"[::]:9092", ""},
		{"10.0.0.1:9092", ""},
		{"kafka.example.com:9092", ""},
		{"127.0.0.1", ""},
		{"127.0.0.1:70000", ""},
	} {
		host, _, err := loopback(tc.listen)
		if tc.want == "" {
			if err == nil {
				t.Errorf("loopback(%q) = %q, want refused", tc.listen, host)
			}
			continue
		}
		if err != nil || host != tc.want {
			t.Errorf("loopback(%q) = %q, %v; want %q", tc.listen, host, err, tc.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"usage-events", "usage-events.dlq", "meterd.ledger", "meterd.notifications"}
	if fmt.Sprint(cfg.topics) != fmt.Sprint(want) || cfg.partitions != 8 || !cfg.autoCreate ||
		cfg.host != "127.0.0.1" || cfg.port != 9092 {
		t.Errorf("defaults: %+v", cfg)
	}
	if cfg, err := parseFlags([]string{"--topics", "", "--auto-create=false"}, io.Discard); err != nil || len(cfg.topics) != 0 || cfg.autoCreate {
		t.Errorf("no topics, no auto-create: %+v, %v", cfg, err)
	}
	for _, args := range [][]string{
		{"--listen", "0.0.0.0:9092"},
		{"--partitions", "0"},
		{"--partitions", "1025"},
		{"--topics", "a,a"},
		{"--topics", "bad topic"},
		{"--topics", ".."},
		{"--topics", strings.Repeat("x", 250)},
		{"--topics", manyTopics(topicsMax + 1)},
		{"--retention-bytes", "1000"},
		{"--log-level", "loud"},
		{"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q): accepted, want refused", args)
		}
	}
}

func manyTopics(n int) string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("t%d", i)
	}
	return strings.Join(names, ",")
}

// TestProduceConsume builds the real binary, runs it on a free port, produces
// 100 keyed messages with kafka-go (RequireAll), reads them back through a
// consumer group, and stops the broker with SIGTERM.
func TestProduceConsume(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the kafkadev binary: skipped with -short")
	}
	bin := filepath.Join(t.TempDir(), "kafkadev")
	buildCtx, cancelBuild := context.WithTimeout(context.Background(), e2eBuildTimeout)
	defer cancelBuild()
	if out, err := exec.CommandContext(buildCtx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), e2eBudget)
	defer cancel()
	// Port 0: the kernel picks a free port, and the ready line says which,
	// so there is no window in which another process can take it.
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--partitions", "8")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReaderSize(stdout, e2eReadyLineBytes)
		line, _ := r.ReadString('\n')
		lines <- line
		io.Copy(io.Discard, r)
		exited <- cmd.Wait()
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() { // stderr is complete (and no longer written) once the process has exited
			t.Logf("kafkadev stderr:\n%s", stderr.String())
		}
	})

	var addr string
	select {
	case line := <-lines:
		rest, ok := strings.CutPrefix(line, "kafkadev ready: ")
		addr, _, _ = strings.Cut(rest, " ")
		if !ok || !strings.Contains(line, "DEVELOPMENT ONLY") || !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Fatalf("ready line %q", line)
		}
	case <-ctx.Done():
		t.Fatalf("no ready line within %s", e2eBudget)
	}

	w := &kafka.Writer{
		Addr:         kafka.TCP(addr),
		Topic:        e2eTopic,
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    e2eMessages,
		BatchTimeout: 10 * time.Millisecond,
		WriteTimeout: e2eOpTimeout,
		ReadTimeout:  e2eOpTimeout,
		MaxAttempts:  3,
	}
	msgs := make([]kafka.Message, e2eMessages)
	want := make(map[string]string, e2eMessages)
	for i := range msgs {
		key, value := fmt.Sprintf("c%03d", i), fmt.Sprintf(`{"id":"evt_%d"}`, i)
		msgs[i] = kafka.Message{Key: []byte(key), Value: []byte(value)}
		want[key] = value
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("close writer: %v", err)
	}

	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:           []string{addr},
		GroupID:           "kafkadev-test",
		Topic:             e2eTopic,
		StartOffset:       kafka.FirstOffset,
		MinBytes:          1,
		MaxBytes:          1 << 20,
		MaxWait:           100 * time.Millisecond,
		CommitInterval:    0, // synchronous commits
		HeartbeatInterval: time.Second,
		SessionTimeout:    6 * time.Second,
		RebalanceTimeout:  5 * time.Second,
		JoinGroupBackoff:  100 * time.Millisecond,
	})
	defer r.Close()
	got := make(map[string]bool, e2eMessages)
	for len(got) < e2eMessages {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("consume after %d messages: %v", len(got), err)
		}
		key := string(m.Key)
		if want[key] != string(m.Value) {
			t.Fatalf("message key %q value %q: not produced", key, m.Value)
		}
		if got[key] {
			t.Fatalf("message key %q read twice", key)
		}
		got[key] = true
		if err := r.CommitMessages(ctx, m); err != nil {
			t.Fatalf("commit: %v", err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatalf("close reader: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(e2eStopTimeout):
		t.Fatalf("still running %s after SIGTERM", e2eStopTimeout)
	}
}
