package meter

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/meterd/meterd/meter/jsonw"
	"github.com/meterd/meterd/meter/strictjson"
	"github.com/valyala/fastjson"
)

// documentBytesMax bounds the size of a pricing document's JSON text.
const documentBytesMax = 8 << 20

// Asset is a unit of account: a currency or a credit. Amounts of it are
// int64 counts of its smallest unit, 10^-Scale.
type Asset struct {
	Code  string `json:"code"`
	Scale uint8  `json:"scale"`
}

// Document is the pricing document of the contract as JSON: assets, prices
// and top-up offers. ParseDocument reads it; Compile validates it. Optional
// JSON members that are absent (or null) are nil or empty here.
type Document struct {
	Assets           []Asset           `json:"assets"`
	Prices           []Price           `json:"prices"`
	TopupOffers      []TopupOffer      `json:"topup_offers"`
	AutoReloadLimits []AutoReloadLimit `json:"auto_reload_limits,omitempty"`
	RefundRules      *RefundRules      `json:"refund_rules,omitempty"`
}

// RefundRules say when purchases may be taken back: top-ups and plan
// grants each within a window of the purchase, and while at most MaxUsed
// of its credits were used (absent: any; "0": none spent). What was used
// is kept; the rest is taken back.
type RefundRules struct {
	TopUp     *RefundRule `json:"topup,omitempty"`
	PlanGrant *RefundRule `json:"plan_grant,omitempty"`
}

// refundKind is a kind of purchase ("topup", "plan_grant") and its rule.
type refundKind struct {
	name string
	r    *RefundRule
}

// byKind is the rules in the contract's order; a rule not given is nil.
func (r *RefundRules) byKind() []refundKind {
	return []refundKind{{"topup", r.TopUp}, {"plan_grant", r.PlanGrant}}
}

// RefundRule is one kind of purchase's refund rule.
type RefundRule struct {
	Window  string `json:"window"` // a Go duration: "24h", "48h"
	MaxUsed *Dec   `json:"max_used,omitempty"`
}

// AutoReloadLimit bounds the auto-reload threshold customers may set on
// one account ("name:ASSET"), and gives it when they omit it (APOB: 1,000
// to 9,999, 2,000 by default). Each bound is optional.
type AutoReloadLimit struct {
	Account          string `json:"account"`
	ThresholdMin     *Dec   `json:"threshold_min,omitempty"`
	ThresholdMax     *Dec   `json:"threshold_max,omitempty"`
	ThresholdDefault *Dec   `json:"threshold_default,omitempty"`
}

// Price charges one account for every event of one event type: either a
// per-event UnitPrice or a sum of Components.
type Price struct {
	EventType  string      `json:"event_type"`
	Account    string      `json:"account"` // "name:ASSET"
	Dimensions []string    `json:"dimensions,omitempty"`
	UnitPrice  *UnitPrice  `json:"unit_price,omitempty"`
	Components []Component `json:"components,omitempty"`
}

// Component is one part of a price. Without a Field it charges UnitPrice
// per event; with one it charges value / PackageSize * UnitPrice, where value
// is the event's data member named Field.
type Component struct {
	Field       string     `json:"field,omitempty"`
	PackageSize *Dec       `json:"package_size,omitempty"` // nil means 1
	UnitPrice   *UnitPrice `json:"unit_price"`
}

// UnitPrice is either one decimal (Map is nil) or a map from a dimension key
// to a decimal (Map is non-nil), in document order. A dimension key is the
// values of the price's dimensions joined with "/", or "*" for any other.
type UnitPrice struct {
	Dec Dec
	Map []PriceEntry
}

// PriceEntry is one entry of a UnitPrice map.
type PriceEntry struct {
	Key   string
	Price Dec
}

// TopupOffer sells credits of Account for Currency. Its rate is exactly
// one of: Tiers (the rate of the highest tier whose From the amount
// reaches), Rate (one rate), PlanRates (the rate of the customer's plan) or
// Package (a fixed number of credits for a fixed price). Min and Max bound
// the amount paid; Unit, when set, is what the credits bought must be a
// multiple of. An offer with an ID can be bought by it (POST
// /v1/customers/{id}/topups with offer_id); only tiered offers can be
// quoted by currency alone (GET /v1/topup-quote).
type TopupOffer struct {
	ID          string       `json:"id,omitempty"`
	Currency    string       `json:"currency"`
	Account     string       `json:"account"`
	Min         *Dec         `json:"min"`
	Max         *Dec         `json:"max"`
	Tiers       []Tier       `json:"tiers"`
	Rate        *OfferRate   `json:"rate,omitempty"`
	PlanRates   []PlanRate   `json:"plan_rates,omitempty"`
	Package     *OfferRate   `json:"package,omitempty"`
	Unit        *Dec         `json:"unit,omitempty"`
	Eligibility *Eligibility `json:"eligibility,omitempty"`
	// AutoReloadDiscountPct is taken off the price of what auto-reload
	// buys under this offer (APOB: 10% off Macro with auto-reload on).
	AutoReloadDiscountPct *Dec `json:"auto_reload_discount_pct,omitempty"`
}

// OfferRate is Credits for Price: a rate (Make: 10,000 credits for $9), or
// a package's fixed content.
type OfferRate struct {
	Price   *Dec `json:"price"`
	Credits *Dec `json:"credits"`
}

// PlanRate is the rate of an offer for the customers of one plan.
type PlanRate struct {
	Plan    string `json:"plan"`
	Price   *Dec   `json:"price"`
	Credits *Dec   `json:"credits"`
}

// Eligibility says who may buy an offer: with PlanRequired, only customers
// with a plan; with Plans, only customers on one of them.
type Eligibility struct {
	PlanRequired bool     `json:"plan_required,omitempty"`
	Plans        []string `json:"plans,omitempty"`
}

// Tier is one volume tier of a top-up offer.
type Tier struct {
	From           *Dec `json:"from"`
	CreditsPerUnit *Dec `json:"credits_per_unit"`
}

// ParseDocument reads a pricing document. The JSON must be strict, as every
// request body of the contract: valid UTF-8 without unpaired UTF-16
// surrogate escapes, no trailing data, no key twice in any object, and no
// member unknown to the contract, names matched case-sensitively. Errors are
// *Error: code "malformed_json" when the text is not JSON; "invalid_request"
// with the member's path for a key given twice, invalid text, unknown
// members ("prices[0].componets", "Prices") and wrong JSON types; "invalid_pricing" for
// values that cannot be represented (a decimal string that is not a number,
// a scale out of 0-9, an empty field name). Decimals may be JSON strings or
// JSON integers, never JSON numbers with a fraction or exponent. Semantic
// validation is Compile's job.
func ParseDocument(b []byte) (*Document, error) {
	if len(b) > documentBytesMax {
		return nil, errf("pricing_limit_exceeded", "", "pricing document is larger than 8 MiB")
	}
	// fastjson alone would keep an unpaired surrogate escape as its six
	// characters of text or turn it into U+FFFD, and does not check UTF-8.
	if err := strictjson.Valid(b); err != nil {
		return nil, strictError(b, err)
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(b)
	if err != nil {
		return nil, errf("malformed_json", "", err.Error())
	}
	var d decoder
	doc := d.document(v)
	if d.err != nil {
		return nil, d.err
	}
	return doc, nil
}

// strictError is the *Error of a strictjson error on the document b.
func strictError(b []byte, err error) *Error {
	p := strictjson.Explain(b, err)
	switch p.Kind {
	case strictjson.Duplicate:
		return errf("invalid_request", p.Path, fmt.Sprintf("duplicate key: %q is given more than once", p.Path))
	case strictjson.InvalidText:
		what := "the pricing document"
		if p.Path != "" {
			what = p.Path
		}
		return errf("invalid_request", p.Path, what+" is not valid UTF-8 (or holds an unpaired UTF-16 surrogate escape)")
	}
	return errf("malformed_json", "", fmt.Sprintf("malformed JSON at byte %d: %v", p.Offset, p.Err))
}

// decoder turns a parsed JSON value into a Document, keeping the first error.
type decoder struct {
	err *Error
}

func (d *decoder) fail(code, field, msg string) {
	if d.err == nil {
		d.err = errf(code, field, msg)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// object calls member for every member of v, which must be an object. It
// rejects duplicate keys and skips members whose value is null: null means
// absent.
func (d *decoder) object(v *fastjson.Value, path string, member func(key string, v *fastjson.Value, path string)) {
	if d.err != nil {
		return
	}
	o, err := v.Object()
	if err != nil {
		d.fail("invalid_request", path, "must be a JSON object")
		return
	}
	seen := make(map[string]struct{}, o.Len())
	o.Visit(func(k []byte, mv *fastjson.Value) {
		if d.err != nil {
			return
		}
		key := string(k)
		p := join(path, key)
		if _, dup := seen[key]; dup {
			d.fail("invalid_request", p, fmt.Sprintf("duplicate key: %q is given more than once", p))
			return
		}
		seen[key] = struct{}{}
		if mv.Type() == fastjson.TypeNull {
			return
		}
		member(key, mv, p)
	})
}

// unknown fails on the member at path, whose key is none of known. Names
// are case-sensitive; one that differs only in case is pointed out.
func (d *decoder) unknown(path, key string, known ...string) {
	for _, k := range known {
		if strings.EqualFold(k, key) {
			d.fail("invalid_request", path, fmt.Sprintf("unknown field %q: field names are case-sensitive; did you mean %q?", path, k))
			return
		}
	}
	d.fail("invalid_request", path, fmt.Sprintf("unknown field %q", path))
}

func (d *decoder) array(v *fastjson.Value, path string) []*fastjson.Value {
	a, err := v.Array()
	if err != nil {
		d.fail("invalid_request", path, "must be a JSON array")
		return nil
	}
	return a
}

func (d *decoder) boolean(v *fastjson.Value, path string) bool {
	b, err := v.Bool()
	if err != nil {
		d.fail("invalid_request", path, "must be true or false")
	}
	return b
}

func (d *decoder) str(v *fastjson.Value, path string) string {
	b, err := v.StringBytes()
	if err != nil {
		d.fail("invalid_request", path, "must be a JSON string")
		return ""
	}
	return string(b)
}

// dec reads a decimal given as a JSON string or a JSON integer.
func (d *decoder) dec(v *fastjson.Value, path string) *Dec {
	var text string
	switch v.Type() {
	case fastjson.TypeString:
		text = d.str(v, path)
	case fastjson.TypeNumber:
		text = string(v.MarshalTo(nil))
		if !isJSONInteger(text) {
			d.fail("invalid_request", path, "use a string for decimals: a JSON number with a fraction or exponent is not exact")
			return nil
		}
	default:
		d.fail("invalid_request", path, "must be a decimal as a JSON string or integer")
		return nil
	}
	x, err := ParseDec(text)
	if err != nil {
		d.fail("invalid_pricing", path, "is not a decimal number: "+err.(*Error).Message)
		return nil
	}
	return &x
}

func (d *decoder) document(v *fastjson.Value) *Document {
	doc := &Document{}
	if v.Type() != fastjson.TypeObject {
		d.fail("invalid_request", "", "pricing document must be a JSON object")
		return doc
	}
	d.object(v, "", func(key string, v *fastjson.Value, path string) {
		switch key {
		case "assets":
			for i, e := range d.array(v, path) {
				doc.Assets = append(doc.Assets, d.asset(e, index(path, i)))
			}
		case "prices":
			for i, e := range d.array(v, path) {
				doc.Prices = append(doc.Prices, d.price(e, index(path, i)))
			}
		case "topup_offers":
			for i, e := range d.array(v, path) {
				doc.TopupOffers = append(doc.TopupOffers, d.offer(e, index(path, i)))
			}
		case "auto_reload_limits":
			for i, e := range d.array(v, path) {
				doc.AutoReloadLimits = append(doc.AutoReloadLimits, d.reloadLimit(e, index(path, i)))
			}
		case "refund_rules":
			doc.RefundRules = &RefundRules{}
			d.object(v, path, func(key string, v *fastjson.Value, path string) {
				switch key {
				case "topup":
					doc.RefundRules.TopUp = d.refundRule(v, path)
				case "plan_grant":
					doc.RefundRules.PlanGrant = d.refundRule(v, path)
				default:
					d.unknown(path, key, "topup", "plan_grant")
				}
			})
		default:
			d.unknown(path, key, "assets", "prices", "topup_offers", "auto_reload_limits", "refund_rules")
		}
	})
	return doc
}

func (d *decoder) asset(v *fastjson.Value, path string) Asset {
	var a Asset
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "code":
			a.Code = d.str(v, path)
		case "scale":
			text := string(v.MarshalTo(nil))
			if v.Type() != fastjson.TypeNumber || !isJSONInteger(text) {
				d.fail("invalid_request", path, "must be a JSON integer")
				return
			}
			n, err := strconv.Atoi(text)
			if err != nil || n < 0 || n > 9 {
				d.fail("invalid_pricing", path, "scale must be an integer from 0 to 9")
				return
			}
			a.Scale = uint8(n)
		default:
			d.unknown(path, key, "code", "scale")
		}
	})
	return a
}

func (d *decoder) strings(v *fastjson.Value, path string) []string {
	a := d.array(v, path)
	out := make([]string, 0, len(a))
	for i, e := range a {
		out = append(out, d.str(e, index(path, i)))
	}
	return out
}

func (d *decoder) price(v *fastjson.Value, path string) Price {
	var p Price
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "event_type":
			p.EventType = d.str(v, path)
		case "account":
			p.Account = d.str(v, path)
		case "dimensions":
			p.Dimensions = d.strings(v, path)
		case "unit_price":
			p.UnitPrice = d.unitPrice(v, path)
		case "components":
			a := d.array(v, path)
			p.Components = make([]Component, 0, len(a))
			for i, e := range a {
				p.Components = append(p.Components, d.component(e, index(path, i)))
			}
		default:
			d.unknown(path, key, "event_type", "account", "dimensions", "unit_price", "components")
		}
	})
	return p
}

func (d *decoder) component(v *fastjson.Value, path string) Component {
	var c Component
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "field":
			c.Field = d.str(v, path)
			if c.Field == "" {
				d.fail("invalid_pricing", path, "field must be 1-64 characters; omit it for a per-event charge")
			}
		case "package_size":
			c.PackageSize = d.dec(v, path)
		case "unit_price":
			c.UnitPrice = d.unitPrice(v, path)
		default:
			d.unknown(path, key, "field", "package_size", "unit_price")
		}
	})
	return c
}

func (d *decoder) unitPrice(v *fastjson.Value, path string) *UnitPrice {
	if v.Type() != fastjson.TypeObject {
		x := d.dec(v, path)
		if x == nil {
			return nil
		}
		return &UnitPrice{Dec: *x}
	}
	u := &UnitPrice{Map: []PriceEntry{}}
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		if x := d.dec(v, path); x != nil {
			u.Map = append(u.Map, PriceEntry{Key: key, Price: *x})
		}
	})
	return u
}

func (d *decoder) offer(v *fastjson.Value, path string) TopupOffer {
	var o TopupOffer
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "id":
			o.ID = d.str(v, path)
		case "currency":
			o.Currency = d.str(v, path)
		case "account":
			o.Account = d.str(v, path)
		case "min":
			o.Min = d.dec(v, path)
		case "max":
			o.Max = d.dec(v, path)
		case "tiers":
			a := d.array(v, path)
			o.Tiers = make([]Tier, 0, len(a))
			for i, e := range a {
				o.Tiers = append(o.Tiers, d.tier(e, index(path, i)))
			}
		case "rate":
			o.Rate = d.offerRate(v, path)
		case "package":
			o.Package = d.offerRate(v, path)
		case "plan_rates":
			a := d.array(v, path)
			o.PlanRates = make([]PlanRate, 0, len(a))
			for i, e := range a {
				o.PlanRates = append(o.PlanRates, d.planRate(e, index(path, i)))
			}
		case "unit":
			o.Unit = d.dec(v, path)
		case "auto_reload_discount_pct":
			o.AutoReloadDiscountPct = d.dec(v, path)
		case "eligibility":
			o.Eligibility = d.eligibility(v, path)
		default:
			d.unknown(path, key, "id", "currency", "account", "min", "max", "tiers", "rate", "plan_rates", "package",
				"unit", "eligibility", "auto_reload_discount_pct")
		}
	})
	return o
}

func (d *decoder) offerRate(v *fastjson.Value, path string) *OfferRate {
	r := &OfferRate{}
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "price":
			r.Price = d.dec(v, path)
		case "credits":
			r.Credits = d.dec(v, path)
		default:
			d.unknown(path, key, "price", "credits")
		}
	})
	return r
}

func (d *decoder) planRate(v *fastjson.Value, path string) PlanRate {
	var r PlanRate
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "plan":
			r.Plan = d.str(v, path)
		case "price":
			r.Price = d.dec(v, path)
		case "credits":
			r.Credits = d.dec(v, path)
		default:
			d.unknown(path, key, "plan", "price", "credits")
		}
	})
	return r
}

func (d *decoder) eligibility(v *fastjson.Value, path string) *Eligibility {
	el := &Eligibility{}
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "plan_required":
			el.PlanRequired = d.boolean(v, path)
		case "plans":
			el.Plans = d.strings(v, path)
		default:
			d.unknown(path, key, "plan_required", "plans")
		}
	})
	return el
}

func (d *decoder) reloadLimit(v *fastjson.Value, path string) AutoReloadLimit {
	var l AutoReloadLimit
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "account":
			l.Account = d.str(v, path)
		case "threshold_min":
			l.ThresholdMin = d.dec(v, path)
		case "threshold_max":
			l.ThresholdMax = d.dec(v, path)
		case "threshold_default":
			l.ThresholdDefault = d.dec(v, path)
		default:
			d.unknown(path, key, "account", "threshold_min", "threshold_max", "threshold_default")
		}
	})
	return l
}

func (d *decoder) refundRule(v *fastjson.Value, path string) *RefundRule {
	r := &RefundRule{}
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "window":
			r.Window = d.str(v, path)
		case "max_used":
			r.MaxUsed = d.dec(v, path)
		default:
			d.unknown(path, key, "window", "max_used")
		}
	})
	return r
}

func (d *decoder) tier(v *fastjson.Value, path string) Tier {
	var t Tier
	d.object(v, path, func(key string, v *fastjson.Value, path string) {
		switch key {
		case "from":
			t.From = d.dec(v, path)
		case "credits_per_unit":
			t.CreditsPerUnit = d.dec(v, path)
		default:
			d.unknown(path, key, "from", "credits_per_unit")
		}
	})
	return t
}

// appendJSON appends the canonical compact JSON of doc: members in the
// contract's order, decimals as strings in their plain form, absent optional
// members omitted, unit_price maps in document order.
func (doc *Document) appendJSON(b []byte) []byte {
	b = append(b, `{"assets":[`...)
	for i, a := range doc.Assets {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"code":`...)
		b = appendString(b, a.Code)
		b = append(b, `,"scale":`...)
		b = strconv.AppendUint(b, uint64(a.Scale), 10)
		b = append(b, '}')
	}
	b = append(b, `],"prices":[`...)
	for i := range doc.Prices {
		p := &doc.Prices[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"event_type":`...)
		b = appendString(b, p.EventType)
		b = append(b, `,"account":`...)
		b = appendString(b, p.Account)
		if len(p.Dimensions) > 0 {
			b = append(b, `,"dimensions":[`...)
			for j, s := range p.Dimensions {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendString(b, s)
			}
			b = append(b, ']')
		}
		if p.UnitPrice != nil {
			b = append(b, `,"unit_price":`...)
			b = p.UnitPrice.appendJSON(b)
		}
		if p.Components != nil {
			b = append(b, `,"components":[`...)
			for j := range p.Components {
				c := &p.Components[j]
				if j > 0 {
					b = append(b, ',')
				}
				b = append(b, '{')
				if c.Field != "" {
					b = append(b, `"field":`...)
					b = appendString(b, c.Field)
					b = append(b, ',')
				}
				if c.PackageSize != nil {
					b = append(b, `"package_size":`...)
					b = appendDec(b, *c.PackageSize)
					b = append(b, ',')
				}
				if c.UnitPrice != nil {
					b = append(b, `"unit_price":`...)
					b = c.UnitPrice.appendJSON(b)
				} else if b[len(b)-1] == ',' {
					b = b[:len(b)-1]
				}
				b = append(b, '}')
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	b = append(b, `],"topup_offers":`...)
	b = appendOffers(b, doc.TopupOffers)
	if len(doc.AutoReloadLimits) > 0 {
		b = append(b, `,"auto_reload_limits":[`...)
		for i := range doc.AutoReloadLimits {
			l := &doc.AutoReloadLimits[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"account":`...)
			b = appendString(b, l.Account)
			b = appendDecMembers(b, false, decMember{"threshold_min", l.ThresholdMin},
				decMember{"threshold_max", l.ThresholdMax}, decMember{"threshold_default", l.ThresholdDefault})
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if r := doc.RefundRules; r != nil {
		b = append(b, `,"refund_rules":{`...)
		first := true
		for _, k := range r.byKind() {
			if k.r == nil {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, '"')
			b = append(b, k.name...)
			b = append(b, `":{"window":`...)
			b = appendString(b, k.r.Window)
			if k.r.MaxUsed != nil {
				b = append(b, `,"max_used":`...)
				b = appendDec(b, *k.r.MaxUsed)
			}
			b = append(b, '}')
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

func (u *UnitPrice) appendJSON(b []byte) []byte {
	if u.Map == nil {
		return appendDec(b, u.Dec)
	}
	b = append(b, '{')
	for i, e := range u.Map {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, e.Key)
		b = append(b, ':')
		b = appendDec(b, e.Price)
	}
	return append(b, '}')
}

// MarshalJSON encodes the unit price as a decimal string or a JSON object.
func (u UnitPrice) MarshalJSON() ([]byte, error) { return u.appendJSON(nil), nil }

// MarshalJSON encodes the document in its canonical compact JSON.
func (doc Document) MarshalJSON() ([]byte, error) { return doc.appendJSON(nil), nil }

// UnmarshalJSON decodes a document with ParseDocument's strict rules.
func (doc *Document) UnmarshalJSON(b []byte) error {
	d, err := ParseDocument(b)
	if err != nil {
		return err
	}
	*doc = *d
	return nil
}

func appendDec(b []byte, d Dec) []byte {
	b = append(b, '"')
	b = d.appendTo(b)
	return append(b, '"')
}

// appendString appends s as a JSON string (jsonw.AppendString).
func appendString(b []byte, s string) []byte { return jsonw.AppendString(b, s) }

// appendOptDec appends ,"name":d when d is set.
func appendOptDec(b []byte, name string, d *Dec) []byte {
	return appendDecMembers(b, false, decMember{name, d})
}

// decMember is an optional decimal member of a JSON object.
type decMember struct {
	name string
	v    *Dec
}

// appendDecMembers appends "name":v for each member that is set, separated
// by commas, with a comma before the first unless first is true.
func appendDecMembers(b []byte, first bool, ms ...decMember) []byte {
	for _, m := range ms {
		if m.v == nil {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, m.name...)
		b = append(b, `":`...)
		b = appendDec(b, *m.v)
	}
	return b
}

// appendRates appends an offer's rate, plan_rates and package members.
func (o *TopupOffer) appendRates(b []byte) []byte {
	rate := func(b []byte, name string, r *OfferRate) []byte {
		if r == nil {
			return b
		}
		b = append(b, `,"`...)
		b = append(b, name...)
		b = append(b, `":{`...)
		b = appendDecMembers(b, true, decMember{"price", r.Price}, decMember{"credits", r.Credits})
		return append(b, '}')
	}
	b = rate(b, "rate", o.Rate)
	b = rate(b, "package", o.Package)
	if o.PlanRates != nil {
		b = append(b, `,"plan_rates":[`...)
		for i, r := range o.PlanRates {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"plan":`...)
			b = appendString(b, r.Plan)
			b = appendDecMembers(b, false, decMember{"price", r.Price}, decMember{"credits", r.Credits})
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return b
}

// appendOffers appends top-up offers as a JSON array, in the document's
// canonical form.
func appendOffers(b []byte, offers []TopupOffer) []byte {
	b = append(b, '[')
	for i := range offers {
		o := &offers[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		if o.ID != "" {
			b = append(b, `"id":`...)
			b = appendString(b, o.ID)
			b = append(b, ',')
		}
		b = append(b, `"currency":`...)
		b = appendString(b, o.Currency)
		b = append(b, `,"account":`...)
		b = appendString(b, o.Account)
		b = appendOptDec(b, "min", o.Min)
		b = appendOptDec(b, "max", o.Max)
		b = o.appendRates(b)
		b = appendOptDec(b, "unit", o.Unit)
		if el := o.Eligibility; el != nil {
			b = append(b, `,"eligibility":{"plan_required":`...)
			b = strconv.AppendBool(b, el.PlanRequired)
			if el.Plans != nil {
				b = append(b, `,"plans":[`...)
				for j, pl := range el.Plans {
					if j > 0 {
						b = append(b, ',')
					}
					b = appendString(b, pl)
				}
				b = append(b, ']')
			}
			b = append(b, '}')
		}
		b = appendOptDec(b, "auto_reload_discount_pct", o.AutoReloadDiscountPct)
		if o.Tiers == nil {
			b = append(b, '}')
			continue
		}
		b = append(b, `,"tiers":[`...)
		for j, t := range o.Tiers {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			if t.From != nil {
				b = append(b, `"from":`...)
				b = appendDec(b, *t.From)
			}
			if t.CreditsPerUnit != nil {
				if t.From != nil {
					b = append(b, ',')
				}
				b = append(b, `"credits_per_unit":`...)
				b = appendDec(b, *t.CreditsPerUnit)
			}
			b = append(b, '}')
		}
		b = append(b, "]}"...)
	}
	b = append(b, ']')
	return b
}
