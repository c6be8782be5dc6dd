package agent_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shunt-dev/shunt/redirect/ebpf"
	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
	"github.com/shunt-dev/shunt/tests/testenv"
)

const (
	proxyUID = 5678
	appUID   = 1000
	// internetIP is the internet's address on the pod's link; every
	// external name resolves to it.
	internetIP = "10.1.0.2"
	otherIP    = "10.1.0.3"
	egressIP   = "10.2.0.2"
	egressPort = 10002
	// podEgressSideIP is the pod's address on its link to the egress,
	// where the egress reaches the pod's control plane.
	podEgressSideIP = "10.2.0.1"
	xdsAddr         = "127.0.0.1:15680"
	adminAddr       = "127.0.0.1:15090"
)

// world is a pod namespace linked to an "internet" namespace (nginx posing
// as httpbin.org, a DNS server for the external names) and to a ZoneEgress
// namespace that also reaches the internet.
type world struct {
	t         *testing.T
	pod       *testenv.Netns
	internet  *testenv.Netns
	egress    *testenv.Netns
	ca        *ca
	wrongCA   *ca
	client    pair
	dir       string // readable by the proxy's user
	resources string
	stateDir  string
	agent     *testenv.Process
	proxy     *testenv.Process
	egressFwd *testenv.Process
	cp        *testenv.Process
	// engine is the capture engine the agent uses; with ebpf, the pod's
	// processes run in cgroup and the programs are pinned on pinDir.
	engine string
	cgroup string
	pinDir string
}

// forEachEngine runs an end-to-end test once per capture engine: the same
// assertions hold for all.
func forEachEngine(t *testing.T, test func(t *testing.T, engine string)) {
	for _, engine := range []string{"iptables", "nftables", "ebpf"} {
		t.Run(engine, func(t *testing.T) { test(t, engine) })
	}
}

// newWorldWith is newWorld with the agent using the given engine.
func newWorldWith(t *testing.T, engine string) *world {
	t.Helper()
	w := newWorld(t)
	w.engine = engine
	if engine == "ebpf" {
		if err := ebpf.Probe(testenvCgroupMount(t)); err != nil {
			t.Skipf("the kernel cannot run the eBPF engine: %v", err)
		}
		w.cgroup = testenv.NewCgroup(t)
		w.pinDir = filepath.Join(ebpftest.MountBPFFS(t), "shunt")
		// The application and the proxy stand-in start inside the pod's
		// cgroup, as a container's processes do.
		w.pod = w.pod.InCgroup(w.cgroup)
	}
	return w
}

func testenvCgroupMount(t *testing.T) string {
	t.Helper()
	mnt, err := testenv.Cgroup2Mount()
	if err != nil {
		t.Skipf("cgroup v2 is not mounted: %v", err)
	}
	return mnt
}

func newWorld(t *testing.T) *world {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nginx")
	testenv.RequireBinary(t, "curl")
	testenv.RequireBinary(t, "dig")
	// The state directory holds the xDS socket: the proxy's user must
	// reach it.
	w := &world{t: t, dir: testenv.ReadableTempDir(t), stateDir: testenv.ReadableTempDir(t)}
	w.resources = filepath.Join(w.dir, "resources")
	must(t, os.MkdirAll(w.resources, 0o755))
	w.pod = testenv.NewNetns(t, "pod")
	w.internet = testenv.NewNetns(t, "inet")
	w.egress = testenv.NewNetns(t, "egr")
	podI, inetP := testenv.Link(t, w.pod, w.internet, 1)
	testenv.Link(t, w.pod, w.egress, 2)
	testenv.Link(t, w.egress, w.internet, 3)
	testenv.AddDefaultRoute(t, podI, inetP)
	// An internet address no ExternalService resolves to.
	w.internet.MustRun("ip", "addr", "add", otherIP+"/24", "dev", inetP.Dev)
	// The egress reaches the internet's pod-side address through its own
	// link, so that what it forwards never crosses the pod.
	w.egress.MustRun("ip", "route", "add", "10.1.0.0/24", "via", "10.3.0.2")
	w.pod.WriteResolvConf("nameserver " + internetIP + "\n")

	w.ca = newCA(t, "shunt test CA")
	w.wrongCA = newCA(t, "some other CA")
	w.client = w.ca.issue(t, "shunt-test-client", true)
	w.startNginx()
	serveDNS(t, w.internet, internetIP+":53")
	return w
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// startNginx serves, over TLS with the test CA: httpbin.org (and
// secure.httpbin.org, example.com) on 443, and mtls.httpbin.org on 8443,
// which requires a client certificate. Each answer names the server, the
// SNI it was reached by and the client certificate's subject.
func (w *world) startNginx() {
	srv := w.ca.issue(w.t, "httpbin.org", false, "httpbin.org", "secure.httpbin.org", "example.com", "mtls.httpbin.org")
	d := filepath.Join(w.dir, "nginx")
	must(w.t, os.MkdirAll(d, 0o755))
	for name, b := range map[string][]byte{"srv.crt": srv.cert, "srv.key": srv.key, "ca.crt": w.ca.cert} {
		must(w.t, os.WriteFile(filepath.Join(d, name), b, 0o644))
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 128; }
http {
  access_log %[1]s/access.log;
  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;
  ssl_certificate %[1]s/srv.crt;
  ssl_certificate_key %[1]s/srv.key;
  server {
    listen 0.0.0.0:443 ssl default_server;
    listen 0.0.0.0:80 default_server;
    location / { return 200 "httpbin sni=$ssl_server_name client=$ssl_client_s_dn\n"; }
  }
  server {
    listen 0.0.0.0:8443 ssl default_server;
    ssl_client_certificate %[1]s/ca.crt;
    ssl_verify_client on;
    location / { return 200 "mtls sni=$ssl_server_name client=$ssl_client_s_dn\n"; }
  }
}
`, d)
	cfg := filepath.Join(d, "nginx.conf")
	must(w.t, os.WriteFile(cfg, []byte(conf), 0o644))
	p := w.internet.Start(w.internet.Command(context.Background(), "nginx", "-c", cfg, "-p", d))
	waitFor(w.t, "nginx to listen", func() bool {
		out, _ := w.internet.Run("ss", "-Hltn")
		return strings.Contains(out, ":443 ") && strings.Contains(out, ":8443 ")
	}, p.Output)
}

// serveDNS answers A queries for every name with the internet's address
// (AAAA with none), like a public resolver would for these test names.
func serveDNS(t *testing.T, n *testenv.Netns, listen string) {
	t.Helper()
	h := dns.HandlerFunc(func(rw dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.ToLower(q.Question[0].Name)
		if strings.HasSuffix(name, "nonexistent.") {
			m.Rcode = dns.RcodeNameError
		} else if q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Question[0].Name + " 30 IN A " + internetIP)
			m.Answer = append(m.Answer, rr)
		}
		_ = rw.WriteMsg(m)
	})
	for _, netw := range []string{"udp", "tcp"} {
		var srv *dns.Server
		must(t, n.Do(func() error {
			if netw == "udp" {
				pc, err := net.ListenPacket("udp", listen)
				srv = &dns.Server{PacketConn: pc, Handler: h}
				return err
			}
			ln, err := net.Listen("tcp", listen)
			srv = &dns.Server{Listener: ln, Handler: h}
			return err
		}))
		go func() { _ = srv.ActivateAndServe() }()
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
}

// writeResource writes a resource file atomically, as the docs ask.
func (w *world) writeResource(name, content string) {
	w.t.Helper()
	tmp := filepath.Join(w.resources, "."+name+".tmp")
	must(w.t, os.WriteFile(tmp, []byte(content), 0o644))
	must(w.t, os.Rename(tmp, filepath.Join(w.resources, name)))
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// externalService renders an ExternalService; tls is "" (none), or a TLS
// block rendered by tlsBlock.
func externalService(name, service, protocol, address, tls string) string {
	return fmt.Sprintf(`---
type: ExternalService
mesh: default
name: %s
tags:
  kuma.io/service: %s
  kuma.io/protocol: %s
networking:
  address: %s
%s`, name, service, protocol, address, tls)
}

func tlsBlock(sni string, caPEM []byte, client *pair) string {
	s := fmt.Sprintf("  tls:\n    enabled: true\n    sni: %s\n    caCert:\n      inline: %s\n", sni, b64(caPEM))
	if client != nil {
		s += fmt.Sprintf("    clientCert:\n      inline: %s\n    clientKey:\n      inline: %s\n", b64(client.cert), b64(client.key))
	}
	return s
}

// startAgent runs `shunt run` inside the pod (ip netns exec, so that it
// reads the pod's resolv.conf and its DNS interceptor listens in the pod)
// with the embedded control plane, or against xds when given.
func (w *world) startAgent(xds string, extra ...string) {
	w.t.Helper()
	args := []string{"run", "--state-dir", w.stateDir, "--node-id", "pod", "--admin", adminAddr, "--reconcile-interval", "500ms"}
	if xds == "" {
		args = append(args, "--resources", w.resources)
	} else {
		args = append(args, "--xds", xds)
	}
	args = append(args, extra...)
	if w.engine == "ebpf" {
		// ip netns exec remounts /sys, hiding the cgroup and bpffs
		// mounts the eBPF engine needs: enter only the network namespace,
		// and name the pod's resolv.conf, which ip netns exec would have
		// laid over /etc/resolv.conf.
		args = append(args, "--engine", "ebpf", "--cgroup", w.cgroup, "--bpf-pin-dir", w.pinDir,
			"--resolv-conf", filepath.Join("/etc/netns", w.pod.Name(), "resolv.conf"))
		w.agent = testenv.StartProcess(w.t, exec.CommandContext(context.Background(), "nsenter", append([]string{"--net=" + w.pod.Path(), bins.shunt}, args...)...))
	} else {
		if w.engine == "nftables" {
			args = append(args, "--engine", "nftables")
		}
		w.agent = w.pod.Start(w.pod.Command(context.Background(), bins.shunt, args...))
	}
	waitFor(w.t, "the agent to be ready", func() bool {
		code, _ := w.admin("/readyz")
		return code == "200"
	}, w.agent.Output)
}

func (w *world) stopAgent() {
	w.agent.Stop()
}

// xdsSocket is the agent's xDS socket, as the proxy's ADS address.
func (w *world) xdsSocket() string { return "unix://" + filepath.Join(w.stateDir, "xds.sock") }

// writeBootstrap writes an Envoy v3 bootstrap for the proxy double: the
// node, ADS to xds over gRPC, nothing else (the double, like Envoy, takes
// the rest from xDS).
func (w *world) writeBootstrap(name, nodeID, zone string, metadata map[string]string, xds string) string {
	w.t.Helper()
	// A Unix socket (unix://PATH) is a pipe address, as Envoy writes it.
	var addr map[string]any
	if path, ok := strings.CutPrefix(xds, "unix://"); ok {
		addr = map[string]any{"pipe": map[string]any{"path": path}}
	} else {
		host, port, err := net.SplitHostPort(xds)
		must(w.t, err)
		p, _ := strconv.Atoi(port)
		addr = map[string]any{"socket_address": map[string]any{"address": host, "port_value": p}}
	}
	md := map[string]any{}
	for k, v := range metadata {
		md[k] = v
	}
	node := map[string]any{"id": nodeID, "metadata": md}
	if zone != "" {
		node["locality"] = map[string]any{"zone": zone}
	}
	bs := map[string]any{
		"node": node,
		"static_resources": map[string]any{"clusters": []any{map[string]any{
			"name": "ads_cluster", "type": "STATIC", "connect_timeout": "1s",
			"load_assignment": map[string]any{"cluster_name": "ads_cluster", "endpoints": []any{map[string]any{"lb_endpoints": []any{map[string]any{
				"endpoint": map[string]any{"address": addr}}}}}},
			"typed_extension_protocol_options": map[string]any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": map[string]any{
				"@type":                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
				"explicit_http_config": map[string]any{"http2_protocol_options": map[string]any{}}}},
		}}},
		"dynamic_resources": map[string]any{
			"ads_config": map[string]any{"api_type": "GRPC", "transport_api_version": "V3",
				"grpc_services": []any{map[string]any{"envoy_grpc": map[string]any{"cluster_name": "ads_cluster"}}}},
			"lds_config": map[string]any{"ads": map[string]any{}, "resource_api_version": "V3"},
			"cds_config": map[string]any{"ads": map[string]any{}, "resource_api_version": "V3"},
		},
	}
	b, err := json.MarshalIndent(bs, "", "  ")
	must(w.t, err)
	path := filepath.Join(w.dir, name)
	must(w.t, os.WriteFile(path, b, 0o644))
	return path
}

// startProxy runs the Envoy double as the proxy's user, driven by a
// bootstrap naming the pod's node (zone "" for none) with ADS on the
// agent's xDS socket, as shunt points Envoy.
func (w *world) startProxy(zone ...string) {
	w.t.Helper()
	z := ""
	if len(zone) > 0 {
		z = zone[0]
	}
	bs := w.writeBootstrap("pod-bootstrap.json", "pod", z, nil, w.xdsSocket())
	w.proxy = w.pod.Start(w.pod.CommandAs(context.Background(), proxyUID, proxyUID, bins.meshproxy, "--config-path", bs))
	waitFor(w.t, "the proxy to have its configuration", func() bool {
		return strings.Contains(w.proxy.Output(), "xds: ready")
	}, w.proxy.Output)
}

// startEgress runs the Envoy double as the ZoneEgress in its namespace: a
// node of the control plane (w.cp, reached over the pod's link) that says
// it is the egress zoneegress-1.
func (w *world) startEgress() {
	w.t.Helper()
	w.egress.WriteResolvConf("nameserver " + internetIP + "\n")
	bs := w.writeBootstrap("egress-bootstrap.json", "zoneegress-1", "zone-1", map[string]string{"dataplane.proxyType": "egress"}, podEgressSideIP+":15680")
	w.egressFwd = w.egress.Start(w.egress.Command(context.Background(), bins.meshproxy, "--config-path", bs))
	waitFor(w.t, "the egress to have its configuration", func() bool { return strings.Contains(w.egressFwd.Output(), "xds: ready") }, w.logs)
}

// admin GETs an admin path inside the pod and returns the status code and
// body.
func (w *world) admin(path string) (string, string) {
	return w.pod.GetHTTP(adminAddr, path)
}

// curl runs curl in the pod as uid and returns its output and error.
func (w *world) curl(uid int, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	full := append([]string{"-sS", "--max-time", "3"}, args...)
	out, err := w.pod.CommandAs(ctx, uid, uid, "curl", full...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// dig asks the pod's resolver (captured into shunt) for name's A records.
func (w *world) dig(name string) string { return w.digType(name, "A") }

// digType asks the pod's resolver for name's records of one type.
func (w *world) digType(name, qtype string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := w.pod.CommandAs(ctx, appUID, appUID, "dig", "+short", "+tries=1", "+time=1", name, qtype).CombinedOutput()
	return strings.TrimSpace(string(out))
}

func waitFor(t *testing.T, what string, f func() bool, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; logs:\n%s", what, logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *world) logs() string {
	var b strings.Builder
	for name, p := range map[string]*testenv.Process{"agent": w.agent, "proxy": w.proxy, "egress": w.egressFwd, "controlplane": w.cp} {
		if p != nil {
			fmt.Fprintf(&b, "--- %s\n%s\n", name, p.Output())
		}
	}
	return b.String()
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
