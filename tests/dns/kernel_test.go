package dns_test

import (
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestKernelAnswersInPod runs `shunt dns --kernel-answers` in a pod: glibc
// resolves table names as before; with the interceptor stopped (SIGSTOP),
// table names and a forwarded name it has cached are still answered, from
// the kernel, and nothing else is; a table change reaches the kernel; and
// when shunt exits, lo is as it was.
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
	// A forwarded name, once cached, is answered from the kernel too.
	if got := dig("www.example.test"); got != "192.0.2.10" {
		t.Fatalf("dig www.example.test = %q, want bind9's 192.0.2.10", got)
	}
	stopped(func() {
		if got := dig("httpbin.mesh"); got != "240.0.0.1" {
			t.Errorf("interceptor stopped: dig httpbin.mesh = %q, want 240.0.0.1 from the kernel", got)
		}
		if got := dig("www.example.test"); got != "192.0.2.10" {
			t.Errorf("interceptor stopped: dig www.example.test, cached, = %q, want 192.0.2.10 from the kernel", got)
		}
		if got := dig("mail.example.test"); !strings.Contains(got, "timed out") {
			t.Errorf("interceptor stopped: mail.example.test, never asked, got %q, want no answer", got)
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
		{[]string{"--listen", "10.0.0.1:53", "--allow-non-loopback"}, "--kernel-answers: load kernel DNS answers: listen address 10.0.0.1:53 is not on loopback"},
		{[]string{"--listen", "127.0.0.1:53", "--listen", "[::1]:5353"}, "--kernel-answers: load kernel DNS answers: listen addresses 127.0.0.1:53 and [::1]:5353 are on different ports"},
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

// TestKernelAnswersLeaveNATedQueries: where DNS reaches the interceptor
// through NAT (as the iptables and nftables engines send it), conntrack
// has seen the query, and an answer turned round in the kernel would be
// redirected to the interceptor again on its way in: the kernel leaves
// those queries to the interceptor, and they are answered.
func TestKernelAnswersLeaveNATedQueries(t *testing.T) {
	testenv.RequireBinary(t, "iptables")
	p := startPod(t, "--kernel-answers")
	p.ns.MustRun("ip", "addr", "add", "10.96.0.10/32", "dev", "lo")
	p.ns.MustRun("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.96.0.10", "-p", "udp", "--dport", "53", "-j", "REDIRECT", "--to-ports", "53")
	dig := func(args ...string) string {
		out, _ := p.ns.Run("dig", append([]string{"+short", "+time=1", "+tries=1"}, args...)...)
		return strings.TrimSpace(out)
	}
	if got := dig("@10.96.0.10", "httpbin.mesh"); got != "240.0.0.1" {
		t.Fatalf("dig @10.96.0.10 httpbin.mesh through NAT = %q, want 240.0.0.1", got)
	}
	if err := p.shunt.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	got := dig("@10.96.0.10", "httpbin.mesh")
	p.shunt.Cmd.Process.Signal(syscall.SIGCONT)
	if !strings.Contains(got, "timed out") {
		t.Errorf("interceptor stopped: a NATed query got %q, want no answer (the kernel leaves it)", got)
	}
	p.shunt.Stop()
	// The two NATed queries are counted as seen by conntrack (the
	// startup check before the NAT rule was answered in the kernel).
	if out := p.shunt.Output(); !regexp.MustCompile(`tracked=([2-9]|\d\d)`).MatchString(out) {
		t.Errorf("want the NATed queries counted as tracked:\n%s", out)
	}
}
