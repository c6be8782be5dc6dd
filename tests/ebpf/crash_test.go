package ebpf_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/tests/ebpf/ebpftest"
)

// The attach points of the per-cgroup engine's programs, for the checks
// below (sk_lookup on the namespace and tc on the pod's interface aside).
var cgroupAttachTypes = []ebpf.AttachType{
	ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg,
	ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCGroupUDP6Recvmsg,
	ebpf.AttachCGroupInet4Bind, ebpf.AttachCGroupInet6Bind,
	ebpf.AttachCGroupSockOps, ebpf.AttachCGroupGetsockopt,
	ebpf.AttachCGroupInetEgress, ebpf.AttachCGroupInetIngress,
}

// attachedToPod lists every BPF program attached where the engine attaches:
// the pod's cgroup (each hook), its namespace's sk_lookup and tc ingress
// of its interface (filters, and TCX links as earlier versions made).
func attachedToPod(t *testing.T, pod *ebpftest.Pod) []string {
	t.Helper()
	var out []string
	cg, err := unix.Open(pod.Cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cg)
	for _, at := range cgroupAttachTypes {
		res, err := link.QueryPrograms(link.QueryOptions{Target: cg, Attach: at})
		if err != nil {
			t.Fatalf("query cgroup %s: %v", at, err)
		}
		for _, p := range res.Programs {
			out = append(out, fmt.Sprintf("cgroup %s prog %d", at, p.ID))
		}
	}
	ns, err := unix.Open(pod.NS.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ns)
	res, err := link.QueryPrograms(link.QueryOptions{Target: ns, Attach: ebpf.AttachSkLookup})
	if err != nil {
		t.Fatalf("query sk_lookup: %v", err)
	}
	for _, p := range res.Programs {
		out = append(out, fmt.Sprintf("netns sk_lookup prog %d", p.ID))
	}
	if err := pod.NS.Do(func() error {
		ifc, err := net.InterfaceByName(pod.Host.Dev)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			out = append(out, fmt.Sprintf("tcx ingress %s prog %d", pod.Host.Dev, p.ID))
		}
		return nil
	}); err != nil {
		t.Fatalf("query tcx: %v", err)
	}
	h, l := rtnlIn(t, pod)
	fs, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatalf("list tc ingress filters: %v", err)
	}
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok {
			out = append(out, fmt.Sprintf("tc ingress %s filter %q prog %d", pod.Host.Dev, bf.Name, bf.Id))
		}
	}
	return out
}

// TestKilledInstallLeavesARecognisedState kills `shunt install --engine
// ebpf` with SIGKILL at random points of its run, up to a hundred times
// (as many as fit in about a minute), and checks each time that status,
// told only the namespace and the state directory, reports what is there:
// never "not installed" while a pin, an attached program or a record is
// left, never "installed and matching" unless every program is attached;
// that install then completes; and that uninstall leaves no pin, no
// attached program, no record and no clsact qdisc.
func TestKilledInstallLeavesARecognisedState(t *testing.T) {
	if testing.Short() {
		t.Skip("many installs: not in -short")
	}
	bin := buildShunt(t)
	pod := ebpftest.NewPod(t)
	state := []string{"--netns", pod.NS.Path(), "--state-dir", pod.StateDir}
	where := append([]string{"--engine", "ebpf", "--cgroup", pod.Cgroup, "--bpf-pin-dir", pod.PinDir}, state...)
	planA := []string{"--no-dns"}
	planB := []string{"--no-dns", "--outbound-port", "16001", "--exclude-outbound-ports", "22", "--exclude-outbound-cidrs", "10.9.0.0/16,fd09::/32"}
	mustRun := func(args ...string) {
		t.Helper()
		if out, code := runShunt(bin, args...); code != 0 {
			t.Fatalf("shunt %v: exit %d\n%s", args, code, out)
		}
	}
	install := func(plan []string) []string { return append(append([]string{"install"}, where...), plan...) }
	t.Cleanup(func() { runShunt(bin, append([]string{"uninstall"}, state...)...) })
	// Every file of the state directory but its locks.
	records := func() []string {
		ents, _ := os.ReadDir(pod.StateDir)
		var out []string
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".lock") {
				out = append(out, e.Name())
			}
		}
		return out
	}
	pins := func() []string {
		ents, _ := os.ReadDir(pod.PinDir)
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}

	// How long the install takes from each starting point (below) bounds
	// the random delays: a fresh install loads and attaches everything, a
	// plan change over this build's programs only writes maps.
	setups := [][]string{nil, planA, planB}
	var took [3]time.Duration
	all := 0
	for i, setup := range setups {
		if setup != nil {
			mustRun(install(setup)...)
		}
		start := time.Now()
		mustRun(install(planB)...)
		took[i] = time.Since(start)
		all = len(attachedToPod(t, pod))
		mustRun(append([]string{"uninstall"}, state...)...)
	}
	t.Logf("an install takes %v (fresh), %v (plan change), %v (same plan) and attaches %d programs", took[0], took[1], took[2], all)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	const maxRuns = 100
	budget := time.Now().Add(60 * time.Second)
	hit := map[string]int{}
	runs := 0
	for ; runs < maxRuns && (runs < 12 || time.Now().Before(budget)); runs++ {
		i := runs
		// Three starting points: nothing installed; plan A installed
		// (the killed install changes the plan in place); plan B
		// installed (the killed install repeats it).
		scenario := i % 3
		switch scenario {
		case 1:
			mustRun(install(planA)...)
		case 2:
			mustRun(install(planB)...)
		}
		// Half the kills fall anywhere in the run, half in its last
		// quarter and a little beyond, where the pins and records are
		// written (loading and verifying the programs comes first).
		span := int64(took[scenario])
		delay := time.Duration(rng.Int64N(span * 6 / 5))
		if i%2 == 1 {
			delay = time.Duration(span*3/4 + rng.Int64N(span*2/5))
		}
		cmd := exec.Command(bin, install(planB)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		killed := cmd.Wait() != nil
		for syscall.Kill(-cmd.Process.Pid, 0) == nil {
			time.Sleep(2 * time.Millisecond)
		}
		what := fmt.Sprintf("run %d (scenario %d, killed after %v)", i, scenario, delay)

		out, code := runShunt(bin, append([]string{"status", "-o", "json"}, state...)...)
		var st struct {
			Installed bool     `json:"installed"`
			Engine    string   `json:"engine"`
			Drift     []string `json:"drift"`
		}
		if code != 0 && code != 3 && code != 4 || (code != 4 && json.Unmarshal([]byte(jsonPart(out)), &st) != nil) {
			t.Fatalf("%s: status failed (exit %d):\n%s", what, code, out)
		}
		live, left, recs := attachedToPod(t, pod), pins(), records()
		switch {
		case code == 4 && (len(live) > 0 || len(left) > 0 || len(recs) > 0):
			t.Errorf("%s: status says not installed, but attached: %v; pinned: %v; records: %v", what, live, left, recs)
		case code == 0 && len(live) != all:
			t.Errorf("%s: status says installed and matching, but %d of %d programs are attached: %v", what, len(live), all, live)
		case code != 4 && st.Engine != "ebpf":
			t.Errorf("%s: status names engine %q:\n%s", what, st.Engine, out)
		}
		switch {
		case !killed:
			hit["finished"]++
		case code == 3:
			hit["killed, interrupted install reported"]++
		case code == 0:
			hit["killed, installed and matching"]++
		default:
			hit["killed, not installed"]++
		}

		if i%2 == 0 {
			// Install again: it completes, and status agrees.
			mustRun(install(planB)...)
			if out, code := runShunt(bin, append([]string{"status"}, state...)...); code != 0 {
				t.Errorf("%s: status after a new install: exit %d\n%s", what, code, out)
			}
			if got := len(attachedToPod(t, pod)); got != all {
				t.Errorf("%s: after a new install %d programs are attached, want %d", what, got, all)
			}
		}
		if out, code := runShunt(bin, append([]string{"uninstall"}, state...)...); code != 0 {
			t.Fatalf("%s: uninstall: exit %d\n%s", what, code, out)
		}
		if live, left, recs := attachedToPod(t, pod), pins(), records(); len(live)+len(left)+len(recs) > 0 {
			t.Fatalf("%s: uninstall left attached: %v; pinned: %v; records: %v", what, live, left, recs)
		}
		if _, err := os.Stat(filepath.Join(pod.StateDir, "capture.json")); err == nil {
			t.Fatalf("%s: uninstall left the record", what)
		}
		// The pod's interface had no ingress qdisc: a clsact qdisc left
		// now is one shunt created and lost track of.
		if h, l := rtnlIn(t, pod); hasClsact(t, h, l) {
			t.Fatalf("%s: uninstall left a clsact qdisc on %s", what, pod.Host.Dev)
		}
	}
	t.Logf("outcomes of %d killed installs: %v", runs, hit)
}

// jsonPart drops log lines printed before a JSON document.
func jsonPart(out string) string {
	if i := strings.Index(out, "{"); i >= 0 {
		return out[i:]
	}
	return out
}
