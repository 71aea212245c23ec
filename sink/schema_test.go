package sink

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestClickHouseConfig(t *testing.T) {
	for _, cfg := range []ClickHouseConfig{
		{},
		{Addr: "x:9000", Database: "meterd; DROP"},
		{Addr: "x:9000", Cluster: "a b"},
		{Addr: "x:9000", BatchRowsMax: 1_048_576},
		{Addr: "x:9000", DialTimeout: -1},
		{Addr: "x:9000", RetentionDays: -1},
		{Addr: "x:9000", RollupRetentionDays: RetentionDaysMax + 1},
	} {
		if _, err := OpenClickHouse(context.Background(), cfg); err == nil {
			t.Errorf("OpenClickHouse(%+v): no error", cfg)
		}
	}
}

// caps18 and capsNow are what 18.16 and a current release report.
var (
	caps18  = serverCaps{major: 18, minor: 16, patch: 1}
	capsNow = serverCaps{major: 25, minor: 8, dateTime64: true, dedupToken: true, dedupWindow: true}
)

func TestClickHouseDDL(t *testing.T) {
	engineTables := map[string]string{
		tableMigrations: "ReplacingMergeTree", tableLedger: "ReplacingMergeTree", tableUsage: "ReplacingMergeTree",
		tableUsageHourly: "SummingMergeTree", tableUsageDaily: "SummingMergeTree", tableBucketConsumed: "SummingMergeTree",
		tableCreditFlows: "SummingMergeTree", tableDimensionHourly: "SummingMergeTree", tableDimensionDaily: "SummingMergeTree",
	}
	for _, caps := range []serverCaps{caps18, capsNow} {
		plain := schema{db: "meterd"}.plan(caps)
		cluster := schema{db: "meterd", cluster: "prod"}.plan(caps)
		all := strings.Join(plain, ";\n")
		for _, q := range plain {
			if strings.Contains(q, "ON CLUSTER") || strings.Contains(q, "Replicated") {
				t.Errorf("plain DDL is clustered:\n%s", q)
			}
		}
		for table, engine := range engineTables {
			if !strings.Contains(all, "CREATE TABLE IF NOT EXISTS meterd."+table+"\n") ||
				!strings.Contains(all, "ENGINE = "+engine+"(") {
				t.Errorf("plain DDL: no %s with %s", table, engine)
			}
		}
		for _, q := range cluster {
			if strings.HasPrefix(q, "INSERT INTO ") {
				continue // a backfill: it fills the tables of the shard it runs on
			}
			if !strings.Contains(q, " ON CLUSTER `prod`") {
				t.Errorf("cluster DDL without ON CLUSTER:\n%s", q)
			}
			if strings.Contains(q, "ENGINE") && !strings.Contains(q, "ENGINE = Replicated") {
				t.Errorf("cluster DDL with a plain engine:\n%s", q)
			}
			if strings.Contains(q, "non_replicated_deduplication_window") {
				t.Errorf("cluster DDL sets a setting of plain tables:\n%s", q)
			}
		}
		allc := strings.Join(cluster, ";\n")
		for table, engine := range engineTables {
			want := fmt.Sprintf("CREATE TABLE IF NOT EXISTS meterd.%s ON CLUSTER `prod`\n", table)
			eng := fmt.Sprintf("ENGINE = Replicated%s('/clickhouse/tables/{shard}/meterd/%s', '{replica}'", engine, table)
			if !strings.Contains(allc, want) || !strings.Contains(allc, eng) {
				t.Errorf("cluster DDL: want %q and %q", want, eng)
			}
		}
		for _, e := range []string{
			"ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/meterd/ledger_entries', '{replica}', outbox_seq)",
			"ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/meterd/usage_hourly', '{replica}', (events, charge))",
			"CREATE MATERIALIZED VIEW IF NOT EXISTS meterd.usage_hourly_mv ON CLUSTER `prod` TO meterd.usage_hourly",
			"CREATE DATABASE IF NOT EXISTS meterd ON CLUSTER `prod`",
		} {
			if !strings.Contains(allc, e) {
				t.Errorf("cluster DDL: no %q", e)
			}
		}
		// The repair's description of each view is the view, and the
		// tests compare each view with its base table.
		for _, r := range rollups {
			if !slices.ContainsFunc(viewChecks, func(c struct{ name, base, view string }) bool { return c.name == r.table }) {
				t.Errorf("no viewChecks entry for %s", r.table)
			}
			if v := (schema{db: "meterd"}).createView(r.table+"_mv", r.table, (schema{db: "meterd"}).viewSelect(r)); !slices.Contains(plain, v) {
				t.Errorf("no view in the DDL is the rollup of %s:\n%s", r.table, v)
			}
		}
		has64 := strings.Contains(all, "DateTime64(3, 'UTC')")
		hasWindow := strings.Contains(all, "non_replicated_deduplication_window = 1000")
		if has64 != caps.dateTime64 || hasWindow != caps.dedupWindow {
			t.Errorf("caps %+v: DateTime64 %v, dedup window %v", caps, has64, hasWindow)
		}
	}
}

// TestClickHouseDDLPrint logs the DDL of both variants (go test -run DDLPrint -v).
func TestClickHouseDDLPrint(t *testing.T) {
	for _, s := range []schema{{db: "meterd"}, {db: "meterd", cluster: "prod"}} {
		t.Logf("-- cluster %q, current release\n%s;", s.cluster, strings.Join(s.plan(capsNow), ";\n\n"))
	}
}
