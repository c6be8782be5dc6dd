package node

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/shunt-dev/shunt/cni"
	"github.com/shunt-dev/shunt/redirect"
)

func ns(name string, ann, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann, Labels: labels}}
}

func pod(namespace, name, node string, ann map[string]string, containerIDs ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID("uid-" + name), Annotations: ann},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, id := range containerIDs {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{ContainerID: "containerd://" + id})
	}
	return p
}

func TestPodSettingsFromAnnotations(t *testing.T) {
	client := fake.NewSimpleClientset(
		ns("shop", map[string]string{"shunt.dev/exclude-outbound-ports": "22", "shunt.dev/outbound-port": "15101"}, nil),
		ns("off", nil, map[string]string{"shunt.dev/capture": "false"}),
		pod("shop", "web", "n1", map[string]string{"shunt.dev/exclude-outbound-ports": "22,5432", "shunt.dev/proxy-uid": "1337"}),
		pod("shop", "typo", "n1", map[string]string{"shunt.dev/exclude-outbund-ports": "22"}),
		pod("shop", "nodekey", "n1", map[string]string{"shunt.dev/netns": "/proc/1/ns/net"}),
		pod("off", "legacy", "n1", nil),
		pod("off", "optin", "n1", map[string]string{"shunt.dev/capture": "true"}),
	)
	ctx := context.Background()
	get := func(namespace, name string) *cni.PodSettings {
		t.Helper()
		s, err := PodSettings(ctx, client, namespace, name)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	cfg := redirect.NewConfig()
	if err := cni.ApplyAnnotations(cfg, *get("shop", "web")); err != nil {
		t.Fatal(err)
	}
	// The pod overrides its namespace; the namespace fills the rest.
	if cfg.Get("excludeOutboundPorts") != "22,5432" || cfg.Get("proxyUID") != "1337" || cfg.Get("outboundPort") != "15101" {
		t.Errorf("config from annotations: %v", cfg.Values())
	}
	if _, err := cfg.Plan(redirect.OSHost{}); err != nil && !strings.Contains(err.Error(), "resolvConf") {
		t.Errorf("plan from annotations: %v", err)
	}

	for name, want := range map[string]string{"typo": "exclude-outbund-ports", "nodekey": "set by the node"} {
		err := cni.ApplyAnnotations(redirect.NewConfig(), *get("shop", name))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: ApplyAnnotations = %v, want an error naming %q", name, err, want)
		}
	}

	for _, c := range []struct {
		ns, name string
		def      bool
		want     bool
	}{
		{"shop", "web", true, true},
		{"shop", "web", false, false},
		{"off", "legacy", true, false},
		{"off", "optin", false, true},
	} {
		got, err := get(c.ns, c.name).Captured(c.def)
		if err != nil || got != c.want {
			t.Errorf("%s/%s default %v: captured = %v, %v; want %v", c.ns, c.name, c.def, got, err, c.want)
		}
	}
}

func TestRepairFindsPodsThatEscapedThePlugin(t *testing.T) {
	proc, state := t.TempDir(), t.TempDir()
	// Fake processes: 100 belongs to "early" (never seen by the plugin),
	// 200 to "seen" (captured by ADD), 300 to "optout", 400 to "hostview"
	// (captured by ADD, its namespace file not visible to the agent).
	netns := map[string]string{}
	for pid, id := range map[string]string{"100": "aaa111", "200": "bbb222", "300": "ccc333", "400": "ggg777"} {
		dir := filepath.Join(proc, pid)
		must(t, os.MkdirAll(filepath.Join(dir, "ns"), 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::/kubepods/pod/cri-containerd-"+id+".scope\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(dir, "ns", "net"), nil, 0o644))
		netns[pid] = filepath.Join(dir, "ns", "net")
	}
	must(t, os.MkdirAll(filepath.Join(state, "sandbox-b"), 0o755))
	must(t, os.WriteFile(filepath.Join(state, "sandbox-b", "cni.json"), []byte(`{"netns": "`+netns["200"]+`", "captured": true}`), 0o644))

	must(t, os.MkdirAll(filepath.Join(state, "sandbox-g"), 0o755))
	must(t, os.WriteFile(filepath.Join(state, "sandbox-g", "cni.json"), []byte(`{"netns": "/var/run/netns/cni-not-mounted-here", "pod": "shop/hostview", "captured": true}`), 0o644))

	must(t, os.MkdirAll(filepath.Join(state, "sandbox-g"), 0o755))
	must(t, os.WriteFile(filepath.Join(state, "sandbox-g", "cni.json"), []byte(`{"netns": "/var/run/netns/cni-not-mounted-here", "pod": "shop/hostview", "captured": true}`), 0o644))

	client := fake.NewSimpleClientset(
		ns("shop", nil, nil), ns("kube-system", nil, nil),
		pod("shop", "early", "n1", nil, "aaa111"),
		pod("shop", "seen", "n1", nil, "bbb222"),
		pod("shop", "hostview", "n1", nil, "ggg777"),
		pod("shop", "optout", "n1", map[string]string{"shunt.dev/capture": "false"}, "ccc333"),
		pod("shop", "elsewhere", "n2", nil, "ddd444"),
		pod("shop", "gone", "n1", nil, "eee555"),
		pod("kube-system", "dns", "n1", nil, "fff666"),
	)
	r := &Repairer{Client: client, NodeName: "n1", ProcRoot: proc, StateDir: state, DefaultCapture: true, ExcludeNamespaces: []string{"kube-system"}}
	found, err := r.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Finding{}
	for _, f := range found {
		got[f.Pod] = f
	}
	if f, ok := got["shop/early"]; !ok || f.Netns != netns["100"] || f.Problem != "" {
		t.Errorf("early pod: %+v (found %v)", f, found)
	}
	if f, ok := got["shop/gone"]; !ok || f.Problem == "" {
		t.Errorf("a pod without a process must be reported: %+v", f)
	}
	for _, name := range []string{"shop/seen", "shop/hostview", "shop/optout", "shop/elsewhere", "kube-system/dns"} {
		if _, ok := got[name]; ok {
			t.Errorf("%s should not need repair", name)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
