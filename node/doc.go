// Package node is the DaemonSet agent: it installs shunt's CNI plugin on the
// node and chains it into the node's CNI configuration, gives the plugin
// the credentials to read pod annotations, and repairs pods that started
// before the plugin was in place.
package node
