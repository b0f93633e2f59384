package agentcoord_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// send sends a broadcast signal of signalType with data {"n": n}; it waits for the connection to
// be ready, so it can follow a server restart.
func send(t *testing.T, client *agentcoord.Client, signalType string, n int, extra map[string]any) *agentcoordv1.Signal {
	t.Helper()
	data := map[string]any{"n": n}
	for k, v := range extra {
		data[k] = v
	}
	payload, err := structpb.NewStruct(data)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	response, err := client.Signals.SendSignal(ctx, &agentcoordv1.SendSignalRequest{SignalType: signalType, Data: payload}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("SendSignal %d: %v", n, err)
	}
	return response.GetSignal()
}

// receive reads count signals and returns their "n" values.
func receive(t *testing.T, sub *agentcoord.Subscription, count int) []int {
	t.Helper()
	var got []int
	for range count {
		signal, err := sub.Recv()
		if err != nil {
			t.Fatalf("Recv after %v: %v", got, err)
		}
		got = append(got, int(signal.GetData().GetFields()["n"].GetNumberValue()))
	}
	return got
}

func sequence(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSubscribeResumesFromItsCursorAcrossAServerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sender := dialAs(t, "restart-sender", contributor)
	reader := dialAs(t, "restart-reader", observer)
	signalType := uniqueID("restart")
	sub, err := reader.Subscribe(ctx, agentcoord.SubscribeOptions{SignalTypes: []string{signalType}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	send(t, sender, signalType, 1, nil)
	if got := receive(t, sub, 1); !equal(got, []int{1}) {
		t.Fatalf("before the restart: %v", got)
	}

	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	// Sent while the subscription is down: only a resume from its cursor (not from "now") sees them.
	send(t, sender, signalType, 2, nil)
	send(t, sender, signalType, 3, nil)

	if got := receive(t, sub, 2); !equal(got, []int{2, 3}) {
		t.Fatalf("after the restart: %v, want [2 3]", got)
	}
	if sub.Resumes() == 0 {
		t.Fatal("the subscription did not resume")
	}
}

func TestSubscribeResumesAfterTheServerDropsASlowReader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sender := dialAs(t, "slow-sender", contributor)
	// A fixed 64 KiB flow-control window (no BDP growth): the server soon cannot write to a reader
	// that does not read, and its 8-signal buffer (--signal-queue-size in TestMain) fills.
	reader := dialAs(t, "slow-reader", observer, agentcoord.WithDialOptions(
		grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16)))
	signalType := uniqueID("slow")
	sub, err := reader.Subscribe(ctx, agentcoord.SubscribeOptions{SignalTypes: []string{signalType}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const count = 80
	padding := strings.Repeat("x", 16<<10)
	for n := 1; n <= count; n++ {
		send(t, sender, signalType, n, map[string]any{"padding": padding})
	}

	if got := receive(t, sub, count); !equal(got, sequence(1, count)) {
		t.Fatalf("received %v", got)
	}
	if sub.Resumes() == 0 {
		t.Fatal("the server never dropped the slow reader (SUBSCRIBER_TOO_SLOW), so no resume was tested")
	}
}

func TestSubscribeSurfacesCursorTrimmedWhenItCannotResumeWithoutAGap(t *testing.T) {
	// Signals are kept 1 s on this server.
	s, err := startServer("--ttl", "coordination=1")
	if err != nil {
		t.Fatal(err)
	}
	defer s.remove()
	admin, err := agentcoord.Dial(context.Background(), s.address, s.bootstrapToken())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	sender := dialAt(t, s, admin, "trim-sender", contributor)
	reader := dialAt(t, s, admin, "trim-reader", observer)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub, err := reader.Subscribe(ctx, agentcoord.SubscribeOptions{SignalTypes: []string{"trim"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	first := send(t, sender, "trim", 1, nil)
	if got := receive(t, sub, 1); !equal(got, []int{1}) {
		t.Fatalf("first signal: %v", got)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	// While the subscription is down, signal 2 is sent and then trimmed by retention: resuming
	// after signal 1 would skip it.
	send(t, sender, "trim", 2, nil)
	deadline := time.Now().Add(20 * time.Second)
	for {
		time.Sleep(300 * time.Millisecond)
		send(t, sender, "trim", 3, nil) // writing trims what is older than the retention
		_, err := sender.Signals.ReceiveSignals(ctx, &agentcoordv1.ReceiveSignalsRequest{AfterId: first.GetId()})
		if agentcoord.ReasonOf(err) == agentcoordv1.ErrorReason_CURSOR_TRIMMED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("signal 2 was never trimmed (last ReceiveSignals error: %v)", err)
		}
	}

	_, err = sub.Recv()

	e := asError(t, err)
	if e.Code != codes.OutOfRange || e.Reason != agentcoordv1.ErrorReason_CURSOR_TRIMMED {
		t.Fatalf("Recv: %v", err)
	}
	if _, again := sub.Recv(); again != err {
		t.Fatalf("a second Recv returned %v", again)
	}
}

func TestSubscribeUnpacksBatchesInOrderWithoutLossOrDuplicate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sender := dialAs(t, "batch-sender", contributor)
	reader := dialAs(t, "batch-reader", observer)
	signalType := uniqueID("batch")
	anchor := send(t, sender, signalType, 0, nil)
	var stored []*agentcoordv1.Signal
	for n := 1; n <= 30; n++ { // the catch-up reads these as one page, sent as one batch
		stored = append(stored, send(t, sender, signalType, n, nil))
	}
	// The server does batch them (what the Subscription below has to unpack).
	raw, err := reader.Signals.Subscribe(ctx, &agentcoordv1.SubscribeRequest{
		SignalTypes: []string{signalType}, AfterId: anchor.GetId(), AcceptBatches: true})
	if err != nil {
		t.Fatal(err)
	}
	largest := 0
	for carried := 0; carried < len(stored); {
		response, err := raw.Recv()
		if err != nil {
			t.Fatal(err)
		}
		carried += len(response.GetSignals())
		largest = max(largest, len(response.GetSignals()))
	}
	if largest < 2 {
		t.Fatal("the server sent no batch")
	}

	sub, err := reader.Subscribe(ctx, agentcoord.SubscribeOptions{SignalTypes: []string{signalType}, AfterID: anchor.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	first := receive(t, sub, 1)
	if sub.Cursor() != stored[0].GetId() {
		t.Fatalf("cursor after the first signal of a batch = %s, want its id %s", sub.Cursor(), stored[0].GetId())
	}
	for n := 31; n <= 60; n++ {
		send(t, sender, signalType, n, nil)
	}
	if got := append(first, receive(t, sub, 59)...); !equal(got, sequence(1, 60)) {
		t.Fatalf("received %v", got)
	}
}

func TestSubscribeBeyondTheLiveSubscriptionsQuotaIsRefusedQuotaExceeded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	operator, err := agentcoord.Dial(ctx, srv.address, srv.operatorToken())
	if err != nil {
		t.Fatalf("Dial as operator: %v", err)
	}
	defer operator.Close()
	name := uniqueID("team")
	if _, err := operator.Admin.CreateNamespace(ctx, &agentcoordv1.CreateNamespaceRequest{Name: name}); err != nil {
		t.Fatalf("CreateNamespace: %v", err)
	}
	issued, err := operator.Admin.IssueToken(ctx, &agentcoordv1.IssueTokenRequest{AgentId: "lead", Namespace: name, Tier: agentcoordv1.AccessTier_ACCESS_TIER_STEWARD})
	if err != nil {
		t.Fatalf("IssueToken: %v", err)
	}
	quota := &agentcoordv1.NamespaceQuota{MaxLiveSubscriptions: 1}
	if _, err := operator.Admin.UpdateNamespaceQuota(ctx, &agentcoordv1.UpdateNamespaceQuotaRequest{Namespace: name, Quota: quota}); err != nil {
		t.Fatalf("UpdateNamespaceQuota: %v", err)
	}
	lead, err := agentcoord.Dial(ctx, srv.address, issued.GetToken())
	if err != nil {
		t.Fatalf("Dial as the namespace's steward: %v", err)
	}
	defer lead.Close()
	open, err := lead.Subscribe(ctx, agentcoord.SubscribeOptions{})
	if err != nil {
		t.Fatalf("the first Subscribe: %v", err)
	}
	defer open.Close()

	_, err = lead.Subscribe(ctx, agentcoord.SubscribeOptions{})

	e := asError(t, err)
	if e.Code != codes.ResourceExhausted || e.Reason != agentcoordv1.ErrorReason_QUOTA_EXCEEDED ||
		e.Metadata["quota"] != "live_subscriptions" || e.Metadata["limit"] != "1" || e.Metadata["used"] != "1" {
		t.Fatalf("the second Subscribe: %v (metadata %v)", err, e.Metadata)
	}
}
