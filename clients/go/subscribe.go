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

// SubscribeOptions says which signals a Subscription follows, from where, and how hard it tries
// to resume. The zero value follows every visible signal sent from now on.
type SubscribeOptions struct {
	// SignalTypes: only signals of these types; empty means every type.
	SignalTypes []string
	// AfterID resumes after this signal id (exclusive), e.g. the last one you handled.
	AfterID string
	// Earliest starts with the oldest retained signal when AfterID is empty (default: the next
	// one sent).
	Earliest bool
	// MaxRetries is how many resumes in a row may fail before Recv returns the error; default 8.
	// The count starts again whenever a response arrives.
	MaxRetries int
	// Backoff is the pause before the first resume of a row; it doubles per failed resume up to
	// MaxBackoff. Defaults 200 ms and 5 s, so the default gives up after about 20 s without a
	// server.
	Backoff    time.Duration
	MaxBackoff time.Duration
}

// Subscription is a live, resuming stream of the signals visible to the caller, in send order,
// with no gaps and no duplicates. Read it with Recv (or range over All); it resumes by itself
// from the last cursor the server sent when the stream ends with UNAVAILABLE (the server stopped
// or lost Redis) or RESOURCE_EXHAUSTED SUBSCRIBER_TOO_SLOW (the reader fell behind the server's
// per-stream buffer). Not safe for concurrent Recv calls.
//
// Why Recv rather than a channel: Recv is how grpc-go streams read, it needs no goroutine
// of its own, the reader's pace is the flow control (a slow reader is what SUBSCRIBER_TOO_SLOW
// is for, and the resume handles it), and an error comes back where the signal would have.
type Subscription struct {
	signals agentcoordv1.SignalServiceClient
	conn    *grpc.ClientConn
	ctx     context.Context // the caller's, ended early by Close
	stop    context.CancelFunc
	opts    SubscribeOptions

	stream  grpc.ServerStreamingClient[agentcoordv1.SubscribeResponse]
	cancel  context.CancelFunc     // ends the current stream's call
	batch   []*agentcoordv1.Signal // the rest of the last response's signals, handed out first
	last    string                 // the last response's cursor, the cursor once batch is handed out
	cursor  string
	retries int
	resumes int
	err     error
}

// Subscribe opens a subscription and waits for the server's first response (the position the
// stream starts after), so every signal sent after Subscribe returns will be delivered. The
// subscription ends when ctx is done or Close is called. OBSERVER or above.
//
// Errors (*Error), at once: INVALID_ARGUMENT (INVALID_CURSOR, INVALID_ID) for a malformed AfterID
// or type; OUT_OF_RANGE (CURSOR_TRIMMED) for an AfterID older than the server's retention;
// PERMISSION_DENIED / UNAUTHENTICATED; UNAVAILABLE if the server cannot be reached (only an open
// subscription resumes); RESOURCE_EXHAUSTED (QUOTA_EXCEEDED, Metadata "quota" "live_subscriptions")
// when the namespace already holds its quota of open subscriptions over every server.
func (c *Client) Subscribe(ctx context.Context, opts SubscribeOptions) (*Subscription, error) {
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
	s := &Subscription{signals: c.Signals, conn: c.conn, ctx: ctx, stop: stop, opts: opts, cursor: opts.AfterID}
	if err := s.open(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Recv returns the next signal, blocking until one is sent. It resumes the stream after
// UNAVAILABLE or SUBSCRIBER_TOO_SLOW (see SubscribeOptions.MaxRetries) without losing or
// repeating a signal.
//
// Errors: an *Error with OUT_OF_RANGE CURSOR_TRIMMED when the cursor to resume from has left the
// server's retention (signals were missed: re-read the state they were about, then subscribe
// again without AfterID); the last *Error once resuming failed MaxRetries times in a row; any
// other *Error at once (e.g. UNAUTHENTICATED once the token is revoked); io.EOF if the server
// ended the stream normally; ctx.Err() (context.Canceled, context.DeadlineExceeded) once ctx is
// done or after Close. After an error, every later Recv returns it again.
func (s *Subscription) Recv() (*agentcoordv1.Signal, error) {
	for s.err == nil {
		if len(s.batch) > 0 {
			signal := s.batch[0]
			s.batch[0], s.batch = nil, s.batch[1:]
			s.cursor = signal.GetId()
			if len(s.batch) == 0 && s.last != "" {
				s.cursor = s.last
			}
			return signal, nil
		}
		if s.stream == nil {
			if err := s.pause(); err != nil {
				s.fail(err)
				break
			}
			if err := s.open(); err != nil {
				if s.retryable(err) {
					continue
				}
				s.fail(err)
				break
			}
		}
		response, err := s.stream.Recv()
		if err == nil {
			s.retries = 0
			// A batch (several signals in one response) is handed out one signal at a time; its
			// cursor is its last signal's id.
			s.batch = response.GetSignals()
			if response.GetSignal() != nil { // a server from before batching
				s.batch = append(s.batch, response.GetSignal())
			}
			s.last = response.GetCursor()
			if len(s.batch) == 0 && s.last != "" {
				s.cursor = s.last // progress past signals this subscriber does not see
			}
			continue
		}
		s.dropStream()
		if errors.Is(err, io.EOF) || !s.retryable(err) {
			s.fail(err)
		}
	}
	return nil, s.err
}

// All ranges over the signals as Recv returns them; the loop ends after yielding an error.
//
//	for signal, err := range sub.All() { if err != nil { … }; … }
func (s *Subscription) All() iter.Seq2[*agentcoordv1.Signal, error] {
	return func(yield func(*agentcoordv1.Signal, error) bool) {
		for {
			signal, err := s.Recv()
			if !yield(signal, err) || err != nil {
				return
			}
		}
	}
}

// Cursor is the position after the last signal Recv returned (or the last progress the server
// reported; never past a signal of a batch not yet returned): pass it as AfterID to continue
// elsewhere (another process, after a restart) with no gap and no duplicate.
func (s *Subscription) Cursor() string { return s.cursor }

// Resumes counts how many times the subscription reopened its stream after an interruption.
func (s *Subscription) Resumes() int { return s.resumes }

// Close ends the subscription and cancels its call on the server at once; a Recv blocked in
// another goroutine returns CANCELED. Safe to call more than once, from any goroutine.
func (s *Subscription) Close() { s.stop() }

// open starts a call after s.cursor and reads its first response, which only reports the
// position the stream starts after.
func (s *Subscription) open() error {
	request := &agentcoordv1.SubscribeRequest{SignalTypes: s.opts.SignalTypes, AfterId: s.cursor, AcceptBatches: true}
	if s.cursor == "" && s.opts.Earliest {
		request.Start = agentcoordv1.StartPosition_START_POSITION_EARLIEST
	}
	ctx, cancel := context.WithCancel(s.ctx)
	stream, err := s.signals.Subscribe(ctx, request)
	if err == nil {
		var first *agentcoordv1.SubscribeResponse
		if first, err = stream.Recv(); err == nil {
			s.stream, s.cancel = stream, cancel
			s.retries = 0
			if first.GetCursor() != "" {
				s.cursor = first.GetCursor()
			}
			return nil
		}
	}
	cancel()
	return err
}

// retryable says whether err is worth another open, and counts the attempt.
func (s *Subscription) retryable(err error) bool {
	if s.ctx.Err() != nil || s.retries >= s.opts.MaxRetries {
		return false
	}
	e, ok := FromError(err)
	if !ok {
		return false
	}
	resumable := e.Code == codes.Unavailable ||
		(e.Code == codes.ResourceExhausted && e.Reason == agentcoordv1.ErrorReason_SUBSCRIBER_TOO_SLOW)
	if resumable {
		s.retries++
		s.resumes++
	}
	return resumable
}

// pause waits before a resume: Backoff doubled per failed resume in a row, at most MaxBackoff.
// It also wakes the connection from its reconnect backoff, so the resume meets a restarted
// server as soon as the pause ends.
func (s *Subscription) pause() error {
	delay := s.opts.Backoff << max(0, s.retries-1)
	if delay > s.opts.MaxBackoff || delay <= 0 {
		delay = s.opts.MaxBackoff
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-s.ctx.Done():
		return s.ctx.Err()
	case <-timer.C:
	}
	s.conn.ResetConnectBackoff()
	return nil
}

func (s *Subscription) dropStream() {
	if s.cancel != nil {
		s.cancel()
	}
	s.stream, s.cancel = nil, nil
}

func (s *Subscription) fail(err error) {
	s.dropStream()
	if s.ctx.Err() != nil {
		err = s.ctx.Err() // the caller ended it: say so plainly, not as a CANCELED status
	}
	s.err = err
}
