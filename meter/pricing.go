package meter

import (
	"bytes"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits of a pricing document. Crossing one is an *Error with code
// "pricing_limit_exceeded".
const (
	assetsMax            = 64
	pricesMax            = 1024
	componentsMax        = 16   // per price
	priceMapEntriesMax   = 1024 // per unit_price map
	priceMapEntriesSum   = 65536
	offersMax            = 64
	planRatesMax         = 64 // per offer, and plans per eligibility
	reloadLimitsMax      = 64 // auto_reload_limits entries
	tiersMax             = 32 // per offer
	dimensionsMax        = 4  // per price
	dimensionKeyBytesMax = 256
)

// Pricing is a compiled, immutable pricing document: what Rate needs,
// precomputed. It is safe for concurrent use.
type Pricing struct {
	// Version is the pricing version; every charge records the version
	// that priced it. Version 0 is the empty pricing.
	Version uint32

	assets      []Asset
	assetByCode map[string]Asset
	byType      map[string][]*price // event_type -> prices, in document order
	json        []byte              // canonical document
	offers      []TopupOffer        // the document's top-up offers, validated
	offerByID   map[string]int      // offer id -> index in offers
	reload      map[string]ReloadLimits
	refunds     map[string]Refund // "topup", "plan_grant"
}

// Refund is a compiled refund rule.
type Refund struct {
	Window  time.Duration
	MaxUsed *Dec // nil: any amount may have been used
}

// RefundRule returns the refund rule of purchases of a kind ("topup" or
// "plan_grant"); ok is false when the document sets none.
func (p *Pricing) RefundRule(kind string) (r Refund, ok bool) {
	r, ok = p.refunds[kind]
	return r, ok
}

// ReloadLimits are an account's auto-reload threshold bounds in units of
// its asset (AutoReloadLimit, compiled). A bound that is not set is nil.
type ReloadLimits struct {
	Min, Max, Default *int64
}

// ReloadLimits returns the auto-reload threshold bounds of account
// ("name:ASSET"); ok is false when the document sets none.
func (p *Pricing) ReloadLimits(account string) (l ReloadLimits, ok bool) {
	l, ok = p.reload[account]
	return l, ok
}

// price is a compiled Price.
type price struct {
	account, name, asset string
	scale                uint8
	dims                 []string
	hasMap               bool
	keys                 map[string]int32 // concrete unit_price map keys of all components -> index
	comps                []component
}

// component is a compiled Component (a top-level unit_price compiles into a
// single component without a field).
type component struct {
	field    string // "" for a per-event charge
	dataPath string // "data.<field>", for errors
	path     string // "prices[i].components[j]", for errors
	isMap    bool
	flat     rate            // when !isMap
	keyed    []*rate         // by index in price.keys; nil: use star
	byKey    map[string]rate // while compiling
	star     rate
	hasStar  bool
}

// rate is one unit price divided by a package size, pre-scaled to sub-units
// of the price's asset: a value v (= cv*10^ev) costs
// floor(cv * coef * 10^(ev+exp) / div) sub-units.
type rate struct {
	coef     uint64 // unit price coefficient
	exp      int32  // unit price exponent - package size exponent + scale + 18
	div      uint64 // package size coefficient, > 0
	perEvent u128   // the charge of a per-event component (unused with a field)
}

// Empty returns the pricing of version 0: no assets, no prices.
func Empty() *Pricing {
	p, err := Compile(&Document{}, 0, nil)
	if err != nil {
		panic("meter: the empty document does not compile: " + err.Error())
	}
	return p
}

// Asset returns the asset with the given code.
func (p *Pricing) Asset(code string) (Asset, bool) {
	a, ok := p.assetByCode[code]
	return a, ok
}

// Assets returns the assets in document order.
func (p *Pricing) Assets() []Asset { return append([]Asset(nil), p.assets...) }

// Document returns a fresh copy of the pricing document, as compiled.
func (p *Pricing) Document() *Document {
	doc, err := ParseDocument(p.json)
	if err != nil {
		panic("meter: canonical pricing JSON does not parse: " + err.Error())
	}
	return doc
}

// JSON returns the canonical compact JSON of the document: members in the
// contract's order, decimals as strings in plain minimal form ("2.00" becomes
// "2", "1e3" becomes "1000"). Compiling ParseDocument(p.JSON()) gives an
// equal Pricing.
func (p *Pricing) JSON() []byte { return bytes.Clone(p.json) }

// pricingErr builds a semantic Compile error.
func pricingErr(field, msg string) *Error { return errf("invalid_pricing", field, msg) }

func limitErr(field, msg string) *Error { return errf("pricing_limit_exceeded", field, msg) }

// Compile validates a pricing document and compiles it into the given
// version. prev, the pricing in force (nil for none), constrains assets:
// each of its assets must still be defined with the same scale, since
// balances are stored in units of the scale. Errors are *Error with code
// "invalid_pricing" (semantic errors), "pricing_limit_exceeded" or
// "asset_immutable", and Field set to the JSON path of the offending value,
// such as "prices[1].components[0].unit_price.gpt-4-1".
func Compile(doc *Document, version uint32, prev *Pricing) (*Pricing, error) {
	if doc == nil {
		doc = &Document{}
	}
	p := &Pricing{
		Version:     version,
		assetByCode: make(map[string]Asset, len(doc.Assets)),
		byType:      make(map[string][]*price, len(doc.Prices)),
	}
	if err := p.compileAssets(doc.Assets, prev); err != nil {
		return nil, err
	}
	if err := p.compilePrices(doc.Prices); err != nil {
		return nil, err
	}
	if err := p.compileOffers(doc.TopupOffers); err != nil {
		return nil, err
	}
	if err := p.compileReloadLimits(doc.AutoReloadLimits); err != nil {
		return nil, err
	}
	if err := p.compileRefunds(doc.RefundRules); err != nil {
		return nil, err
	}
	p.json = doc.appendJSON(nil)
	if len(p.json) > documentBytesMax {
		// The stored document must parse again when it is loaded.
		return nil, limitErr("", "pricing document is larger than 8 MiB as canonical JSON")
	}
	return p, nil
}

func (p *Pricing) compileAssets(assets []Asset, prev *Pricing) error {
	if len(assets) > assetsMax {
		return limitErr("assets", "a pricing document may define at most 64 assets")
	}
	for i, a := range assets {
		path := index("assets", i)
		if !isAssetCode(a.Code) {
			return pricingErr(path+".code", "asset code must be 1-16 characters of A-Z, 0-9 and _")
		}
		if a.Scale > 9 {
			return pricingErr(path+".scale", "scale must be an integer from 0 to 9")
		}
		if _, dup := p.assetByCode[a.Code]; dup {
			return pricingErr(path+".code", "asset "+a.Code+" is defined twice")
		}
		p.assetByCode[a.Code] = a
		p.assets = append(p.assets, a)
	}
	if prev == nil {
		return nil
	}
	for _, old := range prev.assets {
		cur, ok := p.assetByCode[old.Code]
		if !ok {
			return errf("asset_immutable", "assets", "asset "+old.Code+" cannot be removed: balances are stored in its units")
		}
		if cur.Scale != old.Scale {
			for i, a := range p.assets {
				if a.Code == old.Code {
					return errf("asset_immutable", index("assets", i)+".scale",
						"the scale of asset "+old.Code+" cannot change from "+strconv.Itoa(int(old.Scale))+
							": balances are stored in its units")
				}
			}
		}
	}
	return nil
}

// account validates "name:ASSET" and returns its parts and asset.
func (p *Pricing) account(s, path string) (name string, a Asset, err *Error) {
	name, code, ok := strings.Cut(s, ":")
	if !ok || !isAccountName(name) || !isAssetCode(code) {
		return "", Asset{}, pricingErr(path, "account must be name:ASSET, the name 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
	}
	a, ok = p.assetByCode[code]
	if !ok {
		return "", Asset{}, pricingErr(path, "asset "+code+" is not defined in assets")
	}
	return name, a, nil
}

type priceKey struct{ eventType, account string }

func (p *Pricing) compilePrices(prices []Price) error {
	if len(prices) > pricesMax {
		return limitErr("prices", "a pricing document may define at most 1024 prices")
	}
	seen := make(map[priceKey]int, len(prices))
	entries := 0
	for i := range prices {
		src := &prices[i]
		path := index("prices", i)
		if !isEventType(src.EventType) {
			return pricingErr(path+".event_type", "event_type must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'")
		}
		name, asset, err := p.account(src.Account, path+".account")
		if err != nil {
			return err
		}
		if j, dup := seen[priceKey{src.EventType, src.Account}]; dup {
			return pricingErr(path, "prices["+strconv.Itoa(j)+"] already charges "+src.Account+" for "+src.EventType)
		}
		seen[priceKey{src.EventType, src.Account}] = i
		if len(src.Dimensions) > dimensionsMax {
			return pricingErr(path+".dimensions", "a price may have at most 4 dimensions")
		}
		for j, dim := range src.Dimensions {
			if !isMemberName(dim) {
				return pricingErr(index(path+".dimensions", j), "a dimension must be a data member name of 1-64 characters")
			}
			for _, other := range src.Dimensions[:j] {
				if other == dim {
					return pricingErr(index(path+".dimensions", j), "dimension "+dim+" is listed twice")
				}
			}
		}
		pr := &price{account: src.Account, name: name, asset: asset.Code, scale: asset.Scale, dims: src.Dimensions}
		switch {
		case src.UnitPrice != nil && len(src.Components) > 0:
			return pricingErr(path+".unit_price", "a price has either a unit_price or components, not both")
		case src.UnitPrice != nil:
			c, n, err := compileComponent(&Component{UnitPrice: src.UnitPrice}, src.Dimensions, asset.Scale, path, path+".unit_price")
			if err != nil {
				return err
			}
			entries += n
			pr.comps = []component{c}
		case len(src.Components) == 0:
			return pricingErr(path, "a price needs a unit_price or at least one component")
		case len(src.Components) > componentsMax:
			return limitErr(path+".components", "a price may have at most 16 components")
		default:
			for j := range src.Components {
				cpath := index(path+".components", j)
				c, n, err := compileComponent(&src.Components[j], src.Dimensions, asset.Scale, cpath, cpath+".unit_price")
				if err != nil {
					return err
				}
				entries += n
				pr.comps = append(pr.comps, c)
			}
		}
		if entries > priceMapEntriesSum {
			return limitErr(path, "a pricing document may have at most 65536 unit_price map entries in all")
		}
		pr.indexKeys()
		p.byType[src.EventType] = append(p.byType[src.EventType], pr)
	}
	return nil
}

// indexKeys numbers the concrete map keys of all components of pr, so that
// rating looks an event's key up once per price, not once per component.
func (pr *price) indexKeys() {
	for i := range pr.comps {
		c := &pr.comps[i]
		if !c.isMap {
			continue
		}
		if pr.keys == nil {
			pr.hasMap, pr.keys = true, make(map[string]int32)
		}
		for k := range c.byKey {
			if _, ok := pr.keys[k]; !ok {
				pr.keys[k] = int32(len(pr.keys))
			}
		}
	}
	for i := range pr.comps {
		c := &pr.comps[i]
		if !c.isMap {
			continue
		}
		c.keyed = make([]*rate, len(pr.keys))
		for k, r := range c.byKey {
			c.keyed[pr.keys[k]] = &r
		}
		c.byKey = nil
	}
}

var decOne = Dec{coef: 1}

// compileComponent compiles one component and returns how many map entries
// it has.
func compileComponent(src *Component, dims []string, scale uint8, path, upath string) (component, int, *Error) {
	c := component{field: src.Field, path: path}
	pkg := decOne
	if src.Field != "" {
		if !isMemberName(src.Field) {
			return c, 0, pricingErr(path+".field", "field must be a data member name of 1-64 characters")
		}
		c.dataPath = "data." + src.Field
	}
	if src.PackageSize != nil {
		if src.Field == "" {
			return c, 0, pricingErr(path+".package_size", "package_size needs a field: a per-event charge has no quantity to divide")
		}
		if src.PackageSize.Sign() <= 0 {
			return c, 0, pricingErr(path+".package_size", "package_size must be positive")
		}
		pkg = *src.PackageSize
	}
	u := src.UnitPrice
	if u == nil {
		return c, 0, pricingErr(upath, "unit_price is required")
	}
	perEvent := src.Field == ""
	if u.Map == nil {
		r, err := compileRate(u.Dec, pkg, scale, perEvent, upath)
		c.flat = r
		return c, 0, err
	}
	if len(dims) == 0 {
		return c, 0, pricingErr(upath, "a unit_price map needs dimensions on the price")
	}
	if len(u.Map) == 0 {
		return c, 0, pricingErr(upath, "a unit_price map needs at least one entry")
	}
	if len(u.Map) > priceMapEntriesMax {
		return c, 0, limitErr(upath, "a unit_price map may have at most 1024 entries")
	}
	c.isMap = true
	c.byKey = make(map[string]rate, len(u.Map))
	for _, e := range u.Map {
		epath := upath + "." + e.Key
		if e.Key == "*" {
			if c.hasStar {
				return c, 0, pricingErr(epath, "key * is listed twice")
			}
			r, err := compileRate(e.Price, pkg, scale, perEvent, epath)
			if err != nil {
				return c, 0, err
			}
			c.star, c.hasStar = r, true
			continue
		}
		if msg := checkDimensionKey(e.Key, dims); msg != "" {
			return c, 0, pricingErr(epath, msg)
		}
		if _, dup := c.byKey[e.Key]; dup {
			return c, 0, pricingErr(epath, "key "+e.Key+" is listed twice")
		}
		r, err := compileRate(e.Price, pkg, scale, perEvent, epath)
		if err != nil {
			return c, 0, err
		}
		c.byKey[e.Key] = r
	}
	return c, len(u.Map), nil
}

// checkDimensionKey validates a concrete unit_price map key: the values of
// the price's dimensions joined with "/" in the order of dimensions. Each
// value must be non-empty; with several dimensions a value cannot contain
// "/" (an event whose value does can only match "*").
func checkDimensionKey(key string, dims []string) string {
	if len(key) == 0 || len(key) > dimensionKeyBytesMax || !utf8.ValidString(key) {
		return "a unit_price key must be 1-256 bytes of UTF-8"
	}
	if len(dims) == 1 {
		return ""
	}
	parts := strings.Split(key, "/")
	if len(parts) != len(dims) || slicesContainsEmpty(parts) {
		return "a unit_price key must be " + strconv.Itoa(len(dims)) + " non-empty values joined with \"/\", in the order of dimensions (" +
			strings.Join(dims, "/") + "), or \"*\""
	}
	return ""
}

func slicesContainsEmpty(s []string) bool {
	for _, x := range s {
		if x == "" {
			return true
		}
	}
	return false
}

// compileRate pre-scales price/pkg into sub-units of an asset of the given
// scale.
func compileRate(price, pkg Dec, scale uint8, perEvent bool, path string) (rate, *Error) {
	if price.Sign() < 0 {
		return rate{}, pricingErr(path, "unit_price must not be negative")
	}
	r := rate{
		coef: price.coef,
		exp:  int32(price.exp) - int32(pkg.exp) + int32(scale) + 18,
		div:  pkg.coef,
	}
	x, ok := scaledFloor(1, r.coef, int(r.exp), r.div)
	if !ok && perEvent {
		return rate{}, pricingErr(path, "unit_price exceeds the largest amount of 10^18 smallest units")
	}
	r.perEvent = x
	return r, nil
}

func (p *Pricing) compileReloadLimits(limits []AutoReloadLimit) error {
	if len(limits) > reloadLimitsMax {
		return limitErr("auto_reload_limits", "a pricing document may define at most 64 auto_reload_limits")
	}
	for i := range limits {
		l := &limits[i]
		path := index("auto_reload_limits", i)
		_, asset, err := p.account(l.Account, path+".account")
		if err != nil {
			return err
		}
		if _, dup := p.reload[l.Account]; dup {
			return pricingErr(path+".account", "auto_reload_limits already bound "+l.Account)
		}
		var out ReloadLimits
		for _, b := range []struct {
			name string
			d    *Dec
			dst  **int64
		}{{"threshold_min", l.ThresholdMin, &out.Min}, {"threshold_max", l.ThresholdMax, &out.Max}, {"threshold_default", l.ThresholdDefault, &out.Default}} {
			if b.d == nil {
				continue
			}
			u, ok := b.d.Units(asset.Scale)
			if !ok || u < 0 || u > MaxUnits {
				return pricingErr(path+"."+b.name, b.name+" must be a non-negative amount of "+asset.Code+" with at most "+strconv.Itoa(int(asset.Scale))+" decimals")
			}
			*b.dst = &u
		}
		switch {
		case out.Min != nil && out.Max != nil && *out.Max < *out.Min:
			return pricingErr(path+".threshold_max", "threshold_max must not be below threshold_min")
		case out.Default != nil && (out.Min != nil && *out.Default < *out.Min || out.Max != nil && *out.Default > *out.Max):
			return pricingErr(path+".threshold_default", "threshold_default must be within threshold_min and threshold_max")
		}
		if p.reload == nil {
			p.reload = map[string]ReloadLimits{}
		}
		p.reload[l.Account] = out
	}
	return nil
}

// refundWindowMax bounds a refund rule's window.
const refundWindowMax = 10 * 366 * 24 * time.Hour

func (p *Pricing) compileRefunds(r *RefundRules) error {
	if r == nil {
		return nil
	}
	p.refunds = map[string]Refund{}
	for _, k := range r.byKind() {
		if k.r == nil {
			continue
		}
		path := "refund_rules." + k.name
		w, err := time.ParseDuration(k.r.Window)
		if err != nil || w <= 0 || w > refundWindowMax {
			return pricingErr(path+".window", "window must be a positive duration such as \"24h\" or \"48h\", at most 10 years")
		}
		if k.r.MaxUsed != nil && k.r.MaxUsed.Sign() < 0 {
			return pricingErr(path+".max_used", "max_used must not be negative")
		}
		p.refunds[k.name] = Refund{Window: w, MaxUsed: k.r.MaxUsed}
	}
	return nil
}

func isAssetCode(s string) bool {
	if len(s) == 0 || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func isIdentChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

func isEventType(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isIdentChar(s[i]) && s[i] != ':' {
			return false
		}
	}
	return true
}

func isAccountName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isIdentChar(s[i]) {
			return false
		}
	}
	return true
}

// isMemberName reports whether s can name a data member: 1-64 characters
// of valid UTF-8.
func isMemberName(s string) bool {
	return s != "" && utf8.ValidString(s) && utf8.RuneCountInString(s) <= 64
}
