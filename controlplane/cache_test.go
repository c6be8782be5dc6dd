package controlplane

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/shunt-dev/shunt/mesh"
)

func wire(t *testing.T, rs []types.Resource) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range rs {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		out[nameOf(r)] = string(b)
	}
	return out
}

func nameOf(r types.Resource) string {
	return r.(interface{ GetName() string }).GetName()
}

func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFileCacheReadsOnlyChangedFiles(t *testing.T) {
	dir := t.TempDir()
	writeAtomic(t, filepath.Join(dir, "a.yaml"), esYAML("a"))
	writeAtomic(t, filepath.Join(dir, "b.yaml"), esYAML("b"))
	var c fileCache
	load := func(reread bool) ([]*mesh.ParsedFile, string, bool) {
		t.Helper()
		paths, stats, changed, err := c.scan(dir)
		if err != nil {
			t.Fatal(err)
		}
		files, fp, err := c.load(dir, paths, stats, reread)
		if err != nil {
			t.Fatal(err)
		}
		return files, fp, changed
	}
	files, fp1, changed := load(false)
	if !changed || c.reads != 2 || len(files) != 2 {
		t.Fatalf("first load: changed %v, reads %d, files %d", changed, c.reads, len(files))
	}
	first := files
	files, fp2, changed := load(false)
	if changed || c.reads != 2 || fp2 != fp1 || files[0] != first[0] || files[1] != first[1] {
		t.Fatalf("unchanged directory: changed %v, reads %d, same fingerprint %v", changed, c.reads, fp1 == fp2)
	}
	writeAtomic(t, filepath.Join(dir, "b.yaml"), esYAML("b2"))
	files, fp3, changed := load(false)
	if !changed || c.reads != 3 || fp3 == fp1 {
		t.Fatalf("b changed: changed %v, reads %d (want 3), new fingerprint %v", changed, c.reads, fp3 != fp1)
	}
	if files[0] != first[0] || files[1] == first[1] {
		t.Error("a was parsed again, or b was not")
	}
	// The same contents under a new inode are read (the stat changed) but
	// not parsed again.
	writeAtomic(t, filepath.Join(dir, "b.yaml"), esYAML("b2"))
	again, fp4, _ := load(false)
	if c.reads != 4 || fp4 != fp3 || again[1] != files[1] {
		t.Errorf("rewritten with the same contents: reads %d, same fingerprint %v, same parse %v", c.reads, fp4 == fp3, again[1] == files[1])
	}
	// A forced load reads everything.
	load(true)
	if c.reads != 6 {
		t.Errorf("forced load read %d files in all, want 6", c.reads)
	}
	// What was loaded equals loading the files from scratch.
	res, _, err := mesh.LoadParsed(again)
	if err != nil {
		t.Fatal(err)
	}
	want, _, err := mesh.Load([]mesh.File{
		{Name: filepath.Join(filepath.Base(dir), "a.yaml"), Data: []byte(esYAML("a"))},
		{Name: filepath.Join(filepath.Base(dir), "b.yaml"), Data: []byte(esYAML("b2"))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", res) != fmt.Sprintf("%+v", want) {
		t.Errorf("cached load\n%+v\nwant\n%+v", res, want)
	}
}

func servicesYAML(n int, changed string) []mesh.File {
	var s string
	for i := range n {
		addr := fmt.Sprintf("svc-%d.example.com:443", i)
		if fmt.Sprint(i) == changed {
			addr = fmt.Sprintf("moved-%d.example.com:8443", i)
		}
		s += fmt.Sprintf("---\ntype: ExternalService\nmesh: default\nname: svc-%d\ntags:\n  kuma.io/service: svc-%d\n  kuma.io/protocol: http\nnetworking:\n  address: %s\n  tls:\n    enabled: %v\n", i, i, addr, i%2 == 0)
	}
	return []mesh.File{{Name: "services.yaml", Data: []byte(s)}}
}

func TestTranslateCacheRebuildsOnlyWhatChanged(t *testing.T) {
	alloc, err := mesh.NewVIPAllocator(mesh.DefaultVIPv4CIDR, mesh.DefaultVIPv6CIDR)
	if err != nil {
		t.Fatal(err)
	}
	var c translateCache
	var vips mesh.VIPs
	step := func(changed string) (cached, full Resources) {
		t.Helper()
		res, _, err := mesh.Load(servicesYAML(20, changed))
		if err != nil {
			t.Fatal(err)
		}
		if vips, err = alloc.Allocate(mesh.Hostnames(res), vips); err != nil {
			t.Fatal(err)
		}
		view := res.View(mesh.DefaultMesh, "")
		c.rotate()
		if cached, err = translateCached(view, vips, DefaultTranslateOptions(), &c); err != nil {
			t.Fatal(err)
		}
		if full, err = Translate(view, vips, DefaultTranslateOptions()); err != nil {
			t.Fatal(err)
		}
		return cached, full
	}
	same := func(cached, full Resources) {
		t.Helper()
		for _, kind := range []struct {
			name    string
			got, wt []types.Resource
		}{{"listeners", cached.Listeners, full.Listeners}, {"clusters", cached.Clusters, full.Clusters}} {
			got, want := wire(t, kind.got), wire(t, kind.wt)
			if len(got) != len(want) {
				t.Fatalf("%s: %d, want %d", kind.name, len(got), len(want))
			}
			for n, w := range want {
				if got[n] != w {
					t.Errorf("%s %s differs from a full translation", kind.name, n)
				}
			}
		}
	}

	cached, full := step("")
	same(cached, full)
	// 20 clusters, 20 .mesh and 20 hostname listeners.
	if c.built != 60 {
		t.Errorf("first translation built %d resources, want 60", c.built)
	}
	prev := cached

	c.built = 0
	cached, full = step("")
	same(cached, full)
	if c.built != 0 {
		t.Errorf("unchanged resources: %d rebuilt, want 0", c.built)
	}

	// svc-7 moves: its cluster and its hostname listener (a new name) are
	// new; its .mesh listener, whose route, cluster name and VIPs are the
	// same, is reused.
	c.built = 0
	cached, full = step("7")
	same(cached, full)
	if c.built != 2 {
		t.Errorf("one service changed: %d resources rebuilt, want 2 (its cluster and listener)", c.built)
	}
	before := map[string]types.Resource{}
	for _, r := range append(prev.Listeners, prev.Clusters...) {
		before[nameOf(r)] = r
	}
	for _, r := range append(cached.Listeners, cached.Clusters...) {
		n := nameOf(r)
		reused := before[n] == r
		touched := n == "external:svc-7" || n == "outbound:moved-7.example.com:8443" || n == DNSListenerName || n == OutboundListenerName || n == PassthroughCluster
		if reused == touched {
			t.Errorf("%s: reused %v", n, reused)
		}
	}
}
