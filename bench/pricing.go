package bench

// The prices of the benchmark's events. meterd is given them as its pricing
// document (PricingDocument); the baselines get each event's charge computed
// here (ChargeOf). Prices are whole USD per million tokens, so that a charge
// is a whole number of micro-USD (USD has scale 6): tokens x price. No
// remainder is carried, and every system moves exactly the same amounts.

// modelPrice is one model's price, in USD per million tokens.
type modelPrice struct {
	Model           string
	Input, Output   int64
	inText, outText string
}

// Models are the models the scenarios draw from.
var Models = []modelPrice{
	{Model: "gpt-4-1", Input: 2, Output: 8, inText: "2", outText: "8"},
	{Model: "gpt-4-1-mini", Input: 1, Output: 4, inText: "1", outText: "4"},
	{Model: "o3", Input: 10, Output: 40, inText: "10", outText: "40"},
	{Model: "claude-sonnet", Input: 3, Output: 15, inText: "3", outText: "15"},
}

// ChargeOf returns what an event of model costs, in micro-USD; -1 for a
// model without a price.
func ChargeOf(model string, inputTokens, outputTokens int64) int64 {
	for _, m := range Models {
		if m.Model == model {
			return inputTokens*m.Input + outputTokens*m.Output
		}
	}
	return -1
}

// PricingDocument is meterd's pricing document for the benchmark's events:
// message_completed on default:USD, priced per million input and output
// tokens by model.
func PricingDocument() string {
	in, out := `{`, `{`
	for i, m := range Models {
		if i > 0 {
			in, out = in+",", out+","
		}
		in += `"` + m.Model + `":"` + m.inText + `"`
		out += `"` + m.Model + `":"` + m.outText + `"`
	}
	return `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],` +
		`"prices":[{"event_type":"message_completed","account":"default:USD","dimensions":["model"],"components":[` +
		`{"field":"input_tokens","package_size":"1000000","unit_price":` + in + `}},` +
		`{"field":"output_tokens","package_size":"1000000","unit_price":` + out + `}}]}]}`
}
