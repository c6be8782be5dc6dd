// Command fakeenvoy is a test double for Envoy's process contract, never
// shipped: what a supervisor sees of Envoy. It takes Envoy's command line
// (--config-path/-c, --admin-address-path, --log-level/-l, --concurrency,
// --drain-time-s, --disable-hot-restart; anything else is refused as Envoy
// refuses it), reads the bootstrap as Envoy does (JSON or YAML by
// extension, parsed with the v3 bootstrap proto, unknown fields refused,
// then validated), listens on the bootstrap's admin address and writes it to
// --admin-address-path, opens the ADS stream the bootstrap describes (Unix
// socket or TCP, TLS from files, initial metadata) and subscribes to
// clusters then listeners. /ready answers LIVE once both arrived (or
// initial_fetch_timeout passed, 15s by default, as Envoy), PRE_INITIALIZING
// or INITIALIZING before. POST /drain_listeners[?graceful] and SIGTERM/SIGINT
// behave as Envoy's: the first is acknowledged, the second exits 0.
//
// It does not proxy anything: tests/standin/meshproxy does that.
//
// Test knobs, in the environment (Envoy's protocol surface stays as is):
// FAKEENVOY_EVENTS=FILE appends "UNIXNANO PID EVENT" lines (start, ready,
// drain_listeners graceful, signal terminated, exit); FAKEENVOY_CRASH=FILE
// holding a count N>0 makes the process decrement it and die (exit status
// 3) after FAKEENVOY_CRASH_AFTER (default 100ms); FAKEENVOY_IGNORE_SIGTERM=1
// makes it ignore SIGTERM (for the SIGKILL path).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3" // typed options in the bootstrap
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

func main() {
	fs := flag.NewFlagSet("envoy", flag.ContinueOnError)
	var configPath, adminPath, logLevel string
	fs.StringVar(&configPath, "config-path", "", "bootstrap file")
	fs.StringVar(&configPath, "c", "", "bootstrap file")
	fs.StringVar(&adminPath, "admin-address-path", "", "file the admin address is written to")
	fs.StringVar(&logLevel, "log-level", "info", "log level")
	fs.StringVar(&logLevel, "l", "info", "log level")
	concurrency := fs.Int("concurrency", 0, "worker threads")
	drainTime := fs.Int("drain-time-s", 600, "drain time in seconds")
	fs.Bool("disable-hot-restart", false, "disable hot restart")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(1)
	}
	if fs.NArg() > 0 {
		fatalf("unexpected arguments %q", fs.Args())
	}
	switch logLevel {
	case "trace", "debug", "info", "warning", "warn", "error", "critical", "off":
	default:
		fatalf("error: invalid log level %q", logLevel)
	}
	if configPath == "" {
		fatalf("At least one of --config-path or --config-yaml or Options::configProto() should be non-empty")
	}
	b, err := load(configPath)
	if err != nil {
		fatalf("error initializing configuration '%s': %v", configPath, err)
	}
	f := &fake{events: os.Getenv("FAKEENVOY_EVENTS")}
	f.state.Store("PRE_INITIALIZING")
	f.event("start uid=%d gid=%d concurrency=%d drain-time-s=%d", os.Getuid(), os.Getgid(), *concurrency, *drainTime)
	logf("info", "main", "initializing epoch 0 (base id=0, hot restart disabled) node %s", b.GetNode().GetId())

	adminAddr, err := f.serveAdmin(b)
	if err != nil {
		fatalf("admin: %v", err)
	}
	if adminPath != "" {
		if err := os.WriteFile(adminPath, []byte(adminAddr+"\n"), 0o644); err != nil {
			fatalf("write admin address path %s: %v", adminPath, err)
		}
	}
	logf("info", "admin", "admin address: %s", adminAddr)
	fmt.Println("fakeenvoy: stdout is forwarded too")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.ads(ctx, b)
	go f.crash()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	for sig := range sigs {
		f.event("signal %s", sig)
		if sig == syscall.SIGTERM && os.Getenv("FAKEENVOY_IGNORE_SIGTERM") == "1" {
			logf("warning", "main", "ignoring SIGTERM as told")
			continue
		}
		logf("warning", "main", "caught %s", sig)
		logf("info", "main", "shutting down server")
		f.event("exit 0")
		os.Exit(0)
	}
}

func fatalf(format string, args ...any) {
	logf("critical", "main", format, args...)
	os.Exit(1)
}

func logf(level, logger, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s][%d][%s][%s] %s\n", time.Now().UTC().Format("2006-01-02 15:04:05.000"), os.Getpid(), level, logger, fmt.Sprintf(format, args...))
}

// load reads the bootstrap as Envoy's MessageUtil::loadFromFile: the format
// by extension, unknown fields refused, then the proto's validation rules.
func load(path string) (*bootstrapv3.Bootstrap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	switch filepath.Ext(path) {
	case ".json":
	case ".yaml", ".yml":
		if data, err = yaml.YAMLToJSON(data); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unsupported bootstrap format %q (this double reads .json and .yaml)", filepath.Ext(path))
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(data, b); err != nil {
		return nil, fmt.Errorf("unable to parse JSON as proto: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("proto constraint validation failed: %w", err)
	}
	return b, nil
}

type fake struct {
	events string
	mu     sync.Mutex
	state  atomic.Value // string
}

func (f *fake) event(format string, args ...any) {
	if f.events == "" {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fd, err := os.OpenFile(f.events, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o666)
	if err != nil {
		logf("error", "main", "events file: %v", err)
		return
	}
	defer fd.Close()
	fmt.Fprintf(fd, "%d %d %s\n", time.Now().UnixNano(), os.Getpid(), fmt.Sprintf(format, args...))
}

func (f *fake) crash() {
	path := os.Getenv("FAKEENVOY_CRASH")
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if n <= 0 {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(n-1)), 0o666); err != nil {
		logf("error", "main", "crash file: %v", err)
		return
	}
	after := 100 * time.Millisecond
	if d, err := time.ParseDuration(os.Getenv("FAKEENVOY_CRASH_AFTER")); err == nil {
		after = d
	}
	time.Sleep(after)
	logf("critical", "backtrace", "Caught Segmentation fault, suspect faulting address 0x0 (as told)")
	f.event("exit 3")
	os.Exit(3)
}

func (f *fake) serveAdmin(b *bootstrapv3.Bootstrap) (string, error) {
	sa := b.GetAdmin().GetAddress().GetSocketAddress()
	if sa == nil {
		return "", errors.New("the bootstrap has no admin socket_address (this double needs one)")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		st := f.state.Load().(string)
		if st != "LIVE" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, st)
	})
	mux.HandleFunc("/drain_listeners", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "This endpoint requires POST", http.StatusMethodNotAllowed)
			return
		}
		for k := range r.URL.Query() {
			if k != "graceful" && k != "inboundonly" && k != "skip_exit" {
				http.Error(w, "usage: /drain_listeners [graceful] [inboundonly] [skip_exit]", http.StatusBadRequest)
				return
			}
		}
		_, graceful := r.URL.Query()["graceful"]
		f.event("drain_listeners graceful=%v", graceful)
		logf("info", "admin", "draining listeners (graceful=%v)", graceful)
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "invalid path: "+r.URL.Path+" (not implemented by this double)", http.StatusNotFound)
	})
	go func() { _ = http.Serve(ln, mux) }()
	return ln.Addr().String(), nil
}

// ads runs the ADS stream the bootstrap describes until ctx ends,
// reconnecting after a second when it fails, as Envoy retries.
func (f *fake) ads(ctx context.Context, b *bootstrapv3.Bootstrap) {
	cfg := b.GetDynamicResources().GetAdsConfig()
	if cfg.GetApiType() != corev3.ApiConfigSource_GRPC || len(cfg.GetGrpcServices()) != 1 || cfg.GetGrpcServices()[0].GetEnvoyGrpc() == nil {
		fatalf("ads_config: this double implements one envoy_grpc service with api_type GRPC")
	}
	if cfg.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		fatalf("ads_config: transport_api_version must be V3")
	}
	for name, src := range map[string]*corev3.ConfigSource{"lds_config": b.GetDynamicResources().GetLdsConfig(), "cds_config": b.GetDynamicResources().GetCdsConfig()} {
		if src.GetAds() == nil || src.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			fatalf("%s: this double implements ads {} with resource_api_version V3", name)
		}
	}
	timeout := 15 * time.Second
	if d := b.GetDynamicResources().GetCdsConfig().GetInitialFetchTimeout(); d != nil {
		timeout = d.AsDuration()
	}
	if timeout > 0 {
		time.AfterFunc(timeout, func() {
			if f.state.Load() != "LIVE" {
				logf("warning", "config", "initial fetch timed out after %v; starting without configuration", timeout)
				f.live()
			}
		})
	}
	svc := cfg.GetGrpcServices()[0]
	target, opts, err := dialTarget(b, svc.GetEnvoyGrpc().GetClusterName())
	if err != nil {
		fatalf("ads_config: %v", err)
	}
	md := metadata.MD{}
	for _, h := range svc.GetInitialMetadata() {
		md.Append(h.GetKey(), h.GetValue())
	}
	for ctx.Err() == nil {
		if err := f.stream(metadata.NewOutgoingContext(ctx, md), b.GetNode(), target, opts); err != nil && ctx.Err() == nil {
			logf("warning", "config", "StreamAggregatedResources gRPC config stream to %s closed: %v", target, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (f *fake) live() {
	if f.state.Swap("LIVE") != "LIVE" {
		f.event("ready")
		logf("info", "main", "all dependencies initialized. starting workers")
	}
}

func (f *fake) stream(ctx context.Context, node *corev3.Node, target string, opts []grpc.DialOption) error {
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if f.state.Load() == "PRE_INITIALIZING" {
		f.state.Store("INITIALIZING")
	}
	// As Envoy: clusters first, listeners once the clusters arrived.
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		return err
	}
	got := map[string]bool{}
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		logf("debug", "config", "received %s version %s (%d resources)", resp.GetTypeUrl(), resp.GetVersionInfo(), len(resp.GetResources()))
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		if resp.GetTypeUrl() == resource.ClusterType && !got[resource.ClusterType] {
			if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType}); err != nil {
				return err
			}
		}
		got[resp.GetTypeUrl()] = true
		if got[resource.ClusterType] && got[resource.ListenerType] {
			f.live()
		}
	}
}

// dialTarget finds the static cluster the ADS service names and returns its
// one endpoint as a gRPC target, with TLS when the cluster has it.
func dialTarget(b *bootstrapv3.Bootstrap, name string) (string, []grpc.DialOption, error) {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != name {
			continue
		}
		eps := c.GetLoadAssignment().GetEndpoints()
		if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
			return "", nil, fmt.Errorf("cluster %s: this double implements one endpoint", name)
		}
		addr := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
		var target string
		switch {
		case addr.GetPipe() != nil:
			target = "unix://" + addr.GetPipe().GetPath()
		case addr.GetSocketAddress() != nil:
			sa := addr.GetSocketAddress()
			target = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		default:
			return "", nil, fmt.Errorf("cluster %s: unsupported address kind", name)
		}
		creds := insecure.NewCredentials()
		if ts := c.GetTransportSocket(); ts != nil {
			tc, err := clientTLS(ts)
			if err != nil {
				return "", nil, fmt.Errorf("cluster %s: %w", name, err)
			}
			creds = credentials.NewTLS(tc)
		}
		return target, []grpc.DialOption{grpc.WithTransportCredentials(creds)}, nil
	}
	return "", nil, fmt.Errorf("no static cluster named %q", name)
}

func clientTLS(ts *corev3.TransportSocket) (*tls.Config, error) {
	utc := &tlsv3.UpstreamTlsContext{}
	if ts.GetName() != "envoy.transport_sockets.tls" || ts.GetTypedConfig().UnmarshalTo(utc) != nil {
		return nil, fmt.Errorf("transport socket %s: this double implements UpstreamTlsContext only", ts.GetName())
	}
	common := utc.GetCommonTlsContext()
	cfg := &tls.Config{ServerName: utc.GetSni(), MinVersion: tls.VersionTLS12, NextProtos: common.GetAlpnProtocols()}
	vc := common.GetValidationContext()
	if ca := vc.GetTrustedCa().GetFilename(); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("trusted_ca %s: no certificate", ca)
		}
		cfg.RootCAs = pool
	} else if vc.GetSystemRootCerts() == nil {
		return nil, errors.New("validation_context: neither trusted_ca nor system_root_certs (this double never skips verification)")
	}
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		// Go checks the name it is given; the SAN matcher names the same.
		if cfg.ServerName == "" {
			cfg.ServerName = m.GetMatcher().GetExact()
		}
	}
	for _, c := range common.GetTlsCertificates() {
		cert, err := tls.LoadX509KeyPair(c.GetCertificateChain().GetFilename(), c.GetPrivateKey().GetFilename())
		if err != nil {
			return nil, err
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	return cfg, nil
}
