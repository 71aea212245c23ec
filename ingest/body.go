package ingest

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/valyala/fasthttp"
)

// Request bodies are read by the handler, never by fasthttp ahead of it
// (fasthttp.Server.StreamRequestBody, with a look-ahead of one byte set by
// HeaderReceived: fasthttp reads the headers and at most one byte of body
// before calling Handle). So a body is read only
//
//   - after the request's framing is checked (badFraming),
//   - after its key is authorized for the endpoint (allow),
//   - up to the endpoint's own limit (bodyLimit: 8 MiB for events, 1 MiB
//     for a pricing document, 64 KiB for everything else), and
//   - while the bytes held by bodies being read, server-wide, stay within
//     Limits.BodyMemoryMax (bodyBudget); past it the request is 503
//     overloaded at once, before its body is read.
//
// A request whose body is not read to its end (refused, or a route that
// takes no body) is answered with Connection: close, so that no unread byte
// is ever parsed as the next request.

// smallBodyBytesMax bounds the bodies of endpoints that never need more:
// customers, top-ups, adjustments, holds, the test clock, GETs.
const smallBodyBytesMax = 64 << 10

// bodyMemoryMaxDefault bounds the bytes of all bodies being read at once.
const bodyMemoryMaxDefault = 256 << 20

// bodyReadChunk is how much budget a body of unknown length (chunked)
// takes at a time, and the read size.
const bodyReadChunk = 64 << 10

// bodyBudget counts the bytes reserved by bodies being read or held.
type bodyBudget struct {
	max  int64
	used atomic.Int64
}

// take reserves n bytes; false when that would cross max.
func (b *bodyBudget) take(n int) bool {
	if b.used.Add(int64(n)) > b.max {
		b.used.Add(-int64(n))
		return false
	}
	return true
}

func (b *bodyBudget) give(n int) { b.used.Add(-int64(n)) }

// heldBody is a body read by readBody: its buffer and the budget it holds
// until the request is answered.
type heldBody struct {
	b        []byte
	reserved int
}

// heldBodyKey is the RequestCtx user value under which a *heldBody waits
// for Handle to give it back.
type heldBodyKey struct{}

var heldBodies = sync.Pool{New: func() any { return new(heldBody) }}

// bodyLimit returns the body limit of the endpoint at path, and the code of
// the 413 that refuses a larger body.
func (s *Server) bodyLimit(path []byte, method []byte) (int, string) {
	switch string(path) {
	case "/v1/events", "/v1/pricing/simulate", "/v1/check", "/api/v1/events", "/api/v1/events/batch", "/v2/billing/meter_event_stream":
		return s.lim.BodyBytesMax, CodeBodyTooLarge
	case "/v1/pricing":
		if string(method) == "PUT" {
			return pricingDocBytesMax, "pricing_too_large"
		}
	}
	return smallBodyBytesMax, CodeBodyTooLarge
}

// declaredBody reports whether the request says it carries a body.
func declaredBody(h *fasthttp.RequestHeader) bool {
	return h.ContentLength() > 0 || h.ContentLength() == -1
}

// badFraming reports a request whose body length is given two ways: both
// Content-Length and Transfer-Encoding. RFC 9112 §6.1: such a message may be
// an attempt at request smuggling; it is refused and the connection closed.
// (fasthttp itself refuses two Content-Lengths and two Transfer-Encodings, and
// Transfer-Encoding on HTTP/1.0.)
func badFraming(h *fasthttp.RequestHeader) bool {
	if h.ContentLength() != -1 { // only a chunked request can carry both
		return false
	}
	raw := h.RawHeaders()
	for len(raw) > 0 {
		var line []byte
		line, raw, _ = bytes.Cut(raw, []byte("\n"))
		name, _, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Content-Length")) {
			return true
		}
	}
	return false
}

// refuseFraming answers a request with bad framing.
func refuseFraming(ctx *fasthttp.RequestCtx) {
	ctx.SetConnectionClose()
	writeError(ctx, "bad_framing",
		"the request has both Content-Length and Transfer-Encoding; send one of them", "")
}

// readBody reads the request body, within the endpoint's limit and the
// server's body budget, and makes it the request's body (ctx.PostBody). It
// answers the request and returns false when the body is refused.
func (s *Server) readBody(ctx *fasthttp.RequestCtx) bool {
	stream := ctx.RequestBodyStream()
	if stream == nil || !declaredBody(&ctx.Request.Header) {
		return true
	}
	limit, tooLarge := s.bodyLimit(ctx.Path(), ctx.Method())
	n := ctx.Request.Header.ContentLength()
	if n > limit {
		ctx.SetConnectionClose()
		writeError(ctx, tooLarge,
			"the request body is "+strconv.Itoa(n)+" bytes; this endpoint takes at most "+strconv.Itoa(limit), "")
		return false
	}
	reserve := n
	if n < 0 { // chunked: the budget grows as the body does
		reserve = min(limit+1, bodyReadChunk)
	}
	if !s.budget.take(reserve) {
		s.overloadedBody(ctx)
		return false
	}
	hb := heldBodies.Get().(*heldBody)
	hb.reserved = reserve
	ctx.SetUserValue(heldBodyKey{}, hb)
	buf := hb.b[:0]
	if n >= 0 {
		buf = grow(buf, n)
		if _, err := io.ReadFull(stream, buf[:n]); err != nil {
			hb.b = buf
			return s.bodyReadFailed(ctx, err)
		}
		buf = buf[:n]
	} else {
		for {
			if len(buf) == cap(buf) {
				want := min(limit+1, len(buf)+max(len(buf), bodyReadChunk))
				if want > hb.reserved {
					if !s.budget.take(want - hb.reserved) {
						hb.b = buf
						s.overloadedBody(ctx)
						return false
					}
					hb.reserved = want
				}
				buf = grow(buf, want-len(buf))
			}
			m, err := stream.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+m]
			if len(buf) > limit {
				hb.b = buf
				ctx.SetConnectionClose()
				writeError(ctx, tooLarge,
					"the request body is larger than "+strconv.Itoa(limit)+" bytes, the most this endpoint takes", "")
				return false
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				hb.b = buf
				return s.bodyReadFailed(ctx, err)
			}
		}
	}
	hb.b = buf
	ctx.Request.SetBodyRaw(buf) // also releases the stream: the body is read to its end
	return true
}

// grow returns buf with room for n more bytes.
func grow(buf []byte, n int) []byte {
	if cap(buf)-len(buf) >= n {
		return buf[:len(buf):cap(buf)]
	}
	nb := make([]byte, len(buf), len(buf)+n)
	copy(nb, buf)
	return nb
}

func (s *Server) overloadedBody(ctx *fasthttp.RequestCtx) {
	ctx.SetConnectionClose()
	writeError(ctx, "overloaded",
		"too many request bodies are being read at once; retry with the same ids", "")
}

func (s *Server) bodyReadFailed(ctx *fasthttp.RequestCtx, err error) bool {
	ctx.SetConnectionClose()
	var nerr interface{ Timeout() bool }
	if errors.As(err, &nerr) && nerr.Timeout() {
		writeError(ctx, "request_timeout", "the request body did not arrive in time", "")
		return false
	}
	writeError(ctx, "malformed_request", "the request body could not be read: "+err.Error(), "")
	return false
}

// releaseBody gives back what readBody held for this request, once it is
// answered; a body that was declared but not read closes the connection.
func (s *Server) releaseBody(ctx *fasthttp.RequestCtx) {
	if v := ctx.UserValue(heldBodyKey{}); v != nil {
		hb := v.(*heldBody)
		ctx.RemoveUserValue(heldBodyKey{})
		ctx.Request.ResetBody()
		s.budget.give(hb.reserved)
		hb.reserved = 0
		if cap(hb.b) > 1<<20 {
			hb.b = nil // a rare large body is not kept for the next request
		}
		heldBodies.Put(hb)
	}
	if ctx.RequestBodyStream() != nil && declaredBody(&ctx.Request.Header) {
		ctx.SetConnectionClose()
		lingerOnClose(ctx.Conn())
	}
}

// expect answers "Expect: 100-continue" from the headers alone: a body the
// endpoint would refuse is refused before the client sends it (413, 401,
// 400) instead of being invited with 100 Continue.
func (s *Server) expect(ctx *fasthttp.RequestCtx) int {
	h := &ctx.Request.Header
	if badFraming(h) {
		refuseFraming(ctx)
		return fasthttp.StatusBadRequest
	}
	if limit, tooLarge := s.bodyLimit(ctx.Path(), ctx.Method()); h.ContentLength() > limit {
		writeError(ctx, tooLarge,
			"the request body is "+strconv.Itoa(h.ContentLength())+" bytes; this endpoint takes at most "+strconv.Itoa(limit), "")
		return fasthttp.StatusRequestEntityTooLarge
	}
	if keys := s.keys.Load(); keys.Len() > 0 && !keys.Known(h.Peek("Authorization")) {
		writeError(ctx, "unauthorized", "a valid API key is required: Authorization: Bearer <key>", "")
		return fasthttp.StatusUnauthorized
	}
	return fasthttp.StatusContinue
}
