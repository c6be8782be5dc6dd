package ebpf

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/shunt-dev/shunt/redirect"
)

// DefaultNodePinDir is where a node's shared programs are pinned.
const DefaultNodePinDir = "/sys/fs/bpf/shunt/node"

// DefaultNodeStateDir is where a node records each enrolled pod's plan.
const DefaultNodeStateDir = "/run/shunt/node"

// NodeOptions says where a node's shared programs live.
type NodeOptions struct {
	// PinDir holds the programs, the maps and, under pods/, each enrolled
	// pod's links; default DefaultNodePinDir. It must be on a bpffs.
	PinDir string
	// StateDir holds one record per enrolled pod; default
	// DefaultNodeStateDir.
	StateDir string
	Logger   *slog.Logger
}

// Node is the node-wide form of the eBPF engine: one copy of the programs,
// loaded once and attached to every enrolled pod's cgroup (sk_lookup to the
// pod's network namespace), with each pod's configuration in maps keyed by
// its cgroup id. Enrolling a pod or changing its plan writes map entries and
// attaches links; it never loads or verifies a program.
type Node struct {
	pinDir, stateDir string
	log              *slog.Logger
	specMu           sync.Mutex // guards spec, parsed when first needed
	spec             *ebpf.CollectionSpec
	progs            map[string]*ebpf.Program
	maps             map[string]*ebpf.Map
}

// nodeDigest identifies this build's node programs.
func nodeDigest() [32]byte { return sha256.Sum256(_NodeCaptureBytes) }

func (o NodeOptions) withDefaults() NodeOptions {
	if o.PinDir == "" {
		o.PinDir = DefaultNodePinDir
	}
	if o.StateDir == "" {
		o.StateDir = DefaultNodeStateDir
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o
}

func (n *Node) progPin(name string) string { return filepath.Join(n.pinDir, "prog_"+name) }
func (n *Node) mapPin(name string) string  { return filepath.Join(n.pinDir, "map_"+name) }
func (n *Node) podPinDir(pod string) string {
	return filepath.Join(n.pinDir, "pods", pod)
}
func (n *Node) record(pod string) string { return filepath.Join(n.stateDir, pod+".json") }

// NewNode loads the node's programs, or reuses those pinned in PinDir when
// they are this build's. Programs of another build are replaced and every
// enrolled pod's links are switched to the new ones in place (link update);
// the maps, and so every pod's configuration and connections in flight, are
// kept.
func NewNode(opts NodeOptions) (*Node, error) {
	opts = opts.withDefaults()
	if err := checkBPFFS(opts.PinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	n, err := OpenNode(opts)
	if err == nil {
		return n, nil
	}
	opts.Logger.Info("loading the node's capture programs", "pinDir", opts.PinDir, "reason", err)

	spec, err := loadNodeCapture()
	if err != nil {
		return nil, fmt.Errorf("load node capture programs' spec: %w", err)
	}
	n = &Node{pinDir: opts.PinDir, stateDir: opts.StateDir, log: opts.Logger, spec: spec}
	pinned, err := n.pinnedMaps()
	if err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: pinned})
	if err != nil {
		closeMaps(pinned)
		return nil, fmt.Errorf("load node capture programs: %w", err)
	}
	closeMaps(pinned) // the collection holds its own references
	for name, m := range coll.Maps {
		if _, ok := pinned[name]; ok {
			continue
		}
		if err := m.Pin(n.mapPin(name)); err != nil {
			coll.Close()
			return nil, fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	for name, p := range coll.Programs {
		tmp := filepath.Join(n.pinDir, "new_prog_"+name) // bpffs names may not contain dots
		_ = os.Remove(tmp)
		if err := p.Pin(tmp); err != nil {
			coll.Close()
			return nil, fmt.Errorf("pin program %s: %w", name, err)
		}
		if err := os.Rename(tmp, n.progPin(name)); err != nil {
			coll.Close()
			return nil, fmt.Errorf("pin program %s: %w", name, err)
		}
	}
	n.progs, n.maps = coll.Programs, coll.Maps
	if err := n.updateLinks(); err != nil {
		n.Close()
		return nil, err
	}
	// Written last: a node whose digest matches has every program pinned.
	d := nodeDigest()
	if err := n.maps["node_info"].Put(uint32(0), d); err != nil {
		n.Close()
		return nil, fmt.Errorf("write node_info: %w", err)
	}
	return n, nil
}

// OpenNode opens the programs and maps a node agent pinned; it loads
// nothing, and fails when they are missing or of another build. It is what
// every CNI plugin process pays before an enrolment, so it does not parse
// the programs' object: the digest in node_info says the pins are this
// build's, so their layouts are the object's, and the names come from the
// generated bindings.
func OpenNode(opts NodeOptions) (*Node, error) {
	opts = opts.withDefaults()
	n := &Node{pinDir: opts.PinDir, stateDir: opts.StateDir, log: opts.Logger, maps: map[string]*ebpf.Map{}, progs: map[string]*ebpf.Program{}}
	info, err := ebpf.LoadPinnedMap(n.mapPin("node_info"), nil)
	if err != nil {
		return nil, fmt.Errorf("the node's capture maps are not pinned in %s (is `shunt node` running with the eBPF engine?): %w", n.pinDir, err)
	}
	n.maps["node_info"] = info
	var got [32]byte
	if err := info.Lookup(uint32(0), &got); err != nil || got != nodeDigest() {
		n.Close()
		return nil, fmt.Errorf("the programs pinned in %s are not this build's", n.pinDir)
	}
	for _, name := range ebpfNames(nodeCaptureMaps{}) {
		if name == "node_info" {
			continue
		}
		m, err := ebpf.LoadPinnedMap(n.mapPin(name), nil)
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("the node's capture map %s is not pinned in %s: %w", name, n.pinDir, err)
		}
		n.maps[name] = m
	}
	for _, name := range ebpfNames(nodeCapturePrograms{}) {
		p, err := ebpf.LoadPinnedProgram(n.progPin(name), nil)
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("open pinned program %s: %w", name, err)
		}
		n.progs[name] = p
	}
	return n, nil
}

// ebpfNames lists the `ebpf` tags of a generated bindings struct: the
// names of its object's maps or programs.
func ebpfNames(v any) []string {
	t := reflect.TypeOf(v)
	out := make([]string, 0, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		if name := t.Field(i).Tag.Get("ebpf"); name != "" {
			out = append(out, name)
		}
	}
	return out
}

// loadSpec parses the node programs' object, the first time it is needed
// (a pod's first non-empty list needs its inner map's layout).
func (n *Node) loadSpec() (*ebpf.CollectionSpec, error) {
	n.specMu.Lock()
	defer n.specMu.Unlock()
	if n.spec == nil {
		spec, err := loadNodeCapture()
		if err != nil {
			return nil, fmt.Errorf("load node capture programs' spec: %w", err)
		}
		n.spec = spec
	}
	return n.spec, nil
}

func (n *Node) pinnedMaps() (map[string]*ebpf.Map, error) {
	return openPinnedMaps(n.spec, n.mapPin, "shunt node --uninstall")
}

// Close releases the node's handles; what is pinned stays.
func (n *Node) Close() error {
	for _, p := range n.progs {
		p.Close()
	}
	closeMaps(n.maps)
	return nil
}

// ProgramIDs are the kernel's ids of the node's programs, by name.
func (n *Node) ProgramIDs() (map[string]ebpf.ProgramID, error) {
	out := map[string]ebpf.ProgramID{}
	for name, p := range n.progs {
		info, err := p.Info()
		if err != nil {
			return nil, fmt.Errorf("program %s: %w", name, err)
		}
		id, _ := info.ID()
		out[name] = id
	}
	return out, nil
}

// updateLinks points every enrolled pod's links at the node's programs.
func (n *Node) updateLinks() error {
	pods, err := os.ReadDir(filepath.Join(n.pinDir, "pods"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list enrolled pods: %w", err)
	}
	for _, pod := range pods {
		if err := n.updatePodTC(pod.Name()); err != nil {
			return fmt.Errorf("pod %s: %w", pod.Name(), err)
		}
		for _, a := range attachments {
			l, err := link.LoadPinnedLink(filepath.Join(n.podPinDir(pod.Name()), "link_"+a.prog), nil)
			if err != nil {
				continue
			}
			err = l.Update(n.progs[a.prog])
			l.Close()
			if err != nil {
				return fmt.Errorf("pod %s: update link %s: %w", pod.Name(), a.prog, err)
			}
		}
	}
	return nil
}

// updatePodTC points the pod's inbound_tc filters at the node's program,
// found in the namespace its record names. TCX links an earlier version
// pinned for the pod are moved to filters there (or, without a record to
// say where, updated in place).
func (n *Node) updatePodTC(pod string) error {
	dir := n.podPinDir(pod)
	rec, err := n.readRecord(pod)
	if err != nil {
		return updateTCLinks(dir, n.progs["inbound_tc"])
	}
	if !hasTCLinks(dir) {
		return updateTC(rec.Netns, n.progs["inbound_tc"])
	}
	var undo []func()
	if err := attachTC(n.log, rec.Netns, n.progs["inbound_tc"], &undo); err != nil && !errors.Is(err, errNetnsGone) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		n.log.Warn("cannot move the pod's inbound_tc links to tc filters; updating them in place", "pod", pod, "err", err)
		return updateTCLinks(dir, n.progs["inbound_tc"])
	}
	_, errs := removeTCLinks(n.log, dir)
	return errors.Join(errs...)
}

// podRecord is what a node keeps per enrolled pod: the cgroup's id outlives
// the cgroup, so Leave finds the pod's entries after the runtime removed it.
type podRecord struct {
	Cgroup   string         `json:"cgroup"`
	CgroupID uint64         `json:"cgroupID"`
	Netns    string         `json:"netns,omitempty"`
	Plan     *redirect.Plan `json:"plan"`
	// Local is the pod's own addresses as written with Plan: with the
	// plan, they name every entry of the pod in the node's shared maps,
	// so an enrolment or a leave reads and writes those entries alone
	// instead of scanning every pod's (Keyed says the record has them;
	// records of earlier versions do not).
	Local []netip.Addr `json:"local,omitempty"`
	Keyed bool         `json:"keyed,omitempty"`
	// Pending lists enrolments that began and did not finish (the
	// process was killed), the latest last: any of their entries may be in
	// place next to Plan's.
	Pending []pendingEnrolment `json:"pending,omitempty"`
}

// pendingEnrolment is an enrolment under way, recorded before its first
// map write.
type pendingEnrolment struct {
	Plan      *redirect.Plan `json:"plan"`
	Local     []netip.Addr   `json:"local,omitempty"`
	PID       int            `json:"pid"`
	StartedAt time.Time      `json:"startedAt"`
}

// written returns, per shared map, the pod's entries its record says may be
// in place (the applied plan's and an unfinished enrolment's) and the
// addresses it may own in addr_pods. ok is false when the record cannot
// say (an earlier version's): the caller then scans the maps.
func (r *podRecord) written() (flat map[string]*contents, addrs []netip.Addr, ok bool) {
	flat = map[string]*contents{}
	if r == nil {
		return flat, nil, true
	}
	if !r.Keyed && r.Plan != nil {
		return nil, nil, false
	}
	add := func(p *redirect.Plan, local []netip.Addr) bool {
		if p == nil {
			return true
		}
		cs, err := desired(p, local)
		if err != nil {
			return false
		}
		for _, c := range cs {
			name := nodeFlat[c.name]
			if name == "" {
				continue
			}
			if flat[name] == nil {
				flat[name] = newContents(name, false)
			}
			for k, e := range prefixed(c, r.CgroupID).entries {
				flat[name].entries[k] = e
			}
		}
		addrs = append(addrs, local...)
		return true
	}
	if !add(r.Plan, r.Local) {
		return nil, nil, false
	}
	for _, in := range r.Pending {
		if !add(in.Plan, in.Local) {
			return nil, nil, false
		}
	}
	return flat, addrs, true
}

// diffKeyed is diffShare for a pod whose entries are known: it looks up
// the keys of want and of was (what may be in place) alone, O(the pod's
// entries) whatever the number of pods sharing the map.
func diffKeyed(m *ebpf.Map, was, want *contents) ([]change, error) {
	var out []change
	for _, e := range want.entries {
		var got []byte
		err := m.Lookup(e.key, &got)
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			out = append(out, change{m: m, key: e.key, value: e.value})
		case err != nil:
			return nil, fmt.Errorf("read %s: %w", want.name, err)
		case !bytes.Equal(got, e.value):
			out = append(out, change{m: m, key: e.key, old: got, value: e.value})
		}
	}
	if was == nil {
		return out, nil
	}
	for ks, e := range was.entries {
		if _, ok := want.entries[ks]; ok {
			continue
		}
		var got []byte
		err := m.Lookup(e.key, &got)
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
		case err != nil:
			return nil, fmt.Errorf("read %s: %w", want.name, err)
		default:
			out = append(out, change{m: m, key: e.key, old: got})
		}
	}
	return out, nil
}

// addrChanges returns the writes that make addr_pods name the pod as the
// owner of exactly want's addresses; was lists the addresses it may own.
func (n *Node) addrChanges(id uint64, want *contents, was []netip.Addr, keyed bool) ([]change, error) {
	idBytes := podKey(id)
	m := n.maps["addr_pods"]
	if !keyed {
		return diffShare(m, want, func(_, v []byte) bool { return bytes.Equal(v, idBytes) })
	}
	stale := newContents("addr_pods", false)
	for _, a := range was {
		k := mustBytes(captureAddr{Ip: addr16(a)})
		if _, ok := want.entries[string(k)]; ok {
			continue
		}
		var got []byte
		if m.Lookup(k, &got) == nil && bytes.Equal(got, idBytes) {
			stale.entries[string(k)] = entry{key: k, value: got}
		}
	}
	return diffKeyed(m, stale, want)
}

func (n *Node) readRecord(pod string) (*podRecord, error) {
	var r podRecord
	if err := readJSON(n.record(pod), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func (n *Node) writeRecord(pod string, r *podRecord) error {
	return writeJSON(n.record(pod), "record pod", r)
}

// The per-pod maps of the node object, by the name desired() gives the
// per-cgroup engine's map.
var (
	nodeInner = map[string]string{ // one inner map per pod
		"port_flags":        "pod_port_flags",
		"exclude_out_cidrs": "pod_exclude_out_cidrs",
		"exclude_in_cidrs":  "pod_exclude_in_cidrs",
		"include_out_cidrs": "pod_include_out_cidrs",
		"egress_allowed":    "pod_egress_allowed",
	}
	nodeFlat = map[string]string{ // shared, keys prefixed with the cgroup id
		"uid_rules":   "pod_uid_rules",
		"local_addrs": "pod_local_addrs",
		"dns_servers": "pod_dns_servers",
		// Endpoints of several pods may be the same address and port.
		"egress_endpoints": "pod_egress_endpoints",
	}
)

func podKey(id uint64) []byte { return mustBytes(id) }

// prefixed turns a per-cgroup map's contents into the pod's share of a
// flat node map: every key gets the cgroup id in front (and uid rule
// indices and endpoints the padding of their pod_ struct).
func prefixed(c *contents, id uint64) *contents {
	out := newContents(c.name, false)
	for _, e := range c.entries {
		k := append(podKey(id), e.key...)
		if c.name == "uid_rules" || c.name == "egress_endpoints" {
			// The padding of struct pod_rule, struct pod_endpoint.
			k = append(k, 0, 0, 0, 0)
		}
		out.entries[string(k)] = entry{key: k, value: e.value, text: e.text}
	}
	return out
}

func hasPrefix(prefix []byte) func(k, v []byte) bool {
	return func(k, _ []byte) bool { return bytes.HasPrefix(k, prefix) }
}

// podID is the cgroup's id, as bpf_get_current_cgroup_id gives it.
func podID(cgroup string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(cgroup, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", cgroup, err)
	}
	return st.Ino, nil
}

// Enrol captures the pod whose processes are in cgroupPath and whose network
// namespace is netnsPath, with the node's programs. It is idempotent: a pod
// already enrolled gets only the map writes its plan change needs.
func (n *Node) Enrol(ctx context.Context, cgroupPath, netnsPath string, p *redirect.Plan) (err error) {
	if err := supported(p); err != nil {
		return err
	}
	cg, err := filepath.Abs(cgroupPath)
	if err != nil {
		return fmt.Errorf("cgroup path: %w", err)
	}
	pod, err := cgroupID(cg)
	if err != nil {
		return err
	}
	id, err := podID(cg)
	if err != nil {
		return err
	}
	local, err := localAddrs(ctx, netnsPath)
	if err != nil {
		return err
	}
	want, err := desired(p, local)
	if err != nil {
		return err
	}
	prev, rerr := n.readRecord(pod)
	fresh := errors.Is(rerr, os.ErrNotExist)
	unreadable := rerr != nil && !fresh
	if unreadable {
		n.log.Warn("the pod's record is unreadable; scanning the node's maps instead", "cgroup", cg, "err", rerr)
		prev = nil
	}
	if prev != nil && prev.CgroupID != id {
		prev = nil // a cgroup of the same name made again: another pod
	}
	was, wasAddrs, keyed := prev.written()
	if unreadable {
		keyed = false
	}
	// The intent is on disk before the first map write: an enrolment
	// killed at any point leaves a record naming every entry it may have
	// written, for the next enrolment, Leave and Status.
	rec := &podRecord{Cgroup: cg, CgroupID: id, Netns: netnsPath, Keyed: keyed}
	if prev != nil {
		*rec = *prev
		rec.Netns = netnsPath
	}
	rec.Pending = append(append([]pendingEnrolment(nil), rec.Pending...), pendingEnrolment{Plan: p.Clone(), Local: local, PID: os.Getpid(), StartedAt: time.Now().UTC()})
	if err := n.writeRecord(pod, rec); err != nil {
		return err
	}
	defer func() {
		// A pod that was not enrolled before is left as it was: not at all.
		if err != nil && fresh {
			if lerr := n.leave(pod, id, rec); lerr != nil {
				n.log.Error("undo a failed enrolment", "cgroup", cg, "err", lerr)
			}
		}
	}()
	// Addresses first: another pod claiming one would have sk_lookup steer
	// its connections here.
	owners := newContents("addr_pods", false)
	for _, a := range local {
		k := captureAddr{Ip: addr16(a)}
		var other uint64
		if lerr := n.maps["addr_pods"].Lookup(k, &other); lerr == nil && other != id {
			return fmt.Errorf("address %s of %s is already that of another enrolled pod (cgroup id %d)", a, cg, other)
		}
		owners.put(k, id, a.String())
	}
	idBytes := podKey(id)
	for _, c := range want {
		var changes []change
		switch {
		case c.name == "config_map":
			v := c.entries[string(mustBytes(uint32(0)))].value
			changes = []change{{m: n.maps["pods"], key: idBytes, value: v}}
		case nodeFlat[c.name] != "":
			m := n.maps[nodeFlat[c.name]]
			if keyed {
				changes, err = diffKeyed(m, was[nodeFlat[c.name]], prefixed(c, id))
			} else {
				changes, err = diffShare(m, prefixed(c, id), hasPrefix(idBytes))
			}
			if err != nil {
				return err
			}
		case nodeInner[c.name] != "":
			var inner *ebpf.Map
			if inner, changes, err = n.innerChanges(nodeInner[c.name], id, c); err != nil {
				return err
			}
			if inner != nil {
				defer inner.Close()
			}
		default:
			return fmt.Errorf("map %s has no node form", c.name)
		}
		for _, ch := range changes {
			if aerr := ch.apply(false); aerr != nil {
				return fmt.Errorf("write map %s: %w", c.name, aerr)
			}
		}
	}
	changes, err := n.addrChanges(id, owners, wasAddrs, keyed)
	if err != nil {
		return err
	}
	for _, ch := range changes {
		if aerr := ch.apply(false); aerr != nil {
			return fmt.Errorf("write map addr_pods: %w", aerr)
		}
	}
	var counters []nodeCapturePodStats
	if n.maps["stats"].Lookup(id, &counters) != nil {
		ncpu, cerr := ebpf.PossibleCPU()
		if cerr != nil {
			return cerr
		}
		if perr := n.maps["stats"].Put(id, make([]nodeCapturePodStats, ncpu)); perr != nil {
			return fmt.Errorf("create counters: %w", perr)
		}
	}

	if err := n.attachPod(pod, cg, netnsPath); err != nil {
		return err
	}
	// A plan without inbound capture gives inbound_tc nothing to do.
	if p.CaptureInbound {
		n.attachPodTC(pod, netnsPath)
	}
	if err := n.writeRecord(pod, &podRecord{Cgroup: cg, CgroupID: id, Netns: netnsPath, Plan: p, Local: local, Keyed: true}); err != nil {
		return err
	}
	if p.CaptureInbound {
		if _, lerr := n.registerListener(ctx, id, netnsPath, p.InboundPort); lerr != nil {
			n.log.Warn("inbound listener not registered yet", "cgroup", cg, "port", p.InboundPort, "err", lerr)
		}
	}
	n.log.Info("pod enrolled in the node's ebpf capture", "cgroup", cg, "cgroupID", id)
	return nil
}

// innerChanges returns the writes that make the pod's inner map hold want,
// creating (and filling) it when the pod has none yet. The inner map
// returned, if any, is the caller's to close once the changes are applied.
func (n *Node) innerChanges(outer string, id uint64, want *contents) (*ebpf.Map, []change, error) {
	var inner *ebpf.Map
	if err := n.maps[outer].Lookup(id, &inner); err == nil {
		var changes []change
		if want.array {
			changes, err = diffPorts(inner, want)
		} else {
			changes, err = diff(inner, want)
		}
		if err != nil {
			inner.Close()
			return nil, nil, err
		}
		return inner, changes, nil
	}
	if len(want.entries) == 0 {
		// The programs read a pod with no inner map as one with an empty
		// map, and a write to a map of maps waits for an RCU grace period
		// (milliseconds, each): an empty list costs the pod nothing.
		return nil, nil, nil
	}
	cs, err := n.loadSpec()
	if err != nil {
		return nil, nil, err
	}
	spec := cs.Maps[outer].InnerMap
	if spec == nil {
		return nil, nil, fmt.Errorf("map %s has no inner map", outer)
	}
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s for the pod: %w", outer, err)
	}
	defer m.Close()
	for _, ch := range diffFresh(m, want) {
		if err := ch.apply(false); err != nil {
			return nil, nil, fmt.Errorf("fill %s: %w", outer, err)
		}
	}
	// The outer map holds the inner one from here on.
	if err := n.maps[outer].Put(id, m); err != nil {
		return nil, nil, fmt.Errorf("write %s: %w", outer, err)
	}
	return nil, nil, nil
}

// attachPod attaches every program to the pod's cgroup (sk_lookup to its
// namespace) and pins the links, keeping links already in place.
func (n *Node) attachPod(pod, cg, netnsPath string) error {
	dir := n.podPinDir(pod)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pod pin directory: %w", err)
	}
	cgFD, nsFD, closeTargets, err := openTargets(cg, netnsPath)
	if err != nil {
		return err
	}
	defer closeTargets()
	for _, a := range attachments {
		prog := n.progs[a.prog]
		pin := filepath.Join(dir, "link_"+a.prog)
		if old, lerr := link.LoadPinnedLink(pin, nil); lerr == nil {
			info, ierr := old.Info()
			if ierr == nil && attachedTo(info, a, cgFD, nsFD) {
				pinfo, _ := prog.Info()
				pid, _ := pinfo.ID()
				var uerr error
				if info.Program != pid {
					uerr = old.Update(prog)
				}
				old.Close()
				if uerr != nil {
					return fmt.Errorf("update link %s: %w", a.prog, uerr)
				}
				continue
			}
			old.Close()
			_ = os.Remove(pin)
		}
		target := cgFD
		if a.netns {
			target = nsFD
		}
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: target, Program: prog, Attach: a.attach})
		if err != nil {
			return fmt.Errorf("attach %s (%s): %w", a.prog, a.attach, err)
		}
		err = l.Pin(pin)
		l.Close()
		if err != nil {
			return fmt.Errorf("pin %s: %w", a.prog, err)
		}
	}
	return nil
}

// attachPodTC attaches inbound_tc at tc ingress of the pod's interfaces
// where it is not yet, and moves the TCX links an earlier version pinned
// to filters. A failure is logged, not fatal: sk_lookup still steers to a
// plain TCP listener.
func (n *Node) attachPodTC(pod, netnsPath string) {
	prog := n.progs["inbound_tc"]
	dir := n.podPinDir(pod)
	if !tcAttached(netnsPath, checkProgID(progID(prog))) {
		var undo []func()
		if err := attachTC(n.log, netnsPath, prog, &undo); err != nil {
			n.log.Warn("inbound steering at tc unavailable: an MPTCP inbound listener will not be reached", "netns", netnsPath, "err", err)
			return
		}
	}
	if _, errs := removeTCLinks(n.log, dir); len(errs) > 0 {
		n.log.Warn("remove the pod's TCX links of an earlier version", "pod", pod, "err", errors.Join(errs...))
	}
}

func (n *Node) registerListener(ctx context.Context, id uint64, netnsPath string, port uint16) (int, error) {
	return registerListener(ctx, n.log, netnsPath, port, func(family uint32, sock int) error {
		return n.maps["inbound_listener"].Update(nodeCapturePodListener{Pod: id, Family: family}, uint64(sock), ebpf.UpdateAny)
	})
}

// SyncListener registers the pod's proxy's inbound listener, as
// Engine.SyncListener does for one cgroup.
func (n *Node) SyncListener(ctx context.Context, cgroupPath string) (int, error) {
	rec, err := n.readRecord(cgroupName(cgroupPath))
	if err != nil {
		return 0, fmt.Errorf("read the pod's record: %w", err)
	}
	if rec.Plan == nil {
		return 0, fmt.Errorf("the pod's enrolment did not finish: enrol it again")
	}
	return n.registerListener(ctx, rec.CgroupID, rec.Netns, rec.Plan.InboundPort)
}

// Leave detaches the node's programs from the pod and removes its entries.
// The cgroup may be gone already.
func (n *Node) Leave(ctx context.Context, cgroupPath string) error {
	cg, err := filepath.Abs(cgroupPath)
	if err != nil {
		return fmt.Errorf("cgroup path: %w", err)
	}
	pod := cgroupName(cg)
	rec, err := n.readRecord(pod)
	var id uint64
	switch {
	case err == nil:
		id = rec.CgroupID
	case errors.Is(err, os.ErrNotExist):
		rec = nil
		if _, serr := os.Stat(n.podPinDir(pod)); serr != nil {
			return redirect.ErrNotInstalled
		}
		if id, err = podID(cg); err != nil {
			return fmt.Errorf("the pod's record is missing and its cgroup is gone: %w", err)
		}
	default:
		return err
	}
	if err := n.leave(pod, id, rec); err != nil {
		return err
	}
	n.log.Info("pod left the node's ebpf capture", "cgroup", cg)
	return nil
}

// leave removes the pod's links and entries; rec, its record, names the
// entries (nil: none is known, and the shared maps are scanned).
func (n *Node) leave(pod string, id uint64, rec *podRecord) error {
	dir := n.podPinDir(pod)
	_, errs := removeLinks(n.log, dir)
	_, tcErrs := removeTCLinks(n.log, dir)
	errs = append(errs, tcErrs...)
	if rec != nil {
		// Without a record the namespace is not known: the filters go
		// with it, and meanwhile find no entry of the pod's and pass
		// every packet on.
		_, tcErrs = removeTC(rec.Netns)
		errs = append(errs, tcErrs...)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pod pin directory: %w", err))
	}

	idBytes := podKey(id)
	del := func(m *ebpf.Map, key any) {
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	del(n.maps["pods"], id)
	del(n.maps["stats"], id)
	for _, outer := range nodeInner {
		del(n.maps[outer], id)
	}
	for f := uint32(0); f < 2; f++ {
		del(n.maps["inbound_listener"], nodeCapturePodListener{Pod: id, Family: f})
	}
	was, wasAddrs, keyed := rec.written()
	if rec == nil {
		keyed = false
	}
	for _, flat := range nodeFlat {
		var changes []change
		var err error
		if keyed {
			changes, err = diffKeyed(n.maps[flat], was[flat], newContents(flat, false))
		} else {
			changes, err = diffShare(n.maps[flat], newContents(flat, false), hasPrefix(idBytes))
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ch := range changes {
			if err := ch.apply(false); err != nil {
				errs = append(errs, err)
			}
		}
	}
	changes, err := n.addrChanges(id, newContents("addr_pods", false), wasAddrs, keyed)
	if err != nil {
		errs = append(errs, err)
	}
	for _, ch := range changes {
		if err := ch.apply(false); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(n.record(pod)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Pods lists the cgroups enrolled on the node, from their records.
func (n *Node) Pods() ([]string, error) {
	ents, err := os.ReadDir(n.stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		if rec, err := n.readRecord(strings.TrimSuffix(e.Name(), ".json")); err == nil {
			out = append(out, rec.Cgroup)
		}
	}
	sort.Strings(out)
	return out, nil
}

// UninstallNode removes every pod from the node's capture, then the node's
// programs and maps. It returns redirect.ErrNotInstalled when there was
// nothing.
func UninstallNode(ctx context.Context, opts NodeOptions) error {
	opts = opts.withDefaults()
	if _, err := os.Stat(opts.PinDir); errors.Is(err, os.ErrNotExist) {
		return redirect.ErrNotInstalled
	}
	spec, err := loadNodeCapture()
	if err != nil {
		return err
	}
	n := &Node{pinDir: opts.PinDir, stateDir: opts.StateDir, log: opts.Logger, spec: spec}
	var errs []error
	if maps, merr := n.pinnedMaps(); merr == nil && len(maps) == len(spec.Maps) {
		n.maps = maps
		pods, _ := os.ReadDir(filepath.Join(n.pinDir, "pods"))
		for _, p := range pods {
			var id uint64
			rec, rerr := n.readRecord(p.Name())
			if rerr == nil {
				id = rec.CgroupID
			} else {
				rec = nil
			}
			if err := n.leave(p.Name(), id, rec); err != nil {
				errs = append(errs, err)
			}
		}
		closeMaps(maps)
	} else {
		if merr != nil {
			errs = append(errs, merr)
		}
		closeMaps(maps)
		// The pods' tc filters are not pinned: their records say where.
		pods, _ := os.ReadDir(filepath.Join(n.pinDir, "pods"))
		for _, p := range pods {
			if rec, rerr := n.readRecord(p.Name()); rerr == nil {
				_, tcErrs := removeTC(rec.Netns)
				errs = append(errs, tcErrs...)
			}
		}
	}
	// Whatever is left (maps of another build, stray links) goes too.
	_ = filepath.WalkDir(n.pinDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if strings.HasPrefix(d.Name(), "link_") {
			if l, lerr := link.LoadPinnedLink(path, nil); lerr == nil {
				if rl, ok := l.(interface{ Detach() error }); ok {
					_ = rl.Detach()
				}
				l.Close()
			}
		}
		if rerr := os.Remove(path); rerr != nil {
			errs = append(errs, rerr)
		}
		return nil
	})
	_ = os.Remove(filepath.Join(n.pinDir, "pods"))
	if err := os.Remove(n.pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
	}
	ents, _ := os.ReadDir(n.stateDir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".json") {
			_ = os.Remove(filepath.Join(n.stateDir, e.Name()))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	opts.Logger.Info("node ebpf capture uninstalled", "pinDir", opts.PinDir)
	return nil
}

// Status reports the pod's capture: its links, its entries in the node's
// maps against its recorded plan, and its counters.
func (n *Node) Status(ctx context.Context, cgroupPath string) (*redirect.Status, error) {
	cg, err := filepath.Abs(cgroupPath)
	if err != nil {
		return nil, err
	}
	pod := cgroupName(cg)
	rec, err := n.readRecord(pod)
	if errors.Is(err, os.ErrNotExist) {
		return nil, redirect.ErrNotInstalled
	}
	if err != nil {
		return nil, err
	}
	st := &redirect.Status{Engine: "ebpf", Backend: "node", Installed: rec.Plan != nil, Plan: rec.Plan}
	var first []string // an unfinished enrolment is said first
	defer func() {
		sort.Strings(st.Drift)
		st.Drift = append(first, st.Drift...)
	}()
	if len(rec.Pending) > 0 {
		in := rec.Pending[len(rec.Pending)-1]
		first = append(first, fmt.Sprintf("an enrolment (pid %d, started %s) did not finish: its entries and links may be partly in place; enrol again (install) or uninstall", in.PID, in.StartedAt.Format(time.RFC3339)))
		if !st.Installed {
			st.Plan = in.Plan
		}
	}
	cgFD, nsFD, closeTargets, err := openTargets(cg, rec.Netns)
	if err != nil {
		return nil, err
	}
	defer closeTargets()
	ids, _ := n.ProgramIDs()
	if ids == nil {
		ids = map[string]ebpf.ProgramID{}
	}
	progs, drift := linkStatus("programs (shared by the node, pinned in "+n.pinDir+")", n.podPinDir(pod), cgFD, nsFD, ids)
	if st.Installed && rec.Plan.CaptureInbound {
		lines, tcDrift, notes := tcStatus(rec.Netns, n.podPinDir(pod), checkProgID(ids["inbound_tc"]))
		progs.Lines = append(progs.Lines, lines...)
		drift = append(drift, tcDrift...)
		st.Notes = append(st.Notes, notes...)
	}
	st.Sections = append(st.Sections, progs)
	if !st.Installed {
		return st, nil
	}
	st.Drift = append(st.Drift, drift...)

	local, err := localAddrs(ctx, rec.Netns)
	if err != nil {
		st.Notes = append(st.Notes, "cannot list the namespace's addresses: "+err.Error())
	}
	want, err := desired(rec.Plan, local)
	if err != nil {
		return nil, err
	}
	idBytes := podKey(rec.CgroupID)
	for _, c := range want {
		var changes []change
		switch {
		case c.name == "config_map":
			var got []byte
			w := c.entries[string(mustBytes(uint32(0)))].value
			if n.maps["pods"].Lookup(rec.CgroupID, &got) != nil {
				changes = []change{{key: idBytes, value: w}}
			} else if !bytes.Equal(got, w) {
				changes = []change{{key: idBytes, old: got, value: w}}
			}
			for i := range changes {
				changes[i].key = mustBytes(uint32(0))
			}
		case nodeFlat[c.name] != "":
			pc := prefixed(c, rec.CgroupID)
			if changes, err = diffShare(n.maps[nodeFlat[c.name]], pc, hasPrefix(idBytes)); err != nil {
				return nil, err
			}
			c = pc
		case nodeInner[c.name] != "":
			var inner *ebpf.Map
			if err := n.maps[nodeInner[c.name]].Lookup(rec.CgroupID, &inner); err != nil {
				// No inner map is an empty one (Enrol makes none for an
				// empty list).
				if len(c.entries) > 0 {
					st.Drift = append(st.Drift, fmt.Sprintf("map %s: the pod has no entry", nodeInner[c.name]))
				}
				st.Sections = append(st.Sections, redirect.Section{Name: "map " + c.name, Lines: c.lines()})
				continue
			}
			if c.array {
				changes, err = diffPorts(inner, c)
			} else {
				changes, err = diff(inner, c)
			}
			inner.Close()
			if err != nil {
				return nil, err
			}
		}
		for _, ch := range changes {
			st.Drift = append(st.Drift, describeChange(c.name, c, ch))
		}
		st.Sections = append(st.Sections, redirect.Section{Name: "map " + c.name, Lines: c.lines()})
	}
	if rec.Plan.CaptureInbound {
		found := 0
		for f := uint32(0); f < 2; f++ {
			var v uint64
			if n.maps["inbound_listener"].Lookup(nodeCapturePodListener{Pod: rec.CgroupID, Family: f}, &v) == nil {
				found++
			}
		}
		if found == 0 {
			st.Notes = append(st.Notes, fmt.Sprintf("inbound listener: no socket listening on port %d is registered yet; inbound connections are refused until the proxy listens", rec.Plan.InboundPort))
		}
	}
	if sums, err := n.Stats(cg); err == nil {
		s := redirect.Section{Name: "counters"}
		for _, name := range statNames {
			s.Lines = append(s.Lines, fmt.Sprintf("%-32s %d", name, sums[name]))
		}
		st.Sections = append(st.Sections, s)
	}
	return st, nil
}

// Stats returns the pod's counters by name, summed over CPUs.
func (n *Node) Stats(cgroupPath string) (map[string]uint64, error) {
	rec, err := n.readRecord(cgroupName(cgroupPath))
	if err != nil {
		return nil, fmt.Errorf("read the pod's record: %w", err)
	}
	var per []nodeCapturePodStats
	if err := n.maps["stats"].Lookup(rec.CgroupID, &per); err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	out := map[string]uint64{}
	for _, c := range per {
		for i, name := range statNames {
			out[name] += c.N[i]
		}
	}
	return out, nil
}

// Engine is the pod's capture as a redirect.Engine: Install enrols the pod,
// Uninstall makes it leave.
func (n *Node) Engine(cgroupPath, netnsPath string) redirect.Engine {
	return &podEngine{n: n, cgroup: cgroupPath, netns: netnsPath}
}

type podEngine struct {
	n             *Node
	cgroup, netns string
}

func (e *podEngine) Name() string { return "ebpf" }

func (e *podEngine) Render(ctx context.Context, p *redirect.Plan) (map[string]string, error) {
	return render(ctx, e.n.log, "the node's programs, pinned under "+e.n.pinDir, e.cgroup, e.netns, p)
}

func (e *podEngine) Install(ctx context.Context, p *redirect.Plan) error {
	return e.n.Enrol(ctx, e.cgroup, e.netns, p)
}

func (e *podEngine) Uninstall(ctx context.Context) error { return e.n.Leave(ctx, e.cgroup) }

func (e *podEngine) Status(ctx context.Context) (*redirect.Status, error) {
	return e.n.Status(ctx, e.cgroup)
}
