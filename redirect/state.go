package redirect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const stateFile = "capture.json"

// State is what an engine records after a successful install, so that
// status, explain and uninstall know what was done without guessing.
type State struct {
	Engine  string `json:"engine"`
	Backend string `json:"backend,omitempty"`
	Netns   string `json:"netns,omitempty"`
	// Cgroup and PinDir locate an eBPF installation.
	Cgroup string `json:"cgroup,omitempty"`
	PinDir string `json:"pinDir,omitempty"`
	Plan   *Plan  `json:"plan"`
	// Families that were installed ("ipv4", "ipv6") and, for the record,
	// why one was skipped.
	Families []string `json:"families"`
	Skipped  []string `json:"skipped,omitempty"`
	// Applied holds, per family, the engine's own rules as read back from
	// the kernel right after install: the reference for drift detection.
	Applied map[string]string `json:"applied,omitempty"`
	// Chosen says why the engine was chosen, when engine auto chose it.
	Chosen      string    `json:"chosen,omitempty"`
	InstalledAt time.Time `json:"installedAt"`
	// Intent, when set, is an install that began and neither finished nor
	// rolled back (the process was killed): its rules may be in place,
	// whole or in part, next to or instead of the ones recorded above.
	Intent *Intent `json:"intent,omitempty"`
}

// Intent is an install under way. It is recorded before the first rule
// changes and replaced by the final record (or the previous one, after a
// rollback) once the rules are settled, so a crash at any point leaves a
// record that status, install and uninstall recognise.
type Intent struct {
	Engine  string `json:"engine"`
	Backend string `json:"backend,omitempty"`
	Plan    *Plan  `json:"plan,omitempty"`
	// Families the install may change.
	Families  []string  `json:"families"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"startedAt"`
}

// String describes an interrupted install for status and logs.
func (in *Intent) String() string {
	what := ""
	if in.Backend != "" || len(in.Families) > 0 {
		what = fmt.Sprintf(", %s %v", in.Backend, in.Families)
	}
	return fmt.Sprintf("an install (pid %d, started %s%s) did not finish: its rules may be partly in place; install again or uninstall",
		in.PID, in.StartedAt.Format(time.RFC3339), what)
}

// RecordIntent saves prev (an empty record of the engine when nothing is
// installed) with the intent added. It must return before the install
// changes any rule.
func RecordIntent(dir string, prev *State, in Intent) error {
	st := State{Engine: in.Engine, Backend: in.Backend}
	if prev != nil {
		st = *prev
		if prev.Intent != nil {
			// An earlier interrupted install may also have left rules
			// in families this one does not touch.
			in.Families = union(in.Families, prev.Intent.Families)
		}
	}
	if in.PID == 0 {
		in.PID = os.Getpid()
	}
	if in.StartedAt.IsZero() {
		in.StartedAt = time.Now().UTC()
	}
	st.Intent = &in
	if err := SaveState(dir, &st); err != nil {
		return fmt.Errorf("record install intent: %w", err)
	}
	return nil
}

// ClearIntent puts back the record an install found (nothing, when it found
// nothing), after the install rolled its rules back.
func ClearIntent(dir string, prev *State) error {
	if prev == nil {
		if err := os.Remove(filepath.Join(dir, stateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("clear install intent: %w", err)
		}
		return nil
	}
	if err := SaveState(dir, prev); err != nil {
		return fmt.Errorf("clear install intent: %w", err)
	}
	return nil
}

func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, x := range b {
		found := false
		for _, y := range out {
			found = found || x == y
		}
		if !found {
			out = append(out, x)
		}
	}
	return out
}

// LoadState reads the recorded state; (nil, nil) when nothing is installed.
func LoadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse state %s: %w", filepath.Join(dir, stateFile), err)
	}
	return &s, nil
}

// SaveState writes the state atomically (write then rename), so a crash
// never leaves a torn file. The record is compact JSON, one line: it is
// rewritten on every change, and a plan's lists may hold tens of thousands
// of prefixes, which indenting would make several times dearer to write
// (`shunt status` and `jq` read it either way; records written indented by
// earlier versions load the same).
func SaveState(dir string, s *State) error {
	return PrepareState(dir, nil).Save(s)
}

// PendingState is a record written ahead of the change it records: its
// temporary file is created, and the plan it will hold encoded, while the
// caller changes the rules. On a busy filesystem creating a file costs
// about as much as the kernel's commit of a whole table, and encoding a
// plan for the first time in a process builds encoding/json's encoders for
// it: both are off an install's critical path this way. Save finishes the
// record; Abort drops it.
type PendingState struct {
	dir  string
	plan *Plan
	// created is closed once tmp and err are set, done once
	// encodedPlan is too.
	created, done chan struct{}
	tmp           *os.File
	err           error
	encodedPlan   []byte
}

// PrepareState starts writing a record to dir that will hold plan p (nil:
// not known yet). p must not change until Save.
func PrepareState(dir string, p *Plan) *PendingState {
	ps := &PendingState{dir: dir, plan: p, created: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ps.done)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			ps.err = fmt.Errorf("create state dir: %w", err)
			close(ps.created)
			return
		}
		if ps.tmp, ps.err = os.CreateTemp(dir, ".capture-*.json"); ps.err != nil {
			ps.err = fmt.Errorf("write state: %w", ps.err)
		}
		close(ps.created)
		if ps.err == nil && p != nil {
			// A plan this writer cannot encode is encoded again,
			// and its error reported, by Save.
			ps.encodedPlan, _ = encodePlan(p)
		}
	}()
	return ps
}

// Save writes s as the record, atomically (write then rename).
func (ps *PendingState) Save(s *State) error {
	<-ps.done
	if ps.err != nil {
		return ps.err
	}
	tmp := ps.tmp
	if tmp == nil {
		return errors.New("write state: the record was already saved or dropped")
	}
	ps.tmp = nil
	var plan []byte
	if s.Plan != nil && s.Plan == ps.plan {
		plan = ps.encodedPlan
	}
	b, err := encodeStateWith(s, plan)
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("encode state: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(ps.dir, stateFile)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// Abort drops a record not saved; after Save it does nothing. It does
// not wait for the plan's encoding, which nothing then needs.
func (ps *PendingState) Abort() {
	<-ps.created
	if ps.tmp != nil {
		ps.tmp.Close()
		os.Remove(ps.tmp.Name())
		ps.tmp = nil
	}
}

// stateRecord is a State without its plan, which encodeState writes
// itself: the depth-0 Plan, always nil, shadows State's.
type stateRecord struct {
	*State
	Plan *struct{} `json:"plan,omitempty"`
}

// encodeState is json.Marshal(s), cheaper for a plan with long prefix
// lists: encoding/json spends a call, an allocation and a copy on each
// netip.Prefix (a TextMarshaler), the bulk of the cost of recording a plan
// of 10,000 CIDRs after each change to one of them. The lists are written
// directly; everything else is encoding/json's. A prefix's text never
// needs escaping in JSON.
func encodeState(s *State) ([]byte, error) { return encodeStateWith(s, nil) }

// encodeStateWith is encodeState given, when not nil, encodePlan(s.Plan).
func encodeStateWith(s *State, plan []byte) ([]byte, error) {
	rest, err := json.Marshal(stateRecord{State: s})
	if err != nil {
		return nil, err
	}
	if s.Plan == nil || len(rest) < 2 || rest[0] != '{' {
		return json.Marshal(s)
	}
	if plan == nil {
		if plan, err = encodePlan(s.Plan); err != nil {
			return nil, err
		}
	}
	out := make([]byte, 0, len(rest)+len(plan)+16)
	out = append(out, `{"plan":`...)
	out = append(out, plan...)
	if len(rest) > 2 {
		out = append(out, ',')
	}
	return append(out, rest[1:]...), nil
}

var prefixListType = reflect.TypeOf([]netip.Prefix(nil))

// encodePlan is json.Marshal(p) with its []netip.Prefix fields (found by
// type, so a list added to the plan later is covered) written directly.
func encodePlan(p *Plan) ([]byte, error) {
	cp := *p
	v := reflect.ValueOf(&cp).Elem()
	type list struct {
		key string
		v   []netip.Prefix
	}
	var lists []list
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		if f.Type != prefixListType {
			continue
		}
		key, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if key == "-" || key == "" || !strings.Contains(","+opts+",", ",omitempty,") {
			return json.Marshal(p) // not a field this writer knows how to name
		}
		if l := v.Field(i).Interface().([]netip.Prefix); len(l) > 0 {
			lists = append(lists, list{key, l})
		}
		v.Field(i).SetZero()
	}
	b, err := json.Marshal(&cp)
	if err != nil || len(lists) == 0 || len(b) < 2 || b[len(b)-1] != '}' {
		return b, err
	}
	size := 0
	for _, l := range lists {
		size += len(l.key) + 8 + 46*len(l.v)
	}
	out := make([]byte, 0, len(b)+size)
	out = append(out, b[:len(b)-1]...)
	for _, l := range lists {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, '"')
		out = append(out, l.key...)
		out = append(out, `":[`...)
		for j, pfx := range l.v {
			if j > 0 {
				out = append(out, ',')
			}
			out = append(out, '"')
			if out, err = pfx.AppendText(out); err != nil {
				return nil, err
			}
			out = append(out, '"')
		}
		out = append(out, ']')
	}
	return append(out, '}'), nil
}

// ResolvConfFile is the copy of the workload's original resolv.conf kept in
// the state directory: the DNS interceptor's upstreams, even after
// something rewrites /etc/resolv.conf to point at the interceptor.
const ResolvConfFile = "resolv.conf"

// SaveResolvConf keeps a copy of the resolv.conf a plan read.
func SaveResolvConf(dir string, content []byte) error {
	tmp, err := writeResolvConfTemp(dir, content)
	if err != nil {
		return err
	}
	return renameResolvConf(dir, tmp)
}

func writeResolvConfTemp(dir string, content []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create state dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".resolv-*.conf")
	if err != nil {
		return "", fmt.Errorf("save resolv.conf: %w", err)
	}
	_, werr := tmp.Write(content)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), 0o644)); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("save resolv.conf: %w", err)
	}
	return tmp.Name(), nil
}

func renameResolvConf(dir, tmp string) error {
	if err := os.Rename(tmp, filepath.Join(dir, ResolvConfFile)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save resolv.conf: %w", err)
	}
	return nil
}

// PendingResolvConf is the copy of a resolv.conf written while the install
// that keeps it runs (see PendingState): Commit puts it in place, Abort
// drops it.
type PendingResolvConf struct {
	dir  string
	done chan struct{}
	tmp  string
	err  error
}

// PrepareResolvConf starts copying the resolv.conf at path into dir. A file
// that cannot be read leaves nothing to keep, as for SaveResolvConf's
// callers.
func PrepareResolvConf(dir, path string) *PendingResolvConf {
	pr := &PendingResolvConf{dir: dir, done: make(chan struct{})}
	go func() {
		defer close(pr.done)
		data, err := os.ReadFile(path)
		if err != nil {
			return
		}
		pr.tmp, pr.err = writeResolvConfTemp(dir, data)
	}()
	return pr
}

// Commit puts the copy in place.
func (pr *PendingResolvConf) Commit() error {
	<-pr.done
	if pr.err != nil || pr.tmp == "" {
		return pr.err
	}
	tmp := pr.tmp
	pr.tmp = ""
	return renameResolvConf(pr.dir, tmp)
}

// Abort drops a copy not committed.
func (pr *PendingResolvConf) Abort() {
	<-pr.done
	if pr.tmp != "" {
		os.Remove(pr.tmp)
		pr.tmp = ""
	}
}

// RemoveState forgets the installation, and the temporary files of a
// write that a killed process left before it could rename them.
func RemoveState(dir string) error {
	files := []string{stateFile, ResolvConfFile}
	for _, pattern := range []string{".capture-*.json", ".resolv-*.conf"} {
		m, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, f := range m {
			files = append(files, filepath.Base(f))
		}
	}
	for _, f := range files {
		err := os.Remove(filepath.Join(dir, f))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove state: %w", err)
		}
	}
	return nil
}

// LockNetns takes an exclusive lock on one network namespace (the file
// /proc/self/ns/net or /run/netns/NAME names), so that shunt processes with
// different state directories still change its rules one after another:
// reading the rules and writing the new batch must not interleave.
//
// The lock is an flock of the namespace's own nsfs file, which every path
// to the namespace opens, from any mount namespace: an init container, the
// CNI plugin on the host and the agent in the pod serialise on it without a
// shared directory, and no lock file is created (a file's creation is the
// dearest step of the lock on a busy ext4 directory). Earlier builds locked
// lockDir/netns-DEV-INO.lock instead; where that file exists it is taken
// too, after the namespace, so that a process of an earlier build still
// waits for this one and this one for it.
func LockNetns(ctx context.Context, lockDir, netnsPath string) (func(), error) {
	if netnsPath == "" {
		netnsPath = "/proc/self/ns/net"
	}
	unlockNS, err := flockPath(ctx, netnsPath, unix.O_RDONLY, "netns "+netnsPath)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(netnsPath, &st); err != nil {
		unlockNS()
		return nil, fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	unlockLegacy, err := flockIfExists(ctx, filepath.Join(lockDir, fmt.Sprintf("netns-%d-%d.lock", st.Dev, st.Ino)))
	if err != nil {
		unlockNS()
		return nil, err
	}
	return func() { unlockLegacy(); unlockNS() }, nil
}

// LockState takes an exclusive lock on the state directory, so that two
// shunt processes changing one namespace's capture run one after the other.
// The returned function releases it. The lock is an flock of the directory
// itself (created if need be); an earlier build's dir/.lock, where it
// exists, is taken too.
func LockState(ctx context.Context, dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	unlockDir, err := flockPath(ctx, dir, unix.O_RDONLY|unix.O_DIRECTORY, "state dir "+dir)
	if err != nil {
		return nil, err
	}
	unlockLegacy, err := flockIfExists(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		unlockDir()
		return nil, err
	}
	return func() { unlockLegacy(); unlockDir() }, nil
}

// flockIfExists locks the file at path when there is one.
func flockIfExists(ctx context.Context, path string) (func(), error) {
	unlock, err := flockPath(ctx, path, unix.O_RDWR, path)
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil
	}
	return unlock, err
}

// flockPath takes an exclusive flock on the file at path, opened with
// flags, waiting for it until ctx ends: another shunt may hold it for the
// length of an install.
func flockPath(ctx context.Context, path string, flags int, what string) (func(), error) {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			unix.Close(fd)
			return nil, fmt.Errorf("lock %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			unix.Close(fd)
			return nil, fmt.Errorf("lock %s: %w", what, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return func() { _ = unix.Flock(fd, unix.LOCK_UN); unix.Close(fd) }, nil
}
