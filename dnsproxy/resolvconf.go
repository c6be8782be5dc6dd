package dnsproxy

import "github.com/shunt-dev/shunt/resolvconf"

// ResolvConf is what the interceptor takes from a workload's resolv.conf.
type ResolvConf = resolvconf.Config

// ParseResolvConf parses resolv.conf content with resolvconf.Parse, the
// rules the capture reads nameservers by.
func ParseResolvConf(b []byte) (ResolvConf, error) { return resolvconf.Parse(b) }
