//go:build !linux

package agentcoord_test

import "syscall"

func dieWithParent() *syscall.SysProcAttr { return nil }
