package xdsclient

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/shunt-dev/shunt/wire"
)

// NameTableType is Istio's NDS resource: a table of hostnames and their
// VIPs that istiod sends to a node whose metadata asks for DNS capture.
const NameTableType = wire.IstioNameTableType

// The message is istio.networking.nds.v1.NameTable, whose proto lives in
// Istio's own module (pkg/dns/proto), not in istio.io/api; it is small and
// stable, so it is read by its published field numbers:
//
//	message NameTable {
//	  message NameInfo { repeated string ips = 1; string registry = 2;
//	    string shortname = 3; string namespace = 4; repeated string alt_hosts = 5; }
//	  map<string, NameInfo> table = 1;  // entry: key = 1, value = 2
//	  NameInfo name_info = 2;           // per-resource form (delta), unused here
//	}
const (
	ndsTableField    protowire.Number = 1
	ndsMapKeyField   protowire.Number = 1
	ndsMapValueField protowire.Number = 2
	ndsIPsField      protowire.Number = 1
)

// newNameTableEntry turns one NameTable into the names it contributes, as a
// listener's DNS table does.
func newNameTableEntry(b []byte) *listenerEntry {
	e := &listenerEntry{name: "NameTable"}
	table, err := decodeNameTable(b)
	if err != nil {
		e.err = fmt.Errorf("NameTable: %w", err)
		return e
	}
	names := map[string][]netip.Addr{}
	var order []string
	for _, host := range slices.Sorted(maps.Keys(table)) {
		name := strings.TrimSuffix(strings.ToLower(host), ".")
		if name == "" || strings.Contains(name, "..") {
			e.err = fmt.Errorf("NameTable: invalid name %q", host)
			return e
		}
		for _, ip := range table[host] {
			if err := addName(names, &order, name, ip); err != nil {
				e.err = fmt.Errorf("NameTable: %w", err)
				return e
			}
		}
	}
	for _, n := range order {
		e.names = append(e.names, dnsName{name: n, addrs: slices.Clip(names[n])})
	}
	return e
}

// decodeNameTable reads a NameTable's table: hostname → IPs.
func decodeNameTable(b []byte) (map[string][]string, error) {
	out := map[string][]string{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("bad field tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num != ndsTableField || typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return nil, fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		entry, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, fmt.Errorf("table entry: %w", protowire.ParseError(n))
		}
		b = b[n:]
		host, info, err := decodeMapEntry(entry)
		if err != nil {
			return nil, err
		}
		ips, err := decodeNameInfo(info)
		if err != nil {
			return nil, fmt.Errorf("table[%q]: %w", host, err)
		}
		// A map key given twice: the last one wins, as in proto3.
		out[host] = ips
	}
	return out, nil
}

func decodeMapEntry(b []byte) (key string, value []byte, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", nil, fmt.Errorf("table entry: bad field tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == ndsMapKeyField && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", nil, errors.New("table entry: bad key")
			}
			key, b = string(v), b[n:]
		case num == ndsMapValueField && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", nil, errors.New("table entry: bad value")
			}
			value, b = v, b[n:]
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return "", nil, fmt.Errorf("table entry: field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	return key, value, nil
}

func decodeNameInfo(b []byte) ([]string, error) {
	var ips []string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("bad field tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num == ndsIPsField && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, errors.New("bad ips")
			}
			ips, b = append(ips, string(v)), b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return ips, nil
}
