package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/meter/jsonw"
	"github.com/valyala/fasthttp"
)

// Bounds on the fields of non-event requests.
const (
	metadataBytesMax    = 4 << 10
	textLenMax          = 1024 // description
	sourceLenMax        = 128  // source, reason, currency-like labels
	balanceAlertsMax    = 16
	ledgerPageMax       = 1000
	ledgerPageDefault   = 100
	accountNameLenMax   = 64
	creditLimitsMax     = 64
	timeInputLenMax     = 64
	pricingDocBytesMax  = 1 << 20
	defaultAccountName  = "default"
	defaultTopUpSource  = "topup"
	defaultAdjustSource = "adjustment"
)

func (s *Server) getPricing(ctx *fasthttp.RequestCtx) {
	p := s.e.Pricing()
	if v := ctx.QueryArgs().Peek("version"); len(v) > 0 {
		n, err := strconv.ParseUint(string(v), 10, 32)
		if err != nil || n == 0 {
			writeError(ctx, "invalid_request", "version must be a positive integer", "version")
			return
		}
		doc, err := s.e.PricingVersion(uint32(n))
		if err != nil {
			s.writeErr(ctx, err)
			return
		}
		if doc == nil {
			writeError(ctx, "not_found", "no pricing version "+string(v), "version")
			return
		}
		writePricing(ctx, uint32(n), doc)
		return
	}
	writePricing(ctx, p.Version, p.JSON())
}

func writePricing(ctx *fasthttp.RequestCtx, version uint32, doc []byte) {
	b := append([]byte(`{"version":`), strconv.FormatUint(uint64(version), 10)...)
	b = append(b, `,"document":`...)
	b = appendRaw(b, doc, "null")
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

func (s *Server) putPricing(ctx *fasthttp.RequestCtx) {
	body := ctx.PostBody()
	if len(body) > pricingDocBytesMax {
		writeError(ctx, "pricing_too_large", "a pricing document is at most 1 MiB", "")
		return
	}
	p, err := s.e.SetPricing(body)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBodyString(`{"version":` + strconv.FormatUint(uint64(p.Version), 10) + `}`)
}

type customerBody struct {
	Status            *string                    `json:"status"`
	PausedUntil       *string                    `json:"paused_until"`
	InsufficientFunds *string                    `json:"insufficient_funds"`
	CreditLimit       map[string]json.RawMessage `json:"credit_limit"`
	Plan              json.RawMessage            `json:"plan"`
	PlanChange        *planChangeBody            `json:"plan_change"`
	AutoReload        json.RawMessage            `json:"auto_reload"`
	MaxActiveHolds    map[string]int             `json:"max_active_holds"`
	BalanceAlerts     []json.RawMessage          `json:"balance_alerts"`
	Metadata          json.RawMessage            `json:"metadata"`
}

// planChangeBody says when the plan of a PUT takes over: "now" (default;
// the current plan's credits end, the new plan's period is granted at once,
// "full" or "prorated") or "period_end" (the current plan runs to the end of
// its period; plan is the plan from then on, null to end the plan).
type planChangeBody struct {
	At    *string `json:"at"`
	Grant *string `json:"grant"`
}

// planChangeMode parses a plan_change.
func planChangeMode(b *planChangeBody) (wallet.PlanChangeMode, error) {
	if b == nil {
		return wallet.PlanChangeNow, nil
	}
	mode := wallet.PlanChangeNow
	if b.At != nil {
		switch *b.At {
		case "now":
		case "period_end":
			mode = wallet.PlanChangeAtPeriodEnd
		default:
			return mode, badRequest("invalid_request", "plan_change.at", "plan_change.at must be now or period_end")
		}
	}
	if b.Grant != nil {
		switch *b.Grant {
		case "full":
		case "prorated":
			if mode == wallet.PlanChangeAtPeriodEnd {
				return mode, badRequest("invalid_request", "plan_change.grant", "a plan that starts at period_end is granted in full: its period starts then")
			}
			mode = wallet.PlanChangeNowProrated
		default:
			return mode, badRequest("invalid_request", "plan_change.grant", "plan_change.grant must be full or prorated")
		}
	}
	return mode, nil
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

func (s *Server) putCustomer(ctx *fasthttp.RequestCtx, id string) {
	var body customerBody
	if err := decodeStrict(ctx.PostBody(), &body); err != nil {
		s.writeErr(ctx, err)
		return
	}
	set, err := s.settings(&body)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	mode, err := planChangeMode(body.PlanChange)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	created, err := s.e.PutCustomerChange(id, set, mode)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	if created {
		ctx.SetStatusCode(fasthttp.StatusCreated)
	}
	s.getCustomer(ctx, id)
}

// customerPatch has the members of customerBody, any JSON each: the
// top-level members a PATCH may name (TestCustomerPatchMembers).
type customerPatch struct {
	Status            json.RawMessage `json:"status"`
	PausedUntil       json.RawMessage `json:"paused_until"`
	InsufficientFunds json.RawMessage `json:"insufficient_funds"`
	CreditLimit       json.RawMessage `json:"credit_limit"`
	Plan              json.RawMessage `json:"plan"`
	PlanChange        json.RawMessage `json:"plan_change"`
	AutoReload        json.RawMessage `json:"auto_reload"`
	MaxActiveHolds    json.RawMessage `json:"max_active_holds"`
	BalanceAlerts     json.RawMessage `json:"balance_alerts"`
	Metadata          json.RawMessage `json:"metadata"`
}

// patchCustomer answers PATCH /v1/customers/{id}: a JSON merge patch
// (RFC 7396) of the customer's settings as a PUT body has them (its GET
// less what is derived: the wallet, the period, next refills, the
// scheduled plan, auto_reload's charge). What the patch does not name is
// kept: {"auto_reload":{"enabled":false}} turns auto-reload off and keeps
// the plan; a member set to null is removed, as if a PUT left it out. The
// merged settings are read and checked as a PUT body, plan_change
// included, and applied atomically with the current settings they were
// merged into.
func (s *Server) patchCustomer(ctx *fasthttp.RequestCtx, id string) {
	patch := ctx.PostBody()
	// The patch names members of the settings only (a null for a member
	// that does not exist would otherwise pass unnoticed).
	var probe customerPatch
	if err := decodeStrict(patch, &probe); err != nil {
		s.writeErr(ctx, err)
		return
	}
	p := s.e.Pricing()
	err := s.e.UpdateCustomer(id, func(w *wallet.Wallet, now int64) (wallet.Settings, wallet.PlanChangeMode, error) {
		merged, err := jsonpatch.MergePatch(settingsDoc(w, p), patch)
		if err != nil {
			return wallet.Settings{}, 0, badRequest("malformed_json", "", "the patch cannot be merged: %v", err)
		}
		var body customerBody
		if err := decodeStrict(merged, &body); err != nil {
			return wallet.Settings{}, 0, err
		}
		set, err := s.settings(&body)
		if err != nil {
			return wallet.Settings{}, 0, err
		}
		mode, err := planChangeMode(body.PlanChange)
		return set, mode, err
	})
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	s.getCustomer(ctx, id)
}

// settingsDoc is the customer's settings as a PUT body: what a PATCH
// merges into.
func settingsDoc(w *wallet.Wallet, p *meter.Pricing) []byte {
	st := w.Settings
	b := append([]byte(nil), `{"status":"`...)
	b = append(b, st.Status.String()...)
	b = append(b, '"')
	if st.PausedUntil != 0 {
		b = append(b, `,"paused_until":`...)
		b = appendTime(b, st.PausedUntil)
	}
	b = append(b, `,"insufficient_funds":"`...)
	b = append(b, st.Policy.String()...)
	b = append(b, `","credit_limit":{`...)
	for i, l := range st.CreditLimits {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, l.Account)
		b = append(b, ':')
		b = appendUnits(b, l.Units, scaleOf(w, l.Account, p))
	}
	b = append(b, `},"plan":`...)
	b = appendPlan(b, st.Plan)
	b = append(b, `,"auto_reload":`...)
	b = appendAutoReload(b, st.AutoReload, false, p)
	b = append(b, `,"max_active_holds":`...)
	b = appendHoldLimits(b, st.HoldLimits)
	b = append(b, `,"balance_alerts":[`...)
	for i, a := range st.BalanceAlerts {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, a)
	}
	b = append(b, `],"metadata":`...)
	b = appendRaw(b, st.Metadata, "{}")
	return append(b, '}')
}

// holdLimits parses max_active_holds: account -> the most holds active at
// once on it (APOB's concurrent tasks), 1 to wallet.WalletHoldsMax.
func holdLimits(p *meter.Pricing, m map[string]int, field string) ([]wallet.HoldLimit, error) {
	if len(m) > creditLimitsMax {
		return nil, badRequest("too_many_credit_limits", field, "at most %d accounts", creditLimitsMax)
	}
	var out []wallet.HoldLimit
	for account, n := range m {
		f := field + "." + account
		if _, err := accountAsset(p, account, f); err != nil {
			return nil, err
		}
		if n < 1 || n > wallet.WalletHoldsMax {
			return nil, badRequest("invalid_request", f, "max_active_holds must be from 1 to %d", wallet.WalletHoldsMax)
		}
		out = append(out, wallet.HoldLimit{Account: account, Max: n})
	}
	slices.SortFunc(out, func(a, b wallet.HoldLimit) int { return strings.Compare(a.Account, b.Account) })
	return out, nil
}

// appendHoldLimits appends max_active_holds as an object.
func appendHoldLimits(b []byte, ls []wallet.HoldLimit) []byte {
	b = append(b, '{')
	for i, l := range ls {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, l.Account)
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(l.Max), 10)
	}
	return append(b, '}')
}

func (s *Server) settings(body *customerBody) (wallet.Settings, error) {
	set := wallet.Settings{Status: wallet.StatusActive, Policy: wallet.PolicyReject}
	if body.Status != nil {
		switch *body.Status {
		case "active":
		case "paused":
			set.Status = wallet.StatusPaused
		default:
			return set, badRequest("invalid_request", "status", "status must be active or paused")
		}
	}
	if body.PausedUntil != nil {
		if set.Status != wallet.StatusPaused {
			return set, badRequest("invalid_request", "paused_until", "paused_until needs status paused")
		}
		t, err := parseTime(*body.PausedUntil, "paused_until")
		if err != nil {
			return set, err
		}
		set.PausedUntil = t
	}
	if body.InsufficientFunds != nil {
		switch *body.InsufficientFunds {
		case "reject":
		case "overdraft":
			set.Policy = wallet.PolicyOverdraft
		default:
			return set, badRequest("invalid_request", "insufficient_funds", "insufficient_funds must be reject or overdraft")
		}
	}
	if !isNull(body.Plan) {
		p, err := s.plan(body.Plan)
		if err != nil {
			return set, err
		}
		set.Plan = p
	}
	if !isNull(body.AutoReload) {
		r, err := s.autoReload(body.AutoReload, set.Plan)
		if err != nil {
			return set, err
		}
		set.AutoReload = r
	}
	limits, err := holdLimits(s.e.Pricing(), body.MaxActiveHolds, "max_active_holds")
	if err != nil {
		return set, err
	}
	set.HoldLimits = limits
	if len(body.CreditLimit) > creditLimitsMax {
		return set, badRequest("too_many_credit_limits", "credit_limit", "at most %d credit limits", creditLimitsMax)
	}
	p := s.e.Pricing()
	for account, raw := range body.CreditLimit {
		field := "credit_limit." + account
		asset, err := accountAsset(p, account, field)
		if err != nil {
			return set, err
		}
		units, err := parseAmount(raw, asset.Scale, field)
		if err != nil {
			return set, err
		}
		if units < 0 {
			return set, badRequest("invalid_amount", field, "a credit limit cannot be negative")
		}
		set.CreditLimits = append(set.CreditLimits, wallet.Limit{Account: account, Units: units})
	}
	sortLimits(set.CreditLimits)
	if len(body.BalanceAlerts) > balanceAlertsMax {
		return set, badRequest("too_many_balance_alerts", "balance_alerts", "at most %d balance alerts", balanceAlertsMax)
	}
	for i, raw := range body.BalanceAlerts {
		field := "balance_alerts[" + strconv.Itoa(i) + "]"
		text, err := decimalText(raw, field)
		if err != nil {
			return set, err
		}
		set.BalanceAlerts = append(set.BalanceAlerts, text)
	}
	md, err := metadata(body.Metadata, "metadata")
	if err != nil {
		return set, err
	}
	set.Metadata = md
	return set, nil
}

func sortLimits(l []wallet.Limit) {
	for i := 1; i < len(l); i++ {
		for j := i; j > 0 && l[j].Account < l[j-1].Account; j-- {
			l[j], l[j-1] = l[j-1], l[j]
		}
	}
}

// accountAsset checks an account id "name:ASSET" against the pricing's assets.
func accountAsset(p *meter.Pricing, account, field string) (meter.Asset, error) {
	name, code, ok := strings.Cut(account, ":")
	if !ok || !validAccountName(name) {
		return meter.Asset{}, badRequest("invalid_request", field, "account must be NAME:ASSET, NAME 1-64 characters of [A-Za-z0-9._-]")
	}
	a, ok := p.Asset(code)
	if !ok {
		return a, badRequest("unknown_asset", field, "asset %q is not defined by the pricing in force (version %d)", code, p.Version)
	}
	return a, nil
}

// splitAccount reads an account a body names in either of its forms: the
// one meterd uses everywhere, "name:ASSET" in the account field, or the
// split one, a name (default "default") and an asset in a field of its
// own. It returns the name and the asset code; the asset is not checked
// against the pricing.
func splitAccount(account *string, asset, accountField, assetField string) (name, code string, err error) {
	name = defaultAccountName
	if account != nil {
		name = *account
	}
	if n, c, ok := strings.Cut(name, ":"); ok {
		if asset != "" && asset != c {
			return "", "", badRequest("invalid_request", assetField, "%s names the asset %s and %s names %s: name it once",
				accountField, c, assetField, asset)
		}
		name, asset = n, c
	}
	if !validAccountName(name) {
		return "", "", badRequest("invalid_request", accountField,
			"%s must be NAME:ASSET or a NAME of 1-64 characters of [A-Za-z0-9._-] beside %s", accountField, assetField)
	}
	return name, asset, nil
}

func validAccountName(s string) bool {
	if len(s) == 0 || len(s) > accountNameLenMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// parseAmount reads an amount given as a JSON string or a JSON integer.
func parseAmount(raw json.RawMessage, scale uint8, field string) (int64, error) {
	t := bytes.TrimSpace(raw)
	if isNull(t) {
		return 0, badRequest("invalid_amount", field, "%s is required", field)
	}
	var text string
	if t[0] == '"' {
		if err := json.Unmarshal(t, &text); err != nil {
			return 0, badRequest("invalid_amount", field, "%s must be a decimal string", field)
		}
	} else {
		if bytes.ContainsAny(t, ".eE") {
			return 0, badRequest("invalid_amount", field, "%s: a decimal amount must be a JSON string (\"12.50\"), never a JSON float", field)
		}
		text = string(t)
	}
	u, err := meter.ParseUnits(text, scale)
	if err != nil {
		msg := err.Error()
		if me, ok := err.(*meter.Error); ok {
			msg = me.Message
		}
		return 0, badRequest("invalid_amount", field, "%s", msg)
	}
	return u, nil
}

// decimalText reads a decimal given as a JSON string or integer and returns
// its text as written, once checked.
func decimalText(raw json.RawMessage, field string) (string, error) {
	t := bytes.TrimSpace(raw)
	var text string
	if len(t) > 0 && t[0] == '"' {
		if err := json.Unmarshal(t, &text); err != nil {
			return "", badRequest("invalid_amount", field, "%s must be a decimal string", field)
		}
	} else {
		if bytes.ContainsAny(t, ".eE") {
			return "", badRequest("invalid_amount", field, "%s: a decimal must be a JSON string, never a JSON float", field)
		}
		text = string(t)
	}
	if _, err := meter.ParseDec(text); err != nil || strings.ContainsAny(text, "eE") {
		return "", badRequest("invalid_amount", field, "%s must be a plain decimal such as \"12.50\"", field)
	}
	return text, nil // as written: "9.00" stays "9.00", as a price is shown
}

// metadata checks an optional metadata object and returns it compacted.
func metadata(raw json.RawMessage, field string) ([]byte, error) {
	if isNull(raw) {
		return nil, nil
	}
	t := bytes.TrimSpace(raw)
	if t[0] != '{' {
		return nil, badRequest("invalid_request", field, "%s must be a JSON object", field)
	}
	if len(t) > 4*metadataBytesMax {
		return nil, badRequest("metadata_too_large", field, "%s is larger than %d bytes", field, metadataBytesMax)
	}
	// Strict first (a key twice at any depth, invalid UTF-8): decoding into
	// a map below would keep the last of two keys and mangle bad text.
	if err := checkStrictAt(field, t); err != nil {
		return nil, err
	}
	// Canonical form: keys sorted (encoding/json sorts map keys), numbers
	// kept as written, so that a resent write whose metadata lists the same
	// members in another order is the same write, not a conflict.
	dec := json.NewDecoder(bytes.NewReader(t))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		return nil, badRequest("invalid_request", field, "%s is not a valid JSON object", field)
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil, badRequest("invalid_request", field, "%s is not a valid JSON object", field)
	}
	if len(out) > metadataBytesMax {
		return nil, badRequest("metadata_too_large", field, "%s is larger than %d bytes", field, metadataBytesMax)
	}
	if len(v) == 0 {
		return nil, nil
	}
	return out, nil
}

// expiryMax bounds expiry times: unix nanoseconds in an int64 reach 2262.
var expiryMax = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)

// parseExpiry reads an optional RFC 3339 expiry, or "period_end". Whether
// it is in the future is checked by the engine when the write is applied, so
// that a replay of an accepted write returns its original result whenever
// it comes.
func parseExpiry(v *string, field string) (int64, error) {
	if v == nil {
		return 0, nil
	}
	if *v == "period_end" {
		return wallet.ExpiresPeriodEnd, nil // the engine resolves it at apply time
	}
	if len(*v) > timeInputLenMax {
		return 0, badRequest("invalid_timestamp", field, "%s is too long for a timestamp", field)
	}
	t, err := time.Parse(time.RFC3339Nano, *v)
	if err != nil {
		return 0, badRequest("invalid_timestamp", field, "%s must be an RFC 3339 timestamp such as 2026-12-01T00:00:00Z", field)
	}
	if !t.Before(expiryMax) {
		return 0, badRequest("invalid_timestamp", field, "%s must be before %s (times are kept in nanoseconds)", field, expiryMax.Format(time.RFC3339))
	}
	return t.UnixNano(), nil
}

func checkLen(v, field string, max int) error {
	if len(v) > max {
		return badRequest("field_too_long", field, "%s is longer than %d bytes", field, max)
	}
	return nil
}

func (s *Server) getCustomer(ctx *fasthttp.RequestCtx, id string) {
	w, err := s.e.Wallet(id)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	b := append([]byte(nil), `{"customer_id":`...)
	b = appendString(b, id)
	b = append(b, `,"status":"`...)
	b = append(b, w.Settings.Status.String()...)
	b = append(b, `","paused_until":`...)
	if w.Settings.PausedUntil == 0 {
		b = append(b, "null"...)
	} else {
		b = appendTime(b, w.Settings.PausedUntil)
	}
	b = append(b, `,"insufficient_funds":"`...)
	b = append(b, w.Settings.Policy.String()...)
	b = append(b, `","credit_limit":{`...)
	for i, l := range w.Settings.CreditLimits {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, l.Account)
		b = append(b, ':')
		b = appendUnits(b, l.Units, scaleOf(w, l.Account, s.e.Pricing()))
	}
	b = append(b, `},"max_active_holds":`...)
	b = appendHoldLimits(b, w.Settings.HoldLimits)
	b = append(b, ',')
	b = appendLifecycleSettings(b, w, s.e.Now())
	b = append(b, `,"balance_alerts":[`...)
	for i, a := range w.Settings.BalanceAlerts {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, a)
	}
	b = append(b, `],"metadata":`...)
	b = appendRaw(b, w.Settings.Metadata, "{}")
	b = append(b, `,"created_at":`...)
	b = appendTime(b, w.CreatedAt)
	b = append(b, `,"wallet":`...)
	b = appendWallet(b, w)
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

func scaleOf(w *wallet.Wallet, account string, p *meter.Pricing) uint8 {
	if a := w.Account(account); a != nil {
		return a.Scale
	}
	_, code, _ := strings.Cut(account, ":")
	as, _ := p.Asset(code)
	return as.Scale
}

func (s *Server) getWallet(ctx *fasthttp.RequestCtx, id string) {
	w, err := s.e.Wallet(id)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendWallet(nil, w))
}

func appendWallet(b []byte, w *wallet.Wallet) []byte {
	b = append(b, `{"customer_id":`...)
	b = appendString(b, w.Customer)
	b = append(b, `,"accounts":[`...)
	for i, a := range w.Accounts {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = appendString(b, a.ID())
		b = append(b, `,"name":`...)
		b = appendString(b, a.Name())
		b = append(b, `,"asset":`...)
		b = appendString(b, a.Asset())
		b = append(b, `,"available":`...)
		b = appendUnits(b, a.Available(), a.Scale)
		b = append(b, `,"held":`...)
		b = appendUnits(b, a.Held, a.Scale)
		b = append(b, `,"debt":`...)
		b = appendUnits(b, a.Debt, a.Scale)
		b = append(b, `,"buckets":[`...)
		for j := range a.Buckets {
			k := &a.Buckets[j]
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"id":`...)
			b = appendString(b, k.ID)
			b = append(b, `,"kind":`...)
			b = appendString(b, k.Kind.String())
			b = append(b, `,"priority":`...)
			b = appendUint(b, uint64(k.Priority))
			b = append(b, `,"amount":`...)
			b = appendUnits(b, k.Amount, a.Scale)
			b = append(b, `,"remaining":`...)
			b = appendUnits(b, k.Remaining, a.Scale)
			b = append(b, `,"effective_at":`...)
			b = appendTime(b, k.EffectiveAt)
			b = append(b, `,"expires_at":`...)
			b = appendTime(b, k.ExpiresAt)
			b = append(b, `,"source":`...)
			b = appendString(b, k.Source)
			b = append(b, `,"reference":`...)
			b = appendString(b, k.Reference)
			b = append(b, `,"metadata":`...)
			b = appendRaw(b, k.Metadata, "{}")
			b = append(b, '}')
		}
		b = append(b, "]}"...)
	}
	return append(b, "]}"...)
}

func (s *Server) resume(ctx *fasthttp.RequestCtx, id string) {
	if err := s.e.Resume(id); err != nil {
		s.writeErr(ctx, err)
		return
	}
	s.getCustomer(ctx, id)
}

type priceBody struct {
	Amount   json.RawMessage `json:"amount"`
	Currency string          `json:"currency"`
}

// hasher builds the content hash of a write from its parsed fields.
type hasher struct{ b []byte }

func (h *hasher) str(s string) *hasher {
	h.b = binary.AppendUvarint(h.b, uint64(len(s)))
	h.b = append(h.b, s...)
	return h
}
func (h *hasher) int(v int64) *hasher { h.b = binary.AppendVarint(h.b, v); return h }
func (h *hasher) sum() [16]byte {
	full := sha256.Sum256(h.b)
	var out [16]byte
	copy(out[:], full[:16])
	return out
}

func validCode(s string) bool {
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

func (s *Server) reverse(ctx *fasthttp.RequestCtx, customer, id string) {
	if !validID(id) {
		writeError(ctx, "invalid_id", "top-up id must be 1-128 characters of [A-Za-z0-9._:-]", "id")
		return
	}
	res, err := s.e.ReverseTopUp(customer, id)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	b := append([]byte(nil), `{"id":`...)
	b = appendString(b, id)
	b = append(b, `,"bucket_id":`...)
	b = appendString(b, res.BucketID)
	b = append(b, `,"status":"reversed","reversed_at":`...)
	b = appendTime(b, res.ReversedAt)
	if r := res.Reversal; r != nil {
		b = appendReversal(b, r)
	}
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// appendReversal appends what a reversal took back and what the customer
// keeps (what was used of the purchase).
func appendReversal(b []byte, r *wallet.Reversal) []byte {
	b = append(b, `,"account":`...)
	b = appendString(b, r.Account)
	b = append(b, `,"reversed":`...)
	b = appendUnits(b, r.Reversed, r.Scale)
	b = append(b, `,"kept":`...)
	return appendUnits(b, r.Kept, r.Scale)
}

// reverseGrant answers POST /v1/customers/{id}/grants/{bucket_id}/reverse.
func (s *Server) reverseGrant(ctx *fasthttp.RequestCtx, customer, bucketID string) {
	if !validID(bucketID) {
		writeError(ctx, "invalid_id", "bucket id must be 1-128 characters of [A-Za-z0-9._:-]", "bucket_id")
		return
	}
	r, err := s.e.ReverseGrant(customer, bucketID)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	b := append([]byte(nil), `{"bucket_id":`...)
	b = appendString(b, bucketID)
	b = append(b, `,"status":"reversed","reversed_at":`...)
	b = appendTime(b, s.e.Now())
	b = appendReversal(b, &r)
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

type adjustBody struct {
	TransactionID string          `json:"transaction_id"`
	AccountName   *string         `json:"account_name"`
	Asset         string          `json:"asset"`
	Amount        json.RawMessage `json:"amount"`
	Description   string          `json:"description"`
	Reason        string          `json:"reason"`
	Kind          *string         `json:"kind"`
	Priority      *int            `json:"priority"`
	ExpiresAt     *string         `json:"expires_at"`
	Metadata      json.RawMessage `json:"metadata"`
}

func (s *Server) adjust(ctx *fasthttp.RequestCtx, customer string) {
	var body adjustBody
	if err := decodeStrict(ctx.PostBody(), &body); err != nil {
		s.writeErr(ctx, err)
		return
	}
	cmd, err := s.adjustCmd(&body)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	h := (&hasher{}).str(cmd.TransactionID).str(cmd.Account).str(cmd.Asset).int(cmd.Amount).int(int64(cmd.Kind)).
		int(int64(cmd.Priority)).int(cmd.ExpiresAt).str(cmd.Source).str(body.Description).str(string(cmd.Metadata)).sum()
	res, err := s.e.Adjust(customer, cmd, h)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	if !res.Replayed {
		ctx.SetStatusCode(fasthttp.StatusCreated)
	}
	b := append([]byte(nil), `{"id":`...)
	b = appendString(b, cmd.TransactionID)
	b = append(b, `,"customer_id":`...)
	b = appendString(b, customer)
	b = append(b, `,"account":`...)
	b = appendString(b, cmd.Account+":"+cmd.Asset)
	b = append(b, `,"amount":`...)
	b = appendUnits(b, cmd.Amount, cmd.Scale)
	b = append(b, `,"created_at":`...)
	b = appendTime(b, res.CreatedAt)
	b = append(b, '}')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

func (s *Server) adjustCmd(body *adjustBody) (*wallet.AdjustCmd, error) {
	if !validID(body.TransactionID) {
		return nil, badRequest("invalid_id", "transaction_id", "transaction_id must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	name, code, err := splitAccount(body.AccountName, body.Asset, "account_name", "asset")
	if err != nil {
		return nil, err
	}
	p := s.e.Pricing()
	asset, ok := p.Asset(code)
	if !ok {
		return nil, badRequest("unknown_asset", "asset", "asset %q is not defined by the pricing in force (version %d)", code, p.Version)
	}
	amount, err := parseAmount(body.Amount, asset.Scale, "amount")
	if err != nil {
		return nil, err
	}
	if amount == 0 {
		return nil, badRequest("invalid_amount", "amount", "an adjustment amount cannot be zero")
	}
	if err := checkLen(body.Description, "description", textLenMax); err != nil {
		return nil, err
	}
	if err := checkLen(body.Reason, "reason", sourceLenMax); err != nil {
		return nil, err
	}
	kind := wallet.KindRecharge
	if body.Kind != nil {
		k, ok := wallet.ParseKind(*body.Kind)
		if !ok {
			return nil, badRequest("invalid_request", "kind", "kind must be promotional, plan or recharge")
		}
		kind = k
	}
	prio := -1
	if body.Priority != nil {
		if *body.Priority < 0 || *body.Priority > 100 {
			return nil, badRequest("invalid_request", "priority", "priority must be 0-100")
		}
		prio = *body.Priority
	}
	exp, err := parseExpiry(body.ExpiresAt, "expires_at")
	if err != nil {
		return nil, err
	}
	md, err := metadata(body.Metadata, "metadata")
	if err != nil {
		return nil, err
	}
	source := body.Reason
	if source == "" {
		source = defaultAdjustSource
	}
	return &wallet.AdjustCmd{TransactionID: body.TransactionID, Account: name, Asset: asset.Code, Scale: asset.Scale,
		Amount: amount, Kind: kind, Priority: prio, ExpiresAt: exp, Source: source, Description: body.Description, Metadata: md}, nil
}

func (s *Server) ledger(ctx *fasthttp.RequestCtx, customer string) {
	q := ctx.QueryArgs()
	account := string(q.Peek("account"))
	limit, before, ok := pageArgs(ctx)
	if !ok {
		return
	}
	page, err := s.e.Ledger(customer, account, before, limit)
	if err != nil {
		s.writeErr(ctx, err)
		return
	}
	b := append([]byte(nil), `{"entries":[`...)
	for i := range page.Entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEntry(b, customer, &page.Entries[i])
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(appendNext(b, page.Next))
}

func appendOptString(b []byte, s string) []byte { return jsonw.AppendOptString(b, s) }

func appendEntry(b []byte, customer string, e *wallet.Entry) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, customer...)
	b = append(b, '/')
	b = appendUint(b, e.Seq)
	b = append(b, `","seq":`...)
	b = appendUint(b, e.Seq)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type.String())
	b = append(b, `,"account":`...)
	b = appendString(b, e.Account)
	b = append(b, `,"amount":`...)
	b = appendUnits(b, e.Amount, e.Scale)
	b = append(b, `,"balance_after":`...)
	b = appendUnits(b, e.BalanceAfter, e.Scale)
	b = append(b, `,"bucket_id":`...)
	b = appendOptString(b, e.BucketID)
	b = append(b, `,"event_id":`...)
	b = appendOptString(b, e.EventID)
	b = append(b, `,"reference":`...)
	b = appendOptString(b, e.Reference)
	b = append(b, `,"occurred_at":`...)
	b = appendTime(b, e.OccurredAt)
	b = append(b, `,"recorded_at":`...)
	b = appendTime(b, e.RecordedAt)
	if e.PricingVersion != 0 {
		b = append(b, `,"pricing_version":`...)
		b = appendUint(b, uint64(e.PricingVersion))
	}
	b = jsonw.AppendEntryDetails(b, e.Source, e.Description, e.Price, e.Currency, e.Offer)
	b = append(b, `,"metadata":`...)
	b = appendRaw(b, e.Metadata, "{}")
	return append(b, '}')
}
