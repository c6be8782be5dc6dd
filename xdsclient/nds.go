package xdsclient

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/shunt-dev/shunt/wire"
)

// NameTableType is Istio's NDS resource: the names istiod wants its agent's
// DNS proxy to answer, with their VIPs.
const NameTableType = wire.IstioNameTableType

// The NameTable proto (package istio.networking.nds.v1, nds.proto in
// Istio's pkg/dns/proto) is not published in istio.io/api, and the module
// that holds it (istio.io/istio) would bring all of Istio with it; its
// layout is small and stable, so it is read with protowire:
//
//	message NameTable {
//	  message NameInfo {
//	    repeated string ips = 1;
//	    string registry = 2;
//	    string shortname = 3;
//	    string namespace = 4;
//	    repeated string alt_hosts = 5; // deprecated
//	  }
//	  map<string, NameInfo> table = 1; // entry: key = 1, value = 2
//	}
//
// Fields it does not know are skipped, as any proto3 reader does; so is a
// known field of another wire type, which the generated code also keeps as
// an unknown field. Every field read here is length-delimited.
// tests/istio-nds, a module of its own, checks the decoder against Istio's
// generated type and against a table recorded from istiod.
const (
	ndsTableField    protowire.Number = 1
	ndsEntryKey      protowire.Number = 1
	ndsEntryValue    protowire.Number = 2
	ndsInfoIPs       protowire.Number = 1
	ndsInfoRegistry  protowire.Number = 2
	ndsInfoShortname protowire.Number = 3
	ndsInfoNamespace protowire.Number = 4
	ndsInfoAltHosts  protowire.Number = 5
)

// NameInfo is one host of a NameTable.
type NameInfo struct {
	IPs       []string
	Registry  string
	Shortname string
	Namespace string
	AltHosts  []string
}

// DecodeNameTable reads the wire form of an istio.networking.nds.v1.NameTable
// into its host → info map. As with the generated code, a key repeated in
// the map keeps its last value.
func DecodeNameTable(b []byte) (map[string]NameInfo, error) {
	table := map[string]NameInfo{}
	err := eachField(b, func(num protowire.Number, v []byte) error {
		if num != ndsTableField {
			return nil
		}
		var key string
		var info NameInfo
		err := eachField(v, func(num protowire.Number, v []byte) error {
			switch num {
			case ndsEntryKey:
				s, err := wireString("table key", v)
				key = s
				return err
			case ndsEntryValue:
				// A repeated value field merges, as protobuf does.
				return decodeNameInfo(&info, v)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("table entry %q: %w", key, err)
		}
		table[key] = info
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decode NameTable: %w", err)
	}
	return table, nil
}

func decodeNameInfo(info *NameInfo, b []byte) error {
	return eachField(b, func(num protowire.Number, v []byte) error {
		var dst *string
		switch num {
		case ndsInfoIPs, ndsInfoAltHosts:
			s, err := wireString(map[protowire.Number]string{ndsInfoIPs: "ips", ndsInfoAltHosts: "alt_hosts"}[num], v)
			if err != nil {
				return err
			}
			if num == ndsInfoIPs {
				info.IPs = append(info.IPs, s)
			} else {
				info.AltHosts = append(info.AltHosts, s)
			}
			return nil
		case ndsInfoRegistry:
			dst = &info.Registry
		case ndsInfoShortname:
			dst = &info.Shortname
		case ndsInfoNamespace:
			dst = &info.Namespace
		default:
			return nil
		}
		s, err := wireString(fmt.Sprintf("name info field %d", num), v)
		*dst = s
		return err
	})
}

// eachField calls fn with each length-delimited field of a message and its
// payload; the other fields are only checked and skipped.
func eachField(b []byte, fn func(protowire.Number, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if num > protowire.MaxValidNumber {
			return fmt.Errorf("field number %d out of range", num)
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		if err := fn(num, v); err != nil {
			return err
		}
	}
	return nil
}

func wireString(what string, v []byte) (string, error) {
	if !utf8.Valid(v) {
		// proto3 strings are UTF-8; the generated code refuses others.
		return "", fmt.Errorf("%s: invalid UTF-8", what)
	}
	return string(v), nil
}

// newNameTableEntry is what one NameTable contributes: its names and VIPs,
// in the same form as a listener's DNS tables, so that they merge alike.
// Hosts are taken in sorted order (a map has none on the wire); hosts
// without addresses (headless services with no ready endpoint) add nothing.
func newNameTableEntry(b []byte) *listenerEntry {
	e := &listenerEntry{name: "NameTable"}
	table, err := DecodeNameTable(b)
	if err != nil {
		e.err = err
		return e
	}
	names := map[string][]netip.Addr{}
	var order []string
	for _, host := range slices.Sorted(maps.Keys(table)) {
		name := strings.TrimSuffix(strings.ToLower(host), ".")
		if name == "" || strings.Contains(name, "..") {
			e.err = fmt.Errorf("NameTable: invalid host %q", host)
			return e
		}
		for _, ip := range table[host].IPs {
			if err := addName(names, &order, name, ip); err != nil {
				e.err = fmt.Errorf("NameTable: host %s: %w", host, err)
				return e
			}
		}
	}
	for _, n := range order {
		e.names = append(e.names, dnsName{name: n, addrs: slices.Clip(names[n])})
	}
	return e
}
