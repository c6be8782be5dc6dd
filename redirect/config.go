package redirect

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shunt-dev/shunt/internal/confnode"
)

// Defaults of the optional capture features.
const (
	// DefaultTProxyMark is Istio's: the mark its Envoy configuration puts
	// on original-source connections.
	DefaultTProxyMark       = 0x539
	DefaultTProxyRouteTable = 133
	DefaultXtablesRetries   = 4
	DefaultXtablesLockWait  = 10 * time.Second
)

// Config is the user's capture settings, as given. Every field has one key,
// shared by the config file, the CNI plugin's JSON and the agent; the flag is
// the key in kebab-case and the environment variable SHUNT_ plus the key in
// upper snake case. Values are kept as text until Plan validates them, so an
// error can quote what the user wrote.
type Config struct {
	values map[string]string
	// origin records where each value came from, for error messages.
	origin map[string]string
	// warnings are what loading found questionable but accepted.
	warnings []string
}

// Option describes one configuration key.
type Option struct {
	Key     string // camelCase, as in the config file
	Flag    string // kebab-case
	Env     string // SHUNT_...
	Bool    bool
	Default string
	Help    string
}

// Options lists every key of the capture configuration, in the order help
// text shows them. The slice is the caller's to change.
func Options() []Option { return slices.Clone(options()) }

// options is the table behind Options, built once on first use and shared
// (never modified): every Set, Get and flag registration looks keys up in
// it, and building it at package initialisation would cost every process
// start, including those of commands that never read a configuration.
var options = sync.OnceValue(buildOptions)

func buildOptions() []Option {
	opts := []Option{
		{Key: "engine", Default: "iptables", Help: "capture engine: iptables, nftables, ebpf or auto (eBPF where supported and the cgroup is known, else iptables when installed, else nftables)"},
		{Key: "iptablesBackend", Default: "auto", Help: "iptables variant: auto (the one holding rules, else nft), legacy or nft"},
		{Key: "proxyUID", Default: fmt.Sprint(DefaultProxyUID), Help: "user id or name the proxy runs as; never captured"},
		{Key: "proxyGID", Help: "group id or name whose traffic is never captured (optional)"},
		{Key: "inboundPort", Default: fmt.Sprint(DefaultInboundPort), Help: "port the proxy's inbound listener uses"},
		{Key: "outboundPort", Default: fmt.Sprint(DefaultOutboundPort), Help: "port the proxy's outbound listener uses"},
		{Key: "dnsPort", Default: fmt.Sprint(DefaultDNSPort), Help: "port the DNS interceptor listens on"},
		{Key: "adminPort", Default: fmt.Sprint(DefaultAdminPort), Help: "port of the agent's admin endpoint (shunt run --admin), guarded like the captured ports: only root, the proxy's UID or GID or the bypass mark may answer from it (0 or off: not guarded)"},
		{Key: "noInbound", Bool: true, Help: "do not capture inbound traffic"},
		{Key: "redirectDNS", Bool: true, Help: "capture DNS to the nameservers of the workload's resolv.conf (default)"},
		{Key: "redirectAllDNS", Bool: true, Help: "capture DNS to any port-53 destination"},
		{Key: "noDNS", Bool: true, Help: "do not capture DNS"},
		{Key: "excludeInboundPorts", Help: "inbound ports (or ranges a-b) not captured, comma-separated"},
		{Key: "excludeOutboundPorts", Help: "outbound ports (or ranges a-b) not captured, comma-separated"},
		{Key: "excludeInboundCidrs", Help: "source CIDRs whose inbound traffic is not captured, comma-separated"},
		{Key: "excludeOutboundCidrs", Help: "destination CIDRs not captured, comma-separated"},
		{Key: "excludeOutboundPortsForUids", Help: "proto:ports:uids entries (e.g. tcp:22,8000-8010:1000-1005); ';'-separated for several"},
		{Key: "excludeInterfaces", Help: "interfaces whose traffic is not captured, comma-separated"},
		{Key: "bypassMark", Default: fmt.Sprintf("%#x", DefaultBypassMark), Help: "socket mark whose packets are never captured (0 disables)"},
		{Key: "ipFamily", Default: string(FamilyDual), Help: "dual (IPv4, and IPv6 where the namespace has it) or ipv4"},
		{Key: "meshCidrs", Help: "pod and service CIDRs reachable with passthrough disabled, comma-separated"},
		{Key: "inboundMode", Default: "redirect", Help: "how inbound TCP reaches the proxy: redirect (NAT) or tproxy (TPROXY: the proxy sees the real client and destination addresses; iptables and nftables engines)"},
		{Key: "tproxyMark", Default: fmt.Sprintf("%#x", DefaultTProxyMark), Help: "with inboundMode tproxy: the packet mark of TPROXY-captured packets and of the proxy's connections to the application from the client's address"},
		{Key: "tproxyRouteTable", Default: fmt.Sprint(DefaultTProxyRouteTable), Help: "with inboundMode tproxy: the routing table shunt fills with the local route marked packets take"},
		{Key: "dropInvalid", Bool: true, Help: "drop inbound packets conntrack marks INVALID (out-of-window after a loss), which would otherwise escape capture and draw resets"},
		{Key: "includeOutboundCidrs", Help: "capture outbound TCP to these CIDRs only (default: all), comma-separated"},
		{Key: "includeOutboundPorts", Help: "capture outbound TCP to these ports (or ranges a-b) only (default: all), comma-separated"},
		{Key: "includeInboundPorts", Help: "capture inbound TCP to these ports (or ranges a-b) only (default: all), comma-separated"},
		{Key: "vnetInterfaces", Help: "IFACE or IFACE:CIDR entries, comma-separated: interfaces of nested VMs or containers whose TCP is captured as outbound (except to CIDR)"},
		{Key: "packetLog", Default: "off", Help: "log each packet the rules redirect, reject or drop: off, nflog[:GROUP] (netlink group, default 0) or kernel (kernel log)"},
		{Key: "xtablesLockWait", Default: DefaultXtablesLockWait.String(), Help: "how long each iptables-restore waits for the xtables lock another program (kube-proxy) holds, e.g. 5s"},
		{Key: "xtablesRetries", Default: fmt.Sprint(DefaultXtablesRetries), Help: "how often a change is retried after a lock timeout or a concurrent writer (0-20)"},
		{Key: "netns", Help: "network namespace to act on (a path such as /run/netns/NAME); default: the current one"},
		{Key: "cgroup", Help: "cgroup-v2 directory whose processes the eBPF engine captures"},
		{Key: "bpfPinDir", Help: "where the eBPF engine pins its programs and maps (default /sys/fs/bpf/shunt/<cgroup>)"},
		{Key: "resolvConf", Default: DefaultResolvConf, Help: "the workload's resolv.conf (with --netns NAME, /etc/netns/NAME/resolv.conf wins when it exists)"},
		{Key: "stateDir", Default: DefaultStateDir, Help: "where shunt records what it installed"},
	}
	for i := range opts {
		opts[i].Flag = kebab(opts[i].Key)
		opts[i].Env = "SHUNT_" + strings.ToUpper(strings.ReplaceAll(opts[i].Flag, "-", "_"))
	}
	return opts
}

func optionByKey(key string) (Option, bool) {
	for _, o := range options() {
		if o.Key == key {
			return o, true
		}
	}
	return Option{}, false
}

// kebab turns proxyUID into proxy-uid and excludeOutboundCidrs into
// exclude-outbound-cidrs: a run of capitals is one word.
func kebab(key string) string {
	var b strings.Builder
	rs := []rune(key)
	for i, r := range rs {
		upper := r >= 'A' && r <= 'Z'
		if upper {
			prevLower := i > 0 && !(rs[i-1] >= 'A' && rs[i-1] <= 'Z')
			nextLower := i+1 < len(rs) && rs[i+1] >= 'a' && rs[i+1] <= 'z'
			if i > 0 && (prevLower || nextLower) {
				b.WriteByte('-')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// NewConfig returns a configuration holding only the defaults.
func NewConfig() *Config {
	c := &Config{values: map[string]string{}, origin: map[string]string{}}
	for _, o := range options() {
		if o.Default != "" {
			c.values[o.Key] = o.Default
			c.origin[o.Key] = "default"
		}
	}
	return c
}

// Set assigns a key from a source (named in errors: "flag", "environment",
// a file name...). Unknown keys are refused.
func (c *Config) Set(key, value, source string) error {
	o, ok := optionByKey(key)
	if !ok {
		return fmt.Errorf("%s: unknown key %q%s", source, key, suggest(key))
	}
	if o.Bool {
		v, err := parseBool(value)
		if err != nil {
			return fmt.Errorf("%s: %s: invalid value %q: want true or false", source, key, value)
		}
		value = fmt.Sprint(v)
	}
	c.values[key] = value
	c.origin[key] = source
	return nil
}

// Get returns the text value of a key ("" when unset).
func (c *Config) Get(key string) string { return c.values[key] }

// Bool returns a boolean key.
func (c *Config) Bool(key string) bool { return c.values[key] == "true" }

// IsSet reports whether a key was given by any source other than defaults.
func (c *Config) IsSet(key string) bool {
	o, ok := c.origin[key]
	return ok && o != "default"
}

// Values returns the keys and values that differ from nothing, sorted, for
// recording and display.
func (c *Config) Values() map[string]string {
	out := make(map[string]string, len(c.values))
	for k, v := range c.values {
		out[k] = v
	}
	return out
}

func suggest(key string) string {
	lk := strings.ToLower(key)
	for _, o := range options() {
		if strings.ToLower(o.Key) == lk || o.Flag == lk {
			return fmt.Sprintf(" (did you mean %q?)", o.Key)
		}
	}
	return ""
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1", "yes", "on":
		return true, nil
	case "false", "0", "no", "off", "":
		return false, nil
	}
	return false, errors.New("not a boolean")
}

// LoadFile merges a YAML (or JSON) document of keys into the configuration.
// A list may be written as a YAML sequence or as one comma-separated string.
func (c *Config) LoadFile(name string, data []byte) error {
	doc, err := confnode.Parse(data)
	if err != nil {
		return fmt.Errorf("parse config %s: %w", name, err)
	}
	if doc == nil {
		return nil // an empty file sets nothing
	}
	return c.LoadNode(name, doc)
}

// LoadNode merges a mapping node; other surfaces (the CNI plugin's JSON)
// embed the same keys in a larger document and pass the node here.
func (c *Config) LoadNode(source string, m *confnode.Node) error {
	if m.Kind != confnode.Mapping {
		return fmt.Errorf("%s: want a mapping of keys to values, got %s", source, m.KindName())
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		val, err := scalarText(v)
		if err != nil {
			return fmt.Errorf("%s: line %d: %s: %w", source, v.Line, k.Value, err)
		}
		if err := c.Set(k.Value, val, fmt.Sprintf("%s: line %d", source, k.Line)); err != nil {
			return err
		}
	}
	return nil
}

func scalarText(n *confnode.Node) (string, error) {
	switch n.Kind {
	case confnode.Scalar:
		return n.Value, nil
	case confnode.Sequence:
		parts := make([]string, 0, len(n.Content))
		for _, e := range n.Content {
			if e.Kind != confnode.Scalar {
				return "", fmt.Errorf("list items must be plain values, got %s", e.KindName())
			}
			parts = append(parts, e.Value)
		}
		return strings.Join(parts, ","), nil
	}
	return "", fmt.Errorf("want a value or a list, got %s", n.KindName())
}

// LoadEnv merges SHUNT_* variables from environ (as os.Environ returns it).
// A SHUNT_ variable that names no key does not stop shunt: Kubernetes puts
// variables of that prefix into every pod of a namespace holding a Service
// whose name starts with "shunt" (service links), so refusing them would
// fail the init container of every pod there. The service-link forms are
// ignored; any other unknown variable is kept in Warnings, named with the
// closest known variable, so a typo is still reported. The few that
// configure something else are listed in ignore.
func (c *Config) LoadEnv(environ []string, ignore ...string) error {
	byEnv := map[string]Option{}
	for _, o := range options() {
		byEnv[o.Env] = o
	}
	var unknown []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "SHUNT_") || contains(ignore, name) {
			continue
		}
		if IsServiceLink(name, value) {
			continue
		}
		o, known := byEnv[name]
		if !known {
			unknown = append(unknown, name)
			continue
		}
		if err := c.Set(o.Key, value, "environment "+name); err != nil {
			return err
		}
	}
	sort.Strings(unknown)
	for _, name := range unknown {
		c.warnings = append(c.warnings, fmt.Sprintf("environment: ignoring unknown variable %s (closest known: %s)", name, closestEnv(name)))
	}
	return nil
}

// Warnings returns what loading the configuration found questionable but
// not wrong enough to refuse, such as an unknown SHUNT_ variable.
func (c *Config) Warnings() []string { return append([]string(nil), c.warnings...) }

// Service links as kubelet writes them for a Service NAME (upper case, '-'
// turned into '_'): NAME_SERVICE_HOST, NAME_SERVICE_PORT,
// NAME_SERVICE_PORT_<PORTNAME>, NAME_PORT=<proto>://<ip>:<port>, and for
// each port NAME_PORT_<port>_<PROTO> with its _PROTO, _PORT and _ADDR.
//
// They are matched by hand rather than with regular expressions, whose
// compilation at package initialisation cost every process start (the
// test checks the matchers against the expressions they stand for).
//
// IsServiceLink reports whether an environment variable has the form of a
// Kubernetes service link. NAME_PORT holds a URL, which tells it apart from
// a port number: a Service named shunt-dns gives SHUNT_DNS_PORT=udp://...,
// which is not the dnsPort key.
func IsServiceLink(name, value string) bool {
	if isServiceLinkName(name) {
		return true
	}
	return strings.HasSuffix(name, "_PORT") && isServiceLinkURL(value)
}

// isServiceLinkName matches
// ^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$
func isServiceLinkName(name string) bool {
	for i := 0; i < len(name); i++ {
		if c := name[i]; !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	// Every suffix needs a non-empty NAME before it; any occurrence of the
	// suffix's start may be the one, as in the expression.
	for i := 1; i < len(name); i++ {
		rest := name[i:]
		if rest == "_SERVICE_HOST" {
			return true
		}
		if after, ok := strings.CutPrefix(rest, "_SERVICE_PORT"); ok && (after == "" || len(after) >= 2 && after[0] == '_') {
			return true
		}
		if after, ok := strings.CutPrefix(rest, "_PORT_"); ok && isPortProtoSuffix(after) {
			return true
		}
	}
	return false
}

// isPortProtoSuffix matches [0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$.
func isPortProtoSuffix(s string) bool {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	if n == 0 || n == len(s) || s[n] != '_' {
		return false
	}
	s = s[n+1:]
	for _, proto := range []string{"TCP", "UDP", "SCTP"} {
		if after, ok := strings.CutPrefix(s, proto); ok {
			return after == "" || after == "_PROTO" || after == "_PORT" || after == "_ADDR"
		}
	}
	return false
}

// isServiceLinkURL matches ^(tcp|udp|sctp)://[^\s]+:[0-9]+$.
func isServiceLinkURL(value string) bool {
	scheme, rest, ok := strings.Cut(value, "://")
	if !ok || scheme != "tcp" && scheme != "udp" && scheme != "sctp" {
		return false
	}
	if strings.ContainsAny(rest, "\t\n\f\r ") {
		return false
	}
	// The port's digits hold no colon: the last one ends the host.
	i := strings.LastIndexByte(rest, ':')
	if i < 1 || i == len(rest)-1 {
		return false
	}
	for _, c := range []byte(rest[i+1:]) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// closestEnv returns the known variable nearest to name by edit distance.
func closestEnv(name string) string {
	best, bestD := "", -1
	for _, o := range options() {
		if d := editDistance(name, o.Env); bestD < 0 || d < bestD {
			best, bestD = o.Env, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
