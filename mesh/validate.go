package mesh

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Load parses and validates resource files as one set: secrets may be
// defined in any file, and duplicates are found across files. It returns
// every error it finds, joined, so that one run shows all the problems.
func Load(files []File) (*Resources, []Warning, error) {
	pf := make([]*ParsedFile, len(files))
	for i, f := range files {
		pf[i] = Parse(f)
	}
	return LoadParsed(pf)
}

// ParsedFile is one file's documents, parsed but not yet checked against
// the other files. It depends on the file's name and contents alone and is
// never changed, so a caller that watches a directory may keep it for as
// long as the file stays the same and parse only the files that change.
type ParsedFile struct{ p parsed }

// Parse parses one resource file.
func Parse(f File) *ParsedFile {
	pf := &ParsedFile{}
	pf.p.parseFile(f)
	return pf
}

// LoadParsed validates parsed files as one set, exactly as Load does with
// the files they came from.
func LoadParsed(files []*ParsedFile) (*Resources, []Warning, error) {
	p := &parsed{}
	for _, f := range files {
		// Appended, never shared: the checks below add to these lists.
		p.externals = append(p.externals, f.p.externals...)
		p.meshes = append(p.meshes, f.p.meshes...)
		p.egresses = append(p.egresses, f.p.egresses...)
		p.secrets = append(p.secrets, f.p.secrets...)
		p.errs = append(p.errs, f.p.errs...)
		p.warns = append(p.warns, f.p.warns...)
	}
	res := &Resources{Meshes: map[string]MeshConfig{}}

	type key struct{ mesh, name string }
	secrets := map[key]Secret{}
	for _, s := range p.secrets {
		if prev, dup := secrets[key{s.Mesh, s.Name}]; dup {
			p.errs = append(p.errs, dupError(s.Origin, "Secret", s.Name, prev.Origin))
			continue
		}
		secrets[key{s.Mesh, s.Name}] = s
		res.Secrets = append(res.Secrets, s)
	}
	lookup := func(mesh, name string) ([]byte, bool) {
		s, ok := secrets[key{mesh, name}]
		return s.Data, ok
	}

	for _, m := range p.meshes {
		if prev, dup := res.Meshes[m.Name]; dup {
			p.errs = append(p.errs, dupError(m.Origin, "Mesh", m.Name, prev.Origin))
			continue
		}
		res.Meshes[m.Name] = m
	}

	egresses := map[string]Origin{}
	for _, e := range p.egresses {
		if prev, dup := egresses[e.Name]; dup {
			p.errs = append(p.errs, dupError(e.Origin, "ZoneEgress", e.Name, prev))
			continue
		}
		egresses[e.Name] = e.Origin
		res.ZoneEgresses = append(res.ZoneEgresses, e)
	}

	externals := map[key]Origin{}
	for _, r := range p.externals {
		es := r.es
		if prev, dup := externals[key{es.Mesh, es.Name}]; dup {
			p.errs = append(p.errs, dupError(es.Origin, "ExternalService", es.Name, prev))
			continue
		}
		externals[key{es.Mesh, es.Name}] = es.Origin
		if r.tls != nil {
			// Secrets can only be looked up once every file is read, so
			// these errors come after the parse errors of the same document.
			w := &walker{origin: es.Origin}
			es.TLS = resolveTLS(w, es, r.tls, lookup)
			p.errs = append(p.errs, w.errs...)
		}
		res.ExternalServices = append(res.ExternalServices, es)
	}

	if len(p.errs) > 0 {
		sortErrors(p.errs)
		return nil, nil, errors.Join(p.errs...)
	}

	slices.SortFunc(res.ExternalServices, func(a, b ExternalService) int {
		return cmp.Or(cmp.Compare(a.Mesh, b.Mesh), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(res.ZoneEgresses, func(a, b ZoneEgress) int {
		return cmp.Or(cmp.Compare(a.Zone, b.Zone), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(res.Secrets, func(a, b Secret) int {
		return cmp.Or(cmp.Compare(a.Mesh, b.Mesh), cmp.Compare(a.Name, b.Name))
	})
	warns := append(p.warns, duplicateServiceWarnings(res)...)
	return res, warns, nil
}

func dupError(o Origin, kind, name string, prev Origin) error {
	return &FieldError{Origin: o, Field: "name", Value: name, Reason: fmt.Sprintf("%s defined twice (first in %s)", kind, prev)}
}

func sortErrors(errs []error) {
	slices.SortStableFunc(errs, func(a, b error) int {
		var fa, fb *FieldError
		if !errors.As(a, &fa) || !errors.As(b, &fb) {
			return 0
		}
		return cmp.Or(cmp.Compare(fa.Origin.File, fb.Origin.File), cmp.Compare(fa.Origin.Doc, fb.Origin.Doc), cmp.Compare(fa.Line, fb.Line))
	})
}

func resolveTLS(w *walker, es ExternalService, rt *rawTLS, lookup func(mesh, name string) ([]byte, bool)) *TLS {
	read := func(s *dataSource) []byte {
		if s == nil {
			return nil
		}
		switch s.kind {
		case sourceInline:
			b, err := decodeBase64(s.value)
			if err != nil {
				w.fail(s.node, s.path, truncate(s.value), "not valid base64: %v", err)
				return nil
			}
			return b
		case sourceInlineText:
			return []byte(s.value)
		default:
			b, ok := lookup(es.Mesh, s.value)
			if !ok {
				w.fail(s.node, s.path, s.value, "no Secret with this name in mesh %q", es.Mesh)
				return nil
			}
			return b
		}
	}
	t := &TLS{AllowRenegotiation: rt.allowRenegotiation}
	t.CACert = read(rt.ca)
	t.ClientCert = read(rt.cert)
	t.ClientKey = read(rt.key)

	if t.CACert != nil {
		if err := checkCertificates(t.CACert); err != nil {
			w.fail(rt.ca.node, rt.ca.path, describeSource(rt.ca), "CA certificate: %v", err)
		}
	}
	switch {
	case rt.cert != nil && rt.key == nil:
		w.fail(rt.cert.node, rt.cert.path, "", "clientCert needs clientKey")
	case rt.key != nil && rt.cert == nil:
		w.fail(rt.key.node, rt.key.path, "", "clientKey needs clientCert")
	case t.ClientCert != nil && t.ClientKey != nil:
		if err := checkCertificates(t.ClientCert); err != nil {
			w.fail(rt.cert.node, rt.cert.path, describeSource(rt.cert), "client certificate: %v", err)
		} else if _, err := tls.X509KeyPair(t.ClientCert, t.ClientKey); err != nil {
			w.fail(rt.key.node, rt.key.path, describeSource(rt.key), "client key does not match the client certificate or is not a PEM private key: %v", err)
		}
	}

	switch {
	case rt.sni != nil:
		t.SNI = strings.ToLower(strings.TrimSuffix(*rt.sni, "."))
	case !es.Address.IsIP():
		// A server name must not be an IP literal (RFC 6066), so an IP
		// address gets no default SNI.
		t.SNI = es.Address.Host
	}
	if !rt.enabled {
		return nil
	}
	return t
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

func checkCertificates(data []byte) error {
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM CERTIFICATE block found")
	}
	return nil
}

// decodeBase64 accepts the line-wrapped output of `base64` as well as a
// single line.
func decodeBase64(s string) ([]byte, error) {
	s = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\n' || r == '\r' || r == '\t' {
			return -1
		}
		return r
	}, s)
	return base64.StdEncoding.DecodeString(s)
}

// ParseHostPort validates a networking.address: a hostname or an IP address,
// and a port, which Kuma requires.
func ParseHostPort(s string) (HostPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return HostPort{}, errors.New("missing port (write host:port)")
		}
		return HostPort{}, fmt.Errorf("not host:port: %w", err)
	}
	p, err := parsePort(port)
	if err != nil {
		return HostPort{}, err
	}
	if err := checkHost(host); err != nil {
		return HostPort{}, err
	}
	hp := HostPort{Host: normaliseHost(host), Port: p}
	if ip, err := netip.ParseAddr(host); err == nil {
		hp.IP = ip.Unmap()
		hp.Host = hp.IP.String()
	}
	return hp, nil
}

func parsePort(s string) (uint16, error) {
	p, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	if p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %d out of range 1-65535", p)
	}
	return uint16(p), nil
}

func normaliseHost(h string) string {
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.Unmap().String()
	}
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

func checkHost(h string) error {
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return errors.New("an IPv6 zone is not allowed")
		}
		if ip.IsUnspecified() {
			return errors.New("the unspecified address cannot be a destination")
		}
		return nil
	}
	return checkHostname(h)
}

// checkHostname accepts RFC 1123 names plus underscores, which appear in
// real service names, and rejects wildcards, which cannot be resolved.
func checkHostname(h string) error {
	h = strings.TrimSuffix(h, ".")
	if h == "" {
		return errors.New("empty hostname")
	}
	if len(h) > 253 {
		return errors.New("hostname longer than 253 characters")
	}
	for _, label := range strings.Split(h, ".") {
		if err := checkLabel(label); err != nil {
			return fmt.Errorf("invalid hostname: %w", err)
		}
	}
	return nil
}

func checkLabel(l string) error {
	if l == "" {
		return errors.New("empty label")
	}
	if len(l) > 63 {
		return fmt.Errorf("label %q longer than 63 characters", l)
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("label %q starts or ends with '-'", l)
	}
	for _, c := range l {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("label %q has the character %q", l, c)
		}
	}
	return nil
}

// checkServiceName keeps kuma.io/service usable as <service>.mesh.
func checkServiceName(s string) error {
	if len(s)+len(".mesh") > 253 {
		return errors.New("too long to be a DNS name with .mesh")
	}
	for _, label := range strings.Split(s, ".") {
		if err := checkLabel(label); err != nil {
			return fmt.Errorf("cannot be a DNS name %s.mesh: %w", s, err)
		}
	}
	return nil
}

func checkName(s string) error {
	if len(s) > 253 {
		return errors.New("name longer than 253 characters")
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("name has the character %q (allowed: letters, digits, '-', '_', '.')", c)
		}
	}
	return nil
}

// duplicateServiceWarnings follows the page's advice not to reuse a service
// name: several ExternalServices under one kuma.io/service are only expected
// when each is pinned to a different zone.
func duplicateServiceWarnings(res *Resources) []Warning {
	type key struct{ mesh, svc string }
	by := map[key][]*ExternalService{}
	names := map[key]*ExternalService{}
	for i := range res.ExternalServices {
		es := &res.ExternalServices[i]
		by[key{es.Mesh, es.Service}] = append(by[key{es.Mesh, es.Service}], es)
		names[key{es.Mesh, es.Name}] = es
	}
	var out []Warning
	for i := range res.ExternalServices {
		es := &res.ExternalServices[i]
		for _, other := range by[key{es.Mesh, es.Service}] {
			if other.Name >= es.Name {
				continue
			}
			if es.Zone != "" && other.Zone != "" && es.Zone != other.Zone {
				continue
			}
			out = append(out, Warning{Origin: es.Origin, Field: "tags." + TagService, Message: fmt.Sprintf(
				"service %q is also provided by ExternalService %q (%s); traffic will be split between them", es.Service, other.Name, other.Origin)})
		}
		if other, ok := names[key{es.Mesh, es.Service}]; ok && other.Service != es.Service {
			out = append(out, Warning{Origin: es.Origin, Field: "tags." + TagService, Message: fmt.Sprintf(
				"service %q is also the name of ExternalService %q, which provides service %q; consider a distinct name", es.Service, other.Name, other.Service)})
		}
		if _, ok := res.Meshes[es.Service]; ok {
			out = append(out, Warning{Origin: es.Origin, Field: "tags." + TagService, Message: fmt.Sprintf("service %q has the name of a Mesh", es.Service)})
		}
		for _, eg := range res.ZoneEgresses {
			if eg.Name == es.Service {
				out = append(out, Warning{Origin: es.Origin, Field: "tags." + TagService, Message: fmt.Sprintf("service %q has the name of a ZoneEgress (%s)", es.Service, eg.Origin)})
			}
		}
		if prev := protocolConflict(by[key{es.Mesh, es.Service}], es); prev != nil {
			out = append(out, Warning{Origin: es.Origin, Field: "tags." + TagProtocol, Message: fmt.Sprintf(
				"protocol %s differs from %s of ExternalService %q for the same service; %s.mesh is served as tcp", es.Protocol, prev.Protocol, prev.Name, es.Service)})
		}
	}
	return out
}

func protocolConflict(group []*ExternalService, es *ExternalService) *ExternalService {
	for _, o := range group {
		if o.Name < es.Name && o.Protocol != es.Protocol {
			return o
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
