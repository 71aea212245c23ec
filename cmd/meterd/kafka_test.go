package main

// The Kafka door under kill -9, and its throughput and latency.
//
// TestKafkaExactlyOnceUnderKills runs the real meterd binary (crash_test.go's
// crashHarness) against a Kafka-protocol broker in THIS process (kfake), so
// that only meterd dies: a producer writes N events across 8 partitions while
// meterd is killed with SIGKILL six times at random points of the stream and
// restarted each time; at the end every event is charged exactly once (the
// ledger of every customer, its wallet, HTTP resends) and the consumer group
// has committed the end of every partition. Dead consumers are removed from
// the group after each kill (standing in for their session timeout); with
// METERD_KAFKA_REAL_SESSIONS=1 the last two are left to time out, which costs
// about a minute (see the comment at the kill loop).
//
// BenchmarkKafkaConsume measures the consumer in process (engine +
// ingest.Consumer, the code meterd runs) against the same in-process broker:
// events/s consumed and durably applied from a pre-filled topic, then the
// time from produce to durable under a steady producer.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/meterd/meterd/ingest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

const (
	kxTopic       = "usage-events"
	kxDLQ         = kxTopic + ".dlq"
	kxLedgerTopic = "meterd.ledger"
	kxGroup       = "meterd"
	kxPartitions  = 8

	// TestKafkaExactlyOnceUnderKills. METERD_KAFKA_EVENTS overrides the
	// event count. 1,000,000 (the figure) takes about 40 s on 2
	// cores (about 1.5 minutes with METERD_KAFKA_REAL_SESSIONS=1).
	kxEventsDefault  = 1_000_000
	kxCustomers      = 1000
	kxPrice          = 3          // CREDITS per image_generated
	kxTopUp          = 10_000_000 // CREDITS per customer: nothing is ever rejected
	kxKills          = 6
	kxRejoinMax      = 2 * time.Minute // the final meterd gets its partitions back within this
	kxKillAfterMin   = 1 * time.Second // the last kill, after the last restart
	kxKillAfterMax   = 4 * time.Second
	kxProduceBatch   = 10_000 // the producer's BatchSize; messages per WriteMessages call at most
	kxResendSample   = 1000
	kxCatchUpTimeout = 10 * time.Minute
	kxSetupPar       = 8
)

// kxPricing: the default pricing's three assets, and a flat price per image,
// so the expected charges are trivial.
var kxPricing = fmt.Sprintf(`{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6},{"code":"TOK","scale":0}],
 "prices":[{"event_type":"image_generated","account":"default:CREDITS","unit_price":"%d"}]}`, kxPrice)

// kxCluster starts a one-broker kfake cluster with meterd's topics, 8
// partitions each, in this process.
func kxCluster(tb testing.TB) []string {
	tb.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(kxPartitions, kxTopic, kxDLQ, kxLedgerTopic),
		kfake.BrokerConfigs(map[string]string{"log.retention.ms": "-1"}))
	if err != nil {
		tb.Fatalf("kfake: %v", err)
	}
	tb.Cleanup(c.Close)
	return c.ListenAddrs()
}

// kxOffsets returns, for each partition of topic, its high-water mark and
// the group's committed offset (-1: none). group "" skips the latter.
func kxOffsets(brokers []string, topic, group string) (hwm, committed []int64, err error) {
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second, Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reqs := make([]kafka.OffsetRequest, kxPartitions)
	parts := make([]int, kxPartitions)
	for p := range kxPartitions {
		reqs[p] = kafka.LastOffsetOf(p)
		parts[p] = p
	}
	lo, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, nil, err
	}
	hwm = make([]int64, kxPartitions)
	if len(lo.Topics[topic]) != kxPartitions {
		return nil, nil, fmt.Errorf("list offsets of %s: %d partitions, want %d", topic, len(lo.Topics[topic]), kxPartitions)
	}
	for _, po := range lo.Topics[topic] {
		if po.Error != nil {
			return nil, nil, fmt.Errorf("list offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		hwm[po.Partition] = po.LastOffset
	}
	if group == "" {
		return hwm, nil, nil
	}
	committed, err = kxCommitted(ctx, cl, topic, group, parts)
	return hwm, committed, err
}

func kxCommitted(ctx context.Context, cl *kafka.Client, topic, group string, parts []int) ([]int64, error) {
	of, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return nil, err
	}
	if of.Error != nil {
		return nil, of.Error
	}
	committed := make([]int64, kxPartitions)
	for p := range committed {
		committed[p] = -1
	}
	for _, po := range of.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("offset fetch %s/%d: %w", topic, po.Partition, po.Error)
		}
		committed[po.Partition] = po.CommittedOffset
	}
	return committed, nil
}

// kxGroupState describes the consumer group: its state and member count.
func kxGroupState(brokers []string, group string) (string, int, error) {
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second, Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := cl.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return "", 0, err
	}
	if len(res.Groups) != 1 {
		return "", 0, fmt.Errorf("describe group %s: %d groups in the answer", group, len(res.Groups))
	}
	g := res.Groups[0]
	if g.Error != nil {
		return "", 0, g.Error
	}
	return g.GroupState, len(g.Members), nil
}

// kxEvict removes every member of the group, as each would by leaving it:
// called when they are all dead, it stands in for their session timeouts.
func kxEvict(brokers []string, group string) (int, error) {
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second, Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := cl.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return 0, err
	}
	var members []kafka.LeaveGroupRequestMember
	for _, g := range res.Groups {
		if g.Error != nil {
			return 0, g.Error
		}
		for _, m := range g.Members {
			members = append(members, kafka.LeaveGroupRequestMember{ID: m.MemberID})
		}
	}
	if len(members) == 0 {
		return 0, nil
	}
	lg, err := cl.LeaveGroup(ctx, &kafka.LeaveGroupRequest{GroupID: group, Members: members})
	if err != nil {
		return 0, err
	}
	if lg.Error != nil {
		return 0, lg.Error
	}
	for _, m := range lg.Members {
		if m.Error != nil {
			return 0, fmt.Errorf("member %s: %w", m.ID, m.Error)
		}
	}
	state, left, err := kxGroupState(brokers, group)
	if err != nil || left != 0 {
		return 0, fmt.Errorf("after LeaveGroup of %d members: group %q with %d members (%v)", len(members), state, left, err)
	}
	return len(members), nil
}

// kxCaughtUp reports whether committed reaches hwm in every partition (an
// empty partition counts with or without a commit).
func kxCaughtUp(hwm, committed []int64) bool {
	if len(hwm) != kxPartitions || len(committed) != kxPartitions {
		return false
	}
	for p := range hwm {
		if committed[p] != hwm[p] && (hwm[p] != 0 || committed[p] != -1) {
			return false
		}
	}
	return true
}

func kxSum(xs []int64) int64 {
	var s int64
	for _, x := range xs {
		s += max(x, 0)
	}
	return s
}

// kxEnvInt reads a positive integer from the environment, or returns def.
func kxEnvInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// kxMetric reads one sample of meterd's /metrics, 0 when absent.
func kxMetric(h *crashHarness, name string) float64 {
	status, body, err := h.do("GET", "/metrics", nil)
	if err != nil || status != 200 {
		return 0
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// kxEventValue is the message value of event i: a unique id, the customer,
// a flat-priced type, and a fixed occurred_at (so that it can be resent
// byte for byte over HTTP).
func kxEventValue(i int, customer int, occurredAt string) []byte {
	return fmt.Appendf(nil, `{"id":"kx-%07d","customer_id":"c%d","event_type":"image_generated","occurred_at":%q,"data":{"n":%d}}`,
		i, customer, occurredAt, i)
}

// kxWriteAll writes msgs, retrying the failed ones until ctx ends. A retry
// may write a message twice (an at-least-once producer): meterd must still
// charge it once.
func kxWriteAll(ctx context.Context, w *kafka.Writer, msgs []kafka.Message) (retries int, err error) {
	for {
		err := w.WriteMessages(ctx, msgs...)
		if err == nil {
			return retries, nil
		}
		if ctx.Err() != nil {
			return retries, fmt.Errorf("%w (after %d retries; last error %v)", ctx.Err(), retries, err)
		}
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) && len(werrs) == len(msgs) {
			failed := make([]kafka.Message, 0, werrs.Count())
			for j, e := range werrs {
				if e != nil {
					failed = append(failed, msgs[j])
				}
			}
			msgs = failed
		}
		retries++
		time.Sleep(50 * time.Millisecond)
	}
}

func TestKafkaExactlyOnceUnderKills(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meterd and kills it under a Kafka load: skipped with -short")
	}
	testStart := time.Now()
	n := kxEnvInt(t, "METERD_KAFKA_EVENTS", kxEventsDefault)
	seed := uint64(time.Now().UnixNano())
	t.Logf("%d events, %d customers, seed %d", n, kxCustomers, seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	brokers := kxCluster(t)
	h := &crashHarness{t: t, bin: buildMeterd(t), dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--kafka-brokers", strings.Join(brokers, ",")}}
	t.Cleanup(func() {
		if h.proc != nil && h.proc.running() {
			h.proc.cmd.Process.Kill()
			<-h.proc.done
		}
	})
	buildTime := time.Since(testStart)

	// Set-up over HTTP: pricing, customers, one top-up each (its bucket is
	// the one every charge draws from).
	h.start()
	h.mustDo("PUT", "/v1/pricing", []byte(kxPricing), 200)
	buckets := make([]string, kxCustomers)
	{
		var wg sync.WaitGroup
		var failed atomic.Value
		for w := range kxSetupPar {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for c := w; c < kxCustomers; c += kxSetupPar {
					id := "c" + strconv.Itoa(c)
					if st, b, err := h.do("PUT", "/v1/customers/"+id, []byte(`{"insufficient_funds":"reject"}`)); err != nil || st != 201 {
						failed.Store(fmt.Sprintf("PUT customer %s: %d %v %s", id, st, err, b))
						return
					}
					st, b, err := h.do("POST", "/v1/customers/"+id+"/topups",
						fmt.Appendf(nil, `{"id":"seed","asset":"CREDITS","amount":"%d"}`, kxTopUp))
					var res struct {
						BucketID string `json:"bucket_id"`
					}
					if err != nil || st != 201 || json.Unmarshal(b, &res) != nil || res.BucketID == "" {
						failed.Store(fmt.Sprintf("top-up of %s: %d %v %s", id, st, err, b))
						return
					}
					buckets[c] = res.BucketID
				}
			}()
		}
		wg.Wait()
		if f := failed.Load(); f != nil {
			t.Fatal(f)
		}
	}
	setupTime := time.Since(testStart) - buildTime

	// Every event's customer, chosen before producing.
	cust := make([]uint16, n)
	perCustomer := make([]int, kxCustomers)
	for i := range cust {
		c := rng.IntN(kxCustomers)
		cust[i] = uint16(c)
		perCustomer[c]++
	}
	occurredAt := time.Now().UTC().Format(time.RFC3339Nano)

	// The producer, as fast as it can: it stays ahead of meterd.
	var produced atomic.Int64
	var produceRetries int
	produceErr := make(chan error, 1)
	produceDone := make(chan struct{})
	produceStart := time.Now()
	var produceTime time.Duration
	ctx, cancel := context.WithTimeout(context.Background(), kxCatchUpTimeout)
	defer cancel()
	go func() {
		defer close(produceDone)
		tr := &kafka.Transport{}
		defer tr.CloseIdleConnections()
		w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: kxTopic, Transport: tr,
			Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
			BatchSize: kxProduceBatch, BatchBytes: 4 << 20, BatchTimeout: 2 * time.Millisecond, MaxAttempts: 5}
		defer w.Close()
		msgs := make([]kafka.Message, 0, kxProduceBatch)
		for i := 0; i < n; {
			msgs = msgs[:0]
			for ; i < n && len(msgs) < kxProduceBatch; i++ {
				c := int(cust[i])
				msgs = append(msgs, kafka.Message{Key: []byte("c" + strconv.Itoa(c)), Value: kxEventValue(i, c, occurredAt)})
			}
			r, err := kxWriteAll(ctx, w, msgs)
			produceRetries += r
			if err != nil {
				produceErr <- err
				return
			}
			produced.Add(int64(len(msgs)))
		}
		produceTime = time.Since(produceStart)
	}()

	// kill -9, kxKills times. Kills 1 to kxKills-1 land at random points
	// of the stream, while meterd works through a backlog: each waits until
	// the group has committed a random target (the k-th kill between 20%
	// and 80% of the k-th fifth of the events), then 0-100 ms more, so
	// that meterd is gathering, applying or committing its next round.
	// The last kill lands 1-4 s after the restart, during the wait
	// described next.
	//
	// A killed consumer does not leave its group: the broker holds its
	// partitions until its session times out (meterd's SessionTimeout, 30
	// s), and the next meterd's JoinGroup waits that long before it gets
	// any partition. After each of the first kxKills-2 kills the test
	// removes the dead member at once (a LeaveGroup on its behalf, standing
	// in for the session timeout) so that every restart consumes at once.
	// The last two kills take the real path: kill kxKills-1 is not cleaned
	// up, so the next meterd waits in JoinGroup, and kill kxKills lands
	// during that wait; the final meterd waits out both dead sessions, then
	// consumes the rest of the stream.
	kills := 0
	var duplicates, charged float64
	var stallStart time.Time
	// METERD_KAFKA_REAL_SESSIONS=1 leaves the last two dead members to their
	// session timeout instead of removing them. It is off by default: against
	// the in-process test broker, a dead member sometimes stays in a stable
	// group and holds its partitions (seen twice in CI rehearsals), which
	// says more about the broker than about meterd.
	realSessions := os.Getenv("METERD_KAFKA_REAL_SESSIONS") != ""
	for kills < kxKills {
		var wait time.Duration
		var target int64
		if kills < kxKills-1 {
			target = int64(float64(n) * (float64(kills) + 0.2 + 0.6*rng.Float64()) / float64(kxKills-1))
			for {
				_, committed, err := kxOffsets(brokers, kxTopic, kxGroup)
				if err == nil && kxSum(committed) >= target {
					break
				}
				select {
				case err := <-produceErr:
					t.Fatalf("producer: %v", err)
				case <-ctx.Done():
					t.Fatalf("kill %d: the group did not commit %d events in %v (%d now, %v)", kills+1, target, kxCatchUpTimeout, kxSum(committed), err)
				case <-time.After(10 * time.Millisecond):
				}
				if !h.proc.running() {
					t.Fatalf("meterd exited by itself (%v) before kill %d; its output:\n%s", h.proc.err, kills+1, h.proc.log.tail())
				}
			}
			wait = time.Duration(rng.Int64N(int64(100 * time.Millisecond)))
		} else {
			wait = kxKillAfterMin + time.Duration(rng.Int64N(int64(kxKillAfterMax-kxKillAfterMin)))
		}
		select {
		case err := <-produceErr:
			t.Fatalf("producer: %v", err)
		case <-time.After(wait):
		}
		if !h.proc.running() {
			t.Fatalf("meterd exited by itself (%v) before kill %d; its output:\n%s", h.proc.err, kills+1, h.proc.log.tail())
		}
		dup := kxMetric(h, `meterd_kafka_messages_total{outcome="duplicate"}`)
		chg := kxMetric(h, `meterd_kafka_messages_total{outcome="charged"}`)
		duplicates += dup
		charged += chg
		h.kill()
		kills++
		hwm, committed, err := kxOffsets(brokers, kxTopic, kxGroup)
		if err != nil {
			t.Fatalf("offsets after kill %d: %v", kills, err)
		}
		how := "dead member removed"
		if kills <= kxKills-2 || !realSessions {
			if _, err := kxEvict(brokers, kxGroup); err != nil {
				t.Fatalf("removing the dead member after kill %d: %v", kills, err)
			}
		} else {
			how = "dead member left to its session timeout"
		}
		when := fmt.Sprintf("%v after %d committed", wait.Round(time.Millisecond), target)
		if target == 0 {
			when = fmt.Sprintf("%v after the restart", wait.Round(time.Millisecond))
		}
		t.Logf("kill %d at %v (%s; this run had counted %.0f charged, %.0f duplicate): %d produced, %d in the topic, %d committed, backlog %d; %s",
			kills, time.Since(produceStart).Round(time.Millisecond), when, chg, dup,
			produced.Load(), kxSum(hwm), kxSum(committed), kxSum(hwm)-kxSum(committed), how)
		h.start()
		if kills == kxKills-1 {
			stallStart = time.Now()
		}
	}
	if !realSessions {
		stallStart = time.Now()
	}

	// The final meterd joins once the dead members' sessions are over (or
	// at once, when the test removed them).
	for {
		state, members, err := kxGroupState(brokers, kxGroup)
		if err == nil && state == "Stable" && members == 1 {
			break
		}
		if !h.proc.running() {
			t.Fatalf("meterd exited by itself (%v); its output:\n%s", h.proc.err, h.proc.log.tail())
		}
		if time.Since(stallStart) > kxRejoinMax {
			t.Fatalf("the group is %q with %d members (%v) %v after the first restart not cleaned up: meterd does not get its partitions back",
				state, members, err, kxRejoinMax)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stall := time.Since(stallStart)
	if realSessions {
		t.Logf("the last two restarts, dead members left to their session timeout: meterd got its partitions back %v after the first of them",
			stall.Round(time.Millisecond))
	}

	select {
	case <-produceDone:
	case <-ctx.Done():
	}
	select {
	case err := <-produceErr:
		t.Fatalf("producer: %v", err)
	default:
	}
	if produced.Load() != int64(n) {
		t.Fatalf("produced %d events, want %d", produced.Load(), n)
	}
	t.Logf("producer done: %d events in %v (%d retried writes); %d kills", n, produceTime.Round(time.Millisecond), produceRetries, kills)

	// meterd runs, not killed any more, until the group has committed the
	// end of every partition.
	catchUpStart := time.Now()
	var hwm, committed []int64
	for {
		var err error
		hwm, committed, err = kxOffsets(brokers, kxTopic, kxGroup)
		if err == nil && kxCaughtUp(hwm, committed) {
			break
		}
		if !h.proc.running() {
			t.Fatalf("meterd exited by itself (%v); its output:\n%s", h.proc.err, h.proc.log.tail())
		}
		if ctx.Err() != nil {
			t.Fatalf("after %v: committed %v, high-water marks %v (%v)", kxCatchUpTimeout, committed, hwm, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	duplicates += kxMetric(h, `meterd_kafka_messages_total{outcome="duplicate"}`)
	charged += kxMetric(h, `meterd_kafka_messages_total{outcome="charged"}`)
	consumedAt := time.Now()
	t.Logf("caught up %v after the final meterd got its partitions (%v after the producer started): high-water marks %v (sum %d), committed %v",
		consumedAt.Sub(catchUpStart).Round(time.Millisecond), consumedAt.Sub(produceStart).Round(time.Millisecond), hwm, kxSum(hwm), committed)
	t.Logf("meterd's counters (summed over its runs, each read just before its kill): %.0f charged, %.0f duplicate (redelivered after a kill)",
		charged, duplicates)
	for p, m := range hwm {
		if m == 0 {
			t.Errorf("partition %d is empty: the load should cover all %d partitions", p, kxPartitions)
		}
	}
	if kxSum(hwm) < int64(n) {
		t.Errorf("the topic holds %d messages, fewer than the %d produced", kxSum(hwm), n)
	}
	if dlq, _, err := kxOffsets(brokers, kxDLQ, ""); err != nil || kxSum(dlq) != 0 {
		t.Errorf("DLQ %s: high-water marks %v (%v), want empty: every event is valid", kxDLQ, dlq, err)
	}

	// Every customer's ledger: exactly one usage entry of 3 credits per
	// event produced for it (checkCustomer: none missing, none twice, none
	// foreign; balance_after chains; the ledger sums to available), and
	// available = top-up - events * price.
	errs := &errLimiter{t: t}
	byCustomer := make([]map[string]*crashEvent, kxCustomers)
	charges := make([][]crashCharge, kxCustomers)
	for c := range kxCustomers {
		byCustomer[c] = make(map[string]*crashEvent, perCustomer[c])
		charges[c] = []crashCharge{{Account: "default:CREDITS", Amount: strconv.Itoa(kxPrice),
			Buckets: []crashPart{{BucketID: &buckets[c], Amount: strconv.Itoa(kxPrice)}}}}
	}
	all := make([]*crashEvent, n)
	for i := range n {
		c := int(cust[i])
		e := &crashEvent{id: fmt.Sprintf("kx-%07d", i), customer: "c" + strconv.Itoa(c), final: "applied", finalCharges: charges[c]}
		all[i] = e
		byCustomer[c][e.id] = e
	}
	seeds := []crashSeed{{kind: "topup", id: "seed", asset: "CREDITS", amount: strconv.Itoa(kxTopUp)}}
	for c := range kxCustomers {
		id := "c" + strconv.Itoa(c)
		avail := h.checkCustomer(errs, id, seeds, byCustomer[c])
		want := strconv.Itoa(kxTopUp - perCustomer[c]*kxPrice)
		if got := avail["default:CREDITS"]; got != want {
			errs.Errorf("customer %s: %d events of %d credits on a top-up of %d: available %s, want %s",
				id, perCustomer[c], kxPrice, kxTopUp, got, want)
		}
		if len(avail) != 1 {
			errs.Errorf("customer %s: accounts %v, want only default:CREDITS", id, avail)
		}
		if errs.count() > 0 {
			t.FailNow()
		}
	}
	ledgerTime := time.Since(consumedAt)
	t.Logf("ledgers of %d customers checked: %d usage entries, one per produced event, %d credits each", kxCustomers, n, kxPrice)

	// A sample of the produced events resent over HTTP: all duplicates of
	// the charge made from Kafka.
	sample := make([]*crashEvent, 0, kxResendSample)
	for _, i := range rng.Perm(n)[:min(n, kxResendSample)] {
		c := int(cust[i])
		e := all[i]
		e.raw = kxEventValue(i, c, occurredAt)
		sample = append(sample, e)
	}
	for len(sample) > 0 {
		part := sample[:min(len(sample), crashResendBatch)]
		sample = sample[len(part):]
		results, status, body, err := postEvents(h.client, h.url("/v1/events"), part)
		if err != nil || status != 200 {
			t.Fatalf("resending %d produced events over HTTP: status %d, %v: %s", len(part), status, err, body)
		}
		for i, r := range results {
			e := part[i]
			if r.Status != "duplicate" || chargesKey(r.Charges) != chargesKey(e.finalCharges) {
				errs.Errorf("event %s, produced to Kafka, resent over HTTP: status %s %s, charges %s; want duplicate, charges %s",
					e.id, r.Status, r.code(), chargesKey(r.Charges), chargesKey(e.finalCharges))
			}
		}
	}
	if errs.count() > 0 {
		t.FailNow()
	}
	stopStart := time.Now()
	h.stop()
	t.Logf("runtime %v: build %v, set-up %v, produce+kills+catch-up %v (of which %v waiting for dead sessions), ledger checks %v, SIGTERM to exit %v; %d events, %d kill -9s, %d starts",
		time.Since(testStart).Round(time.Millisecond), buildTime.Round(time.Millisecond), setupTime.Round(time.Millisecond),
		consumedAt.Sub(produceStart).Round(time.Millisecond), stall.Round(time.Millisecond), ledgerTime.Round(time.Millisecond),
		time.Since(stopStart).Round(time.Millisecond), n, kills, h.starts)
}

// ---------------------------------------------------------------------------
// BenchmarkKafkaConsume

const (
	kxBenchEventsDefault = 500_000
	kxBenchCustomers     = 10_000
	kxBenchRateDefault   = 20_000 // events/s of the steady phase
	kxBenchSteady        = 10 * time.Second
	kxBenchPoll          = 2 * time.Millisecond // committed-offset polling in the latency phase
)

// kxBenchPricing is BenchmarkPath's (ingest/path_bench_test.go), so that the
// Kafka door compares with the in-process HTTP-less path.
const kxBenchPricing = `{"assets":[{"code":"CREDITS","scale":0},{"code":"USD","scale":6}],
 "prices":[{"event_type":"message_completed","account":"default:USD","dimensions":["model"],
   "components":[
     {"field":"input_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"2.00","*":"1.25"}},
     {"field":"output_tokens","package_size":"1000000","unit_price":{"gpt-4-1":"8.00","*":"5.00"}}]}]}`

func kxBenchMessage(id int64, occurredAt string) kafka.Message {
	c := "bench-" + strconv.FormatInt(id%kxBenchCustomers, 10)
	v := fmt.Appendf(nil, `{"id":"evt_%d","customer_id":%q,"event_type":"message_completed","occurred_at":%q,"data":{"model":"gpt-4-1","input_tokens":%d,"output_tokens":%d}}`,
		id, c, occurredAt, 1000+id%5000, 200+id%3000)
	return kafka.Message{Key: []byte(c), Value: v}
}

// kxBenchEngine opens an engine with meterd's default settings (LoadConfig
// with no flags) on dir, and the bench customers with a large USD top-up.
func kxBenchEngine(b *testing.B, dir string) (*balance.Engine, Config) {
	b.Helper()
	cfg, err := LoadConfig([]string{"--data-dir", dir}, func(string) string { return "" }, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	eng, err := balance.Open(balance.Options{Dir: cfg.DataDir, Shards: cfg.Shards, QueueMax: cfg.ShardQueueMax,
		CommitEventsMax: cfg.CommitEventsMax, IdemCacheMax: cfg.IdemCacheMax, CacheBytes: int64(cfg.CacheBytes),
		DedupWindow: cfg.DedupWindow, ReversalWindow: cfg.ReversalWindow, DefaultPricing: []byte(kxBenchPricing),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < kxBenchCustomers; i += 64 {
				id := "bench-" + strconv.Itoa(i)
				if _, err := eng.PutCustomer(id, wallet.Settings{Status: wallet.StatusActive, Policy: wallet.PolicyReject}); err != nil {
					failed.Store(err)
					return
				}
				cmd := &wallet.TopUpCmd{ID: "t", Account: "default", Asset: "USD", Scale: 6, Amount: 1_000_000_000_000_000, Source: "bench"}
				if _, err := eng.TopUp(id, cmd, [16]byte{1}); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		eng.Close()
		b.Fatal(err)
	}
	return eng, cfg
}

func kxQuantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func kxCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkKafkaConsume: see the file comment. One iteration is the whole
// measurement (run it with -benchtime 1x).
//
// Phase 1, throughput: M events (METERD_BENCH_EVENTS, default 500,000) are
// produced to the 8 partitions before timing; the clock runs from the
// consumer's start (group join included) until the group's committed
// offsets reach the high-water mark of every partition.
//
// Phase 2, produce-to-durable latency: a producer sends METERD_BENCH_RATE
// events/s (default 20,000) for 10 s, in 1 ms ticks; each message's send
// time is taken just before WriteMessages, and its partition and offset come
// back from the producer's acknowledgement. A poller fetches the group's
// committed offsets every 2 ms; a message is durable no later than the first
// poll that sees its partition committed past its offset (the consumer
// commits only after the engine made the round durable). Latency = that
// poll's time - the send time: an upper bound, by at most one poll interval
// plus one offset-fetch round trip, of the true produce-to-durable time.
func BenchmarkKafkaConsume(b *testing.B) {
	m := kxEnvInt(b, "METERD_BENCH_EVENTS", kxBenchEventsDefault)
	rate := kxEnvInt(b, "METERD_BENCH_RATE", kxBenchRateDefault)
	for it := 0; it < b.N; it++ {
		b.StopTimer()
		brokers := kxCluster(b)
		eng, cfg := kxBenchEngine(b, filepath.Join(b.TempDir(), "data"))
		occurredAt := time.Now().UTC().Format(time.RFC3339Nano)

		// Pre-produce M events, 4 writers in parallel.
		preStart := time.Now()
		var seq atomic.Int64
		var wg sync.WaitGroup
		var failed atomic.Value
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tr := &kafka.Transport{}
				defer tr.CloseIdleConnections()
				w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: kxTopic, Transport: tr, Balancer: &kafka.Hash{},
					RequiredAcks: kafka.RequireAll, BatchSize: 10_000, BatchBytes: 4 << 20, BatchTimeout: 2 * time.Millisecond}
				defer w.Close()
				msgs := make([]kafka.Message, 0, 10_000)
				for {
					msgs = msgs[:0]
					for len(msgs) < 10_000 {
						id := seq.Add(1)
						if id > int64(m) {
							break
						}
						msgs = append(msgs, kxBenchMessage(id, occurredAt))
					}
					if len(msgs) == 0 {
						return
					}
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					_, err := kxWriteAll(ctx, w, msgs)
					cancel()
					if err != nil {
						failed.Store(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if err := failed.Load(); err != nil {
			b.Fatalf("pre-producing: %v", err)
		}
		hwm, _, err := kxOffsets(brokers, kxTopic, "")
		if err != nil || kxSum(hwm) != int64(m) {
			b.Fatalf("after pre-producing %d events: high-water marks %v (%v)", m, hwm, err)
		}
		b.Logf("pre-produced %d events in %v; high-water marks %v", m, time.Since(preStart).Round(time.Millisecond), hwm)

		lim := ingest.DefaultLimits()
		lim.BodyBytesMax, lim.EventsMax, lim.PastWindowMax = cfg.BodyBytesMax, cfg.EventsPerRequestMax, cfg.DedupWindow
		cons, err := ingest.NewConsumer(eng, ingest.KafkaConfig{Brokers: brokers, Topic: kxTopic, GroupID: kxGroup,
			Limits: lim, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		runCtx, stopRun := context.WithCancel(context.Background())
		ran := make(chan error, 1)

		// Phase 1: throughput.
		tr := &kafka.Transport{}
		cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second, Transport: tr}
		parts := []int{0, 1, 2, 3, 4, 5, 6, 7}
		cpu0 := kxCPU()
		b.StartTimer()
		start := time.Now()
		go func() { ran <- cons.Run(runCtx) }()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			committed, err := kxCommitted(ctx, cl, kxTopic, kxGroup, parts)
			cancel()
			if err == nil && kxCaughtUp(hwm, committed) {
				break
			}
			if time.Since(start) > 10*time.Minute {
				b.Fatalf("not caught up after 10 minutes: committed %v, high-water marks %v (%v)", committed, hwm, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		cpu := kxCPU() - cpu0
		eps := float64(m) / elapsed.Seconds()
		b.ReportMetric(eps, "events/s")
		b.ReportMetric(cpu.Seconds()/float64(m)*100_000, "cpu-s/100k-events")
		b.Logf("phase 1: %d events consumed and durable in %v: %.0f events/s; %.2f CPU-s per 100k events (this process: consumer, engine and broker)",
			m, elapsed.Round(time.Millisecond), eps, cpu.Seconds()/float64(m)*100_000)

		// Phase 2: produce-to-durable latency under a steady producer.
		type sent struct {
			partition int
			offset    int64
			at, acked time.Time
		}
		var mu sync.Mutex
		var sents []sent
		var ackErrs int
		w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: kxTopic, Transport: &kafka.Transport{}, Balancer: &kafka.Hash{},
			RequiredAcks: kafka.RequireAll, Async: true, BatchSize: 1000, BatchTimeout: time.Millisecond,
			Completion: func(msgs []kafka.Message, err error) {
				now := time.Now()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					ackErrs += len(msgs)
					return
				}
				for _, msg := range msgs {
					sents = append(sents, sent{msg.Partition, msg.Offset, msg.Time, now})
				}
			}}
		type sample struct {
			at        time.Time
			committed []int64
		}
		var samples []sample
		pollStop := make(chan struct{})
		pollDone := make(chan struct{})
		go func() {
			defer close(pollDone)
			t := time.NewTicker(kxBenchPoll)
			defer t.Stop()
			for {
				select {
				case <-pollStop:
					return
				case <-t.C:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				committed, err := kxCommitted(ctx, cl, kxTopic, kxGroup, parts)
				cancel()
				if err == nil {
					mu.Lock()
					samples = append(samples, sample{time.Now(), committed})
					mu.Unlock()
				}
			}
		}()
		total := rate * int(kxBenchSteady/time.Second)
		steadyStart := time.Now()
		next := int64(m)
		for i := 0; i < total; {
			// Catch up to the schedule: event i is due at steadyStart + i/rate.
			due := int(time.Since(steadyStart).Seconds()*float64(rate)) + 1
			if due > total {
				due = total
			}
			if due > i {
				now := time.Now()
				batch := make([]kafka.Message, 0, due-i)
				for ; i < due; i++ {
					next++
					msg := kxBenchMessage(next, occurredAt)
					msg.Time = now
					batch = append(batch, msg)
				}
				if err := w.WriteMessages(context.Background(), batch...); err != nil {
					b.Fatalf("steady producer: %v", err)
				}
			}
			time.Sleep(time.Millisecond)
		}
		sendTime := time.Since(steadyStart)
		w.Close() // waits for the acknowledgements (Completion)
		w.Transport.(*kafka.Transport).CloseIdleConnections()
		mu.Lock()
		nSent := len(sents)
		mu.Unlock()
		if ackErrs > 0 || nSent != total {
			b.Fatalf("steady producer: %d acknowledged, %d failed, want %d", nSent, ackErrs, total)
		}
		hwm2, _, err := kxOffsets(brokers, kxTopic, "")
		if err != nil {
			b.Fatal(err)
		}
		for {
			mu.Lock()
			last := sample{}
			if len(samples) > 0 {
				last = samples[len(samples)-1]
			}
			mu.Unlock()
			if last.committed != nil && kxCaughtUp(hwm2, last.committed) {
				break
			}
			if time.Since(steadyStart) > 5*time.Minute {
				b.Fatalf("steady phase not durable after 5 minutes: committed %v, high-water marks %v", last.committed, hwm2)
			}
			time.Sleep(10 * time.Millisecond)
		}
		close(pollStop)
		<-pollDone
		stopRun()
		if err := <-ran; !errors.Is(err, context.Canceled) {
			b.Errorf("consumer Run returned %v", err)
		}
		cons.Close()
		tr.CloseIdleConnections()

		// Each message's durable time: the first sample whose committed
		// offset of its partition is past the message's offset.
		lat := make([]time.Duration, 0, len(sents))
		ack := make([]time.Duration, 0, len(sents))
		for _, s := range sents {
			k, _ := slices.BinarySearchFunc(samples, s.offset, func(sm sample, off int64) int {
				if sm.committed[s.partition] > off {
					return 1
				}
				return -1
			})
			if k == len(samples) {
				b.Fatalf("message %d/%d never seen committed", s.partition, s.offset)
			}
			lat = append(lat, samples[k].at.Sub(s.at))
			ack = append(ack, s.acked.Sub(s.at))
		}
		slices.Sort(lat)
		slices.Sort(ack)
		p50, p99 := kxQuantile(lat, 0.50), kxQuantile(lat, 0.99)
		b.ReportMetric(float64(p50)/1e6, "p50-ms")
		b.ReportMetric(float64(p99)/1e6, "p99-ms")
		b.Logf("phase 2: %d events at %d events/s (sent in %v), %d offset polls: produce to durable p50 %v p90 %v p99 %v max %v; producer ack p50 %v p99 %v",
			len(lat), rate, sendTime.Round(time.Millisecond), len(samples), p50.Round(10*time.Microsecond),
			kxQuantile(lat, 0.90).Round(10*time.Microsecond), p99.Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond),
			kxQuantile(ack, 0.50).Round(10*time.Microsecond), kxQuantile(ack, 0.99).Round(10*time.Microsecond))
		if err := eng.Close(); err != nil {
			b.Errorf("engine close: %v", err)
		}
	}
}
