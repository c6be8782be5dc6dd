// Package supervisor runs Envoy as kuma-dp and pilot-agent do: it starts
// the binary with a bootstrap file under the proxy's user, restarts it with
// exponential backoff when it dies, follows its readiness on the admin API,
// forwards its output into shunt's log, and drains it before stopping it.
package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config describes the proxy process.
type Config struct {
	// Binary is the path of the envoy executable.
	Binary string
	// BootstrapPath is the bootstrap file, passed as --config-path.
	BootstrapPath string
	// AdminAddressPath is where Envoy writes its admin address once it
	// listens (--admin-address-path); the supervisor reads it to poll
	// /ready and to drain, so the bootstrap's admin port may be 0.
	AdminAddressPath string
	// LogLevel is Envoy's --log-level ("" leaves Envoy's default).
	LogLevel string
	// Concurrency is Envoy's --concurrency (0 leaves Envoy's default, one
	// worker per core).
	Concurrency int
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	// Env is the environment of the process (nil: shunt's own).
	Env []string

	// UID and GID the proxy runs as (nil: shunt's own). The capture
	// rules let this user's traffic out uncaptured.
	Credential *syscall.Credential

	// DrainTimeout is how long listeners drain (POST
	// /drain_listeners?graceful, and --drain-time-s) before SIGTERM
	// (default 5s).
	DrainTimeout time.Duration
	// KillTimeout is how long after SIGTERM the process may take to exit
	// before SIGKILL (default 5s).
	KillTimeout time.Duration

	// InitialBackoff and MaxBackoff bound the wait before a restart
	// (default 500ms and 30s); it doubles with each consecutive death and
	// starts over once a process has run for StableAfter (default 30s).
	InitialBackoff, MaxBackoff, StableAfter time.Duration

	// ReadyInterval is how often /ready is polled (default 1s).
	ReadyInterval time.Duration

	Logger *slog.Logger
}

// Supervisor runs one Envoy at a time. Create it with New, start it with
// Run.
type Supervisor struct {
	cfg  Config
	log  *slog.Logger
	http *http.Client

	up       atomic.Bool
	ready    atomic.Bool
	restarts atomic.Uint64
	pid      atomic.Int64

	mu     sync.Mutex
	reason string // why not ready
	admin  string // host:port of the running process's admin API
}

// New checks cfg; nothing is started before Run.
func New(cfg Config) (*Supervisor, error) {
	if cfg.Binary == "" {
		return nil, errors.New("supervisor: envoy binary path is empty")
	}
	st, err := os.Stat(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("supervisor: envoy binary: %w", err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("supervisor: envoy binary %s: not an executable file", cfg.Binary)
	}
	if cfg.BootstrapPath == "" || cfg.AdminAddressPath == "" {
		return nil, errors.New("supervisor: bootstrap and admin address paths are required")
	}
	if cfg.Concurrency < 0 {
		return nil, fmt.Errorf("supervisor: concurrency %d: must not be negative", cfg.Concurrency)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.DrainTimeout, 5*time.Second)
	def(&cfg.KillTimeout, 5*time.Second)
	def(&cfg.InitialBackoff, 500*time.Millisecond)
	def(&cfg.MaxBackoff, 30*time.Second)
	def(&cfg.StableAfter, 30*time.Second)
	def(&cfg.ReadyInterval, time.Second)
	if cfg.MaxBackoff < cfg.InitialBackoff {
		cfg.MaxBackoff = cfg.InitialBackoff
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Supervisor{
		cfg:    cfg,
		log:    cfg.Logger,
		http:   &http.Client{Timeout: time.Second},
		reason: "proxy not started",
	}
	return s, nil
}

// Args is the command line the proxy is started with (without the binary).
func (s *Supervisor) Args() []string {
	c := s.cfg
	args := []string{
		"--config-path", c.BootstrapPath,
		"--admin-address-path", c.AdminAddressPath,
		// Several proxies may share a host (one per pod namespace):
		// hot restart's shared memory would collide, and shunt restarts
		// the process itself.
		"--disable-hot-restart",
		"--drain-time-s", strconv.Itoa(int(math.Ceil(c.DrainTimeout.Seconds()))),
	}
	if c.LogLevel != "" {
		args = append(args, "--log-level", c.LogLevel)
	}
	if c.Concurrency > 0 {
		args = append(args, "--concurrency", strconv.Itoa(c.Concurrency))
	}
	return append(args, c.ExtraArgs...)
}

// Up reports whether a proxy process is running.
func (s *Supervisor) Up() bool { return s.up.Load() }

// Restarts counts the processes started after the first.
func (s *Supervisor) Restarts() uint64 { return s.restarts.Load() }

// PID is the running process's id (0 when none).
func (s *Supervisor) PID() int { return int(s.pid.Load()) }

// Ready reports whether the proxy's /ready answered LIVE at the last poll,
// and if not, why.
func (s *Supervisor) Ready() (bool, string) {
	if s.ready.Load() {
		return true, ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return false, s.reason
}

func (s *Supervisor) setNotReady(reason string) {
	s.mu.Lock()
	s.reason = reason
	s.mu.Unlock()
	s.ready.Store(false)
}

// Run starts the proxy and keeps it running until ctx ends; then it drains
// and stops it, and returns nil.
func (s *Supervisor) Run(ctx context.Context) error {
	failures := 0
	for first := true; ; first = false {
		if !first {
			s.restarts.Add(1)
		}
		started := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) >= s.cfg.StableAfter {
			failures = 0
		}
		wait := s.backoff(failures)
		failures++
		s.log.Error("proxy died; restarting", "err", err, "in", wait, "restarts", s.restarts.Load())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func (s *Supervisor) backoff(failures int) time.Duration {
	d := s.cfg.InitialBackoff
	for i := 0; i < failures && d < s.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, s.cfg.MaxBackoff)
}

// runOnce runs one process until it exits (the error says how) or ctx ends
// (it is drained and stopped; the error is nil).
func (s *Supervisor) runOnce(ctx context.Context) error {
	// The parent-death signal fires when the thread that forked exits,
	// not the process: keep this goroutine on one thread for the child's
	// life, so that the Go runtime retiring a thread never kills Envoy.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// A stale file would point the readiness poll at a previous process.
	if err := os.Remove(s.cfg.AdminAddressPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale admin address file: %w", err)
	}
	s.mu.Lock()
	s.admin = ""
	s.mu.Unlock()

	cmd := exec.Command(s.cfg.Binary, s.Args()...)
	cmd.Env = s.cfg.Env
	// shunt's own working directory may be closed to the proxy's user;
	// the bootstrap's directory is the proxy's.
	cmd.Dir = filepath.Dir(s.cfg.BootstrapPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: s.cfg.Credential,
		// Its own process group: a Ctrl-C at shunt's terminal must not
		// stop the proxy undrained; shunt stops it in order.
		Setpgid: true,
		// If shunt itself dies, so does the proxy, so that a restarted
		// shunt finds the admin port free.
		Pdeathsig: syscall.SIGKILL,
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("proxy stdout: %w", err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("proxy stderr: %w", err)
	}
	if err := cmd.Start(); err != nil {
		s.setNotReady("proxy failed to start: " + err.Error())
		return fmt.Errorf("start %s: %w", s.cfg.Binary, err)
	}
	pid := cmd.Process.Pid
	s.pid.Store(int64(pid))
	s.up.Store(true)
	s.setNotReady("proxy starting")
	s.log.Info("proxy started", "pid", pid, "binary", s.cfg.Binary, "args", strings.Join(s.Args(), " "))

	var logs sync.WaitGroup
	logs.Add(2)
	go func() { defer logs.Done(); s.forward(stdout, "stdout", pid) }()
	go func() { defer logs.Done(); s.forward(stderr, "stderr", pid) }()

	exited := make(chan error, 1)
	go func() {
		logs.Wait() // Wait closes the pipes: read them to the end first
		exited <- cmd.Wait()
	}()
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() { defer close(polled); s.poll(pollCtx) }()

	defer func() {
		stopPoll()
		<-polled
		s.up.Store(false)
		s.pid.Store(0)
	}()
	select {
	case err := <-exited:
		s.setNotReady("proxy exited: " + exitStatus(cmd, err))
		return fmt.Errorf("proxy (pid %d) exited: %s", pid, exitStatus(cmd, err))
	case <-ctx.Done():
		stopPoll()
		<-polled
		s.setNotReady("proxy stopping")
		s.stop(cmd, exited)
		return nil
	}
}

// stop drains the listeners, then asks the process to exit, then kills it.
func (s *Supervisor) stop(cmd *exec.Cmd, exited <-chan error) {
	pid := cmd.Process.Pid
	s.mu.Lock()
	admin := s.admin
	s.mu.Unlock()
	if admin == "" {
		admin = s.readAdminAddress()
	}
	if admin != "" {
		s.log.Info("draining proxy listeners", "pid", pid, "timeout", s.cfg.DrainTimeout)
		if err := s.post(admin, "/drain_listeners?graceful"); err != nil {
			s.log.Warn("proxy did not accept the drain; stopping it at once", "pid", pid, "err", err)
		} else {
			t := time.NewTimer(s.cfg.DrainTimeout)
			select {
			case err := <-exited:
				t.Stop()
				s.log.Info("proxy exited while draining", "pid", pid, "status", exitStatus(cmd, err))
				return
			case <-t.C:
			}
		}
	}
	s.log.Info("stopping proxy (SIGTERM)", "pid", pid)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(s.cfg.KillTimeout)
	select {
	case err := <-exited:
		t.Stop()
		s.log.Info("proxy stopped", "pid", pid, "status", exitStatus(cmd, err))
		return
	case <-t.C:
	}
	s.log.Warn("proxy did not exit after SIGTERM; killing it", "pid", pid, "waited", s.cfg.KillTimeout)
	_ = cmd.Process.Kill()
	err := <-exited
	s.log.Info("proxy killed", "pid", pid, "status", exitStatus(cmd, err))
}

func exitStatus(cmd *exec.Cmd, err error) string {
	if cmd.ProcessState != nil {
		return cmd.ProcessState.String()
	}
	if err != nil {
		return err.Error()
	}
	return "unknown"
}

// poll follows /ready until ctx ends. Envoy answers LIVE once its initial
// configuration is loaded; anything else (PRE_INITIALIZING, INITIALIZING,
// DRAINING, no answer) is not ready.
func (s *Supervisor) poll(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReadyInterval)
	defer t.Stop()
	for {
		s.checkReady(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Supervisor) checkReady(ctx context.Context) {
	s.mu.Lock()
	admin := s.admin
	s.mu.Unlock()
	if admin == "" {
		if admin = s.readAdminAddress(); admin == "" {
			s.setNotReady("proxy admin endpoint not listening yet")
			return
		}
		s.mu.Lock()
		s.admin = admin
		s.mu.Unlock()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/ready", nil)
	if err != nil {
		s.setNotReady(err.Error())
		return
	}
	resp, err := s.http.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			s.setNotReady("proxy /ready: " + err.Error())
		}
		return
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_ = resp.Body.Close()
	state := strings.TrimSpace(string(body))
	if resp.StatusCode == http.StatusOK && state == "LIVE" {
		if !s.ready.Swap(true) {
			s.log.Info("proxy is ready", "pid", s.PID(), "admin", admin)
		}
		return
	}
	s.setNotReady(fmt.Sprintf("proxy /ready: %d %s", resp.StatusCode, state))
}

// readAdminAddress returns the address Envoy wrote, "" until it has.
func (s *Supervisor) readAdminAddress() string {
	b, err := os.ReadFile(s.cfg.AdminAddressPath)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (s *Supervisor) post(admin, path string) error {
	resp, err := s.http.Post("http://"+admin+path, "text/plain", nil)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// forward copies the proxy's output into shunt's log, one record per line,
// at the level Envoy gave the line when it has one.
func (s *Supervisor) forward(r io.Reader, stream string, pid int) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		s.log.Log(context.Background(), envoyLevel(line), "envoy: "+line, "stream", stream, "pid", pid)
	}
	// A line longer than the buffer stops the scanner: drain the rest so
	// that the process never blocks on a full pipe.
	_, _ = io.Copy(io.Discard, r)
}

// envoyLevel reads the level of Envoy's default log format,
// "[time][thread][level][logger] message".
func envoyLevel(line string) slog.Level {
	for _, f := range []struct {
		tag string
		lvl slog.Level
	}{
		{"][trace][", slog.LevelDebug}, {"][debug][", slog.LevelDebug},
		{"][info][", slog.LevelInfo},
		{"][warning][", slog.LevelWarn},
		{"][error][", slog.LevelError}, {"][critical][", slog.LevelError},
	} {
		if strings.Contains(line, f.tag) {
			return f.lvl
		}
	}
	return slog.LevelInfo
}
