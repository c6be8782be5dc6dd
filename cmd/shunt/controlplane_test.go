//go:build !lean

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A control plane on a non-loopback address without client certificates
// would hand TLS private keys to any host: it does not start.
func TestControlPlaneRefusesUnauthenticatedNetworkListen(t *testing.T) {
	res := t.TempDir()
	b, err := os.ReadFile("../../tests/fixtures/externalservices/httpbin/universal/httpbin.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(res, "httpbin.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--listen", "0.0.0.0:0"},
		{"--listen", ":0"},
	} {
		cmd := newRootCommand()
		cmd.SetArgs(append([]string{"controlplane", "--resources", res, "--state-dir", ""}, args...))
		cmd.SetOut(new(strings.Builder))
		cmd.SetErr(new(strings.Builder))
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // were it to start, it would stop at once
		err := cmd.ExecuteContext(ctx)
		if err == nil || !strings.Contains(err.Error(), "not loopback") || !strings.Contains(err.Error(), "--allow-unauthenticated") {
			t.Errorf("controlplane %v: %v, want a refusal naming --allow-unauthenticated", args, err)
		}
	}
}
