package agentcoord_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/structpb"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

const (
	observer    = agentcoordv1.AccessTier_ACCESS_TIER_OBSERVER
	contributor = agentcoordv1.AccessTier_ACCESS_TIER_CONTRIBUTOR
	validator   = agentcoordv1.AccessTier_ACCESS_TIER_VALIDATOR
)

func asError(t *testing.T, err error) *agentcoord.Error {
	t.Helper()
	var e *agentcoord.Error
	if !errors.As(err, &e) {
		t.Fatalf("want an *agentcoord.Error, got %T: %v", err, err)
	}
	return e
}

func TestDialLearnsThePrincipalOnce(t *testing.T) {
	client := dialAs(t, "principal", validator)

	principal := client.Principal()
	if !strings.HasPrefix(principal.GetAgentId(), "principal-") || principal.GetTier() != validator || principal.GetNamespace() != "default" {
		t.Fatalf("principal %v", principal)
	}
}

func TestTokenIsAttachedToUnaryAndStreamingCalls(t *testing.T) {
	client := dialAs(t, "token", observer)
	ctx := context.Background()

	who, err := client.Admin.WhoAmI(ctx, &agentcoordv1.WhoAmIRequest{})
	if err != nil || who.GetPrincipal().GetAgentId() != client.Principal().GetAgentId() {
		t.Fatalf("WhoAmI = %v, %v", who, err)
	}
	sub, err := client.Subscribe(ctx, agentcoord.SubscribeOptions{SignalTypes: []string{uniqueID("token")}})
	if err != nil {
		t.Fatalf("Subscribe (a stream: the stream interceptor must attach the token): %v", err)
	}
	sub.Close()
}

func TestDialWithoutTokenFailsUnauthenticatedMissingToken(t *testing.T) {
	_, err := agentcoord.Dial(context.Background(), srv.address, "")

	e := asError(t, err)
	if e.Code != codes.Unauthenticated || e.Reason != agentcoordv1.ErrorReason_MISSING_TOKEN {
		t.Fatalf("got %v", e)
	}
}

func TestDialWithUnknownTokenFailsUnauthenticatedUnknownToken(t *testing.T) {
	_, err := agentcoord.Dial(context.Background(), srv.address, "not-a-token-anyone-issued")

	e := asError(t, err)
	if e.Code != codes.Unauthenticated || e.Reason != agentcoordv1.ErrorReason_UNKNOWN_TOKEN {
		t.Fatalf("got %v", e)
	}
}

func TestTheOperatorIsRefusedDataCallsLocallyAndMakesItsOwn(t *testing.T) {
	ctx := context.Background()
	sent := newAttempts()
	operator, err := agentcoord.Dial(ctx, srv.address, srv.operatorToken(), sent.option())
	if err != nil {
		t.Fatalf("Dial as operator: %v", err)
	}
	defer operator.Close()

	_, err = operator.Memory.Stash(ctx, &agentcoordv1.StashRequest{Key: "k", Value: structpb.NewNumberValue(1)})
	if e := asError(t, err); !e.Local || e.Reason != agentcoordv1.ErrorReason_OPERATOR_DATA_ACCESS {
		t.Fatalf("operator Stash: %v", err)
	}
	if n := sent.of("/agentcoord.v1.MemoryService/Stash"); n != 0 {
		t.Fatalf("the client started %d Stash attempts", n)
	}
	name := uniqueID("team")
	if _, err := operator.Admin.CreateNamespace(ctx, &agentcoordv1.CreateNamespaceRequest{Name: name}); err != nil {
		t.Fatalf("operator CreateNamespace: %v", err)
	}
	if _, err := operator.Admin.IssueToken(ctx, &agentcoordv1.IssueTokenRequest{AgentId: "lead", Namespace: name, Tier: agentcoordv1.AccessTier_ACCESS_TIER_STEWARD}); err != nil {
		t.Fatalf("operator IssueToken: %v", err)
	}
	// A STEWARD cannot reach the operator's RPCs: refused locally by the tier order.
	_, err = steward.Admin.CreateNamespace(ctx, &agentcoordv1.CreateNamespaceRequest{Name: uniqueID("team")})
	if e := asError(t, err); !e.Local || e.Reason != agentcoordv1.ErrorReason_TIER_TOO_LOW || e.Metadata["required_tier"] != "OPERATOR" {
		t.Fatalf("steward CreateNamespace: %v", err)
	}
}

func TestRequiredTierIsReadFromTheContractsDescriptors(t *testing.T) {
	want := map[string]agentcoordv1.AccessTier{
		"/agentcoord.v1.MemoryService/Stash":           contributor,
		"/agentcoord.v1.MemoryService/Retrieve":        observer,
		"/agentcoord.v1.StagingService/PromotePattern": validator,
		"/agentcoord.v1.AdminService/IssueToken":       agentcoordv1.AccessTier_ACCESS_TIER_STEWARD,
		"/agentcoord.v1.SignalService/Subscribe":       observer,
		"/grpc.health.v1.Health/Check":                 agentcoordv1.AccessTier_ACCESS_TIER_UNSPECIFIED,
	}
	for method, tier := range want {
		if got := agentcoord.RequiredTier(method); got != tier {
			t.Errorf("RequiredTier(%s) = %s, want %s", method, got, tier)
		}
	}
	// Every RPC of the contract declares one, so none goes out unchecked.
	forEachMethod(func(fullMethod string) {
		if agentcoord.RequiredTier(fullMethod) == agentcoordv1.AccessTier_ACCESS_TIER_UNSPECIFIED {
			t.Errorf("%s has no required_tier", fullMethod)
		}
	})
}

func forEachMethod(f func(fullMethod string)) {
	protoregistry.GlobalFiles.RangeFilesByPackage("agentcoord.v1", func(file protoreflect.FileDescriptor) bool {
		for i := range file.Services().Len() {
			service := file.Services().Get(i)
			for j := range service.Methods().Len() {
				f(fmt.Sprintf("/%s/%s", service.FullName(), service.Methods().Get(j).Name()))
			}
		}
		return true
	})
}

func TestObserverWriteIsRefusedLocallyAndNeverReachesTheServer(t *testing.T) {
	sent := newAttempts()
	client := dialAs(t, "observer", observer, sent.option())
	agent := client.Principal().GetAgentId()
	ctx := context.Background()

	_, err := client.Memory.Stash(ctx, &agentcoordv1.StashRequest{Key: "observer-note", Value: structpb.NewStringValue("hi")})

	e := asError(t, err)
	if e.Code != codes.PermissionDenied || e.Reason != agentcoordv1.ErrorReason_TIER_TOO_LOW || e.RawReason != "TIER_TOO_LOW" || !e.Local {
		t.Fatalf("got %#v", e)
	}
	if e.Metadata["required_tier"] != "CONTRIBUTOR" || e.Metadata["caller_tier"] != "OBSERVER" {
		t.Fatalf("metadata %v", e.Metadata)
	}
	// The plain grpc-go view of the same error.
	st := status.Convert(err)
	info, ok := st.Details()[0].(*errdetails.ErrorInfo)
	if st.Code() != codes.PermissionDenied || !ok || info.GetReason() != "TIER_TOO_LOW" {
		t.Fatalf("status %v", st)
	}
	if n := sent.of("/agentcoord.v1.MemoryService/Stash"); n != 0 {
		t.Fatalf("the client started %d Stash attempts", n)
	}
	// A call the observer may make goes out: once the server has logged it, it has logged
	// everything the observer sent before; no Stash is among it.
	_, err = client.Memory.Retrieve(ctx, &agentcoordv1.RetrieveRequest{Key: "observer-note"})
	marker := asError(t, err)
	if marker.Code != codes.NotFound || marker.Local || marker.RequestID == "" {
		t.Fatalf("Retrieve: %v", err)
	}
	if line := srv.waitForLogLine(t, marker.RequestID); line["agent"] != agent {
		t.Fatalf("marker logged as %v", line)
	}
	for _, line := range srv.rpcLines(t) {
		if line["agent"] == agent && line["method"] == "/agentcoord.v1.MemoryService/Stash" {
			t.Fatalf("the server saw the refused Stash: %v", line)
		}
	}
}

func TestCallsAboveTheCallersTierAreRefusedLocallyAndOthersGoOut(t *testing.T) {
	ctx := context.Background()
	contrib := dialAs(t, "contrib", contributor)
	valid := dialAs(t, "valid", validator)

	_, err := contrib.Staging.PromotePattern(ctx, &agentcoordv1.PromotePatternRequest{PatternId: "p1"})
	if e := asError(t, err); !e.Local || e.Reason != agentcoordv1.ErrorReason_TIER_TOO_LOW || e.Metadata["required_tier"] != "VALIDATOR" {
		t.Fatalf("contributor PromotePattern: %v", err)
	}
	_, err = valid.Admin.IssueToken(ctx, &agentcoordv1.IssueTokenRequest{AgentId: "x", Tier: observer})
	if e := asError(t, err); !e.Local || e.Reason != agentcoordv1.ErrorReason_TIER_TOO_LOW || e.Metadata["required_tier"] != "STEWARD" {
		t.Fatalf("validator IssueToken: %v", err)
	}
	if _, err := contrib.Memory.Stash(ctx, &agentcoordv1.StashRequest{Key: "k", Value: structpb.NewNumberValue(1)}); err != nil {
		t.Fatalf("contributor Stash: %v", err)
	}
	// A validator may promote: the call goes out and the server answers (no such pattern).
	_, err = valid.Staging.PromotePattern(ctx, &agentcoordv1.PromotePatternRequest{PatternId: uniqueID("p")})
	if e := asError(t, err); e.Local || e.Code != codes.NotFound || e.RequestID == "" {
		t.Fatalf("validator PromotePattern: %v", err)
	}
}

func TestErrorCarriesReasonFieldViolationsMetadataAndRequestID(t *testing.T) {
	client := dialAs(t, "errors", contributor)
	ctx := context.Background()

	_, err := client.Tasks.GetTask(ctx, &agentcoordv1.GetTaskRequest{TaskId: "no-such-task"})
	wrapped := fmt.Errorf("looking up: %w", err)
	e := asError(t, wrapped)
	if e.Code != codes.NotFound || e.Reason != agentcoordv1.ErrorReason_TASK_NOT_FOUND || e.Domain != agentcoord.ErrorDomain || e.Local {
		t.Fatalf("GetTask: %#v", e)
	}
	if e.RequestID == "" || e.Metadata["request_id"] != e.RequestID {
		t.Fatalf("request id %q, metadata %v", e.RequestID, e.Metadata)
	}
	if agentcoord.ReasonOf(wrapped) != agentcoordv1.ErrorReason_TASK_NOT_FOUND || status.Code(err) != codes.NotFound {
		t.Fatalf("ReasonOf / status.Code disagree: %v", err)
	}
	if !strings.HasPrefix(e.Error(), "NOT_FOUND TASK_NOT_FOUND: ") {
		t.Fatalf("Error() = %q", e.Error())
	}

	_, err = client.Tasks.AddTask(ctx, &agentcoordv1.AddTaskRequest{TaskType: "lint", Priority: 11})
	e = asError(t, err)
	if e.Code != codes.InvalidArgument || e.Reason != agentcoordv1.ErrorReason_INVALID_FIELD {
		t.Fatalf("AddTask priority 11: %#v", e)
	}
	if len(e.FieldViolations) != 1 || e.FieldViolations[0].Field != "priority" || e.FieldViolations[0].Description == "" {
		t.Fatalf("field violations %v", e.FieldViolations)
	}
}

func TestRetryPolicyRetriesSafeCallsOnlyOnUnavailable(t *testing.T) {
	s, err := startServer()
	if err != nil {
		t.Fatal(err)
	}
	defer s.remove()
	admin, err := agentcoord.Dial(context.Background(), s.address, s.bootstrapToken())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	sent := newAttempts()
	client := dialAt(t, s, admin, "retry", contributor, sent.option())
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	_, readErr := client.Tasks.GetTask(ctx, &agentcoordv1.GetTaskRequest{TaskId: "t1"})
	_, writeErr := client.Tasks.AddTask(ctx, &agentcoordv1.AddTaskRequest{TaskId: "t1", TaskType: "lint"})

	if status.Code(readErr) != codes.Unavailable || status.Code(writeErr) != codes.Unavailable {
		t.Fatalf("want UNAVAILABLE from a stopped server, got %v / %v", readErr, writeErr)
	}
	if n := sent.of("/agentcoord.v1.TaskService/GetTask"); n != agentcoord.RetryMaxAttempts {
		t.Errorf("GetTask (safe to retry) was attempted %d times, want %d", n, agentcoord.RetryMaxAttempts)
	}
	if n := sent.of("/agentcoord.v1.TaskService/AddTask"); n != 1 {
		t.Errorf("AddTask (not safe to retry) was attempted %d times, want 1", n)
	}
}

func TestRetrySafeMethodsAreMethodsOfTheContract(t *testing.T) {
	known := map[string]bool{}
	forEachMethod(func(fullMethod string) { known[fullMethod] = true })
	safe := map[string]bool{}
	for _, m := range agentcoord.RetrySafeMethods {
		safe["/"+m] = true
		if !known["/"+m] {
			t.Errorf("RetrySafeMethods names %s, which the contract does not have", m)
		}
	}
	// The other direction: every read of the contract is listed (a new Get or List is safe).
	for m := range known {
		short := m[strings.LastIndex(m, "/")+1:]
		if (strings.HasPrefix(short, "Get") || strings.HasPrefix(short, "List")) && !safe[m] {
			t.Errorf("the read %s is missing from RetrySafeMethods", m)
		}
	}
}
