package ingest

import (
	"encoding/json"
	"strings"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/valyala/fasthttp"
)

// topUpBody is POST /v1/customers/{id}/topups in any of its three forms:
//
//   - credits for a price: account, asset and amount (the credits), with an
//     optional price {amount, currency} that is recorded;
//   - an offer (offer_id): amount (the credits) or price.amount (the money
//     paid), or neither for a package; meterd computes the other;
//   - money crediting another asset (Credyt): amount and currency are the
//     money paid, destination {account_name, asset, exchange_rate} what it
//     credits; without exchange_rate, offer_id (or the currency's tiered
//     offer for that account) gives the rate.
type topUpBody struct {
	ID              string           `json:"id"`
	CustomerID      *string          `json:"customer_id"`
	OfferID         *string          `json:"offer_id"`
	Account         *string          `json:"account"`
	Asset           string           `json:"asset"`
	Amount          json.RawMessage  `json:"amount"`
	Currency        *string          `json:"currency"`
	Destination     *destinationBody `json:"destination"`
	Price           *priceBody       `json:"price"`
	Source          *string          `json:"source"`
	Description     *string          `json:"description"`
	ExpiresAt       *string          `json:"expires_at"`
	CreditExpiresAt *string          `json:"credit_expires_at"`
	Metadata        json.RawMessage  `json:"metadata"`
}

// destinationBody is what a top-up paid in one currency credits (Credyt).
type destinationBody struct {
	AccountName  *string         `json:"account_name"`
	Asset        string          `json:"asset"`
	ExchangeRate json.RawMessage `json:"exchange_rate"`
}

func (s *Server) topUp(ctx *fasthttp.RequestCtx, customer string) {
	var body topUpBody
	if err := decodeStrict(ctx.PostBody(), &body); err != nil {
		s.writeErr(ctx, err)
		return
	}
	if body.CustomerID != nil && *body.CustomerID != customer {
		writeError(ctx, "invalid_request", "customer_id in the body must be the customer of the path", "customer_id")
		return
	}
	cmd, h, err := s.topUpCmd(&body)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	res, err := s.e.TopUp(customer, cmd, h)
	if err != nil {
		s.writeErr(ctx, offerField(err, &body))
		return
	}
	rec := res.Record
	if res.Replayed {
		ctx.SetStatusCode(fasthttp.StatusOK)
		r, err := s.e.TopUpByID(customer, cmd.ID)
		switch {
		case err == nil:
			rec = &r
		case cmd.Offer != nil:
			s.writeErr(ctx, err)
			return
		default: // made before top-ups had records: answer from the request
			rec = &balance.TopUpRecord{ID: cmd.ID, BucketID: res.BucketID, Account: cmd.Account + ":" + cmd.Asset,
				Scale: cmd.Scale, Amount: cmd.Amount, Price: cmd.Price, Currency: cmd.Currency, Source: cmd.Source,
				ExpiresAt: res.ExpiresAt, CreatedAt: res.CreatedAt, Metadata: cmd.Metadata}
		}
	} else {
		ctx.SetStatusCode(fasthttp.StatusCreated)
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendTopUpRecord(nil, customer, rec, res.ReversedAt))
}

// offerField names an offer's refusal (Field "offer.<field of the
// purchase>", balance.buyOffer) by the body's field: the money is
// price.amount, or amount in the Credyt form; the credits are amount.
func offerField(err error, body *topUpBody) error {
	we, ok := err.(*wallet.Error)
	if !ok {
		return err
	}
	switch we.Field {
	case "offer.credits":
		we.Field = "amount"
	case "offer.amount":
		we.Field = "price.amount"
		if body.Currency != nil {
			we.Field = "amount"
		}
	case "offer.offer_id":
		we.Field = "offer_id"
	}
	return we
}

// topUpCmd checks a top-up body and returns the command and the content
// hash that makes it idempotent. The hash covers what the client sent, not
// what an offer computes from it, so that a retry matches whatever the
// pricing became; a top-up of the first form hashes as before offers.
func (s *Server) topUpCmd(body *topUpBody) (*wallet.TopUpCmd, [16]byte, error) {
	var h [16]byte
	if !validID(body.ID) {
		return nil, h, badRequest("invalid_id", "id", "id must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	cmd := &wallet.TopUpCmd{ID: body.ID, Source: defaultTopUpSource}
	if body.Source != nil {
		cmd.Source = *body.Source
	}
	if err := checkLen(cmd.Source, "source", sourceLenMax); err != nil {
		return nil, h, err
	}
	if body.Description != nil {
		if err := checkLen(*body.Description, "description", textLenMax); err != nil {
			return nil, h, err
		}
		cmd.Description = *body.Description
	}
	expires, field := body.ExpiresAt, "expires_at"
	if body.CreditExpiresAt != nil {
		if expires != nil {
			return nil, h, badRequest("invalid_request", "credit_expires_at", "give expires_at or credit_expires_at, not both")
		}
		expires, field = body.CreditExpiresAt, "credit_expires_at"
	}
	var err error
	if cmd.ExpiresAt, err = parseExpiry(expires, field); err != nil {
		return nil, h, err
	}
	if cmd.Metadata, err = metadata(body.Metadata, "metadata"); err != nil {
		return nil, h, err
	}
	hs := &hasher{}
	switch {
	case body.Destination != nil || body.Currency != nil:
		err = s.exchangeTopUp(body, cmd, hs)
	case body.OfferID != nil:
		err = s.offerTopUp(body, cmd, hs)
	default:
		err = s.plainTopUp(body, cmd, hs)
	}
	if err != nil {
		return nil, h, err
	}
	hs.str(cmd.Source).int(cmd.ExpiresAt).str(string(cmd.Metadata))
	if cmd.Description != "" {
		hs.str("description").str(cmd.Description)
	}
	return cmd, hs.sum(), nil
}

// plainTopUp reads credits for an optional recorded price.
func (s *Server) plainTopUp(body *topUpBody, cmd *wallet.TopUpCmd, hs *hasher) error {
	name, asset, err := s.topUpAccount(body.Account, "account", body.Asset, "asset")
	if err != nil {
		return err
	}
	cmd.Account, cmd.Asset, cmd.Scale = name, asset.Code, asset.Scale
	if cmd.Amount, err = parseAmount(body.Amount, asset.Scale, "amount"); err != nil {
		return err
	}
	if cmd.Amount <= 0 {
		return badRequest("invalid_amount", "amount", "a top-up amount must be positive")
	}
	if body.Price != nil {
		if !validCode(body.Price.Currency) {
			return badRequest("invalid_request", "price.currency", "currency must be 1-16 characters of [A-Z0-9_]")
		}
		if cmd.Price, err = moneyText(body.Price.Amount, "price.amount"); err != nil {
			return err
		}
		cmd.Currency = body.Price.Currency
	}
	hs.str(cmd.ID).str(cmd.Account).str(cmd.Asset).int(cmd.Amount).str(cmd.Price).str(cmd.Currency)
	return nil
}

// offerTopUp reads a purchase under an offer: the credits (amount) or the
// money (price.amount), or neither for a package. The engine prices it
// under the customer's plan when it applies it.
func (s *Server) offerTopUp(body *topUpBody, cmd *wallet.TopUpCmd, hs *hasher) error {
	id := *body.OfferID
	o, ok := s.e.Pricing().Offer(id)
	if !ok {
		return badRequest("unknown_offer", "offer_id", "no top-up offer of the pricing in force (version %d) has the id %q",
			s.e.Pricing().Version, id)
	}
	if err := s.matchOffer(o, body.Account, "account", body.Asset, "asset"); err != nil {
		return err
	}
	buy := &meter.Purchase{OfferID: id}
	var err error
	if !isNull(body.Amount) {
		if buy.Credits, err = decimalText(body.Amount, "amount"); err != nil {
			return err
		}
	}
	if body.Price != nil {
		if body.Price.Currency != "" && body.Price.Currency != o.Currency {
			return badRequest("invalid_request", "price.currency", "offer %s is paid in %s", id, o.Currency)
		}
		if buy.Amount, err = decimalText(body.Price.Amount, "price.amount"); err != nil {
			return err
		}
	}
	cmd.Offer = buy
	hs.str(cmd.ID).str("offer").str(id).str(buy.Credits).str(buy.Amount)
	return nil
}

// exchangeTopUp reads a payment in one currency (amount, currency) that
// credits another asset (destination) at its exchange_rate, or at an
// offer's rate.
func (s *Server) exchangeTopUp(body *topUpBody, cmd *wallet.TopUpCmd, hs *hasher) error {
	switch {
	case body.Currency == nil:
		return badRequest("invalid_request", "currency", "a top-up with a destination is paid in a currency: give currency")
	case body.Destination == nil:
		return badRequest("invalid_request", "destination", "a top-up paid in a currency credits a destination {account_name, asset, exchange_rate}")
	case body.Price != nil:
		return badRequest("invalid_request", "price", "amount and currency are the price of a top-up with a destination")
	case body.Account != nil || body.Asset != "":
		return badRequest("invalid_request", "account", "the destination names the account of a top-up paid in a currency")
	}
	// Currency codes are upper case in meterd; a lower-case ISO code
	// ("usd") is taken as the same currency.
	currency := strings.ToUpper(*body.Currency)
	if !validCode(currency) {
		return badRequest("invalid_request", "currency", "currency must be 1-16 characters of [A-Z0-9_]")
	}
	paid, err := moneyText(body.Amount, "amount")
	if err != nil {
		return err
	}
	d := body.Destination
	name, asset, err := s.topUpAccount(d.AccountName, "destination.account_name", d.Asset, "destination.asset")
	if err != nil {
		return err
	}
	if isNull(d.ExchangeRate) {
		// The offered rate: offer_id's, or the currency's tiered offer's.
		id := ""
		if body.OfferID != nil {
			id = *body.OfferID
		} else if id, err = s.tieredOfferID(currency, name+":"+asset.Code); err != nil {
			return err
		}
		o, ok := s.e.Pricing().Offer(id)
		if !ok {
			return badRequest("unknown_offer", "offer_id", "no top-up offer of the pricing in force has the id %q", id)
		}
		if o.Currency != currency {
			return badRequest("invalid_request", "currency", "offer %s is paid in %s", id, o.Currency)
		}
		if err := s.matchOffer(o, &name, "destination.account_name", asset.Code, "destination.asset"); err != nil {
			return err
		}
		cmd.Offer = &meter.Purchase{OfferID: id, Amount: paid}
		hs.str(cmd.ID).str("exchange").str(currency).str(paid).str(name).str(asset.Code).str(id)
		return nil
	}
	if body.OfferID != nil {
		return badRequest("invalid_request", "offer_id", "give destination.exchange_rate or offer_id, not both")
	}
	rate, err := decimalText(d.ExchangeRate, "destination.exchange_rate")
	if err != nil {
		return err
	}
	credits, err := exchanged(paid, rate, asset.Scale)
	if err != nil {
		return err
	}
	cmd.Account, cmd.Asset, cmd.Scale, cmd.Amount = name, asset.Code, asset.Scale, credits
	cmd.Price, cmd.Currency, cmd.ExchangeRate = paid, currency, rate
	hs.str(cmd.ID).str("exchange").str(currency).str(paid).str(name).str(asset.Code).str(rate)
	return nil
}

// exchanged is paid * rate in smallest units of an asset of scale, rounded
// down (a credit is never granted that was not paid for).
func exchanged(paid, rate string, scale uint8) (int64, error) {
	p, _ := meter.ParseDec(paid)
	r, _ := meter.ParseDec(rate)
	if p.Sign() <= 0 {
		return 0, badRequest("invalid_amount", "amount", "the amount paid must be positive")
	}
	if r.Sign() <= 0 {
		return 0, badRequest("invalid_amount", "destination.exchange_rate", "exchange_rate must be positive")
	}
	units, ok := meter.MulFloor(p, r, scale)
	if !ok || units > wallet.CommandUnitsMax {
		return 0, badRequest("invalid_amount", "amount", "amount * exchange_rate is above %d units", wallet.CommandUnitsMax)
	}
	if units <= 0 {
		return 0, badRequest("invalid_amount", "amount", "amount * exchange_rate is less than one smallest unit of the destination asset")
	}
	return units, nil
}

// tieredOfferID is the id of the tiered offer for currency crediting
// account.
func (s *Server) tieredOfferID(currency, account string) (string, error) {
	for _, o := range s.e.Pricing().Offers() {
		if o.Tiers != nil && o.Currency == currency && o.Account == account {
			if o.ID == "" {
				break
			}
			return o.ID, nil
		}
	}
	return "", badRequest("invalid_request", "destination.exchange_rate",
		"give exchange_rate or offer_id: the pricing has no tiered offer with an id selling %s for %s", account, currency)
}

// topUpAccount reads the account name (default "default") and the asset of
// a top-up.
func (s *Server) topUpAccount(nameIn *string, nameField, code, codeField string) (string, meter.Asset, error) {
	name, code, err := splitAccount(nameIn, code, nameField, codeField)
	if err != nil {
		return "", meter.Asset{}, err
	}
	p := s.e.Pricing()
	asset, ok := p.Asset(code)
	if !ok {
		return "", meter.Asset{}, badRequest("unknown_asset", codeField, "asset %q is not defined by the pricing in force (version %d)", code, p.Version)
	}
	return name, asset, nil
}

// matchOffer checks that an account and asset a body names, when it names
// them, are those the offer credits.
func (s *Server) matchOffer(o *meter.TopupOffer, nameIn *string, nameField, code, codeField string) error {
	oname, ocode, _ := strings.Cut(o.Account, ":")
	name, code, err := splitAccount(nameIn, code, nameField, codeField)
	if err != nil {
		return err
	}
	if nameIn != nil && name != oname {
		return badRequest("invalid_request", nameField, "offer %s credits %s", o.ID, o.Account)
	}
	if code != "" && code != ocode {
		return badRequest("invalid_request", codeField, "offer %s credits %s", o.ID, o.Account)
	}
	return nil
}

// reversedAt is when a stored top-up was reversed, 0 if it was not.
func reversedAt(r *balance.TopUpRecord) int64 {
	if r.Reversal == nil {
		return 0
	}
	return r.Reversal.At
}

// getTopUp answers GET /v1/customers/{id}/topups/{topup_id}.
func (s *Server) getTopUp(ctx *fasthttp.RequestCtx, customer, id string) {
	if !validID(id) {
		writeError(ctx, "invalid_id", "top-up id must be 1-128 characters of [A-Za-z0-9._:-]", "id")
		return
	}
	r, err := s.e.TopUpByID(customer, id)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendTopUpRecord(nil, customer, &r, reversedAt(&r)))
}

// listTopUps answers GET /v1/customers/{id}/topups?limit=&before=, newest
// first.
func (s *Server) listTopUps(ctx *fasthttp.RequestCtx, customer string) {
	limit, before, ok := pageArgs(ctx)
	if !ok {
		return
	}
	rs, next, err := s.e.TopUps(customer, before, limit)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	b := append([]byte(nil), `{"topups":[`...)
	for i := range rs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendTopUpRecord(b, customer, &rs[i], reversedAt(&rs[i]))
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendNext(b, next))
}

// appendTopUpRecord appends a top-up as POST and GET answer it: reversed
// when reversedAt is set, with what its reversal took back and kept when
// r has them (a replayed POST does not).
func appendTopUpRecord(b []byte, customer string, r *balance.TopUpRecord, reversedAt int64) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, r.ID)
	b = append(b, `,"customer_id":`...)
	b = appendString(b, customer)
	b = append(b, `,"bucket_id":`...)
	b = appendString(b, r.BucketID)
	b = append(b, `,"status":`...)
	if reversedAt != 0 {
		b = append(b, `"reversed"`...)
	} else {
		b = append(b, `"completed"`...)
	}
	b = append(b, `,"account":`...)
	b = appendString(b, r.Account)
	_, asset, _ := strings.Cut(r.Account, ":")
	b = append(b, `,"asset":`...)
	b = appendString(b, asset)
	b = append(b, `,"amount":`...)
	b = appendUnits(b, r.Amount, r.Scale)
	b = append(b, `,"price":`...)
	if r.Currency == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"amount":`...)
		b = appendString(b, r.Price)
		b = append(b, `,"currency":`...)
		b = appendString(b, r.Currency)
		b = append(b, '}')
	}
	b = append(b, `,"source":`...)
	b = appendString(b, r.Source)
	b = append(b, `,"expires_at":`...)
	b = appendTime(b, r.ExpiresAt)
	b = append(b, `,"created_at":`...)
	b = appendTime(b, r.CreatedAt)
	if reversedAt != 0 {
		b = append(b, `,"reversed_at":`...)
		b = appendTime(b, reversedAt)
	}
	if v := r.Reversal; v != nil {
		b = append(b, `,"reversed":`...)
		b = appendUnits(b, v.Reversed, r.Scale)
		b = append(b, `,"kept":`...)
		b = appendUnits(b, v.Kept, r.Scale)
	}
	b = append(b, `,"description":`...)
	b = appendOptString(b, r.Description)
	b = append(b, `,"exchange_rate":`...)
	b = appendOptString(b, r.ExchangeRate)
	b = append(b, `,"offer":`...)
	if r.OfferID == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"id":`...)
		b = appendString(b, r.OfferID)
		b = append(b, `,"tier":`...)
		if r.Tier == 0 {
			b = append(b, "null"...)
		} else {
			b = appendUint(b, uint64(r.Tier))
		}
		b = append(b, `,"rate":{"price":`...)
		b = appendString(b, r.RatePrice)
		b = append(b, `,"credits":`...)
		b = appendString(b, r.RateCredits)
		b = append(b, "}}"...)
	}
	b = append(b, `,"metadata":`...)
	b = appendRaw(b, r.Metadata, "{}")
	return append(b, '}')
}

// moneyText reads an amount of money as written: a decimal from 0 to
// below 10^9 with at most 9 decimal places, which every sink can carry
// exactly (ClickHouse keeps it in billionths).
func moneyText(raw json.RawMessage, field string) (string, error) {
	text, err := decimalText(raw, field)
	if err != nil {
		return "", err
	}
	if u, err := meter.ParseUnits(text, 9); err != nil || u < 0 {
		return "", badRequest("invalid_amount", field, "%s must be from 0 to below 1000000000 with at most 9 decimal places", field)
	}
	return text, nil
}
