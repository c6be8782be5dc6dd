package xdsclient

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// nameTableDesc is nds.proto's NameTable, as nameTableType builds it.
func nameTableDesc(t *testing.T) protoreflect.MessageDescriptor {
	t.Helper()
	return nameTableType(t).Descriptor()
}

// newNameTable builds a NameTable message with the protobuf runtime.
func newNameTable(t *testing.T, hosts map[string]NameInfo) *dynamicpb.Message {
	t.Helper()
	md := nameTableDesc(t)
	m := dynamicpb.NewMessage(md)
	tf := md.Fields().ByName("table")
	table := m.Mutable(tf).Map()
	infoDesc := md.Messages().ByName("NameInfo")
	for h, info := range hosts {
		v := dynamicpb.NewMessage(infoDesc)
		for _, ip := range info.IPs {
			v.Mutable(infoDesc.Fields().ByName("ips")).List().Append(protoreflect.ValueOfString(ip))
		}
		for _, a := range info.AltHosts {
			v.Mutable(infoDesc.Fields().ByName("alt_hosts")).List().Append(protoreflect.ValueOfString(a))
		}
		for name, s := range map[protoreflect.Name]string{"registry": info.Registry, "shortname": info.Shortname, "namespace": info.Namespace} {
			if s != "" {
				v.Set(infoDesc.Fields().ByName(name), protoreflect.ValueOfString(s))
			}
		}
		table.Set(protoreflect.ValueOfString(h).MapKey(), protoreflect.ValueOfMessage(v))
	}
	return m
}

// readNameTable decodes a NameTable with the protobuf runtime.
func readNameTable(t *testing.T, b []byte) map[string]NameInfo {
	t.Helper()
	md := nameTableDesc(t)
	m := dynamicpb.NewMessage(md)
	if err := proto.Unmarshal(b, m); err != nil {
		t.Fatal(err)
	}
	infoDesc := md.Messages().ByName("NameInfo")
	strs := func(l protoreflect.List) []string {
		var out []string
		for i := range l.Len() {
			out = append(out, l.Get(i).String())
		}
		return out
	}
	out := map[string]NameInfo{}
	m.Get(md.Fields().ByName("table")).Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		im := v.Message()
		out[k.String()] = NameInfo{
			IPs:       strs(im.Get(infoDesc.Fields().ByName("ips")).List()),
			Registry:  im.Get(infoDesc.Fields().ByName("registry")).String(),
			Shortname: im.Get(infoDesc.Fields().ByName("shortname")).String(),
			Namespace: im.Get(infoDesc.Fields().ByName("namespace")).String(),
			AltHosts:  strs(im.Get(infoDesc.Fields().ByName("alt_hosts")).List()),
		}
		return true
	})
	return out
}

func TestDecodeNameTableFields(t *testing.T) {
	hosts := map[string]NameInfo{
		"httpbin.org":                       {IPs: []string{"240.240.0.1", "2001:2::f0f0:1"}, Registry: "External"},
		"reviews.default.svc.cluster.local": {IPs: []string{"10.96.0.12"}, Registry: "Kubernetes", Shortname: "reviews", Namespace: "default"},
		"old.example":                       {IPs: []string{"240.240.0.2"}, AltHosts: []string{"old"}},
		"headless.example":                  {},
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(newNameTable(t, hosts))
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeNameTable(b)
	if err != nil {
		t.Fatal(err)
	}
	for h, want := range hosts {
		g := got[h]
		if !slices.Equal(g.IPs, want.IPs) || g.Registry != want.Registry || g.Shortname != want.Shortname ||
			g.Namespace != want.Namespace || !slices.Equal(g.AltHosts, want.AltHosts) {
			t.Errorf("%s = %+v, want %+v", h, g, want)
		}
	}
	if len(got) != len(hosts) {
		t.Errorf("%d hosts, want %d: %v", len(got), len(hosts), got)
	}

	// Fields a later nds.proto may add are skipped, as the generated code
	// skips them.
	extra := protowire.AppendTag(slices.Clone(b), 7, protowire.VarintType)
	extra = protowire.AppendVarint(extra, 42)
	extra = protowire.AppendTag(extra, 8, protowire.BytesType)
	extra = protowire.AppendString(extra, "later")
	if got, err := DecodeNameTable(extra); err != nil || len(got) != len(hosts) {
		t.Errorf("with unknown fields: %v, %v", got, err)
	}
	// So is a known field of another wire type.
	odd := protowire.AppendVarint(protowire.AppendTag(slices.Clone(b), 1, protowire.VarintType), 3)
	if got, err := DecodeNameTable(odd); err != nil || len(got) != len(readNameTable(t, odd)) {
		t.Errorf("table field as a varint: %v, %v; the runtime reads %v", got, err, readNameTable(t, odd))
	}

	// A repeated key keeps its last value, as in the generated code.
	entry := func(key, ip string) []byte {
		var info []byte
		info = protowire.AppendTag(info, 1, protowire.BytesType)
		info = protowire.AppendString(info, ip)
		var e []byte
		e = protowire.AppendTag(e, 1, protowire.BytesType)
		e = protowire.AppendString(e, key)
		e = protowire.AppendTag(e, 2, protowire.BytesType)
		e = protowire.AppendBytes(e, info)
		out := protowire.AppendTag(nil, 1, protowire.BytesType)
		return protowire.AppendBytes(out, e)
	}
	dup := append(entry("a.example", "240.240.0.1"), entry("a.example", "240.240.0.9")...)
	if got, err := DecodeNameTable(dup); err != nil || !slices.Equal(got["a.example"].IPs, readNameTable(t, dup)["a.example"].IPs) {
		t.Errorf("repeated key: %v, %v; the runtime reads %v", got, err, readNameTable(t, dup))
	}
}

func TestDecodeNameTableErrors(t *testing.T) {
	good, err := proto.Marshal(newNameTable(t, map[string]NameInfo{"a.example": {IPs: []string{"240.240.0.1"}}}))
	if err != nil {
		t.Fatal(err)
	}
	badUTF8 := protowire.AppendTag(nil, 1, protowire.BytesType)
	badUTF8 = protowire.AppendBytes(badUTF8, protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "\xff.example"))
	groupEnd := protowire.AppendTag(nil, 1, protowire.EndGroupType)
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"truncated", good[:len(good)-3], "decode NameTable"},
		{"unmatched end of group", groupEnd, "decode NameTable"},
		{"key not UTF-8", badUTF8, "invalid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeNameTable(tt.b); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
			// The protobuf runtime refuses it too.
			if err := proto.Unmarshal(tt.b, dynamicpb.NewMessage(nameTableDesc(t))); err == nil {
				t.Errorf("the runtime accepts it")
			}
		})
	}
}

func TestNameTableEntry(t *testing.T) {
	b, _ := proto.Marshal(newNameTable(t, map[string]NameInfo{
		"HTTPBin.org.":     {IPs: []string{"240.240.0.1", "240.240.0.1", "2001:2::1"}},
		"headless.example": {},
	}))
	e := newNameTableEntry(b)
	if e.err != nil {
		t.Fatal(e.err)
	}
	if len(e.names) != 1 || e.names[0].name != "httpbin.org" || len(e.names[0].addrs) != 2 ||
		e.names[0].addrs[0].String() != "240.240.0.1" || e.names[0].addrs[1].String() != "2001:2::1" {
		t.Errorf("names = %+v", e.names)
	}

	for host, ip := range map[string]string{"bad.example": "240.240.0.300", "a..example": "240.240.0.1", "": "240.240.0.1"} {
		b, _ := proto.Marshal(newNameTable(t, map[string]NameInfo{host: {IPs: []string{ip}}}))
		e := newNameTableEntry(b)
		if e.err == nil || !strings.Contains(e.err.Error(), "NameTable") || !strings.Contains(e.err.Error(), strings.TrimSuffix(host, ".")) {
			t.Errorf("host %q ip %q: err = %v, want one naming the host", host, ip, e.err)
		}
	}
}
