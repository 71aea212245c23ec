package bench

import (
	"context"
	"net"
	"testing"
)

// TestNoop applies prepared requests, JSON and NDJSON, to the no-op
// endpoint: one charged result per event.
func TestNoop(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go ServeNoop(ln)
	reqs := Scenario{Name: "t", Customers: 3, Dist: DistUniform, Batch: 7}.Requests("n", 4)
	for _, opts := range [][]MeterdOption{{MeterdName(SysNoop)}, {MeterdName(SysNoop), MeterdNDJSON()}} {
		m, err := NewMeterd("http://"+ln.Addr().String(), "", 0, 2, opts...)
		if err != nil {
			t.Fatal(err)
		}
		apply, err := m.Prepare(reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range reqs {
			res := make([]Result, len(reqs[i]))
			if err := apply(context.Background(), i, res); err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if r != (Result{StatusCharged, 1}) {
					t.Fatalf("request %d: %+v", i, res)
				}
			}
		}
		if m.Name() != SysNoop || m.PIDs() != nil {
			t.Errorf("name %q pids %v", m.Name(), m.PIDs())
		}
	}
}
