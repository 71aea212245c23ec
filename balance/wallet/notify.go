package wallet

import (
	"encoding/binary"
	"strconv"
	"time"

	"github.com/meterd/meterd/balance/internal/enc"
	"github.com/meterd/meterd/meter"
	"github.com/meterd/meterd/meter/jsonw"
)

// Notification is one customer notification: a balance alert, an
// auto-reload request or outcome, an expired bucket or hold. The state
// machine makes it, with its JSON body, in the same step as the change that
// caused it; the shard stores it in the same Pebble batch ('n' keys, and the
// outbox when sinks are configured), so it is never lost nor made twice.
//
// Its ID, "<customer>/n<seq>", is stable: webhook receivers dedupe by it.
type Notification struct {
	Customer string
	Seq      uint64 // per customer, from 1, in the order they were made
	Type     string // NoteBalanceLow ...
	At       int64  // unix ns: when the condition happened (engine time)
	Body     []byte // the JSON object delivered to webhooks and listed by the API
}

// Notification types.
const (
	NoteBalanceLow          = "balance.low"
	NoteBalanceDepleted     = "balance.depleted"
	NoteBalanceRecovered    = "balance.recovered"
	NoteAutoReloadRequested = "auto_reload.requested"
	NoteAutoReloadCompleted = "auto_reload.completed"
	NoteAutoReloadFailed    = "auto_reload.failed"
	NoteBucketExpired       = "bucket.expired"
	NoteHoldExpired         = "hold.expired"
	// NoteUsageRejected: a valid usage event was refused for the
	// customer's funds or state (UsageCmd from a caller that asked).
	NoteUsageRejected = "usage.rejected"
)

// NotificationID returns the stable id of a customer's notification seq.
func NotificationID(customer string, seq uint64) string {
	return customer + "/n" + strconv.FormatUint(seq, 10)
}

// ID returns the notification's stable id.
func (n *Notification) ID() string { return NotificationID(n.Customer, n.Seq) }

// noteField is one extra "key": value of a notification's data object.
// Exactly one of str (a JSON string, written quoted; ids and decimals need
// no escaping: identifiers are [A-Za-z0-9._:-]) or raw (written as is) is used.
type noteField struct {
	key string
	str string
	raw string
}

// appendTime appends t (unix ns) as the contract's UTC millisecond
// timestamp, without quotes.
func appendTime(b []byte, ns int64) []byte {
	return time.Unix(0, ns).UTC().AppendFormat(b, jsonw.TimeLayout)
}

// newNote builds a notification with its JSON body:
//
//	{"id","type","customer_id","account","created_at","data":{...}}
func newNote(customer string, seq uint64, typ, account string, at int64, data []noteField) Notification {
	b := make([]byte, 0, 256)
	b = append(b, `{"id":"`...)
	b = append(b, customer...)
	b = append(b, "/n"...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `","type":"`...)
	b = append(b, typ...)
	b = append(b, `","customer_id":"`...)
	b = append(b, customer...)
	b = append(b, `","account":"`...)
	b = append(b, account...)
	b = append(b, `","created_at":"`...)
	b = appendTime(b, at)
	b = append(b, `","data":{`...)
	for i, f := range data {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, f.key...)
		b = append(b, `":`...)
		if f.raw != "" {
			b = append(b, f.raw...)
		} else {
			b = jsonw.AppendString(b, f.str) // a reason may be any text
		}
	}
	b = append(b, "}}"...)
	return Notification{Customer: customer, Seq: seq, Type: typ, At: at, Body: b}
}

func units(u int64, scale uint8) string { return meter.FormatUnits(u, scale) }

// AppendNote appends the stored form of a notification:
//
//	version=1 seq type at body
func AppendNote(b []byte, n *Notification) []byte {
	b = append(b, 1)
	b = binary.AppendUvarint(b, n.Seq)
	b = enc.AppendStr(b, n.Type)
	b = binary.AppendVarint(b, n.At)
	return enc.AppendStr(b, string(n.Body))
}

// DecodeNote decodes a notification stored by AppendNote.
func DecodeNote(customer string, v []byte) (Notification, error) {
	d := enc.Decoder{B: v}
	if ver := d.Byte1(); d.Err == nil && ver != 1 {
		return Notification{}, Errorf("corrupt", "unknown notification format %d", ver)
	}
	n := Notification{Customer: customer, Seq: d.U(), Type: d.Str(), At: d.V()}
	n.Body = d.Raw(d.U(), enc.MetadataLenMax)
	if d.Err != nil {
		return Notification{}, d.Err
	}
	n.Body = append([]byte(nil), n.Body...)
	return n, nil
}

// NoteRejected notes that usage event eventID of eventType, charging
// charges (its first account names the note's), was refused with err.
func (w *Wallet) NoteRejected(at int64, eventID, eventType string, charges []meter.Charge, err *Error) {
	account := ""
	if len(charges) > 0 {
		account = charges[0].Account
	}
	w.note(NoteUsageRejected, account, at, noteField{key: "event_id", str: eventID}, noteField{key: "event_type", str: eventType},
		noteField{key: "code", str: err.Code}, noteField{key: "message", str: err.Message})
}
