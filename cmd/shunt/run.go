//go:build !lean

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/shunt-dev/shunt/agent"
	"github.com/shunt-dev/shunt/controlplane"
	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/nodemeta"
	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/sockowner"
	"github.com/shunt-dev/shunt/xdsclient"
	"github.com/shunt-dev/shunt/xdsproxy"
)

type runFlags struct {
	xds           string
	xdsCA         string
	xdsCert       string
	xdsKey        string
	xdsServerName string
	xdsToken      string
	resources     string
	xdsSocket     string
	xdsDelta      bool
	nodeID        string
	zone          string
	meshName      string
	admin         string
	cleanupOnExit bool
	noCapture     bool
	vipCIDR       string
	vip6CIDR      string
	dnsTTL        time.Duration
	cacheSize     int
	kernelAnswers string
	reconcile     time.Duration
	envoy         envoyFlags
	node          nodeFlags
}

func newRunCommand() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the node agent: capture, DNS and egress control driven by xDS",
		Long: `Run the node agent in the workload's network namespace: install the capture,
answer DNS with the mesh's VIPs, lock egress down when the mesh disables
passthrough, and follow the control plane's changes live.

The configuration comes either from a remote control plane (--xds) or, by
default, from resource files (--resources) served by an in-process control
plane that the agent consumes over the same xDS client. shunt holds the
node's one ADS stream and serves it to the local proxy on a Unix socket
(--xds-socket, owned by the proxy's user): point Envoy's ADS there. The last
good snapshot is kept in the state directory, so a restarted agent answers
DNS and applies its rules before the control plane is reachable.

SIGTERM/SIGINT: stop (rules stay unless --cleanup-on-exit). SIGHUP: re-read
the config file and apply it. See docs/agent.md.`,
		Example: `  shunt run --resources /etc/shunt/resources
  shunt run --xds cp.example:15680 --xds-ca /etc/shunt/ca.pem --node-id vm-1 --zone zone-1 --cleanup-on-exit
  ip netns exec pod1 shunt run --resources ./res --state-dir /run/shunt/pod1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd, f) },
	}
	captureFlags(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.xds, "xds", "", "ADS server HOST:PORT of a remote control plane (instead of --resources)")
	fl.StringVar(&f.xdsCA, "xds-ca", "", "PEM CA verifying the ADS server (enables TLS; empty with --xds-cert: the system roots)")
	fl.StringVar(&f.xdsCert, "xds-cert", "", "PEM client certificate for mutual TLS to the ADS server (needs --xds-key)")
	fl.StringVar(&f.xdsKey, "xds-key", "", "PEM private key of --xds-cert")
	fl.StringVar(&f.xdsServerName, "xds-server-name", "", "name expected in the ADS server's certificate (default: the host of --xds)")
	fl.StringVar(&f.xdsToken, "xds-token-file", "", "file holding a bearer token sent to the ADS server, re-read on each connect")
	fl.StringVar(&f.resources, "resources", "", "directory of resource files served by the embedded control plane (instead of --xds)")
	fl.StringVar(&f.xdsSocket, "xds-socket", "", `Unix socket serving the node's xDS to the local proxy (default: xds.sock in the state directory; "off": shunt subscribes alone)`)
	fl.BoolVar(&f.xdsDelta, "xds-delta", false, "hold the upstream ADS stream as incremental (delta) xDS instead of state of the world; the local proxy may speak either")
	fl.StringVar(&f.nodeID, "node-id", "", "node id sent to the control plane (default: the host name); the local proxy should use the same")
	fl.StringVar(&f.zone, "zone", "", "zone of this node (sent as its locality)")
	fl.StringVar(&f.meshName, "mesh", mesh.DefaultMesh, "mesh this node belongs to")
	fl.StringVar(&f.admin, "admin", "127.0.0.1:15090", `admin endpoint (/healthz, /readyz, /metrics, /snapshot); "off" disables`)
	fl.BoolVar(&f.cleanupOnExit, "cleanup-on-exit", false, "remove the capture rules when stopping (VMs); by default they stay, so traffic never bypasses the proxy")
	fl.BoolVar(&f.noCapture, "no-capture", false, "do not install or manage capture rules (another component does); serve DNS only")
	fl.StringVar(&f.vipCIDR, "vip-cidr", mesh.DefaultVIPv4CIDR, "IPv4 VIP range: allocated from by the embedded control plane, allowed under egress lockdown")
	fl.StringVar(&f.vip6CIDR, "vip6-cidr", mesh.DefaultVIPv6CIDR, `IPv6 VIP range ("none": IPv4 VIPs only)`)
	fl.DurationVar(&f.dnsTTL, "dns-ttl", dnsproxy.DefaultTTL, "TTL of DNS answers for mesh names")
	fl.IntVar(&f.cacheSize, "dns-cache-size", 10000, "forwarded answers cached by the DNS interceptor (0 disables)")
	fl.StringVar(&f.kernelAnswers, "dns-kernel-answers", "auto", "answer plain queries for mesh names and fresh cached answers from a tc program on the namespace's lo, without waking the interceptor: on, off, or auto (on with the eBPF engine's capture, where the kernel allows; see docs/dns.md)")
	fl.DurationVar(&f.reconcile, "reconcile-interval", 2*time.Second, "how often the live rules are checked for drift")
	addEnvoyFlags(cmd, &f.envoy)
	addNodeFlags(fl, &f.node)
	return cmd
}

func runAgent(cmd *cobra.Command, f runFlags) error {
	if (f.xds == "") == (f.resources == "") {
		return usageErrorf("run: give either --xds (a remote control plane) or --resources (the embedded one)")
	}
	if f.xds == "" && (f.xdsCA != "" || f.xdsCert != "" || f.xdsKey != "" || f.xdsToken != "") {
		return usageErrorf("run: --xds-ca, --xds-cert, --xds-key and --xds-token-file need --xds")
	}
	if f.dnsTTL < time.Second {
		return usageErrorf("run: --dns-ttl %v: must be at least 1s", f.dnsTTL)
	}
	if f.reconcile <= 0 {
		return usageErrorf("run: --reconcile-interval %v: must be positive", f.reconcile)
	}
	switch f.kernelAnswers {
	case "on", "off", "auto":
	default:
		return usageErrorf("run: --dns-kernel-answers %q: want on, off or auto", f.kernelAnswers)
	}
	if err := checkRunEnvoyFlags(f); err != nil {
		return err
	}
	log := slog.Default()
	ctx := cmd.Context()

	cfg, err := loadCaptureConfig(cmd)
	if err != nil {
		return err
	}
	if err := requireCurrentNetns(cfg.Get("netns")); err != nil {
		return err
	}
	plan, err := cfg.Plan(redirect.OSHost{})
	if err != nil {
		return err
	}
	rc, err := readResolvConf(plan.ResolvConf)
	if err != nil {
		return err
	}
	stateDir := cfg.Get("stateDir")
	if f.nodeID == "" {
		if f.nodeID, err = os.Hostname(); err != nil {
			return fmt.Errorf("run: --node-id not given and no host name: %w", err)
		}
	}
	vipRanges, err := runVIPRanges(f)
	if err != nil {
		return err
	}

	server := f.xds
	var tlsCfg *tls.Config
	if f.xds != "" && (f.xdsCA != "" || f.xdsCert != "") {
		if tlsCfg, err = xdsclient.TLSConfig(f.xdsCA, f.xdsCert, f.xdsKey, f.xdsServerName); err != nil {
			return err
		}
	}
	var dial func(context.Context, string) (net.Conn, error)
	if f.resources != "" {
		if dial, err = startEmbeddedControlPlane(ctx, f, plan, filepath.Join(stateDir, "controlplane"), log); err != nil {
			return err
		}
		server = "embedded"
	}
	node, err := resolveNode(cmd, f.node, f.nodeID, f.meshName, plan)
	if err != nil {
		return err
	}
	f.nodeID, f.meshName = node.ID, node.Mesh
	if err := checkDNSPortFree(plan.DNSPort); err != nil {
		return err
	}
	upCfg := xdsclient.Config{
		Server:    server,
		NodeID:    f.nodeID,
		Zone:      f.zone,
		Mesh:      f.meshName,
		Metadata:  node.Metadata,
		NameTable: node.Flavor == nodemeta.Istio,
		TokenFile: f.xdsToken,
		TokenRaw:  node.TokenRaw,
		TLS:       tlsCfg,
		Dialer:    dial,
		Logger:    log.With("component", "xds"),
	}
	xcfg := upCfg
	xcfg.StateDir = filepath.Join(stateDir, "agent")
	var proxy *xdsproxy.Proxy
	// A delta upstream is always held by the proxy: with --xds-socket off
	// it serves shunt's client alone.
	if f.xdsSocket != "off" || f.xdsDelta {
		if proxy, err = startXDSProxy(ctx, f, upCfg, plan, stateDir, log); err != nil {
			return err
		}
		xcfg.Stream = proxy.LocalStream
	}
	client, err := xdsclient.New(xcfg)
	if err != nil {
		return err
	}

	envoySup, err := prepareEnvoy(f, xcfg, plan, stateDir, log)
	if err != nil {
		return err
	}
	mark := plan.BypassMark
	opts := agent.Options{
		Source:       client,
		SourceStatus: func() agent.SourceStatus { return sourceStatus(client, proxy) },
		DNS: dnsproxy.Config{
			Listen:       dnsListen(plan.DNSPort),
			Upstreams:    rc.Nameservers,
			Search:       rc.Search,
			Cache:        dnsproxy.CacheOptions{Size: f.cacheSize, ServeStale: true},
			UpstreamMark: mark,
		},
		DNSTTL:            f.dnsTTL,
		VIPRanges:         vipRanges,
		ReconcileInterval: f.reconcile,
		CleanupOnExit:     f.cleanupOnExit,
		Logger:            log,
	}
	if envoySup != nil {
		opts.Proxy = envoySup
	}
	if !f.noCapture {
		eng, err := newEngine(cfg)
		if err != nil {
			return err
		}
		opts.Engine, opts.Plan = eng, plan
	} else {
		opts.Plan = plan
	}
	// Kernel answers pay off behind the eBPF engine; the NAT of the
	// other engines leaves every query to the interceptor anyway.
	useKernel := f.kernelAnswers == "on" || f.kernelAnswers == "auto" && opts.Engine != nil && opts.Engine.Name() == "ebpf"
	if useKernel {
		// Attached with the first table (the agent's sync).
		ka, err := loadKernelAnswers(opts.DNS.Listen, log)
		switch {
		case err == nil:
			defer ka.stop()
			opts.DNS.CacheObserver = ka.a.CacheObserver()
			opts.OnTable = ka.sync
			opts.KernelDNS = ka.stats
		case f.kernelAnswers == "auto":
			log.Warn("kernel DNS answers not available here; the interceptor answers every query", "err", err)
		default:
			return err
		}
	}
	a, err := agent.New(opts)
	if err != nil {
		return err
	}

	if f.admin != "off" && f.admin != "" {
		stop, err := serveAdmin(f.admin, a.Handler(), log)
		if err != nil {
			return err
		}
		defer stop()
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reloadAgent(cmd, a, f.noCapture, log)
			}
		}
	}()
	log.Info("agent starting", "node", f.nodeID, "flavor", node.Flavor, "zone", f.zone, "mesh", f.meshName, "xds", server,
		"embedded", f.resources != "", "capture", !f.noCapture, "stateDir", stateDir, "dns", opts.DNS.Listen)
	return runWithEnvoy(ctx, a, envoySup)
}

// reloadAgent re-reads the capture configuration (file, environment and
// the original flags) and the resolv.conf it names; on any error the
// running configuration stays.
func reloadAgent(cmd *cobra.Command, a *agent.Agent, noCapture bool, log *slog.Logger) {
	log.Info("SIGHUP: reloading the configuration")
	cfg, err := loadCaptureConfig(cmd)
	if err == nil {
		var plan *redirect.Plan
		plan, err = cfg.Plan(redirect.OSHost{})
		if err == nil {
			var rc dnsproxy.ResolvConf
			rc, err = readResolvConf(plan.ResolvConf)
			if err == nil {
				if noCapture {
					plan = nil
				}
				a.Reload(plan, rc.Nameservers)
				return
			}
		}
	}
	log.Error("configuration not reloaded; the running one stays", "err", err)
}

func readResolvConf(path string) (dnsproxy.ResolvConf, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return dnsproxy.ResolvConf{}, fmt.Errorf("run: read the workload's resolvers: %w", err)
	}
	rc, err := dnsproxy.ParseResolvConf(b)
	if err != nil {
		return rc, fmt.Errorf("run: %s: %w", path, err)
	}
	return rc, nil
}

// requireCurrentNetns refuses a --netns other than the namespace shunt runs
// in: the DNS interceptor must listen, and query upstreams, inside the
// workload's namespace, which a process cannot do from another one.
func requireCurrentNetns(path string) error {
	if path == "" {
		return nil
	}
	var want, self syscall.Stat_t
	if err := syscall.Stat(path, &want); err != nil {
		return fmt.Errorf("run: --netns %s: %w", path, err)
	}
	if err := syscall.Stat("/proc/self/ns/net", &self); err != nil {
		return fmt.Errorf("run: read own network namespace: %w", err)
	}
	if want.Dev != self.Dev || want.Ino != self.Ino {
		return usageErrorf("run: --netns %s is not the namespace shunt runs in; the DNS interceptor must run inside it: start the agent there (ip netns exec %s shunt run ...)", path, filepath.Base(path))
	}
	return nil
}

// dnsListen is loopback of both families when the namespace has IPv6
// loopback, IPv4 only otherwise.
func dnsListen(port uint16) []netip.AddrPort {
	out := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)}
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		_ = ln.Close()
		out = append(out, netip.AddrPortFrom(netip.IPv6Loopback(), port))
	}
	return out
}

func runVIPRanges(f runFlags) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range []string{f.vipCIDR, f.vip6CIDR} {
		if s == "" || s == "none" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, usageErrorf("run: VIP range %q: %v", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// startEmbeddedControlPlane serves the resources inside the process and
// returns the dialer the agent subscribes with: the
// embedded default takes the same xDS path as a remote one, and no port of
// its own is open to other processes.
func startEmbeddedControlPlane(ctx context.Context, f runFlags, plan *redirect.Plan, stateDir string, log *slog.Logger) (func(context.Context, string) (net.Conn, error), error) {
	tr := controlplane.DefaultTranslateOptions()
	// The proxy's listeners are where the capture sends traffic.
	tr.OutboundPort = uint32(plan.OutboundPort)
	tr.DNSTTL = f.dnsTTL
	cp, err := controlplane.New(controlplane.Options{
		ResourcesDir: f.resources,
		StateDir:     stateDir,
		VIPv4CIDR:    f.vipCIDR,
		VIPv6CIDR:    f.vip6CIDR,
		DisableIPv6:  f.vip6CIDR == "none" || f.vip6CIDR == "",
		Translate:    &tr,
		Logger:       log.With("component", "controlplane"),
	})
	if err != nil {
		return nil, fmt.Errorf("run: embedded control plane: %w", err)
	}
	dial, done := cp.ServeInProcess(ctx)
	go func() {
		if err := <-done; err != nil {
			log.Error("embedded control plane stopped", "err", err)
		}
	}()
	return dial, nil
}

func serveAdmin(addr string, h http.Handler, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("run: --admin %s: %w", addr, sockowner.Explain(err))
	}
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil && !ap.Addr().IsLoopback() {
		log.Warn("admin endpoint is not on loopback: anyone who reaches it sees the snapshot", "addr", ln.Addr())
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin endpoint stopped", "err", err)
		}
	}()
	log.Info("admin endpoint listening", "addr", ln.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// sourceStatus reports the upstream stream: the proxy's when shunt serves
// the local proxy (the client's own stream is then in-process), the
// client's otherwise.
func sourceStatus(c *xdsclient.Client, p *xdsproxy.Proxy) agent.SourceStatus {
	s := c.Status()
	out := agent.SourceStatus{
		Connected:       s.Connected,
		Reconnects:      s.Reconnects,
		LastError:       s.LastError,
		LastNACK:        s.LastNACK,
		SnapshotVersion: s.SnapshotVersion,
	}
	if p != nil {
		ps := p.Status()
		out.Connected, out.Reconnects, out.LastError = ps.Connected, ps.Reconnects, ps.LastError
		if out.LastNACK == "" && ps.LastEnvoyNACK != "" {
			out.LastNACK = "local proxy: " + ps.LastEnvoyNACK
		}
	}
	return out
}

// startXDSProxy serves the node's xDS to the local proxy on the socket
// (none with --xds-socket off) and holds the one upstream stream, state of
// the world or, with --xds-delta, incremental; it runs until ctx ends.
func startXDSProxy(ctx context.Context, f runFlags, upCfg xdsclient.Config, plan *redirect.Plan, stateDir string, log *slog.Logger) (*xdsproxy.Proxy, error) {
	pcfg := xdsproxy.Config{
		Server: upCfg.Server,
		NodeID: upCfg.NodeID,
		Logger: log.With("component", "xdsproxy"),
	}
	if f.xdsDelta {
		pcfg.DeltaUpstream = func(ctx context.Context) (xdsclient.DeltaADSStream, error) {
			return xdsclient.OpenDeltaStream(ctx, upCfg)
		}
	} else {
		pcfg.Upstream = func(ctx context.Context) (xdsclient.ADSStream, error) { return xdsclient.OpenStream(ctx, upCfg) }
	}
	p, err := xdsproxy.New(pcfg)
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	if f.xdsSocket == "off" {
		go func() { _ = p.Run(ctx) }()
		log.Info("holding a delta xDS stream for shunt alone (--xds-socket off)")
		return p, nil
	}
	path := f.xdsSocket
	if path == "" {
		if err := os.MkdirAll(stateDir, 0o755); err != nil {
			return nil, fmt.Errorf("run: state directory: %w", err)
		}
		path = xdsproxy.SocketPath(stateDir)
	}
	// The proxy's group is its UID's namesake unless the plan names one,
	// as with Kuma's 5678:5678.
	gid := plan.ProxyUID
	if plan.ProxyGID != nil {
		gid = *plan.ProxyGID
	}
	ln, err := xdsproxy.Listen(path, plan.ProxyUID, gid, log.With("component", "xdsproxy"))
	if err != nil {
		return nil, fmt.Errorf("run: --xds-socket: %w", err)
	}
	go func() { _ = p.Run(ctx) }()
	go func() {
		if err := p.Serve(ctx, ln); err != nil {
			log.Error("xDS socket stopped serving", "path", path, "err", err)
		}
	}()
	log.Info("serving xDS to the local proxy", "socket", path, "uid", plan.ProxyUID, "gid", gid)
	return p, nil
}
