package sink

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/sink/chtest"
)

// docQueries is every ```sql block of docs/CLICKHOUSE.md, split into
// statements, with the database meterd renamed to db.
func docQueries(t *testing.T, db string) [][]string {
	t.Helper()
	doc, err := os.ReadFile("../docs/CLICKHOUSE.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks [][]string
	for _, m := range sqlBlock.FindAllStringSubmatch(string(doc), -1) {
		var stmts []string
		for _, q := range strings.Split(m[1], ";") {
			if q = strings.TrimSpace(q); q != "" {
				stmts = append(stmts, grafanaMacros(strings.ReplaceAll(q, "meterd.", db+".")))
			}
		}
		blocks = append(blocks, stmts)
	}
	return blocks
}

var sqlBlock = regexp.MustCompile("(?s)```sql\n(.*?)```")

// grafanaMacros expands the ClickHouse data source's $__dateFilter(col) as
// the plugin does, for a dashboard range of November 2026 (the tests' data).
// (Its $__timeFilter compares with DateTimes, which 18.16 gets wrong for a
// Date column: the dashboard filters its Date columns with $__dateFilter.)
func grafanaMacros(q string) string {
	from, to := testDay.AddDate(0, 0, -20).Format(time.DateOnly), testDay.AddDate(0, 0, 10).Format(time.DateOnly)
	return dateFilter.ReplaceAllString(q, fmt.Sprintf("$1 >= toDate('%s') AND $1 <= toDate('%s')", from, to))
}

var dateFilter = regexp.MustCompile(`\$__dateFilter\((\w+)\)`)

// The dashboard's every query is one of docs/CLICKHOUSE.md's, so the tests
// of those run it.
func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile("../docs/grafana/meterd-clickhouse.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct {
				RawSQL string `json:"rawSql"`
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/CLICKHOUSE.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			n++
			if !strings.Contains(string(doc), "```sql\n"+q.RawSQL+"\n```") {
				t.Errorf("panel %q: its query is not a sql block of docs/CLICKHOUSE.md:\n%s", p.Title, q.RawSQL)
			}
		}
	}
	if n < 5 {
		t.Errorf("%d queries in the dashboard", n)
	}
}

// selectColumns is the names a SELECT's result columns have: each item of
// its select list (up to the first FROM outside parentheses), by its alias
// when it has one.
func selectColumns(q string) []string {
	list := strings.TrimPrefix(q, "SELECT ")
	var names []string
	item := func(s string) {
		s = strings.TrimSpace(s)
		if k := strings.LastIndex(s, " AS "); k >= 0 {
			s = s[k+len(" AS "):]
		}
		names = append(names, s)
	}
	depth, start := 0, 0
	for i := 0; i < len(list); i++ {
		switch list[i] {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				item(list[start:i])
				start = i + 1
			}
		case ' ', '\n':
			if depth == 0 && strings.HasPrefix(list[i+1:], "FROM ") {
				item(list[start:i])
				return names
			}
		}
	}
	return nil
}

// Every query docs/CLICKHOUSE.md gives runs against the live server on a
// day of traffic and returns the columns its select list names; the
// procedure that rebuilds a view's month gives back what the view held.
func TestClickHouseDocQueries(t *testing.T) {
	srv := chtest.Start(t)
	db := srv.Database(t)
	c := openCH(t, srv, db)
	ctx := testCtx(t)
	for _, b := range genBatches(11, 1, 3000, 500, testDay) {
		if err := c.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	blocks := docQueries(t, db)
	if len(blocks) < 8 {
		t.Fatalf("%d sql blocks in docs/CLICKHOUSE.md", len(blocks))
	}
	const viewDaily = "SELECT day, customer_id, event_type, account, sum(events), toString(sum(charge)) FROM DB.usage_daily GROUP BY day, customer_id, event_type, account ORDER BY day, customer_id, event_type, account"
	for _, stmts := range blocks {
		if len(stmts) > 1 || !strings.HasPrefix(stmts[0], "SELECT ") {
			// A procedure: it must leave usage_daily as the view made it.
			before := srv.Query(t, strings.ReplaceAll(viewDaily, "DB", db))
			for _, q := range stmts {
				if err := c.conn.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			if after := srv.Query(t, strings.ReplaceAll(viewDaily, "DB", db)); after != before || before == "" {
				t.Errorf("after\n%s\nusage_daily is\n%s\nwant\n%s", strings.Join(stmts, ";\n"), after, before)
			}
			continue
		}
		q := stmts[0]
		rows, err := c.conn.Query(ctx, q)
		if err != nil {
			t.Errorf("%s: %v", q, err)
			continue
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil {
			t.Errorf("%s: %v", q, err)
		}
		cols := rows.Columns()
		rows.Close()
		if want := selectColumns(q); !slices.Equal(cols, want) {
			t.Errorf("%s: columns %q, want %q", q, cols, want)
		}
		// The last hour's query finds nothing in a day of 2026-11; the
		// others find rows.
		if n == 0 && !strings.Contains(q, "now()") {
			t.Errorf("%s: no rows", q)
		}
	}
}
