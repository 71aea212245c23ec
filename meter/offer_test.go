package meter

import (
	"errors"
	"os"
	"testing"
)

func offerPricing(t *testing.T) *Pricing {
	t.Helper()
	b, err := os.ReadFile("testdata/offers.json")
	if err != nil {
		t.Fatal(err)
	}
	return mustCompile(t, string(b))
}

// offerString renders what a purchase costs and buys.
func offerString(q OfferQuote) string {
	s := q.Price.String() + " " + q.Currency + " -> " + q.Credits.String() + " " + q.Account +
		" rate " + q.RateCredits.String() + "/" + q.RatePrice.String()
	if q.Price != q.ListPrice {
		s += " list " + q.ListPrice.String() + " less " + q.DiscountPct.String() + "%"
	}
	if q.Tier > 0 {
		s += " tier " + string(rune('0'+q.Tier))
	}
	if q.Plan != "" {
		s += " plan " + q.Plan
	}
	if q.Next != nil {
		s += " next +" + q.Next.Add.String() + " extra " + q.Next.ExtraCredits.String()
	}
	return s
}

// TestBuyProducts buys each product's offers from its public numbers.
func TestBuyProducts(t *testing.T) {
	p := offerPricing(t)
	for _, c := range []struct {
		name string
		b    Purchase
		want string
	}{
		{"alphio tier 1 with hint", Purchase{OfferID: "alphio_credits", Amount: "120"}, "120 USD -> 12000 default:CREDITS rate 100/1 tier 1 next +180 extra 7500"},
		{"alphio tier 2", Purchase{OfferID: "alphio_credits", Amount: "300"}, "300 USD -> 37500 default:CREDITS rate 125/1 tier 2"},
		{"alphio by credits, tier 1", Purchase{OfferID: "alphio_credits", Credits: "12000"}, "120 USD -> 12000 default:CREDITS rate 100/1 tier 1 next +180 extra 7500"},
		{"alphio by credits, tier 2", Purchase{OfferID: "alphio_credits", Credits: "50000"}, "400 USD -> 50000 default:CREDITS rate 125/1 tier 2"},
		// 30,000 credits cost $300 at tier 1, where tier 2 starts; $300
		// buys 37,500 there.
		{"alphio by credits, in the gap", Purchase{OfferID: "alphio_credits", Credits: "30000"}, "300 USD -> 37500 default:CREDITS rate 125/1 tier 2"},
		{"alphio by credits, rounded up", Purchase{OfferID: "alphio_credits", Credits: "1001"}, "10.01 USD -> 1001 default:CREDITS rate 100/1 tier 1 next +289.99 extra 7500"},
		{"wanclouds 100", Purchase{OfferID: "wan_100"}, "100 USD -> 8000000 default:CREDITS rate 8000000/100"},
		{"wanclouds 250 by price", Purchase{OfferID: "wan_250", Amount: "250"}, "250 USD -> 20000000 default:CREDITS rate 20000000/250"},
		{"wanclouds 1000 by credits", Purchase{OfferID: "wan_1000", Credits: "80000000"}, "1000 USD -> 80000000 default:CREDITS rate 80000000/1000"},
		{"wanclouds 2000", Purchase{OfferID: "wan_2000"}, "2000 USD -> 160000000 default:CREDITS rate 160000000/2000"},
		{"wanclouds custom", Purchase{OfferID: "wan_custom", Amount: "137.50"}, "137.5 USD -> 11000000 default:CREDITS rate 80000/1"},
		{"wanclouds custom by credits", Purchase{OfferID: "wan_custom", Credits: "1000001"}, "12.51 USD -> 1000001 default:CREDITS rate 80000/1"},
		{"apob nano", Purchase{OfferID: "apob_nano"}, "12 USD -> 4000 default:CREDITS rate 4000/12"},
		{"apob macro", Purchase{OfferID: "apob_macro"}, "40 USD -> 20000 default:CREDITS rate 20000/40"},
		{"apob macro by auto-reload", Purchase{OfferID: "apob_macro", AutoReload: true}, "36 USD -> 20000 default:CREDITS rate 20000/40 list 40 less 10%"},
		{"apob mega by auto-reload", Purchase{OfferID: "apob_mega", AutoReload: true, Plan: "apob_basic"}, "70 USD -> 60000 default:CREDITS rate 60000/100 list 100 less 30%"},
		{"nano has no discount", Purchase{OfferID: "apob_nano", AutoReload: true}, "12 USD -> 4000 default:CREDITS rate 4000/12"},
		{"make core 2000", Purchase{OfferID: "make_extra", Credits: "2000", Plan: "make_core"}, "1.8 USD -> 2000 default:CREDITS rate 10000/9 plan make_core"},
		{"make pro 2000", Purchase{OfferID: "make_extra", Credits: "2000", Plan: "make_pro"}, "3.2 USD -> 2000 default:CREDITS rate 10000/16 plan make_pro"},
		{"make core by money", Purchase{OfferID: "make_extra", Amount: "1.80", Plan: "make_core"}, "1.8 USD -> 2000 default:CREDITS rate 10000/9 plan make_core"},
		{"pro pack on pro", Purchase{OfferID: "pro_pack", Plan: "make_pro"}, "50 USD -> 30000 default:CREDITS rate 30000/50"},
	} {
		q, err := p.Buy(c.b)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got := offerString(q); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

// TestBuyRefusals: each refusal has its own code and the field it is about.
func TestBuyRefusals(t *testing.T) {
	p := offerPricing(t)
	for _, c := range []struct {
		name        string
		b           Purchase
		code, field string
	}{
		{"alphio $5", Purchase{OfferID: "alphio_credits", Amount: "5"}, "amount_out_of_range", "amount"},
		{"alphio $10,001", Purchase{OfferID: "alphio_credits", Amount: "10001"}, "amount_out_of_range", "amount"},
		{"alphio 999 credits ($9.99)", Purchase{OfferID: "alphio_credits", Credits: "999"}, "amount_out_of_range", "credits"},
		{"alphio 2M credits", Purchase{OfferID: "alphio_credits", Credits: "2000000"}, "amount_out_of_range", "credits"},
		{"alphio cents too fine", Purchase{OfferID: "alphio_credits", Amount: "10.001"}, "invalid_amount", "amount"},
		{"negative", Purchase{OfferID: "alphio_credits", Amount: "-20"}, "invalid_amount", "amount"},
		{"both", Purchase{OfferID: "alphio_credits", Amount: "20", Credits: "2000"}, "invalid_request", "credits"},
		{"neither", Purchase{OfferID: "wan_custom"}, "invalid_request", "amount"},
		{"unknown", Purchase{OfferID: "nope", Amount: "20"}, "unknown_offer", "offer_id"},
		{"package for another price", Purchase{OfferID: "wan_100", Amount: "99"}, "package_mismatch", "amount"},
		{"package for other credits", Purchase{OfferID: "apob_nano", Credits: "4001"}, "package_mismatch", "credits"},
		{"make 1500", Purchase{OfferID: "make_extra", Credits: "1500", Plan: "make_core"}, "quantity_not_in_units", "credits"},
		{"make $1.85", Purchase{OfferID: "make_extra", Amount: "1.85", Plan: "make_core"}, "quantity_not_in_units", "amount"},
		{"make without a plan", Purchase{OfferID: "make_extra", Credits: "2000"}, "offer_requires_plan", "offer_id"},
		{"make on another plan", Purchase{OfferID: "make_extra", Credits: "2000", Plan: "apob_basic"}, "offer_not_eligible", "offer_id"},
		{"mega without a plan", Purchase{OfferID: "apob_mega"}, "offer_requires_plan", "offer_id"},
		{"pro pack on core", Purchase{OfferID: "pro_pack", Plan: "make_core"}, "offer_not_eligible", "offer_id"},
		{"wanclouds custom below min", Purchase{OfferID: "wan_custom", Credits: "1000"}, "amount_out_of_range", "credits"},
	} {
		q, err := p.Buy(c.b)
		var me *Error
		if !errors.As(err, &me) {
			t.Errorf("%s: got %s, %v; want %s", c.name, offerString(q), err, c.code)
			continue
		}
		if me.Code != c.code || me.Field != c.field || me.Message == "" {
			t.Errorf("%s: got %+v; want %s at %q", c.name, *me, c.code, c.field)
		}
	}
}

// TestBuyAgreesBothWays: buying the credits that an amount buys costs no
// more than that amount, for every cent from min to a few hundred dollars.
func TestBuyAgreesBothWays(t *testing.T) {
	p := offerPricing(t)
	for _, id := range []string{"alphio_credits", "wan_custom"} {
		for cents := int64(1000); cents <= 40000; cents += 7 {
			amt := UnitsDec(cents, 2).String()
			q, err := p.Buy(Purchase{OfferID: id, Amount: amt})
			if err != nil {
				t.Fatalf("%s %s: %v", id, amt, err)
			}
			back, err := p.Buy(Purchase{OfferID: id, Credits: q.Credits.String()})
			if err != nil {
				t.Fatalf("%s %s credits: %v", id, q.Credits, err)
			}
			if back.Price.Cmp(q.Price) > 0 || back.Credits.Cmp(q.Credits) < 0 {
				t.Fatalf("%s: %s buys %s, but %s credits cost %s for %s", id, amt, q.Credits, q.Credits, back.Price, back.Credits)
			}
		}
	}
}

// TestOfferDocumentRoundTrip: the canonical JSON of offers parses and
// compiles to the same JSON.
func TestOfferDocumentRoundTrip(t *testing.T) {
	p := offerPricing(t)
	doc, err := ParseDocument(p.JSON())
	if err != nil {
		t.Fatal(err)
	}
	again, err := Compile(doc, 2, p)
	if err != nil {
		t.Fatal(err)
	}
	if string(again.JSON()) != string(p.JSON()) {
		t.Fatalf("round trip changed the document:\n%s\n%s", p.JSON(), again.JSON())
	}
	if len(p.Offers()) != 11 {
		t.Fatalf("got %d offers", len(p.Offers()))
	}
}

// TestOfferCompileErrors: each invalid offer is refused at its path.
func TestOfferCompileErrors(t *testing.T) {
	const head = `{"assets":[{"code":"CREDITS","scale":0}],"topup_offers":[`
	for _, c := range []struct{ name, offers, field string }{
		{"two rates", `{"id":"a","currency":"USD","account":"default:CREDITS","rate":{"price":"1","credits":"1"},"package":{"price":"1","credits":"1"}}`, "topup_offers[0]"},
		{"no rate", `{"id":"a","currency":"USD","account":"default:CREDITS"}`, "topup_offers[0]"},
		{"package without id", `{"currency":"USD","account":"default:CREDITS","package":{"price":"1","credits":"1"}}`, "topup_offers[0].id"},
		{"bad id", `{"id":"a b","currency":"USD","account":"default:CREDITS","package":{"price":"1","credits":"1"}}`, "topup_offers[0].id"},
		{"duplicate id", `{"id":"a","currency":"USD","account":"default:CREDITS","package":{"price":"1","credits":"1"}},{"id":"a","currency":"EUR","account":"default:CREDITS","package":{"price":"1","credits":"1"}}`, "topup_offers[1].id"},
		{"package with min", `{"id":"a","currency":"USD","account":"default:CREDITS","min":"1","package":{"price":"1","credits":"1"}}`, "topup_offers[0]"},
		{"package price in mills", `{"id":"a","currency":"USD","account":"default:CREDITS","package":{"price":"1.005","credits":"1"}}`, "topup_offers[0].package.price"},
		{"package fractional credits", `{"id":"a","currency":"USD","account":"default:CREDITS","package":{"price":"1","credits":"1.5"}}`, "topup_offers[0].package.credits"},
		{"rate without credits", `{"id":"a","currency":"USD","account":"default:CREDITS","rate":{"price":"1"}}`, "topup_offers[0].rate.credits"},
		{"rate of zero price", `{"id":"a","currency":"USD","account":"default:CREDITS","rate":{"price":"0","credits":"1"}}`, "topup_offers[0].rate.price"},
		{"max below min", `{"id":"a","currency":"USD","account":"default:CREDITS","min":"5","max":"4","rate":{"price":"1","credits":"1"}}`, "topup_offers[0].max"},
		{"fractional unit", `{"id":"a","currency":"USD","account":"default:CREDITS","unit":"0.5","rate":{"price":"1","credits":"1"}}`, "topup_offers[0].unit"},
		{"discount 100", `{"id":"a","currency":"USD","account":"default:CREDITS","auto_reload_discount_pct":"100","package":{"price":"1","credits":"1"}}`, "topup_offers[0].auto_reload_discount_pct"},
		{"plan twice", `{"id":"a","currency":"USD","account":"default:CREDITS","plan_rates":[{"plan":"p","price":"1","credits":"1"},{"plan":"p","price":"2","credits":"1"}]}`, "topup_offers[0].plan_rates[1]"},
		{"no plans", `{"id":"a","currency":"USD","account":"default:CREDITS","eligibility":{"plans":[]},"package":{"price":"1","credits":"1"}}`, "topup_offers[0].eligibility.plans"},
	} {
		doc, err := ParseDocument([]byte(head + c.offers + `]}`))
		if err == nil {
			_, err = Compile(doc, 1, nil)
		}
		var me *Error
		if !errors.As(err, &me) || me.Field != c.field || me.Message == "" {
			t.Errorf("%s: got %v; want an error at %q", c.name, err, c.field)
		}
	}
}
