package ingest

import (
	"testing"

	"github.com/meterd/meterd/balance"
)

// TestRejectedEventsByCode: meterd_events_rejected_total counts each event
// rejected over HTTP by its contract code, through the native API and the
// doors alike, and nothing else.
func TestRejectedEventsByCode(t *testing.T) {
	e := newDoorEnv(t, apiEnvOpts{})
	e.fund("rc1", "15")
	e.must(200, "POST", "/v1/events", `{"events":[
		{"id":"n1","customer_id":"rc1","event_type":"task"},
		{"id":"n2","customer_id":"rc1","event_type":"task"},
		{"id":"n3","customer_id":"rc1"}]}`)
	if r := e.send("POST", "/api/v1/events", "application/cloudevents-batch+json", "", []byte(`[
		{"specversion":"1.0","id":"d1","source":"app","type":"task","subject":"rc1"},
		{"specversion":"1.0","id":"d2","source":"app","type":"task"}]`)); r.Status != 400 {
		t.Fatalf("the OpenMeter door: %s", r)
	}
	for code, want := range map[string]int{"insufficient_funds": 2, "invalid_event": 2, "unknown_customer": 0} {
		if got := counterValue(e.srv.metrics.rejected.WithLabelValues(code)); got != want {
			t.Errorf("meterd_events_rejected_total{code=%q} = %d, want %d", code, got, want)
		}
	}
	if got := counterValue(e.srv.metrics.httpEvents[balance.EventCharged]); got != 1 {
		t.Errorf("charged: %d, want 1", got)
	}
}
