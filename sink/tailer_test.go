package sink

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/meter"
)

// setClock is a balance.Clock the test sets.
type setClock struct{ ns atomic.Int64 }

func (c *setClock) Now() int64 { return c.ns.Load() }

// batchLog is a Destination that keeps what each batch held. It stands for
// no real component: it is the tailer's output, read back.
type batchLog struct {
	mu      sync.Mutex
	batches []loggedBatch
}

type loggedBatch struct {
	from, to uint64
	rows     int
	events   []string // usage rows' event ids, in order
	months   map[time.Month]bool
}

func (l *batchLog) Name() string { return "clickhouse" }

func (l *batchLog) Write(_ context.Context, b *Batch) error {
	lb := loggedBatch{from: b.From, to: b.To, rows: rows(b), months: map[time.Month]bool{}}
	for _, u := range b.Usage {
		lb.events = append(lb.events, u.EventID)
		lb.months[time.Unix(0, u.RecordedAt).UTC().Month()] = true
	}
	for _, e := range b.Ledger {
		lb.months[time.Unix(0, e.RecordedAt).UTC().Month()] = true
	}
	l.mu.Lock()
	l.batches = append(l.batches, lb)
	l.mu.Unlock()
	return nil
}

// The tailer's batches: whole records in order, each once, never over
// BatchRowsMax rows or across a month, and a partial batch at the head
// grows as records arrive (read once each, not again at every arrival).
func TestTailerCutsBatches(t *testing.T) {
	clock := &setClock{}
	clock.ns.Store(time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC).UnixNano())
	e, err := balance.Open(balance.Options{Dir: t.TempDir(), Shards: 1, Sinks: []string{"clickhouse"},
		DefaultPricing: []byte(benchTailerPricing), Clock: clock, Log: testLog})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.PutCustomer("c1", wallet.Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.TopUp("c1", &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "CREDITS", Amount: 1 << 40}, [16]byte{1}); err != nil {
		t.Fatal(err)
	}
	var sent []string
	send := func(n int) {
		t.Helper()
		for range n {
			id := fmt.Sprintf("e%d", len(sent))
			in := &balance.EventIn{Event: &meter.Event{ID: id, CustomerID: "c1", EventType: "image_generated",
				OccurredAt: clock.Now(), DataJSON: []byte(`{}`)}, Hash: [16]byte{1}}
			if err := e.Events([]*balance.EventIn{in}); err != nil || in.Result.Status != balance.EventCharged {
				t.Fatalf("event %s: %v, %+v", id, err, in.Result)
			}
			sent = append(sent, id)
		}
	}
	send(7) // November
	clock.ns.Add(int64(2 * time.Minute))
	send(8) // December

	const rowsMax = 10 // five events: a ledger row and a usage row each
	log := &batchLog{}
	tailer := NewTailer(e, log, TailerConfig{BatchRowsMax: rowsMax, BatchAge: 300 * time.Millisecond, Log: testLog})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tailer.Run(ctx) }()
	defer cancel()
	waitShipped := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for tailer.Status().Shipped < e.OutboxWatermark() {
			if time.Now().After(deadline) {
				t.Fatalf("not shipped: %+v", tailer.Status())
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitShipped()
	backlog := len(log.batches)
	// Now the head: records arriving one by one while a batch waits (their
	// age counts from the real time).
	clock.ns.Store(time.Now().UnixNano())
	for range 4 {
		send(1)
		time.Sleep(20 * time.Millisecond)
	}
	waitShipped()

	cancel()
	<-done
	log.mu.Lock()
	defer log.mu.Unlock()
	var got []string
	next := uint64(1)
	for i, b := range log.batches {
		if b.from != next || b.to < b.from {
			t.Errorf("batch %d: records %d-%d, want from %d", i, b.from, b.to, next)
		}
		next = b.to + 1
		if b.rows > rowsMax {
			t.Errorf("batch %d: %d rows, over %d", i, b.rows, rowsMax)
		}
		if len(b.months) > 1 {
			t.Errorf("batch %d: rows of months %v", i, b.months)
		}
		got = append(got, b.events...)
	}
	total := 0
	for _, b := range log.batches {
		total += b.rows
	}
	if tailer.built != total {
		t.Errorf("the tailer built %d rows for %d shipped: a batch waiting at the head was read again", tailer.built, total)
	}
	if fmt.Sprint(got) != fmt.Sprint(sent) {
		t.Errorf("events shipped %v, want each of %v once, in order", got, sent)
	}
	// The top-up and seven events of November: 15 rows, two batches
	// (a record joins only while its rows, a usage row counted twice for
	// the accounts it may charge, fit); eight of December: two batches.
	// The four at the head: one batch.
	if backlog != 4 || len(log.batches) != 5 {
		for _, b := range log.batches {
			t.Logf("batch %d-%d: %d rows, events %v", b.from, b.to, b.rows, b.events)
		}
		t.Errorf("%d batches for the backlog and %d in all, want 4 and 5", backlog, len(log.batches))
	}
}
