//go:build initcontainer

package engines

import (
	"errors"
	"log/slog"

	"github.com/shunt-dev/shunt/redirect"
)

// errNoEBPF is what the init container's build (-tags lean,initcontainer)
// answers to everything that needs the eBPF engine, which it leaves out:
// cilium/ebpf and what it links cost a process that installs netfilter
// rules more start-up than the rest of its packages together.
var errNoEBPF = errors.New("this build of shunt has no eBPF engine (the init container's build); the init container image has the build with it as /usr/local/bin/shunt-ebpf, and the node agent's eBPF mode needs no init container")

func ebpfProbe(string) error { return errNoEBPF }

func ebpfSupported(*redirect.Plan) error { return errNoEBPF }

func newEBPF(*redirect.Config, *slog.Logger) (redirect.Engine, error) { return nil, errNoEBPF }

// enrolledInNode finds no pod enrolled in the node's programs: the build
// cannot read them.
func enrolledInNode(*redirect.Config, *slog.Logger) redirect.Engine { return nil }
