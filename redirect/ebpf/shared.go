package ebpf

// What the per-cgroup Engine and the node-wide Node do alike: rendering,
// opening pinned maps, attaching to and reporting on a pod's links, and
// recording state.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
)

// render is Render for programs pinned as header says and attached to
// cgroup (sk_lookup to netns).
func render(ctx context.Context, log *slog.Logger, header, cgroup, netns string, p *redirect.Plan) (map[string]string, error) {
	local, err := localAddrs(ctx, netns)
	if err != nil {
		log.Warn("cannot list the namespace's addresses; rendering without them", "err", err)
	}
	want, err := desired(p, local)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n", header)
	for _, a := range attachments {
		target := "cgroup " + cgroup
		if a.netns {
			target = "netns " + orDefault(netns, "(current)")
		}
		fmt.Fprintf(&b, "program %-15s attach %-28s %s\n", a.prog, a.attach, target)
	}
	out := map[string]string{"programs": b.String()}
	for _, c := range want {
		out["map "+c.name] = strings.Join(c.lines(), "\n") + "\n"
	}
	return out, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// openPinnedMaps opens the maps of spec pinned by pin, skipping those not
// pinned; a pinned map of another layout is an error that says what to run
// (uninstall) first.
func openPinnedMaps(spec *ebpf.CollectionSpec, pin func(name string) string, uninstall string) (map[string]*ebpf.Map, error) {
	pinned := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		m, err := ebpf.LoadPinnedMap(pin(name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			closeMaps(pinned)
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		if err := ms.Compatible(m); err != nil {
			m.Close()
			closeMaps(pinned)
			return nil, fmt.Errorf("pinned map %s does not match this version of shunt (%v); run `%s` first", name, err, uninstall)
		}
		pinned[name] = m
	}
	return pinned, nil
}

func closeMaps(ms map[string]*ebpf.Map) {
	for _, m := range ms {
		m.Close()
	}
}

// openTargets opens what the programs attach to: the cgroup and the
// network namespace. close closes both.
func openTargets(cgroup, netns string) (cgFD, nsFD int, close func(), err error) {
	cgFD, err = unix.Open(cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, -1, nil, fmt.Errorf("open cgroup %s: %w", cgroup, err)
	}
	nsFD, err = openNetns(netns)
	if err != nil {
		unix.Close(cgFD)
		return -1, -1, nil, err
	}
	return cgFD, nsFD, func() {
		unix.Close(nsFD)
		unix.Close(cgFD)
	}, nil
}

// attachedTo reports whether a pinned link is still attached where it should be.
func attachedTo(info *link.Info, a attachment, cgFD, nsFD int) bool {
	if a.netns {
		ni := info.NetNs()
		var st unix.Stat_t
		return ni != nil && unix.Fstat(nsFD, &st) == nil && uint64(ni.NetnsInode) == st.Ino
	}
	ci := info.Cgroup()
	var st unix.Stat_t
	return ci != nil && unix.Fstat(cgFD, &st) == nil && ci.CgroupId == st.Ino
}

// removeLinks detaches and unpins every program's link pinned in dir
// (link_<program>). found says whether there was any.
func removeLinks(log *slog.Logger, dir string) (found bool, errs []error) {
	for _, a := range attachments {
		pin := filepath.Join(dir, "link_"+a.prog)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		found = true
		if err != nil {
			errs = append(errs, fmt.Errorf("open pinned link %s: %w", a.prog, err))
			_ = os.Remove(pin)
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", a.prog, err))
		}
		// Detach explicitly: another holder of the link (a bpftool
		// session) must not keep capture alive.
		if rl, ok := l.(interface{ Detach() error }); ok {
			if err := rl.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, os.ErrNotExist) {
				log.Warn("detach link", "program", a.prog, "err", err)
			}
		}
		l.Close()
	}
	return found, errs
}

// linkStatus reports the links pinned in dir: a line each, and what
// differs from every program attached where it belongs (and, when ids is
// not nil, running the program ids names).
func linkStatus(name, dir string, cgFD, nsFD int, ids map[string]ebpf.ProgramID) (redirect.Section, []string) {
	progs := redirect.Section{Name: name}
	var drift []string
	for _, a := range attachments {
		l, err := link.LoadPinnedLink(filepath.Join(dir, "link_"+a.prog), nil)
		if err != nil {
			drift = append(drift, fmt.Sprintf("program %s: link is not pinned (%v)", a.prog, err))
			continue
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			drift = append(drift, fmt.Sprintf("program %s: %v", a.prog, err))
			continue
		}
		state := "attached"
		if !attachedTo(info, a, cgFD, nsFD) {
			state = "DETACHED"
			drift = append(drift, fmt.Sprintf("program %s: link %d is detached", a.prog, info.ID))
		} else if ids != nil && info.Program != ids[a.prog] {
			drift = append(drift, fmt.Sprintf("program %s: link %d runs program %d, not the node's %d", a.prog, info.ID, info.Program, ids[a.prog]))
		}
		progs.Lines = append(progs.Lines, fmt.Sprintf("%-15s %-28s link %d prog %d %s", a.prog, a.attach, info.ID, info.Program, state))
	}
	return progs, drift
}

// writeJSON records v in path, atomically; what says what it is, for errors.
func writeJSON(path, what string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}
