package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// helperEnv makes the test binary a one-shot ADS client of the socket it
// names: it prints what it got and exits. Tests run it as other users.
const helperEnv = "XDSPROXY_TEST_DIAL"

func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		fmt.Println(dialOnce(sock))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dialOnce asks the socket for the listeners as this node and reports the
// outcome in one line.
func dialOnce(sock string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "error: " + err.Error()
	}
	defer conn.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return "error: " + err.Error()
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, Node: envoyNode()}); err != nil && !errors.Is(err, io.EOF) {
		return "error: " + err.Error()
	}
	resp, err := stream.Recv()
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("got %d listeners", len(resp.GetResources()))
}

// runAs runs the helper against sock as uid:gid, from a copy of the test
// binary that user may execute.
func runAs(t *testing.T, sock string, uid, gid uint32) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := shortTempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "helper")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), helperEnv+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as %d:%d: %v\n%s", uid, gid, err, out)
	}
	return strings.TrimSpace(string(out))
}

const (
	proxyUID = 5678
	proxyGID = 5678
	appUID   = 1000
)

// The socket belongs to the proxy's user: the proxy gets its
// configuration; a workload process (UID 1000) gets nothing, neither
// through the file's permissions nor, when it shares the proxy's group,
// past the peer-credential check.
func TestSocketServesOnlyTheProxyUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run clients as other users")
	}
	w := newWorldAt(t, proxyUID, proxyGID)
	eventually(t, 5*time.Second, "shunt's view", func() bool { return w.shuntVIP() == "240.0.0.1" })
	// The directory must let the users reach the socket file at all.
	if err := os.Chmod(filepath.Dir(w.sock), 0o755); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(w.sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o660 || st.Uid != proxyUID || st.Gid != proxyGID {
		t.Errorf("socket %s: mode %v owner %d:%d, want a socket, 0660, %d:%d", w.sock, fi.Mode(), st.Uid, st.Gid, proxyUID, proxyGID)
	}

	for _, tc := range []struct {
		name     string
		uid, gid uint32
		want     string
		// refusedByCred: the file let it connect, the peer check did not.
		refusedByCred bool
	}{
		{"proxy", proxyUID, proxyGID, "got 1 listeners", false},
		{"root", 0, 0, "got 1 listeners", false},
		{"app", appUID, appUID, "error:", false},
		{"app in the proxy's group", appUID, proxyGID, "error:", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := w.ln.(interface{ Refused() int }).Refused()
			got := runAs(t, w.sock, tc.uid, tc.gid)
			t.Logf("as %d:%d: %s", tc.uid, tc.gid, got)
			if !strings.HasPrefix(got, tc.want) {
				t.Errorf("as %d:%d: %s; want %s", tc.uid, tc.gid, got, tc.want)
			}
			if refused := w.ln.(interface{ Refused() int }).Refused() > before; refused != tc.refusedByCred {
				t.Errorf("as %d:%d: refused by the peer check = %v, want %v", tc.uid, tc.gid, refused, tc.refusedByCred)
			}
		})
	}
}

func TestListenRefusesWhatIsNotASocket(t *testing.T) {
	dir := shortTempDir(t)
	p := SocketPath(dir)
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(p, 0, 0, quiet()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file: %v, want an error saying it is not a socket", err)
	}
	// A live socket is not taken over; a stale one is replaced.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(p, uint32(os.Getuid()), uint32(os.Getgid()), quiet())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(p, uint32(os.Getuid()), uint32(os.Getgid()), quiet()); err == nil || !strings.Contains(err.Error(), "another process is serving it") {
		t.Errorf("Listen over a live socket: %v, want a refusal", err)
	}
	ul := ln.(*credListener).UnixListener
	ul.SetUnlinkOnClose(false)
	ln.Close()
	ln2, err := Listen(p, uint32(os.Getuid()), uint32(os.Getgid()), quiet())
	if err != nil {
		t.Errorf("Listen over a stale socket: %v", err)
	} else {
		ln2.Close()
	}
	long := filepath.Join(dir, strings.Repeat("d", 120), SocketName)
	if _, err := Listen(long, 0, 0, quiet()); err == nil || !strings.Contains(err.Error(), "--state-dir") {
		t.Errorf("Listen on a too long path: %v, want an error naming --state-dir", err)
	}
}
