package bench

import (
	"fmt"
	"math/rand/v2"
	"strconv"
)

// A scenario is the workload of a run, generated whole before the run starts
// (Requests), so that the load loop only hands out prepared requests and the
// generator is never the bottleneck. Every event is a token-priced
// message_completed of one of Models; its Charge is ChargeOf its model and
// tokens, so the baselines move exactly what meterd prices. The same Seed
// gives the same events, in the same order, for every system.

// The distributions of events over customers.
const (
	DistUniform = "uniform" // every customer equally likely
	DistZipf    = "zipf"    // customer i with weight 1/(i+1)^zipfS: a few hot customers, a long tail
	DistHot     = "hot"     // every event on customer 0: one hot wallet
)

// Bounds of a scenario.
const (
	scenarioCustomersMax = 10_000_000
	scenarioEventsMax    = 100_000_000 // events one Requests call generates
	batchEventsMax       = 1000        // events per request
	zipfS                = 1.1         // the Zipf exponent of DistZipf
	inputTokensMax       = 4000        // input tokens per event: 1..inputTokensMax
	outputTokensMax      = 1000        // output tokens per event: 1..outputTokensMax
)

// Scenario is one workload.
type Scenario struct {
	Name      string
	Customers int    // customers the events are spread over: CustomerIDs(Customers)
	Dist      string // DistUniform, DistZipf or DistHot
	Batch     int    // events per request
	Seed      uint64 // the events are a function of the seed (and the run id)
	// HoldEvery marks one event in HoldEvery (the first of each run of
	// HoldEvery) as settling a hold (Event.Hold); 0: none.
	HoldEvery int
	// Prefix of the customer ids; "" is "bc-" (CustomerIDs). A run against
	// a server that outlives it gives each run its own, so that every run
	// starts from fresh wallets.
	Prefix string
}

// Validate says whether the scenario can generate n requests.
func (s Scenario) Validate(n int) error {
	switch {
	case s.Customers < 1 || s.Customers > scenarioCustomersMax:
		return fmt.Errorf("scenario %q: customers %d, want 1..%d", s.Name, s.Customers, scenarioCustomersMax)
	case s.Dist != DistUniform && s.Dist != DistZipf && s.Dist != DistHot:
		return fmt.Errorf("scenario %q: distribution %q, want %s, %s or %s", s.Name, s.Dist, DistUniform, DistZipf, DistHot)
	case s.Batch < 1 || s.Batch > batchEventsMax:
		return fmt.Errorf("scenario %q: batch %d, want 1..%d", s.Name, s.Batch, batchEventsMax)
	case s.HoldEvery < 0:
		return fmt.Errorf("scenario %q: hold every %d events, want 0 (none) or more", s.Name, s.HoldEvery)
	case n < 0 || n > scenarioEventsMax/s.Batch:
		return fmt.Errorf("scenario %q: %d requests of %d events, want at most %d events", s.Name, n, s.Batch, scenarioEventsMax)
	}
	return nil
}

// CustomerIDs returns the ids of n customers: "bc-0" .. "bc-<n-1>".
func CustomerIDs(n int) []string { return customerIDs("bc-", n) }

// CustomerIDs returns the ids of the scenario's customers.
func (s Scenario) CustomerIDs() []string {
	if s.Prefix == "" {
		return CustomerIDs(s.Customers)
	}
	return customerIDs(s.Prefix, s.Customers)
}

func customerIDs(prefix string, n int) []string {
	ids := make([]string, max(0, n))
	for i := range ids {
		ids[i] = prefix + strconv.Itoa(i)
	}
	return ids
}

// Requests generates n requests of s.Batch events each. Event ids are
// "<runID>-<n>", n counting from 0 in base 36, unique within the run (and
// across runs with different runIDs). It panics on a scenario Validate
// refuses: a bad scenario is the caller's bug, to be caught by Validate
// where it is read.
//
// Generation allocates a handful of large blocks, not one object per event:
// all events share one backing array, all ids one string.
func (s Scenario) Requests(runID string, n int) [][]Event {
	if err := s.Validate(n); err != nil {
		panic(err)
	}
	total := n * s.Batch
	customers := s.CustomerIDs()
	rng := rand.New(rand.NewPCG(s.Seed, 0x6d65746572642d62)) // "meterd-b"
	pick := s.picker(rng)

	ids := s.idBlock(runID, total)
	events := make([]Event, total)
	for i := range events {
		m := &Models[rng.IntN(len(Models))]
		in, out := int64(1+rng.IntN(inputTokensMax)), int64(1+rng.IntN(outputTokensMax))
		events[i] = Event{ID: ids[i], Customer: customers[pick()], Model: m.Model,
			InputTokens: in, OutputTokens: out, Charge: ChargeOf(m.Model, in, out), Hold: s.HoldEvery > 0 && i%s.HoldEvery == 0}
	}
	reqs := make([][]Event, n)
	for r := range reqs {
		reqs[r] = events[r*s.Batch : (r+1)*s.Batch : (r+1)*s.Batch]
	}
	return reqs
}

// picker returns the draw of one event's customer index.
func (s Scenario) picker(rng *rand.Rand) func() int {
	switch s.Dist {
	case DistHot:
		return func() int { return 0 }
	case DistZipf:
		z := rand.NewZipf(rng, zipfS, 1, uint64(s.Customers-1))
		return func() int { return int(z.Uint64()) }
	}
	return func() int { return rng.IntN(s.Customers) }
}

// idBlock returns total event ids, substrings of one string.
func (s Scenario) idBlock(runID string, total int) []string {
	buf := make([]byte, 0, total*(len(runID)+8))
	ends := make([]int, total)
	for i := range ends {
		buf = append(buf, runID...)
		buf = append(buf, '-')
		buf = strconv.AppendUint(buf, uint64(i), 36)
		ends[i] = len(buf)
	}
	all := string(buf)
	ids := make([]string, total)
	start := 0
	for i, end := range ends {
		ids[i] = all[start:end]
		start = end
	}
	return ids
}
