// Package deploy_test checks the shipped manifests: every Kubernetes object
// decodes strictly into its API type (an unknown or misplaced field fails),
// the RBAC is read-only, and the embedded shunt configurations are valid.
package deploy_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/shunt-dev/shunt/cni"
	"github.com/shunt-dev/shunt/redirect"
)

type objects struct {
	daemonSets   []appsv1.DaemonSet
	configMaps   []corev1.ConfigMap
	pods         []corev1.Pod
	clusterRoles []rbacv1.ClusterRole
	kinds        []string
}

func load(t *testing.T) *objects {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	o := &objects{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(b), "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var meta struct {
				Kind string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			var target any
			switch meta.Kind {
			case "Namespace":
				target = &corev1.Namespace{}
			case "ServiceAccount":
				target = &corev1.ServiceAccount{}
			case "ClusterRole":
				o.clusterRoles = append(o.clusterRoles, rbacv1.ClusterRole{})
				target = &o.clusterRoles[len(o.clusterRoles)-1]
			case "ClusterRoleBinding":
				target = &rbacv1.ClusterRoleBinding{}
			case "ConfigMap":
				o.configMaps = append(o.configMaps, corev1.ConfigMap{})
				target = &o.configMaps[len(o.configMaps)-1]
			case "DaemonSet":
				o.daemonSets = append(o.daemonSets, appsv1.DaemonSet{})
				target = &o.daemonSets[len(o.daemonSets)-1]
			case "Pod":
				o.pods = append(o.pods, corev1.Pod{})
				target = &o.pods[len(o.pods)-1]
			default:
				t.Fatalf("%s document %d: unexpected kind %q", f, i, meta.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), target); err != nil {
				t.Errorf("%s document %d (%s): %v", f, i, meta.Kind, err)
			}
			o.kinds = append(o.kinds, meta.Kind)
		}
	}
	return o
}

func TestManifestsDecodeStrictly(t *testing.T) {
	o := load(t)
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Pod"} {
		if !slices.Contains(o.kinds, k) {
			t.Errorf("no %s in the manifests", k)
		}
	}
}

func TestRBACIsReadOnly(t *testing.T) {
	for _, cr := range load(t).clusterRoles {
		for _, r := range cr.Rules {
			for _, v := range r.Verbs {
				if v != "get" && v != "list" && v != "watch" {
					t.Errorf("%s grants %q", cr.Name, v)
				}
			}
			for _, res := range r.Resources {
				if res != "pods" && res != "namespaces" {
					t.Errorf("%s grants access to %q", cr.Name, res)
				}
			}
		}
	}
}

func TestDaemonSetShape(t *testing.T) {
	o := load(t)
	if len(o.daemonSets) != 1 {
		t.Fatalf("%d DaemonSets", len(o.daemonSets))
	}
	ds := o.daemonSets[0]
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || !spec.HostPID {
		t.Errorf("hostNetwork=%v hostPID=%v, want both", spec.HostNetwork, spec.HostPID)
	}
	paths := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			paths[v.HostPath.Path] = true
		}
	}
	for _, p := range []string{"/opt/cni/bin", "/etc/cni/net.d", "/sys/fs/bpf", "/sys/fs/cgroup", "/run/shunt", "/var/lib/shunt"} {
		if !paths[p] {
			t.Errorf("no hostPath volume for %s", p)
		}
	}
	c := spec.Containers[0]
	// The agent's image: the init container's has no `shunt node`.
	if !strings.Contains(c.Image, "/shunt-node:") || len(c.Command) == 0 || c.Command[0] != "/usr/local/bin/shunt" || len(c.Args) == 0 || c.Args[0] != "node" {
		t.Errorf("the agent runs %v %v from image %s, want /usr/local/bin/shunt node from the shunt-node image", c.Command, c.Args, c.Image)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || *c.SecurityContext.Privileged {
		t.Errorf("the agent must not be privileged: it has the capabilities it needs")
	}
}

// The embedded configurations are what shunt reads: the plugin entry must
// pass the plugin's strict parser, capture.yaml the config file loader.
func TestEmbeddedConfigurationsAreValid(t *testing.T) {
	for _, cm := range load(t).configMaps {
		if s, ok := cm.Data["cni.json"]; ok {
			var entry map[string]any
			if err := yaml.Unmarshal([]byte(s), &entry); err != nil {
				t.Fatalf("%s cni.json: %v", cm.Name, err)
			}
			entry["cniVersion"], entry["name"], entry["type"] = "1.0.0", "k8s", "shunt-cni"
			b, _ := yaml.Marshal(entry)
			j, err := yaml.YAMLToJSON(b)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cni.ParseConf(j); err != nil {
				t.Errorf("%s cni.json: %v", cm.Name, err)
			}
		}
		if s, ok := cm.Data["capture.yaml"]; ok {
			cfg := redirect.NewConfig()
			if err := cfg.LoadFile("capture.yaml", []byte(s)); err != nil {
				t.Errorf("%s capture.yaml: %v", cm.Name, err)
			}
			_ = cfg.Set("noDNS", "true", "test") // the workload's resolv.conf is not here
			if _, err := cfg.Plan(redirect.OSHost{}); err != nil {
				t.Errorf("%s capture.yaml: %v", cm.Name, err)
			}
		}
	}
}
