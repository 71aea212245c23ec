package ingest

import (
	"bytes"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	keepKey    = "mk_live_keep_0123456789ab"
	dropKey    = "mk_live_drop_0123456789ab"
	slowKey    = "mk_live_slow_0123456789ab"
	farKey     = "mk_live_far_0123456789abc"
	opsKey     = "mk_live_ops_0123456789abc"
	keysBefore = `keys:
  - {name: keep, key: %q, scopes: [ingest]}
  - {name: drop, key: %q, scopes: [ingest]}
  - {name: slow, key: %q, scopes: [read], rate_limit: {per_second: 1, burst: 2}}
  - {name: far, key: %q, scopes: [read], allow_from: [10.0.0.0/8]}
  - {name: ops, key: %q, scopes: [admin], allow_from: [127.0.0.0/8, "::1/128"]}
`
)

func reloadKeys(t *testing.T, drop bool) *Keys {
	t.Helper()
	text := fmt.Sprintf(keysBefore, keepKey, dropKey, slowKey, farKey, opsKey)
	if drop {
		text = strings.Replace(text, fmt.Sprintf("  - {name: drop, key: %q, scopes: [ingest]}\n", dropKey), "", 1)
	}
	k, err := LoadKeys(writeKeys(t, text))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestKeysReloadedUnderLoad: a key removed from the key file is refused
// from the first request after the reload; the others never fail.
func TestKeysReloadedUnderLoad(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{Keys: reloadKeys(t, false)})
	e.auth = opsKey
	e.putPricing(`{"assets":[{"code":"CREDITS","scale":0}],"prices":[{"event_type":"task","account":"default:CREDITS","unit_price":"1"}]}`)
	e.fund("kr1", "1000000")
	var reloaded atomic.Int64 // unix ns when SetKeys returned
	var seq, keepFailed, dropAfter, dropLate atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	send := func(key string, check func(status int, started int64)) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			started := time.Now().UnixNano()
			id := strconv.FormatInt(seq.Add(1), 10)
			r := e.send("POST", "/v1/events", "application/json", key, []byte(`{"events":[{"id":"e`+id+`","customer_id":"kr1","event_type":"task"}]}`))
			check(r.Status, started)
		}
	}
	for range 3 {
		wg.Add(1)
		go send(keepKey, func(status int, _ int64) {
			if status != 200 {
				keepFailed.Add(1)
			}
		})
	}
	for range 2 {
		wg.Add(1)
		go send(dropKey, func(status int, started int64) {
			at := reloaded.Load()
			if at == 0 || started < at {
				return
			}
			if status == 200 {
				dropLate.Add(1) // sent after the reload, and served
			} else if status == 401 {
				dropAfter.Add(1)
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	e.srv.SetKeys(reloadKeys(t, true))
	reloaded.Store(time.Now().UnixNano())
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if keepFailed.Load() != 0 {
		t.Errorf("%d requests of a key that stayed failed", keepFailed.Load())
	}
	if dropLate.Load() != 0 || dropAfter.Load() == 0 {
		t.Errorf("the removed key after the reload: %d served, %d refused", dropLate.Load(), dropAfter.Load())
	}
}

// TestKeyLimits: a key's rate limit answers 429 with Retry-After; a key
// limited to an address range is refused from elsewhere.
func TestKeyLimits(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{Keys: reloadKeys(t, false)})
	for i := range 2 {
		if r := e.send("GET", "/v1/pricing", "", slowKey, nil); r.Status != 200 {
			t.Fatalf("request %d within the burst: %s", i, r)
		}
	}
	r := e.send("GET", "/v1/pricing", "", slowKey, nil)
	apiWantErr(t, "beyond the rate limit", r, 429, "rate_limited", "")
	if ra, _ := strconv.Atoi(r.Header.Get("Retry-After")); ra < 1 {
		t.Errorf("Retry-After %q", r.Header.Get("Retry-After"))
	}
	r = e.send("GET", "/v1/pricing", "", farKey, nil)
	apiWantErr(t, "a key limited to 10.0.0.0/8, from 127.0.0.1", r, 403, "forbidden", "")
	if !strings.Contains(string(r.Body), "address") {
		t.Errorf("the refusal does not say why: %s", r)
	}
	if r := e.send("GET", "/v1/pricing", "", opsKey, nil); r.Status != 200 {
		t.Errorf("a key limited to loopback, from loopback: %s", r)
	}
}

// TestAuditLines: every admin write is logged with the key's name, never
// the key; reads are not.
func TestAuditLines(t *testing.T) {
	var logs syncBuffer
	e := newAPIEnv(t, apiEnvOpts{Keys: reloadKeys(t, false), Log: slog.New(slog.NewJSONHandler(&logs, nil))})
	e.auth = opsKey
	e.putPricing(`{"assets":[{"code":"CREDITS","scale":0}]}`)
	e.newCustomer("au1", `{}`)
	e.topUp("au1", `{"id":"t1","asset":"CREDITS","amount":"10"}`)
	e.must(201, "POST", "/v1/customers/au1/adjustments", `{"transaction_id":"a1","asset":"CREDITS","amount":"5"}`)
	e.must(200, "POST", "/v1/customers/au1/topups/t1/reverse", ``)
	e.must(200, "GET", "/v1/customers/au1", "")
	out := logs.String()
	for _, want := range []string{`"path":"/v1/pricing"`, `"method":"PUT","path":"/v1/customers/au1"`, `"path":"/v1/customers/au1/topups"`,
		`"path":"/v1/customers/au1/adjustments"`, `"path":"/v1/customers/au1/topups/t1/reverse"`} {
		if !strings.Contains(out, want) {
			t.Errorf("no audit line with %s in:\n%s", want, out)
		}
	}
	if n := strings.Count(out, `"msg":"audit"`); n != 5 {
		t.Errorf("%d audit lines, want 5 (writes only):\n%s", n, out)
	}
	if !strings.Contains(out, `"key":"ops"`) || strings.Contains(out, opsKey) {
		t.Errorf("audit lines must name the key, never show it:\n%s", out)
	}
}
