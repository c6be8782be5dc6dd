package dns_test

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestKernelAnswersInPod runs `shunt dns --kernel-answers` in a pod: glibc
// resolves table names as before; with the interceptor stopped (SIGSTOP),
// table names are still answered, from the kernel, and nothing else is; a
// table change reaches the kernel; and when shunt exits, lo is as it was.
func TestKernelAnswersInPod(t *testing.T) {
	testenv.RequireBinary(t, "tc")
	p := startPod(t, "--kernel-answers")
	if out := p.ns.MustRun("tc", "filter", "show", "dev", "lo", "egress"); !strings.Contains(out, "shunt_dns_answer") {
		t.Fatalf("no kernel answerer on lo:\n%s", out)
	}
	if got, err := p.getent("httpbin.mesh"); err != nil || got != "240.0.0.1 fd00::1" {
		t.Fatalf("getent httpbin.mesh = %q, %v", got, err)
	}
	dig := func(args ...string) string {
		out, _ := p.ns.Run("dig", append([]string{"+short", "+time=1", "+tries=1", "@127.0.0.1"}, args...)...)
		return strings.TrimSpace(out)
	}

	stopped := func(f func()) {
		t.Helper()
		if err := p.shunt.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer p.shunt.Cmd.Process.Signal(syscall.SIGCONT)
		f()
	}
	stopped(func() {
		if got := dig("httpbin.mesh"); got != "240.0.0.1" {
			t.Errorf("interceptor stopped: dig httpbin.mesh = %q, want 240.0.0.1 from the kernel", got)
		}
		if got := dig("HTTPBIN.ORG", "+noedns"); got != "240.0.0.2" {
			t.Errorf("interceptor stopped: dig HTTPBIN.ORG +noedns = %q, want 240.0.0.2", got)
		}
		if got := dig("httpbin.mesh", "TXT"); !strings.Contains(got, "timed out") {
			t.Errorf("interceptor stopped: a TXT query, which is the interceptor's, got %q", got)
		}
	})

	// A table change: the new name is answered by the kernel too.
	must(t, os.WriteFile(p.table, []byte("httpbin.mesh: [240.0.0.9]\n"), 0o644))
	waitAnswer(t, p.ns, netipAP("127.0.0.1:53"), "httpbin.mesh", "240.0.0.9", p.shunt)
	stopped(func() {
		if got := dig("httpbin.mesh"); got != "240.0.0.9" {
			t.Errorf("after the reload, interceptor stopped: dig httpbin.mesh = %q, want 240.0.0.9", got)
		}
		if got := dig("httpbin.org"); !strings.Contains(got, "timed out") {
			t.Errorf("after the reload, interceptor stopped: httpbin.org, removed, still answered %q", got)
		}
	})

	p.shunt.Stop()
	if out := p.ns.MustRun("tc", "filter", "show", "dev", "lo", "egress"); strings.Contains(out, "shunt") {
		t.Errorf("shunt exited and left its filter:\n%s\n%s", out, p.shunt.Output())
	}
	if out := p.ns.MustRun("tc", "qdisc", "show", "dev", "lo"); strings.Contains(out, "clsact") {
		t.Errorf("shunt exited and left lo's clsact qdisc: %s", out)
	}
	if !strings.Contains(p.shunt.Output(), "kernel DNS answers") {
		t.Errorf("no report of the kernel's answers in the log:\n%s", p.shunt.Output())
	}
}

// TestKernelAnswersRefusesWhatItCannotServe: listen addresses off
// loopback or on two ports are refused, naming the flag and the value.
func TestKernelAnswersRefusesWhatItCannotServe(t *testing.T) {
	testenv.RequireRoot(t)
	bin := shuntBinary(t)
	n := testenv.NewNetns(t, "dnsk")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "10.0.0.1:53", "--allow-non-loopback"}, "--listen 10.0.0.1:53 is not on loopback"},
		{[]string{"--listen", "127.0.0.1:53", "--listen", "[::1]:5353"}, "--listen 127.0.0.1:53 and [::1]:5353 are on different ports"},
	} {
		out, err := n.Run(bin, append([]string{"dns", "--kernel-answers", "--resolv-conf", "", "--upstream-mark", "0"}, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%v: %v\n%s\nwant an error with %q", c.args, err, out, c.want)
		}
	}
	if out := n.MustRun("tc", "qdisc", "show", "dev", "lo"); strings.Contains(out, "clsact") {
		t.Errorf("a refused start changed lo: %s", out)
	}
}
