package cni

import (
	"fmt"
	"sort"
	"strings"

	"github.com/shunt-dev/shunt/redirect"
)

// AnnotationPrefix starts every annotation shunt reads.
const AnnotationPrefix = "shunt.dev/"

// AnnotationCapture on a pod or a namespace ("true" or "false") says whether
// its pods are captured; the pod's annotation wins over its namespace's.
const AnnotationCapture = AnnotationPrefix + "capture"

// nodeOnlyKeys are capture keys that describe the node or the pod's sandbox,
// which the plugin fills in itself; a pod may not choose them.
var nodeOnlyKeys = []string{"netns", "cgroup", "bpfPinDir", "stateDir", "resolvConf", "iptablesBackend"}

// PodSettings are the shunt annotations of a pod and of its namespace.
type PodSettings struct {
	Namespace            string
	Name                 string
	PodAnnotations       map[string]string
	NamespaceAnnotations map[string]string
	NamespaceLabels      map[string]string
	HostNetwork          bool
}

// Captured decides whether the pod is captured: the pod's shunt.dev/capture
// annotation, else its namespace's (annotation or label), else def.
func (s PodSettings) Captured(def bool) (bool, error) {
	for _, src := range []struct {
		what string
		m    map[string]string
	}{
		{"pod annotation", s.PodAnnotations},
		{"namespace annotation", s.NamespaceAnnotations},
		{"namespace label", s.NamespaceLabels},
	} {
		v, ok := src.m[AnnotationCapture]
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "enabled", "yes":
			return true, nil
		case "false", "disabled", "no":
			return false, nil
		}
		return false, fmt.Errorf("%s %s: invalid value %q: want true or false", src.what, AnnotationCapture, v)
	}
	return def, nil
}

// AnnotationFor returns the annotation that sets a capture key: shunt.dev/
// followed by the key's flag name (shunt.dev/exclude-outbound-ports).
func AnnotationFor(key string) string {
	for _, o := range redirect.Options() {
		if o.Key == key {
			return AnnotationPrefix + o.Flag
		}
	}
	return ""
}

// ApplyAnnotations sets, in cfg, every capture key the pod's annotations
// give. Namespace annotations are applied first, so a pod can override its
// namespace. An unknown shunt.dev/ annotation, or one naming a key only the
// node may set, is an error: a typo must not silently leave a pod captured
// differently from what its owner wrote.
func ApplyAnnotations(cfg *redirect.Config, s PodSettings) error {
	byFlag := map[string]redirect.Option{}
	for _, o := range redirect.Options() {
		byFlag[o.Flag] = o
	}
	for _, src := range []struct {
		what string
		m    map[string]string
	}{
		{"namespace " + s.Namespace, s.NamespaceAnnotations},
		{"pod " + s.Namespace + "/" + s.Name, s.PodAnnotations},
	} {
		keys := make([]string, 0, len(src.m))
		for k := range src.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name, ok := strings.CutPrefix(k, AnnotationPrefix)
			if !ok || k == AnnotationCapture {
				continue
			}
			o, known := byFlag[name]
			if !known {
				return fmt.Errorf("%s: annotation %s: unknown; shunt reads %s and %s<key> for the capture keys (e.g. %s)",
					src.what, k, AnnotationCapture, AnnotationPrefix, AnnotationFor("excludeOutboundPorts"))
			}
			if containsString(nodeOnlyKeys, o.Key) {
				return fmt.Errorf("%s: annotation %s: %s is set by the node, not per pod", src.what, k, o.Key)
			}
			if err := cfg.Set(o.Key, src.m[k], src.what+" annotation "+k); err != nil {
				return err
			}
		}
	}
	return nil
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
