package ingest

import (
	"strconv"

	"github.com/meterd/meterd/meter"
	"github.com/valyala/fasthttp"
)

// topUpQuote serves GET /v1/topup-quote?amount=120&currency=USD: what a
// top-up of amount buys under the offer for currency in the pricing in force
// (meter.Pricing.Quote). Nothing is stored.
//
// Both parameters are required, each exactly once: a quote names its
// currency even when the pricing has a single offer, so that a client keeps
// working when a second offer is added. Any other parameter is refused with
// 400 invalid_request naming it. Errors: a missing or malformed amount is
// 400 invalid_amount (as amounts in bodies are); a currency without an offer
// is 422 unknown_currency (like unknown_asset: the request is readable, the
// pricing cannot serve it); an amount outside the offer's min and max is
// 422 amount_out_of_range.
func (s *Server) topUpQuote(ctx *fasthttp.RequestCtx) {
	var amount, currency []byte
	var haveAmount, haveCurrency bool
	var bad *apiError
	for k, v := range ctx.QueryArgs().All() {
		if bad != nil {
			break
		}
		switch string(k) {
		case "amount":
			if haveAmount {
				bad = badRequest("invalid_request", "amount", "amount is given more than once")
			}
			amount, haveAmount = v, true
		case "currency":
			if haveCurrency {
				bad = badRequest("invalid_request", "currency", "currency is given more than once")
			}
			currency, haveCurrency = v, true
		default:
			bad = badRequest("invalid_request", string(k), "unknown query parameter %q: this endpoint takes amount and currency", k)
		}
	}
	switch {
	case bad != nil:
	case !haveAmount:
		bad = badRequest("invalid_amount", "amount", "amount is required, e.g. ?amount=120&currency=USD")
	case len(currency) == 0:
		bad = badRequest("invalid_request", "currency", "currency is required, e.g. ?amount=120&currency=USD")
	}
	if bad != nil {
		writeError(ctx, bad.Code, bad.Message, bad.Field)
		return
	}
	p := s.e.Pricing()
	q, err := p.Quote(string(amount), string(currency))
	if err != nil {
		me, ok := err.(*meter.Error)
		if !ok {
			s.writeErr(ctx, err)
			return
		}
		writeError(ctx, me.Code, me.Message, me.Field)
		return
	}
	b := make([]byte, 0, 256)
	b = append(b, `{"amount":`...)
	b = appendString(b, q.Amount.String())
	b = append(b, `,"currency":`...)
	b = appendString(b, q.Currency)
	b = append(b, `,"account":`...)
	b = appendString(b, q.Account)
	b = append(b, `,"credits":`...)
	b = appendString(b, q.Credits.String())
	b = append(b, `,"tier":`...)
	b = strconv.AppendInt(b, int64(q.Tier), 10)
	b = append(b, `,"rate":`...)
	b = appendString(b, q.Rate.String())
	b = append(b, `,"save_pct":`...)
	b = appendString(b, q.SavePct.String())
	b = append(b, `,"next_tier":`...)
	b = append(appendNextTier(b, q.Next), '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// offerQuote serves GET /v1/offers/{offer_id}/quote: what the offer sells
// for ?amount= (money paid) or ?credits= (credits bought), for a buyer on
// ?plan= or for the customer ?customer_id= (whose plan decides eligibility
// and plan rates), bought by auto-reload when ?auto_reload=true (its
// discount applies). Nothing is stored. Errors are those of a purchase
// (meter.Pricing.Buy), with field the query parameter.
func (s *Server) offerQuote(ctx *fasthttp.RequestCtx, id string) {
	var buy meter.Purchase
	buy.OfferID = id
	seen := map[string]bool{}
	var customer string
	var bad *apiError
	for k, v := range ctx.QueryArgs().All() {
		key := string(k)
		if seen[key] && bad == nil {
			bad = badRequest("invalid_request", key, "%s is given more than once", key)
		}
		seen[key] = true
		switch key {
		case "amount":
			buy.Amount = string(v)
		case "credits":
			buy.Credits = string(v)
		case "plan":
			buy.Plan = string(v)
		case "customer_id":
			customer = string(v)
		case "auto_reload":
			switch string(v) {
			case "true":
				buy.AutoReload = true
			case "false":
			default:
				bad = badRequest("invalid_request", key, "auto_reload must be true or false")
			}
		default:
			if bad == nil {
				bad = badRequest("invalid_request", key, "unknown query parameter %q: this endpoint takes amount or credits, plan or customer_id, and auto_reload", k)
			}
		}
	}
	if bad == nil && customer != "" {
		switch {
		case seen["plan"]:
			bad = badRequest("invalid_request", "plan", "give plan or customer_id, not both")
		case !validID(customer):
			bad = badRequest("invalid_id", "customer_id", "customer_id must be 1-128 characters of [A-Za-z0-9._:-]")
		}
	}
	if bad != nil {
		writeError(ctx, bad.Code, bad.Message, bad.Field)
		return
	}
	if customer != "" {
		w, err := s.e.Wallet(customer)
		if err != nil {
			s.writeErr(ctx, err)
			return
		}
		if pl := w.Settings.Plan; pl != nil {
			buy.Plan = pl.ID
		}
	}
	q, err := s.e.Pricing().Buy(buy)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendOfferQuote(nil, &q))
}

// appendOfferQuote appends what a purchase under an offer costs and buys.
func appendOfferQuote(b []byte, q *meter.OfferQuote) []byte {
	b = append(b, `{"offer_id":`...)
	b = appendString(b, q.OfferID)
	b = append(b, `,"account":`...)
	b = appendString(b, q.Account)
	b = append(b, `,"currency":`...)
	b = appendString(b, q.Currency)
	b = append(b, `,"amount":`...)
	b = appendString(b, q.Price.String())
	b = append(b, `,"list_amount":`...)
	b = appendString(b, q.ListPrice.String())
	b = append(b, `,"discount_pct":`...)
	b = appendString(b, q.DiscountPct.String())
	b = append(b, `,"credits":`...)
	b = appendString(b, q.Credits.String())
	b = append(b, `,"rate":{"price":`...)
	b = appendString(b, q.RatePrice.String())
	b = append(b, `,"credits":`...)
	b = appendString(b, q.RateCredits.String())
	b = append(b, `},"tier":`...)
	if q.Tier == 0 {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendInt(b, int64(q.Tier), 10)
	}
	b = append(b, `,"plan":`...)
	b = appendOptString(b, q.Plan)
	b = append(b, `,"save_pct":`...)
	if q.SavePct == nil {
		b = append(b, "null"...)
	} else {
		b = appendString(b, q.SavePct.String())
	}
	b = append(b, `,"next_tier":`...)
	return append(appendNextTier(b, q.Next), '}')
}

// appendNextTier appends a tiered quote's next tier, or null.
func appendNextTier(b []byte, n *meter.NextTier) []byte {
	if n == nil {
		return append(b, "null"...)
	}
	b = append(b, `{"add":`...)
	b = appendString(b, n.Add.String())
	b = append(b, `,"extra_credits":`...)
	b = appendString(b, n.ExtraCredits.String())
	return append(b, '}')
}
