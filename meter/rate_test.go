package meter

import (
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

func num(key, text string) Field { return Field{Key: key, Kind: FieldNumber, Text: text} }
func str(key, text string) Field { return Field{Key: key, Kind: FieldString, Text: text} }

func messageCompleted(model string) *Event {
	return &Event{ID: "evt_1", CustomerID: "c1", EventType: "message_completed",
		Data: []Field{str("model", model), num("input_tokens", "2353"), num("output_tokens", "34697")}}
}

func rateOne(t *testing.T, p *Pricing, ev *Event) Charge {
	t.Helper()
	charges, matched, err := p.Rate(ev, nil)
	if err != nil || !matched || len(charges) != 1 {
		t.Fatalf("Rate(%s) = %+v, %v, %v", ev.EventType, charges, matched, err)
	}
	return charges[0]
}

func TestRateExample(t *testing.T) {
	p := mustCompile(t, exampleDoc)

	// 2353 * 2.00/1e6 + 34697 * 8.00/1e6 = 0.004706 + 0.277576 = 0.282282 USD.
	c := rateOne(t, p, messageCompleted("gpt-4-1"))
	want := Charge{Account: "default:USD", Name: "default", Asset: "USD", Scale: 6, Amount: Fine{Units: 282282, Sub: 0}}
	if c != want {
		t.Errorf("gpt-4-1: %+v; want %+v", c, want)
	}

	// "*": 2353 * 1.25/1e6 + 34697 * 5.00/1e6 = 0.00294125 + 0.173485 = 0.17642625 USD.
	c = rateOne(t, p, messageCompleted("claude"))
	if c.Amount != (Fine{Units: 176426, Sub: 250000000000000000}) || FormatFine(c.Amount, 6) != "0.17642625" {
		t.Errorf("*: %+v (%s)", c.Amount, FormatFine(c.Amount, 6))
	}

	// A missing dimension falls back to "*" too.
	ev := messageCompleted("x")
	ev.Data = ev.Data[1:]
	if c = rateOne(t, p, ev); c.Amount.Units != 176426 {
		t.Errorf("missing model: %+v", c.Amount)
	}

	c = rateOne(t, p, &Event{EventType: "image_generated"})
	want = Charge{Account: "default:CREDITS", Name: "default", Asset: "CREDITS", Scale: 0, Amount: Fine{Units: 40}}
	if c != want {
		t.Errorf("image_generated: %+v; want %+v", c, want)
	}

	charges, matched, err := p.Rate(&Event{EventType: "video_generated"}, nil)
	if matched || err != nil || len(charges) != 0 {
		t.Errorf("unknown type: %v, %v, %v", charges, matched, err)
	}

	// Append semantics: dst's contents are kept.
	dst := []Charge{{Account: "keep"}}
	charges, _, _ = p.Rate(&Event{EventType: "image_generated"}, dst)
	if len(charges) != 2 || charges[0].Account != "keep" || charges[1].Amount.Units != 40 {
		t.Errorf("append: %+v", charges)
	}
}

func TestRateInvalidEvents(t *testing.T) {
	p := mustCompile(t, exampleDoc)
	const fp = `[{"event_type":"e","account":"default:USD","dimensions":["m","r"],"components":[{"field":"n","unit_price":{"a/b":"1"}}]}]`
	multi := mustCompile(t, `{"assets":[{"code":"USD","scale":6}],"prices":`+fp+`}`)
	tests := []struct {
		name  string
		p     *Pricing
		data  []Field
		field string
		msg   string
	}{
		{"missing", p, []Field{str("model", "gpt-4-1"), num("input_tokens", "1")}, "data.output_tokens", "missing"},
		{"negative", p, []Field{str("model", "gpt-4-1"), num("input_tokens", "-1"), num("output_tokens", "1")}, "data.input_tokens", "negative"},
		{"string", p, []Field{str("model", "gpt-4-1"), str("input_tokens", "12"), num("output_tokens", "1")}, "data.input_tokens", "number"},
		{"null", p, []Field{str("model", "gpt-4-1"), {Key: "input_tokens", Kind: FieldNull}, num("output_tokens", "1")}, "data.input_tokens", "number"},
		{"bad literal", p, []Field{str("model", "gpt-4-1"), num("input_tokens", "1e999"), num("output_tokens", "1")}, "data.input_tokens", "supported number"},
		{"too large", p, []Field{str("model", "gpt-4-1"), num("input_tokens", "1e31"), num("output_tokens", "1")}, "data.input_tokens", "charge too large"},
		{"no price", multi, []Field{str("m", "a"), str("r", "c"), num("n", "1")}, "data.m", "no price for m=a, r=c"},
		{"no price missing dimension", multi, []Field{str("m", "a"), num("n", "1")}, "data.r", "r (missing)"},
	}
	for _, tt := range tests {
		ev := &Event{EventType: "message_completed", Data: tt.data}
		if tt.p == multi {
			ev.EventType = "e"
		}
		dst := make([]Charge, 1, 4)
		charges, matched, err := tt.p.Rate(ev, dst)
		wantErr(t, tt.name, err, "invalid_event", tt.field, tt.msg)
		if !matched || len(charges) != 1 {
			t.Errorf("%s: matched=%v charges=%v", tt.name, matched, charges)
		}
	}
	// The sum of components is bounded too.
	big := mustCompile(t, `{"assets":[{"code":"USD","scale":0}],"prices":[{"event_type":"e","account":"a:USD","components":[`+
		`{"field":"n","unit_price":"1"},{"field":"n","unit_price":"1"}]}]}`)
	_, _, err := big.Rate(&Event{EventType: "e", Data: []Field{num("n", "6e17")}}, nil)
	wantErr(t, "sum too large", err, "invalid_event", "", "charge too large")
	c := rateOne(t, big, &Event{EventType: "e", Data: []Field{num("n", "5e17")}})
	if c.Amount != (Fine{Units: MaxUnits}) {
		t.Errorf("5e17*2 = %+v", c.Amount)
	}
}

func TestRateDimensions(t *testing.T) {
	p := mustCompile(t, `{"assets":[{"code":"USD","scale":6},{"code":"TOK","scale":0}],"prices":[
		{"event_type":"e","account":"default:USD","dimensions":["model","region","fast"],
		 "components":[{"field":"n","unit_price":{"gpt/eu/true":"3","gpt/us/false":"2","7/eu/true":"5","*":"1"}},
		               {"unit_price":"0.5"}]},
		{"event_type":"e","account":"default:TOK","unit_price":"1"}]}`)
	tests := []struct {
		data []Field
		want int64 // USD units
	}{
		{[]Field{str("model", "gpt"), str("region", "eu"), {Key: "fast", Kind: FieldBool, Text: "true"}, num("n", "1")}, 3500000},
		{[]Field{str("model", "gpt"), str("region", "us"), {Key: "fast", Kind: FieldBool, Text: "false"}, num("n", "2")}, 4500000},
		{[]Field{num("model", "7"), str("region", "eu"), {Key: "fast", Kind: FieldBool, Text: "true"}, num("n", "1")}, 5500000},
		{[]Field{str("model", "gpt"), str("region", "eu"), {Key: "fast", Kind: FieldString, Text: "true"}, num("n", "1")}, 3500000},
		{[]Field{str("model", "gpt/eu"), str("region", "true"), num("n", "1")}, 1500000},                            // "/" in a value: only "*"
		{[]Field{str("model", "gpt"), str("region", "eu"), {Key: "fast", Kind: FieldNull}, num("n", "1")}, 1500000}, // null: only "*"
		{[]Field{str("model", strings.Repeat("g", 300)), str("region", "eu"), num("fast", "1"), num("n", "1")}, 1500000},
		{[]Field{num("n", "0")}, 500000},
	}
	for _, tt := range tests {
		charges, matched, err := p.Rate(&Event{EventType: "e", Data: tt.data}, nil)
		if err != nil || !matched || len(charges) != 2 {
			t.Fatalf("%v: %v %v %v", tt.data, charges, matched, err)
		}
		if charges[0].Amount != (Fine{Units: tt.want}) || charges[0].Account != "default:USD" {
			t.Errorf("%v: %+v; want %d units", tt.data, charges[0], tt.want)
		}
		if charges[1].Amount != (Fine{Units: 1}) || charges[1].Asset != "TOK" {
			t.Errorf("%v: second charge %+v", tt.data, charges[1])
		}
	}
}

func TestRatePrecision(t *testing.T) {
	tests := []struct {
		scale             uint8
		price, pkg, value string
		units             int64
		sub               uint64
	}{
		// 0.0000003 USD per token at scale 6: 0.3 units.
		{6, "0.0000003", "1", "1", 0, 300000000000000000},
		{6, "0.000001", "1", "1", 1, 0},
		// A repeating fraction is truncated below 10^-18 of a unit.
		{0, "1", "3", "1", 0, 333333333333333333},
		{0, "2", "3", "1", 0, 666666666666666666},
		{6, "1", "3", "1", 333333, 333333333333333333},
		{9, "0.000000001", "7", "1", 0, 142857142857142857},
		// Fractional and exponent values.
		{6, "2", "1000000", "1.5", 3, 0},
		{6, "2", "1000000", "2.5e-7", 0, 500000000000},
		{6, "2", "1000000", "1e3", 2000, 0},
		{0, "40", "1", "0", 0, 0},
		// Below 10^-18 of a unit: nothing.
		{0, "1e-19", "1", "1", 0, 0},
		{0, "1e-18", "1", "1", 0, 1},
		// Huge package sizes and prices are exact (the math/big fallback).
		{9, "9999999999999999999e40", "1e64", "3", 29999, 999999999999997000},
		{0, "1", "1234567890123456789", "9999999999999999999e5", 810000, 7290000066266100},
	}
	for _, tt := range tests {
		p := mustCompile(t, `{"assets":[{"code":"X","scale":`+string(rune('0'+tt.scale))+`}],"prices":[{"event_type":"e","account":"a:X",
			"components":[{"field":"n","package_size":"`+tt.pkg+`","unit_price":"`+tt.price+`"}]}]}`)
		c := rateOne(t, p, &Event{EventType: "e", Data: []Field{num("n", tt.value)}})
		if c.Amount != (Fine{Units: tt.units, Sub: tt.sub}) {
			t.Errorf("%s/%s*%s at scale %d = %+v; want {%d %d}", tt.price, tt.pkg, tt.value, tt.scale, c.Amount, tt.units, tt.sub)
		}
	}
}

// carry accumulates fine charges the way the balance engine does: whole
// units are charged, the sub-unit remainder is carried.
type carry struct {
	units int64
	sub   uint64
}

func (c *carry) add(f Fine) {
	c.units += f.Units
	c.sub += f.Sub
	c.units += int64(c.sub / SubUnitsPerUnit)
	c.sub %= SubUnitsPerUnit
}

func TestRateAcceptanceCarry(t *testing.T) {
	for _, tt := range []struct {
		price, want string
	}{
		{"0.000001", "1"},
		{"0.0000003", "0.3"},
	} {
		p := mustCompile(t, `{"assets":[{"code":"USD","scale":6}],"prices":[{"event_type":"tok","account":"default:USD",
			"components":[{"field":"tokens","unit_price":"`+tt.price+`"}]}]}`)
		ev := &Event{EventType: "tok", Data: []Field{num("tokens", "1")}}
		var acc carry
		dst := make([]Charge, 0, 1)
		for range 1_000_000 {
			charges, _, err := p.Rate(ev, dst[:0])
			if err != nil {
				t.Fatal(err)
			}
			acc.add(charges[0].Amount)
		}
		if got := FormatUnits(acc.units, 6); got != tt.want || acc.sub != 0 {
			t.Errorf("1,000,000 events at %s: %s USD + %d sub-units; want exactly %s", tt.price, got, acc.sub, tt.want)
		}
	}
}

func TestRateAllocs(t *testing.T) {
	p := mustCompile(t, exampleDoc)
	ev := messageCompleted("gpt-4-1")
	dst := make([]Charge, 0, 4)
	if n := testing.AllocsPerRun(1000, func() { _, _, _ = p.Rate(ev, dst[:0]) }); n != 0 {
		t.Errorf("Rate allocates %v times per event", n)
	}
	multi := mustCompile(t, `{"assets":[{"code":"USD","scale":6}],"prices":[{"event_type":"e","account":"a:USD","dimensions":["m","r"],"components":[{"field":"n","unit_price":{"a/b":"1","*":"2"}}]}]}`)
	ev = &Event{EventType: "e", Data: []Field{str("m", "a"), str("r", "b"), num("n", "1.5")}}
	if n := testing.AllocsPerRun(1000, func() { _, _, _ = multi.Rate(ev, dst[:0]) }); n != 0 {
		t.Errorf("Rate with two dimensions allocates %v times per event", n)
	}
}

func BenchmarkRate(b *testing.B) {
	p := mustCompile(b, exampleDoc)
	ev := messageCompleted("gpt-4-1")
	dst := make([]Charge, 0, 4)
	b.ReportAllocs()
	for b.Loop() {
		charges, _, err := p.Rate(ev, dst[:0])
		if err != nil || charges[0].Amount.Units != 282282 {
			b.Fatal(charges, err)
		}
	}
}

func BenchmarkRatePerEvent(b *testing.B) {
	p := mustCompile(b, exampleDoc)
	ev := &Event{EventType: "image_generated"}
	dst := make([]Charge, 0, 4)
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = p.Rate(ev, dst[:0])
	}
}

func BenchmarkCompileExample(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		d, err := ParseDocument([]byte(exampleDoc))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Compile(d, 1, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRateMatchesRat compares Rate with an exact math/big computation on
// random prices, package sizes, values and scales.
func TestRateMatchesRat(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	dec := func(maxExp int) string {
		coef := rng.Uint64N(pow10[rng.IntN(8)+1])
		return strconv.FormatUint(coef, 10) + "e" + strconv.Itoa(rng.IntN(2*maxExp+1)-maxExp)
	}
	limit := new(big.Rat).SetInt64(MaxUnits)
	for range 5000 {
		scale := rng.IntN(10)
		price, pkg, value := dec(12), dec(8), dec(8)
		if d, _ := ParseDec(pkg); d.Sign() == 0 {
			pkg = "1"
		}
		p := mustCompile(t, `{"assets":[{"code":"X","scale":`+strconv.Itoa(scale)+`}],"prices":[{"event_type":"e","account":"a:X",
			"components":[{"field":"n","package_size":"`+pkg+`","unit_price":"`+price+`"}]}]}`)
		charges, _, err := p.Rate(&Event{EventType: "e", Data: []Field{num("n", value)}}, nil)

		r := func(s string) *big.Rat { x, _ := new(big.Rat).SetString(s); return x }
		want := new(big.Rat).Mul(r(value), r(price))
		want.Quo(want, r(pkg))
		want.Mul(want, new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale)), nil)))
		if want.Cmp(limit) > 0 {
			if err == nil {
				t.Fatalf("%s/%s*%s at scale %d: no error for %s units", price, pkg, value, scale, want.FloatString(3))
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s/%s*%s at scale %d: %v", price, pkg, value, scale, err)
		}
		sub := new(big.Int).Mul(want.Num(), new(big.Int).SetUint64(SubUnitsPerUnit))
		sub.Quo(sub, want.Denom())
		units, rem := new(big.Int).QuoRem(sub, new(big.Int).SetUint64(SubUnitsPerUnit), new(big.Int))
		got := charges[0].Amount
		if units.Int64() != got.Units || rem.Uint64() != got.Sub {
			t.Fatalf("%s/%s*%s at scale %d = %+v; want %v %v", price, pkg, value, scale, got, units, rem)
		}
	}
}

func TestParseQuantity(t *testing.T) {
	for _, s := range []string{"0", "7", "2353", "1000", "9999999999999999999", "12345678901234567891", "01", "1.5", "-3", "1e3", "", "12a", "0.0"} {
		c1, e1, n1, m1 := parseQuantity(s)
		c2, e2, n2, m2 := parseNumber(s)
		if (m1 == "") != (m2 == "") || n1 != n2 {
			t.Errorf("parseQuantity(%q) = %d %d %v %q; parseNumber %d %d %v %q", s, c1, e1, n1, m1, c2, e2, n2, m2)
			continue
		}
		if m1 == "" {
			a, _ := new(big.Rat).SetString(strconv.FormatUint(c1, 10) + "e" + strconv.Itoa(e1))
			b, _ := new(big.Rat).SetString(strconv.FormatUint(c2, 10) + "e" + strconv.Itoa(e2))
			if a.Cmp(b) != 0 {
				t.Errorf("parseQuantity(%q) = %v; parseNumber %v", s, a, b)
			}
		}
	}
}
