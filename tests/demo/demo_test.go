// Package demo_test runs scripts/demo.sh in DEMO_ONESHOT mode, so that the
// demonstration in the README cannot rot: every step it shows and every
// "Try:" line it prints must work.
package demo_test

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

func TestDemoOneShot(t *testing.T) {
	testenv.RequireRoot(t)
	for _, b := range []string{"nginx", "dnsmasq", "curl", "dig", "openssl", "setpriv"} {
		testenv.RequireBinary(t, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../../scripts/demo.sh")
	// Unique namespace names: other suites may run at the same time.
	cmd.Env = append(cmd.Environ(), "DEMO_ONESHOT=1", "DEMO_PREFIX="+testenv.UniqueName("demo"), "ENVOY=")
	out, err := cmd.CombinedOutput()
	s := string(out)
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, s)
	}
	for _, want := range []string{
		// 3 and 4: TLS originated by the proxy, verified against the CA.
		`"sni": "httpbin.org", "host": "httpbin.mesh"`,
		`"sni": "httpbin.org", "host": "httpbin.org"`,
		"cluster=external:httpbin upstream=10.200.0.2:443 tls=sni:httpbin.org verified=shunt demo CA",
		// 6: the application's TLS to example.com through the egress.
		"example.com (demo) over the application own TLS, sni=example.com",
		"sni=example{mesh=default} chain=example{mesh=default} peer=spiffe://default/demo-app cluster=external:default:example",
		"chain=httpbin{mesh=default} peer=spiffe://default/demo-app cluster=external:default:httpbin upstream=10.200.0.2:443 tls=sni:httpbin.org verified=shunt demo CA",
		// 7: refused at once.
		"refused after ",
		"== checking the Try: lines",
		"== done",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, s)
		}
	}
	if i := strings.Index(s, "refused after "); i >= 0 {
		ms, err := strconv.Atoi(strings.Fields(s[i+len("refused after "):])[0])
		if err != nil || ms > 1000 {
			t.Errorf("the direct connection was refused after %q ms, want at once", s[i:])
		}
	}
	if strings.Contains(s, "FAILED") || strings.Contains(s, "UNEXPECTED") {
		t.Errorf("the demo reports a failure:\n%s", s)
	}
}
