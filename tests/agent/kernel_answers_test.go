package agent_test

import (
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// TestAgentKernelAnswers runs `shunt run` with the eBPF engine, where
// --dns-kernel-answers (auto) turns kernel answers on: the pod's resolver
// gets mesh names' VIPs as before; with the
// agent stopped (SIGSTOP) they are still answered, from the kernel, with
// the same VIPs, while a name the mesh does not know is not; a new
// ExternalService reaches the kernel too; a killed agent's program goes on
// answering until the next agent replaces it; and the agent's exit leaves
// the pod's lo as it was.
func TestAgentKernelAnswers(t *testing.T) {
	w := newWorldWith(t, "ebpf")
	w.writeResource("services.yaml", externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
	w.startAgent("")
	if !strings.Contains(w.agent.Output(), "kernel DNS answers on lo") {
		t.Fatalf("auto did not turn kernel answers on behind the eBPF engine:\n%s", w.agent.Output())
	}
	vip := w.dig("httpbin.mesh")
	if vip == "" {
		t.Fatalf("httpbin.mesh not answered\n%s", w.logs())
	}
	stopped := func(f func()) {
		t.Helper()
		if err := w.agent.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer w.agent.Cmd.Process.Signal(syscall.SIGCONT)
		f()
	}
	stopped(func() {
		if got := w.dig("httpbin.mesh"); got != vip {
			t.Errorf("agent stopped: httpbin.mesh = %q, want %s from the kernel", got, vip)
		}
		if got := w.dig("unknown.example"); !strings.Contains(got, "timed out") {
			t.Errorf("agent stopped: a name the mesh does not know got %q, want no answer", got)
		}
	})

	if _, body := w.admin("/metrics"); !regexp.MustCompile(`shunt_dns_kernel_queries_total\{outcome="table"\} [1-9]`).MatchString(body) {
		t.Errorf("/metrics does not count the kernel's table answers:\n%s", grepLines(body, "kernel"))
	}
	w.writeResource("more.yaml", externalService("fresh", "fresh", "http", "fresh.example:443", ""))
	waitFor(t, "fresh.mesh to resolve", func() bool { return w.dig("fresh.mesh") != "" }, w.logs)
	fresh := w.dig("fresh.mesh")
	stopped(func() {
		if got := w.dig("fresh.mesh"); got != fresh {
			t.Errorf("agent stopped: the new fresh.mesh = %q, want %s from the kernel", got, fresh)
		}
	})

	// Killed, the agent leaves the program answering its last table
	// until the next agent replaces it.
	if err := w.agent.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	w.agent.Stop()
	if got := w.dig("fresh.mesh"); got != fresh {
		t.Errorf("agent killed: fresh.mesh = %q, want %s from the program it left", got, fresh)
	}
	w.startAgent("")
	if got := w.dig("fresh.mesh"); got != fresh {
		t.Errorf("agent restarted: fresh.mesh = %q, want %s", got, fresh)
	}
	if out := w.pod.MustRun("tc", "filter", "show", "dev", "lo", "egress"); strings.Count(out, "shunt_dns_answer") != 1 {
		t.Errorf("after the restart, want one kernel answerer on lo:\n%s", out)
	}
	w.stopAgent()
	if out := w.pod.MustRun("tc", "filter", "show", "dev", "lo", "egress"); strings.Contains(out, "shunt") {
		t.Errorf("the agent exited and left its filter:\n%s", out)
	}
	if !strings.Contains(w.agent.Output(), "kernel DNS answers") {
		t.Errorf("no report of the kernel's answers:\n%s", w.agent.Output())
	}
}

// TestAgentKernelAnswersAutoBehindNAT: behind the iptables and nftables
// engines, whose NAT leaves every query to the interceptor, auto leaves
// the kernel answerer out; forced on, it leaves the queries alone.
func TestAgentKernelAnswersAutoBehindNAT(t *testing.T) {
	for _, engine := range []string{"iptables", "nftables"} {
		t.Run(engine, func(t *testing.T) {
			w := newWorldWith(t, engine)
			w.writeResource("services.yaml", externalService("httpbin", "httpbin", "http", "httpbin.org:443", tlsBlock("httpbin.org", w.ca.cert, nil)))
			w.startAgent("")
			if w.dig("httpbin.mesh") == "" {
				t.Fatalf("httpbin.mesh not answered\n%s", w.logs())
			}
			if out := w.pod.MustRun("tc", "filter", "show", "dev", "lo", "egress"); strings.Contains(out, "shunt") {
				t.Errorf("kernel answerer on lo behind the %s engine:\n%s", engine, out)
			}
			if strings.Contains(w.agent.Output(), "kernel DNS answers on lo") {
				t.Errorf("auto turned kernel answers on behind the %s engine", engine)
			}

			// Forced on, the program sees the NATed queries and
			// leaves them to the interceptor: DNS works as before.
			w.stopAgent()
			w.startAgent("", "--dns-kernel-answers=on")
			if got := w.dig("httpbin.mesh"); got == "" {
				t.Fatalf("with kernel answers on behind the %s engine, httpbin.mesh is not answered\n%s", engine, w.logs())
			}
			_, body := w.admin("/metrics")
			if !regexp.MustCompile(`shunt_dns_kernel_queries_total\{outcome="tracked"\} [1-9]`).MatchString(body) ||
				!strings.Contains(body, `shunt_dns_kernel_queries_total{outcome="table"} 0`) {
				t.Errorf("want the NATed queries counted as tracked and none answered in the kernel:\n%s", grepLines(body, "kernel"))
			}
		})
	}
}
