package agentcoord_test

import "syscall"

// dieWithParent: the server gets SIGTERM if the test binary dies first (a killed `go test`), so it
// never outlives the suite (it then stops its embedded Redis itself).
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
