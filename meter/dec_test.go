package meter

import (
	"encoding/json"
	"errors"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestParseDec(t *testing.T) {
	tests := []struct {
		in, want string
		coef     uint64
		exp      int16
	}{
		{"0", "0", 0, 0},
		{"-0", "0", 0, 0},
		{"0.000", "0", 0, 0},
		{"0e9999", "0", 0, 0},
		{"2353", "2353", 2353, 0},
		{"2.00", "2", 2, 0},
		{"1.5", "1.5", 15, -1},
		{"-1.5", "-1.5", 15, -1},
		{"1e3", "1000", 1, 3},
		{"1E+3", "1000", 1, 3},
		{"1000000", "1000000", 1, 6},
		{"2.5E-7", "0.00000025", 25, -8},
		{"0.0000003", "0.0000003", 3, -7},
		{"100.5", "100.5", 1005, -1},
		{"10.010", "10.01", 1001, -2},
		{"1234567890123456789", "1234567890123456789", 1234567890123456789, 0},
		{"9999999999999999999", "9999999999999999999", 9999999999999999999, 0},
		{"10000000000000000000000", "10000000000000000000000", 1, 22},
		{"1e64", "1" + strings.Repeat("0", 64), 1, 64},
		{"1e-64", "0." + strings.Repeat("0", 63) + "1", 1, -64},
		{"0.1e-63", "0." + strings.Repeat("0", 63) + "1", 1, -64},
	}
	for _, tt := range tests {
		d, err := ParseDec(tt.in)
		if err != nil {
			t.Errorf("ParseDec(%q): %v", tt.in, err)
			continue
		}
		if d.coef != tt.coef || d.exp != tt.exp || d.String() != tt.want {
			t.Errorf("ParseDec(%q) = %d e%d %q; want %d e%d %q", tt.in, d.coef, d.exp, d, tt.coef, tt.exp, tt.want)
		}
		back, err := ParseDec(d.String())
		if err != nil || back != d {
			t.Errorf("ParseDec(%q).String() = %q does not round-trip: %v %v", tt.in, d, back, err)
		}
	}
}

func TestParseDecRejects(t *testing.T) {
	for _, in := range []string{
		"", "-", "+1", "01", "-01", "00", ".5", "1.", "1e", "1e+", "1.e3", "1x", " 1", "1 ", "NaN", "Infinity", "0x10",
		"12345678901234567891", // 20 significant digits
		"1.0000000000000000001",
		"1e65", "1e-65", "1e99999999999999999999", "0E0010000000000000000000", "0e10000", "1e-9999",
		"1" + strings.Repeat("0", 130),
	} {
		d, err := ParseDec(in)
		var e *Error
		if !errors.As(err, &e) || e.Code != "invalid_number" || e.Message == "" {
			t.Errorf("ParseDec(%q) = %v, %v; want an invalid_number *Error", in, d, err)
		}
	}
}

func TestDecCmp(t *testing.T) {
	ordered := []string{"-1000", "-1.5", "-0.0001", "0", "0.00000025", "0.0000003", "1", "1.25", "2", "10", "300", "1e3", "1234567890123456789", "1e20"}
	for i, a := range ordered {
		for j, b := range ordered {
			da, _ := ParseDec(a)
			db, _ := ParseDec(b)
			want := cmpInt(i, j)
			if a == "1e3" && b == "1e3" || i == j {
				want = 0
			}
			if got := da.Cmp(db); got != want {
				t.Errorf("Cmp(%s, %s) = %d; want %d", a, b, got, want)
			}
		}
	}
}

func TestDecUnits(t *testing.T) {
	tests := []struct {
		in    string
		scale uint8
		want  int64
		ok    bool
	}{
		{"15.00", 2, 1500, true},
		{"0.001", 2, 0, false},
		{"120", 6, 120000000, true},
		{"-1.5", 1, -15, true},
		{"1e18", 0, MaxUnits, true},
		{"1e19", 0, 0, false},
		{"1e9", 9, MaxUnits, true},
		{"1.000000001e9", 9, 0, false},
		{"0", 9, 0, true},
		{"1e-30", 9, 0, false},
	}
	for _, tt := range tests {
		d, _ := ParseDec(tt.in)
		got, ok := d.Units(tt.scale)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseDec(%q).Units(%d) = %d, %v; want %d, %v", tt.in, tt.scale, got, ok, tt.want, tt.ok)
		}
	}
}

func TestDecJSON(t *testing.T) {
	var d Dec
	if err := json.Unmarshal([]byte(`"2.50"`), &d); err != nil || d.String() != "2.5" {
		t.Errorf("unmarshal string: %v %v", d, err)
	}
	if err := json.Unmarshal([]byte(`40`), &d); err != nil || d.String() != "40" {
		t.Errorf("unmarshal integer: %v %v", d, err)
	}
	if err := json.Unmarshal([]byte(`2.5`), &d); err == nil {
		t.Errorf("unmarshal float accepted")
	}
	b, err := json.Marshal(d)
	if err != nil || string(b) != `"40"` {
		t.Errorf("marshal: %s %v", b, err)
	}
}

func FuzzParseDec(f *testing.F) {
	for _, s := range []string{"0", "-1.5", "2.00", "1e3", "2.5E-7", "100.5", "1e64", "01", "1.", "9999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDec(s)
		if err != nil {
			if e, ok := err.(*Error); !ok || e.Code != "invalid_number" {
				t.Fatalf("ParseDec(%q): %#v", s, err)
			}
			return
		}
		want, ok := new(big.Rat).SetString(s)
		if !ok {
			t.Fatalf("ParseDec accepted %q, which math/big rejects", s)
		}
		got, _ := new(big.Rat).SetString(d.String())
		if got.Cmp(want) != 0 {
			t.Fatalf("ParseDec(%q) = %s", s, d)
		}
		if back, err := ParseDec(d.String()); err != nil || back != d {
			t.Fatalf("ParseDec(%q).String() = %q re-parses to %v, %v", s, d, back, err)
		}
	})
}

func TestScaledFloorMatchesBig(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() uint64 {
		switch rng.IntN(4) {
		case 0:
			return rng.Uint64N(10) + 1
		case 1:
			return rng.Uint64N(1_000_000) + 1
		case 2:
			return rng.Uint64N(pow10[19]) + 1
		}
		return pow10[rng.IntN(20)] * (rng.Uint64N(9) + 1) / 10 * 10
	}
	limit := new(big.Int).Mul(big.NewInt(MaxUnits), new(big.Int).SetUint64(SubUnitsPerUnit))
	for range 200_000 {
		a, b, d := pick(), pick(), pick()
		if d == 0 {
			d = 1
		}
		e := rng.IntN(120) - 60
		n := new(big.Int).Mul(new(big.Int).SetUint64(a), new(big.Int).SetUint64(b))
		q := new(big.Int).SetUint64(d)
		if e >= 0 {
			n.Mul(n, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(e)), nil))
		} else {
			q.Mul(q, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(-e)), nil))
		}
		want := n.Quo(n, q)
		got, ok := scaledFloor(a, b, e, d)
		if want.Cmp(limit) > 0 {
			if ok {
				t.Fatalf("scaledFloor(%d, %d, %d, %d) = %v; want overflow", a, b, e, d, got)
			}
			continue
		}
		g := new(big.Int).SetUint64(got.hi)
		g.Lsh(g, 64).Add(g, new(big.Int).SetUint64(got.lo))
		if !ok || g.Cmp(want) != 0 {
			t.Fatalf("scaledFloor(%d, %d, %d, %d) = %v, %v; want %v", a, b, e, d, g, ok, want)
		}
	}
}
