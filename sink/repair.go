package sink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// Keeping the analyst views exact when an INSERT's outcome is unknown.
//
// ClickHouse commits an INSERT's block to the base table first, then to each
// materialized view's table, one after the other. An INSERT cut short (the
// server killed, the connection lost) can therefore leave the base table
// holding the block and some views without it. The writer finds such blocks
// with its check of what landed (clickhouse.go, step 2): a record already in
// the base table is one whose views may be short. For those, and before it
// writes anything else to the table, it makes each view equal to the
// aggregate of the base table over the keys the records touch, by inserting
// the difference (a SummingMergeTree adds it). Two rules make that exact:
//
//   - nothing of this outbox is still being inserted into the table or its
//     views while the check and the repair run: every INSERT, the repair's
//     too, carries a query id naming the outbox and the table, and settle
//     waits until the server runs none (an INSERT whose client died may
//     still be writing its views);
//   - the repair reads and writes while this writer holds the table, so no
//     insert of its own lands between the two reads. Rows of the same keys
//     from another meterd instance (another outbox) must not be in flight
//     at the same time: a customer's rows come from one instance.
//
// A view that already holds the block gets a difference of zero, and no row.

// rollup is an analyst view as data, for the repair: its table, the base
// table it reads, its key and summed columns with their expressions over the
// base table, and which base rows it reads ("" for all).
type rollup struct {
	table, base string
	keys        []rollupCol
	sums        []rollupCol
	where       string
}

type rollupCol struct{ name, expr string }

// selected is the column in a select list: its expression named.
func (k rollupCol) selected() string {
	if k.expr == k.name {
		return k.name
	}
	return k.expr + " AS " + k.name
}

// creditFlows are the summed columns of credit_flows_daily. Migration 6
// creates the table and its view from this list: it is released DDL, so it
// changes only together with a new migration that alters the table.
var creditFlows = []rollupCol{
	{"entries", "count()"},
	{"granted", "sumIf(amount, type = 'grant')"},
	{"topped_up", "sumIf(amount, type = 'topup')"},
	{"adjusted", "sumIf(amount, type = 'adjustment')"},
	{"auto_reloaded", "sumIf(amount, type = 'auto_reload')"},
	{"used", "-sumIf(amount, type = 'usage')"},
	{"expired", "-sumIf(amount, type = 'expiry')"},
	{"reversed", "-sumIf(amount, type = 'topup_reversal')"},
	{"held", "sumIf(amount, type IN ('hold', 'hold_release'))"},
	{"net", "sum(amount)"},
}

// rollups are every view of the schema (migrations 2, 6, 8 and 10), by base
// table.
var rollups = []rollup{
	{table: tableUsageHourly, base: tableUsage,
		keys: []rollupCol{{"hour", "toStartOfHour(occurred_at)"}, {"customer_id", "customer_id"}, {"event_type", "event_type"}, {"account", "account"}},
		sums: []rollupCol{{"events", "count()"}, {"charge", "sum(charge)"}}},
	{table: tableUsageDaily, base: tableUsage,
		keys: []rollupCol{{"day", "toDate(occurred_at)"}, {"customer_id", "customer_id"}, {"event_type", "event_type"}, {"account", "account"}},
		sums: []rollupCol{{"events", "count()"}, {"charge", "sum(charge)"}}},
	{table: tableBucketConsumed, base: tableLedger, where: "type = 'usage'",
		keys: []rollupCol{{"day", "toDate(occurred_at)"}, {"customer_id", "customer_id"}, {"account", "account"}, {"bucket_kind", "bucket_kind"}},
		sums: []rollupCol{{"entries", "count()"}, {"consumed", "sum(-amount)"}}},
	{table: tableCreditFlows, base: tableLedger,
		keys: []rollupCol{{"day", "toDate(occurred_at)"}, {"customer_id", "customer_id"}, {"account", "account"}},
		sums: creditFlows},
	{table: tableDimensionHourly, base: tableUsage,
		keys: []rollupCol{{"hour", "toStartOfHour(occurred_at)"}, {"customer_id", "customer_id"}, {"event_type", "event_type"},
			{"account", "account"}, {"dimension", "dimension"}},
		sums: []rollupCol{{"events", "count()"}, {"charge", "sum(charge)"}}},
	{table: tableDimensionDaily, base: tableUsage,
		keys: []rollupCol{{"day", "toDate(occurred_at)"}, {"customer_id", "customer_id"}, {"event_type", "event_type"},
			{"account", "account"}, {"dimension", "dimension"}},
		sums: []rollupCol{{"events", "count()"}, {"charge", "sum(charge)"}}},
	{table: tableRevenueDaily, base: tableLedger, where: "currency != ''",
		keys: []rollupCol{{"day", "toDate(occurred_at)"}, {"customer_id", "customer_id"}, {"account", "account"},
			{"currency", "currency"}, {"offer_id", "offer_id"}, {"type", "type"}},
		sums: []rollupCol{{"entries", "count()"}, {"credits", "sum(amount)"}, {"revenue", "sum(price)"}}},
}

// columns is the column definitions of r's table: its keys, then its sums.
// The period keys are hour (DateTime) and day (Date); counts (events,
// entries) are UInt64; other keys are String and other sums Decimal(38, 9).
func (r rollup) columns() []string {
	var out []string
	for _, k := range r.keys {
		typ := "String"
		switch k.name {
		case "hour":
			typ = "DateTime('UTC')"
		case "day":
			typ = "Date"
		}
		out = append(out, k.name+" "+typ)
	}
	for _, v := range r.sums {
		typ := "Decimal(38, 9)"
		if v.name == "events" || v.name == "entries" {
			typ = "UInt64"
		}
		out = append(out, v.name+" "+typ)
	}
	return out
}

// repairQuery is the INSERT that adds to view r the difference between the
// aggregate of its base table and what it holds, over the keys of the base
// rows of outbox_id in outbox_seq from..to recorded in [from, until) (the
// four arguments, in that order, twice).
func (s schema) repairQuery(r rollup) string {
	where := ""
	if r.where != "" {
		where = " AND " + r.where
	}
	keyExprs := make([]string, len(r.keys))
	for i, k := range r.keys {
		keyExprs[i] = k.expr
	}
	return s.diffQuery(r, "SELECT "+strings.Join(keyExprs, ", ")+" FROM "+s.table(r.base)+
		" WHERE outbox_id = ? AND outbox_seq >= ? AND outbox_seq <= ? AND recorded_at >= toDateTime(?) AND recorded_at < toDateTime(?)"+where)
}

// backfillQuery is the INSERT that adds to view r the difference between
// the aggregate of its base table and what it holds, over every key: it
// fills a view created after its base table had rows, and adds nothing to
// a view that is already equal.
func (s schema) backfillQuery(r rollup) string { return s.diffQuery(r, "") }

// diffQuery is the INSERT of base aggregate minus view for the keys the
// query touched returns, or for every key when touched is "".
func (s schema) diffQuery(r rollup, touched string) string {
	var keyNames, keyExprs, keyAs, baseSums, viewSums, diffs, differs []string
	for _, k := range r.keys {
		keyNames = append(keyNames, k.name)
		keyExprs = append(keyExprs, k.expr)
		keyAs = append(keyAs, k.selected())
	}
	for _, v := range r.sums {
		baseSums = append(baseSums, v.expr+" AS b_"+v.name)
		viewSums = append(viewSums, "sum("+v.name+") AS v_"+v.name)
		diffs = append(diffs, "b_"+v.name+" - v_"+v.name)
		differs = append(differs, "b_"+v.name+" != v_"+v.name)
	}
	names := strings.Join(keyNames, ", ")
	var baseWhere, viewWhere []string
	if touched != "" {
		baseWhere = append(baseWhere, "("+strings.Join(keyExprs, ", ")+") IN ("+touched+")")
		viewWhere = append(viewWhere, "("+names+") IN ("+touched+")")
	}
	if r.where != "" {
		baseWhere = append(baseWhere, r.where)
	}
	whereOf := func(conds []string) string {
		if len(conds) == 0 {
			return ""
		}
		return "\n    WHERE " + strings.Join(conds, " AND ")
	}
	return "INSERT INTO " + s.table(r.table) + " (" + names + ", " + columnList(r.sums) + ")\n" +
		"SELECT " + names + ", " + strings.Join(diffs, ", ") + "\nFROM (\n" +
		"    SELECT " + strings.Join(keyAs, ", ") + ", " + strings.Join(baseSums, ", ") +
		"\n    FROM " + s.table(r.base) + " FINAL" + whereOf(baseWhere) +
		"\n    GROUP BY " + names + "\n) AS b ANY LEFT JOIN (\n" +
		"    SELECT " + names + ", " + strings.Join(viewSums, ", ") +
		"\n    FROM " + s.table(r.table) + whereOf(viewWhere) +
		"\n    GROUP BY " + names + "\n) AS v USING (" + names + ")\nWHERE " + strings.Join(differs, " OR ")
}

// rollupOf is the rollup of table.
func rollupOf(table string) rollup {
	for _, r := range rollups {
		if r.table == table {
			return r
		}
	}
	panic("sink: no rollup " + table)
}

func columnList(cols []rollupCol) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

// viewSelect is the SELECT of r's materialized view.
func (s schema) viewSelect(r rollup) string {
	var sel, names []string
	for _, k := range r.keys {
		names = append(names, k.name)
		sel = append(sel, k.selected())
	}
	for _, v := range r.sums {
		sel = append(sel, v.expr+" AS "+v.name)
	}
	q := "SELECT " + strings.Join(sel, ", ") + "\nFROM " + s.table(r.base)
	if r.where != "" {
		q += "\nWHERE " + r.where
	}
	return q + "\nGROUP BY " + strings.Join(names, ", ")
}

// repair makes every view of table t equal to its base table over the keys
// of the rows of b's records present there (see the top of this file).
func (c *ClickHouse) repair(ctx context.Context, t *tableWriter, b *Batch, month time.Time) error {
	from, until := uint32(month.Unix()), uint32(month.AddDate(0, 1, 0).Unix())
	for _, r := range rollups {
		if r.base != t.name {
			continue
		}
		args := []any{c.cfg.OutboxID, b.From, b.To, from, until}
		// Under t's query id prefix, like the inserts: a repair whose
		// client died mid-way is waited for by the next settle too.
		id := c.queryID(t, b)
		qctx := clickhouse.Context(ctx, clickhouse.WithQueryID(id))
		if c.caps.dedupToken {
			// The views' tables deduplicate within their window (migration
			// 7); a token of its own keeps a repair from being taken for
			// an earlier block of the same content.
			qctx = clickhouse.Context(qctx, clickhouse.WithSettings(clickhouse.Settings{"insert_deduplication_token": id}))
		}
		if err := c.conn.Exec(qctx, c.schema.repairQuery(r), append(args, args...)...); err != nil {
			return fmt.Errorf("repair %s: %w", r.table, err)
		}
		t.stats.Repairs++
	}
	return nil
}

// queryIDPrefix starts the query id of every INSERT of this outbox into t.
func (c *ClickHouse) queryIDPrefix(t *tableWriter) string {
	return "meterd/" + c.cfg.OutboxID + "/" + t.name + "/"
}

// queryID is a new INSERT's query id: the prefix, the batch, and random
// bytes (the server refuses a query id that is running already).
func (c *ClickHouse) queryID(t *tableWriter, b *Batch) string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%s%d-%d/%s", c.queryIDPrefix(t), b.From, b.To, hex.EncodeToString(r[:]))
}

// settlePoll is how often settle asks the server.
const settlePoll = 50 * time.Millisecond

// settle waits until the server runs no INSERT of this outbox into t, at
// most ReadTimeout.
func (c *ClickHouse) settle(ctx context.Context, t *tableWriter) error {
	prefix := c.queryIDPrefix(t)
	q := "SELECT count() FROM system.processes WHERE substring(query_id, 1, ?) = ?"
	deadline := time.Now().Add(c.cfg.ReadTimeout)
	for {
		var n uint64
		if err := c.conn.QueryRow(ctx, q, len(prefix), prefix).Scan(&n); err != nil {
			return fmt.Errorf("settle: %w", err)
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("settle: an earlier insert into %s is still running after %v", t.name, c.cfg.ReadTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(settlePoll):
		}
	}
}
