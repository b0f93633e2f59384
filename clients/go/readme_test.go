package agentcoord_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The README's Go quick start is the body of examples/quickstart; it runs as written.
func TestReadmeQuickstartRunsAsWritten(t *testing.T) {
	source, err := os.ReadFile("examples/quickstart/main.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(source)
	body := text[strings.Index(text, "func main() {\n")+len("func main() {\n") : strings.Index(text, "\n}\n\nfunc must")]
	var unindented []string
	for _, line := range strings.Split(body, "\n") {
		unindented = append(unindented, strings.TrimPrefix(line, "\t"))
	}
	if !strings.Contains(string(readme), "```go\n"+strings.Join(unindented, "\n")+"\n```") {
		t.Fatal("README.md's Go quick start differs from examples/quickstart/main.go's main")
	}

	cmd := exec.Command("go", "run", "./examples/quickstart")
	cmd.Env = append(os.Environ(), "AGENTCOORD_SERVER="+srv.address, "AGENTCOORD_TOKEN="+srv.bootstrapToken())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run ./examples/quickstart: %v\n%s", err, out)
	}
	for _, want := range []string{"TASK_STATUS_COMPLETED", "map[linted:main.go]", "signal ", "refused locally: PERMISSION_DENIED TIER_TOO_LOW"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
