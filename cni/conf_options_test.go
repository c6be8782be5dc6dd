package cni

import (
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/redirect"
)

// The capture object takes the optional features under the same keys as
// every other surface, lists as JSON arrays or strings.
func TestCaptureObjectTakesTheOptionalFeatures(t *testing.T) {
	conf, err := ParseConf([]byte(`{
	  "cniVersion": "1.0.0", "name": "k8s", "type": "shunt-cni",
	  "capture": {
	    "noDNS": true,
	    "inboundMode": "tproxy", "tproxyMark": "0x77",
	    "dropInvalid": true,
	    "includeOutboundCidrs": ["10.0.0.0/8"], "includeOutboundPorts": "443,8443",
	    "includeInboundPorts": [8080],
	    "vnetInterfaces": ["tap0", "docker0:172.17.0.0/16"],
	    "packetLog": "nflog:3",
	    "xtablesLockWait": "5s", "xtablesRetries": 2
	  }
	}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := conf.capture.Plan(redirect.OSHost{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, f := range p.Features() {
		keys = append(keys, f.Key+"="+f.Value)
	}
	want := "inboundMode=tproxy dropInvalid=true includeOutboundCidrs=10.0.0.0/8 includeOutboundPorts=443,8443 includeInboundPorts=8080 vnetInterfaces=tap0,docker0:172.17.0.0/16 packetLog=nflog:3"
	if got := strings.Join(keys, " "); got != want {
		t.Errorf("features = %s\nwant       %s", got, want)
	}
	if p.InboundTProxy.Mark != 0x77 {
		t.Errorf("tproxy mark = %#x", p.InboundTProxy.Mark)
	}
	if n, _ := conf.capture.XtablesRetries(); n != 2 {
		t.Errorf("xtablesRetries = %d", n)
	}

	_, err = ParseConf([]byte(`{"cniVersion": "1.0.0", "name": "k8s", "type": "shunt-cni", "dropInvalid": true}`))
	if err == nil || !strings.Contains(err.Error(), `"dropInvalid" is a capture key`) {
		t.Errorf("a capture key at the top level: %v", err)
	}
}
