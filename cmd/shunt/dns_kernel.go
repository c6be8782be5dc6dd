//go:build !lean

package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/shunt-dev/shunt/agent"
	"github.com/shunt-dev/shunt/dnsproxy"
	"github.com/shunt-dev/shunt/dnsproxy/kernelanswers"
)

// kernelAnswers is the answerer of a running `shunt dns`: attached to the
// namespace's lo while the interceptor runs, its names kept to the
// interceptor's table.
type kernelAnswers struct {
	log    *slog.Logger
	listen []netip.AddrPort
	mu     sync.Mutex
	a      *kernelanswers.Answerer
	// attached is set once the program is on lo; off once it has been
	// given up after a failure: the interceptor answers everything from
	// then on.
	attached, off bool
}

// loadKernelAnswers loads the answerer, before the interceptor is made:
// the interceptor's cache tells it of each answer it holds
// (dnsproxy.Config.CacheObserver). listen is the interceptor's (empty:
// its defaults); Load refuses, by address, what the program cannot serve.
func loadKernelAnswers(listen []netip.AddrPort, log *slog.Logger) (*kernelAnswers, error) {
	if len(listen) == 0 {
		listen = dnsproxy.DefaultListen()
	}
	a, err := kernelanswers.Load(listen)
	if err != nil {
		return nil, fmt.Errorf("--kernel-answers: %w", err)
	}
	return &kernelAnswers{log: log, a: a, listen: listen}, nil
}

// start gives the kernel the interceptor's first table and attaches the
// program to this namespace's lo.
func (k *kernelAnswers) start(t *dnsproxy.Table) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.attach(t); err != nil {
		k.a.Close()
		return fmt.Errorf("--kernel-answers: %w", err)
	}
	return nil
}

// attach writes t and puts the program on lo; the caller holds mu.
func (k *kernelAnswers) attach(t *dnsproxy.Table) error {
	res, err := k.a.Sync(t)
	if err != nil {
		return err
	}
	if _, err := kernelanswers.Attach("", k.a.Program()); err != nil {
		return err
	}
	k.attached = true
	k.log.Info("kernel DNS answers on lo", "listen", k.listen, "names", res.Names, "left to the interceptor", res.Left)
	return nil
}

// sync gives the kernel the interceptor's new table; the first one
// attaches the program (the agent's first table comes with its first
// snapshot: until then a program left by a killed agent answers with the
// table it had). Should an update fail, the kernel would go on answering
// names of the old table: the answerer is detached instead, and the
// interceptor answers everything.
func (k *kernelAnswers) sync(t *dnsproxy.Table) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.off {
		return
	}
	if !k.attached {
		if err := k.attach(t); err != nil {
			k.off = true
			k.log.Error("kernel DNS answers could not be put on lo: the interceptor answers every name", "err", err)
		}
		return
	}
	res, err := k.a.Sync(t)
	if err == nil {
		k.log.Debug("kernel DNS answers updated", "names", res.Names, "written", res.Written, "deleted", res.Deleted)
		return
	}
	k.off = true
	if derr := kernelanswers.Detach(""); derr != nil {
		k.log.Error("kernel DNS answers could not follow the table, and removing them failed: the kernel may answer names of the old table", "err", err, "detach", derr)
		return
	}
	k.log.Error("kernel DNS answers could not follow the table and were removed: the interceptor answers every name", "err", err)
}

// stop detaches the answerer and reports what it answered.
func (k *kernelAnswers) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if st, err := k.a.Stats(); err == nil {
		k.log.Info("kernel DNS answers", "answered", st.Answered, "cached", st.Cached, "missed", st.Missed, "passed", st.Passed, "tracked", st.Tracked)
	}
	if k.attached && !k.off {
		if err := kernelanswers.Detach(""); err != nil {
			k.log.Error("remove kernel DNS answers from lo", "err", err)
		}
	}
	k.a.Close()
}

// stats is the answerer's counters, for the agent's /metrics.
func (k *kernelAnswers) stats() (agent.KernelDNSStats, error) {
	st, err := k.a.Stats()
	if err != nil {
		return agent.KernelDNSStats{}, err
	}
	return agent.KernelDNSStats{Table: st.Answered, Cache: st.Cached, Missed: st.Missed, TooBig: st.TooBig, Passed: st.Passed, Tracked: st.Tracked}, nil
}
