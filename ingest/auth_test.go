package ingest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	ingestKey  = "mk_live_ingest_0123456789"
	readKey    = "mk_live_read_0123456789ab"
	adminKey   = "mk_live_admin_0123456789a"
	bothKey    = "mk_live_both_0123456789ab"
	unknownKey = "mk_live_unknown_012345678"
)

func hexHash(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

func writeKeys(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testKeys(t *testing.T) *Keys {
	t.Helper()
	k, err := LoadKeys(writeKeys(t, fmt.Sprintf(`keys:
  - name: ingest-prod            # for logs only
    key: %q
    scopes: [ingest]
  - name: analyst
    sha256: %q                   # upper-case hex is fine
    scopes: [read]
  - name: ops
    sha256: %q
    scopes: [admin]
  - name: both
    key: %q
    scopes: [ingest, read, read]
`, ingestKey, strings.ToUpper(hexHash(readKey)), hexHash(adminKey), bothKey)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAuthorize(t *testing.T) {
	k := testKeys(t)
	if k.Len() != 4 {
		t.Fatalf("Len() = %d, want 4", k.Len())
	}
	type result struct {
		status int
		code   string
	}
	ok := result{0, ""}
	unauthorized := result{401, "unauthorized"}
	forbidden := result{403, "forbidden"}
	for _, tc := range []struct {
		header string
		need   Scope
		want   result
	}{
		{"Bearer " + ingestKey, ScopeIngest, ok},
		{"Bearer " + ingestKey, ScopeRead, forbidden},
		{"Bearer " + ingestKey, ScopeAdmin, forbidden},
		{"Bearer " + readKey, ScopeRead, ok},
		{"Bearer " + readKey, ScopeIngest, forbidden},
		{"Bearer " + readKey, ScopeAdmin, forbidden},
		{"Bearer " + bothKey, ScopeIngest | ScopeRead, ok},
		{"Bearer " + bothKey, ScopeIngest, ok},
		{"Bearer " + bothKey, ScopeAdmin, forbidden},
		{"Bearer " + ingestKey, ScopeIngest | ScopeRead, forbidden},
		// admin implies read and ingest.
		{"Bearer " + adminKey, ScopeAdmin, ok},
		{"Bearer " + adminKey, ScopeRead, ok},
		{"Bearer " + adminKey, ScopeIngest, ok},
		{"Bearer " + adminKey, ScopeIngest | ScopeRead | ScopeAdmin, ok},
		// The scheme is case-insensitive; surrounding whitespace is ignored.
		{"bearer " + ingestKey, ScopeIngest, ok},
		{"BEARER  " + ingestKey, ScopeIngest, ok},
		{" Bearer " + ingestKey + " \t", ScopeIngest, ok},
		// Missing, malformed, unknown.
		{"", ScopeIngest, unauthorized},
		{"Bearer", ScopeIngest, unauthorized},
		{"Bearer ", ScopeIngest, unauthorized},
		{ingestKey, ScopeIngest, unauthorized},
		{"Basic " + ingestKey, ScopeIngest, unauthorized},
		{"Bearer" + ingestKey, ScopeIngest, unauthorized},
		{"Bearer " + ingestKey + " extra", ScopeIngest, unauthorized},
		{"Bearer " + ingestKey + "x", ScopeIngest, unauthorized},
		{"Bearer " + ingestKey[:len(ingestKey)-1], ScopeIngest, unauthorized},
		{"Bearer " + unknownKey, ScopeIngest, unauthorized},
		{"Bearer " + hexHash(readKey), ScopeRead, unauthorized}, // the hash is not the key
		{"Bearer " + strings.ToUpper(ingestKey), ScopeIngest, unauthorized},
		{"Bearer " + strings.Repeat("a", keyBytesMax+1), ScopeIngest, unauthorized},
	} {
		status, code := k.Authorize([]byte(tc.header), tc.need)
		if got := (result{status, code}); got != tc.want {
			t.Errorf("Authorize(%q, %v) = %v, want %v", tc.header, tc.need, got, tc.want)
		}
	}
	if got, _ := k.Authorize(nil, ScopeRead); got != 401 {
		t.Errorf("Authorize(nil) status = %d, want 401", got)
	}
}

func TestKeysName(t *testing.T) {
	k := testKeys(t)
	for header, want := range map[string]string{
		"Bearer " + ingestKey:  "ingest-prod",
		"Bearer " + readKey:    "analyst",
		"Bearer " + adminKey:   "ops",
		"Bearer " + unknownKey: "",
		"":                     "",
	} {
		if got := k.Name([]byte(header)); got != want {
			t.Errorf("Name(%q) = %q, want %q", header, got, want)
		}
	}
}

func TestNoKeysAllowAll(t *testing.T) {
	var k *Keys
	if k.Len() != 0 {
		t.Errorf("nil Len() = %d", k.Len())
	}
	if status, code := k.Authorize(nil, ScopeAdmin); status != 0 || code != "" {
		t.Errorf("nil Authorize = %d %q, want allowed", status, code)
	}
	if k.Name([]byte("Bearer "+adminKey)) != "" {
		t.Error("nil Name is not empty")
	}
}

// Keys holds hashes only: no key appears in its memory image.
func TestKeysHoldNoSecret(t *testing.T) {
	k := testKeys(t)
	image := fmt.Sprintf("%#v", *k)
	for _, key := range []string{ingestKey, bothKey} {
		if strings.Contains(image, key) {
			t.Errorf("Keys holds the key %q", key)
		}
	}
}

func TestLoadKeysErrors(t *testing.T) {
	h := hexHash(readKey)
	for _, tc := range []struct {
		name, text string
		wants      []string
	}{
		{"both key and sha256", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n    sha256: %s\n    scopes: [read]\n", ingestKey, h),
			[]string{`keys[0] ("a")`, "both"}},
		{"neither key nor sha256", "keys:\n  - name: a\n    scopes: [read]\n", []string{"keys[0]", "neither"}},
		{"empty key", "keys:\n  - name: a\n    key: \"\"\n    scopes: [read]\n", []string{"neither"}},
		{"unknown scope", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n    scopes: [read, write]\n", ingestKey),
			[]string{`unknown scope "write"`}},
		{"scope case", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n    scopes: [Admin]\n", ingestKey),
			[]string{`unknown scope "Admin"`}},
		{"empty scopes", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n    scopes: []\n", ingestKey), []string{"scopes: empty"}},
		{"missing scopes", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n", ingestKey), []string{"scopes: empty"}},
		{"bad hex", "keys:\n  - name: a\n    sha256: " + strings.Repeat("zz", 32) + "\n    scopes: [read]\n", []string{"sha256", "64 hex"}},
		{"short hash", "keys:\n  - name: a\n    sha256: " + h[:62] + "\n    scopes: [read]\n", []string{"sha256", "64 hex"}},
		{"long hash", "keys:\n  - name: a\n    sha256: " + h + "00\n    scopes: [read]\n", []string{"sha256", "64 hex"}},
		{"duplicate key", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n    scopes: [read]\n  - name: b\n    key: %s\n    scopes: [ingest]\n", ingestKey, ingestKey),
			[]string{`keys[1] ("b")`, `same key as "a"`}},
		{"duplicate key by hash", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n    scopes: [read]\n  - name: b\n    sha256: %s\n    scopes: [ingest]\n", readKey, h),
			[]string{`keys[1] ("b")`, `same key as "a"`}},
		{"duplicate hash case", fmt.Sprintf("keys:\n  - name: a\n    sha256: %s\n    scopes: [read]\n  - name: b\n    sha256: %s\n    scopes: [read]\n", h, strings.ToUpper(h)),
			[]string{"same key"}},
		{"short key", "keys:\n  - name: a\n    key: mk_live_0123456\n    scopes: [read]\n", []string{"key: 15 characters", "16"}},
		{"key with space", "keys:\n  - name: a\n    key: \"mk_live 0123456789\"\n    scopes: [read]\n", []string{"printable"}},
		{"key not ascii", "keys:\n  - name: a\n    key: \"mk_live_012345678é\"\n    scopes: [read]\n", []string{"printable"}},
		{"missing name", fmt.Sprintf("keys:\n  - key: %s\n    scopes: [read]\n", ingestKey), []string{"keys[0]", "name"}},
		{"duplicate name", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n    scopes: [read]\n  - name: a\n    key: %s\n    scopes: [read]\n", ingestKey, readKey),
			[]string{`keys[1] ("a")`, "name used twice"}},
		{"unknown field", fmt.Sprintf("keys:\n  - name: a\n    key: %s\n    scope: [read]\n", ingestKey), []string{"scope"}},
		{"unknown top-level field", "tokens: []\n", []string{"tokens"}},
		{"no keys", "keys: []\n", []string{"no keys"}},
		{"empty file", "", []string{"no keys"}},
		{"not yaml", "keys: [\n", []string{"api keys"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeKeys(t, tc.text)
			k, err := LoadKeys(p)
			if err == nil {
				t.Fatalf("LoadKeys: no error, got %d keys", k.Len())
			}
			for _, w := range append(tc.wants, p) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// Errors never quote a key.
			for _, key := range []string{ingestKey, readKey, "mk_live_0123456", "mk_live 0123456789"} {
				if strings.Contains(err.Error(), key) {
					t.Errorf("error %q contains a key", err)
				}
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		if _, err := LoadKeys(filepath.Join(t.TempDir(), "none.yaml")); err == nil {
			t.Error("no error for a missing file")
		}
	})
	t.Run("too many keys", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("keys:\n")
		for i := 0; i <= keysMax; i++ {
			fmt.Fprintf(&b, "  - {name: k%d, key: mk_live_%016d, scopes: [read]}\n", i, i)
		}
		if _, err := LoadKeys(writeKeys(t, b.String())); err == nil || !strings.Contains(err.Error(), "limit") {
			t.Errorf("err = %v, want the limit", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		if _, err := LoadKeys(writeKeys(t, "# "+strings.Repeat("x", keysFileBytesMax))); err == nil ||
			!strings.Contains(err.Error(), "larger") {
			t.Errorf("err = %v, want too large", err)
		}
	})
}

func TestScopeString(t *testing.T) {
	for s, want := range map[Scope]string{
		0:                                    "none",
		ScopeIngest:                          "ingest",
		ScopeRead | ScopeIngest:              "ingest+read",
		ScopeIngest | ScopeRead | ScopeAdmin: "ingest+read+admin",
		ScopeRead | 0x80:                     "read+0x80",
	} {
		if got := s.String(); got != want {
			t.Errorf("Scope(%d).String() = %q, want %q", uint8(s), got, want)
		}
	}
}

func TestAuthorizeDoesNotAllocate(t *testing.T) {
	k := testKeys(t)
	for _, h := range []string{"Bearer " + adminKey, "Bearer " + unknownKey, "Basic x", ""} {
		header := []byte(h)
		if n := testing.AllocsPerRun(100, func() { k.Authorize(header, ScopeRead) }); n != 0 {
			t.Errorf("Authorize(%q) allocates %.0f times", h, n)
		}
	}
}

func BenchmarkAuthorize(b *testing.B) {
	for _, n := range []int{4, keysMax} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			k := &Keys{}
			for i := 0; i < n; i++ {
				k.entries = append(k.entries, keyEntry{hash: sha256.Sum256([]byte(fmt.Sprintf("mk_live_%016d", i))), scopes: ScopeRead, name: "k"})
			}
			header := []byte(fmt.Sprintf("Bearer mk_live_%016d", n-1))
			b.ReportAllocs()
			for b.Loop() {
				if status, _ := k.Authorize(header, ScopeRead); status != 0 {
					b.Fatal(status)
				}
			}
		})
	}
}
