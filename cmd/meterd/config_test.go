package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// env returns a getenv over a fixed map.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "meterd.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T, args []string, e map[string]string) Config {
	t.Helper()
	var stderr bytes.Buffer
	c, err := LoadConfig(args, env(e), &stderr)
	if err != nil {
		t.Fatalf("LoadConfig(%q): %v", args, err)
	}
	if stderr.Len() != 0 {
		t.Errorf("unexpected output: %s", stderr.String())
	}
	return c
}

func loadErr(t *testing.T, args []string, e map[string]string, wants ...string) {
	t.Helper()
	_, err := LoadConfig(args, env(e), &bytes.Buffer{})
	if err == nil {
		t.Fatalf("LoadConfig(%q, %v): no error, want one containing %q", args, e, wants)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("LoadConfig(%q, %v): error %q does not contain %q", args, e, err, w)
		}
	}
}

func TestDefaults(t *testing.T) {
	got := load(t, nil, nil)
	want := Config{
		Listen:                 "127.0.0.1:8080",
		DataDir:                "./data",
		ClickHouseDatabase:     "meterd",
		ClickHouseUser:         "default",
		SinkBatchRows:          100000,
		SinkBatchAge:           time.Second,
		SinkBacklogMaxBytes:    10 << 30,
		SinkBacklogPolicy:      "alert",
		KafkaTopic:             "usage-events",
		KafkaGroup:             "meterd",
		KafkaLedgerTopic:       "meterd.ledger",
		KafkaNoticesTopic:      "meterd.notifications",
		Shards:                 0,
		DedupWindow:            35 * 24 * time.Hour,
		ReversalWindow:         24 * time.Hour,
		UnpricedEvents:         "record",
		Doors:                  "openmeter,stripe,lago",
		DoorOpenMeterCustomer:  "subject",
		DoorOpenMeterEventType: "type",
		DoorStripeCustomerKey:  "stripe_customer_id",
		DoorLagoCustomer:       "external_customer_id,external_subscription_id",
		BodyBytesMax:           8 << 20,
		EventsPerRequestMax:    10000,
		BodyMemoryMax:          256 << 20,
		ShardQueueMax:          4096,
		CommitEventsMax:        8192,
		CheckpointInterval:     time.Second,
		IdemCacheMax:           262144,
		CacheBytes:             268435456,
		DiskReserveBytes:       64 << 20,
		LogLevel:               "info",
	}
	if got != want {
		t.Errorf("defaults:\n got %+v\nwant %+v", got, want)
	}
	if got.KafkaBrokerList() != nil {
		t.Errorf("KafkaBrokerList() = %q, want nil", got.KafkaBrokerList())
	}
	if _, ok := got.TestClockStartTime(); ok {
		t.Error("TestClockStartTime reports a time that was not set")
	}
}

// TestTableCoversConfig checks that every Config field has exactly one row in
// the settings table, so that a field added without a flag fails here.
func TestTableCoversConfig(t *testing.T) {
	var c Config
	table := settings(&c)
	v := reflect.ValueOf(&c).Elem()
	byAddr := make(map[uintptr]string)
	names := make(map[string]bool)
	for _, s := range table {
		addr := reflect.ValueOf(s.ptr).Pointer()
		if prev, dup := byAddr[addr]; dup {
			t.Errorf("settings %q and %q share a field", prev, s.name)
		}
		byAddr[addr] = s.name
		if names[s.name] {
			t.Errorf("setting %q declared twice", s.name)
		}
		names[s.name] = true
		if err := set(reflect.New(reflect.TypeOf(s.ptr).Elem()).Interface(), s.def); err != nil {
			t.Errorf("default of %q: %v", s.name, err)
		}
	}
	for i := 0; i < v.NumField(); i++ {
		if _, ok := byAddr[v.Field(i).Addr().Pointer()]; !ok {
			t.Errorf("Config.%s has no setting", v.Type().Field(i).Name)
		}
	}
	if len(table) != v.NumField() {
		t.Errorf("%d settings for %d fields", len(table), v.NumField())
	}
}

func TestEnvName(t *testing.T) {
	for in, want := range map[string]string{
		"data-dir":               "METERD_DATA_DIR",
		"clickhouse-addr":        "METERD_CLICKHOUSE_ADDR",
		"events-per-request-max": "METERD_EVENTS_PER_REQUEST_MAX",
		"listen":                 "METERD_LISTEN",
	} {
		if got := envName(in); got != want {
			t.Errorf("envName(%q) = %q, want %q", in, got, want)
		}
	}
}

// Each source alone sets values of every type.
func TestEachSource(t *testing.T) {
	want := func(t *testing.T, c Config) {
		t.Helper()
		if c.DataDir != "/var/lib/meterd" || !c.TestClock || c.TestClockStart != "2026-11-01T00:00:00Z" ||
			c.Shards != 8 || c.DedupWindow != 48*time.Hour || c.KafkaBrokers != "k1:9092,k2:9092" ||
			c.LogLevel != "debug" {
			t.Errorf("got %+v", c)
		}
		if got := c.KafkaBrokerList(); !reflect.DeepEqual(got, []string{"k1:9092", "k2:9092"}) {
			t.Errorf("KafkaBrokerList() = %q", got)
		}
		if ts, ok := c.TestClockStartTime(); !ok || !ts.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) {
			t.Errorf("TestClockStartTime() = %v, %v", ts, ok)
		}
	}
	t.Run("flags", func(t *testing.T) {
		want(t, load(t, []string{
			"--data-dir", "/var/lib/meterd", "--test-clock", "--test-clock-start=2026-11-01T00:00:00Z",
			"-shards", "8", "--dedup-window", "48h", "--kafka-brokers", "k1:9092,k2:9092", "--log-level=debug",
		}, nil))
	})
	t.Run("env", func(t *testing.T) {
		want(t, load(t, nil, map[string]string{
			"METERD_DATA_DIR": "/var/lib/meterd", "METERD_TEST_CLOCK": "true",
			"METERD_TEST_CLOCK_START": "2026-11-01T00:00:00Z", "METERD_SHARDS": "8",
			"METERD_DEDUP_WINDOW": "48h", "METERD_KAFKA_BROKERS": "k1:9092,k2:9092", "METERD_LOG_LEVEL": "debug",
		}))
	})
	file := writeFile(t, `# meterd settings
data-dir: /var/lib/meterd
test-clock: true
test-clock-start: "2026-11-01T00:00:00Z"
shards: 8
dedup-window: 48h
kafka-brokers: [k1:9092, k2:9092]   # a list, or "k1:9092,k2:9092"
log-level: debug
pricing: ~                          # null = empty
`)
	t.Run("file by flag", func(t *testing.T) {
		want(t, load(t, []string{"--config", file}, nil))
	})
	t.Run("file by env", func(t *testing.T) {
		c := load(t, nil, map[string]string{"METERD_CONFIG": file})
		want(t, c)
		if c.Config != file {
			t.Errorf("Config = %q, want %q", c.Config, file)
		}
	})
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, "listen: 127.0.0.1:1001\nshards: 1\ntest-clock: true\n")
	other := writeFile(t, "listen: 127.0.0.1:1004\n")
	e := map[string]string{"METERD_LISTEN": "127.0.0.1:1002", "METERD_SHARDS": "2"}

	c := load(t, []string{"--config", file, "--listen", "127.0.0.1:1003"}, e)
	if c.Listen != "127.0.0.1:1003" || c.Shards != 2 || !c.TestClock {
		t.Errorf("flag > env > file > default: got listen %q shards %d test-clock %v", c.Listen, c.Shards, c.TestClock)
	}
	c = load(t, []string{"--config", file}, e)
	if c.Listen != "127.0.0.1:1002" {
		t.Errorf("env over file: got listen %q", c.Listen)
	}
	c = load(t, []string{"--config", file}, nil)
	if c.Listen != "127.0.0.1:1001" || c.Shards != 1 {
		t.Errorf("file over default: got listen %q shards %d", c.Listen, c.Shards)
	}
	// A flag false beats a true from the file and the environment.
	c = load(t, []string{"--config", file, "--test-clock=false"}, map[string]string{"METERD_TEST_CLOCK": "1"})
	if c.TestClock {
		t.Error("--test-clock=false did not win")
	}
	// --config beats METERD_CONFIG.
	c = load(t, []string{"--config", other}, map[string]string{"METERD_CONFIG": file})
	if c.Listen != "127.0.0.1:1004" || c.Shards != 0 {
		t.Errorf("--config over METERD_CONFIG: got listen %q shards %d", c.Listen, c.Shards)
	}
	// An empty variable is unset.
	c = load(t, nil, map[string]string{"METERD_LISTEN": ""})
	if c.Listen != "127.0.0.1:8080" {
		t.Errorf("empty env: got listen %q", c.Listen)
	}
}

func TestConfigFile(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		wants      []string
	}{
		{"unknown key", "listen: 127.0.0.1:1\nlisten_addr: x\n", []string{"line 2", `key "listen_addr"`, "unknown key"}},
		{"misspelt underscore", "data_dir: x\n", []string{`key "data_dir"`, "unknown key"}},
		{"config in file", "config: other.yaml\n", []string{`key "config"`, "not allowed"}},
		{"repeated key", "shards: 1\nshards: 2\n", []string{`key "shards"`, "line 1"}},
		{"bad duration", "dedup-window: 35d\n", []string{`key "dedup-window"`, "invalid duration"}},
		{"bad int", "shards: many\n", []string{`key "shards"`, "invalid integer"}},
		{"bad bool", "test-clock: yes\n", []string{`key "test-clock"`, "invalid boolean"}},
		{"list for scalar", "listen: [a, b]\n", []string{`key "listen"`, "single value"}},
		{"mapping for scalar", "listen: {a: b}\n", []string{`key "listen"`, "single value"}},
		{"not a mapping", "- listen\n", []string{"mapping"}},
		{"malformed yaml", "listen: [\n", []string{"config file"}},
		{"two documents", "shards: 1\n---\nshards: 2\n", []string{"more than one"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, tc.text)
			loadErr(t, []string{"--config", p}, nil, append(tc.wants, "config file "+p)...)
		})
	}
	t.Run("missing file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "nope.yaml")
		loadErr(t, nil, map[string]string{"METERD_CONFIG": p}, p, "METERD_CONFIG")
	})
	t.Run("too large", func(t *testing.T) {
		p := writeFile(t, "# "+strings.Repeat("x", configFileBytesMax)+"\n")
		loadErr(t, []string{"--config", p}, nil, "larger than")
	})
	for _, text := range []string{"", "# only a comment\n", "---\n"} {
		p := writeFile(t, text)
		if c := load(t, []string{"--config", p}, nil); c.Listen != "127.0.0.1:8080" {
			t.Errorf("empty file %q changed listen to %q", text, c.Listen)
		}
	}
}

func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		env   map[string]string
		wants []string
	}{
		// Malformed values name their source and key.
		{[]string{"--shards", "x"}, nil, []string{"flag --shards", "invalid integer"}},
		{[]string{"--dedup-window", "35d"}, nil, []string{"flag --dedup-window", "invalid duration"}},
		{[]string{"--test-clock=maybe"}, nil, []string{"flag --test-clock", "invalid boolean"}},
		{nil, map[string]string{"METERD_SHARDS": "x"}, []string{"environment METERD_SHARDS", "invalid integer"}},
		{nil, map[string]string{"METERD_REVERSAL_WINDOW": "1 day"}, []string{"environment METERD_REVERSAL_WINDOW", "invalid duration"}},
		{nil, map[string]string{"METERD_TEST_CLOCK": "yes"}, []string{"environment METERD_TEST_CLOCK", "invalid boolean"}},
		// Command-line misuse.
		{[]string{"--no-such-flag"}, nil, []string{"command line", "no-such-flag"}},
		{[]string{"serve"}, nil, []string{"command line", `unexpected argument "serve"`}},
		// Out of range, with the source of the value.
		{[]string{"--shards", "1025"}, nil, []string{"shards", "flag --shards", "0..1024"}},
		{nil, map[string]string{"METERD_SHARDS": "-1"}, []string{"shards", "environment METERD_SHARDS"}},
		{[]string{"--dedup-window", "23h59m"}, nil, []string{"dedup-window", "minimum 24h"}},
		{[]string{"--reversal-window", "0s"}, nil, []string{"reversal-window", "positive"}},
		{[]string{"--body-bytes-max", "0"}, nil, []string{"body-bytes-max", "1.."}},
		{[]string{"--events-per-request-max", "-5"}, nil, []string{"events-per-request-max"}},
		{[]string{"--shard-queue-max", "0"}, nil, []string{"shard-queue-max"}},
		{[]string{"--commit-events-max", "0"}, nil, []string{"commit-events-max"}},
		{[]string{"--idem-cache-max", "0"}, nil, []string{"idem-cache-max"}},
		{[]string{"--idem-cache-max", "999999999999"}, nil, []string{"idem-cache-max", "outside"}},
		{[]string{"--disk-reserve-bytes", "1048575"}, nil, []string{"disk-reserve-bytes", "outside 1048576.."}},
		{[]string{"--listen", "8080"}, nil, []string{"listen", "HOST:PORT"}},
		{[]string{"--listen", ":8080"}, nil, []string{"listen", "loopback", "--api-keys"}},
		{[]string{"--listen", "10.0.0.1:8080"}, nil, []string{"listen", "loopback"}},
		{[]string{"--listen", "localhost:http"}, nil, []string{"listen", "port"}},
		{[]string{"--listen", "localhost:70000"}, nil, []string{"listen", "port"}},
		{[]string{"--clickhouse-addr", ":9000"}, nil, []string{"clickhouse-addr", "host"}},
		{[]string{"--clickhouse-database", "meterd; DROP"}, nil, []string{"clickhouse-database"}},
		{[]string{"--kafka-brokers", "k1:9092,k2"}, nil, []string{"kafka-brokers", `"k2"`}},
		{[]string{"--kafka-brokers", " , "}, nil, []string{"kafka-brokers", "no broker"}},
		{[]string{"--kafka-topic", "usage events"}, nil, []string{"kafka-topic"}},
		{[]string{"--kafka-group", ""}, nil, []string{"kafka-group"}},
		{[]string{"--data-dir", ""}, nil, []string{"data-dir", "empty"}},
		{[]string{"--test-clock", "--test-clock-start", "2026-11-01"}, nil, []string{"test-clock-start", "RFC 3339"}},
		{[]string{"--test-clock-start", "2026-11-01T00:00:00Z"}, nil, []string{"test-clock-start", "--test-clock is not"}},
		{[]string{"--log-level", "verbose"}, nil, []string{"log-level", "verbose"}},
	} {
		loadErr(t, tc.args, tc.env, tc.wants...)
	}
}

func TestGoodEdgeValues(t *testing.T) {
	for _, l := range []string{"127.0.0.1:0", "localhost:8080", "[::1]:8080", "127.1.2.3:65535"} {
		if c := load(t, []string{"--listen", l}, nil); c.Listen != l {
			t.Errorf("listen %q: got %q", l, c.Listen)
		}
	}
	if c := load(t, []string{"--listen", "0.0.0.0:8080"}, map[string]string{"METERD_API_KEYS": "k.yaml"}); c.APIKeys != "k.yaml" {
		t.Errorf("api-keys from env: got %q", c.APIKeys)
	}
	c := load(t, []string{
		"--listen", ":0", "--api-keys", "keys.yaml", "--shards", "1024", "--dedup-window", "24h", "--clickhouse-addr", "[::1]:9000",
		"--kafka-brokers", " k1:9092 , k2:9092,", "--kafka-topic", "a.b_c-d", "--test-clock",
		"--test-clock-start", "2026-11-21T10:00:00.123456789+02:00",
	}, nil)
	if got := c.KafkaBrokerList(); !reflect.DeepEqual(got, []string{"k1:9092", "k2:9092"}) {
		t.Errorf("KafkaBrokerList() = %q", got)
	}
	ts, ok := c.TestClockStartTime()
	if !ok || ts.UTC() != time.Date(2026, 11, 21, 8, 0, 0, 123456789, time.UTC) {
		t.Errorf("TestClockStartTime() = %v, %v", ts, ok)
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		var stderr bytes.Buffer
		_, err := LoadConfig([]string{"--listen", "127.0.0.1:1", arg}, env(nil), &stderr)
		if !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("%s: err = %v, want flag.ErrHelp", arg, err)
		}
		out := stderr.String()
		var c Config
		for _, s := range settings(&c) {
			if !strings.Contains(out, "--"+s.name) {
				t.Errorf("%s: usage does not mention --%s", arg, s.name)
			}
			if !strings.Contains(out, envName(s.name)) {
				t.Errorf("%s: usage does not mention %s", arg, envName(s.name))
			}
			if s.def != "" && !strings.Contains(out, "default "+s.def) {
				t.Errorf("%s: usage does not give the default %q of --%s", arg, s.def, s.name)
			}
		}
		for _, w := range []string{"METERD_CONFIG", "precedence", "YAML"} {
			if !strings.Contains(out, w) {
				t.Errorf("%s: usage does not mention %q", arg, w)
			}
		}
	}
}

// TestKafkaSecurity: TLS from --kafka-tls, the SASL password from its file
// or the environment, and errors that never show it.
func TestKafkaSecurity(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("file-secret-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Config{KafkaTLS: true, KafkaSASLMechanism: "scram-sha-512", KafkaSASLUsername: "meterd", KafkaSASLPasswordFile: pw}
	tc, m, err := c.kafkaSecurity()
	if err != nil || tc == nil || m == nil || m.Name() != "SCRAM-SHA-512" {
		t.Fatalf("from a file: %v %v %v", tc, m, err)
	}
	t.Setenv("METERD_KAFKA_SASL_PASSWORD", "env-secret-456")
	c = Config{KafkaSASLMechanism: "plain", KafkaSASLUsername: "meterd"}
	tc, m, err = c.kafkaSecurity()
	if err != nil || tc != nil || m == nil || m.Name() != "PLAIN" {
		t.Fatalf("from the environment: %v %v %v", tc, m, err)
	}
	c.KafkaSASLMechanism = "gssapi"
	if _, _, err := c.kafkaSecurity(); err == nil || strings.Contains(err.Error(), "env-secret-456") {
		t.Fatalf("an unknown mechanism: %v", err)
	}
	t.Setenv("METERD_KAFKA_SASL_PASSWORD", "")
	c.KafkaSASLMechanism = "plain"
	if _, _, err := c.kafkaSecurity(); err == nil {
		t.Fatal("no password: accepted")
	}
}

// TestClickHouseSecurity: TLS from --clickhouse-tls or its CA file, the
// password from its flag or its file (not both), and errors that never show
// it.
func TestClickHouseSecurity(t *testing.T) {
	c := Config{ClickHousePasswordFile: writeFile(t, "file-secret-789\r\n")}
	tc, pass, err := c.clickHouseSecurity()
	if err != nil || tc != nil || pass != "file-secret-789" {
		t.Fatalf("from a file: %v %q %v", tc, pass, err)
	}
	c = Config{ClickHouseTLS: true, ClickHousePassword: "flag-secret"}
	if tc, pass, err = c.clickHouseSecurity(); err != nil || tc == nil || tc.RootCAs != nil || pass != "flag-secret" {
		t.Fatalf("--clickhouse-tls and the flag: %v %q %v", tc, pass, err)
	}
	c = Config{ClickHouseTLSCA: writeFile(t, "not a certificate"), ClickHousePassword: "flag-secret"}
	if _, _, err := c.clickHouseSecurity(); err == nil || !strings.Contains(err.Error(), "clickhouse-tls-ca") ||
		strings.Contains(err.Error(), "flag-secret") {
		t.Fatalf("a CA file without a certificate: %v", err)
	}
	c = Config{ClickHousePasswordFile: writeFile(t, "\n")}
	if _, _, err := c.clickHouseSecurity(); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("an empty password file: %v", err)
	}
	var stderr bytes.Buffer
	_, err = LoadConfig([]string{"--clickhouse-password", "a", "--clickhouse-password-file", "/dev/null"}, env(nil), &stderr)
	if err == nil || !strings.Contains(err.Error(), "clickhouse-password-file") {
		t.Fatalf("both the password and its file: %v", err)
	}
}

// TestWebhookSecretFile: the webhook's secret from a file, not with the
// flag too, and still at least 16 bytes.
func TestWebhookSecretFile(t *testing.T) {
	c := load(t, []string{"--webhook-url", "https://example.com/hook", "--webhook-secret-file", writeFile(t, "0123456789abcdef-file\n")}, nil)
	if c.WebhookSecret != "0123456789abcdef-file" {
		t.Fatalf("WebhookSecret = %q", c.WebhookSecret)
	}
	var stderr bytes.Buffer
	for _, args := range [][]string{
		{"--webhook-url", "https://example.com/hook", "--webhook-secret-file", writeFile(t, "short\n")},
		{"--webhook-url", "https://example.com/hook", "--webhook-secret", "0123456789abcdef-flag", "--webhook-secret-file", writeFile(t, "0123456789abcdef-file\n")},
		{"--webhook-url", "https://example.com/hook", "--webhook-secret-file", "/nonexistent/secret"},
	} {
		if _, err := LoadConfig(args, env(nil), &stderr); err == nil || !strings.Contains(err.Error(), "webhook-secret") ||
			strings.Contains(err.Error(), "0123456789abcdef") {
			t.Errorf("%q: %v", args, err)
		}
	}
}
