package ingest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawConn is one client connection writing bytes as given, for requests a
// well-behaved client would not send.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (e *apiEnv) dialRaw() *rawConn {
	e.t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &rawConn{t: e.t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) write(s string) {
	r.t.Helper()
	r.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// read reads one response within d.
func (r *rawConn) read(d time.Duration) (*http.Response, []byte) {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(d))
	res, err := http.ReadResponse(r.br, nil)
	if err != nil {
		r.t.Fatalf("reading a response: %v", err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		r.t.Fatalf("reading a response body: %v", err)
	}
	return res, b
}

// closed reports whether the server closed the connection (within d).
func (r *rawConn) closed(d time.Duration) bool {
	r.c.SetReadDeadline(time.Now().Add(d))
	_, err := r.br.ReadByte()
	return err == io.EOF || err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func wantCode(t *testing.T, what string, res *http.Response, body []byte, status int, code string) {
	t.Helper()
	if res.StatusCode != status || !bytes.Contains(body, []byte(`"code":"`+code+`"`)) {
		t.Fatalf("%s: got %d %s, want %d %s", what, res.StatusCode, body, status, code)
	}
}

// A keyless request is refused from its headers: the 401 arrives while the
// client is still sending the body, which the server never reads.
func TestBodyRefusedBeforeItIsRead(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{Keys: threeKeys(t)})
	for _, auth := range []string{"", "Authorization: Bearer " + readKey + "\r\n"} {
		c := e.dialRaw()
		c.write("POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
			"Content-Length: 4000000\r\n\r\n" + " ") // one byte: the rest never needs to arrive
		res, body := c.read(3 * time.Second)
		want, code := 401, "unauthorized"
		if auth != "" {
			want, code = 403, "forbidden"
		}
		wantCode(t, "keyless events request", res, body, want, code)
		if !res.Close || !c.closed(3*time.Second) {
			t.Errorf("the connection stays open with an unread body: %v", res.Header)
		}
	}
}

// Bodies being read share one budget: past it a request is 503 before its
// body is read, and the budget comes back when a request is answered.
func TestBodyMemoryBudget(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{Keys: threeKeys(t), BodyMemoryMax: 1 << 20})
	const n = 700 << 10
	body := `{"events":[]}` + strings.Repeat(" ", n-len(`{"events":[]}`))
	head := "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer " + ingestKey +
		"\r\nContent-Length: " + strconv.Itoa(n) + "\r\n\r\n"

	a := e.dialRaw()
	a.write(head + body[:1]) // holds 700 KiB of the budget while it sends
	time.Sleep(100 * time.Millisecond)
	b := e.dialRaw()
	b.write(head + body[:1])
	res, rb := b.read(3 * time.Second)
	wantCode(t, "second large body", res, rb, 503, "overloaded")
	if res.Header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After")
	}
	a.write(body[1:])
	res, rb = a.read(5 * time.Second)
	if res.StatusCode != 200 {
		t.Fatalf("first large body: %d %s", res.StatusCode, rb)
	}
	c := e.dialRaw()
	c.write(head + body)
	if res, rb = c.read(5 * time.Second); res.StatusCode != 200 {
		t.Fatalf("a large body once the budget is back: %d %s", res.StatusCode, rb)
	}
	if used := e.srv.budget.used.Load(); used != 0 {
		t.Errorf("budget in use after every request was answered: %d", used)
	}
}

// Endpoints that never need a large body refuse one from its length.
func TestBodyLimitPerEndpoint(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	big := `{"id":"t1","asset":"CREDITS","amount":"5","metadata":{"k":"` + strings.Repeat("x", 70<<10) + `"}}`
	r := e.send("POST", "/v1/customers/c1/topups", "application/json", "", []byte(big))
	if r.Status != 413 || !bytes.Contains(r.Body, []byte(`"body_too_large"`)) {
		t.Errorf("70 KiB top-up: %s", r)
	}
	doc := `{"assets":[]` + strings.Repeat(" ", 1<<20) + `}`
	r = e.send("PUT", "/v1/pricing", "application/json", "", []byte(doc))
	if r.Status != 413 || !bytes.Contains(r.Body, []byte(`"pricing_too_large"`)) {
		t.Errorf("1 MiB pricing document: %s", r)
	}
	// The events endpoint takes its own, larger limit.
	ev := `{"events":[]` + strings.Repeat(" ", 2<<20) + `}`
	if r = e.send("POST", "/v1/events", "application/json", "", []byte(ev)); r.Status != 200 {
		t.Errorf("2 MiB events body: %s", r)
	}
}

// A body refused from its length is answered while the client is still
// sending it; the client must read that answer, not a connection reset.
// Each try is a fresh connection, since a refused body closes it.
func TestRefusedBodyAnswerArrives(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	doc := []byte(`{"assets":[]` + strings.Repeat(" ", 3<<20) + `}`)
	for i := range 40 {
		r := e.send("PUT", "/v1/pricing", "application/json", "", doc)
		if r.Status != 413 || !bytes.Contains(r.Body, []byte(`"pricing_too_large"`)) {
			t.Fatalf("try %d, 3 MiB pricing document: %s", i, r)
		}
	}
}

// A chunked body is read within the same limits.
func TestBodyChunked(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(apiCreditsPricing)
	e.newCustomer("c1", `{}`)
	chunk := func(s string) string { return strconv.FormatInt(int64(len(s)), 16) + "\r\n" + s + "\r\n" }
	c := e.dialRaw()
	c.write("POST /v1/customers/c1/topups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
		chunk(`{"id":"t1","asset":"CREDITS",`) + chunk(`"amount":"5"}`) + "0\r\n\r\n")
	res, body := c.read(3 * time.Second)
	if res.StatusCode != 201 {
		t.Fatalf("chunked top-up: %d %s", res.StatusCode, body)
	}
	// Keep-alive: the connection serves the next request.
	c.write("GET /v1/customers/c1/wallet HTTP/1.1\r\nHost: x\r\n\r\n")
	if res, body = c.read(3 * time.Second); res.StatusCode != 200 || !bytes.Contains(body, []byte(`"available":"5"`)) {
		t.Fatalf("next request on the connection: %d %s", res.StatusCode, body)
	}
	c = e.dialRaw()
	c.write("POST /v1/customers/c1/topups HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
	// The server may answer and close before the last chunk is written.
	io.WriteString(c.c, strings.Repeat(chunk(strings.Repeat(" ", 4096)), 20))
	res, body = c.read(3 * time.Second)
	wantCode(t, "80 KiB chunked top-up", res, body, 413, "body_too_large")
}

// Content-Length and Transfer-Encoding together: 400, the connection
// closed, and nothing after the chunks runs as a second request.
func TestBadFramingIsRefused(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	e.putPricing(apiCreditsPricing)
	e.newCustomer("c1", `{}`)
	hidden := `{"id":"hidden","asset":"CREDITS","amount":"1000"}`
	smuggled := "POST /v1/customers/c1/topups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(hidden)) + "\r\n\r\n" + hidden
	outer := `{"events":[]}`
	for _, te := range []string{"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
		"content-length: 4\r\ntransfer-encoding: chunked\r\n"} {
		c := e.dialRaw()
		c.write("POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + te + "\r\n" +
			strconv.FormatInt(int64(len(outer)), 16) + "\r\n" + outer + "\r\n0\r\n\r\n" + smuggled)
		res, body := c.read(3 * time.Second)
		wantCode(t, "Content-Length with Transfer-Encoding", res, body, 400, "bad_framing")
		if !c.closed(3 * time.Second) {
			t.Errorf("the connection stays open after bad framing")
		}
	}
	if w, _ := e.wallet("c1"); len(w.Accounts) != 0 {
		t.Fatalf("the smuggled top-up was applied: %+v", w)
	}
}

// Expect: 100-continue is answered from the headers: a body that would be
// refused is refused before the client sends it.
func TestExpectContinue(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{Keys: threeKeys(t)})
	cases := []struct {
		what, head string
		status     int
		code       string
	}{
		{"too large", "Authorization: Bearer " + ingestKey + "\r\nContent-Length: 9000000\r\n", 413, "body_too_large"},
		{"keyless", "Content-Length: 100\r\n", 401, "unauthorized"},
	}
	for _, tc := range cases {
		c := e.dialRaw()
		c.write("POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n" + tc.head + "\r\n")
		res, body := c.read(3 * time.Second)
		wantCode(t, tc.what, res, body, tc.status, tc.code)
	}
	c := e.dialRaw()
	outer := `{"events":[]}`
	c.write("POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nAuthorization: Bearer " +
		ingestKey + "\r\nContent-Length: " + strconv.Itoa(len(outer)) + "\r\n\r\n")
	res, _ := c.read(3 * time.Second)
	if res.StatusCode != 100 {
		t.Fatalf("an acceptable body: %d, want 100 Continue", res.StatusCode)
	}
	c.write(outer)
	if res, body := c.read(3 * time.Second); res.StatusCode != 200 {
		t.Fatalf("after 100 Continue: %d %s", res.StatusCode, body)
	}
}

// A body nobody reads closes the connection rather than being parsed as
// the next request.
func TestUnreadBodyClosesTheConnection(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{})
	c := e.dialRaw()
	c.write("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + strings.Repeat("GET /x HTTP/1.1\r\n\r\n", 1100)[:20000])
	res, _ := c.read(3 * time.Second)
	if res.StatusCode != 200 || !res.Close || !c.closed(3*time.Second) {
		t.Fatalf("healthz with an unread body: %d, close %v", res.StatusCode, res.Close)
	}
}
