// Package ingest is meterd's way in: the fasthttp API of the contract and
// the decoding of usage events (JSON batches and NDJSON).
//
// Every write answers only after the engine made it durable. A request is
// refused whole only when it cannot be read (400, 413), is not allowed (401,
// 403) or meets a full queue (503: retry with the same ids); otherwise each
// event gets its own result and one bad event never fails its neighbours.
package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meterd/meterd/balance"
	"github.com/meterd/meterd/balance/wallet"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"github.com/valyala/fasthttp/pprofhandler"
	"github.com/valyala/fastjson"
)

// Config configures a Server.
type Config struct {
	Engine         *balance.Engine
	Keys           *Keys // nil or empty: no auth (loopback only; see CheckListen)
	Limits         Limits
	Log            *slog.Logger
	Registerer     prometheus.Registerer
	Gatherer       prometheus.Gatherer
	RequestTimeout time.Duration // read and write timeout per request; default 30s
	// Readiness reports on the sinks for /readyz: ready is false when a sink
	// must take the server out of rotation. nil: no sinks.
	Readiness func() (ready bool, sinks []byte)
	// Admit, when set, is asked before an events request is applied; an
	// error refuses the request whole with 503 (retry with the same ids).
	Admit func() error
	// TestClock serves /v1/test-clock (the engine must run on a
	// balance.ManualClock); off, those endpoints answer 404.
	TestClock bool
	// BodyMemoryMax bounds the bytes held by request bodies being read,
	// server-wide (see body.go); 0: 256 MiB.
	BodyMemoryMax int64
	// Doors are the foreign ingest APIs served (doors.go); 0: none.
	Doors Door
	// LagoIdempotent answers a Lago transaction_id sent again with the
	// same content as the first time (200), where Lago answers 422
	// value_already_exist.
	LagoIdempotent bool
	// DoorMapping chooses the fields of the doors' events that are the
	// customer and the event type (checked by DoorMapping.Check).
	DoorMapping DoorMapping
}

// Server serves the HTTP API.
type Server struct {
	e       *balance.Engine
	keys    atomic.Pointer[Keys] // SetKeys replaces them (a reloaded key file)
	lim     Limits
	log     *slog.Logger
	metrics *httpMetrics
	srv     *fasthttp.Server
	prom    fasthttp.RequestHandler
	ready   atomic.Bool
	pool    sync.Pool // *eventsScratch
	budget  bodyBudget
	sinks   func() (bool, []byte)
	admit   func() error

	testClockOn bool

	doors          Door
	stripe         *stripeSessions
	lagoIdempotent bool
	doorMap        DoorMapping
}

// NewServer returns a server for the engine.
func NewServer(c Config) *Server {
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.Limits.BodyBytesMax == 0 {
		c.Limits = DefaultLimits()
	}
	if c.Gatherer == nil {
		c.Gatherer = prometheus.DefaultGatherer
	}
	if c.BodyMemoryMax <= 0 {
		c.BodyMemoryMax = bodyMemoryMaxDefault
	}
	s := &Server{e: c.Engine, lim: c.Limits, log: c.Log, metrics: newHTTPMetrics(c.Registerer), sinks: c.Readiness, admit: c.Admit, testClockOn: c.TestClock}
	s.keys.Store(c.Keys)
	s.budget.max = c.BodyMemoryMax
	s.doors, s.lagoIdempotent, s.stripe, s.doorMap = c.Doors, c.LagoIdempotent, newStripeSessions(), c.DoorMapping.withDefaults()
	s.prom = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(c.Gatherer, promhttp.HandlerOpts{}))
	s.srv = &fasthttp.Server{
		Handler:            s.Handle,
		Name:               "meterd",
		MaxRequestBodySize: c.Limits.BodyBytesMax,
		ReadTimeout:        c.RequestTimeout,
		WriteTimeout:       c.RequestTimeout,
		IdleTimeout:        2 * time.Minute,
		ReadBufferSize:     16 << 10,
		ErrorHandler:       s.errorHandler,
		Logger:             fasthttpLogger{c.Log},
		// Bodies are read by the handler, after auth and within limits
		// (body.go): fasthttp calls it once the headers and at most one
		// byte of body have arrived.
		StreamRequestBody: true,
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{MaxRequestBodySize: 1}
		},
		ExpectHandler: s.expect,
	}
	s.ready.Store(true)
	return s
}

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.srv.Serve(lingerListener{ln}) }

// Shutdown stops accepting connections and waits for requests in flight.
func (s *Server) Shutdown() error {
	s.ready.Store(false)
	return s.srv.Shutdown()
}

// CheckListen refuses a non-loopback address when no API key is configured:
// without keys the API has no auth and must not be reachable from elsewhere.
func CheckListen(addr string, authEnabled bool) error {
	if authEnabled {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q is not loopback and no API keys are configured (--api-keys): refusing to serve without auth beyond this machine", addr)
	}
	return nil
}

func (s *Server) errorHandler(ctx *fasthttp.RequestCtx, err error) {
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		writeError(ctx, "body_too_large",
			fmt.Sprintf("the request body is larger than %d bytes", s.lim.BodyBytesMax), "")
		return
	}
	var small *fasthttp.ErrSmallBuffer
	var nerr net.Error
	switch {
	case errors.As(err, &small):
		writeError(ctx, "headers_too_large", "the request headers are too large", "")
	case errors.As(err, &nerr) && nerr.Timeout():
		ctx.SetConnectionClose()
		writeError(ctx, "request_timeout", "no complete request arrived in time", "")
	default:
		writeError(ctx, "malformed_request", "the HTTP request could not be read: "+err.Error(), "")
	}
}

// Handle routes one request.
func (s *Server) Handle(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	route := "bad_framing"
	if badFraming(&ctx.Request.Header) {
		refuseFraming(ctx)
	} else {
		route = s.route(ctx)
	}
	s.releaseBody(ctx)
	if name, ok := ctx.UserValue(auditKey{}).(string); ok {
		// Every admin write: who (the key's name, never the key), what,
		// and how it ended.
		s.log.Info("audit", "key", name, "method", string(ctx.Method()), "path", string(ctx.Path()),
			"status", ctx.Response.StatusCode(), "remote", ctx.RemoteIP().String())
	}
	s.metrics.observe(route, ctx.Response.StatusCode(), time.Since(start))
}

// route dispatches the request by the route table (routes.go) and
// returns the route label for metrics.
func (s *Server) route(ctx *fasthttp.RequestCtx) string {
	path := string(ctx.Path())
	method := string(ctx.Method())
	if name := s.dispatch(ctx, path, method); name != "" {
		return name
	}
	if strings.HasPrefix(path, "/debug/pprof/") {
		if s.allow(ctx, method, "GET", ScopeAdmin) {
			pprofhandler.PprofHandler(ctx)
		}
		return "pprof"
	}
	writeError(ctx, "not_found", "no such endpoint: "+method+" "+path, "")
	return "unknown"
}

// healthz answers that the process is up.
func (s *Server) healthz(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	ctx.SetBodyString(`{"status":"ok"}`)
}

// readyz answers whether the server should get traffic: storage open and
// writable, sinks not stalled, not stopping.
func (s *Server) readyz(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	if !s.ready.Load() {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString(`{"status":"stopping"}`)
		return
	}
	ok, sinks := true, []byte("[]")
	if s.sinks != nil {
		ok, sinks = s.sinks()
	}
	// storage is "open", or "disk_full" while writes are refused (reads
	// are served; writes resume by themselves when space is freed).
	storage, writable := s.e.Storage()
	b := []byte(`{"status":"ready","storage":`)
	if !ok || !writable {
		b = []byte(`{"status":"not_ready","storage":`)
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
	}
	b = appendString(b, storage)
	b = append(append(append(b, `,"recovered":true,"sinks":`...), sinks...), '}')
	ctx.SetBody(b)
}

// listOffers answers GET /v1/offers: the pricing's top-up offers.
func (s *Server) listOffers(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	ctx.SetBody(append(append([]byte(`{"offers":`), s.e.Pricing().OffersJSON()...), '}'))
}

// eventsRoute serves POST /v1/events.
func (s *Server) eventsRoute(ctx *fasthttp.RequestCtx, _ []string) { s.events(ctx) }

// doorEventsRoute serves POST /api/v1/events, which OpenMeter and Lago
// both use: a Lago body goes to the Lago door, anything else to OpenMeter's.
// The body is parsed once, here, when its shape decides.
func (s *Server) doorEventsRoute(ctx *fasthttp.RequestCtx, _ []string) {
	switch {
	case s.doors&DoorLago == 0:
		s.openMeterEvents(ctx, nil)
	case s.doors&DoorOpenMeter == 0:
		s.lagoEvents(ctx, false, nil)
	default:
		var p fastjson.Parser
		v, lago := lagoBody(ctx, &p)
		if lago {
			s.lagoEvents(ctx, false, v)
		} else {
			s.openMeterEvents(ctx, v)
		}
	}
}

// allow checks the method and the caller's scope, then reads the request's
// body (readBody), answering the request when either is refused: no byte of a
// body is read before its key is known to be allowed.
func (s *Server) allow(ctx *fasthttp.RequestCtx, method, want string, scope Scope) bool {
	if method != want {
		methodNotAllowed(ctx, want)
		return false
	}
	status, code, msg := s.authorize(ctx, scope)
	if status != 0 {
		writeError(ctx, code, msg, "")
		return false
	}
	return s.readBody(ctx)
}

// authorize checks the request's key for scope, from the client's address
// and within the key's rate limit; it returns a refusal's status, code and
// message (status 0: allowed), setting Retry-After on a 429. An allowed
// admin write is marked for its audit line (Handle).
func (s *Server) authorize(ctx *fasthttp.RequestCtx, scope Scope) (int, string, string) {
	keys := s.keys.Load()
	if keys.Len() == 0 {
		return 0, "", ""
	}
	status, code, retry, name := keys.AuthorizeFrom(ctx.Request.Header.Peek("Authorization"), scope, ctx.RemoteIP())
	switch status {
	case 0:
		if scope&ScopeAdmin != 0 && !ctx.IsGet() && !ctx.IsHead() {
			ctx.SetUserValue(auditKey{}, name)
		}
		return 0, "", ""
	case fasthttp.StatusForbidden:
		if retry < 0 {
			return status, code, "this API key is not accepted from this address (allow_from)"
		}
		return status, code, "this API key does not have the scope this endpoint needs"
	case fasthttp.StatusTooManyRequests:
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(int(math.Ceil(retry.Seconds()))))
		return status, code, "this API key's rate limit is reached: retry after Retry-After seconds"
	}
	return status, code, "a valid API key is required: Authorization: Bearer <key>"
}

// auditKey marks an allowed admin write with the name of its key.
type auditKey struct{}

// SetKeys replaces the API keys (a reloaded key file): a key removed is
// refused from the next request on. Auth cannot be turned off or on this
// way: keys must be non-empty when the server started with keys.
func (s *Server) SetKeys(k *Keys) { s.keys.Store(k) }

// methodNotAllowed answers 405 with every method the endpoint serves.
func methodNotAllowed(ctx *fasthttp.RequestCtx, allowed string) {
	ctx.Response.Header.Set("Allow", allowed)
	writeError(ctx, "method_not_allowed", "this endpoint serves "+allowed, "")
}

// writeError writes the contract's error body, with the status of code in
// the one table (codes.go). A 503 says when to retry.
func writeError(ctx *fasthttp.RequestCtx, code, msg, field string) {
	writeErrorStatus(ctx, statusOf(code), code, msg, field)
}

// writeErrorStatus is writeError with a status the contract gives one
// endpoint in place of the table's (402 for a hold that does not fit).
func writeErrorStatus(ctx *fasthttp.RequestCtx, status int, code, msg, field string) {
	b := make([]byte, 0, 128+len(msg))
	b = append(b, `{"error":{"code":`...)
	b = appendString(b, code)
	b = append(b, `,"message":`...)
	b = appendString(b, msg)
	if field != "" {
		b = append(b, `,"field":`...)
		b = appendString(b, field)
	}
	b = append(b, "}}"...)
	if status == fasthttp.StatusServiceUnavailable && len(ctx.Response.Header.Peek("Retry-After")) == 0 {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// writeErr writes err with the status its code maps to.
func (s *Server) writeErr(ctx *fasthttp.RequestCtx, err error) {
	var coded interface{ ErrorCode() string }
	if errors.As(err, &coded) {
		field := ""
		var fe interface{ FieldPath() string }
		if errors.As(err, &fe) {
			field = fe.FieldPath()
		}
		msg := err.Error()
		switch e := err.(type) {
		case *wallet.Error:
			msg = e.Message
		case *apiError:
			msg = e.Message
		}
		if me, ok := err.(interface{ MessageText() string }); ok {
			msg = me.MessageText()
		}
		writeError(ctx, coded.ErrorCode(), msg, field)
		return
	}
	s.log.Error("request failed", "path", string(ctx.Path()), "err", err)
	writeError(ctx, "internal_error", "internal error; it has been logged", "")
}

// apiError is a request validation error of this package.
type apiError struct {
	Code, Message, Field string
}

func (e *apiError) Error() string       { return e.Code + ": " + e.Message }
func (e *apiError) ErrorCode() string   { return e.Code }
func (e *apiError) FieldPath() string   { return e.Field }
func (e *apiError) MessageText() string { return e.Message }

func badRequest(code, field, format string, args ...any) *apiError {
	return &apiError{Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// validID reports whether s is an identifier of the contract: 1-128 chars of [A-Za-z0-9._:-].
func validID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Warn(fmt.Sprintf(format, args...), "component", "http")
}
