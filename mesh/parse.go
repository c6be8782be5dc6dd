package mesh

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"gopkg.in/yaml.v3"

	"github.com/shunt-dev/shunt/wire"
)

// File is one resource file's name and contents. Name is only used in
// messages, so it may be relative.
type File struct {
	Name string
	Data []byte
}

// API versions and kinds of the Kubernetes form.
const (
	kumaAPIVersion   = "kuma.io/v1alpha1"
	kubeSecretType   = "system.kuma.io/secret"
	labelMesh        = wire.MetadataMesh
	kindExternal     = "ExternalService"
	kindMesh         = "Mesh"
	kindZoneEgress   = "ZoneEgress"
	kindSecret       = "Secret"
	sourceInline     = "inline"
	sourceInlineText = "inlineString"
	sourceSecret     = "secret"
)

// Kuma Mesh features that shunt does not act on. They are accepted with a
// warning so that a Mesh written for Kuma can be used as it is, while a typo
// in a field shunt does act on is still an error.
var ignoredMeshFields = []string{"logging", "metrics", "tracing", "constraints", "skipCreatingInitialPolicies", "meshServices"}

// Fields the Kubernetes API server adds; accepted so that the output of
// `kubectl get -o yaml` can be used directly.
var kubeMetadataFields = []string{"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink", "ownerReferences", "finalizers"}

// dataSource is a caCert/clientCert/clientKey as written, before secrets are
// looked up.
type dataSource struct {
	kind  string
	value string
	node  *yaml.Node
	path  string
}

type rawTLS struct {
	enabled            bool
	allowRenegotiation bool
	sni                *string
	sniNode            *yaml.Node
	sniPath            string
	ca, cert, key      *dataSource
}

type rawExternal struct {
	es  ExternalService
	tls *rawTLS
}

type parsed struct {
	externals []rawExternal
	meshes    []MeshConfig
	egresses  []ZoneEgress
	secrets   []Secret
	errs      []error
	warns     []Warning
}

func (p *parsed) parseFile(f File) {
	dec := yaml.NewDecoder(bytes.NewReader(f.Data))
	for doc := 1; ; doc++ {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			return
		}
		w := &walker{origin: Origin{File: f.Name, Doc: doc}}
		if err != nil {
			// The decoder cannot resynchronise after a syntax error, so the
			// rest of the file is unreadable.
			w.fail(nil, "", "", "invalid YAML: %v", err)
			p.errs = append(p.errs, w.errs...)
			return
		}
		p.parseDocument(w, &root)
		p.errs = append(p.errs, w.errs...)
		p.warns = append(p.warns, w.warns...)
	}
}

func (p *parsed) parseDocument(w *walker, root *yaml.Node) {
	n := root
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	if isNull(n) {
		return // an empty document, e.g. a trailing "---"
	}
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		w.fail(n, "", "", "a resource must be a mapping, not %s", kindName(n))
		return
	}
	var typ, kind, apiVersion string
	for i := 0; i+1 < len(n.Content); i += 2 {
		v := deref(n.Content[i+1])
		switch n.Content[i].Value {
		case "type":
			typ = v.Value
		case "kind":
			kind = v.Value
		case "apiVersion":
			apiVersion = v.Value
		}
	}
	switch {
	case kind != "" || apiVersion != "":
		p.parseKube(w, n, apiVersion, kind)
	case typ != "":
		p.parseUniversal(w, n, typ)
	default:
		w.fail(n, "", "", "neither type (Universal) nor apiVersion and kind (Kubernetes) is set")
	}
}

func (p *parsed) parseUniversal(w *walker, n *yaml.Node, typ string) {
	switch typ {
	case kindExternal:
		f := w.mapping(n, "", "type", "mesh", "name", "tags", "networking")
		meshName := meshOf(f)
		name := resourceName(f, "name")
		p.addExternal(w, meshName, name, f, "")
	case kindMesh:
		allowed := append([]string{"type", "name", "networking", "routing", "mtls"}, ignoredMeshFields...)
		f := w.mapping(n, "", allowed...)
		name := resourceName(f, "name")
		p.addMesh(w, name, f, "")
	case kindZoneEgress:
		f := w.mapping(n, "", "type", "name", "zone", "networking")
		name := resourceName(f, "name")
		p.addEgress(w, name, f, "")
	case kindSecret:
		f := w.mapping(n, "", "type", "name", "mesh", "data")
		name := resourceName(f, "name")
		data, dn, ok := f.required("data")
		if !ok {
			return
		}
		b, err := decodeBase64(data)
		if err != nil {
			w.fail(dn, "data", "", "not valid base64: %v", err)
			return
		}
		p.secrets = append(p.secrets, Secret{Mesh: meshOf(f), Name: name, Data: b, Origin: w.origin})
	default:
		w.warn("type", "%q is not a resource shunt uses; document ignored", typ)
	}
}

func (p *parsed) parseKube(w *walker, n *yaml.Node, apiVersion, kind string) {
	if kind == kindSecret {
		p.parseKubeSecret(w, n, apiVersion)
		return
	}
	switch kind {
	case kindExternal, kindMesh, kindZoneEgress:
	default:
		w.warn("kind", "%q is not a resource shunt uses; document ignored", kind)
		return
	}
	if apiVersion != kumaAPIVersion {
		top := w.mapping(n, "", "apiVersion", "kind", "mesh", "metadata", "spec")
		_, vn, _ := top.str("apiVersion")
		w.fail(vn, "apiVersion", apiVersion, "must be %s", kumaAPIVersion)
		return
	}
	top := w.mapping(n, "", "apiVersion", "kind", "mesh", "metadata", "spec")
	md := w.mapping(top.m["metadata"], "metadata", kubeMetadataFields...)
	name := resourceName(md, "name")
	labels, _ := md.stringMap("labels")
	switch kind {
	case kindExternal:
		meshName := meshOf(top)
		if !top.has("mesh") && labels[labelMesh] != "" {
			meshName = labels[labelMesh]
		}
		spec := w.mapping(top.m["spec"], "spec", "tags", "networking")
		if !top.has("spec") {
			w.fail(n, "spec", "", "is required")
			return
		}
		p.addExternal(w, meshName, name, spec, "spec.")
	case kindMesh:
		spec := w.mapping(top.m["spec"], "spec", append([]string{"networking", "routing", "mtls"}, ignoredMeshFields...)...)
		p.addMesh(w, name, spec, "spec.")
	case kindZoneEgress:
		spec := w.mapping(top.m["spec"], "spec", "zone", "networking")
		p.addEgress(w, name, spec, "spec.")
	}
}

func (p *parsed) parseKubeSecret(w *walker, n *yaml.Node, apiVersion string) {
	top := w.mapping(n, "", "apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable")
	typ, _, _ := top.str("type")
	if typ != kubeSecretType {
		// Ordinary Kubernetes secrets may share a directory with mesh
		// resources; they are not ours to read.
		w.warn("type", "Secret of type %q ignored (mesh secrets have type %s)", typ, kubeSecretType)
		return
	}
	if apiVersion != "v1" {
		_, vn, _ := top.str("apiVersion")
		w.fail(vn, "apiVersion", apiVersion, "must be v1 for a Secret")
		return
	}
	md := w.mapping(top.m["metadata"], "metadata", kubeMetadataFields...)
	name := resourceName(md, "name")
	labels, _ := md.stringMap("labels")
	meshName := DefaultMesh
	if labels[labelMesh] != "" {
		meshName = labels[labelMesh]
	}
	var data []byte
	switch {
	case top.has("data"):
		d := w.mapping(top.m["data"], "data", "value")
		v, vn, ok := d.required("value")
		if !ok {
			return
		}
		b, err := decodeBase64(v)
		if err != nil {
			w.fail(vn, "data.value", "", "not valid base64: %v", err)
			return
		}
		data = b
	case top.has("stringData"):
		d := w.mapping(top.m["stringData"], "stringData", "value")
		v, _, ok := d.required("value")
		if !ok {
			return
		}
		data = []byte(v)
	default:
		w.fail(n, "data.value", "", "is required")
		return
	}
	p.secrets = append(p.secrets, Secret{Mesh: meshName, Name: name, Data: data, Origin: w.origin})
}

func meshOf(f fields) string {
	if m, n, ok := f.str("mesh"); ok && m != "" {
		if err := checkName(m); err != nil {
			f.w.fail(n, join(f.path, "mesh"), m, "%v", err)
		}
		return m
	}
	return DefaultMesh
}

func resourceName(f fields, key string) string {
	name, n, ok := f.required(key)
	if !ok {
		return ""
	}
	if err := checkName(name); err != nil {
		f.w.fail(n, join(f.path, key), name, "%v", err)
	}
	return name
}

func (p *parsed) addExternal(w *walker, meshName, name string, f fields, prefix string) {
	es := ExternalService{Mesh: meshName, Name: name, Origin: w.origin}

	tags, tn := f.stringMap("tags")
	es.Tags = tags
	tagsPath := prefix + "tags"
	if !f.has("tags") {
		w.fail(f.node, tagsPath, "", "is required (with %s)", TagService)
	}
	for k, v := range tags {
		if k == "" {
			w.fail(tn, tagsPath, "", "tag names must not be empty")
		}
		if v == "" {
			w.fail(tn, join(tagsPath, k), "", "tag values must not be empty")
		}
	}
	if f.has("tags") {
		svc, ok := tags[TagService]
		switch {
		case !ok:
			w.fail(tn, join(tagsPath, TagService), "", "is required")
		case svc != "":
			if err := checkServiceName(svc); err != nil {
				w.fail(tn, join(tagsPath, TagService), svc, "%v", err)
			}
			es.Service = svc
		}
	}
	es.Protocol = ProtocolTCP
	if proto, ok := tags[TagProtocol]; ok {
		switch Protocol(proto) {
		case ProtocolTCP, ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC:
			es.Protocol = Protocol(proto)
		default:
			w.fail(tn, join(tagsPath, TagProtocol), proto, "unsupported protocol (want tcp, http, http2 or grpc)")
		}
	}
	es.Zone = tags[TagZone]

	netPath := prefix + "networking"
	if !f.has("networking") {
		w.fail(f.node, netPath, "", "is required (with address)")
	}
	nf := w.mapping(f.m["networking"], netPath, "address", "tls")
	if f.has("networking") {
		if addr, an, ok := nf.required("address"); ok {
			hp, err := ParseHostPort(addr)
			if err != nil {
				w.fail(an, join(netPath, "address"), addr, "%v", err)
			}
			es.Address = hp
		}
	}
	var rt *rawTLS
	if nf.has("tls") {
		rt = parseTLS(w, nf.m["tls"], join(netPath, "tls"))
	}
	p.externals = append(p.externals, rawExternal{es: es, tls: rt})
}

func parseTLS(w *walker, n *yaml.Node, path string) *rawTLS {
	f := w.mapping(n, path, "enabled", "allowRenegotiation", "sni", "serverName", "caCert", "clientCert", "clientKey")
	rt := &rawTLS{}
	rt.enabled, _ = f.boolean("enabled")
	rt.allowRenegotiation, _ = f.boolean("allowRenegotiation")
	sni, sn := f.optStr("sni")
	name, nn := f.optStr("serverName")
	switch {
	case sni != nil && name != nil:
		w.fail(nn, join(path, "serverName"), *name, "sni and serverName are the same setting; give one")
	case sni != nil:
		rt.sni, rt.sniNode, rt.sniPath = sni, sn, join(path, "sni")
	case name != nil:
		rt.sni, rt.sniNode, rt.sniPath = name, nn, join(path, "serverName")
	}
	if rt.sni != nil && *rt.sni != "" {
		if err := checkHostname(*rt.sni); err != nil {
			w.fail(rt.sniNode, rt.sniPath, *rt.sni, "%v", err)
		}
	}
	rt.ca = parseSource(w, f, "caCert")
	rt.cert = parseSource(w, f, "clientCert")
	rt.key = parseSource(w, f, "clientKey")
	return rt
}

func parseSource(w *walker, parent fields, key string) *dataSource {
	if !parent.has(key) {
		return nil
	}
	path := join(parent.path, key)
	f := w.mapping(parent.m[key], path, sourceInline, sourceInlineText, sourceSecret)
	var got []*dataSource
	for _, k := range []string{sourceInline, sourceInlineText, sourceSecret} {
		if !f.has(k) {
			continue
		}
		v, n, ok := f.str(k)
		if !ok {
			continue
		}
		got = append(got, &dataSource{kind: k, value: v, node: n, path: join(path, k)})
	}
	switch len(got) {
	case 0:
		w.fail(deref(parent.m[key]), path, "", "one of inline, inlineString or secret is required")
		return nil
	case 1:
		if got[0].value == "" {
			w.fail(got[0].node, got[0].path, "", "must not be empty")
			return nil
		}
		return got[0]
	default:
		w.fail(got[1].node, path, "", "has two sources (%s and %s); give exactly one of inline, inlineString or secret", got[0].kind, got[1].kind)
		return nil
	}
}

func (p *parsed) addMesh(w *walker, name string, f fields, prefix string) {
	m := DefaultMeshConfig(name)
	m.Origin = w.origin
	for _, k := range ignoredMeshFields {
		if f.has(k) {
			w.warn(prefix+k, "not implemented by shunt; ignored")
		}
	}
	nf := w.mapping(f.m["networking"], prefix+"networking", "outbound")
	of := w.mapping(nf.m["outbound"], prefix+"networking.outbound", "passthrough")
	if b := of.optBool("passthrough"); b != nil {
		m.Passthrough = *b
	}
	rf := w.mapping(f.m["routing"], prefix+"routing", "zoneEgress", "localityAwareLoadBalancing", "defaultForbidMutualTlsOrigination")
	if b := rf.optBool("zoneEgress"); b != nil {
		m.ZoneEgress = *b
	}
	if b := rf.optBool("localityAwareLoadBalancing"); b != nil {
		m.LocalityAware = *b
	}
	if rf.has("defaultForbidMutualTlsOrigination") {
		w.warn(prefix+"routing.defaultForbidMutualTlsOrigination", "not implemented by shunt; ignored")
	}
	if f.has("mtls") {
		m.MTLS = parseMTLS(w, f.m["mtls"], prefix+"mtls")
	}
	if m.ZoneEgress && m.MTLS == nil {
		w.fail(deref(rf.m["zoneEgress"]), prefix+"routing.zoneEgress", "true", "needs mtls.enabledBackend: the ZoneEgress admits sidecars by their mesh certificate, as in Kuma")
	}
	p.meshes = append(p.meshes, m)
}

func (p *parsed) addEgress(w *walker, name string, f fields, prefix string) {
	eg := ZoneEgress{Name: name, Origin: w.origin}
	if z, _, ok := f.str("zone"); ok {
		eg.Zone = z
	}
	netPath := prefix + "networking"
	if !f.has("networking") {
		w.fail(f.node, netPath, "", "is required (with address and port)")
	}
	nf := w.mapping(f.m["networking"], netPath, "address", "port", "advertisedAddress", "advertisedPort", "admin")
	if !f.has("networking") {
		return
	}
	// Other zones reach an egress at its advertised address when it has one,
	// as in Kuma.
	addrKey, portKey := "address", "port"
	if nf.has("advertisedAddress") {
		addrKey, portKey = "advertisedAddress", "advertisedPort"
	}
	if addr, an, ok := nf.required(addrKey); ok {
		if err := checkHost(addr); err != nil {
			w.fail(an, join(netPath, addrKey), addr, "%v", err)
		}
		eg.Address = normaliseHost(addr)
	}
	if ps, pn, ok := nf.required(portKey); ok {
		port, err := parsePort(ps)
		if err != nil {
			w.fail(pn, join(netPath, portKey), ps, "%v", err)
		}
		eg.Port = port
	}
	p.egresses = append(p.egresses, eg)
}

func describeSource(s *dataSource) string {
	if s.kind == sourceSecret {
		return fmt.Sprintf("secret %q", s.value)
	}
	return s.kind
}
