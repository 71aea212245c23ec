package main

// TestDedupWindowEdge drives the real binary on the test clock across the
// end of the dedup window of one charged event (issue 9, defect 1): a
// resend is answered `duplicate` with its original charges at every
// instant the engine still accepts the event, up to and including the
// window's last nanosecond, and `out_of_window` after it; it is never
// charged twice.

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

func TestDedupWindowEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the meterd binary: skipped with -short")
	}
	t.Parallel()
	start := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	occurred := start.Add(5 * time.Minute) // as far ahead of the clock as an event may be
	h := &crashHarness{t: t, bin: buildMeterd(t), dir: filepath.Join(t.TempDir(), "data"),
		args: []string{"--test-clock", "--test-clock-start", start.Format(time.RFC3339), "--dedup-window", "24h"}}
	t.Cleanup(func() {
		if h.proc != nil && h.proc.running() {
			h.proc.cmd.Process.Kill()
			<-h.proc.done
		}
	})
	h.start()
	h.mustDo("PUT", "/v1/pricing", []byte(crashPricing), 200)
	h.mustDo("PUT", "/v1/customers/edge", []byte(`{"insufficient_funds":"reject"}`), 201)
	h.mustDo("POST", "/v1/customers/edge/topups", []byte(`{"id":"t1","asset":"CREDITS","amount":"100"}`), 201)
	ev := &crashEvent{id: "e1", customer: "edge", raw: fmt.Appendf(nil,
		`{"id":"e1","customer_id":"edge","event_type":"image_generated","occurred_at":%q,"data":{}}`,
		occurred.Format(time.RFC3339Nano))}

	send := func(at time.Time) crashResult {
		t.Helper()
		h.mustDo("POST", "/v1/test-clock", fmt.Appendf(nil, `{"now":%q}`, at.Format(time.RFC3339Nano)), 200)
		results, status, body, err := postEvents(h.client, h.url("/v1/events"), []*crashEvent{ev})
		if err != nil || status != 200 {
			t.Fatalf("event at %s: status %d, %v: %s", at.Format(time.RFC3339Nano), status, err, body)
		}
		return results[0]
	}
	first := send(start)
	if first.Status != "charged" || len(first.Charges) != 1 || first.Charges[0].Amount != "3" {
		t.Fatalf("first send: %+v, want charged 3", first)
	}
	want := chargesKey(first.Charges)

	windowEnd := occurred.Add(24 * time.Hour) // the last instant the event is inside the window
	steps := []struct {
		at   time.Time
		want string // duplicate | out_of_window
	}{
		{windowEnd.Add(-time.Nanosecond), "duplicate"},
		{windowEnd, "duplicate"},
		{windowEnd.Add(time.Nanosecond), "out_of_window"},
		{windowEnd.Add(time.Minute), "out_of_window"},
	}
	for _, s := range steps {
		r := send(s.at)
		at := s.at.Format(time.RFC3339Nano)
		switch {
		case s.want == "duplicate" && (r.Status != "duplicate" || chargesKey(r.Charges) != want):
			t.Errorf("resend at %s: %s %s %+v, want duplicate with the original charges %s", at, r.Status, r.code(), r.Charges, want)
		case s.want == "out_of_window" && (r.Status != "rejected" || r.code() != "out_of_window"):
			t.Errorf("resend at %s: %s %s %+v, want rejected out_of_window", at, r.Status, r.code(), r.Charges)
		}
	}
	if got := h.available("edge")["default:CREDITS"]; got != "97" {
		t.Errorf("available %s, want 97: the event was charged once", got)
	}
	h.stop()
}
