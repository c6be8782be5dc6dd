//go:build !lean

package main

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"

	"github.com/shunt-dev/shunt/nodemeta"
	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/sockowner"
)

// nodeFlags say who the node is to the control plane: the flavour of
// control plane and the metadata it wants.
type nodeFlags struct {
	flavor        string
	metadata      []string
	dataplaneFile string
}

func addNodeFlags(fl *pflag.FlagSet, f *nodeFlags) {
	fl.StringVar(&f.flavor, "xds-flavor", "auto", `control plane kind, for the node metadata and token it wants: "generic" (shunt's own, any go-control-plane server), "kuma" (kuma-cp: kuma-dp's metadata, raw dataplane token), "istio" (istiod: DNS capture switches); "auto" detects kuma from --dataplane-file or a node id "<mesh>.<name>", istio from a node id "sidecar~IP~POD.NS~DOMAIN"`)
	fl.StringArrayVar(&f.metadata, "xds-node-metadata", nil, `node metadata KEY=VALUE (a string) or KEY:=JSON (typed, e.g. features:='["feature-embedded-dns"]'); repeatable, replaces the flavour's key of the same name; the config file's xdsNodeMetadata map is read first`)
	fl.StringVar(&f.dataplaneFile, "dataplane-file", "", "Kuma Dataplane resource (YAML, as kumactl apply takes it) sent to kuma-cp as dataplane.resource, its transparentProxying filled from the capture ports; sets the node id <mesh>.<name>")
}

// xdsNode is what the xDS client (and a local Envoy's bootstrap) send.
type xdsNode struct {
	ID, Mesh string
	Flavor   nodemeta.Flavor
	Metadata *structpb.Struct
	// TokenRaw sends the token as the whole authorization value, as kuma-cp
	// wants dataplane tokens.
	TokenRaw bool
}

// resolveNode works out the node's identity and metadata from the flags,
// the config file and the capture plan.
func resolveNode(cmd *cobra.Command, f nodeFlags, nodeID, meshName string, plan *redirect.Plan) (xdsNode, error) {
	flavor, err := nodemeta.ParseFlavor(f.flavor)
	if err != nil {
		return xdsNode{}, usageErrorf("run: --xds-flavor: %v", err)
	}
	var dp *nodemeta.Dataplane
	if f.dataplaneFile != "" {
		b, err := os.ReadFile(f.dataplaneFile)
		if err != nil {
			return xdsNode{}, fmt.Errorf("run: --dataplane-file: %w", err)
		}
		if dp, err = nodemeta.ParseDataplane(b); err != nil {
			return xdsNode{}, fmt.Errorf("run: --dataplane-file %s: %w", f.dataplaneFile, err)
		}
		if flavor != "" && flavor != nodemeta.Kuma {
			return xdsNode{}, usageErrorf("run: --dataplane-file is a Kuma Dataplane: it needs --xds-flavor kuma, not %s", flavor)
		}
		if cmd.Flags().Changed("node-id") && nodeID != dp.NodeID() {
			return xdsNode{}, usageErrorf("run: --node-id %q: the Dataplane in %s is node %q (<mesh>.<name>)", nodeID, f.dataplaneFile, dp.NodeID())
		}
		if cmd.Flags().Changed("mesh") && meshName != dp.Mesh {
			return xdsNode{}, usageErrorf("run: --mesh %q: the Dataplane in %s is in mesh %q", meshName, f.dataplaneFile, dp.Mesh)
		}
		nodeID, meshName = dp.NodeID(), dp.Mesh
	}
	if flavor == "" {
		flavor = nodemeta.Detect(nodeID, meshName, dp != nil)
	}
	extra, err := configNodeMetadata(cmd)
	if err != nil {
		return xdsNode{}, err
	}
	for _, a := range f.metadata {
		k, v, err := nodemeta.ParseAssignment(a)
		if err != nil {
			return xdsNode{}, usageErrorf("run: --xds-node-metadata: %v", err)
		}
		extra[k] = v
	}
	ipv6 := plan.IPFamily == redirect.FamilyDual && len(dnsListen(plan.DNSPort)) > 1
	if dp != nil {
		if err := dp.SetTransparentProxy(plan.InboundPort, plan.OutboundPort, ipv6); err != nil {
			return xdsNode{}, fmt.Errorf("run: --dataplane-file %s: %w", f.dataplaneFile, err)
		}
	}
	// kuma-cp learns the local Envoy's admin port (kuma-dp's default,
	// 9901, is also --envoy-admin's).
	var admin uint16
	if fl := cmd.Flags().Lookup("envoy-admin"); fl != nil {
		if ap, err := netip.ParseAddrPort(fl.Value.String()); err == nil {
			admin = ap.Port()
		}
	}
	md, err := nodemeta.Build(nodemeta.Options{
		Flavor: flavor,
		Mesh:   meshName,
		Kuma:   nodemeta.KumaOptions{DNSPort: plan.DNSPort, AdminPort: admin, Dataplane: dp, IPv6Enabled: ipv6},
		// shunt always answers DNS itself, so it asks istiod for the
		// tables and for VIPs of ServiceEntries without addresses.
		Istio: nodemeta.IstioOptions{DNSCapture: true, AutoAllocate: true},
		Extra: extra,
	})
	if err != nil {
		return xdsNode{}, fmt.Errorf("run: %w", err)
	}
	return xdsNode{ID: nodeID, Mesh: meshName, Flavor: flavor, Metadata: md, TokenRaw: flavor == nodemeta.Kuma}, nil
}

// configNodeMetadata reads the config file's xdsNodeMetadata map (values of
// any type).
func configNodeMetadata(cmd *cobra.Command) (map[string]*structpb.Value, error) {
	file, _ := cmd.Flags().GetString("config")
	if !cmd.Flags().Changed("config") {
		file = os.Getenv("SHUNT_CONFIG")
	}
	out := map[string]*structpb.Value{}
	if file == "" {
		return out, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	var doc struct {
		Meta map[string]any `yaml:"xdsNodeMetadata"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", file, err)
	}
	m, err := nodemeta.FromMap(doc.Meta)
	if err != nil {
		return nil, fmt.Errorf("config %s: xdsNodeMetadata: %w", file, err)
	}
	return m, nil
}

// checkDNSPortFree refuses to start when kuma-dp's DNS server (kuma-dp
// itself, or the CoreDNS it starts) or an Envoy that kuma-cp gave its UDP
// kuma:dns listener holds the DNS interceptor's port: Kuma uses the same
// default port, and shunt replaces kuma-dp's DNS, it never runs beside it.
// Any other holder is left to the agent, which names it, keeps the pod's
// DNS failing closed and takes the port once it is free.
func checkDNSPortFree(port uint16) error {
	for _, proto := range []string{"udp", "tcp"} {
		holders, err := sockowner.Proc("/proc").Find(proto, port)
		if err != nil {
			// Only a better message is lost: the agent still reports
			// the clash.
			continue
		}
		for _, h := range holders {
			switch h.Comm {
			case "kuma-dp", "coredns", "envoy":
				return fmt.Errorf("run: DNS port %d is held by %s: shunt replaces kuma-dp's DNS server and never runs beside it; "+
					"run kuma-dp without its DNS (kuma-dp run --dns-enabled=false) and give the Dataplane's Envoy the embedded-DNS "+
					"feature (shunt's default for --xds-flavor kuma), or give shunt another --dns-port", port, h)
			}
		}
	}
	return nil
}
