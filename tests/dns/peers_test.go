package dns_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// The test zone: every record type the interceptor must forward faithfully,
// a CNAME chain, and a TXT set far larger than 512 bytes (and than 1232) so
// that answers must be truncated over UDP.
func zoneFile() string {
	var b strings.Builder
	b.WriteString(`$TTL 300
@        IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@        IN NS  ns
ns       IN A   127.0.0.1
www      IN A   192.0.2.10
www      IN AAAA 2001:db8::10
alias    IN CNAME alias2
alias2   IN CNAME www
@        IN MX  10 mail
mail     IN A   192.0.2.25
txt      IN TXT "hello from bind"
_http._tcp IN SRV 0 5 80 www
short  1 IN A   192.0.2.99
`)
	for i := 0; i < 30; i++ {
		fmt.Fprintf(&b, "big IN TXT \"%02d-%s\"\n", i, strings.Repeat("x", 200))
	}
	return b.String()
}

const clusterZone = `$TTL 300
@ IN SOA ns.cluster.local. hostmaster.cluster.local. 1 3600 600 86400 30
@ IN NS ns
ns IN A 127.0.0.1
`

// named is a bind9 authoritative server the test started.
type named struct {
	addr netip.AddrPort
	proc *testenv.Process
}

// startNamed runs bind9 authoritative for example.test and cluster.local on
// addr. With ns set it runs inside that namespace.
func startNamed(t *testing.T, ns *testenv.Netns, addr netip.AddrPort) *named {
	t.Helper()
	bin := testenv.RequireBinary(t, "named")
	dir := t.TempDir()
	conf := fmt.Sprintf(`options {
	directory "%[1]s";
	pid-file none;
	listen-on port %[2]d { %[3]s; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	minimal-responses yes;
	session-keyfile "%[1]s/session.key";
	managed-keys-directory "%[1]s";
};
controls { };
zone "example.test" { type primary; file "%[1]s/example.test.zone"; };
zone "cluster.local" { type primary; file "%[1]s/cluster.local.zone"; };
`, dir, addr.Port(), addr.Addr())
	for name, content := range map[string]string{"named.conf": conf, "example.test.zone": zoneFile(), "cluster.local.zone": clusterZone} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"-g", "-n", "1", "-c", filepath.Join(dir, "named.conf")}
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Command(context.Background(), bin, args...)
	} else {
		cmd = exec.CommandContext(context.Background(), bin, args...)
	}
	p := testenv.StartProcess(t, cmd)
	n := &named{addr: addr, proc: p}
	waitAnswer(t, ns, addr, "www.example.test", "192.0.2.10", p)
	return n
}

// waitAnswer polls with dig until addr answers name with want.
func waitAnswer(t *testing.T, ns *testenv.Netns, addr netip.AddrPort, name, want string, p *testenv.Process) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := digIn(ns, "+short", "+time=1", "+tries=1", "-p", fmt.Sprint(addr.Port()), "@"+addr.Addr().String(), name)
		if strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) || (p != nil && p.Exited()) {
			out := ""
			if p != nil {
				out = p.Output()
			}
			t.Fatalf("%s did not answer %s with %s in time\n%s", addr, name, want, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func digIn(ns *testenv.Netns, args ...string) (string, error) {
	if ns != nil {
		return ns.Run("dig", args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dig", args...).CombinedOutput()
	return string(out), err
}

// loopbackAddr picks a port on 127.0.0.1 unlikely to be in use (named only
// listens on addresses configured on an interface, so not 127.x.y.z).
func loopbackAddr() netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20000+rand.IntN(12000)))
}

func netipAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
