package agentcoord

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// Client is one caller identity (one bearer token) on one gRPC connection, with a client per
// agentcoord service. The service clients are the generated ones: every request and response
// type is in package agentcoordv1. Every call carries the token, is refused locally when it
// needs a higher tier than the caller's (TIER_TOO_LOW, no round trip), and fails with an *Error.
//
// A Client is safe for concurrent use. Close it when done.
type Client struct {
	Admin   agentcoordv1.AdminServiceClient
	Memory  agentcoordv1.MemoryServiceClient
	Staging agentcoordv1.StagingServiceClient
	Tasks   agentcoordv1.TaskServiceClient
	Signals agentcoordv1.SignalServiceClient
	Locks   agentcoordv1.LockServiceClient

	conn      *grpc.ClientConn
	principal *agentcoordv1.Principal
}

// Option configures Dial.
type Option func(*dialConfig)

type dialConfig struct {
	creds       credentials.TransportCredentials
	dialOptions []grpc.DialOption
}

// WithTransportCredentials dials with TLS (or mTLS) credentials, e.g.
// credentials.NewTLS(&tls.Config{...}); the default is plaintext, for a loopback server.
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *dialConfig) { c.creds = creds }
}

// WithDialOptions adds gRPC dial options (interceptors, stats handlers, keepalive…), applied
// after the client's own, so they win where they overlap.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *dialConfig) { c.dialOptions = append(c.dialOptions, opts...) }
}

// Dial connects to the agentcoord server at target ("host:port") as the holder of token (a
// bearer token issued by a STEWARD) and learns the caller's principal with one WhoAmI call, so
// a bad token or an unreachable server fails here rather than at the first call. ctx bounds
// that WhoAmI only.
//
// The connection keeps idle streams alive (keepalive pings every 30 s), tries to reconnect to a
// restarted server at least every 5 s (connect backoff from 0.2 s, capped at 5 s, ±20 % jitter),
// and retries the RPCs listed in RetrySafeMethods on UNAVAILABLE.
//
// Errors: an *Error from WhoAmI, e.g. UNAUTHENTICATED (MISSING_TOKEN, UNKNOWN_TOKEN,
// TOKEN_EXPIRED) or UNAVAILABLE; or a gRPC error for a malformed target.
func Dial(ctx context.Context, target, token string, opts ...Option) (*Client, error) {
	config := dialConfig{creds: insecure.NewCredentials()}
	for _, opt := range opts {
		opt(&config)
	}
	guard := &callGuard{}
	if token != "" {
		guard.authorization = "Bearer " + token
	}
	dialOptions := append([]grpc.DialOption{
		grpc.WithTransportCredentials(config.creds),
		grpc.WithChainUnaryInterceptor(guard.unary),
		grpc.WithChainStreamInterceptor(guard.stream),
		grpc.WithDefaultServiceConfig(serviceConfig()),
		// The server permits pings this often (it keeps long-lived Subscribe streams alive).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}, config.dialOptions...)
	conn, err := grpc.NewClient(target, dialOptions...)
	if err != nil {
		return nil, err
	}
	c := &Client{
		Admin:   agentcoordv1.NewAdminServiceClient(conn),
		Memory:  agentcoordv1.NewMemoryServiceClient(conn),
		Staging: agentcoordv1.NewStagingServiceClient(conn),
		Tasks:   agentcoordv1.NewTaskServiceClient(conn),
		Signals: agentcoordv1.NewSignalServiceClient(conn),
		Locks:   agentcoordv1.NewLockServiceClient(conn),
		conn:    conn,
	}
	who, err := c.Admin.WhoAmI(ctx, &agentcoordv1.WhoAmIRequest{})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	c.principal = who.GetPrincipal()
	guard.tier.Store(int32(c.principal.GetTier()))
	return c, nil
}

// Principal returns who the token authenticates as (agent id, namespace, tier), as WhoAmI
// answered at Dial. The result is a copy.
func (c *Client) Principal() *agentcoordv1.Principal {
	return proto.Clone(c.principal).(*agentcoordv1.Principal)
}

// Conn returns the underlying gRPC connection, e.g. for the health service.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection; calls and streams in flight end with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }
