package capture_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestKubeletServiceLinksDoNotStopInstall runs install the way an init
// container runs in a namespace holding Services named shunt and shunt-dns:
// kubelet has added their service links to the environment, and a typo of
// the user's sits among them.
func TestKubeletServiceLinksDoNotStopInstall(t *testing.T) {
	w := newWorld(t, "nft")
	env := append(os.Environ(),
		"SHUNT_SERVICE_HOST=10.96.0.11",
		"SHUNT_SERVICE_PORT=53",
		"SHUNT_SERVICE_PORT_DNS=53",
		"SHUNT_PORT=udp://10.96.0.11:53",
		"SHUNT_PORT_53_UDP=udp://10.96.0.11:53",
		"SHUNT_PORT_53_UDP_PROTO=udp",
		"SHUNT_PORT_53_UDP_PORT=53",
		"SHUNT_PORT_53_UDP_ADDR=10.96.0.11",
		"SHUNT_DNS_SERVICE_HOST=10.96.0.12",
		"SHUNT_DNS_SERVICE_PORT=53",
		"SHUNT_DNS_PORT=udp://10.96.0.12:53",
		"SHUNT_DNS_PORT_53_UDP=udp://10.96.0.12:53",
		"SHUNT_DNS_PORT_53_UDP_PROTO=udp",
		"SHUNT_DNS_PORT_53_UDP_PORT=53",
		"SHUNT_DNS_PORT_53_UDP_ADDR=10.96.0.12",
		"SHUNT_EXCLUDE_OUTBOUND_PORT=22",
	)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.shunt, "install", "--netns", w.pod.Path(), "--state-dir", w.stateDir, "--iptables-backend", w.backend)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install refused the environment: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = w.shunt("uninstall") })
	if !strings.Contains(string(out), "SHUNT_EXCLUDE_OUTBOUND_PORT") || !strings.Contains(string(out), "SHUNT_EXCLUDE_OUTBOUND_PORTS") {
		t.Errorf("no warning naming the typo and the known variable:\n%s", out)
	}
	if strings.Contains(string(out), "SHUNT_PORT") || strings.Contains(string(out), "SERVICE") {
		t.Errorf("service links were reported:\n%s", out)
	}
	save := w.save(false)
	if !strings.Contains(save, "--to-ports 15053") {
		t.Errorf("DNS is not captured to the default port:\n%s", save)
	}
}
