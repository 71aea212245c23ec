package meter

// Error is a validation or rating error with a stable snake_case code, a
// human sentence, and the path of the offending field when there is one.
type Error struct {
	Code    string
	Message string
	Field   string
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Code + ": " + e.Field + ": " + e.Message
	}
	return e.Code + ": " + e.Message
}

// ErrorCode returns the stable code of the error.
func (e *Error) ErrorCode() string { return e.Code }

// FieldPath returns the path of the offending field, "" for none: the
// "field" of the contract's error body.
func (e *Error) FieldPath() string { return e.Field }

// MessageText returns the human sentence alone: the "message" of the
// contract's error body.
func (e *Error) MessageText() string { return e.Message }

func errf(code, field, msg string) *Error { return &Error{Code: code, Field: field, Message: msg} }
