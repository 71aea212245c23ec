package ingest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestLagoDoorWithLagoClient drives Lago's own JavaScript client (npm's
// lago-javascript-client; its Go client is not on the module proxy)
// against the Lago door: an event charged, a resend refused as Lago
// refuses it, a bad event and an unaffordable one surfaced as the client
// surfaces Lago's errors, and a batch. make test installs the client
// (METERD_LAGO_MODULES); without it the test is skipped, unless
// METERD_LAGO_REQUIRED is set.
func TestLagoDoorWithLagoClient(t *testing.T) {
	modules := os.Getenv("METERD_LAGO_MODULES")
	if modules == "" {
		if os.Getenv("METERD_LAGO_REQUIRED") != "" {
			t.Fatal("METERD_LAGO_REQUIRED is set but METERD_LAGO_MODULES is not")
		}
		t.Skip("METERD_LAGO_MODULES is not set (make test installs lago-javascript-client)")
	}
	script, err := filepath.Abs("testdata/lago_client.mjs")
	if err != nil {
		t.Fatal(err)
	}
	e := newDoorEnv(t, apiEnvOpts{})
	e.fund("lj1", "100")
	out, err := exec.Command("node", script, e.base, modules).Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	type lagoErr struct {
		Status       int
		Code         string
		ErrorDetails map[string][]string `json:"error_details"`
	}
	var got map[string]struct {
		Status int
		Data   json.RawMessage
		Error  *lagoErr
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if c := got["charged"]; c.Status != 200 || c.Error != nil {
		t.Errorf("charged: %+v", c)
	}
	if c := got["resend"]; c.Status != 422 || c.Error == nil || c.Error.ErrorDetails["transaction_id"][0] != "value_already_exist" {
		t.Errorf("resend: %+v", c)
	}
	if c := got["bad"]; c.Status != 422 || c.Error == nil || c.Error.Code != "validation_errors" || len(c.Error.ErrorDetails["code"]) == 0 {
		t.Errorf("bad event: %+v", c)
	}
	if c := got["unaffordable"]; c.Status != 422 || c.Error == nil || c.Error.ErrorDetails["customer"][0] != "insufficient_funds" {
		t.Errorf("unaffordable event: %+v", c)
	}
	if c := got["batch"]; c.Status != 200 {
		t.Errorf("batch: %+v", c)
	}
	if w, _ := e.wallet("lj1"); w.available("default:CREDITS") != "70" {
		t.Errorf("after three tasks: %s", w.available("default:CREDITS"))
	}
}
