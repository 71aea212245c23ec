//go:build linux

package sink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meterd/meterd/sink/chtest"
	"github.com/shopspring/decimal"
)

// TestMain shares one ClickHouse server among the package's tests.
func TestMain(m *testing.M) { chtest.Main(m) }

var testLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// openCH opens a writer on srv's database db, closed at cleanup.
func openCH(t testing.TB, srv *chtest.Server, db string) *ClickHouse {
	t.Helper()
	c, err := OpenClickHouse(testCtx(t), ClickHouseConfig{Addr: srv.Addr, Database: db, Log: testLog})
	if err != nil {
		t.Fatalf("OpenClickHouse: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// schemaOf describes every table of db: name, engine and columns, with the
// database's own name replaced by DB so two databases compare.
func schemaOf(t testing.TB, srv *chtest.Server, db string) string {
	t.Helper()
	tables := srv.Query(t, "SELECT name, engine FROM system.tables WHERE database = '"+db+"' ORDER BY name")
	cols := srv.Query(t, "SELECT table, name, type, default_kind, default_expression FROM system.columns WHERE database = '"+db+"' ORDER BY table, name")
	return strings.ReplaceAll(tables+"\n"+cols, db, "DB")
}

// wantVersions is the migrations the connected server runs.
func wantVersions(c *ClickHouse) string {
	var v []string
	for _, m := range migrations {
		if m.requires == nil || m.requires(c.caps, c.schema) {
			v = append(v, fmt.Sprintf("%d\t1", m.version))
		}
	}
	return strings.Join(v, "\n")
}

func TestClickHouseMigrate(t *testing.T) {
	srv := chtest.Start(t)
	db := srv.Database(t)
	c := openCH(t, srv, db)
	t.Logf("server %s, caps %+v", c.ServerVersion(), c.caps)
	before := schemaOf(t, srv, db)
	for _, table := range []string{tableLedger, tableUsage, tableUsageHourly, tableUsageDaily, tableBucketConsumed,
		tableCreditFlows, tableUsageHourly + "_mv", tableUsageDaily + "_mv", tableBucketConsumed + "_mv",
		tableCreditFlows + "_mv", tableMigrations} {
		if !strings.Contains(before, table+"\t") {
			t.Errorf("no table %s in\n%s", table, before)
		}
	}
	// Again, through the same writer and through a new one.
	if err := c.Migrate(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	openCH(t, srv, db)
	if after := schemaOf(t, srv, db); after != before {
		t.Fatalf("schema changed by a second Migrate:\n%s\nwant\n%s", after, before)
	}
	q := "SELECT version, count() FROM " + db + ".schema_migrations GROUP BY version ORDER BY version"
	if got, want := srv.Query(t, q), wantVersions(c); got != want {
		t.Fatalf("schema_migrations:\n%s\nwant\n%s", got, want)
	}

	// Concurrent migrations of fresh databases end with the same schema.
	for round := range 4 {
		db2 := srv.Database(t)
		const procs = 3
		var wg sync.WaitGroup
		errs := make([]error, procs)
		for i := range procs {
			wg.Go(func() {
				c, err := OpenClickHouse(testCtx(t), ClickHouseConfig{Addr: srv.Addr, Database: db2, Log: testLog})
				if err == nil {
					err = c.Close()
				}
				errs[i] = err
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: concurrent migrations: %v", round, err)
		}
		if got := schemaOf(t, srv, db2); got != before {
			t.Fatalf("round %d: concurrent migrations gave\n%s\nwant\n%s", round, got, before)
		}
		q := "SELECT version, count() FROM " + db2 + ".schema_migrations FINAL GROUP BY version ORDER BY version"
		if got, want := srv.Query(t, q), wantVersions(c); got != want {
			t.Fatalf("round %d: schema_migrations FINAL:\n%s\nwant\n%s", round, got, want)
		}
	}
}

// A database the release before migration 5 wrote (Decimal amounts sent by
// the writer) migrates: its rows keep their amounts, new rows get theirs
// from the units, and the views sum both.
func TestClickHouseMigrateAmounts(t *testing.T) {
	srv := chtest.Start(t)
	db := srv.Database(t)
	conn := srv.Conn(t)
	caps, err := detectCaps(testCtx(t), conn)
	if err != nil {
		t.Fatal(err)
	}
	s := schema{db: db}
	for _, q := range []string{s.createDatabase(), s.createMigrations()} {
		srv.Query(t, q)
	}
	for _, m := range migrations {
		if m.version >= 5 || m.requires != nil && !m.requires(caps, s) {
			continue
		}
		for _, q := range m.statements(s) {
			srv.Query(t, q)
		}
		srv.Query(t, fmt.Sprintf("INSERT INTO %s.schema_migrations (version, name, applied_at) VALUES (%d, '%s', now())", db, m.version, m.name))
	}
	rec := testDay.Add(time.Hour)
	srv.Query(t, fmt.Sprintf("INSERT INTO %s.ledger_entries (entry_id, seq, customer_id, account, asset, type, amount, balance_after, occurred_at, occurred_at_ms, recorded_at, recorded_at_ms, outbox_seq) VALUES "+
		"('c1/1', 1, 'c1', 'default:USD', 'USD', 'topup', toDecimal128('25.5', 9), toDecimal128('25.5', 9), %d, %d, %d, %d, 1)",
		db, rec.Unix(), rec.UnixMilli(), rec.Unix(), rec.UnixMilli()))
	srv.Query(t, fmt.Sprintf("INSERT INTO %s.usage_events (event_id, customer_id, event_type, status, charge, account, asset, occurred_at, occurred_at_ms, recorded_at, recorded_at_ms, outbox_seq) VALUES "+
		"('e0', 'c1', 'search', 'charged', toDecimal128('0.25', 9), 'default:USD', 'USD', %d, %d, %d, %d, 1)",
		db, rec.Unix(), rec.UnixMilli(), rec.Unix(), rec.UnixMilli()))

	c := openCH(t, srv, db)
	if got, want := srv.Query(t, "SELECT version, count() FROM "+db+".schema_migrations GROUP BY version ORDER BY version"), wantVersions(c); got != want {
		t.Fatalf("schema_migrations:\n%s\nwant\n%s", got, want)
	}
	b := &Batch{From: 2, To: 2,
		Ledger: []LedgerRow{{OutboxSeq: 2, EntryID: "c1/2", Seq: 2, CustomerID: "c1", Account: "default:USD", Asset: "USD",
			Type: "usage", Scale: 6, Amount: -250_001, BalanceAfter: 25_249_999, EventID: "e1", OccurredAt: rec.UnixNano(), RecordedAt: rec.UnixNano()}},
		Usage: []UsageRow{{OutboxSeq: 2, EventID: "e1", CustomerID: "c1", EventType: "search", Status: "charged",
			Account: "default:USD", Asset: "USD", Scale: 6, Charge: 250_001, OccurredAt: rec.UnixNano(), RecordedAt: rec.UnixNano()}},
	}
	if err := c.Write(testCtx(t), b); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct{ query, want string }{
		{"SELECT entry_id, toString(amount), toString(balance_after), amount_units, scale FROM DB.ledger_entries ORDER BY entry_id",
			"c1/1\t25.5\t25.5\t0\t0\nc1/2\t-0.250001\t25.249999\t-250001\t6"},
		{"SELECT event_id, toString(charge), charge_units, scale FROM DB.usage_events ORDER BY event_id",
			"e0\t0.25\t0\t0\ne1\t0.250001\t250001\t6"},
		{"SELECT toString(sum(amount)) FROM DB.ledger_entries", "25.249999"},
		{"SELECT sum(events), toString(sum(charge)) FROM DB.usage_daily", "2\t0.500001"},
		{"SELECT sum(entries), toString(sum(consumed)) FROM DB.bucket_consumption_daily", "1\t0.250001"},
	} {
		got := srv.Query(t, strings.ReplaceAll(q.query, "DB", db))
		// 18.16 prints a Decimal's trailing zeros; current releases do not.
		if trimZeros(got) != q.want {
			t.Errorf("%s:\n%s\nwant\n%s", q.query, got, q.want)
		}
	}
}

// A database whose base tables had rows before a view existed gets them in
// the view: migration 8 fills the dimension views and credit_flows_daily
// (which migration 6 created empty) from the base tables, and a second
// backfill adds nothing.
func TestClickHouseMigrateBackfills(t *testing.T) {
	srv := chtest.Start(t)
	ctx := testCtx(t)
	conn := srv.Conn(t)
	caps, err := detectCaps(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	// Rows as the release before migration 6 wrote them: copied from a
	// database the current writer filled, less the dimension.
	src := srv.Database(t)
	w := openCH(t, srv, src)
	bs := genBatches(11, 1, 3000, 1000, testDay)
	for _, b := range bs {
		if err := w.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	db := srv.Database(t)
	s := schema{db: db}
	if _, err := s.migrate(ctx, conn, caps, migrations[:5], time.Now); err != nil {
		t.Fatal(err)
	}
	for table, cols := range map[string][]string{
		tableLedger: slices.Concat(ledgerColumnsV1, ledgerUnits),
		tableUsage:  slices.Concat(usageColumnsV1, usageUnits),
	} {
		names := strings.Join(columnNames(cols), ", ")
		srv.Query(t, "INSERT INTO "+s.table(table)+" ("+names+") SELECT "+names+" FROM "+src+"."+table)
	}
	// Then the current release opens it.
	c := openCH(t, srv, db)
	if got, want := srv.Query(t, "SELECT version, count() FROM "+db+".schema_migrations GROUP BY version ORDER BY version"), wantVersions(c); got != want {
		t.Fatalf("schema_migrations:\n%s\nwant\n%s", got, want)
	}
	check := func(when string) {
		t.Helper()
		for _, q := range viewChecks {
			base := srv.Query(t, strings.ReplaceAll(q.base, "DB", db))
			if view := srv.Query(t, strings.ReplaceAll(q.view, "DB", db)); base != view {
				t.Errorf("%s: %s differs from its base table:\nview\n%s\nbase\n%s", when, q.name, view, base)
			}
			if base == "" && q.name != tableRevenueDaily { // rows written before migration 10 have no price
				t.Errorf("%s: %s is empty", when, q.name)
			}
		}
	}
	check("after the migration")
	if got := srv.Query(t, "SELECT DISTINCT dimension FROM "+db+".usage_dimension_daily"); got != "" {
		t.Errorf("rows written before migration 8 have dimensions %q, want only \"\"", got)
	}
	// A backfill of views already equal adds no row.
	for _, r := range rollups {
		q := "SELECT count() FROM " + s.table(r.table)
		before := srv.Query(t, q)
		srv.Query(t, s.backfillQuery(r))
		if after := srv.Query(t, q); after != before {
			t.Errorf("a second backfill of %s: %s rows, then %s", r.table, before, after)
		}
	}
	// New rows, with their dimensions, land in the views as they are written.
	more := genBatches(12, 3001, 2000, 1000, testDay)
	for _, b := range more {
		if err := c.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	check("after new rows")
	got := srv.Query(t, "SELECT dimension, sum(events) FROM "+db+".usage_dimension_daily WHERE event_type = 'message_completed' AND dimension != '' GROUP BY dimension ORDER BY dimension")
	want := map[string]int{}
	for _, b := range more {
		for _, r := range b.Usage {
			if r.Dimension != "" {
				want[r.Dimension]++
			}
		}
	}
	var wantText []string
	for _, m := range slices.Sorted(maps.Keys(want)) {
		wantText = append(wantText, fmt.Sprintf("%s\t%d", m, want[m]))
	}
	if got != strings.Join(wantText, "\n") {
		t.Errorf("events per model:\n%s\nwant\n%s", got, strings.Join(wantText, "\n"))
	}
}

// trimZeros drops the trailing zeros of every decimal fraction in TSV text.
func trimZeros(tsv string) string {
	return trailingZeros.ReplaceAllString(tsv, "$1")
}

var trailingZeros = regexp.MustCompile(`(\.\d*?[1-9])0+\b|\.0+\b`)

// A retention on a server without TTL is refused at Open, saying what to do.
func TestClickHouseRetentionNeedsTTL(t *testing.T) {
	srv := chtest.Start(t)
	c := openCH(t, srv, srv.Database(t))
	if c.caps.atLeast(ttlMajor, ttlMinor) {
		t.Skipf("server %s has TTL (the current-engine test sets retentions)", c.ServerVersion())
	}
	_, err := OpenClickHouse(testCtx(t), ClickHouseConfig{Addr: srv.Addr, Database: srv.Database(t), RetentionDays: 30, Log: testLog})
	if err == nil || !strings.Contains(err.Error(), "needs ClickHouse 19.6 or later") || !strings.Contains(err.Error(), "set the retention to 0 days") {
		t.Fatalf("OpenClickHouse with a retention on %s: %v", c.ServerVersion(), err)
	}
}

// Times of the tests: November 2026, UTC.
var testDay = time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)

func TestClickHouseWriteColumns(t *testing.T) {
	srv := chtest.Start(t)
	db := srv.Database(t)
	c := openCH(t, srv, db)
	occ := testDay.Add(10*time.Hour + 71*time.Millisecond + 123456*time.Nanosecond).UnixNano()
	rec := testDay.Add(10*time.Hour + 2*time.Second + 999*time.Millisecond + 999999*time.Nanosecond).UnixNano()
	b := &Batch{From: 7, To: 9,
		Ledger: []LedgerRow{
			{OutboxSeq: 7, EntryID: "c1/1", Seq: 1, CustomerID: "c1", Account: "default:USD", Asset: "USD", Type: "usage",
				Scale: 6, Amount: -282282, BalanceAfter: 14_250000, BucketID: "b_1", BucketKind: "recharge",
				EventID: "evt_1", Reference: "ref", OccurredAt: occ, RecordedAt: rec, PricingVersion: 3,
				Metadata: `{"psp":"stripe","note":"tab\there \"quoted\""}`},
			{OutboxSeq: 7, EntryID: "c1/2", Seq: 2, CustomerID: "c1", Account: "default:USD", Asset: "USD", Type: "usage",
				Scale: 6, Amount: -1, BalanceAfter: 14_249999, BucketID: "", BucketKind: "",
				EventID: "evt_1", OccurredAt: occ, RecordedAt: rec, PricingVersion: 3},
			{OutboxSeq: 9, EntryID: "c2/1", Seq: 1, CustomerID: "c2", Account: "default:CREDITS", Asset: "CREDITS", Type: "grant",
				Scale: 0, Amount: math.MaxInt64, BalanceAfter: math.MinInt64, BucketID: "b_2", BucketKind: "plan",
				Reference: "macro", OccurredAt: 1e9 + 5e8, RecordedAt: rec},
			{OutboxSeq: 9, EntryID: "c2/2", Seq: 2, CustomerID: "c2", Account: "default:TOK", Asset: "TOK", Type: "adjustment",
				Scale: 9, Amount: math.MinInt64, BalanceAfter: 1, OccurredAt: occ, RecordedAt: rec},
		},
		Usage: []UsageRow{
			{OutboxSeq: 7, EventID: "evt_1", CustomerID: "c1", EventType: "message_completed", Subject: "chat_5f53",
				OccurredAt: occ, RecordedAt: rec, Status: "charged", Account: "default:USD", Asset: "USD", Scale: 6,
				Charge: 282283, PricingVersion: 3, Data: `{"model":"gpt-4-1","input_tokens":2353}`},
			{OutboxSeq: 8, EventID: "evt_2", CustomerID: "c1", EventType: "unpriced", OccurredAt: occ, RecordedAt: rec,
				Status: "recorded", Data: "{}"},
		},
	}
	if err := c.Write(testCtx(t), b); err != nil {
		t.Fatal(err)
	}

	// Every column, as text; amounts compared as exact decimals (18.16 prints
	// trailing zeros, current releases do not).
	type row = []string
	read := func(table string, defs []string, order string) []row {
		names := columnNames(defs)
		sel := make([]string, len(names))
		for i, n := range names {
			sel[i] = "toString(" + n + ")"
		}
		rows, err := c.conn.Query(testCtx(t), "SELECT "+strings.Join(sel, ", ")+" FROM "+db+"."+table+" ORDER BY "+order)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []row
		for rows.Next() {
			r := make(row, len(names))
			ptrs := make([]any, len(names))
			for i := range r {
				ptrs[i] = &r[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	compare := func(table string, defs []string, got, want []row) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d rows, want %d: %q", table, len(got), len(want), got)
		}
		for i := range want {
			for j, d := range defs {
				g, w := got[i][j], want[i][j]
				if strings.Contains(d, "Decimal") {
					gd, err := decimal.NewFromString(g)
					if err == nil && gd.Equal(decimal.RequireFromString(w)) {
						continue
					}
				} else if g == w {
					continue
				}
				t.Errorf("%s row %d %s = %q, want %q", table, i, d, g, w)
			}
		}
	}
	occS, occMs := "2026-11-21 10:00:00", "1795255200071"
	recS, recMs := "2026-11-21 10:00:02", "1795255202999"
	compare(tableLedger, ledgerColumnsV1, read(tableLedger, ledgerColumnsV1, "entry_id"), []row{
		{"c1/1", "1", "c1", "default:USD", "USD", "usage", "-0.282282", "14.25", "b_1", "recharge", "evt_1", "ref",
			occS, occMs, recS, recMs, "3", `{"psp":"stripe","note":"tab\there \"quoted\""}`, "", "7"},
		{"c1/2", "2", "c1", "default:USD", "USD", "usage", "-0.000001", "14.249999", "", "", "evt_1", "",
			occS, occMs, recS, recMs, "3", "", "", "7"},
		{"c2/1", "1", "c2", "default:CREDITS", "CREDITS", "grant", "9223372036854775807", "-9223372036854775808", "b_2", "plan", "", "macro",
			"1970-01-01 00:00:01", "1500", recS, recMs, "0", "", "", "9"},
		{"c2/2", "2", "c2", "default:TOK", "TOK", "adjustment", "-9223372036.854775808", "0.000000001", "", "", "", "",
			occS, occMs, recS, recMs, "0", "", "", "9"},
	})
	compare(tableUsage, usageColumnsV1, read(tableUsage, usageColumnsV1, "event_id"), []row{
		{"evt_1", "c1", "message_completed", "chat_5f53", occS, occMs, recS, recMs, "charged", "0.282283",
			"default:USD", "USD", "3", `{"model":"gpt-4-1","input_tokens":2353}`, "", "7"},
		{"evt_2", "c1", "unpriced", "", occS, occMs, recS, recMs, "recorded", "0", "", "", "0", "{}", "", "8"},
	})
	// The integers the writer sent, as stored.
	compare(tableLedger, ledgerUnits, read(tableLedger, ledgerUnits, "entry_id"), []row{
		{"-282282", "14250000", "6"}, {"-1", "14249999", "6"},
		{"9223372036854775807", "-9223372036854775808", "0"}, {"-9223372036854775808", "1", "9"},
	})
	compare(tableUsage, usageUnits, read(tableUsage, usageUnits, "event_id"), []row{{"282283", "6"}, {"0", "0"}})
	if c.caps.dateTime64 {
		got := srv.Query(t, "SELECT toString(occurred_at64), toString(recorded_at64) FROM "+db+".usage_events WHERE event_id = 'evt_1'")
		if want := "2026-11-21 10:00:00.071\t2026-11-21 10:00:02.999"; got != want {
			t.Errorf("DateTime64 columns %q, want %q", got, want)
		}
	}

	// Sums per customer and account, exact.
	sums := srv.Query(t, "SELECT customer_id, account, toString(sum(amount)) FROM "+db+".ledger_entries GROUP BY customer_id, account ORDER BY customer_id, account")
	want := map[string]string{
		"c1\tdefault:USD":     "-0.282283",
		"c2\tdefault:CREDITS": "9223372036854775807",
		"c2\tdefault:TOK":     "-9223372036.854775808",
	}
	lines := strings.Split(sums, "\n")
	if len(lines) != len(want) {
		t.Fatalf("sums:\n%s", sums)
	}
	for _, l := range lines {
		k, v, _ := strings.Cut(l[:strings.LastIndexByte(l, '\t')], "\t")
		got := l[strings.LastIndexByte(l, '\t')+1:]
		if !decimal.RequireFromString(got).Equal(decimal.RequireFromString(want[k+"\t"+v])) {
			t.Errorf("sum(amount) %s %s = %s, want %s", k, v, got, want[k+"\t"+v])
		}
	}
}

// models are the dimension values genBatches gives message_completed.
var models = []string{"gpt-4-1", "claude-sonnet", "llama-3/eu"}

// genBatches makes n outbox records from seq first on, one day of traffic:
// each record one usage event with its ledger entries (one per bucket it
// drew from), and now and then a grant. It returns them cut into batches of
// up to per records. A customer's ledger entries are numbered from first
// too, so that two calls with disjoint seqs make distinct entries.
func genBatches(seed uint64, first uint64, n, per int, day time.Time) []*Batch {
	r := rand.New(rand.NewPCG(seed, 7))
	customers := 17
	eventTypes := []string{"message_completed", "image_generated", "search", "embedding"}
	kinds := []string{"promotional", "plan", "recharge", ""}
	accounts := []struct {
		name, asset string
		scale       uint8
	}{{"default:USD", "USD", 6}, {"default:CREDITS", "CREDITS", 0}, {"team:TOK", "TOK", 0}}
	seqs := map[string]uint64{}
	var out []*Batch
	var b *Batch
	for i := range n {
		seq := first + uint64(i)
		if b == nil || int(seq-b.From) >= per {
			b = &Batch{From: seq}
			out = append(out, b)
		}
		b.To = seq
		cust := fmt.Sprintf("cust_%02d", r.IntN(customers))
		if _, ok := seqs[cust]; !ok {
			seqs[cust] = first - 1 // a customer's entries are numbered from first
		}
		occ := day.Add(time.Duration(r.Int64N(int64(24 * time.Hour)))).UnixNano()
		rec := day.Add(time.Duration(i) * (24 * time.Hour / time.Duration(n))).UnixNano()
		acc := accounts[r.IntN(len(accounts))]
		evt := fmt.Sprintf("evt_%d", seq)
		et := eventTypes[r.IntN(len(eventTypes))]
		if r.IntN(10) == 0 {
			b.Usage = append(b.Usage, UsageRow{OutboxSeq: seq, EventID: evt, CustomerID: cust, EventType: et,
				OccurredAt: occ, RecordedAt: rec, Status: "recorded", Data: "{}"})
			continue
		}
		charge := r.Int64N(5_000_000)
		dim := "" // the model of an AI call, as the tailer finds it (sink/dimension.go)
		if et == "message_completed" {
			dim = models[seq%uint64(len(models))]
		}
		b.Usage = append(b.Usage, UsageRow{OutboxSeq: seq, EventID: evt, CustomerID: cust, EventType: et,
			Subject: "s", OccurredAt: occ, RecordedAt: rec, Status: "charged", Account: acc.name, Asset: acc.asset,
			Scale: acc.scale, Charge: charge, PricingVersion: 2, Data: `{"n":1}`, Dimension: dim})
		parts := 1 + r.IntN(3)
		left := charge
		for p := range parts {
			amt := left
			if p < parts-1 {
				amt = r.Int64N(left + 1)
			}
			left -= amt
			seqs[cust]++
			b.Ledger = append(b.Ledger, LedgerRow{OutboxSeq: seq, EntryID: fmt.Sprintf("%s/%d", cust, seqs[cust]),
				Seq: seqs[cust], CustomerID: cust, Account: acc.name, Asset: acc.asset, Type: "usage", Scale: acc.scale,
				Amount: -amt, BalanceAfter: r.Int64N(1e12), BucketID: fmt.Sprintf("b_%d", p), BucketKind: kinds[r.IntN(len(kinds))],
				EventID: evt, OccurredAt: occ, RecordedAt: rec, PricingVersion: 2, Source: sources[seq%uint64(len(sources))],
				Description: descriptions[seq%uint64(len(descriptions))]})
		}
		if r.IntN(20) == 0 {
			// Now and then an entry of another kind, with the sign its
			// kind has (a hold release may come back positive).
			other := otherEntries[r.IntN(len(otherEntries))]
			amount := r.Int64N(1e9)
			if other.out {
				amount = -amount
			}
			seqs[cust]++
			row := LedgerRow{OutboxSeq: seq, EntryID: fmt.Sprintf("%s/%d", cust, seqs[cust]),
				Seq: seqs[cust], CustomerID: cust, Account: acc.name, Asset: acc.asset, Type: other.typ, Scale: acc.scale,
				Amount: amount, BucketKind: "plan", OccurredAt: occ, RecordedAt: rec}
			if other.typ == "topup" || other.typ == "auto_reload" {
				// A purchase: what it was paid, and now and then its offer.
				row.Price = fmt.Sprintf("%d.%02d", seq%500, seq%100)
				row.Currency = []string{"USD", "EUR"}[seq%2]
				row.Offer = []string{"", "macro", "pack_100"}[seq%3]
			}
			b.Ledger = append(b.Ledger, row)
		}
	}
	return out
}

// sources and descriptions are what genBatches' usage entries carry, by
// outbox seq.
var (
	sources      = []string{"topup", "plan", "custom_credits", ""}
	descriptions = []string{"", "Chat completion", "", "Image \"generated\""}
)

// otherEntries are the ledger entry types besides usage, and whether each
// takes credit out.
var otherEntries = []struct {
	typ string
	out bool
}{{"grant", false}, {"topup", false}, {"adjustment", false}, {"adjustment", true}, {"auto_reload", false},
	{"expiry", true}, {"topup_reversal", true}, {"hold", true}, {"hold_release", false}}

// accountTotals is "account\tdecimal" for each account of units (sums in
// the smallest unit of genBatches' assets), in account order.
func accountTotals(units map[string]int64) []string {
	var out []string
	for _, a := range slices.Sorted(maps.Keys(units)) {
		scale := int32(0)
		if strings.HasSuffix(a, "USD") {
			scale = 6
		}
		out = append(out, a+"\t"+decimal.New(units[a], -scale).String())
	}
	return out
}

func rowsOf(bs []*Batch) (ledger, usage int) {
	for _, b := range bs {
		ledger += len(b.Ledger)
		usage += len(b.Usage)
	}
	return
}

// assertOnce checks that each table holds each row exactly once (no FINAL),
// and that it holds ledger and usage rows.
func assertOnce(t *testing.T, srv *chtest.Server, db string, ledger, usage int) {
	t.Helper()
	got := srv.Query(t, "SELECT count(), uniqExact(entry_id) FROM "+db+".ledger_entries")
	if want := fmt.Sprintf("%d\t%d", ledger, ledger); got != want {
		t.Errorf("ledger_entries count(), uniqExact(entry_id) = %s, want %s", got, want)
	}
	got = srv.Query(t, "SELECT count(), uniqExact(event_id, account) FROM "+db+".usage_events")
	if want := fmt.Sprintf("%d\t%d", usage, usage); got != want {
		t.Errorf("usage_events count(), uniqExact(event_id, account) = %s, want %s", got, want)
	}
}

func TestClickHouseExactlyOnce(t *testing.T) {
	srv := chtest.Start(t)
	db := srv.Database(t)
	ctx := testCtx(t)
	bs := genBatches(1, 1, 600, 100, testDay)
	ledger, usage := rowsOf(bs)

	// Write, "crash" (the instance goes away without the caller learning
	// the outcome), a new instance writes the same batch: skipped.
	c1 := openCH(t, srv, db)
	if err := c1.Write(ctx, bs[0]); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	c2 := openCH(t, srv, db)
	if err := c2.Write(ctx, bs[0]); err != nil {
		t.Fatal(err)
	}
	if s := c2.Stats(); s.RowsInserted != 0 || s.Checks != 2 || s.RowsSkipped != uint64(len(bs[0].Ledger)+len(bs[0].Usage)) {
		t.Errorf("after a restart, the same batch: %+v, want 2 checks and every row skipped", s)
	}
	// The same instance retrying a batch it confirmed: skipped, no check.
	if err := c2.Write(ctx, bs[0]); err != nil {
		t.Fatal(err)
	}
	// The next batch goes straight in.
	if err := c2.Write(ctx, bs[1]); err != nil {
		t.Fatal(err)
	}
	if s := c2.Stats(); s.Checks != 2 || s.Inserts != 2 {
		t.Errorf("after a confirmed batch: %+v, want no new check and 2 inserts", s)
	}

	// The previous process shipped further than the cursor it left: batches
	// 2 and 3 landed, the new instance is given 2, 3, 4, 5.
	if err := c2.Write(ctx, bs[2]); err != nil {
		t.Fatal(err)
	}
	if err := c2.Write(ctx, bs[3]); err != nil {
		t.Fatal(err)
	}
	c3 := openCH(t, srv, db)
	for _, b := range bs[2:5] {
		if err := c3.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	// Batch 2's check finds batch 3 above it, so batch 3 is checked too;
	// that check finds nothing above 3, so batch 4 goes straight in.
	if s := c3.Stats(); s.Checks != 4 || s.Inserts != 2 {
		t.Errorf("resuming behind: %+v, want batches 2 and 3 checked (4 checks), only 4 inserted (2 inserts)", s)
	}

	// Batches cut differently after a restart (the last batch of the old
	// process was half of the new one): only the missing records go in.
	c4 := openCH(t, srv, db)
	last := bs[5]
	half := &Batch{From: last.From, To: last.From + 49}
	rest := &Batch{From: last.From + 50, To: last.To}
	for _, r := range last.Ledger {
		if r.OutboxSeq <= half.To {
			half.Ledger = append(half.Ledger, r)
		} else {
			rest.Ledger = append(rest.Ledger, r)
		}
	}
	for _, r := range last.Usage {
		if r.OutboxSeq <= half.To {
			half.Usage = append(half.Usage, r)
		} else {
			rest.Usage = append(rest.Usage, r)
		}
	}
	if err := c4.Write(ctx, half); err != nil {
		t.Fatal(err)
	}
	c5 := openCH(t, srv, db)
	if err := c5.Write(ctx, last); err != nil {
		t.Fatal(err)
	}
	if s := c5.Stats(); s.RowsInserted != uint64(len(rest.Ledger)+len(rest.Usage)) {
		t.Errorf("re-cut batch: %+v, want %d rows inserted", s, len(rest.Ledger)+len(rest.Usage))
	}
	assertOnce(t, srv, db, ledger, usage)

	// A batch that does not match what landed before is refused, for good.
	bad := &Batch{From: half.From, To: half.To, Ledger: half.Ledger[:len(half.Ledger)-1], Usage: half.Usage}
	c6 := openCH(t, srv, db)
	if err := c6.Write(ctx, bad); err == nil || Retryable(err) {
		t.Errorf("a batch with fewer rows than landed: err %v, want a permanent error", err)
	}
	assertOnce(t, srv, db, ledger, usage)
}

// TestClickHouseTLSAndPassword: a server that takes the native protocol
// over TLS and a user with a password. With the CA and the password,
// batches land exactly once; a wrong password, an unknown user, no
// password, a client that does not trust the certificate and TLS to the
// plain port are each refused at once (no retry cures them:
// ErrClickHouseRefused), naming the server.
func TestClickHouseTLSAndPassword(t *testing.T) {
	if os.Getenv(chtest.EnvAddr) != "" {
		t.Skip("needs a private server; " + chtest.EnvAddr + " is set")
	}
	const password = "Corr3ct-horse"
	srv := chtest.StartWith(t, t.TempDir(), chtest.Options{TLS: true, User: "meterd_sink", Password: password})
	tc, err := srv.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	cfg := ClickHouseConfig{Addr: srv.SecureAddr, Database: "tls_sink", Username: "meterd_sink", Password: password, TLS: tc, Log: testLog}
	if err := CheckClickHouse(ctx, cfg); err != nil {
		t.Fatalf("CheckClickHouse with the CA and the password: %v", err)
	}
	c, err := OpenClickHouse(ctx, cfg)
	if err != nil {
		t.Fatalf("OpenClickHouse over TLS: %v", err)
	}
	defer c.Close()
	bs := genBatches(7, 1, 300, 100, testDay)
	for _, b := range bs {
		if err := c.Write(ctx, b); err != nil {
			t.Fatalf("Write over TLS: %v", err)
		}
	}
	ledger, usage := rowsOf(bs)
	assertOnce(t, srv, "tls_sink", ledger, usage)

	for _, bad := range []struct {
		name string
		edit func(*ClickHouseConfig)
		want string
	}{
		{"a wrong password", func(c *ClickHouseConfig) { c.Password = "wrong" }, "Wrong password"},
		{"an unknown user", func(c *ClickHouseConfig) { c.Username = "mallory" }, "mallory"},
		{"no password", func(c *ClickHouseConfig) { c.Password = "" }, "meterd_sink"},
		{"a client without the CA", func(c *ClickHouseConfig) { c.TLS = &tls.Config{MinVersion: tls.VersionTLS12} }, "unknown authority"},
		{"TLS to the plain port", func(c *ClickHouseConfig) { c.Addr = srv.Addr }, "TLS"},
	} {
		cfg := cfg
		bad.edit(&cfg)
		start := time.Now()
		err := CheckClickHouse(ctx, cfg)
		took := time.Since(start)
		t.Logf("%s: %v (%v)", bad.name, err, took.Round(time.Millisecond))
		if !errors.Is(err, ErrClickHouseRefused) || !strings.Contains(err.Error(), cfg.Addr) ||
			!strings.Contains(err.Error(), bad.want) || took > 5*time.Second {
			t.Errorf("%s: %v after %v; want ErrClickHouseRefused naming %s and %q within 5s", bad.name, err, took, cfg.Addr, bad.want)
		}
		if _, err := OpenClickHouse(ctx, cfg); !errors.Is(err, ErrClickHouseRefused) {
			t.Errorf("%s: OpenClickHouse: %v, want ErrClickHouseRefused", bad.name, err)
		}
	}
	// Nobody listening is no refusal: it may come up.
	cfg.Addr = srv.HTTPAddr[:strings.LastIndexByte(srv.HTTPAddr, ':')] + ":1"
	if err := CheckClickHouse(ctx, cfg); err == nil || errors.Is(err, ErrClickHouseRefused) {
		t.Errorf("nobody listening: %v, want an error that is not ErrClickHouseRefused", err)
	}
}

func TestClickHouseRetryAfterTableFailure(t *testing.T) {
	srv := chtest.Start(t)
	db := srv.Database(t)
	ctx := testCtx(t)
	c := openCH(t, srv, db)
	bs := genBatches(2, 1, 200, 100, testDay)
	if err := c.Write(ctx, bs[0]); err != nil {
		t.Fatal(err)
	}
	// usage_events goes away: the ledger insert of batch 1 succeeds, the
	// usage insert fails for good.
	srv.Query(t, "RENAME TABLE "+db+".usage_events TO "+db+".usage_events_away")
	err := c.Write(ctx, bs[1])
	var we *WriteError
	if !errors.As(err, &we) || we.Table != tableUsage || we.Retryable {
		t.Fatalf("Write with usage_events missing: %v, want a permanent WriteError on usage_events", err)
	}
	srv.Query(t, "RENAME TABLE "+db+".usage_events_away TO "+db+".usage_events")
	before := c.Stats()
	if err := c.Write(ctx, bs[1]); err != nil {
		t.Fatal(err)
	}
	s := c.Stats()
	if s.Checks-before.Checks != 1 || s.RowsInserted-before.RowsInserted != uint64(len(bs[1].Usage)) {
		t.Errorf("retry: %+v then %+v, want ledger skipped unchecked, usage checked and inserted", before, s)
	}
	l, u := rowsOf(bs)
	assertOnce(t, srv, db, l, u)
}

// TestClickHouseServerDies kills and restarts a private server between and
// during writes.
func TestClickHouseServerDies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own server")
	}
	srv := chtest.StartInDir(t, t.TempDir())
	db := "meterd"
	c, err := OpenClickHouse(testCtx(t), ClickHouseConfig{Addr: srv.Addr, Database: db,
		DialTimeout: time.Second, ReadTimeout: 5 * time.Second, Log: testLog})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testCtx(t)
	bs := genBatches(3, 1, 3000, 500, testDay)
	if err := c.Write(ctx, bs[0]); err != nil {
		t.Fatal(err)
	}
	// Kill while batch 1 is being written: its outcome is unknown.
	done := make(chan error, 1)
	go func() { done <- c.Write(ctx, bs[1]) }()
	time.Sleep(time.Millisecond)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	err = <-done
	t.Logf("write during the kill: %v", err)
	if err != nil && !Retryable(err) {
		t.Fatalf("write during the kill: %v, want a retryable error", err)
	}
	if err := c.Write(ctx, bs[2]); err == nil || !Retryable(err) {
		t.Fatalf("write to a dead server: %v, want a retryable error", err)
	}
	srv.Restart(t)
	// The caller retries what it has not seen acknowledged.
	for _, b := range bs[1:] {
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := c.Write(ctx, b)
			if err == nil {
				break
			}
			if !Retryable(err) || time.Now().After(deadline) {
				t.Fatalf("batch %d-%d after the restart: %v", b.From, b.To, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	l, u := rowsOf(bs)
	assertOnce(t, srv, db, l, u)
}

// viewChecks are, for each analyst view, a query of the view and the same
// aggregate of its base table (FINAL): after any run the two must print the
// same. DB stands for the database.
var viewChecks = []struct{ name, base, view string }{
	{"usage_hourly",
		"SELECT toStartOfHour(occurred_at) AS hour, customer_id, event_type, account, count(), toString(sum(charge)) FROM DB.usage_events FINAL GROUP BY hour, customer_id, event_type, account ORDER BY hour, customer_id, event_type, account",
		"SELECT hour, customer_id, event_type, account, sum(events), toString(sum(charge)) FROM DB.usage_hourly GROUP BY hour, customer_id, event_type, account ORDER BY hour, customer_id, event_type, account"},
	{"usage_daily",
		"SELECT toDate(occurred_at) AS day, customer_id, event_type, account, count(), toString(sum(charge)) FROM DB.usage_events FINAL GROUP BY day, customer_id, event_type, account ORDER BY day, customer_id, event_type, account",
		"SELECT day, customer_id, event_type, account, sum(events), toString(sum(charge)) FROM DB.usage_daily GROUP BY day, customer_id, event_type, account ORDER BY day, customer_id, event_type, account"},
	{"bucket_consumption_daily",
		"SELECT toDate(occurred_at) AS day, customer_id, bucket_kind, account, count(), toString(sum(-amount)) FROM DB.ledger_entries FINAL WHERE type = 'usage' GROUP BY day, customer_id, bucket_kind, account ORDER BY day, customer_id, bucket_kind, account",
		"SELECT day, customer_id, bucket_kind, account, sum(entries), toString(sum(consumed)) FROM DB.bucket_consumption_daily GROUP BY day, customer_id, bucket_kind, account ORDER BY day, customer_id, bucket_kind, account"},
	{"credit_flows_daily",
		"SELECT toDate(occurred_at) AS day, customer_id, account, count(), toString(sumIf(amount, type = 'grant')), toString(sumIf(amount, type = 'topup')), " +
			"toString(sumIf(amount, type = 'adjustment')), toString(sumIf(amount, type = 'auto_reload')), toString(-sumIf(amount, type = 'usage')), " +
			"toString(-sumIf(amount, type = 'expiry')), toString(-sumIf(amount, type = 'topup_reversal')), " +
			"toString(sumIf(amount, type IN ('hold', 'hold_release'))), toString(sum(amount)) " +
			"FROM DB.ledger_entries FINAL GROUP BY day, customer_id, account ORDER BY day, customer_id, account",
		"SELECT day, customer_id, account, sum(entries), toString(sum(granted)), toString(sum(topped_up)), toString(sum(adjusted)), " +
			"toString(sum(auto_reloaded)), toString(sum(used)), toString(sum(expired)), toString(sum(reversed)), toString(sum(held)), toString(sum(net)) " +
			"FROM DB.credit_flows_daily GROUP BY day, customer_id, account ORDER BY day, customer_id, account"},
	{"usage_dimension_hourly",
		"SELECT toStartOfHour(occurred_at) AS hour, customer_id, event_type, account, dimension, count(), toString(sum(charge)) FROM DB.usage_events FINAL GROUP BY hour, customer_id, event_type, account, dimension ORDER BY hour, customer_id, event_type, account, dimension",
		"SELECT hour, customer_id, event_type, account, dimension, sum(events), toString(sum(charge)) FROM DB.usage_dimension_hourly GROUP BY hour, customer_id, event_type, account, dimension ORDER BY hour, customer_id, event_type, account, dimension"},
	{"usage_dimension_daily",
		"SELECT toDate(occurred_at) AS day, customer_id, event_type, account, dimension, count(), toString(sum(charge)) FROM DB.usage_events FINAL GROUP BY day, customer_id, event_type, account, dimension ORDER BY day, customer_id, event_type, account, dimension",
		"SELECT day, customer_id, event_type, account, dimension, sum(events), toString(sum(charge)) FROM DB.usage_dimension_daily GROUP BY day, customer_id, event_type, account, dimension ORDER BY day, customer_id, event_type, account, dimension"},
	{"revenue_daily",
		"SELECT toDate(occurred_at) AS day, customer_id, account, currency, offer_id, type, count(), toString(sum(amount)), toString(sum(price)) FROM DB.ledger_entries FINAL WHERE currency != '' GROUP BY day, customer_id, account, currency, offer_id, type ORDER BY day, customer_id, account, currency, offer_id, type",
		"SELECT day, customer_id, account, currency, offer_id, type, sum(entries), toString(sum(credits)), toString(sum(revenue)) FROM DB.revenue_daily GROUP BY day, customer_id, account, currency, offer_id, type ORDER BY day, customer_id, account, currency, offer_id, type"},
}

func TestClickHouseViews(t *testing.T) {
	srv := chtest.Start(t)
	db := srv.Database(t)
	ctx := testCtx(t)
	c := openCH(t, srv, db)
	bs := genBatches(4, 1, 4000, 250, testDay)
	for _, b := range bs {
		if err := c.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	l, u := rowsOf(bs)
	t.Logf("%d batches, %d ledger rows, %d usage rows", len(bs), l, u)
	assertOnce(t, srv, db, l, u)

	for _, q := range viewChecks {
		base := srv.Query(t, strings.ReplaceAll(q.base, "DB", db))
		view := srv.Query(t, strings.ReplaceAll(q.view, "DB", db))
		if base != view {
			t.Errorf("%s differs from its base table:\nview\n%s\nbase\n%s", q.name, view, base)
		}
		if n := strings.Count(base, "\n") + 1; n < 20 {
			t.Errorf("%s: only %d groups", q.name, n)
		}
	}
	// Every kind of flow was there to be summed.
	flows := []string{"granted", "topped_up", "adjusted", "auto_reloaded", "used", "expired", "reversed", "held", "net"}
	var counts []string
	for _, f := range flows {
		counts = append(counts, "countIf("+f+" != 0)")
	}
	got := srv.Query(t, "SELECT "+strings.Join(counts, ", ")+" FROM "+db+".credit_flows_daily")
	for i, n := range strings.Split(got, "\t") {
		if n == "0" {
			t.Errorf("credit_flows_daily: %s is 0 in every row", flows[i])
		}
	}
	// The grand totals, against the generator's.
	var events int
	charge := map[string]int64{}
	for _, b := range bs {
		for _, r := range b.Usage {
			if r.Account != "" {
				events++
				charge[r.Account] += r.Charge
			}
		}
	}
	got = srv.Query(t, "SELECT account, sum(events), toString(sum(charge)) FROM "+db+".usage_daily WHERE account != '' GROUP BY account ORDER BY account")
	want := accountTotals(charge)
	var gotAcc []string
	n := 0
	for _, l := range strings.Split(got, "\n") {
		f := strings.Split(l, "\t")
		var e int
		fmt.Sscan(f[1], &e)
		n += e
		gotAcc = append(gotAcc, f[0]+"\t"+decimal.RequireFromString(f[2]).String())
	}
	if n != events || !slices.Equal(gotAcc, want) {
		t.Errorf("usage_daily totals %v (%d events), want %v (%d events)", gotAcc, n, want, events)
	}
}

// A batch in the base tables that some views missed (an INSERT cut short
// between the base part and the views' parts, made here by detaching the
// views) is repaired by the next writer that finds it there: every view
// equals its base table, and a second repair changes nothing.
func TestClickHouseRepairsShortViews(t *testing.T) {
	srv := chtest.Start(t)
	db := srv.Database(t)
	ctx := testCtx(t)
	bs := genBatches(9, 1, 3000, 1000, testDay)
	c1 := openCH(t, srv, db)
	if err := c1.Write(ctx, bs[0]); err != nil {
		t.Fatal(err)
	}
	short := []string{tableUsageHourly, tableCreditFlows} // one view of each base table
	for _, v := range short {
		srv.Query(t, "DETACH TABLE "+db+"."+v+"_mv")
	}
	if err := c1.Write(ctx, bs[1]); err != nil {
		t.Fatal(err)
	}
	for _, v := range short {
		srv.Query(t, "ATTACH TABLE "+db+"."+v+"_mv")
	}
	differ := func() []string {
		var out []string
		for _, q := range viewChecks {
			if srv.Query(t, strings.ReplaceAll(q.base, "DB", db)) != srv.Query(t, strings.ReplaceAll(q.view, "DB", db)) {
				out = append(out, q.name)
			}
		}
		return out
	}
	if d := differ(); !slices.Equal(d, short) {
		t.Fatalf("before the repair, views %v differ from their base tables, want %v", d, short)
	}
	for round := range 2 {
		c := openCH(t, srv, db) // its first batch's outcome is unknown
		for _, b := range bs[1:] {
			if err := c.Write(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		if d := differ(); len(d) > 0 {
			t.Errorf("round %d: views %v differ from their base tables", round, d)
		}
		// Round 0 finds batch 1 there; round 1 finds batches 1 and 2.
		if s := c.Stats(); s.Repairs != uint64((round+1)*len(rollups)) {
			t.Errorf("round %d: %+v, want %d repairs (every view, for each batch found there)", round, s, (round+1)*len(rollups))
		}
	}
	l, u := rowsOf(bs)
	assertOnce(t, srv, db, l, u)
}

func TestClickHouseRefusesBadBatches(t *testing.T) {
	srv := chtest.Start(t)
	c := openCH(t, srv, srv.Database(t))
	ctx := testCtx(t)
	nov := testDay.UnixNano()
	dec := testDay.AddDate(0, 0, 10).UnixNano()
	for name, b := range map[string]*Batch{
		"two months": {From: 1, To: 2, Ledger: []LedgerRow{
			{OutboxSeq: 1, EntryID: "c/1", CustomerID: "c", RecordedAt: nov},
			{OutboxSeq: 2, EntryID: "c/2", CustomerID: "c", RecordedAt: dec}}},
		"two months across tables": {From: 1, To: 2,
			Ledger: []LedgerRow{{OutboxSeq: 1, EntryID: "c/1", CustomerID: "c", RecordedAt: nov}},
			Usage:  []UsageRow{{OutboxSeq: 2, EventID: "e", CustomerID: "c", RecordedAt: dec}}},
		"outside From-To": {From: 1, To: 2, Ledger: []LedgerRow{{OutboxSeq: 3, EntryID: "c/1", CustomerID: "c", RecordedAt: nov}}},
		"From > To":       {From: 2, To: 1},
		"scale":           {From: 1, To: 1, Usage: []UsageRow{{OutboxSeq: 1, EventID: "e", CustomerID: "c", RecordedAt: nov, Scale: 10}}},
		"before 1970":     {From: 1, To: 1, Usage: []UsageRow{{OutboxSeq: 1, EventID: "e", CustomerID: "c", RecordedAt: nov, OccurredAt: -1}}},
		"no entry id":     {From: 1, To: 1, Ledger: []LedgerRow{{OutboxSeq: 1, CustomerID: "c", RecordedAt: nov}}},
		"nil":             nil,
	} {
		err := c.Write(ctx, b)
		var we *WriteError
		if !errors.As(err, &we) || we.Retryable {
			t.Errorf("%s: %v, want a permanent WriteError", name, err)
		}
	}
	if s := c.Stats(); s.Inserts != 0 || s.Checks != 0 {
		t.Errorf("refused batches reached the server: %+v", s)
	}
	big := &Batch{From: 1, To: 1, Usage: make([]UsageRow, clickHouseBatchRowsMaxDefault+1)}
	if err := c.Write(ctx, big); err == nil || Retryable(err) {
		t.Errorf("a batch over BatchRowsMax: %v, want a permanent error", err)
	}
}

// BenchmarkClickHouseWrite writes batches of 50,000 ledger rows (with their
// views) into the local server.
// BenchmarkClickHouseWrite writes 50,000-row ledger batches: on the
// package's shared server, then plain and over TLS to one private server
// that has both ports (tls/plain compares the two within one run).
func BenchmarkClickHouseWrite(b *testing.B) {
	b.Run("shared", func(b *testing.B) {
		srv := chtest.Start(b)
		benchClickHouseWrite(b, ClickHouseConfig{Addr: srv.Addr, Database: srv.Database(b), Log: testLog})
	})
	if os.Getenv(chtest.EnvAddr) != "" {
		return // the TLS server must be private
	}
	srv := chtest.StartWith(b, b.TempDir(), chtest.Options{TLS: true})
	tc, err := srv.ClientTLS()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("plain", func(b *testing.B) {
		benchClickHouseWrite(b, ClickHouseConfig{Addr: srv.Addr, Database: srv.Database(b), Log: testLog})
	})
	b.Run("tls", func(b *testing.B) {
		benchClickHouseWrite(b, ClickHouseConfig{Addr: srv.SecureAddr, TLS: tc, Database: srv.Database(b), Log: testLog})
	})
}

func benchClickHouseWrite(b *testing.B, cfg ClickHouseConfig) {
	c, err := OpenClickHouse(testCtx(b), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	const rowsPerBatch = 50_000
	batch := &Batch{Ledger: make([]LedgerRow, rowsPerBatch)}
	rec := testDay.Add(time.Hour).UnixNano()
	var seq uint64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		batch.From = seq + 1
		for i := range batch.Ledger {
			seq++
			cust := fmt.Sprintf("cust_%03d", seq%997)
			batch.Ledger[i] = LedgerRow{OutboxSeq: seq, EntryID: cust + "/" + fmt.Sprint(seq), Seq: seq, CustomerID: cust,
				Account: "default:USD", Asset: "USD", Type: "usage", Scale: 6, Amount: -int64(seq % 1_000_000),
				BalanceAfter: int64(seq), BucketID: "b_1", BucketKind: "plan", EventID: fmt.Sprint("evt_", seq),
				OccurredAt: rec, RecordedAt: rec, PricingVersion: 1, Metadata: "{}"}
		}
		batch.To = seq
		b.StartTimer()
		if err := c.Write(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rowsPerBatch)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
