package node_test

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"

	"github.com/shunt-dev/shunt/tests/testenv"
)

// apiServer serves the part of the Kubernetes API that shunt reads: pods
// of a node, one pod, one namespace. It answers only requests that carry
// its bearer token, so a caller without the agent's credentials fails.
type apiServer struct {
	t     *testing.T
	srv   *httptest.Server
	token string

	mu         sync.Mutex
	pods       map[string]*corev1.Pod
	namespaces map[string]*corev1.Namespace
	requests   []string
}

// newAPIServer serves TLS on loopback inside ns, where the agent and the
// plugin (run by cnitool) reach it.
func newAPIServer(t *testing.T, ns *testenv.Netns) *apiServer {
	t.Helper()
	a := &apiServer{t: t, token: "shunt-node-test-token", pods: map[string]*corev1.Pod{}, namespaces: map[string]*corev1.Namespace{}}
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatalf("listen in %s: %v", ns.Name(), err)
	}
	a.srv = httptest.NewUnstartedServer(a)
	a.srv.Listener = ln
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

// kubeconfig writes a kubeconfig for the server into dir.
func (a *apiServer) kubeconfig(dir string) string {
	a.t.Helper()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw})
	cfg := map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []any{map[string]any{"name": "test", "cluster": map[string]any{
			"server": a.srv.URL, "certificate-authority-data": ca,
		}}},
		"users":           []any{map[string]any{"name": "agent", "user": map[string]any{"token": a.token}}},
		"contexts":        []any{map[string]any{"name": "test", "context": map[string]any{"cluster": "test", "user": "agent"}}},
		"current-context": "test",
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		a.t.Fatal(err)
	}
	p := filepath.Join(dir, "agent-kubeconfig")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		a.t.Fatal(err)
	}
	return p
}

func (a *apiServer) addNamespace(name string, annotations map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.namespaces[name] = &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{Kind: "Namespace", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("ns-" + name), Annotations: annotations},
		Status:     corev1.NamespaceStatus{Phase: corev1.NamespaceActive},
	}
}

// addPod adds a running pod on nodeName; containerID, when set, is its one
// container as the runtime reports it.
func (a *apiServer) addPod(namespace, name, nodeName, containerID string, annotations map[string]string) *corev1.Pod {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID("uid-" + namespace + "-" + name),
			Annotations: annotations, ResourceVersion: "1"},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Ready: true, ContainerID: containerID,
		}}},
	}
	if containerID == "" {
		p.Status = corev1.PodStatus{Phase: corev1.PodPending}
	}
	a.pods[namespace+"/"+name] = p
	return p
}

// seen reports the requests served so far, as "GET /path?query".
func (a *apiServer) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.requests...)
}

func (a *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	req := r.Method + " " + r.URL.Path
	if r.URL.RawQuery != "" {
		req += "?" + r.URL.RawQuery
	}
	a.requests = append(a.requests, req)
	if r.Header.Get("Authorization") != "Bearer "+a.token {
		a.status(w, http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "Unauthorized")
		return
	}
	if r.Method != http.MethodGet {
		a.status(w, http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "shunt only reads")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.URL.Path == "/api/v1/pods":
		a.listPods(w, r)
	case len(parts) == 6 && parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces" && parts[4] == "pods":
		if p, ok := a.pods[parts[3]+"/"+parts[5]]; ok {
			a.write(w, http.StatusOK, p)
			return
		}
		a.status(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("pods %q not found", parts[5]))
	case len(parts) == 4 && parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces":
		if ns, ok := a.namespaces[parts[3]]; ok {
			a.write(w, http.StatusOK, ns)
			return
		}
		a.status(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("namespaces %q not found", parts[3]))
	default:
		a.status(w, http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource")
	}
}

func (a *apiServer) listPods(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("watch") == "true" || q.Get("watch") == "1" {
		a.status(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "this server does not serve watches")
		return
	}
	sel := fields.Everything()
	if s := q.Get("fieldSelector"); s != "" {
		var err error
		if sel, err = fields.ParseSelector(s); err != nil {
			a.status(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
			return
		}
	}
	list := &corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, ListMeta: metav1.ListMeta{ResourceVersion: "1"}}
	for _, p := range a.pods {
		if sel.Matches(fields.Set{"spec.nodeName": p.Spec.NodeName, "metadata.namespace": p.Namespace, "metadata.name": p.Name}) {
			list.Items = append(list.Items, *p)
		}
	}
	a.write(w, http.StatusOK, list)
}

func (a *apiServer) status(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	a.write(w, code, &metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: msg, Reason: reason, Code: int32(code),
	})
}

func (a *apiServer) write(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}
