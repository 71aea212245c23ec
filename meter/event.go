package meter

// Event is one usage event after decoding, as rating sees it.
type Event struct {
	ID         string
	CustomerID string
	EventType  string
	Subject    string
	HoldID     string
	// Description is the client's text for the event, kept on its usage
	// record and its ledger entries.
	Description string
	OccurredAt  int64   // unix nanoseconds, UTC
	Data        []Field // the top-level members of the event's data object, in document order
	DataJSON    []byte  // the data object as compact JSON, for storage
}

// FieldKind is the JSON type of a data member.
type FieldKind uint8

// The JSON types a data member can have.
const (
	FieldString FieldKind = iota + 1
	FieldNumber
	FieldBool
	FieldNull
	FieldObject
	FieldArray
)

// Field is one top-level member of an event's data object.
type Field struct {
	Key  string
	Kind FieldKind
	// Text is the string for FieldString, the number literal exactly as
	// written for FieldNumber ("2353", "1.5", "1e3"), "true"/"false" for
	// FieldBool, and empty otherwise.
	Text string
}

// Lookup returns the member named key.
func (e *Event) Lookup(key string) (Field, bool) {
	for i := range e.Data {
		if e.Data[i].Key == key {
			return e.Data[i], true
		}
	}
	return Field{}, false
}
