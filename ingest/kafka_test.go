package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/twmb/franz-go/pkg/kfake"
)

// These tests run the consumer against kfake, an in-process Kafka-protocol
// broker, and a real engine on a temporary directory. The producer and the
// readers that check the outcome are separate kafka-go clients.

const (
	kTopic      = "usage-events"
	kDLQ        = kTopic + ".dlq"
	kPartitions = 8
	kPricing    = `{"assets":[{"code":"CREDITS","scale":0}],
 "prices":[{"event_type":"image_generated","account":"default:CREDITS","unit_price":"40"}]}`
)

var debugKafka = os.Getenv("DEBUG_KAFKA") != ""

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func newKafkaCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(kPartitions, kTopic), kfake.SeedTopics(1, kDLQ)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// openKafkaEngine opens an engine with the test pricing and the customers
// given, each topped up with its amount of credits.
func openKafkaEngine(t *testing.T, o balance.Options, credits map[string]int64) *balance.Engine {
	t.Helper()
	o.Dir = t.TempDir()
	o.Log = quietLog
	if o.Shards == 0 {
		o.Shards = 4
	}
	e, err := balance.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if _, err := e.SetPricing([]byte(kPricing)); err != nil {
		t.Fatal(err)
	}
	for c, n := range credits {
		if _, err := e.PutCustomer(c, wallet.Settings{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.TopUp(c, &wallet.TopUpCmd{ID: "t-" + c, Account: "default", Asset: "CREDITS", Amount: n}, [16]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// produce writes msgs with a producer of its own (acks from all replicas,
// partitioned by key).
func produce(t *testing.T, addrs []string, msgs ...kafka.Message) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(addrs...), Topic: kTopic, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchSize: 1000, BatchTimeout: 5 * time.Millisecond, MaxAttempts: 20}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

func event(key, value string) kafka.Message {
	return kafka.Message{Key: []byte(key), Value: []byte(value)}
}

func imageEvt(id, customer string) string {
	return `{"id":"` + id + `","customer_id":"` + customer + `","event_type":"image_generated","data":{"n":1}}`
}

// runConsumer starts a consumer, after setup (if any) has adjusted it; the
// returned stop cancels it and returns what Run returned.
func runConsumer(t *testing.T, e *balance.Engine, addrs []string, cfg KafkaConfig, setup func(*Consumer)) (*Consumer, func() error) {
	t.Helper()
	cfg.Brokers = addrs
	cfg.Log = quietLog
	if testing.Verbose() && debugKafka {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c, err := NewConsumer(e, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-ran:
			case <-time.After(15 * time.Second):
				t.Errorf("Run did not return after its context was cancelled")
			}
			c.Close()
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	return c, stop
}

// offsets returns each partition's high-water mark and the group's committed offset (-1: none).
func offsets(addrs []string, group string) (hwm, committed [kPartitions]int64, err error) {
	tr := &kafka.Transport{} // not the shared DefaultTransport: its connections die with a broker
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addrs...), Timeout: 5 * time.Second, Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reqs := make([]kafka.OffsetRequest, kPartitions)
	parts := make([]int, kPartitions)
	for p := range kPartitions {
		reqs[p] = kafka.LastOffsetOf(p)
		parts[p] = p
	}
	lo, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{kTopic: reqs}})
	if err != nil {
		return hwm, committed, err
	}
	for _, po := range lo.Topics[kTopic] {
		if po.Error != nil {
			return hwm, committed, fmt.Errorf("list offsets of partition %d: %w", po.Partition, po.Error)
		}
		hwm[po.Partition] = po.LastOffset
	}
	of, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{kTopic: parts}})
	if err != nil {
		return hwm, committed, err
	}
	for p := range committed {
		committed[p] = -1
	}
	for _, po := range of.Topics[kTopic] {
		committed[po.Partition] = po.CommittedOffset
	}
	return hwm, committed, nil
}

// waitCommitted waits until the group has committed every partition up to
// its high-water mark: everything produced is durable.
func waitCommitted(t *testing.T, addrs []string, group string, timeout time.Duration) [kPartitions]int64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		hwm, committed, err := offsets(addrs, group)
		done := err == nil
		for p := range kPartitions {
			if committed[p] != hwm[p] && (hwm[p] != 0 || committed[p] != -1) {
				done = false
			}
		}
		if done {
			return hwm
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: committed %v, high-water marks %v (%v)", timeout, committed, hwm, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func counterValue(c prometheus.Counter) int {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return int(m.GetCounter().GetValue())
}

// outcomes returns the consumer's message counts by outcome.
func outcomes(c *Consumer) map[string]int {
	out := map[string]int{}
	for o, name := range kafkaOutcomeNames {
		if v := counterValue(c.metrics.messages[o]); v > 0 {
			out[name] = v
		}
	}
	return out
}

func available(t *testing.T, e *balance.Engine, customer string) int64 {
	t.Helper()
	w, err := e.Wallet(customer)
	if err != nil {
		t.Fatalf("wallet %s: %v", customer, err)
	}
	return w.Account("default:CREDITS").Available()
}

// usageEvents returns the event ids of the customer's usage ledger entries.
func usageEvents(t *testing.T, e *balance.Engine, customer string) map[string]int {
	t.Helper()
	page, err := e.Ledger(customer, "default:CREDITS", 0, 10_000)
	if err != nil {
		t.Fatalf("ledger %s: %v", customer, err)
	}
	ids := map[string]int{}
	for _, en := range page.Entries {
		if en.Type == wallet.EntryUsage {
			ids[en.EventID]++
		}
	}
	return ids
}

// readDLQ reads the DLQ topic from its first offset until it has n messages,
// then checks for a while that no more come.
func readDLQ(t *testing.T, addrs []string, n int) []kafka.Message {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: addrs, Topic: kDLQ, Partition: 0, MinBytes: 1, MaxBytes: 1 << 20,
		MaxWait: 50 * time.Millisecond, IsolationLevel: kafka.ReadCommitted, StartOffset: kafka.FirstOffset})
	defer r.Close()
	var out []kafka.Message
	for {
		wait := 10 * time.Second
		if len(out) == n {
			wait = 300 * time.Millisecond
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		m, err := r.ReadMessage(ctx)
		cancel()
		if err != nil {
			if len(out) == n && errors.Is(err, context.DeadlineExceeded) {
				return out
			}
			t.Fatalf("DLQ: %d messages read, want %d: %v", len(out), n, err)
		}
		out = append(out, m)
	}
}

func header(m kafka.Message, key string) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// TestKafkaConsumerCharges: charged, duplicate, recorded and rejected events
// are applied and committed; malformed, invalid and key-mismatched messages
// go to the DLQ with their key, value and the reason; every partition is
// committed up to its high-water mark, and a new consumer of the group gets
// nothing again.
func TestKafkaConsumerCharges(t *testing.T) {
	cluster := newKafkaCluster(t)
	addrs := cluster.ListenAddrs()
	credits := map[string]int64{"poor": 30}
	var customers []string
	for i := range 16 {
		c := fmt.Sprintf("cust%02d", i)
		customers = append(customers, c)
		credits[c] = 1000
	}
	e := openKafkaEngine(t, balance.Options{}, credits)

	var msgs []kafka.Message
	for i := range 5 {
		for _, c := range customers {
			id := fmt.Sprintf("e-%s-%d", c, i)
			if i == 0 { // no customer_id: the key names the customer
				msgs = append(msgs, event(c, `{"id":"`+id+`","event_type":"image_generated"}`))
				continue
			}
			msgs = append(msgs, event(c, imageEvt(id, c)))
		}
	}
	type dead struct{ key, reason string }
	dlq := map[string]dead{ // value -> its key and the reason it is a dead letter
		`{"id":"m1","customer_id":"cust01",`:                                      {"cust01", ReasonMalformedJSON},
		`{"id":"x1","customer_id":"cust02"}`:                                      {"cust02", ReasonMissingEventType},
		`{"id":"x2","customer_id":"cust04","event_type":"image_generated"}`:       {"cust03", ReasonKeyMismatch},
		`{"id":"x3","customer_id":"cust05","event_type":"image_generated","x":1}`: {"cust05", ReasonUnknownField},
	}
	msgs = append(msgs,
		event("cust00", imageEvt("e-cust00-1", "cust00")),                                                                         // duplicate: same id, same content
		event("cust06", `{"id":"v1","customer_id":"cust06","event_type":"page_viewed"}`),                                          // recorded: no price
		event("poor", imageEvt("p1", "poor")),                                                                                     // rejected: insufficient_funds
		event("ghost", imageEvt("g1", "ghost")),                                                                                   // rejected: unknown_customer
		event("cust07", `{"id":"o1","customer_id":"cust07","event_type":"image_generated","occurred_at":"2020-01-01T00:00:00Z"}`), // rejected: out_of_window
	)
	for v, d := range dlq {
		msgs = append(msgs, event(d.key, v))
	}
	produce(t, addrs, msgs...)

	c, stop := runConsumer(t, e, addrs, KafkaConfig{Registerer: prometheus.NewRegistry()}, nil)
	hwm := waitCommitted(t, addrs, KafkaGroupDefault, 20*time.Second)
	used := 0
	for _, h := range hwm {
		if h > 0 {
			used++
		}
	}
	t.Logf("high-water marks %v (%d partitions used)", hwm, used)
	if used < 4 {
		t.Fatalf("messages landed in %d partitions; the test wants them spread", used)
	}

	want := map[string]int{"charged": 80, "duplicate": 1, "recorded": 1, "rejected": 3, "dlq": 4}
	if got := outcomes(c); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("outcomes %v, want %v", got, want)
	}
	for _, code := range []string{"insufficient_funds", "unknown_customer", "out_of_window"} {
		if n := counterValue(c.metrics.rejected.WithLabelValues(code)); n != 1 {
			t.Errorf("rejected{code=%s} = %d, want 1", code, n)
		}
	}
	for _, cu := range customers {
		if got := available(t, e, cu); got != 1000-5*40 {
			t.Errorf("%s: available %d, want 800", cu, got)
		}
		ids := usageEvents(t, e, cu)
		if len(ids) != 5 {
			t.Errorf("%s: usage entries for %v, want 5 events", cu, ids)
		}
		for i := range 5 {
			if id := fmt.Sprintf("e-%s-%d", cu, i); ids[id] != 1 {
				t.Errorf("%s: %d usage entries for %s, want 1", cu, ids[id], id)
			}
		}
	}
	if got := available(t, e, "poor"); got != 30 {
		t.Errorf("poor: available %d, want 30 (the rejected event changes nothing)", got)
	}

	for _, m := range readDLQ(t, addrs, len(dlq)) {
		v := string(m.Value)
		d, ok := dlq[v]
		if !ok {
			t.Errorf("unexpected DLQ message %q", v)
			continue
		}
		delete(dlq, v)
		if string(m.Key) != d.key {
			t.Errorf("DLQ %q: key %q, want %q", v, m.Key, d.key)
		}
		wantH := map[string]string{"error_code": CodeInvalidEvent, "error_reason": d.reason, "source_topic": kTopic}
		for k, w := range wantH {
			if got, _ := header(m, k); got != w {
				t.Errorf("DLQ %q: header %s = %q, want %q", v, k, got, w)
			}
		}
		if msg, _ := header(m, "error"); msg == "" {
			t.Errorf("DLQ %q: no error header", v)
		}
		p, _ := header(m, "source_partition")
		o, _ := header(m, "source_offset")
		pi, err1 := strconv.Atoi(p)
		oi, err2 := strconv.ParseInt(o, 10, 64)
		if err1 != nil || err2 != nil || pi < 0 || pi >= kPartitions || oi < 0 || oi >= hwm[pi] {
			t.Errorf("DLQ %q: source_partition %q source_offset %q, not a message of the topic", v, p, o)
		}
	}
	if len(dlq) > 0 {
		t.Errorf("missing from the DLQ: %v", dlq)
	}

	// Nothing is delivered again: a new consumer of the group sees only
	// what is produced after it starts.
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	c2, _ := runConsumer(t, e, addrs, KafkaConfig{}, nil)
	produce(t, addrs, event("cust08", imageEvt("late", "cust08")))
	waitCommitted(t, addrs, KafkaGroupDefault, 20*time.Second)
	if got := outcomes(c2); fmt.Sprint(got) != fmt.Sprint(map[string]int{"charged": 1}) {
		t.Fatalf("second consumer outcomes %v, want only the new event charged", got)
	}
}

// TestKafkaConsumerRestartRedelivers: a consumer that dies after applying a
// round and before committing it leaves the round to the next consumer of
// the group, which gets it again, answered duplicate: nothing is charged twice.
func TestKafkaConsumerRestartRedelivers(t *testing.T) {
	cluster := newKafkaCluster(t)
	addrs := cluster.ListenAddrs()
	credits := map[string]int64{}
	var msgs []kafka.Message
	for i := range 8 {
		cu := fmt.Sprintf("r%d", i)
		credits[cu] = 1000
		for j := range 10 {
			msgs = append(msgs, event(cu, imageEvt(fmt.Sprintf("%s-%d", cu, j), cu)))
		}
	}
	e := openKafkaEngine(t, balance.Options{}, credits)
	produce(t, addrs, msgs...)

	var rounds atomic.Int32
	a, stopA := runConsumer(t, e, addrs, KafkaConfig{BatchWait: 300 * time.Millisecond}, func(c *Consumer) {
		c.afterApply = func() bool {
			rounds.Add(1)
			return true // die here: applied, not committed
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for rounds.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := stopA(); !errors.Is(err, errStopped) {
		t.Fatalf("first consumer: Run returned %v, want the hook's stop", err)
	}
	applied := counterValue(a.metrics.messages[kafkaCharged])
	if applied == 0 {
		t.Fatalf("first consumer applied nothing")
	}
	if _, committed, err := offsets(addrs, KafkaGroupDefault); err != nil || committed != [kPartitions]int64{-1, -1, -1, -1, -1, -1, -1, -1} {
		t.Fatalf("committed %v (%v) after a death before the commit, want nothing", committed, err)
	}
	before := map[string]int64{}
	for cu := range credits {
		before[cu] = available(t, e, cu)
	}
	t.Logf("first consumer applied %d of %d events before dying", applied, len(msgs))

	b, _ := runConsumer(t, e, addrs, KafkaConfig{}, nil)
	waitCommitted(t, addrs, KafkaGroupDefault, 20*time.Second)
	want := map[string]int{"duplicate": applied}
	if applied < len(msgs) {
		want["charged"] = len(msgs) - applied
	}
	if got := outcomes(b); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("second consumer outcomes %v, want %d duplicate and %d charged", got, applied, len(msgs)-applied)
	}
	for cu := range credits {
		if n := available(t, e, cu); n != 1000-10*40 {
			t.Errorf("%s: available %d, want 600 (before the restart %d)", cu, n, before[cu])
		}
		for id, n := range usageEvents(t, e, cu) {
			if n != 1 {
				t.Errorf("%s: %d usage entries for %s, want 1", cu, n, id)
			}
		}
	}
}

// TestKafkaConsumerBackpressure: with one-slot shard queues that other
// callers keep filling, the engine answers overloaded (applying nothing);
// the consumer retries the same round until it is taken, and every event is
// applied exactly once. Besides the real refusals, which depend on
// timing, every third round is refused once on purpose so that the retry
// path is always taken.
func TestKafkaConsumerBackpressure(t *testing.T) {
	cluster := newKafkaCluster(t)
	addrs := cluster.ListenAddrs()
	credits := map[string]int64{"hammer": 1}
	var msgs []kafka.Message
	const customers, perCustomer = 40, 50
	for i := range customers {
		cu := fmt.Sprintf("b%02d", i)
		credits[cu] = 100_000
		for j := range perCustomer {
			msgs = append(msgs, event(cu, imageEvt(fmt.Sprintf("%s-%d", cu, j), cu)))
		}
	}
	e := openKafkaEngine(t, balance.Options{Shards: 2, QueueMax: 1}, credits)
	produce(t, addrs, msgs...)

	// Other callers keep the one-slot queues busy for the first second.
	hctx, hstop := context.WithTimeout(context.Background(), time.Second)
	var hammers sync.WaitGroup
	for range 16 {
		hammers.Add(1)
		go func() {
			defer hammers.Done()
			for hctx.Err() == nil {
				e.Wallet("hammer")
			}
		}()
	}
	defer func() { hstop(); hammers.Wait() }()

	var calls, refusedReal, refusedOnPurpose atomic.Int64
	c, _ := runConsumer(t, e, addrs, KafkaConfig{BatchMessagesMax: 100}, func(c *Consumer) {
		c.events = func(evs []*balance.EventIn) error {
			if n := calls.Add(1); n%3 == 1 {
				refusedOnPurpose.Add(1)
				return balance.ErrOverloaded
			}
			err := e.Events(evs)
			if errors.Is(err, balance.ErrOverloaded) {
				refusedReal.Add(1)
			}
			return err
		}
	})
	waitCommitted(t, addrs, KafkaGroupDefault, 25*time.Second)
	hstop()
	hammers.Wait()

	retried := counterValue(c.metrics.retries[retryOverloaded])
	t.Logf("%d engine calls; %d refused by the engine, %d on purpose; %d retries counted",
		calls.Load(), refusedReal.Load(), refusedOnPurpose.Load(), retried)
	if int64(retried) != refusedReal.Load()+refusedOnPurpose.Load() || refusedOnPurpose.Load() == 0 {
		t.Fatalf("%d retries counted, want every refusal (%d + %d)", retried, refusedReal.Load(), refusedOnPurpose.Load())
	}
	if got := outcomes(c); fmt.Sprint(got) != fmt.Sprint(map[string]int{"charged": len(msgs)}) {
		t.Fatalf("outcomes %v, want %d charged", got, len(msgs))
	}
	for i := range customers {
		cu := fmt.Sprintf("b%02d", i)
		if n := available(t, e, cu); n != 100_000-perCustomer*40 {
			t.Errorf("%s: available %d, want %d", cu, n, 100_000-perCustomer*40)
		}
		if ids := usageEvents(t, e, cu); len(ids) != perCustomer {
			t.Errorf("%s: %d events charged, want %d", cu, len(ids), perCustomer)
		}
	}
}

// TestKafkaBrokerRestart: the broker goes away and comes back on the same
// address with its data (kfake persists to a directory); the consumer keeps
// retrying, never exits, and goes on where it was.
func TestKafkaBrokerRestart(t *testing.T) {
	dir := t.TempDir()
	cluster1, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(kPartitions, kTopic), kfake.SeedTopics(1, kDLQ), kfake.DataDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster1.Close()
	addrs := cluster1.ListenAddrs()
	_, portS, _ := net.SplitHostPort(addrs[0])
	port, _ := strconv.Atoi(portS)

	credits := map[string]int64{}
	batch := func(from, to int) []kafka.Message {
		var out []kafka.Message
		for i := from; i < to; i++ {
			cu := fmt.Sprintf("k%d", i%8)
			out = append(out, event(cu, imageEvt(fmt.Sprintf("ev-%d", i), cu)))
		}
		return out
	}
	for i := range 8 {
		credits[fmt.Sprintf("k%d", i)] = 10_000
	}
	e := openKafkaEngine(t, balance.Options{}, credits)
	produce(t, addrs, batch(0, 80)...)
	c, stop := runConsumer(t, e, addrs, KafkaConfig{}, nil)
	waitCommitted(t, addrs, KafkaGroupDefault, 20*time.Second)

	cluster1.Close()
	time.Sleep(time.Second) // the consumer meets a dead broker

	cluster2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir))
	if err != nil {
		t.Skipf("kfake cannot restart on the same port: %v", err)
	}
	defer cluster2.Close()
	produce(t, addrs, batch(80, 160)...)
	hwm := waitCommitted(t, addrs, KafkaGroupDefault, 25*time.Second)
	total := int64(0)
	for _, h := range hwm {
		total += h
	}
	if total != 160 {
		t.Fatalf("the restarted broker holds %d messages, want 160 (did it keep its data?)", total)
	}
	got := outcomes(c)
	t.Logf("outcomes %v; retries: fetch %d, commit %d", got, counterValue(c.metrics.retries[retryFetch]), counterValue(c.metrics.retries[retryCommit]))
	// A round applied while the group's coordinator connection died may
	// fail its commit: it comes back and is answered duplicate.
	if got["charged"] != 160 || got["duplicate"] > 80 || len(got) > 2 {
		t.Fatalf("outcomes %v, want 160 charged (and duplicates only of rounds whose commit was lost)", got)
	}
	for i := range 8 {
		cu := fmt.Sprintf("k%d", i)
		if n := available(t, e, cu); n != 10_000-20*40 {
			t.Errorf("%s: available %d, want %d", cu, n, 10_000-20*40)
		}
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}

// TestKafkaConsumerMissingTopic: a DLQ topic that does not exist is a
// configuration error Run reports at once, before joining the group.
func TestKafkaConsumerMissingTopic(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(kPartitions, kTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	e := openKafkaEngine(t, balance.Options{}, nil)
	c, err := NewConsumer(e, KafkaConfig{Brokers: cluster.ListenAddrs(), Log: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.Run(ctx)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), kDLQ) {
		t.Fatalf("Run: %v, want an error naming %s", err, kDLQ)
	}
}

// TestKafkaDLQMessageBounds: a dead letter keeps the key and value as they
// were, cut only beyond what a broker accepts by default, and says so.
func TestKafkaDLQMessageBounds(t *testing.T) {
	e := &EventError{Code: CodeInvalidEvent, Reason: ReasonEventTooLarge, Message: "too large"}
	src := kafka.Message{Topic: kTopic, Partition: 3, Offset: 42, Key: []byte("c1"), Value: make([]byte, 2<<20)}
	m := dlqMessage(&src, e, kDLQ)
	if len(m.Value) != kafkaDLQValueBytesMax || string(m.Key) != "c1" {
		t.Fatalf("value %d bytes, key %q", len(m.Value), m.Key)
	}
	want := map[string]string{"error_code": "invalid_event", "error": "too large", "error_reason": "event_too_large",
		"source_topic": kTopic, "source_partition": "3", "source_offset": "42", "value_truncated": strconv.Itoa(2 << 20)}
	for k, w := range want {
		if got, ok := header(m, k); !ok || got != w {
			t.Errorf("header %s = %q, want %q", k, got, w)
		}
	}
	if _, ok := header(m, "key_truncated"); ok {
		t.Errorf("key_truncated set for a short key")
	}
	small := dlqMessage(&kafka.Message{Key: nil, Value: []byte("{")}, e, kDLQ)
	if string(small.Value) != "{" || small.Key != nil {
		t.Errorf("small message changed: %q %q", small.Key, small.Value)
	}
	if _, ok := header(small, "value_truncated"); ok {
		t.Errorf("value_truncated set for a short value")
	}
}

// TestKafkaRejectionsPublished: a valid event the engine refuses is not a
// dead letter, but its result is published (usage.rejected on the
// notifications topic, keyed by customer, stable id) before the round is
// committed; charged events publish no notice.
func TestKafkaRejectionsPublished(t *testing.T) {
	const notices = "meterd.notifications"
	cluster := newKafkaCluster(t, kfake.SeedTopics(1, notices))
	addrs := cluster.ListenAddrs()
	e := openKafkaEngine(t, balance.Options{}, map[string]int64{"rich": 1000, "poor": 1})
	produce(t, addrs,
		event("rich", imageEvt("r1", "rich")),
		event("poor", imageEvt("p1", "poor")),              // insufficient_funds
		event("ghost", imageEvt("g1", "ghost")),            // unknown_customer
		event("rich", `{"id":"bad","customer_id":"rich"}`), // invalid: the DLQ, not a notice
	)
	_, stop := runConsumer(t, e, addrs, KafkaConfig{NotificationsTopic: notices}, nil)
	waitCommitted(t, addrs, KafkaGroupDefault, 20*time.Second)
	stop()

	r := kafka.NewReader(kafka.ReaderConfig{Brokers: addrs, Topic: notices, Partition: 0, MinBytes: 1, MaxBytes: 1 << 20,
		MaxWait: 50 * time.Millisecond, StartOffset: kafka.FirstOffset})
	defer r.Close()
	got := map[string]string{}
	for len(got) < 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m, err := r.ReadMessage(ctx)
		cancel()
		if err != nil {
			t.Fatalf("notices: %d read: %v", len(got), err)
		}
		var n struct {
			ID         string `json:"id"`
			Type       string `json:"type"`
			CustomerID string `json:"customer_id"`
			EventID    string `json:"event_id"`
			Code       string `json:"code"`
		}
		if err := json.Unmarshal(m.Value, &n); err != nil {
			t.Fatal(err)
		}
		id, _ := header(m, "id")
		if n.Type != "usage.rejected" || id != n.ID || string(m.Key) != n.CustomerID || n.ID != "usage.rejected:"+n.CustomerID+"/"+n.EventID {
			t.Fatalf("notice %s: key %q headers %v", m.Value, m.Key, m.Headers)
		}
		got[n.EventID] = n.Code
	}
	if got["p1"] != "insufficient_funds" || got["g1"] != "unknown_customer" {
		t.Fatalf("notices %v, want p1 insufficient_funds and g1 unknown_customer", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if m, err := r.ReadMessage(ctx); err == nil {
		t.Fatalf("an extra notice: %s", m.Value)
	}
	if n := len(readDLQ(t, addrs, 1)); n != 1 {
		t.Fatalf("%d dead letters, want 1", n)
	}
}

// TestKafkaTLSAndSASL: against a broker that takes only TLS and
// SASL/SCRAM-SHA-256 logins, the consumer charges events; a wrong password
// is refused at once, naming the brokers, instead of retried forever.
func TestKafkaTLSAndSASL(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	files := serverCertFiles(t, ca, dir, 1)
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	cluster := newKafkaCluster(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "meterd", "s3cret-pw"),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	clientTLS := &tls.Config{RootCAs: pool}
	login := func(pass string) sasl.Mechanism {
		m, err := scram.Mechanism(scram.SHA256, "meterd", pass)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	addrs := cluster.ListenAddrs()
	w := &kafka.Writer{Addr: kafka.TCP(addrs...), Topic: kTopic, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: 5 * time.Millisecond, Transport: &kafka.Transport{TLS: clientTLS, SASL: login("s3cret-pw")}}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, event("s1", imageEvt("sec-1", "s1")), event("s1", imageEvt("sec-2", "s1"))); err != nil {
		t.Fatalf("produce over TLS and SASL: %v", err)
	}
	e := openKafkaEngine(t, balance.Options{}, map[string]int64{"s1": 1000})
	runConsumer(t, e, addrs, KafkaConfig{TLS: clientTLS, SASL: login("s3cret-pw")}, nil)
	deadline := time.Now().Add(20 * time.Second)
	for len(usageEvents(t, e, "s1")) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("events charged over TLS and SASL: %v", usageEvents(t, e, "s1"))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A wrong password: refused, naming the brokers, well before the
	// deadline.
	c, err := NewConsumer(e, KafkaConfig{Brokers: addrs, Log: quietLog, TLS: clientTLS, SASL: login("wrong")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	start := time.Now()
	err = c.Run(rctx)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), addrs[0]) || time.Since(start) > 10*time.Second {
		t.Fatalf("a wrong password: %v after %v; want a refusal naming %s", err, time.Since(start), addrs[0])
	}
}
