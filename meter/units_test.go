package meter

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestParseUnits(t *testing.T) {
	max := strconv.FormatInt(MaxUnits, 10)
	tests := []struct {
		s     string
		scale uint8
		want  int64
	}{
		{"0", 0, 0},
		{"-0", 0, 0},
		{"40", 0, 40},
		{"-40", 0, -40},
		{"007", 0, 7},
		{"14.566678", 6, 14566678},
		{"0.31", 6, 310000},
		{"0.31", 2, 31},
		{"1.5", 1, 15},
		{"-1.5", 6, -1500000},
		{"25", 6, 25000000},
		{"0.000001", 6, 1},
		{"0.000000001", 9, 1},
		{"1.000000000", 9, 1000000000},
		{"999999999.999999999", 9, 999999999999999999},
		{"1000000000", 9, MaxUnits},
		{"-1000000000", 9, -MaxUnits},
		{"1000000000.000000000", 9, MaxUnits},
		{max, 0, MaxUnits},
		{"-" + max, 0, -MaxUnits},
		{"100000000000", 6, 100000000000000000},
	}
	for _, tt := range tests {
		got, err := ParseUnits(tt.s, tt.scale)
		if err != nil || got != tt.want {
			t.Errorf("ParseUnits(%q, %d) = %d, %v; want %d", tt.s, tt.scale, got, err, tt.want)
		}
	}
}

func TestParseUnitsRejects(t *testing.T) {
	tests := []struct {
		s     string
		scale uint8
		msg   string // a part of the message
	}{
		{"", 2, "empty"},
		{"+1", 2, "'+'"},
		{"1e3", 2, "exponent"},
		{"1E3", 2, "exponent"},
		{"1.5e1", 2, "exponent"},
		{" 1", 2, "digits"},
		{"1 ", 2, "spaces"},
		{"1 000", 2, "spaces"},
		{".", 2, "before the decimal point"},
		{".5", 2, "before the decimal point"},
		{"-.5", 2, "before the decimal point"},
		{"1.", 2, "after the decimal point"},
		{"-", 2, "digits"},
		{"--1", 2, "digits"},
		{"1.2.3", 2, "unexpected character"},
		{"1,5", 2, "unexpected character"},
		{"0x10", 2, "unexpected character"},
		{"abc", 2, "digits"},
		{"1.5", 0, "whole number"},
		{"1.0", 0, "whole number"},
		{"1.50", 1, "2 digits after the decimal point; the asset allows at most 1"},
		{"0.1234567", 6, "7 digits"},
		{"1.0000000000", 9, "10 digits"},
		{"1000000000000000001", 0, "exceeds"},
		{"-1000000000000000001", 0, "exceeds"},
		{"99999999999999999999999", 0, "exceeds"},
		{"1000000000.000000001", 9, "exceeds"},
		{"1000000000000.000001", 6, "exceeds"},
		{"1000000000001", 6, "exceeds"},
		{"18446744073709551616", 0, "exceeds"},
		{strings.Repeat("0", 65), 0, "longer than 64"},
		{"1", 10, "scale"},
		{"NaN", 2, "digits"},
		{"Infinity", 2, "digits"},
	}
	for _, tt := range tests {
		got, err := ParseUnits(tt.s, tt.scale)
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("ParseUnits(%q, %d) = %d, %v; want an *Error", tt.s, tt.scale, got, err)
			continue
		}
		if e.Code != "invalid_amount" || !strings.Contains(e.Message, tt.msg) {
			t.Errorf("ParseUnits(%q, %d): %v; want invalid_amount mentioning %q", tt.s, tt.scale, err, tt.msg)
		}
	}
}

func TestFormatUnits(t *testing.T) {
	tests := []struct {
		u     int64
		scale uint8
		want  string
	}{
		{14566678, 6, "14.566678"},
		{310000, 6, "0.31"},
		{0, 6, "0"},
		{0, 0, "0"},
		{-1500000, 6, "-1.5"},
		{40, 0, "40"},
		{-40, 0, "-40"},
		{1, 9, "0.000000001"},
		{-1, 9, "-0.000000001"},
		{1000000000, 9, "1"},
		{MaxUnits, 9, "1000000000"},
		{-MaxUnits, 0, "-1000000000000000000"},
		{-9223372036854775808, 0, "-9223372036854775808"},
		{9223372036854775807, 9, "9223372036.854775807"},
		{120, 2, "1.2"},
	}
	for _, tt := range tests {
		if got := FormatUnits(tt.u, tt.scale); got != tt.want {
			t.Errorf("FormatUnits(%d, %d) = %q; want %q", tt.u, tt.scale, got, tt.want)
		}
		if got := string(AppendUnits([]byte("x"), tt.u, tt.scale)); got != "x"+tt.want {
			t.Errorf("AppendUnits(%d, %d) = %q; want %q", tt.u, tt.scale, got, "x"+tt.want)
		}
	}
}

func TestUnitsRoundTrip(t *testing.T) {
	for scale := uint8(0); scale <= 9; scale++ {
		for _, u := range []int64{0, 1, -1, 7, 10, 999, 1000, 123456789, -MaxUnits, MaxUnits, MaxUnits - 1, 1 << 40} {
			s := FormatUnits(u, scale)
			got, err := ParseUnits(s, scale)
			if err != nil || got != u {
				t.Errorf("scale %d: ParseUnits(FormatUnits(%d)=%q) = %d, %v", scale, u, s, got, err)
			}
		}
	}
}

func TestAppendUnitsAllocs(t *testing.T) {
	buf := make([]byte, 0, 32)
	allocs := testing.AllocsPerRun(100, func() { buf = AppendUnits(buf[:0], -14566678, 6) })
	if allocs != 0 {
		t.Errorf("AppendUnits allocates %v times", allocs)
	}
	allocs = testing.AllocsPerRun(100, func() { _, _ = ParseUnits("14.566678", 6) })
	if allocs != 0 {
		t.Errorf("ParseUnits allocates %v times", allocs)
	}
}

func TestFormatFine(t *testing.T) {
	tests := []struct {
		f     Fine
		scale uint8
		want  string
	}{
		{Fine{0, 0}, 6, "0"},
		{Fine{282282, 0}, 6, "0.282282"},
		{Fine{0, 300000000000000000}, 6, "0.0000003"},
		{Fine{0, 333333333333333333}, 0, "0.333333333333333333"},
		{Fine{0, 1}, 9, "0.000000000000000000000000001"},
		{Fine{40, 0}, 0, "40"},
		{Fine{12, 500000000000000000}, 1, "1.25"},
		{Fine{-2, 500000000000000000}, 0, "-1.5"},
		{Fine{-1, 0}, 2, "-0.01"},
		{Fine{MaxUnits, 999999999999999999}, 0, "1000000000000000000.999999999999999999"},
		{Fine{1, 2500000000000000000}, 0, "3.5"},
	}
	for _, tt := range tests {
		if got := FormatFine(tt.f, tt.scale); got != tt.want {
			t.Errorf("FormatFine(%+v, %d) = %q; want %q", tt.f, tt.scale, got, tt.want)
		}
	}
}

func FuzzParseUnits(f *testing.F) {
	for _, s := range []string{"0", "-1.5", "14.566678", "1.50", "1e3", "", ".", "1000000000000000000", "+1", "0.000000001"} {
		for _, scale := range []uint8{0, 2, 6, 9} {
			f.Add(s, scale)
		}
	}
	f.Fuzz(func(t *testing.T, s string, scale uint8) {
		scale %= 10
		u, err := ParseUnits(s, scale)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != "invalid_amount" || e.Message == "" {
				t.Fatalf("ParseUnits(%q, %d): error %#v is not an invalid_amount *Error", s, scale, err)
			}
			return
		}
		if u > MaxUnits || u < -MaxUnits {
			t.Fatalf("ParseUnits(%q, %d) = %d: out of bounds", s, scale, u)
		}
		text := FormatUnits(u, scale)
		back, err := ParseUnits(text, scale)
		if err != nil || back != u {
			t.Fatalf("ParseUnits(%q, %d) = %d; FormatUnits = %q re-parses to %d, %v", s, scale, u, text, back, err)
		}
	})
}

func BenchmarkParseUnits(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseUnits("14.566678", 6); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendUnits(b *testing.B) {
	b.ReportAllocs()
	buf := make([]byte, 0, 32)
	for b.Loop() {
		buf = AppendUnits(buf[:0], 14566678, 6)
	}
}
