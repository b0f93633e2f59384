// Command quickstart is the README's Go quick start: with `make run` serving and
// AGENTCOORD_TOKEN the bootstrap STEWARD token, `go run ./examples/quickstart`.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"google.golang.org/protobuf/types/known/structpb"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
	v1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

func main() {
	ctx, server := context.Background(), cmp.Or(os.Getenv("AGENTCOORD_SERVER"), "127.0.0.1:50051")
	steward := must(agentcoord.Dial(ctx, server, os.Getenv("AGENTCOORD_TOKEN"))) // a STEWARD's token
	dial := func(agentID string, tier v1.AccessTier) *agentcoord.Client {
		issued := must(steward.Admin.IssueToken(ctx, &v1.IssueTokenRequest{AgentId: agentID, Tier: tier}))
		return must(agentcoord.Dial(ctx, server, issued.GetToken()))
	}
	agent := dial("go-agent", v1.AccessTier_ACCESS_TIER_CONTRIBUTOR)
	observer := dial("go-observer", v1.AccessTier_ACCESS_TIER_OBSERVER)
	sub := must(observer.Subscribe(ctx, agentcoord.SubscribeOptions{SignalTypes: []string{"hello"}}))

	must(agent.Tasks.RegisterAgent(ctx, &v1.RegisterAgentRequest{Capabilities: []string{"lint"}}))
	payload := must(structpb.NewStruct(map[string]any{"file": "main.go"}))
	must(agent.Tasks.AddTask(ctx, &v1.AddTaskRequest{TaskType: "lint", Payload: payload}))
	worker := agent.NewWorker(func(ctx context.Context, task *v1.Task) (map[string]any, error) {
		return map[string]any{"linted": task.GetPayload().AsMap()["file"]}, nil
	}, agentcoord.WorkerOptions{TaskTypes: []string{"lint"}})
	done := must(worker.RunOnce(ctx)) // long-poll claim, lease renewed while it runs, complete
	fmt.Println(done.GetStatus(), done.GetTaskId(), done.GetResult().AsMap())

	must(agent.Signals.SendSignal(ctx, &v1.SendSignalRequest{SignalType: "hello"}))
	signal := must(sub.Recv()) // resumes by itself after a server restart
	fmt.Println("signal", signal.GetId(), "from", signal.GetSender())

	_, err := observer.Memory.Stash(ctx, &v1.StashRequest{Key: "note", Value: structpb.NewStringValue("hi")})
	var e *agentcoord.Error
	if errors.As(err, &e) && e.Reason == v1.ErrorReason_TIER_TOO_LOW && e.Local {
		fmt.Println("refused locally:", e) // PERMISSION_DENIED TIER_TOO_LOW, nothing was sent
	}
}

func must[T any](value T, err error) T {
	if err != nil {
		log.Fatal(err)
	}
	return value
}
