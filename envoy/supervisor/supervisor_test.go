package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/shunt-dev/shunt/envoy/bootstrap"
	"github.com/shunt-dev/shunt/tests/testenv"
)

// fakeEnvoy is the path of tests/standin/fakeenvoy, built once.
var fakeEnvoy string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shunt-fakeenvoy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Readable by the proxy's user, for the test that runs as it.
	_ = os.Chmod(dir, 0o755)
	fakeEnvoy = filepath.Join(dir, "envoy")
	if err := testenv.BuildPackage(fakeEnvoy, "github.com/shunt-dev/shunt/tests/standin/fakeenvoy"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// world is one supervised fake Envoy: its directory, events and log.
type world struct {
	t      *testing.T
	dir    string
	events string
	logs   *logBuffer
	cfg    Config
}

func newWorld(t *testing.T, xds bootstrap.XDS) *world {
	t.Helper()
	dir := testenv.ReadableTempDir(t)
	w := &world{t: t, dir: dir, events: filepath.Join(dir, "events"), logs: &logBuffer{}}
	// Writable by the proxy's user too.
	if err := os.WriteFile(w.events, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(w.events, 0o666)
	b, err := bootstrap.Build(bootstrap.Config{NodeID: "node-1", XDS: xds, Admin: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	j, err := bootstrap.JSON(b)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bootstrap.json")
	if err := os.WriteFile(path, j, 0o644); err != nil {
		t.Fatal(err)
	}
	w.cfg = Config{
		Binary:           fakeEnvoy,
		BootstrapPath:    path,
		AdminAddressPath: filepath.Join(dir, "admin.address"),
		LogLevel:         "info",
		Concurrency:      2,
		Env:              append(os.Environ(), "FAKEENVOY_EVENTS="+w.events),
		DrainTimeout:     300 * time.Millisecond,
		KillTimeout:      300 * time.Millisecond,
		InitialBackoff:   200 * time.Millisecond,
		MaxBackoff:       2 * time.Second,
		ReadyInterval:    50 * time.Millisecond,
		Logger:           slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	return w
}

// unreachable is an xDS socket nobody listens on.
func unreachable(t *testing.T) bootstrap.XDS {
	return bootstrap.XDS{Pipe: filepath.Join(t.TempDir(), "nobody.sock")}
}

// start runs the supervisor until the returned stop is called (or the test
// ends); stop waits for Run to return.
func (w *world) start() (*Supervisor, func()) {
	w.t.Helper()
	s, err := New(w.cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					w.t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				w.t.Errorf("Run did not return after cancel\n%s", w.logs)
			}
		})
	}
	w.t.Cleanup(stop)
	return s, stop
}

type event struct {
	at   time.Time
	pid  int
	what string
}

func (w *world) readEvents() []event {
	b, err := os.ReadFile(w.events)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []event
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, " ", 3)
		if len(f) != 3 {
			continue
		}
		ns, _ := strconv.ParseInt(f[0], 10, 64)
		pid, _ := strconv.Atoi(f[1])
		out = append(out, event{time.Unix(0, ns), pid, f[2]})
	}
	return out
}

func (w *world) waitFor(what string, f func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out waiting for %s\nevents:\n%+v\nlog:\n%s", what, w.readEvents(), w.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func starts(evs []event) []event {
	var out []event
	for _, e := range evs {
		if strings.HasPrefix(e.what, "start ") {
			out = append(out, e)
		}
	}
	return out
}

func TestRestartsWithBackoffAfterACrash(t *testing.T) {
	w := newWorld(t, unreachable(t))
	crash := filepath.Join(w.dir, "crash")
	if err := os.WriteFile(crash, []byte("3"), 0o666); err != nil {
		t.Fatal(err)
	}
	w.cfg.Env = append(w.cfg.Env, "FAKEENVOY_CRASH="+crash, "FAKEENVOY_CRASH_AFTER=50ms")
	s, _ := w.start()
	w.waitFor("three restarts", func() bool { return s.Restarts() == 3 && s.Up() })
	// The fourth process keeps running.
	time.Sleep(300 * time.Millisecond)
	if s.Restarts() != 3 || !s.Up() {
		t.Fatalf("restarts = %d, up = %v after the crashes stopped", s.Restarts(), s.Up())
	}
	st := starts(w.readEvents())
	if len(st) != 4 {
		t.Fatalf("%d starts, want 4: %+v", len(st), st)
	}
	// Each process lived ~50ms, then the wait doubled: 200ms, 400ms, 800ms.
	for i, want := range []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond} {
		gap := st[i+1].at.Sub(st[i].at)
		if gap < want || gap > want+time.Second {
			t.Errorf("start %d came %v after the previous one, want %v plus the process's short life", i+2, gap, want)
		}
	}
	logs := w.logs.String()
	for _, want := range []string{
		"proxy died; restarting",
		"exit status 3",
		`msg="envoy: [`, // Envoy's own lines, forwarded with a prefix
		"Caught Segmentation fault",
		"level=ERROR msg=\"envoy: [", // at Envoy's level (critical)
		`msg="envoy: fakeenvoy: stdout is forwarded too" stream=stdout`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	if ok, why := s.Ready(); ok {
		t.Errorf("ready without a control plane")
	} else if !strings.Contains(why, "INITIALIZING") {
		t.Errorf("not-ready reason %q does not say the proxy's state", why)
	}
}

func TestBackoffIsCappedAndStartsOver(t *testing.T) {
	s, err := New(Config{Binary: fakeEnvoy, BootstrapPath: "/b.json", AdminAddressPath: "/a", InitialBackoff: time.Second, MaxBackoff: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for failures, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		if got := s.backoff(failures); got != want {
			t.Errorf("backoff(%d) = %v, want %v", failures, got, want)
		}
	}
}

func TestShutdownDrainsThenTerminates(t *testing.T) {
	w := newWorld(t, unreachable(t))
	s, stop := w.start()
	w.waitFor("the admin address", func() bool {
		_, err := os.Stat(w.cfg.AdminAddressPath)
		return err == nil && s.Up()
	})
	pid := s.PID()
	stop()
	evs := w.readEvents()
	var whats []string
	at := map[string]time.Time{}
	for _, e := range evs {
		if e.pid == pid && !strings.HasPrefix(e.what, "start ") {
			whats = append(whats, e.what)
			at[e.what] = e.at
		}
	}
	want := []string{"drain_listeners graceful=true", "signal terminated", "exit 0"}
	if strings.Join(whats, ", ") != strings.Join(want, ", ") {
		t.Fatalf("shutdown events %q, want %q\n%s", whats, want, w.logs)
	}
	if d := at["signal terminated"].Sub(at["drain_listeners graceful=true"]); d < w.cfg.DrainTimeout {
		t.Errorf("SIGTERM came %v after the drain, before --drain-timeout %v", d, w.cfg.DrainTimeout)
	}
	if s.Up() || s.PID() != 0 {
		t.Errorf("up = %v, pid = %d after Run returned", s.Up(), s.PID())
	}
	if s.Restarts() != 0 {
		t.Errorf("a stopped proxy was restarted %d times", s.Restarts())
	}
	if !strings.Contains(w.logs.String(), "exit status 0") {
		t.Errorf("log lacks the exit status:\n%s", w.logs)
	}
}

func TestShutdownKillsAProxyThatIgnoresSIGTERM(t *testing.T) {
	w := newWorld(t, unreachable(t))
	w.cfg.Env = append(w.cfg.Env, "FAKEENVOY_IGNORE_SIGTERM=1")
	s, stop := w.start()
	w.waitFor("the admin address", func() bool {
		_, err := os.Stat(w.cfg.AdminAddressPath)
		return err == nil && s.Up()
	})
	pid := s.PID()
	began := time.Now()
	stop()
	if d := time.Since(began); d < w.cfg.DrainTimeout+w.cfg.KillTimeout {
		t.Errorf("stopped after %v, before drain + kill timeouts", d)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("pid %d still exists", pid)
	}
	logs := w.logs.String()
	for _, want := range []string{"did not exit after SIGTERM; killing it", "signal: killed"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

// TestReadyWhenTheProxyIsLive serves ADS on a Unix socket, as shunt's xDS
// proxy does: the proxy is not ready until its control plane has answered
// with clusters and listeners and /ready says LIVE.
func TestReadyWhenTheProxyIsLive(t *testing.T) {
	sock := filepath.Join(testenv.ReadableTempDir(t), "xds.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	snaps := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), snaps, nil))
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)

	w := newWorld(t, bootstrap.XDS{Pipe: sock})
	s, _ := w.start()
	w.waitFor("the proxy's admin endpoint", func() bool {
		_, why := s.Ready()
		return strings.Contains(why, "INITIALIZING")
	})
	time.Sleep(300 * time.Millisecond)
	if ok, why := s.Ready(); ok {
		t.Fatal("ready before the control plane answered")
	} else {
		t.Logf("not ready: %s", why)
	}
	snap, err := cachev3.NewSnapshot("1", map[resource.Type][]types.Resource{
		resource.ClusterType:  {&clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(time.Second)}},
		resource.ListenerType: {},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := snaps.SetSnapshot(context.Background(), "node-1", snap); err != nil {
		t.Fatal(err)
	}
	w.waitFor("ready", func() bool { ok, _ := s.Ready(); return ok })
	if !strings.Contains(w.logs.String(), "proxy is ready") {
		t.Errorf("log lacks the readiness:\n%s", w.logs)
	}
}

func TestRunsAsTheProxyUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a process under another user")
	}
	w := newWorld(t, unreachable(t))
	w.cfg.Credential = &syscall.Credential{Uid: 5678, Gid: 5679}
	// Envoy writes its admin address there.
	if err := os.Chown(w.dir, 5678, 5679); err != nil {
		t.Fatal(err)
	}
	s, _ := w.start()
	w.waitFor("the proxy", func() bool { return s.Up() && s.PID() != 0 })
	pid := s.PID()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	if fields["Uid"] != "5678 5678 5678 5678" || fields["Gid"] != "5679 5679 5679 5679" || fields["Groups"] != "" {
		t.Errorf("proxy runs as Uid %q Gid %q Groups %q, want 5678, 5679 and no supplementary groups", fields["Uid"], fields["Gid"], fields["Groups"])
	}
	w.waitFor("the admin address", func() bool { _, err := os.Stat(w.cfg.AdminAddressPath); return err == nil })
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "envoy")
	_ = os.WriteFile(notExec, nil, 0o644)
	for name, tc := range map[string]struct {
		cfg  Config
		want string
	}{
		"no binary":      {Config{}, "envoy binary path is empty"},
		"missing binary": {Config{Binary: filepath.Join(dir, "nope")}, "no such file"},
		"not executable": {Config{Binary: notExec}, "not an executable file"},
		"no paths":       {Config{Binary: fakeEnvoy}, "bootstrap and admin address paths are required"},
		"concurrency":    {Config{Binary: fakeEnvoy, BootstrapPath: "/b", AdminAddressPath: "/a", Concurrency: -1}, "concurrency -1"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestArgs(t *testing.T) {
	s, err := New(Config{Binary: fakeEnvoy, BootstrapPath: "/s/bootstrap.json", AdminAddressPath: "/s/admin", LogLevel: "debug", Concurrency: 2, DrainTimeout: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := "--config-path /s/bootstrap.json --admin-address-path /s/admin --disable-hot-restart --drain-time-s 2 --log-level debug --concurrency 2"
	if got := strings.Join(s.Args(), " "); got != want {
		t.Errorf("args %q, want %q", got, want)
	}
}
