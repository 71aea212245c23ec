package strictjson

import (
	"encoding/json"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
)

type inner struct {
	Amount json.RawMessage `json:"amount"`
	Kind   *string         `json:"kind"`
}

type outer struct {
	ID       string          `json:"id"`
	Items    []inner         `json:"items"`
	Price    *inner          `json:"price"`
	Count    *int            `json:"count"`
	Metadata json.RawMessage `json:"metadata"`
}

func TestExplain(t *testing.T) {
	tests := []struct {
		body string
		kind Kind
		path string
		name string
	}{
		{`{"id":"a","id":"b"}`, Duplicate, "id", "id"},
		{`{"id":"a","\u0069d":"b"}`, Duplicate, "id", "id"},
		{`{"items":[{},{"amount":1,"amount":2}]}`, Duplicate, "items[1].amount", "amount"},
		{`{"metadata":{"0":{"1":1,"1":2}}}`, Duplicate, "metadata.0.1", "1"},
		{`{"metadata":{"a":[0,[1,{"x/y~z":1,"x/y~z":2}]]}}`, Duplicate, "metadata.a[1][1].x/y~z", "x/y~z"},
		{`{"metadata":{"k":1}, "metadata":null}`, Duplicate, "metadata", "metadata"},
		{"{\"id\":\"a\xffb\"}", InvalidText, "id", ""},
		{"{\"metadata\":{\"k\xff\":1}}", InvalidText, "metadata", ""},
		{`{"metadata":{"k":["\ud800"]}}`, InvalidText, "metadata.k[0]", ""},
		{`{"metadata":{"k":"\ud800\u0041"}}`, InvalidText, "metadata.k", ""},
		{`{"metadata":{"k":"\udc00\ud800"}}`, InvalidText, "metadata.k", ""},
		{`{"ID":"a"}`, UnknownName, "ID", "ID"},
		{`{"items":[{"Amount":1}]}`, UnknownName, "items[0].Amount", "Amount"},
		{`{"price":{"kind":"a","KIND":"b"}}`, UnknownName, "price.KIND", "KIND"},
		{`{"count":1.5}`, WrongType, "count", ""},
		{`{"count":"1"}`, WrongType, "count", ""},
		{`{"items":{}}`, WrongType, "items", ""},
		{`[]`, WrongType, "", ""},
		{`{"id":"a"} x`, Syntax, "", ""},
		{`{"id":"a"`, Syntax, "", ""},
		{``, Syntax, "", ""},
		{`{"id":"a\q"}`, Syntax, "", ""},
		{"{\"id\":\"a\x01\"}", Syntax, "", ""},
	}
	for _, tt := range tests {
		var v outer
		err := Unmarshal([]byte(tt.body), &v)
		if err == nil {
			t.Errorf("%q: accepted", tt.body)
			continue
		}
		p := Explain([]byte(tt.body), err)
		if p.Kind != tt.kind || p.Path != tt.path || p.Name != tt.name || p.Err == nil {
			t.Errorf("%q: %v explained as kind %d path %q name %q; want %d %q %q", tt.body, err, p.Kind, p.Path, p.Name, tt.kind, tt.path, tt.name)
		}
	}
}

func TestValid(t *testing.T) {
	for _, ok := range []string{`{"a":{"A":1,"a":2}}`, `[{"a":1},{"a":1}]`, `"\ud83d\ude00"`, ` 1 `} {
		if err := Valid([]byte(ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{`{"a":{"b":1,"b":2}}`, "[\"\xc3\"]", `["\ud83d"]`, `1 2`, ``} {
		if Valid([]byte(bad)) == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

// TestPathOutOfBody: a pointer the body does not hold is joined as keys.
func TestPathOutOfBody(t *testing.T) {
	for _, tt := range []struct{ body, ptr, want string }{
		{`{"a":[1]}`, "/a/5", "a.5"},
		{`{"a":[1]}`, "/b/0", "b.0"},
		{`{"a":1}`, "/a/b", "a.b"},
		{`{"a":[{"b":[0,1]}]}`, "/a/0/b/1", "a[0].b[1]"},
		{`{`, "/a", "a"},
		{`{"a":[1]}`, "", ""},
	} {
		if got := Path([]byte(tt.body), jsontext.Pointer(tt.ptr)); got != tt.want {
			t.Errorf("Path(%s, %q) = %q, want %q", tt.body, tt.ptr, got, tt.want)
		}
	}
}
