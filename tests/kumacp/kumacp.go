// Package kumacp runs the real kuma-cp (../shared/tools/kuma-cp-2.14.3.xz,
// or $KUMA_CP) for tests: universal zone, in-memory store, inside a network
// namespace of the test's own that has nothing but lo, because its
// dp-server and inter-CP server listen on every address.
package kumacp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shunt-dev/shunt/tests/peers"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// Version is the kuma-cp the tests were written against.
const Version = "2.14.3"

// Addresses inside the namespace.
const (
	APIAddr = "127.0.0.1:5681"
	XDSAddr = "127.0.0.1:5678"
)

// Binary returns a kuma-cp executable: $KUMA_CP, or the shared build
// decompressed into a temporary directory. It skips the test when neither
// exists (a clone without ../shared).
func Binary(t testing.TB) string {
	t.Helper()
	return peers.Binary(t, "kuma-cp", "KUMA_CP", "kuma-cp-"+Version+".xz", "kuma-cp")
}

// Options change how kuma-cp runs.
type Options struct {
	// DPToken turns on dataplane token authentication on the dp-server.
	DPToken bool
	// Netns runs kuma-cp there instead of in a namespace of its own.
	Netns *testenv.Netns
}

// CP is a running kuma-cp.
type CP struct {
	peers.Peer
	t    testing.TB
	bin  string
	opts Options
	// Dir is KUMA_GENERAL_WORK_DIR; the dp-server's certificate is CAFile.
	Dir  string
	proc *testenv.Process
	logs []string
}

// Start runs kuma-cp and waits until its API answers.
func Start(t testing.TB, opts Options) *CP {
	t.Helper()
	bin := Binary(t)
	ns := opts.Netns
	if ns == nil {
		ns = testenv.NewNetns(t, "kcp")
	}
	cp := &CP{Peer: peers.Peer{Ns: ns}, t: t, bin: bin, opts: opts, Dir: testenv.ReadableTempDir(t)}
	cp.Start()
	peers.LogOnFailure(t, "kuma-cp", cp.Log)
	return cp
}

// Start starts a stopped kuma-cp again. Its in-memory store starts empty,
// as after any restart of a memory-backed kuma-cp; its certificate and
// keys stay in Dir.
func (cp *CP) Start() {
	cp.t.Helper()
	authn := "none"
	if cp.opts.DPToken {
		authn = "dpToken"
	}
	cmd := cp.Ns.Command(context.Background(), cp.bin, "run")
	cmd.Env = append(os.Environ(),
		"KUMA_STORE_TYPE=memory", "KUMA_ENVIRONMENT=universal", "KUMA_MODE=zone",
		"KUMA_GENERAL_WORK_DIR="+cp.Dir,
		"KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE="+authn, "KUMA_DP_SERVER_AUTHN_ZONE_PROXY_TYPE="+authn,
		"KUMA_API_SERVER_HTTP_INTERFACE=127.0.0.1", "KUMA_API_SERVER_HTTPS_INTERFACE=127.0.0.1",
		"KUMA_INTER_CP_CATALOG_INSTANCE_ADDRESS=127.0.0.1",
	)
	cp.proc = cp.Ns.Start(cmd)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := cp.Do("GET", "/", nil); err == nil {
			break
		}
		if cp.proc.Exited() || time.Now().After(deadline) {
			cp.t.Fatalf("kuma-cp did not start:\n%s", peers.Tail(cp.Log(), 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The dp-server starts with the API; its certificate is written first.
	for !fileExists(cp.CAFile()) {
		if time.Now().After(deadline) {
			cp.t.Fatalf("kuma-cp wrote no %s", cp.CAFile())
		}
		time.Sleep(100 * time.Millisecond)
	}
	cp.waitXDS(deadline)
}

func (cp *CP) waitXDS(deadline time.Time) {
	for {
		c, err := cp.Dial(context.Background(), XDSAddr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			cp.t.Fatalf("kuma-cp dp-server not listening: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Restart stops kuma-cp and starts it again; the in-memory store starts
// empty, as after any restart of a memory-backed kuma-cp.
func (cp *CP) Restart() {
	cp.t.Helper()
	cp.Stop()
	cp.Start()
}

// Stop stops kuma-cp; its log so far stays readable.
func (cp *CP) Stop() {
	cp.proc.Stop()
	cp.logs = append(cp.logs, cp.proc.Output())
}

// Log is everything kuma-cp printed, over its restarts.
func (cp *CP) Log() string {
	s := strings.Join(cp.logs, "\n--- restart ---\n")
	if !cp.proc.Exited() || len(cp.logs) == 0 || cp.logs[len(cp.logs)-1] != cp.proc.Output() {
		s += cp.proc.Output()
	}
	return s
}

// CAFile is the dp-server's self-signed certificate.
func (cp *CP) CAFile() string { return filepath.Join(cp.Dir, "kuma-cp.crt") }

func (cp *CP) client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return cp.Dial(ctx, addr) },
	}}
}

func (cp *CP) Do(method, path string, body any) ([]byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+APIAddr+path, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := cp.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return b, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// Put PUTs a resource, as kumactl apply does.
func (cp *CP) Put(path string, body any) {
	cp.t.Helper()
	if _, err := cp.Do("PUT", path, body); err != nil {
		cp.t.Fatal(err)
	}
}

// Delete deletes a resource.
func (cp *CP) Delete(path string) {
	cp.t.Helper()
	if _, err := cp.Do("DELETE", path, nil); err != nil {
		cp.t.Fatal(err)
	}
}

// Get GETs path and decodes the JSON answer into v.
func (cp *CP) Get(path string, v any) error {
	b, err := cp.Do("GET", path, nil)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// DataplaneToken issues a dataplane token for name in mesh.
func (cp *CP) DataplaneToken(meshName, name string) string {
	cp.t.Helper()
	// kuma-cp creates a mesh's signing key shortly after the Mesh; until
	// then it answers 404.
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, err := cp.Do("POST", "/tokens/dataplane", map[string]any{"name": name, "mesh": meshName})
		if err == nil {
			return strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			cp.t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// DNSRecords finds, in xDS that kuma-cp generated (its _config API), the
// DNS table it gives the dataplane, in either form: the embedded-DNS JSON
// {"records":[{"name","ips"}]} or the dns_filter's inline table.
func DNSRecords(xds []byte) map[string][]string {
	out := map[string][]string{}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if vds, ok := x["virtualDomains"].([]any); ok {
				for _, d := range vds {
					dm, _ := d.(map[string]any)
					name, _ := dm["name"].(string)
					addrs, _ := dm["endpoint"].(map[string]any)["addressList"].(map[string]any)["address"].([]any)
					for _, a := range addrs {
						out[name] = append(out[name], fmt.Sprint(a))
					}
				}
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		case string:
			if !strings.HasPrefix(x, `{"records":`) {
				return
			}
			var t struct {
				Records []struct {
					Name string   `json:"name"`
					IPs  []string `json:"ips"`
				} `json:"records"`
			}
			if json.Unmarshal([]byte(x), &t) == nil {
				for _, r := range t.Records {
					out[r.Name] = append(out[r.Name], r.IPs...)
				}
			}
		}
	}
	var doc any
	if json.Unmarshal(xds, &doc) == nil {
		walk(doc)
	}
	for k := range out {
		slices.Sort(out[k])
		out[k] = slices.Compact(out[k])
	}
	return out
}
