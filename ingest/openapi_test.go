package ingest

import (
	"context"
	"encoding/json"
	"maps"
	"net/url"
	"os"
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
