// Command istio-iptables is Istio's istio-iptables command (the one
// pilot-agent runs as `pilot-agent istio-iptables` and the Istio CNI plugin
// runs in-process), built alone from its module so that shunt's start-up
// benchmark can measure it beside shunt in the same run. It lives in its own
// module: shunt's go.mod never depends on Istio.
package main

import (
	"os"

	"istio.io/istio/pkg/log"
	"istio.io/istio/tools/istio-iptables/pkg/cmd"
)

func main() {
	if err := cmd.GetCommand(log.DefaultOptions()).Execute(); err != nil {
		os.Exit(1)
	}
}
