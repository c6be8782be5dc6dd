package mesh

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// ServicePort is the port on which <service>.mesh is reached, as in Kuma.
const ServicePort = 80

// Route is one destination a workload can reach: a name (or an IP) and a
// port, leading to one or more ExternalServices.
type Route struct {
	// Hostname is set for names that resolve to VIPs.
	Hostname string
	// IP is set instead of Hostname for ExternalServices addressed by IP.
	IP   netip.Addr
	Port uint16
	// Service is set when the route is <service>.mesh.
	Service  string
	Protocol Protocol
	// Targets share the traffic; several only for <service>.mesh when more
	// than one ExternalService provides the service.
	Targets []*ExternalService
}

// View is what one node sees: the ExternalServices visible from its zone,
// the routes they give, and the egresses its traffic must leave through.
type View struct {
	Mesh MeshConfig
	Zone string
	// ExternalServices visible to the node, sorted by name.
	ExternalServices []*ExternalService
	// Routes sorted by hostname (IP routes last), then port.
	Routes []Route
	// Egresses is set when the mesh routes through zone egress: those of the
	// node's zone, or every one when the node's zone is unknown.
	Egresses []ZoneEgress
	// Warnings are conflicts between resources visible to this node.
	Warnings []Warning
}

// View computes what a node of the given mesh and zone sees. zone may be
// empty when the node did not say; zone-pinned services are then hidden when
// the mesh is locality-aware, since they are meant for another zone.
func (r *Resources) View(meshName, zone string) View {
	v := View{Mesh: r.Mesh(meshName), Zone: zone}
	for i := range r.ExternalServices {
		es := &r.ExternalServices[i]
		if es.Mesh != meshName {
			continue
		}
		if v.Mesh.LocalityAware && es.Zone != "" && es.Zone != zone {
			continue
		}
		v.ExternalServices = append(v.ExternalServices, es)
	}

	type hostKey struct {
		name string
		ip   netip.Addr
		port uint16
	}
	taken := map[hostKey]Route{}

	services := map[string][]*ExternalService{}
	for _, es := range v.ExternalServices {
		services[es.Service] = append(services[es.Service], es)
	}
	for _, svc := range sortedKeys(services) {
		targets := services[svc]
		proto := targets[0].Protocol
		for _, t := range targets[1:] {
			if t.Protocol != proto {
				// Only TCP is common to every protocol.
				proto = ProtocolTCP
			}
		}
		rt := Route{Hostname: ServiceHostname(svc), Port: ServicePort, Service: svc, Protocol: proto, Targets: targets}
		v.Routes = append(v.Routes, rt)
		taken[hostKey{name: rt.Hostname, port: rt.Port}] = rt
	}
	for _, es := range v.ExternalServices {
		k := hostKey{port: es.Address.Port}
		rt := Route{Port: es.Address.Port, Protocol: es.Protocol, Targets: []*ExternalService{es}}
		if es.Address.IsIP() {
			k.ip, rt.IP = es.Address.IP, es.Address.IP
		} else {
			k.name, rt.Hostname = es.Address.Host, es.Address.Host
		}
		if prev, ok := taken[k]; ok {
			v.Warnings = append(v.Warnings, Warning{Origin: es.Origin, Field: "networking.address", Message: fmt.Sprintf(
				"%s is already routed to %s; this ExternalService is reachable only through %s.mesh", es.Address, describeRoute(prev), es.Service)})
			continue
		}
		v.Routes = append(v.Routes, rt)
		taken[k] = rt
	}
	slices.SortFunc(v.Routes, func(a, b Route) int {
		if (a.Hostname == "") != (b.Hostname == "") {
			if a.Hostname == "" {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(a.Hostname, b.Hostname), a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port))
	})

	if v.Mesh.ZoneEgress && len(v.ExternalServices) > 0 {
		for _, eg := range r.ZoneEgresses {
			if zone == "" || eg.Zone == "" || eg.Zone == zone {
				v.Egresses = append(v.Egresses, eg)
			}
		}
		if len(v.Egresses) == 0 {
			v.Warnings = append(v.Warnings, Warning{Origin: v.Mesh.Origin, Field: "routing.zoneEgress", Message: fmt.Sprintf(
				"zone egress is on but no ZoneEgress serves zone %q; external services are unreachable from it", zone)})
		}
	}
	return v
}

func describeRoute(r Route) string {
	if r.Service != "" {
		return "service " + r.Service
	}
	return "ExternalService " + r.Targets[0].Name
}
