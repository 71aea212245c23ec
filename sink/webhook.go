package sink

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The webhook destination: every customer notification of the outbox
// (NoteRow) as one HTTP POST to one endpoint. Ledger and usage rows are not
// sent.
//
// The request:
//
//	POST <URL>
//	Content-Type: application/json
//	Meterd-Notification-Id: <customer>/n<seq>
//	Meterd-Notification-Type: balance.low
//	Meterd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//
//	<the notification's JSON body, byte for byte>
//
// The signature is made anew for every attempt (its t is the attempt's
// time), so a receiver can refuse a replayed request by its age:
// VerifyWebhookSignature does both checks.
//
// What a receiver can rely on, and what guarantees it:
//
//  1. At least once, with a stable id. A 2xx answer is a delivery; anything
//     else (another status, a redirect, a network error, no answer within
//     Timeout) is retried with exponential back-off and jitter from RetryMin
//     to RetryMax, without end: Write returns only when every notification
//     of the batch was delivered, or when its context is done. The tailer
//     advances its cursor only after that. The webhook remembers, in memory,
//     which notifications of the unacknowledged batch it delivered, so that
//     a batch the tailer sends again is not delivered twice. A notification
//     is sent again only when its delivery's outcome is unknown (the receiver
//     answered 2xx after the timeout, or the answer was lost) or after a
//     crash between a delivery and the cursor: it then carries the same
//     Meterd-Notification-Id, and receivers dedupe on it.
//  2. In order, per customer and overall. Notifications are sent one at a
//     time in outbox order, which is each customer's order of seq; the next
//     one is sent only after the previous one was delivered. The first
//     delivery of each notification therefore comes after the first delivery
//     of all earlier ones. The price: a notification the receiver keeps
//     refusing holds back all later ones (it shows in the sink's lag, in
//     the logs and in meterd_webhook_retrying). A receiver should answer 2xx
//     to what it cannot use, and Types can leave types out.
//  3. Bounded. One attempt takes at most Timeout (connection, TLS, request,
//     answer, and the first webhookResponseBytesMax bytes of the answer's
//     body, which are discarded); redirects are not followed; a body larger
//     than webhookBodyBytesMax, or an id or type that cannot be an HTTP
//     header value, is an error of the batch, not a retry.

// Webhook request headers.
const (
	WebhookHeaderID        = "Meterd-Notification-Id"
	WebhookHeaderType      = "Meterd-Notification-Type"
	WebhookHeaderSignature = "Meterd-Signature"
)

// WebhookToleranceDefault is the age (or clock skew) of a signature that
// VerifyWebhookSignature accepts when given no tolerance.
const WebhookToleranceDefault = 5 * time.Minute

const (
	webhookNameDefault       = "webhook"
	webhookTimeoutDefault    = 10 * time.Second
	webhookRetryMinDefault   = 500 * time.Millisecond
	webhookRetryMaxDefault   = time.Minute
	webhookSecretBytesMin    = 16       // an HMAC key shorter than this can be guessed from one signature
	webhookURLBytesMax       = 2048     // the endpoint's URL
	webhookBodyBytesMax      = 1 << 20  // a notification's body (the engine keeps them far smaller)
	webhookHeaderBytesMax    = 256      // a notification's id or type, as a header value
	webhookResponseBytesMax  = 64 << 10 // read (and discarded) of an answer's body
	webhookSignatureBytesMax = 4096     // a Meterd-Signature header VerifyWebhookSignature parses
	webhookUserAgent         = "meterd-webhook/1"
)

// WebhookConfig configures a Webhook. Zero values take the defaults named
// on each field.
type WebhookConfig struct {
	Name   string // the destination's and its cursor's name; default "webhook"
	URL    string // http:// or https:// endpoint
	Secret []byte // HMAC-SHA256 key of Meterd-Signature; at least 16 bytes (32 random bytes recommended)
	// Timeout bounds one attempt: connect, TLS, request and answer. Default 10s.
	Timeout time.Duration
	// RetryMin is the first back-off after a failed attempt (default
	// 500ms); it doubles, with jitter, up to RetryMax (default 1 minute).
	RetryMin, RetryMax time.Duration
	Types              []string     // notification types to send; empty = all
	Log                *slog.Logger // default slog.Default()
	Metrics            *WebhookMetrics
}

// Webhook delivers customer notifications to an HTTP endpoint. It is a
// Destination; Write calls are serialized.
type Webhook struct {
	cfg    WebhookConfig
	url    string // parsed and re-rendered
	log    *slog.Logger
	client *http.Client
	types  map[string]bool // nil = all

	mu sync.Mutex // serializes Write; guards everything below
	// delivered holds the notifications delivered (id -> outbox seq) of
	// batches the tailer has not acknowledged yet, so that a batch sent
	// again is not delivered again. Write forgets those before the batch's
	// From: the tailer only cuts after its cursor. So it holds at most the
	// notes of one batch.
	delivered map[string]uint64
	lastSeq   map[string]uint64 // per customer, while checking a batch
}

// NewWebhook returns a webhook destination. It does not connect.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	if cfg.Name == "" {
		cfg.Name = webhookNameDefault
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = webhookTimeoutDefault
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = webhookRetryMinDefault
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = webhookRetryMaxDefault
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Timeout < 0 || cfg.RetryMin < 0 || cfg.RetryMax < 0 {
		return nil, errors.New("webhook: negative Timeout, RetryMin or RetryMax")
	}
	if cfg.RetryMax < cfg.RetryMin {
		return nil, fmt.Errorf("webhook: RetryMax %v below RetryMin %v", cfg.RetryMax, cfg.RetryMin)
	}
	if len(cfg.URL) > webhookURLBytesMax {
		return nil, fmt.Errorf("webhook: URL longer than %d bytes", webhookURLBytesMax)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("webhook: URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("webhook: URL scheme %q: want http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("webhook: URL has no host")
	}
	u.Fragment, u.RawFragment = "", ""
	if len(cfg.Secret) < webhookSecretBytesMin {
		return nil, fmt.Errorf("webhook: Secret must have at least %d bytes", webhookSecretBytesMin)
	}
	w := &Webhook{
		cfg: cfg,
		url: u.String(),
		// Only the scheme and host: a path or query may hold a token.
		log:       cfg.Log.With("sink", cfg.Name, "endpoint", u.Scheme+"://"+u.Host),
		delivered: make(map[string]uint64),
		lastSeq:   make(map[string]uint64),
	}
	w.cfg.Secret = bytes.Clone(cfg.Secret)
	if len(cfg.Types) > 0 {
		w.types = make(map[string]bool, len(cfg.Types))
		for _, t := range cfg.Types {
			if t == "" {
				return nil, errors.New("webhook: empty notification type in Types")
			}
			w.types[t] = true
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = cfg.Timeout
	tr.ResponseHeaderTimeout = cfg.Timeout
	tr.MaxIdleConnsPerHost = 2 // one request at a time
	w.client = &http.Client{
		Transport: tr,
		Timeout:   cfg.Timeout,
		// A redirect is a failed attempt: the signed body goes only to the
		// configured endpoint.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return w, nil
}

// Name names the destination and its cursor.
func (w *Webhook) Name() string { return w.cfg.Name }

// Close closes idle connections.
func (w *Webhook) Close() error {
	w.client.CloseIdleConnections()
	return nil
}

// Write delivers every notification of b (of the configured types) in
// order, each once it got a 2xx, retrying failed attempts with back-off. It
// returns nil when all are delivered, ctx's error (wrapped) when ctx is done
// first, or an error at once when a notification can never be sent (see the
// top of this file). Ledger and usage rows are ignored.
func (w *Webhook) Write(ctx context.Context, b *Batch) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, seq := range w.delivered {
		if seq < b.From {
			delete(w.delivered, id) // behind the tailer's cursor
		}
	}
	if err := w.check(b); err != nil {
		return err
	}
	for i := range b.Notes {
		n := &b.Notes[i]
		if w.types != nil && !w.types[n.Type] {
			continue
		}
		if _, ok := w.delivered[n.ID]; ok {
			continue
		}
		if err := w.deliver(ctx, n); err != nil {
			return err
		}
		w.delivered[n.ID] = n.OutboxSeq
	}
	return nil
}

// check checks, before anything is sent, what the guarantees rest on:
// each customer's notes in seq order, and every note sendable.
func (w *Webhook) check(b *Batch) error {
	defer clear(w.lastSeq) // keep no string of b
	for i := range b.Notes {
		n := &b.Notes[i]
		if n.CustomerID == "" || !headerValue(n.ID) || !headerValue(n.Type) {
			return fmt.Errorf("webhook: outbox %d: notification %q of type %q: bad customer, id or type",
				n.OutboxSeq, n.ID, n.Type)
		}
		if last, ok := w.lastSeq[n.CustomerID]; ok && n.Seq <= last {
			return fmt.Errorf("webhook: outbox %d: notification %s after seq %d of its customer: out of order",
				n.OutboxSeq, n.ID, last)
		}
		w.lastSeq[n.CustomerID] = n.Seq
		if len(n.Body) > webhookBodyBytesMax {
			return fmt.Errorf("webhook: outbox %d: notification %s: body of %d bytes, more than %d",
				n.OutboxSeq, n.ID, len(n.Body), webhookBodyBytesMax)
		}
		if len(n.Body) == 0 || n.Body[0] != '{' || !json.Valid(n.Body) {
			return fmt.Errorf("webhook: outbox %d: notification %s: body is not a JSON object", n.OutboxSeq, n.ID)
		}
	}
	return nil
}

// headerValue reports whether s is a short header value of visible ASCII.
func headerValue(s string) bool {
	if s == "" || len(s) > webhookHeaderBytesMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// deliver sends n until an attempt gets a 2xx or ctx is done.
func (w *Webhook) deliver(ctx context.Context, n *NoteRow) error {
	m := w.cfg.Metrics
	backoff := w.cfg.RetryMin
	for attempt := 1; ; attempt++ {
		start := time.Now()
		status, retryAfter, err := w.post(ctx, n)
		result := webhookResult(status, err)
		if result != "delivered" && ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("status %d", status)
			}
			return fmt.Errorf("webhook: notification %s not delivered after %d attempts (last: %v): %w",
				n.ID, attempt, err, ctx.Err())
		}
		if m != nil {
			m.attempts.WithLabelValues(w.cfg.Name, result).Inc()
			m.seconds.WithLabelValues(w.cfg.Name).Observe(time.Since(start).Seconds())
		}
		if result == "delivered" {
			if m != nil {
				m.retrying.WithLabelValues(w.cfg.Name).Set(0)
			}
			if attempt > 1 {
				w.log.Info("webhook delivered after retries", "id", n.ID, "attempts", attempt)
			}
			return nil
		}
		if err == nil {
			err = fmt.Errorf("status %d", status)
		}
		if m != nil {
			m.retrying.WithLabelValues(w.cfg.Name).Set(float64(attempt))
		}
		wait := jitter(backoff)
		if retryAfter > wait {
			wait = min(retryAfter, w.cfg.RetryMax)
		}
		w.log.Warn("webhook attempt failed; retrying", "id", n.ID, "type", n.Type, "attempt", attempt,
			"err", err, "retry_in", wait)
		if !sleep(ctx, wait) {
			return fmt.Errorf("webhook: notification %s not delivered after %d attempts (last: %v): %w",
				n.ID, attempt, err, ctx.Err())
		}
		backoff = min(2*backoff, w.cfg.RetryMax)
	}
}

// post makes one attempt: it returns the answer's status (0 without one),
// the delay its Retry-After asks for (429 and 503 only), and the error.
func (w *Webhook) post(ctx context.Context, n *NoteRow) (int, time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, w.url, bytes.NewReader(n.Body))
	if err != nil {
		return 0, 0, err
	}
	h := req.Header
	h["Content-Type"] = []string{"application/json"}
	h["User-Agent"] = []string{webhookUserAgent}
	h[WebhookHeaderID] = []string{n.ID}
	h[WebhookHeaderType] = []string{n.Type}
	h[WebhookHeaderSignature] = []string{signWebhook(w.cfg.Secret, time.Now(), n.Body)}
	resp, err := w.client.Do(req)
	if err != nil {
		// Without the URL, which may hold a token, in logs and /readyz.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = fmt.Errorf("%s: %w", ue.Op, ue.Err)
		}
		return 0, 0, err
	}
	// Read a bounded part of the answer, so that a short one frees the
	// connection for the next request; the rest is dropped with it.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, webhookResponseBytesMax))
	resp.Body.Close()
	var retryAfter time.Duration
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			retryAfter = time.Duration(min(s, 86400)) * time.Second
		}
	}
	return resp.StatusCode, retryAfter, nil
}

// webhookResult names an attempt's outcome for metrics (a small fixed set).
func webhookResult(status int, err error) string {
	switch {
	case err != nil && errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case err != nil:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "timeout"
		}
		return "error"
	case status >= 200 && status < 300:
		return "delivered"
	case status >= 400 && status < 500:
		return "http_4xx"
	case status >= 500 && status < 600:
		return "http_5xx"
	default:
		return "http_other"
	}
}

// signWebhook returns the Meterd-Signature header of body at time t.
func signWebhook(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	b := make([]byte, 0, len("t=,v1=")+len(ts)+2*sha256.Size)
	b = append(b, "t="...)
	b = append(b, ts...)
	b = append(b, ",v1="...)
	return string(hex.AppendEncode(b, webhookMAC(secret, ts, body)))
}

// webhookMAC is HMAC-SHA256(secret, ts + "." + body).
func webhookMAC(secret []byte, ts string, body []byte) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return mac.Sum(nil)
}

// Errors of VerifyWebhookSignature.
var (
	ErrWebhookHeader    = errors.New("webhook: malformed Meterd-Signature header")
	ErrWebhookSignature = errors.New("webhook: no signature matches")
	ErrWebhookTimestamp = errors.New("webhook: signature timestamp outside the tolerance")
)

// VerifyWebhookSignature checks a webhook request as a receiver should,
// with the request's Meterd-Signature header and its raw body (before any
// JSON decoding): that one v1 signature is the HMAC-SHA256 of "<t>.<body>"
// under secret, then that t is within tolerance of now (either way: replays
// and clock skew). tolerance <= 0 means WebhookToleranceDefault. The
// header is "t=<unix seconds>,v1=<hex>"; several v1 entries (during a
// secret rotation) are accepted, other schemes ignored. The errors wrap
// ErrWebhookHeader, ErrWebhookSignature or ErrWebhookTimestamp.
func VerifyWebhookSignature(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if len(secret) == 0 {
		return errors.New("webhook: empty secret")
	}
	if len(header) > webhookSignatureBytesMax {
		return fmt.Errorf("%w: longer than %d bytes", ErrWebhookHeader, webhookSignatureBytesMax)
	}
	if tolerance <= 0 {
		tolerance = WebhookToleranceDefault
	}
	ts := ""
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return fmt.Errorf("%w: %q is not key=value", ErrWebhookHeader, part)
		}
		switch k {
		case "t":
			if ts != "" {
				return fmt.Errorf("%w: two timestamps", ErrWebhookHeader)
			}
			if _, err := strconv.ParseInt(v, 10, 64); err != nil || v == "" || v[0] == '+' {
				return fmt.Errorf("%w: timestamp %q", ErrWebhookHeader, v)
			}
			ts = v
		case "v1":
			s, err := hex.DecodeString(v)
			if err != nil || len(s) != sha256.Size {
				return fmt.Errorf("%w: v1 %q is not %d hex bytes", ErrWebhookHeader, v, sha256.Size)
			}
			sigs = append(sigs, s)
		}
	}
	if ts == "" || len(sigs) == 0 {
		return fmt.Errorf("%w: want t=<unix seconds>,v1=<hex>", ErrWebhookHeader)
	}
	want := webhookMAC(secret, ts, body)
	match := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			match = true
		}
	}
	if !match {
		return ErrWebhookSignature
	}
	t, _ := strconv.ParseInt(ts, 10, 64)
	if d := now.Sub(time.Unix(t, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed at %s, %v from now", ErrWebhookTimestamp,
			time.Unix(t, 0).UTC().Format(time.RFC3339), d.Round(time.Second))
	}
	return nil
}

// WebhookMetrics are the webhook destinations' metrics, labelled by sink
// name.
type WebhookMetrics struct {
	attempts *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	retrying *prometheus.GaugeVec
}

// NewWebhookMetrics registers the webhook metrics with reg (nil:
// unregistered).
func NewWebhookMetrics(reg prometheus.Registerer) *WebhookMetrics {
	m := &WebhookMetrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterd_webhook_attempts_total",
			Help: "Webhook delivery attempts, by result: delivered, http_4xx, http_5xx, http_other, timeout, error."},
			[]string{"sink", "result"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meterd_webhook_attempt_seconds",
			Help:    "Duration of one webhook delivery attempt.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}, []string{"sink"}),
		retrying: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meterd_webhook_retrying",
			Help: "Failed attempts so far of the notification a webhook is delivering; 0 when the last attempt succeeded."},
			[]string{"sink"}),
	}
	if reg != nil {
		reg.MustRegister(m.attempts, m.seconds, m.retrying)
	}
	return m
}
