package ebpf

// The generated files and objects are committed, so building shunt needs no
// clang. Regenerate after changing bpf/ with `go generate ./redirect/ebpf/...`
// (clang, and the kernel's UAPI and libbpf headers from linux-libc-dev and
// libbpf-dev).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang -cflags "-O2 -g -Wall -Werror" -type config -type addr -type endpoint -type lpm_key -type orig_dst -type peer_key -type uid_rule capture ../../bpf/capture.c -- -I../../bpf -I../../bpf/include
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang -cflags "-O2 -g -Wall -Werror" -type pod_addr -type pod_endpoint -type pod_rule -type pod_listener -type pod_stats -type node_meta nodeCapture ../../bpf/capture_node.c -- -I../../bpf -I../../bpf/include
