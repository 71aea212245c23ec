// Command meterd is the usage-metering and prepaid-credit engine: it reads
// its configuration (flags, METERD_* environment variables, an optional YAML
// file), opens the balance engine on its Pebble directory, and serves the
// HTTP API until SIGTERM or SIGINT, after which it finishes what it accepted
// and exits.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// defaultPricing is stored as pricing version 1 on a fresh data directory:
// the contract's three assets and no prices, so that top-ups work at once
// and events are recorded until prices are set (PUT /v1/pricing, or
// --pricing FILE, which then becomes version 2).
//
//go:embed default-pricing.json
var defaultPricing []byte

func main() {
	cfg, err := LoadConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if errors.Is(err, ErrVersion) {
		fmt.Println(Version())
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meterd:", err)
		os.Exit(2)
	}
	nofile, err := nofileLimit()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meterd:", err)
		os.Exit(1)
	}
	fds, err := planDescriptors(nofile, cfg.HTTPConnsMax, cfg.HTTPConnsPerIPMax)
	if err != nil {
		fmt.Fprintln(os.Stderr, "meterd:", err)
		os.Exit(2)
	}
	if err := run(cfg, fds); err != nil {
		fmt.Fprintln(os.Stderr, "meterd:", err)
		os.Exit(1)
	}
}

// checkClickHouse logs in to ClickHouse once before anything starts: a
// login or certificate the server refuses is a configuration error that
// stops the start, naming the server. A server that does not answer within
// clickHouseCheckMax is no error: the sink connects when it comes up.
func checkClickHouse(cfg sink.ClickHouseConfig, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), clickHouseCheckMax)
	defer cancel()
	err := sink.CheckClickHouse(ctx, cfg)
	if errors.Is(err, sink.ErrClickHouseRefused) {
		return err
	}
	if err != nil {
		log.Warn("clickhouse does not answer yet; the sink connects when it does", "addr", cfg.Addr, "err", err)
	}
	return nil
}

// nofileLimit returns the soft RLIMIT_NOFILE, which the Go runtime has
// already raised to the hard limit at start.
func nofileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("reading the open-files limit (RLIMIT_NOFILE): %w", err)
	}
	return rl.Cur, nil
}

func run(cfg Config, fds fdPlan) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	log.Info("descriptor budget", "nofile", fds.nofile, "reserved", fdReserved, "pebble_files_max", fds.pebbleFilesMax,
		"http_conns_max", fds.httpConnsMax, "http_conns_max_derived", fds.connsDerived,
		"http_conns_per_ip_max", fds.httpConnsPerIPMax, "http_conns_per_ip_max_derived", fds.connsPerIPDerived)

	var clock balance.Clock = balance.WallClock{}
	if cfg.TestClock {
		start := time.Now()
		if t, ok := cfg.TestClockStartTime(); ok {
			start = t
		}
		clock = balance.NewManualClock(start.UnixNano())
		log.Warn("running on a test clock: time moves only through POST /v1/test-clock", "now", start.UTC().Format(time.RFC3339Nano))
	}

	var keys *ingest.Keys
	if cfg.APIKeys != "" {
		k, err := ingest.LoadKeys(cfg.APIKeys)
		if err != nil {
			return err
		}
		keys = k
	}
	auth := keys != nil && keys.Len() > 0
	if err := ingest.CheckListen(cfg.Listen, auth); err != nil {
		return err
	}
	if !auth {
		log.Warn("no API keys configured (--api-keys): serving WITHOUT auth, on loopback only", "listen", cfg.Listen)
	}

	var pricingFile []byte
	if cfg.Pricing != "" {
		b, err := os.ReadFile(cfg.Pricing)
		if err != nil {
			return fmt.Errorf("--pricing: %w", err)
		}
		pricingFile = b
	}

	var sinkNames []string
	var chCfg sink.ClickHouseConfig
	if cfg.ClickHouseAddr != "" {
		sinkNames = append(sinkNames, "clickhouse")
		chTLS, chPassword, err := cfg.clickHouseSecurity()
		if err != nil {
			return err
		}
		chCfg = sink.ClickHouseConfig{Addr: cfg.ClickHouseAddr, Database: cfg.ClickHouseDatabase, Cluster: cfg.ClickHouseCluster,
			Username: cfg.ClickHouseUser, Password: chPassword, TLS: chTLS, BatchRowsMax: cfg.SinkBatchRows, BatchAge: cfg.SinkBatchAge,
			RetentionDays: cfg.ClickHouseRetention, RollupRetentionDays: cfg.ClickHouseRollupRetention, Log: log}
		if err := checkClickHouse(chCfg, log); err != nil {
			return err
		}
	}
	if cfg.KafkaPublish {
		sinkNames = append(sinkNames, "kafka")
	}
	if cfg.WebhookURL != "" {
		sinkNames = append(sinkNames, "webhook")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	start := time.Now()
	eng, err := balance.Open(balance.Options{
		Dir:                cfg.DataDir,
		Shards:             cfg.Shards,
		QueueMax:           cfg.ShardQueueMax,
		CommitEventsMax:    cfg.CommitEventsMax,
		CheckpointInterval: cfg.CheckpointInterval,
		IdemCacheMax:       cfg.IdemCacheMax,
		CacheBytes:         int64(cfg.CacheBytes),
		FilesOpenMax:       fds.pebbleFilesMax,
		ReserveBytes:       int64(cfg.DiskReserveBytes),
		DedupWindow:        cfg.DedupWindow,
		ReversalWindow:     cfg.ReversalWindow,
		RejectUnpriced:     cfg.UnpricedEvents == "reject",
		DefaultPricing:     defaultPricing,
		Sinks:              sinkNames,
		Clock:              clock,
		Log:                log,
		Registerer:         reg,
	})
	if err != nil {
		return err
	}
	recovered := time.Since(start)
	if pricingFile != nil {
		if err := applyPricingFile(eng, pricingFile, log); err != nil {
			eng.Close()
			return fmt.Errorf("--pricing %s: %w", cfg.Pricing, err)
		}
	}

	sinkCtx, stopSinks := context.WithCancel(context.Background())
	defer stopSinks()
	var sinksDone sync.WaitGroup
	var gate *sink.Gate
	var tailers []*sink.Tailer
	var sinkMetrics *sink.Metrics
	if len(sinkNames) > 0 {
		sinkMetrics = sink.NewMetrics(reg)
	}
	runTailer := func(t *sink.Tailer) {
		tailers = append(tailers, t)
		sinksDone.Add(1)
		go func() {
			defer sinksDone.Done()
			t.Run(sinkCtx)
		}()
	}
	kafkaTLS, kafkaSASL, err := cfg.kafkaSecurity()
	if err != nil {
		eng.Close()
		return err
	}
	if cfg.KafkaPublish {
		pub, err := sink.NewKafkaPublisher(sink.KafkaPublisherConfig{Brokers: cfg.KafkaBrokerList(), LedgerTopic: cfg.KafkaLedgerTopic,
			NotificationsTopic: cfg.KafkaNoticesTopic, Log: log, TLS: kafkaTLS, SASL: kafkaSASL})
		if err != nil {
			eng.Close()
			return fmt.Errorf("--kafka-publish: %w", err)
		}
		defer pub.Close()
		runTailer(sink.NewTailer(eng, pub, sink.TailerConfig{BatchRowsMax: cfg.SinkBatchRows, BatchAge: cfg.SinkBatchAge,
			Log: log, Metrics: sinkMetrics}))
	}
	if cfg.ClickHouseAddr != "" {
		chCfg.OutboxID = eng.InstanceID()
		dest := sink.Lazy("clickhouse", func(ctx context.Context) (sink.Destination, error) {
			ch, err := sink.OpenClickHouse(ctx, chCfg)
			if err != nil {
				return nil, err
			}
			log.Info("clickhouse sink connected", "addr", cfg.ClickHouseAddr, "server", ch.ServerVersion(), "database", cfg.ClickHouseDatabase)
			return ch, nil
		})
		runTailer(sink.NewTailer(eng, dest, sink.TailerConfig{BatchRowsMax: cfg.SinkBatchRows, BatchAge: cfg.SinkBatchAge,
			Dimensions: true, Log: log, Metrics: sinkMetrics}))
	}
	if cfg.WebhookURL != "" {
		wh, err := sink.NewWebhook(sink.WebhookConfig{URL: cfg.WebhookURL, Secret: []byte(cfg.WebhookSecret), Log: log,
			Metrics: sink.NewWebhookMetrics(reg)})
		if err != nil {
			stopSinks()
			sinksDone.Wait()
			eng.Close()
			return fmt.Errorf("--webhook-url: %w", err)
		}
		defer wh.Close()
		runTailer(sink.NewTailer(eng, wh, sink.TailerConfig{BatchRowsMax: cfg.SinkBatchRows, BatchAge: 100 * time.Millisecond,
			Log: log, Metrics: sinkMetrics}))
	}
	if len(tailers) > 0 {
		gate = sink.NewGate(eng, tailers, uint64(cfg.SinkBacklogMaxBytes), cfg.SinkBacklogPolicy, log, sinkMetrics)
		sinksDone.Add(1)
		go func() {
			defer sinksDone.Done()
			gate.Watch(sinkCtx.Done(), 10*time.Second)
		}()
	}

	lim := ingest.DefaultLimits()
	lim.BodyBytesMax = cfg.BodyBytesMax
	lim.EventsMax = cfg.EventsPerRequestMax
	lim.PastWindowMax = cfg.DedupWindow
	// The Kafka consumer stops before the sinks and the engine: what it
	// applied is committed, the rest is redelivered after the next start.
	// Run returns before shutdown only on a fatal configuration error (a
	// missing topic): meterd then stops rather than silently not consuming.
	kafkaCtx, stopKafka := context.WithCancel(context.Background())
	defer stopKafka()
	var kafkaDone sync.WaitGroup
	kafkaFatal := make(chan error, 1)
	if cfg.KafkaBrokers != "" {
		kcfg := ingest.KafkaConfig{Brokers: cfg.KafkaBrokerList(), Topic: cfg.KafkaTopic,
			GroupID: cfg.KafkaGroup, Limits: lim, Log: log, Registerer: reg, TLS: kafkaTLS, SASL: kafkaSASL}
		if cfg.KafkaPublish {
			kcfg.NotificationsTopic = cfg.KafkaNoticesTopic
		}
		cons, err := ingest.NewConsumer(eng, kcfg)
		if err != nil {
			stopSinks()
			sinksDone.Wait()
			eng.Close()
			return fmt.Errorf("--kafka-brokers: %w", err)
		}
		kafkaDone.Add(1)
		go func() {
			defer kafkaDone.Done()
			if err := cons.Run(kafkaCtx); err != nil && kafkaCtx.Err() == nil {
				kafkaFatal <- err
			}
		}()
	}

	doors, _ := ingest.ParseDoors(cfg.Doors) // checked by validate
	scfg := ingest.Config{Engine: eng, Keys: keys, Limits: lim, Log: log, Registerer: reg, Gatherer: reg, TestClock: cfg.TestClock,
		BodyMemoryMax: int64(cfg.BodyMemoryMax), Doors: doors, LagoIdempotent: cfg.LagoIdempotent, DoorMapping: cfg.doorMapping()}
	if gate != nil {
		scfg.Readiness, scfg.Admit = gate.Readiness, gate.Admit
	}
	srv := ingest.NewServer(scfg)

	stop := func() {
		stopKafka()
		waitBounded(&kafkaDone, consumerStopMax, log, "kafka consumer")
		stopSinks()
		sinksDone.Wait()
		eng.Close()
	}
	tcpLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		stop()
		return err
	}
	// Accept errors (EMFILE) are retried, and connections are bounded below
	// the descriptor limit, overall and per client address.
	ln, err := ingest.NewListener(tcpLn, ingest.ListenerConfig{ConnsMax: fds.httpConnsMax,
		ConnsPerIPMax: fds.httpConnsPerIPMax, Log: log, Registerer: reg})
	if err != nil {
		tcpLn.Close()
		stop()
		return err
	}
	var served net.Listener = ln
	scheme := "http"
	var certs *ingest.CertReloader
	if cfg.TLSCert != "" {
		certs, err = ingest.NewCertReloader(ingest.TLSFiles{Cert: cfg.TLSCert, Key: cfg.TLSKey, ClientCA: cfg.TLSClientCA}, log)
		if err != nil {
			ln.Close()
			stop()
			return err
		}
		served, scheme = tls.NewListener(ln, certs.Config()), "https"
		tlsCtx, stopTLS := context.WithCancel(context.Background())
		defer stopTLS()
		go certs.Watch(tlsCtx, time.Second)
	}
	// SIGHUP loads the certificate files and the API-key file again: a
	// key removed from the file is refused from the next request on. Files
	// that do not load leave what is in use, and say why.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if certs != nil {
				if err := certs.Reload(); err != nil {
					log.Warn("SIGHUP: the certificate files do not load; the previous ones stay in use", "err", err)
				} else {
					log.Info("SIGHUP: certificate reloaded")
				}
			}
			if cfg.APIKeys != "" {
				if k, err := ingest.LoadKeys(cfg.APIKeys); err != nil {
					log.Warn("SIGHUP: the API-key file does not load; the keys in use stay", "err", err)
				} else {
					srv.SetKeys(k)
					log.Info("SIGHUP: API keys reloaded", "keys", k.Len())
				}
			}
		}
	}()
	// SIGTERM is caught before the ready line: a supervisor that stops
	// meterd as soon as it reads that line gets a clean stop, not the
	// default action of the signal.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(served) }()
	log.Info("meterd ready", "listen", ln.Addr().String(), "scheme", scheme, "data_dir", cfg.DataDir, "shards", eng.Shards(),
		"pricing_version", eng.Pricing().Version, "recovery", recovered.Round(time.Millisecond).String(), "auth", auth)

	select {
	case s := <-sig:
		log.Info("stopping", "signal", s.String())
	case err := <-serveErr:
		stop()
		return fmt.Errorf("serve: %w", err)
	case err := <-kafkaFatal:
		srv.Shutdown()
		stop()
		return fmt.Errorf("kafka consumer: %w", err)
	}
	// Stop taking requests, let those in flight finish (their answers are
	// durable), then close the engine and its store.
	if err := srv.Shutdown(); err != nil {
		log.Error("http shutdown", "err", err)
	}
	// The Kafka consumer stops (committing what it applied), the sinks stop
	// where they are (their cursors say what is shipped; the rest ships
	// after the next start), then the engine closes.
	stopKafka()
	waitBounded(&kafkaDone, consumerStopMax, log, "kafka consumer")
	stopSinks()
	sinksDone.Wait()
	if err := eng.Close(); err != nil {
		return fmt.Errorf("close engine: %w", err)
	}
	log.Info("stopped")
	return nil
}

// applyPricingFile makes the --pricing document the pricing in force: when
// it differs from the stored version it becomes the next version (validated
// like PUT /v1/pricing, assets immutable); when it is the same document,
// nothing is written, so restarts do not pile up versions.
func applyPricingFile(eng *balance.Engine, doc []byte, log *slog.Logger) error {
	d, err := meter.ParseDocument(doc)
	if err != nil {
		return err
	}
	cur := eng.Pricing()
	p, err := meter.Compile(d, cur.Version+1, cur)
	if err != nil {
		return err
	}
	if bytes.Equal(p.JSON(), cur.JSON()) {
		log.Info("pricing file matches the pricing in force", "version", cur.Version)
		return nil
	}
	p, err = eng.SetPricing(doc)
	if err != nil {
		return err
	}
	log.Info("pricing file stored as a new version", "version", p.Version)
	return nil
}

// consumerStopMax bounds how long shutdown waits for the Kafka consumer. It
// can be stuck closing a group join the broker has not answered (after a
// crash, until the old member's session times out). Going on is safe: once
// the engine is closed the consumer cannot apply anything, and what it did
// not commit is redelivered and answered duplicate.
const consumerStopMax = 10 * time.Second

// clickHouseCheckMax bounds checkClickHouse at start: past it the start goes
// on without an answer (a dropped connection costs this once).
const clickHouseCheckMax = 10 * time.Second

// waitBounded waits for wg, at most d.
func waitBounded(wg *sync.WaitGroup, d time.Duration, log *slog.Logger, what string) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		log.Warn("stopping without waiting longer", "for", what, "waited", d.String())
	}
}
