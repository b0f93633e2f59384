package agentcoord

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error an agentcoord server sends.
const ErrorDomain = "agentcoord"

// Error is a failed call: the google.rpc.Status the server sent, decoded, or a call the client
// refused itself (Local). Every call made through a Client fails with an *Error (find it with
// errors.As); it also implements GRPCStatus, so status.FromError and status.Code keep working.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the server's human-readable message.
	Message string
	// Reason is ErrorInfo.reason as the contract's generated constant (e.g.
	// agentcoordv1.ErrorReason_TIER_TOO_LOW); ErrorReason_ERROR_REASON_UNSPECIFIED when the
	// status had no ErrorInfo or a reason this client's contract does not know (then
	// RawReason still has it). proto/agentcoord/v1/error_reason.proto says what to do per reason.
	Reason agentcoordv1.ErrorReason
	// RawReason is ErrorInfo.reason as sent ("" if none).
	RawReason string
	// Domain is ErrorInfo.domain ("agentcoord" for the server's own errors).
	Domain string
	// Metadata is ErrorInfo.metadata, e.g. "required_tier" and "caller_tier" for TIER_TOO_LOW.
	Metadata map[string]string
	// FieldViolations are the google.rpc.BadRequest field violations (INVALID_ARGUMENT).
	FieldViolations []FieldViolation
	// RequestID finds the call's line in the server's log (ErrorInfo metadata "request_id");
	// empty for Local errors.
	RequestID string
	// RetryDelay is how long the server asks the caller to wait before retrying
	// (google.rpc.RetryInfo, e.g. with TOO_MANY_FAILED_AUTHENTICATIONS); 0 when it says nothing.
	RetryDelay time.Duration
	// Local is true when the client refused the call without sending it (TIER_TOO_LOW).
	Local bool

	status *status.Status
}

// FieldViolation is one bad request field: its path in the request and what is wrong with it.
type FieldViolation struct {
	Field       string
	Description string
}

// Error reads like "PERMISSION_DENIED TIER_TOO_LOW: <message>".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(codeName(e.Code))
	if e.RawReason != "" {
		b.WriteString(" ")
		b.WriteString(e.RawReason)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// GRPCStatus returns the status the error came from (for a Local error, an equivalent status
// with the same ErrorInfo), so status.FromError(err).Details() works on any *Error.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// FromError returns err as an *Error: err itself (or one it wraps) if it is one, else decoded from
// the gRPC status err carries. ok is false for nil and for errors that carry no gRPC status.
func FromError(err error) (e *Error, ok bool) {
	if err == nil {
		return nil, false
	}
	if errors.As(err, &e) {
		return e, true
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	return fromStatus(st), true
}

// ReasonOf returns the contract reason of err, or ErrorReason_ERROR_REASON_UNSPECIFIED if err is
// not an *Error (or carries no reason the contract knows).
func ReasonOf(err error) agentcoordv1.ErrorReason {
	if e, ok := FromError(err); ok {
		return e.Reason
	}
	return agentcoordv1.ErrorReason_ERROR_REASON_UNSPECIFIED
}

func fromStatus(st *status.Status) *Error {
	e := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.RawReason = d.GetReason()
			e.Reason = reasonFromString(d.GetReason())
			e.Domain = d.GetDomain()
			e.Metadata = d.GetMetadata()
			e.RequestID = d.GetMetadata()["request_id"]
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		case *errdetails.RetryInfo:
			e.RetryDelay = d.GetRetryDelay().AsDuration()
		case *errdetails.RequestInfo:
			if e.RequestID == "" {
				e.RequestID = d.GetRequestId()
			}
		}
	}
	return e
}

func reasonFromString(reason string) agentcoordv1.ErrorReason {
	if v, ok := agentcoordv1.ErrorReason_value[reason]; ok {
		return agentcoordv1.ErrorReason(v)
	}
	return agentcoordv1.ErrorReason_ERROR_REASON_UNSPECIFIED
}

// convertError turns a gRPC status error into an *Error; other errors (io.EOF, nil) pass.
func convertError(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if st, ok := status.FromError(err); ok {
		return fromStatus(st)
	}
	return err
}

// tierTooLow is the error a call above the caller's tier fails with, locally: the same code,
// reason and metadata the server would send.
func tierTooLow(method string, required, own agentcoordv1.AccessTier) *Error {
	message := fmt.Sprintf("%s needs tier %s; caller has %s (refused by the client, not sent)",
		method, tierName(required), tierName(own))
	return localDenial(message, agentcoordv1.ErrorReason_TIER_TOO_LOW, required, own)
}

// operatorDataAccess is the error the OPERATOR's call of a method that reaches a namespace's
// data fails with, locally, as the server would refuse it.
func operatorDataAccess(method string, required agentcoordv1.AccessTier) *Error {
	message := fmt.Sprintf("%s reads or writes a namespace's data, which the OPERATOR never does "+
		"(refused by the client, not sent)", method)
	return localDenial(message, agentcoordv1.ErrorReason_OPERATOR_DATA_ACCESS, required,
		agentcoordv1.AccessTier_ACCESS_TIER_OPERATOR)
}

func localDenial(message string, reason agentcoordv1.ErrorReason, required, own agentcoordv1.AccessTier) *Error {
	metadata := map[string]string{"required_tier": tierName(required), "caller_tier": tierName(own)}
	st := status.New(codes.PermissionDenied, message)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: ErrorDomain, Metadata: metadata}); err == nil {
		st = withInfo
	}
	return &Error{
		Code:      codes.PermissionDenied,
		Message:   message,
		Reason:    reason,
		RawReason: reason.String(),
		Domain:    ErrorDomain,
		Metadata:  metadata,
		Local:     true,
		status:    st,
	}
}

func tierName(tier agentcoordv1.AccessTier) string {
	return strings.TrimPrefix(tier.String(), "ACCESS_TIER_")
}

// codeName spells a code as the gRPC spec does (PERMISSION_DENIED), as the other clients and the
// server's log do, rather than grpc-go's PermissionDenied.
func codeName(c codes.Code) string {
	name := c.String()
	var b strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' && name[i-1] >= 'a' && name[i-1] <= 'z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}
