package kubeapi

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeAPI answers GET of pods and namespaces as the API server does (JSON
// objects, metav1.Status on errors) and only with the right bearer token.
func fakeAPI(t *testing.T) *httptest.Server {
	t.Helper()
	return fakeAPIWith(t, nil)
}

// fakeAPIWith is fakeAPI with a hook on its connections' states.
func fakeAPIWith(t *testing.T, connState func(net.Conn, http.ConnState)) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer tok-1" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`)
			return
		}
		switch r.URL.Path {
		case "/api/v1/namespaces/apps/pods/web-1":
			fmt.Fprint(w, `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-1","namespace":"apps","annotations":{"shunt.dev/capture":"true","shunt.dev/exclude-outbound-ports":"22"}},"spec":{"hostNetwork":false,"containers":[{"name":"app","image":"x"}]},"status":{}}`)
		case "/api/v1/namespaces/apps":
			fmt.Fprint(w, `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"apps","labels":{"shunt.dev/capture":"enabled"},"annotations":{"a":"b"}},"spec":{},"status":{"phase":"Active"}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"%s\" not found","reason":"NotFound","code":404}`, filepath.Base(r.URL.Path))
		}
	}))
	srv.Config.ConnState = connState
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func writeKubeconfig(t *testing.T, srv *httptest.Server, user string) string {
	t.Helper()
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: u
  user:
%s
contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
`, srv.URL, ca, user)
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPodSettings(t *testing.T) {
	srv := fakeAPI(t)
	ps, err := PodLookup(context.Background(), writeKubeconfig(t, srv, "    token: tok-1"), "apps", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if ps.PodAnnotations["shunt.dev/exclude-outbound-ports"] != "22" || ps.NamespaceLabels["shunt.dev/capture"] != "enabled" || ps.NamespaceAnnotations["a"] != "b" || ps.HostNetwork {
		t.Fatalf("settings = %+v", ps)
	}
	if ps.Namespace != "apps" || ps.Name != "web-1" {
		t.Fatalf("identity = %s/%s", ps.Namespace, ps.Name)
	}
}

func TestTokenFileRelativeToKubeconfig(t *testing.T) {
	srv := fakeAPI(t)
	kc := writeKubeconfig(t, srv, "    tokenFile: token")
	if err := os.WriteFile(filepath.Join(filepath.Dir(kc), "token"), []byte("tok-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := PodLookup(context.Background(), kc, "apps", "web-1"); err != nil {
		t.Fatal(err)
	}
}

func TestErrorsNameWhatFailed(t *testing.T) {
	srv := fakeAPI(t)
	for _, tc := range []struct {
		name, user, pod, want string
	}{
		{"not found", "    token: tok-1", "gone", `get pod apps/gone: 404 Not Found: pods "gone" not found`},
		{"wrong token", "    token: nope", "web-1", "get pod apps/web-1: 401 Unauthorized: Unauthorized"},
		{"exec", "    exec: {command: aws}", "web-1", "user u: exec credentials are not supported"},
		{"bad key pair", "    client-certificate-data: " + base64.StdEncoding.EncodeToString([]byte("x")), "web-1", "user u: client certificate and key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PodLookup(context.Background(), writeKubeconfig(t, srv, tc.user), "apps", tc.pod)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q in it", err, tc.want)
			}
		})
	}
}

func TestServerNotSignedByTheCA(t *testing.T) {
	srv := fakeAPI(t)
	kc := writeKubeconfig(t, srv, "    token: tok-1")
	b, _ := os.ReadFile(kc)
	// Without its CA the client falls back to the system roots, which do
	// not sign the test server.
	var kept []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "certificate-authority-data") {
			kept = append(kept, l)
		}
	}
	if err := os.WriteFile(kc, []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := PodLookup(context.Background(), kc, "apps", "web-1"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v, want a certificate error", err)
	}
}
