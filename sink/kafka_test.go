package sink

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterd/meterd/meter"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const (
	testLedgerTopic     = "meterd.ledger"
	testPartitions      = 8
	testNotesTopic      = "meterd.notifications"
	testNotesPartitions = 5 // not testPartitions: each topic is planned with its own count
)

// newKafka starts an in-process Kafka-protocol broker with the ledger and
// the notifications topics.
func newKafka(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(testPartitions, testLedgerTopic),
		kfake.SeedTopics(testNotesPartitions, testNotesTopic)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newPublisher(t testing.TB, cfg KafkaPublisherConfig) *KafkaPublisher {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = testLog
	}
	p, err := NewKafkaPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// testEntry returns a varied ledger row of customer c with sequence seq.
func testEntry(c string, seq, outbox uint64) LedgerRow {
	types := []string{"usage", "topup", "grant", "expiry", "hold", "hold_release", "adjustment"}
	kinds := []string{"promotional", "plan", "recharge", ""}
	at := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).Add(time.Duration(seq)*time.Second + 123456789)
	r := LedgerRow{
		OutboxSeq: outbox, EntryID: c + "/" + strconv.FormatUint(seq, 10), Seq: seq, CustomerID: c,
		Account: "default:CREDITS", Asset: "CREDITS", Type: types[seq%uint64(len(types))], Scale: 6,
		Amount: -int64(seq)*1_234_567 - 14_566_678, BalanceAfter: 1_000_000_000 - int64(seq)*7,
		BucketKind: kinds[seq%uint64(len(kinds))], OccurredAt: at.Add(-time.Second).UnixNano(),
		RecordedAt: at.UnixNano(), PricingVersion: uint32(seq % 3),
	}
	if r.BucketKind != "" {
		r.BucketID = "b-" + c
	}
	if seq%2 == 0 {
		r.EventID = "ev-" + r.EntryID
		r.Metadata = `{"n":` + strconv.FormatUint(seq, 10) + `}`
	}
	if seq%5 == 0 {
		r.Reference = "ref-" + c
	}
	return r
}

// testBatch returns perCustomer entries of each customer from seq first on,
// interleaved across customers as the outbox would hold them, one outbox
// record per round of customers.
func testBatch(customers []string, first, perCustomer uint64) *Batch {
	b := &Batch{From: first, To: first + perCustomer - 1}
	for seq := first; seq < first+perCustomer; seq++ {
		for _, c := range customers {
			b.Ledger = append(b.Ledger, testEntry(c, seq, seq))
		}
	}
	// Usage rows are not the ledger topic's: they must not be published.
	b.Usage = append(b.Usage, UsageRow{OutboxSeq: first, EventID: "u1", CustomerID: customers[0]})
	return b
}

// addNotes appends perCustomer notifications of each customer from seq first
// on to b, interleaved across customers as the outbox would hold them (see
// testNote), and returns b.
func addNotes(b *Batch, customers []string, first, perCustomer uint64) *Batch {
	types := []string{"balance.low", "auto_reload.requested", "balance.depleted"}
	for seq := first; seq < first+perCustomer; seq++ {
		for _, c := range customers {
			b.Notes = append(b.Notes, testNote(c, seq, seq, types[seq%uint64(len(types))]))
		}
	}
	return b
}

// expectedEntry is the value's JSON for r, built independently of the
// encoder, decoded into a generic map.
func expectedEntry(r *LedgerRow) map[string]any {
	opt := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	ts := func(ns int64) any {
		if ns == 0 {
			return nil
		}
		return time.Unix(0, ns).UTC().Format("2006-01-02T15:04:05.000Z")
	}
	var pv any
	if r.PricingVersion != 0 {
		pv = json.Number(strconv.FormatUint(uint64(r.PricingVersion), 10))
	}
	md := map[string]any{}
	if r.Metadata != "" {
		md = decodeJSON(nil, []byte(r.Metadata))
	}
	m := map[string]any{
		"id": r.EntryID, "customer_id": r.CustomerID, "seq": json.Number(strconv.FormatUint(r.Seq, 10)),
		"type": r.Type, "account": r.Account,
		"amount": meter.FormatUnits(r.Amount, r.Scale), "balance_after": meter.FormatUnits(r.BalanceAfter, r.Scale),
		"bucket_id": opt(r.BucketID), "bucket_kind": opt(r.BucketKind), "event_id": opt(r.EventID),
		"reference": opt(r.Reference), "occurred_at": ts(r.OccurredAt), "recorded_at": ts(r.RecordedAt),
		"pricing_version": pv, "metadata": md, "source": opt(r.Source), "description": opt(r.Description),
	}
	if r.Currency != "" || r.Offer != "" {
		m["price"], m["offer_id"] = nil, opt(r.Offer)
		if r.Currency != "" {
			m["price"] = map[string]any{"amount": r.Price, "currency": r.Currency}
		}
	}
	return m
}

func decodeJSON(t testing.TB, b []byte) map[string]any {
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		if t == nil {
			panic(err)
		}
		t.Fatalf("value %s: %v", b, err)
	}
	return m
}

// readTopic reads every message of the ledger topic, per partition in offset
// order.
func readTopic(t testing.TB, addr string) [][]kafka.Message {
	t.Helper()
	return readTopicOf(t, addr, testLedgerTopic, testPartitions)
}

// readNotes reads every message of the notifications topic, per partition
// in offset order.
func readNotes(t testing.TB, addr string) [][]kafka.Message {
	t.Helper()
	return readTopicOf(t, addr, testNotesTopic, testNotesPartitions)
}

func readTopicOf(t testing.TB, addr, topic string, partitions int) [][]kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(addr)}
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for p := range partitions {
		req.Topics[topic] = append(req.Topics[topic], kafka.LastOffsetOf(p))
	}
	res, err := cl.ListOffsets(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]kafka.Message, partitions)
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			t.Fatal(po.Error)
		}
		if po.LastOffset == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic,
			Partition: po.Partition, MaxWait: 50 * time.Millisecond})
		for int64(len(out[po.Partition])) < po.LastOffset {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("partition %d: %v", po.Partition, err)
			}
			out[po.Partition] = append(out[po.Partition], m)
		}
		r.Close()
	}
	return out
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// checkFirstOccurrences checks that in every partition the first occurrence
// of each id comes in seq order per customer, and that every customer's
// messages stay in one partition. It returns how often each id occurs. Ids
// are "customer/seq" (entries) or "customer/n<seq>" (notifications).
func checkFirstOccurrences(t testing.TB, parts [][]kafka.Message) map[string]int {
	t.Helper()
	seen := map[string]int{}
	partOf := map[string]int{}
	lastSeq := map[string]uint64{}
	for p, msgs := range parts {
		for _, m := range msgs {
			c := string(m.Key)
			if q, ok := partOf[c]; ok && q != p {
				t.Fatalf("customer %s in partitions %d and %d", c, q, p)
			}
			partOf[c] = p
			id := header(m, "id")
			seen[id]++
			if seen[id] > 1 {
				continue
			}
			seq, err := strconv.ParseUint(strings.TrimPrefix(id[len(c)+1:], "n"), 10, 64)
			if err != nil {
				t.Fatalf("id %q: %v", id, err)
			}
			if last, ok := lastSeq[c]; ok && seq <= last {
				t.Fatalf("partition %d: first occurrence of %s after seq %d", p, id, last)
			}
			lastSeq[c] = seq
		}
	}
	return seen
}

// checkNotes checks the notifications topic against want: every message
// keyed by customer, with headers id and type (as ingest's usage.rejected
// notices), the body as value and the notification's time as timestamp;
// first occurrences in seq order per customer; each id exactly times times.
// It returns how many partitions were used.
func checkNotes(t testing.TB, parts [][]kafka.Message, want []NoteRow, times int) int {
	t.Helper()
	byID := map[string]*NoteRow{}
	for i := range want {
		byID[want[i].ID] = &want[i]
	}
	seen := checkFirstOccurrences(t, parts)
	used := 0
	for pi, msgs := range parts {
		if len(msgs) > 0 {
			used++
		}
		for _, m := range msgs {
			id := header(m, "id")
			n := byID[id]
			if n == nil {
				t.Fatalf("partition %d: unexpected notification %q: %s", pi, id, m.Value)
			}
			if string(m.Key) != n.CustomerID || len(m.Headers) != 2 || m.Headers[0].Key != "id" ||
				m.Headers[1].Key != "type" || string(m.Headers[1].Value) != n.Type {
				t.Fatalf("%s: key %q headers %v", id, m.Key, m.Headers)
			}
			if string(m.Value) != string(n.Body) {
				t.Fatalf("%s: value %s, want %s", id, m.Value, n.Body)
			}
			if !m.Time.Equal(time.Unix(0, n.At).Truncate(time.Millisecond)) {
				t.Fatalf("%s: timestamp %v", id, m.Time)
			}
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("%d distinct notifications, want %d", len(seen), len(want))
	}
	for id, n := range seen {
		if n != times {
			t.Fatalf("%s published %d times, want %d", id, n, times)
		}
	}
	return used
}

func TestKafkaPublishLedger(t *testing.T) {
	c := newKafka(t)
	addr := c.ListenAddrs()[0]
	p := newPublisher(t, KafkaPublisherConfig{Brokers: []string{addr}})
	if p.Name() != "kafka" {
		t.Fatalf("name %q", p.Name())
	}
	if err := p.Connect(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	customers := []string{"acme", "globex", "initech", "umbrella", "hooli", "cyberdyne", "c.7:x-y_z"}
	b := testBatch(customers, 1, 30)
	// Two hand-made rows: every field set (with characters to escape), and
	// every optional field empty.
	full := LedgerRow{OutboxSeq: 31, EntryID: "acme/31", Seq: 31, CustomerID: "acme", Account: "default:USD",
		Asset: "USD", Type: "topup", Scale: 2, Amount: 150000, BalanceAfter: -5, BucketID: "topup-9",
		BucketKind: "recharge", EventID: "ev-1", Reference: "inv \"42\"\\\n\u00e9\x01",
		OccurredAt:     time.Date(2026, 11, 21, 10, 0, 0, 999_999_999, time.UTC).UnixNano(),
		RecordedAt:     time.Date(2026, 11, 21, 9, 0, 0, 1_000_000, time.FixedZone("x", 3600)).UnixNano(),
		PricingVersion: 7, Metadata: `{"order":"o-1","n":[1,2.50]}`, Source: "custom_credits",
		Description: "Top-up \"1\"", Price: "15.00", Currency: "USD", Offer: "pack_15"}
	bare := LedgerRow{OutboxSeq: 31, EntryID: "globex/31", Seq: 31, CustomerID: "globex", Account: "default:TOK",
		Asset: "TOK", Type: "usage", Scale: 0, Amount: -40, BalanceAfter: 0,
		RecordedAt: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano()}
	b.Ledger = append(b.Ledger, full, bare)
	b.To = 31
	// Notifications, and one with every character a JSON body may carry.
	addNotes(b, customers, 1, 30)
	odd := testNote("c.7:x-y_z", 31, 31, "auto_reload.failed")
	odd.Body = []byte(`{"id":"c.7:x-y_z/n31","type":"auto_reload.failed","customer_id":"c.7:x-y_z",` +
		`"data":{"reason":"carte refus\u00e9e \"51\"\n","note":"` + "é世" + `","n":[1,2.50,null]}}`)
	b.Notes = append(b.Notes, odd)
	wantJSON := map[string]string{
		"acme/31": `{"id":"acme/31","customer_id":"acme","seq":31,"type":"topup","account":"default:USD",` +
			`"amount":"1500","balance_after":"-0.05","bucket_id":"topup-9","bucket_kind":"recharge","event_id":"ev-1",` +
			`"reference":"inv \"42\"\\\n` + "\u00e9" + `\u0001","occurred_at":"2026-11-21T10:00:00.999Z",` +
			`"recorded_at":"2026-11-21T08:00:00.001Z","pricing_version":7,"source":"custom_credits","description":"Top-up \"1\"",` +
			`"price":{"amount":"15.00","currency":"USD"},"offer_id":"pack_15","metadata":{"order":"o-1","n":[1,2.50]}}`,
		"globex/31": `{"id":"globex/31","customer_id":"globex","seq":31,"type":"usage","account":"default:TOK",` +
			`"amount":"-40","balance_after":"0","bucket_id":null,"bucket_kind":null,"event_id":null,"reference":null,` +
			`"occurred_at":null,"recorded_at":"2026-11-21T10:00:00.000Z","pricing_version":null,"source":null,"description":null,"metadata":{}}`,
	}
	want := map[string]*LedgerRow{}
	for i := range b.Ledger {
		want[b.Ledger[i].EntryID] = &b.Ledger[i]
	}

	if err := p.Write(testCtx(t), b); err != nil {
		t.Fatal(err)
	}
	parts := readTopic(t, addr)
	seen := checkFirstOccurrences(t, parts)
	used := 0
	for pi, msgs := range parts {
		if len(msgs) > 0 {
			used++
		}
		for _, m := range msgs {
			id := header(m, "id")
			r := want[id]
			if r == nil {
				t.Fatalf("partition %d: unexpected message %q: %s", pi, id, m.Value)
			}
			if string(m.Key) != r.CustomerID || header(m, "customer_id") != r.CustomerID || header(m, "type") != r.Type {
				t.Fatalf("%s: key %q headers %v", id, m.Key, m.Headers)
			}
			if len(m.Headers) != 3 {
				t.Fatalf("%s: headers %v", id, m.Headers)
			}
			if !m.Time.Equal(time.Unix(0, r.RecordedAt).Truncate(time.Millisecond)) {
				t.Fatalf("%s: timestamp %v", id, m.Time)
			}
			if s, ok := wantJSON[id]; ok && string(m.Value) != s {
				t.Fatalf("%s:\n got %s\nwant %s", id, m.Value, s)
			}
			got, exp := decodeJSON(t, m.Value), expectedEntry(r)
			if g, e := fmt.Sprint(got), fmt.Sprint(exp); g != e {
				t.Fatalf("%s:\n got %s\nwant %s", id, g, e)
			}
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("%d distinct ids, want %d", len(seen), len(want))
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("%s published %d times", id, n)
		}
	}
	if used < 2 {
		t.Fatalf("customers in %d partitions only: the key does not spread them", used)
	}
	if used := checkNotes(t, readNotes(t, addr), b.Notes, 1); used < 2 {
		t.Fatalf("customers' notifications in %d partitions only: the key does not spread them", used)
	}

	// A batch of notifications only is published too; an empty one is not
	// an error.
	only := &Batch{From: 32, To: 32, Notes: []NoteRow{testNote("acme", 31, 32, "bucket.expired")}}
	if err := p.Write(testCtx(t), only); err != nil {
		t.Fatal(err)
	}
	if err := p.Write(testCtx(t), &Batch{From: 33, To: 33}); err != nil {
		t.Fatal(err)
	}
	checkNotes(t, readNotes(t, addr), append(b.Notes, only.Notes...), 1)
	if n := len(checkFirstOccurrences(t, readTopic(t, addr))); n != len(want) {
		t.Fatalf("%d ledger entries after a batch of notifications, want %d", n, len(want))
	}

	// The exact value of one ordinary row, as a spot check of the field order.
	r := testEntry("acme", 4, 4)
	if got := string(appendLedgerJSON(nil, &r)); got != `{"id":"acme/4","customer_id":"acme","seq":4,"type":"hold",`+
		`"account":"default:CREDITS","amount":"-19.504946","balance_after":"999.999972","bucket_id":"b-acme",`+
		`"bucket_kind":"promotional","event_id":"ev-acme/4","reference":null,"occurred_at":"2026-11-21T10:00:03.123Z",`+
		`"recorded_at":"2026-11-21T10:00:04.123Z","pricing_version":1,"source":null,"description":null,"metadata":{"n":4}}` {
		t.Fatalf("value %s", got)
	}
}

func TestKafkaWriteTwiceAtLeastOnce(t *testing.T) {
	c := newKafka(t)
	addr := c.ListenAddrs()[0]
	p := newPublisher(t, KafkaPublisherConfig{Brokers: []string{addr}})
	b := addNotes(testBatch([]string{"a", "b", "c", "d", "e"}, 1, 40), []string{"a", "b", "c", "d", "e"}, 1, 10)
	want := map[string]bool{}
	for _, r := range b.Ledger {
		want[r.EntryID] = true
	}
	// The same batch twice: what the tailer does after a crash between an
	// acknowledged Write and its cursor.
	for range 2 {
		if err := p.Write(testCtx(t), b); err != nil {
			t.Fatal(err)
		}
	}
	seen := checkFirstOccurrences(t, readTopic(t, addr))
	if len(seen) != len(want) {
		t.Fatalf("%d distinct ids, want %d", len(seen), len(want))
	}
	for id, n := range seen {
		if !want[id] || n != 2 {
			t.Fatalf("%s: %d times (known %v)", id, n, want[id])
		}
	}
	checkNotes(t, readNotes(t, addr), b.Notes, 2)
}

func TestKafkaOrderAcrossBatches(t *testing.T) {
	c := newKafka(t)
	addr := c.ListenAddrs()[0]
	// Small requests, so that each batch goes in several rounds too.
	p := newPublisher(t, KafkaPublisherConfig{Brokers: []string{addr}, batchMessagesMax: 7})
	customers := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	const batches, perBatch = 20, 10
	var notes []NoteRow
	for i := range batches {
		b := addNotes(testBatch(customers, uint64(i*perBatch+1), perBatch), customers, uint64(i*perBatch+1), perBatch)
		notes = append(notes, b.Notes...)
		if err := p.Write(testCtx(t), b); err != nil {
			t.Fatal(err)
		}
	}
	parts := readTopic(t, addr)
	// Every message exactly once, and per customer strictly increasing in
	// partition order: not only the first occurrences.
	seen := checkFirstOccurrences(t, parts)
	if len(seen) != batches*perBatch*len(customers) {
		t.Fatalf("%d ids, want %d", len(seen), batches*perBatch*len(customers))
	}
	for _, msgs := range parts {
		last := map[string]int{}
		for _, m := range msgs {
			c := string(m.Key)
			v := decodeJSON(t, m.Value)
			seq, _ := strconv.Atoi(string(v["seq"].(json.Number)))
			if seq != last[c]+1 {
				t.Fatalf("customer %s: seq %d after %d", c, seq, last[c])
			}
			last[c] = seq
		}
	}
	// The same for the notifications.
	nparts := readNotes(t, addr)
	checkNotes(t, nparts, notes, 1)
	for _, msgs := range nparts {
		last := map[string]int{}
		for _, m := range msgs {
			c := string(m.Key)
			seq, _ := strconv.Atoi(strings.TrimPrefix(header(m, "id"), c+"/n"))
			if seq != last[c]+1 {
				t.Fatalf("customer %s: notification %d after %d", c, seq, last[c])
			}
			last[c] = seq
		}
	}
}

// TestKafkaStopsAtFailedRound fails one partition's produce requests in the
// second round of a batch: no later round is sent, so no later entry of that
// partition lands before the failed ones, and the retry keeps the first
// occurrences in order.
func TestKafkaStopsAtFailedRound(t *testing.T) {
	c := newKafka(t)
	addr := c.ListenAddrs()[0]
	p := newPublisher(t, KafkaPublisherConfig{Brokers: []string{addr}, batchMessagesMax: 3})
	b := testBatch([]string{"solo"}, 1, 10) // 4 rounds on one partition
	var produces atomic.Int32
	var failing atomic.Bool
	failing.Store(true)
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		// Every attempt of the second request fails; any later request
		// would succeed, so a round sent past the failure would show.
		if n := produces.Add(1); !failing.Load() || n < 2 || n > 1+kafkaAttemptsMax {
			return nil, nil, false
		}
		req := kreq.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = 19 // NOT_ENOUGH_REPLICAS: retryable, retried by kafka-go, then failed
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	start := time.Now()
	err := p.Write(testCtx(t), b)
	if err == nil {
		t.Fatal("Write succeeded through failing produce requests")
	}
	t.Logf("failed after %v: %v", time.Since(start), err)
	if n := produces.Load(); n != 1+kafkaAttemptsMax {
		t.Fatalf("%d produce requests, want 1 then %d attempts of round 2", n, kafkaAttemptsMax)
	}
	var got []string
	for _, msgs := range readTopic(t, addr) {
		for _, m := range msgs {
			got = append(got, header(m, "id"))
		}
	}
	if fmt.Sprint(got) != "[solo/1 solo/2 solo/3]" {
		t.Fatalf("after the failure: %v", got)
	}
	failing.Store(false)
	if err := p.Write(testCtx(t), b); err != nil {
		t.Fatal(err)
	}
	seen := checkFirstOccurrences(t, readTopic(t, addr))
	if len(seen) != 10 || seen["solo/1"] != 2 || seen["solo/4"] != 1 {
		t.Fatalf("after the retry: %v", seen)
	}
}

func TestKafkaBrokerUnreachable(t *testing.T) {
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	p := newPublisher(t, KafkaPublisherConfig{Brokers: []string{addr}, RequestTimeout: 2 * time.Second})
	b := addNotes(testBatch([]string{"a", "b"}, 1, 5), []string{"a", "b"}, 1, 2)
	for i := range 2 {
		start := time.Now()
		err := p.Write(testCtx(t), b)
		took := time.Since(start)
		t.Logf("attempt %d: %v after %v", i, err, took)
		if err == nil {
			t.Fatal("Write succeeded with no broker")
		}
		if took > 5*time.Second {
			t.Fatalf("Write took %v", took)
		}
	}
	// A cancelled context is honoured too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Write(ctx, b); err == nil {
		t.Fatal("Write succeeded with a cancelled context")
	}

	// The broker comes up on that port: the same publisher recovers, retried
	// the way the tailer retries.
	c := newKafka(t, kfake.Ports(port))
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := p.Write(testCtx(t), b)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	seen := checkFirstOccurrences(t, readTopic(t, c.ListenAddrs()[0]))
	if len(seen) != len(b.Ledger) {
		t.Fatalf("%d ids, want %d", len(seen), len(b.Ledger))
	}
	checkNotes(t, readNotes(t, c.ListenAddrs()[0]), b.Notes, 1)
}

func TestKafkaMissingTopic(t *testing.T) {
	c := newKafka(t)
	for _, cfg := range []KafkaPublisherConfig{
		{Brokers: c.ListenAddrs(), LedgerTopic: "not.there", RequestTimeout: 2 * time.Second},
		{Brokers: c.ListenAddrs(), NotificationsTopic: "not.there", RequestTimeout: 2 * time.Second},
	} {
		p := newPublisher(t, cfg)
		err := p.Connect(testCtx(t))
		if err == nil || !strings.Contains(err.Error(), "not.there") {
			t.Fatalf("Connect with a missing topic: %v", err)
		}
		if err := p.Write(testCtx(t), testBatch([]string{"a"}, 1, 1)); err == nil {
			t.Fatal("Write to a missing topic succeeded")
		}
		notes := &Batch{From: 1, To: 1, Notes: []NoteRow{testNote("a", 1, 1, "balance.low")}}
		if err := p.Write(testCtx(t), notes); err == nil {
			t.Fatal("Write to a missing topic succeeded")
		}
	}
}

func TestKafkaRefusesOutOfOrder(t *testing.T) {
	p := newPublisher(t, KafkaPublisherConfig{Brokers: []string{"127.0.0.1:1"}})
	b := testBatch([]string{"a"}, 1, 3)
	b.Ledger[1], b.Ledger[2] = b.Ledger[2], b.Ledger[1]
	if err := p.encode(b); err == nil {
		t.Fatal("entries out of seq order accepted")
	}
	b = testBatch([]string{"a"}, 1, 1)
	b.Ledger[0].Metadata = `[1]`
	if err := p.encode(b); err == nil {
		t.Fatal("metadata not an object accepted")
	}
	b = addNotes(&Batch{From: 1, To: 3}, []string{"a", "b"}, 1, 3)
	b.Notes[0], b.Notes[2] = b.Notes[2], b.Notes[0] // a/n2 before a/n1
	if err := p.encode(b); err == nil {
		t.Fatal("notifications out of seq order accepted")
	}
	for _, f := range []func(n *NoteRow){
		func(n *NoteRow) { n.Body = []byte(`[1]`) },
		func(n *NoteRow) { n.Body = []byte(`{"a":`) },
		func(n *NoteRow) { n.Body = nil },
		func(n *NoteRow) { n.ID = "" },
		func(n *NoteRow) { n.CustomerID = "" },
		func(n *NoteRow) { n.Body = []byte(`{"x":"` + strings.Repeat("x", kafkaBatchBytesMax) + `"}`) },
	} {
		b = addNotes(&Batch{From: 1, To: 3}, []string{"a", "b"}, 1, 3)
		f(&b.Notes[3])
		if err := p.encode(b); err == nil {
			t.Fatalf("bad notification accepted: %.200s", b.Notes[3].Body)
		}
	}
	for _, cfg := range []KafkaPublisherConfig{{}, {Brokers: []string{"x:1"}, LedgerTopic: "a b"},
		{Brokers: []string{"x:1"}, NotificationsTopic: "a/b"},
		{Brokers: []string{"x:1"}, NotificationsTopic: "meterd.ledger"},
		{Brokers: []string{"x:1"}, LedgerTopic: "t", NotificationsTopic: "t"}} {
		if _, err := NewKafkaPublisher(cfg); err == nil {
			t.Fatalf("config %+v accepted", cfg)
		}
	}
}

// BenchmarkKafkaEncode measures encoding and round planning of a batch (no
// network): allocations per batch should stay flat once buffers are warm.
func BenchmarkKafkaEncode(b *testing.B) {
	p, err := NewKafkaPublisher(KafkaPublisherConfig{Brokers: []string{"127.0.0.1:1"}, Log: testLog})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	customers := make([]string, 100)
	for i := range customers {
		customers[i] = "customer-" + strconv.Itoa(i)
	}
	batch := testBatch(customers, 1, 100) // 10,000 rows
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := p.encode(batch); err != nil {
			b.Fatal(err)
		}
		p.plan(kafkaPartitions{ledger: testPartitions, notes: testNotesPartitions})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch.Ledger)), "ns/row")
}

// TestKafkaBrokerSilent: a broker that accepts connections and never
// answers fails Write after about RequestTimeout, not never.
func TestKafkaBrokerSilent(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var conns []net.Conn // held open, never read
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	const timeout = 500 * time.Millisecond
	p := newPublisher(t, KafkaPublisherConfig{Brokers: []string{l.Addr().String()}, RequestTimeout: timeout})
	start := time.Now()
	err = p.Write(testCtx(t), testBatch([]string{"a"}, 1, 3))
	took := time.Since(start)
	t.Logf("%v after %v", err, took)
	if err == nil {
		t.Fatal("Write succeeded with a silent broker")
	}
	if took > 4*timeout {
		t.Fatalf("Write took %v with RequestTimeout %v", took, timeout)
	}
}

// TestKafkaPublishTLSAndSASL: to a broker that takes only TLS and
// SASL/SCRAM-SHA-512 logins, the ledger is published (Write returns once
// every replica has it); a wrong password is an error of Connect, not a
// hang.
func TestKafkaPublishTLSAndSASL(t *testing.T) {
	cert, pool := selfSignedLoopback(t)
	c := newKafka(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "meterd", "pw-0123456789"),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	login := func(pass string) sasl.Mechanism {
		m, err := scram.Mechanism(scram.SHA512, "meterd", pass)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	clientTLS := &tls.Config{RootCAs: pool}
	p := newPublisher(t, KafkaPublisherConfig{Brokers: c.ListenAddrs(), LedgerTopic: testLedgerTopic, NotificationsTopic: testNotesTopic,
		TLS: clientTLS, SASL: login("pw-0123456789")})
	if err := p.Connect(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := p.Write(testCtx(t), testBatch([]string{"acme", "globex"}, 1, 20)); err != nil {
		t.Fatalf("publish over TLS and SASL: %v", err)
	}
	bad := newPublisher(t, KafkaPublisherConfig{Brokers: c.ListenAddrs(), LedgerTopic: testLedgerTopic, NotificationsTopic: testNotesTopic,
		TLS: clientTLS, SASL: login("wrong"), RequestTimeout: 3 * time.Second})
	start := time.Now()
	if err := bad.Connect(testCtx(t)); err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("a wrong password: %v after %v", err, time.Since(start))
	}
}

// selfSignedLoopback is a certificate for 127.0.0.1 and the pool that
// trusts it.
func selfSignedLoopback(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
