package sink

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/prometheus/client_golang/prometheus"
)

// Destination is where a tailer ships batches.
type Destination interface {
	// Name names the destination; its engine cursor has the same name.
	Name() string
	// Write ships one batch exactly once: it must tolerate a batch (or one
	// cut differently over the same records) whose earlier attempt's outcome
	// is unknown, writing only what is not there yet. Records are never
	// split between batches. Write must not keep b after it returns: the
	// tailer reuses it.
	Write(ctx context.Context, b *Batch) error
}

// TailerConfig configures a Tailer. Zero values take the defaults.
type TailerConfig struct {
	BatchRowsMax int           // rows per batch; default 100,000
	BatchAge     time.Duration // how long a partial batch may wait for more rows; default 1s
	RetryMin     time.Duration // first back-off after a failure; default 100ms
	RetryMax     time.Duration // longest back-off; default 30s
	// Dimensions gives usage rows their dimension value (UsageRow.Dimension),
	// which the ClickHouse destination stores; others do without the cost.
	Dimensions bool
	Log        *slog.Logger
	Metrics    *Metrics // shared by the tailers of a process; nil = none
}

// Tailer ships the engine's outbox to one destination, exactly once: it
// cuts batches of whole outbox records after its durable cursor, hands each
// to the destination until it is acknowledged (retrying with back-off and
// jitter), then advances the cursor. A crash between an acknowledged write
// and the cursor is covered by Destination.Write, which checks what landed.
type Tailer struct {
	e    *balance.Engine
	d    Destination
	cfg  TailerConfig
	log  *slog.Logger
	name string

	mu     sync.Mutex
	status Status
	cursor uint64
	loaded bool

	batch Batch        // reused by cut: the destination does not keep a batch after Write returns
	open  openBatch    // what cut knows of batch
	built int          // rows appendRecord built, in all (each row once: see cut)
	dims  *dimensioner // nil without cfg.Dimensions
}

// Status is what a tailer reports for /readyz and metrics.
type Status struct {
	Name           string
	Shipped        uint64    // the lowest cursor of its tables
	Watermark      uint64    // the engine's durable outbox seq
	LagSeconds     float64   // age of the oldest record not yet shipped; 0 when caught up
	LastError      string    // "" after a success
	LastErrorAt    time.Time // when LastError happened
	LastShippedAt  time.Time
	ConsecutiveErr int
}

// NewTailer returns a tailer of the engine's outbox to d.
func NewTailer(e *balance.Engine, d Destination, cfg TailerConfig) *Tailer {
	if cfg.BatchRowsMax <= 0 {
		cfg.BatchRowsMax = 100_000
	}
	if cfg.BatchAge <= 0 {
		cfg.BatchAge = time.Second
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	t := &Tailer{e: e, d: d, cfg: cfg, log: cfg.Log.With("sink", d.Name()), name: d.Name(),
		status: Status{Name: d.Name()}}
	if cfg.Dimensions {
		t.dims = &dimensioner{e: e}
	}
	if m := cfg.Metrics; m != nil {
		m.errors.WithLabelValues(t.name) // reported from the start, at 0: a rate over it is 0, not absent
	}
	// Load the cursor now, so that status and backlog are right from the
	// start; Run retries if the store could not answer.
	if c, err := e.Cursor(t.name); err == nil {
		t.cursor, t.loaded, t.status.Shipped = c, true, c
	}
	return t
}

// Status returns the tailer's current status.
func (t *Tailer) Status() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.status
	s.Watermark = t.e.OutboxWatermark()
	return s
}

// Run ships until ctx is done. It returns ctx's error.
func (t *Tailer) Run(ctx context.Context) error {
	backoff := t.cfg.RetryMin
	retry := func(err error) bool {
		t.failed(err)
		ok := sleep(ctx, jitter(backoff))
		backoff = min(2*backoff, t.cfg.RetryMax)
		return ok
	}
	// Connect early, so the schema exists before the first row; a failure
	// here is retried by the writes.
	if c, ok := t.d.(interface{ Connect(context.Context) error }); ok {
		if err := c.Connect(ctx); err != nil {
			t.failed(err)
		}
	}
	for !t.loaded {
		c, err := t.e.Cursor(t.name)
		if err == nil {
			t.mu.Lock()
			t.cursor, t.loaded, t.status.Shipped = c, true, c
			t.mu.Unlock()
			break
		}
		if !retry(err) {
			return ctx.Err()
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, oldest, err := t.cut()
		if err != nil {
			if !retry(err) {
				return ctx.Err()
			}
			continue
		}
		if b == nil {
			t.setLag(0)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.e.OutboxNotify():
			case <-time.After(t.cfg.BatchAge):
			}
			continue
		}
		age := time.Since(time.Unix(0, oldest))
		if age < 0 {
			// The engine's clock is ahead of this one (a test clock set in
			// the future): the record's age is unknown, so ship it now
			// rather than wait for a time that is days away.
			age = t.cfg.BatchAge
		}
		t.setLag(age.Seconds())
		// A partial batch at the head of the outbox waits up to BatchAge
		// from its oldest record for more rows.
		if rows(b) < t.cfg.BatchRowsMax && age < t.cfg.BatchAge && b.To == t.e.OutboxWatermark() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.e.OutboxNotify():
			case <-time.After(t.cfg.BatchAge - age):
			}
			continue
		}
		err = t.ship(ctx, b)
		t.open.active = false // shipped; or, after a failure, cut again from the cursor
		if err != nil {
			if !retry(err) {
				return ctx.Err()
			}
			continue
		}
		backoff = t.cfg.RetryMin
	}
}

// cut returns the next batch after the cursor: whole outbox records up to
// BatchRowsMax rows, never two calendar months of recorded time (a
// ClickHouse insert spanning two monthly partitions is not atomic), and the
// recorded time of its oldest record. It returns nil when there is nothing
// to ship. A batch not shipped yet stays open: the next cut reads on after
// its last record instead of reading and building its rows again (while a
// partial batch waits for more rows, every advance of the watermark cuts).
func (t *Tailer) cut() (*Batch, int64, error) {
	c := &t.open
	b := &t.batch
	if !c.active {
		b.From, b.To, b.Ledger, b.Usage, b.Notes = t.shipped()+1, t.shipped(), b.Ledger[:0], b.Usage[:0], b.Notes[:0]
		*c = openBatch{}
	} else if c.full {
		return b, c.oldest, nil
	}
	err := t.e.ReadOutbox(b.To, func(r *balance.OutboxRecord) bool {
		y, m, _ := time.Unix(0, r.RecordedAt).UTC().Date()
		ym := y*12 + int(m)
		if !c.active {
			b.From = r.Seq
			c.active, c.oldest, c.month = true, r.RecordedAt, ym
		} else if ym != c.month || c.rows+len(r.Entries)+2*len(r.Usage)+len(r.Notes) > t.cfg.BatchRowsMax {
			c.full = true
			return false
		}
		n := appendRecord(b, r, t.dims)
		c.rows += n
		t.built += n
		b.To = r.Seq
		c.full = c.rows >= t.cfg.BatchRowsMax
		return !c.full
	})
	if err == nil && t.dims != nil && t.dims.err != nil {
		err, t.dims.err = t.dims.err, nil
	}
	if err != nil || !c.active {
		c.active = false // a failed read may have left part of a record
		return nil, 0, err
	}
	return b, c.oldest, nil
}

// openBatch is the state of the batch being cut (Tailer.batch).
type openBatch struct {
	active bool  // the batch holds records not shipped yet
	full   bool  // no further record can join it
	rows   int   // rows appended
	oldest int64 // recorded time of its first record
	month  int   // year*12 + month of its records
}

// shipped returns the cursor: the last outbox seq shipped.
func (t *Tailer) shipped() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cursor
}

// ship writes b, then advances the cursor durably.
func (t *Tailer) ship(ctx context.Context, b *Batch) error {
	start := time.Now()
	if err := t.d.Write(ctx, b); err != nil {
		return fmt.Errorf("outbox %d-%d: %w", b.From, b.To, err)
	}
	if err := t.e.SetCursor(t.name, b.To); err != nil {
		return err
	}
	if m := t.cfg.Metrics; m != nil {
		m.rows.WithLabelValues(t.name, TableLedgerEntries).Add(float64(len(b.Ledger)))
		m.rows.WithLabelValues(t.name, TableUsageEvents).Add(float64(len(b.Usage)))
		m.batchSeconds.WithLabelValues(t.name).Observe(time.Since(start).Seconds())
	}
	t.mu.Lock()
	t.cursor = b.To
	t.status.Shipped = b.To
	t.status.LastError = ""
	t.status.ConsecutiveErr = 0
	t.status.LastShippedAt = time.Now()
	t.mu.Unlock()
	return nil
}

func (t *Tailer) failed(err error) {
	t.log.Warn("sink failed; retrying", "err", err)
	t.mu.Lock()
	t.status.LastError = err.Error()
	t.status.LastErrorAt = time.Now()
	t.status.ConsecutiveErr++
	t.mu.Unlock()
	if m := t.cfg.Metrics; m != nil {
		m.errors.WithLabelValues(t.name).Inc()
	}
}

func (t *Tailer) setLag(s float64) {
	t.mu.Lock()
	t.status.LagSeconds = s
	t.mu.Unlock()
	if m := t.cfg.Metrics; m != nil {
		m.lag.WithLabelValues(t.name).Set(s)
		m.pending.WithLabelValues(t.name).Set(float64(t.e.OutboxWatermark() - t.shipped()))
	}
}

func rows(b *Batch) int { return len(b.Ledger) + len(b.Usage) }

// Names of the tables rows go to.
const (
	TableLedgerEntries = "ledger_entries"
	TableUsageEvents   = "usage_events"
)

// appendRecord appends an outbox record's rows to b and returns how many;
// with dims, usage rows get their dimension value.
func appendRecord(b *Batch, r *balance.OutboxRecord, dims *dimensioner) int {
	n := 0
	for i := range r.Notes {
		nt := &r.Notes[i]
		b.Notes = append(b.Notes, NoteRow{OutboxSeq: r.Seq, ID: nt.ID(), CustomerID: nt.Customer, Seq: nt.Seq,
			Type: nt.Type, At: nt.At, Body: nt.Body})
		n++
	}
	for i := range r.Entries {
		en := &r.Entries[i]
		kind := ""
		if en.BucketKind != 0 {
			kind = en.BucketKind.String()
		}
		_, asset, _ := strings.Cut(en.Account, ":")
		b.Ledger = append(b.Ledger, LedgerRow{
			OutboxSeq: r.Seq, EntryID: en.Customer + "/" + strconv.FormatUint(en.Seq, 10), Seq: en.Seq,
			CustomerID: en.Customer, Account: en.Account, Asset: asset, Type: en.Type.String(), Scale: en.Scale,
			Amount: en.Amount, BalanceAfter: en.BalanceAfter, BucketID: en.BucketID, BucketKind: kind,
			EventID: en.EventID, Reference: en.Reference, OccurredAt: en.OccurredAt, RecordedAt: en.RecordedAt,
			PricingVersion: en.PricingVersion, Metadata: string(en.Metadata), Source: en.Source,
			Description: en.Description, Price: en.Price, Currency: en.Currency, Offer: en.Offer,
		})
		n++
	}
	for i := range r.Usage {
		u := &r.Usage[i]
		row := UsageRow{OutboxSeq: r.Seq, EventID: u.EventID, CustomerID: u.Customer, EventType: u.EventType,
			Subject: u.Subject, OccurredAt: u.OccurredAt, RecordedAt: u.RecordedAt, PricingVersion: u.PricingVersion,
			Data: string(u.Data), Description: u.Description}
		if row.Data == "" {
			row.Data = "{}"
		}
		if u.Status == balance.EventRecorded || len(u.Charges) == 0 {
			row.Status = "recorded"
			b.Usage = append(b.Usage, row)
			n++
			continue
		}
		row.Status = "charged"
		for _, c := range u.Charges {
			row.Account, row.Scale, row.Charge = c.Account, c.Scale, c.Amount
			_, row.Asset, _ = strings.Cut(c.Account, ":")
			if dims != nil {
				row.Dimension = dims.value(u, c.Account)
			}
			b.Usage = append(b.Usage, row)
			n++
		}
	}
	return n
}

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// Metrics of the sinks of a process.
type Metrics struct {
	lag          *prometheus.GaugeVec
	pending      *prometheus.GaugeVec
	rows         *prometheus.CounterVec
	errors       *prometheus.CounterVec
	batchSeconds *prometheus.HistogramVec
	backlog      prometheus.Gauge
}

// NewMetrics registers the sink metrics with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meterd_sink_lag_seconds",
			Help: "Age of the oldest durable outbox record a sink has not shipped yet; 0 when caught up."}, []string{"sink"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meterd_sink_pending_records",
			Help: "Outbox records (commit groups) durable but not yet shipped by a sink."}, []string{"sink"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterd_sink_rows_total",
			Help: "Rows shipped by a sink, by table."}, []string{"sink", "table"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterd_sink_errors_total",
			Help: "Failed sink attempts (each is retried with back-off)."}, []string{"sink"}),
		batchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meterd_sink_batch_seconds",
			Help: "Time to ship one batch to every table of a sink.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"sink"}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_sink_backlog_bytes",
			Help: "Disk space of the outbox not yet shipped by the slowest sink (estimated from Pebble's tables)."}),
	}
	if reg != nil {
		reg.MustRegister(m.lag, m.pending, m.rows, m.errors, m.batchSeconds, m.backlog)
	}
	return m
}

// Lazy returns a destination that opens the real one on first use, and
// again after a failed open: meterd starts and takes writes while its
// destination is down, and the tailer's back-off paces the attempts.
func Lazy(name string, open func(context.Context) (Destination, error)) Destination {
	return &lazy{name: name, open: open}
}

type lazy struct {
	name string
	open func(context.Context) (Destination, error)
	mu   sync.Mutex
	d    Destination
}

func (l *lazy) Name() string { return l.name }

// Connect opens the destination if it is not open yet.
func (l *lazy) Connect(ctx context.Context) error {
	_, err := l.get(ctx)
	return err
}

func (l *lazy) get(ctx context.Context) (Destination, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.d == nil {
		d, err := l.open(ctx)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", l.name, err)
		}
		l.d = d
	}
	return l.d, nil
}

func (l *lazy) Write(ctx context.Context, b *Batch) error {
	d, err := l.get(ctx)
	if err != nil {
		return err
	}
	return d.Write(ctx, b)
}
