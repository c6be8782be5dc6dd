package istio_test

import (
	"context"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/istiod"
)

// istiod itself, read as shunt reads it: a ServiceEntry without addresses
// gets a VIP in the NameTable, and a new file is served within 2 s.
func TestIstiodNameTable(t *testing.T) {
	cp := istiod.Start(t)
	cp.ServiceEntry("httpbin", "httpbin.org")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := cp.Watch(ctx, istiod.NodeID("10.0.0.9", "probe"))
	if err != nil {
		t.Fatal(err)
	}
	vip := waitVIP(t, ch, "httpbin.org", 30*time.Second)
	t.Logf("httpbin.org: %v", vip)
	cp.ServiceEntry("example", "www.example.com")
	vip2 := waitVIP(t, ch, "www.example.com", 2*time.Second)
	t.Logf("www.example.com: %v", vip2)
}
