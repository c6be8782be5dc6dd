package main

import (
	"fmt"
	"os"
	"path/filepath"

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
	"node-id", "zone", "mesh", "state-dir", "envoy-admin",
	"xds-flavor", "xds-node-metadata", "dataplane-file",
}

func newEnvoyBootstrapCommand() *cobra.Command {
	var output, socket string
	cmd := &cobra.Command{
		Use:   "envoy-bootstrap",
		Short: "Print the Envoy bootstrap shunt run --envoy-binary writes",
		Long: `Print the Envoy v3 bootstrap for this node: ADS over gRPC (state of the
world, resource API v3, listeners and clusters from ADS) with the node id,
zone and metadata the agent sends, and Envoy's admin API on loopback.

With --xds the bootstrap points at that control plane with the same TLS
files and token as the agent (the token is copied into the bootstrap: keep
the output private). Without it, it points at shunt's local xDS socket
(--xds-socket, default <state-dir>/xds.sock). The output is validated as
Envoy validates its bootstrap. See docs/envoy.md.`,
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
			// The node as `shunt run` would send it: the same flavour,
			// metadata and token form.
			plan, err := cfg.Plan(redirect.OSHost{})
			if err != nil {
				return err
			}
			f.node.flavor = str("xds-flavor")
			f.node.dataplaneFile = str("dataplane-file")
			if f.node.metadata, err = fl.GetStringArray("xds-node-metadata"); err != nil {
				return err
			}
			node, err := resolveNode(cmd, f.node, f.nodeID, f.meshName, plan)
			if err != nil {
				return err
			}
			xcfg := xdsclient.Config{NodeID: node.ID, Zone: f.zone, Mesh: node.Mesh, TokenFile: f.xdsToken,
				Metadata: node.Metadata, TokenRaw: node.TokenRaw}
			var x bootstrap.XDS
			if f.xds != "" {
				if x, err = remoteXDS(f, xcfg); err != nil {
					return fmt.Errorf("envoy-bootstrap: %w", err)
				}
			} else {
				if socket == "" {
					socket = envoyXDSSocket(cfg.Get("stateDir"))
				}
				if x.Pipe, err = filepath.Abs(socket); err != nil {
					return fmt.Errorf("envoy-bootstrap: --xds-socket %s: %w", socket, err)
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
	cmd.Flags().StringVar(&socket, "xds-socket", "", "without --xds: shunt's local xDS socket (default <state-dir>/xds.sock)")
	cmd.Flags().StringVarP(&output, "output", "o", "json", "output format: json or yaml")
	return cmd
}
