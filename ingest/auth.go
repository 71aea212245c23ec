package ingest

import (
	"net"
	"slices"
	"time"

	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"golang.org/x/time/rate"

	"gopkg.in/yaml.v3"
)

// Scope is a set of permissions carried by an API key. The scopes are bits;
// a key's scopes and the scopes a request needs are both sets.
//
// ScopeAdmin implies ScopeRead and ScopeIngest: a key given "admin" in the
// key file holds all three, so it passes every check.
type Scope uint8

const (
	ScopeIngest Scope = 1 << iota // write usage events (POST /v1/events, holds)
	ScopeRead                     // read customers, wallets, ledgers, pricing
	ScopeAdmin                    // everything else: customers, top-ups, adjustments, pricing; implies read and ingest

	scopeAll = ScopeIngest | ScopeRead | ScopeAdmin
)

// String returns the scope names joined by '+', e.g. "ingest+read".
func (s Scope) String() string {
	var names []string
	for _, n := range scopeNames {
		if s&n.scope != 0 {
			names = append(names, n.name)
		}
	}
	if rest := s &^ scopeAll; rest != 0 {
		names = append(names, fmt.Sprintf("0x%x", uint8(rest)))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "+")
}

var scopeNames = []struct {
	name  string
	scope Scope
}{
	{"ingest", ScopeIngest},
	{"read", ScopeRead},
	{"admin", ScopeAdmin},
}

// parseScope returns the scopes granted by a name in the key file; "admin"
// grants all of them.
func parseScope(name string) (Scope, bool) {
	switch name {
	case "ingest":
		return ScopeIngest, true
	case "read":
		return ScopeRead, true
	case "admin":
		return scopeAll, true
	}
	return 0, false
}

// Limits of the key file.
const (
	keysFileBytesMax = 1 << 20
	keysMax          = 256 // Authorize compares against every key: its cost grows with this
	keyBytesMin      = 16
	keyBytesMax      = 1024
	keyNameBytesMax  = 128
)

// Keys is a set of API keys and their scopes. It holds only the SHA-256 of
// each key, never the key itself, and is safe for concurrent use (it is
// never modified after LoadKeys).
//
// A nil or empty *Keys means auth is off: Authorize allows every request.
// The contract allows that only when the server listens on loopback; the
// caller enforces it (cmd/meterd's configuration, CheckListen). LoadKeys never
// returns an empty set: a key file without keys is an error.
type Keys struct {
	entries []keyEntry
}

type keyEntry struct {
	hash   [sha256.Size]byte
	scopes Scope
	name   string // for logs only
	// nets, when set, are the only client addresses the key is accepted
	// from; limiter, when set, bounds its requests.
	nets    []*net.IPNet
	limiter *rate.Limiter
}

// keyFile is the YAML format of an API-key file (--api-keys FILE):
//
//	keys:
//	  - name: ingest-prod            # required, for logs only; unique
//	    key: "mk_live_..."           # either the key itself...
//	    scopes: [ingest]
//	  - name: analyst
//	    sha256: "9f86d08..."         # ...or its hex SHA-256, so the file need not hold secrets
//	    scopes: [read]
//	  - name: ops
//	    sha256: "..."
//	    scopes: [admin]              # admin implies read and ingest
//	    allow_from: [10.0.0.0/8]     # optional: only from these addresses
//	    rate_limit: {per_second: 50, burst: 100}  # optional: beyond it, 429
//
// Each entry has exactly one of key and sha256. A key is 16-1024 printable
// ASCII characters without spaces (it travels as "Authorization: Bearer
// <key>"); the hash of such a key is the 64 hex digits printed by
// `printf %s "$KEY" | sha256sum`. Scopes are a non-empty list of ingest, read
// and admin. The same key may not appear twice, whether given as key or as
// sha256, and there are at most 256 keys. Unknown fields are errors.
type keyFile struct {
	Keys []keyFileEntry `yaml:"keys"`
}

type keyFileEntry struct {
	Name      string         `yaml:"name"`
	Key       string         `yaml:"key"`
	SHA256    string         `yaml:"sha256"`
	Scopes    []string       `yaml:"scopes"`
	AllowFrom []string       `yaml:"allow_from"` // CIDR ranges; absent: any address
	RateLimit *keyRateLimits `yaml:"rate_limit"` // absent: no limit
}

// keyRateLimits bound one key's requests: per_second on average, burst at
// once (default: per_second, at least 1).
type keyRateLimits struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// LoadKeys reads an API-key file (format: see keyFile above). Errors name
// the file and the entry, and never contain a key.
func LoadKeys(path string) (*Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("api keys: %v", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, keysFileBytesMax+1))
	if err != nil {
		return nil, fmt.Errorf("api keys %s: %v", path, err)
	}
	if len(data) > keysFileBytesMax {
		return nil, fmt.Errorf("api keys %s: larger than %d bytes", path, keysFileBytesMax)
	}
	k, err := parseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("api keys %s: %v", path, err)
	}
	return k, nil
}

func parseKeys(data []byte) (*Keys, error) {
	var file keyFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("no keys (to run without auth, give no key file)")
		}
		return nil, err
	}
	if len(file.Keys) == 0 {
		return nil, errors.New("no keys (to run without auth, give no key file)")
	}
	if len(file.Keys) > keysMax {
		return nil, fmt.Errorf("%d keys, more than the limit of %d", len(file.Keys), keysMax)
	}

	k := &Keys{entries: make([]keyEntry, 0, len(file.Keys))}
	byHash := make(map[[sha256.Size]byte]string, len(file.Keys))
	byName := make(map[string]bool, len(file.Keys))
	for i, fe := range file.Keys {
		at := fmt.Sprintf("keys[%d]", i)
		if fe.Name != "" {
			at += fmt.Sprintf(" (%q)", fe.Name)
		}
		e, err := fe.entry()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", at, err)
		}
		if byName[e.name] {
			return nil, fmt.Errorf("%s: name used twice", at)
		}
		byName[e.name] = true
		if other, dup := byHash[e.hash]; dup {
			return nil, fmt.Errorf("%s: same key as %q", at, other)
		}
		byHash[e.hash] = e.name
		k.entries = append(k.entries, e)
	}
	return k, nil
}

// entry validates one entry of the file. Its errors never quote the key.
func (fe keyFileEntry) entry() (keyEntry, error) {
	e := keyEntry{name: fe.Name}
	if fe.Name == "" || len(fe.Name) > keyNameBytesMax {
		return e, fmt.Errorf("name: want 1-%d characters", keyNameBytesMax)
	}
	switch {
	case fe.Key != "" && fe.SHA256 != "":
		return e, errors.New("has both key and sha256: give one")
	case fe.Key == "" && fe.SHA256 == "":
		return e, errors.New("has neither key nor sha256")
	case fe.Key != "":
		if len(fe.Key) < keyBytesMin || len(fe.Key) > keyBytesMax {
			return e, fmt.Errorf("key: %d characters, want %d-%d", len(fe.Key), keyBytesMin, keyBytesMax)
		}
		for i := 0; i < len(fe.Key); i++ {
			if c := fe.Key[i]; c <= ' ' || c > '~' {
				return e, fmt.Errorf("key: character %d is not printable ASCII (spaces are not allowed)", i+1)
			}
		}
		e.hash = sha256.Sum256([]byte(fe.Key))
	default:
		h, err := hex.DecodeString(fe.SHA256)
		if err != nil || len(h) != sha256.Size {
			return e, fmt.Errorf("sha256: want %d hex digits", 2*sha256.Size)
		}
		copy(e.hash[:], h)
	}
	for _, cidr := range fe.AllowFrom {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			return e, fmt.Errorf("allow_from: %q is not a CIDR range such as 10.0.0.0/8", cidr)
		}
		e.nets = append(e.nets, n)
	}
	if rl := fe.RateLimit; rl != nil {
		if rl.PerSecond <= 0 || rl.PerSecond > 1e6 || rl.Burst < 0 || rl.Burst > 1e6 {
			return e, errors.New("rate_limit: per_second must be above 0 and at most 1000000, burst from 0 to 1000000")
		}
		burst := rl.Burst
		if burst == 0 {
			burst = max(1, int(rl.PerSecond))
		}
		e.limiter = rate.NewLimiter(rate.Limit(rl.PerSecond), burst)
	}
	if len(fe.Scopes) == 0 {
		return e, errors.New("scopes: empty (want a list of ingest, read, admin)")
	}
	for _, name := range fe.Scopes {
		s, ok := parseScope(name)
		if !ok {
			return e, fmt.Errorf("scopes: unknown scope %q (want ingest, read or admin)", name)
		}
		e.scopes |= s
	}
	return e, nil
}

// Len returns the number of keys; 0 for a nil *Keys (auth off).
func (k *Keys) Len() int {
	if k == nil {
		return 0
	}
	return len(k.entries)
}

// Authorize checks the raw value of an Authorization header against the keys
// for the scopes in need (all of them are required). It returns (0, "") when
// the request is allowed; (401, "unauthorized") when the header is missing or
// is not "Bearer <key>" or the key is unknown; (403, "forbidden") when the key
// is known but lacks a needed scope.
//
// The SHA-256 of the presented key is compared with every stored hash in
// constant time, with no early exit, so the time taken does not reveal which
// key, if any, matched. Authorize does not allocate. A nil or empty *Keys
// allows everything (auth off).
func (k *Keys) Authorize(authorization []byte, need Scope) (status int, code string) {
	status, code, _, _ = k.AuthorizeFrom(authorization, need, nil)
	return status, code
}

// AuthorizeFrom is Authorize for a request from client address ip (nil:
// not checked), which also applies the key's allow_from ranges (403
// forbidden from elsewhere, with retry -1 to tell it from a missing
// scope) and its rate limit (429 rate_limited, with how long to wait).
// name is the key's name, for audit lines.
func (k *Keys) AuthorizeFrom(authorization []byte, need Scope, ip net.IP) (status int, code string, retry time.Duration, name string) {
	if k.Len() == 0 {
		return 0, "", 0, ""
	}
	i, ok := k.lookup(authorization)
	if !ok {
		return http.StatusUnauthorized, "unauthorized", 0, ""
	}
	e := &k.entries[i]
	if e.scopes&need != need {
		return http.StatusForbidden, "forbidden", 0, e.name
	}
	if len(e.nets) > 0 && ip != nil && !slices.ContainsFunc(e.nets, func(n *net.IPNet) bool { return n.Contains(ip) }) {
		return http.StatusForbidden, "forbidden", -1, e.name // retry -1: refused for the address
	}
	if e.limiter != nil {
		r := e.limiter.Reserve()
		if d := r.Delay(); d > 0 {
			r.Cancel()
			return http.StatusTooManyRequests, "rate_limited", d, e.name
		}
	}
	return 0, "", 0, e.name
}

// Known reports whether an Authorization header presents one of the keys,
// whatever its scopes.
func (k *Keys) Known(authorization []byte) bool {
	_, ok := k.lookup(authorization)
	return ok
}

// Name returns the name of the key presented in an Authorization header, for
// logs; "" when it is not a known key or auth is off.
func (k *Keys) Name(authorization []byte) string {
	if k == nil {
		return ""
	}
	i, ok := k.lookup(authorization)
	if !ok {
		return ""
	}
	return k.entries[i].name
}

// lookup returns the index of the entry of the presented key. It visits every
// entry and compares in constant time, whatever matches.
func (k *Keys) lookup(authorization []byte) (int, bool) {
	token, ok := bearer(authorization)
	if !ok {
		return 0, false
	}
	h := sha256.Sum256(token)
	found, index := 0, 0
	for i := range k.entries {
		eq := subtle.ConstantTimeCompare(h[:], k.entries[i].hash[:])
		found |= eq
		index = subtle.ConstantTimeSelect(eq, i, index)
	}
	return index, found == 1
}

// bearer extracts the token of "Bearer <token>" (scheme case-insensitive, as
// RFC 9110 says; surrounding spaces and tabs ignored). The token must be
// non-empty printable ASCII without spaces.
func bearer(h []byte) ([]byte, bool) {
	h = bytes.Trim(h, " \t")
	const scheme = "bearer "
	if len(h) <= len(scheme) || !bytes.EqualFold(h[:len(scheme)], []byte(scheme)) {
		return nil, false
	}
	token := bytes.TrimLeft(h[len(scheme):], " ")
	if len(token) == 0 || len(token) > keyBytesMax {
		return nil, false
	}
	for _, c := range token {
		if c <= ' ' || c > '~' {
			return nil, false
		}
	}
	return token, true
}
