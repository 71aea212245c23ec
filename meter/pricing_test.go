package meter

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// exampleDoc is the pricing document of the contract (API.md, "Pricing").
const exampleDoc = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],
 "prices":[
  {"event_type":"message_completed","account":"default:USD",
   "dimensions":["model"],
   "components":[
     {"field":"input_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"2.00","*":"1.25"}},
     {"field":"output_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"8.00","*":"5.00"}}]},
  {"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"}],
 "topup_offers":[{"currency":"USD","account":"default:CREDITS","min":"10","max":"10000",
   "tiers":[{"from":"10","credits_per_unit":"100"},{"from":"300","credits_per_unit":"125"}]}]}`

const exampleCanonical = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],` +
	`"prices":[{"event_type":"message_completed","account":"default:USD","dimensions":["model"],"components":[` +
	`{"field":"input_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"2","*":"1.25"}},` +
	`{"field":"output_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"8","*":"5"}}]},` +
	`{"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"}],` +
	`"topup_offers":[{"currency":"USD","account":"default:CREDITS","min":"10","max":"10000",` +
	`"tiers":[{"from":"10","credits_per_unit":"100"},{"from":"300","credits_per_unit":"125"}]}]}`

func mustCompile(t testing.TB, doc string) *Pricing {
	t.Helper()
	d, err := ParseDocument([]byte(doc))
	if err != nil {
		t.Fatalf("ParseDocument: %v", err)
	}
	p, err := Compile(d, 1, nil)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

func TestExampleDocument(t *testing.T) {
	p := mustCompile(t, exampleDoc)
	if p.Version != 1 {
		t.Errorf("Version = %d", p.Version)
	}
	if got := string(p.JSON()); got != exampleCanonical {
		t.Errorf("JSON() =\n%s\nwant\n%s", got, exampleCanonical)
	}
	usd, ok := p.Asset("USD")
	if !ok || usd != (Asset{"USD", 6}) {
		t.Errorf("Asset(USD) = %v, %v", usd, ok)
	}
	if _, ok := p.Asset("EUR"); ok {
		t.Errorf("Asset(EUR) found")
	}
	if got := p.Assets(); len(got) != 3 || got[2] != (Asset{"TOK", 0}) {
		t.Errorf("Assets() = %v", got)
	}
	// Round trip: the canonical JSON parses and compiles to an equal pricing.
	p2 := mustCompile(t, string(p.JSON()))
	if !bytes.Equal(p2.JSON(), p.JSON()) {
		t.Errorf("round trip changed the JSON:\n%s\n%s", p2.JSON(), p.JSON())
	}
	doc := p.Document()
	if len(doc.Prices) != 2 || doc.Prices[0].Components[1].UnitPrice.Map[0].Price.String() != "8" ||
		doc.TopupOffers[0].Tiers[1].From.String() != "300" {
		t.Errorf("Document() = %+v", doc)
	}
	// encoding/json sees the same canonical form.
	b, err := json.Marshal(doc)
	if err != nil || string(b) != exampleCanonical {
		t.Errorf("json.Marshal(Document) = %s, %v", b, err)
	}
	var back Document
	if err := json.Unmarshal([]byte(exampleDoc), &back); err != nil || len(back.Prices) != 2 {
		t.Errorf("json.Unmarshal(Document) = %+v, %v", back, err)
	}
}

func TestEmpty(t *testing.T) {
	p := Empty()
	if p.Version != 0 || len(p.Assets()) != 0 {
		t.Errorf("Empty() = %+v", p)
	}
	if got := string(p.JSON()); got != `{"assets":[],"prices":[],"topup_offers":[]}` {
		t.Errorf("Empty().JSON() = %s", got)
	}
	_, matched, err := p.Rate(&Event{EventType: "x"}, nil)
	if matched || err != nil {
		t.Errorf("Empty().Rate = %v, %v", matched, err)
	}
	if _, err := Compile(nil, 3, nil); err != nil {
		t.Errorf("Compile(nil) = %v", err)
	}
}

func wantErr(t *testing.T, what string, err error, code, field, msg string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Errorf("%s: got %v; want %s at %q", what, err, code, field)
		return
	}
	if e.Code != code || e.Field != field || !strings.Contains(e.Message, msg) {
		t.Errorf("%s: got %s %q %q; want %s %q containing %q", what, e.Code, e.Field, e.Message, code, field, msg)
	}
}

func TestParseDocumentErrors(t *testing.T) {
	tests := []struct {
		doc, code, field, msg string
	}{
		{`{"assets":[`, "malformed_json", "", ""},
		{`{"assets":[]} x`, "malformed_json", "", ""},
		{`{"assets":[{"code":"USD","scale":6,}]}`, "malformed_json", "", ""},
		{"{\"assets\":[{\"code\":\"\xff\",\"scale\":6}]}", "invalid_request", "assets[0].code", "UTF-8"},
		{`{"assets":[{"code":"US` + "\x01" + `D","scale":6}]}`, "malformed_json", "", ""},
		{`{"prices":[NaN]}`, "malformed_json", "", ""},
		{``, "malformed_json", "", ""},
		{`[]`, "invalid_request", "", "object"},
		{`{"asets":[]}`, "invalid_request", "asets", "unknown field"},
		{`{"assets":[{"code":"USD","scale":6,"name":"x"}]}`, "invalid_request", "assets[0].name", "unknown field"},
		{`{"prices":[{"event_type":"e","account":"a:USD","componets":[]}]}`, "invalid_request", "prices[0].componets", "unknown field"},
		{`{"prices":[{"event_type":"e","account":"a:USD","components":[{"fild":"x"}]}]}`, "invalid_request", "prices[0].components[0].fild", "unknown field"},
		{`{"topup_offers":[{"tiers":[{"from":"1","credit_per_unit":"1"}]}]}`, "invalid_request", "topup_offers[0].tiers[0].credit_per_unit", "unknown field"},
		{`{"assets":{}}`, "invalid_request", "assets", "array"},
		{`{"assets":[1]}`, "invalid_request", "assets[0]", "object"},
		{`{"assets":[{"code":5}]}`, "invalid_request", "assets[0].code", "string"},
		{`{"assets":[{"code":"USD","scale":"6"}]}`, "invalid_request", "assets[0].scale", "integer"},
		{`{"assets":[{"code":"USD","scale":6.0}]}`, "invalid_request", "assets[0].scale", "integer"},
		{`{"assets":[{"code":"USD","scale":10}]}`, "invalid_pricing", "assets[0].scale", "0 to 9"},
		{`{"assets":[{"code":"USD","scale":-1}]}`, "invalid_pricing", "assets[0].scale", "0 to 9"},
		{`{"assets":[{"code":"USD","scale":6,"scale":2}]}`, "invalid_request", "assets[0].scale", "duplicate"},
		{`{"prices":[{"dimensions":"model"}]}`, "invalid_request", "prices[0].dimensions", "array"},
		{`{"prices":[{"dimensions":["model",3]}]}`, "invalid_request", "prices[0].dimensions[1]", "string"},
		{`{"prices":[{"unit_price":2.5}]}`, "invalid_request", "prices[0].unit_price", "use a string for decimals"},
		{`{"prices":[{"unit_price":1e3}]}`, "invalid_request", "prices[0].unit_price", "use a string for decimals"},
		{`{"prices":[{"unit_price":true}]}`, "invalid_request", "prices[0].unit_price", "decimal"},
		{`{"prices":[{"unit_price":"abc"}]}`, "invalid_pricing", "prices[0].unit_price", "not a decimal"},
		{`{"prices":[{"unit_price":{"a":1.5}}]}`, "invalid_request", "prices[0].unit_price.a", "use a string for decimals"},
		{`{"prices":[{"unit_price":{"a":"1","a":"2"}}]}`, "invalid_request", "prices[0].unit_price.a", "duplicate"},
		{`{"prices":[{"components":[{"package_size":0.5}]}]}`, "invalid_request", "prices[0].components[0].package_size", "use a string"},
		{`{"prices":[{"components":[{"field":""}]}]}`, "invalid_pricing", "prices[0].components[0].field", "1-64"},
		{`{"prices":[{"components":{}}]}`, "invalid_request", "prices[0].components", "array"},
		{`{"topup_offers":[{"min":10.5}]}`, "invalid_request", "topup_offers[0].min", "use a string"},
		{`{"topup_offers":[{"tiers":[{"from":[]}]}]}`, "invalid_request", "topup_offers[0].tiers[0].from", "decimal"},
	}
	for _, tt := range tests {
		_, err := ParseDocument([]byte(tt.doc))
		wantErr(t, tt.doc, err, tt.code, tt.field, tt.msg)
	}
}

func TestParseDocumentNullIsAbsent(t *testing.T) {
	d, err := ParseDocument([]byte(`{"assets":[{"code":"USD","scale":6}],"prices":[{"event_type":"e","account":"a:USD","dimensions":null,"unit_price":"1","components":null}],"topup_offers":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(d, 1, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseDocument(bytes.Repeat([]byte(" "), documentBytesMax+1)); err == nil {
		t.Error("oversized document accepted")
	}
}

// compileErr compiles a document made of the example's assets and the given
// prices and offers.
func compileDoc(assets, prices, offers string) error {
	if assets == "" {
		assets = `[{"code":"CREDITS","scale":0},{"code":"USD","scale":6}]`
	}
	if prices == "" {
		prices = "[]"
	}
	if offers == "" {
		offers = "[]"
	}
	d, err := ParseDocument([]byte(`{"assets":` + assets + `,"prices":` + prices + `,"topup_offers":` + offers + `}`))
	if err != nil {
		return err
	}
	_, err = Compile(d, 1, nil)
	return err
}

func repeatJSON(n int, f func(i int) string) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = f(i)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func TestCompileErrors(t *testing.T) {
	const ip = "invalid_pricing"
	offer := func(s string) string { return `[{"currency":"USD","account":"default:CREDITS",` + s + `}]` }
	tests := []struct {
		name, assets, prices, offers, code, field, msg string
	}{
		{"asset code empty", `[{"code":"","scale":0}]`, "", "", ip, "assets[0].code", "1-16"},
		{"asset code lower", `[{"code":"usd","scale":0}]`, "", "", ip, "assets[0].code", "1-16"},
		{"asset code long", `[{"code":"ABCDEFGHIJKLMNOPQ","scale":0}]`, "", "", ip, "assets[0].code", "1-16"},
		{"asset duplicate", `[{"code":"USD","scale":0},{"code":"USD","scale":2}]`, "", "", ip, "assets[1].code", "twice"},
		{"too many assets", repeatJSON(65, func(i int) string { return `{"code":"A` + strconv.Itoa(i) + `","scale":0}` }), "", "",
			"pricing_limit_exceeded", "assets", "64 assets"},

		{"event type empty", "", `[{"event_type":"","account":"default:USD","unit_price":"1"}]`, "", ip, "prices[0].event_type", "1-128"},
		{"event type bad char", "", `[{"event_type":"a b","account":"default:USD","unit_price":"1"}]`, "", ip, "prices[0].event_type", "1-128"},
		{"event type long", "", `[{"event_type":"` + strings.Repeat("e", 129) + `","account":"default:USD","unit_price":"1"}]`, "", ip, "prices[0].event_type", "1-128"},
		{"account no colon", "", `[{"event_type":"e","account":"default","unit_price":"1"}]`, "", ip, "prices[0].account", "name:ASSET"},
		{"account bad name", "", `[{"event_type":"e","account":"de fault:USD","unit_price":"1"}]`, "", ip, "prices[0].account", "name:ASSET"},
		{"account empty name", "", `[{"event_type":"e","account":":USD","unit_price":"1"}]`, "", ip, "prices[0].account", "name:ASSET"},
		{"account undefined asset", "", `[{"event_type":"e","account":"default:EUR","unit_price":"1"}]`, "", ip, "prices[0].account", "EUR is not defined"},
		{"both", "", `[{"event_type":"e","account":"default:USD","unit_price":"1","components":[{"unit_price":"1"}]}]`, "", ip, "prices[0].unit_price", "not both"},
		{"neither", "", `[{"event_type":"e","account":"default:USD"}]`, "", ip, "prices[0]", "unit_price or at least one component"},
		{"empty components", "", `[{"event_type":"e","account":"default:USD","components":[]}]`, "", ip, "prices[0]", "at least one component"},
		{"duplicate price", "", `[{"event_type":"e","account":"default:USD","unit_price":"1"},{"event_type":"e","account":"default:USD","unit_price":"2"}]`, "", ip, "prices[1]", "prices[0] already charges"},
		{"too many dimensions", "", `[{"event_type":"e","account":"default:USD","dimensions":["a","b","c","d","e"],"unit_price":"1"}]`, "", ip, "prices[0].dimensions", "at most 4"},
		{"duplicate dimension", "", `[{"event_type":"e","account":"default:USD","dimensions":["a","a"],"unit_price":"1"}]`, "", ip, "prices[0].dimensions[1]", "twice"},
		{"empty dimension", "", `[{"event_type":"e","account":"default:USD","dimensions":[""],"unit_price":"1"}]`, "", ip, "prices[0].dimensions[0]", "1-64"},
		{"long dimension", "", `[{"event_type":"e","account":"default:USD","dimensions":["` + strings.Repeat("d", 65) + `"],"unit_price":"1"}]`, "", ip, "prices[0].dimensions[0]", "1-64"},
		{"negative top-level", "", `[{"event_type":"e","account":"default:USD","unit_price":"-1"}]`, "", ip, "prices[0].unit_price", "negative"},
		{"top-level too large", "", `[{"event_type":"e","account":"default:USD","unit_price":"1e13"}]`, "", ip, "prices[0].unit_price", "largest amount"},
		{"long field", "", `[{"event_type":"e","account":"default:USD","components":[{"field":"` + strings.Repeat("f", 65) + `","unit_price":"1"}]}]`, "", ip, "prices[0].components[0].field", "1-64"},
		{"missing unit_price", "", `[{"event_type":"e","account":"default:USD","components":[{"field":"x"}]}]`, "", ip, "prices[0].components[0].unit_price", "required"},
		{"zero package", "", `[{"event_type":"e","account":"default:USD","components":[{"field":"x","package_size":"0","unit_price":"1"}]}]`, "", ip, "prices[0].components[0].package_size", "positive"},
		{"negative package", "", `[{"event_type":"e","account":"default:USD","components":[{"field":"x","package_size":-5,"unit_price":"1"}]}]`, "", ip, "prices[0].components[0].package_size", "positive"},
		{"package without field", "", `[{"event_type":"e","account":"default:USD","components":[{"package_size":"5","unit_price":"1"}]}]`, "", ip, "prices[0].components[0].package_size", "needs a field"},
		{"negative component price", "", `[{"event_type":"e","account":"default:USD","components":[{"field":"x","unit_price":"-0.1"}]}]`, "", ip, "prices[0].components[0].unit_price", "negative"},
		{"map without dimensions", "", `[{"event_type":"e","account":"default:USD","components":[{"field":"x","unit_price":{"*":"1"}}]}]`, "", ip, "prices[0].components[0].unit_price", "needs dimensions"},
		{"empty map", "", `[{"event_type":"e","account":"default:USD","dimensions":["m"],"components":[{"field":"x","unit_price":{}}]}]`, "", ip, "prices[0].components[0].unit_price", "at least one entry"},
		{"negative map entry", "", `[{"event_type":"m","account":"default:USD","dimensions":["model"],"components":[{"field":"x","unit_price":{"*":"1"}},{"field":"y","unit_price":{"a":"1","gpt-4-1":"-2"}}]}]`, "", ip, "prices[0].components[1].unit_price.gpt-4-1", "negative"},
		{"bad map number", "", `[{"event_type":"m","account":"default:USD","dimensions":["model"],"components":[{"field":"y","unit_price":{"gpt-4-1":"2,5"}}]}]`, "", ip, "prices[0].components[0].unit_price.gpt-4-1", "not a decimal"},
		{"multi key arity", "", `[{"event_type":"m","account":"default:USD","dimensions":["model","region"],"components":[{"field":"y","unit_price":{"gpt":"2"}}]}]`, "", ip, "prices[0].components[0].unit_price.gpt", "model/region"},
		{"multi key empty part", "", `[{"event_type":"m","account":"default:USD","dimensions":["model","region"],"components":[{"field":"y","unit_price":{"gpt/":"2"}}]}]`, "", ip, "prices[0].components[0].unit_price.gpt/", "non-empty"},
		{"key empty", "", `[{"event_type":"m","account":"default:USD","dimensions":["model"],"components":[{"field":"y","unit_price":{"":"2"}}]}]`, "", ip, "prices[0].components[0].unit_price.", "1-256"},
		{"too many prices", "", repeatJSON(1025, func(i int) string {
			return `{"event_type":"e` + strconv.Itoa(i) + `","account":"default:USD","unit_price":"1"}`
		}), "",
			"pricing_limit_exceeded", "prices", "1024 prices"},
		{"too many components", "", `[{"event_type":"e","account":"default:USD","components":` + repeatJSON(17, func(int) string { return `{"unit_price":"1"}` }) + `}]`, "",
			"pricing_limit_exceeded", "prices[0].components", "16 components"},
		{"too many map entries", "", `[{"event_type":"e","account":"default:USD","dimensions":["m"],"unit_price":{` +
			strings.Trim(repeatJSON(1025, func(i int) string { return `"k` + strconv.Itoa(i) + `":"1"` }), "[]") + `}}]`, "",
			"pricing_limit_exceeded", "prices[0].unit_price", "1024 entries"},

		{"offer currency", "", "", `[{"currency":"usd","account":"default:CREDITS","min":"1","max":"2","tiers":[{"from":"1","credits_per_unit":"1"}]}]`, ip, "topup_offers[0].currency", "1-16"},
		{"offer account", "", "", `[{"currency":"USD","account":"default:XYZ","min":"1","max":"2","tiers":[{"from":"1","credits_per_unit":"1"}]}]`, ip, "topup_offers[0].account", "not defined"},
		{"offer min missing", "", "", offer(`"max":"2","tiers":[{"from":"1","credits_per_unit":"1"}]`), ip, "topup_offers[0].min", "required"},
		{"offer min zero", "", "", offer(`"min":"0","max":"2","tiers":[{"from":"0","credits_per_unit":"1"}]`), ip, "topup_offers[0].min", "positive"},
		{"offer max missing", "", "", offer(`"min":"1","tiers":[{"from":"1","credits_per_unit":"1"}]`), ip, "topup_offers[0].max", "required"},
		{"offer max below min", "", "", offer(`"min":"10","max":"9.99","tiers":[{"from":"10","credits_per_unit":"1"}]`), ip, "topup_offers[0].max", "below min"},
		{"offer no tiers", "", "", offer(`"min":"10","max":"20","tiers":[]`), ip, "topup_offers[0].tiers", "at least one tier"},
		{"offer first tier", "", "", offer(`"min":"10","max":"20","tiers":[{"from":"11","credits_per_unit":"1"}]`), ip, "topup_offers[0].tiers[0].from", "start at min (10)"},
		{"offer tiers not ascending", "", "", offer(`"min":"10","max":"20","tiers":[{"from":"10","credits_per_unit":"1"},{"from":"15","credits_per_unit":"2"},{"from":"15.0","credits_per_unit":"3"}]`), ip, "topup_offers[0].tiers[2].from", "greater than the previous"},
		{"offer tier above max", "", "", offer(`"min":"10","max":"20","tiers":[{"from":"10","credits_per_unit":"1"},{"from":"21","credits_per_unit":"2"}]`), ip, "topup_offers[0].tiers[1].from", "exceed max"},
		{"offer tier rate zero", "", "", offer(`"min":"10","max":"20","tiers":[{"from":"10","credits_per_unit":"0"}]`), ip, "topup_offers[0].tiers[0].credits_per_unit", "positive"},
		{"offer tier rate missing", "", "", offer(`"min":"10","max":"20","tiers":[{"from":"10"}]`), ip, "topup_offers[0].tiers[0].credits_per_unit", "required"},
		{"offer tier from missing", "", "", offer(`"min":"10","max":"20","tiers":[{"credits_per_unit":"1"}]`), ip, "topup_offers[0].tiers[0].from", "required"},
		{"offer duplicate currency", "", "", `[{"currency":"USD","account":"default:CREDITS","min":"1","max":"2","tiers":[{"from":"1","credits_per_unit":"1"}]},{"currency":"USD","account":"other:CREDITS","min":"1","max":"2","tiers":[{"from":"1","credits_per_unit":"1"}]}]`, ip, "topup_offers[1].currency", "already sells"},
		{"too many offers", "", "", repeatJSON(65, func(i int) string {
			return `{"currency":"C` + strconv.Itoa(i) + `","account":"default:CREDITS","min":"1","max":"2","tiers":[{"from":"1","credits_per_unit":"1"}]}`
		}), "pricing_limit_exceeded", "topup_offers", "64 top-up offers"},
		{"too many tiers", "", "", offer(`"min":"1","max":"100","tiers":` + repeatJSON(33, func(i int) string {
			return `{"from":"` + strconv.Itoa(i+1) + `","credits_per_unit":"1"}`
		})), "pricing_limit_exceeded", "topup_offers[0].tiers", "32 tiers"},
	}
	for _, tt := range tests {
		wantErr(t, tt.name, compileDoc(tt.assets, tt.prices, tt.offers), tt.code, tt.field, tt.msg)
	}
}

func TestCompileAccepts(t *testing.T) {
	for _, prices := range []string{
		// A top-level map, integers as decimals, four dimensions, "*" only.
		`[{"event_type":"a.b:c-d_e","account":"x.y-z_1:USD","dimensions":["m"],"unit_price":{"k":1,"*":"0"}}]`,
		`[{"event_type":"e","account":"default:USD","dimensions":["a","b","c","d"],"components":[{"field":"n","unit_price":{"1/2/3/4":"1","*":"2"}}]}]`,
		// Same event type for two accounts.
		`[{"event_type":"e","account":"default:USD","unit_price":"1"},{"event_type":"e","account":"default:CREDITS","unit_price":"1"}]`,
		// Extreme but in-range decimals.
		`[{"event_type":"e","account":"default:USD","components":[{"field":"n","package_size":"1e64","unit_price":"9999999999999999999e45"}]}]`,
	} {
		if err := compileDoc("", prices, ""); err != nil {
			t.Errorf("%s: %v", prices, err)
		}
	}
}

func TestAssetImmutable(t *testing.T) {
	prev := mustCompile(t, exampleDoc)
	compile := func(assets string) error {
		d, err := ParseDocument([]byte(`{"assets":` + assets + `}`))
		if err != nil {
			t.Fatal(err)
		}
		_, err = Compile(d, 2, prev)
		return err
	}
	wantErr(t, "removed", compile(`[{"code":"CREDITS","scale":0},{"code":"USD","scale":6}]`), "asset_immutable", "assets", "TOK")
	wantErr(t, "rescaled", compile(`[{"code":"TOK","scale":0},{"code":"USD","scale":2},{"code":"CREDITS","scale":0}]`), "asset_immutable", "assets[1].scale", "USD")
	if err := compile(`[{"code":"TOK","scale":0},{"code":"EUR","scale":2},{"code":"USD","scale":6},{"code":"CREDITS","scale":0}]`); err != nil {
		t.Errorf("reordered and added assets: %v", err)
	}
	if _, err := Compile(&Document{}, 1, Empty()); err != nil {
		t.Errorf("after Empty(): %v", err)
	}
}

func FuzzParseDocument(f *testing.F) {
	f.Add([]byte(exampleDoc))
	f.Add([]byte(exampleCanonical))
	f.Add([]byte(`{"assets":[{"code":"USD","scale":9}],"prices":[{"event_type":"e","account":"a:USD","dimensions":["a","b"],"components":[{"field":"n","package_size":"3","unit_price":{"x/y":"1e-5","*":7}}]}]}`))
	f.Add([]byte(`{"prices":[{"unit_price":2.5}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := ParseDocument(b)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %T is not an *Error", err)
			}
			return
		}
		p, err := Compile(doc, 1, nil)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %T is not an *Error", err)
			}
			return
		}
		doc2, err := ParseDocument(p.JSON())
		if err != nil {
			t.Fatalf("canonical JSON %s does not parse: %v", p.JSON(), err)
		}
		p2, err := Compile(doc2, 1, p)
		if err != nil {
			t.Fatalf("canonical JSON %s does not compile: %v", p.JSON(), err)
		}
		if !bytes.Equal(p.JSON(), p2.JSON()) {
			t.Fatalf("canonical JSON is not stable:\n%s\n%s", p.JSON(), p2.JSON())
		}
		// Rating any event of a compiled pricing must not panic.
		for _, pr := range doc.Prices {
			ev := &Event{EventType: pr.EventType, Data: []Field{{Key: "n", Kind: FieldNumber, Text: "12.5"}}}
			for _, d := range pr.Dimensions {
				ev.Data = append(ev.Data, Field{Key: d, Kind: FieldString, Text: "x"})
			}
			for _, c := range pr.Components {
				if c.Field != "" {
					ev.Data = append(ev.Data, Field{Key: c.Field, Kind: FieldNumber, Text: "1e3"})
				}
			}
			_, _, _ = p.Rate(ev, nil)
		}
	})
}

// auto_reload_limits bound the threshold customers set on an account, in
// the asset's units; the canonical document keeps them, and a document
// without them is written as before.
func TestReloadLimits(t *testing.T) {
	const assets = `"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":2}],"prices":[]`
	p := mustCompile(t, `{`+assets+`,"auto_reload_limits":[
	 {"account":"default:CREDITS","threshold_min":"1000","threshold_max":"9999","threshold_default":2000},
	 {"account":"wallet:USD","threshold_min":"0.50"}]}`)
	l, ok := p.ReloadLimits("default:CREDITS")
	if !ok || *l.Min != 1000 || *l.Max != 9999 || *l.Default != 2000 {
		t.Fatalf("default:CREDITS: %+v %v", l, ok)
	}
	if l, ok := p.ReloadLimits("wallet:USD"); !ok || *l.Min != 50 || l.Max != nil || l.Default != nil {
		t.Fatalf("wallet:USD: %+v %v", l, ok)
	}
	if _, ok := p.ReloadLimits("other:CREDITS"); ok {
		t.Fatal("limits for an account the document does not name")
	}
	want := `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":2}],"prices":[],"topup_offers":[],` +
		`"auto_reload_limits":[{"account":"default:CREDITS","threshold_min":"1000","threshold_max":"9999","threshold_default":"2000"},` +
		`{"account":"wallet:USD","threshold_min":"0.5"}]}` // decimals in their plain form
	if got := string(p.JSON()); got != want {
		t.Errorf("canonical JSON\n%s\nwant\n%s", got, want)
	}
	if got := string(mustCompile(t, `{`+assets+`}`).JSON()); strings.Contains(got, "auto_reload_limits") {
		t.Errorf("a document without limits: %s", got)
	}
	for doc, field := range map[string]string{
		`{` + assets + `,"auto_reload_limits":[{"account":"default:CREDITS","threshold_min":"10","threshold_max":"9"}]}`:     "auto_reload_limits[0].threshold_max",
		`{` + assets + `,"auto_reload_limits":[{"account":"default:CREDITS","threshold_min":"10","threshold_default":"9"}]}`: "auto_reload_limits[0].threshold_default",
		`{` + assets + `,"auto_reload_limits":[{"account":"default:CREDITS","threshold_min":"1.5"}]}`:                        "auto_reload_limits[0].threshold_min",
		`{` + assets + `,"auto_reload_limits":[{"account":"default:TOK"}]}`:                                                  "auto_reload_limits[0].account",
		`{` + assets + `,"auto_reload_limits":[{"account":"a:CREDITS"},{"account":"a:CREDITS"}]}`:                            "auto_reload_limits[1].account",
		`{` + assets + `,"auto_reload_limits":[{"account":"a:CREDITS","threshold":"1"}]}`:                                    "auto_reload_limits[0].threshold",
	} {
		d, err := ParseDocument([]byte(doc))
		if err == nil {
			_, err = Compile(d, 1, nil)
		}
		var me *Error
		if !errors.As(err, &me) || me.Field != field {
			t.Errorf("%s: %v, want an error about %s", doc, err, field)
		}
	}
}

// refund_rules: a window and an optional allowance per kind of purchase,
// kept in the canonical document.
func TestRefundRules(t *testing.T) {
	const assets = `"assets":[{"code":"CREDITS","scale":0}],"prices":[]`
	p := mustCompile(t, `{`+assets+`,"refund_rules":{"topup":{"window":"48h","max_used":"999"},"plan_grant":{"window":"24h"}}}`)
	if r, ok := p.RefundRule("topup"); !ok || r.Window != 48*time.Hour || r.MaxUsed == nil || r.MaxUsed.String() != "999" {
		t.Fatalf("topup: %+v %v", r, ok)
	}
	if r, ok := p.RefundRule("plan_grant"); !ok || r.Window != 24*time.Hour || r.MaxUsed != nil {
		t.Fatalf("plan_grant: %+v %v", r, ok)
	}
	if want := `{"assets":[{"code":"CREDITS","scale":0}],"prices":[],"topup_offers":[],"refund_rules":{"topup":{"window":"48h","max_used":"999"},"plan_grant":{"window":"24h"}}}`; string(p.JSON()) != want {
		t.Errorf("canonical JSON\n%s\nwant\n%s", p.JSON(), want)
	}
	if _, ok := mustCompile(t, `{`+assets+`}`).RefundRule("topup"); ok {
		t.Error("a rule without refund_rules")
	}
	for doc, field := range map[string]string{
		`{` + assets + `,"refund_rules":{"topup":{"window":"two days"}}}`:                "refund_rules.topup.window",
		`{` + assets + `,"refund_rules":{"topup":{"window":"-1h"}}}`:                     "refund_rules.topup.window",
		`{` + assets + `,"refund_rules":{"plan_grant":{"window":"1h","max_used":"-1"}}}`: "refund_rules.plan_grant.max_used",
		`{` + assets + `,"refund_rules":{"adjustment":{"window":"1h"}}}`:                 "refund_rules.adjustment",
	} {
		d, err := ParseDocument([]byte(doc))
		if err == nil {
			_, err = Compile(d, 1, nil)
		}
		var me *Error
		if !errors.As(err, &me) || me.Field != field {
			t.Errorf("%s: %v, want an error about %s", doc, err, field)
		}
	}
}
