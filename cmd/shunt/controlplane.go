//go:build !lean

package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/credentials"

	"github.com/shunt-dev/shunt/controlplane"
	"github.com/shunt-dev/shunt/mesh"
)

type cpFlags struct {
	resources    string
	listen       string
	tlsCert      string
	tlsKey       string
	clientCA     string
	stateDir     string
	vipCIDR      string
	vip6CIDR     string
	poll         time.Duration
	outboundPort uint32
	dnsAddress   string
	dnsTTL       time.Duration
	systemCA     string
	check        bool
	allowUnauth  bool
}

func newControlPlaneCommand() *cobra.Command {
	var f cpFlags
	def := controlplane.DefaultTranslateOptions()
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Serve mesh resources over xDS",
		Long: `Serve ExternalService, Mesh, ZoneEgress and Secret resources from a directory
to Envoy proxies and shunt agents over ADS. Changed files are applied within
a second; a broken file is reported and the last good version stays.

See docs/controlplane.md and docs/resources.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runControlPlane(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.resources, "resources", "", "directory of resource files (*.yaml, *.yml; read recursively)")
	fl.StringVar(&f.listen, "listen", controlplane.DefaultListenAddress, "address to serve ADS on")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "serve TLS with this PEM certificate (needs --tls-key)")
	fl.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fl.StringVar(&f.clientCA, "client-ca", "", "require client certificates signed by this PEM CA (needs --tls-cert); each must name (CN, DNS or URI SAN) the node id it asks for")
	fl.StringVar(&f.stateDir, "state-dir", "/var/lib/shunt/controlplane", "directory keeping VIP assignments across restarts (empty: keep them in memory)")
	fl.StringVar(&f.vipCIDR, "vip-cidr", mesh.DefaultVIPv4CIDR, "IPv4 range of VIPs")
	fl.StringVar(&f.vip6CIDR, "vip6-cidr", mesh.DefaultVIPv6CIDR, `IPv6 range of VIPs ("none" to give names IPv4 VIPs only)`)
	fl.DurationVar(&f.poll, "poll-interval", controlplane.DefaultPollInterval, "how often to check the resources directory for changes")
	fl.Uint32Var(&f.outboundPort, "outbound-port", def.OutboundPort, "port of the proxy's outbound capture listener")
	fl.StringVar(&f.dnsAddress, "dns-address", def.DNSAddress.String(), "address of the proxy's DNS filter listener")
	fl.DurationVar(&f.dnsTTL, "dns-ttl", def.DNSTTL, "TTL of DNS answers for mesh names")
	fl.StringVar(&f.systemCA, "system-ca-file", def.SystemCAFile, "CA bundle, on the proxy's host, verifying TLS ExternalServices without caCert (empty: do not verify them)")
	fl.BoolVar(&f.check, "check", false, "validate the resources, print names and VIPs, and exit")
	fl.BoolVar(&f.allowUnauth, "allow-unauthenticated", false, "serve a non-loopback --listen without client certificates (anyone who reaches it gets every node's configuration, private keys included)")
	return cmd
}

func cpUsageErrorf(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func runControlPlane(cmd *cobra.Command, f cpFlags) error {
	if f.resources == "" {
		return cpUsageErrorf("controlplane: --resources is required")
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return cpUsageErrorf("controlplane: --tls-cert and --tls-key go together")
	}
	if f.clientCA != "" && f.tlsCert == "" {
		return cpUsageErrorf("controlplane: --client-ca needs --tls-cert and --tls-key")
	}
	if f.outboundPort == 0 || f.outboundPort > 65535 {
		return cpUsageErrorf("controlplane: --outbound-port %d out of range", f.outboundPort)
	}
	dnsAddr, err := netip.ParseAddrPort(f.dnsAddress)
	if err != nil {
		return cpUsageErrorf("controlplane: --dns-address: %v", err)
	}
	tr := controlplane.TranslateOptions{
		OutboundPort:   f.outboundPort,
		DNSAddress:     dnsAddr,
		DNSTTL:         f.dnsTTL,
		SystemCAFile:   f.systemCA,
		ConnectTimeout: controlplane.DefaultTranslateOptions().ConnectTimeout,
	}
	opts := controlplane.Options{
		ResourcesDir: f.resources,
		StateDir:     f.stateDir,
		VIPv4CIDR:    f.vipCIDR,
		VIPv6CIDR:    f.vip6CIDR,
		DisableIPv6:  f.vip6CIDR == "none" || f.vip6CIDR == "",
		PollInterval: f.poll,
		Translate:    &tr,
		Logger:       slog.Default(),
	}
	if f.check {
		// Checking must not move the VIPs of a running control plane.
		opts.StateDir = ""
	}
	if !f.check {
		if err := controlplane.CheckListen(f.listen, controlplane.ListenPolicy{TLS: f.tlsCert != "", ClientCerts: f.clientCA != "", AllowUnauthenticated: f.allowUnauth}); err != nil {
			return cpUsageErrorf("controlplane: --listen: %v", err)
		}
		// With client certificates, each names the nodes it may be.
		opts.RequireNodeIdentity = f.clientCA != ""
		if f.clientCA == "" {
			slog.Warn("serving without client certificates: every process that reaches the port can ask for any node's configuration, private keys included", "listen", f.listen)
		}
	}
	if f.tlsCert != "" && !f.check {
		creds, err := cpServerTLS(f.tlsCert, f.tlsKey, f.clientCA)
		if err != nil {
			return err
		}
		opts.Credentials = creds
	}
	srv, err := controlplane.New(opts)
	if err != nil {
		return err
	}
	if f.check {
		return cpPrintVIPs(cmd, srv)
	}

	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("controlplane: listen on %s: %w", f.listen, err)
	}
	return srv.Serve(cmd.Context(), lis)
}

func cpPrintVIPs(cmd *cobra.Command, srv *controlplane.Server) error {
	vips := srv.VIPs()
	names := make([]string, 0, len(vips.V4))
	for n := range vips.V4 {
		names = append(names, n)
	}
	sort.Strings(names)
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "resources valid, version %s\n", srv.Version())
	for _, n := range names {
		v6 := "-"
		if a, ok := vips.V6[n]; ok {
			v6 = a.String()
		}
		fmt.Fprintf(out, "%s\t%s\t%s\n", n, vips.V4[n], v6)
	}
	return nil
}

// cpServerTLS loads the serving certificate and, for mutual TLS, the CA that
// client certificates must chain to.
func cpServerTLS(certFile, keyFile, clientCAFile string) (credentials.TransportCredentials, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("controlplane: load TLS certificate %s: %w", certFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("controlplane: read client CA %s: %w", clientCAFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("controlplane: client CA %s: no PEM certificate", clientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(cfg), nil
}
