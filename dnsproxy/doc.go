// Package dnsproxy is shunt's DNS interceptor: a UDP and TCP server that
// answers the names the mesh knows (a Table of names to VIPs) from answers
// built when the table is loaded, and forwards every other name to the
// workload's own resolvers, with health-aware hedging, a TTL-honouring cache
// and truncation that sends clients to TCP when an answer does not fit.
//
// The package keeps no global state: everything hangs off a Server, whose
// Metrics the embedding agent exports however it likes.
package dnsproxy
