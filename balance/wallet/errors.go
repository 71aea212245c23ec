package wallet

import "fmt"

// Error is a refusal, with a stable snake_case code: the state machine's,
// and the engine's (package balance), which returns the same type.
type Error struct {
	Code    string
	Message string
	Field   string // the request field it is about, "" for none
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrorCode returns the stable code of the error.
func (e *Error) ErrorCode() string { return e.Code }

// FieldPath returns the request field the error is about: the "field" of
// the contract's error body.
func (e *Error) FieldPath() string { return e.Field }

// Errorf returns an *Error of code with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// FieldErrorf is Errorf about a field of the request.
func FieldErrorf(field, code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Field: field}
}

// Every error code of the wallet and of the engine, defined here once.
// The HTTP layer maps each to a status (API.md).
const (
	// Refusals of a command by the state machine.
	CodeInsufficientFunds     = "insufficient_funds"
	CodeAccountPaused         = "account_paused"
	CodeTopUpSpent            = "topup_spent"
	CodeReversalWindowElapsed = "reversal_window_elapsed"
	// CodeRefundAllowanceExceeded: more of a purchase was used than its
	// refund rule allows (APOB: refundable while fewer than 1,000 used).
	CodeRefundAllowanceExceeded = "refund_allowance_exceeded"
	// CodeHoldLimitReached: the account has as many active holds as its
	// limit allows (max_active_holds).
	CodeHoldLimitReached    = "hold_limit_reached"
	CodeUnknownBucket       = "unknown_bucket"
	CodeUnknownHold         = "unknown_hold"
	CodeHoldNotActive       = "hold_not_active"
	CodeUnknownRequest      = "unknown_request"
	CodeReloadNotPending    = "reload_not_pending"
	CodeNoPlanPeriod        = "no_plan_period"
	CodeIdempotencyConflict = "idempotency_conflict" // an id seen before with other content
	CodeInvalidTimestamp    = "invalid_timestamp"    // an expires_at not in the future

	// Validation refusals. The engine validates commands before they get
	// to a wallet; the wallet checks again so that a bad command is an
	// error and never a panic or a corrupted wallet.
	CodeInvalidAmount  = "invalid_amount"  // an amount is <= 0, malformed, or above a limit
	CodeInvalidRequest = "invalid_request" // a kind, priority, expiry or account name is malformed
	CodeLimitExceeded  = "limit_exceeded"  // too many buckets in an account or accounts in a wallet

	// The engine's.
	CodeUnknownCustomer = "unknown_customer"
	CodeNotFound        = "not_found"
	CodeOverloaded      = "overloaded"      // a shard's queue is full: retry with the same ids
	CodeUnavailable     = "unavailable"     // the engine is closed or its store failed
	CodeStorageFull     = "storage_full"    // the data directory's disk is full: writes are refused
	CodeClockBackwards  = "clock_backwards" // the test clock may only move forward
	CodeOutOfWindow     = "out_of_window"   // an event's occurred_at is outside the dedup window
)
