//go:build !lean

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shunt-dev/shunt/envoy/bootstrap"
	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/xdsclient"
)

// envoyBootstrapFlags are the `shunt run` flags the bootstrap depends on:
// the command borrows them from run's own definitions, so that both say
// the same.
var envoyBootstrapFlags = []string{
	"xds", "xds-ca", "xds-cert", "xds-key", "xds-server-name", "xds-token-file",
	"node-id", "zone", "mesh", "state-dir", "xds-socket", "envoy-admin",
	"xds-flavor", "xds-node-metadata", "dataplane-file", "config",
}

func newEnvoyBootstrapCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "envoy-bootstrap",
		Short: "Print the Envoy bootstrap shunt run --envoy-binary writes",
		Long: `Print the Envoy v3 bootstrap for this node: ADS over gRPC (state of the
world, resource API v3, listeners and clusters from ADS) with the node id,
zone and metadata the agent sends, and Envoy's admin API on loopback.

Without --xds it points at the socket on which shunt run serves the node's
xDS to the local proxy (--xds-socket, default <state-dir>/xds.sock): the way
to run Envoy beside shunt run, which holds the node's one upstream stream.
With --xds, Envoy connects to that control plane itself, with the same TLS
files and token as the agent (the token is copied into the bootstrap: keep
the output private), for an Envoy that no shunt run serves. The output is
validated as Envoy validates its bootstrap. See docs/envoy.md.`,
		Example: `  shunt envoy-bootstrap --node-id default.web-1 --zone zone-1
  shunt envoy-bootstrap --xds cp.example:5678 --xds-ca /etc/shunt/ca.pem --xds-token-file /etc/shunt/token -o yaml > /etc/envoy/envoy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fl := cmd.Flags()
			str := func(name string) string { return fl.Lookup(name).Value.String() }
			f := runFlags{
				xds: str("xds"), xdsCA: str("xds-ca"), xdsCert: str("xds-cert"), xdsKey: str("xds-key"),
				xdsServerName: str("xds-server-name"), xdsToken: str("xds-token-file"),
				nodeID: str("node-id"), zone: str("zone"), meshName: str("mesh"),
			}
			f.envoy.admin = str("envoy-admin")
			socket := str("xds-socket")
			if output != "json" && output != "yaml" {
				return usageErrorf("envoy-bootstrap: -o %q: want json or yaml", output)
			}
			if f.xds == "" && (f.xdsCA != "" || f.xdsCert != "" || f.xdsKey != "" || f.xdsToken != "" || f.xdsServerName != "") {
				return usageErrorf("envoy-bootstrap: --xds-ca, --xds-cert, --xds-key, --xds-server-name and --xds-token-file need --xds")
			}
			if f.xds != "" && fl.Changed("xds-socket") {
				return usageErrorf("envoy-bootstrap: give --xds or --xds-socket, not both")
			}
			cfg, err := loadCaptureConfig(cmd)
			if err != nil {
				return err
			}
			if f.nodeID == "" {
				// The agent's default.
				if f.nodeID, err = os.Hostname(); err != nil {
					return fmt.Errorf("envoy-bootstrap: --node-id not given and no host name: %w", err)
				}
			}
			admin, err := checkEnvoyFlags(envoyFlags{admin: f.envoy.admin, logLevel: "info", drainTimeout: 1})
			if err != nil {
				return err
			}
			// The node as `shunt run` sends it: the flavour's metadata
			// depends on the capture plan (DNS port, IPv6).
			plan, err := cfg.Plan(redirect.OSHost{})
			if err != nil {
				return err
			}
			nf := nodeFlags{flavor: str("xds-flavor"), dataplaneFile: str("dataplane-file")}
			if nf.metadata, err = fl.GetStringArray("xds-node-metadata"); err != nil {
				return err
			}
			node, err := resolveNode(cmd, nf, f.nodeID, f.meshName, plan)
			if err != nil {
				return err
			}
			xcfg := xdsclient.Config{NodeID: node.ID, Zone: f.zone, Mesh: node.Mesh, Metadata: node.Metadata, TokenFile: f.xdsToken, TokenRaw: node.TokenRaw}
			var x bootstrap.XDS
			if f.xds != "" {
				if x, err = remoteXDS(f, xcfg); err != nil {
					return fmt.Errorf("envoy-bootstrap: %w", err)
				}
			} else {
				if socket == "off" {
					return usageErrorf("envoy-bootstrap: --xds-socket off: give --xds, the control plane Envoy connects to")
				}
				if x, err = socketXDS(socket, cfg.Get("stateDir")); err != nil {
					return fmt.Errorf("envoy-bootstrap: %w", err)
				}
			}
			bc := envoyNode(xcfg)
			bc.XDS, bc.Admin = x, admin
			b, err := bootstrap.Build(bc)
			if err != nil {
				return fmt.Errorf("envoy-bootstrap: %w", err)
			}
			var out []byte
			if output == "yaml" {
				out, err = bootstrap.YAML(b)
			} else {
				out, err = bootstrap.JSON(b)
			}
			if err != nil {
				return fmt.Errorf("envoy-bootstrap: %w", err)
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	run := newRunCommand()
	for _, name := range envoyBootstrapFlags {
		cmd.Flags().AddFlag(run.Flags().Lookup(name))
	}
	cmd.Flags().StringVarP(&output, "output", "o", "json", "output format: json or yaml")
	return cmd
}
