// This file holds the Kafka door: a consumer group on the usage-events topic
// that hands events to the engine in rounds, and a dead-letter topic for
// messages that cannot be read.
//
// Guarantees:
//
//   - A message's offset is committed only after the message is durable:
//     its event applied by the engine (charged, recorded, duplicate or
//     rejected, all fsync'd by engine.Events before it returns), or the
//     message itself acknowledged by every in-sync replica of the DLQ topic.
//     Offsets are committed synchronously (CommitInterval 0), never by
//     kafka-go on its own.
//   - At least once in, exactly once applied. A message may be delivered
//     again (a crash between apply and commit, a failed commit, a rebalance
//     that moves a partition); the engine's idempotency answers it duplicate
//     and changes nothing.
//   - Never dropped. When the engine is overloaded (balance.ErrOverloaded:
//     nothing was applied) the same round is retried after a bounded
//     exponential back-off, so the consumer slows down instead of dropping
//     or skipping: that is the backpressure. Broker and network errors are
//     retried the same way; Run returns only when its context is done (or on
//     a configuration error found at start: a topic that does not exist).
//   - Never blocked by one message. An unreadable or invalid message (the
//     decoder's invalid_event, or a key that names another customer than the
//     event) goes to the DLQ topic with the original key and value and
//     headers saying why, and the partition moves on. Events that are valid
//     but refused by the engine (insufficient_funds, account_paused,
//     unknown_customer, idempotency_conflict) and events outside the dedup
//     window (out_of_window) are not DLQ cases: like HTTP's rejected results
//     they are committed, counted by code and logged at debug level.
//
// A round: fetch up to BatchMessagesMax messages, waiting at most BatchWait
// after the first; decode each; hand every valid event to the engine in one
// Events call (it splits them by shard and returns once they are durable);
// write the invalid messages to the DLQ and wait for their acks; commit the
// highest offset of each partition the round touched.
package ingest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/meter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
)

// KafkaConfig configures a Consumer. Zero values take the documented defaults.
type KafkaConfig struct {
	Brokers []string // bootstrap brokers, host:port (required)
	Topic   string   // input topic; default "usage-events". The DLQ is Topic + ".dlq"
	// NotificationsTopic, when set, receives a usage.rejected notification
	// for every valid event the engine refused (insufficient_funds,
	// account_paused, ...): unlike an HTTP caller, a producer gets no answer.
	NotificationsTopic string
	GroupID            string        // consumer group; default "meterd"
	BatchMessagesMax   int           // messages handed to the engine per round; default 10_000
	BatchWait          time.Duration // how long a round gathers after its first message; default 20ms
	Limits             Limits        // decoding limits (LineBytesMax bounds one message); zero fields: defaults
	Log                *slog.Logger  // default slog.Default()
	Registerer         prometheus.Registerer
	// Clock is the time the decoder checks occurred_at against (the
	// out_of_window bounds); default the engine's clock.
	Clock func() time.Time
	// TLS and SASL, when set, secure every connection to the brokers (the
	// consumer, its DLQ and notice writer, the topic check).
	TLS  *tls.Config
	SASL sasl.Mechanism
}

// Defaults and bounds of KafkaConfig and of the consumer's own timings.
const (
	KafkaTopicDefault = "usage-events"
	KafkaGroupDefault = "meterd"
	KafkaDLQSuffix    = ".dlq"

	kafkaBatchMessagesDefault = 10_000
	kafkaBatchMessagesMax     = 100_000
	kafkaBatchWaitDefault     = 20 * time.Millisecond
	kafkaBatchWaitMax         = 10 * time.Second

	kafkaFetchBytesMax = 16 << 20 // one fetch response per partition; above the broker's message.max.bytes
	// A DLQ message must fit the broker's default message.max.bytes (1 MiB)
	// with its headers, or the DLQ write would fail forever and block the
	// partition. Longer keys and values are cut and the header
	// "value_truncated"/"key_truncated" gives the original length; the whole
	// message stays in the source topic at source_partition/source_offset.
	kafkaDLQValueBytesMax = 960 << 10
	kafkaDLQKeyBytesMax   = 4 << 10

	kafkaOpTimeout = 10 * time.Second // one DLQ write or one commit attempt; one topic check
	// Back-off after broker and network errors.
	kafkaBackoffMin = 20 * time.Millisecond
	kafkaBackoffMax = 2 * time.Second
	// Back-off while the engine is overloaded: its queues drain in
	// milliseconds, and a retry costs one look at the queue lengths.
	kafkaOverloadBackoffMin = 2 * time.Millisecond
	kafkaOverloadBackoffMax = 200 * time.Millisecond
)

// Reasons the consumer adds to the decoder's (ReasonMalformedJSON and the others).
const (
	// ReasonKeyMismatch: the message key and the event's customer_id are
	// both present and differ. The key decides the partition, so events of
	// one customer would otherwise be spread and reordered.
	ReasonKeyMismatch = "key_mismatch"
)

// Outcomes of a message, the values of meterd_kafka_messages_total's label.
const (
	kafkaCharged = iota
	kafkaRecorded
	kafkaDuplicate
	kafkaRejected
	kafkaDLQ
	kafkaOutcomes
)

var kafkaOutcomeNames = [kafkaOutcomes]string{"charged", "recorded", "duplicate", "rejected", "dlq"}

// errStopped ends Run when the test hook asks for it (a simulated crash).
var errStopped = errors.New("ingest: kafka consumer stopped by its test hook")

// Consumer reads usage events from a Kafka consumer group into the engine.
// Run it once; Close stops it.
type Consumer struct {
	e       *balance.Engine
	cfg     KafkaConfig
	lim     Limits // resolved
	dlq     string
	log     *slog.Logger
	metrics *kafkaMetrics

	// events applies a round: e.Events, or a test's wrapper of it.
	events func([]*balance.EventIn) error
	// afterApply, when set (tests only), runs after a round was applied and
	// before its DLQ writes and commit; returning true ends Run there, as if
	// the process died.
	afterApply func() bool

	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{} // closed when Run returns

	// Used by Run's goroutine only.
	reader    *kafka.Reader
	writer    *kafka.Writer
	transport *kafka.Transport
	dec       Decoder
	msgs      []kafka.Message
	decoded   []Decoded
	ins       []balance.EventIn
	ptrs      []*balance.EventIn
	slot      []int           // message index -> ins index, or -1 (not handed to the engine)
	dlqMsgs   []kafka.Message // the round's dead letters and rejection notices
	top       map[int]int     // partition -> index in msgs of its highest offset this round
	commits   []kafka.Message
}

// NewConsumer checks cfg and returns a consumer for the engine. It does not
// connect: Run does.
func NewConsumer(e *balance.Engine, cfg KafkaConfig) (*Consumer, error) {
	if e == nil {
		return nil, errors.New("ingest: NewConsumer: the engine is nil")
	}
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("ingest: KafkaConfig.Brokers is empty")
	}
	if cfg.Topic == "" {
		cfg.Topic = KafkaTopicDefault
	}
	if cfg.GroupID == "" {
		cfg.GroupID = KafkaGroupDefault
	}
	if cfg.BatchMessagesMax <= 0 {
		cfg.BatchMessagesMax = kafkaBatchMessagesDefault
	}
	if cfg.BatchMessagesMax > kafkaBatchMessagesMax {
		return nil, fmt.Errorf("ingest: KafkaConfig.BatchMessagesMax %d is above %d", cfg.BatchMessagesMax, kafkaBatchMessagesMax)
	}
	if cfg.BatchWait <= 0 {
		cfg.BatchWait = kafkaBatchWaitDefault
	}
	if cfg.BatchWait > kafkaBatchWaitMax {
		return nil, fmt.Errorf("ingest: KafkaConfig.BatchWait %v is above %v", cfg.BatchWait, kafkaBatchWaitMax)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = func() time.Time { return time.Unix(0, e.Now()) }
	}
	c := &Consumer{
		e:       e,
		cfg:     cfg,
		lim:     resolve(&cfg.Limits),
		dlq:     cfg.Topic + KafkaDLQSuffix,
		log:     cfg.Log.With("component", "kafka", "topic", cfg.Topic, "group", cfg.GroupID),
		metrics: newKafkaMetrics(cfg.Registerer),
		events:  e.Events,
		done:    make(chan struct{}),
		top:     make(map[int]int),
	}
	if c.lim.LineBytesMax > kafkaFetchBytesMax {
		return nil, fmt.Errorf("ingest: Limits.LineBytesMax %d is above the fetch size %d", c.lim.LineBytesMax, kafkaFetchBytesMax)
	}
	rc := c.readerConfig()
	if err := rc.Validate(); err != nil { // kafka.NewReader panics on an invalid config
		return nil, fmt.Errorf("ingest: kafka reader config: %w", err)
	}
	return c, nil
}

// readerConfig sets every option of the consumer-group reader that matters,
// rather than trusting kafka-go's defaults.
func (c *Consumer) readerConfig() kafka.ReaderConfig {
	return kafka.ReaderConfig{
		Brokers: c.cfg.Brokers,
		Dialer: &kafka.Dialer{
			ClientID:      "meterd",
			Timeout:       10 * time.Second, // connect (and SASL/TLS handshake) timeout
			DualStack:     true,
			KeepAlive:     30 * time.Second,
			TLS:           c.cfg.TLS,
			SASLMechanism: c.cfg.SASL,
		},
		// A consumer group over the one input topic: partitions are
		// assigned by the group; offsets live in the group.
		GroupID:     c.cfg.GroupID,
		GroupTopics: []string{c.cfg.Topic},
		// Range first (contiguous partitions per member), as Kafka's own
		// clients do; round-robin as the fallback every member supports.
		GroupBalancers: []kafka.GroupBalancer{kafka.RangeGroupBalancer{}, kafka.RoundRobinGroupBalancer{}},
		// A group with no committed offset for a partition starts at its
		// first retained message: a new meterd group bills everything on
		// the topic (idempotency makes a replay of already-billed events
		// harmless). LastOffset would silently skip whatever was produced
		// before the group first joined.
		StartOffset: kafka.FirstOffset,
		// Synchronous commits only, through CommitMessages, after the round
		// is durable. A non-zero interval would commit in the background,
		// and ReadMessage would commit before the event is applied.
		CommitInterval: 0,
		// Let the broker keep offsets for its offsets.retention.minutes
		// (7 days on Kafka >= 2.0) after the group empties. kafka-go's
		// historical default was 24h: a meterd down for a weekend would have
		// restarted from FirstOffset.
		RetentionTime: -1 * time.Millisecond,
		// Answer as soon as one byte is there; the round (BatchWait) is
		// where batching happens, not the broker.
		MinBytes: 1,
		// The most one fetch response per partition may carry. Must be at
		// least the broker's message.max.bytes (1 MiB by default), or a
		// message larger than MaxBytes could never be read.
		MaxBytes: kafkaFetchBytesMax,
		// How long the broker holds a fetch waiting for MinBytes: the
		// delivery latency of a quiet topic (kafka-go's default is 10 s).
		MaxWait: 100 * time.Millisecond,
		// How long kafka-go waits for the next message of a fetched batch
		// before giving up on the batch and fetching again.
		ReadBatchTimeout: 10 * time.Second,
		// Messages of aborted transactions are never billed.
		IsolationLevel: kafka.ReadCommitted,
		// Prefetch one whole round while the previous one is applied:
		// bounded memory (BatchMessagesMax messages of at most the broker's
		// message.max.bytes each), no idle fetches between rounds.
		QueueCapacity: c.cfg.BatchMessagesMax,
		// Group liveness. Heartbeats are sent by kafka-go's own goroutine,
		// so a long round (engine backpressure) does not cost the session.
		HeartbeatInterval: 3 * time.Second,
		// A crashed member's partitions move after SessionTimeout; a restarted
		// meterd rejoins under a new member id, so this is how long a crash
		// stops consumption. 10 s was tried: against the test broker a dead
		// member then sometimes stayed in a stable group and held its
		// partitions, so 30 s it is until that is understood.
		SessionTimeout:   30 * time.Second,
		RebalanceTimeout: 30 * time.Second, // how long the coordinator waits for members to rejoin
		JoinGroupBackoff: 2 * time.Second,  // between failed joins
		// Partitions added to the topic are picked up (a rebalance) within
		// PartitionWatchInterval instead of being ignored until a restart.
		WatchPartitionChanges:  true,
		PartitionWatchInterval: 5 * time.Second,
		// Connection attempts before an error is reported to FetchMessage
		// (Run then backs off and keeps going), and the back-off between
		// fetches that failed or came back empty.
		MaxAttempts:    3,
		ReadBackoffMin: 100 * time.Millisecond,
		ReadBackoffMax: 1 * time.Second,
		// Lag is computed per message (HighWaterMark - Offset - 1), not by a
		// background poll (which works only outside consumer groups).
		ReadLagInterval: -1,
		// A committed offset that fell out of retention: kafka-go skips to
		// the first retained offset and logs it, rather than failing.
		OffsetOutOfRangeError: false,
		Logger:                kafkaLogger{c.log, slog.LevelDebug},
		ErrorLogger:           kafkaLogger{c.log, slog.LevelWarn},
	}
}

// newWriter returns the DLQ producer: acknowledged by every in-sync replica,
// synchronous, one batch per partition per round.
func (c *Consumer) newWriter() *kafka.Writer {
	c.transport = &kafka.Transport{
		ClientID:    "meterd",
		DialTimeout: 10 * time.Second,
		IdleTimeout: 5 * time.Minute, // DLQ writes are rare: keep the connection rather than redial each time
		MetadataTTL: 10 * time.Second,
		TLS:         c.cfg.TLS,
		SASL:        c.cfg.SASL,
	}
	return &kafka.Writer{
		Addr: kafka.TCP(c.cfg.Brokers...),
		// No fixed topic: each message names its own (the DLQ, or the
		// notifications topic for rejection notices).
		Transport: c.transport,
		// The key's partition as Kafka's Java clients would choose it, so a
		// customer's dead letters stay in order in one partition.
		Balancer: &kafka.Murmur2Balancer{},
		// The writes are acknowledged by every in-sync replica before the
		// source offsets are committed (kafka-go's default is no acks).
		RequiredAcks: kafka.RequireAll,
		// WriteMessages blocks until the acks (or the error) are in.
		Async: false,
		// One round's dead letters go as one batch per partition; the
		// timeout only bounds the wait for a batch that is not full
		// (kafka-go's default is 1 s per round).
		BatchSize:    c.cfg.BatchMessagesMax,
		BatchBytes:   1 << 20, // the broker's default message.max.bytes; messages are cut to fit (see kafkaDLQValueBytesMax)
		BatchTimeout: 5 * time.Millisecond,
		// Attempts inside one WriteMessages call; Run retries the rest.
		MaxAttempts:     3,
		WriteBackoffMin: 100 * time.Millisecond,
		WriteBackoffMax: 1 * time.Second,
		ReadTimeout:     kafkaOpTimeout,
		WriteTimeout:    kafkaOpTimeout,
		// The DLQ topic is provisioned with the input topic; Run checks it
		// exists before it starts. Auto-creation would hide a typo.
		AllowAutoTopicCreation: false,
		Logger:                 kafkaLogger{c.log, slog.LevelDebug},
		ErrorLogger:            kafkaLogger{c.log, slog.LevelWarn},
	}
}

// Run consumes until ctx is done and returns ctx.Err(). A round already
// applied when ctx is done is finished (its DLQ writes and its commit, each
// bounded by 10 s); no new round starts. It returns early only when a topic
// does not exist (a configuration error). Stop it before closing the engine:
// a closed engine answers overloaded, and Run would retry until ctx is done.
func (c *Consumer) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.started || c.closed {
		c.mu.Unlock()
		return errors.New("ingest: Consumer.Run called twice or after Close")
	}
	c.started = true
	ctx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	c.mu.Unlock()
	defer close(c.done)
	defer cancel()

	if err := c.checkTopics(ctx); err != nil {
		return err
	}
	c.reader = kafka.NewReader(c.readerConfig())
	c.writer = c.newWriter()
	defer c.release()
	c.log.Info("kafka consumer started", "brokers", c.cfg.Brokers, "dlq", c.dlq)

	for attempt := 0; ; {
		err := c.round(ctx)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, errStopped):
			return err
		case err == nil:
			attempt = 0
			continue
		}
		c.metrics.retries[retryFetch].Inc()
		c.log.Warn("kafka fetch failed; retrying", "err", err, "attempt", attempt+1)
		if !sleepCtx(ctx, backoff(attempt, kafkaBackoffMin, kafkaBackoffMax)) {
			return ctx.Err()
		}
		attempt++
	}
}

// Close stops Run (if it runs), waits for it, and releases the connections.
func (c *Consumer) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	started, cancel := c.started, c.cancel
	c.mu.Unlock()
	if started {
		cancel()
		<-c.done
	}
	return nil
}

// release closes the reader (leaving the group) and the DLQ writer.
func (c *Consumer) release() {
	if err := c.reader.Close(); err != nil {
		c.log.Warn("kafka reader close", "err", err)
	}
	if err := c.writer.Close(); err != nil {
		c.log.Warn("kafka DLQ writer close", "err", err)
	}
	c.transport.CloseIdleConnections()
	c.log.Info("kafka consumer stopped")
}

// checkLogin dials each broker with the configured TLS, then with SASL
// too, and returns an error naming the first that takes the connection but
// not the login (a broker may close the connection instead of answering a
// bad password, which the client sees as EOF). nil when there is no SASL,
// or when every broker that answers accepts it.
func (c *Consumer) checkLogin(ctx context.Context) error {
	if c.cfg.SASL == nil {
		return nil
	}
	for _, b := range c.cfg.Brokers {
		// The connection first (TCP and TLS): a broker that cannot be
		// reached is no refused login, and is retried.
		plain := &kafka.Dialer{ClientID: "meterd", Timeout: 10 * time.Second, TLS: c.cfg.TLS}
		conn, err := plain.DialContext(ctx, "tcp", b)
		if err != nil {
			continue
		}
		conn.Close()
		d := &kafka.Dialer{ClientID: "meterd", Timeout: 10 * time.Second, TLS: c.cfg.TLS, SASLMechanism: c.cfg.SASL}
		conn, err = d.DialContext(ctx, "tcp", b)
		if err == nil {
			conn.Close()
			continue
		}
		if ctx.Err() == nil {
			return fmt.Errorf("ingest: kafka broker %s refused the %s login: %w", b, c.cfg.SASL.Name(), err)
		}
	}
	return nil
}

// checkTopics makes sure the input and DLQ topics exist. A broker that
// cannot be reached is retried until ctx is done; a topic the broker does
// not know, or a SASL login it refuses, is a configuration error.
func (c *Consumer) checkTopics(ctx context.Context) error {
	tr := &kafka.Transport{ClientID: "meterd", DialTimeout: 10 * time.Second, TLS: c.cfg.TLS, SASL: c.cfg.SASL}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Timeout: kafkaOpTimeout, Transport: tr}
	for attempt := 0; ; attempt++ {
		topics := []string{c.cfg.Topic, c.dlq}
		if c.cfg.NotificationsTopic != "" {
			topics = append(topics, c.cfg.NotificationsTopic)
		}
		res, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
		if err == nil {
			var bad []string
			for _, t := range res.Topics {
				switch {
				case errors.Is(t.Error, kafka.UnknownTopicOrPartition), errors.Is(t.Error, kafka.InvalidTopic),
					errors.Is(t.Error, kafka.TopicAuthorizationFailed):
					bad = append(bad, t.Name+": "+t.Error.Error())
				case t.Error != nil:
					err = fmt.Errorf("topic %s: %w", t.Name, t.Error)
				}
			}
			if len(bad) > 0 {
				return fmt.Errorf("ingest: kafka topics cannot be used (create them; the DLQ is the input topic + %q): %s",
					KafkaDLQSuffix, strings.Join(bad, "; "))
			}
			if err == nil {
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A refused login does not get better by retrying: say which
		// broker refused it, and stop.
		if lerr := c.checkLogin(ctx); lerr != nil {
			return lerr
		}
		c.log.Warn("kafka metadata failed; retrying", "err", err, "attempt", attempt+1)
		if !sleepCtx(ctx, backoff(attempt, kafkaBackoffMin, kafkaBackoffMax)) {
			return ctx.Err()
		}
	}
}

// round runs one round. It returns nil when the round was gathered and
// handled, ctx.Err() when ctx ended it, or the fetch error that ended the
// gathering (after handling what was gathered).
func (c *Consumer) round(ctx context.Context) error {
	ferr := c.gather(ctx)
	if len(c.msgs) == 0 {
		return ferr
	}
	if ctx.Err() != nil { // nothing applied: the messages will be fetched again
		return ctx.Err()
	}
	c.metrics.roundEvents.Observe(float64(len(c.msgs)))
	c.decode()
	if err := c.apply(ctx); err != nil {
		return err
	}
	c.count()
	if c.afterApply != nil && c.afterApply() {
		return errStopped
	}
	if err := c.writeDLQ(ctx); err != nil {
		return err
	}
	c.commit(ctx)
	return ferr
}

// gather fetches the round's messages into c.msgs: it waits for the first
// one as long as it takes, then up to BatchWait for more, up to
// BatchMessagesMax. FetchMessage leaves a message queued when its context
// ends first, so nothing fetched is lost.
func (c *Consumer) gather(ctx context.Context) error {
	clear(c.msgs) // drop references to the last round's buffers
	c.msgs = c.msgs[:0]
	m, err := c.reader.FetchMessage(ctx)
	if err != nil {
		return err
	}
	c.msgs = append(c.msgs, m)
	wctx, cancel := context.WithTimeout(ctx, c.cfg.BatchWait)
	defer cancel()
	for len(c.msgs) < c.cfg.BatchMessagesMax {
		m, err := c.reader.FetchMessage(wctx)
		if err != nil {
			if wctx.Err() != nil { // the round's time is up
				return nil
			}
			return err
		}
		c.msgs = append(c.msgs, m)
	}
	return nil
}

// decode decodes every message of the round into c.decoded and lines the
// valid events up in c.ins and c.ptrs.
func (c *Consumer) decode() {
	n := len(c.msgs)
	now := c.cfg.Clock()
	if cap(c.decoded) < n {
		c.decoded = make([]Decoded, n)
	}
	c.decoded = c.decoded[:n]
	c.ins = c.ins[:0]
	c.slot = c.slot[:0]
	for i := range c.msgs {
		m, d := &c.msgs[i], &c.decoded[i]
		// The key is the default customer. DecodeOne copies it into the
		// event's own bytes, so a view of the message's key will do.
		key := unsafe.String(unsafe.SliceData(m.Key), len(m.Key))
		c.dec.DecodeOne(m.Value, now, &c.lim, key, d)
		if d.Err == nil && key != "" && d.Event.CustomerID != key {
			d.Err = &EventError{Code: CodeInvalidEvent, Reason: ReasonKeyMismatch, Field: "customer_id",
				Message: "customer_id " + strconv.Quote(d.Event.CustomerID) + " differs from the message key " + quoteTrunc(key)}
		}
		if d.Err != nil {
			c.slot = append(c.slot, -1)
			continue
		}
		c.slot = append(c.slot, len(c.ins))
		c.ins = append(c.ins, balance.EventIn{Event: &d.Event, Hash: d.ContentHash})
	}
	c.ptrs = c.ptrs[:0]
	for i := range c.ins {
		c.ptrs = append(c.ptrs, &c.ins[i])
	}
}

// apply hands the round's valid events to the engine in one call, retrying
// the whole round while the engine is overloaded (it then applied nothing).
// It returns only nil (everything durable) or ctx.Err() (nothing applied).
func (c *Consumer) apply(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := c.events(c.ptrs)
		if err == nil {
			return nil
		}
		c.metrics.retries[retryOverloaded].Inc()
		if attempt%50 == 0 {
			c.log.Warn("engine overloaded; retrying the round", "events", len(c.ptrs), "err", err, "attempt", attempt+1)
		}
		if !sleepCtx(ctx, backoff(attempt, kafkaOverloadBackoffMin, kafkaOverloadBackoffMax)) {
			return ctx.Err()
		}
	}
}

// count records each message's outcome. Rejections are logged at debug
// level: valid events refused by the engine are answered, not dead letters.
func (c *Consumer) count() {
	var n [kafkaOutcomes]int
	debug := c.log.Enabled(context.Background(), slog.LevelDebug)
	for i := range c.msgs {
		d := &c.decoded[i]
		var code, msg string
		if s := c.slot[i]; s >= 0 {
			r := &c.ins[s].Result
			switch r.Status {
			case balance.EventCharged:
				n[kafkaCharged]++
				continue
			case balance.EventRecorded:
				n[kafkaRecorded]++
				continue
			case balance.EventDuplicate:
				n[kafkaDuplicate]++
				continue
			}
			code, msg = r.Code, r.Message
		} else if d.Err.Code == CodeOutOfWindow {
			code, msg = d.Err.Code, d.Err.Message
		} else {
			n[kafkaDLQ]++
			continue
		}
		n[kafkaRejected]++
		c.metrics.rejected.WithLabelValues(code).Inc()
		if debug {
			m := &c.msgs[i]
			c.log.Debug("kafka event rejected", "code", code, "message", msg, "event_id", d.Event.ID,
				"customer_id", d.Event.CustomerID, "partition", m.Partition, "offset", m.Offset)
		}
	}
	for o, v := range n {
		if v > 0 {
			c.metrics.messages[o].Add(float64(v))
		}
	}
}

// writeDLQ writes the round's invalid messages to the DLQ topic and, when
// a notifications topic is set, a usage.rejected notice for each valid event
// the engine refused; it waits for their acks, retrying what failed until
// it is written or ctx is done.
// Each attempt is bounded on its own, so a round in flight when ctx ends
// still gets one full attempt.
func (c *Consumer) writeDLQ(ctx context.Context) error {
	clear(c.dlqMsgs)
	c.dlqMsgs = c.dlqMsgs[:0]
	now := c.cfg.Clock().UnixNano()
	for i := range c.msgs {
		d := &c.decoded[i]
		if s := c.slot[i]; s >= 0 || d.Err.Code == CodeOutOfWindow {
			if c.cfg.NotificationsTopic == "" {
				continue
			}
			if s >= 0 && c.ins[s].Result.Status == balance.EventRejected {
				r := &c.ins[s].Result
				c.dlqMsgs = append(c.dlqMsgs, c.rejectionNotice(&c.msgs[i], &d.Event, r.Code, r.Message, now))
			} else if s < 0 {
				c.dlqMsgs = append(c.dlqMsgs, c.rejectionNotice(&c.msgs[i], &d.Event, d.Err.Code, d.Err.Message, now))
			}
			continue
		}
		c.dlqMsgs = append(c.dlqMsgs, dlqMessage(&c.msgs[i], d.Err, c.dlq))
		c.metrics.dlq.WithLabelValues(d.Err.Code, d.Err.Reason).Inc()
		c.log.Debug("kafka message to DLQ", "code", d.Err.Code, "reason", d.Err.Reason, "field", d.Err.Field,
			"error", d.Err.Message, "partition", c.msgs[i].Partition, "offset", c.msgs[i].Offset)
	}
	pending := c.dlqMsgs
	for attempt := 0; len(pending) > 0; attempt++ {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), kafkaOpTimeout)
		err := c.writer.WriteMessages(wctx, pending...)
		cancel()
		if err == nil {
			return nil
		}
		// Retry only the messages that failed: the others are acknowledged.
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) && len(werrs) == len(pending) {
			failed := pending[:0]
			for j, e := range werrs {
				if e != nil {
					failed = append(failed, pending[j])
				}
			}
			pending = failed
		}
		c.metrics.retries[retryDLQ].Inc()
		c.log.Warn("kafka DLQ write failed; retrying", "err", err, "messages", len(pending), "attempt", attempt+1)
		if ctx.Err() != nil || !sleepCtx(ctx, backoff(attempt, kafkaBackoffMin, kafkaBackoffMax)) {
			return ctx.Err() // not committed: the round comes back after a restart
		}
	}
	return nil
}

// dlqMessage is the dead letter of m: its key and value, and headers that
// say why and where it came from.
func dlqMessage(m *kafka.Message, e *EventError, topic string) kafka.Message {
	h := make([]kafka.Header, 0, 9)
	h = append(h,
		kafka.Header{Key: "error_code", Value: []byte(e.Code)},
		kafka.Header{Key: "error", Value: []byte(e.Message)},
		kafka.Header{Key: "error_reason", Value: []byte(e.Reason)},
		kafka.Header{Key: "source_topic", Value: []byte(m.Topic)},
		kafka.Header{Key: "source_partition", Value: strconv.AppendInt(nil, int64(m.Partition), 10)},
		kafka.Header{Key: "source_offset", Value: strconv.AppendInt(nil, m.Offset, 10)},
	)
	if e.Field != "" {
		h = append(h, kafka.Header{Key: "error_field", Value: []byte(e.Field)})
	}
	key, value := m.Key, m.Value
	if len(key) > kafkaDLQKeyBytesMax {
		h = append(h, kafka.Header{Key: "key_truncated", Value: strconv.AppendInt(nil, int64(len(key)), 10)})
		key = key[:kafkaDLQKeyBytesMax]
	}
	if len(value) > kafkaDLQValueBytesMax {
		h = append(h, kafka.Header{Key: "value_truncated", Value: strconv.AppendInt(nil, int64(len(value)), 10)})
		value = value[:kafkaDLQValueBytesMax]
	}
	return kafka.Message{Topic: topic, Key: key, Value: value, Headers: h}
}

// rejectionNotice is the usage.rejected notification of a valid event the
// engine refused. Its id is stable, so a round delivered again after a
// crash publishes a notice consumers recognise as the same.
func (c *Consumer) rejectionNotice(m *kafka.Message, ev *meter.Event, code, msg string, now int64) kafka.Message {
	customer := ev.CustomerID
	if customer == "" {
		customer = string(m.Key)
	}
	id := "usage.rejected:" + customer + "/" + ev.ID
	b := make([]byte, 0, 256)
	b = append(b, `{"id":`...)
	b = appendString(b, id)
	b = append(b, `,"type":"usage.rejected","customer_id":`...)
	b = appendString(b, customer)
	b = append(b, `,"event_id":`...)
	b = appendString(b, ev.ID)
	b = append(b, `,"event_type":`...)
	b = appendOptString(b, ev.EventType)
	b = append(b, `,"code":`...)
	b = appendString(b, code)
	b = append(b, `,"message":`...)
	b = appendString(b, msg)
	b = append(b, `,"source":{"topic":`...)
	b = appendString(b, m.Topic)
	b = append(b, `,"partition":`...)
	b = strconv.AppendInt(b, int64(m.Partition), 10)
	b = append(b, `,"offset":`...)
	b = strconv.AppendInt(b, m.Offset, 10)
	b = append(b, `},"created_at":`...)
	b = appendTime(b, now)
	b = append(b, '}')
	return kafka.Message{Topic: c.cfg.NotificationsTopic, Key: []byte(customer), Value: b,
		Headers: []kafka.Header{{Key: "id", Value: []byte(id)}, {Key: "type", Value: []byte("usage.rejected")}}}
}

// commit commits, for each partition of the round, its highest offset (the
// round is durable). A failed commit is logged and left: the messages will
// be delivered again and answered duplicate.
func (c *Consumer) commit(ctx context.Context) {
	clear(c.top)
	for i := range c.msgs {
		m := &c.msgs[i]
		if j, ok := c.top[m.Partition]; !ok || m.Offset > c.msgs[j].Offset {
			c.top[m.Partition] = i
		}
	}
	clear(c.commits)
	c.commits = c.commits[:0]
	for p, i := range c.top {
		m := &c.msgs[i]
		c.commits = append(c.commits, kafka.Message{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset})
		c.metrics.lag(p).Set(float64(max(m.HighWaterMark-m.Offset-1, 0)))
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), kafkaOpTimeout)
	err := c.reader.CommitMessages(cctx, c.commits...)
	cancel()
	c.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		c.metrics.retries[retryCommit].Inc()
		c.log.Warn("kafka commit failed; the round will be redelivered and answered duplicate", "err", err, "partitions", len(c.commits))
	}
}

// backoff is the wait before retry attempt+1: exponential from lo to hi,
// with up to 25% jitter so that the members of a group do not retry in step.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := hi
	if attempt < 16 {
		d = min(lo<<attempt, hi)
	}
	return d - time.Duration(rand.Int64N(int64(d/4)+1))
}

// sleepCtx waits d or until ctx is done, and reports whether it waited d.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// kafkaLogger adapts kafka-go's Printf logging to slog at one level.
type kafkaLogger struct {
	log   *slog.Logger
	level slog.Level
}

func (l kafkaLogger) Printf(format string, args ...any) {
	if l.log.Enabled(context.Background(), l.level) {
		l.log.Log(context.Background(), l.level, fmt.Sprintf(format, args...), "source", "kafka-go")
	}
}
