package ebpf

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/shunt-dev/shunt/redirect"
)

// Options says where the engine acts.
type Options struct {
	// NetnsPath is the workload's network namespace (/run/netns/NAME,
	// /proc/PID/ns/net); "" is the caller's own.
	NetnsPath string
	// CgroupPath is the cgroup-v2 directory whose processes are captured.
	// Required.
	CgroupPath string
	// StateDir is where the applied plan is recorded; default
	// redirect.DefaultStateDir.
	StateDir string
	// PinDir is where programs' links and maps are pinned; default
	// /sys/fs/bpf/shunt/<the cgroup's path, sanitised>. It must be on a
	// bpffs mount.
	PinDir string
	Logger *slog.Logger
}

// Engine implements redirect.Engine with eBPF.
type Engine struct {
	netns  string
	cgroup string
	state  string // state file
	pinDir string
	log    *slog.Logger
}

var _ redirect.Engine = (*Engine)(nil)

// New checks the options and returns an engine; it touches nothing.
func New(opts Options) (*Engine, error) {
	if opts.CgroupPath == "" {
		return nil, errors.New("ebpf engine: a cgroup-v2 directory is required (--cgroup)")
	}
	cg, err := filepath.Abs(opts.CgroupPath)
	if err != nil {
		return nil, fmt.Errorf("ebpf engine: cgroup path: %w", err)
	}
	id, err := cgroupID(cg)
	if err != nil {
		return nil, err
	}
	e := &Engine{netns: opts.NetnsPath, cgroup: cg, pinDir: opts.PinDir, log: opts.Logger}
	if e.pinDir == "" {
		e.pinDir = filepath.Join("/sys/fs/bpf/shunt", id)
	}
	dir := opts.StateDir
	if dir == "" {
		dir = redirect.DefaultStateDir
	}
	e.state = filepath.Join(dir, "ebpf-"+id+".json")
	if e.log == nil {
		e.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return e, nil
}

// Name implements redirect.Engine.
func (e *Engine) Name() string { return "ebpf" }

// PinDir is where the engine pins its links and maps.
func (e *Engine) PinDir() string { return e.pinDir }

// attachment is one program and where it is attached.
type attachment struct {
	prog   string // name in the collection
	attach ebpf.AttachType
	netns  bool // attached to the network namespace, not the cgroup
}

var attachments = []attachment{
	{prog: "connect4", attach: ebpf.AttachCGroupInet4Connect},
	{prog: "connect6", attach: ebpf.AttachCGroupInet6Connect},
	{prog: "sendmsg4", attach: ebpf.AttachCGroupUDP4Sendmsg},
	{prog: "sendmsg6", attach: ebpf.AttachCGroupUDP6Sendmsg},
	{prog: "recvmsg4", attach: ebpf.AttachCGroupUDP4Recvmsg},
	{prog: "recvmsg6", attach: ebpf.AttachCGroupUDP6Recvmsg},
	{prog: "bind4", attach: ebpf.AttachCGroupInet4Bind},
	{prog: "bind6", attach: ebpf.AttachCGroupInet6Bind},
	{prog: "sock_ops", attach: ebpf.AttachCGroupSockOps},
	{prog: "get_sockopt", attach: ebpf.AttachCGroupGetsockopt},
	{prog: "dns_egress", attach: ebpf.AttachCGroupInetEgress},
	{prog: "dns_ingress", attach: ebpf.AttachCGroupInetIngress},
	{prog: "inbound_lookup", attach: ebpf.AttachSkLookup, netns: true},
}

func (e *Engine) linkPin(prog string) string { return filepath.Join(e.pinDir, "link_"+prog) }
func (e *Engine) mapPin(name string) string  { return filepath.Join(e.pinDir, "map_"+name) }

type record struct {
	Plan   *redirect.Plan `json:"plan"`
	Cgroup string         `json:"cgroup"`
	Netns  string         `json:"netns,omitempty"`
	PinDir string         `json:"pinDir"`
	// Objects is the digest of the programs' object that was loaded: an
	// install of the same build onto attached links only writes maps.
	Objects string `json:"objects,omitempty"`
	// Intent, when set, is an install that began and neither finished nor
	// rolled back (the process was killed): any of its maps and links may
	// be pinned, next to or instead of those of the plan above (nil when
	// nothing was installed before it).
	Intent *redirect.Intent `json:"intent,omitempty"`
}

// objectsDigest identifies this build's programs.
func objectsDigest() string {
	sum := sha256.Sum256(_CaptureBytes)
	return hex.EncodeToString(sum[:])
}

// Render implements redirect.Engine: the programs and the maps' contents
// Install would write.
func (e *Engine) Render(ctx context.Context, p *redirect.Plan) (map[string]string, error) {
	return render(ctx, e.log, "pinned under "+e.pinDir, e.cgroup, e.netns, p)
}

// Install implements redirect.Engine. On a fresh namespace it loads the
// programs, fills the maps, attaches and pins; when shunt is already pinned
// there it reuses the pinned maps (so connections in flight keep their
// original destinations), writes only the entries that change and swaps
// the programs in place with link update. Everything this call created is
// removed, and every map entry it changed restored, if it fails.
func (e *Engine) Install(ctx context.Context, p *redirect.Plan) (err error) {
	if err := supported(p); err != nil {
		return err
	}
	if err := checkBPFFS(e.pinDir); err != nil {
		return err
	}
	local, err := localAddrs(ctx, e.netns)
	if err != nil {
		return err
	}
	want, err := desired(p, local)
	if err != nil {
		return err
	}

	// The intent is on disk before the first pin or link changes: killed at
	// any point from here on, the install leaves a record that status,
	// install and uninstall recognise. A failed install puts the record it
	// found back once it has undone its changes.
	found, rerr := e.readState()
	if rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		e.log.Warn("recorded plan unreadable; reading the maps instead", "err", rerr)
	}
	prev := found
	if prev != nil && (prev.PinDir != e.pinDir || prev.Cgroup != e.cgroup) {
		prev = nil // another installation's record: nothing known here
	}
	if err := e.recordIntent(prev, p); err != nil {
		return err
	}

	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			if cerr := e.clearIntent(found); cerr != nil {
				err = fmt.Errorf("%w; %v", err, cerr)
			}
		}
	}()

	if _, statErr := os.Stat(e.pinDir); errors.Is(statErr, os.ErrNotExist) {
		if err := os.MkdirAll(e.pinDir, 0o700); err != nil {
			return fmt.Errorf("create pin directory: %w", err)
		}
		undo = append(undo, func() { _ = os.Remove(e.pinDir) })
	}

	spec, err := loadCapture()
	if err != nil {
		return fmt.Errorf("load capture programs' spec: %w", err)
	}
	pinned, err := openPinnedMaps(spec, e.mapPin, "shunt uninstall")
	if err != nil {
		return err
	}
	defer closeMaps(pinned)

	cgFD, nsFD, closeTargets, err := openTargets(e.cgroup, e.netns)
	if err != nil {
		return err
	}
	defer closeTargets()

	// The record says what the pinned maps hold and which programs run.
	// When it matches this build and every link is still attached, a plan
	// change is map writes alone: no program is loaded or verified again.
	// After an interrupted install, neither the links' programs nor the
	// maps' contents are known: load afresh and read every map back.
	maps := pinned
	current := prev != nil && prev.Intent == nil && prev.Objects == objectsDigest() && len(pinned) == len(spec.Maps) && e.linksAttached(cgFD, nsFD) && tcAttached(e.netns, e.tcCheck())
	var coll *ebpf.Collection
	if !current {
		coll, err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: pinned})
		if err != nil {
			return fmt.Errorf("load capture programs: %w", err)
		}
		defer coll.Close()
		maps = coll.Maps
	}

	// What the tries held is known from the record, so a plan change
	// writes only the prefixes that differ instead of reading up to 64 Ki
	// entries back. The small maps are read back, so an install also
	// repairs them.
	var before map[string]*contents
	if prev != nil && prev.Intent == nil && prev.Plan != nil {
		if old, derr := desired(prev.Plan, nil); derr == nil {
			before = map[string]*contents{}
			for _, c := range old {
				before[c.name] = c
			}
		}
	}

	// Map contents first: programs attached below must never run on an
	// empty configuration.
	for _, c := range want {
		var changes []change
		old, known := before[c.name]
		if _, reused := pinned[c.name]; reused && known && c.trie {
			changes = diffRecorded(maps[c.name], old, c)
		} else {
			var derr error
			if !reused {
				changes = diffFresh(maps[c.name], c)
			} else if changes, derr = diff(maps[c.name], c); derr != nil {
				return derr
			}
		}
		for _, ch := range changes {
			if aerr := ch.apply(false); aerr != nil {
				return fmt.Errorf("write map %s: %w", c.name, aerr)
			}
			undo = append(undo, func() {
				if uerr := ch.apply(true); uerr != nil {
					e.log.Error("restore map entry", "map", c.name, "err", uerr)
				}
			})
		}
	}

	if !current {
		var closers []func(ok bool)
		defer func() {
			for _, c := range closers {
				c(err == nil)
			}
		}()
		if err := e.attach(coll, cgFD, nsFD, pinned, &undo, &closers); err != nil {
			return err
		}
		if terr := attachTC(e.log, e.netns, coll.Programs["inbound_tc"], &undo); terr != nil {
			// sk_lookup still steers to a plain TCP listener.
			e.log.Warn("inbound steering at tc unavailable: an MPTCP inbound listener will not be reached", "err", terr)
		}
	}

	if err := e.writeState(p); err != nil {
		return err
	}
	// The TCX links an earlier version pinned, now that filters hold
	// inbound_tc (their program ran first until here, so no SYN went
	// unsteered).
	if _, lerrs := removeTCLinks(e.log, e.pinDir); len(lerrs) > 0 {
		e.log.Warn("remove the TCX links of an earlier version", "err", errors.Join(lerrs...))
	}

	if p.CaptureInbound {
		if _, lerr := e.registerListener(ctx, maps["inbound_listener"], p.InboundPort); lerr != nil {
			// The proxy may start after capture is installed (an init
			// container runs first); the agent registers it later.
			e.log.Warn("inbound listener not registered yet", "port", p.InboundPort, "err", lerr)
		}
	}
	e.log.Info("ebpf capture installed", "cgroup", e.cgroup, "pinDir", e.pinDir)
	return nil
}

// attach attaches (or, where a pinned link is attached, updates) every
// program of coll and pins what it created. What must be undone if the
// install fails goes on undo; closers run when the install ends, told
// whether it succeeded.
func (e *Engine) attach(coll *ebpf.Collection, cgFD, nsFD int, pinned map[string]*ebpf.Map, undo *[]func(), closers *[]func(ok bool)) error {
	var toPin []func() error
	for _, a := range attachments {
		prog := coll.Programs[a.prog]
		pin := e.linkPin(a.prog)
		old, lerr := link.LoadPinnedLink(pin, nil)
		if lerr == nil {
			info, ierr := old.Info()
			uerr := old.Update(prog)
			if ierr == nil && uerr == nil && attachedTo(info, a, cgFD, nsFD) {
				oldProg := info.Program
				*undo = append(*undo, func() {
					if p, perr := ebpf.NewProgramFromID(oldProg); perr == nil {
						_ = old.Update(p)
						p.Close()
					}
					old.Close()
				})
				*closers = append(*closers, func(ok bool) {
					if ok {
						old.Close()
					}
				})
				continue
			}
			// A detached or broken link: attach afresh and replace the pin.
			e.log.Warn("pinned link is detached; attaching again", "program", a.prog)
			old.Close()
		} else if !errors.Is(lerr, os.ErrNotExist) {
			return fmt.Errorf("open pinned link %s: %w", a.prog, lerr)
		}

		target := cgFD
		if a.netns {
			target = nsFD
		}
		l, aerr := link.AttachRawLink(link.RawLinkOptions{Target: target, Program: prog, Attach: a.attach})
		if aerr != nil {
			return fmt.Errorf("attach %s (%s): %w", a.prog, a.attach, aerr)
		}
		*undo = append(*undo, func() { _ = l.Close() })
		toPin = append(toPin, func() error {
			_ = os.Remove(pin) // the detached link this one replaces
			if perr := l.Pin(pin); perr != nil {
				return fmt.Errorf("pin %s: %w", a.prog, perr)
			}
			*undo = append(*undo, func() { _ = l.Unpin() })
			return nil
		})
		*closers = append(*closers, func(bool) { l.Close() })
	}

	for name, m := range coll.Maps {
		if _, ok := pinned[name]; ok {
			continue
		}
		path := e.mapPin(name)
		if perr := m.Pin(path); perr != nil {
			return fmt.Errorf("pin map %s: %w", name, perr)
		}
		*undo = append(*undo, func() { _ = m.Unpin() })
	}
	for _, f := range toPin {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// tcCheck accepts the inbound_tc of this installation: the program that
// uses its pinned maps.
func (e *Engine) tcCheck() tcCheck { return checkProgMaps(e.mapPin("config_map")) }

// linksAttached reports whether every program's pinned link is attached
// where it belongs.
func (e *Engine) linksAttached(cgFD, nsFD int) bool {
	for _, a := range attachments {
		l, err := link.LoadPinnedLink(e.linkPin(a.prog), nil)
		if err != nil {
			return false
		}
		info, err := l.Info()
		l.Close()
		if err != nil || !attachedTo(info, a, cgFD, nsFD) {
			return false
		}
	}
	return true
}

// recordIntent saves the record of what is installed (prev, when it is
// this installation's) with the intent of installing p added.
func (e *Engine) recordIntent(prev *record, p *redirect.Plan) error {
	r := record{Cgroup: e.cgroup, Netns: e.netns, PinDir: e.pinDir}
	if prev != nil {
		r = *prev
	}
	r.Intent = &redirect.Intent{Engine: e.Name(), Plan: p.Clone(), PID: os.Getpid(), StartedAt: time.Now().UTC()}
	if err := writeJSON(e.state, "record install intent", r); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	return nil
}

// clearIntent puts back the record an install found (none, when it found
// none) once the install has undone what it changed.
func (e *Engine) clearIntent(prev *record) error {
	if prev == nil {
		if err := os.Remove(e.state); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("clear install intent: %w", err)
		}
		return nil
	}
	return writeJSON(e.state, "clear install intent", prev)
}

func (e *Engine) writeState(p *redirect.Plan) error {
	return writeJSON(e.state, "record plan", record{Plan: p, Cgroup: e.cgroup, Netns: e.netns, PinDir: e.pinDir, Objects: objectsDigest()})
}

func (e *Engine) readState() (*record, error) {
	var r record
	if err := readJSON(e.state, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Uninstall implements redirect.Engine: it detaches every program, removes
// every pin and the recorded plan.
func (e *Engine) Uninstall(ctx context.Context) error {
	found, errs := removeLinks(e.log, e.pinDir)
	tcFound, tcErrs := removeTCLinks(e.log, e.pinDir)
	found, errs = found || tcFound, append(errs, tcErrs...)
	tcFound, tcErrs = removeTC(e.netns)
	found, errs = found || tcFound, append(errs, tcErrs...)
	entries, err := os.ReadDir(e.pinDir)
	if err == nil {
		for _, ent := range entries {
			if strings.HasPrefix(ent.Name(), "map_") {
				found = true
				if err := os.Remove(filepath.Join(e.pinDir, ent.Name())); err != nil {
					errs = append(errs, fmt.Errorf("unpin map: %w", err))
				}
			}
		}
		if err := os.Remove(e.pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
		}
	}
	if err := os.Remove(e.state); err == nil {
		found = true
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	// A write the killed process did not get to rename.
	if err := os.Remove(e.state + ".tmp"); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if !found {
		return redirect.ErrNotInstalled
	}
	e.log.Info("ebpf capture uninstalled", "cgroup", e.cgroup)
	return nil
}

// Status implements redirect.Engine: it reads the pinned links and maps and
// reports what differs from the recorded plan.
func (e *Engine) Status(ctx context.Context) (*redirect.Status, error) {
	st := &redirect.Status{Engine: "ebpf"}
	rec, err := e.readState()
	pins := pinnedNames(e.pinDir)
	// What an interrupted install left is said first.
	var first []string
	defer func() {
		sort.Strings(st.Drift)
		st.Drift = append(first, st.Drift...)
	}()
	switch {
	case errors.Is(err, os.ErrNotExist):
		// With no record (an earlier version's install, a lost state
		// directory), only links say capture is live: maps capture
		// nothing, and the directory may be a node's, whose maps and
		// programs are not this engine's.
		var links []string
		for _, name := range pins {
			if strings.HasPrefix(name, "link_") {
				links = append(links, name)
			}
		}
		if len(links) == 0 {
			return nil, redirect.ErrNotInstalled
		}
		st.Installed = true
		first = append(first, fmt.Sprintf("pinned in %s but no installation is recorded (%s is missing): %s", e.pinDir, e.state, strings.Join(links, ", ")))
	case err != nil:
		return nil, err
	default:
		// A record holding only an intent is an install that never
		// finished: nothing is known to be installed, but any of its
		// links may be attached.
		st.Installed = rec.Plan != nil
		st.Plan = rec.Plan
		if in := rec.Intent; in != nil {
			first = append(first, in.String())
			if len(pins) == 0 {
				first = append(first, "nothing is pinned in "+e.pinDir)
			} else {
				first = append(first, fmt.Sprintf("pinned in %s: %s", e.pinDir, strings.Join(pins, ", ")))
			}
			if !st.Installed {
				st.Plan = in.Plan
			}
		}
	}

	cgFD, nsFD, closeTargets, err := openTargets(e.cgroup, e.netns)
	if err != nil {
		return nil, err
	}
	defer closeTargets()

	progs, drift := linkStatus("programs", e.pinDir, cgFD, nsFD, nil)
	if st.Installed {
		lines, tcDrift, notes := tcStatus(e.netns, e.pinDir, e.tcCheck())
		progs.Lines = append(progs.Lines, lines...)
		drift = append(drift, tcDrift...)
		st.Notes = append(st.Notes, notes...)
	}
	if !st.Installed {
		// Only what the interrupted install left: no plan to check
		// the links and maps against.
		st.Sections = append(st.Sections, progs)
		return st, nil
	}
	st.Drift = append(st.Drift, drift...)
	st.Sections = append(st.Sections, progs)

	if rec != nil && rec.Plan != nil {
		local, err := localAddrs(ctx, e.netns)
		if err != nil {
			st.Notes = append(st.Notes, "cannot list the namespace's addresses: "+err.Error())
		}
		want, err := desired(rec.Plan, local)
		if err != nil {
			return nil, err
		}
		for _, c := range want {
			m, err := ebpf.LoadPinnedMap(e.mapPin(c.name), nil)
			if err != nil {
				st.Drift = append(st.Drift, fmt.Sprintf("map %s is not pinned", c.name))
				continue
			}
			changes, err := diff(m, c)
			m.Close()
			if err != nil {
				return nil, err
			}
			for _, ch := range changes {
				st.Drift = append(st.Drift, describeChange(c.name, c, ch))
			}
			st.Sections = append(st.Sections, redirect.Section{Name: "map " + c.name, Lines: c.lines()})
		}
		if rec.Plan.CaptureInbound {
			if n := e.listenerCount(); n == 0 {
				// Not drift: the rules are as installed, the proxy
				// is just not listening (yet). Inbound connections
				// are refused meanwhile, as with iptables.
				st.Notes = append(st.Notes, fmt.Sprintf("inbound listener: no socket listening on port %d is in the sk_lookup map (not listening yet, or MPTCP); new connections are steered at tc ingress to whatever listens there, and refused while nothing does", rec.Plan.InboundPort))
			}
		}
	}
	if s, err := e.stats(); err == nil {
		st.Sections = append(st.Sections, s)
	}
	return st, nil
}

// pinnedNames lists what is pinned in dir (links, maps, the TCX links of
// earlier versions), sorted.
func pinnedNames(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(ents))
	for _, ent := range ents {
		out = append(out, ent.Name())
	}
	sort.Strings(out)
	return out
}

func (e *Engine) listenerCount() int {
	m, err := ebpf.LoadPinnedMap(e.mapPin("inbound_listener"), nil)
	if err != nil {
		return 0
	}
	defer m.Close()
	n := 0
	for k := uint32(0); k < 2; k++ {
		var v uint64
		if m.Lookup(k, &v) == nil {
			n++
		}
	}
	return n
}

func (e *Engine) stats() (redirect.Section, error) {
	s := redirect.Section{Name: "counters"}
	sums, err := e.Stats()
	if err != nil {
		return s, err
	}
	for _, name := range statNames {
		s.Lines = append(s.Lines, fmt.Sprintf("%-32s %d", name, sums[name]))
	}
	return s, nil
}

// Stats returns the programs' counters by name, summed over CPUs.
func (e *Engine) Stats() (map[string]uint64, error) {
	m, err := ebpf.LoadPinnedMap(e.mapPin("stats"), nil)
	if err != nil {
		return nil, fmt.Errorf("open counters: %w", err)
	}
	defer m.Close()
	out := map[string]uint64{}
	for i, name := range statNames {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", name, err)
		}
		for _, v := range per {
			out[name] += v
		}
	}
	return out, nil
}

// SyncListener registers the proxy's inbound listener with the sk_lookup
// program. The agent calls it when the proxy (re)starts; the kernel drops a
// closed socket from the map by itself.
func (e *Engine) SyncListener(ctx context.Context) (int, error) {
	rec, err := e.readState()
	if err != nil {
		return 0, fmt.Errorf("read applied plan: %w", err)
	}
	m, err := ebpf.LoadPinnedMap(e.mapPin("inbound_listener"), nil)
	if err != nil {
		return 0, fmt.Errorf("open inbound listener map: %w", err)
	}
	defer m.Close()
	return e.registerListener(ctx, m, rec.Plan.InboundPort)
}

// UpdateLocalAddrs refreshes the workload's own addresses after they change.
func (e *Engine) UpdateLocalAddrs(ctx context.Context) error {
	rec, err := e.readState()
	if err != nil {
		return fmt.Errorf("read applied plan: %w", err)
	}
	local, err := localAddrs(ctx, e.netns)
	if err != nil {
		return err
	}
	want, err := desired(rec.Plan, local)
	if err != nil {
		return err
	}
	for _, c := range want {
		if c.name != "local_addrs" {
			continue
		}
		m, err := ebpf.LoadPinnedMap(e.mapPin(c.name), nil)
		if err != nil {
			return fmt.Errorf("open map %s: %w", c.name, err)
		}
		defer m.Close()
		changes, err := diff(m, c)
		if err != nil {
			return err
		}
		for _, ch := range changes {
			if err := ch.apply(false); err != nil {
				return fmt.Errorf("write map %s: %w", c.name, err)
			}
		}
	}
	return nil
}
