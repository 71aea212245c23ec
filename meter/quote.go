package meter

import (
	"math/big"
	"strings"
)

// quoteScaleDefault is the number of decimal places an amount may have when
// the offer's currency is not an asset of the pricing: the largest scale an
// asset may have.
const quoteScaleDefault = 9

// Quote is what one top-up payment buys under the top-up offer for its
// currency, computed by Pricing.Quote. Every decimal is exact.
type Quote struct {
	Amount   Dec    // the amount paid, in Currency
	Currency string // the offer's currency
	Account  string // the account credited, "name:ASSET" (the offer's account)
	Credits  Dec    // Amount * Rate, rounded down to the credited asset's scale
	Tier     int    // the tier that applies, 1-based: the highest whose from <= Amount
	Rate     Dec    // credits_per_unit of Tier
	// SavePct is how much less one credit costs at Tier than at tier 1, in
	// percent: (1 - rate1/Rate) * 100, truncated toward zero to 2 decimal
	// places ("0" at tier 1, "20" for 125 credits per unit against 100). It is
	// negative when Tier sells fewer credits per unit than tier 1.
	SavePct Dec
	// Next is the tier above Tier, nil when Tier is the highest.
	Next *NextTier
}

// NextTier tells how to reach the next tier and what that is worth.
type NextTier struct {
	// Add is what to add to Amount to reach the next tier: next.from - Amount.
	Add Dec
	// ExtraCredits is the bonus of the next tier: the credits next.from buys
	// at the next tier's rate minus the credits the same next.from would buy
	// at the current tier's rate, each rounded down to the credited asset's
	// scale. It is not the difference from Credits: paying next.from buys
	// Credits + (Add at the current rate) + ExtraCredits, give or take the
	// rounding. It is negative when the next tier sells fewer credits per unit.
	ExtraCredits Dec
}

// Quote prices a top-up of amount (a plain decimal, as the contract's
// amounts: digits with an optional '.' and fraction) in currency under the
// offer for that currency in p's topup_offers. It is a pure function of p
// and its arguments.
//
// The amount may have at most as many decimal places as the currency's
// asset has (when the currency is an asset of p; otherwise 9). Credits are
// rounded down to the scale of the credited asset, never up: a quote never
// promises a credit that was not paid for.
//
// Errors are *Error with Field "amount" or "currency":
//   - "invalid_amount": amount is not a plain decimal, has too many decimal
//     places, or exceeds MaxUnits units of the currency;
//   - "unknown_currency": p has no top-up offer for currency (the match is
//     exact: "usd" is not "USD");
//   - "amount_out_of_range": amount is below the offer's min or above its max
//     (a negative amount is below min).
//
// An offer so extreme that a result cannot be represented (credits above
// MaxUnits units, a decimal of more than 19 significant digits) gives
// "invalid_pricing" with Field the offer's path in the document.
func (p *Pricing) Quote(amount, currency string) (Quote, error) {
	offers := p.topupOffers()
	oi := -1
	for i := range offers {
		if offers[i].Currency == currency && offers[i].Tiers != nil {
			oi = i
			break
		}
	}
	if oi < 0 {
		return Quote{}, unknownCurrency(currency, offers)
	}
	o := &offers[oi]
	scale := uint8(quoteScaleDefault)
	if a, ok := p.Asset(currency); ok {
		scale = a.Scale
	}
	units, err := ParseUnits(amount, scale)
	if err != nil {
		e := err.(*Error)
		e.Field = "amount"
		return Quote{}, e
	}
	amt, _ := decOfBig(big.NewInt(units), -int(scale)) // |units| <= MaxUnits: 19 digits
	return p.tieredQuote(o, index("topup_offers", oi), amt)
}

// tieredQuote quotes amt under the tiered offer o, at path in the document.
func (p *Pricing) tieredQuote(o *TopupOffer, path string, amt Dec) (Quote, error) {
	currency := o.Currency
	if amt.Cmp(*o.Min) < 0 || amt.Cmp(*o.Max) > 0 {
		return Quote{}, errf("amount_out_of_range", "amount",
			"amount must be from "+o.Min.String()+" to "+o.Max.String()+" "+currency+"; got "+amt.String())
	}

	// Compile guarantees that offers have a credited asset, tiers ascending
	// by from, and tiers[0].from == min <= amount: some tier applies.
	_, credited, _ := p.account(o.Account, path+".account")
	ti := 0
	for j := range o.Tiers {
		if o.Tiers[j].From.Cmp(amt) <= 0 {
			ti = j
		}
	}
	tier := &o.Tiers[ti]
	tpath := index(path+".tiers", ti)
	q := Quote{Amount: amt, Currency: currency, Account: o.Account, Tier: ti + 1, Rate: *tier.CreditsPerUnit}

	credits, qerr := creditsFor(amt, *tier.CreditsPerUnit, credited.Scale, tpath)
	if qerr != nil {
		return Quote{}, qerr
	}
	q.Credits, _ = decOfBig(credits, -int(credited.Scale)) // <= MaxUnits: 19 digits

	save, ok := savePct(*o.Tiers[0].CreditsPerUnit, *tier.CreditsPerUnit)
	if !ok {
		return Quote{}, pricingErr(tpath+".credits_per_unit", "save_pct of this tier against tier 1 has more than 19 significant digits")
	}
	q.SavePct = save

	if ti+1 < len(o.Tiers) {
		next := &o.Tiers[ti+1]
		npath := index(path+".tiers", ti+1)
		add, ok := subDec(*next.From, amt)
		if !ok {
			return Quote{}, pricingErr(npath+".from", "from - amount has more than 19 significant digits")
		}
		atNext, qerr := creditsFor(*next.From, *next.CreditsPerUnit, credited.Scale, npath)
		if qerr != nil {
			return Quote{}, qerr
		}
		atCur, qerr := creditsFor(*next.From, *tier.CreditsPerUnit, credited.Scale, tpath)
		if qerr != nil {
			return Quote{}, qerr
		}
		extra, _ := decOfBig(atNext.Sub(atNext, atCur), -int(credited.Scale)) // |extra| <= MaxUnits
		q.Next = &NextTier{Add: add, ExtraCredits: extra}
	}
	return q, nil
}

func unknownCurrency(currency string, offers []TopupOffer) *Error {
	var sold []string
	for i := range offers {
		if offers[i].Tiers != nil {
			sold = append(sold, offers[i].Currency)
		}
	}
	msg := "no top-up offer sells credits for " + currency
	if !isAssetCode(currency) {
		// Not echoed: it is not a currency code at all (and may be long).
		msg = "currency must be the code of a currency with a top-up offer (1-16 characters of A-Z, 0-9 and _)"
	}
	if len(sold) == 0 {
		msg += "; the pricing in force has no top-up offers"
	} else {
		msg += "; offers exist for " + strings.Join(sold, ", ")
	}
	return errf("unknown_currency", "currency", msg)
}

// topupOffers returns the top-up offers of p, as compiled.
func (p *Pricing) topupOffers() []TopupOffer { return p.offers }

// creditsFor returns floor(amount * rate) in smallest units of an asset of
// the given scale; amount and rate are positive. Above MaxUnits it is an
// invalid_pricing error on the tier at path.
func creditsFor(amount, rate Dec, scale uint8, path string) (*big.Int, *Error) {
	a, ae := amount.big()
	r, re := rate.big()
	n := a.Mul(a, r)
	if e := ae + re + int(scale); e >= 0 {
		n.Mul(n, pow10Big(e))
	} else {
		n.Quo(n, pow10Big(-e)) // positive: truncation is floor
	}
	if n.Cmp(big.NewInt(MaxUnits)) > 0 {
		return nil, pricingErr(path+".credits_per_unit", "the credits of "+amount.String()+" at "+rate.String()+
			" per unit exceed the largest amount of 10^18 smallest units")
	}
	return n, nil
}

// savePct returns (1 - rate1/rate) * 100 = (rate - rate1) * 100 / rate,
// truncated toward zero to 2 decimal places; rate1 and rate are positive.
func savePct(rate1, rate Dec) (Dec, bool) {
	r1, r, _ := aligned(rate1, rate)
	h := new(big.Int).Sub(r, r1)
	h.Mul(h, big.NewInt(100*100))
	h.Quo(h, r) // Quo truncates toward zero
	return decOfBig(h, -2)
}

// subDec returns d - e exactly, false when it does not fit a Dec.
func subDec(d, e Dec) (Dec, bool) {
	dn, en, exp := aligned(d, e)
	return decOfBig(dn.Sub(dn, en), exp)
}

// aligned returns d and e as integers dn and en times 10^exp.
func aligned(d, e Dec) (dn, en *big.Int, exp int) {
	dn, de := d.big()
	en, ee := e.big()
	exp = min(de, ee)
	dn.Mul(dn, pow10Big(de-exp))
	en.Mul(en, pow10Big(ee-exp))
	return dn, en, exp
}

// big returns d as a fresh integer n and an exponent: d = n * 10^exp.
func (d Dec) big() (n *big.Int, exp int) {
	n = new(big.Int).SetUint64(d.coef)
	if d.neg {
		n.Neg(n)
	}
	return n, int(d.exp)
}

func pow10Big(n int) *big.Int { return new(big.Int).Exp(bigTen, big.NewInt(int64(n)), nil) }

// decOfBig returns n * 10^exp as a normalized Dec, and false when it has
// more than 19 significant digits or its exponent is beyond ±64. n is not
// modified.
func decOfBig(n *big.Int, exp int) (Dec, bool) {
	if n.Sign() == 0 {
		return Dec{}, true
	}
	m := new(big.Int).Abs(n)
	q, r := new(big.Int), new(big.Int)
	for {
		q.QuoRem(m, bigTen, r)
		if r.Sign() != 0 {
			break
		}
		m, q = q, m
		exp++
	}
	if !m.IsUint64() || m.Uint64() >= pow10[decDigitsMax] || exp > decExpMax || exp < -decExpMax {
		return Dec{}, false
	}
	return Dec{coef: m.Uint64(), exp: int16(exp), neg: n.Sign() < 0}, true
}
