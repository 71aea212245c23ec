package ingest

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
)

// TestAPIDocReplay replays every example of docs/API.md, in the order the
// document gives them, against one live server as the document describes
// it: on meterd's default pricing, with the test clock started at
// 2026-11-20T09:00:00Z, the three API keys ($ADMIN_KEY, $READ_KEY,
// $INGEST_KEY) and every door on. Each example must be answered with its
// status and, when the document shows a whole JSON answer, exactly that
// answer (a Stripe session's token aside). $SESSION_TOKEN in a command is
// the token of the last session the document opened.
func TestAPIDocReplay(t *testing.T) {
	raw, err := os.ReadFile("../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	def, err := os.ReadFile("../cmd/meterd/default-pricing.json")
	if err != nil {
		t.Fatal(err)
	}
	clock := balance.NewManualClock(time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC).UnixNano())
	e := newAPIEnv(t, apiEnvOpts{Clock: clock, Doors: AllDoors, DefaultPricing: def, Keys: testKeys(t)})
	keys := map[string]string{"$ADMIN_KEY": adminKey, "$READ_KEY": readKey, "$INGEST_KEY": ingestKey}
	blocks := codeBlock.FindAllStringSubmatch(string(raw), -1)
	token, n := "", 0
	for i := 0; i+1 < len(blocks); i++ {
		cmd, ans := blocks[i][1], blocks[i+1][1]
		if !strings.HasPrefix(cmd, "curl") || !strings.HasPrefix(ans, "HTTP/1.1 ") {
			continue
		}
		n++
		method, path, ctype, body := parseCurl(cmd)
		auth := "-"
		for k, v := range keys {
			if strings.Contains(cmd, "Bearer "+k) {
				auth = v
			}
		}
		if strings.Contains(cmd, "$SESSION_TOKEN") {
			auth = token
		}
		if ctype == "" && body != "" {
			ctype = "application/x-www-form-urlencoded" // what curl -d sends
		}
		var b []byte
		if body != "" {
			b = []byte(body)
		}
		r := e.send(method, path, ctype, auth, b)
		want := ansStatus(ans)
		_, wantBody, _ := strings.Cut(ans, "\n")
		var wv, gv map[string]any
		if json.Unmarshal(r.Body, &gv) == nil {
			if tok, ok := gv["authentication_token"].(string); ok {
				token = tok
				delete(gv, "authentication_token")
			}
		}
		if r.Status != want {
			t.Errorf("example %d, %s %s: got %d %s; documented %d", n, method, path, r.Status, apiTrunc(string(r.Body), 300), want)
			continue
		}
		if json.Unmarshal([]byte(wantBody), &wv) != nil {
			continue // not a whole JSON answer (shortened, or text)
		}
		delete(wv, "authentication_token")
		w, _ := json.Marshal(wv)
		g, _ := json.Marshal(gv)
		if string(w) != string(g) {
			t.Errorf("example %d, %s %s:\n got %s\nwant %s", n, method, path, apiTrunc(string(g), 600), apiTrunc(string(w), 600))
		}
	}
	if n < 40 {
		t.Errorf("only %d examples replayed", n)
	}
}
