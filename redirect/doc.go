// Package redirect describes what shunt captures, independently of how.
//
// A Config holds the user's settings under the keys every surface shares (the
// YAML config file, SHUNT_* environment variables, command-line flags, the CNI
// plugin's JSON). Config.Plan validates it, fills in defaults and returns a
// Plan: the engine-neutral description of the capture that the iptables and
// eBPF engines both implement. Plan.Explain answers, without touching the
// kernel, what the capture does with one packet; the engines' own tests prove
// that the kernel agrees.
package redirect
