package sink

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The current-engine test: the schema, the writer's rows and every query of
// docs/CLICKHOUSE.md on a current ClickHouse, chDB (ClickHouse as a library,
// npm's chdb package), driven by testdata/chdb.js. chDB has no server, so
// the rows go in as the SQL INSERTs the writer's column buffers make, with
// the writer's insert_deduplication_token.
//
// make test-deps installs the package into .cache/chdb; METERD_CHDB_MODULES
// names another node_modules directory holding it. Without node or the
// package the test is skipped, unless METERD_CHDB_REQUIRED=1 (make test).

// chdb runs statements in one chDB session directory.
type chdb struct {
	t       *testing.T
	modules string
	dir     string
}

type chdbStmt struct {
	SQL    string `json:"sql"`
	Format string `json:"format,omitempty"`
}

type chdbResult struct {
	OK    bool   `json:"ok"`
	Out   string `json:"out"`
	Error string `json:"error"`
}

func openChdb(t *testing.T) *chdb {
	t.Helper()
	modules := os.Getenv("METERD_CHDB_MODULES")
	if modules == "" {
		modules, _ = filepath.Abs("../.cache/chdb/node_modules")
	}
	_, errNode := exec.LookPath("node")
	_, errPkg := os.Stat(filepath.Join(modules, "chdb", "package.json"))
	if errNode != nil || errPkg != nil {
		msg := fmt.Sprintf("chDB is not installed (node: %v; package: %v): run make test-deps", errNode, errPkg)
		if os.Getenv("METERD_CHDB_REQUIRED") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return &chdb{t: t, modules: modules, dir: t.TempDir()}
}

// run runs stmts in order and returns their results; a statement that
// fails does not stop the ones after it.
func (c *chdb) run(stmts ...chdbStmt) []chdbResult {
	c.t.Helper()
	in, err := json.Marshal(stmts)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command("node", "testdata/chdb.js", filepath.Join(c.dir, "db"))
	cmd.Env = append(os.Environ(), "NODE_PATH="+c.modules)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("node testdata/chdb.js: %v\n%s", err, stderr.String())
	}
	var res []chdbResult
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(stmts) {
		c.t.Fatalf("node testdata/chdb.js: %v: %d results for %d statements\n%s", err, len(res), len(stmts), out)
	}
	return res
}

// must runs stmts and fails the test on the first that failed; it returns
// their outputs.
func (c *chdb) must(stmts ...chdbStmt) []string {
	c.t.Helper()
	var outs []string
	for i, r := range c.run(stmts...) {
		if !r.OK {
			c.t.Fatalf("chDB: %s\n%s", r.Error, stmts[i].SQL)
		}
		outs = append(outs, strings.TrimSuffix(r.Out, "\n"))
	}
	return outs
}

func sqls(qs ...string) []chdbStmt {
	out := make([]chdbStmt, len(qs))
	for i, q := range qs {
		out[i] = chdbStmt{SQL: q}
	}
	return out
}

// sqlInsert renders one INSERT of the columns cols (the writer's buffers, in
// the order of names) as SQL, with settings when not "".
func sqlInsert(table string, names []string, cols []any, settings string) string {
	var b strings.Builder
	b.WriteString("INSERT INTO " + table + " (" + strings.Join(names, ", ") + ")")
	if settings != "" {
		b.WriteString(" SETTINGS " + settings)
	}
	b.WriteString(" VALUES")
	rows := 0
	switch c := cols[0].(type) {
	case []string:
		rows = len(c)
	case []uint64:
		rows = len(c)
	}
	for i := range rows {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(" (")
		for j, col := range cols {
			if j > 0 {
				b.WriteString(", ")
			}
			switch c := col.(type) {
			case []string:
				b.WriteString("'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(c[i]) + "'")
			case []uint64:
				b.WriteString(strconv.FormatUint(c[i], 10))
			case []int64:
				b.WriteString(strconv.FormatInt(c[i], 10))
			case []uint32:
				b.WriteString(strconv.FormatUint(uint64(c[i]), 10))
			case []uint8:
				b.WriteString(strconv.FormatUint(uint64(c[i]), 10))
			case []time.Time:
				b.WriteString("'" + c[i].UTC().Format(time.DateTime) + "'")
			default:
				panic(fmt.Sprintf("sqlInsert: column %s is %T", names[j], col))
			}
		}
		b.WriteString(")")
	}
	return b.String()
}

func TestClickHouseCurrentEngine(t *testing.T) {
	c := openChdb(t)
	const db = "meterd"
	version := c.must(chdbStmt{SQL: "SELECT version()"})[0]
	var v [3]uint64
	for i, f := range strings.SplitN(version, ".", 4)[:3] {
		v[i], _ = strconv.ParseUint(f, 10, 64)
	}
	caps, err := capsOf(v[0], v[1], v[2], func(q string) (uint64, error) {
		r := c.run(chdbStmt{SQL: q})[0]
		if !r.OK {
			return 0, fmt.Errorf("%s", r.Error)
		}
		return strconv.ParseUint(strings.TrimSpace(r.Out), 10, 64)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chDB %s: %+v", version, caps)
	if !caps.dateTime64 || !caps.dedupToken || !caps.dedupWindow {
		t.Fatalf("a current engine should have DateTime64, insert_deduplication_token and the deduplication window: %+v", caps)
	}

	// The schema as Migrate builds it on this engine, every migration.
	s := schema{db: db}
	c.must(sqls(s.plan(caps)...)...)
	// Again: the plan's CREATEs are idempotent, and an added column is
	// refused the second time (why Migrate looks before it adds).
	for i, r := range c.run(sqls(s.plan(caps)...)...) {
		q := s.plan(caps)[i]
		if isAdd := strings.Contains(q, " ADD COLUMN ") && !strings.Contains(q, " IF NOT EXISTS "); r.OK == isAdd {
			t.Errorf("second run: ok %v: %s %s", r.OK, q, r.Error)
		}
	}

	// A day of traffic, each batch as the writer sends it, the first one
	// twice with the same token: the deduplication window drops the copy.
	all := genBatches(5, 1, 2300, 400, testDay)
	bs, extra := all[:len(all)-1], all[len(all)-1] // extra: for the repair, below
	var lbuf ledgerBuf
	var ubuf usageBuf
	fill := func(b *Batch) { // the writer's column buffers of b
		lbuf.reset()
		ubuf.reset()
		for j := range b.Ledger {
			lbuf.add(&b.Ledger[j], "")
		}
		for j := range b.Usage {
			ubuf.add(&b.Usage[j], "")
		}
	}
	var inserts []chdbStmt
	for _, b := range append([]*Batch{bs[0]}, bs...) {
		fill(b)
		token := func(table string) string {
			var set []string
			for k, v := range dedupSettings(fmt.Sprintf("%s:%d-%d", table, b.From, b.To)) {
				if s, ok := v.(string); ok {
					v = "'" + s + "'"
				}
				set = append(set, fmt.Sprintf("%s = %v", k, v))
			}
			return strings.Join(set, ", ")
		}
		inserts = append(inserts,
			chdbStmt{SQL: sqlInsert(s.table(tableLedger), columnNames(ledgerInsert), lbuf.columns(), token(tableLedger))},
			chdbStmt{SQL: sqlInsert(s.table(tableUsage), columnNames(usageInsert), ubuf.columns(), token(tableUsage))})
	}
	c.must(inserts...)
	ledgerRows, usageRows := rowsOf(bs)
	checks := []struct{ query, want string }{
		{"SELECT count(), uniqExact(entry_id) FROM meterd.ledger_entries", fmt.Sprintf("%d\t%d", ledgerRows, ledgerRows)},
		{"SELECT count(), uniqExact(event_id, account) FROM meterd.usage_events", fmt.Sprintf("%d\t%d", usageRows, usageRows)},
	}
	// Amounts: the Decimal columns the server computed, against the units.
	var sumUnits = map[string]int64{}
	for _, b := range bs {
		for _, r := range b.Ledger {
			sumUnits[r.Account] += r.Amount
		}
	}
	checks = append(checks, struct{ query, want string }{
		"SELECT account, toString(sum(amount)) FROM meterd.ledger_entries GROUP BY account ORDER BY account",
		strings.Join(accountTotals(sumUnits), "\n")})
	first := bs[0].Ledger[0]
	checks = append(checks, struct{ query, want string }{
		"SELECT toString(occurred_at64), toString(recorded_at64) FROM meterd.ledger_entries WHERE entry_id = '" + first.EntryID + "'",
		time.Unix(0, first.OccurredAt).UTC().Format("2006-01-02 15:04:05.000") + "\t" + time.Unix(0, first.RecordedAt).UTC().Format("2006-01-02 15:04:05.000")})
	for _, ck := range checks {
		if got := trimZeros(c.must(chdbStmt{SQL: ck.query})[0]); got != trimZeros(ck.want) {
			t.Errorf("%s:\n%s\nwant\n%s", ck.query, got, ck.want)
		}
	}
	// Every view equals the aggregate of its base table.
	for _, q := range viewChecks {
		outs := c.must(sqls(strings.ReplaceAll(q.base, "DB", db), strings.ReplaceAll(q.view, "DB", db))...)
		if outs[0] != outs[1] || outs[0] == "" {
			t.Errorf("%s differs from its base table:\nview\n%s\nbase\n%s", q.name, outs[1], outs[0])
		}
	}

	// The repair of views an INSERT left short (repair.go) on this engine:
	// the next batch lands while two views are detached, then each view is
	// repaired over the batch's keys, and every view equals its base again.
	fill(extra)
	short := []string{tableUsageDaily, tableCreditFlows}
	var stmts []string
	for _, v := range short {
		stmts = append(stmts, "DETACH TABLE "+s.table(v+"_mv"))
	}
	stmts = append(stmts, sqlInsert(s.table(tableLedger), columnNames(ledgerInsert), lbuf.columns(), ""),
		sqlInsert(s.table(tableUsage), columnNames(usageInsert), ubuf.columns(), ""))
	for _, v := range short {
		stmts = append(stmts, "ATTACH TABLE "+s.table(v+"_mv"))
	}
	c.must(sqls(stmts...)...)
	month := time.Date(testDay.Year(), testDay.Month(), 1, 0, 0, 0, 0, time.UTC)
	args := []any{"", extra.From, extra.To, month.Unix(), month.AddDate(0, 1, 0).Unix()}
	for _, r := range rollups {
		c.must(chdbStmt{SQL: inlineArgs(s.repairQuery(r), append(args, args...))})
	}
	for _, q := range viewChecks {
		outs := c.must(sqls(strings.ReplaceAll(q.base, "DB", db), strings.ReplaceAll(q.view, "DB", db))...)
		if outs[0] != outs[1] {
			t.Errorf("after the repair, %s differs from its base table:\nview\n%s\nbase\n%s", q.name, outs[1], outs[0])
		}
	}

	// Retention: a TTL on every table, as engine_full shows it (what retain
	// compares), then changed, then removed.
	engines := func() map[string]string {
		out := map[string]string{}
		for _, l := range strings.Split(c.must(chdbStmt{SQL: "SELECT name, engine_full FROM system.tables WHERE database = '" + db + "'"})[0], "\n") {
			name, engine, _ := strings.Cut(l, "\t")
			out[name] = engine
		}
		return out
	}
	for _, days := range []int{30, 400, 0} {
		for _, rt := range retentionTables {
			c.must(chdbStmt{SQL: s.retentionStatement(rt, days)})
		}
		e := engines()
		for _, rt := range retentionTables {
			if has := strings.Contains(e[rt.name], " TTL "); has != (days > 0) || days > 0 && !strings.Contains(e[rt.name], ttlClause(rt.column, days)) {
				t.Errorf("retention %d days: %s is %s", days, rt.name, e[rt.name])
			}
		}
	}

	// Every query of docs/CLICKHOUSE.md runs and names the documented columns.
	for _, stmts := range docQueries(t, db) {
		if len(stmts) > 1 || !strings.HasPrefix(stmts[0], "SELECT ") {
			c.must(sqls(stmts...)...)
			continue
		}
		var res struct {
			Meta []struct{ Name string } `json:"meta"`
		}
		out := c.must(chdbStmt{SQL: stmts[0], Format: "JSONCompact"})[0]
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%s: %v", stmts[0], err)
		}
		var cols []string
		for _, m := range res.Meta {
			cols = append(cols, m.Name)
		}
		if want := selectColumns(stmts[0]); !slices.Equal(cols, want) {
			t.Errorf("%s: columns %q, want %q", stmts[0], cols, want)
		}
	}
}

// inlineArgs puts args, as SQL literals, in place of the ? of q in order.
func inlineArgs(q string, args []any) string {
	var b strings.Builder
	for _, a := range args {
		i := strings.IndexByte(q, '?')
		b.WriteString(q[:i])
		if s, ok := a.(string); ok {
			b.WriteString("'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'")
		} else {
			fmt.Fprint(&b, a)
		}
		q = q[i+1:]
	}
	return b.String() + q
}
