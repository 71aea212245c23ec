package ingest

import (
	"context"
	"encoding/json"
	"maps"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/meterd/meterd/balance"
)

func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openAPIYAML)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background(), openapi3.EnableExamplesValidation()); err != nil {
		t.Fatalf("the OpenAPI document is not valid: %v", err)
	}
	return doc
}

// TestOpenAPIRoutes: the OpenAPI document describes exactly the routes of
// the table, and its error codes are exactly the table of codes.go.
func TestOpenAPIRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	for _, r := range apiRoutes {
		method := r.method
		if method == "*" {
			method = "GET"
		}
		k := method + " " + r.pattern
		if !documented[k] {
			t.Errorf("%s is served but not in the OpenAPI document", k)
		}
		delete(documented, k)
	}
	for k := range documented {
		t.Errorf("%s is in the OpenAPI document but not served", k)
	}
	codes := doc.Components.Schemas["ErrorCode"]
	if codes == nil || codes.Value == nil {
		t.Fatal("no ErrorCode schema")
	}
	var enum []string
	for _, v := range codes.Value.Enum {
		enum = append(enum, v.(string))
	}
	for code := range codeStatus {
		if !slices.Contains(enum, code) {
			t.Errorf("code %s is not in ErrorCode", code)
		}
	}
	for _, c := range enum {
		if _, ok := codeStatus[c]; !ok {
			t.Errorf("ErrorCode %s is in no table", c)
		}
	}
}

// liveOp is an operation of the document with its replay order.
type liveOp struct {
	method, path string
	op           *openapi3.Operation
	order        int
}

// TestOpenAPIExamplesLive replays every operation's examples, in the
// document's x-order, against a live server started on the test clock:
// each answers the documented success status, with a body that validates
// against the documented schema.
func TestOpenAPIExamplesLive(t *testing.T) {
	doc := loadOpenAPI(t)
	// As meterd starts: on its embedded default pricing (version 1), so
	// that the examples' PUT /v1/pricing makes version 2.
	def, err := os.ReadFile("../cmd/meterd/default-pricing.json")
	if err != nil {
		t.Fatal(err)
	}
	clock := balance.NewManualClock(time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC).UnixNano())
	e := newAPIEnv(t, apiEnvOpts{Clock: clock, Doors: AllDoors, DefaultPricing: def})
	var ops []liveOp
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			order, _ := op.Extensions["x-order"].(float64)
			ops = append(ops, liveOp{method, path, op, int(order)})
		}
	}
	slices.SortFunc(ops, func(a, b liveOp) int { return a.order - b.order })
	for _, o := range ops {
		if live, ok := o.op.Extensions["x-live"].(bool); ok && !live {
			continue
		}
		path := o.path
		q := url.Values{}
		for _, p := range o.op.Parameters {
			v := p.Value
			if v.Example == nil {
				continue
			}
			text := exampleText(v.Example)
			switch v.In {
			case "path":
				path = strings.ReplaceAll(path, "{"+v.Name+"}", text)
			case "query":
				q.Set(v.Name, text)
			}
		}
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		reqs := requestExamples(o.op)
		if len(reqs) == 0 {
			reqs = []exampleReq{{}}
		}
		for i, rq := range reqs {
			res := e.send(o.method, path, rq.ctype, "", rq.body)
			what := o.method + " " + path + " " + rq.ctype
			schema, documented := successSchema(o.op, res.Status)
			if !documented {
				t.Errorf("%s (x-order %d): %s; not a documented success", what, o.order, apiTrunc(string(res.Body), 300))
				continue
			}
			var got any
			if schema == nil || len(res.Body) == 0 || json.Unmarshal(res.Body, &got) != nil {
				continue
			}
			if err := schema.VisitJSON(got, openapi3.EnableJSONSchema2020()); err != nil {
				t.Errorf("%s: the answer does not fit its schema: %v\n%s", what, err, apiTrunc(string(res.Body), 300))
			}
			// And it is the documented example, but for what differs from
			// run to run (a session's token). An operation's other content
			// types carry the same events (POST /v1/events as NDJSON):
			// they answer as a resend, checked by status and schema.
			if want := successExample(o.op, res.Status); want != nil && (i == 0 || o.path != "/v1/events") {
				w, _ := json.Marshal(dropVolatile(want))
				g, _ := json.Marshal(dropVolatile(got))
				if string(w) != string(g) {
					t.Errorf("%s (x-order %d):\n got %s\nwant %s", what, o.order, apiTrunc(string(g), 600), apiTrunc(string(w), 600))
				}
			}
		}
	}
}

// exampleReq is one request body example of an operation.
type exampleReq struct {
	ctype string
	body  []byte
}

// requestExamples are an operation's request body examples, one per
// content type that has one, in the document's order; a form's object is
// form-encoded.
func requestExamples(op *openapi3.Operation) []exampleReq {
	rb := op.RequestBody
	if rb == nil || rb.Value == nil {
		return nil
	}
	var out []exampleReq
	for _, ct := range contentOrder(rb.Value.Content) {
		mt := rb.Value.Content[ct]
		if mt == nil || mt.Example == nil {
			continue
		}
		switch x := mt.Example.(type) {
		case string:
			out = append(out, exampleReq{ct, []byte(x)})
			continue
		case map[string]any:
			if ct == "application/x-www-form-urlencoded" {
				form := url.Values{}
				for k, v := range x {
					form.Set(k, exampleText(v))
				}
				out = append(out, exampleReq{ct, []byte(form.Encode())})
				continue
			}
		}
		b, _ := json.Marshal(mt.Example)
		out = append(out, exampleReq{ct, b})
	}
	return out
}

// contentOrder is the content types of a body, application/json first
// (the examples' state follows the document's order).
func contentOrder(c openapi3.Content) []string {
	cts := slices.Sorted(maps.Keys(c))
	slices.SortStableFunc(cts, func(a, b string) int {
		switch {
		case a == "application/json":
			return -1
		case b == "application/json":
			return 1
		}
		return 0
	})
	return cts
}

// successExample is the documented example of an operation's JSON answer
// of status, or nil.
func successExample(op *openapi3.Operation, status int) any {
	r := op.Responses.Status(status)
	if r == nil || r.Value == nil {
		return nil
	}
	if mt := r.Value.Content.Get("application/json"); mt != nil {
		return mt.Example
	}
	return nil
}

// dropVolatile removes what differs from run to run: the signed token of
// a Stripe meter event session.
func dropVolatile(v any) any {
	if m, ok := v.(map[string]any); ok {
		delete(m, "authentication_token")
	}
	return v
}

// successSchema is the JSON schema of an operation's answer of status,
// and whether status is one of its documented 2xx answers.
func successSchema(op *openapi3.Operation, status int) (*openapi3.Schema, bool) {
	if status < 200 || status > 299 {
		return nil, false
	}
	r := op.Responses.Status(status)
	if r == nil || r.Value == nil {
		return nil, false
	}
	if mt := r.Value.Content.Get("application/json"); mt != nil && mt.Schema != nil {
		return mt.Schema.Value, true
	}
	return nil, true
}

func exampleText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// TestAPIDocExamplesFitTheSchemas: every example request of docs/API.md
// (a curl command) and its answer (the HTTP status and body after it) fit
// the OpenAPI document's schemas for that operation and status. (The
// OpenAPI document's own examples are replayed live by
// TestOpenAPIExamplesLive; docs/API.md's were run against a live meterd
// when written.)
func TestAPIDocExamplesFitTheSchemas(t *testing.T) {
	oas := loadOpenAPI(t)
	raw, err := os.ReadFile("../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := codeBlock.FindAllStringSubmatch(string(raw), -1)
	checked := 0
	for i := 0; i+1 < len(blocks); i++ {
		cmd, ans := blocks[i][1], blocks[i+1][1]
		if !strings.HasPrefix(cmd, "curl") || !strings.HasPrefix(ans, "HTTP/1.1 ") {
			continue
		}
		method, path, ctype, body := parseCurl(cmd)
		if path == "" {
			continue
		}
		op := findOperation(oas, method, path)
		what := method + " " + path
		if op == nil {
			t.Errorf("docs/API.md example %s: no such operation in the OpenAPI document", what)
			continue
		}
		checked++
		if body != "" && (ctype == "" || ctype == "application/json") {
			var v any
			if json.Unmarshal([]byte(body), &v) == nil && op.RequestBody != nil {
				if mt := op.RequestBody.Value.Content.Get("application/json"); mt != nil && mt.Schema != nil {
					// An example of a refused request (or of events some of
					// which are refused) need not fit.
					if status := ansStatus(ans); status < 400 && !strings.Contains(ans, `"rejected"`) {
						if err := mt.Schema.Value.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
							t.Errorf("docs/API.md %s: the request does not fit its schema: %v", what, err)
						}
					}
				}
			}
		}
		status := ansStatus(ans)
		_, answer, _ := strings.Cut(ans, "\n")
		var v any
		if json.Unmarshal([]byte(answer), &v) != nil {
			continue // shortened, or not JSON
		}
		r := op.Responses.Status(status)
		if r == nil || r.Value == nil {
			t.Errorf("docs/API.md %s: status %d is not documented in the OpenAPI document", what, status)
			continue
		}
		for _, mt := range r.Value.Content {
			if mt.Schema == nil {
				continue
			}
			if err := mt.Schema.Value.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
				t.Errorf("docs/API.md %s: the %d answer does not fit its schema: %v", what, status, err)
			}
			break
		}
	}
	t.Logf("%d examples of docs/API.md checked", checked)
	if checked < 40 {
		t.Errorf("only %d examples of docs/API.md were checked", checked)
	}
}

var codeBlock = regexp.MustCompile("(?s)```[a-z]*\n(.*?)```")

// parseCurl reads a documented curl command: its method, path (with the
// query), Content-Type and -d body.
func parseCurl(cmd string) (method, path, ctype, body string) {
	cmd = strings.ReplaceAll(cmd, "\\\n", " ")
	if i := strings.Index(cmd, "-d '"); i >= 0 {
		rest := cmd[i+4:]
		if j := strings.Index(rest, "'"); j >= 0 {
			body = strings.TrimSpace(rest[:j])
			cmd = cmd[:i] + rest[j+1:]
		}
	}
	method = "GET"
	if body != "" || strings.Contains(cmd, " -d ") || strings.Contains(cmd, "--data") {
		method = "POST"
	}
	if m := curlMethod.FindStringSubmatch(cmd); m != nil {
		method = m[1]
	}
	if m := curlURL.FindStringSubmatch(cmd); m != nil {
		path = m[1]
	}
	if m := curlCType.FindStringSubmatch(cmd); m != nil {
		ctype = strings.ToLower(strings.TrimSpace(m[1]))
	}
	return method, path, ctype, body
}

var (
	curlMethod = regexp.MustCompile(`-X ([A-Z]+)`)
	curlURL    = regexp.MustCompile(`['"]?localhost:8080(/[^'"\s|]*)`)
	curlCType  = regexp.MustCompile(`(?i)Content-Type: ([^'";]+)`)
)

func ansStatus(ans string) int {
	f := strings.Fields(ans)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// findOperation is the operation of the document that serves method and
// path (with a query or not).
func findOperation(doc *openapi3.T, method, path string) *openapi3.Operation {
	path, _, _ = strings.Cut(path, "?")
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	for tmpl, item := range doc.Paths.Map() {
		ts := strings.Split(strings.TrimPrefix(tmpl, "/"), "/")
		if len(ts) != len(segs) {
			continue
		}
		ok := true
		for i := range ts {
			if !strings.HasPrefix(ts[i], "{") && ts[i] != segs[i] {
				ok = false
				break
			}
		}
		if ok {
			if op := item.GetOperation(method); op != nil {
				return op
			}
		}
	}
	return nil
}
