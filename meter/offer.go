package meter

import (
	"math/big"
	"slices"
	"strconv"
)

// moneyScaleDefault is the number of decimal places of a currency that is
// not an asset of the pricing, when an offer bought by its id is paid in
// it: cents. A currency that needs another scale (JPY 0, BTC 8) is declared
// as an asset.
const moneyScaleDefault = 2

// currencyScale is the scale of prices in currency under offers bought by
// id.
func (p *Pricing) currencyScale(currency string) uint8 {
	if a, ok := p.Asset(currency); ok {
		return a.Scale
	}
	return moneyScaleDefault
}

// compileOffers validates the top-up offers. The rules, each an
// invalid_pricing error on the offending member:
//   - an offer has exactly one of tiers, rate, plan_rates and package;
//   - an offer other than a tiered one has an id (it is bought by id);
//     ids are identifiers and unique;
//   - at most one tiered offer per currency (GET /v1/topup-quote names only
//     the currency); tiered offers have min, max, and tiers ascending from
//     min;
//   - rates, plan rates and packages have a positive price and credits; a
//     package's price fits the currency's scale and its credits the
//     credited asset's; a package has no min, max or unit;
//   - unit is positive and fits the credited asset's scale;
//   - eligibility.plans and plan_rates name distinct plans;
//   - auto_reload_discount_pct is from 0 to below 100.
func (p *Pricing) compileOffers(offers []TopupOffer) error {
	if len(offers) > offersMax {
		return limitErr("topup_offers", "a pricing document may define at most "+strconv.Itoa(offersMax)+" top-up offers")
	}
	p.offerByID = make(map[string]int)
	for i := range offers {
		o := &offers[i]
		path := index("topup_offers", i)
		if err := p.compileOffer(o, path); err != nil {
			return err
		}
		if o.ID != "" {
			if j, dup := p.offerByID[o.ID]; dup {
				return pricingErr(path+".id", "topup_offers["+strconv.Itoa(j)+"] already has the id "+o.ID)
			}
			p.offerByID[o.ID] = i
		}
		if o.Tiers == nil {
			continue
		}
		for j := range offers[:i] {
			if offers[j].Tiers != nil && offers[j].Currency == o.Currency {
				return pricingErr(path+".currency", "topup_offers["+strconv.Itoa(j)+"] already sells for "+o.Currency+
					" by tiers: a quote names only the currency")
			}
		}
	}
	p.offers = offers
	return nil
}

func (p *Pricing) compileOffer(o *TopupOffer, path string) error {
	if o.ID != "" && !isEventType(o.ID) {
		return pricingErr(path+".id", "id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'")
	}
	if !isAssetCode(o.Currency) {
		return pricingErr(path+".currency", "currency must be 1-16 characters of A-Z, 0-9 and _")
	}
	_, credited, err := p.account(o.Account, path+".account")
	if err != nil {
		return err
	}
	kinds := 0
	for _, set := range []bool{o.Tiers != nil, o.Rate != nil, o.PlanRates != nil, o.Package != nil} {
		if set {
			kinds++
		}
	}
	switch {
	case kinds != 1:
		return pricingErr(path, "an offer has exactly one of tiers, rate, plan_rates and package")
	case o.ID == "" && o.Tiers == nil:
		return pricingErr(path+".id", "an offer without tiers needs an id: it is bought by its id")
	case o.Unit != nil && (o.Unit.Sign() <= 0 || !fits(*o.Unit, credited.Scale)):
		return pricingErr(path+".unit", "unit must be a positive amount of "+credited.Code+" with at most "+
			strconv.Itoa(int(credited.Scale))+" decimal places")
	case o.AutoReloadDiscountPct != nil && (o.AutoReloadDiscountPct.Sign() < 0 || o.AutoReloadDiscountPct.Cmp(hundred) >= 0):
		return pricingErr(path+".auto_reload_discount_pct", "auto_reload_discount_pct must be from 0 to below 100")
	}
	if el := o.Eligibility; el != nil && el.Plans != nil {
		if err := planList(el.Plans, path+".eligibility.plans"); err != nil {
			return err
		}
	}
	if o.Tiers == nil {
		if o.Min != nil && o.Min.Sign() <= 0 {
			return pricingErr(path+".min", "min must be positive")
		}
		if o.Min != nil && o.Max != nil && o.Max.Cmp(*o.Min) < 0 {
			return pricingErr(path+".max", "max must not be below min")
		}
	}
	switch {
	case o.Tiers != nil:
		return compileTiers(o, path)
	case o.Rate != nil:
		return checkRate(o.Rate.Price, o.Rate.Credits, path+".rate")
	case o.PlanRates != nil:
		plans := make([]string, len(o.PlanRates))
		for j, r := range o.PlanRates {
			rpath := index(path+".plan_rates", j)
			if err := checkRate(r.Price, r.Credits, rpath); err != nil {
				return err
			}
			plans[j] = r.Plan
		}
		return planList(plans, path+".plan_rates")
	}
	pk := o.Package
	if err := checkRate(pk.Price, pk.Credits, path+".package"); err != nil {
		return err
	}
	switch {
	case o.Min != nil || o.Max != nil || o.Unit != nil:
		return pricingErr(path, "a package has no min, max or unit: it sells its credits for its price")
	case !fits(*pk.Price, p.currencyScale(o.Currency)):
		return pricingErr(path+".package.price", "price has more decimal places than "+o.Currency+" has ("+
			strconv.Itoa(int(p.currencyScale(o.Currency)))+")")
	case !fits(*pk.Credits, credited.Scale):
		return pricingErr(path+".package.credits", "credits has more decimal places than "+credited.Code+" has ("+
			strconv.Itoa(int(credited.Scale))+")")
	}
	return nil
}

func compileTiers(o *TopupOffer, path string) error {
	switch {
	case o.Min == nil:
		return pricingErr(path+".min", "min is required")
	case o.Min.Sign() <= 0:
		return pricingErr(path+".min", "min must be positive")
	case o.Max == nil:
		return pricingErr(path+".max", "max is required")
	case o.Max.Cmp(*o.Min) < 0:
		return pricingErr(path+".max", "max must not be below min")
	case len(o.Tiers) == 0:
		return pricingErr(path+".tiers", "an offer needs at least one tier")
	case len(o.Tiers) > tiersMax:
		return limitErr(path+".tiers", "an offer may have at most 32 tiers")
	}
	for j, t := range o.Tiers {
		tpath := index(path+".tiers", j)
		switch {
		case t.From == nil:
			return pricingErr(tpath+".from", "from is required")
		case j == 0 && t.From.Cmp(*o.Min) != 0:
			return pricingErr(tpath+".from", "the first tier must start at min ("+o.Min.String()+")")
		case j > 0 && t.From.Cmp(*o.Tiers[j-1].From) <= 0:
			return pricingErr(tpath+".from", "from must be greater than the previous tier's from")
		case t.From.Cmp(*o.Max) > 0:
			return pricingErr(tpath+".from", "from must not exceed max ("+o.Max.String()+")")
		case t.CreditsPerUnit == nil:
			return pricingErr(tpath+".credits_per_unit", "credits_per_unit is required")
		case t.CreditsPerUnit.Sign() <= 0:
			return pricingErr(tpath+".credits_per_unit", "credits_per_unit must be positive")
		}
	}
	return nil
}

// checkRate checks the price and credits of a rate, a plan rate or a
// package at path.
func checkRate(price, credits *Dec, path string) error {
	switch {
	case price == nil:
		return pricingErr(path+".price", "price is required")
	case price.Sign() <= 0:
		return pricingErr(path+".price", "price must be positive")
	case credits == nil:
		return pricingErr(path+".credits", "credits is required")
	case credits.Sign() <= 0:
		return pricingErr(path+".credits", "credits must be positive")
	}
	return nil
}

// planList checks a list of distinct plan ids at path.
func planList(plans []string, path string) error {
	switch {
	case len(plans) == 0:
		return pricingErr(path, "name at least one plan")
	case len(plans) > planRatesMax:
		return limitErr(path, "at most "+strconv.Itoa(planRatesMax)+" plans")
	}
	for j, pl := range plans {
		if !isEventType(pl) {
			return pricingErr(index(path, j), "a plan id is 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'")
		}
		if slices.Contains(plans[:j], pl) {
			return pricingErr(index(path, j), "plan "+pl+" is named twice")
		}
	}
	return nil
}

// fits reports whether d has at most scale decimal places and is within
// MaxUnits units.
func fits(d Dec, scale uint8) bool {
	_, ok := d.Units(scale)
	return ok
}

var hundred = Dec{coef: 1, exp: 2}

// Offer returns the offer with the given id.
func (p *Pricing) Offer(id string) (*TopupOffer, bool) {
	i, ok := p.offerByID[id]
	if !ok {
		return nil, false
	}
	return &p.offers[i], true
}

// Offers returns the top-up offers in document order. They must not be
// modified.
func (p *Pricing) Offers() []TopupOffer { return p.offers }

// Purchase asks what an offer sells: for an Amount of money, or a number of
// Credits (one of the two; neither for a package).
type Purchase struct {
	OfferID string
	Amount  string // money paid, a plain decimal; "" when Credits is given
	Credits string // credits bought; "" when Amount is given
	// Plan is the buyer's plan id, "" for none: eligibility and plan
	// rates depend on it.
	Plan string
	// AutoReload is set when auto-reload buys: the offer's
	// auto_reload_discount_pct comes off the price.
	AutoReload bool
}

// OfferQuote is what a purchase under an offer costs and buys, computed by
// Pricing.Buy. Every decimal is exact.
type OfferQuote struct {
	OfferID     string
	Account     string // "name:ASSET", the account credited
	Currency    string
	Price       Dec // billed: ListPrice less the discount
	ListPrice   Dec // before the discount
	DiscountPct Dec // the auto-reload discount applied, 0 for none
	Credits     Dec
	CreditUnits int64 // Credits in smallest units of the credited asset
	// RatePrice and RateCredits are the rate applied: RateCredits for
	// RatePrice (a tier's credits_per_unit is RateCredits for 1).
	RatePrice, RateCredits Dec
	Tier                   int    // the tier of a tiered offer, 1-based; 0 otherwise
	Plan                   string // the plan whose rate applied (plan_rates), or ""
	// SavePct and Next are set for tiered offers: see Quote.
	SavePct *Dec
	Next    *NextTier
}

// Buy prices a purchase under the offer named by b.OfferID. It is a pure
// function of p and b; nothing is bought.
//
// Buying an Amount of money gives the credits it buys at the rate, rounded
// down to the credited asset's scale. Buying Credits gives exactly those
// credits at the lowest price that buys them, rounded up to the currency's
// scale (never a credit that was not paid for). Under tiers, credits whose
// price at one tier reaches the next tier's from, while the next tier would
// price them below it, cost that from and get what it buys at the next tier
// (more than asked).
//
// Errors are *Error, with Field "offer_id", "amount" or "credits":
// unknown_offer; offer_requires_plan (the buyer has no plan and the offer
// needs one) and offer_not_eligible (the buyer's plan is not one of the
// offer's); invalid_amount (not a decimal of the right scale, or buying no
// credits); amount_out_of_range (outside min and max); package_mismatch
// (a package bought for another amount or number of credits);
// quantity_not_in_units (credits that are not a multiple of the offer's
// unit); invalid_request (both or neither of Amount and Credits).
func (p *Pricing) Buy(b Purchase) (OfferQuote, error) {
	o, ok := p.Offer(b.OfferID)
	if !ok {
		return OfferQuote{}, p.unknownOffer(b.OfferID)
	}
	if err := o.eligible(b.Plan); err != nil {
		return OfferQuote{}, err
	}
	_, credited, _ := p.account(o.Account, "")
	ps := p.currencyScale(o.Currency)
	q := OfferQuote{OfferID: o.ID, Account: o.Account, Currency: o.Currency}
	var err error
	switch {
	case b.Amount != "" && b.Credits != "":
		return q, errf("invalid_request", "credits", "give amount (the money paid) or credits (the credits bought), not both")
	case o.Package != nil:
		err = p.buyPackage(o, b, &q, ps, credited)
	case b.Amount == "" && b.Credits == "":
		return q, errf("invalid_request", "amount", "give amount (the money paid) or credits (the credits bought)")
	case o.Tiers != nil:
		err = p.buyTiered(o, b, &q, ps, credited)
	default:
		q.RatePrice, q.RateCredits, q.Plan = o.rateFor(b.Plan)
		err = p.buyAtRate(o, b, &q, ps, credited)
	}
	if err != nil {
		return q, err
	}
	if o.Unit != nil {
		unit, _ := o.Unit.Units(credited.Scale)
		if q.CreditUnits%unit != 0 {
			f := "credits"
			if b.Amount != "" {
				f = "amount"
			}
			return q, errf("quantity_not_in_units", f, "credits are sold in units of "+o.Unit.String()+"; "+
				q.Credits.String()+" is not a multiple")
		}
	}
	q.Price, q.DiscountPct = q.ListPrice, Dec{}
	if b.AutoReload && o.AutoReloadDiscountPct != nil && o.AutoReloadDiscountPct.Sign() > 0 {
		q.DiscountPct = *o.AutoReloadDiscountPct
		r := ratOf(q.ListPrice)
		r.Mul(r, new(big.Rat).Sub(big.NewRat(1, 1), new(big.Rat).Quo(ratOf(q.DiscountPct), big.NewRat(100, 1))))
		q.Price, _ = decOfBig(floorScaled(r, ps), -int(ps))
	}
	return q, nil
}

// rateFor returns the rate of a rated or plan-rated offer for a buyer on
// plan, and the plan when the rate is the plan's. The caller has checked
// eligibility: a plan-rated offer has a rate for plan.
func (o *TopupOffer) rateFor(plan string) (price, credits Dec, ratePlan string) {
	if o.Rate != nil {
		return *o.Rate.Price, *o.Rate.Credits, ""
	}
	for _, pr := range o.PlanRates {
		if pr.Plan == plan {
			return *pr.Price, *pr.Credits, plan
		}
	}
	panic("meter: plan-rated offer bought on plan " + plan + ", which it has no rate for")
}

// eligible checks that a buyer on plan ("" for none) may buy o.
func (o *TopupOffer) eligible(plan string) *Error {
	el := o.Eligibility
	if el == nil {
		el = &Eligibility{}
	}
	var plans []string
	switch {
	case el.Plans != nil:
		plans = el.Plans
	case o.PlanRates != nil:
		for _, r := range o.PlanRates {
			plans = append(plans, r.Plan)
		}
	}
	if plan == "" && (el.PlanRequired || plans != nil) {
		return errf("offer_requires_plan", "offer_id", "offer "+o.ID+" is sold only to customers with a plan")
	}
	if plans != nil && !slices.Contains(plans, plan) {
		return errf("offer_not_eligible", "offer_id", "offer "+o.ID+" is not sold on plan "+plan)
	}
	if o.PlanRates != nil && el.Plans != nil {
		for _, r := range o.PlanRates {
			if r.Plan == plan {
				return nil
			}
		}
		return errf("offer_not_eligible", "offer_id", "offer "+o.ID+" has no rate for plan "+plan)
	}
	return nil
}

func (p *Pricing) unknownOffer(id string) *Error {
	msg := "no top-up offer has the id " + id
	if !isEventType(id) {
		msg = "offer_id must be the id of a top-up offer (1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-')"
	}
	if len(p.offerByID) == 0 {
		msg += "; the pricing in force has no offers with an id"
	}
	return errf("unknown_offer", "offer_id", msg)
}

// parseAt parses a purchase quantity of the given scale for field, which
// must be positive.
func parseAt(s string, scale uint8, field string) (Dec, int64, *Error) {
	units, err := ParseUnits(s, scale)
	if err != nil {
		e := err.(*Error)
		e.Field = field
		return Dec{}, 0, e
	}
	if units <= 0 {
		return Dec{}, 0, errf("invalid_amount", field, field+" must be positive")
	}
	return UnitsDec(units, scale), units, nil
}

// buyPackage checks that a package is bought whole: for its price or its
// credits, when either is given.
func (p *Pricing) buyPackage(o *TopupOffer, b Purchase, q *OfferQuote, ps uint8, credited Asset) error {
	pk := o.Package
	if b.Amount != "" {
		amt, _, err := parseAt(b.Amount, ps, "amount")
		if err != nil {
			return err
		}
		if amt.Cmp(*pk.Price) != 0 {
			return errf("package_mismatch", "amount", "package "+o.ID+" sells "+pk.Credits.String()+" credits for "+
				pk.Price.String()+" "+o.Currency+", not "+amt.String())
		}
	}
	if b.Credits != "" {
		c, _, err := parseAt(b.Credits, credited.Scale, "credits")
		if err != nil {
			return err
		}
		if c.Cmp(*pk.Credits) != 0 {
			return errf("package_mismatch", "credits", "package "+o.ID+" sells "+pk.Credits.String()+" credits, not "+c.String())
		}
	}
	q.ListPrice, q.Credits = *pk.Price, *pk.Credits
	q.CreditUnits, _ = pk.Credits.Units(credited.Scale)
	q.RatePrice, q.RateCredits = *pk.Price, *pk.Credits
	return nil
}

// buyAtRate buys under one rate (q.RatePrice, q.RateCredits).
func (p *Pricing) buyAtRate(o *TopupOffer, b Purchase, q *OfferQuote, ps uint8, credited Asset) error {
	rate := new(big.Rat).Quo(ratOf(q.RateCredits), ratOf(q.RatePrice)) // credits per unit of money
	if b.Amount != "" {
		amt, _, err := parseAt(b.Amount, ps, "amount")
		if err != nil {
			return err
		}
		if err := o.inRange(amt, "amount"); err != nil {
			return err
		}
		return q.setCredits(amt, new(big.Rat).Mul(ratOf(amt), rate), credited, "amount")
	}
	c, units, err := parseAt(b.Credits, credited.Scale, "credits")
	if err != nil {
		return err
	}
	price, ok := decOfBig(ceilScaled(new(big.Rat).Quo(ratOf(c), rate), ps), -int(ps))
	if !ok {
		return errf("invalid_amount", "credits", "the price of "+c.String()+" credits is too large")
	}
	if err := o.inRange(price, "credits"); err != nil {
		return err
	}
	q.ListPrice, q.Credits, q.CreditUnits = price, c, units
	return nil
}

// setCredits sets the list price amt and the credits it buys, exact, which
// are rounded down to the credited asset's scale and must be positive.
func (q *OfferQuote) setCredits(amt Dec, exact *big.Rat, credited Asset, field string) error {
	n := floorScaled(exact, credited.Scale)
	if n.Sign() <= 0 || n.Cmp(big.NewInt(MaxUnits)) > 0 {
		return errf("invalid_amount", field, amt.String()+" "+q.Currency+" buys "+
			"no whole credit or more than 10^18 units")
	}
	q.ListPrice, q.CreditUnits = amt, n.Int64()
	q.Credits = UnitsDec(q.CreditUnits, credited.Scale)
	return nil
}

// inRange checks the price of a purchase against the offer's min and max;
// field is what the buyer gave.
func (o *TopupOffer) inRange(price Dec, field string) error {
	if o.Min != nil && price.Cmp(*o.Min) < 0 || o.Max != nil && price.Cmp(*o.Max) > 0 {
		lo, hi := "any amount", "any amount"
		if o.Min != nil {
			lo = o.Min.String()
		}
		if o.Max != nil {
			hi = o.Max.String()
		}
		return errf("amount_out_of_range", field, "offer "+o.ID+" sells for "+lo+" to "+hi+" "+o.Currency+
			"; this purchase costs "+price.String())
	}
	return nil
}

// buyTiered buys under a tiered offer.
func (p *Pricing) buyTiered(o *TopupOffer, b Purchase, q *OfferQuote, ps uint8, credited Asset) error {
	tierRate := func(i int) *big.Rat { return ratOf(*o.Tiers[i].CreditsPerUnit) }
	setTier := func(i int) {
		q.Tier = i + 1
		q.RatePrice, q.RateCredits = Dec{coef: 1}, *o.Tiers[i].CreditsPerUnit
		if save, ok := savePct(*o.Tiers[0].CreditsPerUnit, q.RateCredits); ok {
			q.SavePct = &save
		}
	}
	if b.Amount != "" {
		amt, _, err := parseAt(b.Amount, ps, "amount")
		if err != nil {
			return err
		}
		tq, qerr := p.tieredQuote(o, index("topup_offers", p.offerByID[o.ID]), amt)
		if qerr != nil {
			return qerr
		}
		setTier(tq.Tier - 1)
		q.Next = tq.Next
		return q.setCredits(amt, new(big.Rat).Mul(ratOf(amt), tierRate(tq.Tier-1)), credited, "amount")
	}
	c, units, err := parseAt(b.Credits, credited.Scale, "credits")
	if err != nil {
		return err
	}
	// The cheapest tier whose range holds the price of c at its rate; a
	// tier above the first may instead sell at its from, when c at the
	// tier below costs from or more and at this tier less.
	best := -1
	var bestPrice Dec
	var bestCredits *big.Rat
	priceAt := func(i int) (Dec, bool) {
		return decOfBig(ceilScaled(new(big.Rat).Quo(ratOf(c), tierRate(i)), ps), -int(ps))
	}
	for i := range o.Tiers {
		price, ok := priceAt(i)
		if !ok {
			continue
		}
		credits := ratOf(c)
		if price.Cmp(*o.Tiers[i].From) < 0 {
			if i == 0 {
				continue
			}
			if below, ok := priceAt(i - 1); ok && below.Cmp(*o.Tiers[i].From) < 0 {
				continue // not in the gap below this tier
			}
			price = *o.Tiers[i].From
			credits = new(big.Rat).Mul(ratOf(price), tierRate(i))
		}
		if i+1 < len(o.Tiers) && price.Cmp(*o.Tiers[i+1].From) >= 0 || price.Cmp(*o.Max) > 0 {
			continue
		}
		if best < 0 || price.Cmp(bestPrice) < 0 {
			best, bestPrice, bestCredits = i, price, credits
		}
	}
	if best < 0 { // c costs less than min, or more than max
		for _, i := range []int{0, len(o.Tiers) - 1} {
			price, _ := priceAt(i)
			if err := o.inRange(price, "credits"); err != nil {
				return err
			}
		}
		return errf("amount_out_of_range", "credits", "no tier of offer "+o.ID+" sells "+c.String()+" credits")
	}
	setTier(best)
	if tq, err := p.tieredQuote(o, index("topup_offers", p.offerByID[o.ID]), bestPrice); err == nil {
		q.Next = tq.Next
	}
	if bestCredits.Cmp(ratOf(c)) == 0 {
		q.ListPrice, q.Credits, q.CreditUnits = bestPrice, c, units
		return nil
	}
	return q.setCredits(bestPrice, bestCredits, credited, "credits")
}

// ratOf returns d as an exact rational.
func ratOf(d Dec) *big.Rat {
	n, exp := d.big()
	if exp >= 0 {
		return new(big.Rat).SetInt(n.Mul(n, pow10Big(exp)))
	}
	return new(big.Rat).SetFrac(n, pow10Big(-exp))
}

// floorScaled returns floor(r * 10^scale) for r >= 0.
func floorScaled(r *big.Rat, scale uint8) *big.Int {
	x := new(big.Rat).Mul(r, new(big.Rat).SetInt(pow10Big(int(scale))))
	return new(big.Int).Quo(x.Num(), x.Denom())
}

// ceilScaled returns ceil(r * 10^scale) for r >= 0.
func ceilScaled(r *big.Rat, scale uint8) *big.Int {
	x := new(big.Rat).Mul(r, new(big.Rat).SetInt(pow10Big(int(scale))))
	q, m := new(big.Int).QuoRem(x.Num(), x.Denom(), new(big.Int))
	if m.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	return q
}

// MulFloor returns d * e in smallest units of an asset of the given scale,
// rounded down, and false when it exceeds MaxUnits or is negative.
func MulFloor(d, e Dec, scale uint8) (int64, bool) {
	r := new(big.Rat).Mul(ratOf(d), ratOf(e))
	if r.Sign() < 0 {
		return 0, false
	}
	n := floorScaled(r, scale)
	if n.Cmp(big.NewInt(MaxUnits)) > 0 {
		return 0, false
	}
	return n.Int64(), true
}

// OffersJSON returns the top-up offers as the document has them, a JSON
// array in canonical form.
func (p *Pricing) OffersJSON() []byte { return appendOffers(nil, p.offers) }
