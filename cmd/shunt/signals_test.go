package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestHelperShunt runs shunt's main with the arguments after "--": the
// process the signal tests send signals to.
func TestHelperShunt(t *testing.T) {
	switch os.Getenv("SHUNTTEST_HELPER") {
	case "main":
	case "stubborn":
		// A command that ignores its context's end.
		ctx, _ := notifyContext(context.Background(), func() { os.Stdout.WriteString("registered\n") }, oneShotSignalDelay, syscall.SIGTERM)
		<-ctx.Done()
		os.Stdout.WriteString("cancelled\n")
		time.Sleep(time.Minute)
		os.Exit(0)
	default:
		t.Skip("run by the signal tests")
	}
	for i, a := range os.Args {
		if a == "--" {
			os.Args = append([]string{"shunt"}, os.Args[i+1:]...)
			break
		}
	}
	main()
	os.Exit(0)
}

// TestSignalEndsAWaitingInstall: an install waiting for the namespace's
// lock (held here, as another shunt would) ends at SIGTERM, with the
// lock's error and without touching the namespace.
func TestSignalEndsAWaitingInstall(t *testing.T) {
	n := testenv.NewNetns(t, "sig")
	unlock, err := redirect.LockNetns(context.Background(), t.TempDir(), n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperShunt$", "--", "install", "--netns", n.Path(), "--engine", "nftables", "--state-dir", t.TempDir(), "--no-dns")
	cmd.Env = append(os.Environ(), "SHUNTTEST_HELPER=main")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The handlers are registered and the lock waited for by now.
	time.Sleep(time.Second)
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	took := time.Since(start)
	var ee *exec.ExitError
	if !strings.Contains(out.String(), "context canceled") || !asExit(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("after SIGTERM: %v\n%s", err, out.String())
	}
	if took > 2*time.Second {
		t.Errorf("the install took %v to end after SIGTERM", took)
	}
	if got, _ := n.Run("nft", "list", "ruleset"); strings.TrimSpace(got) != "" {
		t.Errorf("the namespace has rules after a cancelled install:\n%s", got)
	}
}

func asExit(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	*ee = e
	return ok
}

// TestSecondSignalEndsAStubbornCommand: the first signal cancels the
// context; a command that goes on regardless is ended by the second.
func TestSecondSignalEndsAStubbornCommand(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperShunt$")
	cmd.Env = append(os.Environ(), "SHUNTTEST_HELPER=stubborn")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	registered, cancelled := make(chan struct{}), make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			switch sc.Text() {
			case "registered":
				close(registered)
			case "cancelled":
				close(cancelled)
			}
		}
	}()
	select {
	case <-registered:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the handlers were not registered")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the first SIGTERM did not cancel the context")
	}
	// The handler is removed right after the cancel.
	time.Sleep(200 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !asExit(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Fatalf("after two SIGTERMs: %v, want killed by SIGTERM", err)
		}
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the second SIGTERM did not end the command")
	}
}

// A one-shot command registers its handlers only after the delay, and
// not at all when it ends first.
func TestOneShotCommandsRegisterLate(t *testing.T) {
	registered := make(chan struct{}, 1)
	ctx, stop := notifyContext(context.Background(), func() { registered <- struct{}{} }, 300*time.Millisecond, syscall.SIGUSR2)
	defer stop()
	select {
	case <-registered:
		t.Fatal("registered before the delay")
	case <-time.After(50 * time.Millisecond):
	}
	select {
	case <-registered:
	case <-time.After(10 * time.Second):
		t.Fatal("not registered after the delay")
	}
	if ctx.Err() != nil {
		t.Fatalf("context ended: %v", ctx.Err())
	}

	_, stop2 := notifyContext(context.Background(), func() { registered <- struct{}{} }, 100*time.Millisecond, syscall.SIGUSR2)
	stop2()
	select {
	case <-registered:
		t.Fatal("a command that ended before the delay registered")
	case <-time.After(400 * time.Millisecond):
	}
}

// The servers have their handlers from the start; the rest are one-shot.
func TestOnlyServersRegisterAtOnce(t *testing.T) {
	servers := map[string]bool{"dns": true, "controlplane": true, "run": true, "node": true}
	for _, s := range subcommands() {
		if s.server != servers[s.name] {
			t.Errorf("%s: server %v, want %v", s.name, s.server, servers[s.name])
		}
	}
}
