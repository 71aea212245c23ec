package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stripe/stripe-go/v84"
)

// doorPricing: tasks cost 10 credits; tokens cost value credits.
const doorPricing = `{"assets":[{"code":"CREDITS","scale":0}],"prices":[
	{"event_type":"task","account":"default:CREDITS","unit_price":"10"},
	{"event_type":"tokens","account":"default:CREDITS","components":[{"field":"value","unit_price":"1"}]}]}`

func newDoorEnv(t *testing.T, o apiEnvOpts) *apiEnv {
	t.Helper()
	if o.Doors == 0 {
		o.Doors = AllDoors
	}
	e := newAPIEnv(t, o)
	e.putPricing(doorPricing)
	return e
}

// fund creates a customer with credits.
func (e *apiEnv) fund(customer, credits string) {
	e.t.Helper()
	e.newCustomer(customer, `{}`)
	e.topUp(customer, `{"id":"fund","asset":"CREDITS","amount":"`+credits+`"}`)
}

// TestOpenMeterDoorWithCloudEventsSDK: the CloudEvents Go SDK, pointed at
// meterd's OpenMeter door, in structured and binary mode.
func TestOpenMeterDoorWithCloudEventsSDK(t *testing.T) {
	e := newDoorEnv(t, apiEnvOpts{})
	e.fund("om1", "25")
	c, err := cloudevents.NewClientHTTP(cloudevents.WithTarget(e.base + "/api/v1/events"))
	if err != nil {
		t.Fatal(err)
	}
	event := func(id, typ, subject string, data any) cloudevents.Event {
		ev := cloudevents.NewEvent()
		ev.SetID(id)
		ev.SetSource("my-app")
		ev.SetType(typ)
		ev.SetSubject(subject)
		ev.SetTime(time.Now())
		if data != nil {
			if err := ev.SetData(cloudevents.ApplicationJSON, data); err != nil {
				t.Fatal(err)
			}
		}
		return ev
	}
	structured := cloudevents.WithEncodingStructured(context.Background())
	status := func(res error) int {
		var hr *cehttp.Result
		if !cloudevents.ResultAs(res, &hr) {
			t.Fatalf("not an HTTP result: %v", res)
		}
		return hr.StatusCode
	}
	// Charged, in both content modes; a resend is deduplicated.
	if res := c.Send(structured, event("e1", "task", "om1", map[string]any{"k": 1})); !cloudevents.IsACK(res) || status(res) != 204 {
		t.Fatalf("structured event: %v", res)
	}
	if res := c.Send(context.Background(), event("e2", "task", "om1", nil)); !cloudevents.IsACK(res) || status(res) != 204 {
		t.Fatalf("binary event: %v", res)
	}
	if res := c.Send(structured, event("e1", "task", "om1", map[string]any{"k": 1})); !cloudevents.IsACK(res) {
		t.Fatalf("resend: %v", res)
	}
	if w, _ := e.wallet("om1"); w.available("default:CREDITS") != "5" {
		t.Fatalf("after two tasks and a resend: %s left, want 5", w.available("default:CREDITS"))
	}
	// A bad event: 400, OpenMeter's problem shape naming the field.
	res := c.Send(structured, event("e3", "task", "", nil))
	if cloudevents.IsACK(res) || status(res) != 400 {
		t.Fatalf("event without a subject: %v", res)
	}
	// An unaffordable one: 402, and nothing charged.
	if res := c.Send(structured, event("e4", "task", "om1", nil)); cloudevents.IsACK(res) || status(res) != 402 {
		t.Fatalf("unaffordable event: %v", res)
	}
	if w, _ := e.wallet("om1"); w.available("default:CREDITS") != "5" {
		t.Fatalf("after a refused event: %s left", w.available("default:CREDITS"))
	}
	// The refusal is also the customer's usage.rejected notification.
	var notes struct {
		Notifications []struct {
			Type string
			Data struct {
				EventID string `json:"event_id"`
				Code    string
			}
		}
	}
	apiDecode(t, e.must(200, "GET", "/v1/customers/om1/notifications", "").Body, &notes)
	if n := notes.Notifications; len(n) == 0 || n[0].Type != "usage.rejected" || n[0].Data.EventID != "my-app:e4" ||
		n[0].Data.Code != "insufficient_funds" {
		t.Fatalf("notifications after a refused event: %+v", notes)
	}
	// The problem itself, and a batch of which one event is refused.
	r := e.send("POST", "/api/v1/events", "application/cloudevents-batch+json", "", []byte(`[
		{"specversion":"1.0","id":"b1","source":"my-app","type":"task","subject":"om1"},
		{"specversion":"1.0","id":"b2","source":"my-app","type":"task"}]`))
	var p struct {
		Type, Title, Detail string
		Status              int
		Events              []struct{ ID, Source, Code, Field string }
	}
	if err := json.Unmarshal(r.Body, &p); err != nil || r.Status != 400 || p.Status != 400 || p.Type != "about:blank" ||
		len(p.Events) != 2 || p.Events[0].Code != "insufficient_funds" || p.Events[1].ID != "b2" || p.Events[1].Field != "subject" ||
		r.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("batch with a bad event: %s %v", r, err)
	}
	if w, _ := e.wallet("om1"); w.available("default:CREDITS") != "5" {
		t.Fatalf("after the batch: %s", w.available("default:CREDITS"))
	}
}

// TestStripeDoorWithStripeGo: stripe-go, its backend set to meterd, creates
// meter events; the v2 session and stream are called as Stripe documents.
func TestStripeDoorWithStripeGo(t *testing.T) {
	e := newDoorEnv(t, apiEnvOpts{})
	e.fund("cus_1", "100")
	sc := stripe.NewClient("sk_test_meterd", stripe.WithBackends(stripe.NewBackendsWithConfig(&stripe.BackendConfig{
		URL: stripe.String(e.base), MaxNetworkRetries: stripe.Int64(0)})))
	create := func(id, value string) (*stripe.BillingMeterEvent, error) {
		return sc.V1BillingMeterEvents.Create(context.Background(), &stripe.BillingMeterEventCreateParams{
			EventName: stripe.String("tokens"), Identifier: stripe.String(id), Timestamp: stripe.Int64(time.Now().Unix()),
			Payload: map[string]string{"stripe_customer_id": "cus_1", "value": value}})
	}
	ev, err := create("mev_1", "30")
	if err != nil || ev.Identifier != "mev_1" || ev.EventName != "tokens" || ev.Payload["value"] != "30" {
		t.Fatalf("meter event: %+v %v", ev, err)
	}
	if _, err := create("mev_1", "30"); err != nil {
		t.Fatalf("resend: %v", err)
	}
	if w, _ := e.wallet("cus_1"); w.available("default:CREDITS") != "70" {
		t.Fatalf("after 30 tokens and a resend: %s", w.available("default:CREDITS"))
	}
	var se *stripe.Error
	if _, err := create("mev_2", "-3"); !errors.As(err, &se) || se.HTTPStatusCode != 400 || se.Type != stripe.ErrorTypeInvalidRequest ||
		se.Param != "payload[value]" {
		t.Fatalf("a negative value: %v", err)
	}
	if _, err := create("mev_3", "500"); !errors.As(err, &se) || se.HTTPStatusCode != 402 || string(se.Code) != "insufficient_funds" {
		t.Fatalf("an unaffordable event: %v", err)
	}
	if _, err := create("mev_1", "31"); !errors.As(err, &se) || string(se.Code) != "resource_already_exists" {
		t.Fatalf("an identifier again with other content: %v", err)
	}

	// v2: a session, then a stream of events with its token.
	r := e.send("POST", "/v2/billing/meter_event_session", "application/json", "", []byte(`{}`))
	var sess struct {
		Object              string
		AuthenticationToken string `json:"authentication_token"`
		ExpiresAt           string `json:"expires_at"`
	}
	if err := json.Unmarshal(r.Body, &sess); err != nil || r.Status != 200 || !strings.HasPrefix(sess.AuthenticationToken, "mes_tok_") {
		t.Fatalf("session: %s", r)
	}
	stream := func(token, body string) apiResp {
		req, _ := http.NewRequest("POST", e.base+"/v2/billing/meter_event_stream", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return apiResp{Status: resp.StatusCode, Body: []byte(b.String())}
	}
	ts := time.Now().UTC().Format(time.RFC3339)
	body := `{"events":[{"event_name":"tokens","identifier":"s1","timestamp":"` + ts + `","payload":{"stripe_customer_id":"cus_1","value":"20"}},
		{"event_name":"tokens","identifier":"s2","timestamp":"` + ts + `","payload":{"stripe_customer_id":"cus_1","value":"5"}}]}`
	if r := stream(sess.AuthenticationToken, body); r.Status != 200 || string(r.Body) != "{}" {
		t.Fatalf("stream: %s", r)
	}
	if r := stream(sess.AuthenticationToken, body); r.Status != 200 {
		t.Fatalf("stream resent: %s", r)
	}
	if w, _ := e.wallet("cus_1"); w.available("default:CREDITS") != "45" {
		t.Fatalf("after the stream: %s", w.available("default:CREDITS"))
	}
	if r := stream("mes_tok_forged", body); r.Status != 401 || !strings.Contains(string(r.Body), "billing_meter_event_session_expired") {
		t.Fatalf("stream without a live token: %s", r)
	}
}

// TestLagoDoor: Lago's events API as Lago documents it (its Go client is
// not on the module proxy: plain HTTP), single and batch, duplicates both
// ways.
func TestLagoDoor(t *testing.T) {
	for _, idem := range []bool{false, true} {
		e := newDoorEnv(t, apiEnvOpts{LagoIdempotent: idem})
		e.fund("lc1", "100")
		one := `{"event":{"transaction_id":"tx_1","external_customer_id":"lc1","code":"task","timestamp":` +
			jsonInt(time.Now().Unix()) + `,"properties":{"region":"eu"}}}`
		r := e.send("POST", "/api/v1/events", "application/json", "", []byte(one))
		var got struct {
			Event struct {
				TransactionID string `json:"transaction_id"`
				Code          string
				Properties    map[string]string
			}
		}
		if err := json.Unmarshal(r.Body, &got); err != nil || r.Status != 200 || got.Event.TransactionID != "tx_1" || got.Event.Properties["region"] != "eu" {
			t.Fatalf("lago event: %s", r)
		}
		r = e.send("POST", "/api/v1/events", "application/json", "", []byte(one))
		if idem && r.Status != 200 || !idem && (r.Status != 422 || !strings.Contains(string(r.Body), `"transaction_id":["value_already_exist"]`)) {
			t.Fatalf("lago resend (idempotent %v): %s", idem, r)
		}
		batch := `{"events":[
			{"transaction_id":"tx_2","external_subscription_id":"lc1","code":"task","timestamp":"1.5e9"},
			{"transaction_id":"tx_3","external_customer_id":"lc1","code":"task"},
			{"transaction_id":"tx_4","external_customer_id":"lc1","code":"tokens","properties":{"value":500}}]}`
		r = e.send("POST", "/api/v1/events/batch", "application/json", "", []byte(batch))
		var le struct {
			Status       int
			Code         string
			ErrorDetails map[string]map[string][]string `json:"error_details"`
		}
		if err := json.Unmarshal(r.Body, &le); err != nil || r.Status != 422 || le.Code != "validation_errors" ||
			le.ErrorDetails["0"]["timestamp"][0] != "invalid_value" || le.ErrorDetails["2"]["customer"][0] != "insufficient_funds" ||
			len(le.ErrorDetails) != 2 {
			t.Fatalf("lago batch: %s", r)
		}
		if w, _ := e.wallet("lc1"); w.available("default:CREDITS") != "80" {
			t.Fatalf("after tx_1 and tx_3: %s", w.available("default:CREDITS"))
		}
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

// TestDoorMappings: the fields that name the customer and the event type
// are chosen by configuration.
func TestDoorMappings(t *testing.T) {
	m := DoorMapping{OpenMeterCustomer: "data.account", OpenMeterEventType: "kind", StripeCustomerKey: "customer",
		LagoCustomer: []string{"external_subscription_id"}}
	if err := m.Check(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []DoorMapping{{OpenMeterCustomer: "Sub ject"}, {StripeCustomerKey: "a[b]"}, {LagoCustomer: []string{"email"}}} {
		if bad.Check() == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
	e := newDoorEnv(t, apiEnvOpts{})
	e.srv.doorMap = m.withDefaults()
	e.fund("acct_9", "100")
	r := e.send("POST", "/api/v1/events", "application/cloudevents+json", "", []byte(
		`{"specversion":"1.0","id":"m1","source":"s","type":"ignored","kind":"task","subject":"nobody","data":{"account":"acct_9"}}`))
	if r.Status != 204 {
		t.Fatalf("OpenMeter with a mapping: %s", r)
	}
	r = e.send("POST", "/api/v1/events", "application/cloudevents+json", "", []byte(
		`{"specversion":"1.0","id":"m2","source":"s","kind":"task","data":{}}`))
	if r.Status != 400 || !strings.Contains(string(r.Body), `"field":"data.account"`) {
		t.Fatalf("OpenMeter without the mapped customer: %s", r)
	}
	r = e.send("POST", "/v1/billing/meter_events", "application/x-www-form-urlencoded", "",
		[]byte("event_name=task&identifier=s1&payload[customer]=acct_9"))
	if r.Status != 200 {
		t.Fatalf("Stripe with a customer key: %s", r)
	}
	r = e.send("POST", "/api/v1/events", "application/json", "", []byte(
		`{"event":{"transaction_id":"l1","external_customer_id":"other","external_subscription_id":"acct_9","code":"task"}}`))
	if r.Status != 200 {
		t.Fatalf("Lago by subscription: %s", r)
	}
	if w, _ := e.wallet("acct_9"); w.available("default:CREDITS") != "70" {
		t.Fatalf("after three tasks: %s", w.available("default:CREDITS"))
	}
}

// TestDoorAuthErrors: a door refuses a missing or unscoped key in its
// system's error shape.
func TestDoorAuthErrors(t *testing.T) {
	e := newAPIEnv(t, apiEnvOpts{Keys: testKeys(t), Doors: AllDoors})
	oas := loadOpenAPI(t)
	for _, c := range []struct {
		path, ctype, body, auth string
		status                  int
		want                    string
	}{
		{"/api/v1/events", "application/cloudevents+json", `{}`, "-", 401, `"type":"about:blank"`},
		{"/api/v1/events", "application/cloudevents+json", `{}`, readKey, 403, `"status":403`},
		{"/api/v1/events/batch", "application/json", `{}`, "-", 401, `"code":"unauthorized"`},
		{"/v1/billing/meter_events", "application/x-www-form-urlencoded", `event_name=x`, "-", 401, `"type":"invalid_request_error"`},
	} {
		r := e.send("POST", c.path, c.ctype, c.auth, []byte(c.body))
		if r.Status != c.status || !strings.Contains(string(r.Body), c.want) {
			t.Errorf("%s with %q: %s; want %d with %s", c.path, c.auth, r, c.status, c.want)
		}
		// As the OpenAPI document says.
		op := findOperation(oas, "POST", c.path)
		var got any
		json.Unmarshal(r.Body, &got)
		resp := op.Responses.Status(r.Status)
		if resp == nil {
			t.Errorf("%s: %d is not documented", c.path, r.Status)
			continue
		}
		mt := resp.Value.Content.Get(r.Header.Get("Content-Type"))
		if mt == nil {
			t.Errorf("%s: %d as %s is not documented", c.path, r.Status, r.Header.Get("Content-Type"))
		} else if err := mt.Schema.Value.VisitJSON(got, openapi3.EnableJSONSchema2020()); err != nil {
			t.Errorf("%s: the %d answer does not fit its schema: %v", c.path, r.Status, err)
		}
	}
}
