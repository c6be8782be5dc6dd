package cni_test

import (
	"os"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/tests/testenv"
)

func TestChainCapturesPodTraffic(t *testing.T) {
	c := newCluster(t)
	c.writeConf(map[string]any{"excludeOutboundPorts": []any{8081}}, nil)
	out := c.add()
	// The bridge's result is passed on: the pod's address is in it.
	if !strings.Contains(out, "10.244.7.") {
		t.Errorf("ADD result lacks the bridge's address:\n%s", out)
	}
	if r := c.rules(); !strings.Contains(r, "SHUNT_OUTPUT") {
		t.Fatalf("no shunt rules in the pod after ADD:\n%s", r)
	}
	c.serveOnNode(8080)
	c.serveOnNode(8081)
	c.startProxy()
	if !c.fetch(appUID, "http://"+gatewayIP+":8080/", "node:8080", gatewayIP+":8080") {
		t.Errorf("the pod's connection to the node did not pass through the proxy")
	}
	if c.fetch(proxyUID, "http://"+gatewayIP+":8080/", "node:8080", gatewayIP+":8080") {
		t.Errorf("the proxy's own connection was captured")
	}
	if c.fetch(appUID, "http://"+gatewayIP+":8081/", "node:8081", gatewayIP+":8081") {
		t.Errorf("a connection to an excluded port was captured")
	}

	c.mustCNI("check")
	// Someone flushes shunt's chain: CHECK must notice.
	c.pod.MustRun("iptables-nft", "-t", "nat", "-F", "SHUNT_OUTPUT")
	if out, err := c.cnitool("check", ""); err == nil {
		t.Errorf("CHECK passed with shunt's outbound chain flushed:\n%s", out)
	} else if !strings.Contains(out, "drift") {
		t.Errorf("CHECK failed without naming the drift: %s", out)
	}

	c.mustCNI("del")
	if r := c.rules(); r != "" {
		t.Errorf("shunt rules left after DEL:\n%s", r)
	}
	if ents, _ := os.ReadDir(c.stateDir); len(ents) != 0 {
		t.Errorf("state left after DEL: %v", ents)
	}
	// DEL is idempotent.
	c.mustCNI("del")
}

func TestDelOfUnknownContainerSucceeds(t *testing.T) {
	c := newCluster(t)
	c.writeConf(nil, nil)
	c.mustCNI("del")
}

func TestBrokenConfigurationFailsAddAndLeavesNoRules(t *testing.T) {
	cases := []struct {
		name    string
		capture map[string]any
		extra   map[string]any
		want    string
	}{
		{"unknown capture key", map[string]any{"outbondPort": 15001}, nil, "outbondPort"},
		{"bad port", map[string]any{"outboundPort": 99999}, nil, "outboundPort"},
		{"bad exclusion", map[string]any{"excludeOutboundCidrs": "10.0.0.0/33"}, nil, "excludeOutboundCidrs"},
		{"capture key at the top level", nil, map[string]any{"outboundPort": 15001}, "capture"},
		{"unknown top-level key", nil, map[string]any{"stateDri": "/tmp"}, "stateDri"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			c.writeConf(tc.capture, tc.extra)
			t.Cleanup(func() { _, _ = c.cnitool("del", "") })
			out, err := c.cnitool("add", "")
			if err == nil {
				t.Fatalf("ADD succeeded with a broken configuration:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("ADD error does not name %q:\n%s", tc.want, out)
			}
			if r := c.rules(); r != "" {
				t.Errorf("shunt rules left after a failed ADD:\n%s", r)
			}
			// The namespace is still usable: its traffic flows, uncaptured.
			c.serveOnNode(8080)
			if c.fetch(appUID, "http://"+gatewayIP+":8080/", "node:8080", gatewayIP+":8080") {
				t.Errorf("traffic captured after a failed ADD")
			}
			if _, err := c.cnitool("del", ""); err != nil {
				t.Errorf("DEL after a failed ADD: %v", err)
			}
		})
	}
}

func TestExcludedNamespaceIsNotCaptured(t *testing.T) {
	c := newCluster(t)
	c.writeConf(nil, map[string]any{"excludeNamespaces": []any{"kube-system"}})
	t.Cleanup(func() { _, _ = c.cnitool("del", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns") })
	if out, err := c.cnitool("add", "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns"); err != nil {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	if r := c.rules(); r != "" {
		t.Errorf("an excluded namespace's pod was captured:\n%s", r)
	}
	if out, err := c.cnitool("check", "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns"); err != nil {
		t.Errorf("CHECK of an uncaptured pod: %v\n%s", err, out)
	}
}

// TestChainCapturesWithNftables: the plugin's capture JSON names the
// nftables engine; ADD captures, CHECK notices drift, DEL removes the table.
func TestChainCapturesWithNftables(t *testing.T) {
	c := newCluster(t)
	testenv.RequireBinary(t, "nft")
	c.writeConf(map[string]any{"engine": "nftables", "excludeOutboundPorts": []any{8081}}, nil)
	c.add()
	if r := c.rules(); !strings.Contains(r, "nft: table inet shunt") || strings.Contains(r, "SHUNT_OUTPUT") {
		t.Fatalf("after ADD with engine nftables, want shunt's nftables table and no iptables rules:\n%s", r)
	}
	c.serveOnNode(8080)
	c.serveOnNode(8081)
	c.startProxy()
	if !c.fetch(appUID, "http://"+gatewayIP+":8080/", "node:8080", gatewayIP+":8080") {
		t.Errorf("the pod's connection to the node did not pass through the proxy")
	}
	if c.fetch(appUID, "http://"+gatewayIP+":8081/", "node:8081", gatewayIP+":8081") {
		t.Errorf("a connection to an excluded port was captured")
	}
	c.mustCNI("check")
	c.pod.MustRun("nft", "flush", "chain", "inet", "shunt", "output4")
	if out, err := c.cnitool("check", ""); err == nil {
		t.Errorf("CHECK passed with shunt's outbound chain flushed:\n%s", out)
	} else if !strings.Contains(out, "drift") {
		t.Errorf("CHECK failed without naming the drift: %s", out)
	}
	c.mustCNI("del")
	if r := c.rules(); r != "" {
		t.Errorf("shunt rules left after DEL:\n%s", r)
	}
}
