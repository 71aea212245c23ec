package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/meterd/meterd/balance"
)

func TestApplyPricingFile(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng, err := balance.Open(balance.Options{Dir: t.TempDir(), Shards: 1, DefaultPricing: defaultPricing, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if v := eng.Pricing().Version; v != 1 {
		t.Fatalf("a fresh store starts at version %d, want 1 (the embedded default)", v)
	}
	doc := `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],
	  "prices":[{"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"}]}`
	for i, want := range []uint32{2, 2} { // the same file twice: one new version
		if err := applyPricingFile(eng, []byte(doc), log); err != nil {
			t.Fatal(err)
		}
		if v := eng.Pricing().Version; v != want {
			t.Fatalf("apply %d: version %d, want %d", i, v, want)
		}
	}
	if err := applyPricingFile(eng, []byte(strings.Replace(doc, `"40"`, `"41"`, 1)), log); err != nil {
		t.Fatal(err)
	}
	if v := eng.Pricing().Version; v != 3 {
		t.Fatalf("a changed file: version %d, want 3", v)
	}
	err = applyPricingFile(eng, []byte(`{"assets":[{"code":"CREDITS","scale":2}],"prices":[]}`), log)
	if err == nil || !strings.Contains(err.Error(), "asset_immutable") {
		t.Fatalf("a rescaled asset: %v, want asset_immutable", err)
	}
	if v := eng.Pricing().Version; v != 3 {
		t.Fatalf("a refused file changed the version to %d", v)
	}
}
