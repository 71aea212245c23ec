package meter

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestDimensions(t *testing.T) {
	p := mustCompile(t, `{"assets":[{"code":"USD","scale":6},{"code":"TOK","scale":0}],
	 "prices":[
	  {"event_type":"call","account":"default:USD","dimensions":["model","region"],
	   "unit_price":{"gpt/eu":"1","*":"2"}},
	  {"event_type":"call","account":"tokens:TOK","unit_price":"1"},
	  {"event_type":"image","account":"default:USD","dimensions":["size"],"unit_price":"3"}]}`)
	for _, c := range []struct {
		eventType, account string
		want               []string
	}{
		{"call", "default:USD", []string{"model", "region"}},
		{"call", "tokens:TOK", nil},
		{"image", "default:USD", []string{"size"}},
		{"image", "tokens:TOK", nil},
		{"video", "default:USD", nil},
	} {
		if got := p.Dimensions(c.eventType, c.account); !slices.Equal(got, c.want) {
			t.Errorf("Dimensions(%s, %s) = %q; want %q", c.eventType, c.account, got, c.want)
		}
	}
}

func TestDimensionValue(t *testing.T) {
	var r DimensionReader
	long := strings.Repeat("é", 200) // 400 bytes
	two := []string{"model", "region"}
	for _, c := range []struct {
		dims []string
		data string
		want string
	}{
		{[]string{"model"}, `{"model":"gpt-4-1","input_tokens":2353}`, "gpt-4-1"},
		{two, `{"region":"eu","model":"gpt"}`, "gpt/eu"},
		{two, `{"model":"gpt"}`, "gpt/"},
		{two, `{}`, "/"},
		{[]string{"model"}, `{"model":"gpt\u002d4"}`, "gpt-4"}, // escapes decoded, as rating sees them
		{[]string{"n"}, `{"n":1.50}`, "1.50"},                  // numbers as written
		{[]string{"n"}, `{"n":1e3}`, "1e3"},
		{[]string{"b"}, `{"b":true}`, "true"},
		{[]string{"b"}, `{"b":false}`, "false"},
		{[]string{"x"}, `{"x":null}`, ""},
		{[]string{"x"}, `{"x":{"a":1}}`, ""},
		{[]string{"x"}, `{"x":[1]}`, ""},
		{[]string{"model"}, `{"model":"` + long + `"}`, long[:256]}, // 128 characters of 2 bytes
		{[]string{"model"}, `{"model":"a` + long + `"}`, "a" + long[:254]},
		{[]string{"model"}, `not json`, ""},
		{[]string{"model"}, `["gpt"]`, ""},
		{nil, `{"model":"gpt"}`, ""},
	} {
		if got := r.Value(c.dims, []byte(c.data)); got != c.want {
			t.Errorf("Value(%q, %s) = %q; want %q", c.dims, c.data, got, c.want)
		}
	}
}

// Past the values it keeps, the reader still returns each value right.
func TestDimensionValueMany(t *testing.T) {
	var r DimensionReader
	for i := range 3 * dimensionValuesKept {
		want := "m" + strconv.Itoa(i%(2*dimensionValuesKept))
		if got := r.Value([]string{"model"}, []byte(`{"model":"`+want+`"}`)); got != want {
			t.Fatalf("value %d: %q, want %q", i, got, want)
		}
	}
}

// A dimension value that names a price of the unit_price map is that
// map key: the rollups group usage the way rating priced it.
func TestDimensionValueIsThePriceKey(t *testing.T) {
	p := mustCompile(t, exampleDoc)
	var r DimensionReader
	dims := p.Dimensions("message_completed", "default:USD")
	ev := messageCompleted("gpt-4-1")
	data := []byte(`{"model":"gpt-4-1","input_tokens":2353,"output_tokens":34697}`)
	pr := p.byType["message_completed"][0]
	i := pr.keyIndex(ev)
	if i < 0 {
		t.Fatal("gpt-4-1 has no price key")
	}
	for key, j := range pr.keys {
		if j == i {
			if got := r.Value(dims, data); got != key {
				t.Errorf("Value = %q; the price key is %q", got, key)
			}
		}
	}
}

// BenchmarkDimensionValue is the sink's cost of a usage row's dimension
// value: one data object parsed and its dimension members read.
func BenchmarkDimensionValue(b *testing.B) {
	var r DimensionReader
	dims := []string{"model"}
	data := []byte(`{"model":"gpt-4-1","input_tokens":2353,"output_tokens":34697,"conversation":"c_5f53a2"}`)
	b.ReportAllocs()
	for b.Loop() {
		if r.Value(dims, data) != "gpt-4-1" {
			b.Fatal("wrong value")
		}
	}
}
