package agentcoord_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

func stash(t *testing.T, client *agentcoord.Client, key string, n float64, expected *int64) (*agentcoordv1.MemoryEntry, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	response, err := client.Memory.Stash(ctx, &agentcoordv1.StashRequest{
		Key: key, Value: structpb.NewNumberValue(n), ExpectedRevision: expected,
	}, grpc.WaitForReady(true))
	return response.GetEntry(), err
}

func TestConditionalStashAndTouchEntry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := dialAs(t, "cas", contributor)
	zero := int64(0)
	created, err := stash(t, client, "plan", 1, &zero)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stash(t, client, "plan", 2, &zero); asError(t, err).Reason != agentcoordv1.ErrorReason_ENTRY_EXISTS {
		t.Fatalf("create-only over a live key: %v", err)
	}
	rev := created.GetRevision()
	updated, err := stash(t, client, "plan", 2, &rev)
	if err != nil {
		t.Fatal(err)
	}
	stale := asError(t, func() error { _, err := stash(t, client, "plan", 3, &rev); return err }())
	if stale.Code != codes.Aborted || stale.Reason != agentcoordv1.ErrorReason_ENTRY_REVISION_MISMATCH {
		t.Fatalf("stale revision: %v", stale)
	}
	touched, err := client.Memory.TouchEntry(ctx, &agentcoordv1.TouchEntryRequest{
		Key: "plan", Ttl: &agentcoordv1.TouchEntryRequest_TtlDuration{TtlDuration: durationpb.New(2 * time.Hour)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if touched.GetEntry().GetRevision() != updated.GetRevision() ||
		!touched.GetEntry().GetExpireTime().AsTime().After(updated.GetExpireTime().AsTime()) {
		t.Fatalf("touch: %v after %v", touched.GetEntry(), updated)
	}
}

func TestWatchCatchesUpThenGoesLiveAndResumesAcrossARestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	writer := dialAs(t, "watch-writer", contributor)
	reader := dialAs(t, "watch-reader", observer)
	who, err := writer.Admin.WhoAmI(ctx, &agentcoordv1.WhoAmIRequest{})
	if err != nil {
		t.Fatal(err)
	}
	anchor, err := stash(t, writer, "anchor", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stash(t, writer, "k", 1, nil); err != nil { // before the watch: caught up
		t.Fatal(err)
	}
	w, err := reader.Watch(ctx, agentcoord.WatchOptions{
		Owner: who.GetPrincipal().GetAgentId(), KeyPrefix: "k", IncludeValues: true,
		AfterRevision: anchor.GetRevision(), HasAfterRevision: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	next := func() *agentcoordv1.EntryEvent {
		t.Helper()
		event, err := w.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		return event
	}
	if e := next(); e.GetKey() != "k" || e.GetEntry().GetValue().GetNumberValue() != 1 {
		t.Fatalf("catch-up: %v", e)
	}
	if _, err := stash(t, writer, "k", 2, nil); err != nil { // live
		t.Fatal(err)
	}
	if e := next(); e.GetEntry().GetValue().GetNumberValue() != 2 {
		t.Fatalf("live: %v", e)
	}

	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	last, err := stash(t, writer, "k", 3, nil) // written while the watch is down
	if err != nil {
		t.Fatal(err)
	}
	if e := next(); e.GetEntry().GetValue().GetNumberValue() != 3 || e.GetRevision() != last.GetRevision() {
		t.Fatalf("after the restart: %v", e)
	}
	if w.Resumes() == 0 {
		t.Fatal("the watch did not resume")
	}
	if w.Revision() != last.GetRevision() {
		t.Fatalf("Revision() = %d, want %d", w.Revision(), last.GetRevision())
	}
}

func TestWatchResumesAfterTheServerDropsASlowReader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	writer := dialAs(t, "slow-watch-writer", contributor)
	// As in the Subscribe test: a fixed 64 KiB window, so the server's 8-event buffer
	// (--signal-queue-size in TestMain) fills while this reader does not read.
	reader := dialAs(t, "slow-watch-reader", observer, agentcoord.WithDialOptions(
		grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16)))
	who, err := writer.Admin.WhoAmI(ctx, &agentcoordv1.WhoAmIRequest{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := reader.Watch(ctx, agentcoord.WatchOptions{Owner: who.GetPrincipal().GetAgentId(), IncludeValues: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const count = 80
	padding := strings.Repeat("x", 16<<10)
	for n := 1; n <= count; n++ {
		value, _ := structpb.NewValue(map[string]any{"n": n, "padding": padding})
		if _, err := writer.Memory.Stash(ctx, &agentcoordv1.StashRequest{Key: fmt.Sprintf("k%d", n), Value: value}); err != nil {
			t.Fatal(err)
		}
	}

	var got []int
	for range count {
		event, err := w.Recv()
		if err != nil {
			t.Fatalf("Recv after %v: %v", got, err)
		}
		got = append(got, int(event.GetEntry().GetValue().GetStructValue().GetFields()["n"].GetNumberValue()))
	}
	if !equal(got, sequence(1, count)) {
		t.Fatalf("received %v", got)
	}
	if w.Resumes() == 0 {
		t.Fatal("the server never dropped the slow watcher (SUBSCRIBER_TOO_SLOW), so no resume was tested")
	}
}
