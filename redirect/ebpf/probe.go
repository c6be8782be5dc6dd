package ebpf

import (
	"os"

	"errors"
	"fmt"
	"github.com/cilium/ebpf/link"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// Probe reports whether this machine can run the eBPF engine for the
// cgroup: a cgroup-v2 directory, and kernel support for every program and
// map type the engine uses. The error names everything that is missing.
func Probe(cgroupPath string) error {
	var missing []string
	if _, err := cgroupID(cgroupPath); err != nil {
		missing = append(missing, err.Error())
	}
	for _, pt := range []ebpf.ProgramType{ebpf.CGroupSockAddr, ebpf.SockOps, ebpf.CGroupSockopt, ebpf.SkLookup, ebpf.CGroupSKB} {
		if err := features.HaveProgramType(pt); err != nil {
			missing = append(missing, fmt.Sprintf("program type %s: %v", pt, err))
		}
	}
	for _, mt := range []ebpf.MapType{ebpf.LPMTrie, ebpf.LRUHash, ebpf.SkStorage, ebpf.SockMap, ebpf.PerCPUArray} {
		if err := features.HaveMapType(mt); err != nil {
			missing = append(missing, fmt.Sprintf("map type %s: %v", mt, err))
		}
	}
	for _, h := range []struct {
		pt ebpf.ProgramType
		fn asm.BuiltinFunc
	}{
		{ebpf.CGroupSockAddr, asm.FnGetSocketCookie},
		{ebpf.CGroupSockAddr, asm.FnGetCurrentUidGid},
		{ebpf.CGroupSockAddr, asm.FnSkStorageGet},
		{ebpf.SockOps, asm.FnSockOpsCbFlagsSet},
		{ebpf.SkLookup, asm.FnSkAssign},
	} {
		if err := features.HaveProgramHelper(h.pt, h.fn); err != nil {
			missing = append(missing, fmt.Sprintf("helper %s in %s programs: %v", h.fn, h.pt, err))
		}
	}
	if err := features.HaveBoundedLoops(); err != nil {
		missing = append(missing, fmt.Sprintf("bounded loops: %v", err))
	}
	if err := haveCgroupLink(cgroupPath); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		return fmt.Errorf("the eBPF engine cannot run here (kernel 5.10 or later with cgroup v2 is required): %s", strings.Join(missing, "; "))
	}
	return nil
}

// haveCgroupLink checks bpf_link for cgroups (5.7): without it programs
// cannot be pinned, and capture would end with the agent.
func haveCgroupLink(cgroupPath string) error {
	if _, err := cgroupID(cgroupPath); err != nil {
		return nil // reported already
	}
	err := features.HaveProgramType(ebpf.CGroupSockAddr)
	if err != nil {
		return nil
	}
	return probeCgroupLink(cgroupPath)
}

var errNoLink = errors.New("bpf_link for cgroups is not supported (kernel 5.7 or later)")

func probeCgroupLink(cgroupPath string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.CGroupSockAddr,
		AttachType: ebpf.AttachCGroupInet4Connect,
		License:    "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1), // allow: the probe never changes a connection
			asm.Return(),
		},
	})
	if err != nil {
		return fmt.Errorf("load a cgroup/connect4 program: %w", err)
	}
	defer prog.Close()
	f, err := os.Open(cgroupPath)
	if err != nil {
		return fmt.Errorf("open cgroup: %w", err)
	}
	defer f.Close()
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(f.Fd()), Program: prog, Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		return fmt.Errorf("%w: %v", errNoLink, err)
	}
	return l.Close()
}
