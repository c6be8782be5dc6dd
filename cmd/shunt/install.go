package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/engines"
	"github.com/shunt-dev/shunt/redirect/validate"
)

// newEngine returns the engine the configuration asks for (see
// redirect/engines: with auto, the log says which and why).
func newEngine(cfg *redirect.Config) (redirect.Engine, error) {
	eng, _, err := engines.New(cfg, slog.Default())
	return eng, err
}

func newInstallCommand() *cobra.Command {
	var dryRun, validateCapture bool
	var output string
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install traffic capture in a network namespace",
		Long: `Install the kernel rules that send the workload's inbound and outbound TCP to
the proxy and its DNS to shunt's interceptor. Installing again with the same
configuration changes nothing; with a changed one, shunt's rules are replaced
atomically. On failure the rules are left as they were.`,
		Example: `  shunt install
  shunt install --netns /run/netns/pod1 --exclude-outbound-ports 22 --redirect-all-dns
  SHUNT_PROXY_UID=envoy shunt install --config /etc/shunt/capture.yaml --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			cfg, err := loadCaptureConfig(cmd)
			if err != nil {
				return err
			}
			plan, err := cfg.Plan(redirect.OSHost{})
			if err != nil {
				return err
			}
			eng, err := newEngine(cfg)
			if err != nil {
				return err
			}
			if dryRun {
				return printDryRun(cmd.Context(), cmd.OutOrStdout(), eng, plan, output)
			}
			// The interceptor's upstreams are the original nameservers,
			// whatever later rewrites /etc/resolv.conf. The copy is
			// written while the engine installs and kept if it succeeds.
			resolv := redirect.PrepareResolvConf(cfg.Get("stateDir"), cfg.ResolvConfPath(redirect.OSHost{}))
			if err := eng.Install(cmd.Context(), plan); err != nil {
				resolv.Abort()
				return err
			}
			if err := resolv.Commit(); err != nil {
				return err
			}
			slog.Info("capture installed", "engine", eng.Name(), "netns", cfg.Get("netns"), "stateDir", cfg.Get("stateDir"))
			if validateCapture {
				res, err := validate.Outbound(cmd.Context(), plan, validate.Options{NetnsPath: cfg.Get("netns")})
				if err != nil {
					return fmt.Errorf("capture installed but not working: %w", err)
				}
				slog.Info("capture validated", "probe", res.Probe, "listener", res.Listener, "originalDst", res.OriginalDst)
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), map[string]any{"installed": true, "engine": eng.Name(), "plan": plan})
			}
			return nil
		},
	}
	captureFlags(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be applied (iptables: the iptables-restore input of each family; nftables: the nft -f input of its one batch) and change nothing")
	cmd.Flags().BoolVar(&validateCapture, "validate", false, "after installing, prove outbound capture works with a probe connection redirected to the outbound port (run before the proxy starts; exit 1 if it is not redirected)")
	outputFlag(cmd, &output)
	return cmd
}

// recordedEngine returns the engine holding the capture recorded in the
// state directory (the configured one when nothing is recorded), and the
// record: status, explain and uninstall act on what was installed.
func recordedEngine(cfg *redirect.Config) (redirect.Engine, *redirect.State, error) {
	return engines.Recorded(cfg, slog.Default())
}

// outputFlag registers -o/--output, checked by checkOutput.
func outputFlag(cmd *cobra.Command, output *string) {
	cmd.Flags().StringVarP(output, "output", "o", "text", "output format: text or json")
}

func checkOutput(output string) error {
	if output != "text" && output != "json" {
		return usageErrorf("-o: invalid value %q: want text or json", output)
	}
	return nil
}

func printDryRun(ctx context.Context, w io.Writer, eng redirect.Engine, plan *redirect.Plan, output string) error {
	out, err := eng.Render(ctx, plan)
	if err != nil {
		return err
	}
	if output == "json" {
		return writeJSON(w, map[string]any{"engine": eng.Name(), "plan": plan, "render": out})
	}
	printSections(w, out)
	return nil
}

func printSections(w io.Writer, out map[string]string) {
	keys := make([]string, 0, len(out))
	for k := range out {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "# %s\n%s", k, out[k])
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newUninstallCommand() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the traffic capture shunt installed",
		Long: `Remove exactly what install added: shunt's chains and its marked rules in the
built-in chains. Rules shunt did not create are left alone.`,
		Example: `  shunt uninstall
  shunt uninstall --netns /run/netns/pod1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadCaptureConfig(cmd)
			if err != nil {
				return err
			}
			eng, _, err := recordedEngine(cfg)
			if err != nil {
				return err
			}
			if dryRun {
				r, ok := eng.(redirect.UninstallRenderer)
				if !ok {
					return fmt.Errorf("uninstall --dry-run is not supported by the %s engine", eng.Name())
				}
				out, err := r.RenderUninstall(cmd.Context())
				if err != nil {
					return err
				}
				printSections(cmd.OutOrStdout(), out)
				return nil
			}
			err = eng.Uninstall(cmd.Context())
			if errors.Is(err, redirect.ErrNotInstalled) {
				slog.Info("nothing to uninstall", "stateDir", cfg.Get("stateDir"))
				return nil
			}
			if err == nil {
				slog.Info("capture removed", "engine", eng.Name())
			}
			return err
		},
	}
	captureFlags(cmd, "netns", "stateDir", "engine", "iptablesBackend", "cgroup", "bpfPinDir")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be removed and change nothing")
	return cmd
}

func newStatusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the installed capture and whether its rules drifted",
		Long: `Show the engine, backend, plan and shunt's rules with their counters.
Exit status: 0 installed and matching, 3 drifted (a rule was changed or removed
by someone else), 4 not installed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			cfg, err := loadCaptureConfig(cmd)
			if err != nil {
				return err
			}
			eng, _, err := recordedEngine(cfg)
			if err != nil {
				return err
			}
			s, err := eng.Status(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				if err := writeJSON(cmd.OutOrStdout(), s); err != nil {
					return err
				}
			} else {
				printStatus(cmd.OutOrStdout(), s)
			}
			switch {
			case !s.Installed && len(s.Drift) == 0:
				return &exitError{code: 4}
			case len(s.Drift) > 0:
				return &exitError{code: 3}
			}
			return nil
		},
	}
	captureFlags(cmd, "netns", "stateDir", "engine", "cgroup", "bpfPinDir")
	outputFlag(cmd, &output)
	return cmd
}

func printStatus(w io.Writer, s *redirect.Status) {
	if !s.Installed {
		fmt.Fprintln(w, "capture: not installed")
	} else {
		fmt.Fprintf(w, "capture: installed\nengine:  %s\n", s.Engine)
		if s.Backend != "" {
			fmt.Fprintf(w, "backend: %s\n", s.Backend)
		}
	}
	if p := s.Plan; p != nil {
		fmt.Fprintf(w, "plan:\n  proxy uid %d", p.ProxyUID)
		if p.ProxyGID != nil {
			fmt.Fprintf(w, ", gid %d", *p.ProxyGID)
		}
		fmt.Fprintf(w, "\n  outbound tcp -> :%d\n", p.OutboundPort)
		if p.CaptureInbound {
			fmt.Fprintf(w, "  inbound tcp -> :%d\n", p.InboundPort)
		} else {
			fmt.Fprintln(w, "  inbound: not captured")
		}
		switch p.DNSMode {
		case redirect.DNSNone:
			fmt.Fprintln(w, "  dns: not captured")
		case redirect.DNSAll:
			fmt.Fprintf(w, "  dns (all port 53) -> :%d\n", p.DNSPort)
		default:
			fmt.Fprintf(w, "  dns to %s -> :%d (from %s)\n", joinAddrs(p.DNSServers), p.DNSPort, p.ResolvConf)
		}
		if p.Egress != nil {
			fmt.Fprintf(w, "  egress: locked down to %d allowed prefixes and %d mesh CIDRs\n", len(p.Egress.Allowed), len(p.MeshCIDRs))
		}
		if t := p.InboundTProxy; t != nil {
			fmt.Fprintf(w, "  inbound by TPROXY: mark %#x, route table %d\n", t.Mark, t.RouteTable)
		}
		for _, f := range p.Features() {
			if f.Key != "inboundMode" && f.Key != "excludeInterfaces" {
				fmt.Fprintf(w, "  %s: %s\n", f.Key, f.Value)
			}
		}
	}
	for _, n := range s.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if len(s.Drift) > 0 {
		fmt.Fprintln(w, "DRIFT: the live rules differ from what was installed:")
		for _, d := range s.Drift {
			fmt.Fprintf(w, "  %s\n", d)
		}
	}
	for _, sec := range s.Sections {
		fmt.Fprintf(w, "%s:\n", sec.Name)
		for _, l := range sec.Lines {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
}

func joinAddrs[T fmt.Stringer](l []T) string {
	s := make([]string, len(l))
	for i, a := range l {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
