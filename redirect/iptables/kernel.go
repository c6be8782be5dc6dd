package iptables

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
)

// Reading a variant's rules costs an exec of its -save program (a few
// milliseconds each, four variants on a machine with both). The kernel can
// say without any exec which variants hold tables at all in a namespace: a
// variant without tables holds no rules, so its dump is known to be empty.

// xtablesName reports whether name is one of the tables iptables-nft
// creates in nf_tables.
func xtablesName(name string) bool {
	switch name {
	case "filter", "nat", "mangle", "raw", "security":
		return true
	}
	return false
}

// kernelTables reports whether each variant has tables in the namespace the
// calling thread is in. ok is false when the kernel could not be asked; the
// caller then reads every variant as before.
func kernelTables() (has map[variantKey]bool, ok bool) {
	has = map[variantKey]bool{}
	for _, f := range []family{ipv4, ipv6} {
		legacy, err := legacyTables(f)
		if err != nil {
			return nil, false
		}
		has[variantKey{Legacy, f}] = legacy
	}
	nft, err := nftTables()
	if err != nil {
		return nil, false
	}
	for f, v := range nft {
		has[variantKey{NFT, f}] = v
	}
	return has, true
}

// variantKey names a backend and family without their programs.
type variantKey struct {
	b Backend
	f family
}

// legacyTables reads /proc's list of the x_tables tables registered in this
// thread's namespace (thread-self: the caller is a locked thread that
// entered the namespace; /proc/self/net would show the main thread's). A
// table is registered in a namespace the first time a legacy program uses
// it there. Without the module the file is absent, and so are the tables.
func legacyTables(f family) (bool, error) {
	name := "/proc/thread-self/net/ip_tables_names"
	if f == ipv6 {
		name = "/proc/thread-self/net/ip6_tables_names"
	}
	b, err := os.ReadFile(name)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)) != "", nil
}

// nftTables lists the nf_tables tables of the ip and ip6 families in this
// thread's namespace over netlink and reports which family has tables by an
// xtables name (the ones iptables-nft makes; shunt's nftables engine and
// firewalld use other names or the inet family).
func nftTables() (map[family]bool, error) {
	// One socket for both listings: closing a netfilter netlink socket
	// can wait for the kernel's deferred clean-up of any namespace's last
	// deletions (see uninstall_netlink.go), so fewer closes wait less.
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables netlink: %w", err)
	}
	defer conn.CloseLasting()
	out := map[family]bool{}
	for f, tf := range map[family]nftables.TableFamily{ipv4: nftables.TableFamilyIPv4, ipv6: nftables.TableFamilyIPv6} {
		tables, err := conn.ListTablesOfFamily(tf)
		if err != nil {
			return nil, fmt.Errorf("list nftables tables: %w", err)
		}
		for _, t := range tables {
			if xtablesName(t.Name) {
				out[f] = true
			}
		}
	}
	return out, nil
}

// emptyDumps seeds seen with an empty dump of each variant the kernel says
// has no tables, so that nothing execs its -save program. It returns the
// variants that still need reading.
func (e *Engine) emptyDumps(vs []variant, seen map[Commands]*Dump) []variant {
	var has map[variantKey]bool
	var ok bool
	if err := e.inNetns(func() error { has, ok = kernelTables(); return nil }); err != nil || !ok {
		return vs
	}
	var todo []variant
	for _, v := range vs {
		if has[variantKey{v.b, v.f}] {
			todo = append(todo, v)
			continue
		}
		seen[v.cmds] = &Dump{Shunt: newRuleset()}
	}
	return todo
}
