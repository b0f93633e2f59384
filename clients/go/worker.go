package agentcoord

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// Handler does one claimed task and returns its result, a JSON-like map (nil for none), or an
// error to fail the attempt (wrap it with Permanent to dead-letter the task instead). ctx is
// cancelled when the lease is lost (context.Cause(ctx) is then ErrLeaseLost), when the task is
// cancelled (CancelTask; the cause is then ErrTaskCancelled) or the worker's context ends: stop
// then, the result would be refused.
type Handler func(ctx context.Context, task *agentcoordv1.Task) (map[string]any, error)

// ErrLeaseLost is the cause of a handler's cancelled context, and what RunOnce returns (wrapped
// with the server's LEASE_LOST *Error when there was one), when the worker lost a task's lease:
// the lease expired and the task went back to the queue or to another worker, or it was
// cancelled. Its result is not stored.
var ErrLeaseLost = errors.New("agentcoord: task lease lost")

// ErrTaskCancelled is the cause of a handler's cancelled context, and what RunOnce returns
// (wrapped), when the task was cancelled (CancelTask) while the handler ran: the worker neither
// completes nor fails it. Run learns it at once from the "task.cancelled" signal the server sends
// the holder in the cancelling step (Run holds one Subscribe for it, opened before its first
// claim, so no signal for a task it claims can be missed); every worker, RunOnce included, also
// learns it from its next renewal (TASK_CANCELLED), every Lease/3 — the backstop for a
// subscription that could not be opened or was lost. A cancelled task's lease is gone too:
// errors.Is(ErrTaskCancelled, ErrLeaseLost) holds, so code written for lost leases handles it.
var ErrTaskCancelled = fmt.Errorf("%w: task cancelled", ErrLeaseLost)

// CancelSignalType is the type of the signal CancelTask sends the holder of a claimed task (data:
// task_id, fencing_token).
const CancelSignalType = "task.cancelled"

// Permanent marks a handler error as final: the worker fails the task with retryable=false, so
// it is dead-lettered at once instead of being handed out again.
func Permanent(err error) error { return &permanentError{err} }

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// WorkerOptions configures a Worker. The zero value claims from the agent's registered
// capabilities with a 60 s lease and 10 s long-polls.
type WorkerOptions struct {
	// TaskTypes to claim from; empty means the capabilities the agent registered (RegisterAgent).
	TaskTypes []string
	// Lease is each claim's lease, 1 s to 1 h (default 60 s). The worker renews it every Lease/3
	// while the handler runs, so it only has to outlast a few failed renewals.
	Lease time.Duration
	// Wait is how long one claim waits on the server for a task when none is pending (long-poll),
	// 0 to 60 s (default 10 s).
	Wait time.Duration
	// RetryBackoff is how long a failed task waits before it can be claimed again (FailTask's
	// backoff, the retry_after). 0 sends none: the task's backoff policy decides (at once
	// without one).
	RetryBackoff time.Duration
}

// Worker claims tasks and runs a Handler on each: it long-polls ClaimTask, renews the lease in
// the background while the handler runs, then completes the task with the claim's fencing token,
// or fails it (FailTask) when the handler returns an error. In Run, that completion (or failure)
// also claims the next task (claim_next with the worker's TaskTypes and Lease), so a busy worker
// makes one RPC per task; only when nothing is pending does it long-poll ClaimTask again. Build
// one with Client.NewWorker.
type Worker struct {
	tasks     agentcoordv1.TaskServiceClient
	handler   Handler
	opts      WorkerOptions
	subscribe func(ctx context.Context) (*Subscription, error)
	watch     *cancelWatch // set while Run holds its subscription
}

// NewWorker returns a worker that runs handler on the tasks it claims as this client's agent.
// CONTRIBUTOR or above (a lower tier fails the first claim with TIER_TOO_LOW, locally).
func (c *Client) NewWorker(handler Handler, opts WorkerOptions) *Worker {
	if opts.Lease <= 0 {
		opts.Lease = 60 * time.Second
	}
	if opts.Wait <= 0 {
		opts.Wait = 10 * time.Second
	}
	subscribe := func(ctx context.Context) (*Subscription, error) {
		return c.Subscribe(ctx, SubscribeOptions{SignalTypes: []string{CancelSignalType}})
	}
	return &Worker{tasks: c.Tasks, handler: handler, opts: opts, subscribe: subscribe}
}

type watchKey struct {
	taskID  string
	fencing int64
}

// cancelWatch reads Run's subscription to task.cancelled signals and cancels the handler of the
// (task, fencing token) a signal names, when this worker is running it.
type cancelWatch struct {
	mu   sync.Mutex
	runs map[watchKey]context.CancelCauseFunc
}

func (w *cancelWatch) add(taskID string, fencing int64, cancel context.CancelCauseFunc) func() {
	key := watchKey{taskID, fencing}
	w.mu.Lock()
	w.runs[key] = cancel
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.runs, key)
		w.mu.Unlock()
	}
}

func (w *cancelWatch) read(sub *Subscription) {
	for {
		signal, err := sub.Recv()
		if err != nil {
			return // the renewals still tell the worker
		}
		fields := signal.GetData().GetFields()
		key := watchKey{fields["task_id"].GetStringValue(), int64(fields["fencing_token"].GetNumberValue())}
		w.mu.Lock()
		cancel := w.runs[key]
		w.mu.Unlock()
		if cancel != nil {
			cancel(ErrTaskCancelled)
		}
	}
}

// finishTimeout bounds the CompleteTask/FailTask call made after the handler returned; it runs
// even when the worker's context has ended, so a task interrupted by shutdown goes back to the
// queue now rather than when its lease runs out.
const finishTimeout = 10 * time.Second

// Run claims and processes tasks one at a time until ctx is done, then returns nil. A task in
// hand when ctx ends has its handler cancelled and is failed (retryable) so that another worker
// gets it at once; so is a task the last completion claimed (claim_next) that was not started.
// Handler errors and lost leases do not stop Run; neither does UNAVAILABLE
// from a claim (it pauses 1 s and claims again).
//
// Errors: any other claim failure, e.g. PERMISSION_DENIED (TIER_TOO_LOW), UNAUTHENTICATED,
// INVALID_ARGUMENT (NO_TASK_TYPES: no TaskTypes and no registered capabilities).
func (w *Worker) Run(ctx context.Context) error {
	if w.subscribe != nil {
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		if sub, err := w.subscribe(watchCtx); err == nil {
			w.watch = &cancelWatch{runs: map[watchKey]context.CancelCauseFunc{}}
			defer func() { w.watch = nil }()
			go w.watch.read(sub)
		}
	}
	var held *agentcoordv1.Task // claimed by the last completion or failure
	var heldSince time.Time     // when that call was sent: the new lease counts from then
	for ctx.Err() == nil || held != nil {
		var err error
		if held != nil {
			task, since := held, heldSince
			held = nil
			if ctx.Err() != nil {
				w.release(ctx, task)
				break
			}
			_, held, heldSince, err = w.process(ctx, task, since, true)
		} else {
			claimSent := time.Now()
			var task *agentcoordv1.Task
			if task, err = w.claim(ctx); err == nil && task != nil {
				_, held, heldSince, err = w.process(ctx, task, claimSent, true)
			}
		}
		if err == nil || ctx.Err() != nil || errors.Is(err, ErrLeaseLost) || isHandlerError(err) {
			continue
		}
		if e, ok := FromError(err); ok && e.Code == codes.Unavailable {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		return err
	}
	return nil
}

// HandlerError is what RunOnce returns when the handler failed (returned an error, panicked, or
// returned a result that is not JSON-like) and the task was failed on the server. Err is the
// handler's error.
type HandlerError struct {
	TaskID string
	Err    error
}

func (e *HandlerError) Error() string { return fmt.Sprintf("task %s: handler: %v", e.TaskID, e.Err) }
func (e *HandlerError) Unwrap() error { return e.Err }

func isHandlerError(err error) bool {
	var h *HandlerError
	return errors.As(err, &h)
}

// RunOnce claims one task, waiting up to Wait for one, and processes it. It returns:
//
//   - nil, nil when no task came;
//   - the completed task (status COMPLETED, with the handler's result), nil;
//   - the failed task as the server left it (PENDING again, or DEAD_LETTERED), and a
//     *HandlerError wrapping the handler's error;
//   - the claimed task and an error wrapping ErrLeaseLost when the lease was lost: the result
//     was not stored;
//   - the claimed task and an error wrapping ErrTaskCancelled when the task was cancelled while
//     the handler ran (its context was cancelled; nothing was sent);
//   - nil or the claimed task and an *Error when a call failed (the claim, or the completion:
//     then the task is redelivered when its lease runs out).
func (w *Worker) RunOnce(ctx context.Context) (*agentcoordv1.Task, error) {
	claimSent := time.Now()
	task, err := w.claim(ctx)
	if err != nil || task == nil {
		return nil, err
	}
	done, _, _, err := w.process(ctx, task, claimSent, false)
	return done, err
}

// claim long-polls ClaimTask: the claimed task, or nil when none came within Wait.
func (w *Worker) claim(ctx context.Context) (*agentcoordv1.Task, error) {
	claimed, err := w.tasks.ClaimTask(ctx, &agentcoordv1.ClaimTaskRequest{
		TaskTypes:     w.opts.TaskTypes,
		LeaseDuration: durationpb.New(w.opts.Lease),
		Wait:          durationpb.New(w.opts.Wait),
	})
	if err != nil {
		return nil, err
	}
	return claimed.GetTask(), nil
}

// release fails a task claimed by the last completion but not started (the worker is stopping),
// retryable and without backoff, so that another worker gets it at once.
func (w *Worker) release(ctx context.Context, task *agentcoordv1.Task) {
	finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	retryable := true
	_, _ = w.tasks.FailTask(finishCtx, &agentcoordv1.FailTaskRequest{
		TaskId: task.GetTaskId(), FencingToken: task.GetLease().GetFencingToken(),
		Error: "worker stopped before starting the task", Retryable: &retryable,
	})
}

// process runs the handler on a claimed task (claimed at claimSent) and completes or fails it, as
// RunOnce describes. With claimNext the completion or failure also claims the next task: it is
// returned with the time that call was sent (nil when none was pending or the call failed).
func (w *Worker) process(ctx context.Context, task *agentcoordv1.Task, claimSent time.Time, claimNext bool) (
	*agentcoordv1.Task, *agentcoordv1.Task, time.Time, error,
) {
	fencing := task.GetLease().GetFencingToken()

	handlerCtx, cancelHandler := context.WithCancelCause(ctx)
	defer cancelHandler(nil)
	if w.watch != nil {
		defer w.watch.add(task.GetTaskId(), fencing, cancelHandler)()
	}
	keeper := &leaseKeeper{
		tasks: w.tasks, taskID: task.GetTaskId(), fencing: fencing, lease: w.opts.Lease,
		// Counted from when the claim was sent, so it never runs past the server's expiry.
		deadline: claimSent.Add(w.opts.Lease), lost: cancelHandler,
	}
	var renewing sync.WaitGroup
	renewing.Add(1)
	renewCtx, stopRenewing := context.WithCancel(handlerCtx)
	go func() { defer renewing.Done(); keeper.run(renewCtx) }()
	result, handlerErr := w.call(handlerCtx, task)
	stopRenewing()
	renewing.Wait()

	if errors.Is(context.Cause(handlerCtx), ErrTaskCancelled) && keeper.lostErr == nil {
		// The signal told it first.
		return task, nil, time.Time{}, fmt.Errorf("%w: task %s", ErrTaskCancelled, task.GetTaskId())
	}
	if errors.Is(context.Cause(handlerCtx), ErrLeaseLost) {
		return task, nil, time.Time{}, keeper.lostErr
	}
	finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	var next *agentcoordv1.ClaimNextOptions
	if claimNext && ctx.Err() == nil {
		next = &agentcoordv1.ClaimNextOptions{TaskTypes: w.opts.TaskTypes, LeaseDuration: durationpb.New(w.opts.Lease)}
	}
	finishSent := time.Now()
	if handlerErr == nil {
		var payload *structpb.Struct
		if payload, handlerErr = structpb.NewStruct(result); handlerErr == nil {
			done, err := w.tasks.CompleteTask(finishCtx, &agentcoordv1.CompleteTaskRequest{
				TaskId: task.GetTaskId(), FencingToken: fencing, Result: payload, ClaimNext: next,
			})
			if err != nil {
				return task, nil, time.Time{}, leaseLostOr(err)
			}
			return done.GetTask(), done.GetNextTask(), finishSent, nil
		}
		handlerErr = Permanent(fmt.Errorf("result is not JSON-like: %w", handlerErr))
	}
	var permanent *permanentError
	retryable := !errors.As(handlerErr, &permanent)
	message := handlerErr.Error()
	if len(message) > 4096 {
		message = message[:4096]
	}
	var backoff *durationpb.Duration
	if w.opts.RetryBackoff > 0 {
		backoff = durationpb.New(w.opts.RetryBackoff)
	}
	failed, err := w.tasks.FailTask(finishCtx, &agentcoordv1.FailTaskRequest{
		TaskId: task.GetTaskId(), FencingToken: fencing, Error: message,
		Retryable: &retryable, Backoff: backoff, ClaimNext: next,
	})
	if err != nil {
		return task, nil, time.Time{}, leaseLostOr(err)
	}
	return failed.GetTask(), failed.GetNextTask(), finishSent, &HandlerError{TaskID: task.GetTaskId(), Err: handlerErr}
}

// call runs the handler, turning a panic into an error so that the task is failed, not leaked.
func (w *Worker) call(ctx context.Context, task *agentcoordv1.Task) (result map[string]any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return w.handler(ctx, task)
}

func leaseLostOr(err error) error {
	if isLeaseGone(err) {
		return fmt.Errorf("%w: %w", ErrLeaseLost, err)
	}
	return err
}

// isLeaseGone: the server says this claim is over (LEASE_LOST), or the task itself is gone.
func isLeaseGone(err error) bool {
	switch ReasonOf(err) {
	case agentcoordv1.ErrorReason_LEASE_LOST, agentcoordv1.ErrorReason_TASK_NOT_FOUND:
		return true
	}
	return false
}

// leaseKeeper renews one claim's lease every lease/3 until stopped. It declares the lease lost
// (cancelling the handler with ErrLeaseLost) when the server says so, or when renewals kept
// failing (e.g. UNAVAILABLE) until the lease's own end passed.
type leaseKeeper struct {
	tasks    agentcoordv1.TaskServiceClient
	taskID   string
	fencing  int64
	lease    time.Duration
	deadline time.Time // when the lease ends, by this process's clock
	lost     context.CancelCauseFunc
	lostErr  error
}

func (k *leaseKeeper) run(ctx context.Context) {
	ticker := time.NewTicker(k.lease / 3)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		sent := time.Now()
		callCtx, cancel := context.WithDeadline(ctx, k.deadline)
		_, err := k.tasks.RenewTaskLease(callCtx, &agentcoordv1.RenewTaskLeaseRequest{
			TaskId: k.taskID, FencingToken: k.fencing, LeaseDuration: durationpb.New(k.lease),
		})
		cancel()
		switch {
		case err == nil:
			k.deadline = sent.Add(k.lease)
		case ctx.Err() != nil:
			return
		case ReasonOf(err) == agentcoordv1.ErrorReason_TASK_CANCELLED:
			k.lostErr = fmt.Errorf("%w: %w", ErrTaskCancelled, err)
			k.lost(ErrTaskCancelled)
			return
		case isLeaseGone(err):
			k.lostErr = fmt.Errorf("%w: %w", ErrLeaseLost, err)
			k.lost(ErrLeaseLost)
			return
		case !time.Now().Before(k.deadline):
			k.lostErr = fmt.Errorf("%w: renewals failed until it ran out: %w", ErrLeaseLost, err)
			k.lost(ErrLeaseLost)
			return
		}
	}
}
