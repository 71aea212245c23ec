package ingest

// Fuzz targets of the admin decoders, beside those of the event decoder
// (decode_fuzz_test.go): top-ups, adjustments, customers and holds, each
// from the raw body to the command the engine would get. Properties:
//
//   - no panic, and every refusal is the contract's error (a code with a
//     4xx status, a message);
//   - a body that is JSON (by jsonCheck, the event decoder's own strict
//     scan) is never refused as malformed_json, and one whose first defect
//     is invalid UTF-8 or an unpaired surrogate escape is invalid_request;
//   - an accepted body is strict JSON: jsonCheck accepts it, no object at
//     any depth has a key twice, and every key of a documented object is
//     one the contract documents, in its case;
//   - decoding is deterministic, and an accepted command encoded back into
//     a body decodes to the same command (top-ups, adjustments, holds);
//   - an accepted body whose first key is repeated, or given in another
//     case, or given a value with invalid UTF-8 or an unpaired surrogate
//     escape, is refused with invalid_request naming that key.

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter/strictjson"
	"github.com/valyala/fastjson"
)

// adminFuzzServer is a server on an engine whose clock stands still, so
// that decoding is deterministic, and whose pricing is apiCreditsPricing.
// Nothing is served and nothing is applied: only the decoders run.
func adminFuzzServer(f *testing.F) *Server {
	f.Helper()
	clk := balance.NewManualClock(time.Date(2026, 11, 5, 12, 0, 0, 0, time.UTC).UnixNano())
	eng, err := balance.Open(balance.Options{Dir: f.TempDir(), Shards: 1, QueueMax: 1024, IdemCacheMax: 1 << 17,
		CommitEventsMax: 1024, Clock: clk, TimerInterval: time.Hour})
	if err != nil {
		f.Fatalf("balance.Open: %v", err)
	}
	f.Cleanup(func() { eng.Close() })
	if _, err := eng.SetPricing([]byte(apiCreditsPricing)); err != nil {
		f.Fatalf("SetPricing: %v", err)
	}
	return &Server{e: eng}
}

// shape is what the contract documents of a JSON value: an object's member
// names, exactly, with their shapes, or an array's elements' shape. A nil
// shape is a scalar or free-form data (metadata, credit_limit's accounts).
type shape struct {
	members map[string]*shape
	elem    *shape
}

func object(members map[string]*shape) *shape { return &shape{members: members} }
func arrayOf(elem *shape) *shape              { return &shape{elem: elem} }

var (
	priceShape = object(map[string]*shape{"amount": nil, "currency": nil})
	topUpShape = object(map[string]*shape{"id": nil, "account": nil, "asset": nil, "amount": nil, "price": priceShape,
		"source": nil, "expires_at": nil, "metadata": nil, "customer_id": nil, "offer_id": nil, "currency": nil,
		"destination": object(map[string]*shape{"account_name": nil, "asset": nil, "exchange_rate": nil}),
		"description": nil, "credit_expires_at": nil})
	adjustShape = object(map[string]*shape{"transaction_id": nil, "account_name": nil, "asset": nil, "amount": nil,
		"description": nil, "reason": nil, "kind": nil, "priority": nil, "expires_at": nil, "metadata": nil})
	customerShape = object(map[string]*shape{"status": nil, "insufficient_funds": nil, "credit_limit": nil,
		"plan": object(map[string]*shape{"id": nil, "allocations": arrayOf(object(map[string]*shape{
			"account": nil, "asset": nil, "amount": nil, "period": nil, "anchor": nil, "strategy": nil, "cap": nil, "kind": nil}))}),
		"auto_reload": object(map[string]*shape{"enabled": nil, "account": nil, "asset": nil, "threshold": nil, "amount": nil,
			"price": priceShape, "surcharge_pct": nil, "max_per_period": nil, "mode": nil, "expires_at": nil, "offer_id": nil}),
		"balance_alerts": nil, "metadata": nil})
	holdShape = object(map[string]*shape{"id": nil, "customer_id": nil, "account": nil, "amount": nil, "expires_at": nil})
)

// adminFuzzSeeds are bodies of every admin endpoint, valid and not,
// including the examples (issue 9).
var adminFuzzSeeds = []string{
	`{"transaction_id":"a","asset":"CREDITS","amount":"5","amount":"-999999"}`,
	`{"ID":"t","Amount":"7","ASSET":"CREDITS"}`,
	`{"insufficient_funds":"reject","insufficient_funds":"overdraft"}`,
	`{"id":"t1","asset":"CREDITS","amount":"1000"}`,
	`{"id":"t2","account":"main","asset":"USD","amount":"12.5","price":{"amount":"12.50","currency":"USD"},"source":"stripe",` +
		`"expires_at":"2026-12-01T00:00:00Z","metadata":{"b":1.50,"a":["x",{"y":null}],"B":true}}`,
	"{\"id\":\"t3\",\"asset\":\"CREDITS\",\"amount\":5,\"source\":\"caf\xe9\",\"metadata\":{\"k\":\"\\ud800\"}}",
	`{"transaction_id":"a1","account_name":"default","asset":"CREDITS","amount":-5,"description":"refund \u00e9",` +
		`"reason":"support","kind":"promotional","priority":10,"expires_at":"period_end","metadata":{"ticket":42}}`,
	`{"status":"paused","insufficient_funds":"overdraft","credit_limit":{"default:CREDITS":"100"},"balance_alerts":["10",5],"metadata":{"tier":"gold"}}`,
	`{"plan":{"id":"macro","allocations":[{"account":"default","asset":"CREDITS","amount":"20000","period":"month",` +
		`"anchor":"2026-11-01T00:00:00Z","strategy":"accumulate","cap":"40000","kind":"plan"}]},` +
		`"auto_reload":{"enabled":true,"account":"default","asset":"CREDITS","threshold":"2000","amount":"10000",` +
		`"price":{"amount":"100.00","currency":"USD"},"surcharge_pct":"3.5","max_per_period":4,"mode":"await_payment","expires_at":"period_end"}}`,
	`{"plan":{"id":"p","allocations":[{"asset":"CREDITS","amount":"10","period":"month","Amount":"99"}]}}`,
	`{"id":"h1","customer_id":"c1","account":"default:CREDITS","amount":"300","expires_at":"2026-11-05T13:00:00Z"}`,
	`{"id":"h1","customer_id":"c1","customer_id":"c2","account":"default:CREDITS","amount":"300"}`,
	`{"metadata":{"k":1,"k":2}}`,
	`{}`,
	` `,
	`{"id":"t1"} {}`,
}

// adminDecoder decodes one body for one endpoint into what the engine
// would be given.
type adminDecoder func(body []byte) (any, error)

type topUpDecoded struct {
	Cmd  *wallet.TopUpCmd
	Hash [16]byte // covers what the client sent
}

func (s *Server) fuzzTopUp(body []byte) (any, error) {
	var b topUpBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	cmd, h, err := s.topUpCmd(&b)
	if err != nil {
		return nil, err
	}
	return topUpDecoded{cmd, h}, nil
}

type adjustDecoded struct {
	Cmd         *wallet.AdjustCmd
	Description string // hashed with the command
}

func (s *Server) fuzzAdjust(body []byte) (any, error) {
	var b adjustBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	cmd, err := s.adjustCmd(&b)
	if err != nil {
		return nil, err
	}
	return adjustDecoded{cmd, b.Description}, nil
}

func (s *Server) fuzzCustomer(body []byte) (any, error) {
	var b customerBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	set, err := s.settings(&b)
	if err != nil {
		return nil, err
	}
	return set, nil
}

type holdDecoded struct {
	Customer  string
	Cmd       *wallet.HoldCmd
	ExpiresAt *string // as given: hashed
}

func (s *Server) fuzzHold(body []byte) (any, error) {
	var b holdBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	cmd, err := s.holdCmd(&b)
	if err != nil {
		return nil, err
	}
	return holdDecoded{b.CustomerID, cmd, b.ExpiresAt}, nil
}

// fuzzAdmin runs the common properties; encode, when not nil, encodes an
// accepted command back into a body.
func fuzzAdmin(f *testing.F, decode adminDecoder, sh *shape, encode func(any) []byte) {
	for _, s := range adminFuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		orig := bytes.Clone(body)
		got, err := decode(body)
		if !bytes.Equal(body, orig) {
			t.Fatalf("the body was modified")
		}
		again, err2 := decode(body)
		if !reflect.DeepEqual(got, again) || !reflect.DeepEqual(err, err2) {
			t.Fatalf("decoding %q twice: %+v, %v then %+v, %v", body, got, err, again, err2)
		}
		var c jsonCheck
		isJSON := c.run(body)
		deep := !isJSON && strings.Contains(c.errMsg, "nested")
		if err != nil {
			ae, ok := err.(*apiError)
			if !ok || ae.Code == "" || ae.Message == "" || statusOf(ae.Code)/100 != 4 {
				t.Fatalf("refusal %#v of %q is not the contract's error", err, body)
			}
			if isJSON && ae.Code == "malformed_json" {
				t.Fatalf("JSON %q refused as malformed: %s", body, ae.Message)
			}
			if !isJSON && (strings.Contains(c.errMsg, "UTF-8") || strings.Contains(c.errMsg, "surrogate")) && ae.Code != "invalid_request" {
				t.Fatalf("%q (%s) refused as %s %q, want invalid_request", body, c.errMsg, ae.Code, ae.Field)
			}
			return
		}
		if !isJSON && !deep {
			t.Fatalf("accepted %q, which is not strict JSON: %s", body, c.message())
		}
		if !deep {
			checkStrictTree(t, body, sh)
			checkMutations(t, body, decode)
		}
		if encode != nil {
			re := encode(got)
			back, err := decode(re)
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Fatalf("accepted %q as %+v; encoded back as %s it decodes to %+v, %v", body, got, re, back, err)
			}
		}
	})
}

// checkStrictTree checks an accepted body against sh: no key twice in any
// object, and only documented keys, in their case, in documented objects.
func checkStrictTree(t *testing.T, body []byte, sh *shape) {
	t.Helper()
	var p fastjson.Parser
	v, err := p.ParseBytes(body)
	if err != nil {
		t.Fatalf("accepted %q, which fastjson cannot parse: %v", body, err)
	}
	var walk func(v *fastjson.Value, sh *shape, path string)
	walk = func(v *fastjson.Value, sh *shape, path string) {
		switch v.Type() {
		case fastjson.TypeObject:
			o, _ := v.Object()
			seen := map[string]bool{}
			o.Visit(func(k []byte, mv *fastjson.Value) {
				key := string(k)
				if seen[key] {
					t.Fatalf("accepted %q with %q twice in %s", body, key, orBody(path))
				}
				seen[key] = true
				var next *shape
				if sh != nil && sh.members != nil {
					s, ok := sh.members[key]
					if !ok {
						t.Fatalf("accepted %q with the undocumented key %q in %s", body, key, orBody(path))
					}
					next = s
				}
				walk(mv, next, path+"."+key)
			})
		case fastjson.TypeArray:
			a, _ := v.Array()
			var next *shape
			if sh != nil {
				next = sh.elem
			}
			for _, e := range a {
				walk(e, next, path+"[]")
			}
		}
	}
	walk(v, sh, "")
}

// checkMutations checks that an accepted body becomes invalid_request
// naming its first key when that key is repeated, given in another case,
// or given a value that is not valid Unicode.
func checkMutations(t *testing.T, body []byte, decode adminDecoder) {
	t.Helper()
	for _, m := range strictjson.Mutations(body) {
		_, err := decode(m.Body)
		ae, ok := err.(*apiError)
		if !ok || ae.Code != "invalid_request" || ae.Field != m.Field {
			t.Fatalf("%s: %q answered %v, want invalid_request naming %q", m.What, m.Body, err, m.Field)
		}
	}
}

func timeText(ns int64) any {
	switch ns {
	case 0:
		return nil
	case wallet.ExpiresPeriodEnd:
		return "period_end"
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func units(u int64, scale uint8) string {
	b := appendUnits(nil, u, scale)
	return string(b[1 : len(b)-1])
}

func FuzzTopUpBody(f *testing.F) {
	s := adminFuzzServer(f)
	fuzzAdmin(f, s.fuzzTopUp, topUpShape, func(v any) []byte {
		d := v.(topUpDecoded)
		m := map[string]any{"id": d.Cmd.ID, "account": d.Cmd.Account, "asset": d.Cmd.Asset,
			"amount": units(d.Cmd.Amount, d.Cmd.Scale), "source": d.Cmd.Source, "expires_at": timeText(d.Cmd.ExpiresAt)}
		switch {
		case d.Cmd.ExchangeRate != "": // paid in a currency, crediting a destination
			delete(m, "account")
			delete(m, "asset")
			m["amount"], m["currency"] = d.Cmd.Price, d.Cmd.Currency
			m["destination"] = map[string]string{"account_name": d.Cmd.Account, "asset": d.Cmd.Asset, "exchange_rate": d.Cmd.ExchangeRate}
		case d.Cmd.Currency != "":
			m["price"] = map[string]string{"amount": d.Cmd.Price, "currency": d.Cmd.Currency}
		}
		if d.Cmd.Description != "" {
			m["description"] = d.Cmd.Description
		}
		if d.Cmd.Metadata != nil {
			m["metadata"] = json.RawMessage(d.Cmd.Metadata)
		}
		return mustJSON(m)
	})
}

func FuzzAdjustBody(f *testing.F) {
	s := adminFuzzServer(f)
	fuzzAdmin(f, s.fuzzAdjust, adjustShape, func(v any) []byte {
		d := v.(adjustDecoded)
		m := map[string]any{"transaction_id": d.Cmd.TransactionID, "account_name": d.Cmd.Account, "asset": d.Cmd.Asset,
			"amount": units(d.Cmd.Amount, d.Cmd.Scale), "description": d.Description, "reason": d.Cmd.Source,
			"kind": d.Cmd.Kind.String(), "expires_at": timeText(d.Cmd.ExpiresAt)}
		if d.Cmd.Priority >= 0 {
			m["priority"] = d.Cmd.Priority
		}
		if d.Cmd.Metadata != nil {
			m["metadata"] = json.RawMessage(d.Cmd.Metadata)
		}
		return mustJSON(m)
	})
}

func FuzzCustomerBody(f *testing.F) {
	s := adminFuzzServer(f)
	fuzzAdmin(f, s.fuzzCustomer, customerShape, nil)
}

func FuzzHoldBody(f *testing.F) {
	s := adminFuzzServer(f)
	fuzzAdmin(f, s.fuzzHold, holdShape, func(v any) []byte {
		d := v.(holdDecoded)
		_, code, _ := strings.Cut(d.Cmd.Account, ":")
		asset, _ := s.e.Pricing().Asset(code)
		return mustJSON(map[string]any{"id": d.Cmd.ID, "customer_id": d.Customer, "account": d.Cmd.Account,
			"amount": units(d.Cmd.Amount, asset.Scale), "expires_at": d.ExpiresAt})
	})
}
