package ebpf

import (
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// TestHelperTCWriter is not a test: run by TestQdiscAndFilterSurviveTheirWriter
// as a separate process, it writes shunt's qdisc and filter requests to an
// interface, in one write or (the way two library calls would) the qdisc
// alone first, and is killed right after.
func TestHelperTCWriter(t *testing.T) {
	nsPath, mode := os.Getenv("SHUNT_TCWRITER_NETNS"), os.Getenv("SHUNT_TCWRITER_MODE")
	if nsPath == "" {
		t.Skip("helper process of TestQdiscAndFilterSurviveTheirWriter")
	}
	idx, _ := strconv.Atoi(os.Getenv("SHUNT_TCWRITER_IFINDEX"))
	prog := passProgram(t)
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	q, f := qdiscAndFilter(idx, prog)
	msg := q.Serialize()
	if mode == "one write" {
		msg = append(msg, f.Serialize()...)
	}
	if err := unix.Sendto(s.GetFd(), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	// Dead before it reads an answer, let alone sends anything more.
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// TestQdiscAndFilterSurviveTheirWriter proves what attachTC relies on: a
// process killed right after writing the qdisc and the filter together
// leaves both, the filter named as the filter of a qdisc shunt created, so
// that removing shunt's filters removes the qdisc too; written apart, a
// kill between the two leaves a qdisc that nothing says is shunt's.
func TestQdiscAndFilterSurviveTheirWriter(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{"one write", "qdisc first"} {
		t.Run(mode, func(t *testing.T) {
			pod, h, l := tcTestInterface(t)
			cmd := exec.Command(os.Args[0], "-test.run", "^TestHelperTCWriter$")
			cmd.Env = append(os.Environ(), "SHUNT_TCWRITER_NETNS="+pod.Path(), "SHUNT_TCWRITER_MODE="+mode,
				"SHUNT_TCWRITER_IFINDEX="+strconv.Itoa(l.Attrs().Index))
			out, err := cmd.CombinedOutput()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("the writer was not killed after its write: %v\n%s", err, out)
			}
			qdisc, err := hasIngressQdisc(h, l)
			if err != nil {
				t.Fatal(err)
			}
			mine, other, err := tcSlot(h, l)
			if err != nil {
				t.Fatal(err)
			}
			if other != nil {
				t.Fatalf("another filter at shunt's place: %v", other)
			}
			switch mode {
			case "one write":
				if !qdisc || mine == nil || mine.Name != tcFilterNameOwnQdisc || !mine.DirectAction {
					t.Fatalf("after the writer's death: clsact qdisc %v, filter %+v; want both, the filter named %q in direct-action mode", qdisc, mine, tcFilterNameOwnQdisc)
				}
				found, errs := removeTC(pod.Path())
				if !found || len(errs) > 0 {
					t.Fatalf("removing shunt's filters: found %v, errors %v", found, errs)
				}
				if qdisc, err := hasIngressQdisc(h, l); err != nil || qdisc {
					t.Fatalf("the clsact qdisc shunt created outlived its filter (%v)", err)
				}
			case "qdisc first":
				if !qdisc || mine != nil {
					t.Fatalf("after the writer's death: clsact qdisc %v, filter %+v; want the qdisc alone", qdisc, mine)
				}
				if found, _ := removeTC(pod.Path()); found {
					t.Fatal("removeTC found a filter of shunt's")
				}
				if qdisc, _ := hasIngressQdisc(h, l); !qdisc {
					t.Fatal("the qdisc went with no filter of shunt's to say whose it was")
				}
			}
		})
	}
}

// TestAttachTCOwnsOnlyTheQdiscItCreates: on an interface with no ingress
// qdisc the filter goes on a clsact qdisc shunt creates and names it so;
// on one whose clsact qdisc is another tool's, the filter claims nothing
// and removing it keeps the qdisc.
func TestAttachTCOwnsOnlyTheQdiscItCreates(t *testing.T) {
	requireRoot(t)
	prog := passProgram(t)
	for _, theirs := range []bool{false, true} {
		t.Run("another tool's qdisc "+strconv.FormatBool(theirs), func(t *testing.T) {
			pod, h, l := tcTestInterface(t)
			if theirs {
				if err := h.QdiscAdd(clsact(l.Attrs().Index)); err != nil {
					t.Fatal(err)
				}
			}
			var undo []func()
			if err := attachTC(slog.New(slog.DiscardHandler), pod.Path(), prog, &undo); err != nil {
				t.Fatal(err)
			}
			mine, _, err := tcSlot(h, l)
			if err != nil {
				t.Fatal(err)
			}
			want := tcFilterNameOwnQdisc
			if theirs {
				want = tcFilterName
			}
			if mine == nil || mine.Name != want {
				t.Fatalf("filter %+v, want one named %q", mine, want)
			}
			for _, u := range undo {
				u()
			}
			if mine, _, _ := tcSlot(h, l); mine != nil {
				t.Fatalf("undo left the filter %+v", mine)
			}
			if qdisc, err := hasIngressQdisc(h, l); err != nil || qdisc != theirs {
				t.Fatalf("after undo the clsact qdisc is there: %v, want %v (%v)", qdisc, theirs, err)
			}
		})
	}
}

// passProgram is a tc program that hands every packet on (TC_ACT_UNSPEC).
func passProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// tcTestInterface is a pod namespace with one veth to a peer, an
// rtnetlink handle in it and the pod's end of the veth.
func tcTestInterface(t *testing.T) (*testenv.Netns, *netlink.Handle, netlink.Link) {
	t.Helper()
	pod, peer := testenv.NewNetns(t, "tcw"), testenv.NewNetns(t, "tcp")
	dev, _ := testenv.Link(t, pod, peer, 1)
	h, err := rtnl(pod.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	l, err := h.LinkByName(dev.Dev)
	if err != nil {
		t.Fatal(err)
	}
	return pod, h, l
}
