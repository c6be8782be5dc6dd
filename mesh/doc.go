// Package mesh is shunt's shared vocabulary: the resources users write
// (ExternalService, Mesh, ZoneEgress, Secret), their parsing and validation,
// the per-node view of what a workload may reach, and the VIP allocator.
//
// It does no I/O: callers hand it bytes and persisted state, and get values
// and errors back. That keeps the same rules in the control plane, in tests
// and in any tool that wants to check resource files offline.
package mesh
