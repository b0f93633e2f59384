package agentcoord_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

func TestLockHoldersTakeTurnsWithGrowingFencingTokens(t *testing.T) {
	lockID := uniqueID("lock")
	const contenders = 8
	clients := make([]*agentcoord.Client, contenders)
	for i := range clients {
		clients[i] = dialAs(t, "locker", agentcoordv1.AccessTier_ACCESS_TIER_CONTRIBUTOR)
	}
	var mu sync.Mutex
	var tokens []int64
	inside := 0
	overlaps := 0
	var wg sync.WaitGroup
	for _, client := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			held, err := client.Lock(ctx, lockID, agentcoord.LockOptions{TTL: 10 * time.Second})
			if err != nil {
				t.Errorf("Lock: %v", err)
				return
			}
			mu.Lock()
			inside++
			if inside > 1 {
				overlaps++
			}
			tokens = append(tokens, held.FencingToken())
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			if err := held.Unlock(ctx); err != nil {
				t.Errorf("Unlock: %v", err)
			}
		}()
	}
	wg.Wait()
	if overlaps != 0 {
		t.Fatalf("%d times two agents held the lock at once", overlaps)
	}
	if len(tokens) != contenders {
		t.Fatalf("%d acquisitions, want %d", len(tokens), contenders)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Fatalf("fencing tokens in order of acquisition do not grow: %v", tokens)
		}
	}
}

func TestALostLockCancelsItsContextWithErrLockLost(t *testing.T) {
	lockID := uniqueID("lock")
	client := dialAs(t, "holder", agentcoordv1.AccessTier_ACCESS_TIER_CONTRIBUTOR)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	held, err := client.Lock(ctx, lockID, agentcoord.LockOptions{TTL: 1500 * time.Millisecond})
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if _, err := steward.Locks.ReleaseLock(ctx, &agentcoordv1.ReleaseLockRequest{LockId: lockID, Force: true}); err != nil {
		t.Fatalf("force ReleaseLock: %v", err)
	}
	select {
	case <-held.Context().Done():
	case <-ctx.Done():
		t.Fatal("the held lock's context was not cancelled after the lock was lost")
	}
	if cause := context.Cause(held.Context()); !errors.Is(cause, agentcoord.ErrLockLost) {
		t.Fatalf("cause %v, want ErrLockLost", cause)
	}
	err = held.Unlock(ctx)
	if !errors.Is(err, agentcoord.ErrLockLost) || agentcoord.ReasonOf(err) != agentcoordv1.ErrorReason_LOCK_NOT_HELD {
		t.Fatalf("Unlock after a loss: %v, want ErrLockLost wrapping LOCK_NOT_HELD", err)
	}
}

func TestLockGivesUpWhenItsContextEndsAndUnlockReleases(t *testing.T) {
	lockID := uniqueID("lock")
	holder := dialAs(t, "holder", agentcoordv1.AccessTier_ACCESS_TIER_CONTRIBUTOR)
	other := dialAs(t, "other", agentcoordv1.AccessTier_ACCESS_TIER_CONTRIBUTOR)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	held, err := holder.Lock(ctx, lockID, agentcoord.LockOptions{})
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 1200*time.Millisecond)
	defer cancelShort()
	_, err = other.Lock(short, lockID, agentcoord.LockOptions{})
	if !errors.Is(err, context.DeadlineExceeded) || agentcoord.ReasonOf(err) != agentcoordv1.ErrorReason_LOCK_HELD {
		t.Fatalf("Lock of a held lock: %v, want DeadlineExceeded wrapping LOCK_HELD", err)
	}
	if err := held.Unlock(ctx); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if cause := context.Cause(held.Context()); !errors.Is(cause, context.Canceled) {
		t.Fatalf("cause after Unlock %v, want Canceled", cause)
	}
	next, err := other.Lock(ctx, lockID, agentcoord.LockOptions{})
	if err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}
	if next.FencingToken() <= held.FencingToken() {
		t.Fatalf("token %d after %d: fencing tokens must grow", next.FencingToken(), held.FencingToken())
	}
	_ = next.Unlock(ctx)
}
