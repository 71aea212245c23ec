package ingest

import (
	"encoding/json"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/valyala/fasthttp"
)

// The credit lifecycle's API: plan and auto-reload settings, holds,
// auto-reload requests, notifications and the test clock.

type allocationBody struct {
	Account  *string         `json:"account"`
	Asset    string          `json:"asset"`
	Amount   json.RawMessage `json:"amount"`
	Period   string          `json:"period"`
	Anchor   *string         `json:"anchor"`
	Strategy *string         `json:"strategy"`
	Cap      json.RawMessage `json:"cap"`
	Kind     *string         `json:"kind"`
}

type planBody struct {
	ID               string           `json:"id"`
	Allocations      []allocationBody `json:"allocations"`
	GrantWhilePaused *bool            `json:"grant_while_paused"`
	MaxActiveHolds   map[string]int   `json:"max_active_holds"`
}

type autoReloadBody struct {
	Enabled      *bool           `json:"enabled"`
	Account      *string         `json:"account"`
	Asset        string          `json:"asset"`
	Threshold    json.RawMessage `json:"threshold"`
	Amount       json.RawMessage `json:"amount"`
	Price        *priceBody      `json:"price"`
	SurchargePct json.RawMessage `json:"surcharge_pct"`
	MaxPerPeriod *int            `json:"max_per_period"`
	MaxUnpaid    *int            `json:"max_unpaid"`
	Mode         *string         `json:"mode"`
	ExpiresAt    *string         `json:"expires_at"`
	OfferID      *string         `json:"offer_id"`
}

// prefixed returns err with its field under prefix.
func prefixed(err error, prefix string) error {
	if ae, ok := err.(*apiError); ok {
		c := *ae
		if c.Field != "" {
			c.Field = prefix + "." + c.Field
		} else {
			c.Field = prefix
		}
		return &c
	}
	return err
}

// plan parses a customer's plan.
func (s *Server) plan(raw json.RawMessage) (*wallet.Plan, error) {
	var body planBody
	if err := decodeStrictAt("plan", raw, &body); err != nil {
		return nil, err
	}
	if !validID(body.ID) {
		return nil, badRequest("invalid_id", "plan.id", "plan.id must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	if len(body.Allocations) == 0 || len(body.Allocations) > wallet.PlanAllocationsMax {
		return nil, badRequest("invalid_request", "plan.allocations", "a plan has 1 to %d allocations", wallet.PlanAllocationsMax)
	}
	p := &wallet.Plan{ID: body.ID, GrantWhilePaused: body.GrantWhilePaused != nil && *body.GrantWhilePaused}
	pr := s.e.Pricing()
	var err error
	if p.HoldLimits, err = holdLimits(pr, body.MaxActiveHolds, "plan.max_active_holds"); err != nil {
		return nil, err
	}
	now := s.e.Now()
	for i := range body.Allocations {
		ab := &body.Allocations[i]
		f := "plan.allocations[" + strconv.Itoa(i) + "]"
		al := wallet.Allocation{Strategy: wallet.StrategyExpireAndReplace, Kind: wallet.KindPlan}
		if al.Account, al.Asset, err = splitAccount(ab.Account, ab.Asset, f+".account", f+".asset"); err != nil {
			return nil, err
		}
		asset, err := accountAsset(pr, al.Account+":"+al.Asset, f+".asset")
		if err != nil {
			return nil, err
		}
		al.Scale = asset.Scale
		if al.Amount, err = parseAmount(ab.Amount, asset.Scale, f+".amount"); err != nil {
			return nil, err
		}
		if al.Amount <= 0 || al.Amount > wallet.CommandUnitsMax {
			return nil, badRequest("invalid_amount", f+".amount", "amount must be positive and at most %d units", wallet.CommandUnitsMax)
		}
		var ok bool
		if al.Period, ok = wallet.ParsePeriodUnit(ab.Period); !ok {
			return nil, badRequest("invalid_request", f+".period", "period must be day, week, month or year")
		}
		al.Anchor = now
		if ab.Anchor != nil {
			t, err := parseTime(*ab.Anchor, f+".anchor")
			if err != nil {
				return nil, err
			}
			al.Anchor = t
		}
		if ab.Strategy != nil {
			switch *ab.Strategy {
			case "expire_and_replace":
			case "accumulate":
				al.Strategy = wallet.StrategyAccumulate
			default:
				return nil, badRequest("invalid_request", f+".strategy", "strategy must be expire_and_replace or accumulate")
			}
		}
		if !isNull(ab.Cap) {
			if al.Strategy != wallet.StrategyAccumulate {
				return nil, badRequest("invalid_request", f+".cap", "cap applies to the accumulate strategy only")
			}
			if al.Cap, err = parseAmount(ab.Cap, asset.Scale, f+".cap"); err != nil {
				return nil, err
			}
			if al.Cap <= 0 || al.Cap > wallet.CommandUnitsMax {
				return nil, badRequest("invalid_amount", f+".cap", "cap must be positive and at most %d units", wallet.CommandUnitsMax)
			}
		}
		if ab.Kind != nil {
			k, ok := wallet.ParseKind(*ab.Kind)
			if !ok {
				return nil, badRequest("invalid_request", f+".kind", "kind must be promotional, plan or recharge")
			}
			al.Kind = k
		}
		p.Allocations = append(p.Allocations, al)
	}
	return p, nil
}

// parseTime reads an RFC 3339 time within the range the engine keeps.
func parseTime(v, field string) (int64, error) {
	if len(v) > timeInputLenMax {
		return 0, badRequest("invalid_timestamp", field, "%s is too long for a timestamp", field)
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return 0, badRequest("invalid_timestamp", field, "%s must be an RFC 3339 timestamp such as 2026-11-01T00:00:00Z", field)
	}
	if t.Year() < 1971 || !t.Before(expiryMax) {
		return 0, badRequest("invalid_timestamp", field, "%s must be between 1971 and %s", field, expiryMax.Format(time.RFC3339))
	}
	return t.UnixNano(), nil
}

// autoReload parses a customer's auto-reload settings.
func (s *Server) autoReload(raw json.RawMessage, plan *wallet.Plan) (*wallet.AutoReload, error) {
	var body autoReloadBody
	if err := decodeStrictAt("auto_reload", raw, &body); err != nil {
		return nil, err
	}
	const f = "auto_reload"
	var offer *meter.TopupOffer
	if body.OfferID != nil {
		o, ok := s.e.Pricing().Offer(*body.OfferID)
		if !ok {
			return nil, badRequest("unknown_offer", f+".offer_id", "no top-up offer of the pricing in force has the id %q", *body.OfferID)
		}
		if err := s.matchOffer(o, body.Account, f+".account", body.Asset, f+".asset"); err != nil {
			return nil, err
		}
		if body.Price != nil {
			return nil, badRequest("invalid_request", f+".price", "offer %s prices each reload: leave price out", o.ID)
		}
		name, code, _ := strings.Cut(o.Account, ":")
		body.Account, body.Asset, offer = &name, code, o
	}
	r := &wallet.AutoReload{Enabled: true, Mode: wallet.ReloadGrantImmediately}
	if body.Enabled != nil {
		r.Enabled = *body.Enabled
	}
	var err error
	if r.Account, r.Asset, err = splitAccount(body.Account, body.Asset, f+".account", f+".asset"); err != nil {
		return nil, err
	}
	body.Asset = r.Asset
	asset, err := accountAsset(s.e.Pricing(), r.Account+":"+r.Asset, f+".asset")
	if err != nil {
		return nil, err
	}
	r.Scale = asset.Scale
	// The pricing may bound the threshold of this account and give it
	// when omitted (auto_reload_limits; APOB: 1,000 to 9,999, else 2,000).
	limits, bounded := s.e.Pricing().ReloadLimits(r.Account + ":" + body.Asset)
	if isNull(body.Threshold) && bounded && limits.Default != nil {
		r.Threshold = *limits.Default
	} else if r.Threshold, err = parseAmount(body.Threshold, asset.Scale, f+".threshold"); err != nil {
		return nil, err
	}
	if r.Threshold < 0 || r.Threshold > wallet.CommandUnitsMax {
		return nil, badRequest("invalid_amount", f+".threshold", "threshold must be from 0 to %d units", wallet.CommandUnitsMax)
	}
	if bounded && limits.Min != nil && r.Threshold < *limits.Min {
		return nil, badRequest("threshold_below_minimum", f+".threshold", "threshold must be at least %s (the pricing's auto_reload_limits for %s:%s)",
			string(appendUnits(nil, *limits.Min, asset.Scale)), r.Account, body.Asset)
	}
	if bounded && limits.Max != nil && r.Threshold > *limits.Max {
		return nil, badRequest("threshold_above_maximum", f+".threshold", "threshold must be at most %s (the pricing's auto_reload_limits for %s:%s)",
			string(appendUnits(nil, *limits.Max, asset.Scale)), r.Account, body.Asset)
	}
	if offer != nil {
		if err := s.reloadOffer(r, offer, &body, plan); err != nil {
			return nil, err
		}
	} else if err := reloadPrice(r, &body, asset.Scale); err != nil {
		return nil, err
	}
	if r.Amount <= 0 || r.Amount > wallet.CommandUnitsMax {
		return nil, badRequest("invalid_amount", f+".amount", "amount must be positive and at most %d units", wallet.CommandUnitsMax)
	}
	if !isNull(body.SurchargePct) {
		if r.SurchargePct, err = decimalText(body.SurchargePct, f+".surcharge_pct"); err != nil {
			return nil, err
		}
		if strings.HasPrefix(r.SurchargePct, "-") {
			return nil, badRequest("invalid_amount", f+".surcharge_pct", "surcharge_pct cannot be negative")
		}
	}
	if r.Charge, err = withSurcharge(r.Price, r.SurchargePct); err != nil {
		return nil, prefixed(err, f+".surcharge_pct")
	}
	if body.MaxPerPeriod != nil {
		if *body.MaxPerPeriod < 0 || *body.MaxPerPeriod > 1_000_000 {
			return nil, badRequest("invalid_request", f+".max_per_period", "max_per_period must be from 0 (no limit) to 1000000")
		}
		r.MaxPerPeriod = *body.MaxPerPeriod
	}
	if body.Mode != nil {
		switch *body.Mode {
		case "grant_immediately":
		case "await_payment":
			r.Mode = wallet.ReloadAwaitPayment
		default:
			return nil, badRequest("invalid_request", f+".mode", "mode must be grant_immediately or await_payment")
		}
	}
	if body.MaxUnpaid != nil {
		// Requests pending at once in grant_immediately mode; null: up to
		// wallet.ReloadPendingMax (await_payment waits for each).
		if *body.MaxUnpaid < 1 || *body.MaxUnpaid > wallet.ReloadPendingMax {
			return nil, badRequest("invalid_request", f+".max_unpaid", "max_unpaid must be from 1 to %d, or null", wallet.ReloadPendingMax)
		}
		if r.Mode == wallet.ReloadAwaitPayment && *body.MaxUnpaid > 1 {
			return nil, badRequest("invalid_request", f+".max_unpaid", "max_unpaid above 1 needs mode grant_immediately: await_payment waits for each payment")
		}
		r.MaxUnpaid = *body.MaxUnpaid
	}
	if body.ExpiresAt != nil {
		if *body.ExpiresAt != "period_end" {
			return nil, badRequest("invalid_request", f+".expires_at", "expires_at must be \"period_end\" or null")
		}
		if plan == nil {
			return nil, badRequest("no_plan_period", f+".expires_at", "expires_at \"period_end\" needs a plan")
		}
		r.PeriodEnd = true
	}
	return r, nil
}

// reloadPrice reads the credits and the price of an auto-reload without an
// offer.
func reloadPrice(r *wallet.AutoReload, body *autoReloadBody, scale uint8) error {
	const f = "auto_reload"
	var err error
	if r.Amount, err = parseAmount(body.Amount, scale, f+".amount"); err != nil {
		return err
	}
	if body.Price == nil {
		return badRequest("invalid_request", f+".price", "price {\"amount\",\"currency\"} is required: it is what each reload bills")
	}
	if r.Price, err = moneyText(body.Price.Amount, f+".price.amount"); err != nil {
		return err
	}
	if !validCode(body.Price.Currency) {
		return badRequest("invalid_request", f+".price.currency", "currency must be 1-16 characters of [A-Z0-9_]")
	}
	r.Currency = body.Price.Currency
	return nil
}

// reloadOffer prices an auto-reload that buys an offer, with the offer's
// auto-reload discount: a package's credits, or amount credits at its rate,
// for a buyer on plan (the plan of the settings being written).
func (s *Server) reloadOffer(r *wallet.AutoReload, o *meter.TopupOffer, body *autoReloadBody, plan *wallet.Plan) error {
	buy := meter.Purchase{OfferID: o.ID, AutoReload: true}
	if plan != nil {
		buy.Plan = plan.ID
	}
	if !isNull(body.Amount) {
		text, err := decimalText(body.Amount, "auto_reload.amount")
		if err != nil {
			return err
		}
		buy.Credits = text
	}
	q, err := s.e.Pricing().Buy(buy)
	if err != nil {
		me := err.(*meter.Error)
		field := "auto_reload.offer_id"
		if me.Field == "credits" || me.Field == "amount" {
			field = "auto_reload.amount"
		}
		return badRequest(me.Code, field, "%s", me.Message)
	}
	r.Amount, r.Price, r.Currency, r.OfferID = q.CreditUnits, q.Price.String(), q.Currency, o.ID
	return nil
}

// withSurcharge returns price * (1 + pct/100), exactly, with at least the
// price's digits after the point. Decimals are exact rationals here
// (math/big), never binary floats.
func withSurcharge(price, pct string) (string, error) {
	p, ok := new(big.Rat).SetString(price)
	if !ok {
		return "", badRequest("invalid_amount", "", "price %q is not a decimal", price)
	}
	if pct == "" {
		return price, nil
	}
	q, ok := new(big.Rat).SetString(pct)
	if !ok {
		return "", badRequest("invalid_amount", "", "surcharge %q is not a decimal", pct)
	}
	hundred := big.NewRat(100, 1)
	q.Add(hundred, q).Quo(q, hundred)
	p.Mul(p, q)
	digits := func(s string) int {
		if _, frac, ok := strings.Cut(s, "."); ok {
			return len(frac)
		}
		return 0
	}
	minDigits := digits(price)
	out := p.FloatString(minDigits + digits(pct) + 2) // exact: the denominator divides 10^that
	if i := strings.IndexByte(out, '.'); i >= 0 {
		keep := i + 1 + minDigits
		for len(out) > keep && out[len(out)-1] == '0' {
			out = out[:len(out)-1]
		}
		out = strings.TrimSuffix(out, ".")
	}
	return out, nil
}

// appendLifecycleSettings appends the plan, scheduled_plan, auto_reload
// and period members of a customer.
func appendLifecycleSettings(b []byte, w *wallet.Wallet, now int64) []byte {
	b = append(b, `"plan":`...)
	b = appendPlan(b, w.Settings.Plan)
	// A plan change at the end of the period: the plan from then on (null:
	// the plan ends) and when.
	b = append(b, `,"scheduled_plan":`...)
	if pc := w.Settings.PlanChange; pc == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"starts_at":`...)
		b = appendTime(b, pc.At)
		b = append(b, `,"plan":`...)
		b = appendPlan(b, pc.Plan)
		b = append(b, '}')
	}
	b = append(b, `,"auto_reload":`...)
	b = appendAutoReload(b, w.Settings.AutoReload, true, nil)
	b = append(b, `,"period":`...)
	if start, end, ok := w.PlanPeriod(now); ok {
		b = append(b, `{"start":`...)
		b = appendTime(b, start)
		b = append(b, `,"end":`...)
		b = appendTime(b, end)
		b = append(b, '}')
	} else {
		b = append(b, "null"...)
	}
	// The next grant of each allocation: when, and what would really be
	// granted if nothing else changed (0 at an accumulation cap or during
	// a pause that lasts past it).
	b = append(b, `,"next_refills":[`...)
	for i, g := range w.NextGrants(now) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"plan_id":`...)
		b = appendString(b, g.PlanID)
		b = append(b, `,"allocation":`...)
		b = strconv.AppendInt(b, int64(g.Allocation), 10)
		b = append(b, `,"account":`...)
		b = appendString(b, g.Account)
		b = append(b, `,"amount":`...)
		b = appendUnits(b, g.Amount, g.Scale)
		b = append(b, `,"at":`...)
		b = appendTime(b, g.At)
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendAutoReload appends auto-reload settings, or null; with charge, the
// billed charge too (what GET shows; a PUT body has none, and is written
// under pricing p).
//
// With an offer (offer_id), the PUT form leaves out the price, which the
// offer gives, and a package's amount: a PATCH that names another offer
// then prices it afresh.
func appendAutoReload(b []byte, r *wallet.AutoReload, charge bool, p *meter.Pricing) []byte {
	if r == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"enabled":`...)
		b = strconv.AppendBool(b, r.Enabled)
		b = append(b, `,"offer_id":`...)
		b = appendOptString(b, r.OfferID)
		b = append(b, `,"account":`...)
		b = appendString(b, r.Account)
		b = append(b, `,"asset":`...)
		b = appendString(b, r.Asset)
		b = append(b, `,"threshold":`...)
		b = appendUnits(b, r.Threshold, r.Scale)
		var o *meter.TopupOffer
		offered := false
		if !charge && r.OfferID != "" {
			o, offered = p.Offer(r.OfferID)
		}
		if charge || !offered || o.Package == nil {
			b = append(b, `,"amount":`...)
			b = appendUnits(b, r.Amount, r.Scale)
		}
		if charge || !offered {
			b = append(b, `,"price":{"amount":`...)
			b = appendString(b, r.Price)
			b = append(b, `,"currency":`...)
			b = appendString(b, r.Currency)
			b = append(b, '}')
		}
		b = append(b, `,"surcharge_pct":`...)
		if r.SurchargePct == "" {
			b = append(b, `"0"`...)
		} else {
			b = appendString(b, r.SurchargePct)
		}
		if charge {
			b = append(b, `,"charge":{"amount":`...)
			b = appendString(b, r.Charge)
			b = append(b, `,"currency":`...)
			b = appendString(b, r.Currency)
			b = append(b, '}')
		}
		b = append(b, `,"max_per_period":`...)
		b = strconv.AppendInt(b, int64(r.MaxPerPeriod), 10)
		b = append(b, `,"max_unpaid":`...)
		if r.MaxUnpaid == 0 {
			b = append(b, "null"...)
		} else {
			b = strconv.AppendInt(b, int64(r.MaxUnpaid), 10)
		}
		b = append(b, `,"mode":`...)
		if r.Mode == wallet.ReloadAwaitPayment {
			b = append(b, `"await_payment"`...)
		} else {
			b = append(b, `"grant_immediately"`...)
		}
		b = append(b, `,"expires_at":`...)
		if r.PeriodEnd {
			b = append(b, `"period_end"`...)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, '}')
	}
	return b
}

// appendPlan appends a plan, or null.
func appendPlan(b []byte, p *wallet.Plan) []byte {
	if p == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"id":`...)
		b = appendString(b, p.ID)
		b = append(b, `,"allocations":[`...)
		for i := range p.Allocations {
			al := &p.Allocations[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"account":`...)
			b = appendString(b, al.Account)
			b = append(b, `,"asset":`...)
			b = appendString(b, al.Asset)
			b = append(b, `,"amount":`...)
			b = appendUnits(b, al.Amount, al.Scale)
			b = append(b, `,"period":`...)
			b = appendString(b, al.Period.String())
			b = append(b, `,"anchor":`...)
			b = appendTime(b, al.Anchor)
			b = append(b, `,"strategy":`...)
			if al.Strategy == wallet.StrategyAccumulate {
				b = append(b, `"accumulate"`...)
			} else {
				b = append(b, `"expire_and_replace"`...)
			}
			b = append(b, `,"cap":`...)
			if al.Cap == 0 {
				b = append(b, "null"...)
			} else {
				b = appendUnits(b, al.Cap, al.Scale)
			}
			b = append(b, `,"kind":`...)
			b = appendString(b, al.Kind.String())
			b = append(b, '}')
		}
		b = append(b, `],"grant_while_paused":`...)
		b = strconv.AppendBool(b, p.GrantWhilePaused)
		b = append(b, `,"max_active_holds":`...)
		b = appendHoldLimits(b, p.HoldLimits)
		b = append(b, '}')
	}
	return b
}

// ---- Holds ----

type holdBody struct {
	ID         string          `json:"id"`
	CustomerID string          `json:"customer_id"`
	Account    string          `json:"account"`
	Amount     json.RawMessage `json:"amount"`
	ExpiresAt  *string         `json:"expires_at"`
}

// holdTTLDefault is how long a hold lives when the request gives no expires_at.
const holdTTLDefault = time.Hour

// holdTTLMax bounds a hold's life.
const holdTTLMax = 31 * 24 * time.Hour

func (s *Server) placeHold(ctx *fasthttp.RequestCtx) {
	var body holdBody
	if err := decodeStrict(ctx.PostBody(), &body); err != nil {
		s.writeErr(ctx, err)
		return
	}
	cmd, err := s.holdCmd(&body)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	rec, replayed, err := s.e.PlaceHold(body.CustomerID, cmd)
	if be, ok := err.(*wallet.Error); ok && be.Code == wallet.CodeInsufficientFunds {
		// The contract's status for a hold that does not fit: 402.
		writeErrorStatus(ctx, fasthttp.StatusPaymentRequired, be.Code, "the hold is larger than what the account has available", "amount")
		return
	}
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	if !replayed {
		ctx.SetStatusCode(fasthttp.StatusCreated)
	}
	writeHold(ctx, &rec)
}

// holdCmd checks a decoded hold request and returns the command for
// body.CustomerID; the content hash covers expires_at as given.
func (s *Server) holdCmd(body *holdBody) (*wallet.HoldCmd, error) {
	if !validID(body.ID) {
		return nil, badRequest("invalid_id", "id", "id must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	if !validID(body.CustomerID) {
		return nil, badRequest("invalid_id", "customer_id", "customer_id must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	asset, err := accountAsset(s.e.Pricing(), body.Account, "account")
	if err != nil {
		return nil, err
	}
	amount, err := parseAmount(body.Amount, asset.Scale, "amount")
	if err != nil {
		return nil, err
	}
	if amount <= 0 {
		return nil, badRequest("invalid_amount", "amount", "a hold's amount must be positive")
	}
	now := s.e.Now()
	expires := now + int64(holdTTLDefault)
	expText := ""
	if body.ExpiresAt != nil {
		expText = *body.ExpiresAt
		if expires, err = parseExpiry(body.ExpiresAt, "expires_at"); err != nil {
			return nil, err
		}
		if expires == wallet.ExpiresPeriodEnd {
			return nil, badRequest("invalid_timestamp", "expires_at", "a hold's expires_at must be a time")
		}
		if expires-now > int64(holdTTLMax) {
			return nil, badRequest("invalid_timestamp", "expires_at", "a hold lives at most 31 days")
		}
	}
	var h hasher
	hash := h.str(body.CustomerID).str(body.Account).int(amount).str(expText).sum()
	return &wallet.HoldCmd{ID: body.ID, Account: body.Account, Amount: amount, ExpiresAt: expires, Hash: hash}, nil
}

func writeHold(ctx *fasthttp.RequestCtx, h *wallet.HoldRecord) {
	b := append([]byte(nil), `{"id":`...)
	b = appendString(b, h.ID)
	b = append(b, `,"customer_id":`...)
	b = appendString(b, h.Customer)
	b = append(b, `,"account":`...)
	b = appendString(b, h.Account)
	b = append(b, `,"amount":`...)
	b = appendUnits(b, h.Amount, h.Scale)
	b = append(b, `,"status":`...)
	b = appendString(b, h.Status.String())
	b = append(b, `,"created_at":`...)
	b = appendTime(b, h.CreatedAt)
	b = append(b, `,"expires_at":`...)
	b = appendTime(b, h.ExpiresAt)
	b = append(b, `,"updated_at":`...)
	b = appendTime(b, h.UpdatedAt)
	b = append(b, `,"settled_by":`...)
	b = appendOptString(b, h.EventID)
	b = append(b, `,"settled_amount":`...)
	if h.Status == wallet.HoldSettled {
		b = appendUnits(b, h.Settled, h.Scale)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// getHold answers GET /v1/holds/{hold_id}.
func (s *Server) getHold(ctx *fasthttp.RequestCtx, id string) {
	h, err := s.e.Hold(id)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	writeHold(ctx, &h)
}

// releaseHold answers POST /v1/holds/{hold_id}/release.
func (s *Server) releaseHold(ctx *fasthttp.RequestCtx, id string) {
	h, err := s.e.ReleaseHold(id)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	writeHold(ctx, &h)
}

// ---- Auto-reload requests ----

func appendReload(b []byte, r *wallet.ReloadRequest) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, r.ID)
	b = append(b, `,"status":`...)
	b = appendString(b, r.Status.String())
	b = append(b, `,"account":`...)
	b = appendString(b, r.Account)
	b = append(b, `,"amount":`...)
	b = appendUnits(b, r.Amount, r.Scale)
	b = append(b, `,"charge":{"amount":`...)
	b = appendString(b, r.Charge)
	b = append(b, `,"currency":`...)
	b = appendString(b, r.Currency)
	b = append(b, `},"mode":`...)
	if r.Mode == wallet.ReloadAwaitPayment {
		b = append(b, `"await_payment"`...)
	} else {
		b = append(b, `"grant_immediately"`...)
	}
	b = append(b, `,"bucket_id":`...)
	b = appendOptString(b, r.BucketID)
	b = append(b, `,"created_at":`...)
	b = appendTime(b, r.CreatedAt)
	b = append(b, `,"updated_at":`...)
	b = appendTime(b, r.UpdatedAt)
	return append(b, '}')
}

// pageArgs reads limit and before of a list endpoint (ledger, requests, notifications).
func pageArgs(ctx *fasthttp.RequestCtx) (limit int, before uint64, ok bool) {
	q := ctx.QueryArgs()
	limit = ledgerPageDefault
	if v := q.Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > ledgerPageMax {
			writeError(ctx, "invalid_limit", "limit must be an integer from 1 to 1000", "limit")
			return 0, 0, false
		}
		limit = n
	}
	if v := q.Peek("before"); len(v) > 0 {
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil || n == 0 {
			writeError(ctx, "invalid_cursor", "before must be a cursor returned as next by this endpoint", "before")
			return 0, 0, false
		}
		before = n
	}
	return limit, before, true
}

// appendNext closes a list's array and appends its next cursor (null at the end).
func appendNext(b []byte, next uint64) []byte {
	b = append(b, `],"next":`...)
	if next == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = appendUint(b, next)
		b = append(b, '"')
	}
	return append(b, '}')
}

func (s *Server) reloadRequests(ctx *fasthttp.RequestCtx, customer string) {
	limit, before, ok := pageArgs(ctx)
	if !ok {
		return
	}
	reqs, next, err := s.e.ReloadRequests(customer, before, limit)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	b := append([]byte(nil), `{"requests":[`...)
	for i := range reqs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendReload(b, &reqs[i])
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendNext(b, next))
}

func (s *Server) resolveReload(ctx *fasthttp.RequestCtx, customer, id string, ok bool) {
	r, err := s.e.ResolveReload(customer, id, ok)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendReload(nil, &r))
}

// ---- Notifications ----

func (s *Server) notifications(ctx *fasthttp.RequestCtx, customer string) {
	limit, before, ok := pageArgs(ctx)
	if !ok {
		return
	}
	notes, next, err := s.e.Notifications(customer, before, limit)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	b := append([]byte(nil), `{"notifications":[`...)
	for i := range notes {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, notes[i].Body...)
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendNext(b, next))
}

// ---- Test clock ----

type clockBody struct {
	Advance *string `json:"advance"`
	Now     *string `json:"now"`
}

// testClockAdvanceMax bounds one move of the test clock.
const testClockAdvanceMax = 100 * 366 * 24 * time.Hour

func (s *Server) testClock(ctx *fasthttp.RequestCtx, method string) {
	if !s.testClockOn {
		writeError(ctx, "not_found", "the test clock is off: start meterd with --test-clock", "")
		return
	}
	switch method {
	case "GET":
		if !s.allow(ctx, method, "GET", ScopeRead) {
			return
		}
	case "POST":
		if !s.allow(ctx, method, "POST", ScopeAdmin) {
			return
		}
		var body clockBody
		if err := decodeStrict(ctx.PostBody(), &body); err != nil {
			s.writeErr(ctx, err)
			return
		}
		var to int64
		switch {
		case body.Advance != nil && body.Now == nil:
			d, err := time.ParseDuration(*body.Advance)
			if err != nil || d < 0 || d > testClockAdvanceMax {
				writeError(ctx, "invalid_request", "advance must be a non-negative Go duration such as \"36h\", at most 100 years", "advance")
				return
			}
			// The bound every timestamp respects, checked before adding so
			// that the sum cannot overflow.
			now := s.e.Now()
			if int64(d) >= expiryMax.UnixNano()-now {
				writeError(ctx, "invalid_timestamp",
					"advance would move the test clock past "+expiryMax.Format(time.RFC3339)+", the bound of every time", "advance")
				return
			}
			to = now + int64(d)
		case body.Now != nil && body.Advance == nil:
			t, err := parseTime(*body.Now, "now")
			if err != nil {
				s.writeErr(ctx, err)
				return
			}
			to = t
		default:
			writeError(ctx, "invalid_request", "give exactly one of advance and now", "advance")
			return
		}
		if err := s.e.SetClock(to); err != nil {
			s.writeErr(ctx, err)
			return
		}
	default:
		methodNotAllowed(ctx, "GET, POST")
		return
	}
	b := append([]byte(nil), `{"now":`...)
	b = appendTime(b, s.e.Now())
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// ---- The usage view ----

// Bounds of GET /v1/customers/{id}/usage.
const (
	usagePeriodsMax = 12        // periods per request
	usageEntriesMax = 1_000_000 // ledger entries one request may read
)

// usage answers GET /v1/customers/{id}/usage?at=RFC3339&periods=N: per
// plan period (UTC month without a plan), newest first, the period holding
// at (default now) and the N-1 before it, and per account and bucket kind
// what was granted, used, expired and what remained at the period's end
// (wallet.Usage). It reads the ledger back to the oldest period's start.
func (s *Server) usage(ctx *fasthttp.RequestCtx, customer string) {
	q := ctx.QueryArgs()
	at := s.e.Now()
	if v := q.Peek("at"); len(v) > 0 {
		t, err := parseTime(string(v), "at")
		if err != nil {
			s.writeErr(ctx, err)
			return
		}
		at = t
	}
	n := 1
	if v := q.Peek("periods"); len(v) > 0 {
		k, err := strconv.Atoi(string(v))
		if err != nil || k < 1 || k > usagePeriodsMax {
			writeError(ctx, "invalid_request", "periods must be an integer from 1 to 12", "periods")
			return
		}
		n = k
	}
	w, err := s.e.Wallet(customer)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	periods := w.UsagePeriods(at, n)
	var entries []wallet.Entry // newest first, recorded since the oldest start, none after the wallet's copy
	if len(periods) > 0 {
		oldest := periods[len(periods)-1][0]
		var before uint64
	read:
		for {
			page, err := s.e.Ledger(customer, "", before, ledgerPageMax)
			if err != nil {
				s.writeErr(ctx, err)
				return
			}
			for _, e := range page.Entries {
				if e.RecordedAt < oldest {
					break read
				}
				if e.Seq <= w.Seq {
					entries = append(entries, e)
				}
			}
			if len(entries) > usageEntriesMax {
				writeError(ctx, "usage_range_too_large", "these periods hold more than 1,000,000 ledger entries: ask for fewer periods", "periods")
				return
			}
			if page.Next == 0 {
				break
			}
			before = page.Next
		}
	}
	b := append([]byte(nil), `{"customer_id":`...)
	b = appendString(b, customer)
	b = append(b, `,"periods":[`...)
	for i, p := range w.Usage(periods, entries) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"start":`...)
		b = appendTime(b, p.Start)
		b = append(b, `,"end":`...)
		b = appendTime(b, p.End)
		b = append(b, `,"accounts":[`...)
		for j, a := range p.Accounts {
			if j > 0 {
				b = append(b, ',')
			}
			var total wallet.KindUsage
			b = append(b, `{"account":`...)
			b = appendString(b, a.Account)
			b = append(b, `,"by_kind":[`...)
			for k, u := range a.Kinds {
				if k > 0 {
					b = append(b, ',')
				}
				kind := "none" // debt and holds: what no bucket holds
				if u.Kind != 0 {
					kind = u.Kind.String()
				}
				b = append(b, `{"kind":`...)
				b = appendString(b, kind)
				b = appendUsageFlows(b, &u, a.Scale)
				b = append(b, '}')
				total.Granted += u.Granted
				total.Used += u.Used
				total.Expired += u.Expired
				total.Other += u.Other
				total.Remaining += u.Remaining
			}
			b = append(b, ']')
			b = appendUsageFlows(b, &total, a.Scale)
			b = append(b, '}')
		}
		b = append(b, "]}"...)
	}
	b = append(b, "]}"...)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// appendUsageFlows appends the flow members of a usage row.
func appendUsageFlows(b []byte, u *wallet.KindUsage, scale uint8) []byte {
	for _, f := range []struct {
		name string
		v    int64
	}{{"granted", u.Granted}, {"used", u.Used}, {"expired", u.Expired}, {"other", u.Other}, {"remaining", u.Remaining}} {
		b = append(b, `,"`...)
		b = append(b, f.name...)
		b = append(b, `":`...)
		b = appendUnits(b, f.v, scale)
	}
	return b
}
