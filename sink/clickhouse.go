package sink

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"
	"github.com/meterd/meterd/meter"
)

// The ClickHouse writer: ledger entries into ledger_entries, usage rows into
// usage_events (schema.go has the DDL), each row exactly once.
//
// How exactly once is kept, per table and per batch:
//
//  1. A table's rows of a batch go in one INSERT of one block, and the batch
//     lies in one partition (Write refuses a batch whose recorded_at spans two
//     months). ClickHouse writes one block into one partition as one part,
//     atomically: after an INSERT either every row of it is in the table or
//     none is, whatever happened to the connection or the server.
//  2. So when the outcome of an earlier attempt is unknown (the first batch
//     after Open, or any batch after an error on that table) Write first asks
//     the table which outbox records of the batch are already there and
//     inserts only the others. Records are never split across batches, so a
//     record is either wholly present or wholly absent. The same question
//     also finds rows above the batch (a previous process may have shipped
//     further than the caller's cursor says), and Write keeps checking until
//     it has passed them.
//  3. Once this instance has itself seen every INSERT on a table succeed
//     since its last check, nothing above the last batch can be in the table,
//     and Write inserts without asking. A batch this instance already
//     confirmed (the caller retrying after the other table failed) is
//     skipped without asking.
//  4. Where the server has insert_deduplication_token (22.x+), every INSERT
//     also carries a token naming the table and the batch, and the tables
//     have a deduplication window (schema migrations 4 and 7): a duplicate
//     that got past the check anyway is dropped by the server, from the base
//     table and from every view. Replicated tables
//     deduplicate identical blocks by themselves.
//  5. The views of a batch found already there may be short of it (an
//     INSERT cut between the base part and the views' parts): they are
//     repaired before anything else is written (repair.go).
//  6. Whatever still gets in twice (two processes shipping the same outbox,
//     which is not supported) collapses in the ReplacingMergeTree, keyed by
//     the entry's own identity, at merge time and under FINAL.
//
// One process writes one outbox (ClickHouseConfig.OutboxID names it when
// several meterd processes share a database).

// ClickHouseConfig configures the ClickHouse writer. Zero values take the
// defaults named on each field.
type ClickHouseConfig struct {
	Addr     string // host:port of the native protocol (9000)
	Database string // default "meterd"
	// Cluster: "" for plain tables; else every DDL runs ON CLUSTER Cluster
	// and the tables are Replicated*MergeTree.
	Cluster  string
	Username string // default "default"
	Password string
	// TLS: nil for plain TCP; else the native protocol over TLS with this
	// configuration (RootCAs nil: the system's CAs).
	TLS *tls.Config
	// OutboxID names the outbox this process ships, stored in every row's
	// outbox_id: two meterd processes sharing a database must differ here,
	// since their outbox sequence numbers overlap. Default "".
	OutboxID string
	// BatchRowsMax bounds the rows of one table in one batch; default
	// 100,000, at most 1,000,000 so that one INSERT stays one block under
	// ClickHouse's max_insert_block_size (1,048,576).
	BatchRowsMax int
	// RetentionDays: rows of ledger_entries and usage_events are deleted
	// this many days after recorded_at; RollupRetentionDays: rows of the
	// views' tables this many days after their day. 0 (the default): kept
	// forever. Needs ClickHouse 19.6+ (TTL) when not 0; see schema.go.
	RetentionDays, RollupRetentionDays int
	// BatchAge: the outbox reader may ship a smaller batch once its first
	// record is this old. Default 1s. The writer only carries it.
	BatchAge    time.Duration
	DialTimeout time.Duration // default 5s
	ReadTimeout time.Duration // per read from the server; default 60s
	Log         *slog.Logger  // default slog.Default()
}

const (
	clickHouseDatabaseDefault     = "meterd"
	clickHouseBatchRowsMaxDefault = 100_000
	clickHouseBatchRowsMaxLimit   = 1_000_000
	clickHouseBatchAgeDefault     = time.Second
	clickHouseDialTimeoutDefault  = 5 * time.Second
	clickHouseReadTimeoutDefault  = 60 * time.Second
	clickHouseConnsOpenMax        = 4
	clickHouseConnsIdleMax        = 2
	clickHouseOutboxIDLenMax      = 128
	// dateTimeSecondsMax is the last second a DateTime column holds.
	dateTimeSecondsMax = 1<<32 - 1
)

func (cfg ClickHouseConfig) withDefaults() ClickHouseConfig {
	if cfg.Database == "" {
		cfg.Database = clickHouseDatabaseDefault
	}
	if cfg.Username == "" {
		cfg.Username = "default"
	}
	if cfg.BatchRowsMax == 0 {
		cfg.BatchRowsMax = clickHouseBatchRowsMaxDefault
	}
	if cfg.BatchAge == 0 {
		cfg.BatchAge = clickHouseBatchAgeDefault
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = clickHouseDialTimeoutDefault
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = clickHouseReadTimeoutDefault
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return cfg
}

func (cfg ClickHouseConfig) validate() error {
	if cfg.Addr == "" {
		return errors.New("clickhouse: no address")
	}
	if cfg.BatchRowsMax < 1 || cfg.BatchRowsMax > clickHouseBatchRowsMaxLimit {
		return fmt.Errorf("clickhouse: BatchRowsMax %d: want 1..%d", cfg.BatchRowsMax, clickHouseBatchRowsMaxLimit)
	}
	if cfg.BatchAge < 0 || cfg.DialTimeout < 0 || cfg.ReadTimeout < 0 {
		return errors.New("clickhouse: negative duration")
	}
	if cfg.RetentionDays < 0 || cfg.RetentionDays > RetentionDaysMax || cfg.RollupRetentionDays < 0 || cfg.RollupRetentionDays > RetentionDaysMax {
		return fmt.Errorf("clickhouse: retention %d and %d days: want 0..%d", cfg.RetentionDays, cfg.RollupRetentionDays, RetentionDaysMax)
	}
	if len(cfg.OutboxID) > clickHouseOutboxIDLenMax {
		return fmt.Errorf("clickhouse: OutboxID longer than %d", clickHouseOutboxIDLenMax)
	}
	return schema{db: cfg.Database, cluster: cfg.Cluster}.validate()
}

// ClickHouse writes batches of the outbox into ClickHouse. Its methods are
// safe for concurrent use; Write calls are serialized.
type ClickHouse struct {
	cfg    ClickHouseConfig
	conn   driver.Conn
	caps   serverCaps
	schema schema
	log    *slog.Logger

	migrateMu sync.Mutex

	mu      sync.Mutex // serializes Write; guards everything below
	ledger  tableWriter
	usage   tableWriter
	lbuf    ledgerBuf
	ubuf    usageBuf
	batches uint64 // Write calls that succeeded
}

// ClickHouseStats counts what Write did since Open.
type ClickHouseStats struct {
	Batches      uint64 // Write calls that succeeded
	Inserts      uint64 // INSERT statements that succeeded
	RowsInserted uint64
	Checks       uint64 // times a table was asked what of a batch it holds
	RowsSkipped  uint64 // rows found already present, or confirmed earlier
	Repairs      uint64 // views made equal to their base table after an unknown outcome (repair.go)
}

// tableWriter is the exactly-once state of one table; see the top of this file.
type tableWriter struct {
	name     string
	identity string   // the columns that identify a row
	columns  []string // names, in the order the buffers send them
	insert   string   // INSERT INTO db.table (columns)
	// clean: every INSERT on this table since the last check succeeded, so
	// the table holds no row of this outbox above cleanAbove.
	clean      bool
	cleanAbove uint64
	// doneFrom..doneTo: the last batch this instance knows is wholly in
	// the table (valid when done).
	done             bool
	doneFrom, doneTo uint64
	// stats counts this table's inserts, rows and checks (Batches unused):
	// the two tables of a batch are written at once, each by its own
	// goroutine, so each keeps its own.
	stats ClickHouseStats
}

// OpenClickHouse connects, detects what the server supports and migrates the
// schema. The database need not exist.
func OpenClickHouse(ctx context.Context, cfg ClickHouseConfig) (*ClickHouse, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	conn, err := dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	caps, err := detectCaps(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("clickhouse %s: %w", cfg.Addr, err)
	}
	s := schema{db: cfg.Database, cluster: cfg.Cluster}
	c := &ClickHouse{
		cfg:    cfg,
		conn:   conn,
		caps:   caps,
		schema: s,
		log:    cfg.Log.With("sink", "clickhouse", "addr", cfg.Addr, "database", cfg.Database),
		ledger: newTableWriter(s, tableLedger, "entry_id", ledgerInsert),
		usage:  newTableWriter(s, tableUsage, "event_id, account", usageInsert),
	}
	if err := c.Migrate(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	c.log.Info("clickhouse sink open", "server_version", c.ServerVersion(),
		"datetime64", caps.dateTime64, "dedup_token", caps.dedupToken, "cluster", cfg.Cluster)
	return c, nil
}

// ErrClickHouseRefused marks a connection the server, or its certificate,
// refused for a reason that retrying does not cure: an unknown user, a wrong
// password, an address the user may not connect from, a certificate the
// client does not trust, a port that does not speak TLS to a TLS client.
// The error that wraps it names the server.
var ErrClickHouseRefused = errors.New("refused")

// CheckClickHouse connects and logs in once, then hangs up: nil when the
// server took the login; an error wrapping ErrClickHouseRefused when it
// refused it; another error (the server cannot be reached, ctx ended) when
// it did not say.
func CheckClickHouse(ctx context.Context, cfg ClickHouseConfig) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	conn, err := dial(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close()
}

// dial opens a connection pool and logs in (Ping).
func dial(ctx context.Context, cfg ClickHouseConfig) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Protocol: clickhouse.Native,
		Addr:     []string{cfg.Addr},
		// Connect to "default": the database may not exist yet. Every
		// statement names its database.
		Auth:             clickhouse.Auth{Database: "default", Username: cfg.Username, Password: cfg.Password},
		TLS:              cfg.TLS,
		DialTimeout:      cfg.DialTimeout,
		ReadTimeout:      cfg.ReadTimeout,
		MaxOpenConns:     clickHouseConnsOpenMax,
		MaxIdleConns:     clickHouseConnsIdleMax,
		ConnMaxLifetime:  time.Hour,
		ConnOpenStrategy: clickhouse.ConnOpenInOrder,
		Compression:      &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse open %s: %w", cfg.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, pingError(cfg, err)
	}
	return conn, nil
}

// clickHouseLoginCodes are the server's exception codes for a refused
// login: UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD,
// IP_ADDRESS_NOT_ALLOWED (18.x to 20.x) and AUTHENTICATION_FAILED (20.x+).
var clickHouseLoginCodes = map[int32]bool{192: true, 193: true, 194: true, 195: true, 516: true}

// pingError is the error of a failed login: one that names the server, and
// wraps ErrClickHouseRefused when retrying would not help.
func pingError(cfg ClickHouseConfig, err error) error {
	var (
		ex       *proto.Exception
		verify   *tls.CertificateVerificationError
		hostname x509.HostnameError
		unknown  x509.UnknownAuthorityError
		record   tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &ex) && clickHouseLoginCodes[ex.Code]:
		return fmt.Errorf("clickhouse %s %w the login of user %q: %w", cfg.Addr, ErrClickHouseRefused, cfg.Username, err)
	case errors.As(err, &verify), errors.As(err, &hostname), errors.As(err, &unknown):
		return fmt.Errorf("clickhouse %s: its certificate was %w: %w", cfg.Addr, ErrClickHouseRefused, err)
	case errors.As(err, &record):
		return fmt.Errorf("clickhouse %s: TLS %w: the port answers without TLS (the secure native port is 9440 by default): %w",
			cfg.Addr, ErrClickHouseRefused, err)
	}
	return fmt.Errorf("clickhouse ping %s: %w", cfg.Addr, err)
}

func newTableWriter(s schema, name, identity string, defs []string) tableWriter {
	cols := columnNames(defs)
	return tableWriter{
		name:     name,
		identity: identity,
		columns:  cols,
		insert:   "INSERT INTO " + s.table(name) + " (" + strings.Join(cols, ", ") + ")",
	}
}

// Migrate brings the schema up to date. It is idempotent and safe to run
// from several processes at once; OpenClickHouse runs it.
func (c *ClickHouse) Migrate(ctx context.Context) error {
	c.migrateMu.Lock()
	defer c.migrateMu.Unlock()
	applied, err := c.schema.migrate(ctx, c.conn, c.caps, migrations, time.Now)
	if len(applied) > 0 {
		c.log.Info("clickhouse schema migrated", "versions", applied)
	}
	if err != nil {
		return err
	}
	if err := c.schema.verify(ctx, c.conn); err != nil {
		return err
	}
	return c.schema.retain(ctx, c.conn, c.caps, c.cfg.RetentionDays, c.cfg.RollupRetentionDays)
}

// Name is the name of the ClickHouse sink and of its outbox cursor.
func (c *ClickHouse) Name() string { return "clickhouse" }

// Close closes the connections. A Write in flight fails.
func (c *ClickHouse) Close() error { return c.conn.Close() }

// ServerVersion is the server's version, "major.minor.patch".
func (c *ClickHouse) ServerVersion() string {
	return fmt.Sprintf("%d.%d.%d", c.caps.major, c.caps.minor, c.caps.patch)
}

// Config is the configuration in force, defaults applied.
func (c *ClickHouse) Config() ClickHouseConfig { return c.cfg }

// Stats returns the counters since Open.
func (c *ClickHouse) Stats() ClickHouseStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, u := c.ledger.stats, c.usage.stats
	return ClickHouseStats{Batches: c.batches, Inserts: l.Inserts + u.Inserts, RowsInserted: l.RowsInserted + u.RowsInserted,
		Checks: l.Checks + u.Checks, RowsSkipped: l.RowsSkipped + u.RowsSkipped, Repairs: l.Repairs + u.Repairs}
}

// WriteError is the error of a sink's Write. Retryable says whether writing
// the same batch again later may succeed; when false, retrying cannot help
// (a malformed batch, a schema that is not ours, bad credentials) and the
// caller should stop and alert instead of spinning.
type WriteError struct {
	Table     string // "" when the batch itself was refused
	From, To  uint64
	Retryable bool
	Err       error
}

func (e *WriteError) Error() string {
	kind := "permanent"
	if e.Retryable {
		kind = "retryable"
	}
	where := ""
	if e.Table != "" {
		where = " " + e.Table
	}
	return fmt.Sprintf("sink write%s batch %d-%d (%s): %v", where, e.From, e.To, kind, e.Err)
}

func (e *WriteError) Unwrap() error { return e.Err }

// Retryable reports whether err, returned by a sink's Write, may go away if
// the same batch is written again later.
func Retryable(err error) bool {
	var we *WriteError
	return errors.As(err, &we) && we.Retryable
}

// clickHousePermanent are the server error codes that writing the same batch
// again cannot fix.
var clickHousePermanent = map[int32]bool{
	16:  true, // NO_SUCH_COLUMN_IN_TABLE
	36:  true, // BAD_ARGUMENTS
	43:  true, // ILLEGAL_TYPE_OF_ARGUMENT
	44:  true, // ILLEGAL_COLUMN
	47:  true, // UNKNOWN_IDENTIFIER
	53:  true, // TYPE_MISMATCH
	60:  true, // UNKNOWN_TABLE
	62:  true, // SYNTAX_ERROR
	69:  true, // ARGUMENT_OUT_OF_BOUND
	81:  true, // UNKNOWN_DATABASE
	115: true, // UNKNOWN_SETTING
	164: true, // READONLY
	192: true, // UNKNOWN_USER
	193: true, // WRONG_PASSWORD
	407: true, // DECIMAL_OVERFLOW
	497: true, // ACCESS_DENIED
	516: true, // AUTHENTICATION_FAILED
}

func (c *ClickHouse) writeError(table string, b *Batch, err error) error {
	retryable := true
	var ex *clickhouse.Exception
	switch {
	case errors.Is(err, context.Canceled):
		retryable = false // the caller is stopping
	case errors.Is(err, clickhouse.ErrBatchInvalid):
		retryable = false
	case errors.As(err, &ex):
		retryable = !clickHousePermanent[ex.Code]
	}
	return &WriteError{Table: table, From: b.From, To: b.To, Retryable: retryable, Err: err}
}

// Write ships one batch, exactly once (see the top of this file): when it
// returns nil every row of b is in ClickHouse once; when it returns an error
// the caller writes the same batch again (or gives up if !Retryable(err)).
func (c *ClickHouse) Write(ctx context.Context, b *Batch) error {
	if b == nil {
		return &WriteError{Err: errors.New("nil batch")}
	}
	month, err := c.checkBatch(b)
	if err != nil {
		return &WriteError{From: b.From, To: b.To, Err: err}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// The two tables are independent (each its own INSERT, its own
	// exactly-once state, its own connection of the pool): writing them at
	// once lets the server insert one while this side encodes the other.
	ledgerErr := make(chan error, 1)
	go func() {
		ledgerErr <- c.writeTable(ctx, &c.ledger, b, month, len(b.Ledger),
			func(i int) uint64 { return b.Ledger[i].OutboxSeq },
			func(keep func(int) bool) []any {
				c.lbuf.reset()
				for i := range b.Ledger {
					if keep == nil || keep(i) {
						c.lbuf.add(&b.Ledger[i], c.cfg.OutboxID)
					}
				}
				return c.lbuf.columns()
			})
	}()
	usageErr := c.writeTable(ctx, &c.usage, b, month, len(b.Usage),
		func(i int) uint64 { return b.Usage[i].OutboxSeq },
		func(keep func(int) bool) []any {
			c.ubuf.reset()
			for i := range b.Usage {
				if keep == nil || keep(i) {
					c.ubuf.add(&b.Usage[i], c.cfg.OutboxID)
				}
			}
			return c.ubuf.columns()
		})
	if err := cmp.Or(<-ledgerErr, usageErr); err != nil {
		return err
	}
	c.batches++
	return nil
}

// checkBatch asserts what Write relies on and returns the batch's month
// (the partition its rows go to): every row's outbox record in From..To,
// at most BatchRowsMax rows per table, every recorded_at in one month,
// times and scales a DateTime and a Decimal(38, 9) can hold.
func (c *ClickHouse) checkBatch(b *Batch) (month time.Time, err error) {
	if b.From > b.To {
		return month, fmt.Errorf("batch from %d > to %d", b.From, b.To)
	}
	if len(b.Ledger) > c.cfg.BatchRowsMax || len(b.Usage) > c.cfg.BatchRowsMax {
		return month, fmt.Errorf("%d ledger and %d usage rows: at most %d each", len(b.Ledger), len(b.Usage), c.cfg.BatchRowsMax)
	}
	first := true
	sameMonth := func(ns int64) error {
		if ns < 0 || ns/int64(time.Second) > dateTimeSecondsMax {
			return fmt.Errorf("time %d ns outside DateTime's range", ns)
		}
		t := time.Unix(0, ns).UTC()
		m := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		if first {
			month, first = m, false
			return nil
		}
		if !m.Equal(month) {
			return fmt.Errorf("recorded_at spans %s and %s: a batch must lie in one month", month.Format("2006-01"), m.Format("2006-01"))
		}
		return nil
	}
	inRange := func(seq uint64) error {
		if seq < b.From || seq > b.To {
			return fmt.Errorf("row of outbox record %d outside %d-%d", seq, b.From, b.To)
		}
		return nil
	}
	for i := range b.Ledger {
		r := &b.Ledger[i]
		if err := inRange(r.OutboxSeq); err != nil {
			return month, err
		}
		if r.EntryID == "" || r.CustomerID == "" {
			return month, fmt.Errorf("ledger row %d: empty entry or customer id", i)
		}
		if r.Scale > 9 {
			return month, fmt.Errorf("ledger entry %s: scale %d > 9", r.EntryID, r.Scale)
		}
		if err := sameMonth(r.RecordedAt); err != nil {
			return month, fmt.Errorf("ledger entry %s: %w", r.EntryID, err)
		}
		if r.OccurredAt < 0 || r.OccurredAt/int64(time.Second) > dateTimeSecondsMax {
			return month, fmt.Errorf("ledger entry %s: occurred_at %d ns outside DateTime's range", r.EntryID, r.OccurredAt)
		}
	}
	for i := range b.Usage {
		r := &b.Usage[i]
		if err := inRange(r.OutboxSeq); err != nil {
			return month, err
		}
		if r.EventID == "" || r.CustomerID == "" {
			return month, fmt.Errorf("usage row %d: empty event or customer id", i)
		}
		if r.Scale > 9 {
			return month, fmt.Errorf("usage event %s: scale %d > 9", r.EventID, r.Scale)
		}
		if err := sameMonth(r.RecordedAt); err != nil {
			return month, fmt.Errorf("usage event %s: %w", r.EventID, err)
		}
		if r.OccurredAt < 0 || r.OccurredAt/int64(time.Second) > dateTimeSecondsMax {
			return month, fmt.Errorf("usage event %s: occurred_at %d ns outside DateTime's range", r.EventID, r.OccurredAt)
		}
	}
	return month, nil
}

// writeTable ships the n rows of one table of b; seqOf gives a row's outbox
// record, fill loads the send buffers with the rows keep accepts (all when
// keep is nil) and returns the columns.
func (c *ClickHouse) writeTable(ctx context.Context, t *tableWriter, b *Batch, month time.Time, n int,
	seqOf func(int) uint64, fill func(keep func(int) bool) []any) error {
	if n == 0 {
		if t.clean && b.From > t.cleanAbove {
			t.cleanAbove = b.To
		}
		return nil
	}
	if t.clean && b.From > t.cleanAbove {
		if err := c.insert(ctx, t, b, fill(nil), n, ""); err != nil {
			t.clean = false
			return c.writeError(t.name, b, err)
		}
		t.cleanAbove = b.To
		t.done, t.doneFrom, t.doneTo = true, b.From, b.To
		return nil
	}
	if t.clean && t.done && b.From >= t.doneFrom && b.To <= t.doneTo {
		t.stats.RowsSkipped += uint64(n)
		return nil
	}

	// The outcome of an earlier attempt is unknown: once no insert of
	// this outbox into the table is running any more, ask.
	t.clean = false
	t.stats.Checks++
	if err := c.settle(ctx, t); err != nil {
		return c.writeError(t.name, b, err)
	}
	present, above, err := c.present(ctx, t, b, month)
	if err != nil {
		return c.writeError(t.name, b, err)
	}
	want := map[uint64]uint64{}
	for i := 0; i < n; i++ {
		want[seqOf(i)]++
	}
	for seq, got := range present {
		if w := want[seq]; got.distinct != w {
			// An INSERT is all or nothing, and a record is never split
			// across INSERTs: the batch is not what was shipped before.
			return &WriteError{Table: t.name, From: b.From, To: b.To, Err: fmt.Errorf(
				"outbox record %d: %d distinct rows in the table, %d in the batch: batches are not deterministic",
				seq, got.distinct, w)}
		}
		if got.rows > got.distinct {
			c.log.Warn("clickhouse: rows already duplicated; ReplacingMergeTree will collapse them",
				"table", t.name, "outbox_seq", seq, "rows", got.rows, "distinct", got.distinct)
		}
	}
	kept := n
	if len(present) > 0 {
		// The views of what is there may be short of it (repair.go).
		if err := c.repair(ctx, t, b, month); err != nil {
			return c.writeError(t.name, b, err)
		}
		kept = 0
		for i := 0; i < n; i++ {
			if _, ok := present[seqOf(i)]; !ok {
				kept++
			}
		}
	}
	t.stats.RowsSkipped += uint64(n - kept)
	if kept > 0 {
		var cols []any
		suffix := ""
		if kept == n {
			cols = fill(nil)
		} else {
			cols = fill(func(i int) bool { _, ok := present[seqOf(i)]; return !ok })
			suffix = fmt.Sprintf("+%d/%d", kept, n)
		}
		if err := c.insert(ctx, t, b, cols, kept, suffix); err != nil {
			return c.writeError(t.name, b, err)
		}
	}
	if len(present) > 0 {
		c.log.Info("clickhouse: batch already (partly) present; its views repaired", "table", t.name,
			"from", b.From, "to", b.To, "rows_present", n-kept, "rows_inserted", kept)
	}
	t.clean = true
	t.cleanAbove = max(b.To, above)
	t.done, t.doneFrom, t.doneTo = true, b.From, b.To
	return nil
}

// landed is what a table holds of one outbox record.
type landed struct{ rows, distinct uint64 }

// present asks table t which outbox records of b it holds (record -> rows),
// and the highest record of this outbox it holds at or above b.From (0 when
// none). Rows at or above From are looked for from the month before the
// batch's on, which bounds the scan while allowing for a clock that stepped
// back by weeks.
func (c *ClickHouse) present(ctx context.Context, t *tableWriter, b *Batch, month time.Time) (map[uint64]landed, uint64, error) {
	table := c.schema.table(t.name)
	var count, above uint64
	q := "SELECT count(), max(outbox_seq) FROM " + table +
		" WHERE outbox_id = ? AND outbox_seq >= ? AND recorded_at >= toDateTime(?)"
	since := max(month.AddDate(0, -1, 0).Unix(), 0)
	if err := c.conn.QueryRow(ctx, q, c.cfg.OutboxID, b.From, uint32(since)).Scan(&count, &above); err != nil {
		return nil, 0, fmt.Errorf("check: %w", err)
	}
	if count == 0 {
		return nil, 0, nil
	}
	present := map[uint64]landed{}
	q = "SELECT outbox_seq, count(), uniqExact(" + t.identity + ") FROM " + table +
		" WHERE outbox_id = ? AND outbox_seq >= ? AND outbox_seq <= ?" +
		" AND recorded_at >= toDateTime(?) AND recorded_at < toDateTime(?) GROUP BY outbox_seq"
	rows, err := c.conn.Query(ctx, q, c.cfg.OutboxID, b.From, b.To,
		uint32(month.Unix()), uint32(month.AddDate(0, 1, 0).Unix()))
	if err != nil {
		return nil, 0, fmt.Errorf("check: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var seq uint64
		var l landed
		if err := rows.Scan(&seq, &l.rows, &l.distinct); err != nil {
			return nil, 0, fmt.Errorf("check: %w", err)
		}
		present[seq] = l
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("check: %w", err)
	}
	return present, above, nil
}

// insert sends cols (nRows rows) to t in one INSERT of one block.
func (c *ClickHouse) insert(ctx context.Context, t *tableWriter, b *Batch, cols []any, nRows int, tokenSuffix string) error {
	if len(cols) != len(t.columns) {
		panic(fmt.Sprintf("sink: %s: %d column buffers for %d columns", t.name, len(cols), len(t.columns)))
	}
	if c.caps.dedupToken {
		token := fmt.Sprintf("%s:%d-%d%s", t.name, b.From, b.To, tokenSuffix)
		if c.cfg.OutboxID != "" {
			token = c.cfg.OutboxID + "/" + token
		}
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(dedupSettings(token)))
	}
	ctx = clickhouse.Context(ctx, clickhouse.WithQueryID(c.queryID(t, b)))
	batch, err := c.conn.PrepareBatch(ctx, t.insert)
	if err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	for i, col := range cols {
		if err := batch.Column(i).Append(col); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("column %s: %w", t.columns[i], err)
		}
	}
	if batch.Rows() != nRows {
		_ = batch.Abort()
		panic(fmt.Sprintf("sink: %s: block of %d rows, want %d", t.name, batch.Rows(), nRows))
	}
	// Send writes the block and the end of data; never Flush, which would
	// cut the INSERT into several blocks (several parts).
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	t.stats.Inserts++
	t.stats.RowsInserted += uint64(nRows)
	return nil
}

// dedupSettings are the settings of an INSERT carrying token, on servers
// with insert_deduplication_token: the server drops a block whose token it
// has seen in the table's deduplication window, and, with the second
// setting, the views' blocks of it too (else a dropped duplicate would still
// be counted by every view).
func dedupSettings(token string) clickhouse.Settings {
	return clickhouse.Settings{
		"insert_deduplication_token":                         token,
		"deduplicate_blocks_in_dependent_materialized_views": 1,
	}
}

func nsTime(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// nsMs is unix ns as unix ms, rounded down; ns >= 0 (checkBatch).
func nsMs(ns int64) uint64 { return uint64(ns / int64(time.Millisecond)) }

// ledgerBuf holds one INSERT's ledger columns, reused across batches.
type ledgerBuf struct {
	entryID, customerID, account, asset, typ, bucketID, bucketKind,
	eventID, reference, metadata, outboxID,
	source, description, currency, offer []string
	seq, occurredMs, recordedMs, outboxSeq []uint64
	amountUnits, balanceAfterUnits, price  []int64
	scale                                  []uint8
	occurredAt, recordedAt                 []time.Time
	pricingVersion                         []uint32
}

func (l *ledgerBuf) reset() {
	*l = ledgerBuf{
		entryID: l.entryID[:0], customerID: l.customerID[:0], account: l.account[:0], asset: l.asset[:0],
		typ: l.typ[:0], bucketID: l.bucketID[:0], bucketKind: l.bucketKind[:0], eventID: l.eventID[:0],
		reference: l.reference[:0], metadata: l.metadata[:0], outboxID: l.outboxID[:0],
		seq: l.seq[:0], occurredMs: l.occurredMs[:0], recordedMs: l.recordedMs[:0], outboxSeq: l.outboxSeq[:0],
		amountUnits: l.amountUnits[:0], balanceAfterUnits: l.balanceAfterUnits[:0], scale: l.scale[:0],
		occurredAt: l.occurredAt[:0], recordedAt: l.recordedAt[:0], pricingVersion: l.pricingVersion[:0],
		source: l.source[:0], description: l.description[:0], currency: l.currency[:0], offer: l.offer[:0], price: l.price[:0],
	}
}

func (l *ledgerBuf) add(r *LedgerRow, outboxID string) {
	l.entryID = append(l.entryID, r.EntryID)
	l.seq = append(l.seq, r.Seq)
	l.customerID = append(l.customerID, r.CustomerID)
	l.account = append(l.account, r.Account)
	l.asset = append(l.asset, r.Asset)
	l.typ = append(l.typ, r.Type)
	l.amountUnits = append(l.amountUnits, r.Amount)
	l.balanceAfterUnits = append(l.balanceAfterUnits, r.BalanceAfter)
	l.scale = append(l.scale, r.Scale)
	l.bucketID = append(l.bucketID, r.BucketID)
	l.bucketKind = append(l.bucketKind, r.BucketKind)
	l.eventID = append(l.eventID, r.EventID)
	l.reference = append(l.reference, r.Reference)
	l.occurredAt = append(l.occurredAt, nsTime(r.OccurredAt))
	l.occurredMs = append(l.occurredMs, nsMs(r.OccurredAt))
	l.recordedAt = append(l.recordedAt, nsTime(r.RecordedAt))
	l.recordedMs = append(l.recordedMs, nsMs(r.RecordedAt))
	l.pricingVersion = append(l.pricingVersion, r.PricingVersion)
	l.metadata = append(l.metadata, r.Metadata)
	l.outboxID = append(l.outboxID, outboxID)
	l.outboxSeq = append(l.outboxSeq, r.OutboxSeq)
	l.source = append(l.source, r.Source)
	l.description = append(l.description, r.Description)
	l.price = append(l.price, priceNano(r.Price))
	l.currency = append(l.currency, r.Currency)
	l.offer = append(l.offer, r.Offer)
}

// priceNano is a price as written in billionths of its currency; 0 when
// there is none. The HTTP layer accepts only prices that fit.
func priceNano(price string) int64 {
	if price == "" {
		return 0
	}
	n, err := meter.ParseUnits(price, priceNanoScale)
	if err != nil {
		return 0
	}
	return n
}

// columns is in ledgerInsert's order.
func (l *ledgerBuf) columns() []any {
	return []any{l.entryID, l.seq, l.customerID, l.account, l.asset, l.typ, l.amountUnits, l.balanceAfterUnits, l.scale,
		l.bucketID, l.bucketKind, l.eventID, l.reference, l.occurredAt, l.occurredMs, l.recordedAt,
		l.recordedMs, l.pricingVersion, l.metadata, l.outboxID, l.outboxSeq,
		l.source, l.description, l.price, l.currency, l.offer}
}

// usageBuf holds one INSERT's usage columns, reused across batches.
type usageBuf struct {
	eventID, customerID, eventType, subject, status, account, asset, data, outboxID, dimension,
	description []string
	occurredMs, recordedMs, outboxSeq []uint64
	occurredAt, recordedAt            []time.Time
	chargeUnits                       []int64
	scale                             []uint8
	pricingVersion                    []uint32
}

func (u *usageBuf) reset() {
	*u = usageBuf{
		eventID: u.eventID[:0], customerID: u.customerID[:0], eventType: u.eventType[:0], subject: u.subject[:0],
		status: u.status[:0], account: u.account[:0], asset: u.asset[:0], data: u.data[:0], outboxID: u.outboxID[:0],
		dimension: u.dimension[:0], description: u.description[:0],
		occurredMs: u.occurredMs[:0], recordedMs: u.recordedMs[:0], outboxSeq: u.outboxSeq[:0],
		occurredAt: u.occurredAt[:0], recordedAt: u.recordedAt[:0], chargeUnits: u.chargeUnits[:0], scale: u.scale[:0],
		pricingVersion: u.pricingVersion[:0],
	}
}

func (u *usageBuf) add(r *UsageRow, outboxID string) {
	u.eventID = append(u.eventID, r.EventID)
	u.customerID = append(u.customerID, r.CustomerID)
	u.eventType = append(u.eventType, r.EventType)
	u.subject = append(u.subject, r.Subject)
	u.occurredAt = append(u.occurredAt, nsTime(r.OccurredAt))
	u.occurredMs = append(u.occurredMs, nsMs(r.OccurredAt))
	u.recordedAt = append(u.recordedAt, nsTime(r.RecordedAt))
	u.recordedMs = append(u.recordedMs, nsMs(r.RecordedAt))
	u.status = append(u.status, r.Status)
	u.chargeUnits = append(u.chargeUnits, r.Charge)
	u.scale = append(u.scale, r.Scale)
	u.account = append(u.account, r.Account)
	u.asset = append(u.asset, r.Asset)
	u.pricingVersion = append(u.pricingVersion, r.PricingVersion)
	u.data = append(u.data, r.Data)
	u.outboxID = append(u.outboxID, outboxID)
	u.outboxSeq = append(u.outboxSeq, r.OutboxSeq)
	u.dimension = append(u.dimension, r.Dimension)
	u.description = append(u.description, r.Description)
}

// columns is in usageInsert's order.
func (u *usageBuf) columns() []any {
	return []any{u.eventID, u.customerID, u.eventType, u.subject, u.occurredAt, u.occurredMs,
		u.recordedAt, u.recordedMs, u.status, u.chargeUnits, u.scale, u.account, u.asset, u.pricingVersion,
		u.data, u.outboxID, u.outboxSeq, u.dimension, u.description}
}
