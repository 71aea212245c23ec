package ingest

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/valyala/fasthttp"
	"gopkg.in/yaml.v3"
)

// openAPIYAML is the OpenAPI 3.1 document of the HTTP API: every route of
// the table (TestOpenAPI holds them to each other), its fields, answers,
// errors and examples, which the test replays against a live server.
//
//go:embed openapi.yaml
var openAPIYAML []byte

// openAPIJSON is the document as JSON, made once.
var openAPIJSON = sync.OnceValues(func() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(openAPIYAML, &doc); err != nil {
		return nil, err
	}
	return json.Marshal(jsonable(doc))
})

// jsonable makes what YAML decodes encodable as JSON: mappings with keys
// of any type (a status code 200) become objects keyed by their text.
func jsonable(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = jsonable(e)
		}
		return x
	}
	return v
}

// serveOpenAPI answers GET /openapi.json.
func serveOpenAPI(ctx *fasthttp.RequestCtx) {
	b, err := openAPIJSON()
	if err != nil {
		writeError(ctx, "internal_error", "the OpenAPI document does not parse: "+err.Error(), "")
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}
