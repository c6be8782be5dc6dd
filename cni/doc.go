// Package cni is shunt's chained CNI plugin: on ADD it installs capture in
// the pod's network namespace with the pod's configuration, on DEL it removes
// what it installed, and on CHECK it verifies the rules are still as
// installed. It never creates interfaces or addresses: the plugins before it
// in the chain do, and their result is passed on unchanged.
package cni
