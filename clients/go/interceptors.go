package agentcoord

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// callGuard is the client's interceptor pair: it refuses calls above the caller's tier, attaches
// the bearer token, and turns failures into *Error. Cross-cutting work lives here, once, rather
// than in wrappers around each generated method.
type callGuard struct {
	authorization string       // "Bearer <token>", or "" to send none
	tier          atomic.Int32 // the caller's AccessTier; 0 (UNSPECIFIED) until WhoAmI answered
}

// check refuses a method the caller's known tier may not call (refusal: above its tier, or
// reaching a namespace's data for the OPERATOR). Before the
// principal is known (the WhoAmI at Dial) nothing is refused: the server decides.
func (g *callGuard) check(method string) error {
	own := agentcoordv1.AccessTier(g.tier.Load())
	if own == agentcoordv1.AccessTier_ACCESS_TIER_UNSPECIFIED {
		return nil
	}
	if refused := refusal(method, own); refused != nil {
		return refused
	}
	return nil
}

func (g *callGuard) outgoing(ctx context.Context) context.Context {
	if g.authorization == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", g.authorization)
}

func (g *callGuard) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if err := g.check(method); err != nil {
		return err
	}
	return convertError(invoker(g.outgoing(ctx), method, req, reply, cc, opts...))
}

func (g *callGuard) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if err := g.check(method); err != nil {
		return nil, err
	}
	s, err := streamer(g.outgoing(ctx), desc, cc, method, opts...)
	if err != nil {
		return nil, convertError(err)
	}
	return &errorStream{ClientStream: s}, nil
}

// errorStream makes a stream's failures *Error too (io.EOF, the normal end, passes unchanged).
type errorStream struct {
	grpc.ClientStream
}

func (s *errorStream) RecvMsg(m any) error { return convertError(s.ClientStream.RecvMsg(m)) }

func (s *errorStream) SendMsg(m any) error { return convertError(s.ClientStream.SendMsg(m)) }

func (s *errorStream) CloseSend() error { return convertError(s.ClientStream.CloseSend()) }

func (s *errorStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	return md, convertError(err)
}
