//go:build !lean

package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/shunt-dev/shunt/envoy/bootstrap"
	"github.com/shunt-dev/shunt/envoy/supervisor"
	"github.com/shunt-dev/shunt/mesh"
	"github.com/shunt-dev/shunt/redirect"
	"github.com/shunt-dev/shunt/wire"
	"github.com/shunt-dev/shunt/xdsclient"
	"github.com/shunt-dev/shunt/xdsproxy"
)

// envoyFlags are `shunt run`'s flags for the Envoy it runs itself.
type envoyFlags struct {
	binary       string
	admin        string
	logLevel     string
	concurrency  int
	drainTimeout time.Duration
}

func addEnvoyFlags(cmd *cobra.Command, f *envoyFlags) {
	fl := cmd.Flags()
	fl.StringVar(&f.binary, "envoy-binary", "", "run and supervise this Envoy binary as the proxy user, with a bootstrap for the same control plane and node (default: the proxy is run by someone else)")
	fl.StringVar(&f.admin, "envoy-admin", bootstrap.DefaultAdmin.String(), "Envoy's admin address (loopback only)")
	fl.StringVar(&f.logLevel, "envoy-log-level", "info", "Envoy's log level: trace, debug, info, warning, error, critical or off")
	fl.IntVar(&f.concurrency, "envoy-concurrency", 0, "Envoy's worker threads (0: Envoy's default, one per core)")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", 5*time.Second, "on shutdown, how long Envoy's listeners drain before SIGTERM (SIGKILL 5s later)")
}

// envoyNode is the node Envoy presents: the agent's own, from the config
// its xDS client sends (id, cluster, zone, typed metadata), so that the
// control plane sees one node whichever of the two it serves.
func envoyNode(x xdsclient.Config) bootstrap.Config {
	md := x.Metadata
	if md == nil {
		// What the client sends without metadata.
		m := x.Mesh
		if m == "" {
			m = mesh.DefaultMesh
		}
		md = &structpb.Struct{Fields: map[string]*structpb.Value{xdsclient.MetadataMesh: structpb.NewStringValue(m)}}
	}
	return bootstrap.Config{NodeID: x.NodeID, Cluster: x.Cluster, Zone: x.Zone, Metadata: proto.Clone(md).(*structpb.Struct)}
}

// authorization is the authorization header value the agent's client
// sends for x: "Bearer TOKEN", or the token alone (TokenRaw, Kuma).
func authorization(x xdsclient.Config) (string, error) {
	if x.TokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(x.TokenFile)
	if err != nil {
		return "", fmt.Errorf("--xds-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--xds-token-file %s: empty", x.TokenFile)
	}
	if !x.TokenRaw {
		tok = "Bearer " + tok
	}
	return tok, nil
}

// envoyXDS says where the Envoy shunt runs gets its configuration: the
// socket on which shunt serves the node's xDS to the local proxy
// (--xds-socket, default xdsproxy.SocketPath), since shunt holds the node's
// one upstream stream, which a control plane such as kuma-cp allows per
// node. With --xds-socket off, Envoy connects to the remote --xds itself,
// with the agent's TLS files and token.
func envoyXDS(f runFlags, x xdsclient.Config, stateDir string) (bootstrap.XDS, error) {
	if f.xdsSocket != "off" {
		return socketXDS(f.xdsSocket, stateDir)
	}
	return remoteXDS(f, x)
}

// socketXDS is the local xDS socket, as an absolute path (Envoy's pipe).
func socketXDS(path, stateDir string) (bootstrap.XDS, error) {
	if path == "" {
		path = xdsproxy.SocketPath(stateDir)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return bootstrap.XDS{}, fmt.Errorf("--xds-socket %s: %w", path, err)
	}
	return bootstrap.XDS{Pipe: abs}, nil
}

// remoteXDS is the remote control plane over TCP with the agent's TLS
// files and token. The token is copied into the bootstrap: Envoy sends it
// as initial metadata and cannot re-read a file.
func remoteXDS(f runFlags, x xdsclient.Config) (bootstrap.XDS, error) {
	out := bootstrap.XDS{Address: f.xds}
	if f.xdsCA != "" || f.xdsCert != "" {
		t := &bootstrap.TLS{ServerName: f.xdsServerName}
		var err error
		for _, p := range []struct {
			flag string
			in   string
			out  *string
		}{{"--xds-ca", f.xdsCA, &t.CAFile}, {"--xds-cert", f.xdsCert, &t.CertFile}, {"--xds-key", f.xdsKey, &t.KeyFile}} {
			if p.in == "" {
				continue
			}
			if *p.out, err = filepath.Abs(p.in); err != nil {
				return out, fmt.Errorf("%s %s: %w", p.flag, p.in, err)
			}
		}
		out.TLS = t
	}
	auth, err := authorization(x)
	if err != nil {
		return out, err
	}
	out.Authorization = auth
	return out, nil
}

var envoyLogLevels = []string{"trace", "debug", "info", "warning", "warn", "error", "critical", "off"}

func checkEnvoyFlags(f envoyFlags) (netip.AddrPort, error) {
	admin, err := netip.ParseAddrPort(f.admin)
	if err != nil {
		return admin, usageErrorf("--envoy-admin %q: not IP:PORT: %v", f.admin, err)
	}
	if !admin.Addr().IsLoopback() {
		return admin, usageErrorf("--envoy-admin %s: must be a loopback address (Envoy's admin API can reconfigure and stop it)", f.admin)
	}
	if !containsString(envoyLogLevels, f.logLevel) {
		return admin, usageErrorf("--envoy-log-level %q: want one of %s", f.logLevel, strings.Join(envoyLogLevels, ", "))
	}
	if f.concurrency < 0 {
		return admin, usageErrorf("--envoy-concurrency %d: must not be negative", f.concurrency)
	}
	if f.drainTimeout <= 0 {
		return admin, usageErrorf("--drain-timeout %v: must be positive", f.drainTimeout)
	}
	return admin, nil
}

// checkRunEnvoyFlags refuses bad --envoy-* values before anything starts.
func checkRunEnvoyFlags(f runFlags) error {
	e := f.envoy
	if e.binary == "" {
		var def envoyFlags
		addEnvoyFlags(&cobra.Command{}, &def)
		if e != def {
			return usageErrorf("run: --envoy-admin, --envoy-log-level, --envoy-concurrency and --drain-timeout need --envoy-binary")
		}
		return nil
	}
	if f.xdsSocket == "off" && f.xds == "" {
		return usageErrorf("run: --envoy-binary with --xds-socket off: the embedded control plane is served in-process only; Envoy needs the local socket")
	}
	_, err := checkEnvoyFlags(e)
	return err
}

// prepareEnvoy writes the bootstrap and returns the supervisor of the Envoy
// shunt runs; nil without --envoy-binary.
func prepareEnvoy(f runFlags, xcfg xdsclient.Config, plan *redirect.Plan, stateDir string, log *slog.Logger) (*supervisor.Supervisor, error) {
	e := f.envoy
	if e.binary == "" {
		return nil, nil
	}
	admin, err := checkEnvoyFlags(e)
	if err != nil {
		return nil, err
	}
	x, err := envoyXDS(f, xcfg, stateDir)
	if err != nil {
		var ec exitCoder
		if errors.As(err, &ec) {
			return nil, err
		}
		return nil, fmt.Errorf("run: envoy bootstrap: %w", err)
	}
	bc := envoyNode(xcfg)
	bc.XDS, bc.Admin = x, admin
	b, err := bootstrap.Build(bc)
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	if v, ok := bc.Metadata.GetFields()[wire.KumaMetaAdminPort]; ok && v.GetStringValue() != strconv.Itoa(int(admin.Port())) && admin.Port() != 0 {
		// kuma-cp reaches Envoy's admin API on the port the node
		// announces; a different one breaks its readiness and stats.
		log.Warn("the node metadata announces another Envoy admin port than --envoy-admin; set --xds-node-metadata "+wire.KumaMetaAdminPort+"=PORT",
			"announced", v.GetStringValue(), "envoyAdmin", admin.String())
	}
	cred := proxyCredential(plan)
	dir, err := filepath.Abs(filepath.Join(stateDir, "envoy"))
	if err != nil {
		return nil, fmt.Errorf("run: envoy state directory: %w", err)
	}
	path, err := writeBootstrap(dir, b, cred)
	if err != nil {
		return nil, fmt.Errorf("run: write envoy bootstrap: %w", err)
	}
	sup, err := supervisor.New(supervisor.Config{
		Binary:           e.binary,
		BootstrapPath:    path,
		AdminAddressPath: filepath.Join(dir, "admin.address"),
		LogLevel:         e.logLevel,
		Concurrency:      e.concurrency,
		Credential:       cred,
		DrainTimeout:     e.drainTimeout,
		Logger:           log.With("component", "envoy"),
	})
	if err != nil {
		return nil, fmt.Errorf("run: --envoy-binary: %w", err)
	}
	log.Info("envoy bootstrap written", "path", path, "xds", x.Address+x.Pipe, "admin", admin, "uid", cred.Uid, "gid", cred.Gid)
	return sup, nil
}

// proxyCredential is the proxy's UID and GID: proxyGID if set, else the
// UID's number (as Kuma's 5678:5678, and as the xDS socket is owned). No
// supplementary groups: root's must not leak to Envoy.
func proxyCredential(plan *redirect.Plan) *syscall.Credential {
	c := &syscall.Credential{Uid: plan.ProxyUID, Gid: plan.ProxyUID, Groups: []uint32{}}
	if plan.ProxyGID != nil {
		c.Gid = *plan.ProxyGID
	}
	return c
}

// writeBootstrap writes b into dir as bootstrap.json, atomically. The
// directory and the file belong to the proxy user, modes 0700 and 0400: the
// bootstrap may carry a token, which no other user may read (root reads
// everything anyway); Envoy writes its admin address next to it.
func writeBootstrap(dir string, b *bootstrapv3.Bootstrap, cred *syscall.Credential) (string, error) {
	data, err := bootstrap.JSON(b)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return "", err
	}
	if err := reachableBy(filepath.Dir(dir), cred); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".bootstrap-*.json")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if err := tmp.Chmod(0o400); err != nil {
		_ = tmp.Close()
		return "", err
	}
	if err := tmp.Chown(int(cred.Uid), int(cred.Gid)); err != nil {
		_ = tmp.Close()
		return "", err
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "bootstrap.json")
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}

// reachableBy checks that the proxy user may traverse dir and its parents
// to reach its own directory: otherwise Envoy would fail on every restart
// with "permission denied", far from the cause.
func reachableBy(dir string, cred *syscall.Credential) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		var bit fs.FileMode = 0o001
		switch {
		case sys.Uid == cred.Uid:
			bit = 0o100
		case sys.Gid == cred.Gid:
			bit = 0o010
		}
		if st.Mode().Perm()&bit == 0 {
			return fmt.Errorf("the proxy user %d cannot enter %s (mode %04o, owner %d:%d): allow it (chmod o+x) or choose another --state-dir", cred.Uid, d, st.Mode().Perm(), sys.Uid, sys.Gid)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// runWithEnvoy runs the agent and, when shunt runs the proxy, its
// supervisor; when the agent stops (signal or error) the proxy is drained
// and stopped before shunt exits.
func runWithEnvoy(ctx context.Context, a interface{ Run(context.Context) error }, sup *supervisor.Supervisor) error {
	if sup == nil {
		return a.Run(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	err := a.Run(ctx)
	cancel()
	if serr := <-done; serr != nil && err == nil {
		err = serr
	}
	return err
}
