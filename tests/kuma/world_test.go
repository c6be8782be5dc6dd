package kuma_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/kumacp"
	"github.com/shunt-dev/shunt/tests/peers"
	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	proxyUID = 5678
	// otherIP is an address of the internet's that no mesh name stands
	// for.
	otherIP   = "10.1.0.3"
	adminAddr = peers.AdminAddr
)

// world is kuma-cp, a pod where shunt runs, and an internet.
type world struct {
	*peers.World
	cp *kumacp.CP
}

func newWorld(t *testing.T, opts kumacp.Options) *world {
	t.Helper()
	w := &world{}
	w.World = peers.NewWorld(t, "k", kumacp.XDSAddr, func() peers.Dialer {
		t.Helper()
		w.cp = kumacp.Start(t, opts)
		return w.cp
	})
	w.Internet.MustRun("ip", "addr", "add", otherIP+"/24", "dev", w.InternetEnd.Dev)
	testenv.ServeHTTP(t, w.Internet, "0.0.0.0:80", "internet\n")
	return w
}

// startShunt runs `shunt run` against kuma-cp as the Dataplane name.
func (w *world) startShunt(name string, extra ...string) {
	w.T.Helper()
	dp := filepath.Join(w.Dir, name+".yaml")
	if err := os.WriteFile(dp, fmt.Appendf(nil, dataplaneYAML, name), 0o644); err != nil {
		w.T.Fatal(err)
	}
	args := append([]string{"run", "--xds", kumacp.XDSAddr, "--xds-ca", w.cp.CAFile(), "--dataplane-file", dp,
		"--state-dir", filepath.Join(w.Dir, "state-"+name), "--admin", adminAddr, "--reconcile-interval", "500ms"}, extra...)
	w.StartShunt(shuntBin, args...)
}

// vips reads, from kuma-cp's API, the VIPs it gives the dataplane name:
// the addresses of the DNS table in the xDS it generated for it.
func (w *world) vips(name string) map[string][]string {
	w.T.Helper()
	var dump struct {
		XDS json.RawMessage `json:"xds"`
	}
	if err := w.cp.Get("/meshes/default/dataplanes/"+name+"/_config", &dump); err != nil {
		// Not connected (yet): kuma-cp generates nothing for it.
		return nil
	}
	return kumacp.DNSRecords(dump.XDS)
}

// connects reports whether uid in the pod can open a TCP connection to
// addr.
func (w *world) connects(uid int, addr string) bool {
	host, port, _ := strings.Cut(addr, ":")
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s 2>/dev/null && echo connected`, host, port)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := w.Pod.CommandAs(ctx, uid, uid, "bash", "-c", script).CombinedOutput()
	return strings.Contains(string(out), "connected")
}
