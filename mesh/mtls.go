package mesh

import (
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// parseMTLS reads a Mesh's mtls block. It returns nil when no backend is
// enabled: Kuma's meshes without enabledBackend have no mTLS.
func parseMTLS(w *walker, n *yaml.Node, path string) *MTLS {
	f := w.mapping(n, path, "enabledBackend", "backends", "skipValidation")
	if f.has("skipValidation") {
		w.warn(join(path, "skipValidation"), "not implemented by shunt; ignored")
	}
	enabled, en, _ := f.str("enabledBackend")
	var found *MTLS
	list := deref(f.m["backends"])
	if !isNull(list) && list.Kind != yaml.SequenceNode {
		w.fail(list, join(path, "backends"), "", "must be a list, not %s", kindName(list))
		list = nil
	}
	seen := map[string]bool{}
	if !isNull(list) {
		for i, item := range list.Content {
			bp := join(path, "backends["+strconv.Itoa(i)+"]")
			b := w.mapping(item, bp, "name", "type", "dpCert", "conf", "mode", "rootChain")
			name, nn, ok := b.required("name")
			if !ok {
				continue
			}
			if seen[name] {
				w.fail(nn, join(bp, "name"), name, "backend given twice")
				continue
			}
			seen[name] = true
			typ, tn, ok := b.required("type")
			if !ok {
				continue
			}
			if typ != "builtin" {
				w.fail(tn, join(bp, "type"), typ, "not implemented by shunt (only builtin: the control plane's own CA)")
				continue
			}
			if b.has("mode") {
				w.warn(join(bp, "mode"), "not implemented by shunt (inbound traffic is not terminated by the mesh); ignored")
			}
			if b.has("rootChain") {
				w.warn(join(bp, "rootChain"), "not implemented by shunt; ignored")
			}
			m := &MTLS{Backend: name, CertLifetime: DefaultCertLifetime, CALifetime: DefaultCALifetime, CAKeyBits: DefaultCAKeyBits}
			dp := w.mapping(b.m["dpCert"], join(bp, "dpCert"), "rotation", "requestTimeout")
			rot := w.mapping(dp.m["rotation"], join(bp, "dpCert.rotation"), "expiration")
			if s, sn, ok := rot.str("expiration"); ok {
				d, err := parseKumaDuration(s)
				if err != nil || d < 10*time.Minute {
					w.fail(sn, join(bp, "dpCert.rotation.expiration"), s, "must be a duration of at least 10m (e.g. 24h, 1d)")
				} else {
					m.CertLifetime = d
				}
			}
			conf := w.mapping(b.m["conf"], join(bp, "conf"), "caCert")
			ca := w.mapping(conf.m["caCert"], join(bp, "conf.caCert"), "RSAbits", "expiration")
			if s, sn, ok := ca.str("expiration"); ok {
				d, err := parseKumaDuration(s)
				if err != nil || d < time.Hour {
					w.fail(sn, join(bp, "conf.caCert.expiration"), s, "must be a duration of at least 1h (e.g. 10y)")
				} else {
					m.CALifetime = d
				}
			}
			if s, sn, ok := ca.str("RSAbits"); ok {
				bits, err := strconv.Atoi(s)
				if err != nil || bits < 2048 || bits > 8192 {
					w.fail(sn, join(bp, "conf.caCert.RSAbits"), s, "must be a number of bits from 2048 to 8192")
				} else {
					m.CAKeyBits = bits
				}
			}
			if m.CertLifetime >= m.CALifetime {
				w.fail(b.node, join(bp, "dpCert.rotation.expiration"), m.CertLifetime.String(), "must be shorter than the CA's expiration %s", m.CALifetime)
			}
			if name == enabled {
				found = m
			}
		}
	}
	if enabled == "" {
		return nil
	}
	if found == nil && !seen[enabled] {
		w.fail(en, join(path, "enabledBackend"), enabled, "names no backend in mtls.backends")
	}
	return found
}

// parseKumaDuration accepts Go durations and the day and year units Kuma's
// examples use (1d, 10y).
func parseKumaDuration(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "y": 365 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, err := strconv.Atoi(n)
			if err == nil && v > 0 {
				return time.Duration(v) * unit, nil
			}
		}
	}
	return time.ParseDuration(s)
}
