package xdsclient

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/shunt-dev/shunt/mesh"
)

// A snapshot persisted before endpoints carried their port still loads:
// its addresses come back as AllowedEgress, which the agent keeps open on
// every port until the control plane sends a snapshot with endpoints.
func TestPersistedSnapshotWithoutEndpointPorts(t *testing.T) {
	dir := t.TempDir()
	old := `{"version":"7/7/7","names":{"httpbin.mesh":["240.0.0.1"]},"passthrough":false,` +
		`"allowedEgress":["192.0.2.1/32","2001:db8::1/128"],"dnsHosts":[{"host":"httpbin.org","port":443}],` +
		`"receivedAt":"2025-01-02T03:04:05Z"}`
	if err := os.WriteFile(filepath.Join(dir, SnapshotFile), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadPersisted(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != "7/7/7" || len(s.AllowedEndpoints) != 0 ||
		!slices.Equal(s.AllowedEgress, prefixesOf("192.0.2.1/32", "2001:db8::1/128")) ||
		!slices.Equal(s.DNSHosts, []mesh.DNSHost{{Host: "httpbin.org", Port: 443}}) {
		t.Fatalf("old snapshot = %+v", s)
	}
	// And a new one round-trips its endpoints.
	s.AllowedEndpoints = addrPorts("192.0.2.1:443", "[2001:db8::1]:8443")
	if err := persist(dir, s); err != nil {
		t.Fatal(err)
	}
	back, err := LoadPersisted(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.AllowedEndpoints, s.AllowedEndpoints) {
		t.Fatalf("endpoints after a round trip = %v, want %v", back.AllowedEndpoints, s.AllowedEndpoints)
	}
}
