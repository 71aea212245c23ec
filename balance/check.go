package balance

import (
	"strconv"

	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// Check answers, for each event, what applying it now would answer:
// charged (with the charges, the buckets they would draw on and the
// balances after), recorded, or rejected with its code, and writes
// nothing (Wallet.CheckCharge charges a copy of the wallet). Each event is
// checked alone against the wallet as it is: two events of one customer
// are not added up. Ids are not looked up: a check never answers
// duplicate. A hold id must be active in the wallet to be settled;
// otherwise the event is checked as a plain one.
func (e *Engine) Check(ins []*EventIn) error {
	p := e.Pricing()
	for _, in := range ins {
		ev, res := in.Event, &in.Result
		*res = EventResult{PricingVersion: p.Version}
		charges, matched, err := p.Rate(ev, nil)
		if err != nil {
			field := ""
			if me, ok := err.(*meter.Error); ok {
				field = me.Field
			}
			res.reject("invalid_event", err.Error(), field)
			continue
		}
		if !matched && ev.HoldID == "" {
			if e.opts.RejectUnpriced {
				res.reject("unpriced_event", "event type "+ev.EventType+" has no price in pricing version "+strconv.FormatUint(uint64(p.Version), 10), "event_type")
			} else {
				res.Status = EventRecorded
			}
			continue
		}
		err = e.customerRead(ev.CustomerID, func(sh *shard, g *group, w *wallet.Wallet) *wallet.Error {
			cmd := wallet.UsageCmd{EventID: ev.ID, OccurredAt: ev.OccurredAt, PricingVersion: p.Version, Charges: charges}
			if _, active := w.ActiveHold(ev.HoldID); active {
				cmd.HoldID = ev.HoldID
			}
			results, werr := w.CheckCharge(&cmd, g.now)
			if werr != nil {
				res.reject(werr.Code, werr.Message, "")
				return nil
			}
			res.Status, res.Charges = EventCharged, results
			return nil
		})
		if we, ok := err.(*wallet.Error); ok && we.Code == wallet.CodeUnknownCustomer {
			res.reject(we.Code, we.Message, "customer_id")
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}
