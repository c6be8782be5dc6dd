package kernelanswers

// The generated files and objects are committed, so building shunt needs no
// clang. Regenerate after changing bpf/dns_answer.c with `go generate
// ./dnsproxy/kernelanswers` (clang, and the kernel's UAPI and libbpf
// headers from linux-libc-dev and libbpf-dev).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang -cflags "-O2 -g -Wall -Werror" -type answer_config -type name_key -type name_answers answer ../../bpf/dns_answer.c -- -I../../bpf -I../../bpf/include
