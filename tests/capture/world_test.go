package capture_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	proxyUID = 5678
	appUID   = 1000
)

// world is a "pod" namespace joined to a "remote" host namespace, with the
// remote serving HTTP on several ports and DNS, and shunt driven from the
// host side with --netns.
type world struct {
	t        *testing.T
	pod      *testenv.Netns
	remote   *testenv.Netns
	podIf    testenv.Host
	remoteIf testenv.Host
	stateDir string
	// backend is the iptables variant ("nft", "legacy"), or "nftables"
	// for the native nftables engine, which shunt then runs with a PATH
	// that holds no program at all.
	backend string
	haproxy *testenv.Process
	standin *testenv.Process
	// sideDev is the pod's end of a second link, when a test adds one.
	sideDev string
}

func newWorld(t *testing.T, backend string) *world {
	t.Helper()
	testenv.RequireRoot(t)
	if backend == nativeNftables {
		testenv.RequireBinary(t, "nft") // the tests' checker only
	} else {
		testenv.RequireBinary(t, "iptables-"+backend+"-restore")
	}
	w := &world{t: t, backend: backend, stateDir: t.TempDir()}
	w.pod = testenv.NewNetns(t, "pod")
	w.remote = testenv.NewNetns(t, "rmt")
	w.podIf, w.remoteIf = testenv.Link(t, w.pod, w.remote, 1)
	// A second remote address, for DNS servers the workload did not
	// configure and for CIDR exclusions.
	w.remote.MustRun("ip", "addr", "add", "10.1.0.3/24", "dev", w.remoteIf.Dev)
	w.remote.MustRun("ip", "-6", "addr", "add", "fd00:1::3/64", "dev", w.remoteIf.Dev, "nodad")
	w.pod.WriteResolvConf("nameserver 10.1.0.2\nnameserver fd00:1::2\nsearch default.svc.cluster.local\noptions ndots:5\n")
	return w
}

// shunt runs the shunt binary against the pod namespace.
func (w *world) shunt(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{args[0], "--netns", w.pod.Path(), "--state-dir", w.stateDir}, args[1:]...)
	cmd := exec.CommandContext(ctx, bins.shunt)
	switch {
	case args[0] == "install" && w.backend == nativeNftables:
		full = append(full, "--engine", "nftables")
	case args[0] == "install":
		full = append(full, "--iptables-backend", w.backend)
	}
	cmd.Args = append([]string{bins.shunt}, full...)
	if w.backend == nativeNftables {
		cmd.Env = withoutPrograms(w.t)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// nativeNftables is the backend name the tests give the nftables engine.
const nativeNftables = "nftables"

// withoutPrograms is the environment with a PATH of one empty directory:
// the nftables engine must need no iptables, ip6tables or nft binary.
func withoutPrograms(t *testing.T) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	return append(env, "PATH="+t.TempDir())
}

func (w *world) install(args ...string) {
	w.t.Helper()
	if out, err := w.shunt(append([]string{"install"}, args...)...); err != nil {
		w.t.Fatalf("shunt install %v: %v\n%s", args, err, out)
	}
	w.t.Cleanup(func() { _, _ = w.shunt("uninstall") })
}

// save returns iptables-save of one family in the pod (with the nftables
// engine, nft's listing of every table).
func (w *world) save(v6 bool) string {
	w.t.Helper()
	if w.backend == nativeNftables {
		return w.pod.MustRun("nft", "list", "ruleset")
	}
	prog := "iptables-" + w.backend + "-save"
	if v6 {
		prog = "ip6tables-" + w.backend + "-save"
	}
	return w.pod.MustRun(prog)
}

// startProxies runs HAProxy (IPv4: it reads SO_ORIGINAL_DST of IPv4
// connections only) and the origdst stand-in (IPv6) as the proxy's UID.
func (w *world) startProxies() {
	w.t.Helper()
	w.haproxy = testenv.StartHAProxy(w.t, w.pod, proxyUID, "127.0.0.1:15001")
	w.standin = w.pod.Start(w.pod.CommandAs(context.Background(), proxyUID, proxyUID, bins.standin, "-listen", "[::1]:15001"))
	testenv.WaitListening(w.t, w.pod, w.standin.Output, "[::1]:15001")
}

// proxied reports whether the proxy logged a connection to dst since the
// log had n bytes.
func (w *world) proxyLog() string {
	return w.haproxy.Output() + w.standin.Output()
}

// serveHTTP answers on the remote, on every address, with a body naming
// the port, so a test knows which server it reached.
func (w *world) serveHTTP(ports ...int) {
	w.t.Helper()
	for _, port := range ports {
		testenv.ServeHTTP(w.t, w.remote, fmt.Sprintf("[::]:%d", port), fmt.Sprintf("remote:%d", port))
	}
}

// curl fetches url from the pod as uid and returns the body.
func (w *world) curl(uid int, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := w.pod.CommandAs(ctx, uid, uid, "curl", "-sS", "--max-time", "4", url).CombinedOutput()
	return string(out), err
}

// fetch asserts that url answers body and reports whether the proxy saw a
// connection to dst meanwhile.
func (w *world) fetch(uid int, url, body, dst string) (proxied bool) {
	w.t.Helper()
	before := strings.Count(w.proxyLog(), "-> "+dst)
	got, err := w.curl(uid, url)
	if err != nil || got != body {
		w.t.Fatalf("uid %d GET %s = %q, %v; want %q\nproxy log:\n%s", uid, url, got, err, body, w.proxyLog())
	}
	// The proxy logs as the connection closes, moments after curl ends.
	deadline := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(deadline) {
		if strings.Count(w.proxyLog(), "-> "+dst) > before {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// serveDNS answers every A query with addr and AAAA with none, over UDP and
// TCP on listen, inside n.
func serveDNS(t *testing.T, n *testenv.Netns, listen, addr string) {
	t.Helper()
	h := dns.HandlerFunc(func(rw dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Question[0].Name + " 5 IN A " + addr)
			m.Answer = append(m.Answer, rr)
		}
		_ = rw.WriteMsg(m)
	})
	for _, netw := range []string{"udp", "tcp"} {
		var srv *dns.Server
		err := n.Do(func() error {
			if netw == "udp" {
				pc, err := net.ListenPacket("udp", listen)
				if err != nil {
					return err
				}
				srv = &dns.Server{PacketConn: pc, Handler: h}
				return nil
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv = &dns.Server{Listener: ln, Handler: h}
			return nil
		})
		if err != nil {
			t.Fatalf("dns listen %s/%s in %s: %v", listen, netw, n.Name(), err)
		}
		go func() { _ = srv.ActivateAndServe() }()
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
}

// dig queries name from the pod as uid and returns the answers.
func (w *world) dig(uid int, args ...string) string {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	full := append([]string{"+short", "+tries=1", "+time=2"}, args...)
	out, err := w.pod.CommandAs(ctx, uid, uid, "dig", full...).CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			w.t.Fatalf("dig: %v", err)
		}
	}
	return strings.TrimSpace(string(out))
}
