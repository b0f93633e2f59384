package agentcoord_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// addTask adds a task of taskType as the steward and returns its id.
func addTask(t *testing.T, taskType string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	response, err := steward.Tasks.AddTask(ctx, &agentcoordv1.AddTaskRequest{TaskType: taskType}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("AddTask: %v", err)
	}
	return response.GetTask().GetTaskId()
}

func getTask(t *testing.T, taskID string) *agentcoordv1.Task {
	t.Helper()
	response, err := steward.Tasks.GetTask(context.Background(), &agentcoordv1.GetTaskRequest{TaskId: taskID})
	if err != nil {
		t.Fatalf("GetTask: %v", err)
	}
	return response.GetTask()
}

func TestWorkerCompletesTheTaskWithTheClaimsFencingToken(t *testing.T) {
	client := dialAs(t, "worker", contributor)
	taskType := uniqueID("type")
	taskID := addTask(t, taskType)
	var seen *agentcoordv1.Task
	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		seen = task
		return map[string]any{"ok": true, "task": task.GetTaskId()}, nil
	}, agentcoord.WorkerOptions{TaskTypes: []string{taskType}, Lease: 5 * time.Second, Wait: time.Second})

	done, err := worker.RunOnce(context.Background())

	if err != nil {
		t.Fatal(err)
	}
	if seen.GetTaskId() != taskID || seen.GetStatus() != agentcoordv1.TaskStatus_TASK_STATUS_CLAIMED {
		t.Fatalf("handler saw %v", seen)
	}
	if done.GetStatus() != agentcoordv1.TaskStatus_TASK_STATUS_COMPLETED || done.GetAssignee() != client.Principal().GetAgentId() {
		t.Fatalf("task after RunOnce: %v", done)
	}
	if done.GetLease().GetFencingToken() != seen.GetLease().GetFencingToken() {
		t.Fatalf("completed with fencing token %d, claimed with %d", done.GetLease().GetFencingToken(), seen.GetLease().GetFencingToken())
	}
	if result := done.GetResult().AsMap(); result["ok"] != true || result["task"] != taskID {
		t.Fatalf("result %v", result)
	}
}

func TestWorkerLongPollsForATaskAddedWhileItWaits(t *testing.T) {
	client := dialAs(t, "poller", contributor)
	taskType := uniqueID("type")
	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		return nil, nil
	}, agentcoord.WorkerOptions{TaskTypes: []string{taskType}, Wait: 20 * time.Second})
	type outcome struct {
		task *agentcoordv1.Task
		err  error
	}
	result := make(chan outcome, 1)
	go func() {
		task, err := worker.RunOnce(context.Background())
		result <- outcome{task, err}
	}()

	time.Sleep(500 * time.Millisecond) // the claim is waiting on the server by now
	taskID := addTask(t, taskType)

	got := <-result
	if got.err != nil || got.task.GetTaskId() != taskID || got.task.GetStatus() != agentcoordv1.TaskStatus_TASK_STATUS_COMPLETED {
		t.Fatalf("RunOnce = %v, %v; want %s completed", got.task, got.err, taskID)
	}
}

func TestWorkerRenewsTheLeaseWhileTheHandlerRuns(t *testing.T) {
	client := dialAs(t, "renewer", contributor)
	taskType := uniqueID("type")
	taskID := addTask(t, taskType)
	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		// 3.6 s, almost twice the 2 s lease: without renewals (every 0.67 s) the lease would run
		// out, and GetTask (which settles expired leases) would report the task PENDING.
		for range 3 {
			select {
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			case <-time.After(1200 * time.Millisecond):
			}
			if current := getTask(t, taskID); current.GetStatus() != agentcoordv1.TaskStatus_TASK_STATUS_CLAIMED || current.GetAttempts() != 1 {
				t.Errorf("while the handler runs the task is %s (attempt %d)", current.GetStatus(), current.GetAttempts())
			}
		}
		return map[string]any{"slow": true}, nil
	}, agentcoord.WorkerOptions{TaskTypes: []string{taskType}, Lease: 2 * time.Second, Wait: time.Second})

	done, err := worker.RunOnce(context.Background())

	if err != nil || done.GetStatus() != agentcoordv1.TaskStatus_TASK_STATUS_COMPLETED || done.GetAttempts() != 1 {
		t.Fatalf("RunOnce = %v, %v", done, err)
	}
}

func TestWorkerFailsTheTaskWhenTheHandlerReturnsAnError(t *testing.T) {
	client := dialAs(t, "failer", contributor)
	taskType := uniqueID("type")
	boom := errors.New("boom")
	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		if task.GetAttempts() == 1 {
			return nil, boom
		}
		return nil, agentcoord.Permanent(errors.New("still broken"))
	}, agentcoord.WorkerOptions{TaskTypes: []string{taskType}, Wait: time.Second})
	taskID := addTask(t, taskType)

	retried, err := worker.RunOnce(context.Background())

	var handlerErr *agentcoord.HandlerError
	if !errors.As(err, &handlerErr) || !errors.Is(err, boom) || handlerErr.TaskID != taskID {
		t.Fatalf("first attempt: err %v", err)
	}
	if retried.GetStatus() != agentcoordv1.TaskStatus_TASK_STATUS_PENDING || retried.GetLastError() != "boom" {
		t.Fatalf("after a failed attempt the task is %s, last error %q", retried.GetStatus(), retried.GetLastError())
	}

	dead, err := worker.RunOnce(context.Background())

	if !errors.As(err, &handlerErr) || dead.GetStatus() != agentcoordv1.TaskStatus_TASK_STATUS_DEAD_LETTERED || dead.GetAttempts() != 2 {
		t.Fatalf("after a permanent failure: %v, err %v", dead, err)
	}
}

func TestWorkerCancelsTheHandlerWhenTheLeaseIsLost(t *testing.T) {
	client := dialAs(t, "loser", contributor)
	taskType := uniqueID("type")
	taskID := addTask(t, taskType)
	var cause error
	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		// Cancelling a claimed task revokes its lease; the next renewal hears TASK_CANCELLED.
		if _, err := steward.Tasks.CancelTask(context.Background(), &agentcoordv1.CancelTaskRequest{TaskId: taskID}); err != nil {
			t.Errorf("CancelTask: %v", err)
		}
		select {
		case <-ctx.Done():
			cause = context.Cause(ctx)
			return nil, ctx.Err()
		case <-time.After(20 * time.Second):
			return map[string]any{"late": true}, nil
		}
	}, agentcoord.WorkerOptions{TaskTypes: []string{taskType}, Lease: time.Second, Wait: time.Second})

	task, err := worker.RunOnce(context.Background())

	if !errors.Is(cause, agentcoord.ErrLeaseLost) {
		t.Fatalf("handler context ended with cause %v, want ErrLeaseLost", cause)
	}
	if !errors.Is(err, agentcoord.ErrTaskCancelled) || agentcoord.ReasonOf(err) != agentcoordv1.ErrorReason_TASK_CANCELLED || task.GetTaskId() != taskID {
		t.Fatalf("RunOnce = %v, %v", task, err)
	}
	if status := getTask(t, taskID).GetStatus(); status != agentcoordv1.TaskStatus_TASK_STATUS_CANCELLED {
		t.Fatalf("task is %s", status)
	}
}

func TestWorkerRunStopsWhenItsContextEnds(t *testing.T) {
	client := dialAs(t, "runner", contributor)
	taskType := uniqueID("type")
	ids := map[string]bool{addTask(t, taskType): true, addTask(t, taskType): true}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	completed := make(chan string, len(ids))
	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		completed <- task.GetTaskId()
		return nil, nil
	}, agentcoord.WorkerOptions{TaskTypes: []string{taskType}, Wait: 20 * time.Second})
	stopped := make(chan error, 1)
	go func() { stopped <- worker.Run(ctx) }()

	for range len(ids) { // not `range ids`: deleting while ranging over a map skips entries
		delete(ids, <-completed)
	}
	cancel() // Run is now in a 20 s long-poll: cancelling ends it

	if err := <-stopped; err != nil || len(ids) != 0 {
		t.Fatalf("Run = %v; not handled: %v", err, ids)
	}
}

func TestWorkerRunClaimsEachNextTaskWithTheCompletion(t *testing.T) {
	client := dialAs(t, "chain", contributor)
	agent := client.Principal().GetAgentId()
	taskType := uniqueID("type")
	const count = 12
	ids := map[string]bool{}
	for range count {
		ids[addTask(t, taskType)] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	completed := make(chan string, count)
	failedOnce := false
	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		if !failedOnce { // one failure: FailTask claims the next task too (here the same one again)
			failedOnce = true
			return nil, errors.New("once")
		}
		completed <- task.GetTaskId()
		return nil, nil
	}, agentcoord.WorkerOptions{TaskTypes: []string{taskType}, Wait: 20 * time.Second})
	stopped := make(chan error, 1)
	go func() { stopped <- worker.Run(ctx) }()
	for range count {
		delete(ids, <-completed)
	}
	cancel()
	if err := <-stopped; err != nil || len(ids) != 0 {
		t.Fatalf("Run = %v; not handled: %v", err, ids)
	}

	// One claim found the first task; every later one came with a completion or failure. The
	// last completion found nothing pending, so a second claim long-polled until cancel.
	claims := 0
	for _, line := range srv.rpcLines(t) {
		if line["method"] == "/agentcoord.v1.TaskService/ClaimTask" && line["agent"] == agent {
			claims++
		}
	}
	if claims > 2 {
		t.Fatalf("%d ClaimTask calls for %d tasks queued at once (want at most 2)", claims, count)
	}
}

func TestWorkerStopsTheHandlerOfACancelledTask(t *testing.T) {
	client := dialAs(t, "cancelled-worker", contributor)
	taskType := uniqueID("type")
	taskID := addTask(t, taskType)
	started, causes := make(chan struct{}), make(chan error, 1)
	// A 60 s lease renews every 20 s: within the test's bound only the signal can tell the worker.
	worker := client.NewWorker(func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error) {
		close(started)
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil, ctx.Err()
	}, agentcoord.WorkerOptions{TaskTypes: []string{taskType}, Lease: time.Minute, Wait: time.Second})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- worker.Run(ctx) }()
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the handler never started")
	}

	if _, err := steward.Tasks.CancelTask(context.Background(), &agentcoordv1.CancelTaskRequest{TaskId: taskID}); err != nil {
		t.Fatalf("CancelTask: %v", err)
	}

	select {
	case cause := <-causes:
		if !errors.Is(cause, agentcoord.ErrTaskCancelled) {
			t.Fatalf("handler's context ended with %v, want ErrTaskCancelled", cause)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the cancelled task's handler was not stopped")
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if status := getTask(t, taskID).GetStatus(); status != agentcoordv1.TaskStatus_TASK_STATUS_CANCELLED {
		t.Fatalf("task status %v, want CANCELLED", status)
	}
}

func TestRenewalOfACancelledTaskAnswersTaskCancelled(t *testing.T) {
	client := dialAs(t, "renewer", contributor)
	taskType := uniqueID("type")
	taskID := addTask(t, taskType)
	ctx := context.Background()
	claimed, err := client.Tasks.ClaimTask(ctx, &agentcoordv1.ClaimTaskRequest{TaskTypes: []string{taskType}})
	if err != nil || claimed.GetTask() == nil {
		t.Fatalf("ClaimTask: %v %v", claimed, err)
	}
	if _, err := steward.Tasks.CancelTask(ctx, &agentcoordv1.CancelTaskRequest{TaskId: taskID}); err != nil {
		t.Fatalf("CancelTask: %v", err)
	}

	_, err = client.Tasks.RenewTaskLease(ctx, &agentcoordv1.RenewTaskLeaseRequest{
		TaskId: taskID, FencingToken: claimed.GetTask().GetLease().GetFencingToken(),
	})

	if agentcoord.ReasonOf(err) != agentcoordv1.ErrorReason_TASK_CANCELLED {
		t.Fatalf("RenewTaskLease after CancelTask: %v, want TASK_CANCELLED", err)
	}
}

func TestAddTaskWithDependenciesWaitsForThem(t *testing.T) {
	client := dialAs(t, "lead-go", contributor)
	taskType := uniqueID("type")
	ctx := context.Background()
	dep := addTask(t, taskType)
	synthesisType := uniqueID("synthesis")
	added, err := client.Tasks.AddTask(ctx, &agentcoordv1.AddTaskRequest{
		TaskType: synthesisType, DependsOn: []string{dep},
		DependencyFailurePolicy: agentcoordv1.DependencyFailurePolicy_DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY,
	})
	if err != nil {
		t.Fatalf("AddTask: %v", err)
	}
	if added.GetTask().GetWaitReason() != agentcoordv1.TaskWaitReason_TASK_WAIT_REASON_DEPENDENCIES || added.GetTask().GetDependenciesOutstanding() != 1 {
		t.Fatalf("dependent task: %v", added.GetTask())
	}
	if _, err := steward.Tasks.CancelTask(ctx, &agentcoordv1.CancelTaskRequest{TaskId: dep}); err != nil {
		t.Fatalf("CancelTask: %v", err)
	}
	claimed, err := client.Tasks.ClaimTask(ctx, &agentcoordv1.ClaimTaskRequest{TaskTypes: []string{synthesisType}})
	if err != nil || claimed.GetTask().GetTaskId() != added.GetTask().GetTaskId() {
		t.Fatalf("claim after the dependency was cancelled (run anyway): %v %v", claimed, err)
	}
}
