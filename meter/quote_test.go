package meter

import (
	"errors"
	"reflect"
	"strconv"
	"testing"
)

// quoteString renders a quote compactly for comparison; next is "-" when
// there is no next tier.
func quoteString(q Quote) string {
	next := "-"
	if q.Next != nil {
		next = "add " + q.Next.Add.String() + " extra " + q.Next.ExtraCredits.String()
	}
	return q.Amount.String() + " " + q.Currency + " -> " + q.Credits.String() + " " + q.Account +
		" tier " + strconv.Itoa(q.Tier) + " rate " + q.Rate.String() + " save " + q.SavePct.String() + " next " + next
}

func wantQuote(t *testing.T, p *Pricing, amount, currency, want string) {
	t.Helper()
	q, err := p.Quote(amount, currency)
	if err != nil {
		t.Errorf("Quote(%q, %q): %v", amount, currency, err)
		return
	}
	if got := quoteString(q); got != want {
		t.Errorf("Quote(%q, %q) =\n  %s\nwant\n  %s", amount, currency, got, want)
	}
}

func wantQuoteErr(t *testing.T, p *Pricing, amount, currency, code, field string) {
	t.Helper()
	q, err := p.Quote(amount, currency)
	var me *Error
	if !errors.As(err, &me) {
		t.Errorf("Quote(%q, %q) = %s, %v; want *Error %s", amount, currency, quoteString(q), err, code)
		return
	}
	if me.Code != code || me.Field != field || me.Message == "" {
		t.Errorf("Quote(%q, %q): %#v, want code %s field %q", amount, currency, *me, code, field)
	}
}

// TestQuoteContractOffer: the contract's offer (USD, min 10, max 10000,
// 100 credits per dollar from 10, 125 from 300; CREDITS has scale 0).
func TestQuoteContractOffer(t *testing.T) {
	p := mustCompile(t, exampleDoc)
	wantQuote(t, p, "120", "USD", "120 USD -> 12000 default:CREDITS tier 1 rate 100 save 0 next add 180 extra 7500")
	wantQuote(t, p, "10", "USD", "10 USD -> 1000 default:CREDITS tier 1 rate 100 save 0 next add 290 extra 7500")
	wantQuote(t, p, "299.999999", "USD", "299.999999 USD -> 29999 default:CREDITS tier 1 rate 100 save 0 next add 0.000001 extra 7500")
	wantQuote(t, p, "300", "USD", "300 USD -> 37500 default:CREDITS tier 2 rate 125 save 20 next -")
	wantQuote(t, p, "10000", "USD", "10000 USD -> 1250000 default:CREDITS tier 2 rate 125 save 20 next -")
	// Exact decimals, trailing zeros as given, leading zeros.
	wantQuote(t, p, "10.01", "USD", "10.01 USD -> 1001 default:CREDITS tier 1 rate 100 save 0 next add 289.99 extra 7500")
	wantQuote(t, p, "120.50", "USD", "120.5 USD -> 12050 default:CREDITS tier 1 rate 100 save 0 next add 179.5 extra 7500")
	wantQuote(t, p, "0120", "USD", "120 USD -> 12000 default:CREDITS tier 1 rate 100 save 0 next add 180 extra 7500")
	// Fractional credits are rounded down, never up.
	wantQuote(t, p, "10.009", "USD", "10.009 USD -> 1000 default:CREDITS tier 1 rate 100 save 0 next add 289.991 extra 7500")
	wantQuote(t, p, "300.007999", "USD", "300.007999 USD -> 37500 default:CREDITS tier 2 rate 125 save 20 next -")
	wantQuote(t, p, "300.008", "USD", "300.008 USD -> 37501 default:CREDITS tier 2 rate 125 save 20 next -")

	wantQuoteErr(t, p, "9.99", "USD", "amount_out_of_range", "amount")
	wantQuoteErr(t, p, "10000.01", "USD", "amount_out_of_range", "amount")
	wantQuoteErr(t, p, "0", "USD", "amount_out_of_range", "amount")
	wantQuoteErr(t, p, "-120", "USD", "amount_out_of_range", "amount")
	for _, bad := range []string{"", "abc", "1e2", "+120", "120.", ".5", "12 0", "10.0000001", "99999999999999999999"} {
		wantQuoteErr(t, p, bad, "USD", "invalid_amount", "amount")
	}
	for _, cur := range []string{"EUR", "usd", "", "USD ", "CREDITS"} {
		wantQuoteErr(t, p, "120", cur, "unknown_currency", "currency")
	}
}

// TestQuoteTiers: save_pct truncated to 2 places with trailing zeros
// trimmed, negative for a dearer tier; extra_credits against the current
// rate at the next tier's from; credits rounded to a credited scale > 0;
// a currency that is not an asset takes up to 9 decimal places.
func TestQuoteTiers(t *testing.T) {
	p := mustCompile(t, `{"assets":[{"code":"CREDITS","scale":0},{"code":"PTS","scale":2},{"code":"EUR","scale":2}],
 "topup_offers":[
  {"currency":"EUR","account":"default:CREDITS","min":"5","max":"1000","tiers":[
    {"from":"5","credits_per_unit":"100"},{"from":"50","credits_per_unit":"101"},{"from":"100","credits_per_unit":"150"},
    {"from":"200","credits_per_unit":"160"},{"from":"400","credits_per_unit":"90"},{"from":"500","credits_per_unit":"0.7"}]},
  {"currency":"GBP","account":"main:PTS","min":"0.5","max":"100","tiers":[
    {"from":"0.5","credits_per_unit":"33.333"},{"from":"1.25","credits_per_unit":"40"}]}]}`)
	wantQuote(t, p, "49.99", "EUR", "49.99 EUR -> 4999 default:CREDITS tier 1 rate 100 save 0 next add 0.01 extra 50")
	// 1 - 100/101 = 0.990099..% -> 0.99.
	wantQuote(t, p, "50", "EUR", "50 EUR -> 5050 default:CREDITS tier 2 rate 101 save 0.99 next add 50 extra 4900")
	// 1 - 100/150 = 33.333..% -> 33.33; extra at 200: 200*160 - 200*150.
	wantQuote(t, p, "199.99", "EUR", "199.99 EUR -> 29998 default:CREDITS tier 3 rate 150 save 33.33 next add 0.01 extra 2000")
	// 1 - 100/160 = 37.5%: trailing zero trimmed.
	wantQuote(t, p, "200", "EUR", "200 EUR -> 32000 default:CREDITS tier 4 rate 160 save 37.5 next add 200 extra -28000")
	// 1 - 100/90 = -11.111..% -> -11.11 (toward zero).
	wantQuote(t, p, "400", "EUR", "400 EUR -> 36000 default:CREDITS tier 5 rate 90 save -11.11 next add 100 extra -44650")
	// 0.7 per unit: 0.7 * 500.01 = 350.007 -> 350; 1 - 100/0.7 = -14185.714..%.
	wantQuote(t, p, "500.01", "EUR", "500.01 EUR -> 350 default:CREDITS tier 6 rate 0.7 save -14185.71 next -")
	wantQuoteErr(t, p, "50.001", "EUR", "invalid_amount", "amount") // EUR has scale 2

	// PTS has scale 2: 0.5 * 33.333 = 16.6665 -> 16.66. GBP is not an asset:
	// up to 9 decimal places.
	wantQuote(t, p, "0.5", "GBP", "0.5 GBP -> 16.66 main:PTS tier 1 rate 33.333 save 0 next add 0.75 extra 8.34")
	wantQuote(t, p, "1.249999999", "GBP", "1.249999999 GBP -> 41.66 main:PTS tier 1 rate 33.333 save 0 next add 0.000000001 extra 8.34")
	wantQuote(t, p, "1.25", "GBP", "1.25 GBP -> 50 main:PTS tier 2 rate 40 save 16.66 next -")
	wantQuoteErr(t, p, "1.2500000001", "GBP", "invalid_amount", "amount")
}

// TestQuoteNoOffers: a pricing without offers quotes nothing.
func TestQuoteNoOffers(t *testing.T) {
	wantQuoteErr(t, Empty(), "120", "USD", "unknown_currency", "currency")
	wantQuoteErr(t, mustCompile(t, `{"assets":[{"code":"CREDITS","scale":0}]}`), "120", "USD", "unknown_currency", "currency")
}

// TestQuoteExtremeOffer: results that cannot be represented are errors on
// the offer, never wrong numbers.
func TestQuoteExtremeOffer(t *testing.T) {
	p := mustCompile(t, `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":2}],
 "topup_offers":[
  {"currency":"USD","account":"default:CREDITS","min":"1","max":"1e30",
   "tiers":[{"from":"1","credits_per_unit":"1e-10"},{"from":"1e25","credits_per_unit":"1e-10"}]},
  {"currency":"EUR","account":"default:CREDITS","min":"1","max":"10",
   "tiers":[{"from":"1","credits_per_unit":"1e15"},{"from":"2","credits_per_unit":"1e-60"}]}]}`)
	// Credits below one unit round down to 0; add has 16 significant digits.
	wantQuote(t, p, "1000000000", "USD", "1000000000 USD -> 0 default:CREDITS tier 1 rate 0.0000000001 save 0 next add 9999999999999999000000000 extra 0")
	// 1e25 - 1.01 has 27 significant digits.
	wantQuoteErr(t, p, "1.01", "USD", "invalid_pricing", "topup_offers[0].tiers[1].from")
	// At 2, tier 2 sells 2 * 1e-60 -> 0 credits, tier 1 would sell 2 * 1e15.
	wantQuote(t, p, "1", "EUR", "1 EUR -> 1000000000000000 default:CREDITS tier 1 rate 1000000000000000 save 0 next add 1 extra -2000000000000000")
	// save_pct = (1 - 1e75) * 100 does not fit.
	wantQuoteErr(t, p, "2", "EUR", "invalid_pricing", "topup_offers[1].tiers[1].credits_per_unit")
	p = mustCompile(t, `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":2}],
 "topup_offers":[{"currency":"USD","account":"default:CREDITS","min":"1","max":"10000","tiers":[{"from":"1","credits_per_unit":"1e15"}]}]}`)
	wantQuote(t, p, "1000", "USD", "1000 USD -> 1000000000000000000 default:CREDITS tier 1 rate 1000000000000000 save 0 next -")
	wantQuoteErr(t, p, "1000.01", "USD", "invalid_pricing", "topup_offers[0].tiers[0].credits_per_unit")
}

// TestQuoteOffersTail: the offers decoded from the tail of the canonical
// JSON are the document's, even when a price's map key imitates the member.
func TestQuoteOffersTail(t *testing.T) {
	for _, doc := range []string{
		exampleDoc,
		`{"assets":[{"code":"CREDITS","scale":0}],"prices":[{"event_type":"x","account":"default:CREDITS","dimensions":["k"],
		  "unit_price":{"],\"topup_offers\":[":"1","topup_offers":"2","*":"3"}}]}`,
		`{"assets":[{"code":"CREDITS","scale":0}],"prices":[{"event_type":"x","account":"default:CREDITS","dimensions":["k"],
		  "unit_price":{",\"topup_offers\":[":"1","*":"3"}}],
		  "topup_offers":[{"currency":"EUR","account":"default:CREDITS","min":"1","max":"2","tiers":[{"from":"1","credits_per_unit":"3"}]}]}`,
	} {
		p := mustCompile(t, doc)
		got, want := p.topupOffers(), p.Document().TopupOffers
		if !reflect.DeepEqual(got, want) {
			t.Errorf("topupOffers() = %+v, want %+v", got, want)
		}
	}
}
