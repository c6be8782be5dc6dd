package ebpf

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	cnins "github.com/containernetworking/plugins/pkg/ns"
)

// Inbound SYNs are also steered at tc ingress of each of the workload's
// interfaces (inbound_tc), to whatever socket listens on the inbound port,
// MPTCP listeners included, which sk_lookup cannot serve (their socket does
// not go in a SOCKMAP). Each interface's link is pinned as link_tc_<name>.
const tcPinPrefix = "link_tc_"

// tcInterfaces lists the Ethernet interfaces of the namespace (the program
// reads an Ethernet header), loopback aside.
func tcInterfaces(netnsPath string) ([]net.Interface, error) {
	var out []net.Interface
	err := inNetns(netnsPath, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return fmt.Errorf("list interfaces: %w", err)
		}
		for _, i := range ifs {
			if i.Flags&net.FlagLoopback == 0 && len(i.HardwareAddr) == 6 {
				out = append(out, i)
			}
		}
		return nil
	})
	return out, err
}

func inNetns(path string, f func() error) error {
	if path == "" {
		return f()
	}
	return cnins.WithNetNSPath(path, func(cnins.NetNS) error { return f() })
}

// attachTC attaches prog at tc ingress of every interface of the namespace
// and pins each link in dir, replacing the links pinned before.
func attachTC(log *slog.Logger, netnsPath, dir string, prog *ebpf.Program, undo *[]func()) error {
	ifs, err := tcInterfaces(netnsPath)
	if err != nil {
		return err
	}
	for _, i := range ifs {
		var l link.Link
		err := inNetns(netnsPath, func() error {
			var aerr error
			l, aerr = link.AttachTCX(link.TCXOptions{Interface: i.Index, Program: prog, Attach: ebpf.AttachTCXIngress})
			return aerr
		})
		if err != nil {
			return fmt.Errorf("attach inbound_tc to %s: %w", i.Name, err)
		}
		pin := filepath.Join(dir, tcPinPrefix+i.Name)
		if old, lerr := link.LoadPinnedLink(pin, nil); lerr == nil {
			_ = old.Unpin()
			detach(log, old, "inbound_tc "+i.Name)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin inbound_tc link of %s: %w", i.Name, err)
		}
		*undo = append(*undo, func() { _ = l.Unpin(); detach(log, l, "inbound_tc") })
		l.Close()
	}
	return nil
}

// tcAttached reports whether every interface of the namespace has its
// pinned inbound_tc link.
func tcAttached(netnsPath, dir string) bool {
	ifs, err := tcInterfaces(netnsPath)
	if err != nil {
		return false
	}
	for _, i := range ifs {
		l, err := link.LoadPinnedLink(filepath.Join(dir, tcPinPrefix+i.Name), nil)
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// updateTCLinks points the inbound_tc links pinned in dir at prog (the
// node's programs were loaded again).
func updateTCLinks(dir string, prog *ebpf.Program) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, ent := range ents {
		if !strings.HasPrefix(ent.Name(), tcPinPrefix) {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, ent.Name()), nil)
		if err != nil {
			continue
		}
		err = l.Update(prog)
		l.Close()
		if err != nil {
			return fmt.Errorf("update link %s: %w", ent.Name(), err)
		}
	}
	return nil
}

// removeTCLinks detaches and unpins the inbound_tc links pinned in dir.
func removeTCLinks(log *slog.Logger, dir string) (found bool, errs []error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, nil
	}
	for _, ent := range ents {
		if !strings.HasPrefix(ent.Name(), tcPinPrefix) {
			continue
		}
		found = true
		pin := filepath.Join(dir, ent.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open pinned link %s: %w", ent.Name(), err))
			_ = os.Remove(pin)
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", ent.Name(), err))
		}
		detach(log, l, ent.Name())
	}
	return found, errs
}

func detach(log *slog.Logger, l link.Link, what string) {
	if rl, ok := l.(interface{ Detach() error }); ok {
		if err := rl.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Debug("detach link", "link", what, "err", err)
		}
	}
	l.Close()
}
