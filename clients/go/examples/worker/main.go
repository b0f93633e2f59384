// Command worker is the Go worker of the polyglot demo (examples/polyglot at the repository root):
// it registers its capabilities and runs the client's Worker until SIGTERM or SIGINT, printing one
// JSON object per line on stdout (diagnostics go to stderr).
//
//	AGENTCOORD_SERVER=127.0.0.1:50051 AGENTCOORD_TOKEN=… go run ./examples/worker --capabilities lint,test
//
// Per task it prints {"event":"claimed",…} right after the claim, works --work-ms, completes the
// task with result {"worker": "<agent id>"}, broadcasts a "task.completed" signal with data
// {"task_id", "attempt", "agent"}, then prints {"event":"completed",…}.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// line is one stdout event; the field order is the demo's contract's.
type line struct {
	Event   string `json:"event"`
	TaskID  string `json:"task_id"`
	Attempt int32  `json:"attempt"`
	Agent   string `json:"agent"`
}

func emit(event string, task *agentcoordv1.Task, agent string) {
	out, _ := json.Marshal(line{Event: event, TaskID: task.GetTaskId(), Attempt: task.GetAttempts(), Agent: agent})
	fmt.Println(string(out))
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	leaseSeconds, _ := strconv.ParseFloat(env("WORKER_LEASE_SECONDS", "3"), 64)
	workMS, _ := strconv.Atoi(env("WORKER_WORK_MS", "200"))
	capabilities := flag.String("capabilities", env("WORKER_CAPABILITIES", "lint,test"), "task types this worker does, comma-separated")
	lease := flag.Duration("lease", time.Duration(leaseSeconds*float64(time.Second)), "lease per claim (renewed every third of it)")
	wait := flag.Duration("wait", 2*time.Second, "how long one claim waits on the server for a task")
	flag.Func("work-ms", "simulated work per task, in milliseconds (default 200)", func(v string) error {
		ms, err := strconv.Atoi(v)
		workMS = ms
		return err
	})
	flag.Parse()
	if err := run(*capabilities, *lease, time.Duration(workMS)*time.Millisecond, *wait); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run(capabilities string, lease, work, wait time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	client, err := agentcoord.Dial(ctx, env("AGENTCOORD_SERVER", "127.0.0.1:50051"), os.Getenv("AGENTCOORD_TOKEN"))
	if err != nil {
		return err
	}
	defer client.Close()
	agent := client.Principal().GetAgentId()
	types := strings.Split(capabilities, ",")
	if _, err := client.Tasks.RegisterAgent(ctx, &agentcoordv1.RegisterAgentRequest{Capabilities: types}); err != nil {
		return err
	}

	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		emit("claimed", task, agent)
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(work):
		}
		return map[string]any{"worker": agent}, nil
	}, agentcoord.WorkerOptions{Lease: lease, Wait: wait}) // no TaskTypes: the registered capabilities

	for ctx.Err() == nil {
		task, err := worker.RunOnce(ctx)
		switch {
		case ctx.Err() != nil:
		case err == nil && task != nil:
			if err := announce(ctx, client, task, agent); err != nil {
				return err
			}
			emit("completed", task, agent)
		case err == nil: // no task came within the wait
		case errors.Is(err, agentcoord.ErrLeaseLost):
			fmt.Fprintln(os.Stderr, "worker: lease lost:", err)
		default:
			var handlerErr *agentcoord.HandlerError
			if e, ok := agentcoord.FromError(err); !errors.As(err, &handlerErr) && (!ok || e.Code != codes.Unavailable) {
				return err
			}
			fmt.Fprintln(os.Stderr, "worker:", err)
			time.Sleep(time.Second)
		}
	}
	return nil // SIGTERM/SIGINT: a clean stop
}

// announce broadcasts the completion. It runs even if a stop signal arrived meanwhile: the task
// is completed, so its signal must follow. The request id makes a retry after UNAVAILABLE safe:
// the server stores the signal once.
func announce(ctx context.Context, client *agentcoord.Client, task *agentcoordv1.Task, agent string) error {
	data, err := structpb.NewStruct(map[string]any{"task_id": task.GetTaskId(), "attempt": task.GetAttempts(), "agent": agent})
	if err != nil {
		return err
	}
	request := &agentcoordv1.SendSignalRequest{
		SignalType: "task.completed", Data: data,
		RequestId: fmt.Sprintf("completed.%s.%d", task.GetTaskId(), task.GetAttempts()),
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for {
		_, err = client.Signals.SendSignal(ctx, request)
		if e, ok := agentcoord.FromError(err); !ok || e.Code != codes.Unavailable || ctx.Err() != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}
