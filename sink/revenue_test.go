package sink

import (
	"os"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/sink/chtest"
)

// Top-ups that buy offers, plain top-ups with a price and auto-reloads
// land in ClickHouse with their price, currency, offer, source and
// description, and revenue_daily sums them per currency and offer.
func TestTailerRevenue(t *testing.T) {
	doc, err := os.ReadFile("../meter/testdata/offers.json")
	if err != nil {
		t.Fatal(err)
	}
	e, err := balance.Open(balance.Options{Dir: t.TempDir(), Shards: 1, Sinks: []string{"clickhouse"},
		DefaultPricing: doc, Log: testLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() }) // after shipAll's tailer stops
	plan := &wallet.Plan{ID: "make_core", Allocations: []wallet.Allocation{{Account: "default", Asset: "CREDITS", Amount: 10000,
		Period: wallet.PeriodMonth, Anchor: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()}}}
	if _, err := e.PutCustomer("c1", wallet.Settings{Plan: plan}); err != nil {
		t.Fatal(err)
	}
	buy := func(id string, c *wallet.TopUpCmd) {
		t.Helper()
		c.ID = id
		if c.Source == "" {
			c.Source = "topup"
		}
		if _, err := e.TopUp("c1", c, [16]byte{byte(len(id)), id[0], id[len(id)-1]}); err != nil {
			t.Fatalf("top-up %s: %v", id, err)
		}
	}
	buy("a120", &wallet.TopUpCmd{Offer: &meter.Purchase{OfferID: "alphio_credits", Amount: "120"}})
	buy("a300", &wallet.TopUpCmd{Offer: &meter.Purchase{OfferID: "alphio_credits", Amount: "300"}})
	buy("m2000", &wallet.TopUpCmd{Offer: &meter.Purchase{OfferID: "make_extra", Credits: "2000"}})
	buy("gift", &wallet.TopUpCmd{Account: "default", Asset: "CREDITS", Amount: 500, Source: "custom_credits",
		Description: "Support gift"})
	buy("eur", &wallet.TopUpCmd{Account: "default", Asset: "CREDITS", Amount: 1000, Price: "9.99", Currency: "EUR"})
	in := &balance.EventIn{Event: &meter.Event{ID: "e1", CustomerID: "c1", EventType: "task", Description: "A task",
		OccurredAt: time.Now().UnixNano(), DataJSON: []byte(`{}`)}, Hash: [16]byte{9}}
	if err := e.Events([]*balance.EventIn{in}); err != nil || in.Result.Status != balance.EventCharged {
		t.Fatalf("event: %v, %+v", err, in.Result)
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}

	srv := chtest.Start(t)
	db := srv.Database(t)
	shipAll(t, e, openCH(t, srv, db), TailerConfig{BatchAge: time.Millisecond, Log: testLog})
	got := srv.Query(t, "SELECT currency, offer_id, type, sum(entries), toString(sum(credits)), toString(sum(revenue)) FROM "+db+
		".revenue_daily GROUP BY currency, offer_id, type ORDER BY currency, offer_id, type")
	want := "EUR\t\ttopup\t1\t1000\t9.99\n" +
		"USD\talphio_credits\ttopup\t2\t49500\t420\n" +
		"USD\tmake_extra\ttopup\t1\t2000\t1.8"
	if trimZeros(got) != want {
		t.Errorf("revenue_daily:\n%s\nwant\n%s", got, want)
	}
	got = srv.Query(t, "SELECT type, reference, source, description FROM "+db+".ledger_entries FINAL WHERE type IN ('topup', 'usage') ORDER BY seq")
	want = "topup\ta120\ttopup\t\n" +
		"topup\ta300\ttopup\t\n" +
		"topup\tm2000\ttopup\t\n" +
		"topup\tgift\tcustom_credits\tSupport gift\n" +
		"topup\teur\ttopup\t\n" +
		"usage\t\tplan\tA task"
	if got != want {
		t.Errorf("ledger_entries:\n%s\nwant\n%s", got, want)
	}
	if got := srv.Query(t, "SELECT description FROM "+db+".usage_events FINAL"); got != "A task" {
		t.Errorf("usage_events description: %q", got)
	}
}
