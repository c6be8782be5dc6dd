// Command meshproxy is a test double for Envoy in shunt's end-to-end tests,
// never shipped. Like Envoy it is started with --config-path and a v3
// bootstrap (node, the xDS cluster, ADS, admin) and takes everything else
// from the xDS it receives over ADS: listeners, clusters, endpoints and SDS
// secrets. It implements exactly the Envoy semantics shunt's control plane
// emits (fields.go lists them, with where each is honoured) and NACKs, with
// the field's path, any resource that sets anything else, so nothing reaches
// a real Envoy that no test ran.
//
// Every connection is logged as "conn ... cluster=... upstream=... tls=..."
// so that tests can prove a connection really went through it.
package main

import (
	"context"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

var pemDecode = pem.Decode

type proxy struct {
	node      *corev3.Node
	nodeOnce  bool // set_node_on_first_message_only
	xdsTarget string

	mu      sync.Mutex
	state   xdsState
	haveLDS bool
	haveCDS bool
	ready   bool
	rt      atomic.Pointer[runtime]

	bindMu sync.Mutex
	bound  map[string]*bound
}

func main() {
	configPath := flag.String("config-path", "", "Envoy v3 bootstrap (JSON or YAML)")
	printFields := flag.Bool("print-fields", false, "print the table of implemented fields (docs/xds.md) and exit")
	// The rest of the command line shunt's supervisor gives Envoy.
	adminPath := flag.String("admin-address-path", "", "write the admin address here once it listens")
	_ = flag.Bool("disable-hot-restart", false, "accepted: the double has no hot restart")
	_ = flag.Int("drain-time-s", 0, "accepted: /drain_listeners closes the listeners; open connections run to their end")
	logLevel := flag.String("log-level", "info", "trace, debug, info, warning, warn, error, critical or off (the double logs connections and xDS at info)")
	_ = flag.Int("concurrency", 0, "accepted: the double serves every connection on its own goroutine")
	flag.Parse()
	switch *logLevel {
	case "trace", "debug", "info", "warning", "warn", "error", "critical", "off":
	default:
		log.Fatalf("--log-level %q: not a level", *logLevel)
	}
	if *printFields {
		fmt.Print(fieldTable())
		return
	}
	if *configPath == "" {
		log.Fatal("--config-path is required")
	}
	b, err := os.ReadFile(*configPath)
	if err != nil {
		log.Fatal(err)
	}
	p, admin, err := fromBootstrap(b)
	if err != nil {
		log.Fatalf("bootstrap %s: %v", *configPath, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if admin != "" {
		go p.serveAdmin(ctx, admin, *adminPath, stop)
	}
	p.subscribe(ctx)
}

// fromBootstrap reads the bootstrap: the node, and the one cluster ADS
// goes to (a TCP address or a Unix socket).
func fromBootstrap(b []byte) (*proxy, string, error) {
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, "", err
	}
	bs := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, bs); err != nil {
		return nil, "", err
	}
	if err := checkFields(bs, "bootstrap", merged(bootstrapOnly)); err != nil {
		return nil, "", err
	}
	if err := bs.ValidateAll(); err != nil {
		return nil, "", err
	}
	ads := bs.GetDynamicResources().GetAdsConfig()
	if ads == nil {
		return nil, "", errNoADS
	}
	if ads.GetApiType() != corev3.ApiConfigSource_GRPC || ads.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		return nil, "", fmt.Errorf("dynamic_resources.ads_config: api_type GRPC and transport_api_version V3 are implemented, not %s %s", ads.GetApiType(), ads.GetTransportApiVersion())
	}
	for name, cs := range map[string]*corev3.ConfigSource{"lds_config": bs.GetDynamicResources().GetLdsConfig(), "cds_config": bs.GetDynamicResources().GetCdsConfig()} {
		if cs == nil || cs.GetAds() == nil {
			return nil, "", fmt.Errorf("dynamic_resources.%s: only ads is implemented", name)
		}
	}
	if len(ads.GetGrpcServices()) != 1 || ads.GetGrpcServices()[0].GetEnvoyGrpc() == nil {
		return nil, "", errors.New("dynamic_resources.ads_config.grpc_services: one envoy_grpc is implemented")
	}
	want := ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()
	p := &proxy{node: bs.GetNode(), nodeOnce: ads.GetSetNodeOnFirstMessageOnly(), bound: map[string]*bound{}}
	p.rt.Store(&runtime{})
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() != want {
			return nil, "", fmt.Errorf("static_resources.clusters %s: only the xDS cluster is implemented", c.GetName())
		}
		eps := c.GetLoadAssignment().GetEndpoints()
		if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
			return nil, "", fmt.Errorf("static_resources.clusters %s: one endpoint is implemented", want)
		}
		a := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
		switch {
		case a.GetPipe() != nil:
			p.xdsTarget = "unix:" + a.GetPipe().GetPath()
		case a.GetSocketAddress() != nil:
			p.xdsTarget = net.JoinHostPort(a.GetSocketAddress().GetAddress(), strconv.Itoa(int(a.GetSocketAddress().GetPortValue())))
		}
	}
	if p.xdsTarget == "" {
		return nil, "", fmt.Errorf("static_resources: no cluster %s for ads_config", want)
	}
	admin := ""
	if sa := bs.GetAdmin().GetAddress().GetSocketAddress(); sa != nil {
		admin = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	}
	return p, admin, nil
}
