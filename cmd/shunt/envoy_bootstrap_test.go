//go:build !lean

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shunt-dev/shunt/envoy/bootstrap"
)

func runShunt(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestEnvoyBootstrapCommand(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("dp-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)

	out, err := runShunt(t, "envoy-bootstrap", "--node-id", "default.web-1", "--zone", "zone-1", "--mesh", "demo",
		"--xds", "cp.example:5678", "--xds-ca", "ca.pem", "--xds-cert", "dp.pem", "--xds-key", "dp.key", "--xds-token-file", tok)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	b, err := bootstrap.Parse([]byte(out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	n := b.GetNode()
	if n.GetId() != "default.web-1" || n.GetLocality().GetZone() != "zone-1" || n.GetMetadata().GetFields()["kuma.io/mesh"].GetStringValue() != "demo" {
		t.Errorf("node %v", n)
	}
	if md := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata(); len(md) != 1 || md[0].GetKey() != "authorization" || md[0].GetValue() != "Bearer dp-token" {
		t.Errorf("initial metadata %v, want the agent's authorization header", md)
	}
	for _, want := range []string{`"filename": "` + filepath.Join(dir, "ca.pem") + `"`, `"filename": "` + filepath.Join(dir, "dp.key") + `"`, `"sni": "cp.example"`, `"address": "cp.example"`} {
		if !strings.Contains(out, want) {
			t.Errorf("bootstrap lacks %s:\n%s", want, out)
		}
	}

	// A Kuma node id: kuma-dp's metadata and the raw dataplane token, as
	// the agent sends them.
	out, err = runShunt(t, "envoy-bootstrap", "--node-id", "default.web-1", "--xds", "cp.example:5678", "--xds-token-file", tok)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if b, err = bootstrap.Parse([]byte(out)); err != nil {
		t.Fatal(err)
	}
	if md := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata(); len(md) != 1 || md[0].GetValue() != "dp-token" {
		t.Errorf("Kuma initial metadata %v, want the raw token", md)
	}
	if f := b.GetNode().GetMetadata().GetFields(); f["dataplane.dns.port"].GetStringValue() != "15053" || f["features"].GetListValue() == nil {
		t.Errorf("Kuma node metadata %v", f)
	}

	// Without --xds: shunt's local socket, absolute; YAML on request.
	out, err = runShunt(t, "envoy-bootstrap", "--node-id", "n", "--state-dir", "state", "-o", "yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "path: "+filepath.Join(dir, "state", "xds.sock")) {
		t.Errorf("YAML bootstrap does not name the local socket:\n%s", out)
	}
	if _, err := bootstrap.Parse([]byte(out)); err != nil {
		t.Errorf("YAML: %v", err)
	}
}

func TestEnvoyBootstrapRefuses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "text"}, `-o "text": want json or yaml`},
		{[]string{"--envoy-admin", "0.0.0.0:9901"}, "--envoy-admin 0.0.0.0:9901: must be a loopback address"},
		{[]string{"--envoy-admin", "localhost"}, `--envoy-admin "localhost": not IP:PORT`},
		{[]string{"--xds-ca", "/ca.pem"}, "need --xds"},
		{[]string{"--xds", "cp:1", "--xds-socket", "/x.sock"}, "give --xds or --xds-socket, not both"},
		{[]string{"--xds", "cp:1", "--xds-token-file", "/nonexistent/token"}, "--xds-token-file: open /nonexistent/token"},
		{[]string{"--xds", "cp"}, `xDS address "cp": not HOST:PORT`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := runShunt(t, append([]string{"envoy-bootstrap", "--node-id", "n"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q\n%s", err, tc.want, out)
			}
		})
	}
}

func TestRunRefusesEnvoyFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--envoy-log-level", "debug"}, "need --envoy-binary"},
		{[]string{"--envoy-binary", "/bin/true", "--envoy-log-level", "loud"}, `--envoy-log-level "loud": want one of`},
		{[]string{"--envoy-binary", "/bin/true", "--envoy-concurrency", "-1"}, "--envoy-concurrency -1: must not be negative"},
		{[]string{"--envoy-binary", "/bin/true", "--drain-timeout", "0s"}, "--drain-timeout 0s: must be positive"},
		{[]string{"--envoy-binary", "/bin/true", "--envoy-admin", "10.0.0.1:9901"}, "must be a loopback address"},
		{[]string{"--envoy-binary", "/bin/true", "--xds-socket", "off"}, "Envoy needs the local socket"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := runShunt(t, append([]string{"run", "--resources", t.TempDir()}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q\n%s", err, tc.want, out)
			}
		})
	}
}
