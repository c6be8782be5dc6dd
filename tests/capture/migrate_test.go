package capture_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestEngineMigrations walks the capture of one workload through every
// change of engine among eBPF, nftables and iptables (each of the six
// directions once). After each install exactly one engine's rules or
// programs are live, status names that engine, and the application's
// connections, IPv4 and IPv6, still go through the proxy stand-ins while
// the proxy's own do not.
func TestEngineMigrations(t *testing.T) {
	w := newWorld(t, "nft")
	testenv.RequireBinary(t, "nft")
	bpftool := testenv.RequireBinary(t, "bpftool")
	mig := newMigrationWorld(t, w, bpftool)
	w.serveHTTP(8080)
	w.startProxies() // in the cgroup: the eBPF engine answers their SO_ORIGINAL_DST
	t.Cleanup(func() { _, _ = mig.shunt("uninstall") })

	for i, engine := range []string{"ebpf", "nftables", "ebpf", "iptables", "nftables", "iptables", "ebpf"} {
		from := "nothing"
		if i > 0 {
			from = mig.current
		}
		t.Logf("install --engine %s over %s", engine, from)
		if out, err := mig.install(engine); err != nil {
			t.Fatalf("install --engine %s over %s: %v\n%s", engine, from, err, out)
		}
		if live := mig.liveEngines(); !slices.Equal(live, []string{engine}) {
			t.Errorf("after %s → %s: live engines %v, want only %s\n%s", from, engine, live, engine, mig.describe())
		}
		out, err := mig.shunt("status")
		if exitCode(err) != 0 || !strings.Contains(out, "engine:  "+engine+"\n") {
			t.Errorf("after %s → %s: status exit %d, want 0 naming %s:\n%s", from, engine, exitCode(err), engine, out)
		}
		if !w.fetch(appUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
			t.Errorf("after %s → %s: the application's IPv4 connection did not pass through the proxy", from, engine)
		}
		if !w.fetch(appUID, "http://[fd00:1::2]:8080/", "remote:8080", "[fd00:1::2]:8080") {
			t.Errorf("after %s → %s: the application's IPv6 connection did not pass through the proxy", from, engine)
		}
		if w.fetch(proxyUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
			t.Errorf("after %s → %s: the proxy's own connection was captured", from, engine)
		}
		if t.Failed() {
			return
		}
	}
	if out, err := mig.shunt("uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if live := mig.liveEngines(); len(live) != 0 {
		t.Errorf("after uninstall: live engines %v\n%s", live, mig.describe())
	}
	if out, err := mig.shunt("status"); exitCode(err) != 4 {
		t.Errorf("status after uninstall: exit %d, want 4 (not installed)\n%s", exitCode(err), out)
	}
}

// migrationWorld is a world whose pod also has a cgroup of its own and a
// private bpffs, so that any of the three engines can hold its capture.
type migrationWorld struct {
	t       *testing.T
	w       *world
	bpftool string
	cgroup  string
	pinDir  string
	cgID    uint64 // the cgroup directory's inode: bpf links name it
	nsIno   uint64 // the namespace's inode
	current string
}

func newMigrationWorld(t *testing.T, w *world, bpftool string) *migrationWorld {
	t.Helper()
	m := &migrationWorld{t: t, w: w, bpftool: bpftool, cgroup: testenv.NewCgroup(t)}
	m.pinDir = filepath.Join(mountBPFFS(t), "shunt")
	// Every process the tests start in the pod starts in its cgroup, as a
	// pod's containers do.
	w.pod = w.pod.InCgroup(m.cgroup)
	m.cgID = inode(t, m.cgroup)
	m.nsIno = inode(t, w.pod.Path())
	return m
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// mountBPFFS mounts a private bpffs (never the machine's /sys/fs/bpf) on a
// temporary directory until the test ends.
func mountBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Skipf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}

// shunt runs shunt against the pod with the given arguments after the
// subcommand's name.
func (m *migrationWorld) shunt(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{args[0], "--netns", m.w.pod.Path(), "--state-dir", m.w.stateDir}, args[1:]...)
	out, err := exec.CommandContext(ctx, bins.shunt, full...).CombinedOutput()
	return string(out), err
}

// install installs the default plan with engine, with extra flags.
func (m *migrationWorld) install(engine string, extra ...string) (string, error) {
	args := append([]string{"install", "--engine", engine}, extra...)
	switch engine {
	case "ebpf":
		args = append(args, "--cgroup", m.cgroup, "--bpf-pin-dir", m.pinDir)
	case "iptables":
		args = append(args, "--iptables-backend", "nft")
	}
	out, err := m.shunt(args...)
	if err == nil {
		m.current = engine
	}
	return out, err
}

// liveEngines lists the engines that have anything live in the pod: the
// iptables engine's SHUNT_ chains (either variant, either family), the
// nftables engine's inet shunt table, the eBPF engine's links on the
// pod's cgroup or namespace or its pins.
func (m *migrationWorld) liveEngines() []string {
	m.t.Helper()
	var live []string
	for _, prog := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(prog); err != nil {
			continue
		}
		if strings.Contains(m.w.pod.MustRun(prog), "SHUNT_") {
			live = append(live, "iptables")
			break
		}
	}
	if _, err := m.w.pod.Run("nft", "list", "table", "inet", "shunt"); err == nil {
		live = append(live, "nftables")
	}
	if len(m.bpfLinks()) > 0 || m.pinned() != "" {
		live = append(live, "ebpf")
	}
	slices.Sort(live)
	return live
}

// bpfLinks are the BPF links attached to the pod's cgroup or namespace
// (sk_lookup) or interfaces (tc, tcx), as bpftool lists them.
func (m *migrationWorld) bpfLinks() []string {
	m.t.Helper()
	out, err := exec.Command(m.bpftool, "-j", "link", "show").Output()
	if err != nil {
		m.t.Fatalf("bpftool link show: %v", err)
	}
	var links []map[string]any
	if err := json.Unmarshal(out, &links); err != nil {
		m.t.Fatalf("bpftool link show: %v\n%s", err, out)
	}
	var mine []string
	for _, l := range links {
		cg, _ := l["cgroup_id"].(float64)
		ns, _ := l["netns_ino"].(float64)
		if (cg != 0 && uint64(cg) == m.cgID) || (ns != 0 && uint64(ns) == m.nsIno) {
			b, _ := json.Marshal(l)
			mine = append(mine, string(b))
		}
	}
	if out, err := exec.Command(m.bpftool, "cgroup", "show", m.cgroup).CombinedOutput(); err == nil && strings.TrimSpace(string(out)) != "" {
		mine = append(mine, "bpftool cgroup show: "+string(out))
	}
	// tc and tcx programs on the pod's interfaces, listed from inside
	// the namespace (an ifindex means nothing outside it).
	if out, err := m.w.pod.Run(m.bpftool, "-j", "net", "show"); err == nil && strings.Contains(out, `"id":`) {
		mine = append(mine, "bpftool net show: "+out)
	}
	return mine
}

// pinned lists what is pinned under the pin directory (the bpffs root
// holds the kernel's own maps.debug and progs.debug).
func (m *migrationWorld) pinned() string {
	var names []string
	_ = filepath.WalkDir(m.pinDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, path)
		}
		return nil
	})
	return strings.Join(names, "\n")
}

// describe prints what every engine has live, for failure messages.
func (m *migrationWorld) describe() string {
	var b strings.Builder
	b.WriteString(m.w.pod.ShuntRules())
	for _, l := range m.bpfLinks() {
		b.WriteString("bpf: " + l + "\n")
	}
	if p := m.pinned(); p != "" {
		b.WriteString("pinned:\n" + p + "\n")
	}
	return b.String()
}

// TestFailedEngineMigrationKeepsTheCapture asks for another engine with an
// option that engine refuses: the install fails naming the option, and the
// engine that held the capture still holds it, whole, and still captures.
func TestFailedEngineMigrationKeepsTheCapture(t *testing.T) {
	w := newWorld(t, "nft")
	testenv.RequireBinary(t, "nft")
	mig := newMigrationWorld(t, w, testenv.RequireBinary(t, "bpftool"))
	w.serveHTTP(8080)
	w.startProxies()
	t.Cleanup(func() { _, _ = mig.shunt("uninstall") })

	// Each flag is one the target engine refuses: eBPF has no use for
	// dropInvalid; nftables matches interface names with a trailing +
	// wildcard only.
	refusedBy := map[string][]string{
		"ebpf":     {"--drop-invalid"},
		"nftables": {"--exclude-interfaces", "ve*th"},
	}
	keys := map[string]string{"ebpf": "dropInvalid", "nftables": "excludeInterfaces"}
	for _, c := range []struct{ from, to string }{
		{"ebpf", "nftables"},
		{"nftables", "ebpf"},
		{"iptables", "nftables"},
		{"iptables", "ebpf"},
	} {
		if out, err := mig.install(c.from); err != nil {
			t.Fatalf("install --engine %s: %v\n%s", c.from, err, out)
		}
		status, _ := mig.shunt("status")
		out, err := mig.install(c.to, refusedBy[c.to]...)
		if err == nil || !strings.Contains(out, keys[c.to]) {
			t.Errorf("%s → %s with %v: %v, want a refusal naming %s\n%s", c.from, c.to, refusedBy[c.to], err, keys[c.to], out)
		}
		if live := mig.liveEngines(); !slices.Equal(live, []string{c.from}) {
			t.Errorf("%s → %s refused: live engines %v, want only %s\n%s", c.from, c.to, live, c.from, mig.describe())
		}
		if after, err := mig.shunt("status"); exitCode(err) != 0 || after != status {
			t.Errorf("%s → %s refused: status changed (exit %d):\nbefore:\n%s\nafter:\n%s", c.from, c.to, exitCode(err), status, after)
		}
		if !w.fetch(appUID, "http://10.1.0.2:8080/", "remote:8080", "10.1.0.2:8080") {
			t.Errorf("%s → %s refused: the application's connection no longer passes through the proxy", c.from, c.to)
		}
	}
}
