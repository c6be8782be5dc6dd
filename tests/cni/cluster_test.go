package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	proxyUID  = 5678
	appUID    = 1000
	subnet    = "10.244.7.0/24"
	gatewayIP = "10.244.7.1"
	network   = "shuntnet"
	refCNIDir = "/usr/lib/cni"
)

// cluster is one node namespace, where cnitool and therefore the bridge
// live, and one pod namespace that the chain wires to it.
type cluster struct {
	t        *testing.T
	node     *testenv.Netns
	pod      *testenv.Netns
	confDir  string
	stateDir string
	ipamDir  string
	bridge   string
	haproxy  *testenv.Process
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "iptables-nft-save")
	if _, err := os.Stat(filepath.Join(refCNIDir, "bridge")); err != nil {
		if testenv.InCI() {
			t.Fatalf("reference CNI plugins missing in %s; `make deps` installs containernetworking-plugins", refCNIDir)
		}
		t.Skipf("reference CNI plugins missing in %s: install containernetworking-plugins", refCNIDir)
	}
	c := &cluster{
		t:        t,
		confDir:  t.TempDir(),
		stateDir: t.TempDir(),
		ipamDir:  t.TempDir(),
		bridge:   testenv.UniqueName("shbr"),
	}
	c.node = testenv.NewNetns(t, "node")
	c.pod = testenv.NewNetns(t, "pod")
	return c
}

// writeConf writes the conflist: bridge and host-local make the pod's
// interface, shunt-cni captures. capture is the shunt plugin's capture
// object; extra are more top-level keys of its entry.
func (c *cluster) writeConf(capture map[string]any, extra map[string]any) {
	c.t.Helper()
	shunt := map[string]any{"type": "shunt-cni", "stateDir": c.stateDir}
	if capture != nil {
		shunt["capture"] = capture
	}
	for k, v := range extra {
		shunt[k] = v
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       network,
		"plugins": []any{
			map[string]any{
				"type":      "bridge",
				"bridge":    c.bridge,
				"isGateway": true,
				"ipMasq":    false,
				"ipam": map[string]any{
					"type":    "host-local",
					"subnet":  subnet,
					"dataDir": c.ipamDir,
					"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
				},
			},
			shunt,
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.confDir, "10-shunt.conflist"), b, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// cnitool runs one command of the chain for the pod, inside the node
// namespace, and returns its output.
func (c *cluster) cnitool(command string, cniArgs string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := c.node.Command(ctx, "env",
		"CNI_PATH="+refCNIDir+":"+bins.pluginDir,
		"NETCONFPATH="+c.confDir,
		"CNI_ARGS="+cniArgs,
		"CNI_IFNAME=eth0",
		bins.cnitool, command, network, c.pod.Path())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *cluster) mustCNI(command string) string {
	c.t.Helper()
	out, err := c.cnitool(command, "")
	if err != nil {
		c.t.Fatalf("cnitool %s: %v\n%s", command, err, out)
	}
	return out
}

// add runs ADD and registers DEL for cleanup, so the bridge's veth and the
// IPAM lease go even when the test fails.
func (c *cluster) add() string {
	c.t.Helper()
	c.t.Cleanup(func() { _, _ = c.cnitool("del", "") })
	return c.mustCNI("add")
}

// rules returns shunt's lines in the pod's rules of every backend and
// family.
func (c *cluster) rules() string {
	c.t.Helper()
	return c.pod.ShuntRules()
}

// serveOnNode answers HTTP on the bridge's address in the node namespace.
func (c *cluster) serveOnNode(port int) {
	c.t.Helper()
	testenv.ServeHTTP(c.t, c.node, fmt.Sprintf("%s:%d", gatewayIP, port), fmt.Sprintf("node:%d", port))
}

// startProxy runs HAProxy in the pod as the proxy's user, forwarding what
// it accepts on the outbound port to the original destination.
func (c *cluster) startProxy() {
	c.t.Helper()
	c.haproxy = testenv.StartHAProxy(c.t, c.pod, proxyUID, "127.0.0.1:15001")
}

// fetch GETs url from the pod as uid, asserts the body, and reports whether
// HAProxy logged a connection to dst meanwhile.
func (c *cluster) fetch(uid int, url, body, dst string) bool {
	c.t.Helper()
	before := 0
	if c.haproxy != nil {
		before = strings.Count(c.haproxy.Output(), "-> "+dst)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := c.pod.CommandAs(ctx, uid, uid, "curl", "-sS", "--max-time", "4", url).CombinedOutput()
	if err != nil || string(out) != body {
		log := ""
		if c.haproxy != nil {
			log = c.haproxy.Output()
		}
		c.t.Fatalf("uid %d GET %s = %q, %v; want %q\nproxy log:\n%s", uid, url, out, err, body, log)
	}
	if c.haproxy == nil {
		return false
	}
	deadline := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(deadline) {
		if strings.Count(c.haproxy.Output(), "-> "+dst) > before {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
