package sink

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/sink/chtest"
)

// The ClickHouse tailer gives each usage row the dimension value of the
// price that charged its account, under the pricing version that priced
// the event, also after the pricing changed its dimensions.
func TestTailerDimensions(t *testing.T) {
	const v1 = `{"assets":[{"code":"CREDITS","scale":0},{"code":"TOK","scale":0}],
	 "prices":[
	  {"event_type":"image_generated","account":"default:CREDITS","dimensions":["size"],"unit_price":{"1024x1024":"4","*":"1"}},
	  {"event_type":"image_generated","account":"tokens:TOK","unit_price":"1"}]}`
	const v2 = `{"assets":[{"code":"CREDITS","scale":0},{"code":"TOK","scale":0}],
	 "prices":[
	  {"event_type":"image_generated","account":"default:CREDITS","dimensions":["size","quality"],"unit_price":{"1024x1024/hd":"8","*":"1"}},
	  {"event_type":"image_generated","account":"tokens:TOK","unit_price":"1"}]}`
	e, err := balance.Open(balance.Options{Dir: t.TempDir(), Shards: 1, Sinks: []string{"clickhouse"},
		DefaultPricing: []byte(v1), Log: testLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() }) // after shipAll's tailer stops
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	for i, asset := range []string{"CREDITS", "TOK"} {
		account := map[string]string{"CREDITS": "default", "TOK": "tokens"}[asset]
		if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t" + asset, Account: account, Asset: asset, Amount: 1000}, [16]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	charge := func(id, data string, fields ...meter.Field) {
		t.Helper()
		in := &balance.EventIn{Event: &meter.Event{ID: id, CustomerID: "c1", EventType: "image_generated",
			OccurredAt: time.Now().UnixNano(), Data: fields, DataJSON: []byte(data)}, Hash: [16]byte{1}}
		if err := e.Events([]*balance.EventIn{in}); err != nil || in.Result.Status != balance.EventCharged {
			t.Fatalf("event %s: %v, %+v", id, err, in.Result)
		}
	}
	size := func(kind meter.FieldKind, text string) meter.Field {
		return meter.Field{Key: "size", Kind: kind, Text: text}
	}
	charge("e1", `{"size":"1024x1024"}`, size(meter.FieldString, "1024x1024"))
	charge("e2", `{"size":512}`, size(meter.FieldNumber, "512"))
	charge("e3", `{}`)
	if _, err := e.SetPricing([]byte(v2)); err != nil {
		t.Fatal(err)
	}
	charge("e4", `{"size":"1024x1024","quality":"hd"}`, size(meter.FieldString, "1024x1024"),
		meter.Field{Key: "quality", Kind: meter.FieldString, Text: "hd"})
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}

	srv := chtest.Start(t)
	db := srv.Database(t)
	shipAll(t, e, openCH(t, srv, db), TailerConfig{BatchAge: time.Millisecond, Dimensions: true, Log: testLog})
	got := srv.Query(t, "SELECT event_id, account, pricing_version, dimension, toString(charge) FROM "+db+".usage_events FINAL ORDER BY event_id, account")
	want := strings.Join([]string{
		"e1\tdefault:CREDITS\t1\t1024x1024\t4",
		"e1\ttokens:TOK\t1\t\t1",
		"e2\tdefault:CREDITS\t1\t512\t1",
		"e2\ttokens:TOK\t1\t\t1",
		"e3\tdefault:CREDITS\t1\t\t1",
		"e3\ttokens:TOK\t1\t\t1",
		"e4\tdefault:CREDITS\t2\t1024x1024/hd\t8",
		"e4\ttokens:TOK\t2\t\t1",
	}, "\n")
	if trimZeros(got) != want {
		t.Errorf("usage_events:\n%s\nwant\n%s", got, want)
	}
	got = srv.Query(t, "SELECT dimension, sum(events), toString(sum(charge)) FROM "+db+".usage_dimension_daily WHERE account = 'default:CREDITS' GROUP BY dimension ORDER BY dimension")
	if want := "\t1\t1\n1024x1024\t1\t4\n1024x1024/hd\t1\t8\n512\t1\t1"; trimZeros(got) != want {
		t.Errorf("usage_dimension_daily:\n%s\nwant\n%s", got, want)
	}
}

// shipAll runs a tailer of e into c until it has shipped all of e's
// outbox; it stops when the test ends.
func shipAll(t *testing.T, e *balance.Engine, c *ClickHouse, cfg TailerConfig) {
	t.Helper()
	tailer := NewTailer(e, c, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tailer.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for tailer.Status().Shipped < e.OutboxWatermark() {
		if time.Now().After(deadline) {
			t.Fatalf("not shipped: %+v", tailer.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
