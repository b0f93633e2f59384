package agentcoord

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// ErrLockLost is the cause of a HeldLock's context, and what Unlock returns (wrapped with the
// server's LOCK_NOT_HELD *Error when there was one), when the lock was lost while held: it
// expired (renewals failed until its TTL ran out) or a STEWARD force-released it. Another agent
// may hold it now, under a larger fencing token.
var ErrLockLost = errors.New("agentcoord: lock lost")

// LockOptions configures Client.Lock. The zero value holds the lock for 30 s at a time and waits
// for it as long as the context allows.
type LockOptions struct {
	// TTL is how long the lock lasts unless renewed, 1 s to 1 h (default 30 s). The HeldLock
	// renews it every TTL/3, so it only has to outlast a few failed renewals.
	TTL time.Duration
}

// maxLockWait is the longest wait one AcquireLock call may ask for; Lock calls it again.
const maxLockWait = 60 * time.Second

// deadlineSlack is what an AcquireLock's wait leaves of the context's deadline, so the server
// answers LOCK_HELD before the deadline instead of the call ending DEADLINE_EXCEEDED.
const deadlineSlack = 500 * time.Millisecond

// Lock acquires the named lock for this client's agent, waiting while another acquisition holds
// it (this agent's own included: locks do not re-enter) until ctx is done, and keeps it renewed
// in the background until Unlock. Hand HeldLock.FencingToken to the resource the lock guards: it
// must refuse a token smaller than the largest it has seen. Use HeldLock.Context for the work
// done under the lock: it is cancelled, with cause ErrLockLost, when the lock is lost.
// CONTRIBUTOR or above.
//
// Errors: ctx's error when it ended first (with the last LOCK_HELD *Error wrapped in); an *Error
// for other refusals, e.g. INVALID_ARGUMENT (INVALID_ID), PERMISSION_DENIED (TIER_TOO_LOW).
// UNAVAILABLE (a server stopping) is retried after a 0.5 s pause.
func (c *Client) Lock(ctx context.Context, lockID string, opts LockOptions) (*HeldLock, error) {
	if opts.TTL <= 0 {
		opts.TTL = 30 * time.Second
	}
	var last error
	for {
		wait := maxLockWait
		if deadline, ok := ctx.Deadline(); ok {
			wait = min(wait, max(0, time.Until(deadline)-deadlineSlack))
		}
		response, err := c.Locks.AcquireLock(ctx, &agentcoordv1.AcquireLockRequest{
			LockId: lockID, Ttl: durationpb.New(opts.TTL), Wait: durationpb.New(wait),
		})
		if err == nil {
			return c.hold(response.GetLock(), opts.TTL), nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (last: %w)", ctx.Err(), orNil(last, err))
		}
		if ReasonOf(err) == agentcoordv1.ErrorReason_LOCK_HELD {
			last = err
			if wait == 0 { // too little of the deadline is left for another wait
				select {
				case <-ctx.Done():
					return nil, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
				case <-time.After(deadlineSlack):
				}
			}
			continue
		}
		if e, ok := FromError(err); ok && e.Code == codes.Unavailable {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		return nil, err
	}
}

func orNil(last, err error) error {
	if last != nil {
		return last
	}
	return err
}

// HeldLock is a lock acquired by Client.Lock and renewed in the background until Unlock.
type HeldLock struct {
	locks  agentcoordv1.LockServiceClient
	ttl    time.Duration
	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	lock     *agentcoordv1.Lock
	lostErr  error
	released bool
}

func (c *Client) hold(lock *agentcoordv1.Lock, ttl time.Duration) *HeldLock {
	ctx, cancel := context.WithCancelCause(context.Background())
	renewCtx, stop := context.WithCancel(context.Background())
	h := &HeldLock{locks: c.Locks, ttl: ttl, ctx: ctx, cancel: cancel, stop: stop, done: make(chan struct{}), lock: lock}
	go h.renew(renewCtx, time.Now().Add(ttl))
	return h
}

// Context is cancelled when the lock is lost (context.Cause is then ErrLockLost) or released
// by Unlock (cause context.Canceled). Run the guarded work under it.
func (h *HeldLock) Context() context.Context { return h.ctx }

// FencingToken is this acquisition's fencing token: larger than every earlier acquisition's in
// the namespace.
func (h *HeldLock) FencingToken() int64 { return h.Current().GetFencingToken() }

// Current returns the lock as the last acquisition or renewal reported it (a copy).
func (h *HeldLock) Current() *agentcoordv1.Lock {
	h.mu.Lock()
	defer h.mu.Unlock()
	return proto.Clone(h.lock).(*agentcoordv1.Lock)
}

// Unlock stops the renewals and releases the lock, waking one waiting acquirer. It returns an
// error wrapping ErrLockLost when the lock had been lost while held (the work done under it was
// not protected to the end), or the release's *Error (e.g. UNAVAILABLE: the lock then lapses
// at its TTL). Calling it again returns the same.
func (h *HeldLock) Unlock(ctx context.Context) error {
	h.stop()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lostErr != nil {
		h.cancel(ErrLockLost)
		return h.lostErr
	}
	if h.released {
		return nil
	}
	lock := h.lock
	_, err := h.locks.ReleaseLock(ctx, &agentcoordv1.ReleaseLockRequest{
		LockId: lock.GetLockId(), FencingToken: lock.GetFencingToken(),
	})
	if ReasonOf(err) == agentcoordv1.ErrorReason_LOCK_NOT_HELD {
		h.lostErr = fmt.Errorf("%w: %w", ErrLockLost, err)
		h.cancel(ErrLockLost)
		return h.lostErr
	}
	h.cancel(context.Canceled)
	h.released = err == nil
	return err
}

// renew restarts the TTL every ttl/3 until stopped. The lock is lost when the server says so
// (LOCK_NOT_HELD), or when renewals kept failing (e.g. UNAVAILABLE) until its TTL ran out.
func (h *HeldLock) renew(ctx context.Context, deadline time.Time) {
	defer close(h.done)
	ticker := time.NewTicker(h.ttl / 3)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		current := h.Current()
		sent := time.Now()
		callCtx, cancel := context.WithDeadline(ctx, deadline)
		response, err := h.locks.RenewLock(callCtx, &agentcoordv1.RenewLockRequest{
			LockId: current.GetLockId(), FencingToken: current.GetFencingToken(), Ttl: durationpb.New(h.ttl),
		})
		cancel()
		switch {
		case err == nil:
			deadline = sent.Add(h.ttl)
			h.mu.Lock()
			h.lock = response.GetLock()
			h.mu.Unlock()
		case ctx.Err() != nil:
			return
		case ReasonOf(err) == agentcoordv1.ErrorReason_LOCK_NOT_HELD:
			h.lose(fmt.Errorf("%w: %w", ErrLockLost, err))
			return
		case !time.Now().Before(deadline):
			h.lose(fmt.Errorf("%w: renewals failed until it ran out: %w", ErrLockLost, err))
			return
		}
	}
}

func (h *HeldLock) lose(err error) {
	h.mu.Lock()
	h.lostErr = err
	h.mu.Unlock()
	h.cancel(ErrLockLost)
}
