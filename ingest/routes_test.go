package ingest

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestRoutesServed: every route of the table is served with its method (a
// request reaches its handler: the answer is not the router's 404 or 405),
// another method on its path is 405 naming the ones it has, and a path no
// route has is 404.
func TestRoutesServed(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{Doors: AllDoors})
	for _, r := range apiRoutes {
		path := r.pattern
		for _, p := range []string{"{customer_id}", "{hold_id}", "{topup_id}", "{bucket_id}", "{request_id}", "{offer_id}"} {
			path = strings.ReplaceAll(path, p, "x1")
		}
		method := r.method
		if method == "*" {
			method = "GET"
		}
		res := e.call(method, path, "")
		if res.Status == 405 || strings.Contains(string(res.Body), "no such endpoint") {
			t.Errorf("%s %s (route %s): %s", method, path, r.name, apiTrunc(string(res.Body), 200))
		}
	}
	if res := e.call("DELETE", "/v1/customers/x1", ""); res.Status != 405 || res.Header.Get("Allow") != "GET, PUT, PATCH" {
		t.Errorf("DELETE of a customer: %d, Allow %q", res.Status, res.Header.Get("Allow"))
	}
	if res := e.call("GET", "/v1/customers/x1/nothing", ""); res.Status != 404 {
		t.Errorf("a path no route has: %s", res)
	}
	// A door that is off is no route at all.
	off := newAPIEnv(t, apiEnvOpts{})
	if res := off.call("POST", "/v1/billing/meter_events", ""); res.Status != 404 {
		t.Errorf("a door that is off: %s", res)
	}
}

// TestRoutesAreDocumented: the endpoint summary of docs/API.md lists
// exactly the routes of the table (the debug profiles aside, which are not
// part of the API).
func TestRoutesAreDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	start := strings.Index(text, "## 2. Endpoint summary")
	if start < 0 {
		t.Fatal("docs/API.md has no endpoint summary")
	}
	text = text[start:]
	if end := strings.Index(text[3:], "\n## "); end >= 0 {
		text = text[:end+3]
	}
	documented := map[string]bool{}
	for _, m := range summaryRow.FindAllStringSubmatch(text, -1) {
		if strings.HasPrefix(m[2], "/debug/pprof") {
			continue
		}
		documented[m[1]+" "+m[2]] = true
	}
	served := map[string]bool{}
	for _, r := range apiRoutes {
		method := r.method
		if method == "*" {
			method = "GET"
		}
		served[method+" "+r.pattern] = true
	}
	for k := range served {
		if !documented[k] {
			t.Errorf("%s is served but not in docs/API.md's endpoint summary", k)
		}
	}
	for k := range documented {
		if !served[k] {
			t.Errorf("%s is in docs/API.md's endpoint summary but not served", k)
		}
	}
}

// summaryRow is a row of the endpoint summary: | `METHOD /path` | ...
var summaryRow = regexp.MustCompile("(?m)^\\| `([A-Z]+) (/[^` ]*)` \\|")

// TestErrorCodesAreDocumented: docs/API.md's table of error codes lists
// every code of the one table (codes.go) with its status, and no other.
func TestErrorCodesAreDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	start := strings.Index(text, "## 15. Error codes")
	if start < 0 {
		t.Fatal("docs/API.md has no table of error codes")
	}
	documented := map[string]int{}
	for _, m := range codeRow.FindAllStringSubmatch(text[start:], -1) {
		documented[m[1]], _ = strconv.Atoi(m[2])
	}
	for code, status := range codeStatus {
		if got, ok := documented[code]; !ok || got != status {
			t.Errorf("code %s (status %d) is documented with status %d (listed: %v)", code, status, got, ok)
		}
	}
	for code := range documented {
		if _, ok := codeStatus[code]; !ok {
			t.Errorf("docs/API.md documents %s, which is in no table", code)
		}
	}
}

// codeRow is a row of the table of error codes: | `code` | status |
var codeRow = regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| ([0-9]{3}) \\|")
