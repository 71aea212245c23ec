package bench

import (
	"bytes"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// The no-op endpoint: the generator's floor. It answers POST /v1/events as
// meterd does in shape (one "charged" result per event, in order) without
// storing, pricing or syncing anything, so a run against it measures what
// the generator, the loopback network and an HTTP round trip cost by
// themselves. cmd/meterbench runs it in a process of its own, so that its
// CPU is the server's and not the generator's.
//
// It counts a request's events by their `{"id":` openings, which is what the
// scenario's bodies hold once per event (AppendEvent); it reads nothing else.

// noopResult is every no-op answer: charged 1 micro-USD.
const noopResult = `{"id":"-","status":"charged","charges":[{"account":"default:USD","amount":"0.000001"}]}`

// ServeNoop serves the no-op endpoint on ln until ln is closed.
func ServeNoop(ln net.Listener) error {
	srv := &fasthttp.Server{
		Handler:            noopHandler,
		Name:               "meterbench-noop",
		ReadTimeout:        time.Minute,
		WriteTimeout:       time.Minute,
		MaxRequestBodySize: 64 << 20,
	}
	return srv.Serve(ln)
}

func noopHandler(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/healthz":
		ctx.SetBodyString("ok")
		return
	case eventsPath:
	default:
		// The set-up calls (pricing, customers, top-ups): accepted, kept
		// nowhere.
		ctx.SetContentType("application/json")
		ctx.SetBodyString("{}")
		return
	}
	n := bytes.Count(ctx.PostBody(), []byte(`{"id":`))
	ctx.SetContentType("application/json")
	buf := make([]byte, 0, 16+n*(len(noopResult)+1))
	buf = append(buf, `{"results":[`...)
	for i := range n {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, noopResult...)
	}
	ctx.SetBody(append(buf, "]}"...))
}
