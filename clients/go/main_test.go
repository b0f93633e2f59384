package agentcoord_test

// The suite runs against a real `agentcoord serve` (the repository's .venv/bin/agentcoord, or
// $AGENTCOORD_BIN) on a free loopback port, with an embedded Redis in a temp data dir: real
// Redis, real server, real channel. TestMain starts it; a few tests start their own (a short
// retention, a server to stop) or restart it.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// srv is the suite's server; steward is a client with its bootstrap (STEWARD) token.
var (
	srv     *server
	steward *agentcoord.Client
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	// A small per-subscription buffer, so a reader that stops reading is SUBSCRIBER_TOO_SLOW soon.
	s, err := startServer("--signal-queue-size", "8")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot start agentcoord serve:", err)
		return 1
	}
	srv = s
	defer srv.remove()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	steward, err = agentcoord.Dial(ctx, srv.address, srv.bootstrapToken())
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot dial the server as steward:", err)
		return 1
	}
	defer steward.Close()
	return m.Run()
}

// server is one `agentcoord serve` process and its data dir, which outlives restarts.
type server struct {
	bin     string
	dataDir string
	address string
	args    []string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	logPath string
}

func agentcoordBin() (string, error) {
	if bin := os.Getenv("AGENTCOORD_BIN"); bin != "" {
		return bin, nil
	}
	bin, err := filepath.Abs(filepath.Join("..", "..", ".venv", "bin", "agentcoord"))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("%s not found (run `make install` at the repository root, or set AGENTCOORD_BIN): %w", bin, err)
	}
	return bin, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startServer starts a server with its own data dir (an embedded Redis there) on a free port.
func startServer(args ...string) (*server, error) {
	bin, err := agentcoordBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "agentcoord-go-test-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &server{bin: bin, dataDir: dir, address: fmt.Sprintf("127.0.0.1:%d", port), args: args,
		logPath: filepath.Join(dir, "server.log")}
	if err := s.start(); err != nil {
		s.remove()
		return nil, err
	}
	return s, nil
}

// start (re)starts the process on the same address and data dir, and waits until it serves.
func (s *server) start() error {
	log, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	args := append([]string{"serve", "--listen", s.address, "--data-dir", filepath.Join(s.dataDir, "redis"),
		"--log-format", "json", "--shutdown-grace", "1"}, s.args...)
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(withoutEnv(os.Environ(), "REDIS_URL"), "PYTHONUNBUFFERED=1")
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { _ = cmd.Wait(); close(exited) }(s.exited)
	return s.waitServing(s.exited)
}

func (s *server) waitServing(exited <-chan struct{}) error {
	conn, err := grpc.NewClient(s.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("agentcoord serve exited; its log:\n%s", s.logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		response, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && response.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("agentcoord serve did not serve on %s within 30 s; its log:\n%s", s.address, s.logTail())
}

// stop sends SIGTERM (the server drains, ends streams with UNAVAILABLE and stops its Redis) and
// waits for the process to exit.
func (s *server) stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	process, exited := s.cmd.Process, s.exited
	s.cmd = nil
	_ = process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return nil
	case <-time.After(30 * time.Second):
		_ = process.Kill()
		<-exited
		return fmt.Errorf("agentcoord serve did not stop within 30 s of SIGTERM")
	}
}

func (s *server) remove() {
	_ = s.stop()
	_ = os.RemoveAll(s.dataDir)
}

// operatorToken is the server-wide OPERATOR token the server wrote at its first start.
func (s *server) operatorToken() string {
	token, _ := os.ReadFile(filepath.Join(s.dataDir, "redis", "operator-token"))
	return strings.TrimSpace(string(token))
}

func (s *server) bootstrapToken() string {
	token, _ := os.ReadFile(filepath.Join(s.dataDir, "redis", "bootstrap-token"))
	return strings.TrimSpace(string(token))
}

func (s *server) logTail() string {
	data, _ := os.ReadFile(s.logPath)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// rpcLines returns the server's canonical per-RPC log lines (method, agent, code, request_id…).
func (s *server) rpcLines(t *testing.T) []map[string]any {
	t.Helper()
	f, err := os.Open(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []map[string]any
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		var line map[string]any
		if json.Unmarshal(scanner.Bytes(), &line) == nil && line["event"] == "rpc" {
			lines = append(lines, line)
		}
	}
	return lines
}

// waitForLogLine waits until the server has logged the call with this request id.
func (s *server) waitForLogLine(t *testing.T, requestID string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range s.rpcLines(t) {
			if line["request_id"] == requestID {
				return line
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the server never logged request %s", requestID)
	return nil
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

var agentCounter atomic.Int64

// uniqueID makes ids (agents, task types, signal types) no other test uses on the shared server.
func uniqueID(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), agentCounter.Add(1))
}

// issueToken issues a token for a fresh agent of the given tier, as the steward of s.
func issueToken(t *testing.T, admin *agentcoord.Client, agentID string, tier agentcoordv1.AccessTier) string {
	t.Helper()
	// WaitForReady: a test after a server restart must not meet the connection's reconnect backoff.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	response, err := admin.Admin.IssueToken(ctx, &agentcoordv1.IssueTokenRequest{
		AgentId: agentID, Tier: tier, Description: "go client test",
	}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("IssueToken(%s, %s): %v", agentID, tier, err)
	}
	return response.GetToken()
}

// dialAs dials the suite's server as a fresh agent of the given tier; closed when the test ends.
func dialAs(t *testing.T, prefix string, tier agentcoordv1.AccessTier, opts ...agentcoord.Option) *agentcoord.Client {
	t.Helper()
	return dialAt(t, srv, steward, prefix, tier, opts...)
}

func dialAt(t *testing.T, s *server, admin *agentcoord.Client, prefix string, tier agentcoordv1.AccessTier, opts ...agentcoord.Option) *agentcoord.Client {
	t.Helper()
	token := issueToken(t, admin, uniqueID(prefix), tier)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := agentcoord.Dial(ctx, s.address, token, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// attempts counts the attempts the client's gRPC layer makes per method (retries included), as
// a stats handler sees them: a call refused by the interceptor makes none.
type attempts struct {
	mu     sync.Mutex
	counts map[string]int
}

type methodKey struct{}

func newAttempts() *attempts { return &attempts{counts: map[string]int{}} }

func (a *attempts) option() agentcoord.Option {
	return agentcoord.WithDialOptions(grpc.WithStatsHandler(a))
}

func (a *attempts) of(method string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counts[method]
}

func (a *attempts) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

func (a *attempts) HandleRPC(ctx context.Context, s stats.RPCStats) {
	// One End per attempt the call made. (Not Begin: grpc-go also begins an attempt it then
	// drops when a retry's pick fails, so Begins overcount.)
	if end, ok := s.(*stats.End); ok && end.IsClient() {
		method, _ := ctx.Value(methodKey{}).(string)
		a.mu.Lock()
		a.counts[method]++
		a.mu.Unlock()
	}
}

func (a *attempts) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (a *attempts) HandleConn(context.Context, stats.ConnStats) {}
