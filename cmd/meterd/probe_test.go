package main

// TestHTTPProbes runs the real binary, with API keys and a test clock, and
// sends it what an attacker or a careless client would: a smuggled request,
// duplicate and case-variant keys, invalid UTF-8, bodies without keys,
// client errors that once answered 500, Expect:
// 100-continue with a body over the limit, and test-clock moves past the
// bound of every time.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	probeAdminKey  = "mk_probe_admin_0123456789"
	probeIngestKey = "mk_probe_ingest_012345678"
)

// probeKeys writes a key file with an admin and an ingest key and returns
// its path.
func probeKeys(t testing.TB) string {
	t.Helper()
	keys := filepath.Join(t.TempDir(), "keys.yaml")
	yaml := "keys:\n  - name: admin\n    key: \"" + probeAdminKey + "\"\n    scopes: [admin]\n" +
		"  - name: ingest\n    key: \"" + probeIngestKey + "\"\n    scopes: [ingest]\n"
	if err := os.WriteFile(keys, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return keys
}

// probeMeterd starts meterd with an admin and an ingest key on a test clock.
func probeMeterd(t *testing.T) *crashHarness {
	t.Helper()
	h := &crashHarness{t: t, bin: buildMeterd(t), dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--api-keys", probeKeys(t), "--test-clock", "--test-clock-start", "2026-06-01T00:00:00Z"}}
	h.start()
	t.Cleanup(func() {
		if h.proc.running() {
			h.stop()
		}
	})
	return h
}

// probeDo sends one request with key and returns the status and body.
func probeDo(t *testing.T, h *crashHarness, key, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.url(path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

// probeRaw writes raw bytes on a new connection and reads one response.
func probeRaw(t *testing.T, addr, req string) (*http.Response, []byte, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write: %v", err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, b, br
}

func probeWant(t *testing.T, what string, status int, body []byte, wantStatus int, code, field string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Field string }
	}
	json.Unmarshal(body, &e)
	if status != wantStatus || e.Error.Code != code || e.Error.Field != field {
		t.Errorf("%s: got %d %s, want %d %s field %q", what, status, body, wantStatus, code, field)
	}
}

func TestHTTPProbes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	h := probeMeterd(t)
	if st, b := probeDo(t, h, probeAdminKey, "PUT", "/v1/customers/c1", `{}`); st != 201 {
		t.Fatalf("PUT customer: %d %s", st, b)
	}

	t.Run("smuggling", func(t *testing.T) {
		hidden := `{"id":"hidden","asset":"CREDITS","amount":"1000"}`
		smuggled := "POST /v1/customers/c1/topups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer " +
			probeAdminKey + "\r\nContent-Length: " + strconv.Itoa(len(hidden)) + "\r\n\r\n" + hidden
		outer := `{"events":[]}`
		res, body, br := probeRaw(t, h.proc.addr, "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
			"Authorization: Bearer "+probeIngestKey+"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"+
			strconv.FormatInt(int64(len(outer)), 16)+"\r\n"+outer+"\r\n0\r\n\r\n"+smuggled)
		probeWant(t, "Content-Length with Transfer-Encoding", res.StatusCode, body, 400, "bad_framing", "")
		if next, err := http.ReadResponse(br, nil); err == nil {
			t.Errorf("a second response came on the connection: %d", next.StatusCode)
		}
		st, w := probeDo(t, h, probeAdminKey, "GET", "/v1/customers/c1/wallet", "")
		if st != 200 || bytes.Contains(w, []byte("hidden")) || bytes.Contains(w, []byte(`"available":"1000"`)) {
			t.Errorf("the smuggled top-up was applied: %d %s", st, w)
		}
	})

	t.Run("client errors are not 500", func(t *testing.T) {
		long := strings.Repeat("s", 129)
		alerts := strings.TrimSuffix(strings.Repeat(`"1",`, 17), ",")
		var limits []string
		for i := 0; i < 65; i++ {
			limits = append(limits, `"a`+strconv.Itoa(i)+`:CREDITS":"1"`)
		}
		md := `{"k":"` + strings.Repeat("m", 5000) + `"}`
		for _, tc := range []struct{ what, path, body, code, field string }{
			{"top-up source over 128 bytes", "/v1/customers/c1/topups", `{"id":"t1","asset":"CREDITS","amount":"5","source":"` + long + `"}`, "field_too_long", "source"},
			{"adjustment description over 1024 bytes", "/v1/customers/c1/adjustments", `{"transaction_id":"a1","asset":"CREDITS","amount":"5","description":"` + strings.Repeat("d", 1025) + `"}`, "field_too_long", "description"},
			{"metadata over 4 KiB", "/v1/customers/c1/topups", `{"id":"t2","asset":"CREDITS","amount":"5","metadata":` + md + `}`, "metadata_too_large", "metadata"},
			{"17 balance alerts", "/v1/customers/c2", `{"balance_alerts":[` + alerts + `]}`, "too_many_balance_alerts", "balance_alerts"},
			{"65 credit limits", "/v1/customers/c2", `{"insufficient_funds":"overdraft","credit_limit":{` + strings.Join(limits, ",") + `}}`, "too_many_credit_limits", "credit_limit"},
		} {
			method := "POST"
			if strings.Count(tc.path, "/") == 3 {
				method = "PUT"
			}
			st, b := probeDo(t, h, probeAdminKey, method, tc.path, tc.body)
			probeWant(t, tc.what, st, b, 400, tc.code, tc.field)
		}
	})

	t.Run("duplicate and case-variant keys", func(t *testing.T) {
		for _, tc := range []struct{ what, method, path, body, field string }{
			{"amount twice", "POST", "/v1/customers/c1/adjustments",
				`{"transaction_id":"a","asset":"CREDITS","amount":"5","amount":"-999999"}`, "amount"},
			{"keys in another case", "POST", "/v1/customers/c1/topups", `{"ID":"t","Amount":"7","ASSET":"CREDITS"}`, "ID"},
			{"insufficient_funds twice", "PUT", "/v1/customers/c1",
				`{"insufficient_funds":"reject","insufficient_funds":"overdraft"}`, "insufficient_funds"},
			{"invalid UTF-8 in source", "POST", "/v1/customers/c1/topups",
				"{\"id\":\"t8\",\"asset\":\"CREDITS\",\"amount\":\"8\",\"source\":\"a\xffb\"}", "source"},
		} {
			st, b := probeDo(t, h, probeAdminKey, tc.method, tc.path, tc.body)
			probeWant(t, tc.what, st, b, 400, "invalid_request", tc.field)
		}
		st, c := probeDo(t, h, probeAdminKey, "GET", "/v1/customers/c1", "")
		if st != 200 || !bytes.Contains(c, []byte(`"insufficient_funds":"reject"`)) || bytes.Contains(c, []byte(`"buckets":[{`)) {
			t.Errorf("a refused write was applied: %d %s", st, c)
		}
	})

	t.Run("expect 100-continue over the limit", func(t *testing.T) {
		res, body, _ := probeRaw(t, h.proc.addr, "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
			"Authorization: Bearer "+probeIngestKey+"\r\nExpect: 100-continue\r\nContent-Length: 9000000\r\n\r\n")
		probeWant(t, "Expect: 100-continue, 9 MB", res.StatusCode, body, 413, "body_too_large", "")
	})

	t.Run("test clock bound", func(t *testing.T) {
		st, b := probeDo(t, h, probeAdminKey, "POST", "/v1/test-clock", `{"advance":"876000h"}`) // 2126
		if st != 200 {
			t.Fatalf("advance 100 years: %d %s", st, b)
		}
		for i := 0; i < 2; i++ {
			st, b = probeDo(t, h, probeAdminKey, "POST", "/v1/test-clock", `{"advance":"876000h"}`) // 2226
			probeWant(t, "advance past 2200", st, b, 400, "invalid_timestamp", "advance")
		}
		st, b = probeDo(t, h, probeAdminKey, "POST", "/v1/test-clock", `{"now":"2200-01-01T00:00:00Z"}`)
		probeWant(t, "now at 2200", st, b, 400, "invalid_timestamp", "now")
		if st, b = probeDo(t, h, probeAdminKey, "GET", "/v1/test-clock", ""); st != 200 || !bytes.HasPrefix(b, []byte(`{"now":"2126-`)) {
			t.Errorf("the clock after refused moves: %d %s", st, b)
		}
	})

	t.Run("bodies without keys", func(t *testing.T) {
		rss0 := probeRSS(t, h)
		const conns, size = 100, 7_900_000
		var wg sync.WaitGroup
		var mu sync.Mutex
		statuses := map[int]int{}
		for i := 0; i < conns; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", h.proc.addr)
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				go func() { // the body, as fast as the server takes it
					io.WriteString(c, "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "+
						strconv.Itoa(size)+"\r\n\r\n")
					chunk := make([]byte, 64<<10)
					for sent := 0; sent < size-1; sent += len(chunk) {
						if _, err := c.Write(chunk[:min(len(chunk), size-1-sent)]); err != nil {
							return
						}
					}
				}()
				res, err := http.ReadResponse(bufio.NewReader(c), nil)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					statuses[0]++
					return
				}
				statuses[res.StatusCode]++
			}()
		}
		wg.Wait()
		rss1 := probeRSS(t, h)
		t.Logf("RSS %d MB before, %d MB after %d keyless %d-byte bodies; answers %v", rss0>>20, rss1>>20, conns, size, statuses)
		if statuses[401] != conns {
			t.Errorf("keyless bodies: answers %v, want %d x 401", statuses, conns)
		}
		if rss1-rss0 > 64<<20 {
			t.Errorf("RSS grew by %d MB for bodies that were never authorized", (rss1-rss0)>>20)
		}
	})
	if !h.proc.running() {
		t.Fatalf("meterd exited: %s", h.proc.log.tail())
	}
}

// probeRSS returns the resident memory of the meterd process, in bytes.
func probeRSS(t *testing.T, h *crashHarness) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(h.proc.cmd.Process.Pid) + "/status")
	if err != nil {
		t.Skipf("no /proc to read the server's memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/pid/status")
	return 0
}
