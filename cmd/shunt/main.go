// Command shunt is the node agent of a service-mesh data plane: it captures a
// workload's traffic into the local proxy, answers its DNS with mesh VIPs and
// keeps both in line with an xDS control plane.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

func main() {
	// Installed as a CNI plugin, the binary is called by the runtime with
	// CNI_* variables and no arguments: there is no command line to parse.
	if filepath.Base(os.Args[0]) == cniBinaryName {
		runCNIPlugin()
		return
	}
	root, sub := newRootCommandFor(os.Args[1:])
	delay := oneShotSignalDelay
	if sub.server {
		delay = 0
	}
	ctx, stop := notifyContext(context.Background(), nil, delay, os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		var ec exitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, "shunt:", msg)
			}
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "shunt:", err)
		os.Exit(1)
	}
}

// exitCoder is an error that carries the process exit status, so that
// commands such as status can report drift (3) or absence (4) distinctly.
type exitCoder interface {
	error
	ExitCode() int
}

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }
func (e *exitError) ExitCode() int { return e.code }
