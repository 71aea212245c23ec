package sink

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/meter/jsonw"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
)

// The Kafka publisher: every ledger entry of the outbox as one message on the
// ledger topic (default "meterd.ledger"), keyed by customer id, its value the
// entry as the HTTP API renders it (API.md "Ledger") plus "customer_id",
// "bucket_kind" and "pricing_version". Usage rows are not published here:
// they are ClickHouse's. Headers: "id" (the entry id, "customer/seq"),
// "type" and "customer_id", to route or dedupe without parsing the value.
// The message timestamp is the entry's recorded_at.
//
// Every customer notification of the outbox (balance alerts, auto-reload
// requests and outcomes, expired buckets and holds) goes to the
// notifications topic (default "meterd.notifications"), as the Kafka
// consumer's usage.rejected notices do (ingest/kafka.go): keyed by customer
// id, its value the notification's JSON body as is (the one webhooks get),
// headers "id" (the notification id, "customer/n<seq>") and "type". The
// message timestamp is the notification's time. The guarantees below hold
// for both topics, each on its own: a customer's notifications keep their
// order (seq) among themselves, not relative to its ledger entries.
//
// What a consumer can rely on, and what guarantees it:
//
//  1. At least once. Write returns nil only when every message of the batch
//     was acknowledged by the full in-sync replica set (RequireAll); the
//     tailer advances its cursor only after that, and retries a failed batch
//     whole. So every entry reaches the topic at least once, and it may
//     appear more than once: after a failed or timed-out attempt (kafka-go
//     retries a produce request whose outcome is unknown; the tailer retries
//     the whole batch, including the messages that did land), and after a
//     crash between an acknowledged Write and the cursor. kafka-go has no
//     idempotent producer, so Kafka does not drop these duplicates. The
//     message's "id" header (and the value's "id") is the entry's identity,
//     "customer/seq", the same on every delivery: consumers dedupe on it.
//     Durability of an acknowledged message is the topic's: it needs
//     replication.factor >= 3 and min.insync.replicas >= 2 (with
//     min.insync.replicas = 1, "all in-sync replicas" may be the leader alone).
//  2. Per customer, in order. The key is the customer id and the balancer is
//     kafka.Hash (Sarama-compatible FNV-1a), so all of a customer's entries
//     go to one partition while the topic's partition count does not change.
//     Within that partition, the FIRST occurrence of each entry comes in the
//     customer's ledger order (seq ascending); duplicates only ever repeat an
//     entry that already appeared earlier. A consumer that skips any entry
//     whose seq is not above the last seq it applied for that customer (or
//     whose id it has seen) sees each entry once, in order. What makes this
//     hold:
//     - the outbox, hence every batch, holds a customer's entries in seq
//       order (Write checks this within a batch), and the tailer does not
//       cut the next batch before the current one is acknowledged;
//     - Write sends a batch in rounds, one WriteMessages call each, where a
//       round holds at most one produce request per partition (sized below
//       BatchSize and BatchBytes); kafka-go retries a request before it
//       sends the next one to that partition, so within a round no later
//       message of a partition can land before an earlier one fails;
//     - Write stops at the first round that fails, so no later round is sent
//       past a failure; the retry starts again from the first round, and
//       everything it repeats had already appeared once;
//     - a round runs to completion once started, even when the caller's
//       context is cancelled (bounded by kafkaRoundTimeout): a request left
//       in flight could otherwise fail after a later request succeeded.
//     Adding partitions to the topic moves customers to other partitions:
//     order across that change is not kept (true of any keyed Kafka topic).
//  3. Bounded. A round takes at most kafkaRoundTimeout (four request
//     timeouts and two back-offs: 42s by default), and Write stops at the
//     first round that fails, so a failing Write returns within the time of
//     the rounds that succeeded plus one such bound. An unreachable cluster
//     fails a Write at once (connection refused) or after RequestTimeout (no
//     answer); the caller's context is checked before each round.
//
// The topics are not created by meterd (AllowAutoTopicCreation is false): an
// auto-created topic would take the broker's defaults, often one partition
// and one replica, which silently weakens both durability and throughput.
// Create both with the partitions and replication you want; until they
// exist, Write fails with "unknown topic or partition" and the tailer
// retries, showing the error in /readyz.

// KafkaPublisherConfig configures the Kafka publisher. Zero values take the
// defaults named on each field.
type KafkaPublisherConfig struct {
	Brokers            []string // host:port of one or more brokers of the cluster
	LedgerTopic        string   // default "meterd.ledger"
	NotificationsTopic string   // default "meterd.notifications"; not LedgerTopic
	// RequestTimeout bounds one request to a broker: a dial, a metadata
	// request, a produce request with its acknowledgements. Default 10s.
	RequestTimeout time.Duration
	Log            *slog.Logger // default slog.Default()
	// TLS and SASL, when set, secure every connection to the brokers.
	TLS  *tls.Config
	SASL sasl.Mechanism

	// Limits of one produce request; tests lower them to get many rounds.
	batchMessagesMax int
	batchBytesMax    int64
}

const (
	kafkaLedgerTopicDefault    = "meterd.ledger"
	kafkaNotesTopicDefault     = "meterd.notifications"
	kafkaRequestTimeoutDefault = 10 * time.Second
	kafkaTopicLenMax           = 249 // Kafka's own limit on a topic name
	// kafkaBatchMessagesMax bounds the messages of one produce request.
	kafkaBatchMessagesMax = 10_000
	// kafkaBatchBytesMax bounds one produce request's messages, as kafka-go
	// counts them (uncompressed). It stays under the broker's default
	// message.max.bytes (1,048,588), which applies to a whole record batch,
	// with room for the batch's own framing. It is also the largest message
	// kafka-go accepts, far above a ledger entry's (ids of at most 128 bytes,
	// metadata of at most 4 KiB).
	kafkaBatchBytesMax = 1_000_000
	// kafkaAttemptsMax: kafka-go's attempts of one produce request on a
	// retryable error (leader moved, not enough replicas, connection reset)
	// before it fails the round; the tailer's back-off takes over from there.
	kafkaAttemptsMax  = 3
	kafkaBackoffMin   = 100 * time.Millisecond
	kafkaBackoffMax   = time.Second
	kafkaMetadataTTL  = 2 * time.Second // how stale the cached partition layout may be
	kafkaHeaderCount  = 3               // id, type, customer_id (notifications: id, type)
	kafkaClientID     = "meterd"
	kafkaBatchTimeout = time.Millisecond
)

// kafkaRoundTimeout bounds one round: every attempt of its produce requests
// with the back-offs between them, plus a metadata request.
func kafkaRoundTimeout(request time.Duration) time.Duration {
	return (kafkaAttemptsMax+1)*request + (kafkaAttemptsMax-1)*kafkaBackoffMax
}

func (cfg KafkaPublisherConfig) withDefaults() KafkaPublisherConfig {
	if cfg.LedgerTopic == "" {
		cfg.LedgerTopic = kafkaLedgerTopicDefault
	}
	if cfg.NotificationsTopic == "" {
		cfg.NotificationsTopic = kafkaNotesTopicDefault
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = kafkaRequestTimeoutDefault
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.batchMessagesMax == 0 {
		cfg.batchMessagesMax = kafkaBatchMessagesMax
	}
	if cfg.batchBytesMax == 0 {
		cfg.batchBytesMax = kafkaBatchBytesMax
	}
	return cfg
}

func (cfg KafkaPublisherConfig) validate() error {
	if len(cfg.Brokers) == 0 {
		return errors.New("kafka: no brokers")
	}
	for _, b := range cfg.Brokers {
		if b == "" {
			return errors.New("kafka: empty broker address")
		}
	}
	if err := validTopic(cfg.LedgerTopic); err != nil {
		return err
	}
	if err := validTopic(cfg.NotificationsTopic); err != nil {
		return err
	}
	if cfg.NotificationsTopic == cfg.LedgerTopic {
		// Write plans one produce request per partition and topic per round.
		return fmt.Errorf("kafka: the notifications topic is the ledger topic %q", cfg.LedgerTopic)
	}
	if cfg.RequestTimeout < 0 {
		return errors.New("kafka: negative RequestTimeout")
	}
	if cfg.batchMessagesMax < 1 || cfg.batchBytesMax < 1 {
		return errors.New("kafka: batch limits must be positive")
	}
	return nil
}

// validTopic checks Kafka's rules for a topic name.
func validTopic(t string) error {
	if t == "" || t == "." || t == ".." || len(t) > kafkaTopicLenMax {
		return fmt.Errorf("kafka: invalid topic name %q", t)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("kafka: invalid topic name %q: only [a-zA-Z0-9._-]", t)
		}
	}
	return nil
}

// KafkaPublisher publishes the ledger entries and the notifications of outbox
// batches to Kafka. It is a Destination; its methods are safe for concurrent use, and Write calls
// are serialized.
type KafkaPublisher struct {
	cfg       KafkaPublisherConfig
	log       *slog.Logger
	transport *kafka.Transport
	client    *kafka.Client
	w         *kafka.Writer
	hash      kafka.Hash // predicts the partition the writer's kafka.Hash picks
	roundMax  time.Duration

	mu sync.Mutex // serializes Write; guards everything below
	// Reused across Writes: kafka-go holds messages only until their round
	// completes, and Write waits for that (except past kafkaRoundTimeout,
	// when the buffers are dropped instead of reused).
	buf      []byte
	spans    []kafkaSpan
	msgs     []kafka.Message
	headers  []kafka.Header
	rounds   []int32 // per row: its round
	starts   []int   // per round: where it starts in msgs
	next     []int   // per round: where its next message goes while filling msgs
	parts    []int   // 0..partitions-1, as kafka-go passes them to the balancer
	fill     []kafkaFill
	lastSeq  map[string]uint64 // per customer: its last ledger seq in the batch
	lastNote map[string]uint64 // per customer: its last notification seq in the batch
}

// kafkaSpan locates one message's bytes in buf.
type kafkaSpan struct {
	key, id, typ, value, end int
	recordedAt               int64 // unix ns: the message's timestamp
	note                     bool  // a notification, for the notifications topic
}

// kafkaFill is how full a partition's produce request of the current round is.
type kafkaFill struct {
	round    int32
	messages int
	bytes    int64
}

// NewKafkaPublisher returns a publisher to the brokers of cfg. It does not
// connect: the first Write (or Connect) does, and fails while the cluster is
// unreachable or the topic is missing.
func NewKafkaPublisher(cfg KafkaPublisherConfig) (*KafkaPublisher, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Log.With("sink", "kafka")
	tr := &kafka.Transport{
		DialTimeout: cfg.RequestTimeout,
		// A short TTL: the partition layout the writer and Write's round
		// planning read is at most this stale, and the cache recovers this
		// soon after the cluster was unreachable.
		MetadataTTL:    kafkaMetadataTTL,
		MetadataTopics: []string{cfg.LedgerTopic, cfg.NotificationsTopic}, // not the whole cluster's topics
		ClientID:       kafkaClientID,
		TLS:            cfg.TLS,
		SASL:           cfg.SASL,
	}
	addr := kafka.TCP(cfg.Brokers...)
	p := &KafkaPublisher{
		cfg:       cfg,
		log:       log,
		transport: tr,
		client:    &kafka.Client{Addr: addr, Transport: tr, Timeout: cfg.RequestTimeout},
		roundMax:  kafkaRoundTimeout(cfg.RequestTimeout),
		lastSeq:   make(map[string]uint64),
		lastNote:  make(map[string]uint64),
	}
	p.w = &kafka.Writer{
		Addr: addr,
		// No Topic: each message names its own, the ledger or the
		// notifications topic.
		Transport: tr,
		// Acknowledged by every in-sync replica, not fire-and-forget (the
		// default, RequireNone): a nil from Write lets the tailer drop the
		// outbox record.
		RequiredAcks: kafka.RequireAll,
		// Same key, same partition: a customer's entries stay in order.
		// (The default is round-robin.) Write predicts the same choice.
		Balancer: &kafka.Hash{},
		// Synchronous: WriteMessages returns each message's outcome. Async
		// would drop errors, and with them at-least-once.
		Async: false,
		// One produce request per partition per round: Write sizes rounds
		// to these limits. All of a call's messages for a partition are added
		// to its batch under kafka-go's lock before the batch timer can fire,
		// so a short BatchTimeout costs no batching; it is only the latency
		// of a request that is not full.
		BatchSize:    cfg.batchMessagesMax,
		BatchBytes:   cfg.batchBytesMax,
		BatchTimeout: kafkaBatchTimeout,
		// Retries of one request on retryable errors, then the round fails
		// and the tailer's back-off (100ms..30s) retries the batch.
		MaxAttempts:     kafkaAttemptsMax,
		WriteBackoffMin: kafkaBackoffMin,
		WriteBackoffMax: kafkaBackoffMax,
		// Per request: a metadata read, a produce with its acks.
		ReadTimeout:  cfg.RequestTimeout,
		WriteTimeout: cfg.RequestTimeout,
		// LZ4: entries are repetitive JSON (field names, ids, timestamps),
		// which LZ4 shrinks several times at a small CPU cost, on the wire
		// and on the brokers' disks; every Kafka client and broker since
		// 0.10 reads it. The broker's size limit applies to the compressed
		// batch, which is never larger than BatchBytes plus framing.
		Compression: kafka.Lz4,
		// The topic must exist (see the comment at the top of this file).
		AllowAutoTopicCreation: false,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			log.Warn("kafka writer: " + fmt.Sprintf(msg, args...))
		}),
	}
	return p, nil
}

// Name names the destination and its cursor.
func (p *KafkaPublisher) Name() string { return "kafka" }

// Connect checks that the cluster answers and both topics exist. The
// tailer calls it at start so that a misconfiguration shows in its status
// before the first batch.
func (p *KafkaPublisher) Connect(ctx context.Context) error {
	_, err := p.partitions(ctx)
	return err
}

// Close flushes and closes the writer and its connections.
func (p *KafkaPublisher) Close() error {
	err := p.w.Close()
	p.transport.CloseIdleConnections()
	return err
}

// partitions returns the partition counts of the ledger and the
// notifications topics, from the transport's metadata cache (the one the
// writer reads too).
func (p *KafkaPublisher) partitions(ctx context.Context) (kafkaPartitions, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	topics := []string{p.cfg.LedgerTopic, p.cfg.NotificationsTopic}
	res, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return kafkaPartitions{}, fmt.Errorf("kafka: metadata: %w", err)
	}
	var n [2]int
	for i, name := range topics {
		for _, t := range res.Topics {
			if t.Name != name {
				continue
			}
			if t.Error != nil {
				return kafkaPartitions{}, fmt.Errorf("kafka: topic %s: %w", t.Name, t.Error)
			}
			if len(t.Partitions) == 0 {
				return kafkaPartitions{}, fmt.Errorf("kafka: topic %s has no partitions", t.Name)
			}
			n[i] = len(t.Partitions)
		}
		if n[i] == 0 {
			return kafkaPartitions{}, fmt.Errorf("kafka: topic %s: %w", name, kafka.UnknownTopicOrPartition)
		}
	}
	return kafkaPartitions{ledger: n[0], notes: n[1]}, nil
}

// kafkaPartitions are the partition counts of the publisher's topics.
type kafkaPartitions struct{ ledger, notes int }

// Write publishes the ledger entries and the notifications of b, one
// message each, and returns nil once every one is acknowledged by all
// in-sync replicas. On error some may have landed anyway: the tailer
// retries the whole batch (at least once; see the comment at the top of
// this file). Usage rows are ignored.
func (p *KafkaPublisher) Write(ctx context.Context, b *Batch) error {
	if len(b.Ledger) == 0 && len(b.Notes) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n, err := p.partitions(ctx)
	if err != nil {
		return err
	}
	if err := p.encode(b); err != nil {
		return err
	}
	nRounds := p.plan(n)
	for r := range nRounds {
		if err := ctx.Err(); err != nil {
			return err
		}
		msgs := p.msgs[p.starts[r]:p.starts[r+1]]
		// The round runs to completion whatever happens to ctx (see point 2
		// at the top); roundMax bounds it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.roundMax)
		err := p.w.WriteMessages(rctx, msgs...)
		timedOut := rctx.Err() != nil
		cancel()
		if err == nil {
			continue
		}
		if timedOut {
			// kafka-go may still hold these messages: do not reuse their
			// bytes. Should a request of this round still land after a
			// later one, the order of point 2 is lost for its partition.
			p.buf, p.msgs, p.headers = nil, nil, nil
			p.log.Error("kafka: a round outlived its bound; its requests may still be in flight",
				"bound", p.roundMax, "outbox_from", b.From, "outbox_to", b.To)
		}
		return fmt.Errorf("kafka: outbox %d-%d: round %d of %d (%d messages): %w",
			b.From, b.To, r+1, nRounds, len(msgs), summarizeWriteErr(err))
	}
	return nil
}

// summarizeWriteErr shortens kafka-go's WriteErrors, whose message lists
// every message's error, to a count and the first error.
func summarizeWriteErr(err error) error {
	var we kafka.WriteErrors
	if !errors.As(err, &we) {
		return err
	}
	for _, e := range we {
		if e != nil {
			return fmt.Errorf("%d of %d messages failed: %w", we.Count(), len(we), e)
		}
	}
	return err
}

// encode renders every ledger row, then every notification, of b into p.buf
// and checks what the ordering guarantee rests on: ids present, each
// customer's entries and notifications in seq order, and every message
// within the size of a produce request.
func (p *KafkaPublisher) encode(b *Batch) error {
	defer clear(p.lastSeq) // keep no string of b
	defer clear(p.lastNote)
	buf := p.buf[:0]
	spans := p.spans[:0]
	for i := range b.Ledger {
		r := &b.Ledger[i]
		if r.CustomerID == "" || r.EntryID == "" {
			// kafka.Hash sends an empty key round-robin: never for an entry.
			return fmt.Errorf("kafka: outbox %d: ledger entry without customer or id", r.OutboxSeq)
		}
		if last, ok := p.lastSeq[r.CustomerID]; ok && r.Seq <= last {
			return fmt.Errorf("kafka: outbox %d: entry %s after seq %d of its customer: ledger out of order",
				r.OutboxSeq, r.EntryID, last)
		}
		p.lastSeq[r.CustomerID] = r.Seq
		if r.Metadata != "" && (r.Metadata[0] != '{' || !json.Valid([]byte(r.Metadata))) {
			return fmt.Errorf("kafka: outbox %d: entry %s: metadata is not a JSON object", r.OutboxSeq, r.EntryID)
		}
		s := kafkaSpan{recordedAt: r.RecordedAt}
		s.key = len(buf)
		buf = append(buf, r.CustomerID...)
		s.id = len(buf)
		buf = append(buf, r.EntryID...)
		s.typ = len(buf)
		buf = append(buf, r.Type...)
		s.value = len(buf)
		buf = appendLedgerJSON(buf, r)
		s.end = len(buf)
		spans = append(spans, s)
	}
	for i := range b.Notes {
		n := &b.Notes[i]
		if n.CustomerID == "" || n.ID == "" || n.Type == "" {
			return fmt.Errorf("kafka: outbox %d: notification without customer, id or type", n.OutboxSeq)
		}
		if last, ok := p.lastNote[n.CustomerID]; ok && n.Seq <= last {
			return fmt.Errorf("kafka: outbox %d: notification %s after seq %d of its customer: out of order",
				n.OutboxSeq, n.ID, last)
		}
		p.lastNote[n.CustomerID] = n.Seq
		if len(n.Body) == 0 || n.Body[0] != '{' || !json.Valid(n.Body) {
			return fmt.Errorf("kafka: outbox %d: notification %s: body is not a JSON object", n.OutboxSeq, n.ID)
		}
		s := kafkaSpan{recordedAt: n.At, note: true}
		s.key = len(buf)
		buf = append(buf, n.CustomerID...)
		s.id = len(buf)
		buf = append(buf, n.ID...)
		s.typ = len(buf)
		buf = append(buf, n.Type...)
		s.value = len(buf)
		buf = append(buf, n.Body...)
		s.end = len(buf)
		spans = append(spans, s)
	}
	p.buf, p.spans = buf, spans
	for i := range spans {
		// kafka-go refuses a larger message on every attempt: the tailer
		// would retry it forever. Say why instead.
		if size := kafkaMessageBytesMax(&spans[i]); size > p.cfg.batchBytesMax {
			s := &spans[i]
			return fmt.Errorf("kafka: message %s of %d bytes, more than the %d of a produce request",
				buf[s.id:s.typ], size, p.cfg.batchBytesMax)
		}
	}
	return nil
}

// plan builds the messages of the encoded rows and orders them into rounds:
// round k holds, for every partition of each topic, the k-th run of its
// messages that fits in one produce request. It returns the number of
// rounds; round r is p.msgs[p.starts[r]:p.starts[r+1]], each partition's
// messages in row order.
func (p *KafkaPublisher) plan(n kafkaPartitions) int {
	if most := max(n.ledger, n.notes); len(p.parts) != most {
		p.parts = p.parts[:0]
		for i := range most {
			p.parts = append(p.parts, i)
		}
	}
	// The ledger topic's partitions, then the notifications topic's.
	p.fill = append(p.fill[:0], make([]kafkaFill, n.ledger+n.notes)...)
	p.rounds = p.rounds[:0]
	nRounds := int32(0)
	for i := range p.spans {
		s := &p.spans[i]
		key := p.buf[s.key:s.id]
		var f *kafkaFill
		if s.note {
			f = &p.fill[n.ledger+p.hash.Balance(kafka.Message{Key: key}, p.parts[:n.notes]...)]
		} else {
			f = &p.fill[p.hash.Balance(kafka.Message{Key: key}, p.parts[:n.ledger]...)]
		}
		size := kafkaMessageBytesMax(s)
		if f.messages > 0 && (f.messages+1 > p.cfg.batchMessagesMax || f.bytes+size > p.cfg.batchBytesMax) {
			f.round++
			f.messages, f.bytes = 0, 0
		}
		f.messages++
		f.bytes += size
		p.rounds = append(p.rounds, f.round)
		nRounds = max(nRounds, f.round+1)
	}
	// A stable counting sort of the messages by round.
	p.starts = append(p.starts[:0], make([]int, nRounds+1)...)
	for _, r := range p.rounds {
		p.starts[r+1]++
	}
	for r := 1; r <= int(nRounds); r++ {
		p.starts[r] += p.starts[r-1]
	}
	nMsgs := len(p.spans)
	if cap(p.msgs) < nMsgs {
		p.msgs = make([]kafka.Message, nMsgs)
	}
	p.msgs = p.msgs[:nMsgs]
	if cap(p.headers) < kafkaHeaderCount*nMsgs {
		p.headers = make([]kafka.Header, kafkaHeaderCount*nMsgs)
	}
	p.headers = p.headers[:kafkaHeaderCount*nMsgs]
	p.next = append(p.next[:0], p.starts[:nRounds]...) // where round r's next message goes
	next := p.next
	for i := range p.spans {
		s := &p.spans[i]
		h := p.headers[kafkaHeaderCount*i : kafkaHeaderCount*(i+1) : kafkaHeaderCount*(i+1)]
		h[0] = kafka.Header{Key: "id", Value: p.buf[s.id:s.typ:s.typ]}
		h[1] = kafka.Header{Key: "type", Value: p.buf[s.typ:s.value:s.value]}
		topic := p.cfg.LedgerTopic
		if s.note {
			// The headers of ingest's usage.rejected notices on that topic.
			topic, h = p.cfg.NotificationsTopic, h[:2:2]
		} else {
			h[2] = kafka.Header{Key: "customer_id", Value: p.buf[s.key:s.id:s.id]}
		}
		j := next[p.rounds[i]]
		next[p.rounds[i]]++
		p.msgs[j] = kafka.Message{
			Topic:   topic,
			Key:     p.buf[s.key:s.id:s.id],
			Value:   p.buf[s.value:s.end:s.end],
			Headers: h,
			Time:    time.Unix(0, s.recordedAt),
		}
	}
	return int(nRounds)
}

// kafkaMessageBytesMax is at least what kafka-go counts for a message
// against BatchBytes (Message.totalSize: a v0 message's framing, key, value,
// and the headers with varint lengths, each at most 5 bytes). For a
// notification, which has no customer_id header, it counts one too many.
func kafkaMessageBytesMax(s *kafkaSpan) int64 {
	const framing = 4 + 1 + 1 + 4 + 4 + 8 // crc, magic, attributes, key and value lengths, timestamp
	const header = 5 + 5                  // a header's key and value lengths
	headers := int64(5 + kafkaHeaderCount*header + len("id") + len("type") + len("customer_id"))
	return framing + headers + int64(s.end-s.key) + int64(s.id-s.key) // key twice: value and header
}

// appendLedgerJSON appends r as the HTTP API renders a ledger entry (the
// same fields, formats and nulls; ingest.appendEntry), plus "customer_id",
// "bucket_kind" (null when none) and "pricing_version" (null when the entry
// was not priced).
func appendLedgerJSON(b []byte, r *LedgerRow) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, r.EntryID)
	b = append(b, `,"customer_id":`...)
	b = appendJSONString(b, r.CustomerID)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, r.Seq, 10)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, r.Type)
	b = append(b, `,"account":`...)
	b = appendJSONString(b, r.Account)
	b = append(b, `,"amount":"`...)
	b = meter.AppendUnits(b, r.Amount, r.Scale)
	b = append(b, `","balance_after":"`...)
	b = meter.AppendUnits(b, r.BalanceAfter, r.Scale)
	b = append(b, `","bucket_id":`...)
	b = appendJSONOptString(b, r.BucketID)
	b = append(b, `,"bucket_kind":`...)
	b = appendJSONOptString(b, r.BucketKind)
	b = append(b, `,"event_id":`...)
	b = appendJSONOptString(b, r.EventID)
	b = append(b, `,"reference":`...)
	b = appendJSONOptString(b, r.Reference)
	b = append(b, `,"occurred_at":`...)
	b = appendJSONTime(b, r.OccurredAt)
	b = append(b, `,"recorded_at":`...)
	b = appendJSONTime(b, r.RecordedAt)
	b = append(b, `,"pricing_version":`...)
	if r.PricingVersion == 0 {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendUint(b, uint64(r.PricingVersion), 10)
	}
	b = jsonw.AppendEntryDetails(b, r.Source, r.Description, r.Price, r.Currency, r.Offer)
	b = append(b, `,"metadata":`...)
	if r.Metadata == "" {
		b = append(b, "{}"...)
	} else {
		b = append(b, r.Metadata...)
	}
	return append(b, '}')
}

func appendJSONOptString(b []byte, s string) []byte { return jsonw.AppendOptString(b, s) }

// appendJSONTime appends a unix-ns time as a JSON string, or null for 0.
func appendJSONTime(b []byte, ns int64) []byte { return jsonw.AppendTime(b, ns) }

// appendJSONString appends s as a JSON string the way the HTTP API does.
func appendJSONString(b []byte, s string) []byte { return jsonw.AppendString(b, s) }
