package mesh

import (
	"net/netip"
	"strconv"
	"time"
)

// Well-known tags. They keep Kuma's names so that resources written for Kuma
// work unchanged.
const (
	TagService  = "kuma.io/service"
	TagProtocol = "kuma.io/protocol"
	TagZone     = "kuma.io/zone"
)

// DefaultMesh is the mesh a resource belongs to when it names none, as in Kuma.
const DefaultMesh = "default"

// Protocol is the application protocol of a service, from kuma.io/protocol.
type Protocol string

// Protocols shunt knows. A service without kuma.io/protocol is TCP, as in Kuma.
const (
	ProtocolTCP   Protocol = "tcp"
	ProtocolHTTP  Protocol = "http"
	ProtocolHTTP2 Protocol = "http2"
	ProtocolGRPC  Protocol = "grpc"
)

// IsHTTP reports whether the proxy can apply HTTP semantics to the protocol.
func (p Protocol) IsHTTP() bool {
	return p == ProtocolHTTP || p == ProtocolHTTP2 || p == ProtocolGRPC
}

// Origin says where a resource was written, for messages that point the user
// at the right place.
type Origin struct {
	File string
	// Doc is the 1-based index of the YAML document inside File.
	Doc int
}

func (o Origin) String() string {
	return o.File + ": document " + strconv.Itoa(o.Doc)
}

// HostPort is a validated networking.address.
type HostPort struct {
	// Host is a lower-case DNS name, or an IP address in its canonical text form.
	Host string
	Port uint16
	// IP is set when Host is an IP address literal.
	IP netip.Addr
}

// IsIP reports whether the address is an IP literal rather than a hostname.
func (h HostPort) IsIP() bool { return h.IP.IsValid() }

func (h HostPort) String() string {
	if h.IP.Is6() {
		return "[" + h.Host + "]:" + strconv.Itoa(int(h.Port))
	}
	return h.Host + ":" + strconv.Itoa(int(h.Port))
}

// ExternalService is a destination outside the mesh that workloads may reach
// by name, with the proxy optionally originating TLS.
type ExternalService struct {
	Mesh string
	Name string
	// Tags holds every tag as written, including the well-known ones.
	Tags     map[string]string
	Service  string
	Protocol Protocol
	// Zone pins the service to agents of one zone when the mesh has
	// locality-aware load balancing; empty means every zone.
	Zone    string
	Address HostPort
	// TLS is nil when the proxy does not originate TLS.
	TLS    *TLS
	Origin Origin
}

// TLS is the resolved TLS origination of an ExternalService: secrets are
// already looked up and certificates checked.
type TLS struct {
	AllowRenegotiation bool
	// SNI is the server name to send; empty means send none. It defaults to
	// the address's hostname and is empty by default for IP addresses.
	SNI string
	// CACert is PEM; when empty the server is verified against the system
	// trust store if the control plane knows one.
	CACert []byte
	// ClientCert and ClientKey are PEM, both set or both empty.
	ClientCert []byte
	ClientKey  []byte
}

// MeshConfig is the subset of Kuma's Mesh resource that changes what a
// workload may reach.
type MeshConfig struct {
	Name string
	// Passthrough lets traffic to destinations the mesh does not know leave
	// the workload unchanged (Kuma's networking.outbound.passthrough).
	Passthrough bool
	// ZoneEgress sends ExternalService traffic through the zone's egress
	// proxies instead of directly (routing.zoneEgress).
	ZoneEgress bool
	// LocalityAware restricts zone-pinned ExternalServices to agents of their
	// zone (routing.localityAwareLoadBalancing).
	LocalityAware bool
	// MTLS is set when the mesh enables mutual TLS (mtls.enabledBackend):
	// the control plane's CA gives every proxy of the mesh an identity, and
	// the ZoneEgress authenticates sidecars by it.
	MTLS   *MTLS
	Origin Origin
}

// MTLS is the mesh's enabled certificate authority backend. Only Kuma's
// builtin type exists in shunt: the control plane creates the CA itself and
// keeps it in its state directory.
type MTLS struct {
	// Backend is the name of the enabled backend (mtls.enabledBackend).
	Backend string
	// CertLifetime is how long an identity certificate is valid
	// (dpCert.rotation.expiration; Kuma's default is 24h).
	CertLifetime time.Duration
	// CALifetime is how long a new CA certificate is valid
	// (conf.caCert.expiration; Kuma's default is 10y).
	CALifetime time.Duration
	// CAKeyBits is the RSA size of a new CA key (conf.caCert.RSAbits).
	CAKeyBits int
}

// Defaults of a builtin CA backend, Kuma's.
const (
	DefaultCertLifetime = 24 * time.Hour
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour
	DefaultCAKeyBits    = 2048
)

// DefaultMeshConfig is what a mesh without a Mesh resource behaves like;
// Kuma's defaults: passthrough on, no egress, no locality awareness.
func DefaultMeshConfig(name string) MeshConfig {
	return MeshConfig{Name: name, Passthrough: true}
}

// ZoneEgress is a proxy through which a zone's external traffic leaves when
// the mesh enables zone egress. It belongs to no mesh, as in Kuma.
type ZoneEgress struct {
	Name string
	Zone string
	// Address is an IP address or a hostname.
	Address string
	Port    uint16
	Origin  Origin
}

// Secret is opaque bytes that ExternalServices refer to by name.
type Secret struct {
	Mesh   string
	Name   string
	Data   []byte
	Origin Origin
}

// Resources is a validated, self-consistent set of resources, sorted so that
// everything derived from it is deterministic.
type Resources struct {
	// ExternalServices is sorted by mesh, then name.
	ExternalServices []ExternalService
	// Meshes holds the Mesh resources that were written, by name.
	Meshes map[string]MeshConfig
	// ZoneEgresses is sorted by zone, then name.
	ZoneEgresses []ZoneEgress
	// Secrets is sorted by mesh, then name.
	Secrets []Secret
}

// Mesh returns the configuration of the named mesh, with Kuma's defaults when
// no Mesh resource was written for it.
func (r *Resources) Mesh(name string) MeshConfig {
	if m, ok := r.Meshes[name]; ok {
		return m
	}
	return DefaultMeshConfig(name)
}

// MeshNames lists every mesh that has a Mesh resource or an ExternalService,
// sorted.
func (r *Resources) MeshNames() []string {
	seen := map[string]bool{}
	for n := range r.Meshes {
		seen[n] = true
	}
	for i := range r.ExternalServices {
		seen[r.ExternalServices[i].Mesh] = true
	}
	return sortedKeys(seen)
}
