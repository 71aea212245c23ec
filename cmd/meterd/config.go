package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/meterd/meterd/ingest"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/meterd/meterd/sink"
	"gopkg.in/yaml.v3"
)

// Config is the server's configuration. Every field is one setting, and every
// setting can be given in four places, highest precedence first:
//
//  1. a command-line flag (--data-dir ./data),
//  2. an environment variable: "METERD_" + the flag name upper-cased with
//     '-' as '_' (METERD_DATA_DIR); an empty variable counts as unset,
//  3. a key of the YAML file named by --config or METERD_CONFIG, the key
//     being the flag name (data-dir: ./data),
//  4. the built-in default.
//
// The settings are declared once, in settings; flags, environment variables,
// YAML keys and the --help text are all derived from that table.
type Config struct {
	Listen                    string        // --listen HOST:PORT
	DataDir                   string        // --data-dir DIR
	Pricing                   string        // --pricing FILE: made the pricing in force at start (a new version when it differs)
	APIKeys                   string        // --api-keys FILE (see ingest.LoadKeys); empty = no auth, loopback only
	TestClock                 bool          // --test-clock
	TestClockStart            string        // --test-clock-start RFC3339 (needs --test-clock)
	ClickHouseAddr            string        // --clickhouse-addr HOST:PORT, empty = no ClickHouse sink
	ClickHouseDatabase        string        // --clickhouse-database NAME
	ClickHouseCluster         string        // --clickhouse-cluster NAME: ReplicatedMergeTree ... ON CLUSTER NAME
	ClickHouseUser            string        // --clickhouse-user
	ClickHousePassword        string        // --clickhouse-password (prefer METERD_CLICKHOUSE_PASSWORD or the file)
	ClickHousePasswordFile    string        // --clickhouse-password-file FILE
	ClickHouseTLS             bool          // --clickhouse-tls
	ClickHouseTLSCA           string        // --clickhouse-tls-ca FILE
	ClickHouseRetention       int           // --clickhouse-retention-days N: TTL of the base tables, 0 = none
	ClickHouseRollupRetention int           // --clickhouse-rollup-retention-days N: TTL of the views' tables, 0 = none
	SinkBatchRows             int           // --sink-batch-rows N
	SinkBatchAge              time.Duration // --sink-batch-age DURATION
	SinkBacklogMaxBytes       int           // --sink-backlog-max-bytes N, 0 = no bound
	SinkBacklogPolicy         string        // --sink-backlog-policy alert|refuse
	WebhookURL                string        // --webhook-url: deliver notifications there; empty = no webhook
	WebhookSecret             string        // --webhook-secret: HMAC-SHA256 key of the signature header (prefer METERD_WEBHOOK_SECRET or the file)
	WebhookSecretFile         string        // --webhook-secret-file FILE: read into WebhookSecret by validate
	KafkaBrokers              string        // --kafka-brokers LIST (comma-separated HOST:PORT), empty = no Kafka
	KafkaTopic                string        // --kafka-topic NAME
	KafkaGroup                string        // --kafka-group NAME
	KafkaPublish              bool          // --kafka-publish: publish every ledger entry to --kafka-ledger-topic
	KafkaTLS                  bool          // --kafka-tls
	KafkaTLSCA                string        // --kafka-tls-ca FILE
	KafkaSASLMechanism        string        // --kafka-sasl-mechanism plain|scram-sha-256|scram-sha-512
	KafkaSASLUsername         string        // --kafka-sasl-username
	KafkaSASLPasswordFile     string        // --kafka-sasl-password-file FILE (else $METERD_KAFKA_SASL_PASSWORD)
	KafkaLedgerTopic          string        // --kafka-ledger-topic NAME
	KafkaNoticesTopic         string        // --kafka-notifications-topic NAME
	Shards                    int           // --shards N, 0 = number of CPUs
	DedupWindow               time.Duration // --dedup-window DURATION, at least 24h
	ReversalWindow            time.Duration // --reversal-window DURATION
	UnpricedEvents            string        // --unpriced-events record|reject
	Doors                     string        // --doors openmeter,stripe,lago
	LagoIdempotent            bool          // --lago-idempotent
	DoorOpenMeterCustomer     string        // --door-openmeter-customer
	DoorOpenMeterEventType    string        // --door-openmeter-event-type
	DoorStripeCustomerKey     string        // --door-stripe-customer-key
	DoorLagoCustomer          string        // --door-lago-customer
	TLSCert                   string        // --tls-cert
	TLSKey                    string        // --tls-key
	TLSClientCA               string        // --tls-client-ca
	BodyBytesMax              int           // --body-bytes-max N
	EventsPerRequestMax       int           // --events-per-request-max N
	BodyMemoryMax             int           // --http-body-memory-max N: bytes of request bodies being read, server-wide
	HTTPConnsMax              int           // --http-conns-max N: open HTTP connections, 0 = derived from RLIMIT_NOFILE (see planDescriptors)
	HTTPConnsPerIPMax         int           // --http-conns-per-ip-max N: from one client address, 0 = derived
	ShardQueueMax             int           // --shard-queue-max N: requests waiting per shard before 503
	CommitEventsMax           int           // --commit-events-max N: events per commit group
	CheckpointInterval        time.Duration // --checkpoint-interval DURATION: how long a wallet's usage may live in the command log alone
	IdemCacheMax              int           // --idem-cache-max N: idempotency records cached per shard
	CacheBytes                int           // --cache-bytes N: Pebble block cache
	DiskReserveBytes          int           // --disk-reserve-bytes N: kept in reserve for a full disk
	LogLevel                  string        // --log-level debug|info|warn|error
	Config                    string        // --config FILE (YAML); not itself a YAML key
}

// Limits of the configuration itself. A value past an upper bound is far more
// likely a typo (a few zeros too many) than an intent, and would otherwise
// surface later as an out-of-memory kill instead of a clear error.
const (
	configFileBytesMax         = 1 << 20
	shardsMax                  = 1024
	dedupWindowMin             = 24 * time.Hour
	checkpointIntervalMin      = 10 * time.Millisecond
	checkpointIntervalMax      = time.Hour
	bodyBytesMaxMax            = 1 << 30
	eventsPerRequestMaxMax     = 1_000_000
	shardQueueMaxMax           = 1 << 20
	commitEventsMaxMax         = 1 << 20
	idemCacheMaxMax            = 1 << 26
	cacheBytesMax              = 1 << 40
	diskReserveBytesMin        = 1 << 20
	httpConnsMaxMax            = 1 << 20
	clickHouseDatabaseBytesMax = 64
	kafkaNameBytesMax          = 249 // Kafka's own limit on topic names
)

// setting is one row of the configuration table.
type setting struct {
	name   string // flag name and YAML key; env name is derived (envName)
	arg    string // placeholder for the value in --help ("" for booleans)
	def    string // default, parsed by the same code as every other source
	usage  string
	ptr    any  // *string, *bool, *int or *time.Duration inside a Config
	list   bool // YAML may give a sequence, joined with commas
	noFile bool // not accepted as a YAML key
}

// settings is the one table of settings: flags, environment variables, YAML
// keys and the help text all come from it, so they cannot drift apart.
func settings(c *Config) []setting {
	return []setting{
		{name: "listen", arg: "HOST:PORT", def: "127.0.0.1:8080", ptr: &c.Listen,
			usage: "address to serve HTTP on; without --api-keys only a loopback address is allowed"},
		{name: "data-dir", arg: "DIR", def: "./data", ptr: &c.DataDir,
			usage: "directory of the durable store"},
		{name: "pricing", arg: "FILE", def: "", ptr: &c.Pricing,
			usage: "pricing document (JSON) made the pricing in force at start: stored as a new version when it differs from the current one"},
		{name: "api-keys", arg: "FILE", def: "", ptr: &c.APIKeys,
			usage: "YAML file of API keys and their scopes; empty = no auth (loopback only)"},
		{name: "test-clock", def: "false", ptr: &c.TestClock,
			usage: "run on a test clock that moves only through POST /v1/test-clock"},
		{name: "tls-cert", arg: "FILE", def: "", ptr: &c.TLSCert,
			usage: "serve HTTPS with this PEM certificate (chain) and --tls-key; both are reloaded when they change or on SIGHUP"},
		{name: "tls-key", arg: "FILE", def: "", ptr: &c.TLSKey,
			usage: "the PEM private key of --tls-cert"},
		{name: "tls-client-ca", arg: "FILE", def: "", ptr: &c.TLSClientCA,
			usage: "require a client certificate signed by a CA of this PEM bundle (with --tls-cert)"},
		{name: "test-clock-start", arg: "RFC3339", def: "", ptr: &c.TestClockStart,
			usage: "start time of the test clock (default: the real time at start)"},
		{name: "clickhouse-addr", arg: "HOST:PORT", def: "", ptr: &c.ClickHouseAddr,
			usage: "ClickHouse native-protocol address; empty = no ClickHouse sink"},
		{name: "clickhouse-database", arg: "NAME", def: "meterd", ptr: &c.ClickHouseDatabase,
			usage: "ClickHouse database of the ledger_entries and usage_events tables"},
		{name: "clickhouse-cluster", arg: "NAME", def: "", ptr: &c.ClickHouseCluster,
			usage: "create the ClickHouse tables as ReplicatedMergeTree ... ON CLUSTER NAME; empty = plain tables"},
		{name: "clickhouse-user", arg: "NAME", def: "default", ptr: &c.ClickHouseUser,
			usage: "ClickHouse user"},
		{name: "clickhouse-password", arg: "SECRET", def: "", ptr: &c.ClickHousePassword,
			usage: "ClickHouse password; prefer --clickhouse-password-file or the environment variable, " +
				"since a flag shows in the process list. Never logged"},
		{name: "clickhouse-password-file", arg: "FILE", def: "", ptr: &c.ClickHousePasswordFile,
			usage: "a file holding the ClickHouse password (one line); instead of --clickhouse-password"},
		{name: "clickhouse-tls", def: "false", ptr: &c.ClickHouseTLS,
			usage: "connect to ClickHouse over TLS (its secure native port, 9440; the system's CAs, or --clickhouse-tls-ca)"},
		{name: "clickhouse-tls-ca", arg: "FILE", def: "", ptr: &c.ClickHouseTLSCA,
			usage: "PEM bundle of the CAs of ClickHouse's certificate (implies --clickhouse-tls)"},
		{name: "clickhouse-retention-days", arg: "N", def: "0", ptr: &c.ClickHouseRetention,
			usage: "delete ledger_entries and usage_events rows N days after recorded_at (a ClickHouse TTL, 19.6+); 0 = keep"},
		{name: "clickhouse-rollup-retention-days", arg: "N", def: "0", ptr: &c.ClickHouseRollupRetention,
			usage: "delete rows of the ClickHouse rollups (usage_daily, credit_flows_daily, ...) N days after their day; 0 = keep"},
		{name: "sink-batch-rows", arg: "N", def: "100000", ptr: &c.SinkBatchRows,
			usage: "most rows a sink ships in one batch (one insert per table)"},
		{name: "sink-batch-age", arg: "DURATION", def: "1s", ptr: &c.SinkBatchAge,
			usage: "how long a partial batch may wait for more rows"},
		{name: "sink-backlog-max-bytes", arg: "N", def: "10737418240", ptr: &c.SinkBacklogMaxBytes,
			usage: "bound on the outbox not yet shipped by the slowest sink; 0 = no bound"},
		{name: "sink-backlog-policy", arg: "POLICY", def: "alert", ptr: &c.SinkBacklogPolicy,
			usage: "past the backlog bound: alert (keep accepting, report it) or refuse (503 on /readyz and on events)"},
		{name: "webhook-url", arg: "URL", def: "", ptr: &c.WebhookURL,
			usage: "http(s) URL that receives every notification as a signed POST; empty = no webhook"},
		{name: "webhook-secret", arg: "SECRET", def: "", ptr: &c.WebhookSecret,
			usage: "key of the webhooks' HMAC-SHA256 signature, at least 16 bytes; prefer --webhook-secret-file or the environment " +
				"variable, since a flag shows in the process list. Never logged"},
		{name: "webhook-secret-file", arg: "FILE", def: "", ptr: &c.WebhookSecretFile,
			usage: "a file holding the webhook secret (one line); instead of --webhook-secret"},
		{name: "kafka-brokers", arg: "LIST", def: "", ptr: &c.KafkaBrokers, list: true,
			usage: "comma-separated Kafka bootstrap brokers (HOST:PORT,...); empty = no Kafka"},
		{name: "kafka-topic", arg: "NAME", def: "usage-events", ptr: &c.KafkaTopic,
			usage: "Kafka input topic of usage events (invalid messages go to NAME.dlq)"},
		{name: "kafka-group", arg: "NAME", def: "meterd", ptr: &c.KafkaGroup,
			usage: "Kafka consumer group"},
		{name: "kafka-tls", def: "false", ptr: &c.KafkaTLS,
			usage: "connect to the Kafka brokers over TLS (the system's CAs, or --kafka-tls-ca)"},
		{name: "kafka-tls-ca", arg: "FILE", def: "", ptr: &c.KafkaTLSCA,
			usage: "PEM bundle of the CAs of the Kafka brokers' certificates (implies --kafka-tls)"},
		{name: "kafka-sasl-mechanism", arg: "NAME", def: "", ptr: &c.KafkaSASLMechanism,
			usage: "SASL login to the Kafka brokers: plain, scram-sha-256 or scram-sha-512 (\"\" = none)"},
		{name: "kafka-sasl-username", arg: "NAME", def: "", ptr: &c.KafkaSASLUsername,
			usage: "the SASL user name"},
		{name: "kafka-sasl-password-file", arg: "FILE", def: "", ptr: &c.KafkaSASLPasswordFile,
			usage: "a file holding the SASL password (one line); without it the password is read from the environment variable " +
				"METERD_KAFKA_SASL_PASSWORD. Never a flag, never logged"},
		{name: "kafka-publish", def: "false", ptr: &c.KafkaPublish,
			usage: "publish every ledger entry to --kafka-ledger-topic (needs --kafka-brokers)"},
		{name: "kafka-ledger-topic", arg: "NAME", def: "meterd.ledger", ptr: &c.KafkaLedgerTopic,
			usage: "Kafka topic of published ledger entries, keyed by customer"},
		{name: "kafka-notifications-topic", arg: "NAME", def: "meterd.notifications", ptr: &c.KafkaNoticesTopic,
			usage: "Kafka topic of notifications (with --kafka-publish): balance alerts, auto-reload requests and outcomes, expiries, and usage.rejected for events from Kafka the engine refused"},
		{name: "shards", arg: "N", def: "0", ptr: &c.Shards,
			usage: "number of balance shards, 0.." + strconv.Itoa(shardsMax) + "; 0 = number of CPUs"},
		{name: "dedup-window", arg: "DURATION", def: "840h", ptr: &c.DedupWindow,
			usage: "how long event and transaction ids are remembered (Go duration, at least 24h); events' ids stay in the command log as long, and each start reads them into memory (DESIGN.md)"},
		{name: "reversal-window", arg: "DURATION", def: "24h", ptr: &c.ReversalWindow,
			usage: "how long after a top-up it may still be reversed (unless the pricing's refund_rules say)"},
		{name: "unpriced-events", arg: "POLICY", def: "record", ptr: &c.UnpricedEvents,
			usage: "a usage event whose type has no price: record (applied, no charge, counted in meterd_unpriced_events_total) or reject (unpriced_event)"},
		{name: "doors", arg: "LIST", def: "openmeter,stripe,lago", ptr: &c.Doors,
			usage: "the other systems' ingest APIs served beside meterd's own, comma-separated: openmeter (POST /api/v1/events, CloudEvents), " +
				"stripe (/v1/billing/meter_events, /v2/billing/meter_event_stream), lago (/api/v1/events, /api/v1/events/batch); \"\" = none"},
		{name: "lago-idempotent", def: "false", ptr: &c.LagoIdempotent,
			usage: "answer a Lago transaction_id sent again with the same content as the first time (200), where Lago answers 422 value_already_exist"},
		{name: "door-openmeter-customer", arg: "FIELD", def: "subject", ptr: &c.DoorOpenMeterCustomer,
			usage: "where a CloudEvent names the customer: subject, data.<member>, or an extension attribute"},
		{name: "door-openmeter-event-type", arg: "FIELD", def: "type", ptr: &c.DoorOpenMeterEventType,
			usage: "where a CloudEvent names the event type: type, data.<member>, or an extension attribute"},
		{name: "door-stripe-customer-key", arg: "KEY", def: "stripe_customer_id", ptr: &c.DoorStripeCustomerKey,
			usage: "the Stripe meter event payload key of the customer (a meter's customer_mapping.event_payload_key)"},
		{name: "door-lago-customer", arg: "LIST", def: "external_customer_id,external_subscription_id", ptr: &c.DoorLagoCustomer,
			usage: "the Lago event fields tried in order for the customer"},
		{name: "body-bytes-max", arg: "N", def: "8388608", ptr: &c.BodyBytesMax,
			usage: "largest request body in bytes (larger: 413)"},
		{name: "events-per-request-max", arg: "N", def: "10000", ptr: &c.EventsPerRequestMax,
			usage: "most events in one request (more: 413)"},
		{name: "http-body-memory-max", arg: "N", def: "268435456", ptr: &c.BodyMemoryMax,
			usage: "most bytes held by request bodies being read or handled, server-wide; a body that would cross it is answered 503 " +
				"before it is read (at least --body-bytes-max)"},
		{name: "http-conns-max", arg: "N", def: "0", ptr: &c.HTTPConnsMax,
			usage: "most open HTTP connections; more are answered 503 and closed at once. 0 = derived from the open-files limit (RLIMIT_NOFILE) at start; " +
				"a value the limit cannot hold beside Pebble's files is refused at start"},
		{name: "http-conns-per-ip-max", arg: "N", def: "0", ptr: &c.HTTPConnsPerIPMax,
			usage: "most open HTTP connections from one client address (IPv4, or IPv6 /64), at most --http-conns-max; 0 = an eighth of --http-conns-max. " +
				"Behind a proxy every client has the proxy's address: raise it to --http-conns-max there"},
		{name: "shard-queue-max", arg: "N", def: "4096", ptr: &c.ShardQueueMax,
			usage: "requests waiting per shard before answering 503"},
		{name: "commit-events-max", arg: "N", def: "8192", ptr: &c.CommitEventsMax,
			usage: "most events in one commit group (one fsync)"},
		{name: "checkpoint-interval", arg: "DURATION", def: "1s", ptr: &c.CheckpointInterval,
			usage: "how long a wallet changed only by usage events may go without a new snapshot: usage is made durable as one command-log record per commit group, " +
				"and a start after a crash replays the log after the snapshots (10ms..1h)"},
		{name: "idem-cache-max", arg: "N", def: "262144", ptr: &c.IdemCacheMax,
			usage: "idempotency records of top-ups, adjustments and resent events cached in memory per shard"},
		{name: "cache-bytes", arg: "N", def: "268435456", ptr: &c.CacheBytes,
			usage: "Pebble block cache in bytes: keeps index and bloom-filter blocks in memory for id look-ups"},
		{name: "disk-reserve-bytes", arg: "N", def: "67108864", ptr: &c.DiskReserveBytes,
			usage: "space kept in reserve for a full disk: a file of this size in the data directory, given up when a write meets ENOSPC so that " +
				"what is in flight is still made durable; writes are refused (503 storage_full) while less than this is free beside it, " +
				"and resume by themselves at 1.5 times it"},
		{name: "log-level", arg: "LEVEL", def: "info", ptr: &c.LogLevel,
			usage: "debug, info, warn or error"},
		{name: "config", arg: "FILE", def: "", ptr: &c.Config, noFile: true,
			usage: "YAML file of settings, keys named as the flags"},
	}
}

// envName is the environment variable of a setting: METERD_DATA_DIR for data-dir.
func envName(name string) string {
	return "METERD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// set parses raw into the typed field behind ptr.
func set(ptr any, raw string) error {
	switch p := ptr.(type) {
	case *string:
		*p = raw
	case *bool:
		v, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("invalid boolean %q (want true or false)", raw)
		}
		*p = v
	case *int:
		v, err := strconv.Atoi(raw)
		if err != nil {
			return fmt.Errorf("invalid integer %q", raw)
		}
		*p = v
	case *time.Duration:
		v, err := time.ParseDuration(raw)
		if err != nil {
			return fmt.Errorf("invalid duration %q (want a Go duration such as 840h or 90m)", raw)
		}
		*p = v
	default:
		panic(fmt.Sprintf("config: setting of unsupported type %T", ptr))
	}
	return nil
}

// rawFlag is a flag.Value that only records the text given; it is parsed
// later, in precedence order, by set.
type rawFlag struct {
	value  string
	given  bool
	isBool bool
}

func (f *rawFlag) String() string   { return f.value }
func (f *rawFlag) IsBoolFlag() bool { return f.isBool }
func (f *rawFlag) Set(s string) error {
	f.value, f.given = s, true
	return nil
}

// LoadConfig builds the configuration from the command-line arguments (without
// the program name), the environment (getenv, normally os.Getenv) and the YAML
// file named by --config or METERD_CONFIG, in that order of precedence over
// the defaults. An unknown YAML key, a malformed value from any source, or a
// value out of range is an error naming its source and key. On -h or --help it
// writes the usage text to stderr and returns flag.ErrHelp.
func LoadConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	var c Config
	table := settings(&c)
	origin := make(map[string]string, len(table)) // setting name -> where its value came from

	for _, s := range table {
		if err := set(s.ptr, s.def); err != nil {
			panic("config: default of " + s.name + ": " + err.Error())
		}
		origin[s.name] = "default"
	}

	// Flags are read first, to find --config, but applied last.
	fs := flag.NewFlagSet("meterd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	flags := make(map[string]*rawFlag, len(table))
	for _, s := range table {
		_, isBool := s.ptr.(*bool)
		f := &rawFlag{value: s.def, isBool: isBool}
		flags[s.name] = f
		fs.Var(f, s.name, s.usage)
	}
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeUsage(stderr, table)
			return Config{}, flag.ErrHelp
		}
		return Config{}, fmt.Errorf("command line: %v (see meterd --help)", err)
	}
	if *version {
		return Config{}, ErrVersion
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("command line: unexpected argument %q (see meterd --help)", fs.Arg(0))
	}

	// The YAML file.
	path, pathOrigin := "", ""
	if f := flags["config"]; f.given {
		path, pathOrigin = f.value, "flag --config"
	} else if v := getenv(envName("config")); v != "" {
		path, pathOrigin = v, "environment "+envName("config")
	}
	if path != "" {
		if err := loadConfigFile(path, table, origin); err != nil {
			return Config{}, fmt.Errorf("%s (from %s)", err, pathOrigin)
		}
	}

	// The environment.
	for _, s := range table {
		name := envName(s.name)
		v := getenv(name)
		if v == "" {
			continue
		}
		src := "environment " + name
		if err := set(s.ptr, v); err != nil {
			return Config{}, fmt.Errorf("%s: %v", src, err)
		}
		origin[s.name] = src
	}

	// The command line.
	for _, s := range table {
		f := flags[s.name]
		if !f.given {
			continue
		}
		src := "flag --" + s.name
		if err := set(s.ptr, f.value); err != nil {
			return Config{}, fmt.Errorf("%s: %v", src, err)
		}
		origin[s.name] = src
	}

	if err := c.validate(); err != nil {
		var ve *validationError
		if errors.As(err, &ve) {
			return Config{}, fmt.Errorf("%s (%s): %s", ve.name, origin[ve.name], ve.msg)
		}
		return Config{}, err
	}
	return c, nil
}

// ErrVersion is LoadConfig's answer to --version: print Version and exit.
var ErrVersion = errors.New("version asked")

// version is set at link time by release builds
// (-ldflags "-X main.version=v1.2.3"); without it Version reads the module
// and VCS facts Go records in the binary.
var version string

// Version describes this build: its version, the commit it was built from
// (and whether the tree had changes), the commit's time and the Go release.
func Version() string {
	v := version
	info, ok := debug.ReadBuildInfo()
	if v == "" && ok {
		v = info.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	out := "meterd " + v
	var rev, at, dirty string
	if ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = ", modified"
				}
			}
		}
	}
	if rev != "" {
		out += " (commit " + rev + dirty
		if at != "" {
			out += ", " + at
		}
		out += ")"
	}
	return out + " " + runtime.Version()
}

// loadConfigFile applies the settings of a YAML file: one mapping whose keys
// are flag names and whose values are scalars (or, for a list setting, a
// sequence of scalars).
func loadConfigFile(path string, table []setting, origin map[string]string) error {
	src := "config file " + path
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %v", src, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, configFileBytesMax+1))
	if err != nil {
		return fmt.Errorf("%s: %v", src, err)
	}
	if len(data) > configFileBytesMax {
		return fmt.Errorf("%s: larger than %d bytes", src, configFileBytesMax)
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file sets nothing
		}
		return fmt.Errorf("%s: %v", src, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: more than one YAML document", src)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil // a file of only comments
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("%s: line %d: want a mapping of setting names to values", src, root.Line)
	}

	byName := make(map[string]*setting, len(table))
	for i := range table {
		byName[table[i].name] = &table[i]
	}
	seen := make(map[string]int)
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		at := fmt.Sprintf("%s: line %d: key %q", src, k.Line, key)
		s, ok := byName[key]
		if !ok || k.Kind != yaml.ScalarNode {
			return fmt.Errorf("%s: unknown key (known keys are the flag names, see meterd --help)", at)
		}
		if s.noFile {
			return fmt.Errorf("%s: not allowed in a config file", at)
		}
		if line, dup := seen[key]; dup {
			return fmt.Errorf("%s: repeats the key of line %d", at, line)
		}
		seen[key] = k.Line
		raw, err := yamlValue(v, s.list)
		if err != nil {
			return fmt.Errorf("%s: %v", at, err)
		}
		if err := set(s.ptr, raw); err != nil {
			return fmt.Errorf("%s: %v", at, err)
		}
		origin[key] = src
	}
	return nil
}

// yamlValue returns the text of a scalar value, "" for null, and for a list
// setting the comma-joined items of a sequence.
func yamlValue(v *yaml.Node, list bool) (string, error) {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return "", nil
		}
		return v.Value, nil
	case yaml.SequenceNode:
		if !list {
			break
		}
		items := make([]string, 0, len(v.Content))
		for _, it := range v.Content {
			if it.Kind != yaml.ScalarNode {
				return "", errors.New("want a list of strings")
			}
			items = append(items, it.Value)
		}
		return strings.Join(items, ","), nil
	}
	return "", errors.New("want a single value, not a list or mapping")
}

// validationError names the setting whose value is wrong; LoadConfig adds
// where that value came from.
type validationError struct {
	name string
	msg  string
}

func (e *validationError) Error() string { return e.name + ": " + e.msg }

func invalid(name, format string, a ...any) error {
	return &validationError{name: name, msg: fmt.Sprintf(format, a...)}
}

// validate checks ranges and formats once all sources are merged.
func (c *Config) validate() error {
	if err := checkHostPort(c.Listen, true); err != nil {
		return invalid("listen", "%q: %v", c.Listen, err)
	}
	if c.APIKeys == "" && !isLoopback(c.Listen) {
		return invalid("listen", "%q is not a loopback address, and without --api-keys meterd serves only on loopback", c.Listen)
	}
	if c.DataDir == "" {
		return invalid("data-dir", "must not be empty")
	}
	if c.TestClockStart != "" {
		if _, err := time.Parse(time.RFC3339Nano, c.TestClockStart); err != nil {
			return invalid("test-clock-start", "%q is not an RFC 3339 time (2026-11-01T00:00:00Z)", c.TestClockStart)
		}
		if !c.TestClock {
			return invalid("test-clock-start", "is set but --test-clock is not")
		}
	}
	if c.ClickHouseAddr != "" {
		if err := checkHostPort(c.ClickHouseAddr, false); err != nil {
			return invalid("clickhouse-addr", "%q: %v", c.ClickHouseAddr, err)
		}
	}
	if c.ClickHousePassword != "" && c.ClickHousePasswordFile != "" {
		return invalid("clickhouse-password-file", "is set and so is --clickhouse-password: give one")
	}
	if !isName(c.ClickHouseDatabase, clickHouseDatabaseBytesMax, false) {
		return invalid("clickhouse-database", "%q: want 1-%d characters of [A-Za-z0-9_]",
			c.ClickHouseDatabase, clickHouseDatabaseBytesMax)
	}
	if c.KafkaBrokers != "" {
		for _, b := range c.KafkaBrokerList() {
			if err := checkHostPort(b, false); err != nil {
				return invalid("kafka-brokers", "broker %q: %v", b, err)
			}
		}
		if len(c.KafkaBrokerList()) == 0 {
			return invalid("kafka-brokers", "%q lists no broker", c.KafkaBrokers)
		}
	}
	// The topic is checked with room for the ".dlq" suffix of its dead-letter topic.
	if !isName(c.KafkaTopic, kafkaNameBytesMax-len(".dlq"), true) || c.KafkaTopic == "." || c.KafkaTopic == ".." {
		return invalid("kafka-topic", "%q: want 1-%d characters of [A-Za-z0-9._-]", c.KafkaTopic, kafkaNameBytesMax-len(".dlq"))
	}
	if !isName(c.KafkaLedgerTopic, kafkaNameBytesMax, true) {
		return invalid("kafka-ledger-topic", "%q: want 1-%d characters of [A-Za-z0-9._-]", c.KafkaLedgerTopic, kafkaNameBytesMax)
	}
	if !isName(c.KafkaNoticesTopic, kafkaNameBytesMax, true) {
		return invalid("kafka-notifications-topic", "%q: want 1-%d characters of [A-Za-z0-9._-]", c.KafkaNoticesTopic, kafkaNameBytesMax)
	}
	if c.WebhookSecretFile != "" {
		if c.WebhookSecret != "" {
			return invalid("webhook-secret-file", "is set and so is --webhook-secret: give one")
		}
		secret, err := readSecret("webhook-secret-file", c.WebhookSecretFile)
		if err != nil {
			return err
		}
		c.WebhookSecret = secret
	}
	if c.WebhookURL != "" && len(c.WebhookSecret) < 16 {
		return invalid("webhook-secret", "a webhook needs a secret of at least 16 bytes")
	}
	if c.WebhookURL == "" && c.WebhookSecret != "" {
		return invalid("webhook-secret", "is set but --webhook-url is not")
	}
	if c.KafkaPublish && c.KafkaBrokers == "" {
		return invalid("kafka-publish", "needs --kafka-brokers")
	}
	if !isName(c.KafkaGroup, kafkaNameBytesMax, true) {
		return invalid("kafka-group", "%q: want 1-%d characters of [A-Za-z0-9._-]", c.KafkaGroup, kafkaNameBytesMax)
	}
	if c.Shards < 0 || c.Shards > shardsMax {
		return invalid("shards", "%d is outside 0..%d", c.Shards, shardsMax)
	}
	if c.DedupWindow < dedupWindowMin {
		return invalid("dedup-window", "%v is shorter than the minimum %v", c.DedupWindow, dedupWindowMin)
	}
	if c.ReversalWindow <= 0 {
		return invalid("reversal-window", "%v must be positive", c.ReversalWindow)
	}
	if c.CheckpointInterval < checkpointIntervalMin || c.CheckpointInterval > checkpointIntervalMax {
		return invalid("checkpoint-interval", "%v is outside %v..%v", c.CheckpointInterval, checkpointIntervalMin, checkpointIntervalMax)
	}
	for _, l := range []struct {
		name   string
		v, max int
	}{
		{"body-bytes-max", c.BodyBytesMax, bodyBytesMaxMax},
		{"http-body-memory-max", c.BodyMemoryMax, cacheBytesMax},
		{"events-per-request-max", c.EventsPerRequestMax, eventsPerRequestMaxMax},
		{"shard-queue-max", c.ShardQueueMax, shardQueueMaxMax},
		{"commit-events-max", c.CommitEventsMax, commitEventsMaxMax},
		{"idem-cache-max", c.IdemCacheMax, idemCacheMaxMax},
		{"cache-bytes", c.CacheBytes, cacheBytesMax},
	} {
		if l.v < 1 || l.v > l.max {
			return invalid(l.name, "%d is outside 1..%d", l.v, l.max)
		}
	}
	if c.BodyMemoryMax < c.BodyBytesMax {
		return invalid("http-body-memory-max", "%d is less than --body-bytes-max %d: the largest body could never be read", c.BodyMemoryMax, c.BodyBytesMax)
	}
	if c.DiskReserveBytes < diskReserveBytesMin || c.DiskReserveBytes > cacheBytesMax {
		return invalid("disk-reserve-bytes", "%d is outside %d..%d", c.DiskReserveBytes, diskReserveBytesMin, cacheBytesMax)
	}
	if c.HTTPConnsMax < 0 || c.HTTPConnsMax > httpConnsMaxMax {
		return invalid("http-conns-max", "%d is outside 0..%d (0 = derived from the open-files limit)", c.HTTPConnsMax, httpConnsMaxMax)
	}
	if c.HTTPConnsPerIPMax < 0 || c.HTTPConnsPerIPMax > httpConnsMaxMax {
		return invalid("http-conns-per-ip-max", "%d is outside 0..%d (0 = derived)", c.HTTPConnsPerIPMax, httpConnsMaxMax)
	}
	if c.HTTPConnsMax > 0 && c.HTTPConnsPerIPMax > c.HTTPConnsMax {
		return invalid("http-conns-per-ip-max", "%d is more than --http-conns-max %d", c.HTTPConnsPerIPMax, c.HTTPConnsMax)
	}
	for _, r := range []struct {
		name string
		days int
	}{{"clickhouse-retention-days", c.ClickHouseRetention}, {"clickhouse-rollup-retention-days", c.ClickHouseRollupRetention}} {
		if r.days < 0 || r.days > sink.RetentionDaysMax {
			return invalid(r.name, "%d is outside 0..%d", r.days, sink.RetentionDaysMax)
		}
	}
	if c.SinkBatchRows < 1 || c.SinkBatchRows > 1_000_000 {
		return invalid("sink-batch-rows", "%d is outside 1..1000000 (one insert must stay one ClickHouse block)", c.SinkBatchRows)
	}
	if c.SinkBatchAge <= 0 || c.SinkBatchAge > time.Hour {
		return invalid("sink-batch-age", "%v is outside (0, 1h]", c.SinkBatchAge)
	}
	if c.SinkBacklogMaxBytes < 0 {
		return invalid("sink-backlog-max-bytes", "%d is negative", c.SinkBacklogMaxBytes)
	}
	switch c.SinkBacklogPolicy {
	case "alert", "refuse":
	default:
		return invalid("sink-backlog-policy", "%q: want alert or refuse", c.SinkBacklogPolicy)
	}
	switch c.UnpricedEvents {
	case "record", "reject":
	default:
		return invalid("unpriced-events", "%q: want record or reject", c.UnpricedEvents)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return invalid("tls-cert", "--tls-cert and --tls-key go together")
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		return invalid("tls-client-ca", "needs --tls-cert and --tls-key")
	}
	if _, ok := ingest.ParseDoors(c.Doors); !ok {
		return invalid("doors", "%q: want a comma-separated list of openmeter, stripe and lago", c.Doors)
	}
	if m := c.doorMapping(); m.Check() != nil {
		return m.Check() // it names the setting
	}
	if c.ClickHouseCluster != "" && !isName(c.ClickHouseCluster, clickHouseDatabaseBytesMax, false) {
		return invalid("clickhouse-cluster", "%q: want 1-%d characters of [A-Za-z0-9_]", c.ClickHouseCluster, clickHouseDatabaseBytesMax)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return invalid("log-level", "%q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}

// The descriptor budget. RLIMIT_NOFILE bounds every descriptor of the
// process, and running out is not a local failure: accept fails with EMFILE,
// and so would a Pebble flush creating its table, a WAL rotation, or a sink
// dialing its destination. planDescriptors shares the limit out so that the
// parts that grow with load cannot take the room of the others:
//
//   - fdReserved for the parts of fixed size: stdin/out/err, the runtime's
//     epoll and its wakeup, the listener; Pebble's files outside its table
//     cache (WAL and a recycled one, MANIFEST, OPTIONS, LOCK, the directory,
//     tables being written by a flush and compactions: about 10-20); the
//     sinks' connections (ClickHouse at most 4, the webhook 1-2, the Kafka
//     writer one per broker); the Kafka consumer's connections (one per
//     broker plus the group coordinator); /proc and cgroup files read by the
//     runtime and the process collector. These come to about 50 with every
//     sink and a small Kafka cluster (an idle meterd without them holds 18);
//     the rest is margin;
//   - Pebble's tables: a quarter of the limit, within pebbleFilesMin and
//     Pebble's own default pebbleFilesMax (its bound is soft: a table in use
//     stays open past it, which the margin above absorbs);
//   - HTTP connections: the rest, at most httpConnsDerivedMax when derived
//     (measured resident memory: about 10 KiB per idle connection, 13 KiB
//     with part of a header, 22 KiB with 1 KB of a body read: 16384 of them
//     are 160-350 MiB, before request bodies); from one client address an
//     eighth of them, so that it takes at least 8 addresses to fill them.
//
// Under ulimit -n 1024: 256 for Pebble, 640 connections, 80 per address.
// Under 65536 or more: 1000 for Pebble, 16384 connections, 2048 per address.
const (
	fdReserved          = 128
	pebbleFilesMin      = 100 // Pebble's file cache never holds fewer than 64 tables, plus 10 other files
	pebbleFilesMax      = 1000
	httpConnsMin        = 32
	httpConnsDerivedMax = 16384
	httpConnsPerIPShare = 8
	nofileConsidered    = 1 << 24 // past any real limit (Linux's nr_open is at most 2^30, default 2^20); RLIM_INFINITY is read as this
)

// fdPlan is how the open-files limit is shared out.
type fdPlan struct {
	nofile            int  // RLIMIT_NOFILE (soft), at most nofileConsidered
	pebbleFilesMax    int  // balance.Options.FilesOpenMax
	httpConnsMax      int  // ingest.ListenerConfig.ConnsMax
	httpConnsPerIPMax int  // ingest.ListenerConfig.ConnsPerIPMax
	connsDerived      bool // httpConnsMax was derived, not configured
	connsPerIPDerived bool
	httpConnsRoom     int // the most connections the limit allows
}

// planDescriptors shares out the open-files limit nofile (see fdReserved)
// and checks the configured connection bounds (0 = derive) against it. A
// limit too low for meterd, or a bound it cannot hold, is an error that says
// what to raise or lower.
func planDescriptors(nofile uint64, connsMax, connsPerIPMax int) (fdPlan, error) {
	n := int(min(nofile, nofileConsidered))
	p := fdPlan{nofile: n, pebbleFilesMax: min(max(n/4, pebbleFilesMin), pebbleFilesMax)}
	p.httpConnsRoom = n - fdReserved - p.pebbleFilesMax
	if p.httpConnsRoom < httpConnsMin {
		return fdPlan{}, fmt.Errorf("the open-files limit (RLIMIT_NOFILE) is %d: meterd needs at least %d "+
			"(%d for itself, its sinks and Kafka, %d for Pebble's files, %d for HTTP connections); raise it (ulimit -n, systemd LimitNOFILE=)",
			n, fdReserved+pebbleFilesMin+httpConnsMin, fdReserved, pebbleFilesMin, httpConnsMin)
	}
	switch {
	case connsMax == 0:
		p.httpConnsMax, p.connsDerived = min(p.httpConnsRoom, httpConnsDerivedMax), true
	case connsMax > p.httpConnsRoom:
		return fdPlan{}, fmt.Errorf("http-conns-max: %d connections do not fit the open-files limit (RLIMIT_NOFILE) %d, which leaves room for at most %d "+
			"(%d minus %d for meterd itself, its sinks and Kafka, minus %d for Pebble's files); raise the limit (ulimit -n) or lower the setting",
			connsMax, n, p.httpConnsRoom, n, fdReserved, p.pebbleFilesMax)
	default:
		p.httpConnsMax = connsMax
	}
	switch {
	case connsPerIPMax == 0:
		p.httpConnsPerIPMax, p.connsPerIPDerived = max(p.httpConnsMax/httpConnsPerIPShare, 1), true
	case connsPerIPMax > p.httpConnsMax:
		return fdPlan{}, fmt.Errorf("http-conns-per-ip-max: %d is more than the %d connections of --http-conns-max (derived from the open-files limit %d when 0)",
			connsPerIPMax, p.httpConnsMax, n)
	default:
		p.httpConnsPerIPMax = connsPerIPMax
	}
	return p, nil
}

// KafkaBrokerList returns the brokers of --kafka-brokers, trimmed, without
// empty items; nil when Kafka is off.
func (c *Config) KafkaBrokerList() []string {
	var out []string
	for _, b := range strings.Split(c.KafkaBrokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// TestClockStartTime returns the parsed --test-clock-start, and false when it
// is not set (the test clock then starts at the real time).
func (c *Config) TestClockStartTime() (time.Time, bool) {
	if c.TestClockStart == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, c.TestClockStart)
	return t, err == nil
}

// checkHostPort accepts HOST:PORT with a numeric port. For an address to
// listen on (listening), the host may be empty (":8080": all interfaces) and
// the port 0 (any free port); for an address to dial, neither.
func checkHostPort(s string, listening bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want HOST:PORT")
	}
	if host == "" && !listening {
		return errors.New("want HOST:PORT with a host")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("port %q is not a number 0-65535", port)
	}
	if n == 0 && !listening {
		return errors.New("port 0 is not a server's port")
	}
	return nil
}

// isLoopback reports whether the host of a valid HOST:PORT is "localhost" or
// a loopback IP. An empty host means all interfaces, so it is not.
func isLoopback(hostPort string) bool {
	host, _, _ := net.SplitHostPort(hostPort)
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// isName reports whether s is 1..bytesMax characters of [A-Za-z0-9_], plus
// '.' and '-' when dotDash.
func isName(s string, bytesMax int, dotDash bool) bool {
	if len(s) == 0 || len(s) > bytesMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '_':
		case dotDash && (ch == '.' || ch == '-'):
		default:
			return false
		}
	}
	return true
}

// writeUsage writes the --help text: every flag with its default and its
// environment variable, and the precedence rule.
func writeUsage(w io.Writer, table []setting) {
	var b strings.Builder
	b.WriteString(`Usage: meterd [flags]

meterd meters usage events against prepaid credits and serves the HTTP API.

Each setting is taken from the first of these that gives it (precedence,
highest first):
  1. the command-line flag              --data-dir ./data
  2. the environment variable           METERD_DATA_DIR=./data   (empty = unset)
  3. the YAML file of --config FILE or METERD_CONFIG, keys named as the flags
                                        data-dir: ./data
  4. the default shown below.

Flags:
`)
	for _, s := range table {
		head := "  --" + s.name
		if s.arg != "" {
			head += " " + s.arg
		}
		def := s.def
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(&b, "%s\n      %s\n      default %s, env %s", head, s.usage, def, envName(s.name))
		if s.noFile {
			b.WriteString(", not a YAML key")
		}
		b.WriteString("\n")
	}
	b.WriteString("  --version\n      print meterd's version (module version, commit, build time, Go) and exit\n")
	b.WriteString("  -h, --help\n      print this text and exit\n")
	io.WriteString(w, b.String())
}

// doorMapping is the doors' field mapping the configuration sets.
func (c *Config) doorMapping() ingest.DoorMapping {
	m := ingest.DoorMapping{OpenMeterCustomer: c.DoorOpenMeterCustomer, OpenMeterEventType: c.DoorOpenMeterEventType,
		StripeCustomerKey: c.DoorStripeCustomerKey}
	for _, f := range strings.Split(c.DoorLagoCustomer, ",") {
		if f = strings.TrimSpace(f); f != "" {
			m.LagoCustomer = append(m.LagoCustomer, f)
		}
	}
	return m
}

// clickHouseSecurity is the TLS configuration (nil: plain TCP) and the
// password of the connections to ClickHouse. Errors never contain the
// password.
func (c *Config) clickHouseSecurity() (*tls.Config, string, error) {
	tc, err := clientTLS(c.ClickHouseTLS, "clickhouse-tls-ca", c.ClickHouseTLSCA)
	if err != nil {
		return nil, "", err
	}
	if c.ClickHousePasswordFile == "" {
		return tc, c.ClickHousePassword, nil
	}
	pass, err := readSecret("clickhouse-password-file", c.ClickHousePasswordFile)
	return tc, pass, err
}

// clientTLS is the client configuration of --NAME-tls and --NAME-tls-ca
// (the CAs of the servers' certificates; the system's without it): nil
// when neither is set.
func clientTLS(on bool, caFlag, caFile string) (*tls.Config, error) {
	if !on && caFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", caFlag, err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--%s %s: no PEM certificate in it", caFlag, caFile)
		}
	}
	return tc, nil
}

// readSecret reads a password from the file of --flag: its first line,
// without the line ending. An empty one is an error.
func readSecret(flag, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flag, err)
	}
	pass, _, _ := strings.Cut(string(b), "\n")
	if pass = strings.TrimSuffix(pass, "\r"); pass == "" {
		return "", fmt.Errorf("--%s %s: empty", flag, path)
	}
	return pass, nil
}

// kafkaSecurity is the TLS configuration and the SASL mechanism of the
// connections to Kafka (nil, nil: plain TCP, no login). The password comes
// from --kafka-sasl-password-file or METERD_KAFKA_SASL_PASSWORD; errors
// never contain it.
func (c *Config) kafkaSecurity() (*tls.Config, sasl.Mechanism, error) {
	tc, err := clientTLS(c.KafkaTLS, "kafka-tls-ca", c.KafkaTLSCA)
	if err != nil {
		return nil, nil, err
	}
	if c.KafkaSASLMechanism == "" {
		return tc, nil, nil
	}
	if c.KafkaSASLUsername == "" {
		return nil, nil, errors.New("--kafka-sasl-mechanism needs --kafka-sasl-username")
	}
	pass := os.Getenv("METERD_KAFKA_SASL_PASSWORD")
	if c.KafkaSASLPasswordFile != "" {
		if pass, err = readSecret("kafka-sasl-password-file", c.KafkaSASLPasswordFile); err != nil {
			return nil, nil, err
		}
	}
	if pass == "" {
		return nil, nil, errors.New("--kafka-sasl-mechanism needs a password: --kafka-sasl-password-file or METERD_KAFKA_SASL_PASSWORD")
	}
	switch c.KafkaSASLMechanism {
	case "plain":
		return tc, plain.Mechanism{Username: c.KafkaSASLUsername, Password: pass}, nil
	case "scram-sha-256", "scram-sha-512":
		alg := scram.SHA256
		if c.KafkaSASLMechanism == "scram-sha-512" {
			alg = scram.SHA512
		}
		m, err := scram.Mechanism(alg, c.KafkaSASLUsername, pass)
		if err != nil {
			return nil, nil, fmt.Errorf("--kafka-sasl-mechanism %s: %w", c.KafkaSASLMechanism, err)
		}
		return tc, m, nil
	}
	return nil, nil, fmt.Errorf("--kafka-sasl-mechanism %q: want plain, scram-sha-256 or scram-sha-512", c.KafkaSASLMechanism)
}
