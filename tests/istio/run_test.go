package istio_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

var shuntBin string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // tests skip themselves with the reason
	}
	dir, err := os.MkdirTemp("", "shunt-istio-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shuntBin = filepath.Join(dir, "shunt")
	if err := testenv.BuildShunt(shuntBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// `shunt run` with a sidecar's node id against istiod: the istio flavour
// is detected, the NameTable comes through shunt's xDS proxy, and DNS
// answers the ServiceEntry's host with istiod's VIP.
func TestShuntRunWithIstiod(t *testing.T) {
	testenv.RequireBinary(t, "dig")
	ns, _ := startIstiod(t)
	ns.WriteResolvConf("nameserver 192.0.2.53\n")
	dir := t.TempDir()
	agent := ns.Start(ns.Command(context.Background(), shuntBin, "run", "--no-capture", "--xds", "127.0.0.1:15010",
		"--node-id", "sidecar~10.0.0.1~app.default~default.svc.cluster.local",
		"--state-dir", filepath.Join(dir, "state"), "--admin", "127.0.0.1:15090"))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("shunt output:\n%s", agent.Output())
		}
	})
	vips := netip.MustParsePrefix("240.240.0.0/16")
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _ := ns.Run("dig", "+short", "+tries=1", "+time=1", "@127.0.0.1", "-p", "15053", "httpbin.org")
		if a, err := netip.ParseAddr(strings.TrimSpace(out)); err == nil && vips.Contains(a) {
			t.Logf("httpbin.org = %s", a)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("httpbin.org never resolved to an istiod VIP; last answer %q", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(agent.Output(), "flavor=istio") {
		t.Errorf("the istio flavour was not detected:\n%s", agent.Output())
	}
}
