package agentcoord

import (
	"context"
	"errors"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// WatchOptions says which working-memory changes a Watcher follows, from where, and how hard it
// tries to resume. The zero value follows the caller's own entries from now on.
type WatchOptions struct {
	// Owner whose entries to watch; empty: the caller's (unless AllOwners).
	Owner string
	// AllOwners watches every owner's entries in the namespace (Owner must be empty).
	AllOwners bool
	// KeyPrefix: only keys starting with it; empty: all.
	KeyPrefix string
	// SessionID watches that session's shared context instead (participants only).
	SessionID string
	// AfterRevision resumes after this revision (exclusive) when HasAfterRevision is set, e.g.
	// the revision of the last event you handled or of an entry you read; otherwise the watch
	// starts at the current revision.
	AfterRevision    int64
	HasAfterRevision bool
	// IncludeValues puts the stashed value in PUT events.
	IncludeValues bool
	// MaxRetries, Backoff and MaxBackoff as in SubscribeOptions (defaults 8, 200 ms, 5 s).
	MaxRetries int
	Backoff    time.Duration
	MaxBackoff time.Duration
}

// Watcher is a live, resuming stream of working-memory events (PUT, DELETE, EXPIRE), oldest
// first, with no gaps and no duplicates. Read it with Recv (or range over All); it resumes by
// itself after the last revision the server sent when the stream ends with UNAVAILABLE or
// RESOURCE_EXHAUSTED SUBSCRIBER_TOO_SLOW, as Subscription does. Not safe for concurrent Recv.
type Watcher struct {
	memory agentcoordv1.MemoryServiceClient
	conn   *grpc.ClientConn
	ctx    context.Context
	stop   context.CancelFunc
	opts   WatchOptions

	stream   grpc.ServerStreamingClient[agentcoordv1.WatchEntriesResponse]
	cancel   context.CancelFunc
	batch    []*agentcoordv1.EntryEvent
	last     int64
	revision int64
	started  bool
	retries  int
	resumes  int
	err      error
}

// Watch opens a watch and waits for the server's first response (the revision it starts after),
// so every change made after Watch returns will be delivered. It ends when ctx is done or Close
// is called. OBSERVER or above.
//
// Errors (*Error), at once: INVALID_ARGUMENT for a bad prefix or contradictory options;
// OUT_OF_RANGE (REVISION_COMPACTED) for an AfterRevision older than the namespace's kept history;
// PERMISSION_DENIED (NOT_A_PARTICIPANT) for a session the caller is not in; UNAVAILABLE if the
// server cannot be reached (only an open watch resumes).
func (c *Client) Watch(ctx context.Context, opts WatchOptions) (*Watcher, error) {
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 8
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	ctx, stop := context.WithCancel(ctx)
	w := &Watcher{memory: c.Memory, conn: c.conn, ctx: ctx, stop: stop, opts: opts,
		revision: opts.AfterRevision, started: opts.HasAfterRevision}
	if err := w.open(); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// Recv returns the next event, blocking until there is one. It resumes after UNAVAILABLE or
// SUBSCRIBER_TOO_SLOW without losing or repeating an event.
//
// Errors: an *Error with OUT_OF_RANGE REVISION_COMPACTED when the revision to resume from is no
// longer kept (re-read the entries, then watch again); the last *Error once resuming failed
// MaxRetries times in a row; any other *Error at once; io.EOF if the server ended the stream
// normally; ctx.Err() once ctx is done or after Close. After an error, every later Recv returns
// it again.
func (w *Watcher) Recv() (*agentcoordv1.EntryEvent, error) {
	for w.err == nil {
		if len(w.batch) > 0 {
			event := w.batch[0]
			w.batch[0], w.batch = nil, w.batch[1:]
			w.revision = event.GetRevision()
			if len(w.batch) == 0 {
				w.revision = w.last
			}
			return event, nil
		}
		if w.stream == nil {
			if err := w.pause(); err != nil {
				w.fail(err)
				break
			}
			if err := w.open(); err != nil {
				if w.retryable(err) {
					continue
				}
				w.fail(err)
				break
			}
		}
		response, err := w.stream.Recv()
		if err == nil {
			w.retries = 0
			w.batch = response.GetEvents()
			w.last = response.GetRevision()
			if len(w.batch) == 0 {
				w.revision = w.last // progress past events this watcher does not see
			}
			continue
		}
		w.dropStream()
		if errors.Is(err, io.EOF) || !w.retryable(err) {
			w.fail(err)
		}
	}
	return nil, w.err
}

// All ranges over the events as Recv returns them; the loop ends after yielding an error.
func (w *Watcher) All() iter.Seq2[*agentcoordv1.EntryEvent, error] {
	return func(yield func(*agentcoordv1.EntryEvent, error) bool) {
		for {
			event, err := w.Recv()
			if !yield(event, err) || err != nil {
				return
			}
		}
	}
}

// Revision is the position after the last event Recv returned (or the last progress reported):
// pass it as AfterRevision to continue elsewhere with no gap and no duplicate.
func (w *Watcher) Revision() int64 { return w.revision }

// Resumes counts how many times the watch reopened its stream after an interruption.
func (w *Watcher) Resumes() int { return w.resumes }

// Close ends the watch and cancels its call on the server at once. Safe to call more than once.
func (w *Watcher) Close() { w.stop() }

func (w *Watcher) open() error {
	request := &agentcoordv1.WatchEntriesRequest{
		Owner: w.opts.Owner, AllOwners: w.opts.AllOwners, KeyPrefix: w.opts.KeyPrefix,
		SessionId: w.opts.SessionID, IncludeValues: w.opts.IncludeValues,
	}
	if w.started {
		request.AfterRevision = &w.revision
	}
	ctx, cancel := context.WithCancel(w.ctx)
	stream, err := w.memory.WatchEntries(ctx, request)
	if err == nil {
		var first *agentcoordv1.WatchEntriesResponse
		if first, err = stream.Recv(); err == nil {
			w.stream, w.cancel = stream, cancel
			w.retries = 0
			w.revision, w.last, w.started = first.GetRevision(), first.GetRevision(), true
			return nil
		}
	}
	cancel()
	return err
}

func (w *Watcher) retryable(err error) bool {
	if w.ctx.Err() != nil || w.retries >= w.opts.MaxRetries {
		return false
	}
	e, ok := FromError(err)
	if !ok {
		return false
	}
	resumable := e.Code == codes.Unavailable ||
		(e.Code == codes.ResourceExhausted && e.Reason == agentcoordv1.ErrorReason_SUBSCRIBER_TOO_SLOW)
	if resumable {
		w.retries++
		w.resumes++
	}
	return resumable
}

func (w *Watcher) pause() error {
	delay := w.opts.Backoff << max(0, w.retries-1)
	if delay > w.opts.MaxBackoff || delay <= 0 {
		delay = w.opts.MaxBackoff
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-w.ctx.Done():
		return w.ctx.Err()
	case <-timer.C:
	}
	w.conn.ResetConnectBackoff()
	return nil
}

func (w *Watcher) dropStream() {
	if w.cancel != nil {
		w.cancel()
	}
	w.stream, w.cancel = nil, nil
}

func (w *Watcher) fail(err error) {
	w.dropStream()
	if w.ctx.Err() != nil {
		err = w.ctx.Err()
	}
	w.err = err
}
