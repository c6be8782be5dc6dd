package xdsclient

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/shunt-dev/shunt/mesh"
)

// nameTableType is istio.networking.nds.v1.NameTable built by protobuf-go
// from the message's published descriptor (Istio's pkg/dns/proto/nds.proto),
// so the test's encoder is protobuf's own, not the decoder under test.
func nameTableType(t *testing.T) protoreflect.MessageType {
	t.Helper()
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	msg := descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	field := func(name string, n int32, l *descriptorpb.FieldDescriptorProto_Label, ty *descriptorpb.FieldDescriptorProto_Type, typeName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n), Label: l, Type: ty, JsonName: proto.String(name)}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		return f
	}
	fd := &descriptorpb.FileDescriptorProto{
		Name: proto.String("nds.proto"), Package: proto.String("istio.networking.nds.v1"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("NameTable"),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("table", 1, rep, msg, ".istio.networking.nds.v1.NameTable.TableEntry"),
			},
			NestedType: []*descriptorpb.DescriptorProto{
				{Name: proto.String("NameInfo"), Field: []*descriptorpb.FieldDescriptorProto{
					field("ips", 1, rep, str, ""), field("registry", 2, opt, str, ""), field("shortname", 3, opt, str, ""),
					field("namespace", 4, opt, str, ""), field("alt_hosts", 5, rep, str, ""),
				}},
				{Name: proto.String("TableEntry"), Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
					Field: []*descriptorpb.FieldDescriptorProto{field("key", 1, opt, str, ""), field("value", 2, opt, msg, ".istio.networking.nds.v1.NameTable.NameInfo")}},
			},
		}},
	}
	f, err := protodesc.NewFile(fd, nil)
	if err != nil {
		t.Fatal(err)
	}
	return dynamicpb.NewMessageType(f.Messages().ByName("NameTable"))
}

func nameTable(t *testing.T, entries map[string][]string) proto.Message {
	t.Helper()
	mt := nameTableType(t)
	m := mt.New()
	table := m.Mutable(mt.Descriptor().Fields().ByName("table")).Map()
	infoDesc := mt.Descriptor().Messages().ByName("NameInfo")
	for host, ips := range entries {
		info := dynamicpb.NewMessage(infoDesc)
		list := info.Mutable(infoDesc.Fields().ByName("ips")).List()
		for _, ip := range ips {
			list.Append(protoreflect.ValueOfString(ip))
		}
		info.Set(infoDesc.Fields().ByName("registry"), protoreflect.ValueOfString("External"))
		table.Set(protoreflect.ValueOfString(host).MapKey(), protoreflect.ValueOfMessage(info))
	}
	if got := mt.Descriptor().FullName(); got != "istio.networking.nds.v1.NameTable" {
		t.Fatalf("descriptor %s", got)
	}
	return m.Interface()
}

func TestDecodeNameTable(t *testing.T) {
	b, err := proto.Marshal(nameTable(t, map[string][]string{
		"httpbin.org":     {"240.240.0.1", "2001:2::1"},
		"Example.COM.":    {"240.240.0.2"},
		"details.default": {"10.96.0.7"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	e := newNameTableEntry(b)
	if e.err != nil {
		t.Fatal(e.err)
	}
	got := map[string][]netip.Addr{}
	for _, n := range e.names {
		got[n.name] = n.addrs
	}
	want := map[string][]netip.Addr{
		"httpbin.org":     addrs("240.240.0.1", "2001:2::1"),
		"example.com":     addrs("240.240.0.2"),
		"details.default": addrs("10.96.0.7"),
	}
	if len(got) != len(want) {
		t.Fatalf("names = %v, want %v", got, want)
	}
	for k, v := range want {
		if !slices.Equal(got[k], v) {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	bad, _ := proto.Marshal(nameTable(t, map[string][]string{"x.example": {"not-an-ip"}}))
	if e := newNameTableEntry(bad); e.err == nil || !strings.Contains(e.err.Error(), `invalid address "not-an-ip" for name x.example`) {
		t.Errorf("bad address: %v", e.err)
	}
	if e := newNameTableEntry([]byte{0x0a, 0x05, 0x01}); e.err == nil {
		t.Error("a truncated message decoded")
	}
}

// A go-control-plane server serving NameTables beside LDS and CDS, as
// istiod does: with Config.NameTable the client subscribes to NDS and
// answers its names; a new table replaces the old.
func TestNameTableOverADS(t *testing.T) {
	snaps := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	nds := cachev3.NewLinearCache(NameTableType)
	mux := &cachev3.MuxCache{
		Classify: func(r *cachev3.Request) string {
			if r.GetTypeUrl() == NameTableType {
				return "nds"
			}
			return "rest"
		},
		Caches: map[string]cachev3.Cache{"nds": nds, "rest": snaps},
	}
	var requests []*discoveryv3.DiscoveryRequest
	reqs := make(chan *discoveryv3.DiscoveryRequest, 100)
	srv := serverv3.NewServer(context.Background(), mux, serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
		reqs <- r
		return nil
	}})
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)

	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {}, resourcev3.ClusterType: {},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := snaps.SetSnapshot(context.Background(), "sidecar~10.0.0.1~app.default~default.svc.cluster.local", snap); err != nil {
		t.Fatal(err)
	}
	if err := nds.UpdateResource("", nameTable(t, map[string][]string{"httpbin.org": {"240.240.0.1"}})); err != nil {
		t.Fatal(err)
	}

	c, err := New(Config{Server: lis.Addr().String(), NodeID: "sidecar~10.0.0.1~app.default~default.svc.cluster.local",
		NameTable: true, Logger: quietLogger(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	nextUpdate(t, c, 5*time.Second, func(s *mesh.AgentSnapshot) bool {
		return slices.Equal(s.Names["httpbin.org"], addrs("240.240.0.1"))
	})
	if err := nds.UpdateResource("", nameTable(t, map[string][]string{"httpbin.org": {"240.240.0.1"}, "example.com": {"240.240.0.2"}})); err != nil {
		t.Fatal(err)
	}
	nextUpdate(t, c, 5*time.Second, func(s *mesh.AgentSnapshot) bool {
		return slices.Equal(s.Names["example.com"], addrs("240.240.0.2"))
	})
	// The NameTable responses were ACKed.
	deadline := time.After(5 * time.Second)
	for {
		select {
		case r := <-reqs:
			requests = append(requests, r)
			if r.GetTypeUrl() == NameTableType && r.GetResponseNonce() != "" && r.GetErrorDetail() == nil && r.GetVersionInfo() != "" {
				return
			}
		case <-deadline:
			t.Fatalf("no ACK of a NameTable among %d requests", len(requests))
		}
	}
}
