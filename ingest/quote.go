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
	if q.Next == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"add":`...)
		b = appendString(b, q.Next.Add.String())
		b = append(b, `,"extra_credits":`...)
		b = appendString(b, q.Next.ExtraCredits.String())
		b = append(b, '}')
	}
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}
