package sink

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// The ClickHouse schema, as versioned migrations.
//
// Every statement is idempotent (CREATE ... IF NOT EXISTS, ALTER ... IF NOT
// EXISTS, MODIFY SETTING), and a migration is recorded in schema_migrations
// only after all of its statements succeeded. So two meterd processes
// migrating at once, or a process that crashed half way, converge on one
// schema without an error: each runs whatever statements it has not seen
// recorded, and running one twice changes nothing.
//
// One schema for every server, from Debian's 18.16 up:
//
//   - Time columns are DateTime('UTC') (second precision, partitions that do
//     not depend on the server's timezone) plus *_ms UInt64 columns holding
//     unix milliseconds, on every server, so that an analyst's query runs
//     unchanged everywhere and the writer has one code path. The *_ms columns
//     are the exact ones.
//   - On servers with DateTime64 (20.1+, and fromUnixTimestamp64Milli),
//     migration 3 adds occurred_at64 and recorded_at64 DateTime64(3, 'UTC')
//     columns whose DEFAULT is computed from the *_ms columns: the writer
//     never sends them, and rows written before the column existed read the
//     same exact value.
//   - Amounts are Decimal(38, 9) columns, exact. Since migration 5 the
//     writer sends each as an Int64 of the asset's smallest unit beside the
//     asset's scale (amount_units, balance_after_units, charge_units,
//     scale), and the Decimal columns are DEFAULTs the server computes from
//     them: building a Decimal on the client went through math/big for
//     every value and was the largest cost of the writer. The views see the
//     computed Decimals (defaults are filled before a block reaches them).
//     18.16 has no ADD COLUMN IF NOT EXISTS: a migration's addColumns are
//     added only where system.columns lacks them.
//   - On servers with non_replicated_deduplication_window (21.x+), migration
//     4 sets it on the base tables (plain variant only; replicated tables
//     always deduplicate), so that an INSERT repeated with the same
//     insert_deduplication_token is dropped by the server.
//
// A migration with a requirement the server does not meet is skipped and not
// recorded: it applies on the first Migrate after the server is upgraded.
// Such a migration must only add things no later migration depends on.
//
// Cluster variant (ClickHouseConfig.Cluster != ""): every DDL statement
// carries ON CLUSTER and the engines are the Replicated ones, with the path
// /clickhouse/tables/{shard}/<db>/<table> and replica '{replica}' (macros
// every replica defines). The tables are shard-local; a Distributed table
// over them is left to the operator. schema_migrations is shard-local too:
// a process on another shard re-runs the (idempotent) DDL once and records it.
//
// Materialized views feed SummingMergeTree tables from the base tables. They
// see each INSERT block as it lands; the writer inserts every block once, so
// the views count each row once. A crash between the base table's part being
// committed and the views' parts (ClickHouse writes them one after the
// other) leaves the base table right and a view short: the writer repairs
// that when it finds the batch already there (repair.go). The views are
// derived data; rebuild a month with INSERT INTO <view table> SELECT ...
// FROM <base> FINAL after an ALTER TABLE <view table> DROP PARTITION.

// Names of the tables the writer and the tests use.
const (
	tableMigrations      = "schema_migrations"
	tableLedger          = "ledger_entries"
	tableUsage           = "usage_events"
	tableUsageHourly     = "usage_hourly"
	tableUsageDaily      = "usage_daily"
	tableBucketConsumed  = "bucket_consumption_daily"
	tableCreditFlows     = "credit_flows_daily"
	tableDimensionHourly = "usage_dimension_hourly"
	tableDimensionDaily  = "usage_dimension_daily"
	tableRevenueDaily    = "revenue_daily"
	dedupWindowBlocks    = 1000 // non_replicated_deduplication_window where supported
	clickHouseNameLenMax = 64
	dateTime64Major      = 20 // DateTime64 appeared in 20.1
	dateTime64Minor      = 1
)

var (
	databaseNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	clusterNameRe  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
)

// serverCaps is what the connected server can do, detected once at Open.
type serverCaps struct {
	major, minor, patch uint64
	// dateTime64: the DateTime64 type and fromUnixTimestamp64Milli exist.
	dateTime64 bool
	// dedupToken: the insert_deduplication_token query setting exists.
	dedupToken bool
	// dedupWindow: the non_replicated_deduplication_window table setting exists.
	dedupWindow bool
}

func (c serverCaps) atLeast(major, minor uint64) bool {
	return c.major > major || c.major == major && c.minor >= minor
}

// detectCaps asks the server what it supports: by the presence of the
// setting or function where it can, by version where it cannot.
func detectCaps(ctx context.Context, conn driver.Conn) (serverCaps, error) {
	v, err := conn.ServerVersion()
	if err != nil {
		return serverCaps{}, fmt.Errorf("server version: %w", err)
	}
	return capsOf(v.Version.Major, v.Version.Minor, v.Version.Patch, func(q string) (uint64, error) {
		var n uint64
		err := conn.QueryRow(ctx, q).Scan(&n)
		return n, err
	})
}

// capsOf is detectCaps' answer for a server of the version given, where
// count runs a query of one count().
func capsOf(major, minor, patch uint64, count func(q string) (uint64, error)) (serverCaps, error) {
	caps := serverCaps{major: major, minor: minor, patch: patch}
	n, err := count(`SELECT count() FROM system.settings WHERE name = 'insert_deduplication_token'`)
	if err != nil {
		return caps, fmt.Errorf("detect insert_deduplication_token: %w", err)
	}
	caps.dedupToken = n > 0
	n, err = count(`SELECT count() FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'`)
	if err != nil {
		return caps, fmt.Errorf("detect non_replicated_deduplication_window: %w", err)
	}
	caps.dedupWindow = n > 0
	if caps.atLeast(dateTime64Major, dateTime64Minor) {
		n, err = count(`SELECT count() FROM system.functions WHERE name = 'fromUnixTimestamp64Milli'`)
		if err != nil {
			return caps, fmt.Errorf("detect fromUnixTimestamp64Milli: %w", err)
		}
		caps.dateTime64 = n > 0
	}
	return caps, nil
}

// schema generates the DDL for one database, plain or on a cluster.
type schema struct {
	db      string
	cluster string
}

func (s schema) validate() error {
	if len(s.db) > clickHouseNameLenMax || !databaseNameRe.MatchString(s.db) {
		return fmt.Errorf("clickhouse: database name %q: want [A-Za-z_][A-Za-z0-9_]*, at most %d chars", s.db, clickHouseNameLenMax)
	}
	if s.cluster != "" && (len(s.cluster) > clickHouseNameLenMax || !clusterNameRe.MatchString(s.cluster)) {
		return fmt.Errorf("clickhouse: cluster name %q: want [A-Za-z0-9_.-]+, at most %d chars", s.cluster, clickHouseNameLenMax)
	}
	return nil
}

// table is the qualified name of a table.
func (s schema) table(name string) string { return s.db + "." + name }

func (s schema) onCluster() string {
	if s.cluster == "" {
		return ""
	}
	return " ON CLUSTER `" + s.cluster + "`"
}

// engine is the engine clause of table name: kind is "ReplacingMergeTree",
// "SummingMergeTree" or "MergeTree"; args its own arguments.
func (s schema) engine(name, kind, args string) string {
	if s.cluster == "" {
		return "ENGINE = " + kind + "(" + args + ")"
	}
	rargs := fmt.Sprintf("'/clickhouse/tables/{shard}/%s/%s', '{replica}'", s.db, name)
	if args != "" {
		rargs += ", " + args
	}
	return "ENGINE = Replicated" + kind + "(" + rargs + ")"
}

// createTable renders CREATE TABLE IF NOT EXISTS with the columns one a line.
func (s schema) createTable(name string, columns []string, engine, partition, order string) string {
	var b strings.Builder
	b.WriteString("CREATE TABLE IF NOT EXISTS " + s.table(name) + s.onCluster() + "\n(\n")
	for i, c := range columns {
		b.WriteString("    " + c)
		if i < len(columns)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString(")\n" + engine)
	if partition != "" {
		b.WriteString("\nPARTITION BY " + partition)
	}
	b.WriteString("\nORDER BY " + order)
	return b.String()
}

func (s schema) createView(name, target, query string) string {
	return "CREATE MATERIALIZED VIEW IF NOT EXISTS " + s.table(name) + s.onCluster() +
		" TO " + s.table(target) + "\nAS " + query
}

func (s schema) createDatabase() string {
	return "CREATE DATABASE IF NOT EXISTS " + s.db + s.onCluster()
}

func (s schema) createMigrations() string {
	return s.createTable(tableMigrations, []string{
		"version UInt32",
		"name String",
		"applied_at DateTime('UTC')",
	}, s.engine(tableMigrations, "ReplacingMergeTree", "applied_at"), "", "version")
}

// ledgerColumnsV1 and usageColumnsV1 are the base tables' columns as
// migration 1 creates them: what analysts read. Later migrations add columns;
// ledgerInsert and usageInsert are the ones the writer sends.
var ledgerColumnsV1 = []string{
	"entry_id String",
	"seq UInt64",
	"customer_id String",
	"account String",
	"asset String",
	"type String",
	"amount Decimal(38, 9)",
	"balance_after Decimal(38, 9)",
	"bucket_id String",
	"bucket_kind String",
	"event_id String",
	"reference String",
	"occurred_at DateTime('UTC')",
	"occurred_at_ms UInt64",
	"recorded_at DateTime('UTC')",
	"recorded_at_ms UInt64",
	"pricing_version UInt32",
	"metadata String",
	"outbox_id String",
	"outbox_seq UInt64",
}

var usageColumnsV1 = []string{
	"event_id String",
	"customer_id String",
	"event_type String",
	"subject String",
	"occurred_at DateTime('UTC')",
	"occurred_at_ms UInt64",
	"recorded_at DateTime('UTC')",
	"recorded_at_ms UInt64",
	"status String",
	"charge Decimal(38, 9)",
	"account String",
	"asset String",
	"pricing_version UInt32",
	"data String",
	"outbox_id String",
	"outbox_seq UInt64",
}

// ledgerUnits and usageUnits are what migration 5 adds: each amount as an
// Int64 in the asset's smallest unit and the asset's scale. The Decimal
// columns become DEFAULTs computed from them, so the writer sends integers
// and the server makes the Decimal (exactly: units*10^9 / 10^scale, scale
// at most 9, in Decimal128).
var (
	ledgerUnits = []string{"amount_units Int64", "balance_after_units Int64", "scale UInt8"}
	usageUnits  = []string{"charge_units Int64", "scale UInt8"}
)

// usageDimension is what migration 8 adds to usage_events: the event's
// value of the charging price's dimensions (UsageRow.Dimension).
var usageDimension = []string{"dimension String"}

// ledgerDetail and usageDetail are what migration 10 adds: each ledger
// entry's bucket source, description, and for a purchase the price paid
// (in billionths of its currency: the price column, Decimal(38, 9), is
// its DEFAULT), the currency and the offer bought; each usage event's
// description.
var (
	ledgerDetail = []string{"source String", "description String", "price_nano Int64", "currency String", "offer_id String"}
	ledgerPrice  = []string{"price Decimal(38, 9)"}
	usageDetail  = []string{"description String"}
)

// priceNanoScale is the scale of price_nano: a price is sent as an integer
// count of 10^-9 of its currency.
const priceNanoScale = 9

// ledgerInsert and usageInsert are the columns the writer sends, in the
// order of its buffers (the INSERT names them): migration 1's, less the
// Decimal amounts, plus migration 5's units, plus migration 8's dimension,
// plus migration 10's details.
var (
	ledgerInsert = append(columnsInsert(ledgerColumnsV1, ledgerUnits, "amount", "balance_after"), ledgerDetail...)
	usageInsert  = append(append(columnsInsert(usageColumnsV1, usageUnits, "charge"), usageDimension...), usageDetail...)
)

// columnsInsert is base without the columns named in derived, with units
// in place of the first of them.
func columnsInsert(base, units []string, derived ...string) []string {
	var out []string
	for _, d := range base {
		name, _, _ := strings.Cut(d, " ")
		switch {
		case name == derived[0]:
			out = append(out, units...)
		case slices.Contains(derived, name):
		default:
			out = append(out, d)
		}
	}
	return out
}

// unitsDefault is the DEFAULT of a Decimal(38, 9) amount column made from
// its units column and scale.
func unitsDefault(units string) string {
	return "toDecimal128(" + units + ", 9) / toDecimal128(intExp10(scale), 0)"
}

// columnNames is the names of "name Type" column definitions.
func columnNames(defs []string) []string {
	names := make([]string, len(defs))
	for i, d := range defs {
		names[i], _, _ = strings.Cut(d, " ")
	}
	return names
}

// migration is one step of the schema. addColumns, when set, are added
// first, each only where it is missing (18.16 has no ADD COLUMN IF NOT
// EXISTS); statements renders the rest of its DDL; requires, when set, says
// whether the server can run it at all.
type migration struct {
	version    uint32
	name       string
	requires   func(serverCaps, schema) bool
	addColumns []tableColumns
	statements func(schema) []string
	// backfill names views whose tables are filled, after the statements,
	// with what the base table held before the view existed
	// (backfillQuery). Like a repair it is exact only while nothing else
	// writes the base table (docs/CLICKHOUSE.md, Schema changes).
	backfill []string
}

// tableColumns is column definitions ("name Type") of one table.
type tableColumns struct {
	table string
	defs  []string
}

// addColumn renders ALTER TABLE ... ADD COLUMN def.
func (s schema) addColumn(table, def string) string {
	return "ALTER TABLE " + s.table(table) + s.onCluster() + " ADD COLUMN " + def
}

// modifyDefault renders ALTER TABLE ... MODIFY COLUMN def DEFAULT expr.
func (s schema) modifyDefault(table, def, expr string) string {
	return "ALTER TABLE " + s.table(table) + s.onCluster() + " MODIFY COLUMN " + def + " DEFAULT " + expr
}

// migrations is the schema's history, in version order. Never edit a
// released migration: append a new one.
var migrations = []migration{
	{version: 1, name: "base tables", statements: func(s schema) []string {
		return []string{
			// ReplacingMergeTree keyed by the entry's identity: a row that
			// ever landed twice collapses at merge time and under FINAL.
			// recorded_at never changes for an entry, so both copies are
			// always in the same partition. outbox_id is part of the key:
			// two meterd instances sharing a database must never have their
			// rows merged into one, even if their customer ids overlap.
			s.createTable(tableLedger, ledgerColumnsV1,
				s.engine(tableLedger, "ReplacingMergeTree", "outbox_seq"),
				"toYYYYMM(recorded_at)", "(customer_id, entry_id, outbox_id)"),
			s.createTable(tableUsage, usageColumnsV1,
				s.engine(tableUsage, "ReplacingMergeTree", "outbox_seq"),
				"toYYYYMM(recorded_at)", "(customer_id, event_id, account, outbox_id)"),
		}
	}},
	{version: 2, name: "analyst views", statements: func(s schema) []string {
		summing := func(name string, cols []string, sums, partition, order string) string {
			return s.createTable(name, cols, s.engine(name, "SummingMergeTree", "("+sums+")"), partition, order)
		}
		usageCols := func(period, typ string) []string {
			return []string{period + " " + typ, "customer_id String", "event_type String", "account String",
				"events UInt64", "charge Decimal(38, 9)"}
		}
		usageView := func(period, expr string) string {
			return "SELECT " + expr + " AS " + period + ", customer_id, event_type, account, count() AS events, sum(charge) AS charge\n" +
				"FROM " + s.table(tableUsage) + "\nGROUP BY " + period + ", customer_id, event_type, account"
		}
		return []string{
			// Usage per customer, event type and charged account, by the
			// hour and the day the usage occurred. events counts usage rows:
			// an event that charged two accounts counts once in each.
			summing(tableUsageHourly, usageCols("hour", "DateTime('UTC')"), "events, charge",
				"toYYYYMM(hour)", "(customer_id, event_type, account, hour)"),
			s.createView(tableUsageHourly+"_mv", tableUsageHourly,
				usageView("hour", "toStartOfHour(occurred_at)")),
			summing(tableUsageDaily, usageCols("day", "Date"), "events, charge",
				"toYYYYMM(day)", "(customer_id, event_type, account, day)"),
			s.createView(tableUsageDaily+"_mv", tableUsageDaily,
				usageView("day", "toDate(occurred_at)")),
			// Credits consumed per bucket kind (promotional, plan,
			// recharge, "" for debt), account and day, from the usage
			// entries of the ledger. Sum over customer_id for the global
			// view.
			summing(tableBucketConsumed, []string{"day Date", "customer_id String", "account String",
				"bucket_kind String", "entries UInt64", "consumed Decimal(38, 9)"}, "entries, consumed",
				"toYYYYMM(day)", "(customer_id, account, bucket_kind, day)"),
			s.createView(tableBucketConsumed+"_mv", tableBucketConsumed,
				"SELECT toDate(occurred_at) AS day, customer_id, account, bucket_kind, count() AS entries, sum(-amount) AS consumed\n"+
					"FROM "+s.table(tableLedger)+"\nWHERE type = 'usage'\nGROUP BY day, customer_id, account, bucket_kind"),
		}
	}},
	{version: 3, name: "datetime64 columns",
		requires: func(c serverCaps, _ schema) bool { return c.dateTime64 },
		statements: func(s schema) []string {
			var out []string
			for _, t := range []string{tableLedger, tableUsage} {
				out = append(out, "ALTER TABLE "+s.table(t)+s.onCluster()+
					"\n    ADD COLUMN IF NOT EXISTS occurred_at64 DateTime64(3, 'UTC') DEFAULT fromUnixTimestamp64Milli(toInt64(occurred_at_ms), 'UTC'),"+
					"\n    ADD COLUMN IF NOT EXISTS recorded_at64 DateTime64(3, 'UTC') DEFAULT fromUnixTimestamp64Milli(toInt64(recorded_at_ms), 'UTC')")
			}
			return out
		}},
	{version: 4, name: "deduplication window",
		requires:   func(c serverCaps, s schema) bool { return c.dedupWindow && s.cluster == "" },
		statements: func(s schema) []string { return s.dedupWindowOf(tableLedger, tableUsage) }},
	{version: 5, name: "amounts as scaled integers",
		addColumns: []tableColumns{{tableLedger, ledgerUnits}, {tableUsage, usageUnits}},
		statements: func(s schema) []string {
			// Rows written before this migration keep their stored
			// amounts; their units columns read 0.
			return []string{
				s.modifyDefault(tableLedger, "amount Decimal(38, 9)", unitsDefault("amount_units")),
				s.modifyDefault(tableLedger, "balance_after Decimal(38, 9)", unitsDefault("balance_after_units")),
				s.modifyDefault(tableUsage, "charge Decimal(38, 9)", unitsDefault("charge_units")),
			}
		}},
	{version: 6, name: "credit flows", statements: func(s schema) []string {
		// Every ledger entry of an account, per day it occurred, in one
		// column per kind of flow (creditFlows): credit in (granted by
		// plans, topped up, adjusted, auto-reloaded), credit out as
		// positive amounts (used, expired unused, reversed top-ups), the
		// net of holds placed and released, and the net of all of them,
		// which sums to available.
		r := rollupOf(tableCreditFlows)
		return []string{
			s.createTable(tableCreditFlows, r.columns(), s.engine(tableCreditFlows, "SummingMergeTree", "("+columnList(r.sums)+")"),
				"toYYYYMM(day)", "(customer_id, account, day)"),
			s.createView(tableCreditFlows+"_mv", tableCreditFlows, s.viewSelect(r)),
		}
	}},
	{version: 7, name: "deduplication window of the views",
		requires: func(c serverCaps, s schema) bool { return c.dedupWindow && s.cluster == "" },
		statements: func(s schema) []string {
			// An INSERT the server drops as a duplicate must be dropped
			// from the views too (dedupSettings); their tables need the
			// window for that.
			return s.dedupWindowOf(tableUsageHourly, tableUsageDaily, tableBucketConsumed, tableCreditFlows)
		}},
	{version: 8, name: "usage by dimension",
		addColumns: []tableColumns{{tableUsage, usageDimension}},
		statements: func(s schema) []string {
			// Usage per customer, event type, charged account and
			// dimension value (the model of an AI call, say), by the hour
			// and the day it occurred. Rows written before this migration
			// have dimension "". The tables start with those rows
			// (backfill), and so does credit_flows_daily, which migration 6
			// created without the ledger entries already there.
			var out []string
			for _, name := range []string{tableDimensionHourly, tableDimensionDaily} {
				r := rollupOf(name)
				out = append(out, s.createTable(name, r.columns(), s.engine(name, "SummingMergeTree", "("+columnList(r.sums)+")"),
					"toYYYYMM("+r.keys[0].name+")", "(customer_id, event_type, account, dimension, "+r.keys[0].name+")"),
					s.createView(name+"_mv", name, s.viewSelect(r)))
			}
			return out
		},
		backfill: []string{tableDimensionHourly, tableDimensionDaily, tableCreditFlows}},
	{version: 9, name: "deduplication window of the dimension views",
		requires: func(c serverCaps, s schema) bool { return c.dedupWindow && s.cluster == "" },
		statements: func(s schema) []string {
			return s.dedupWindowOf(tableDimensionHourly, tableDimensionDaily)
		}},
	{version: 10, name: "sources, descriptions, purchases and revenue",
		addColumns: []tableColumns{{tableLedger, ledgerDetail}, {tableLedger, ledgerPrice}, {tableUsage, usageDetail}},
		statements: func(s schema) []string {
			// Revenue per day, customer, account, currency, offer and
			// kind of purchase (topup, auto_reload): what was paid and
			// the credits it bought. Rows written before this migration
			// have no price and are not purchases.
			r := rollupOf(tableRevenueDaily)
			return []string{
				s.modifyDefault(tableLedger, "price Decimal(38, 9)",
					fmt.Sprintf("toDecimal128(price_nano, 9) / toDecimal128(%d, 0)", int64(1e9))),
				s.createTable(tableRevenueDaily, r.columns(), s.engine(tableRevenueDaily, "SummingMergeTree", "("+columnList(r.sums)+")"),
					"toYYYYMM(day)", "(customer_id, account, currency, offer_id, type, day)"),
				s.createView(tableRevenueDaily+"_mv", tableRevenueDaily, s.viewSelect(r)),
			}
		}},
	{version: 11, name: "deduplication window of the revenue view",
		requires: func(c serverCaps, s schema) bool { return c.dedupWindow && s.cluster == "" },
		statements: func(s schema) []string {
			return s.dedupWindowOf(tableRevenueDaily)
		}},
}

// dedupWindowOf is the ALTERs that give tables the deduplication window.
func (s schema) dedupWindowOf(tables ...string) []string {
	var out []string
	for _, t := range tables {
		out = append(out, fmt.Sprintf("ALTER TABLE %s%s MODIFY SETTING non_replicated_deduplication_window = %d",
			s.table(t), s.onCluster(), dedupWindowBlocks))
	}
	return out
}

// plan is the SQL Migrate would run on a fresh database, in order: the
// bootstrap statements, then each migration the server can run, with its
// backfills. It is what the tests read and what an operator can print.
func (s schema) plan(caps serverCaps) []string {
	out := []string{s.createDatabase(), s.createMigrations()}
	for _, m := range migrations {
		if m.requires == nil || m.requires(caps, s) {
			for _, tc := range m.addColumns {
				for _, d := range tc.defs {
					out = append(out, s.addColumn(tc.table, d))
				}
			}
			out = append(out, m.statements(s)...)
			for _, t := range m.backfill {
				out = append(out, s.backfillQuery(rollupOf(t)))
			}
		}
	}
	return out
}

// migrate brings the database up to date with ms (migrations, or a
// prefix of it in tests); see the top of this file.
func (s schema) migrate(ctx context.Context, conn driver.Conn, caps serverCaps, ms []migration, now func() time.Time) (applied []uint32, err error) {
	for _, q := range []string{s.createDatabase(), s.createMigrations()} {
		if err := conn.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("clickhouse migrate bootstrap: %w\n%s", err, q)
		}
	}
	done := map[uint32]bool{}
	rows, err := conn.Query(ctx, "SELECT DISTINCT version FROM "+s.table(tableMigrations))
	if err != nil {
		return nil, fmt.Errorf("clickhouse migrate: read %s: %w", tableMigrations, err)
	}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return nil, fmt.Errorf("clickhouse migrate: read %s: %w", tableMigrations, err)
		}
		done[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clickhouse migrate: read %s: %w", tableMigrations, err)
	}

	for _, m := range ms {
		if done[m.version] || m.requires != nil && !m.requires(caps, s) {
			continue
		}
		for _, tc := range m.addColumns {
			if err := s.addMissing(ctx, conn, tc); err != nil {
				return applied, fmt.Errorf("clickhouse migration %d (%s): %w", m.version, m.name, err)
			}
		}
		for _, q := range m.statements(s) {
			if err := conn.Exec(ctx, q); err != nil {
				return applied, fmt.Errorf("clickhouse migration %d (%s): %w\n%s", m.version, m.name, err, q)
			}
		}
		// A backfill's block must never be taken for an earlier one of the
		// same content and dropped.
		bctx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_deduplicate": 0}))
		for _, t := range m.backfill {
			q := s.backfillQuery(rollupOf(t))
			if err := conn.Exec(bctx, q); err != nil {
				return applied, fmt.Errorf("clickhouse migration %d (%s): backfill %s: %w\n%s", m.version, m.name, t, err, q)
			}
		}
		b, err := conn.PrepareBatch(ctx, "INSERT INTO "+s.table(tableMigrations)+" (version, name, applied_at)")
		if err != nil {
			return applied, fmt.Errorf("clickhouse migration %d: record: %w", m.version, err)
		}
		if err := b.Append(m.version, m.name, now().UTC()); err != nil {
			_ = b.Abort()
			return applied, fmt.Errorf("clickhouse migration %d: record: %w", m.version, err)
		}
		if err := b.Send(); err != nil {
			return applied, fmt.Errorf("clickhouse migration %d: record: %w", m.version, err)
		}
		applied = append(applied, m.version)
	}
	if len(applied) > 0 {
		// Two processes migrating at once may both record a version; the
		// ReplacingMergeTree keeps one, and OPTIMIZE makes that happen now.
		q := "OPTIMIZE TABLE " + s.table(tableMigrations) + s.onCluster() + " FINAL"
		if err := conn.Exec(ctx, q); err != nil {
			return applied, fmt.Errorf("clickhouse migrate: %s: %w", q, err)
		}
	}
	return applied, nil
}

// addMissing adds the columns of tc the table lacks. A process migrating at
// the same time may add one between the look and the ALTER: an ALTER that
// fails is forgiven when the column is there afterwards.
func (s schema) addMissing(ctx context.Context, conn driver.Conn, tc tableColumns) error {
	have, err := s.columns(ctx, conn, tc.table)
	if err != nil {
		return err
	}
	for _, d := range tc.defs {
		name, _, _ := strings.Cut(d, " ")
		if _, ok := have[name]; ok {
			continue
		}
		q := s.addColumn(tc.table, d)
		if err := conn.Exec(ctx, q); err != nil {
			if have, err2 := s.columns(ctx, conn, tc.table); err2 == nil && have[name] != "" {
				continue
			}
			return fmt.Errorf("%w\n%s", err, q)
		}
	}
	return nil
}

// columns is name -> type of every column of table.
func (s schema) columns(ctx context.Context, conn driver.Conn, table string) (map[string]string, error) {
	have := map[string]string{}
	rows, err := conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = ?", s.db, table)
	if err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var n, typ string
		if err := rows.Scan(&n, &typ); err != nil {
			return nil, fmt.Errorf("columns of %s: %w", table, err)
		}
		have[n] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	return have, nil
}

// verify checks that the base tables have every column the writer sends and
// analysts read, with the type it expects: a table created by something else under the same
// name fails here, at Open, instead of at the first Write.
func (s schema) verify(ctx context.Context, conn driver.Conn) error {
	for _, t := range []struct {
		name string
		defs []string
	}{
		{tableLedger, slices.Concat(ledgerColumnsV1, ledgerUnits)},
		{tableUsage, slices.Concat(usageColumnsV1, usageUnits, usageDimension)},
	} {
		have, err := s.columns(ctx, conn, t.name)
		if err != nil {
			return fmt.Errorf("clickhouse verify: %w", err)
		}
		for _, d := range t.defs {
			name, typ, _ := strings.Cut(d, " ")
			got, ok := have[name]
			if !ok {
				return fmt.Errorf("clickhouse verify: %s.%s has no column %s", s.db, t.name, name)
			}
			if normalizeType(got) != normalizeType(typ) {
				return fmt.Errorf("clickhouse verify: %s.%s.%s is %s, want %s", s.db, t.name, name, got, typ)
			}
		}
	}
	return nil
}

// normalizeType drops the spaces and quote escapes that differ between how
// DDL spells a type and how system.columns reports it.
func normalizeType(t string) string {
	return strings.NewReplacer(" ", "", `\'`, "'").Replace(t)
}

// Retention: how long rows stay, set per table as a TTL (ClickHouse 19.6 and
// later), from ClickHouseConfig's RetentionDays (the base tables, by
// recorded_at) and RollupRetentionDays (the views' tables, by their day or
// hour). It is configuration, not a migration: every Open makes each
// table's TTL what is configured (0: none), touching only tables whose TTL
// differs (a changed TTL makes ClickHouse rewrite the table's parts).

// ttlMajor, ttlMinor: TTL of MergeTree tables appeared in 19.6.
const (
	ttlMajor, ttlMinor = 19, 6
	// RetentionDaysMax bounds the retention settings (100 years).
	RetentionDaysMax = 36_500
)

// retentionTable is a table whose rows expire, and the time column they
// expire by.
type retentionTable struct {
	name, column string
	rollup       bool
}

// retentionTables are the base tables, by recorded_at, and every rollup,
// by its period (its first key: hour or day).
var retentionTables = func() []retentionTable {
	out := []retentionTable{{tableLedger, "recorded_at", false}, {tableUsage, "recorded_at", false}}
	for _, r := range rollups {
		out = append(out, retentionTable{r.table, r.keys[0].name, true})
	}
	return out
}()

// ttlClause is how system.tables' engine_full shows a TTL of days on column.
func ttlClause(column string, days int) string {
	return fmt.Sprintf("TTL %s + toIntervalDay(%d)", column, days)
}

// retentionStatement is the ALTER that sets a TTL of days on t (0: removes it).
func (s schema) retentionStatement(t retentionTable, days int) string {
	if days == 0 {
		return "ALTER TABLE " + s.table(t.name) + s.onCluster() + " REMOVE TTL"
	}
	return fmt.Sprintf("ALTER TABLE %s%s MODIFY TTL %s + INTERVAL %d DAY", s.table(t.name), s.onCluster(), t.column, days)
}

// retain makes every table's TTL what base (the base tables) and rollup
// (the views) say, in days, 0 for none.
func (s schema) retain(ctx context.Context, conn driver.Conn, caps serverCaps, base, rollup int) error {
	if (base > 0 || rollup > 0) && !caps.atLeast(ttlMajor, ttlMinor) {
		return fmt.Errorf("clickhouse: a retention (TTL) needs ClickHouse %d.%d or later; this server is %d.%d.%d: set the retention to 0 days, or upgrade",
			ttlMajor, ttlMinor, caps.major, caps.minor, caps.patch)
	}
	if !caps.atLeast(ttlMajor, ttlMinor) {
		return nil
	}
	for _, t := range retentionTables {
		days := base
		if t.rollup {
			days = rollup
		}
		var engine string
		if err := conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?", s.db, t.name).Scan(&engine); err != nil {
			return fmt.Errorf("clickhouse retention of %s: %w", t.name, err)
		}
		has := strings.Contains(engine, " TTL ")
		if days == 0 && !has || days > 0 && strings.Contains(engine, ttlClause(t.column, days)) {
			continue
		}
		q := s.retentionStatement(t, days)
		if err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("clickhouse retention: %w\n%s", err, q)
		}
	}
	return nil
}
