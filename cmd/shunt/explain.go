package main

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/redirect/engines"
)

func newExplainCommand() *cobra.Command {
	var (
		dst, src, proto, direction, iface, output string
		uid, gid                                  int
		mark                                      string
	)
	cmd := &cobra.Command{
		Use:   "explain --dst IP:PORT",
		Short: "Tell what the capture does with one packet, and why",
		Example: `  shunt explain --dst 10.0.0.5:443
  shunt explain --dst 10.0.0.5:53 --proto udp --uid 5678
  shunt explain --direction in --dst 10.1.0.2:8080 --src 10.1.0.9`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ap, err := netip.ParseAddrPort(dst)
			if err != nil {
				return usageErrorf("--dst: invalid value %q: want IP:PORT ([v6]:port for IPv6)", dst)
			}
			if proto != "tcp" && proto != "udp" {
				return usageErrorf("--proto: invalid value %q: want tcp or udp", proto)
			}
			if direction != "out" && direction != "in" {
				return usageErrorf("--direction: invalid value %q: want out or in", direction)
			}
			if err := checkOutput(output); err != nil {
				return err
			}
			pkt := redirect.Packet{Direction: redirect.Direction(direction), Proto: proto, Dst: ap, UID: uint32(uid), Iface: iface}
			if src != "" {
				if pkt.Src, err = netip.ParseAddr(src); err != nil {
					return usageErrorf("--src: invalid value %q: want an IP address", src)
				}
			}
			if gid >= 0 {
				g := uint32(gid)
				pkt.GID = &g
			}
			if mark != "" {
				m, err := strconv.ParseUint(mark, 0, 32)
				if err != nil {
					return usageErrorf("--mark: invalid value %q: want a number", mark)
				}
				pkt.Mark = uint32(m)
			}
			if pkt.Iface == "" && ap.Addr().IsLoopback() {
				pkt.Iface = "lo"
			}
			cfg, err := loadCaptureConfig(cmd)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			// The engine knows what is installed (a pod enrolled in the
			// node's eBPF programs has no record here) and whether the
			// kernel still matches it.
			st, err := redirect.LoadState(cfg.Get("stateDir"))
			if err != nil {
				return err
			}
			var plan *redirect.Plan
			if st != nil {
				plan = st.Plan
				engines.Adopt(cfg, st)
			}
			// Without an engine (none can run here) the recorded plan is
			// still explained.
			if eng, err := newEngine(cfg); err == nil {
				if s, err := eng.Status(cmd.Context()); err == nil && s.Installed {
					if plan == nil {
						plan = s.Plan
					}
					if len(s.Drift) > 0 {
						fmt.Fprintf(w, "WARNING: the live rules have drifted from the installed plan (%d differences; see `shunt status`): the kernel may not do what follows.\n", len(s.Drift))
					}
				}
			}
			if plan == nil {
				fmt.Fprintln(w, "note: capture is not installed here; explaining the plan the current configuration would install.")
				if plan, err = cfg.Plan(redirect.OSHost{}); err != nil {
					return err
				}
			}
			v := plan.Explain(pkt)
			if output == "json" {
				return writeJSON(w, v)
			}
			fmt.Fprintln(w, v)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dst, "dst", "", "destination IP:PORT of the packet (required)")
	f.StringVar(&src, "src", "", "source IP (inbound exclusions, the 127.0.0.6 passthrough source)")
	f.StringVar(&proto, "proto", "tcp", "tcp or udp")
	f.StringVar(&direction, "direction", "out", "out (sent by the workload) or in (received)")
	f.IntVar(&uid, "uid", 0, "UID of the sending process (outbound)")
	f.IntVar(&gid, "gid", -1, "GID of the sending process (outbound)")
	f.StringVar(&mark, "mark", "", "socket mark of the sender")
	f.StringVar(&iface, "iface", "", "interface the packet leaves (out) or arrives on (in); lo for local traffic")
	outputFlag(cmd, &output)
	_ = cmd.MarkFlagRequired("dst")
	captureFlags(cmd)
	return cmd
}
