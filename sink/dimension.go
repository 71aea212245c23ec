package sink

import (
	"fmt"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/meter"
)

// dimensioner gives usage rows their dimension value: the event's values of
// the dimensions of the price that charged the row's account, under the
// pricing version that priced the event (meter.DimensionReader). Pricing
// versions never change once stored, so each is compiled once and kept
// (the last few: a batch rarely spans more than one or two).
type dimensioner struct {
	e       *balance.Engine
	pricing map[uint32]*meter.Pricing
	r       meter.DimensionReader
	err     error // the first failure to load a pricing version
}

// dimensionerVersions is how many compiled pricing versions a dimensioner
// keeps.
const dimensionerVersions = 8

// value is the dimension value of u's charge to account, "" when its price
// has no dimensions. A pricing version that cannot be loaded gives "" and
// is remembered in d.err: the batch must not ship.
func (d *dimensioner) value(u *balance.OutboxUsage, account string) string {
	p, err := d.version(u.PricingVersion)
	if err != nil {
		if d.err == nil {
			d.err = err
		}
		return ""
	}
	return d.r.Value(p.Dimensions(u.EventType, account), u.Data)
}

func (d *dimensioner) version(v uint32) (*meter.Pricing, error) {
	if p, ok := d.pricing[v]; ok {
		return p, nil
	}
	p := d.e.Pricing()
	switch {
	case v == 0:
		p = meter.Empty()
	case p.Version != v:
		doc, err := d.e.PricingVersion(v)
		if err != nil {
			return nil, fmt.Errorf("pricing version %d: %w", v, err)
		}
		parsed, err := meter.ParseDocument(doc)
		if err != nil {
			return nil, fmt.Errorf("pricing version %d: %w", v, err)
		}
		if p, err = meter.Compile(parsed, v, nil); err != nil {
			return nil, fmt.Errorf("pricing version %d: %w", v, err)
		}
	}
	if d.pricing == nil || len(d.pricing) >= dimensionerVersions {
		d.pricing = make(map[uint32]*meter.Pricing, dimensionerVersions)
	}
	d.pricing[v] = p
	return p, nil
}
