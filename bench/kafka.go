package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/valyala/fastjson"

	"github.com/meterd/meterd/meter"
)

// meterd's Kafka transport under test: a request's events are produced to
// the input topic, one message each, and the request is answered when every
// event's outcome has come back on meterd's output topics. Apply's duration,
// which is what the load loop measures, is then produce-to-durable: a
// usage ledger entry is published only once the event is durable, and a
// usage.rejected notice only once its round was applied (fsync'd) and before
// its offset is committed. It includes meterd's publication lag (its outbox
// tailer, --sink-batch-age), so it is an upper bound of the moment the event
// became durable.
//
// meterd must run with --kafka-brokers and --kafka-publish (the rejection
// notices are published only then), on the topics of StartKafka: the input
// topic usage-events (and its usage-events.dlq), meterd.ledger and
// meterd.notifications.
//
// How an event's outcome is known (the event being the pair customer, id):
//
//   - charged: its usage ledger entry (account default:USD) appears on
//     meterd.ledger. The charge is -amount. meterd writes one usage entry per
//     bucket a charge draws from; Setup gives each customer one bucket, so
//     the first entry is the whole charge (as Meterd.Ledger assumes too). An
//     entry counts only if its seq is above the customer's highest seq known
//     when the event was registered (before it was produced): an older entry
//     is not this message's doing. Entries the publisher delivers again (it
//     is at least once) are dropped by seq per customer, as sink/kafka.go
//     says a consumer may.
//   - rejected: its usage.rejected notice appears on meterd.notifications,
//     matched to the message by the notice's source partition and offset,
//     so a notice of an earlier delivery of the same id never answers a
//     later one. Every code (insufficient_funds, idempotency_conflict, ...)
//     is StatusRejected, as Meterd's HTTP answer is.
//   - duplicate: meterd's Kafka consumer emits nothing for a duplicate
//     (ingest/kafka.go counts it and commits). So MeterdKafka watches the
//     consumer group's committed offsets (group "meterd" unless KafkaGroup):
//     once the offset is committed past the message, the message was applied
//     durably, and any ledger row it caused is in meterd's ledger. If no
//     outcome came on the topics within a grace period after that (twice the
//     longest recent commit-to-entry lag, at least 200ms, at most 10s), the
//     customer's ledger is read over HTTP: a usage row of the event above the
//     registration seq (not already given to another request carrying the
//     same id) is a charge that the topic has not shown yet, answered
//     charged; only older rows mean a duplicate, answered with the amount
//     of the newest such row (the original charge: one bucket, one row); no
//     row at all leaves the event waiting (a rejection notice may still be
//     on its way) until the request's timeout. At most kafkaChecksPerTick
//     customers' ledgers are read per poll, so that a burst of late entries
//     does not turn into a burst of HTTP reads on the server under test;
//     Stats counts the events answered this way.
//     When one request carries an id twice, or two requests in flight carry
//     the same id, the message with the lowest offset takes the new entry
//     (meterd applies a partition in offset order) and the others are
//     duplicates of it.
//   - dead letter: a message meterd could not read goes to usage-events.dlq;
//     its request fails with the DLQ's error (never for scenario events).
//   - anything else (meterd down, a notice lost, a zero-charge event with
//     no ledger row): no answer within the request's timeout (default 30s,
//     KafkaTimeout, or ctx's deadline): Apply returns an error, and the
//     request counts as unanswered.
//
// Memory is bounded by what is in flight (the pending events and the notices
// that arrive before their message's offset is known, at most
// kafkaEarlyMax) plus one seq per customer seen.

// The topics meterd's Kafka path uses (its defaults).
const (
	KafkaInputTopic         = "usage-events"
	KafkaDLQTopic           = "usage-events.dlq"
	KafkaLedgerTopic        = "meterd.ledger"
	KafkaNotificationsTopic = "meterd.notifications"
)

// Bounds and timings of MeterdKafka.
const (
	kafkaTimeoutDefault = 30 * time.Second // a request's wait for its outcomes
	kafkaOpTimeout      = 10 * time.Second // one metadata, offset or HTTP call
	kafkaCommitPoll     = 50 * time.Millisecond
	kafkaGraceInitial   = 2 * time.Second // before any lag was measured: meterd's default --sink-batch-age is 1s
	kafkaGraceMin       = 200 * time.Millisecond
	kafkaGraceMax       = 10 * time.Second
	kafkaLagWindow      = 128  // recent commit-to-outcome lags the grace is taken from
	kafkaEarlyMax       = 4096 // notices and dead letters kept until their message's offset is known
	kafkaChecksPerTick  = 64   // customers' ledgers read over HTTP per commit poll, at most
	kafkaUSDAccount     = "default:USD"
)

// KafkaBroker is an in-process Kafka-protocol cluster (kfake, one broker)
// with meterd's topics.
type KafkaBroker struct {
	c *kfake.Cluster
}

// StartKafka starts a one-broker kfake cluster with the topics usage-events,
// usage-events.dlq, meterd.ledger and meterd.notifications, each of
// partitions partitions.
func StartKafka(partitions int) (*KafkaBroker, error) {
	if partitions < 1 {
		return nil, fmt.Errorf("kafka: %d partitions", partitions)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(int32(partitions), KafkaInputTopic, KafkaDLQTopic, KafkaLedgerTopic, KafkaNotificationsTopic))
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	return &KafkaBroker{c: c}, nil
}

// Addrs returns the brokers' host:port addresses.
func (b *KafkaBroker) Addrs() []string { return b.c.ListenAddrs() }

// Close stops the cluster.
func (b *KafkaBroker) Close() { b.c.Close() }

// KafkaOption configures a MeterdKafka.
type KafkaOption func(*MeterdKafka)

// KafkaTimeout bounds how long Apply waits for a request's outcomes (default
// 30s); ctx's deadline, when earlier, bounds it too.
func KafkaTimeout(d time.Duration) KafkaOption {
	return func(k *MeterdKafka) {
		if d > 0 {
			k.timeout = d
		}
	}
}

// KafkaGroup names meterd's consumer group (its --kafka-group; default
// "meterd"), whose committed offsets tell that a message was applied.
func KafkaGroup(group string) KafkaOption { return func(k *MeterdKafka) { k.group = group } }

// KafkaName names the system in reports (default "meterd").
func KafkaName(name string) KafkaOption { return func(k *MeterdKafka) { k.name = name } }

// MeterdKafka is meterd under test with Kafka as the transport: Apply
// produces to usage-events and waits for the outcomes on meterd's output
// topics (see the comment above). Setup, Balance, Ledger and PIDs are the
// HTTP Meterd's, of the same server.
type MeterdKafka struct {
	m       *Meterd
	name    string
	group   string
	timeout time.Duration

	client  *kafka.Client
	tr      *kafka.Transport
	w       *kafka.Writer
	readers []*kafka.Reader
	inParts []int // the input topic's partitions

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	keys      map[kafkaKey]*kafkaKeyState
	byOffset  map[kafkaPO]*kafkaWait
	early     map[kafkaPO]kafkaEarly
	earlyFIFO []kafkaPO // early's keys, oldest first (a ring of kafkaEarlyMax)
	earlyNext int
	customers map[string]*kafkaCustomer
	lags      [kafkaLagWindow]time.Duration
	lagN      int
	stats     KafkaStats
	closed    bool
}

// KafkaStats counts how MeterdKafka's events were answered.
type KafkaStats struct {
	Charged       int64 // by their entry on meterd.ledger
	Rejected      int64 // by their usage.rejected notice
	ChargedLate   int64 // by a new row in the HTTP ledger, its entry not on the topic within the grace
	Duplicates    int64 // by an older row in the HTTP ledger, after the commit
	DeadLetters   int64 // sent to the DLQ by meterd: their request failed
	NoOutcome     int64 // none within the timeout (or the request failed)
	HTTPLedgerGet int64 // ledger pages read for the duplicate check
}

// Stats returns the counts so far.
func (k *MeterdKafka) Stats() KafkaStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stats
}

// kafkaKey is one event: a customer's event id.
type kafkaKey struct{ customer, id string }

// kafkaPO is one message of the input topic.
type kafkaPO struct {
	partition int
	offset    int64
}

// kafkaKeyState is what is pending for one event id.
type kafkaKeyState struct {
	waits   []*kafkaWait // registration order
	claimed []uint64     // seqs of usage entries already given to one of waits
}

// kafkaCustomer is what is known of one customer's ledger seqs.
type kafkaCustomer struct {
	topic uint64 // highest seq read on the ledger topic: an entry at or below it is a redelivery
	known uint64 // highest seq known to exist (the topic's or the HTTP ledger's)
}

// kafkaReq is one Apply call.
type kafkaReq struct {
	results []Result
	left    int
	err     error
	done    chan struct{}
}

// kafkaWait is one event of a request, waiting for its outcome.
type kafkaWait struct {
	req       *kafkaReq
	i         int // its index in the request
	key       kafkaKey
	snap      uint64 // the customer's known seq at registration
	po        kafkaPO
	produced  bool // po is known
	committed time.Time
	nextCheck time.Time // the earliest next HTTP look for a duplicate
	done      bool
}

// kafkaEarly is a notice or dead letter whose message's offset was not known
// yet when it arrived.
type kafkaEarly struct {
	key    kafkaKey
	result Result
	err    error
}

// NewMeterdKafka returns a System that produces to the brokers and reads
// back meterd's outcomes; m is the HTTP API of the same meterd. Outcomes are
// read from the end of the output topics as of now.
func NewMeterdKafka(brokers []string, m *Meterd, opts ...KafkaOption) (*MeterdKafka, error) {
	if len(brokers) == 0 || m == nil {
		return nil, errors.New("kafka: NewMeterdKafka needs brokers and the HTTP Meterd")
	}
	k := &MeterdKafka{
		m: m, name: "meterd", group: "meterd", timeout: kafkaTimeoutDefault,
		keys:      make(map[kafkaKey]*kafkaKeyState),
		byOffset:  make(map[kafkaPO]*kafkaWait),
		early:     make(map[kafkaPO]kafkaEarly),
		customers: make(map[string]*kafkaCustomer),
	}
	for _, o := range opts {
		o(k)
	}
	k.tr = &kafka.Transport{ClientID: "meterbench", DialTimeout: kafkaOpTimeout, MetadataTTL: 5 * time.Second}
	addr := kafka.TCP(brokers...)
	k.client = &kafka.Client{Addr: addr, Timeout: kafkaOpTimeout, Transport: k.tr}

	ctx, cancel := context.WithTimeout(context.Background(), kafkaOpTimeout)
	defer cancel()
	outputs := []string{KafkaLedgerTopic, KafkaNotificationsTopic, KafkaDLQTopic}
	md, err := k.client.Metadata(ctx, &kafka.MetadataRequest{Topics: append([]string{KafkaInputTopic}, outputs...)})
	if err != nil {
		k.tr.CloseIdleConnections()
		return nil, fmt.Errorf("kafka: metadata: %w", err)
	}
	parts := make(map[string][]int)
	for _, t := range md.Topics {
		if t.Error != nil {
			k.tr.CloseIdleConnections()
			return nil, fmt.Errorf("kafka: topic %s: %w", t.Name, t.Error)
		}
		for _, p := range t.Partitions {
			parts[t.Name] = append(parts[t.Name], p.ID)
		}
	}
	req := &kafka.ListOffsetsRequest{Topics: make(map[string][]kafka.OffsetRequest)}
	for _, t := range append([]string{KafkaInputTopic}, outputs...) {
		if len(parts[t]) == 0 {
			k.tr.CloseIdleConnections()
			return nil, fmt.Errorf("kafka: topic %s: no partitions (create meterd's topics first)", t)
		}
		slices.Sort(parts[t])
	}
	for _, t := range outputs {
		for _, p := range parts[t] {
			req.Topics[t] = append(req.Topics[t], kafka.LastOffsetOf(p))
		}
	}
	offs, err := k.client.ListOffsets(ctx, req)
	if err != nil {
		k.tr.CloseIdleConnections()
		return nil, fmt.Errorf("kafka: end offsets: %w", err)
	}
	k.inParts = parts[KafkaInputTopic]

	k.ctx, k.cancel = context.WithCancel(context.Background())
	handlers := map[string]func(*fastjson.Parser, *kafka.Message){
		KafkaLedgerTopic: k.onLedger, KafkaNotificationsTopic: k.onNotice, KafkaDLQTopic: k.onDeadLetter,
	}
	for _, t := range outputs {
		for _, po := range offs.Topics[t] {
			if po.Error != nil {
				k.Close()
				return nil, fmt.Errorf("kafka: end offset of %s/%d: %w", t, po.Partition, po.Error)
			}
			r := kafka.NewReader(kafka.ReaderConfig{
				Brokers: brokers, Topic: t, Partition: po.Partition,
				MinBytes: 1, MaxBytes: 16 << 20,
				MaxWait:         100 * time.Millisecond, // a fetch returns as soon as there is a byte
				ReadLagInterval: -1,
				ReadBackoffMin:  10 * time.Millisecond,
				ReadBackoffMax:  500 * time.Millisecond,
			})
			if err := r.SetOffset(po.LastOffset); err != nil {
				r.Close()
				k.Close()
				return nil, fmt.Errorf("kafka: %s/%d: %w", t, po.Partition, err)
			}
			k.readers = append(k.readers, r)
			k.wg.Add(1)
			go k.read(r, handlers[t])
		}
	}
	k.w = &kafka.Writer{
		Addr:                   addr,
		Topic:                  KafkaInputTopic,
		Transport:              k.tr,
		Balancer:               &kafka.Hash{}, // key = customer: a customer's events stay in order
		RequiredAcks:           kafka.RequireAll,
		BatchSize:              10_000,
		BatchBytes:             1 << 20,
		BatchTimeout:           time.Millisecond,
		ReadTimeout:            kafkaOpTimeout,
		WriteTimeout:           kafkaOpTimeout,
		AllowAutoTopicCreation: false,
		Completion:             k.produced,
	}
	k.wg.Add(1)
	go k.pollCommits()
	return k, nil
}

func (k *MeterdKafka) Name() string    { return k.name }
func (k *MeterdKafka) PIDs() []int     { return k.m.PIDs() }
func (k *MeterdKafka) Meterd() *Meterd { return k.m }

// Close stops the readers, the commit poller and the producer. The HTTP
// Meterd is its owner's to close.
func (k *MeterdKafka) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	k.mu.Unlock()
	if k.cancel != nil {
		k.cancel()
	}
	var err error
	for _, r := range k.readers {
		err = errors.Join(err, r.Close())
	}
	k.wg.Wait()
	if k.w != nil {
		err = errors.Join(err, k.w.Close())
	}
	k.tr.CloseIdleConnections()
	return err
}

// Setup is the HTTP Meterd's; then each customer's newest ledger seq is
// read, so that Apply need not read it on a customer's first event.
func (k *MeterdKafka) Setup(ctx context.Context, customers []string, balance int64) error {
	if err := k.m.Setup(ctx, customers, balance); err != nil {
		return err
	}
	return forEachParallel(ctx, customers, setupWorkers, func(c string) error {
		return k.knowCustomer(ctx, c)
	})
}

func (k *MeterdKafka) Balance(ctx context.Context, customer string) (int64, error) {
	return k.m.Balance(ctx, customer)
}

func (k *MeterdKafka) Ledger(ctx context.Context, customer string) ([]LedgerRow, error) {
	return k.m.Ledger(ctx, customer)
}

// knowCustomer reads the customer's newest seq over HTTP, once.
func (k *MeterdKafka) knowCustomer(ctx context.Context, c string) error {
	k.mu.Lock()
	_, ok := k.customers[c]
	k.mu.Unlock()
	if ok {
		return nil
	}
	seq, err := k.newestSeq(ctx, c)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.customer(c).known = max(k.customer(c).known, seq)
	k.mu.Unlock()
	return nil
}

// customer returns the customer's state, created if new. k.mu is held.
func (k *MeterdKafka) customer(c string) *kafkaCustomer {
	s := k.customers[c]
	if s == nil {
		s = &kafkaCustomer{}
		k.customers[c] = s
	}
	return s
}

// newestSeq is the seq of the customer's newest USD ledger entry (0: none,
// or no such customer yet).
func (k *MeterdKafka) newestSeq(ctx context.Context, c string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, kafkaOpTimeout)
	defer cancel()
	st, body, err := k.m.call(ctx, "GET", "/v1/customers/"+c+"/ledger?account="+kafkaUSDAccount+"&limit=1", nil)
	switch {
	case err != nil:
		return 0, fmt.Errorf("ledger of %s: %w", c, err)
	case st == 404:
		return 0, nil
	case st != 200:
		return 0, fmt.Errorf("ledger of %s: %d %s", c, st, body)
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(body)
	if err != nil {
		return 0, fmt.Errorf("ledger of %s: %w", c, err)
	}
	var seq uint64
	for _, e := range v.GetArray("entries") {
		seq = max(seq, e.GetUint64("seq"))
	}
	return seq, nil
}

// Apply produces the events, one message each (key: the customer; value:
// the event's JSON as AppendEvent writes it), and returns when each has its
// outcome (see the comment at the top of this file), or an error when some
// have none within the timeout.
func (k *MeterdKafka) Apply(ctx context.Context, events []Event, results []Result) error {
	if len(events) == 0 {
		return nil
	}
	if len(results) != len(events) {
		return fmt.Errorf("kafka: %d results for %d events", len(results), len(events))
	}
	for i := range events {
		if err := k.knowCustomer(ctx, events[i].Customer); err != nil {
			return err
		}
	}
	var buf []byte
	ends := make([]int, len(events))
	for i := range events {
		buf = AppendEvent(buf, &events[i])
		ends[i] = len(buf)
	}
	msgs := make([]kafka.Message, len(events))
	waits := make([]kafkaWait, len(events))
	req := &kafkaReq{results: results, left: len(events), done: make(chan struct{})}

	// Register before producing: an outcome may come back before
	// WriteMessages returns.
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return errors.New("kafka: closed")
	}
	for i := range events {
		start := 0
		if i > 0 {
			start = ends[i-1]
		}
		ev := &events[i]
		w := &waits[i]
		msgs[i] = kafka.Message{Key: []byte(ev.Customer), Value: buf[start:ends[i]:ends[i]], WriterData: w}
		*w = kafkaWait{req: req, i: i, key: kafkaKey{ev.Customer, ev.ID}, snap: k.customer(ev.Customer).known}
		ks := k.keys[w.key]
		if ks == nil {
			ks = &kafkaKeyState{}
			k.keys[w.key] = ks
		}
		ks.waits = append(ks.waits, w)
	}
	k.mu.Unlock()

	timeout := k.timeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	err := k.w.WriteMessages(wctx, msgs...)
	cancel()

	if err != nil {
		k.abandon(waits)
		return fmt.Errorf("kafka: produce: %w", err)
	}

	select {
	case <-req.done:
	case <-timer.C:
	case <-ctx.Done():
	}
	k.mu.Lock()
	left, rerr := req.left, req.err
	k.mu.Unlock()
	if left > 0 {
		k.abandon(waits)
		if rerr != nil {
			return rerr
		}
		if ctx.Err() != nil {
			return fmt.Errorf("kafka: %d of %d events without an outcome: %w", left, len(events), context.Cause(ctx))
		}
		return fmt.Errorf("kafka: %d of %d events without an outcome after %v", left, len(events), timeout)
	}
	return rerr
}

// abandon unregisters the request's events that are still pending.
func (k *MeterdKafka) abandon(waits []kafkaWait) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := range waits {
		if w := &waits[i]; !w.done {
			k.stats.NoOutcome++
			k.finish(w, Result{}, nil)
		}
	}
}

// finish gives w its outcome (err: the request fails) and unregisters it.
// k.mu is held.
func (k *MeterdKafka) finish(w *kafkaWait, r Result, err error) {
	w.done = true
	if err != nil {
		if w.req.err == nil {
			w.req.err = err
		}
	} else {
		w.req.results[w.i] = r
	}
	if ks := k.keys[w.key]; ks != nil {
		if i := slices.Index(ks.waits, w); i >= 0 {
			ks.waits = slices.Delete(ks.waits, i, i+1)
		}
		if len(ks.waits) == 0 {
			delete(k.keys, w.key)
		}
	}
	if w.produced && k.byOffset[w.po] == w {
		delete(k.byOffset, w.po)
	}
	w.req.left--
	if w.req.left == 0 {
		close(w.req.done)
	}
}

// answered finishes w with an outcome read on a topic, and records the lag
// from its commit (0 when the commit was not seen yet) for the grace.
func (k *MeterdKafka) answered(w *kafkaWait, r Result, err error) {
	var lag time.Duration
	if !w.committed.IsZero() {
		lag = time.Since(w.committed)
	}
	k.lags[k.lagN%kafkaLagWindow] = lag
	k.lagN++
	k.finish(w, r, err)
}

// grace is how long after its commit an event waits for its outcome on the
// topics before its ledger is read over HTTP. k.mu is held.
func (k *MeterdKafka) grace() time.Duration {
	if k.lagN == 0 {
		return kafkaGraceInitial
	}
	var most time.Duration
	for _, l := range k.lags[:min(k.lagN, kafkaLagWindow)] {
		most = max(most, l)
	}
	return min(max(2*most+kafkaCommitPoll, kafkaGraceMin), kafkaGraceMax)
}

// produced is the writer's Completion: it learns each message's offset.
func (k *MeterdKafka) produced(msgs []kafka.Message, err error) {
	if err != nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := range msgs {
		m := &msgs[i]
		w, _ := m.WriterData.(*kafkaWait)
		if w == nil || w.done {
			continue
		}
		w.po, w.produced = kafkaPO{m.Partition, m.Offset}, true
		k.byOffset[w.po] = w
		if e, ok := k.early[w.po]; ok {
			delete(k.early, w.po)
			if e.key == w.key || e.err != nil {
				k.countOutcome(e)
				k.answered(w, e.result, e.err)
			}
		}
	}
}

// read delivers every message of one output partition to handle.
func (k *MeterdKafka) read(r *kafka.Reader, handle func(*fastjson.Parser, *kafka.Message)) {
	defer k.wg.Done()
	var p fastjson.Parser
	for {
		m, err := r.ReadMessage(k.ctx)
		if err != nil {
			if k.ctx.Err() != nil {
				return
			}
			select { // kafka-go retries on its own; this only paces a persistent error
			case <-k.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		handle(&p, &m)
	}
}

// onLedger handles one message of meterd.ledger.
func (k *MeterdKafka) onLedger(p *fastjson.Parser, m *kafka.Message) {
	v, err := p.ParseBytes(m.Value)
	if err != nil {
		return
	}
	seq := v.GetUint64("seq")
	customer := string(v.GetStringBytes("customer_id"))
	if customer == "" || seq == 0 {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	cs := k.customer(customer)
	if seq <= cs.topic {
		return // a redelivery
	}
	cs.topic = seq
	cs.known = max(cs.known, seq)
	if string(v.GetStringBytes("type")) != "usage" || string(v.GetStringBytes("account")) != kafkaUSDAccount {
		return
	}
	ks := k.keys[kafkaKey{customer, string(v.GetStringBytes("event_id"))}]
	if ks == nil || slices.Contains(ks.claimed, seq) {
		return
	}
	amount, err := meter.ParseUnits(string(v.GetStringBytes("amount")), usdScale)
	if err != nil {
		return
	}
	// The entry is the doing of the first message, in offset order, of those
	// registered before it existed.
	var best *kafkaWait
	for _, w := range ks.waits {
		if w.snap >= seq {
			continue
		}
		if best == nil || w.produced && (!best.produced || w.po.offset < best.po.offset) {
			best = w
		}
	}
	if best == nil {
		return
	}
	ks.claimed = append(ks.claimed, seq)
	k.stats.Charged++
	k.answered(best, Result{Status: StatusCharged, Charge: -amount}, nil)
}

// onNotice handles one message of meterd.notifications: usage.rejected
// notices answer their message rejected.
func (k *MeterdKafka) onNotice(p *fastjson.Parser, m *kafka.Message) {
	v, err := p.ParseBytes(m.Value)
	if err != nil || string(v.GetStringBytes("type")) != "usage.rejected" ||
		string(v.GetStringBytes("source", "topic")) != KafkaInputTopic {
		return
	}
	key := kafkaKey{string(v.GetStringBytes("customer_id")), string(v.GetStringBytes("event_id"))}
	po := kafkaPO{v.GetInt("source", "partition"), v.GetInt64("source", "offset")}
	k.outcome(po, kafkaEarly{key: key, result: Result{Status: StatusRejected}})
}

// onDeadLetter handles one message of the DLQ: its request fails.
func (k *MeterdKafka) onDeadLetter(_ *fastjson.Parser, m *kafka.Message) {
	h := func(key string) string {
		for _, x := range m.Headers {
			if x.Key == key {
				return string(x.Value)
			}
		}
		return ""
	}
	if h("source_topic") != KafkaInputTopic {
		return
	}
	part, err1 := strconv.Atoi(h("source_partition"))
	off, err2 := strconv.ParseInt(h("source_offset"), 10, 64)
	if err1 != nil || err2 != nil {
		return
	}
	var ev fastjson.Parser
	id := ""
	if v, err := ev.ParseBytes(m.Value); err == nil {
		id = string(v.GetStringBytes("id"))
	}
	err := fmt.Errorf("kafka: event %s of customer %s went to the DLQ: %s (%s): %s",
		id, m.Key, h("error_code"), h("error_reason"), h("error"))
	k.outcome(kafkaPO{part, off}, kafkaEarly{key: kafkaKey{string(m.Key), id}, err: err})
}

func (k *MeterdKafka) countOutcome(e kafkaEarly) {
	if e.err != nil {
		k.stats.DeadLetters++
	} else {
		k.stats.Rejected++
	}
}

// outcome answers the message at po, or keeps the outcome until its
// offset is known (an outcome for no message of ours ages out of the ring).
func (k *MeterdKafka) outcome(po kafkaPO, e kafkaEarly) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if w := k.byOffset[po]; w != nil {
		// A dead letter may not parse: its partition and offset decide.
		if w.key == e.key || e.err != nil {
			k.countOutcome(e)
			k.answered(w, e.result, e.err)
		}
		return
	}
	if len(k.earlyFIFO) < kafkaEarlyMax {
		k.earlyFIFO = append(k.earlyFIFO, po)
	} else {
		delete(k.early, k.earlyFIFO[k.earlyNext])
		k.earlyFIFO[k.earlyNext] = po
		k.earlyNext = (k.earlyNext + 1) % kafkaEarlyMax
	}
	k.early[po] = e
}

// pollCommits watches meterd's committed offsets while events are pending,
// and reads the ledger of those that got no outcome a grace after their
// commit: duplicates, which meterd answers with nothing on Kafka.
func (k *MeterdKafka) pollCommits() {
	defer k.wg.Done()
	t := time.NewTicker(kafkaCommitPoll)
	defer t.Stop()
	for {
		select {
		case <-k.ctx.Done():
			return
		case <-t.C:
		}
		k.mu.Lock()
		pending := len(k.byOffset)
		k.mu.Unlock()
		if pending == 0 {
			continue
		}
		committed, err := k.committed()
		if err != nil {
			continue // the next tick tries again; the requests' timeouts bound the wait
		}
		now := time.Now()
		var suspects []kafkaKey
		k.mu.Lock()
		grace := k.grace()
		for po, w := range k.byOffset {
			if w.committed.IsZero() && po.offset < committed[po.partition] {
				w.committed = now
				w.nextCheck = now.Add(grace)
			}
			if !w.committed.IsZero() && !now.Before(w.nextCheck) {
				suspects = append(suspects, w.key)
			}
		}
		k.mu.Unlock()
		if len(suspects) > 0 {
			k.checkLedgers(suspects, committed, grace)
		}
	}
}

// committed returns the consumer group's committed offset per partition of
// the input topic (the next offset it will read).
func (k *MeterdKafka) committed() (map[int]int64, error) {
	ctx, cancel := context.WithTimeout(k.ctx, kafkaOpTimeout)
	defer cancel()
	res, err := k.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: k.group,
		Topics: map[string][]int{KafkaInputTopic: k.inParts}})
	if err != nil {
		return nil, err
	}
	if res.Error != nil {
		return nil, res.Error
	}
	out := make(map[int]int64, len(k.inParts))
	for _, p := range res.Topics[KafkaInputTopic] {
		if p.Error == nil {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out, nil
}

// kafkaRow is one usage row of an event, read over HTTP.
type kafkaRow struct {
	seq    uint64
	amount int64 // taken, positive
}

// checkLedgers reads the ledgers of the suspects' customers and answers
// each suspect whose message is committed: charged by a row newer than its
// registration, else duplicate of the older rows.
func (k *MeterdKafka) checkLedgers(suspects []kafkaKey, committed map[int]int64, grace time.Duration) {
	byCustomer := make(map[string]map[string][]kafkaRow)
	for _, s := range suspects {
		if byCustomer[s.customer] == nil {
			byCustomer[s.customer] = make(map[string][]kafkaRow)
		}
		byCustomer[s.customer][s.id] = nil
	}
	checked := 0
	for c, ids := range byCustomer {
		if checked == kafkaChecksPerTick {
			break // the others are still suspects at the next poll
		}
		checked++
		newest, err := k.eventRows(c, ids)
		if err != nil {
			continue // tried again at the next tick
		}
		now := time.Now()
		k.mu.Lock()
		cs := k.customer(c)
		cs.known = max(cs.known, newest)
		for id, rows := range ids {
			ks := k.keys[kafkaKey{c, id}]
			if ks == nil {
				continue
			}
			// The applied messages of this id, in offset order: the first
			// takes a new row, the others are its duplicates.
			var ws []*kafkaWait
			for _, w := range ks.waits {
				if w.produced && w.po.offset < committed[w.po.partition] {
					ws = append(ws, w)
				}
			}
			slices.SortFunc(ws, func(a, b *kafkaWait) int { return cmp.Compare(a.po.offset, b.po.offset) })
			for _, w := range ws {
				var fresh int64
				var freshSeqs []uint64
				var original int64 // the newest row's (rows are newest first)
				if len(rows) > 0 {
					original = rows[0].amount
				}
				for _, r := range rows {
					if r.seq > w.snap && !slices.Contains(ks.claimed, r.seq) {
						fresh += r.amount
						freshSeqs = append(freshSeqs, r.seq)
					}
				}
				switch {
				case len(freshSeqs) > 0:
					ks.claimed = append(ks.claimed, freshSeqs...)
					k.stats.ChargedLate++
					k.finish(w, Result{Status: StatusCharged, Charge: fresh}, nil)
				case len(rows) > 0:
					k.stats.Duplicates++
					k.finish(w, Result{Status: StatusDuplicate, Charge: original}, nil)
				default:
					w.nextCheck = now.Add(grace) // no row: a notice may still come
				}
			}
		}
		k.mu.Unlock()
	}
}

// eventRows fills ids with the USD usage rows of those event ids, reading
// the customer's ledger newest first until each id has a row (Setup's one
// bucket: one row per charge, the newest one is the one that matters) or
// the ledger ends. It returns the newest seq read.
func (k *MeterdKafka) eventRows(c string, ids map[string][]kafkaRow) (uint64, error) {
	var newest uint64
	before := ""
	var p fastjson.Parser
	for {
		path := "/v1/customers/" + c + "/ledger?account=" + kafkaUSDAccount + "&limit=1000"
		if before != "" {
			path += "&before=" + before
		}
		ctx, cancel := context.WithTimeout(k.ctx, kafkaOpTimeout)
		st, body, err := k.m.call(ctx, "GET", path, nil)
		cancel()
		k.mu.Lock()
		k.stats.HTTPLedgerGet++
		k.mu.Unlock()
		if err != nil || st != 200 {
			return 0, fmt.Errorf("ledger of %s: %d %s %v", c, st, body, err)
		}
		v, err := p.ParseBytes(body)
		if err != nil {
			return 0, err
		}
		for _, e := range v.GetArray("entries") {
			seq := e.GetUint64("seq")
			newest = max(newest, seq)
			if string(e.GetStringBytes("type")) != "usage" {
				continue
			}
			id := string(e.GetStringBytes("event_id"))
			rows, ok := ids[id]
			if !ok {
				continue
			}
			u, err := meter.ParseUnits(string(e.GetStringBytes("amount")), usdScale)
			if err != nil {
				return 0, err
			}
			ids[id] = append(rows, kafkaRow{seq: seq, amount: -u})
		}
		all := true
		for _, rows := range ids {
			if len(rows) == 0 {
				all = false
				break
			}
		}
		next := v.Get("next")
		if all || next == nil || next.Type() != fastjson.TypeString {
			return newest, nil
		}
		before = string(next.GetStringBytes())
	}
}
