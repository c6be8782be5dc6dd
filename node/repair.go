package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/shunt-dev/shunt/cni"
)

// Finding is a running pod on this node whose network namespace has no
// capture: it started before the plugin was chained.
type Finding struct {
	Pod   string
	UID   string
	Netns string // /proc/PID/ns/net of one of its processes, "" when not found
	// Cgroup is the pod's cgroup-v2 path, as the runtime's cgroupPath
	// names it: the parent of that process's container cgroup ("" when
	// unknown). The eBPF engine attaches there.
	Cgroup   string
	Settings *cni.PodSettings
	Problem  string // why it could not be repaired, if it could not
}

// Repairer finds pods that escaped the plugin.
type Repairer struct {
	Client   kubernetes.Interface
	NodeName string
	// ProcRoot is the host's /proc (the agent runs with hostPID).
	ProcRoot string
	// StateDir is the plugin's state directory: its records name the
	// namespaces already captured.
	StateDir string
	// DefaultCapture and ExcludeNamespaces mirror the plugin's settings.
	DefaultCapture    bool
	ExcludeNamespaces []string
}

// Scan lists this node's pods and returns those that should be captured
// and are not.
func (r *Repairer) Scan(ctx context.Context) ([]Finding, error) {
	pods, err := r.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", r.NodeName).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list pods on node %s: %w", r.NodeName, err)
	}
	captured, capturedPods := r.captured()
	var out []Finding
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Spec.NodeName != r.NodeName || pod.Spec.HostNetwork || pod.Status.Phase != corev1.PodRunning {
			continue
		}
		if containsString(r.ExcludeNamespaces, pod.Namespace) {
			continue
		}
		s, err := PodSettings(ctx, r.Client, pod.Namespace, pod.Name)
		if err != nil {
			return nil, err
		}
		f := Finding{Pod: pod.Namespace + "/" + pod.Name, UID: string(pod.UID), Settings: s}
		want, err := s.Captured(r.DefaultCapture)
		if err != nil {
			f.Problem = err.Error()
			out = append(out, f)
			continue
		}
		if !want {
			continue
		}
		f.Netns, f.Cgroup = r.findNetns(containerIDs(pod))
		if f.Netns == "" {
			f.Problem = "no process of the pod found in " + r.ProcRoot
			out = append(out, f)
			continue
		}
		if captured[inode(f.Netns)] || capturedPods[f.Pod] {
			continue
		}
		out = append(out, f)
	}
	return out, nil
}

func containerIDs(pod *corev1.Pod) []string {
	var ids []string
	for _, list := range [][]corev1.ContainerStatus{pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses} {
		for _, c := range list {
			if _, id, ok := strings.Cut(c.ContainerID, "://"); ok && id != "" {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// findNetns finds a process whose cgroup names one of the containers and
// returns its network namespace file and its pod's cgroup-v2 path.
func (r *Repairer) findNetns(ids []string) (string, string) {
	if len(ids) == 0 {
		return "", ""
	}
	ents, err := os.ReadDir(r.ProcRoot)
	if err != nil {
		return "", ""
	}
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.ProcRoot, e.Name(), "cgroup"))
		if err != nil {
			continue
		}
		for _, id := range ids {
			if strings.Contains(string(b), id) {
				return filepath.Join(r.ProcRoot, e.Name(), "ns", "net"), podCgroup(string(b), id)
			}
		}
	}
	return "", ""
}

// podCgroup is the parent of the cgroup-v2 directory ("0::" line of
// /proc/PID/cgroup) that names the container: runtimes put each container
// in a cgroup under its pod's. A path outside the reader's cgroup
// namespace ("/..") cannot be resolved and gives "".
func podCgroup(procCgroup, id string) string {
	for _, l := range strings.Split(procCgroup, "\n") {
		p, ok := strings.CutPrefix(l, "0::")
		if !ok || !strings.Contains(filepath.Base(p), id) {
			continue
		}
		parent := filepath.Dir(p)
		if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "/..") || parent == "/" {
			return ""
		}
		return parent
	}
	return ""
}

// captured returns the namespaces (by device and inode) that the plugin's
// records say are captured, and the pods of captured records whose
// namespace file the agent cannot see: the runtime's /var/run/netns may not
// be mounted into the agent's pod, and such a pod must not be captured twice.
func (r *Repairer) captured() (map[string]bool, map[string]bool) {
	byNetns, byPod := map[string]bool{}, map[string]bool{}
	recs, _ := filepath.Glob(filepath.Join(r.StateDir, "*", "cni.json"))
	for _, p := range recs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var rec struct {
			Netns    string `json:"netns"`
			Pod      string `json:"pod"`
			Captured bool   `json:"captured"`
		}
		if json.Unmarshal(b, &rec) != nil || !rec.Captured {
			continue
		}
		if k := inode(rec.Netns); k != "" {
			byNetns[k] = true
		} else if rec.Pod != "" {
			byPod[rec.Pod] = true
		}
	}
	return byNetns, byPod
}

func inode(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
