// Command kafkadev runs a Kafka-protocol broker in memory, for developing and
// testing meterd's Kafka paths on a laptop or in CI. It is NOT for production:
// everything it holds is lost when it stops (no durability, no replication),
// it has no authentication and no TLS, and it is one process. Production uses
// a real Kafka or Redpanda cluster.
//
// It serves one broker on a loopback address (it refuses any other address),
// creates meterd's topics with a fixed number of partitions, prints one ready
// line on stdout once clients can connect, and serves until SIGINT or SIGTERM.
//
//	go run ./cmd/kafkadev                         # 127.0.0.1:9092, meterd's four topics, 8 partitions
//	go run ./cmd/kafkadev --listen 127.0.0.1:0    # a free port; the ready line says which
//
// The broker is github.com/twmb/franz-go/pkg/kfake. Memory is bounded by
// --retention-bytes per partition: past it, the oldest records are dropped
// (as Kafka's retention.bytes does), whether or not anyone has read them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// The limits of the configuration. Anything past them is refused at startup.
const (
	partitionsMax     = 1024
	topicsMax         = 64
	topicNameBytesMax = 249 // Kafka's own limit

	// retentionBytesDefault is the per-partition bound on stored record
	// bytes: 64 MiB × 4 topics × 8 partitions = 2 GiB at most by default.
	retentionBytesDefault = 64 << 20
	retentionBytesMin     = 1 << 20

	// retentionInterval is how often the retention bound is enforced, so a
	// partition can exceed --retention-bytes by what is produced in this
	// long.
	retentionInterval = 5 * time.Second
)

// readySuffix follows the address on the ready line.
const readySuffix = "(DEVELOPMENT ONLY: in memory, no durability, no auth; production uses a real Kafka or Redpanda)"

// config is what the flags say.
type config struct {
	listen         string
	host           string // the loopback IP of listen, "localhost" resolved
	port           int    // 0: the kernel picks a free port
	partitions     int
	topics         []string
	autoCreate     bool
	retentionBytes int64
	logLevel       kfake.LogLevel
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kafkadev:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "kafkadev:", err)
		os.Exit(1)
	}
}

// parseFlags reads and validates the command line.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("kafkadev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kafkadev [flags]")
		fmt.Fprintln(stderr, "An in-memory Kafka-protocol broker for development only: no durability, no auth.")
		fs.PrintDefaults()
	}
	listen := fs.String("listen", "127.0.0.1:9092", "loopback `host:port` to serve on (port 0: a free port, printed on the ready line)")
	partitions := fs.Int("partitions", 8, "`n` partitions for each created and auto-created topic (1-1024)")
	topics := fs.String("topics", "usage-events,usage-events.dlq,meterd.ledger,meterd.notifications",
		"comma-separated `topics` to create at startup (may be empty)")
	autoCreate := fs.Bool("auto-create", true, "let clients create topics by asking for them (metadata auto-creation)")
	retentionBytes := fs.Int64("retention-bytes", retentionBytesDefault,
		"per-partition `bytes` kept in memory; the oldest records past it are dropped")
	logLevel := fs.String("log-level", "error", "broker log `level` on stderr: none, error, warn, info, debug")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	cfg := config{
		listen:         *listen,
		partitions:     *partitions,
		autoCreate:     *autoCreate,
		retentionBytes: *retentionBytes,
	}
	var err error
	if cfg.host, cfg.port, err = loopback(*listen); err != nil {
		return config{}, err
	}
	if cfg.partitions < 1 || cfg.partitions > partitionsMax {
		return config{}, fmt.Errorf("--partitions %d: want 1 to %d", cfg.partitions, partitionsMax)
	}
	if cfg.topics, err = parseTopics(*topics); err != nil {
		return config{}, err
	}
	if cfg.retentionBytes < retentionBytesMin {
		return config{}, fmt.Errorf("--retention-bytes %d: want at least %d", cfg.retentionBytes, retentionBytesMin)
	}
	if cfg.logLevel, err = parseLogLevel(*logLevel); err != nil {
		return config{}, err
	}
	return cfg, nil
}

// loopback splits listen into a loopback IP and a port, and refuses any
// address that is not loopback: the broker has no auth and no durability, so
// it must not be reachable from another machine. An empty host (":9092")
// means every interface and is refused too.
func loopback(listen string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("--listen %q: %w", listen, err)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("--listen %q: bad port %q", listen, p)
	}
	if h == "localhost" {
		h = "127.0.0.1"
	}
	ip := net.ParseIP(h)
	if ip == nil || !ip.IsLoopback() {
		return "", 0, fmt.Errorf("--listen %q: refused, not a loopback address: kafkadev has no auth and no durability (use 127.0.0.1 or ::1)", listen)
	}
	return ip.String(), port, nil
}

// parseTopics splits a comma-separated list of topic names and checks each
// against Kafka's rules: 1 to 249 bytes of [a-zA-Z0-9._-], not "." or "..".
func parseTopics(list string) ([]string, error) {
	var topics []string
	seen := make(map[string]bool)
	for _, t := range strings.Split(list, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if len(t) > topicNameBytesMax || t == "." || t == ".." {
			return nil, fmt.Errorf("--topics: invalid topic name %q", t)
		}
		for _, r := range t {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
				return nil, fmt.Errorf("--topics: invalid topic name %q: only letters, digits, '.', '_' and '-'", t)
			}
		}
		if seen[t] {
			return nil, fmt.Errorf("--topics: %q given twice", t)
		}
		seen[t] = true
		topics = append(topics, t)
		if len(topics) > topicsMax {
			return nil, fmt.Errorf("--topics: more than %d topics", topicsMax)
		}
	}
	return topics, nil
}

func parseLogLevel(s string) (kfake.LogLevel, error) {
	switch s {
	case "none":
		return kfake.LogLevelNone, nil
	case "error":
		return kfake.LogLevelError, nil
	case "warn":
		return kfake.LogLevelWarn, nil
	case "info":
		return kfake.LogLevelInfo, nil
	case "debug":
		return kfake.LogLevelDebug, nil
	}
	return 0, fmt.Errorf("--log-level %q: want none, error, warn, info or debug", s)
}

// run starts the broker, prints the ready line on stdout and serves until ctx
// is done, then closes the broker.
func run(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	addr := net.JoinHostPort(cfg.host, strconv.Itoa(cfg.port))
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		// kfake listens on 127.0.0.1:port; listen on the (loopback) address
		// asked for instead, so ::1 works too.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
		kfake.ClusterID("kafkadev"),
		kfake.DefaultNumPartitions(cfg.partitions),
		kfake.BrokerConfigs(map[string]string{
			"log.retention.bytes": strconv.FormatInt(cfg.retentionBytes, 10),
			// Never by age: producers may set old record timestamps (an
			// event's own time), which must not make records vanish.
			"log.retention.ms": "-1",
		}),
		kfake.WithLogger(kfake.BasicLogger(stderr, cfg.logLevel)),
	}
	if len(cfg.topics) > 0 {
		opts = append(opts, kfake.SeedTopics(int32(cfg.partitions), cfg.topics...))
	}
	if cfg.autoCreate {
		opts = append(opts, kfake.AllowAutoTopicCreation())
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	defer c.Close()

	addrs := c.ListenAddrs()
	if len(addrs) != 1 {
		return fmt.Errorf("broker listens on %d addresses, want 1: %v", len(addrs), addrs)
	}
	fmt.Fprintf(stdout, "kafkadev ready: %s %s\n", addrs[0], readySuffix)

	tick := time.NewTicker(retentionInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(stderr, "kafkadev: stopping; everything it held is gone")
			return nil
		case <-tick.C:
			c.ApplyRetention()
		}
	}
}
